//! `pnp bench plan`: the performance model. Records the UNet, VAE encoder
//! and VAE decoder graphs of SD 1.5 / 2.1-base as a chosen GPU would run
//! them (its largest binding, unbounded loops) and prints, without running
//! anything: dispatches by kernel family, FLOPs, bytes bound, workgroups,
//! the large dispatches that leave the GPU half idle, activation and weight
//! memory, and a roofline estimate per graph.
//!
//! The estimate sums max(FLOPs / peak, bytes / bandwidth) over the
//! dispatches. Our kernels compute in f32 on the ALUs at every storage
//! precision, so the peak is the FP32 one; the tensor-core FP16 column is
//! what the same arithmetic would cost on the matrix units (#12's target).

use super::pipeline::{Arch, synthetic_model};
use anyhow::{Result, anyhow};
use pnp::gpu::{DType, Gpu, Tensor};
use pnp::graph::{Dispatch, Graph};
use pnp::models::hooks::Hooks;
use pnp::models::sd::SdModel;
use pnp::ops::{DDIM_COEFFICIENTS, Guidance};
use pnp::pipeline::{LoopIo, StepTables, record_step};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A GPU the model is computed for. Dense (no sparsity) peaks.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub name: &'static str,
    /// Streaming multiprocessors (NVIDIA) or GPU cores (Apple).
    pub compute_units: u64,
    pub fp32_tflops: f64,
    pub tensor_fp16_tflops: f64,
    pub bandwidth_gbs: f64,
    /// Largest storage binding wgpu offers there (Vulkan/Metal), bytes.
    pub max_binding: u64,
    /// Where the figures come from.
    pub source: &'static str,
}

/// The profiles, in [`ProfileName`]'s order: figures from the vendors'
/// datasheets and whitepapers.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "h100",
        compute_units: 132,
        fp32_tflops: 66.9,
        tensor_fp16_tflops: 989.4,
        bandwidth_gbs: 3350.0,
        max_binding: 1 << 31,
        source: "NVIDIA H100 Tensor Core GPU datasheet, SXM5 (FP32 67 TF, FP16 tensor 989 TF dense, HBM3 3.35 TB/s), Hopper whitepaper (132 SMs)",
    },
    Profile {
        name: "a100",
        compute_units: 108,
        fp32_tflops: 19.5,
        tensor_fp16_tflops: 312.0,
        bandwidth_gbs: 2039.0,
        max_binding: 1 << 31,
        source: "NVIDIA A100 datasheet, SXM4 80 GB (FP32 19.5 TF, FP16 tensor 312 TF dense, 2,039 GB/s), Ampere whitepaper (108 SMs)",
    },
    Profile {
        name: "rtx4090",
        compute_units: 128,
        fp32_tflops: 82.6,
        tensor_fp16_tflops: 165.2,
        bandwidth_gbs: 1008.0,
        max_binding: 1 << 31,
        source: "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 (128 SMs, FP32 82.6 TF, FP16 tensor with FP32 accumulate 165.2 TF dense, 1,008 GB/s)",
    },
    Profile {
        name: "m2max",
        compute_units: 38,
        fp32_tflops: 13.6,
        // No separate matrix peak is published: simdgroup matrices run on the ALUs.
        tensor_fp16_tflops: 13.6,
        bandwidth_gbs: 400.0,
        max_binding: 1 << 30,
        source: "Apple M2 Max announcement, 38-core GPU (13.6 TF FP32, 400 GB/s unified memory)",
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileName {
    H100,
    A100,
    Rtx4090,
    M2max,
}

impl ProfileName {
    fn profile(self) -> &'static Profile {
        // PROFILES lists them in this enum's order.
        &PROFILES[self as usize]
    }
}

/// `pnp bench plan`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct PlanOptions {
    #[arg(long, value_enum, default_value = "sd15")]
    pub arch: Arch,
    /// Image side in pixels (multiple of 64).
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// UNet batch rows (1: inversion; 2: guided sampling; 3: the inline source row).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, value_enum, default_value = "h100")]
    pub profile: ProfileName,
    /// Storage precision.
    #[arg(long, value_enum, default_value = "f16")]
    pub precision: crate::Precision,
    /// Print JSON instead of the tables.
    #[arg(long)]
    pub json: bool,
}

