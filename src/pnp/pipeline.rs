//! The PnP translation (PNP-SPEC.md): encode, DDIM inversion, the source
//! pass into the feature store, injected sampling with classifier-free
//! guidance, decode. Every network is a planned graph built once per phase
//! and replayed per step; a step writes only its inputs (latent, timestep,
//! text embedding) and the store slot it binds.

use super::scheduler::{Ddim, SchedulerError};
use super::store::{
    FeatureStore, Inject, StoreValues, TapShapes, Taps, capture_hooks, inject_hooks,
};
use crate::gpu::{DType, Gpu, GpuError};
use crate::graph::{Graph, Plan, ShapeError, Value};
use crate::models::hooks::Hooks;
use crate::models::sd::SdModel;
use crate::models::tokenizer::{ClipTokenizer, TokenizerError};
use crate::models::unet::Unet;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PnpError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("{0}")]
    Input(String),
    #[error("pnp_f_t and pnp_attn_t are fractions of the sampling steps, in [0, 1]")]
    Fractions,
    #[error(
        "a {inversion_steps}-step inversion does not store a latent at every timestep of {steps} sampling steps; use inversion steps in {compatible:?}"
    )]
    InversionGrid {
        inversion_steps: usize,
        steps: usize,
        compatible: Vec<usize>,
    },
}

type Result<T> = std::result::Result<T, PnpError>;

/// Where the target pass gets the source row's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    /// The resident store when it fits the budget, else inline.
    Auto,
    /// Always the GPU-resident feature store.
    Resident,
    /// The reference's batch-3 call (source row inline), recomputed per prompt.
    Inline,
}

/// The algorithm's settings; defaults are the reference's (PNP-SPEC.md).
#[derive(Clone, Debug)]
pub struct PnpOptions {
    pub negative_prompt: String,
    pub inversion_prompt: String,
    pub steps: usize,
    pub inversion_steps: usize,
    pub guidance: f32,
    pub pnp_f_t: f32,
    pub pnp_attn_t: f32,
    pub store: StoreMode,
    /// Largest feature store `Auto` keeps on the device, in bytes.
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
            store: StoreMode::Auto,
            store_budget: 2 << 30,
        }
    }
}

/// Progress reporting, so the command line and a web page can show it their way.
pub trait Progress {
    /// A phase with `total` units of work begins.
    fn phase(&mut self, name: &str, total: usize);
    /// One unit done.
    fn tick(&mut self);
    /// Something the user should read (a truncated prompt, a fallback).
    fn note(&mut self, msg: &str);
}

/// A `Progress` that reports nothing.
pub struct Quiet;
impl Progress for Quiet {
    fn phase(&mut self, _: &str, _: usize) {}
    fn tick(&mut self) {}
    fn note(&mut self, _: &str) {}
}

/// What a run cost.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// (phase, seconds), in order.
    pub phases: Vec<(String, f64)>,
    pub unet_evals: usize,
    /// Largest bytes held at once by planned graphs plus the feature store
    /// (weights not counted).
    pub peak_bytes: u64,
    pub used_store: bool,
}

/// The inversion of one image: z_t for every inversion timestep.
#[derive(Clone, Debug)]
pub struct Inversion {
    /// Latent size (h, w) = image size / 8.
    pub hw: [usize; 2],
    pub z0: Vec<f32>,
    pub steps: usize,
    pub latents: BTreeMap<usize, Vec<f32>>,
}

/// Wall-clock seconds of a phase (wasm32 in a browser has no `Instant`: it
/// reads `Date.now()`'s milliseconds).
struct Timer {
    #[cfg(not(target_arch = "wasm32"))]
    start: std::time::Instant,
    #[cfg(target_arch = "wasm32")]
    start_ms: f64,
}

