//! The one model loader, for the command line, `pnp info` and the browser
//! alike: it reads through a [`FileSource`] (disk, a browser's file pick, a
//! URL), one network at a time, so at most one file's bytes are held besides
//! what is on the GPU.
//!
//! Rules, the same everywhere:
//! - A component folder (text_encoder/, unet/, vae/) holds one weight file
//!   or the shards a `<name>.index.json` names. Names are tried in
//!   [`weight_names`]' order: the fp16 variant first when the device stores
//!   f16 (half the bytes to read), the full-precision file first otherwise.
//! - Pickle files (.bin, .ckpt) are never loaded; a folder holding only them
//!   is refused with how to convert it.
//! - A tensor of the checkpoint that no module read is reported as a note
//!   (and `pnp info` refuses the model): the layout may not be what it seems.

use super::clip::ClipText;
use super::config::{ClipConfig, Consistent, UnetConfig, VaeConfig, from_json};
use super::files::{FileSource, join};
use super::ldm::{LdmOverrides, split_ldm_tensors};
use super::nn::Ctx;
use super::sd::{ComponentReport, SdModel};
use super::tokenizer::{ClipTokenizer, TokenizerError};
use super::unet::Unet;
use super::vae::Vae;
use super::weights::{HostTensor, WeightError, Weights};
use crate::gpu::{DType, GpuError};
use crate::progress::Progress;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A file that exists could not be read (I/O, network).
    #[error("{0}")]
    Read(String),
}

type Result<T> = std::result::Result<T, LoadError>;

/// Weight file names diffusers writes, full precision first.
pub const WEIGHT_NAMES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
];

/// Pickle files diffusers and transformers write, probed (never read) to
/// say why a folder without safetensors cannot be loaded.
const PICKLE_NAMES: &[&str] = &[
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
    "pytorch_model.fp16.bin",
];

/// The files of a diffusers `tokenizer/` folder that [`ClipTokenizer`] reads.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The order weight files are tried in for a device that stores `dtype`.
pub fn weight_names(dtype: DType) -> Vec<&'static str> {
    let mut names = WEIGHT_NAMES.to_vec();
    if dtype == DType::F16 {
        // Stable: among fp16 files (and among the others) the order stays.
        names.sort_by_key(|n| !n.contains(".fp16."));
    }
    names
}

/// Where the parts of a model are, in a source's paths.
#[derive(Clone, Debug)]
pub enum ModelLayout {
    /// A diffusers folder: model_index.json, text_encoder/, tokenizer/,
    /// unet/, vae/, scheduler/.
    Folder { root: String },
    /// A single-file LDM checkpoint. `tokenizer_dir` holds its tokenizer
    /// files (a file carries none); `config_dir`, a diffusers folder of the
    /// same family, supplies config values the file does not record and the
    /// scheduler config.
    SingleFile {
        file: String,
        tokenizer_dir: Option<String>,
        config_dir: Option<String>,
    },
}

/// A model on the device with what translating needs beside it.
pub struct LoadedModel {
    pub model: SdModel,
    pub tokenizer: ClipTokenizer,
    /// scheduler/scheduler_config.json, when the model has one.
    pub scheduler_config: Option<Value>,
}

/// Loads the networks, the tokenizer and the scheduler config.
pub async fn load_model(
    src: &impl FileSource,
    layout: &ModelLayout,
    cx: Ctx<'_>,
    progress: &mut dyn Progress,
) -> Result<LoadedModel> {
    let (tok_dir, sched_dir) = match layout {
        ModelLayout::Folder { root } => (join(root, "tokenizer"), Some(root.as_str())),
        ModelLayout::SingleFile {
            tokenizer_dir: Some(t),
            config_dir,
            ..
        } => (t.clone(), config_dir.as_deref()),
        ModelLayout::SingleFile { file, .. } => {
            return Err(LoadError::Weights(WeightError::Layout {
                path: src.describe(file).into(),
                msg: "a single-file checkpoint carries no tokenizer: give a diffusers folder \
                      of the same model family for its tokenizer/ and configs (on the command \
                      line: --config DIR)"
                    .into(),
            }));
        }
    };
    let tokenizer = load_tokenizer(src, &tok_dir).await?;
    let scheduler_config = match sched_dir {
        Some(d) => json(src, &join(d, "scheduler/scheduler_config.json")).await?,
        None => None,
    };
    let model = load_networks(src, layout, cx, progress).await?;
    Ok(LoadedModel {
        model,
        tokenizer,
        scheduler_config,
    })
}

