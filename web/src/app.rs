//! What the page does, as plain async Rust (the bindings in `lib.rs` only
//! convert to and from JS): open WebGPU, load a model from a [`Source`] one
//! network at a time, and translate an image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pnp::gpu::{DType, Gpu, GpuOptions};
use pnp::models::clip::ClipText;
use pnp::models::config::from_json;
use pnp::models::ldm::{LdmOverrides, split_ldm_tensors};
use pnp::models::loader::WEIGHT_NAMES;
use pnp::models::nn::Ctx;
use pnp::models::sd::{ComponentReport, SdModel};
use pnp::models::tokenizer::ClipTokenizer;
use pnp::models::unet::Unet;
use pnp::models::vae::Vae;
use pnp::models::weights::Weights;
use pnp::pnp::pipeline::{Pipeline, PnpOptions, Progress, Stats, Translation};
use pnp::pnp::scheduler::Ddim;
use serde::Deserialize;

use crate::source::Source;

/// Progress of loading and translating, as the page shows it.
pub trait Report: Progress {
    /// `done` of `total` bytes of `file` read (`total` 0: unknown).
    fn bytes(&mut self, file: &str, done: usize, total: usize);
}

impl Report for pnp::pnp::pipeline::Quiet {
    fn bytes(&mut self, _: &str, _: usize, _: usize) {}
}

/// The files of a diffusers `tokenizer/` folder that [`ClipTokenizer`] reads.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Opens the browser's WebGPU adapter; f16 storage where it has shader-f16.
pub async fn open(force_f32: bool) -> Result<Arc<Gpu>, String> {
    let has_webgpu = web_sys::window()
        .map(|w| js_sys::Reflect::get(&w.navigator(), &"gpu".into()))
        .and_then(Result::ok)
        .is_some_and(|g| !g.is_undefined());
    if !has_webgpu {
        return Err(
            "this browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or \
             Safari over https:// or http://localhost; on Linux, Chrome needs \
             --enable-unsafe-webgpu (and --enable-features=Vulkan)"
                .into(),
        );
    }
    Gpu::new(&GpuOptions {
        disable_f16: force_f32,
        ..Default::default()
    })
    .await
    .map_err(|e| match e {
        pnp::gpu::GpuError::NoAdapter { .. } => "this browser has WebGPU but gave no adapter: \
             the GPU or its driver may be blocklisted (see chrome://gpu), or WebGPU is disabled; \
             on Linux, Chrome needs --enable-unsafe-webgpu"
            .to_string(),
        e => format!("WebGPU could not open a device: {e}"),
    })
}

/// The storage type on this adapter.
pub fn dtype(gpu: &Gpu) -> DType {
    if gpu.caps.shader_f16 {
        DType::F16
    } else {
        DType::F32
    }
}

/// A model on the device with what translating needs beside it.
pub struct Loaded {
    pub model: SdModel,
    pub tokenizer: ClipTokenizer,
    pub scheduler: Ddim,
    pub dtype: DType,
    /// Things the user should read (assumed config values).
    pub notes: Vec<String>,
}

impl Loaded {
    /// One line per network: parameters and stored type.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:?} model, {:?} on the GPU:",
            self.model.family, self.dtype
        );
        for r in &self.model.report {
            s += &format!(
                " {} {:.1}M ({})",
                r.name,
                r.parameters as f64 / 1e6,
                r.stored_dtype
            );
        }
        s
    }
}

/// Loads a diffusers folder, or a single checkpoint with its tokenizer files.
pub async fn load(
    gpu: &Arc<Gpu>,
    source: &Source,
    dtype: DType,
    rep: &mut dyn Report,
) -> Result<Loaded, String> {
    match source.folder_root() {
        Some(root) => load_folder(gpu, source, &root, dtype, rep).await,
        None => load_single(gpu, source, dtype, rep).await,
    }
}

fn join(root: &str, rel: &str) -> String {
    if root.is_empty() {
        rel.to_string()
    } else {
        format!("{root}/{rel}")
    }
}

async fn tokenizer(
    source: &Source,
    dir: &str,
    locate: impl Fn(&str) -> Option<String>,
) -> Result<ClipTokenizer, String> {
    let mut files = BTreeMap::new();
    for name in TOKENIZER_FILES {
        if let Some(rel) = locate(name)
            && let Some(t) = source.text(&rel).await?
        {
            files.insert(*name, t);
        }
    }
    ClipTokenizer::from_files(Path::new(dir), &|name| Ok(files.get(name).cloned())).map_err(text)
}

