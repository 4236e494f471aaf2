//! The config.json of each diffusers component. Every dimension the models
//! use comes from here, never from constants in code.

use super::weights::WeightError;
use serde::Deserialize;
use std::path::Path;

/// A number or one per block, as diffusers writes `attention_head_dim`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Many(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(x) => *x,
            PerBlock::Many(v) => v[i.min(v.len().saturating_sub(1))],
        }
    }
}

fn d_true() -> bool {
    true
}
fn d_eps5() -> f32 {
    1e-5
}
fn d_groups() -> usize {
    32
}
fn d_scale() -> f32 {
    0.18215
}
fn d_tlayers() -> PerBlock {
    PerBlock::One(1)
}

/// UNet2DConditionModel's config (the fields SD 1.x/2.x use).
#[derive(Clone, Debug, Deserialize)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub cross_attention_dim: usize,
    /// SD1: one head count (8); SD2: heads per block (diffusers' naming quirk).
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps5")]
    pub norm_eps: f32,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f32,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "d_tlayers")]
    pub transformer_layers_per_block: PerBlock,
}

impl UnetConfig {
    /// Attention heads of down block `i` (diffusers: num_attention_heads or attention_head_dim).
    pub fn heads(&self, i: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(i)
    }
}

/// AutoencoderKL's config.
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scale")]
    pub scaling_factor: f32,
}

/// CLIPTextModel's config.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    #[serde(default = "d_eps5")]
    pub layer_norm_eps: f32,
}

/// Parses a config.json into `T`, naming the file on error.
pub fn read_config<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, WeightError> {
    let text = std::fs::read_to_string(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| WeightError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Parses a config already in memory (from a single-file checkpoint).
pub fn from_json<T: for<'de> Deserialize<'de>>(
    what: &Path,
    v: &serde_json::Value,
) -> Result<T, WeightError> {
    serde_json::from_value(v.clone()).map_err(|e| WeightError::Config {
        path: what.to_path_buf(),
        msg: e.to_string(),
    })
}