impl Timer {
    fn start() -> Self {
        Timer {
            #[cfg(not(target_arch = "wasm32"))]
            start: std::time::Instant::now(),
            #[cfg(target_arch = "wasm32")]
            start_ms: js_sys::Date::now(),
        }
    }
    fn seconds(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        return self.start.elapsed().as_secs_f64();
        #[cfg(target_arch = "wasm32")]
        return (js_sys::Date::now() - self.start_ms) / 1000.0;
    }
}

/// A UNet graph with its inputs, planned.
struct UnetPlan {
    plan: Plan,
    x: Value,
    t: Value,
    ctx: Value,
    eps: Value,
}

pub struct Pipeline<'a> {
    pub gpu: Arc<Gpu>,
    pub model: &'a SdModel,
    /// None: built by [`Pipeline::from_embeddings`]; [`Pipeline::embed`] then fails.
    pub tokenizer: Option<&'a ClipTokenizer>,
    pub scheduler: Ddim,
    /// Storage type of activations (the weights were uploaded in it).
    pub dtype: DType,
    pub stats: Stats,
    taps: Taps,
}

fn concat_rows(rows: &[&[f32]]) -> Vec<f32> {
    rows.iter().flat_map(|r| r.iter().copied()).collect()
}

impl<'a> Pipeline<'a> {
    pub fn new(
        gpu: Arc<Gpu>,
        model: &'a SdModel,
        tokenizer: &'a ClipTokenizer,
        scheduler: Ddim,
        dtype: DType,
    ) -> Self {
        Pipeline {
            tokenizer: Some(tokenizer),
            ..Self::from_embeddings(gpu, model, scheduler, dtype)
        }
    }

    /// A pipeline without a tokenizer, for callers that bring their own text
    /// embeddings (77 x D) to [`Self::invert`] and [`Self::sample`] (the
    /// pipeline benchmark, which needs no files).
    pub fn from_embeddings(
        gpu: Arc<Gpu>,
        model: &'a SdModel,
        scheduler: Ddim,
        dtype: DType,
    ) -> Self {
        Pipeline {
            gpu,
            model,
            tokenizer: None,
            scheduler,
            dtype,
            stats: Stats::default(),
            taps: Taps::pnp(),
        }
    }

    /// Tokens per prompt: the tokenizer's, else the text encoder's positions.
    fn text_len(&self) -> usize {
        self.tokenizer.map_or(
            self.model.text.config.max_position_embeddings,
            ClipTokenizer::max_len,
        )
    }

