//! `pnp eval`: PIE-Bench's metrics for one or more result folders, as a CSV
//! with its evaluation's columns, a summary of means per editing type in the
//! papers' scalings, and an HTML page to look at the results side by side.

mod html;
mod summary;

use crate::files;
use anyhow::{Context, Result, bail};
use pnp::edits::{self, Item, Mask};
use pnp::metrics::clip::Clip;
use pnp::metrics::dino::{Dino, KeySelfSimilarity};
use pnp::metrics::lpips::Lpips;
use pnp::metrics::{self, Keep, Metric, Needs, Rgb8, SsimBorder};
use pnp::models::locate::ModelSource;
use std::path::{Path, PathBuf};
use summary::{Summary, csv};

#[derive(clap::Args)]
pub struct EvalCmd {
    /// The PIE-Bench folder the results were made from.
    #[arg(
        long,
        required_unless_present = "manifest",
        conflicts_with = "manifest"
    )]
    pie_bench: Option<PathBuf>,
    /// The manifest the results were made from (`pnp batch --manifest`).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// A result folder mirroring the set's images (`pnp batch --out`, or
    /// another tool's, .png or .jpg); repeat for several methods, each named
    /// by the folder's last component.
    #[arg(long = "results", required = true)]
    results: Vec<PathBuf>,
    /// The per-image values: `file_id`, then `method|metric` columns.
    #[arg(long)]
    csv: PathBuf,
    /// Comma-separated metric names (PIE-Bench's); default: its eight that
    /// this version computes.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// The SSIM's border: reflect (torchmetrics 1.5 and later) or crop (before
    /// 1.5, as in the published PIE-Bench tables).
    #[arg(long, value_enum, default_value = "reflect")]
    ssim_border: SsimBorder,
    /// The DINO ViT of structure_distance: a transformers folder (as
    /// facebook/dino-vitb8), a .safetensors file (the torch-hub dino_vitb8
    /// converted by tools/convert_metric_weights.py), or a Hugging Face repo
    /// id (downloaded into the Hugging Face cache on first use).
    #[arg(long)]
    dino: Option<String>,
    /// The CLIP model of the clip_similarity metrics: a transformers folder
    /// (openai/clip-vit-large-patch14, safetensors and tokenizer files) or
    /// its Hugging Face repo id (downloaded on first use).
    #[arg(long)]
    clip: Option<String>,
    /// LPIPS's SqueezeNet backbone and linear heads in one .safetensors file
    /// (tools/convert_metric_weights.py --kind lpips writes it from
    /// torchvision's and LPIPS's pickles).
    #[arg(long)]
    lpips: Option<String>,
    /// Also write an HTML page: the source beside each method's result, with
    /// its numbers, and the summary.
    #[arg(long)]
    html: Option<PathBuf>,
}

/// One method's result folder.
pub struct Method {
    pub name: String,
    pub dir: PathBuf,
}

/// One scored edit: an item's target prompt, and per method its result's
/// path and values (None: "nan", an empty region; Err: not computed).
pub struct Row<'a> {
    pub item: &'a Item,
    pub target: usize,
    pub file_id: String,
    pub results: Vec<Scored>,
}

pub struct Scored {
    pub path: Option<PathBuf>,
    pub values: Vec<Result<Option<f64>, String>>,
}

/// The networks the chosen metrics need, loaded.
#[derive(Default)]
struct Networks {
    dino: Option<Dino>,
    clip: Option<Clip>,
    lpips: Option<Lpips>,
}

impl Networks {
    fn load(cmd: &EvalCmd, metrics: &[Metric], device: &crate::DeviceArgs) -> Result<Self> {
        let needs = |n: Needs| metrics.iter().any(|m| m.needs == n);
        let mut nets = Networks::default();
        if !needs(Needs::Dino) && !needs(Needs::Clip) && !needs(Needs::Lpips) {
            return Ok(nets);
        }
        let gpu = crate::open_gpu(device)?;
        let locate = |id: &str| -> Result<PathBuf> {
            Ok(match crate::hub::locate(id, pnp::gpu::DType::F32, false)? {
                ModelSource::Folder(p) | ModelSource::SingleFile(p) => p,
            })
        };
        if let (true, Some(id)) = (needs(Needs::Dino), cmd.dino.as_deref()) {
            let path = locate(id)?;
            let dino = Dino::open(gpu.clone(), &path)
                .with_context(|| format!("cannot load the DINO ViT {id}"))?;
            println!(
                "dino: {} ({} layout, {} blocks, patch {})",
                path.display(),
                dino.layout,
                dino.depth(),
                dino.patch()
            );
            nets.dino = Some(dino);
        }
        if let (true, Some(id)) = (needs(Needs::Clip), cmd.clip.as_deref()) {
            let path = locate(id)?;
            let clip = Clip::open(gpu.clone(), &path)
                .with_context(|| format!("cannot load the CLIP model {id}"))?;
            println!("clip: {}", path.display());
            nets.clip = Some(clip);
        }
        if let (true, Some(id)) = (needs(Needs::Lpips), cmd.lpips.as_deref()) {
            let path = locate(id)?;
            let lpips = Lpips::open(gpu.clone(), &path)
                .with_context(|| format!("cannot load the LPIPS weights {id}"))?;
            println!("lpips: {} (SqueezeNet 1.1)", path.display());
            nets.lpips = Some(lpips);
        }
        Ok(nets)
    }
}

