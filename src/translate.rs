//! `pnp translate`: the whole PnP translation from files to files.

use crate::imageio;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pnp::gpu::{DType, Gpu};
use pnp::models::loader::{ModelSource, resolve};
use pnp::models::nn::Ctx;
use pnp::models::sd::SdModel;
use pnp::models::tokenizer::ClipTokenizer;
use pnp::pnp::pipeline::{Inversion, Pipeline, PnpError, PnpOptions, Progress, StoreMode};
use pnp::pnp::scheduler::Ddim;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TranslateArgs {
    pub model: String,
    pub config: Option<PathBuf>,
    pub image: PathBuf,
    pub prompts: Vec<String>,
    pub out: PathBuf,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub latents_out: Option<PathBuf>,
    pub save_inversion: Option<PathBuf>,
    pub load_inversion: Option<PathBuf>,
    pub dtype: DType,
    pub opts: PnpOptions,
}

/// Progress bars per phase on stderr; notes printed above them.
pub(crate) struct Bars {
    pub(crate) bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn phase(&mut self, name: &str, total: usize) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>20} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(name.to_string());
        self.bar = Some(b);
    }
    fn tick(&mut self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
    fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("note: {msg}")),
            None => eprintln!("note: {msg}"),
        }
    }
}

/// The tokenizer and scheduler config that go with `--model`: a folder has
/// them; a single file takes them from `--config DIR`.
pub(crate) fn side_files(
    source: &ModelSource,
    config: Option<&Path>,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let dir = match (source, config) {
        (ModelSource::Folder(d), _) => d.clone(),
        (ModelSource::SingleFile(_), Some(d)) => d.to_path_buf(),
        (ModelSource::SingleFile(p), None) => bail!(
            "{} is a single-file checkpoint, which carries no tokenizer: pass --config DIR, a diffusers folder of the same model family (its tokenizer/ and configs are used)",
            p.display()
        ),
    };
    let sched = dir.join("scheduler/scheduler_config.json");
    Ok((dir.join("tokenizer"), sched.is_file().then_some(sched)))
}

fn save_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    meta: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| bytemuck::cast_slice(d).to_vec())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let data = safetensors::serialize(views, Some(meta))?;
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn save_inversion(path: &Path, inv: &Inversion) -> Result<()> {
    let shape = vec![1, 4, inv.hw[0], inv.hw[1]];
    let mut t = vec![("z0".to_string(), shape.clone(), inv.z0.clone())];
    for (step, z) in &inv.latents {
        t.push((format!("inverted/{step}"), shape.clone(), z.clone()));
    }
    let meta = HashMap::from([
        ("inversion_steps".to_string(), inv.steps.to_string()),
        (
            "latent_hw".to_string(),
            format!("{}x{}", inv.hw[0], inv.hw[1]),
        ),
    ]);
    save_tensors(path, &t, meta)
}

fn load_inversion(path: &Path, hw: [usize; 2]) -> Result<Inversion> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).with_context(|| {
        format!(
            "{} is not a safetensors file written by --save-inversion",
            path.display()
        )
    })?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let md = md.metadata().clone().unwrap_or_default();
    let steps: usize = md
        .get("inversion_steps")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{} has no inversion_steps metadata", path.display()))?;
    let mut latents = BTreeMap::new();
    let mut z0 = None;
    for (name, view) in st.tensors() {
        if view.shape() != [1, 4, hw[0], hw[1]] {
            bail!(
                "{}: {name} has shape {:?} but this image's latent is [1, 4, {}, {}]; the inversion was made at another size",
                path.display(),
                view.shape(),
                hw[0],
                hw[1]
            );
        }
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
        match name.strip_prefix("inverted/") {
            Some(t) => {
                latents.insert(
                    t.parse()
                        .with_context(|| format!("bad tensor name {name}"))?,
                    data,
                );
            }
            None if name == "z0" => z0 = Some(data),
            None => {}
        }
    }
    Ok(Inversion {
        hw,
        z0: z0.with_context(|| format!("{} has no z0", path.display()))?,
        steps,
        latents,
    })
}

/// The model, its tokenizer and its scheduler for `--model` (and `--config`).
pub(crate) fn load_model(
    gpu: &Arc<Gpu>,
    model: &str,
    config: Option<&Path>,
    dtype: DType,
) -> Result<(SdModel, ClipTokenizer, Ddim)> {
    let source = resolve(model)?;
    let (tok_dir, sched_cfg) = side_files(&source, config)?;
    let tokenizer = ClipTokenizer::from_dir(&tok_dir)?;
    let scheduler = match sched_cfg {
        Some(p) => {
            let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("{} is not JSON", p.display()))?;
            Ddim::from_config(&json)?
        }
        None => Ddim::sd(),
    };
    let model = SdModel::load(Ctx { gpu, dtype }, &source, config)?;
    for a in &model.assumed {
        eprintln!("note: assumed {a} (not recorded in the checkpoint; --config DIR sets it)");
    }
    Ok((model, tokenizer, scheduler))
}

