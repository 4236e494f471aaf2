//! CLIPTextModel (transformers' modeling_clip.py): token and position
//! embeddings, pre-norm transformer layers with a causal mask, final layer
//! norm; the output is the last hidden state.

use super::config::ClipConfig;
use super::nn::{Attention, Ctx, Linear, Norm};
use super::weights::{WeightError, Weights};
use crate::gpu::Tensor;
use crate::graph::{Graph, ShapeError, Value, shape_err};
use crate::ops::Act;

struct Layer {
    layer_norm1: Norm,
    self_attn: Attention,
    layer_norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

pub struct ClipText {
    pub config: ClipConfig,
    /// Kept on the host: the 77 rows a prompt needs are gathered there (SD2's
    /// f32 table is 193 MiB, more than one storage binding allows on some devices).
    token_embedding: Vec<f32>,
    position_embedding: Vec<f32>,
    layers: Vec<Layer>,
    final_layer_norm: Norm,
    act: Act,
}

impl ClipText {
    pub fn load(cx: Ctx, w: &Weights, config: ClipConfig) -> Result<Self, WeightError> {
        let vb = w.root().pp("text_model");
        let (d, ff, heads) = (
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
        );
        let emb = vb.pp("embeddings");
        let token_embedding = emb
            .pp("token_embedding")
            .get("weight", &[config.vocab_size, d])?
            .to_f32();
        let position_embedding = emb
            .pp("position_embedding")
            .get("weight", &[config.max_position_embeddings, d])?
            .to_f32();
        let act = match config.hidden_act.as_str() {
            "quick_gelu" => Act::QuickGelu,
            "gelu" => Act::Gelu,
            other => {
                return Err(WeightError::Config {
                    path: w.source.clone().into(),
                    msg: format!("hidden_act {other:?} is not supported (quick_gelu or gelu)"),
                });
            }
        };
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let l = vb.pp("encoder.layers").pp(i);
            layers.push(Layer {
                layer_norm1: Norm::layer(cx, &l.pp("layer_norm1"), d, config.layer_norm_eps)?,
                self_attn: Attention::load(
                    cx,
                    &l.pp("self_attn"),
                    ["q_proj", "k_proj", "v_proj", "out_proj"],
                    d,
                    d,
                    d,
                    heads,
                    true,
                )?,
                layer_norm2: Norm::layer(cx, &l.pp("layer_norm2"), d, config.layer_norm_eps)?,
                fc1: Linear::load(cx, &l.pp("mlp.fc1"), d, ff, true)?,
                fc2: Linear::load(cx, &l.pp("mlp.fc2"), ff, d, true)?,
            });
        }
        let final_layer_norm =
            Norm::layer(cx, &vb.pp("final_layer_norm"), d, config.layer_norm_eps)?;
        Ok(ClipText {
            config,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            act,
        })
    }

    /// Token plus position embeddings for each row of ids: (B, L, D) on the host.
    /// A token id past the embedding table (a tokenizer folder that does not
    /// belong to this text encoder) or a row longer than the position table
    /// is an error, not a panic.
    pub fn embed(&self, ids: &[Vec<u32>]) -> Result<Vec<f32>, ShapeError> {
        let d = self.config.hidden_size;
        let (vocab, positions) = (self.config.vocab_size, self.config.max_position_embeddings);
        let mut out = Vec::with_capacity(ids.len() * ids.first().map_or(0, Vec::len) * d);
        for row in ids {
            if row.len() > positions {
                return Err(shape_err(
                    "clip embed",
                    format!(
                        "{} tokens, but the model has {positions} positions",
                        row.len()
                    ),
                ));
            }
            for (pos, &id) in row.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    return Err(shape_err(
                        "clip embed",
                        format!(
                            "token id {id} is outside the text encoder's {vocab}-token vocabulary: the tokenizer folder does not match this model"
                        ),
                    ));
                }
                let tok = &self.token_embedding[id * d..(id + 1) * d];
                let p = &self.position_embedding[pos * d..(pos + 1) * d];
                out.extend(tok.iter().zip(p).map(|(a, b)| a + b));
            }
        }
        Ok(out)
    }

    /// Records the encoder on embeddings x (B, L, D) -> last hidden state (B, L, D).
    pub fn forward(&self, g: &mut Graph, x: &Value) -> Result<Value, ShapeError> {
        let mut h = x.clone();
        for l in &self.layers {
            let n = l.layer_norm1.forward(g, &h, false)?;
            h = l.self_attn.forward(g, &n, None, true, Some(&h))?;
            let n = l.layer_norm2.forward(g, &h, false)?;
            let f = l.fc1.forward(g, &n, self.act, None)?;
            h = l.fc2.forward(g, &f, Act::None, Some(&h))?;
        }
        self.final_layer_norm.forward(g, &h, false)
    }

    /// Uploads embeddings for `ids` (host gather) as a device tensor.
    pub fn embeddings_tensor(&self, cx: Ctx, ids: &[Vec<u32>]) -> Result<Tensor, ShapeError> {
        let l = ids.first().map_or(0, Vec::len);
        Ok(Tensor::from_f32(
            cx.gpu,
            "text embeddings",
            &self.embed(ids)?,
            &[ids.len(), l, self.config.hidden_size],
            cx.dtype,
        ))
    }
}
