//! PIE-Bench's CLIP similarity (docs/BENCHMARKS.md): torchmetrics' CLIPScore,
//! 100 * max(cos(image embedding, text embedding), 0), with CLIP ViT-L/14 in
//! transformers' layout (openai/clip-vit-large-patch14).
//!
//! Both towers run on our kernels. The vision tower's patch embedding is one
//! GEMM over patches cut on the host, the class token and the position
//! embeddings entering through its residual table (row 0 an all-zero
//! patch); pre-norm layers with quick-GELU; the post-LayerNorm fused into
//! the projection. The text tower is the SD text encoder ([`ClipText`]) with
//! the projection of the pooled token. The preprocessing is the image
//! processor's: 8-bit bicubic resize of the shorter side to 224 (antialiased,
//! in PyTorch's fixed-point arithmetic), centre crop, normalisation.

use super::resample::resize_bicubic_aa_u8;
use super::vit::{Block, PatchEmbed};
use super::{MetricError, Rgb8};
use crate::gpu::{DType, Gpu};
use crate::graph::Graph;
use crate::models::clip::ClipText;
use crate::models::config::ClipConfig;
use crate::models::nn::{Attention, Ctx, Linear, Norm};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::weights::{WeightError, Weights};
use crate::ops::Act;
use std::path::Path;
use std::sync::Arc;

/// CLIP's image normalisation.
const MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// A CLIP model (both towers and their projections) on the device.
pub struct Clip {
    gpu: Arc<Gpu>,
    /// Input side.
    side: usize,
    patch_embed: PatchEmbed,
    /// (1 + (side / patch)^2, D).
    pos: Vec<f64>,
    pre_norm: Norm,
    layers: Vec<Block>,
    post_norm: Norm,
    act: Act,
    visual_projection: Linear,
    text: ClipText,
    text_projection: Linear,
    pub tokenizer: ClipTokenizer,
    /// Width of the shared embedding space.
    pub projection: usize,
}

#[derive(serde::Deserialize)]
struct VisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    image_size: usize,
    patch_size: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps5")]
    layer_norm_eps: f32,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps5() -> f32 {
    1e-5
}

#[derive(serde::Deserialize)]
struct Config {
    text_config: ClipConfig,
    vision_config: VisionConfig,
    projection_dim: usize,
}

