//! Single-file checkpoints in the original LDM/CompVis layout (sd-v1-5.safetensors,
//! v2-1_512-ema-pruned.safetensors) split into the three diffusers components, with
//! diffusers' key names and shapes (as diffusers' `single_file_utils.py` converts them).
//!
//! Layout (tools/ldm_layout.py writes it for the fixtures): `model.diffusion_model.*` UNet,
//! `first_stage_model.*` VAE (mid.attn_1 q/k/v/proj_out as 1x1 convs),
//! `cond_stage_model.transformer.*` SD1 CLIP (transformers' keys), `cond_stage_model.model.*`
//! SD2 OpenCLIP (fused in_proj q/k/v, and one resblock more than diffusers' text encoder:
//! SD2 reads the penultimate layer, so the last one is dropped).
//!
//! Configs come from tensor shapes where the weights determine them. Group counts, head
//! counts and sample sizes are not in the weights: those take the real SD1/SD2 values, are
//! listed in [`LdmCheckpoint::assumed`], and [`LdmOverrides`] can replace them (e.g. with
//! the config.json files of a diffusers folder).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::weights::{HostData, HostTensor, WeightError, Weights};

mod detect;
use detect::{Detected, merge, text_config, unet_config, vae_config};

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP: &str = "cond_stage_model.transformer.";
const OPENCLIP: &str = "cond_stage_model.model.";

/// Which Stable Diffusion generation a checkpoint is, read from its text encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// OpenAI CLIP ViT-L/14 text encoder (SD 1.x).
    Sd1,
    /// OpenCLIP ViT-H text encoder (SD 2.x).
    Sd2,
}

/// The three components of a single-file checkpoint, in diffusers' keys.
#[derive(Debug)]
pub struct LdmCheckpoint {
    pub unet: Weights,
    pub vae: Weights,
    pub text: Weights,
    pub family: Family,
    /// diffusers `unet/config.json`.
    pub unet_config: Value,
    /// diffusers `vae/config.json`.
    pub vae_config: Value,
    /// transformers `text_encoder/config.json`.
    pub text_config: Value,
    /// Config entries that the weights do not determine and no override gave,
    /// filled with the real SD1/SD2 values ("unet.norm_num_groups", ...).
    pub assumed: Vec<String>,
    /// Checkpoint tensors no component uses (scheduler buffers, EMA copies,
    /// text_projection, SD2's last text block), sorted.
    pub ignored: Vec<String>,
}

/// Config entries to use instead of the detected ones, one JSON object per
/// component (whole config.json files or just some keys). An override of a
/// value the weights determine must agree with the weights.
#[derive(Clone, Debug, Default)]
pub struct LdmOverrides {
    pub unet: Option<Value>,
    pub vae: Option<Value>,
    pub text: Option<Value>,
}

/// Splits a single-file LDM checkpoint; configs from shapes plus the real
/// SD1/SD2 values for what shapes cannot tell (see [`LdmCheckpoint::assumed`]).
pub fn split_ldm(path: &Path) -> Result<LdmCheckpoint, WeightError> {
    split_ldm_with(path, &LdmOverrides::default())
}

/// [`split_ldm`] with config entries taken from `overrides`.
pub fn split_ldm_with(path: &Path, overrides: &LdmOverrides) -> Result<LdmCheckpoint, WeightError> {
    split_ldm_tensors(path, Weights::read_safetensors(path)?, overrides)
}

