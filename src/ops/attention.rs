//! Fused multi-head attention (`shaders/attention.wgsl`), and the
//! score-matrix path for heads too wide for it.

use super::layout::copy4;
use super::{same_dtype, u, word_of, words};
use crate::graph::{Graph, Offset, ShapeError, ShapeFmt, Value, shape_err};

/// Keys per tile in attention.wgsl (BC): k and v tiles take 2 * BC * D floats
/// of workgroup memory.
const KEY_TILE: usize = 16;

/// Widest head the fused kernel takes (its registers hold 2 * D floats per row).
const MAX_FUSED_HEAD_DIM: usize = 256;

/// attention.wgsl's `Params`: row strides (rs), batch strides (bs) and
/// element offsets (off) of q, k, v and o; the key range of this dispatch.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttentionParams {
    lq: u32,
    lk: u32,
    causal: u32,
    scale: f32,
    q_rs: u32,
    k_rs: u32,
    v_rs: u32,
    o_rs: u32,
    q_bs: u32,
    k_bs: u32,
    v_bs: u32,
    o_bs: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    o_off: u32,
    heads: u32,
    k_begin: u32,
    k_end: u32,
    /// Bit 0: the first key chunk; bit 1: the last.
    first_last: u32,
}

/// Rows of width C read from a tensor through strides: row r of batch b is
/// `value[offset + b * batch_stride + r * row_stride ..][..C]`. A batch stride
/// of 0 gives every batch row the same rows: how injected queries and keys
/// from one source row reach all target rows.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub value: &'a Value,
    pub rows: usize,
    pub row_stride: usize,
    pub batch_stride: usize,
    pub offset: Offset,
}

impl<'a> View<'a> {
    /// A contiguous (B, L, C) tensor.
    pub fn of(v: &'a Value) -> Self {
        let (l, c) = (v.dim(-2), v.dim(-1));
        View {
            value: v,
            rows: l,
            row_stride: c,
            batch_stride: l * c,
            offset: Offset::default(),
        }
    }

    /// Batch rows `first..` of a contiguous (B, L, C) tensor.
    pub fn from_row(v: &'a Value, first: usize) -> Self {
        let mut view = Self::of(v);
        view.offset = Offset::fixed(first * view.batch_stride);
        view
    }

    /// Batch row `row` of a contiguous (B, L, C) tensor, shared by every batch row.
    pub fn broadcast_row(v: &'a Value, row: usize) -> Self {
        let mut view = Self::from_row(v, row);
        view.batch_stride = 0;
        view
    }

    /// Last element read for `batch` rows of width `c` at the base offset, +1.
    fn extent(&self, batch: usize, c: usize) -> usize {
        self.offset.base
            + (batch.max(1) - 1) * self.batch_stride
            + (self.rows.max(1) - 1) * self.row_stride
            + c
    }
}

/// softmax(q k^T * scale [+ causal mask]) v, per head.
/// q (B, Lq, H*D), k and v (B, Lk, H*D) -> (B, Lq, H*D), head h in columns h*D..(h+1)*D.
/// `scale` defaults to 1/sqrt(D).
pub fn attention(
    g: &mut Graph,
    q: &Value,
    k: &Value,
    v: &Value,
    heads: usize,
    causal: bool,
    scale: Option<f32>,
) -> Result<Value, ShapeError> {
    let ok = q.rank() == 3
        && k.rank() == 3
        && k.shape == v.shape
        && k.dim(0) == q.dim(0)
        && k.dim(2) == q.dim(2);
    if !ok {
        return Err(shape_err(
            "attention",
            format!(
                "q {}, k {}, v {} are not (B, L, C) with matching B and C",
                ShapeFmt(&q.shape),
                ShapeFmt(&k.shape),
                ShapeFmt(&v.shape)
            ),
        ));
    }
    attention_views(
        g,
        View::of(q),
        View::of(k),
        View::of(v),
        q.dim(0),
        heads,
        causal,
        scale,
    )
}