    /// Adds the timer's seconds to phase `name` (decoding several prompts is one phase).
    fn phase_done(&mut self, name: &str, t: Timer) {
        let secs = t.seconds();
        match self.stats.phases.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += secs,
            None => self.stats.phases.push((name.to_string(), secs)),
        }
    }

    fn note_peak(&mut self, bytes: u64) {
        self.stats.peak_bytes = self.stats.peak_bytes.max(bytes);
    }

    /// Text embeddings (77 x D each) of `prompts`, truncating with a note.
    pub async fn embed(
        &mut self,
        prompts: &[&str],
        progress: &mut dyn Progress,
    ) -> Result<Vec<Vec<f32>>> {
        let timer = Timer::start();
        let Some(tokenizer) = self.tokenizer else {
            return Err(PnpError::Input(
                "this pipeline has no tokenizer: pass text embeddings instead".into(),
            ));
        };
        let text = &self.model.text;
        let d = text.config.hidden_size;
        let len = tokenizer.max_len();
        let mut g = Graph::new(self.gpu.clone(), self.dtype);
        let x = g.input("token embeddings", &[1, len, d], self.dtype);
        let y = text.forward(&mut g, &x)?;
        g.output(&y);
        let plan = g.plan()?;
        self.note_peak(plan.planned_bytes());
        progress.phase("text", prompts.len());
        let mut out = Vec::new();
        for p in prompts {
            let enc = tokenizer.encode(p)?;
            if let Some(w) = enc.warning() {
                progress.note(&w);
            }
            plan.write(&x, &text.embed(&[enc.ids])?);
            plan.run();
            out.push(plan.read(&y).await?);
            progress.tick();
        }
        self.phase_done("text encoder", timer);
        Ok(out)
    }

    /// VAE encode: pixels (3, H, W) in [0, 1] -> posterior mean * scaling factor (1, 4, H/8, W/8).
    pub async fn encode_image(&mut self, pixels: &[f32], hw: [usize; 2]) -> Result<Vec<f32>> {
        let timer = Timer::start();
        let [h, w] = hw;
        check_size(hw)?;
        let vae = &self.model.vae;
        let mut g = Graph::new(self.gpu.clone(), self.dtype);
        let x = g.input("image", &[1, 3, h, w], self.dtype);
        let m = vae.encode_moments(&mut g, &x)?;
        g.output(&m);
        let plan = g.plan()?;
        self.note_peak(plan.planned_bytes());
        plan.write(
            &x,
            &pixels.iter().map(|p| 2.0 * p - 1.0).collect::<Vec<_>>(),
        );
        plan.run();
        let moments = plan.read(&m).await?;
        let lat = vae.config.latent_channels;
        let n = lat * (h / 8) * (w / 8);
        let scale = vae.config.scaling_factor;
        self.phase_done("vae encode", timer);
        Ok(moments[..n].iter().map(|v| v * scale).collect())
    }

    /// VAE decode: latent (1, 4, h, w) -> pixels (3, 8h, 8w) in [0, 1].
    pub async fn decode(&mut self, z: &[f32], hw: [usize; 2]) -> Result<Vec<f32>> {
        let timer = Timer::start();
        let vae = &self.model.vae;
        let lat = vae.config.latent_channels;
        let mut g = Graph::new(self.gpu.clone(), self.dtype);
        let x = g.input("latent", &[1, lat, hw[0], hw[1]], self.dtype);
        let y = vae.decode(&mut g, &x)?;
        g.output(&y);
        let plan = g.plan()?;
        self.note_peak(plan.planned_bytes());
        let scale = vae.config.scaling_factor;
        plan.write(&x, &z.iter().map(|v| v / scale).collect::<Vec<_>>());
        plan.run();
        let img = plan.read(&y).await?;
        self.phase_done("vae decode", timer);
        Ok(img
            .into_iter()
            .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
            .collect())
    }

    /// The UNet's inputs for `batch` rows of latents of size `hw`: latents,
    /// timesteps, text embeddings.
    fn unet_inputs(&self, g: &mut Graph, batch: usize, hw: [usize; 2]) -> (Value, Value, Value) {
        let unet = &self.model.unet;
        let x = g.input(
            "latents",
            &[batch, unet.config.in_channels, hw[0], hw[1]],
            self.dtype,
        );
        let t = Unet::timestep_input(g, batch);
        let ctx = g.input(
            "text",
            &[batch, self.text_len(), unet.config.cross_attention_dim],
            self.dtype,
        );
        (x, t, ctx)
    }

    fn unet_plan(
        &self,
        batch: usize,
        hw: [usize; 2],
        store: Option<&FeatureStore>,
        hooks: impl FnOnce(Option<&StoreValues>) -> Hooks<'_>,
    ) -> Result<UnetPlan> {
        let unet = &self.model.unet;
        let mut g = Graph::new(self.gpu.clone(), self.dtype);
        let (x, t, ctx) = self.unet_inputs(&mut g, batch, hw);
        let values = store.map(|s| s.bind(&mut g));
        let hooks = hooks(values.as_ref());
        let eps = unet.forward_hooked(&mut g, &x, &t, &ctx, &hooks)?;
        drop(hooks);
        g.output(&eps);
        let plan = g.plan()?;
        Ok(UnetPlan {
            plan,
            x,
            t,
            ctx,
            eps,
        })
    }

    async fn run_unet(
        &mut self,
        p: &UnetPlan,
        x: &[f32],
        t: usize,
        ctx: &[f32],
    ) -> Result<Vec<f32>> {
        let batch = p.x.dim(0);
        p.plan.write(&p.x, x);
        p.plan.write(&p.t, &vec![t as f32; batch]);
        p.plan.write(&p.ctx, ctx);
        p.plan.run();
        self.stats.unet_evals += batch;
        Ok(p.plan.read(&p.eps).await?)
    }

    /// DDIM inversion of z0 (stage 2) under the inversion prompt's embedding.
    pub async fn invert(
        &mut self,
        z0: &[f32],
        hw: [usize; 2],
        c_inv: &[f32],
        steps: usize,
        progress: &mut dyn Progress,
    ) -> Result<Inversion> {
        let timer = Timer::start();
        let mut grid = self.scheduler.timesteps(steps)?;
        grid.reverse(); // ascending
        let p = self.unet_plan(1, hw, None, |_| Hooks::default())?;
        self.note_peak(p.plan.planned_bytes());
        progress.phase("inversion", grid.len());
        let mut z = z0.to_vec();
        let mut latents = BTreeMap::new();
        for (i, &t) in grid.iter().enumerate() {
            let eps = self.run_unet(&p, &z, t, c_inv).await?;
            z = self
                .scheduler
                .invert_step(&z, &eps, t, (i > 0).then(|| grid[i - 1]));
            latents.insert(t, z.clone());
            progress.tick();
        }
        self.phase_done("inversion", timer);
        Ok(Inversion {
            hw,
            z0: z0.to_vec(),
            steps,
            latents,
        })
    }

    /// Stage 3 for every target prompt, sharing one inversion and one feature
    /// store. `c_*` are text embeddings (77 x D). Returns the final latents per prompt.
    pub async fn sample(
        &mut self,
        inv: &Inversion,
        c_src: &[f32],
        c_neg: &[f32],
        c_pos: &[Vec<f32>],
        opts: &PnpOptions,
        progress: &mut dyn Progress,
    ) -> Result<Vec<Vec<f32>>> {
        let n = opts.steps;
        let grid = self.scheduler.timesteps(n)?;
        if let Some(t) = grid.iter().find(|t| !inv.latents.contains_key(t)) {
            let ok = self.scheduler.compatible_inversion_steps(n);
            return Err(PnpError::Input(format!(
                "the {}-step inversion has no latent at sampling timestep {t}: with {n} sampling steps, use --inversion-steps in {ok:?}",
                inv.steps
            )));
        }
        let n_f = ((n as f64) * opts.pnp_f_t as f64).floor() as usize;
        let n_qk = ((n as f64) * opts.pnp_attn_t as f64).floor() as usize;
        let inject_at = |i: usize| Inject {
            features: i < n_f,
            qk: i < n_qk,
        };
        let hw = inv.hw;
        let shapes = TapShapes::new(&self.taps, &self.model.unet.config.block_out_channels, hw);
        let store_bytes = shapes.store_bytes(n_f, n_qk, self.dtype);
        let max_tensor = shapes
            .attn
            .iter()
            .map(|[l, c]| (n_qk * l * c * self.dtype.size()) as u64)
            .chain([(n_f * shapes.resnet.iter().product::<usize>() * self.dtype.size()) as u64])
            .max()
            .unwrap_or(0);
        let fits = max_tensor <= self.gpu.max_binding() && store_bytes <= opts.store_budget;
        let use_store = match opts.store {
            StoreMode::Resident => true,
            StoreMode::Inline => false,
            StoreMode::Auto => {
                if !fits {
                    progress.note(&format!(
                        "the feature store would take {} MiB (budget {} MiB, largest binding {} MiB): using the reference's inline source row instead",
                        store_bytes >> 20,
                        opts.store_budget >> 20,
                        self.gpu.max_binding() >> 20
                    ));
                }
                fits
            }
        };
        self.stats.used_store = use_store;
        let taps = Taps::pnp();
        let lat = inv.z0.len();

        // Source pass into the store, once for all prompts.
        let store = if use_store {
            let timer = Timer::start();
            let store = FeatureStore::new(&self.gpu, &shapes, n_f, n_qk, self.dtype);
            let mut plans: Vec<(Inject, UnetPlan)> = Vec::new();
            progress.phase("source features", n_f.max(n_qk));
            for (i, &t) in grid.iter().enumerate().take(n_f.max(n_qk)) {
                let what = inject_at(i);
                let at = match plans.iter().position(|(w, _)| *w == what) {
                    Some(at) => at,
                    None => {
                        let p = self.unet_plan(1, hw, Some(&store), |v| {
                            v.map(|v| capture_hooks(&taps, v, what)).unwrap_or_default()
                        })?;
                        plans.push((what, p));
                        plans.len() - 1
                    }
                };
                let p = &plans[at].1;
                p.plan.set_step(i);
                let z_t = &inv.latents[&t];
                let _ = self.run_unet(p, z_t, t, c_src).await?;
                progress.tick();
            }
            let planned: u64 = plans.iter().map(|(_, p)| p.plan.planned_bytes()).sum();
            self.note_peak(planned + store_bytes);
            self.phase_done("source pass (feature store)", timer);
            Some(store)
        } else {
            None
        };

        let timer = Timer::start();
        let mut plans: Vec<(Inject, UnetPlan)> = Vec::new();
        let mut finals = Vec::new();
        for (pi, c) in c_pos.iter().enumerate() {
            progress.phase(&format!("sampling prompt {}", pi + 1), n);
            let mut x = inv.latents[&grid[0]].clone();
            let ctx2 = concat_rows(&[c_neg, c]);
            let ctx3 = concat_rows(&[c_src, c_neg, c]);
            for (i, &t) in grid.iter().enumerate() {
                let what = inject_at(i);
                let inline = !use_store && (what.features || what.qk);
                let at = match plans.iter().position(|(w, _)| *w == what) {
                    Some(at) => at,
                    None => {
                        let batch = if inline { 3 } else { 2 };
                        let p = self.unet_plan(batch, hw, store.as_ref(), |v| {
                            inject_hooks(&taps, v, what)
                        })?;
                        plans.push((what, p));
                        plans.len() - 1
                    }
                };
                let p = &plans[at].1;
                p.plan.set_step(i);
                let eps = if inline {
                    let xs = concat_rows(&[&inv.latents[&t], &x, &x]);
                    let e = self.run_unet(p, &xs, t, &ctx3).await?;
                    e[lat..].to_vec()
                } else {
                    let xs = concat_rows(&[&x, &x]);
                    self.run_unet(p, &xs, t, &ctx2).await?
                };
                let (neg, pos) = eps.split_at(lat);
                let g = opts.guidance;
                let guided: Vec<f32> = neg.iter().zip(pos).map(|(u, c)| u + g * (c - u)).collect();
                x = self.scheduler.step(&x, &guided, t, n);
                progress.tick();
            }
            finals.push(x);
        }
        let planned: u64 = plans.iter().map(|(_, p)| p.plan.planned_bytes()).sum();
        self.note_peak(planned + if use_store { store_bytes } else { 0 });
        self.phase_done("sampling", timer);
        Ok(finals)
    }

    /// Text-to-image DDIM (eta 0) from seeded Gaussian noise, for generated
    /// guidance images (the paper's generated-image setting). Returns the
    /// trajectory as an [`Inversion`]: `latents[t]` is the latent the step at
    /// t started from, so `sample` injects the generation's own features;
    /// `z0` is the final latent. The noise comes from our own generator
    /// (splitmix64 + Box-Muller), not PyTorch's, so seeds do not carry over.
    #[allow(clippy::too_many_arguments)]
    pub async fn generate(
        &mut self,
        c_neg: &[f32],
        c_pos: &[f32],
        hw: [usize; 2],
        seed: u64,
        steps: usize,
        guidance: f32,
        progress: &mut dyn Progress,
    ) -> Result<Inversion> {
        let timer = Timer::start();
        let grid = self.scheduler.timesteps(steps)?;
        let channels = self.model.unet.config.in_channels;
        let mut x = gaussian(seed, channels * hw[0] * hw[1]);
        let p = self.unet_plan(2, hw, None, |_| Hooks::default())?;
        self.note_peak(p.plan.planned_bytes());
        let ctx = concat_rows(&[c_neg, c_pos]);
        let lat = x.len();
        let mut latents = BTreeMap::new();
        progress.phase("generation", grid.len());
        for &t in &grid {
            latents.insert(t, x.clone());
            let eps = self.run_unet(&p, &concat_rows(&[&x, &x]), t, &ctx).await?;
            let (neg, pos) = eps.split_at(lat);
            let guided: Vec<f32> = neg
                .iter()
                .zip(pos)
                .map(|(u, c)| u + guidance * (c - u))
                .collect();
            x = self.scheduler.step(&x, &guided, t, steps);
            progress.tick();
        }
        self.phase_done("generation", timer);
        Ok(Inversion {
            hw,
            z0: x,
            steps,
            latents,
        })
    }
}

