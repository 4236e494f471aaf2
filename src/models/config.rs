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
            // An empty list reads as 0, which the consistency check refuses.
            PerBlock::Many(v) => v
                .get(i.min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0),
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

/// A config whose numbers must agree with each other before any network is
/// built from it: a bad one is refused with the field at fault, not later as
/// a shape error (or, worse, as an adapter that seems too small).
pub trait Consistent {
    /// What is wrong with the config, or Ok.
    fn check(&self) -> Result<(), String>;
}

fn positive(what: &str, v: usize) -> Result<(), String> {
    if v == 0 {
        return Err(format!("{what} is 0; it must be positive"));
    }
    Ok(())
}

fn positive_f32(what: &str, v: f32) -> Result<(), String> {
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{what} is {v}; it must be a positive number"));
    }
    Ok(())
}

/// Group norm over `channels` in `groups` groups: groups must divide them.
fn groups_divide(what: &str, channels: &[usize], groups: usize) -> Result<(), String> {
    positive("norm_num_groups", groups)?;
    for &c in channels {
        positive(what, c)?;
        if !c.is_multiple_of(groups) {
            return Err(format!(
                "norm_num_groups {groups} does not divide {what} {c} (group norm needs equal groups)"
            ));
        }
    }
    Ok(())
}

impl Consistent for UnetConfig {
    fn check(&self) -> Result<(), String> {
        positive("in_channels", self.in_channels)?;
        positive("out_channels", self.out_channels)?;
        positive("layers_per_block", self.layers_per_block)?;
        positive("cross_attention_dim", self.cross_attention_dim)?;
        positive_f32("norm_eps", self.norm_eps)?;
        let n = self.block_out_channels.len();
        // Images are taken in multiples of 64 pixels, 8 latent cells: three
        // halvings, four blocks (SD 1.x and 2.x have four).
        if !(1..=4).contains(&n) {
            return Err(format!(
                "block_out_channels has {n} entries; a Stable Diffusion UNet has 1 to 4"
            ));
        }
        groups_divide(
            "block_out_channels",
            &self.block_out_channels,
            self.norm_num_groups,
        )?;
        for (what, types) in [
            ("down_block_types", &self.down_block_types),
            ("up_block_types", &self.up_block_types),
        ] {
            if types.len() != n {
                return Err(format!(
                    "{what} has {} entries but block_out_channels has {n}",
                    types.len()
                ));
            }
        }
        for (i, &width) in self.block_out_channels.iter().enumerate() {
            let heads = self.heads(i);
            positive(&format!("the head count of block {i}"), heads)?;
            if !width.is_multiple_of(heads) {
                return Err(format!(
                    "block {i} is {width} wide, which {heads} heads do not divide"
                ));
            }
            let layers = self.transformer_layers_per_block.get(i);
            positive(
                &format!("transformer_layers_per_block of block {i}"),
                layers,
            )?;
        }
        Ok(())
    }
}

impl Consistent for VaeConfig {
    fn check(&self) -> Result<(), String> {
        positive("in_channels", self.in_channels)?;
        positive("out_channels", self.out_channels)?;
        positive("latent_channels", self.latent_channels)?;
        positive("layers_per_block", self.layers_per_block)?;
        positive_f32("scaling_factor", self.scaling_factor)?;
        if self.block_out_channels.is_empty() {
            return Err("block_out_channels is empty".into());
        }
        groups_divide(
            "block_out_channels",
            &self.block_out_channels,
            self.norm_num_groups,
        )
    }
}

impl Consistent for ClipConfig {
    fn check(&self) -> Result<(), String> {
        positive("vocab_size", self.vocab_size)?;
        positive("intermediate_size", self.intermediate_size)?;
        positive("num_hidden_layers", self.num_hidden_layers)?;
        positive("max_position_embeddings", self.max_position_embeddings)?;
        positive("num_attention_heads", self.num_attention_heads)?;
        positive("hidden_size", self.hidden_size)?;
        positive_f32("layer_norm_eps", self.layer_norm_eps)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// Parses a config.json into `T`, naming the file on error.
pub fn read_config<T: for<'de> Deserialize<'de> + Consistent>(
    path: &Path,
) -> Result<T, WeightError> {
    let text = std::fs::read_to_string(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v = serde_json::from_str(&text).map_err(|e| WeightError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    from_json(path, &v)
}

/// Parses a config already in memory (from a single-file checkpoint) and
/// checks that it is [`Consistent`].
pub fn from_json<T: for<'de> Deserialize<'de> + Consistent>(
    what: &Path,
    v: &serde_json::Value,
) -> Result<T, WeightError> {
    let bad = |msg: String| WeightError::Config {
        path: what.to_path_buf(),
        msg,
    };
    let config: T = serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?;
    config.check().map_err(bad)?;
    Ok(config)
}
