//! `pnp translate`: the whole PnP translation from files to files.

use crate::files::{self, InputImage, Kind, Outputs};
use crate::model::ModelArgs;
use crate::progress::Bars;
use crate::report::Measured;
use anyhow::{Context, Result, bail};
use pnp::pipeline::inversion::f32_safetensors;
use pnp::pipeline::scheduler::either;
use pnp::pipeline::{Inversion, Pipeline, PnpError, PnpOptions};
use pnp::progress::Progress;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TranslateCmd {
    #[command(flatten)]
    model: ModelArgs,
    /// The guidance image (PNG or JPEG).
    #[arg(long)]
    image: PathBuf,
    /// Target prompt; repeat for several (one inversion and feature store serve all).
    #[arg(long = "prompt", required = true)]
    prompts: Vec<String>,
    /// Output image (PNG or JPEG); with several prompts, <stem>-<i>.<ext>.
    #[arg(long)]
    out: PathBuf,
    /// Processing width (multiple of 64); default: shorter side 512, aspect kept.
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    /// Write the float32 latents "final" [prompts,4,h/8,w/8] and "inverted_start" here.
    #[arg(long)]
    latents_out: Option<PathBuf>,
    /// Save the inversion (every z_t) to reuse it for this image.
    #[arg(long)]
    save_inversion: Option<PathBuf>,
    /// Reuse an inversion saved by --save-inversion (skips encode and inversion).
    #[arg(long)]
    load_inversion: Option<PathBuf>,
    /// Take a --load-inversion file made with another model (its latents then
    /// do not match this model's features: results are unpredictable).
    #[arg(long)]
    force: bool,
    /// Write a JSON record of the run here: parameters, adapter, phase
    /// seconds, UNet evaluations, GPU submits and reads, memory, kernels.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Whether --inversion-steps was given on the command line (set by main).
    #[arg(skip)]
    pub inversion_steps_given: bool,
    #[command(flatten)]
    opts: PnpOptions,
}

/// Reads an inversion file for an image of `size` = [H, W] pixels.
fn load_inversion(path: &std::path::Path, size: [usize; 2]) -> Result<Inversion> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let hw = [size[0] / 8, size[1] / 8];
    let name = path.display().to_string();
    Ok(Inversion::from_safetensors(&name, &bytes, hw)?)
}

