//! The UNet's building blocks: ResnetBlock2D, Transformer2DModel with its
//! BasicTransformerBlocks, and the down/up samplers (diffusers'
//! models/resnet.py, transformers/transformer_2d.py, attention.py).

use super::hooks::{QkHook, ResnetHook, Source, slot};
use super::nn::{Attention, Conv, Ctx, Linear, Norm};
use super::weights::{VarBuilder, WeightError};
use crate::graph::{Graph, Offset, ShapeError, Value};
use crate::ops::{self, Act, Conv2d};

/// ResnetBlock2D: GN+SiLU, conv1, + time projection, GN+SiLU, conv2, + shortcut.
pub struct Resnet {
    norm1: Norm,
    conv1: Conv,
    /// The time-embedding projection as loaded; the UNet stacks every
    /// ResNet's into one ([`super::unet::Unet`]), takes it and sets `time_off`.
    pub(super) time_emb_proj: Option<Linear>,
    /// Where this ResNet's columns begin in the stacked projection.
    pub(super) time_off: Option<usize>,
    norm2: Norm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
}

impl Resnet {
    /// `temb`: the time-embedding width, None in the VAE.
    pub fn load(
        cx: Ctx,
        vb: &VarBuilder,
        inp: usize,
        out: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f32,
    ) -> Result<Self, WeightError> {
        Ok(Resnet {
            norm1: Norm::group(cx, &vb.pp("norm1"), inp, groups, eps)?,
            conv1: Conv::load3(cx, &vb.pp("conv1"), inp, out)?,
            time_emb_proj: match temb {
                Some(t) => Some(Linear::load(cx, &vb.pp("time_emb_proj"), t, out, true)?),
                None => None,
            },
            time_off: None,
            norm2: Norm::group(cx, &vb.pp("norm2"), out, groups, eps)?,
            conv2: Conv::load3(cx, &vb.pp("conv2"), out, out)?,
            conv_shortcut: if inp != out {
                Some(Conv::load(
                    cx,
                    &vb.pp("conv_shortcut"),
                    inp,
                    out,
                    1,
                    Conv2d::same(0),
                )?)
            } else {
                None
            },
        })
    }

    /// x (B, C_in, H, W); `time`: every ResNet's time-embedding projection
    /// of SiLU(emb), (B, S), of which this one adds its columns (from
    /// `time_off`) in conv1's epilogue. None in the VAE.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: &Value,
        time: Option<&Value>,
    ) -> Result<Value, ShapeError> {
        self.forward_hooked(g, x, time, ResnetHook::default())
    }

    /// [`Self::forward`] with a PnP hook on the residual branch (conv2's
    /// output, before the shortcut is added).
    pub fn forward_hooked(
        &self,
        g: &mut Graph,
        x: &Value,
        time: Option<&Value>,
        hook: ResnetHook,
    ) -> Result<Value, ShapeError> {
        self.forward_cat(g, x, None, time, hook)
    }

    /// [`Self::forward_hooked`] of the channel concatenation of `x` and
    /// `skip` (a UNet up block's), which the norm and the shortcut read
    /// from both parts: the concatenation is not written.
    pub fn forward_cat(
        &self,
        g: &mut Graph,
        x: &Value,
        skip: Option<&Value>,
        time: Option<&Value>,
        hook: ResnetHook,
    ) -> Result<Value, ShapeError> {
        let shortcut = match (&self.conv_shortcut, skip) {
            (Some(c), None) => c.forward(g, x, None)?,
            (Some(c), Some(s)) => c.forward_cat(g, x, s)?,
            (None, None) => x.clone(),
            (None, Some(s)) => ops::concat(g, &[x, s], 1)?,
        };
        let row = shortcut.numel() / shortcut.dim(0);
        if let Some(Source::Store(store)) = hook.inject {
            // The branch's output is the source's: the branch is not computed.
            return ops::add_row(g, &shortcut, store, slot(row), row);
        }
        let h = match skip {
            Some(s) => self.norm1.forward_cat(g, x, s, true)?,
            None => self.norm1.forward(g, x, true)?,
        };
        let time = match (time, self.time_off) {
            (Some(t), Some(off)) => Some((t, off)),
            _ => None,
        };
        let h = self.conv1.forward_row_bias(g, &h, None, time)?;
        let h = self.norm2.forward(g, &h, true)?;
        // output_scale_factor is 1.0 in every SD config: conv2(h) + shortcut.
        match (hook.inject, hook.capture) {
            (Some(Source::Row0), _) => {
                let r = self.conv2.forward(g, &h, None)?;
                ops::add_row(g, &shortcut, &r, Offset::default(), row)
            }
            (_, Some(store)) => {
                let r = self.conv2.forward(g, &h, None)?;
                ops::copy_into(g, store, &r, slot(r.numel()))?;
                ops::add(g, &r, &shortcut)
            }
            _ => self.conv2.forward(g, &h, Some(&shortcut)),
        }
    }
}

/// BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward,
/// each pre-normed with a LayerNorm and added to the residual stream.
struct TransformerBlock {
    norm1: Norm,
    attn1: Attention,
    norm2: Norm,
    attn2: Attention,
    norm3: Norm,
    ff_proj: Linear,
    ff_out: Linear,
    inner_ff: usize,
}

impl TransformerBlock {
    fn load(
        cx: Ctx,
        vb: &VarBuilder,
        dim: usize,
        heads: usize,
        context_dim: usize,
    ) -> Result<Self, WeightError> {
        let inner_ff = 4 * dim;
        Ok(TransformerBlock {
            norm1: Norm::layer(cx, &vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(
                cx,
                &vb.pp("attn1"),
                ["to_q", "to_k", "to_v", "to_out.0"],
                dim,
                dim,
                dim,
                heads,
                false,
            )?,
            norm2: Norm::layer(cx, &vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(
                cx,
                &vb.pp("attn2"),
                ["to_q", "to_k", "to_v", "to_out.0"],
                dim,
                context_dim,
                dim,
                heads,
                false,
            )?,
            norm3: Norm::layer(cx, &vb.pp("norm3"), dim, 1e-5)?,
            ff_proj: Linear::load_geglu(cx, &vb.pp("ff.net.0.proj"), dim, inner_ff)?,
            ff_out: Linear::load(cx, &vb.pp("ff.net.2"), inner_ff, dim, true)?,
            inner_ff,
        })
    }

    /// x (B, HW, C), context (B, 77, Cc).
    fn forward(
        &self,
        g: &mut Graph,
        x: &Value,
        context: &Value,
        qk: QkHook,
    ) -> Result<Value, ShapeError> {
        // Each LayerNorm is applied by the GEMMs that read its output.
        let h = (self.attn1).forward_self_hooked(g, x, Some(&self.norm1), Some(x), qk)?;
        let h = (self.attn2).forward_normed(
            g,
            &h,
            Some(&self.norm2),
            Some(context),
            false,
            Some(&h),
        )?;
        let f = (self.ff_proj).forward_normed(
            g,
            &h,
            Some(&self.norm3),
            Act::Geglu(self.inner_ff),
            None,
        )?;
        self.ff_out.forward(g, &f, Act::None, Some(&h))
    }
}

enum Proj {
    /// SD1: 1x1 convolutions on the (B, C, H, W) map.
    Conv(Conv),
    /// SD2: linear layers on the (B, HW, C) tokens.
    Linear(Linear),
}

/// Transformer2DModel: GroupNorm, proj_in, transformer blocks, proj_out, + input.
pub struct Transformer2d {
    norm: Norm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

impl Transformer2d {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        cx: Ctx,
        vb: &VarBuilder,
        channels: usize,
        heads: usize,
        context_dim: usize,
        groups: usize,
        linear_proj: bool,
        layers: usize,
    ) -> Result<Self, WeightError> {
        let proj = |name: &str| -> Result<Proj, WeightError> {
            Ok(if linear_proj {
                Proj::Linear(Linear::load(cx, &vb.pp(name), channels, channels, true)?)
            } else {
                Proj::Conv(Conv::load(
                    cx,
                    &vb.pp(name),
                    channels,
                    channels,
                    1,
                    Conv2d::same(0),
                )?)
            })
        };
        let mut blocks = Vec::new();
        for i in 0..layers {
            blocks.push(TransformerBlock::load(
                cx,
                &vb.pp("transformer_blocks").pp(i),
                channels,
                heads,
                context_dim,
            )?);
        }
        Ok(Transformer2d {
            norm: Norm::group(cx, &vb.pp("norm"), channels, groups, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    /// x (B, C, H, W), context (B, 77, Cc) -> (B, C, H, W); `qk` hooks the
    /// self-attention of transformer block 0.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: &Value,
        context: &Value,
        qk: QkHook,
    ) -> Result<Value, ShapeError> {
        let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let n = self.norm.forward(g, x, false)?;
        let n = g.reshape(&n, &[b, c, h * w])?;
        // proj_in reads the channel-major map as tokens and proj_out writes
        // channel-major again, adding the residual: no transpose passes.
        let mut t = {
            let (wt, bias) = self.proj_in.weight(g)?;
            ops::linear_tokens(g, &n, &wt, Some(&bias))? // (B, HW, C)
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            t = blk.forward(g, &t, context, if i == 0 { qk } else { QkHook::default() })?;
        }
        let (wt, bias) = self.proj_out.weight(g)?;
        let r = g.reshape(x, &[b, c, h * w])?;
        let o = ops::linear_channels(g, &t, &wt, Some(&bias), Some(&r))?;
        g.reshape(&o, &[b, c, h, w])
    }
}

impl Proj {
    /// The projection as a Linear's weight (N, C) and bias (N): a 1x1
    /// convolution's weight is the same matrix.
    fn weight(&self, g: &mut Graph) -> Result<(Value, Value), ShapeError> {
        let (w, b) = match self {
            Proj::Conv(conv) => (&conv.weight, &conv.bias),
            Proj::Linear(lin) => match &lin.bias {
                Some(b) => (&lin.weight, b),
                None => {
                    return Err(crate::graph::shape_err(
                        "proj",
                        "a projection without a bias",
                    ));
                }
            },
        };
        let (n, c) = (w.shape[0], w.shape[1]);
        let wv = g.external("weight", w);
        let wv = g.reshape(&wv, &[n, c])?;
        let bv = g.external("bias", b);
        Ok((wv, bv))
    }
}

/// Downsample2D (a stride-2 3x3 conv) or Upsample2D (nearest 2x, then a 3x3
/// conv), as the UNet and the VAE use them.
pub enum Sampler {
    Down(Conv),
    Up(Conv),
}

impl Sampler {
    /// `pad` [top, bottom, left, right]: the UNet pads 1 all round, the VAE
    /// encoder (0, 1, 0, 1).
    pub fn load_down(
        cx: Ctx,
        vb: &VarBuilder,
        c: usize,
        pad: [usize; 4],
    ) -> Result<Self, WeightError> {
        Ok(Sampler::Down(Conv::load(
            cx,
            &vb.pp("conv"),
            c,
            c,
            3,
            Conv2d { stride: 2, pad },
        )?))
    }

    pub fn load_up(cx: Ctx, vb: &VarBuilder, c: usize) -> Result<Self, WeightError> {
        Ok(Sampler::Up(Conv::load3(cx, &vb.pp("conv"), c, c)?))
    }

    pub fn forward(&self, g: &mut Graph, x: &Value) -> Result<Value, ShapeError> {
        match self {
            Sampler::Down(conv) => conv.forward(g, x, None),
            Sampler::Up(conv) => {
                let u = ops::upsample_nearest2x(g, x)?;
                conv.forward(g, &u, None)
            }
        }
    }
}