/// [`attention`] on strided views: `batch` rows of queries, keys and values,
/// each of width C = H*D -> a contiguous (batch, Lq, C).
#[allow(clippy::too_many_arguments)]
pub fn attention_views(
    g: &mut Graph,
    q: View,
    k: View,
    v: View,
    batch: usize,
    heads: usize,
    causal: bool,
    scale: Option<f32>,
) -> Result<Value, ShapeError> {
    let op = "attention";
    let c = q.value.dim(-1);
    let (lq, lk) = (q.rows, k.rows);
    let fits = |w: &View| w.value.dim(-1) == c && w.extent(batch, c) <= w.value.numel();
    if heads == 0
        || !c.is_multiple_of(heads)
        || lk == 0
        || v.rows != lk
        || !fits(&q)
        || !fits(&k)
        || !fits(&v)
    {
        return Err(shape_err(
            op,
            format!(
                "views of q {}, k {}, v {} do not give {batch} rows of width {c} for {heads} heads",
                ShapeFmt(&q.value.shape),
                ShapeFmt(&k.value.shape),
                ShapeFmt(&v.value.shape)
            ),
        ));
    }
    let d = c / heads;
    same_dtype(op, &[q.value, k.value, v.value])?;
    let scale = scale.unwrap_or(1.0 / (d as f32).sqrt());
    // The head dimension is a compile-time variant: it sizes the per-row
    // registers and the k/v tiles in workgroup memory. Wider heads (the VAE's
    // single 512-wide head) go through the score matrix instead: past 256 the
    // per-row registers would spill even where the tiles fit.
    let shared = 2 * KEY_TILE * d * 4 + 32 * 8;
    let limit = g.gpu.limits.max_compute_workgroup_storage_size as usize;
    if shared > limit || d > MAX_FUSED_HEAD_DIM {
        let why = format!(
            "head dimension {d} is too wide for the fused kernel (it needs {shared} bytes of workgroup memory; this adapter has {limit})"
        );
        return through_scores(g, q, k, v, batch, heads, causal, scale, why);
    }
    let o = g.temp(&[batch, lq, c], q.value.dtype);
    // Keys [k_begin, k_end) of every query row; the offsets move with the
    // step (store slots) and are set on the node.
    let params = |k_begin: usize, k_end: usize, first_last: u32| AttentionParams {
        lq: u(lq),
        lk: u(lk),
        causal: causal as u32,
        scale,
        q_rs: u(q.row_stride),
        k_rs: u(k.row_stride),
        v_rs: u(v.row_stride),
        o_rs: u(c),
        q_bs: u(q.batch_stride),
        k_bs: u(k.batch_stride),
        v_bs: u(v.batch_stride),
        o_bs: u(lq * c),
        q_off: 0,
        k_off: 0,
        v_off: 0,
        o_off: 0,
        heads: u(heads),
        k_begin: u(k_begin),
        k_end: u(k_end),
        first_last,
    };
    let step_offsets = |g: &mut Graph, node: usize| {
        g.step_param(node, word_of!(AttentionParams, q_off), q.offset);
        g.step_param(node, word_of!(AttentionParams, k_off), k.offset);
        g.step_param(node, word_of!(AttentionParams, v_off), v.offset);
    };
    if let Some(coop) = coop_attention(g, q.value.dtype, d, lq, lk) {
        let params = params(0, lk, 3);
        let bq = 4 * coop.side as usize;
        let node = g.push(
            "attention_coop",
            "main",
            q.value.dtype,
            vec![
                ("HEAD_DIM", u(d)),
                ("COOP", coop.side),
                ("SG", coop.subgroup_size),
            ],
            &[&o],
            &[(3, q.value), (4, k.value), (5, v.value)],
            words(&params),
            [u(lq.div_ceil(bq)), u(heads), u(batch)],
        );
        // q k^T twice (the two passes) and p v.
        g.set_flops(node, 6 * batch * heads * lq * lk * d);
        step_offsets(g, node);
        return Ok(o);
    }
    // Keys per dispatch: all of them, unless the driver bounds an invocation's
    // loop iterations (about 2D + 8 per key, see attention.wgsl).
    let chunk = match g.loop_budget {
        Some(budget) => (budget / (2 * d + 8) / KEY_TILE * KEY_TILE).max(KEY_TILE),
        None => lk,
    };
    let chunks = lk.div_ceil(chunk);
    let state =
        (chunks > 1).then(|| g.temp(&[batch * heads * lq * (d + 2)], crate::gpu::DType::F32));
    for ch in 0..chunks {
        let (k_begin, k_end) = (ch * chunk, ((ch + 1) * chunk).min(lk));
        let first_last = (ch == 0) as u32 | (((ch + 1 == chunks) as u32) << 1);
        let params = params(k_begin, k_end, first_last);
        let mut outputs = vec![&o];
        outputs.extend(state.as_ref());
        // q k^T and p v: 2 multiply-adds per (query, key, channel).
        let flops = 4 * batch * heads * lq * (k_end - k_begin) * d;
        // Fewer queries per workgroup (more key lanes each) where 64 would
        // starve the GPU.
        let bq = g.tile_for(flops, &[64, 32, 16], |t| {
            (lq.div_ceil(t) * heads * batch) as u64
        });
        let variant = |bq: usize| crate::graph::Variant {
            consts: vec![
                ("HEAD_DIM", u(d)),
                ("CHUNKED", state.is_some() as u32),
                ("BQ", u(bq)),
            ],
            workgroups: [u(lq.div_ceil(bq)), u(heads), u(batch)],
        };
        let chosen = variant(bq);
        let node = g.push(
            "attention",
            "main",
            q.value.dtype,
            chosen.consts,
            &outputs,
            &[(3, q.value), (4, k.value), (5, v.value)],
            words(&params),
            chosen.workgroups,
        );
        g.set_flops(node, flops);
        if g.tunable() {
            g.set_alternatives(node, [64, 32, 16].map(variant).to_vec());
        }
        step_offsets(g, node);
    }
    Ok(o)
}