pub fn run(args: TranslateArgs, gpu: Arc<Gpu>) -> Result<()> {
    if args.prompts.is_empty() {
        bail!("give at least one --prompt");
    }
    // Fail on unwritable outputs before any GPU work.
    let n = args.prompts.len();
    for i in 0..n {
        imageio::check_writable(&imageio::numbered(&args.out, i, n))?;
    }
    for p in [&args.latents_out, &args.save_inversion]
        .into_iter()
        .flatten()
    {
        imageio::check_writable(p)?;
    }
    let pixels = imageio::load(&args.image, args.width, args.height)?;
    let hw = [pixels.height / 8, pixels.width / 8];
    eprintln!(
        "image: {} at {}x{}",
        args.image.display(),
        pixels.width,
        pixels.height
    );

    let (model, tokenizer, scheduler) =
        load_model(&gpu, &args.model, args.config.as_deref(), args.dtype)?;
    let opts = &args.opts;
    let loaded = match &args.load_inversion {
        Some(p) => Some(load_inversion(p, hw)?),
        None => None,
    };
    let mut pipe = Pipeline::new(gpu.clone(), &model, &tokenizer, scheduler, args.dtype);
    let mut bars = Bars { bar: None };
    let prompts: Vec<&str> = args.prompts.iter().map(String::as_str).collect();
    let size = [pixels.height, pixels.width];
    let prepared = match pollster::block_on(pipe.prepare(
        &pixels.data,
        size,
        &prompts,
        opts,
        loaded,
        &mut bars,
    )) {
        Ok(p) => p,
        // The library's wording, in the command line's flags.
        Err(PnpError::Fractions) => {
            bail!("--pnp-f-t and --pnp-attn-t are fractions of the sampling steps, in [0, 1]")
        }
        Err(PnpError::InversionGrid {
            inversion_steps,
            steps,
            compatible,
        }) => bail!(
            "a {inversion_steps}-step inversion does not store a latent at every timestep of {steps} sampling steps; with --steps {steps} use --inversion-steps in {compatible:?}"
        ),
        Err(e) => return Err(e.into()),
    };
    // Saved before sampling, so a failure there does not lose the inversion.
    if let Some(p) = &args.save_inversion {
        save_inversion(p, &prepared.inversion)?;
    }
    let (finals, images) = pollster::block_on(pipe.finish(&prepared, opts, &mut bars))?;
    let mut written = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let path = imageio::numbered(&args.out, i, n);
        imageio::save(&path, img, pixels.height, pixels.width)?;
        written.push(path);
    }
    if let Some(b) = bars.bar.take() {
        b.finish();
    }
    if let Some(p) = &args.latents_out {
        let start = prepared.inversion.latents[&pipe.scheduler.timesteps(opts.steps)?[0]].clone();
        let shape = vec![1, 4, hw[0], hw[1]];
        let mut fin_shape = shape.clone();
        fin_shape[0] = n;
        save_tensors(
            p,
            &[
                ("final".into(), fin_shape, finals.concat()),
                ("inverted_start".into(), shape, start),
            ],
            HashMap::new(),
        )?;
    }

    let s = &pipe.stats;
    println!("translated {} with {} prompt(s):", args.image.display(), n);
    for (p, path) in args.prompts.iter().zip(&written) {
        println!("  {:?} -> {}", p, path.display());
    }
    if let Some(p) = &args.latents_out {
        println!("  latents -> {}", p.display());
    }
    println!(
        "features: {}",
        if s.used_store {
            "GPU-resident feature store (source pass once, shared by every prompt)"
        } else {
            "inline source row (the reference's batch-3 call)"
        }
    );
    for (phase, secs) in &s.phases {
        println!("  {phase:<28} {secs:>9.2} s");
    }
    println!("  UNet evaluations: {} (batch rows)", s.unet_evals);
    println!(
        "  peak planned GPU memory: {:.1} MiB (weights not counted)",
        s.peak_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

impl TranslateArgs {
    pub fn store_mode(s: &str) -> Result<StoreMode> {
        Ok(match s {
            "auto" => StoreMode::Auto,
            "resident" => StoreMode::Resident,
            "inline" => StoreMode::Inline,
            other => bail!("--store {other}: expected auto, resident or inline"),
        })
    }
}
