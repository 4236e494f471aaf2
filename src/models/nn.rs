//! Layers with their weights on the device: the building blocks the model
//! files share. Each `load` reads from a [`VarBuilder`] with the expected
//! shapes; each `forward` records ops into a graph.

use super::hooks::{QkHook, Source, hooked_self_attention};
use super::weights::{VarBuilder, WeightError};
use crate::gpu::{DType, Gpu, Tensor};
use crate::graph::{Graph, ShapeError, Value};
use crate::ops::{self, Act, Conv2d as Geo, Epilogue, LayerNormA};

/// Where weights go and in what element type.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub gpu: &'a Gpu,
    pub dtype: DType,
}

impl Ctx<'_> {
    /// Uploads `name` under `vb`, checking its shape, converted to the dtype.
    pub fn get(&self, vb: &VarBuilder, name: &str, shape: &[usize]) -> Result<Tensor, WeightError> {
        let t = vb.get(name, shape)?;
        self.upload(vb, name, &t.to_f32(), shape)
    }

    /// Uploads `data` (weight `name` under `vb`, or values made from it),
    /// refusing values an f16 device would store as infinity.
    pub fn upload(
        &self,
        vb: &VarBuilder,
        name: &str,
        data: &[f32],
        shape: &[usize],
    ) -> Result<Tensor, WeightError> {
        if self.dtype == DType::F16
            && let Some(index) = data.iter().position(|v| v.abs() > half::f16::MAX.to_f32())
        {
            return Err(WeightError::F16Range {
                file: vb.source().to_string(),
                key: vb.key(name),
                index,
                value: data[index],
            });
        }
        Ok(Tensor::from_f32(self.gpu, name, data, shape, self.dtype))
    }
}

pub struct Linear {
    pub weight: Tensor, // (out, in)
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(
        cx: Ctx,
        vb: &VarBuilder,
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Result<Self, WeightError> {
        Ok(Linear {
            weight: cx.get(vb, "weight", &[out, inp])?,
            bias: if bias {
                Some(cx.get(vb, "bias", &[out])?)
            } else {
                None
            },
        })
    }

    /// A GEGLU projection (diffusers' `GEGLU.proj`, rows [hidden; gate]),
    /// reordered for the fused GEGLU epilogue.
    pub fn load_geglu(
        cx: Ctx,
        vb: &VarBuilder,
        inp: usize,
        inner: usize,
    ) -> Result<Self, WeightError> {
        let w = vb.get("weight", &[2 * inner, inp])?.to_f32();
        let b = vb.get("bias", &[2 * inner])?.to_f32();
        let (w, b) = ops::geglu_interleave(&w, &b, inner, inp);
        let rows = b.len();
        Ok(Linear {
            weight: cx.upload(vb, "weight", &w, &[rows, inp])?,
            bias: Some(cx.upload(vb, "bias", &b, &[rows])?),
        })
    }

    pub fn forward(
        &self,
        g: &mut Graph,
        x: &Value,
        act: Act,
        residual: Option<&Value>,
    ) -> Result<Value, ShapeError> {
        self.forward_normed(g, x, None, act, residual)
    }

    /// The Linear of `norm(x)` when a layer norm is given, the norm applied
    /// as the GEMM loads x ([`ops::linear_normed`]).
    pub fn forward_normed(
        &self,
        g: &mut Graph,
        x: &Value,
        norm: Option<&Norm>,
        act: Act,
        residual: Option<&Value>,
    ) -> Result<Value, ShapeError> {
        let w = g.external("weight", &self.weight);
        let b = self.bias.as_ref().map(|b| g.external("bias", b));
        let ln = match norm {
            Some(n) => Some(n.layer_values(g)?),
            None => None,
        };
        let ln = ln.as_ref().map(|(gamma, beta, eps)| LayerNormA {
            gamma,
            beta,
            eps: *eps,
        });
        ops::linear_normed(
            g,
            x,
            &w,
            ln,
            Epilogue {
                bias: b.as_ref(),
                act,
                residual,
            },
        )
    }
}

pub struct Conv {
    pub weight: Tensor, // (out, in, k, k)
    pub bias: Tensor,
    pub geo: Geo,
}

impl Conv {
    pub fn load(
        cx: Ctx,
        vb: &VarBuilder,
        inp: usize,
        out: usize,
        k: usize,
        geo: Geo,
    ) -> Result<Self, WeightError> {
        Ok(Conv {
            weight: cx.get(vb, "weight", &[out, inp, k, k])?,
            bias: cx.get(vb, "bias", &[out])?,
            geo,
        })
    }