/// The cooperative-matrix configuration for the fused attention
/// (`attention_coop.wgsl`), where it applies: f16 storage on a device with
/// cooperative matrices, the kernel's workgroup memory within the limit, and
/// (where the driver bounds an invocation's loop iterations, as llvmpipe
/// does) its whole key loop within that bound, for it has no chunked form;
/// and a head width that is a multiple of the tile side. A width that is
/// not pads every product to the next multiple and loses to the ALU kernel:
/// on an H200 (16x16 tiles) SD 1.5's heads of 40 ran at 7.9 TFLOP/s on
/// cooperative matrices and 13.2 on the ALU kernel, where heads of 80 and
/// 160 ran at 6.4 and 5.4 against 4.6 and 0.8.
fn coop_attention(
    g: &Graph,
    dtype: crate::gpu::DType,
    d: usize,
    lq: usize,
    lk: usize,
) -> Option<crate::gpu::Coop> {
    let coop = g.coop_for(dtype)?;
    let ct = coop.side as usize;
    if !d.is_multiple_of(ct) {
        return None;
    }
    let threads = 4 * coop.subgroup_size as usize;
    let (bq, dp) = (4 * ct, d.div_ceil(ct) * ct);
    // q, k and v tiles (f16), scores (f32) and probabilities (f16), the row
    // statistics, an output tile per subgroup (f32).
    let shared = 2 * bq * dp + 2 * 2 * ct * dp + bq * ct * (4 + 2) + 8 * bq + 4 * 4 * ct * ct;
    if shared > g.gpu.limits.max_compute_workgroup_storage_size as usize || lq == 0 {
        return None;
    }
    if let Some(budget) = g.loop_budget {
        // Per invocation: staging q; per key block, both passes' staging
        // loops, the score and product tile loops and the row loops; the
        // output tiles.
        let per_block = 3 * (ct * dp).div_ceil(threads)
            + 3 * (dp / ct)
            + 2 * ct
            + (bq * ct).div_ceil(threads)
            + 8;
        let output = (dp / ct) * (2 + (4 * ct * ct).div_ceil(threads));
        let iterations = (bq * dp).div_ceil(threads) + lk.div_ceil(ct) * per_block + output;
        if iterations > budget {
            return None;
        }
    }
    Some(coop)
}

/// softmax(q k^T * scale) v with the score matrix in memory: a GEMM, a
/// softmax and a GEMM, for heads too wide for the fused kernel's workgroup
/// memory (the VAE's mid-block attention: one head of 512 over every latent
/// pixel). Queries go in chunks of rows so that each chunk's scores fit one
/// binding. Takes one head of whole, contiguous (B, L, C) tensors.
#[allow(clippy::too_many_arguments)]
fn through_scores(
    g: &mut Graph,
    q: View,
    k: View,
    v: View,
    batch: usize,
    heads: usize,
    causal: bool,
    scale: f32,
    why: String,
) -> Result<Value, ShapeError> {
    let op = "attention";
    let c = q.value.dim(-1);
    let (lq, lk) = (q.rows, k.rows);
    let whole = |w: &View| {
        w.offset == Offset::default()
            && w.row_stride == c
            && w.batch_stride == w.rows * c
            && w.value.numel() == batch * w.rows * c
    };
    if heads != 1 || causal || !whole(&q) || !whole(&k) || !whole(&v) {
        return Err(shape_err(
            op,
            format!("{why}, and the score-matrix path takes one non-causal head of whole q, k, v"),
        ));
    }
    let dtype = q.value.dtype;
    let qv = g.reshape(q.value, &[batch, lq, c])?;
    let kv = g.reshape(k.value, &[batch, lk, c])?;
    let vv = g.reshape(v.value, &[batch, lk, c])?;
    let rows = g.units_per_window(batch * lk, dtype).min(lq);
    if rows == 0 {
        let what = format!("{why}, and one row of {lk} scores per batch row");
        return Err(g.unsplittable(op, what));
    }
    let scores_of = |g: &mut Graph, qc: &Value| -> Result<Value, ShapeError> {
        let qs = super::scale(g, qc, scale);
        let s = super::gemm(g, &qs, &kv, true, super::Epilogue::NONE)?;
        let p = super::softmax(g, &s)?;
        super::gemm(g, &p, &vv, false, super::Epilogue::NONE)
    };
    if rows == lq {
        return scores_of(g, &qv);
    }
    let o = g.temp(&[batch, lq, c], dtype);
    for r0 in (0..lq).step_by(rows) {
        let rc = rows.min(lq - r0);
        let qc = g.temp(&[batch, rc, c], dtype);
        copy4(
            g,
            &qc,
            &qv,
            [1, batch, rc, c],
            [0, lq * c, c, 1],
            r0 * c,
            [0, rc * c, c, 1],
            Offset::default(),
        );
        let oc = scores_of(g, &qc)?;
        copy4(
            g,
            &o,
            &oc,
            [1, batch, rc, c],
            [0, rc * c, c, 1],
            0,
            [0, lq * c, c, 1],
            Offset::fixed(r0 * c),
        );
    }
    Ok(o)
}
