//! What the page does, as plain async Rust (the bindings in `lib.rs` only
//! convert to and from JS): open WebGPU, load a model from a [`Source`]
//! with the library's one loader, and translate an image.

use std::sync::Arc;

use serde::Serialize;
use wasm_bindgen::JsValue;

use pnp::gpu::{Autotune, DType, Gpu, GpuOptions};
use pnp::models::loader::{LoadedModel, ModelLayout, load_model};
use pnp::models::nn::Ctx;
use pnp::models::weights::Fnv;
use pnp::pipeline::scheduler::Ddim;
use pnp::pipeline::{Pipeline, PnpError, PnpOptions, Stats, Translation};
use pnp::progress::Progress;

use crate::source::Source;

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Opens the browser's WebGPU adapter; f16 storage where it has shader-f16.
/// Works in a window and in a worker (the page opens it in its worker).
pub async fn open(force_f32: bool) -> Result<Arc<Gpu>, String> {
    let gpu = |nav: JsValue| js_sys::Reflect::get(&nav, &"gpu".into());
    let has_webgpu = js_sys::Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(gpu)
        .is_ok_and(|g| !g.is_undefined());
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
        // Winners kept for the page's session (a browser has no cache
        // folder); a CPU rasteriser (SwiftShader) is not tuned.
        autotune: Some(Autotune {
            cache_dir: None,
            on_cpu: false,
        }),
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
    /// The picked folder's or checkpoint's name, or the URL.
    pub name: String,
    pub loaded: LoadedModel,
    pub scheduler: Ddim,
    pub dtype: DType,
}

impl Loaded {
    /// One line per network: parameters and stored type.
    pub fn summary(&self) -> String {
        let model = &self.loaded.model;
        let mut s = format!("{:?} model, {:?} on the GPU:", model.family, self.dtype);
        for r in &model.report {
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

/// Loads a diffusers folder, or a single checkpoint with its tokenizer
/// files, through the library's loader (the command line's rules).
pub async fn load(
    gpu: &Arc<Gpu>,
    source: &Source,
    dtype: DType,
    progress: &mut dyn Progress,
) -> Result<Loaded, String> {
    let layout = source.layout()?;
    let cx = Ctx { gpu, dtype };
    let loaded = load_model(source, &layout, cx, progress)
        .await
        .map_err(text)?;
    let scheduler = Ddim::from_optional_config(loaded.scheduler_config.as_ref()).map_err(text)?;
    let name = match (source, layout) {
        (Source::Url(url), _) => url.clone(),
        (_, ModelLayout::Folder { root }) => root,
        (_, ModelLayout::SingleFile { file, .. }) => file,
    };
    Ok(Loaded {
        name,
        loaded,
        scheduler,
        dtype,
    })
}

/// The page's request: prompts, processing size, and the algorithm's
/// options ([`PnpOptions`], its defaults where absent).
#[derive(Debug, Default)]
pub struct WebOptions {
    pub prompts: Vec<String>,
    /// Processing size; None: the shorter side becomes 512.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub pnp: PnpOptions,
}

impl WebOptions {
    /// From the page's JSON object: `prompts`, `width`, `height` and any
    /// [`PnpOptions`] field; an unknown field is an error.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let bad = |e: serde_json::Error| format!("bad options: {e}");
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(bad)?;
        let mut take = |k: &str| v.remove(k).unwrap_or(serde_json::Value::Null);
        let prompts = take("prompts");
        let prompts: Vec<String> = match prompts {
            serde_json::Value::Null => Vec::new(),
            p => serde_json::from_value(p).map_err(bad)?,
        };
        let width = serde_json::from_value(take("width")).map_err(bad)?;
        let height = serde_json::from_value(take("height")).map_err(bad)?;
        let pnp = serde_json::from_value(serde_json::Value::Object(v)).map_err(bad)?;
        Ok(WebOptions {
            prompts,
            width,
            height,
            pnp,
        })
    }
}

/// The parameters each output PNG carries, under the command line's key
/// and field names (`Params` in src/cli/params.rs), so that `pnp info
/// --image` reads them and `pnp translate --params-from` runs them again.
#[derive(Serialize)]
struct Params<'a> {
    generator: &'static str,
    command: &'static str,
    model: &'a str,
    model_hash: String,
    precision: String,
    image: &'a str,
    image_hash: String,
    prompt: &'a str,
    prompts: &'a [&'a str],
    width: usize,
    height: usize,
    options: &'a PnpOptions,
}

pub struct Output {
    pub width: usize,
    pub height: usize,
    /// The image as the pipeline took it (at the processing size), as PNG.
    pub source: Vec<u8>,
    /// One PNG file per prompt, carrying its [`Params`].
    pub pngs: Vec<Vec<u8>>,
    pub translation: Translation,
    pub stats: Stats,
}

/// Why [`translate`] gave no images.
#[derive(Debug)]
pub enum TranslateError {
    /// `progress` said the run is cancelled; the pipeline stopped before its next step.
    Cancelled,
    Failed(String),
}

impl From<String> for TranslateError {
    fn from(msg: String) -> Self {
        TranslateError::Failed(msg)
    }
}

/// Translates the image in `image` (PNG or JPEG bytes) with every prompt.
pub async fn translate(
    gpu: &Arc<Gpu>,
    loaded: &Loaded,
    image_name: &str,
    image: &[u8],
    opts: &WebOptions,
    progress: &mut dyn Progress,
) -> Result<Output, TranslateError> {
    let (px, notes) =
        pnp::picture::decode(image_name, image, opts.width, opts.height).map_err(text)?;
    for n in &notes {
        progress.note(n);
    }
    let prompts: Vec<&str> = opts
        .prompts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect();
    let mut pipe = Pipeline::new(
        gpu.clone(),
        &loaded.loaded.model,
        &loaded.loaded.tokenizer,
        loaded.scheduler.clone(),
        loaded.dtype,
    );
    let (h, w) = (px.height, px.width);
    let translation = pipe
        .translate(&px.data, [h, w], &prompts, &opts.pnp, progress)
        .await
        .map_err(|e| match e {
            PnpError::Cancelled => TranslateError::Cancelled,
            e => TranslateError::Failed(e.to_string()),
        })?;
    let model = &loaded.loaded.model;
    let mut image_hash = Fnv::default();
    image_hash.write(image);
    let mut params = Params {
        generator: concat!("pnp-web ", env!("CARGO_PKG_VERSION")),
        command: "translate",
        model: &loaded.name,
        model_hash: model.fingerprint(),
        precision: format!("auto: {}", loaded.dtype.wgsl()),
        image: image_name,
        image_hash: format!("{:016x}", image_hash.0),
        prompt: "",
        prompts: &prompts,
        width: w,
        height: h,
        options: &opts.pnp,
    };
    let mut pngs = Vec::with_capacity(prompts.len());
    for (img, prompt) in translation.images.iter().zip(&prompts) {
        params.prompt = prompt;
        let json = serde_json::to_string(&params).map_err(text)?;
        let rgb = pnp::picture::to_rgb8(img, h, w);
        pngs.push(pnp::picture::encode_with_params(&rgb, false, Some(&json)).map_err(text)?);
    }
    Ok(Output {
        width: w,
        height: h,
        source: pnp::picture::encode_png(&px.data, h, w).map_err(text)?,
        pngs,
        translation,
        stats: pipe.stats,
    })
}