/// One component folder's config and weights (one file, or the shards its
/// index names), the fp16 file first when the device stores f16.
async fn component<C: for<'de> Deserialize<'de>>(
    source: &Source,
    dir: &str,
    dtype: DType,
    rep: &mut dyn Report,
) -> Result<(Weights, C), String> {
    let cfg_path = format!("{dir}/config.json");
    let cfg_text = source
        .text(&cfg_path)
        .await?
        .ok_or_else(|| format!("{} is missing", source.describe(&cfg_path)))?;
    let cfg_json: serde_json::Value = serde_json::from_str(&cfg_text)
        .map_err(|e| format!("{} is not JSON: {e}", source.describe(&cfg_path)))?;
    let config: C = from_json(Path::new(&source.describe(&cfg_path)), &cfg_json).map_err(text)?;

    let mut names: Vec<&str> = WEIGHT_NAMES.to_vec();
    if dtype == DType::F16 {
        names.sort_by_key(|n| !n.contains("fp16"));
    }
    let mut tensors = BTreeMap::new();
    let mut sources = Vec::new();
    // One file, else the shards a `<name>.index.json` names.
    for name in &names {
        let rel = format!("{dir}/{name}");
        if let Some(bytes) = source
            .bytes(&rel, &mut |f, d, t| rep.bytes(f, d, t))
            .await?
        {
            let label = source.describe(&rel);
            tensors =
                Weights::parse_safetensors(Path::new(&label), Arc::new(bytes)).map_err(text)?;
            sources.push(label);
            break;
        }
    }
    for name in &names {
        if !sources.is_empty() {
            break;
        }
        let index = format!("{dir}/{name}.index.json");
        let Some(idx) = source.text(&index).await? else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&idx)
            .map_err(|e| format!("{} is not JSON: {e}", source.describe(&index)))?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| format!("{} has no weight_map", source.describe(&index)))?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|s| s.as_str().map(|s| format!("{dir}/{s}")))
            .collect();
        shards.sort();
        shards.dedup();
        for rel in &shards {
            let label = source.describe(rel);
            let bytes = source
                .bytes(rel, &mut |f, d, t| rep.bytes(f, d, t))
                .await?
                .ok_or_else(|| format!("{label}, a shard named by the index, is missing"))?;
            tensors.extend(
                Weights::parse_safetensors(Path::new(&label), Arc::new(bytes)).map_err(text)?,
            );
            sources.push(label);
        }
    }
    if sources.is_empty() {
        return Err(format!(
            "no weights in {} (expected one of {}, or a sharded index); .bin/.ckpt pickle files are not loaded",
            source.describe(dir),
            WEIGHT_NAMES.join(", ")
        ));
    }
    Ok((Weights::new(sources.join(", "), tensors), config))
}

/// Reads component folder `name` of the model at `root`, loads its network
/// onto the GPU with `load`, and drops the file's bytes.
async fn network<C: for<'de> Deserialize<'de>, N>(
    gpu: &Arc<Gpu>,
    source: &Source,
    root: &str,
    name: &'static str,
    dtype: DType,
    rep: &mut dyn Report,
    load: impl FnOnce(Ctx, &Weights, C) -> Result<N, pnp::models::weights::WeightError>,
) -> Result<(N, ComponentReport), String> {
    rep.phase(&format!("{name} weights"), 1);
    let (w, c) = component(source, &join(root, name), dtype, rep).await?;
    let net = gpu
        .scoped(&format!("uploading the {name}"), || {
            load(Ctx { gpu, dtype }, &w, c)
        })
        .await
        .map_err(text)?
        .map_err(text)?;
    rep.tick();
    Ok((net, ComponentReport::of(name, &w)))
}

async fn load_folder(
    gpu: &Arc<Gpu>,
    source: &Source,
    root: &str,
    dtype: DType,
    rep: &mut dyn Report,
) -> Result<Loaded, String> {
    let tok_dir = join(root, "tokenizer");
    let tokenizer = tokenizer(source, &source.describe(&tok_dir), |name| {
        Some(format!("{tok_dir}/{name}"))
    })
    .await?;
    let sched = join(root, "scheduler/scheduler_config.json");
    let scheduler = match source.text(&sched).await? {
        Some(t) => {
            let v: serde_json::Value = serde_json::from_str(&t)
                .map_err(|e| format!("{} is not JSON: {e}", source.describe(&sched)))?;
            Ddim::from_config(&v).map_err(text)?
        }
        None => Ddim::sd(),
    };
    // One network at a time: its file's bytes are dropped once it is on the GPU.
    let text_enc = network(
        gpu,
        source,
        root,
        "text_encoder",
        dtype,
        rep,
        ClipText::load,
    )
    .await?;
    let unet = network(gpu, source, root, "unet", dtype, rep, Unet::load).await?;
    let vae = network(gpu, source, root, "vae", dtype, rep, Vae::load).await?;
    let model = SdModel::assemble(PathBuf::from(source.describe(root)), text_enc, unet, vae);
    Ok(Loaded {
        model,
        tokenizer,
        scheduler,
        dtype,
        notes: Vec::new(),
    })
}