    /// A 3x3 convolution with padding 1.
    pub fn load3(cx: Ctx, vb: &VarBuilder, inp: usize, out: usize) -> Result<Self, WeightError> {
        Self::load(cx, vb, inp, out, 3, Geo::same(1))
    }

    pub fn forward(
        &self,
        g: &mut Graph,
        x: &Value,
        residual: Option<&Value>,
    ) -> Result<Value, ShapeError> {
        self.forward_row_bias(g, x, residual, None)
    }

    /// [`Self::forward`] of the channel concatenation of `x1` and `x2`,
    /// never written ([`ops::conv2d_cat`]).
    pub fn forward_cat(&self, g: &mut Graph, x1: &Value, x2: &Value) -> Result<Value, ShapeError> {
        let w = g.external("weight", &self.weight);
        let b = g.external("bias", &self.bias);
        ops::conv2d_cat(g, x1, x2, &w, &b, self.geo, None)
    }

    /// [`Self::forward`] adding `row_bias` in the epilogue ([`ops::conv2d_row_bias`]).
    pub fn forward_row_bias(
        &self,
        g: &mut Graph,
        x: &Value,
        residual: Option<&Value>,
        row_bias: Option<(&Value, usize)>,
    ) -> Result<Value, ShapeError> {
        let w = g.external("weight", &self.weight);
        let b = g.external("bias", &self.bias);
        ops::conv2d_row_bias(g, x, &w, &b, self.geo, residual, row_bias)
    }
}

pub struct Norm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
    /// Group count for a group norm; None for a layer norm.
    pub groups: Option<usize>,
}

impl Norm {
    pub fn group(
        cx: Ctx,
        vb: &VarBuilder,
        c: usize,
        groups: usize,
        eps: f32,
    ) -> Result<Self, WeightError> {
        Ok(Norm {
            weight: cx.get(vb, "weight", &[c])?,
            bias: cx.get(vb, "bias", &[c])?,
            eps,
            groups: Some(groups),
        })
    }

    pub fn layer(cx: Ctx, vb: &VarBuilder, c: usize, eps: f32) -> Result<Self, WeightError> {
        Ok(Norm {
            weight: cx.get(vb, "weight", &[c])?,
            bias: cx.get(vb, "bias", &[c])?,
            eps,
            groups: None,
        })
    }

    /// A layer norm's weight, bias and eps as values of `g`, for a GEMM
    /// that applies it as it loads ([`Linear::forward_normed`]).
    fn layer_values(&self, g: &mut Graph) -> Result<(Value, Value, f32), ShapeError> {
        if self.groups.is_some() {
            return Err(crate::graph::shape_err(
                "linear",
                "only a layer norm can be fused into a Linear's input",
            ));
        }
        let w = g.external("weight", &self.weight);
        let b = g.external("bias", &self.bias);
        Ok((w, b, self.eps))
    }

    /// A group norm of the channel concatenation of `x1` and `x2`, never
    /// written ([`ops::group_norm_cat`]).
    pub fn forward_cat(
        &self,
        g: &mut Graph,
        x1: &Value,
        x2: &Value,
        silu: bool,
    ) -> Result<Value, ShapeError> {
        let groups = self.groups.ok_or_else(|| {
            crate::graph::shape_err("layer_norm", "a concatenated input takes a group norm")
        })?;
        let w = g.external("weight", &self.weight);
        let b = g.external("bias", &self.bias);
        ops::group_norm_cat(g, x1, x2, &w, &b, groups, self.eps, silu)
    }

