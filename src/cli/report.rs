//! `--report FILE`: a JSON record of one run: what was asked, on which
//! adapter, what each phase cost, and how often the host waited for the GPU.

use crate::model::ModelArgs;
use pnp::gpu::{CounterValues, DType, Gpu};
use pnp::pipeline::{PnpOptions, Stats};
use serde::Serialize;
use std::path::Path;

/// The record `--report` writes.
#[derive(Serialize)]
pub struct Report<'a> {
    command: &'static str,
    version: &'static str,
    model: &'a str,
    /// The flag and the storage type it gave ("auto: f16").
    precision: String,
    image: String,
    /// [width, height] processed.
    size: [usize; 2],
    prompts: &'a [String],
    options: &'a PnpOptions,
    adapter: String,
    phases: Vec<Phase>,
    unet_evals: usize,
    /// Dispatches of one replay of the largest loop plan, and its constant
    /// dispatches run once per phase and prompt.
    dispatches_per_step: usize,
    hoisted_dispatches: usize,
    /// Counted over the translation (after the model was loaded).
    gpu_submits: u64,
    /// Host reads of GPU buffers over the translation; each waits for the GPU.
    gpu_reads: u64,
    gpu_read_bytes: u64,
    gpu_writes: u64,
    gpu_write_bytes: u64,
    peak_planned_bytes: u64,
    weights_bytes: u64,
    peak_bytes_with_weights: u64,
    used_feature_store: bool,
    /// Every kernel variant compiled for the run (family.entry, type, constants).
    kernels: Vec<String>,
    /// What autotune timed, reused and chose (absent where it was off).
    autotune: Option<pnp::gpu::TuneSummary>,
}

#[derive(Serialize)]
pub struct Phase {
    name: String,
    seconds: f64,
}

/// What a run measured, from which [`Measured::report`] makes the record.
pub struct Measured<'a> {
    pub gpu: &'a Gpu,
    pub stats: &'a Stats,
    pub counters: CounterValues,
    pub weights_bytes: u64,
}

impl<'a> Measured<'a> {
    /// The record of a run of `command` with these measurements.
    pub fn report(
        &self,
        command: &'static str,
        model: &'a ModelArgs,
        image: &Path,
        size: [usize; 2],
        prompts: &'a [String],
        options: &'a PnpOptions,
    ) -> Report<'a> {
        let (s, c) = (self.stats, self.counters);
        Report {
            command,
            version: env!("CARGO_PKG_VERSION"),
            model: &model.model,
            precision: model.precision.name_on(self.gpu),
            image: image.display().to_string(),
            size,
            prompts,
            options,
            adapter: self.gpu.describe(),
            phases: self.phases(),
            unet_evals: s.unet_evals,
            dispatches_per_step: s.step_dispatches.0,
            hoisted_dispatches: s.step_dispatches.1,
            gpu_submits: c.submits,
            gpu_reads: c.reads,
            gpu_read_bytes: c.read_bytes,
            gpu_writes: c.writes,
            gpu_write_bytes: c.write_bytes,
            peak_planned_bytes: s.peak_bytes,
            weights_bytes: self.weights_bytes,
            peak_bytes_with_weights: s.peak_bytes + self.weights_bytes,
            used_feature_store: s.used_store,
            kernels: self.kernels(),
            autotune: self.gpu.tuner.as_ref().map(|t| t.summary()),
        }
    }

    fn phases(&self) -> Vec<Phase> {
        let p = &self.stats.phases;
        p.iter()
            .map(|(name, seconds)| Phase {
                name: name.clone(),
                seconds: *seconds,
            })
            .collect()
    }

    fn kernels(&self) -> Vec<String> {
        let mut keys: Vec<String> = (self.gpu.kernel_keys().iter())
            .map(|k| {
                let consts: Vec<String> =
                    k.consts.iter().map(|(n, v)| format!("{n}={v}")).collect();
                let dtype = match k.dtype {
                    DType::F32 => "f32",
                    DType::F16 => "f16",
                };
                format!("{}.{} {dtype} {}", k.family, k.entry, consts.join(","))
            })
            .collect();
        keys.sort();
        keys
    }
}