pub fn run(cmd: TranslateCmd, device: &crate::DeviceArgs) -> Result<()> {
    // Everything that can be checked without the GPU, first: the outputs,
    // the image's header and size, the inversion file.
    let n = cmd.prompts.len();
    let mut outputs = Outputs::default();
    for i in 0..n {
        outputs.add(&files::numbered(&cmd.out, i, n), Kind::Image, "--out");
    }
    if let Some(p) = &cmd.latents_out {
        outputs.add(p, Kind::Tensors, "--latents-out");
    }
    if let Some(p) = &cmd.save_inversion {
        outputs.add(p, Kind::Tensors, "--save-inversion");
    }
    if let Some(p) = &cmd.report {
        outputs.add(p, Kind::Record, "--report");
    }
    let mut inputs = vec![cmd.image.as_path()];
    inputs.extend(cmd.load_inversion.as_deref());
    outputs.check(&inputs)?;
    let image = InputImage::open(&cmd.image, cmd.width, cmd.height)?;
    let size = image.size();
    let opts = &cmd.opts;
    cli_words(opts.check())?;
    let loaded = match &cmd.load_inversion {
        Some(p) => Some(load_inversion(p, size)?),
        None => None,
    };
    if let Some(inv) = &loaded
        && cmd.inversion_steps_given
        && inv.steps != opts.inversion_steps
    {
        eprintln!(
            "note: --inversion-steps {} is ignored: the loaded inversion has {} steps",
            opts.inversion_steps, inv.steps
        );
    }

    let gpu = crate::open_gpu(device)?;
    let mut bars = Bars::default();
    let m = cmd.model.load(&gpu, &mut bars)?;
    let model = &m.loaded.model;
    if let (Some(inv), Some(path)) = (&loaded, &cmd.load_inversion) {
        match inv.check_model(&model.fingerprint()) {
            Err(e) if cmd.force => bars.note(&format!("{e} (taken: --force)")),
            Err(e) => bail!("{}: {e}; pass --force to use it anyway", path.display()),
            Ok(()) => {}
        }
    }
    let mut pipe = Pipeline::new(
        gpu.clone(),
        model,
        &m.loaded.tokenizer,
        m.scheduler,
        m.dtype,
    );
    let prompts: Vec<&str> = cmd.prompts.iter().map(String::as_str).collect();
    // The options, the inversion's fit and the adapter's limits, before the
    // image is decoded or any GPU work is done.
    cli_words(pipe.check_translation(size, &prompts, opts, loaded.as_ref()))?;
    let pixels = image.decode()?;
    eprintln!(
        "image: {} at {}x{}",
        cmd.image.display(),
        pixels.width,
        pixels.height
    );
    let counters = gpu.counters.values();
    let prepare = pipe.prepare(&pixels.data, size, &prompts, opts, loaded, &mut bars);
    let prepared = cli_words(pollster::block_on(prepare))?;
    // Saved before sampling, so a failure there does not lose the inversion.
    if let Some(p) = &cmd.save_inversion {
        files::write_atomic(p, &prepared.inversion.to_safetensors()?)?;
    }
    let (finals, images) = pollster::block_on(pipe.finish(&prepared, opts, &mut bars))?;
    let mut written = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let path = files::numbered(&cmd.out, i, n);
        files::save_image(&path, img, pixels.height, pixels.width)?;
        written.push(path);
    }
    bars.finish();
    if let Some(p) = &cmd.latents_out {
        let inv = &prepared.inversion;
        let start = &inv.latents[&pipe.scheduler.timesteps(opts.steps)?[0]];
        let shape = inv.latent_shape();
        let mut fin_shape = shape.clone();
        fin_shape[0] = n;
        let finals = finals.concat();
        let tensors = [
            ("final".to_string(), fin_shape, finals.as_slice()),
            ("inverted_start".to_string(), shape, start.as_slice()),
        ];
        files::write_atomic(p, &f32_safetensors(&tensors, HashMap::new())?)?;
    }

    if let Some(p) = &cmd.report {
        let weights = model
            .report
            .iter()
            .map(|r| r.parameters as u64)
            .sum::<u64>();
        let measured = Measured {
            gpu: &gpu,
            stats: &pipe.stats,
            counters: gpu.counters.values() - counters,
            weights_bytes: weights * m.dtype.size() as u64,
        };
        let size = [pixels.width, pixels.height];
        let record = measured.report(
            "translate",
            &cmd.model,
            &cmd.image,
            size,
            &cmd.prompts,
            opts,
        );
        files::write_atomic(p, &serde_json::to_vec_pretty(&record)?)?;
    }

    let s = &pipe.stats;
    println!("translated {} with {} prompt(s):", cmd.image.display(), n);
    for (p, path) in cmd.prompts.iter().zip(&written) {
        println!("  {:?} -> {}", p, path.display());
    }
    if let Some(p) = &cmd.latents_out {
        println!("  latents -> {}", p.display());
    }
    if let Some(p) = &cmd.report {
        println!("  run record -> {}", p.display());
    }
    println!(
        "features: {}",
        if s.used_store {
            "GPU-resident feature store (source pass once, shared by every prompt)"
        } else {
            "inline source row (the reference's batch-3 call)"
        }
    );
    println!("precision: {}", precision_words(cmd.model.precision, &gpu));
    if let Some(words) = crate::autotune_words(&gpu) {
        println!("{words}");
    }
    print_stats(s);
    Ok(())
}

/// What `--precision` gave on `gpu`, in words.
pub fn precision_words(p: crate::Precision, gpu: &pnp::gpu::Gpu) -> String {
    match p.dtype(gpu) {
        Ok(pnp::gpu::DType::F16) => format!(
            "{} (weights and activations in f16, f32 accumulation; --precision f32 is the exact path)",
            p.name_on(gpu)
        ),
        _ => p.name_on(gpu),
    }
}

/// The library's wording, in the command line's flags.
pub fn cli_words<T>(r: std::result::Result<T, PnpError>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(PnpError::Guidance(g)) => bail!("--guidance must be a finite number, got {g}"),
        Err(PnpError::Fractions) => {
            bail!("--pnp-f-t and --pnp-attn-t are fractions of the sampling steps, in [0, 1]")
        }
        Err(PnpError::InversionGrid {
            inversion_steps,
            steps,
            nearest,
        }) => bail!(
            "a {inversion_steps}-step inversion does not store a latent at every timestep of {steps} sampling steps; with --steps {steps} use --inversion-steps {}",
            either(&nearest)
        ),
        Err(e) => Err(e.into()),
    }
}

/// Phase timings, UNet evaluations and peak memory, as both commands print them.
pub fn print_stats(s: &pnp::pipeline::Stats) {
    for (phase, secs) in &s.phases {
        println!("  {phase:<28} {secs:>9.2} s");
    }
    println!("  UNet evaluations: {} (batch rows)", s.unet_evals);
    println!(
        "  peak planned GPU memory: {:.1} MiB (weights not counted)",
        s.peak_bytes as f64 / (1 << 20) as f64
    );
}
