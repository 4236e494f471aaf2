//! `pnp translate`: the whole PnP translation from files to files.

use crate::files::{self, InputImage, Kind, Outputs};
use crate::model::ModelArgs;
use crate::params::Params;
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
    #[arg(long, required_unless_present = "params_from")]
    image: Option<PathBuf>,
    /// Target prompt; repeat for several (one inversion and feature store serve all).
    #[arg(long = "prompt", required_unless_present = "params_from")]
    prompts: Vec<String>,
    /// Take the image, prompts, size and settings from the parameters an
    /// output of pnp carries (flags given here win), to make it again.
    #[arg(long)]
    params_from: Option<PathBuf>,
    /// Output image (PNG or JPEG); with several prompts, <stem>-<i>.<ext>.
    #[arg(long)]
    out: PathBuf,
    /// Processing width (multiple of 64); default: shorter side 512, aspect kept.
    #[arg(long)]
    width: Option<usize>,
    /// Processing height (multiple of 64); default: from --width (or the
    /// shorter side 512), aspect kept. Both given: the image is resized to
    /// exactly that (a note says when it is squashed).
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
    /// The ids of the flags given on the command line (set by main).
    #[arg(skip)]
    pub given: std::collections::HashSet<String>,
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

/// `cmd` with what it does not give taken from `--params-from`'s file.
fn with_saved_params(mut cmd: TranslateCmd) -> Result<(TranslateCmd, Option<Params>)> {
    let Some(from) = &cmd.params_from else {
        return Ok((cmd, None));
    };
    let p = Params::read(from)?;
    if p.command != "translate" && p.command != "batch" {
        bail!(
            "{} was made by `pnp {}`, not by translate: its parameters do not describe a translation",
            from.display(),
            p.command
        );
    }
    if cmd.image.is_none() {
        let Some(image) = &p.image else {
            bail!("{} records no guidance image; pass --image", from.display());
        };
        cmd.image = Some(image.into());
    }
    if cmd.prompts.is_empty() {
        cmd.prompts = if p.prompts.is_empty() {
            vec![p.prompt.clone()]
        } else {
            p.prompts.clone()
        };
    }
    if cmd.width.is_none() && cmd.height.is_none() {
        (cmd.width, cmd.height) = (Some(p.width), Some(p.height));
    }
    cmd.opts = p.fill_options(&cmd.opts, &cmd.given)?;
    Ok((cmd, Some(p)))
}

pub fn run(cmd: TranslateCmd, device: &crate::DeviceArgs) -> Result<()> {
    let (cmd, saved) = with_saved_params(cmd)?;
    let image_path = cmd.image.clone().context("give --image")?;
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
    let mut inputs = vec![image_path.as_path()];
    inputs.extend(cmd.load_inversion.as_deref());
    outputs.check(&inputs)?;
    let image = InputImage::open(&image_path, cmd.width, cmd.height)?;
    if let Some(p) = &saved
        && p.image_hash.as_deref().is_some_and(|h| h != image.hash())
    {
        eprintln!(
            "note: {} is not the image the parameters were made from (its bytes differ)",
            image_path.display()
        );
    }
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
    if let Some(p) = &saved
        && p.model_hash != model.fingerprint()
    {
        eprintln!(
            "note: --model {} is not the model the parameters name ({}): the result will differ",
            cmd.model.model, p.model
        );
    }
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
        image_path.display(),
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
        let params = Params {
            generator: format!("pnp {}", env!("CARGO_PKG_VERSION")),
            command: "translate".into(),
            model: cmd.model.model.clone(),
            model_hash: model.fingerprint(),
            precision: cmd.model.precision.name_on(&gpu),
            image: Some(image_path.display().to_string()),
            image_hash: Some(image.hash()),
            prompt: cmd.prompts[i].clone(),
            prompts: cmd.prompts.clone(),
            width: pixels.width,
            height: pixels.height,
            seed: None,
            options: Some(opts.clone()),
        };
        let json = params.to_json()?;
        files::save_image(&path, img, pixels.height, pixels.width, Some(&json))?;
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
            &image_path,
            size,
            &cmd.prompts,
            opts,
        );
        files::write_atomic(p, &serde_json::to_vec_pretty(&record)?)?;
    }

    let s = &pipe.stats;
    println!("translated {} with {} prompt(s):", image_path.display(), n);
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