/// [`split_ldm_with`] on a checkpoint's tensors already read (from memory,
/// say); `path` names the file in messages.
pub fn split_ldm_tensors(
    path: &Path,
    all: BTreeMap<String, HostTensor>,
    overrides: &LdmOverrides,
) -> Result<LdmCheckpoint, WeightError> {
    let layout = |msg: String| WeightError::Layout {
        path: path.to_path_buf(),
        msg,
    };
    let has = |p: &str| all.keys().any(|k| k.starts_with(p));
    let (has_unet, has_vae, has_clip, has_open) = (has(UNET), has(VAE), has(CLIP), has(OPENCLIP));
    if !(has_unet || has_vae || has_clip || has_open) {
        return Err(layout(unknown_layout(&all)));
    }
    #[rustfmt::skip]
    let parts = [(has_unet, "UNet (model.diffusion_model.*)"), (has_vae, "VAE (first_stage_model.*)"),
                 (has_clip || has_open, "text encoder (cond_stage_model.*)")];
    if let Some((_, what)) = parts.into_iter().find(|p| !p.0) {
        return Err(layout(format!(
            "this checkpoint has no {what}; a single-file Stable Diffusion checkpoint holds UNet, \
             VAE and text encoder: use a complete one or a diffusers folder"
        )));
    }
    if has_clip && has_open {
        return Err(layout(format!(
            "holds both an SD1 ({CLIP}*) and an SD2 ({OPENCLIP}*) text encoder"
        )));
    }
    let family = if has_open { Family::Sd2 } else { Family::Sd1 };

    let unet_l = unet_layers_per_block(&all).map_err(layout)?;
    let vae_up = max_index(&all, &format!("{VAE}decoder.up.")).map_or(0, |m| m + 1);
    let text_blocks =
        max_index(&all, &format!("{OPENCLIP}transformer.resblocks.")).map_or(0, |m| m + 1);

    // (component, diffusers key, tensor) per checkpoint tensor; empty: no component uses it.
    type Mapped = Vec<(usize, String, HostTensor)>;
    let mut parts: [Tensors; 3] = Default::default();
    let mut ignored = Vec::new();
    for (key, t) in &all {
        let mapped: Option<Mapped> = if let Some(rest) = key.strip_prefix(UNET) {
            unet_key(rest, unet_l).map(|k| vec![(0, k, t.clone())])
        } else if let Some(rest) = key.strip_prefix(VAE) {
            vae_key(rest, vae_up).map(|k| vec![(1, k.clone(), vae_shape(&k, t))])
        } else if let Some(rest) = key.strip_prefix(CLIP) {
            // Very old SD1 files lack the text_model. level.
            let k = rest.strip_prefix("text_model.").unwrap_or(rest);
            Some(if k.ends_with("position_ids") {
                vec![]
            } else {
                vec![(2, format!("text_model.{k}"), t.clone())]
            })
        } else if let Some(rest) = key.strip_prefix(OPENCLIP) {
            openclip(rest, t, text_blocks.saturating_sub(1))
                .map(|v| v.into_iter().map(|(k, t)| (2, k, t)).collect())
        } else {
            Some(vec![])
        };
        let mapped = mapped.ok_or_else(|| {
            layout(format!(
                "tensor {key} has no diffusers counterpart; is this an SD 1.x/2.x checkpoint?"
            ))
        })?;
        if mapped.is_empty() {
            ignored.push(key.clone());
        }
        for (part, k, t) in mapped {
            if parts[part].insert(k.clone(), t).is_some() {
                return Err(layout(format!(
                    "two tensors map to {k} (the second is {key})"
                )));
            }
        }
    }
    let [unet, vae, text] = parts;

    let mut assumed = Vec::new();
    let mut config = |name: &str, d: Result<Detected, String>, over: &Option<Value>| {
        let d = d.map_err(|m| layout(format!("{name}: {m}")))?;
        let path = path.to_path_buf();
        merge(d, over.as_ref(), name, &mut assumed).map_err(|msg| WeightError::Config { path, msg })
    };
    let unet_config = config("unet", unet_config(&unet, family), &overrides.unet)?;
    let vae_config = config("vae", vae_config(&vae), &overrides.vae)?;
    let text_config = config("text", text_config(&text, family), &overrides.text)?;
    let src = |what: &str| format!("{} ({what}, LDM layout)", path.display());
    Ok(LdmCheckpoint {
        unet: Weights::new(src("unet"), unet),
        vae: Weights::new(src("vae"), vae),
        text: Weights::new(src("text encoder"), text),
        family,
        unet_config,
        vae_config,
        text_config,
        assumed,
        ignored,
    })
}

