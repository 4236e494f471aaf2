//! What the two metric ViTs (DINO, CLIP's vision tower) share: the patch
//! embedding as one GEMM, and the pre-norm transformer block.

use crate::gpu::DType;
use crate::graph::{Graph, Plan, ShapeError, Value};
use crate::models::nn::{Attention, Ctx, Linear, Norm};
use crate::models::weights::{VarBuilder, WeightError};
use crate::ops::Act;

/// A stride-p convolution over 3 channels, as one GEMM over patches cut on
/// the host. Row 0 of its operand is an all-zero patch, the class token's
/// slot; the class token and every row's position embedding come in
/// through the GEMM's residual table, so the tokens need no concatenation.
pub(crate) struct PatchEmbed {
    /// (D, 3 p p), with the convolution's bias if it has one.
    linear: Linear,
    pub patch: usize,
    pub dim: usize,
    /// Added to row 0 besides its position embedding: the class token, less
    /// the bias the zero patch brings.
    class_row: Vec<f64>,
}

/// A recorded [`PatchEmbed`]'s inputs and the values they take.
pub(crate) struct Fed {
    patches: (Value, Vec<f32>),
    table: (Value, Vec<f32>),
}

impl Fed {
    pub fn write(&self, plan: &Plan) {
        plan.write(&self.patches.0, &self.patches.1);
        plan.write(&self.table.0, &self.table.1);
    }
}

impl PatchEmbed {
    /// The convolution `vb` ("weight" (D, 3, p, p), "bias" (D) when `bias`)
    /// and the class token `class` (D).
    pub fn load(
        cx: Ctx,
        vb: &VarBuilder,
        dim: usize,
        patch: usize,
        bias: bool,
        class: &[f32],
    ) -> Result<Self, WeightError> {
        let w = vb.get("weight", &[dim, 3, patch, patch])?.to_f32();
        let b = if bias {
            Some(vb.get("bias", &[dim])?.to_f32())
        } else {
            None
        };
        let class_row = (0..dim)
            .map(|c| f64::from(class[c]) - b.as_ref().map_or(0.0, |b| f64::from(b[c])))
            .collect();
        Ok(PatchEmbed {
            linear: Linear {
                weight: cx.upload(vb, "weight", &w, &[dim, 3 * patch * patch])?,
                bias: match &b {
                    Some(b) => Some(cx.upload(vb, "bias", b, &[dim])?),
                    None => None,
                },
            },
            patch,
            dim,
            class_row,
        })
    }

    /// Records the tokens (1, 1 + gh gw, D) of the input `x` (3, h, w) with
    /// the position embeddings `pos` (1 + gh gw, D); the returned [`Fed`]
    /// writes the plan's inputs.
    pub fn record(
        &self,
        g: &mut Graph,
        x: &[f64],
        [h, w]: [usize; 2],
        pos: &[f64],
    ) -> Result<(Value, Fed), ShapeError> {
        let (p, d) = (self.patch, self.dim);
        let t = 1 + (h / p) * (w / p);
        let k = 3 * p * p;
        let mut table: Vec<f32> = pos.iter().map(|&v| v as f32).collect();
        for (c, v) in table[..d].iter_mut().enumerate() {
            *v = (pos[c] + self.class_row[c]) as f32;
        }
        let xin = g.input("patches", &[1, t, k], DType::F32);
        let added = g.input("class and positions", &[1, t, d], DType::F32);
        let tokens = self.linear.forward(g, &xin, Act::None, Some(&added))?;
        let fed = Fed {
            patches: (xin, patch_rows(x, [h, w], p)),
            table: (added, table),
        };
        Ok((tokens, fed))
    }
}

/// A ViT's input `x` (3, h, w) as the rows of its patch-embedding GEMM:
/// row 0 all zero, then every p x p patch in row-major grid order,
/// flattened channel-major as a stride-p convolution reads it (pixels past
/// the last whole patch dropped). (1 + (h / p)(w / p), 3 p p).
fn patch_rows(x: &[f64], [h, w]: [usize; 2], p: usize) -> Vec<f32> {
    let (gh, gw, k) = (h / p, w / p, 3 * p * p);
    let mut rows = vec![0f32; (1 + gh * gw) * k];
    for (i, row) in rows.chunks_exact_mut(k).skip(1).enumerate() {
        let (py, px) = (i / gw, i % gw);
        for c in 0..3 {
            for dy in 0..p {
                let src = &x[(c * h + py * p + dy) * w + px * p..][..p];
                let dst = &mut row[(c * p + dy) * p..][..p];
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v as f32;
                }
            }
        }
    }
    rows
}

/// A pre-norm transformer block: x + attn(norm1(x)), then
/// x + fc2(act(fc1(norm2(x)))), the norms fused into the projections.
pub(crate) struct Block {
    pub norm1: Norm,
    pub attn: Attention,
    pub norm2: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Block {
    pub fn forward(&self, g: &mut Graph, x: &Value, act: Act) -> Result<Value, ShapeError> {
        let h = self
            .attn
            .forward_normed(g, x, Some(&self.norm1), None, false, Some(x))?;
        let f = self
            .fc1
            .forward_normed(g, &h, Some(&self.norm2), act, None)?;
        self.fc2.forward(g, &f, Act::None, Some(&h))
    }
}