fn check_size([h, w]: [usize; 2]) -> Result<()> {
    if h % 64 != 0 || w % 64 != 0 || h == 0 || w == 0 {
        return Err(PnpError::Input(format!(
            "image size {w}x{h} is not a multiple of 64 on both sides; resize it (the command line's --width/--height do)"
        )));
    }
    Ok(())
}

impl Pipeline<'_> {
    /// Records the largest graphs a translation of an image of `size` = [H,
    /// W] pixels needs (the VAE encoder and decoder, the UNet at `batch`
    /// rows) and checks them against the device's limits without running or
    /// allocating anything, so that a size this adapter cannot take is
    /// refused before minutes of work, not at the final decode.
    pub fn preflight(&self, size: [usize; 2], batch: usize) -> Result<()> {
        check_size(size)?;
        let [h, w] = size;
        self.record_all(size, batch).map_err(|e| {
            // Device-limit errors carry their own advice; shape errors do not.
            let advice = match e {
                PnpError::Gpu(_) => "",
                _ if self.dtype == DType::F32 => "; use a smaller size or f16",
                _ => "; use a smaller size",
            };
            PnpError::Input(format!(
                "this adapter cannot translate a {w}x{h} image: {e}{advice}"
            ))
        })
    }

    fn record_all(&self, [h, w]: [usize; 2], batch: usize) -> Result<()> {
        let vae = &self.model.vae;
        let unet = &self.model.unet;
        let mut g = Graph::new(self.gpu.clone(), self.dtype);
        let x = g.input("image", &[1, 3, h, w], self.dtype);
        vae.encode_moments(&mut g, &x)?;
        let lat = [1, vae.config.latent_channels, h / 8, w / 8];
        let z = g.input("latent", &lat, self.dtype);
        vae.decode(&mut g, &z)?;
        let (x, t, ctx) = self.unet_inputs(&mut g, batch, [h / 8, w / 8]);
        unet.forward_hooked(&mut g, &x, &t, &ctx, &Hooks::default())?;
        Ok(g.check_limits()?)
    }
}

