//! The translation's settings, in one type: the command line flattens it
//! (clap, feature "cli"), the page deserialises it (serde), and the defaults
//! are written once, here (docs/ALGORITHM.md, "Defaults").

use super::PnpError;
use serde::{Deserialize, Serialize};

/// Where the target pass gets the source row's features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum StoreMode {
    /// The resident store when it fits the budget and the device's bindings, else inline.
    #[default]
    Auto,
    /// Always the GPU-resident feature store.
    Resident,
    /// The reference's batch-3 call (source row inline), recomputed per prompt.
    Inline,
}

/// How the original PnP's negative-prompt weight falls over the sampling
/// steps (docs/ALGORITHM.md, "Variants from the paper").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum NegativeSchedule {
    /// 1 falling linearly to 0 at the last step (numpy `flip(linspace(0, 1, T))`).
    #[default]
    Linear,
    /// 1 at every step.
    Constant,
    /// exp(-6 linspace(0, 1, T)).
    Exp,
}

impl NegativeSchedule {
    /// The schedule's value at each of `steps` sampling steps.
    pub fn values(self, steps: usize) -> Vec<f64> {
        // numpy's linspace(0, 1, T): i / (T - 1), and [0] for T = 1.
        let ramp = (0..steps).map(|i| i as f64 / (steps.max(2) - 1) as f64);
        match self {
            NegativeSchedule::Linear => ramp.rev().collect(),
            NegativeSchedule::Constant => vec![1.0; steps],
            NegativeSchedule::Exp => ramp.map(|r| (-6.0 * r).exp()).collect(),
        }
    }
}

/// Which latents the source branch walks (docs/ALGORITHM.md, "Source latents").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SourceLatents {
    /// The DDIM inversion's own trajectory (the paper; PIE-Bench's
    /// "directinversion+pnp").
    #[default]
    Inversion,
    /// The DDIM reconstruction of the inverted noise under the inversion
    /// prompt, without guidance (PIE-Bench's "ddim+pnp"); one UNet call more
    /// per sampling step, before the sampling.
    Reconstruction,
}

/// The algorithm's settings; the defaults are the authors' (docs/ALGORITHM.md, "Defaults").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct PnpOptions {
    /// The negative prompt of classifier-free guidance in the target pass.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = PnpOptions::default().negative_prompt))]
    pub negative_prompt: String,
    /// The prompt the image is inverted (and its features extracted) under.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = PnpOptions::default().inversion_prompt))]
    pub inversion_prompt: String,
    /// DDIM sampling steps.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = PnpOptions::default().steps))]
    pub steps: usize,
    /// DDIM inversion steps; their timesteps must contain the sampling steps'.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = PnpOptions::default().inversion_steps))]
    pub inversion_steps: usize,
    /// Classifier-free guidance scale.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = PnpOptions::default().guidance))]
    pub guidance: f32,
    /// Fraction of the sampling steps with ResNet feature injection. The
    /// fractions are f64 so that floor(steps * fraction) counts the steps
    /// as the reference's Python `int(n * t)` does (0.7 as f32 is below 0.7).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = PnpOptions::default().pnp_f_t))]
    pub pnp_f_t: f64,
    /// Fraction of the sampling steps with self-attention q/k injection.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = PnpOptions::default().pnp_attn_t))]
    pub pnp_attn_t: f64,
    /// The original PnP's negative-prompt schedule: guidance extrapolates
    /// from a_i e("") + (1 - a_i) e(negative), a_i = alpha x schedule[i].
    /// Absent: from the negative prompt alone (pnp-diffusers).
    #[cfg_attr(feature = "cli", arg(long))]
    pub negative_prompt_alpha: Option<f64>,
    /// The schedule of --negative-prompt-alpha over the sampling steps.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = NegativeSchedule::Linear))]
    pub negative_prompt_schedule: NegativeSchedule,
    /// The latents the source branch walks: the inversion's (the paper), or
    /// their DDIM reconstruction (PIE-Bench's "ddim+pnp").
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = SourceLatents::Inversion))]
    pub source_latents: SourceLatents,
    /// Feature store: auto (resident if it fits), resident, or inline (the reference's batch-3 call).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = StoreMode::Auto))]
    pub store: StoreMode,
    /// Largest feature store `auto` keeps on the device, in bytes.
    #[cfg_attr(feature = "cli", arg(skip = PnpOptions::default().store_budget))]
    pub store_budget: u64,
}

