//! Finding a model's files: a diffusers folder (model_index.json with
//! text_encoder/, tokenizer/, unet/, vae/, scheduler/), or a Hugging Face repo
//! id resolved offline in the local hub cache. Single-file LDM checkpoints
//! are mapped by [`super::ldm`].

use super::weights::{HostTensor, WeightError, Weights};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Weight file names diffusers writes, in order of preference.
pub const WEIGHT_NAMES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
];
const PICKLE_EXT: &[&str] = &["bin", "ckpt", "pt", "pth"];

/// One component folder's weights (all shards), with their file name as source.
pub fn component_weights(dir: &Path) -> Result<Weights, WeightError> {
    if !dir.is_dir() {
        return Err(WeightError::Layout {
            path: dir.to_path_buf(),
            msg: "this component folder is missing from the model".into(),
        });
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for name in WEIGHT_NAMES {
        let p = dir.join(name);
        if p.is_file() {
            files.push(p);
            break;
        }
    }
    if files.is_empty() {
        // Sharded checkpoints: *.safetensors with an index; take every shard.
        let mut shards: Vec<PathBuf> = read_dir(dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        shards.sort();
        files = shards;
    }
    if files.is_empty() {
        let pickles: Vec<String> = read_dir(dir)?
            .into_iter()
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| PICKLE_EXT.iter().any(|x| e == *x))
            })
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .collect();
        if !pickles.is_empty() {
            return Err(WeightError::Pickle {
                path: dir.to_path_buf(),
                found: pickles.join(", "),
            });
        }
        return Err(WeightError::Layout {
            path: dir.to_path_buf(),
            msg: format!(
                "no weights found (expected one of {})",
                WEIGHT_NAMES.join(", ")
            ),
        });
    }
    let mut tensors: BTreeMap<String, HostTensor> = BTreeMap::new();
    for f in &files {
        tensors.extend(Weights::read_safetensors(f)?);
    }
    let source = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Weights::new(source, tensors))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, WeightError> {
    let rd = std::fs::read_dir(dir).map_err(|source| WeightError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

/// Where `--model` points.
#[derive(Clone, Debug)]
pub enum ModelSource {
    Folder(PathBuf),
    SingleFile(PathBuf),
}

/// The local Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else
/// ~/.cache/huggingface/hub.
pub fn hub_cache_dir() -> PathBuf {
    std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"))
}

/// Resolves `--model`: a folder, a .safetensors file, or a repo id
/// ("stabilityai/stable-diffusion-2-1-base") found in the local Hugging Face
/// cache ([`hub_cache_dir`]). Nothing is downloaded.
pub fn resolve(model: &str) -> Result<ModelSource, WeightError> {
    resolve_with_hub(model, &hub_cache_dir())
}

/// [`resolve`] with an explicit hub cache folder.
pub fn resolve_with_hub(model: &str, hub: &Path) -> Result<ModelSource, WeightError> {
    let p = Path::new(model);
    if p.is_dir() {
        return Ok(ModelSource::Folder(p.to_path_buf()));
    }
    if p.is_file() {
        return match p.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(ModelSource::SingleFile(p.to_path_buf())),
            Some(e) if PICKLE_EXT.contains(&e) => Err(WeightError::Pickle {
                path: p.to_path_buf(),
                found: format!("a .{e} file"),
            }),
            _ => Err(WeightError::Layout {
                path: p.to_path_buf(),
                msg: "expected a diffusers folder or a .safetensors checkpoint".into(),
            }),
        };
    }
    let parts: Vec<&str> = model.split('/').collect();
    if parts.len() == 2 && parts.iter().all(|s| !s.is_empty()) && !model.starts_with('.') {
        let repo = hub.join(format!("models--{}--{}", parts[0], parts[1]));
        let snapshot = std::fs::read_to_string(repo.join("refs/main"))
            .ok()
            .map(|r| repo.join("snapshots").join(r.trim()))
            .filter(|p| p.is_dir())
            .or_else(|| {
                let mut snaps = read_dir(&repo.join("snapshots")).ok()?;
                snaps.sort();
                snaps.pop()
            });
        return match snapshot {
            Some(s) => Ok(ModelSource::Folder(s)),
            None => Err(WeightError::Layout {
                path: repo,
                msg: format!(
                    "{model} is not in the local Hugging Face cache; download it first, e.g. \
                     `huggingface-cli download {model} --include '*.json' '*.txt' '*.safetensors'`, \
                     or pass the path of a diffusers folder"
                ),
            }),
        };
    }
    Err(WeightError::Layout {
        path: p.to_path_buf(),
        msg: "no such file or folder (expected a diffusers folder, a .safetensors checkpoint or a hub repo id)".into(),
    })
}
