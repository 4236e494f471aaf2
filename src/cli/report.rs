//! `--report FILE`: a JSON record of one run: what was asked, on which
//! adapter, what each phase cost, and how often the host waited for the GPU.

use pnp::gpu::{CounterValues, DType, Gpu};
use pnp::pipeline::{PnpOptions, Stats};
use serde::Serialize;

/// The record `--report` writes.
#[derive(Serialize)]
pub struct Report<'a> {
    pub command: &'static str,
    pub version: &'static str,
    pub model: &'a str,
    pub precision: &'static str,
    pub image: String,
    /// [width, height] processed.
    pub size: [usize; 2],
    pub prompts: &'a [String],
    pub options: &'a PnpOptions,
    pub adapter: String,
    pub phases: Vec<Phase>,
    pub unet_evals: usize,
    /// Counted over the translation (after the model was loaded).
    pub gpu_submits: u64,
    /// Host reads of GPU buffers over the translation; each waits for the GPU.
    pub gpu_reads: u64,
    pub gpu_read_bytes: u64,
    pub gpu_writes: u64,
    pub gpu_write_bytes: u64,
    pub peak_planned_bytes: u64,
    pub weights_bytes: u64,
    pub peak_bytes_with_weights: u64,
    pub used_feature_store: bool,
    /// Every kernel variant compiled for the run (family.entry, type, constants).
    pub kernels: Vec<String>,
}

#[derive(Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
}

/// The parts of a report the run measured.
pub struct Measured<'a> {
    pub gpu: &'a Gpu,
    pub stats: &'a Stats,
    pub counters: CounterValues,
    pub weights_bytes: u64,
}

impl Measured<'_> {
    pub fn phases(&self) -> Vec<Phase> {
        let p = &self.stats.phases;
        p.iter()
            .map(|(name, seconds)| Phase {
                name: name.clone(),
                seconds: *seconds,
            })
            .collect()
    }

    pub fn kernels(&self) -> Vec<String> {
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