    pub fn forward(&self, g: &mut Graph, x: &Value, silu: bool) -> Result<Value, ShapeError> {
        let w = g.external("weight", &self.weight);
        let b = g.external("bias", &self.bias);
        match self.groups {
            Some(groups) => ops::group_norm(g, x, &w, &b, groups, self.eps, silu),
            None => ops::layer_norm(g, x, &w, &b, self.eps),
        }
    }
}

/// Multi-head attention as diffusers' `Attention` with the classic processor:
/// to_q/to_k/to_v (bias optional), softmax(q k^T / sqrt(d)) v, to_out.0.
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
}

impl Attention {
    /// `names` = (q, k, v, out) sub-keys, e.g. ("to_q", "to_k", "to_v", "to_out.0").
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        cx: Ctx,
        vb: &VarBuilder,
        names: [&str; 4],
        query_dim: usize,
        context_dim: usize,
        inner: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Self, WeightError> {
        Ok(Attention {
            to_q: Linear::load(cx, &vb.pp(names[0]), query_dim, inner, qkv_bias)?,
            to_k: Linear::load(cx, &vb.pp(names[1]), context_dim, inner, qkv_bias)?,
            to_v: Linear::load(cx, &vb.pp(names[2]), context_dim, inner, qkv_bias)?,
            to_out: Linear::load(cx, &vb.pp(names[3]), inner, query_dim, true)?,
            heads,
        })
    }

    /// x (B, L, C); context (B, Lc, Cc) or None for self-attention; the
    /// residual is added in to_out's epilogue.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: &Value,
        context: Option<&Value>,
        causal: bool,
        residual: Option<&Value>,
    ) -> Result<Value, ShapeError> {
        self.forward_normed(g, x, None, context, causal, residual)
    }

    /// [`Self::forward`] of `norm(x)`, the layer norm fused into the
    /// projections that read x (and the context, for self-attention).
    pub fn forward_normed(
        &self,
        g: &mut Graph,
        x: &Value,
        norm: Option<&Norm>,
        context: Option<&Value>,
        causal: bool,
        residual: Option<&Value>,
    ) -> Result<Value, ShapeError> {
        let q = self.to_q.forward_normed(g, x, norm, Act::None, None)?;
        let (ctx, ctx_norm) = match context {
            Some(c) => (c, None),
            None => (x, norm),
        };
        let k = self
            .to_k
            .forward_normed(g, ctx, ctx_norm, Act::None, None)?;
        let v = self
            .to_v
            .forward_normed(g, ctx, ctx_norm, Act::None, None)?;
        let o = ops::attention(g, &q, &k, &v, self.heads, causal, None)?;
        self.to_out.forward(g, &o, Act::None, residual)
    }

    /// Self-attention with a PnP q/k hook; with q and k injected from a store,
    /// the to_q/to_k projections are not recorded at all.
    /// x enters through `norm` (a layer norm fused into the projections).
    pub fn forward_self_hooked(
        &self,
        g: &mut Graph,
        x: &Value,
        norm: Option<&Norm>,
        residual: Option<&Value>,
        hook: QkHook,
    ) -> Result<Value, ShapeError> {
        let from_store = matches!(hook.inject, Some(Source::Store(_)));
        let (q, k) = if from_store {
            (None, None)
        } else {
            (
                Some(self.to_q.forward_normed(g, x, norm, Act::None, None)?),
                Some(self.to_k.forward_normed(g, x, norm, Act::None, None)?),
            )
        };
        let v = self.to_v.forward_normed(g, x, norm, Act::None, None)?;
        let o = hooked_self_attention(g, hook, q.as_ref(), k.as_ref(), &v, self.heads)?;
        self.to_out.forward(g, &o, Act::None, residual)
    }
}