impl Default for PnpOptions {
    fn default() -> Self {
        PnpOptions {
            negative_prompt: "ugly, blurry, black, low res, unrealistic".into(),
            inversion_prompt: String::new(),
            steps: 50,
            inversion_steps: 999,
            guidance: 7.5,
            pnp_f_t: 0.8,
            pnp_attn_t: 0.5,
            negative_prompt_alpha: None,
            negative_prompt_schedule: NegativeSchedule::Linear,
            source_latents: SourceLatents::Inversion,
            store: StoreMode::Auto,
            store_budget: 2 << 30,
        }
    }
}

/// What classifier-free guidance extrapolates from, for a whole sampling.
#[derive(Clone, Debug, PartialEq)]
pub enum GuidanceBase {
    /// e(negative prompt): pnp-diffusers (no schedule, or alpha 0 throughout).
    Negative,
    /// e(""): a schedule of 1 throughout (the negative row is not run).
    Unconditional,
    /// a_i e("") + (1 - a_i) e(negative), a_i per sampling step: three
    /// target rows (negative, unconditional, target) per step.
    Mixed(Vec<f64>),
}

impl GuidanceBase {
    /// Target rows of each UNet call (besides an inline source row).
    pub fn rows(&self) -> usize {
        match self {
            GuidanceBase::Mixed(_) => 3,
            _ => 2,
        }
    }
}

/// Refuses a guidance scale that is not a finite number (it would turn
/// every latent into NaN).
pub fn check_guidance(guidance: f32) -> Result<(), PnpError> {
    if !guidance.is_finite() {
        return Err(PnpError::Guidance(guidance));
    }
    Ok(())
}

impl PnpOptions {
    /// Refuses settings that are wrong whatever the model and the image:
    /// fractions outside [0, 1], a negative-prompt alpha outside [0, 1], a
    /// guidance scale that is not finite. Needs nothing but the options, so
    /// a caller can run it before opening a GPU.
    pub fn check(&self) -> Result<(), PnpError> {
        if !(0.0..=1.0).contains(&self.pnp_f_t) || !(0.0..=1.0).contains(&self.pnp_attn_t) {
            return Err(PnpError::Fractions);
        }
        if let Some(a) = self.negative_prompt_alpha
            && !(0.0..=1.0).contains(&a)
        {
            return Err(PnpError::Input(format!(
                "the negative-prompt alpha is a weight in [0, 1], got {a}"
            )));
        }
        check_guidance(self.guidance)
    }

    /// The guidance base these options ask for (see [`GuidanceBase`]).
    pub fn guidance_base(&self) -> GuidanceBase {
        let Some(alpha) = self.negative_prompt_alpha else {
            return GuidanceBase::Negative;
        };
        let a: Vec<f64> = (self.negative_prompt_schedule.values(self.steps).into_iter())
            .map(|v| alpha * v)
            .collect();
        if a.iter().all(|&v| v == 0.0) {
            GuidanceBase::Negative
        } else if a.iter().all(|&v| v == 1.0) {
            GuidanceBase::Unconditional
        } else {
            GuidanceBase::Mixed(a)
        }
    }

    /// The texts to encode, in the order of [`Embeddings`]' fields.
    pub fn texts<'a>(&'a self, targets: &[&'a str]) -> Vec<&'a str> {
        let mut texts = vec![self.inversion_prompt.as_str(), "", &self.negative_prompt];
        texts.extend_from_slice(targets);
        texts
    }
}

/// Text embeddings (tokens x width each) of one translation.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// The inversion prompt's: the DDIM inversion runs under it.
    pub inversion: Vec<f32>,
    /// The empty prompt's: the source pass runs under it.
    pub source: Vec<f32>,
    /// The negative prompt's: guidance's unconditional row.
    pub negative: Vec<f32>,
    /// One per target prompt.
    pub targets: Vec<Vec<f32>>,
}

impl Embeddings {
    /// From embeddings in [`PnpOptions::texts`]' order.
    pub fn from_ordered(mut all: Vec<Vec<f32>>) -> Option<Self> {
        if all.len() < 3 {
            return None;
        }
        let targets = all.split_off(3);
        let mut it = all.into_iter();
        Some(Embeddings {
            inversion: it.next()?,
            source: it.next()?,
            negative: it.next()?,
            targets,
        })
    }
}
