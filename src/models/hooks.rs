//! Feature hooks of the UNet, addressed by block and layer: a capture writes a
//! layer's value into a feature-store slot; an injection makes the layer read
//! the source row's value instead of computing its own (PnP, Tumanyan et al.
//! 2023, section 4; the authors' pnp_utils.py register_*_control).
//!
//! Store tensors hold one slot per sampling step: (slots, ...), slot `i` at
//! element `i * slot_len`; [`Plan::set_step`](crate::graph::Plan::set_step)
//! picks the slot, so one plan serves every step.

use crate::graph::{Graph, Offset, ShapeError, Value};
use crate::ops::{self, View};

/// A ResNet of an up block: `up_blocks[up].resnets[resnet]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResnetTap {
    pub up: usize,
    pub resnet: usize,
}

/// The self-attention (attn1) of transformer block 0 of `up_blocks[up].attentions[attn]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnTap {
    pub up: usize,
    pub attn: usize,
}

/// Where injected features come from.
#[derive(Clone, Copy)]
pub enum Source<T> {
    /// Row 0 of the same batch, for rows 1.. (the reference's batch-3 call).
    Row0,
    /// A feature store, at the current step's slot, for every row.
    Store(T),
}

/// The residual branch of a ResNet (after conv2, before the shortcut is added).
#[derive(Clone, Copy, Default)]
pub struct ResnetHook<'a> {
    pub capture: Option<&'a Value>,
    pub inject: Option<Source<&'a Value>>,
}

/// q = to_q(x) and k = to_k(x) of a self-attention, before the head split.
#[derive(Clone, Copy, Default)]
pub struct QkHook<'a> {
    /// (q store, k store).
    pub capture: Option<(&'a Value, &'a Value)>,
    pub inject: Option<Source<(&'a Value, &'a Value)>>,
}

/// Every hook of one UNet call.
#[derive(Default)]
pub struct Hooks<'a> {
    pub resnets: Vec<(ResnetTap, ResnetHook<'a>)>,
    pub attn1: Vec<(AttnTap, QkHook<'a>)>,
}

impl<'a> Hooks<'a> {
    /// The hook at `up_blocks[up].resnets[resnet]`; none when no tap names
    /// it (a tap that names no layer is refused by the UNet before this).
    pub fn resnet(&self, up: usize, resnet: usize) -> ResnetHook<'a> {
        let tap = ResnetTap { up, resnet };
        self.resnets
            .iter()
            .find(|(t, _)| *t == tap)
            .map(|(_, h)| *h)
            .unwrap_or_default()
    }

    /// The hook at `up_blocks[up].attentions[attn]`'s attn1, as [`Self::resnet`].
    pub fn attn(&self, up: usize, attn: usize) -> QkHook<'a> {
        let tap = AttnTap { up, attn };
        self.attn1
            .iter()
            .find(|(t, _)| *t == tap)
            .map(|(_, h)| *h)
            .unwrap_or_default()
    }
}

/// The slot of the current step in a store of `slot_len`-element slots.
pub fn slot(slot_len: usize) -> Offset {
    Offset {
        base: 0,
        per_step: slot_len,
    }
}

/// Self-attention with a q/k hook: x (B, L, C), q, k, v already projected
/// where needed. Returns the attention output (B, L, C) before to_out.
pub fn hooked_self_attention(
    g: &mut Graph,
    hook: QkHook,
    q: Option<&Value>,
    k: Option<&Value>,
    v: &Value,
    heads: usize,
) -> Result<Value, ShapeError> {
    let (b, l, c) = (v.dim(0), v.dim(1), v.dim(2));
    let missing = || {
        crate::graph::shape_err(
            "attn1 hook",
            "q and k are needed unless injected from a store",
        )
    };
    match hook.inject {
        Some(Source::Store((qs, ks))) => {
            let (qv, kv) = (store_view(qs, l, c), store_view(ks, l, c));
            ops::attention_views(g, qv, kv, View::of(v), b, heads, false, None)
        }
        Some(Source::Row0) => {
            let (q, k) = (q.ok_or_else(missing)?, k.ok_or_else(missing)?);
            let o0 = ops::attention_views(
                g,
                View::of(q),
                View::of(k),
                View::of(v),
                1,
                heads,
                false,
                None,
            )?;
            let rest = ops::attention_views(
                g,
                View::broadcast_row(q, 0),
                View::broadcast_row(k, 0),
                View::from_row(v, 1),
                b - 1,
                heads,
                false,
                None,
            )?;
            ops::concat(g, &[&o0, &rest], 0)
        }
        None => {
            let (q, k) = (q.ok_or_else(missing)?, k.ok_or_else(missing)?);
            if let Some((qs, ks)) = hook.capture {
                ops::copy_into(g, qs, q, slot(q.numel()))?;
                ops::copy_into(g, ks, k, slot(k.numel()))?;
            }
            ops::attention(g, q, k, v, heads, false, None)
        }
    }
}

/// The current step's (L, C) slot of a store, shared by every batch row.
fn store_view(store: &Value, l: usize, c: usize) -> View<'_> {
    View {
        value: store,
        rows: l,
        row_stride: c,
        batch_stride: 0,
        offset: slot(l * c),
    }
}
