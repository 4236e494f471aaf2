//! The pipeline and its single stages: text embeddings, VAE encode and
//! decode, and planned UNet graphs (docs/ALGORITHM.md, "Stages").

use super::options::{Embeddings, PnpOptions};
use super::scheduler::Ddim;
use super::store::{Inject, Taps};
use super::{PnpError, Result, Stats};
use crate::gpu::{DType, Gpu, InFlight, Tensor};
use crate::graph::{Arena, Graph, Plan, Value};
use crate::models::sd::SdModel;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::Unet;
use crate::ops::{self, Slot};
use crate::progress::{Progress, Timer};
use std::sync::Arc;

pub struct Pipeline<'a> {
    pub gpu: Arc<Gpu>,
    pub model: &'a SdModel,
    /// None: built by [`Pipeline::from_embeddings`]; [`Pipeline::embed`] then fails.
    pub tokenizer: Option<&'a ClipTokenizer>,
    pub scheduler: Ddim,
    /// Storage type of activations (the weights were uploaded in it).
    pub dtype: DType,
    pub stats: Stats,
    pub(super) taps: Taps,
    /// Largest storage binding the recorded graphs may use: the device's,
    /// unless lowered with [`Pipeline::set_max_binding`].
    max_binding: u64,
}

/// UNet plans by the injections they make: a phase builds each variant once,
/// all in one arena of intermediates (they never run at the same time).
#[derive(Default)]
pub(super) struct PlanCache {
    plans: Vec<(Inject, Plan)>,
    arena: Arena,
}

impl PlanCache {
    /// Plans every variant of `whats` (each recorded by `record`), the one
    /// with the most intermediate bytes first: the arena's buffers are sized
    /// by it, and the others' fit in them.
    pub async fn plan_all(
        &mut self,
        whats: &[Inject],
        mut record: impl FnMut(Inject) -> Result<Graph>,
    ) -> Result<()> {
        let mut graphs = Vec::new();
        for &what in whats {
            if !graphs.iter().any(|(w, _)| *w == what) {
                graphs.push((what, record(what)?));
            }
        }
        graphs.sort_by_key(|(_, g)| std::cmp::Reverse(g.intermediate_bytes()));
        for (what, g) in graphs {
            g.tune().await?;
            let plan = g.plan_in(&mut self.arena)?;
            self.plans.push((what, plan));
        }
        Ok(())
    }

    /// The plan of variant `what`, made by [`Self::plan_all`].
    pub fn get(&self, what: Inject) -> Result<&Plan> {
        (self.plans.iter())
            .find(|(w, _)| *w == what)
            .map(|(_, p)| p)
            .ok_or_else(|| PnpError::Input(format!("no plan was made for the injections {what:?}")))
    }

    /// Reruns every plan's constant dispatches before its next replay (the
    /// text rows they read were rewritten).
    pub fn refresh(&self) {
        self.plans.iter().for_each(|(_, p)| p.refresh());
    }

    /// Bytes the cached plans hold together: the shared arena, and each
    /// plan's own inputs, outputs and hoisted values.
    pub fn planned_bytes(&self) -> u64 {
        self.arena.bytes() + self.plans.iter().map(|(_, p)| p.io_bytes).sum::<u64>()
    }
}

/// `rows` one after another.
pub(super) fn concat_rows(rows: &[&[f32]]) -> Vec<f32> {
    rows.iter().flat_map(|r| r.iter().copied()).collect()
}