/// Per-source values every method's score reuses.
#[derive(Default)]
struct SourceCache {
    dino: Option<Result<KeySelfSimilarity, String>>,
    clip_source: Option<Result<f64, String>>,
    /// The current target prompt's.
    clip_target_text: Option<Result<Vec<f64>, String>>,
}

/// What one score compares.
struct Pair<'a> {
    source: &'a Rgb8,
    edited: &'a Rgb8,
    /// 1 = edited.
    mask: Option<&'a [u8]>,
    source_prompt: Option<&'a str>,
    target_prompt: &'a str,
}

/// One metric of `pair`'s edit against its source.
fn score(
    metric: &Metric,
    nets: &Networks,
    cache: &mut SourceCache,
    pair: &Pair,
    border: SsimBorder,
) -> Result<Option<f64>, String> {
    let (source, edited) = (pair.source, pair.edited);
    match metric.needs {
        Needs::Pixels => metrics::pixel_metric(metric, source, edited, pair.mask, border),
        Needs::Dino => {
            let dino = nets.dino.as_ref().ok_or("no DINO ViT loaded")?;
            let sims = |img: &Rgb8| {
                let (x, size) = Dino::preprocess(img);
                pollster::block_on(dino.key_self_similarity(&x, size)).map_err(|e| e.to_string())
            };
            let src = cache.dino.get_or_insert_with(|| sims(source)).as_ref()?;
            let edit = sims(edited)?;
            Ok(Some(metrics::mse(&src.sim, &edit.sim)))
        }
        Needs::Clip => {
            let clip = nets.clip.as_ref().ok_or("no CLIP model loaded")?;
            let image = |img: &Rgb8| {
                pollster::block_on(clip.image_embedding(&clip.preprocess(img)))
                    .map_err(|e| e.to_string())
            };
            let text = |prompt: &str| {
                let (e, cut) =
                    pollster::block_on(clip.text_embedding(prompt)).map_err(|e| e.to_string())?;
                if cut {
                    eprintln!(
                        "warning: {prompt:?} is longer than CLIP's 77 tokens; cut as CLIPScore cuts it (its end token lost)"
                    );
                }
                Ok::<_, String>(e)
            };
            // torchmetrics' CLIPScore: 100 cos, clamped at 0.
            if metric.name == "clip_similarity_source_image" {
                let prompt = pair.source_prompt.ok_or("the item has no source prompt")?;
                let s = cache.clip_source.get_or_insert_with(|| {
                    Ok(Clip::similarity(&image(source)?, &text(prompt)?).max(0.0))
                });
                return s.clone().map(Some);
            }
            let edited = match metric.keep(pair.mask, (edited.width, edited.height))? {
                Keep::Nothing => return Ok(None),
                Keep::All => edited.clone(),
                Keep::Pixels(k) => edited.masked(&k),
            };
            let target = cache
                .clip_target_text
                .get_or_insert_with(|| text(pair.target_prompt))
                .as_ref()?;
            Ok(Some(Clip::similarity(&image(&edited)?, target).max(0.0)))
        }
        Needs::Lpips => {
            let lpips = nets.lpips.as_ref().ok_or("no LPIPS model loaded")?;
            let keep = match metric.keep(pair.mask, (source.width, source.height))? {
                Keep::Nothing => return Ok(None),
                Keep::All => None,
                Keep::Pixels(k) => Some(k),
            };
            pollster::block_on(lpips.lpips(source, edited, keep.as_deref()))
                .map(Some)
                .map_err(|e| e.to_string())
        }
    }
}

