//! Where `--model` points: a diffusers folder, a single-file checkpoint, or
//! a Hugging Face repo id resolved offline in the local hub cache. Reading
//! the files is [`super::loader`]'s.

use super::weights::WeightError;
use std::path::{Path, PathBuf};

/// Pickle weight files, which are never loaded (they can run code).
pub const PICKLE_EXT: &[&str] = &["bin", "ckpt", "pt", "pth"];

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

/// Whether `s` reads as a Hub repo id: "org/name", each part of ASCII
/// letters, digits, '-', '_' and '.', not starting with '.' (a relative path
/// such as ./x/y is not one).
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
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
    if is_repo_id(model) {
        let parts: Vec<&str> = model.split('/').collect();
        let repo = hub.join(format!("models--{}--{}", parts[0], parts[1]));
        let snapshot = std::fs::read_to_string(repo.join("refs/main"))
            .ok()
            .map(|r| repo.join("snapshots").join(r.trim()))
            .filter(|p| p.is_dir())
            .or_else(|| {
                let mut snaps: Vec<PathBuf> = std::fs::read_dir(repo.join("snapshots"))
                    .ok()?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
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

impl ModelSource {
    /// Where the loader finds each part. A single file carries no tokenizer
    /// and not every config value: `config_dir`, a diffusers folder of the
    /// same family, supplies them (its tokenizer/, scheduler/ and config.json
    /// files); for a folder it is ignored.
    pub fn layout(&self, config_dir: Option<&Path>) -> super::loader::ModelLayout {
        let text = |p: &Path| p.to_string_lossy().into_owned();
        match self {
            ModelSource::Folder(dir) => super::loader::ModelLayout::Folder { root: text(dir) },
            ModelSource::SingleFile(file) => super::loader::ModelLayout::SingleFile {
                file: text(file),
                tokenizer_dir: config_dir.map(|d| text(&d.join("tokenizer"))),
                config_dir: config_dir.map(text),
            },
        }
    }
}
