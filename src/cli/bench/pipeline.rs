//! `pnp bench pipeline`: the real SD 1.5 / SD 2.1-base networks, built with
//! synthetic weights (no files), timed end to end: one UNet step at batch 1,
//! 2 and 3, VAE encode and decode, and whole translations through the real
//! pipeline (50 inversion steps; the default 999 with `full`). A benchmark,
//! never a test; `size` below 512 for smoke runs on software adapters.

use pnp::gpu::{DType, Gpu};
use pnp::graph::{Graph, Plan, Value};
use pnp::models::config::{ClipConfig, UnetConfig, VaeConfig};
use pnp::models::nn::Ctx;
use pnp::models::presets;
use pnp::models::sd::SdModel;
use pnp::models::unet::Unet;
use pnp::models::weights::Weights;
use pnp::pipeline::scheduler::Ddim;
use pnp::pipeline::{Embeddings, Pipeline, PnpOptions};
use pnp::progress::Quiet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which base model's shapes to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// runwayml/stable-diffusion-v1-5
    Sd15,
    /// stabilityai/stable-diffusion-2-1-base
    Sd21Base,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sd15 => "sd15",
            Arch::Sd21Base => "sd21-base",
        }
    }

    /// The diffusers configs (text encoder, UNet, VAE).
    pub fn configs(self) -> (ClipConfig, UnetConfig, VaeConfig) {
        match self {
            Arch::Sd15 => presets::sd15(),
            Arch::Sd21Base => presets::sd21_base(),
        }
    }

    /// Parameter counts of the real checkpoint (text encoder, UNet, VAE).
    pub fn known_parameters(self) -> [usize; 3] {
        match self {
            Arch::Sd15 => presets::SD15_PARAMS,
            Arch::Sd21Base => presets::SD21_BASE_PARAMS,
        }
    }
}

/// `pnp bench pipeline`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct PipelineBenchOptions {
    #[arg(long, value_enum, default_value = "sd15")]
    pub arch: Arch,
    /// Image side in pixels (multiple of 64); 512 is the real size, 64 a smoke run for lavapipe.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Timed runs per step, after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Also run the default translation with 999 inversion steps.
    #[arg(long)]
    pub full: bool,
    /// Time the UNet steps only (no VAE, no translations), for slow adapters.
    #[arg(long, conflicts_with = "vae_only")]
    pub unet_only: bool,
    /// Time the VAE encode and decode only (no UNet, no translations).
    #[arg(long)]
    pub vae_only: bool,
    /// Storage precision of weights and activations: auto is f16 where the adapter has
    /// SHADER_F16, else f32; f32 is the exact path.
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: crate::Precision,
}

/// Where a step's time goes, by kernel family, from autotune's timings of
/// each dispatch alone (nothing where autotune is off): milliseconds,
/// dispatches and TFLOP/s per family; the kernels without variants (norms,
/// elementwise, copies) are not timed and are counted apart.
fn write_profile(out: &mut dyn Write, g: &Graph) -> Result<(), BoxError> {
    let Some(dispatches) = g.tuned_dispatches() else {
        return Ok(());
    };
    let mut families: Vec<(&str, usize, u64, f64)> = Vec::new();
    let mut untimed = (0, 0u64);
    for d in &dispatches {
        match d.micros {
            Some(us) => match families.iter_mut().find(|f| f.0 == d.family) {
                Some(f) => {
                    f.1 += 1;
                    f.2 += d.flops;
                    f.3 += us;
                }
                None => families.push((d.family, 1, d.flops, us)),
            },
            None => {
                untimed.0 += 1;
                untimed.1 += d.flops;
            }
        }
    }
    let total: f64 = families.iter().map(|f| f.3).sum();
    writeln!(
        out,
        "  autotune's timings of its dispatches, alone: {:.2} ms in all",
        total / 1e3
    )?;
    for (family, n, flops, us) in families {
        writeln!(
            out,
            "    {family:<15} {:>8.2} ms {:>5.1}%  {n:>4} dispatches {:>8.1} GFLOP {:>7.1} TFLOP/s",
            us / 1e3,
            100.0 * us / total.max(1e-9),
            flops as f64 / 1e9,
            flops as f64 / (us * 1e-6) / 1e12
        )?;
    }
    writeln!(
        out,
        "    not timed (no variants): {} dispatches, {:.1} GFLOP",
        untimed.0,
        untimed.1 as f64 / 1e9
    )?;
    Ok(())
}