// ------------------------------------------------------------------ key maps

type Tensors = BTreeMap<String, HostTensor>;

/// "3.rest" -> (3, "rest").
fn idx1(s: &str) -> Option<(usize, &str)> {
    let (a, rest) = s.split_once('.')?;
    Some((a.parse().ok()?, rest))
}

/// "3.1.rest" -> (3, 1, "rest").
fn idx2(s: &str) -> Option<(usize, usize, &str)> {
    let (a, rest) = idx1(s)?;
    let (b, rest) = idx1(rest)?;
    Some((a, b, rest))
}

/// Largest N among keys `prefix N.*`.
fn max_index(all: &Tensors, prefix: &str) -> Option<usize> {
    all.keys()
        .filter_map(|k| idx1(k.strip_prefix(prefix)?).map(|(n, _)| n))
        .max()
}

/// `dst` + `rest` with its first matching prefix renamed by `table`.
fn rename(dst: &str, rest: &str, table: &[(&str, &str)]) -> Option<String> {
    table
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{dst}{to}{r}")))
}

#[rustfmt::skip]
const UNET_RESNET: &[(&str, &str)] = &[
    ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."),
    ("skip_connection.", "conv_shortcut."),
];
#[rustfmt::skip]
const VAE_RESNET: &[(&str, &str)] = &[
    ("norm1.", "norm1."), ("conv1.", "conv1."), ("norm2.", "norm2."), ("conv2.", "conv2."),
    ("nin_shortcut.", "conv_shortcut."), ("conv_shortcut.", "conv_shortcut."),
];
/// LDM spelling, old diffusers spelling and current diffusers spelling.
#[rustfmt::skip]
const VAE_ATTN: &[(&str, &str)] = &[
    ("norm.", "group_norm."), ("group_norm.", "group_norm."),
    ("q.", "to_q."), ("query.", "to_q."), ("to_q.", "to_q."),
    ("k.", "to_k."), ("key.", "to_k."), ("to_k.", "to_k."),
    ("v.", "to_v."), ("value.", "to_v."), ("to_v.", "to_v."),
    ("proj_out.", "to_out.0."), ("proj_attn.", "to_out.0."), ("to_out.0.", "to_out.0."),
];

/// UNet layers per block: input_blocks has 1 + nb*L resnets + (nb-1)
/// downsamplers = nb*(L+1) entries, and the downsamplers carry `op`.
fn unet_layers_per_block(all: &Tensors) -> Result<usize, String> {
    let (mut blocks, mut downs) = (BTreeSet::new(), BTreeSet::new());
    for k in all.keys() {
        if let Some((n, k2, rest)) = k
            .strip_prefix(UNET)
            .and_then(|r| idx2(r.strip_prefix("input_blocks.")?))
        {
            blocks.insert(n);
            if k2 == 0 && rest.starts_with("op.") {
                downs.insert(n);
            }
        }
    }
    let count = blocks.last().map_or(0, |m| m + 1);
    let nb = downs.len() + 1;
    let l = (count / nb).saturating_sub(1);
    let expected: BTreeSet<usize> = (1..nb).map(|i| i * (l + 1)).collect();
    if l == 0 || count != nb * (l + 1) || downs != expected {
        return Err(format!(
            "UNet input_blocks 0..{count} with downsamplers at {downs:?} are not equal levels"
        ));
    }
    Ok(l)
}