/// One graph's figures (the JSON keys the issue asks for among them).
#[derive(Serialize)]
pub struct GraphFigures {
    pub name: &'static str,
    pub batch: usize,
    /// Dispatches per evaluation (the replay).
    pub dispatches: usize,
    /// Constant dispatches hoisted out of the replay (once per phase and prompt).
    pub hoisted: usize,
    pub by_kind: BTreeMap<&'static str, usize>,
    pub flops: u64,
    pub bytes: u64,
    /// Dispatches of at least 1 GFLOP launching fewer than twice the profile's compute units.
    pub starved: usize,
    /// The starved dispatches by kernel, arithmetic and workgroups.
    pub starved_kinds: BTreeMap<String, usize>,
    /// Workgroups of the smallest and the median dispatch.
    pub workgroups_min: u64,
    pub workgroups_median: u64,
    pub activation_bytes: u64,
    pub weights_bytes: u64,
    /// Roofline over the dispatches with the FP32 ALU peak (how our kernels compute).
    pub estimate_ms: f64,
    /// The same arithmetic at the tensor-core FP16 peak.
    pub estimate_tensor_ms: f64,
}

#[derive(Serialize)]
struct Output<'a> {
    arch: &'static str,
    size: usize,
    precision: &'static str,
    profile: &'static str,
    profile_source: &'static str,
    graphs: &'a [GraphFigures],
}

fn figures(name: &'static str, batch: usize, g: &Graph, p: &Profile) -> GraphFigures {
    // Hoisted dispatches run once per phase, not per evaluation.
    let (once, d): (Vec<Dispatch>, Vec<Dispatch>) =
        g.dispatches().into_iter().partition(|x| x.once);
    let mut by_kind = BTreeMap::new();
    for x in &d {
        *by_kind.entry(x.family).or_insert(0) += 1;
    }
    let time = |peak_tflops: f64| -> f64 {
        d.iter()
            .map(|x| {
                let compute = x.flops as f64 / (peak_tflops * 1e12);
                let memory = x.bytes as f64 / (p.bandwidth_gbs * 1e9);
                compute.max(memory)
            })
            .sum::<f64>()
            * 1e3
    };
    let starved: Vec<&Dispatch> = (d.iter())
        .filter(|x| x.flops >= 1_000_000_000 && x.workgroups < 2 * p.compute_units)
        .collect();
    let mut groups: Vec<u64> = d.iter().map(|x| x.workgroups).collect();
    groups.sort_unstable();
    GraphFigures {
        name,
        batch,
        dispatches: d.len(),
        hoisted: once.len(),
        by_kind,
        flops: d.iter().map(|x| x.flops).sum(),
        bytes: d.iter().map(|x| x.bytes).sum(),
        starved: starved.len(),
        starved_kinds: {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for x in &starved {
                let key = format!(
                    "{} {:.1} GFLOP x {} workgroups",
                    x.family,
                    x.flops as f64 / 1e9,
                    x.workgroups
                );
                *kinds.entry(key).or_insert(0) += 1;
            }
            kinds
        },
        workgroups_min: groups.first().copied().unwrap_or(0),
        workgroups_median: groups.get(groups.len() / 2).copied().unwrap_or(0),
        activation_bytes: g.activation_bytes(),
        weights_bytes: g.external_bytes(),
        estimate_ms: time(p.fp32_tflops),
        estimate_tensor_ms: time(p.tensor_fp16_tflops),
    }
}