pub fn run(cmd: EvalCmd, device: &crate::DeviceArgs) -> Result<()> {
    let items = match (&cmd.pie_bench, &cmd.manifest) {
        (Some(dir), _) => edits::from_pie_bench(dir)?,
        (None, Some(file)) => edits::from_manifest(file)?,
        (None, None) => bail!("give --pie-bench DIR or --manifest FILE"),
    };
    let metrics = choose_metrics(&cmd.metrics, &cmd)?;
    let methods = methods(&cmd.results)?;
    let mut outputs = files::Outputs::default();
    outputs.add(&cmd.csv, files::Kind::Record, "--csv");
    if let Some(h) = &cmd.html {
        outputs.add(h, files::Kind::Record, "--html");
    }
    outputs.check(&[])?;
    let nets = Networks::load(&cmd, &metrics, device)?;

    let mut rows = Vec::new();
    let mut missing = vec![0usize; methods.len()];
    let mut resized: Vec<Option<String>> = vec![None; methods.len()];
    for it in &items {
        let source = match load_rgb8(&it.image) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: {}: {e:#}; its rows are left empty", it.id);
                for t in 0..it.targets.len() {
                    rows.push(empty_row(it, t, methods.len(), metrics.len(), &e));
                }
                continue;
            }
        };
        let mask = load_mask(it, &source);
        let mut cache = SourceCache::default();
        for t in 0..it.targets.len() {
            cache.clip_target_text = None;
            let mut results = Vec::new();
            for (m, method) in methods.iter().enumerate() {
                let Some(path) = edits::find_result(it, t, &method.dir) else {
                    missing[m] += 1;
                    results.push(Scored {
                        path: None,
                        values: metrics.iter().map(|_| Err("no result".into())).collect(),
                    });
                    continue;
                };
                let edited = load_rgb8(&path).map(|img| {
                    let (img, how) = fit(img, &source);
                    if let (Some(how), None) = (how, &resized[m]) {
                        resized[m] = Some(how);
                    }
                    img
                });
                let values = metrics
                    .iter()
                    .map(|metric| match (&edited, &mask) {
                        (Err(e), _) => Err(format!("{e:#}")),
                        (_, Err(e)) if metric.region != metrics::Region::Whole => Err(e.clone()),
                        (Ok(edited), mask) => {
                            let pair = Pair {
                                source: &source,
                                edited,
                                mask: mask.as_ref().ok().and_then(|m| m.as_deref()),
                                source_prompt: it.source_prompt.as_deref(),
                                target_prompt: &it.targets[t],
                            };
                            score(metric, &nets, &mut cache, &pair, cmd.ssim_border)
                        }
                    })
                    .collect();
                results.push(Scored {
                    path: Some(path),
                    values,
                });
            }
            rows.push(Row {
                item: it,
                target: t,
                file_id: file_id(it, t),
                results,
            });
        }
    }
    for (m, method) in methods.iter().enumerate() {
        if missing[m] > 0 {
            eprintln!(
                "warning: {}: {} of {} results missing (their cells are empty)",
                method.name,
                missing[m],
                rows.len()
            );
        }
        if let Some(how) = &resized[m] {
            eprintln!("note: {}: {how}", method.name);
        }
    }
    for row in &rows {
        for (method, scored) in methods.iter().zip(&row.results) {
            for (metric, v) in metrics.iter().zip(&scored.values) {
                if let Err(e) = v
                    && scored.path.is_some()
                {
                    eprintln!(
                        "warning: {} {} {}: {e}",
                        row.file_id, method.name, metric.name
                    );
                }
            }
        }
    }

    files::write_atomic(&cmd.csv, csv(&methods, &metrics, &rows).as_bytes())?;
    let summary = Summary::of(&methods, &metrics, &rows);
    print!("{}", summary.text(&methods, &metrics));
    println!("per-image values -> {}", cmd.csv.display());
    if let Some(h) = &cmd.html {
        let page = html::page(h, &methods, &metrics, &rows, &summary);
        files::write_atomic(h, page.as_bytes())?;
        println!("report page -> {}", h.display());
    }
    Ok(())
}

