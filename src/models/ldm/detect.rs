//! The component configs a single-file checkpoint implies: everything that
//! tensor shapes determine, plus SD's own values for what they cannot
//! (recorded as assumed), merged with caller overrides.

use super::{Family, Tensors};
use serde_json::{Value, json};

/// A component config read from the weights: entries every SD checkpoint
/// shares (a JSON text), entries the shapes determine, and entries that hold
/// the real SD values because the weights cannot tell.
pub(super) struct Detected {
    fixed: &'static str,
    detected: Value,
    guessed: Value,
}

fn dim(w: &Tensors, key: &str, i: usize) -> Result<usize, String> {
    let t = w
        .get(key)
        .ok_or_else(|| format!("tensor {key} is missing"))?;
    t.shape
        .get(i)
        .copied()
        .ok_or_else(|| format!("tensor {key} has shape {:?}", t.shape))
}

/// How many of f(0), f(1), ... are keys of `w`, counting from 0.
fn count(w: &Tensors, f: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|&i| w.contains_key(&f(i))).count()
}

/// Output channels per level, from each level's first resnet.
fn channels(w: &Tensors, f: impl Fn(usize) -> String) -> Result<Vec<usize>, String> {
    match count(w, &f) {
        0 => Err(format!("tensor {} is missing", f(0))),
        nb => (0..nb).map(|i| dim(w, &f(i), 0)).collect(),
    }
}

/// diffusers' UNet2DConditionModel defaults, as SD1.5's and SD2.1's unet/config.json write them.
const UNET_FIXED: &str = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu",
 "addition_embed_type": null, "addition_embed_type_num_heads": 64, "addition_time_embed_dim": null,
 "attention_type": "default", "center_input_sample": false, "class_embed_type": null,
 "class_embeddings_concat": false, "cross_attention_norm": null, "downsample_padding": 1,
 "dual_cross_attention": false,
 "dropout": 0.0, "encoder_hid_dim": null, "encoder_hid_dim_type": null, "flip_sin_to_cos": true,
 "freq_shift": 0, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
 "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "num_attention_heads": null,
 "num_class_embeds": null, "only_cross_attention": false,
 "projection_class_embeddings_input_dim": null, "resnet_out_scale_factor": 1.0,
 "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
 "reverse_transformer_layers_per_block": null, "time_cond_proj_dim": null,
 "time_embedding_act_fn": null, "time_embedding_dim": null, "time_embedding_type": "positional",
 "timestep_post_act": null}"#;

pub(super) fn unet_config(w: &Tensors, family: Family) -> Result<Detected, String> {
    let ch = channels(w, |i| format!("down_blocks.{i}.resnets.0.conv1.weight"))?;
    let attn = |side: &str, i: usize| {
        w.contains_key(&format!("{side}_blocks.{i}.attentions.0.proj_in.weight"))
    };
    let kinds = |side: &str, with: &str, without: &str| -> Vec<String> {
        (0..ch.len())
            .map(|i| if attn(side, i) { with } else { without }.to_string())
            .collect()
    };
    let mid = |k: &str| format!("mid_block.attentions.0.{k}");
    let cross = dim(w, &mid("transformer_blocks.0.attn2.to_k.weight"), 1)?;
    let depth = count(w, |t| {
        mid(&format!("transformer_blocks.{t}.attn1.to_q.weight"))
    });
    let linear = w
        .get(&mid("proj_in.weight"))
        .is_some_and(|t| t.shape.len() == 2);
    // Heads are not in the weights. SD1 has 8 everywhere; SD2 has head dim 64,
    // which its config writes as heads per level (attention_head_dim [5, 10, 20, 20]).
    let heads = match family {
        Family::Sd1 => json!(8),
        Family::Sd2 => json!(ch.iter().map(|c| (c / 64).max(1)).collect::<Vec<_>>()),
    };
    Ok(Detected {
        fixed: UNET_FIXED,
        detected: json!({
            "block_out_channels": ch,
            "conv_in_kernel": dim(w, "conv_in.weight", 3)?,
            "conv_out_kernel": dim(w, "conv_out.weight", 3)?,
            "cross_attention_dim": cross,
            "down_block_types": kinds("down", "CrossAttnDownBlock2D", "DownBlock2D"),
            "in_channels": dim(w, "conv_in.weight", 1)?,
            "layers_per_block": count(w, |j| format!("down_blocks.0.resnets.{j}.conv1.weight")),
            "out_channels": dim(w, "conv_out.weight", 0)?,
            "transformer_layers_per_block": depth,
            "up_block_types": kinds("up", "CrossAttnUpBlock2D", "UpBlock2D"),
            "use_linear_projection": linear,
        }),
        guessed: json!({
            "attention_head_dim": heads,
            "norm_num_groups": 32,
            "sample_size": 64,
            "upcast_attention": false,
        }),
    })
}