/// Stages 1 and 2 of a translation, from [`Pipeline::prepare`].
pub struct Prepared {
    /// Text embeddings (77 x D) of the inversion prompt, "", the negative
    /// prompt, then each target prompt.
    pub embeddings: Vec<Vec<f32>>,
    pub inversion: Inversion,
    /// Latent size (h, w).
    pub hw: [usize; 2],
}

/// What [`Pipeline::translate`] made, per target prompt.
pub struct Translation {
    /// Final latents (1, 4, H/8, W/8).
    pub finals: Vec<Vec<f32>>,
    /// Decoded images (3, H, W) in [0, 1].
    pub images: Vec<Vec<f32>>,
    pub inversion: Inversion,
}

impl PnpOptions {
    /// Rows of the sampling batch: the inline source row makes it 3, the
    /// feature store's path 2.
    pub fn sampling_batch(&self) -> usize {
        if self.store == StoreMode::Inline {
            3
        } else {
            2
        }
    }
}

impl Pipeline<'_> {
    /// The whole translation of PNP-SPEC.md for one image (pixels (3, H, W)
    /// in [0, 1], `size` = [H, W]) and every prompt in `prompts`:
    /// [`Pipeline::prepare`], then [`Pipeline::finish`].
    pub async fn translate(
        &mut self,
        pixels: &[f32],
        size: [usize; 2],
        prompts: &[&str],
        opts: &PnpOptions,
        progress: &mut dyn Progress,
    ) -> Result<Translation> {
        let prepared = self
            .prepare(pixels, size, prompts, opts, None, progress)
            .await?;
        let (finals, images) = self.finish(&prepared, opts, progress).await?;
        Ok(Translation {
            finals,
            images,
            inversion: prepared.inversion,
        })
    }

    /// Checks the options and the size against this adapter before any GPU
    /// work, then makes the text embeddings and the inversion: VAE encode and
    /// DDIM inversion of the image, or `inversion` when one is given (a saved
    /// one, or a generation's own trajectory).
    pub async fn prepare(
        &mut self,
        pixels: &[f32],
        size: [usize; 2],
        prompts: &[&str],
        opts: &PnpOptions,
        inversion: Option<Inversion>,
        progress: &mut dyn Progress,
    ) -> Result<Prepared> {
        if prompts.is_empty() {
            return Err(PnpError::Input("give at least one target prompt".into()));
        }
        if !(0.0..=1.0).contains(&opts.pnp_f_t) || !(0.0..=1.0).contains(&opts.pnp_attn_t) {
            return Err(PnpError::Fractions);
        }
        let grid_ok = self
            .scheduler
            .inversion_grid_contains(opts.inversion_steps, opts.steps);
        if inversion.is_none() && !grid_ok {
            return Err(PnpError::InversionGrid {
                inversion_steps: opts.inversion_steps,
                steps: opts.steps,
                compatible: self.scheduler.compatible_inversion_steps(opts.steps),
            });
        }
        self.preflight(size, opts.sampling_batch())?;
        let hw = [size[0] / 8, size[1] / 8];
        let mut texts: Vec<&str> = vec![&opts.inversion_prompt, "", &opts.negative_prompt];
        texts.extend_from_slice(prompts);
        let embeddings = self.embed(&texts, progress).await?;
        let inversion = match inversion {
            Some(inv) => inv,
            None => {
                progress.phase("encode", 1);
                let z0 = self.encode_image(pixels, size).await?;
                progress.tick();
                self.invert(&z0, hw, &embeddings[0], opts.inversion_steps, progress)
                    .await?
            }
        };
        Ok(Prepared {
            embeddings,
            inversion,
            hw,
        })
    }

    /// Stage 3 for every target prompt, sharing one inversion and one
    /// feature store, and VAE decode: the final latents and the images.
    pub async fn finish(
        &mut self,
        prepared: &Prepared,
        opts: &PnpOptions,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        let emb = &prepared.embeddings;
        let finals = self
            .sample(
                &prepared.inversion,
                &emb[1],
                &emb[2],
                &emb[3..],
                opts,
                progress,
            )
            .await?;
        progress.phase("decode", finals.len());
        let mut images = Vec::with_capacity(finals.len());
        for z in &finals {
            images.push(self.decode(z, prepared.hw).await?);
            progress.tick();
        }
        Ok((finals, images))
    }
}

/// `n` standard normal samples from `seed` (splitmix64, Box-Muller).
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // Uniform in (0, 1]: never 0, so the log is finite.
        let u1 = ((next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}
