//! The parameters inside every output image: what made it, enough to make it
//! again (`translate --params-from OUT.png`) and to read it back
//! (`pnp info --image OUT.png`). Stored as JSON under
//! [`pnp::picture::PARAMS_KEY`]: a PNG iTXt chunk, a JPEG comment.

use anyhow::{Context, Result, bail};
use pnp::models::weights::Fnv;
use pnp::pipeline::PnpOptions;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    /// "pnp <version>".
    pub generator: String,
    /// translate, generate or batch.
    pub command: String,
    /// `--model` as given, and the loaded weights' fingerprint.
    pub model: String,
    pub model_hash: String,
    /// `--precision` and the storage type it gave ("auto: f16").
    pub precision: String,
    /// The guidance image as given, and a hash of its bytes.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_hash: Option<String>,
    /// This output's prompt, and every prompt of the run (in order).
    pub prompt: String,
    #[serde(default)]
    pub prompts: Vec<String>,
    pub width: usize,
    pub height: usize,
    #[serde(default)]
    pub seed: Option<u64>,
    /// The algorithm's settings (translate, batch).
    #[serde(default)]
    pub options: Option<PnpOptions>,
}

/// A 64-bit hash of `bytes`, as hex (an image's identity in its outputs).
pub fn hash(bytes: &[u8]) -> String {
    let mut h = Fnv::default();
    h.write(bytes);
    format!("{:016x}", h.0)
}

impl Params {
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).context("cannot write the parameters as JSON")
    }

    /// The parameters `path` (a PNG or JPEG written by pnp) carries.
    pub fn read(path: &Path) -> Result<Params> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let Some(text) = pnp::picture::read_params(&bytes) else {
            bail!(
                "{} carries no pnp parameters (only PNG and JPEG outputs of pnp translate, generate and batch do)",
                path.display()
            );
        };
        serde_json::from_str(&text)
            .with_context(|| format!("{}: its pnp parameters are not readable", path.display()))
    }

    /// `opts` with every field whose flag was not given on the command line
    /// (not in `given`, by clap id) taken from these parameters.
    pub fn fill_options(&self, opts: &PnpOptions, given: &HashSet<String>) -> Result<PnpOptions> {
        let Some(saved) = &self.options else {
            return Ok(opts.clone());
        };
        let mut now = serde_json::to_value(opts)?;
        let saved = serde_json::to_value(saved)?;
        if let (Some(now), Some(saved)) = (now.as_object_mut(), saved.as_object()) {
            for (k, v) in saved {
                if !given.contains(k) {
                    now.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(serde_json::from_value(now)?)
    }
}