/// diffusers' AutoencoderKL defaults, as SD's vae/config.json writes them.
const VAE_FIXED: &str = r#"{"_class_name": "AutoencoderKL", "act_fn": "silu", "force_upcast": true,
 "latents_mean": null, "latents_std": null, "shift_factor": null}"#;

pub(super) fn vae_config(w: &Tensors) -> Result<Detected, String> {
    let ch = channels(w, |i| {
        format!("encoder.down_blocks.{i}.resnets.0.conv1.weight")
    })?;
    let nb = ch.len();
    let layers = count(w, |j| {
        format!("encoder.down_blocks.0.resnets.{j}.conv1.weight")
    });
    Ok(Detected {
        fixed: VAE_FIXED,
        detected: json!({
            "block_out_channels": ch,
            "down_block_types": vec!["DownEncoderBlock2D"; nb],
            "in_channels": dim(w, "encoder.conv_in.weight", 1)?,
            "latent_channels": dim(w, "decoder.conv_in.weight", 1)?,
            "layers_per_block": layers,
            "mid_block_add_attention": w.contains_key("encoder.mid_block.attentions.0.to_q.weight"),
            "out_channels": dim(w, "decoder.conv_out.weight", 0)?,
            "up_block_types": vec!["UpDecoderBlock2D"; nb],
            "use_post_quant_conv": w.contains_key("post_quant_conv.weight"),
            "use_quant_conv": w.contains_key("quant_conv.weight"),
        }),
        guessed: json!({"norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215}),
    })
}

/// transformers' CLIPTextConfig as SD's text_encoder/config.json writes it
/// (with the legacy token ids those files carry).
const TEXT_FIXED: &str = r#"{"architectures": ["CLIPTextModel"], "attention_dropout": 0.0,
 "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "initializer_factor": 1.0,
 "initializer_range": 0.02, "layer_norm_eps": 1e-05, "model_type": "clip_text_model",
 "pad_token_id": 1}"#;

pub(super) fn text_config(w: &Tensors, family: Family) -> Result<Detected, String> {
    let (emb, layers) = ("text_model.embeddings.", "text_model.encoder.layers.");
    let tok = format!("{emb}token_embedding.weight");
    let hidden = dim(w, &tok, 1)?;
    let (act, projection) = match family {
        Family::Sd1 => ("quick_gelu", 768),
        Family::Sd2 => ("gelu", 512),
    };
    Ok(Detected {
        fixed: TEXT_FIXED,
        detected: json!({
            "hidden_act": act,
            "hidden_size": hidden,
            "intermediate_size": dim(w, &format!("{layers}0.mlp.fc1.weight"), 0)?,
            "max_position_embeddings": dim(w, &format!("{emb}position_embedding.weight"), 0)?,
            "num_hidden_layers": count(w, |i| format!("{layers}{i}.mlp.fc1.weight")),
            "vocab_size": dim(w, &tok, 0)?,
        }),
        // Heads are not in the weights: both CLIPs SD uses have head dim 64.
        guessed: json!({"num_attention_heads": (hidden / 64).max(1), "projection_dim": projection}),
    })
}

/// The component config: fixed, detected and guessed entries with `over`'s
/// entries on top. An override of a detected entry must agree with it.
pub(super) fn merge(
    d: Detected,
    over: Option<&Value>,
    name: &str,
    assumed: &mut Vec<String>,
) -> Result<Value, String> {
    let obj = |v: Value| match v {
        Value::Object(m) => Ok(m),
        _ => Err(format!("the {name} config is not a JSON object")),
    };
    let mut config = obj(serde_json::from_str(d.fixed).map_err(|e| format!("internal: {e}"))?)?;
    let (detected, guessed) = (obj(d.detected)?, obj(d.guessed)?);
    let over = over.cloned().map(obj).transpose()?.unwrap_or_default();
    let clash = over
        .iter()
        .find_map(|(k, v)| detected.get(k).filter(|h| !same(h, v)).map(|h| (k, v, h)));
    if let Some((k, v, have)) = clash {
        return Err(format!(
            "the {name} config override sets {k} = {v}, but the checkpoint's weights have {have}; \
             use the config.json that belongs to this checkpoint"
        ));
    }
    assumed.extend(
        guessed
            .keys()
            .filter(|k| !over.contains_key(*k))
            .map(|k| format!("{name}.{k}")),
    );
    config.extend(detected);
    config.extend(guessed);
    config.extend(over);
    Ok(Value::Object(config))
}

/// Equal, or a per-block list that repeats a scalar (diffusers accepts both).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(xs), y) | (y, Value::Array(xs)) if !y.is_array() => xs.iter().all(|x| x == y),
        _ => a == b,
    }
}