/// Records the three graphs of `model` for profile `p`.
pub fn model_graphs(
    gpu: &Arc<Gpu>,
    model: &SdModel,
    dtype: DType,
    size: usize,
    batch: usize,
    p: &Profile,
) -> Result<Vec<GraphFigures>> {
    let graph = || {
        let mut g = Graph::new(gpu.clone(), dtype);
        g.model_device(p.max_binding, p.compute_units);
        g
    };
    let (unet, vae) = (&model.unet, &model.vae);
    let lat = [size / 8, size / 8];

    // The UNet as the loop replays it: latent rows from the state, the
    // UNet, guidance over up to three rows and the update; one step of
    // tables suffices.
    let mut g = graph();
    let latent = [unet.config.in_channels, lat[0], lat[1]];
    let state = Tensor::empty(
        gpu,
        "state",
        &[2, latent[0], latent[1], latent[2]],
        DType::F32,
    );
    let tables = StepTables::new(gpu, &[1], &[[0.0; DDIM_COEFFICIENTS]]);
    let text = [
        batch,
        model.text.config.max_position_embeddings,
        unet.config.cross_attention_dim,
    ];
    let ctx = Tensor::empty(gpu, "text", &text, dtype);
    let rows = batch.min(3);
    let io = LoopIo::forward(
        &state,
        &tables,
        &ctx,
        Guidance {
            row0: batch - rows,
            rows,
            v_prediction: false,
        },
    );
    record_step(&mut g, unet, batch, lat, &io, &Hooks::default())?;
    let mut out = vec![figures("unet", batch, &g, p)];

    let mut g = graph();
    let img = g.input("image", &[1, 3, size, size], dtype);
    let m = vae.encode_moments(&mut g, &img)?;
    g.output(&m);
    out.push(figures("vae_encoder", 1, &g, p));

    let mut g = graph();
    let z = g.input(
        "latent",
        &[1, vae.config.latent_channels, lat[0], lat[1]],
        dtype,
    );
    let y = vae.decode(&mut g, &z)?;
    g.output(&y);
    out.push(figures("vae_decoder", 1, &g, p));
    Ok(out)
}

pub fn run(gpu: &Arc<Gpu>, opts: &PlanOptions) -> Result<()> {
    let size = opts.size;
    if size == 0 || !size.is_multiple_of(64) {
        anyhow::bail!("--size {size} is not a positive multiple of 64");
    }
    let dtype = opts.precision.dtype(gpu)?;
    let p = opts.profile.profile();
    let model = synthetic_model(gpu, opts.arch, dtype).map_err(|e| anyhow!(e))?;
    let graphs = model_graphs(gpu, &model, dtype, size, opts.batch.max(1), p)?;
    if opts.json {
        let o = Output {
            arch: opts.arch.name(),
            size,
            precision: dtype.wgsl(),
            profile: p.name,
            profile_source: p.source,
            graphs: &graphs,
        };
        println!("{}", serde_json::to_string_pretty(&o)?);
        return Ok(());
    }
    println!(
        "performance model: {} {size}x{size}, {} storage, as recorded for {} ({} compute units, FP32 {} TF, tensor FP16 {} TF, {} GB/s; {})",
        opts.arch.name(),
        dtype.wgsl(),
        p.name,
        p.compute_units,
        p.fp32_tflops,
        p.tensor_fp16_tflops,
        p.bandwidth_gbs,
        p.source
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for f in &graphs {
        println!(
            "{} (batch {}): {} dispatches (+{} hoisted, once per phase), {:.1} GFLOP, {:.0} MiB bound, {} starved (>= 1 GFLOP, < {} workgroups), workgroups min {} median {}",
            f.name,
            f.batch,
            f.dispatches,
            f.hoisted,
            f.flops as f64 / 1e9,
            mib(f.bytes),
            f.starved,
            2 * p.compute_units,
            f.workgroups_min,
            f.workgroups_median
        );
        let kinds: Vec<String> = f.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("  by kernel: {}", kinds.join(", "));
        if !f.starved_kinds.is_empty() {
            let kinds: Vec<String> = (f.starved_kinds.iter())
                .map(|(k, n)| format!("{n}x {k}"))
                .collect();
            println!("  starved: {}", kinds.join("; "));
        }
        println!(
            "  activations {:.1} MiB, weights {:.1} MiB; roofline {:.2} ms on FP32 ALUs, {:.2} ms at the tensor FP16 peak",
            mib(f.activation_bytes),
            mib(f.weights_bytes),
            f.estimate_ms,
            f.estimate_tensor_ms
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ProfileName;
    use clap::ValueEnum;

    #[test]
    fn each_profile_name_finds_its_profile() {
        for p in ProfileName::value_variants() {
            let flag = p.to_possible_value().expect("named");
            assert_eq!(p.profile().name, flag.get_name());
        }
    }
}
