//! PIE-Bench's `structure_distance` (docs/BENCHMARKS.md): the self-similarity
//! of a DINO ViT's last-block keys (Tumanyan et al.'s "Splicing ViT
//! Features"), for the source and the edited image, compared by their mean
//! squared difference.
//!
//! The ViT runs on our kernels. The patch embedding is one GEMM over patches
//! cut on the host; the class token, the position embeddings and the patch
//! bias enter through that GEMM's residual table (row 0 is an all-zero
//! patch), so the tokens need no concatenation. The pre-norm blocks fuse
//! their LayerNorms into the projections. The last block stops at its key
//! projection, and the keys' Gram matrix is a GEMM of the keys by
//! themselves; the cosine normalisation and the difference are host
//! arithmetic on T x T values.
//!
//! Weights: the torch-hub layout (`blocks.N.attn.qkv`, fused, as
//! tools/convert_metric_weights.py writes the hub's pickles) or transformers'
//! ViTModel layout (facebook/dino-vitb8: `encoder.layer.N.attention...`).

use super::resample::{interpolate_bicubic, resize_bilinear_aa, resize_shorter_side};
use super::vit::{Block, PatchEmbed};
use super::{MetricError, Rgb8};
use crate::gpu::{DType, Gpu};
use crate::graph::Graph;
use crate::models::nn::{Attention, Ctx, Linear, Norm};
use crate::models::weights::{VarBuilder, WeightError, Weights};
use crate::ops::{self, Act, Epilogue};
use std::sync::Arc;

/// The benchmark's preprocessing: shorter side 224, longer at most 480.
const SHORT_SIDE: usize = 224;
const MAX_SIDE: usize = 480;
/// ImageNet's mean and std, applied to 0..255 values (the benchmark's quirk).
const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];

/// A DINO ViT with its weights on the device.
pub struct Dino {
    gpu: Arc<Gpu>,
    /// Side of the position grid it was trained on (28 for ViT-B/8 at 224).
    grid: usize,
    patch_embed: PatchEmbed,
    /// (1 + grid^2, D).
    pos: Vec<f32>,
    blocks: Vec<Block>,
    /// Which layout the weights came in ("torch hub" or "transformers").
    pub layout: &'static str,
}

/// The last block's keys of one image and their cosine self-similarity.
pub struct KeySelfSimilarity {
    /// Tokens (1 + patches).
    pub tokens: usize,
    /// (T, T), row-major.
    pub sim: Vec<f64>,
}