/// diffusers' name of a UNet key (without `model.diffusion_model.`); `l` is layers per block.
fn unet_key(rest: &str, l: usize) -> Option<String> {
    #[rustfmt::skip]
    const FIXED: &[(&str, &str)] = &[
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
    ];
    if let Some(k) = rename("", rest, FIXED) {
        return Some(k);
    }
    if let Some((n, r)) = rest.strip_prefix("middle_block.").and_then(idx1) {
        return match n {
            0 | 2 => rename(&format!("mid_block.resnets.{}.", n / 2), r, UNET_RESNET),
            1 => Some(format!("mid_block.attentions.0.{r}")),
            _ => None,
        };
    }
    if let Some((n, k, r)) = rest.strip_prefix("input_blocks.").and_then(idx2) {
        let (i, j) = (n.checked_sub(1)? / (l + 1), (n - 1) % (l + 1));
        return match (j == l, k) {
            (false, 0) => rename(&format!("down_blocks.{i}.resnets.{j}."), r, UNET_RESNET),
            (false, 1) => Some(format!("down_blocks.{i}.attentions.{j}.{r}")),
            (true, 0) => rename(
                &format!("down_blocks.{i}.downsamplers.0."),
                r,
                &[("op.", "conv.")],
            ),
            _ => None,
        };
    }
    let (n, k, r) = idx2(rest.strip_prefix("output_blocks.")?)?;
    let (i, j) = (n / (l + 1), n % (l + 1));
    // The upsampler follows the attention when the block has one (slot 2), else the resnet.
    match (k, r.starts_with("conv.")) {
        (0, _) => rename(&format!("up_blocks.{i}.resnets.{j}."), r, UNET_RESNET),
        (1 | 2, true) if j == l => Some(format!("up_blocks.{i}.upsamplers.0.{r}")),
        (1, false) => Some(format!("up_blocks.{i}.attentions.{j}.{r}")),
        _ => None,
    }
}