/// The tokenizer whose files are in folder `dir` of `src`.
pub async fn load_tokenizer(src: &impl FileSource, dir: &str) -> Result<ClipTokenizer> {
    let mut files = BTreeMap::new();
    for name in TOKENIZER_FILES {
        if let Some(text) = src.text(&join(dir, name)).await.map_err(LoadError::Read)? {
            files.insert(*name, text);
        }
    }
    Ok(ClipTokenizer::from_files(
        Path::new(&src.describe(dir)),
        &|name| Ok(files.get(name).cloned()),
    )?)
}

/// The text encoder, UNet and VAE on the device ([`SdModel::notes`] says
/// what the user should read about them).
pub async fn load_networks(
    src: &impl FileSource,
    layout: &ModelLayout,
    cx: Ctx<'_>,
    progress: &mut dyn Progress,
) -> Result<SdModel> {
    match layout {
        ModelLayout::Folder { root } => load_folder(src, root, cx, progress).await,
        ModelLayout::SingleFile {
            file, config_dir, ..
        } => load_single(src, file, config_dir.as_deref(), cx, progress).await,
    }
}

async fn load_folder(
    src: &impl FileSource,
    root: &str,
    cx: Ctx<'_>,
    progress: &mut dyn Progress,
) -> Result<SdModel> {
    // One network at a time: its file's bytes are dropped once it is on the GPU.
    let text = network(src, root, "text_encoder", cx, progress, ClipText::load).await?;
    let unet = network(src, root, "unet", cx, progress, Unet::load).await?;
    let vae = network(src, root, "vae", cx, progress, Vae::load).await?;
    Ok(SdModel::assemble(
        PathBuf::from(src.describe(root)),
        text,
        unet,
        vae,
    ))
}

/// Reads component folder `name` of the model at `root`, loads its network
/// onto the device with `load`, and drops the file's bytes.
async fn network<C: for<'de> Deserialize<'de> + Consistent, N>(
    src: &impl FileSource,
    root: &str,
    name: &'static str,
    cx: Ctx<'_>,
    progress: &mut dyn Progress,
    load: impl FnOnce(Ctx, &Weights, C) -> std::result::Result<N, WeightError>,
) -> Result<(N, ComponentReport)> {
    progress.phase(&format!("{name} weights"), 1);
    let dir = join(root, name);
    let config_path = join(&dir, "config.json");
    let config = json(src, &config_path).await?.ok_or_else(|| {
        LoadError::Weights(WeightError::Layout {
            path: src.describe(&dir).into(),
            msg: "this component folder (or its config.json) is missing from the model".into(),
        })
    })?;
    let config: C = from_json(Path::new(&src.describe(&config_path)), &config)?;
    let weights = component_weights(src, &dir, cx.dtype, progress).await?;
    let net = cx
        .gpu
        .scoped(&format!("uploading the {name}"), || {
            load(cx, &weights, config)
        })
        .await??;
    progress.tick();
    Ok((net, ComponentReport::of(name, &weights)))
}

/// One component folder's weights: one file, or the shards its index names.
pub async fn component_weights(
    src: &impl FileSource,
    dir: &str,
    dtype: DType,
    progress: &mut dyn Progress,
) -> Result<Weights> {
    let names = weight_names(dtype);
    for name in &names {
        let rel = join(dir, name);
        if let Some(tensors) = safetensors_file(src, &rel, progress).await? {
            return Ok(Weights::new(src.describe(&rel), tensors));
        }
    }
    for name in &names {
        let index = join(dir, &format!("{name}.index.json"));
        let Some(v) = json(src, &index).await? else {
            continue;
        };
        let corrupt = |msg: &str| WeightError::Corrupt {
            path: src.describe(&index).into(),
            msg: msg.into(),
        };
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| corrupt("no weight_map object"))?;
        let mut shards: Vec<&str> = map.values().filter_map(Value::as_str).collect();
        shards.sort_unstable();
        shards.dedup();
        if shards.is_empty() {
            return Err(corrupt("the weight_map names no shard").into());
        }
        let mut tensors = BTreeMap::new();
        let mut sources = Vec::new();
        for shard in shards {
            let rel = join(dir, shard);
            let part = safetensors_file(src, &rel, progress)
                .await?
                .ok_or_else(|| {
                    LoadError::Weights(WeightError::Layout {
                        path: src.describe(&rel).into(),
                        msg: format!("a shard named by {} is missing", src.describe(&index)),
                    })
                })?;
            tensors.extend(part);
            sources.push(src.describe(&rel));
        }
        return Ok(Weights::new(sources.join(", "), tensors));
    }
    let mut pickles = Vec::new();
    for name in PICKLE_NAMES {
        if src
            .exists(&join(dir, name))
            .await
            .map_err(LoadError::Read)?
        {
            pickles.push(*name);
        }
    }
    let path = PathBuf::from(src.describe(dir));
    Err(LoadError::Weights(if pickles.is_empty() {
        WeightError::Layout {
            path,
            msg: format!(
                "no weights found (expected one of {}, or a sharded <name>.index.json)",
                WEIGHT_NAMES.join(", ")
            ),
        }
    } else {
        WeightError::Pickle {
            path,
            found: pickles.join(", "),
        }
    }))
}