/// The metrics asked for, or the default ones this version computes.
fn choose_metrics(names: &[String], cmd: &EvalCmd) -> Result<Vec<Metric>> {
    let available = |m: &Metric| match m.needs {
        Needs::Pixels => true,
        Needs::Dino => cmd.dino.is_some(),
        Needs::Clip => cmd.clip.is_some(),
        Needs::Lpips => cmd.lpips.is_some(),
    };
    // The flag that loads a network, with what to give it.
    let flag = |n: Needs| match n {
        Needs::Pixels => "",
        Needs::Dino => "--dino (a path, or a Hugging Face repo id such as facebook/dino-vitb8)",
        Needs::Clip => {
            "--clip (a path, or a Hugging Face repo id such as openai/clip-vit-large-patch14)"
        }
        Needs::Lpips => {
            "--lpips (a .safetensors made by tools/convert_metric_weights.py --kind lpips)"
        }
    };
    if names.is_empty() {
        let all: Vec<Metric> = (metrics::DEFAULT.iter())
            .map(|n| Metric::by_name(n).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?;
        let (have, lack): (Vec<_>, Vec<_>) = all.into_iter().partition(available);
        for m in &lack {
            eprintln!("note: {} left out: it needs {}", m.name, flag(m.needs));
        }
        return Ok(have);
    }
    let mut out = Vec::new();
    for n in names {
        let m = Metric::by_name(n.trim()).map_err(anyhow::Error::msg)?;
        if !available(&m) {
            bail!(
                "{} needs the {:?} network: pass {}",
                m.name,
                m.needs,
                flag(m.needs)
            );
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// The methods of the result folders, named by their last components.
fn methods(dirs: &[PathBuf]) -> Result<Vec<Method>> {
    let mut out: Vec<Method> = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            bail!("--results {}: not a folder", d.display());
        }
        let name = d
            .canonicalize()
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| d.display().to_string());
        if let Some(other) = out.iter().find(|m| m.name == name) {
            bail!(
                "--results {} and {} are both named {name:?} (the folder's last component names the method); rename one",
                other.dir.display(),
                d.display()
            );
        }
        out.push(Method {
            name,
            dir: d.clone(),
        });
    }
    Ok(out)
}

fn file_id(it: &Item, t: usize) -> String {
    if it.targets.len() == 1 {
        it.id.clone()
    } else {
        format!("{}-{t}", it.id)
    }
}

fn empty_row<'a>(
    it: &'a Item,
    t: usize,
    methods: usize,
    metrics: usize,
    e: &anyhow::Error,
) -> Row<'a> {
    Row {
        item: it,
        target: t,
        file_id: file_id(it, t),
        results: (0..methods)
            .map(|_| Scored {
                path: None,
                values: (0..metrics).map(|_| Err(format!("{e:#}"))).collect(),
            })
            .collect(),
    }
}

fn load_rgb8(path: &Path) -> Result<Rgb8> {
    let img =
        image::open(path).with_context(|| format!("cannot read the image {}", path.display()))?;
    Ok(img.to_rgb8().into())
}

/// The item's mask at the source's size (1 = edited), if it has one.
fn load_mask(it: &Item, source: &Rgb8) -> Result<Option<Vec<u8>>, String> {
    let (w, h) = (source.width, source.height);
    let mask = match &it.mask {
        None => return Ok(None),
        Some(Mask::Decoded(m)) => {
            let side = pnp::piebench::SIDE;
            if (w, h) != (side, side) {
                return Err(format!(
                    "PIE-Bench's masks are {side}x{side}, but the source image is {w}x{h}"
                ));
            }
            m.clone()
        }
        Some(Mask::File(p)) => {
            let img = image::open(p)
                .map_err(|e| format!("cannot read the mask {}: {e}", p.display()))?
                .to_luma8();
            if (img.width() as usize, img.height() as usize) != (w, h) {
                return Err(format!(
                    "the mask {} is {}x{}, the source image {w}x{h}",
                    p.display(),
                    img.width(),
                    img.height()
                ));
            }
            img.into_raw()
                .into_iter()
                .map(|v| u8::from(v > 127))
                .collect()
        }
    };
    Ok(Some(mask))
}

/// A result at the source's size: as it is; a strip of panels of the
/// source's height (PIE-Bench's runners save text | source | reconstruction
/// | edit) cut to its last panel, as the benchmark's evaluation cuts it; any
/// other size resized (Lanczos), with a note of what was done.
fn fit(img: Rgb8, source: &Rgb8) -> (Rgb8, Option<String>) {
    let (w, h) = (source.width, source.height);
    if (img.width, img.height) == (w, h) {
        return (img, None);
    }
    let how = format!(
        "results of {}x{} against {w}x{h} sources",
        img.width, img.height
    );
    let buffer = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data)
        .expect("an Rgb8 holds width x height x 3 bytes");
    let (out, how) = if img.height == h && img.width > w {
        let cut = image::imageops::crop_imm(&buffer, (img.width - w) as u32, 0, w as u32, h as u32);
        (
            cut.to_image(),
            format!("{how}: the last {w}x{h} panel taken"),
        )
    } else {
        let filter = image::imageops::FilterType::Lanczos3;
        let r = image::imageops::resize(&buffer, w as u32, h as u32, filter);
        (r, format!("{how}: resized (Lanczos) to the source's size"))
    };
    (out.into(), Some(how))
}