/// Refuses an image size the networks cannot take ([`crate::picture::check_size`]).
pub fn check_size([h, w]: [usize; 2]) -> Result<()> {
    crate::picture::check_size(w, h).map_err(|e| PnpError::Input(e.to_string()))
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
            max_binding: gpu.max_binding(),
            gpu,
            model,
            tokenizer: None,
            scheduler,
            dtype,
            stats: Stats::default(),
            taps: Taps::pnp(),
        }
    }

    /// Lowers the largest binding every graph of this pipeline may use (never
    /// above the device's): ops split their work under it, preflight checks
    /// against it, and the feature store must fit it. For tests and for
    /// sizing a run for a smaller device.
    pub fn set_max_binding(&mut self, bytes: u64) {
        self.max_binding = bytes.min(self.gpu.max_binding());
    }

    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// An empty graph on this pipeline's device, type and binding limit.
    pub(super) fn graph(&self) -> Graph {
        let mut g = Graph::new(self.gpu.clone(), self.dtype);
        g.set_max_binding(self.max_binding);
        g
    }

    /// Tokens per prompt: the tokenizer's, else the text encoder's positions.
    fn text_len(&self) -> usize {
        self.tokenizer.map_or(
            self.model.text.config.max_position_embeddings,
            ClipTokenizer::max_len,
        )
    }

    /// Adds the timer's seconds to phase `name` (decoding several prompts is one phase).
    pub(super) fn phase_done(&mut self, name: &str, t: Timer) {
        let secs = t.seconds();
        match self.stats.phases.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += secs,
            None => self.stats.phases.push((name.to_string(), secs)),
        }
    }

    /// Refuses non-finite `values` at the end of `phase`, naming the likely
    /// `cause` (and f16 overflow on an f16 run): a NaN would otherwise end
    /// as a black image with no word. A pass over values the phase brought
    /// back to the host anyway.
    pub(super) fn check_finite(&self, phase: &str, values: &[f32], cause: &str) -> Result<()> {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        if count == 0 {
            return Ok(());
        }
        let cause = match self.dtype {
            DType::F16 => format!("{cause}, or f16 overflow: rerun in f32 (--precision f32)"),
            DType::F32 => cause.to_string(),
        };
        Err(PnpError::NonFinite {
            phase: phase.to_string(),
            count,
            total: values.len(),
            cause,
        })
    }

    pub(super) fn note_peak(&mut self, bytes: u64) {
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
        progress.phase("text", 1);
        let mut ids = Vec::with_capacity(prompts.len());
        for p in prompts {
            let enc = tokenizer.encode(p)?;
            if let Some(w) = enc.warning() {
                progress.note(&w);
            }
            ids.push(enc.ids);
        }
        // Every prompt in one batch: one run, one read.
        let mut g = self.graph();
        let x = g.input("token embeddings", &[prompts.len(), len, d], self.dtype);
        let y = text.forward(&mut g, &x)?;
        g.output(&y);
        g.tune().await?;
        let plan = g.plan()?;
        self.note_peak(plan.planned_bytes());
        plan.write(&x, &text.embed(&ids)?);
        plan.run();
        let all = plan.read(&y).await?;
        let out: Vec<Vec<f32>> = all.chunks_exact(len * d).map(<[f32]>::to_vec).collect();
        for (p, e) in prompts.iter().zip(&out) {
            self.check_finite(
                &format!("encoding the prompt {p:?}"),
                e,
                "non-finite text encoder weights",
            )?;
        }
        progress.tick();
        self.phase_done("text encoder", timer);
        Ok(out)
    }

    /// Text rows `(rows, tokens, width)` in the graph's type on the device,
    /// from embeddings of one prompt each: a phase's UNet context, written once.
    pub(super) fn text_rows(&self, rows: &[&[f32]]) -> Tensor {
        let per = rows.first().map_or(0, |r| r.len());
        let d = self.model.unet.config.cross_attention_dim;
        Tensor::from_f32(
            &self.gpu,
            "text rows",
            &concat_rows(rows),
            &[rows.len(), per / d.max(1), d],
            self.dtype,
        )
    }

    /// Every text embedding a translation with `opts` and `targets` needs.
    pub async fn embeddings(
        &mut self,
        opts: &PnpOptions,
        targets: &[&str],
        progress: &mut dyn Progress,
    ) -> Result<Embeddings> {
        let all = self.embed(&opts.texts(targets), progress).await?;
        Embeddings::from_ordered(all)
            .ok_or_else(|| PnpError::Input("the text encoder returned too few embeddings".into()))
    }

    /// VAE encode: pixels (3, H, W) in [0, 1] -> posterior mean * scaling factor (1, 4, H/8, W/8).
    pub async fn encode_image(&mut self, pixels: &[f32], hw: [usize; 2]) -> Result<Vec<f32>> {
        let timer = Timer::start();
        let [h, w] = hw;
        check_size(hw)?;
        let vae = &self.model.vae;
        let mut g = self.graph();
        let x = g.input("image", &[1, 3, h, w], self.dtype);
        let m = vae.encode_moments(&mut g, &x)?;
        g.output(&m);
        g.tune().await?;
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
        self.check_finite("the VAE encode", &moments[..n], "the VAE encoder's weights")?;
        self.phase_done("vae encode", timer);
        Ok(moments[..n].iter().map(|v| v * scale).collect())
    }

    /// VAE decode: latent (1, 4, h, w) -> pixels (3, 8h, 8w) in [0, 1].
    pub async fn decode(&mut self, z: &[f32], hw: [usize; 2]) -> Result<Vec<f32>> {
        let z = self.slots("latent", 1, hw, Some(z));
        let images = self
            .decode_on_gpu(&z, hw, &mut crate::progress::Quiet)
            .await?;
        self.image(images.to_f32(&self.gpu).await?)
    }

    /// A decoded image read back, (3, H, W) in [-1, 1], refused if not
    /// finite, mapped to [0, 1].
    pub(super) fn image(&self, img: Vec<f32>) -> Result<Vec<f32>> {
        self.check_finite("the VAE decode", &img, "the VAE decoder's weights")?;
        Ok(img
            .into_iter()
            .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
            .collect())
    }

    /// VAE decode of every slot of `latents` ((n, 4, h, w) float32 on the
    /// device) into (n, 3, 8h, 8w) in the graph's type, in [-1, 1], left on
    /// the device; [`Self::image`] takes each once read.
    pub(super) async fn decode_on_gpu(
        &mut self,
        latents: &Tensor,
        hw: [usize; 2],
        progress: &mut dyn Progress,
    ) -> Result<Tensor> {
        let timer = Timer::start();
        let vae = &self.model.vae;
        let lat = vae.config.latent_channels;
        let n = latents.shape[0];
        let mut g = self.graph();
        let state = g.external("latents", latents);
        let (x, _) = ops::latent_rows(
            &mut g,
            &state,
            Slot::each_step(0),
            None,
            None,
            1,
            &[lat, hw[0], hw[1]],
            1.0 / vae.config.scaling_factor,
        )?;
        let y = vae.decode(&mut g, &x)?;
        g.output(&y);
        g.tune().await?;
        let plan = g.plan()?;
        self.note_peak(plan.planned_bytes());
        let mut shape = y.shape.clone();
        shape[0] = n;
        let images = Tensor::empty(&self.gpu, "images", &shape, self.dtype);
        let out = plan.tensor(&y);
        let mut flight = InFlight::default();
        for i in 0..n {
            plan.set_step(i);
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            plan.encode(&mut enc);
            let to = images.row(i);
            enc.copy_buffer_to_buffer(&out.buffer, out.offset, &to.buffer, to.offset, out.bytes());
            self.gpu.submit(enc.finish(), &mut flight);
        }
        self.drain(&mut flight, progress).await?;
        self.phase_done("vae decode", timer);
        Ok(images)
    }

    /// The UNet's inputs for `batch` rows of latents of size `hw`: latents,
    /// timesteps, text embeddings.
    pub(super) fn unet_inputs(
        &self,
        g: &mut Graph,
        batch: usize,
        hw: [usize; 2],
    ) -> (Value, Value, Value) {
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
}