/// diffusers' name of a VAE key (without `first_stage_model.`); `nb` is the decoder's level count.
fn vae_key(rest: &str, nb: usize) -> Option<String> {
    if rest.starts_with("quant_conv.") || rest.starts_with("post_quant_conv.") {
        return Some(rest.to_string());
    }
    let (part, r) = rest.split_once('.')?;
    #[rustfmt::skip]
    const FIXED: &[(&str, &str)] = &[
        ("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("norm_out.", "conv_norm_out."),
    ];
    let level = |name: &str| r.strip_prefix(name).and_then(idx1);
    match part {
        "encoder" | "decoder" if r.starts_with("mid.") => {
            let mid = r.strip_prefix("mid.")?;
            let (name, table, r) = match mid.split_once('.')? {
                ("block_1", r) => ("resnets.0.", VAE_RESNET, r),
                ("block_2", r) => ("resnets.1.", VAE_RESNET, r),
                ("attn_1", r) => ("attentions.0.", VAE_ATTN, r),
                _ => return None,
            };
            rename(&format!("{part}.mid_block.{name}"), r, table)
        }
        "encoder" | "decoder" if rename("", r, FIXED).is_some() => {
            rename(&format!("{part}."), r, FIXED)
        }
        "encoder" => {
            level("down.").and_then(|(i, r)| vae_block(r, "encoder.down_blocks", i, "downsample"))
        }
        // LDM numbers the decoder's levels from the bottom, diffusers from the top.
        "decoder" => level("up.").and_then(|(k, r)| {
            vae_block(r, "decoder.up_blocks", nb.checked_sub(k + 1)?, "upsample")
        }),
        _ => None,
    }
}

/// `block.J.*` (a resnet) or `{sampler}.conv.*` of one VAE level.
fn vae_block(r: &str, blocks: &str, i: usize, sampler: &str) -> Option<String> {
    if let Some((j, r)) = r.strip_prefix("block.").and_then(idx1) {
        return rename(&format!("{blocks}.{i}.resnets.{j}."), r, VAE_RESNET);
    }
    let conv = r.strip_prefix(sampler)?.strip_prefix(".conv.")?;
    Some(format!("{blocks}.{i}.{sampler}rs.0.conv.{conv}"))
}

/// LDM stores the VAE attention matrices as 1x1 convs [C, C, 1, 1]; diffusers as linears [C, C].
fn vae_shape(key: &str, t: &HostTensor) -> HostTensor {
    let mut t = t.clone();
    let matrix = key.contains(".attentions.0.to_") && key.ends_with(".weight");
    if matrix && t.shape.len() == 4 && t.shape[2..] == [1, 1] {
        t.shape.truncate(2);
    }
    t
}

/// One OpenCLIP tensor as diffusers tensors (none: unused by diffusers), or
/// None when unknown. `last` is the resblock SD2 does not use.
fn openclip(rest: &str, t: &HostTensor, last: usize) -> Option<Vec<(String, HostTensor)>> {
    #[rustfmt::skip]
    const FIXED: &[(&str, &str)] = &[
        ("token_embedding.weight", "embeddings.token_embedding.weight"),
        ("positional_embedding", "embeddings.position_embedding.weight"),
        ("ln_final.weight", "final_layer_norm.weight"), ("ln_final.bias", "final_layer_norm.bias"),
    ];
    #[rustfmt::skip]
    const BLOCK: &[(&str, &str)] = &[
        ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
    ];
    if let Some((_, to)) = FIXED.iter().find(|(from, _)| *from == rest) {
        return Some(vec![(format!("text_model.{to}"), t.clone())]);
    }
    if matches!(rest, "text_projection" | "logit_scale" | "attn_mask") {
        return Some(vec![]);
    }
    let (n, r) = idx1(rest.strip_prefix("transformer.resblocks.")?)?;
    let layer = format!("text_model.encoder.layers.{n}.");
    match r.strip_prefix("attn.in_proj_") {
        _ if n == last => Some(vec![]),
        Some(kind @ ("weight" | "bias")) => {
            let name = |p: &str| format!("{layer}self_attn.{p}_proj.{kind}");
            Some(
                ["q", "k", "v"]
                    .into_iter()
                    .map(name)
                    .zip(split3(t)?)
                    .collect(),
            )
        }
        _ => Some(vec![(rename(&layer, r, BLOCK)?, t.clone())]),
    }
}

/// A fused [3d, ...] in_proj as three [d, ...] tensors (q, k, v), sharing the
/// file's bytes, so f16 stays f16.
fn split3(t: &HostTensor) -> Option<Vec<HostTensor>> {
    let rows = *t.shape.first()?;
    if rows % 3 != 0 {
        return None;
    }
    let mut shape = t.shape.clone();
    shape[0] = rows / 3;
    let n = t.numel() / 3;
    let part = |i: usize| {
        let data = match &t.data {
            HostData::Raw {
                dtype,
                bytes,
                start,
                end,
            } => {
                let len = (end - start) / 3;
                let (dtype, bytes, start) = (*dtype, bytes.clone(), start + i * len);
                HostData::Raw {
                    dtype,
                    bytes,
                    start,
                    end: start + len,
                }
            }
            HostData::F32(v) => HostData::F32(Arc::new(v[i * n..(i + 1) * n].to_vec())),
        };
        let shape = shape.clone();
        HostTensor { shape, data }
    };
    Some((0..3).map(part).collect())
}

fn unknown_layout(all: &Tensors) -> String {
    let top = |k: &String| {
        k.split_once('.')
            .map_or(k.clone(), |(a, _)| format!("{a}.*"))
    };
    let found: BTreeSet<String> = all.keys().map(top).collect();
    let found: Vec<String> = found.into_iter().take(12).collect();
    format!(
        "not a Stable Diffusion checkpoint in the original LDM layout: expected keys under \
         {UNET} (UNet), {VAE} (VAE) and {CLIP} or {OPENCLIP} (text encoder), found [{}]. \
         A diffusers model is a folder (unet/, vae/, text_encoder/): pass the folder instead",
        found.join(", ")
    )
}