/// The tensors of the safetensors file at `rel`, or None when there is none.
async fn safetensors_file(
    src: &impl FileSource,
    rel: &str,
    progress: &mut dyn Progress,
) -> Result<Option<BTreeMap<String, HostTensor>>> {
    let label = src.describe(rel);
    let bytes = src
        .read(rel, &mut |done, total| progress.bytes(&label, done, total))
        .await
        .map_err(LoadError::Read)?;
    match bytes {
        Some(b) => Ok(Some(Weights::parse_safetensors(
            Path::new(&label),
            Arc::new(b),
        )?)),
        None => Ok(None),
    }
}

/// A JSON file, or None when there is none.
async fn json(src: &impl FileSource, rel: &str) -> Result<Option<Value>> {
    let Some(text) = src.text(rel).await.map_err(LoadError::Read)? else {
        return Ok(None);
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        LoadError::Weights(WeightError::Config {
            path: src.describe(rel).into(),
            msg: format!("not JSON: {e}"),
        })
    })
}

/// The config.json files of diffusers folder `dir` (those present; at least
/// one must be), to take the place of what a single file does not record.
pub async fn ldm_overrides(src: &impl FileSource, dir: &str) -> Result<LdmOverrides> {
    let o = LdmOverrides {
        unet: json(src, &join(dir, "unet/config.json")).await?,
        vae: json(src, &join(dir, "vae/config.json")).await?,
        text: json(src, &join(dir, "text_encoder/config.json")).await?,
    };
    if o.unet.is_none() && o.vae.is_none() && o.text.is_none() {
        return Err(LoadError::Weights(WeightError::Config {
            path: src.describe(dir).into(),
            msg: "no unet/config.json, vae/config.json or text_encoder/config.json; \
                  pass a diffusers model folder"
                .into(),
        }));
    }
    Ok(o)
}

async fn load_single(
    src: &impl FileSource,
    file: &str,
    config_dir: Option<&str>,
    cx: Ctx<'_>,
    progress: &mut dyn Progress,
) -> Result<SdModel> {
    let overrides = match config_dir {
        Some(d) => ldm_overrides(src, d).await?,
        None => LdmOverrides::default(),
    };
    progress.phase("checkpoint", 1);
    let label = src.describe(file);
    let path = Path::new(&label);
    let all = safetensors_file(src, file, progress)
        .await?
        .ok_or_else(|| {
            LoadError::Weights(WeightError::Layout {
                path: label.clone().into(),
                msg: "no such file".into(),
            })
        })?;
    let ck = split_ldm_tensors(path, all, &overrides)?;
    // A config the weights contradict is most often one of the values a
    // single file does not record and SD's were assumed for: say so.
    let assumed = |e: WeightError| match (e, ck.assumed.is_empty()) {
        (WeightError::Config { path, msg }, false) => WeightError::Config {
            path,
            msg: format!(
                "{msg}; a single-file checkpoint does not record {}, so Stable Diffusion's values were assumed: give this model's diffusers folder for its configs (on the command line: --config DIR)",
                ck.assumed.join(", ")
            ),
        },
        (e, _) => e,
    };
    let tc: ClipConfig = from_json(path, &ck.text_config).map_err(assumed)?;
    let uc: UnetConfig = from_json(path, &ck.unet_config).map_err(assumed)?;
    let vc: VaeConfig = from_json(path, &ck.vae_config).map_err(assumed)?;
    let mut model = cx
        .gpu
        .scoped("uploading the checkpoint", || {
            SdModel::from_parts(
                cx,
                path.to_path_buf(),
                (ck.text, tc),
                (ck.unet, uc),
                (ck.vae, vc),
            )
        })
        .await??;
    progress.tick();
    model.assumed = ck.assumed;
    Ok(model)
}