impl Clip {
    /// A CLIP from a transformers folder: config.json, model.safetensors and
    /// the tokenizer files.
    pub fn open(gpu: Arc<Gpu>, dir: &Path) -> Result<Self, MetricError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| WeightError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: Config = serde_json::from_str(&text).map_err(|e| WeightError::Config {
            path: config_path.clone(),
            msg: format!("not a CLIPModel config: {e}"),
        })?;
        let file = super::transformers_weights(dir)?;
        let tensors = Weights::read_safetensors(&file)?;
        let w = Weights::new(file.display().to_string(), tensors);
        let tokenizer = ClipTokenizer::from_dir(dir)
            .map_err(|e| MetricError::Input(format!("{}: {e}", dir.display())))?;
        Ok(Self::load(gpu, &w, config, tokenizer)?)
    }

    fn load(
        gpu: Arc<Gpu>,
        w: &Weights,
        config: Config,
        tokenizer: ClipTokenizer,
    ) -> Result<Self, WeightError> {
        let cx = Ctx {
            gpu: &gpu,
            dtype: DType::F32,
        };
        let v = &config.vision_config;
        let (d, ff, p, side) = (
            v.hidden_size,
            v.intermediate_size,
            v.patch_size,
            v.image_size,
        );
        let bad = |msg: String| WeightError::Config {
            path: w.source.clone().into(),
            msg,
        };
        let act = match v.hidden_act.as_str() {
            "quick_gelu" => Act::QuickGelu,
            "gelu" => Act::Gelu,
            other => return Err(bad(format!("vision hidden_act {other:?} is not supported"))),
        };
        if p == 0 || side % p != 0 {
            return Err(bad(format!(
                "image_size {side} is not a multiple of patch_size {p}"
            )));
        }
        let vb = w.root().pp("vision_model");
        let emb = vb.pp("embeddings");
        let tokens = 1 + (side / p) * (side / p);
        let class = emb.get("class_embedding", &[d])?.to_f32();
        let pos = emb
            .pp("position_embedding")
            .get("weight", &[tokens, d])?
            .to_f32();
        let pe = emb.pp("patch_embedding");
        let patch_embed = PatchEmbed::load(cx, &pe, d, p, false, &class)?;
        let pos = pos.into_iter().map(f64::from).collect();
        let eps = v.layer_norm_eps;
        let mut layers = Vec::new();
        for i in 0..v.num_hidden_layers {
            let l = vb.pp("encoder.layers").pp(i);
            layers.push(Block {
                norm1: Norm::layer(cx, &l.pp("layer_norm1"), d, eps)?,
                attn: Attention::load(
                    cx,
                    &l.pp("self_attn"),
                    ["q_proj", "k_proj", "v_proj", "out_proj"],
                    d,
                    d,
                    d,
                    v.num_attention_heads,
                    true,
                )?,
                norm2: Norm::layer(cx, &l.pp("layer_norm2"), d, eps)?,
                fc1: Linear::load(cx, &l.pp("mlp.fc1"), d, ff, true)?,
                fc2: Linear::load(cx, &l.pp("mlp.fc2"), ff, d, true)?,
            });
        }
        let proj = config.projection_dim;
        let dt = config.text_config.hidden_size;
        Ok(Clip {
            pre_norm: Norm::layer(cx, &vb.pp("pre_layrnorm"), d, eps)?,
            post_norm: Norm::layer(cx, &vb.pp("post_layernorm"), d, eps)?,
            visual_projection: Linear::load(cx, &w.root().pp("visual_projection"), d, proj, false)?,
            text_projection: Linear::load(cx, &w.root().pp("text_projection"), dt, proj, false)?,
            text: ClipText::load(cx, w, config.text_config)?,
            side,
            patch_embed,
            pos,
            layers,
            act,
            tokenizer,
            projection: proj,
            gpu,
        })
    }

    /// The image processor's pixel values for `img`: the shorter side
    /// resized to the model's input side (bicubic, antialiased, 8-bit), the
    /// centre cut out, normalised. (3, side, side).
    pub fn preprocess(&self, img: &Rgb8) -> Vec<f64> {
        let (w, h, s) = (img.width, img.height, self.side);
        let (oh, ow) = if h <= w {
            (s, s * w / h)
        } else {
            (s * h / w, s)
        };
        let resized = resize_bicubic_aa_u8(&img.data, [h, w], [oh, ow]);
        let (top, left) = ((oh - s) / 2, (ow - s) / 2);
        let mut out = vec![0.0; 3 * s * s];
        for y in 0..s {
            for x in 0..s {
                let px = &resized[((top + y) * ow + left + x) * 3..][..3];
                for c in 0..3 {
                    out[(c * s + y) * s + x] = (f64::from(px[c]) / 255.0 - MEAN[c]) / STD[c];
                }
            }
        }
        out
    }

    /// The projected image embedding of pixel values `x` (3, side, side).
    pub async fn image_embedding(&self, x: &[f64]) -> Result<Vec<f64>, MetricError> {
        let s = self.side;
        let mut g = Graph::new(self.gpu.clone(), DType::F32);
        let (mut h, fed) = self.patch_embed.record(&mut g, x, [s, s], &self.pos)?;
        h = self.pre_norm.forward(&mut g, &h, false)?;
        for l in &self.layers {
            h = l.forward(&mut g, &h, self.act)?;
        }
        // Every token projected (the class token's row is kept): no slice op needed.
        let e = self.visual_projection.forward_normed(
            &mut g,
            &h,
            Some(&self.post_norm),
            Act::None,
            None,
        )?;
        g.output(&e);
        g.tune().await?;
        let plan = g.plan()?;
        fed.write(&plan);
        plan.run();
        let all = plan.read(&e).await?;
        Ok(all[..self.projection]
            .iter()
            .map(|&v| f64::from(v))
            .collect())
    }

    /// The projected text embedding of `prompt`, as CLIPScore makes it:
    /// start, tokens and end cut to the model's 77 positions (the end token
    /// lost when it does not fit), pooled at the largest id (the end token,
    /// or the start token of a cut prompt). Also says whether it was cut.
    pub async fn text_embedding(&self, prompt: &str) -> Result<(Vec<f64>, bool), MetricError> {
        let enc = self
            .tokenizer
            .encode(prompt)
            .map_err(|e| MetricError::Input(e.to_string()))?;
        let cut = enc.truncated > 0;
        // Causal attention: the pooled row sees only the ids before it, and
        // those are CLIPScore's own up to there.
        let pooled = if cut {
            0
        } else {
            let eos = self.tokenizer.eos_id();
            enc.ids.iter().position(|&i| i == eos).unwrap_or(0)
        };
        let cx = Ctx {
            gpu: &self.gpu,
            dtype: DType::F32,
        };
        let emb = self
            .text
            .embeddings_tensor(cx, std::slice::from_ref(&enc.ids))?;
        let mut g = Graph::new(self.gpu.clone(), DType::F32);
        let x = g.external("text embeddings", &emb);
        let h = self.text.forward(&mut g, &x)?;
        let e = self.text_projection.forward(&mut g, &h, Act::None, None)?;
        g.output(&e);
        g.tune().await?;
        let plan = g.plan()?;
        plan.run();
        let all = plan.read(&e).await?;
        let row = &all[pooled * self.projection..(pooled + 1) * self.projection];
        Ok((row.iter().map(|&v| f64::from(v)).collect(), cut))
    }

    /// 100 cos(image, text) of two embeddings; torchmetrics' CLIPScore is
    /// its maximum with 0.
    pub fn similarity(image: &[f64], text: &[f64]) -> f64 {
        let dot: f64 = image.iter().zip(text).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        100.0 * dot / (norm(image) * norm(text))
    }
}