impl Dino {
    /// A DINO from a transformers folder (config.json and model.safetensors)
    /// or a safetensors file in either layout. The head count and the
    /// LayerNorm eps come from the folder's config.json, or the file's
    /// "heads" / "eps" metadata (tools/convert_metric_weights.py writes it),
    /// else D / 64 (every DINO ViT has heads of 64) and 1e-6.
    pub fn open(gpu: Arc<Gpu>, path: &std::path::Path) -> Result<Self, WeightError> {
        let (file, config) = if path.is_dir() {
            let config = path.join("config.json");
            let text = std::fs::read_to_string(&config).map_err(|source| WeightError::Io {
                path: config.clone(),
                source,
            })?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| WeightError::Config {
                    path: config.clone(),
                    msg: e.to_string(),
                })?;
            let heads = json["num_attention_heads"].as_u64().map(|h| h as usize);
            let eps = json["layer_norm_eps"].as_f64().map(|e| e as f32);
            (super::transformers_weights(path)?, (heads, eps))
        } else {
            (path.to_path_buf(), (None, None))
        };
        let bytes = std::fs::read(&file).map_err(|source| WeightError::Io {
            path: file.clone(),
            source,
        })?;
        let meta = safetensors::SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default();
        let heads = config
            .0
            .or_else(|| meta.get("heads").and_then(|h| h.parse().ok()));
        let eps = config
            .1
            .or_else(|| meta.get("eps").and_then(|e| e.parse().ok()));
        let tensors = Weights::parse_safetensors(&file, Arc::new(bytes))?;
        let w = Weights::new(file.display().to_string(), tensors);
        Self::load(gpu, &w, heads, eps)
    }

    /// Loads a DINO from `w`, in either layout, with `heads` heads (else
    /// D / 64) and LayerNorm eps `eps` (else 1e-6).
    pub fn load(
        gpu: Arc<Gpu>,
        w: &Weights,
        heads: Option<usize>,
        eps: Option<f32>,
    ) -> Result<Self, WeightError> {
        let cx = Ctx {
            gpu: &gpu,
            dtype: DType::F32,
        };
        let root = w.root();
        let (layout, vb) = if root.contains("blocks.0.attn.qkv.weight") {
            ("torch hub", root)
        } else if root.contains("embeddings.cls_token") {
            ("transformers", root)
        } else if root.contains("vit.embeddings.cls_token") {
            ("transformers", root.pp("vit"))
        } else {
            return Err(WeightError::Config {
                path: w.source.clone().into(),
                msg: "not a DINO ViT: neither blocks.0.attn.qkv.weight (torch hub) nor embeddings.cls_token (transformers) is in it".into(),
            });
        };
        let hub = layout == "torch hub";
        let (cls_name, pos_name, proj) = if hub {
            ("cls_token", "pos_embed", vb.pp("patch_embed.proj"))
        } else {
            (
                "embeddings.cls_token",
                "embeddings.position_embeddings",
                vb.pp("embeddings.patch_embeddings.projection"),
            )
        };
        let cls_t = vb.get_any(cls_name)?;
        let dim = *cls_t.shape.last().unwrap_or(&0);
        let pw = proj.get_any("weight")?;
        let patch = pw.shape.get(2).copied().unwrap_or(0);
        let bad = |msg: String| WeightError::Config {
            path: w.source.clone().into(),
            msg,
        };
        if dim == 0 || pw.shape != [dim, 3, patch, patch] {
            return Err(bad(format!(
                "the patch embedding is {:?}; expected ({dim}, 3, p, p) after a class token of width {dim}",
                pw.shape
            )));
        }
        let pos_t = vb.get_any(pos_name)?;
        let tokens = pos_t.numel() / dim.max(1);
        let grid = ((tokens.saturating_sub(1)) as f64).sqrt().round() as usize;
        if pos_t.numel() != tokens * dim || grid * grid + 1 != tokens {
            return Err(bad(format!(
                "the position embeddings are {:?}: expected (1, 1 + n*n, {dim})",
                pos_t.shape
            )));
        }
        let heads = heads.unwrap_or(dim / 64);
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(bad(format!(
                "{heads} heads do not divide the width {dim}; give the head count"
            )));
        }
        let eps = eps.unwrap_or(1e-6);
        let depth = (0..)
            .take_while(|i| {
                if hub {
                    vb.contains(&format!("blocks.{i}.attn.qkv.weight"))
                } else {
                    vb.contains(&format!("encoder.layer.{i}.attention.attention.key.weight"))
                }
            })
            .count();
        if depth == 0 {
            return Err(bad("no transformer blocks".into()));
        }
        let ff = if hub {
            vb.get_any("blocks.0.mlp.fc1.bias")?.numel()
        } else {
            vb.get_any("encoder.layer.0.intermediate.dense.bias")?
                .numel()
        };
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            blocks.push(if hub {
                let b = vb.pp("blocks").pp(i);
                Block {
                    norm1: Norm::layer(cx, &b.pp("norm1"), dim, eps)?,
                    attn: fused_attention(cx, &b.pp("attn"), dim, heads)?,
                    norm2: Norm::layer(cx, &b.pp("norm2"), dim, eps)?,
                    fc1: Linear::load(cx, &b.pp("mlp.fc1"), dim, ff, true)?,
                    fc2: Linear::load(cx, &b.pp("mlp.fc2"), ff, dim, true)?,
                }
            } else {
                let b = vb.pp("encoder.layer").pp(i);
                Block {
                    norm1: Norm::layer(cx, &b.pp("layernorm_before"), dim, eps)?,
                    attn: Attention::load(
                        cx,
                        &b.pp("attention"),
                        [
                            "attention.query",
                            "attention.key",
                            "attention.value",
                            "output.dense",
                        ],
                        dim,
                        dim,
                        dim,
                        heads,
                        true,
                    )?,
                    norm2: Norm::layer(cx, &b.pp("layernorm_after"), dim, eps)?,
                    fc1: Linear::load(cx, &b.pp("intermediate.dense"), dim, ff, true)?,
                    fc2: Linear::load(cx, &b.pp("output.dense"), ff, dim, true)?,
                }
            });
        }
        let patch_embed = PatchEmbed::load(cx, &proj, dim, patch, true, &cls_t.to_f32())?;
        Ok(Dino {
            grid,
            patch_embed,
            pos: pos_t.to_f32(),
            blocks,
            layout,
            gpu,
        })
    }

    /// Transformer blocks.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// Side of a patch in pixels.
    pub fn patch(&self) -> usize {
        self.patch_embed.patch
    }

    /// The ViT's input for `img`: resized as the benchmark resizes (shorter
    /// side 224, longer at most 480, antialiased bilinear on 0..255 floats),
    /// then ImageNet-normalised as 0..255 values. (3, h, w) and [h, w].
    pub fn preprocess(img: &Rgb8) -> (Vec<f64>, [usize; 2]) {
        let (w, h) = (img.width, img.height);
        let mut planes = vec![0.0; 3 * h * w];
        for (p, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planes[c * h * w + p] = f64::from(px[c]);
            }
        }
        let size = resize_shorter_side(h, w, SHORT_SIDE, MAX_SIDE);
        let mut x = resize_bilinear_aa(&planes, 3, [h, w], size);
        let n = size[0] * size[1];
        for c in 0..3 {
            // As float32 arithmetic would leave it: (v - mean) / std.
            for v in &mut x[c * n..(c + 1) * n] {
                *v = (*v - MEAN[c]) / STD[c];
            }
        }
        (x, size)
    }

    /// The position embeddings for an input of `h` x `w` pixels: as trained
    /// where its patch grid is the trained one and the input is square,
    /// else bicubically interpolated to the grid with the scale factors
    /// (g + 0.1) / grid, as the hub's DINO decides and does (a non-square
    /// input whose grid happens to match is interpolated too, by 28.1 / 28).
    /// (1 + gh gw, D).
    pub fn position_embeddings(&self, [h, w]: [usize; 2]) -> Vec<f64> {
        let (d, p) = (self.patch_embed.dim, self.patch_embed.patch);
        let (gh, gw) = (h / p, w / p);
        let pos: Vec<f64> = self.pos.iter().map(|&v| f64::from(v)).collect();
        if gh * gw == self.grid * self.grid && h == w {
            return pos;
        }
        let n = self.grid;
        // (n, n, D) -> (D, n, n) planes.
        let mut planes = vec![0.0; d * n * n];
        for t in 0..n * n {
            for c in 0..d {
                planes[c * n * n + t] = pos[(1 + t) * d + c];
            }
        }
        let scale = [(gh as f64 + 0.1) / n as f64, (gw as f64 + 0.1) / n as f64];
        let (up, [oh, ow]) = interpolate_bicubic(&planes, d, [n, n], scale);
        debug_assert_eq!((oh, ow), (gh, gw));
        let mut out = pos[..d].to_vec();
        out.resize(d * (1 + gh * gw), 0.0);
        for t in 0..gh * gw {
            for c in 0..d {
                out[(1 + t) * d + c] = up[c * gh * gw + t];
            }
        }
        out
    }

    /// The last block's keys' cosine self-similarity for a preprocessed input
    /// `x` (3, h, w) ([`Self::preprocess`]).
    pub async fn key_self_similarity(
        &self,
        x: &[f64],
        [h, w]: [usize; 2],
    ) -> Result<KeySelfSimilarity, MetricError> {
        let (p, d) = (self.patch_embed.patch, self.patch_embed.dim);
        let (gh, gw) = (h / p, w / p);
        if gh == 0 || gw == 0 {
            return Err(MetricError::Input(format!(
                "a {w}x{h} input has no {p}x{p} patch"
            )));
        }
        let t = 1 + gh * gw;
        let pos = self.position_embeddings([h, w]);
        let mut g = Graph::new(self.gpu.clone(), DType::F32);
        let (mut hid, fed) = self.patch_embed.record(&mut g, x, [h, w], &pos)?;
        let (last, body) = self.blocks.split_last().expect("a ViT has blocks");
        for b in body {
            hid = b.forward(&mut g, &hid, Act::Gelu)?;
        }
        let keys =
            last.attn
                .to_k
                .forward_normed(&mut g, &hid, Some(&last.norm1), Act::None, None)?;
        let keys = g.reshape(&keys, &[t, d])?;
        let gram = ops::linear(&mut g, &keys, &keys, Epilogue::NONE)?;
        g.output(&gram);
        g.tune().await?;
        let plan = g.plan()?;
        fed.write(&plan);
        plan.run();
        let gram = plan.read(&gram).await?;
        if let Some(bad) = gram.iter().position(|v| !v.is_finite()) {
            return Err(MetricError::Input(format!(
                "the DINO keys are not finite (entry {bad} of their Gram matrix): check the weights"
            )));
        }
        let norms: Vec<f64> = (0..t)
            .map(|i| f64::from(gram[i * t + i]).max(0.0).sqrt())
            .collect();
        let sim = (0..t * t)
            .map(|ij| {
                let (i, j) = (ij / t, ij % t);
                f64::from(gram[ij]) / (norms[i] * norms[j]).max(1e-8)
            })
            .collect();
        Ok(KeySelfSimilarity { tokens: t, sim })
    }

    /// The structure distance of `a` and `b`: the mean squared difference of
    /// their key self-similarities (papers print it x10^3).
    pub async fn structure_distance(&self, a: &Rgb8, b: &Rgb8) -> Result<f64, MetricError> {
        let (xa, sa) = Self::preprocess(a);
        let (xb, sb) = Self::preprocess(b);
        if sa != sb {
            return Err(MetricError::Input(format!(
                "the images are {}x{} and {}x{}",
                a.width, a.height, b.width, b.height
            )));
        }
        let ka = self.key_self_similarity(&xa, sa).await?;
        let kb = self.key_self_similarity(&xb, sb).await?;
        Ok(super::mse(&ka.sim, &kb.sim))
    }
}

/// The hub's fused qkv projection (rows q, k, v) split into three Linears.
fn fused_attention(
    cx: Ctx,
    vb: &VarBuilder,
    dim: usize,
    heads: usize,
) -> Result<Attention, WeightError> {
    let qkv = vb.pp("qkv");
    let w = qkv.get("weight", &[3 * dim, dim])?.to_f32();
    let b = qkv.get("bias", &[3 * dim])?.to_f32();
    let part = |i: usize| -> Result<Linear, WeightError> {
        let rows = &w[i * dim * dim..(i + 1) * dim * dim];
        Ok(Linear {
            weight: cx.upload(&qkv, "weight", rows, &[dim, dim])?,
            bias: Some(cx.upload(&qkv, "bias", &b[i * dim..(i + 1) * dim], &[dim])?),
        })
    };
    Ok(Attention {
        to_q: part(0)?,
        to_k: part(1)?,
        to_v: part(2)?,
        to_out: Linear::load(cx, &vb.pp("proj"), dim, dim, true)?,
        heads,
    })
}
