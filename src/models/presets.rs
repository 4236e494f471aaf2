//! The diffusers config.json values of the two supported base models, for
//! building them without files (`pnp bench pipeline`, synthetic weights).
//! Copied from runwayml/stable-diffusion-v1-5 and
//! stabilityai/stable-diffusion-2-1-base (text_encoder, unet, vae).

use super::config::{ClipConfig, UnetConfig, VaeConfig};

const SD15_TEXT: &str = r#"{
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "vocab_size": 49408
}"#;

const SD15_UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

const SD21_TEXT: &str = r#"{
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "gelu",
  "hidden_size": 1024,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 4096,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 16,
  "num_hidden_layers": 23,
  "pad_token_id": 1,
  "projection_dim": 512,
  "vocab_size": 49408
}"#;

const SD21_UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": [5, 10, 20, 20],
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "dual_cross_attention": false,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "upcast_attention": false,
  "use_linear_projection": true
}"#;

/// Both models share the VAE architecture (and weights, up to fine-tuning).
const SD_VAE: &str = r#"{
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "scaling_factor": 0.18215,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;

/// Parameter counts of the real checkpoints (text encoder, UNet, VAE), for
/// comparison with what the synthetic build holds.
pub const SD15_PARAMS: [usize; 3] = [123_060_480, 859_520_964, 83_653_863];
/// SD 2.1-base's text count is the 23-layer encoder diffusers ships.
pub const SD21_BASE_PARAMS: [usize; 3] = [340_387_840, 865_910_724, 83_653_863];

fn parse(text: &str, unet: &str, vae: &str) -> (ClipConfig, UnetConfig, VaeConfig) {
    let p = |what: &str, s: &str| -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("preset {what} config: {e}"))
    };
    let t = p("text", text);
    let u = p("unet", unet);
    let v = p("vae", vae);
    (
        serde_json::from_value(t).expect("preset text config fits ClipConfig"),
        serde_json::from_value(u).expect("preset unet config fits UnetConfig"),
        serde_json::from_value(v).expect("preset vae config fits VaeConfig"),
    )
}

/// runwayml/stable-diffusion-v1-5.
pub fn sd15() -> (ClipConfig, UnetConfig, VaeConfig) {
    parse(SD15_TEXT, SD15_UNET, SD_VAE)
}

/// stabilityai/stable-diffusion-2-1-base.
pub fn sd21_base() -> (ClipConfig, UnetConfig, VaeConfig) {
    parse(SD21_TEXT, SD21_UNET, SD_VAE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn presets_parse() {
        let (t, u, v) = super::sd15();
        assert_eq!((t.hidden_size, t.num_hidden_layers), (768, 12));
        assert!(!u.use_linear_projection && u.heads(3) == 8);
        assert_eq!(v.block_out_channels, [128, 256, 512, 512]);
        let (t, u, _) = super::sd21_base();
        assert_eq!(
            (t.hidden_size, t.num_hidden_layers, t.hidden_act.as_str()),
            (1024, 23, "gelu")
        );
        assert!(u.use_linear_projection && u.heads(0) == 5 && u.heads(3) == 20);
    }
}