async fn load_single(
    gpu: &Arc<Gpu>,
    source: &Source,
    dtype: DType,
    rep: &mut dyn Report,
) -> Result<Loaded, String> {
    let path = source.single_checkpoint()?;
    let has = |n: &str| source.find_by_name(n).is_some();
    let has_tokenizer = has("tokenizer.json") || (has("vocab.json") && has("merges.txt"));
    if !has_tokenizer {
        return Err(format!(
            "{path} is a single-file checkpoint, which carries no tokenizer: pick vocab.json and \
             merges.txt (from the tokenizer/ folder of a diffusers copy of the same family) \
             together with it, or pick a diffusers folder"
        ));
    }
    let tokenizer = tokenizer(source, "the picked tokenizer files", |n| {
        source.find_by_name(n)
    })
    .await?;
    rep.phase("checkpoint", 1);
    let bytes = source
        .bytes(&path, &mut |f, d, t| rep.bytes(f, d, t))
        .await?
        .ok_or_else(|| format!("{path} vanished"))?;
    let p = Path::new(&path);
    let all = Weights::parse_safetensors(p, Arc::new(bytes)).map_err(text)?;
    let ck = split_ldm_tensors(p, all, &LdmOverrides::default()).map_err(text)?;
    let tc = from_json(p, &ck.text_config).map_err(text)?;
    let uc = from_json(p, &ck.unet_config).map_err(text)?;
    let vc = from_json(p, &ck.vae_config).map_err(text)?;
    let cx = Ctx { gpu, dtype };
    let model = gpu
        .scoped("uploading the checkpoint", || {
            SdModel::from_parts(
                cx,
                p.to_path_buf(),
                (ck.text, tc),
                (ck.unet, uc),
                (ck.vae, vc),
            )
        })
        .await
        .map_err(text)?
        .map_err(text)?;
    rep.tick();
    Ok(Loaded {
        model,
        tokenizer,
        scheduler: Ddim::sd(),
        dtype,
        notes: ck
            .assumed
            .iter()
            .map(|a| format!("assumed {a} (a single-file checkpoint does not record it)"))
            .collect(),
    })
}

/// The page's options; absent fields take the spec's defaults.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebOptions {
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    pub inversion_prompt: String,
    pub steps: usize,
    pub inversion_steps: usize,
    pub guidance: f32,
    pub pnp_f_t: f32,
    pub pnp_attn_t: f32,
    /// Processing size; None: the shorter side becomes 512.
    pub width: Option<usize>,
    pub height: Option<usize>,
}

impl Default for WebOptions {
    fn default() -> Self {
        let d = PnpOptions::default();
        WebOptions {
            prompts: Vec::new(),
            negative_prompt: d.negative_prompt,
            inversion_prompt: d.inversion_prompt,
            steps: d.steps,
            inversion_steps: d.inversion_steps,
            guidance: d.guidance,
            pnp_f_t: d.pnp_f_t,
            pnp_attn_t: d.pnp_attn_t,
            width: None,
            height: None,
        }
    }
}

pub struct Output {
    pub width: usize,
    pub height: usize,
    /// One PNG file per prompt.
    pub pngs: Vec<Vec<u8>>,
    pub translation: Translation,
    pub stats: Stats,
}

/// Translates the image in `image` (PNG or JPEG bytes) with every prompt.
pub async fn translate(
    gpu: &Arc<Gpu>,
    loaded: &Loaded,
    image_name: &str,
    image: &[u8],
    opts: &WebOptions,
    rep: &mut dyn Report,
) -> Result<Output, String> {
    let px = pnp::picture::decode(image_name, image, opts.width, opts.height).map_err(text)?;
    let prompts: Vec<&str> = opts
        .prompts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect();
    let pnp_opts = PnpOptions {
        negative_prompt: opts.negative_prompt.clone(),
        inversion_prompt: opts.inversion_prompt.clone(),
        steps: opts.steps,
        inversion_steps: opts.inversion_steps,
        guidance: opts.guidance,
        pnp_f_t: opts.pnp_f_t,
        pnp_attn_t: opts.pnp_attn_t,
        ..Default::default()
    };
    let mut pipe = Pipeline::new(
        gpu.clone(),
        &loaded.model,
        &loaded.tokenizer,
        loaded.scheduler.clone(),
        loaded.dtype,
    );
    let (h, w) = (px.height, px.width);
    let translation = pipe
        .translate(&px.data, [h, w], &prompts, &pnp_opts, rep)
        .await
        .map_err(text)?;
    let pngs = translation
        .images
        .iter()
        .map(|img| pnp::picture::encode_png(img, h, w).map_err(text))
        .collect::<Result<_, _>>()?;
    Ok(Output {
        width: w,
        height: h,
        pngs,
        translation,
        stats: pipe.stats,
    })
}