/// `n` numbers uniform in [-1, 1) from `seed`.
fn random(n: usize, seed: u64) -> Vec<f32> {
    pnp::rand::SplitMix64::new(seed).signed_units(n)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Largest |v|, or NaN when any value is not finite.
fn max_abs(v: &[f32]) -> f32 {
    v.iter()
        .try_fold(0f32, |m, x| x.is_finite().then(|| m.max(x.abs())))
        .unwrap_or(f32::NAN)
}

/// One planned graph with its inputs, timed by replaying it.
struct Timed {
    plan: Plan,
    inputs: Vec<(Value, Vec<f32>)>,
    output: Value,
}

impl Timed {
    /// Writes the inputs, runs once to warm up, then `iters` times:
    /// (seconds per run, max |output| of the warm-up run).
    fn time(&self, gpu: &Gpu, iters: usize) -> Result<(f64, f32), BoxError> {
        for (v, data) in &self.inputs {
            self.plan.write(v, data);
        }
        self.plan.run();
        let out = pollster::block_on(self.plan.read(&self.output))?;
        gpu.wait_idle()?;
        let start = Instant::now();
        for _ in 0..iters {
            self.plan.run();
        }
        gpu.wait_idle()?;
        Ok((start.elapsed().as_secs_f64() / iters as f64, max_abs(&out)))
    }
}

/// The real networks of `arch` with made-up weights, on the device.
pub fn synthetic_model(gpu: &Gpu, arch: Arch, dtype: DType) -> Result<SdModel, BoxError> {
    let (tc, uc, vc) = arch.configs();
    let name = arch.name();
    let synthetic = |part: &str, seed| Weights::synthetic(format!("synthetic {name} {part}"), seed);
    Ok(SdModel::from_parts(
        Ctx { gpu, dtype },
        PathBuf::from(format!("synthetic:{name}")),
        (synthetic("text_encoder", 1), tc),
        (synthetic("unet", 2), uc),
        (synthetic("vae", 3), vc),
    )?)
}

/// Builds the synthetic model and runs every timing, writing a report to `out`.
pub fn run(
    gpu: &Arc<Gpu>,
    opts: &PipelineBenchOptions,
    dtype: DType,
    out: &mut dyn Write,
) -> Result<(), BoxError> {
    let size = opts.size;
    if size == 0 || !size.is_multiple_of(64) {
        return Err(format!("--size {size} is not a positive multiple of 64").into());
    }
    let iters = opts.iters.max(1);
    let name = opts.arch.name();
    writeln!(
        out,
        "pipeline benchmark: {name} with synthetic weights, {size}x{size}, {dtype:?}, {iters} iterations, on {}",
        gpu.describe()
    )?;

    // Build.
    let start = Instant::now();
    let model = synthetic_model(gpu, opts.arch, dtype)?;
    gpu.wait_idle()?;
    writeln!(
        out,
        "build (make up + upload weights): {:.2} s",
        start.elapsed().as_secs_f64()
    )?;
    let mut params = 0;
    for (r, known) in model.report.iter().zip(opts.arch.known_parameters()) {
        params += r.parameters;
        let diff = r.parameters as i64 - known as i64;
        writeln!(
            out,
            "  {:<13} {:>13} parameters (real checkpoint {:>13}{})",
            r.name,
            group(r.parameters),
            group(known),
            if diff == 0 {
                ": same".to_string()
            } else {
                format!(", difference {diff:+}")
            }
        )?;
    }
    let weight_bytes = (params * dtype.size()) as u64;
    writeln!(out, "  weights on the device: {:.0} MiB", mib(weight_bytes))?;

    // UNet steps.
    let unet = &model.unet;
    let text_len = model.text.config.max_position_embeddings;
    let lhw = [size / 8, size / 8];
    let mut peak = 0u64;
    let batches = if opts.vae_only { 0 } else { 3 };
    for batch in 1..=batches {
        let start = Instant::now();
        let mut g = Graph::new(gpu.clone(), dtype);
        let x = g.input(
            "latents",
            &[batch, unet.config.in_channels, lhw[0], lhw[1]],
            dtype,
        );
        let t = Unet::timestep_input(&mut g, batch);
        let c = g.input(
            "text",
            &[batch, text_len, unet.config.cross_attention_dim],
            dtype,
        );
        let eps = unet.forward(&mut g, &x, &t, &c)?;
        g.output(&eps);
        let tune_start = Instant::now();
        pollster::block_on(g.tune())?;
        let tuning = tune_start.elapsed().as_secs_f64();
        let plan = g.plan()?;
        let planned = plan.planned_bytes();
        let build = start.elapsed().as_secs_f64();
        let timed = Timed {
            inputs: vec![
                (x.clone(), random(x.numel(), 10 + batch as u64)),
                (t.clone(), vec![501.0; batch]),
                (c.clone(), random(c.numel(), 20 + batch as u64)),
            ],
            plan,
            output: eps,
        };
        let (s, m) = timed.time(gpu, iters)?;
        peak = peak.max(planned);
        writeln!(
            out,
            "unet step, batch {batch}: {s:.4} s, {:.2} UNet evals/s (plan {build:.2} s with {tuning:.2} s of autotune, {:.0} MiB activations, max |eps| {m:.3})",
            batch as f64 / s,
            mib(planned)
        )?;
        write_profile(out, &g)?;
    }

    if opts.unet_only {
        return Ok(());
    }

    // VAE.
    let vae = &model.vae;
    for encode in [true, false] {
        let start = Instant::now();
        let mut g = Graph::new(gpu.clone(), dtype);
        let (x, y) = if encode {
            let x = g.input("image", &[1, vae.config.in_channels, size, size], dtype);
            let y = vae.encode_moments(&mut g, &x)?;
            (x, y)
        } else {
            let x = g.input(
                "latent",
                &[1, vae.config.latent_channels, lhw[0], lhw[1]],
                dtype,
            );
            let y = vae.decode(&mut g, &x)?;
            (x, y)
        };
        g.output(&y);
        pollster::block_on(g.tune())?;
        let plan = g.plan()?;
        let planned = plan.planned_bytes();
        let build = start.elapsed().as_secs_f64();
        let timed = Timed {
            inputs: vec![(x.clone(), random(x.numel(), 30))],
            plan,
            output: y,
        };
        let (s, m) = timed.time(gpu, iters)?;
        peak = peak.max(planned);
        writeln!(
            out,
            "vae {}: {s:.4} s (plan {build:.2} s, {:.0} MiB activations, max |out| {m:.3})",
            if encode { "encode" } else { "decode" },
            mib(planned)
        )?;
    }
    writeln!(
        out,
        "peak of the timed graphs: {:.0} MiB activations + {:.0} MiB weights = {:.0} MiB",
        mib(peak),
        mib(weight_bytes),
        mib(peak + weight_bytes)
    )?;
    if opts.vae_only {
        return Ok(());
    }

    // Whole translations through the real pipeline, one target prompt.
    let d = model.text.config.hidden_size;
    let emb = |seed| random(text_len * d, seed);
    let emb = Embeddings {
        inversion: emb(40),
        source: emb(41),
        negative: emb(42),
        targets: vec![emb(43)],
    };
    let pixels: Vec<f32> = random(3 * size * size, 50)
        .into_iter()
        .map(|v| 0.5 + 0.5 * v)
        .collect();
    let mut runs = vec![50];
    if opts.full {
        runs.push(PnpOptions::default().inversion_steps);
    }
    for inversion_steps in runs {
        let popts = PnpOptions {
            inversion_steps,
            ..PnpOptions::default()
        };
        let mut pipe = Pipeline::from_embeddings(gpu.clone(), &model, Ddim::sd(), dtype);
        let start = Instant::now();
        let z0 = pollster::block_on(pipe.encode_image(&pixels, [size, size]))?;
        let inv =
            pollster::block_on(pipe.invert(&z0, lhw, &emb.inversion, inversion_steps, &mut Quiet))?;
        let finals = pollster::block_on(pipe.sample(&inv, &emb, &popts, &mut Quiet))?;
        let img = pollster::block_on(pipe.decode(&finals[0], lhw))?;
        let total = start.elapsed().as_secs_f64();
        let st = &pipe.stats;
        writeln!(
            out,
            "translation, {inversion_steps} inversion + {} sampling steps: {total:.2} s, {} UNet evals, store {}, max |latent| {:.3}, max |image| {:.3}",
            popts.steps,
            st.unet_evals,
            if st.used_store { "resident" } else { "inline" },
            max_abs(&finals[0]),
            max_abs(&img)
        )?;
        let mut unet_s = 0.0;
        for (phase, s) in &st.phases {
            writeln!(out, "  {phase:<28} {s:>9.2} s")?;
            if matches!(
                phase.as_str(),
                "inversion" | "source pass (feature store)" | "sampling"
            ) {
                unet_s += s;
            }
        }
        writeln!(
            out,
            "  UNet evals/s over inversion, source pass and sampling: {:.2}",
            st.unet_evals as f64 / unet_s
        )?;
        writeln!(
            out,
            "  peak: {:.0} MiB planned graphs and feature store + {:.0} MiB weights = {:.0} MiB",
            mib(st.peak_bytes),
            mib(weight_bytes),
            mib(st.peak_bytes + weight_bytes)
        )?;
    }
    Ok(())
}

/// 859520964 -> "859,520,964".
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
