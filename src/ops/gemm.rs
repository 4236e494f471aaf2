//! Batched GEMM with fused bias, activation and residual (`shaders/gemm.wgsl`).

use super::{expect_shape, same_dtype, u};
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, shape_err};

/// Activation fused into the GEMM epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    /// GELU with erf, PyTorch's default.
    Gelu,
    /// x * sigmoid(1.702 x), CLIP ViT-L's activation.
    QuickGelu,
    Silu,
    /// diffusers' GEGLU: h * gelu(g) for the projection (h, g) = chunk(2).
    /// The weight must be laid out by [`geglu_interleave`]; the value is the
    /// output width (half the projection's).
    Geglu(usize),
}

impl Act {
    fn code(self) -> u32 {
        match self {
            Act::None => 0,
            Act::Gelu => 1,
            Act::QuickGelu => 2,
            Act::Silu => 3,
            Act::Geglu(_) => 4,
        }
    }
}

/// Row group of the GEGLU interleave; tied to the 16-column stride of a
/// thread's register block in `tile_core.wgsl`.
pub const GEGLU_GROUP: usize = 16;

/// Reorders a GEGLU projection (weight rows [h; g], each `n_out` rows of width
/// `k`, and its bias) so that each group of 32 rows holds 16 h-rows then the
/// matching 16 g-rows; the last group is zero-padded.
pub fn geglu_interleave(
    weight: &[f32],
    bias: &[f32],
    n_out: usize,
    k: usize,
) -> (Vec<f32>, Vec<f32>) {
    let groups = n_out.div_ceil(GEGLU_GROUP);
    let rows = groups * 2 * GEGLU_GROUP;
    let mut w = vec![0.0; rows * k];
    let mut b = vec![0.0; rows];
    for r in 0..n_out {
        let (gi, lane) = (r / GEGLU_GROUP, r % GEGLU_GROUP);
        for (half, src) in [(0, r), (1, r + n_out)] {
            let dst = gi * 2 * GEGLU_GROUP + half * GEGLU_GROUP + lane;
            w[dst * k..(dst + 1) * k].copy_from_slice(&weight[src * k..(src + 1) * k]);
            b[dst] = bias[src];
        }
    }
    (w, b)
}

/// Strided description of one GEMM; see gemm.wgsl.
struct Spec<'a> {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &'a Value,
    a_strides: [usize; 3], // batch, row (m), col (k)
    b: &'a Value,
    b_strides: [usize; 3], // batch, k, n
    bias: Option<&'a Value>,
    /// The bias is per row (m), not per column (n).
    bias_rows: bool,
    /// A LayerNorm applied to A's rows as they load: gamma, beta, eps.
    ln: Option<LayerNormA<'a>>,
    act: Act,
    residual: Option<&'a Value>,
    out_shape: Vec<usize>,
}

/// Which of the GEMM `s`'s operands (A, B) lie in storage as whole
/// cooperative tiles of side `ct` for a dispatch of `rows` rows of A: every
/// side a multiple of the tile, and the operand contiguous along one of its
/// axes with 16-byte aligned strides (8 f16). Whether they also fit one
/// binding, and A needs no normalising on the way, is the caller's.
fn tile_operands(s: &Spec, ct: usize, rows: usize) -> [bool; 2] {
    let aligned = |v: &[usize]| v.iter().all(|x| x % 8 == 0);
    let sides = [s.m, rows, s.n, s.k].iter().all(|x| x % ct == 0);
    let [abs, ars, acs] = s.a_strides;
    let [bbs, bks, bns] = s.b_strides;
    let a = (acs == 1 && aligned(&[abs, ars])) || (ars == 1 && aligned(&[abs, acs]));
    let b = (bns == 1 && aligned(&[bbs, bks])) || (bks == 1 && aligned(&[bbs, bns]));
    [sides && a, sides && b]
}

/// Whether the GEMM `s`, read from a contiguous A, would load both operands
/// as whole cooperative tiles (f16 on a device with cooperative matrices,
/// [`tile_operands`], no windows): see `direct` in [`record`].
fn whole_tiles(g: &Graph, s: &Spec) -> bool {
    let Some(c) = g.coop_for(s.a.dtype) else {
        return false;
    };
    let fits = [s.a, s.b].into_iter().all(|v| g.fits(v.numel(), v.dtype))
        && g.fits(s.batch * s.m * s.n, s.a.dtype);
    let contiguous = s.a_strides == [s.m * s.k, s.k, 1];
    fits && contiguous && tile_operands(s, c.side as usize, s.m) == [true; 2]
}

fn record(g: &mut Graph, s: Spec) -> Result<Value, ShapeError> {
    // On cooperative matrices a LayerNorm applied as A loads keeps A staged
    // element by element; where A could otherwise load as whole tiles from
    // storage, normalising it once (one layer_norm dispatch, a pass over A)
    // and running the GEMM on the result should be faster: on an H200 the
    // fused GEGLU projections ran at 10-11 TFLOP/s, GEMMs reading both
    // operands whole at 20-25. Only the GEGLU projection (norm3) does so:
    // split off the attention projections' norm (norm1, norm2), a
    // translation's latents came out different between the resident store
    // and the inline source row (1.5e-3 of their largest value on the coop
    // lavapipe; identical when fused), which is not understood yet.
    if let Some(ln) = s.ln
        && matches!(s.act, Act::Geglu(_))
        && whole_tiles(g, &s)
    {
        let normed = super::layer_norm(g, s.a, ln.gamma, ln.beta, ln.eps)?;
        let (m, k) = (s.m, s.k);
        return record(
            g,
            Spec {
                a: &normed,
                a_strides: [m * k, k, 1],
                ln: None,
                ..s
            },
        );
    }
    let n_out = match s.act {
        Act::Geglu(n_out) => n_out,
        _ => s.n,
    };
    let dtype = s.a.dtype;
    let out = g.temp(&s.out_shape, dtype);
    let c_rs = n_out;
    let c_bs = s.m * n_out;
    let b_batched = s.b_strides[0] != 0;
    let fits = [s.a, s.b, &out]
        .into_iter()
        .chain(s.residual)
        .all(|v| g.fits(v.numel(), v.dtype));
    // Tensors larger than one binding: one batch row at a time, in chunks of
    // rows of a, c and the residual (a is contiguous here; see `gemm`).
    let (rows, row_chunk) = if fits {
        (1, s.m.max(1))
    } else {
        let per = g.units_per_window(s.k.max(n_out), dtype);
        if per == 0 || (b_batched && !g.fits(s.b_strides[0], dtype)) {
            let what = format!(
                "a row of {} or a batch row of {}",
                ShapeFmt(&s.a.shape),
                ShapeFmt(&s.b.shape)
            );
            return Err(g.unsplittable("gemm", what));
        }
        (s.batch, per)
    };
    // Smaller tiles where 64-tiles would leave the GPU idle (never below 32
    // with GEGLU, whose thread must hold both columns of a pair; gemm.wgsl).
    let batches = if fits { s.batch } else { 1 };
    let flops = 2 * s.m * s.n * s.k * s.batch;
    let min_tile = if matches!(s.act, Act::Geglu(_)) {
        32
    } else {
        0
    };
    // Cooperative tiles straight from storage: every side a multiple of the
    // tile, 16-byte aligned strides (8 f16), no windows, A not normalised
    // on the way, and each operand contiguous along one of its axes.
    let direct = |ct: usize| {
        let [a, b] = tile_operands(&s, ct, row_chunk.min(s.m));
        [fits && a && s.ln.is_none(), fits && b]
    };
    let main_loop = g.matmul_loop(dtype, flops, min_tile, &direct, |t| {
        (s.n.div_ceil(t) * row_chunk.min(s.m).div_ceil(t) * batches) as u64
    });
    let tile = main_loop.tile;
    let extra = [
        ("ACT", s.act.code()),
        ("HAS_BIAS", s.bias.is_some() as u32),
        ("BIAS_ROWS", s.bias_rows as u32),
        ("LN_A", s.ln.is_some() as u32),
        (
            "A_M_FAST",
            (s.a_strides[1] == 1 && s.a_strides[2] != 1) as u32,
        ),
        ("HAS_RES", s.residual.is_some() as u32),
        ("B_N_FAST", (s.b_strides[2] == 1) as u32),
    ];
    let consts: Vec<_> = main_loop.consts.iter().chain(&extra).copied().collect();
    for bt in 0..rows {
        for m0 in (0..s.m.max(1)).step_by(row_chunk) {
            let mc = row_chunk.min(s.m - m0);
            let (mut offs, mut wins) = ([0usize; 3], [None; 3]);
            if !fits {
                let wa = g.window(s.a, (bt * s.m + m0) * s.k, mc * s.k);
                let wc = g.window(&out, (bt * s.m + m0) * n_out, mc * n_out);
                (offs[0], wins[0]) = (wa.lead, Some(wa.window));
                (offs[2], wins[2]) = (wc.lead, Some(wc.window));
                if b_batched {
                    let wb = g.window(s.b, bt * s.b_strides[0], s.b_strides[0]);
                    (offs[1], wins[1]) = (wb.lead, Some(wb.window));
                }
            }
            let mut inputs = vec![(2, s.a, wins[0]), (3, s.b, wins[1])];
            if let Some(b) = s.bias {
                inputs.push((4, b, None));
            }
            if let Some(r) = s.residual {
                inputs.push((5, r, wins[2]));
            }
            if let Some(ln) = s.ln {
                inputs.push((6, ln.gamma, None));
                inputs.push((7, ln.beta, None));
            }
            let params = vec![
                u(mc),
                u(s.n),
                u(s.k),
                u(n_out),
                u(s.a_strides[0]),
                u(s.a_strides[1]),
                u(s.a_strides[2]),
                u(s.b_strides[0]),
                u(s.b_strides[1]),
                u(s.b_strides[2]),
                u(c_bs),
                u(c_rs),
                u(offs[0]),
                u(offs[1]),
                u(offs[2]),
                s.ln.map_or(0.0, |ln| ln.eps).to_bits(),
            ];
            let grid = |tile: usize| [u(s.n.div_ceil(tile)), u(mc.div_ceil(tile)), u(batches)];
            let wg = grid(tile);
            if wg.iter().any(|&x| x > 65535) {
                return Err(shape_err(
                    "gemm",
                    format!("grid {wg:?} exceeds 65535 workgroups per dimension"),
                ));
            }
            let node = g.push_windowed(
                "gemm",
                "main",
                dtype,
                consts.clone(),
                &[(&out, wins[2])],
                &inputs,
                params,
                wg,
            );
            g.set_flops(node, 2 * mc * s.n * s.k * batches);
            g.set_alternatives(node, main_loop.variants(&extra, grid));
        }
    }
    Ok(out)
}

/// Optional parts of a [`gemm`].
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a Value>,
    pub act: Act,
    pub residual: Option<&'a Value>,
}

impl Epilogue<'_> {
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        act: Act::None,
        residual: None,
    };
}

/// A LayerNorm over the rows of a GEMM's A, applied as A loads (the
/// normalised tensor is never written): weight and bias of width K.
#[derive(Clone, Copy)]
pub struct LayerNormA<'a> {
    pub gamma: &'a Value,
    pub beta: &'a Value,
    pub eps: f32,
}

/// Batched matrix product with fused epilogue: a (B, M, K) times b (B, K, N),
/// or b (B, N, K) when `b_transposed` (A @ B^T); a rank-2 b is shared by the
/// batch. Then + bias (N), activation, + residual (B, M, N_out).
pub fn gemm(
    g: &mut Graph,
    a: &Value,
    b: &Value,
    b_transposed: bool,
    epi: Epilogue,
) -> Result<Value, ShapeError> {
    gemm_normed(g, a, b, b_transposed, None, epi)
}

/// [`gemm`] with a's rows through the LayerNorm `ln` first.
pub fn gemm_normed(
    g: &mut Graph,
    a: &Value,
    b: &Value,
    b_transposed: bool,
    ln: Option<LayerNormA>,
    epi: Epilogue,
) -> Result<Value, ShapeError> {
    let op = "gemm";
    if a.rank() != 3 || !(b.rank() == 2 || b.rank() == 3) {
        return Err(shape_err(
            op,
            format!(
                "expected a (B, M, K) and b of rank 2 or 3, got {} and {}",
                ShapeFmt(&a.shape),
                ShapeFmt(&b.shape)
            ),
        ));
    }
    let (batch, m, k) = (a.dim(0), a.dim(1), a.dim(2));
    let shared = b.rank() == 2;
    let (bk, n) = if b_transposed {
        (b.dim(-1), b.dim(-2))
    } else {
        (b.dim(-2), b.dim(-1))
    };
    if bk != k || (!shared && b.dim(0) != batch) {
        return Err(shape_err(
            op,
            format!(
                "{} cannot multiply {}{}",
                ShapeFmt(&a.shape),
                ShapeFmt(&b.shape),
                if b_transposed { " transposed" } else { "" }
            ),
        ));
    }
    let n_out = match epi.act {
        Act::Geglu(n_out) => {
            if n != n_out.div_ceil(GEGLU_GROUP) * 2 * GEGLU_GROUP {
                return Err(shape_err(
                    op,
                    format!(
                        "GEGLU weight {} is not interleaved for {n_out} outputs",
                        ShapeFmt(&b.shape)
                    ),
                ));
            }
            n_out
        }
        _ => n,
    };
    let out_shape = vec![batch, m, n_out];
    if let Some(bias) = epi.bias {
        expect_shape(op, "bias", bias, &[n])?;
    }
    if let Some(r) = epi.residual {
        expect_shape(op, "residual", r, &out_shape)?;
    }
    let mut all = vec![a, b];
    all.extend(epi.bias);
    all.extend(epi.residual);
    if let Some(ln) = ln {
        expect_shape(op, "layer norm weight", ln.gamma, &[k])?;
        expect_shape(op, "layer norm bias", ln.beta, &[k])?;
        all.extend([ln.gamma, ln.beta]);
    }
    same_dtype(op, &all)?;
    let b_bs = if shared { 0 } else { k * n };
    let b_strides = if b_transposed {
        [b_bs, 1, k]
    } else {
        [b_bs, n, 1]
    };
    record(
        g,
        Spec {
            batch,
            m,
            n,
            k,
            a,
            a_strides: [m * k, k, 1],
            b,
            b_strides,
            bias: epi.bias,
            bias_rows: false,
            ln,
            act: epi.act,
            residual: epi.residual,
            out_shape,
        },
    )
}

/// A Linear over the channels of a channel-major tensor: x (B, C, L), w
/// (N, C) -> (B, L, N) = x^T w^T + bias, x read through strides: the
/// transpose into tokens costs no pass of its own (a transformer's proj_in).
pub fn linear_tokens(
    g: &mut Graph,
    x: &Value,
    w: &Value,
    bias: Option<&Value>,
) -> Result<Value, ShapeError> {
    let op = "linear_tokens";
    if x.rank() != 3 || w.rank() != 2 || w.dim(1) != x.dim(1) {
        return Err(shape_err(
            op,
            format!(
                "input {} (B, C, L) does not match weight {} (N, C)",
                ShapeFmt(&x.shape),
                ShapeFmt(&w.shape)
            ),
        ));
    }
    let (b, c, l, n) = (x.dim(0), x.dim(1), x.dim(2), w.dim(0));
    if let Some(bias) = bias {
        expect_shape(op, "bias", bias, &[n])?;
    }
    let mut all = vec![x, w];
    all.extend(bias);
    same_dtype(op, &all)?;
    // The split path wants contiguous operands; the transposes this
    // replaces bound them whole too.
    if !g.fits(x.numel(), x.dtype) || !g.fits(b * l * n, x.dtype) {
        return Err(g.unsplittable(op, format!("{} or its tokens", ShapeFmt(&x.shape))));
    }
    record(
        g,
        Spec {
            batch: b,
            m: l,
            n,
            k: c,
            a: x,
            a_strides: [c * l, 1, l],
            b: w,
            b_strides: [0, 1, c],
            bias,
            bias_rows: false,
            ln: None,
            act: Act::None,
            residual: None,
            out_shape: vec![b, l, n],
        },
    )
}

/// The way back to channel-major: t (B, L, C), w (N, C) -> (B, N, L) = w
/// t^T + bias (per channel n) + residual (B, N, L), written channel-major
/// with no transpose pass (a transformer's proj_out and its residual).
pub fn linear_channels(
    g: &mut Graph,
    t: &Value,
    w: &Value,
    bias: Option<&Value>,
    residual: Option<&Value>,
) -> Result<Value, ShapeError> {
    let op = "linear_channels";
    if t.rank() != 3 || w.rank() != 2 || w.dim(1) != t.dim(2) {
        return Err(shape_err(
            op,
            format!(
                "input {} (B, L, C) does not match weight {} (N, C)",
                ShapeFmt(&t.shape),
                ShapeFmt(&w.shape)
            ),
        ));
    }
    let (b, l, c, n) = (t.dim(0), t.dim(1), t.dim(2), w.dim(0));
    if let Some(bias) = bias {
        expect_shape(op, "bias", bias, &[n])?;
    }
    if let Some(r) = residual {
        expect_shape(op, "residual", r, &[b, n, l])?;
    }
    let mut all = vec![t, w];
    all.extend(bias);
    all.extend(residual);
    same_dtype(op, &all)?;
    if !g.fits(t.numel(), t.dtype) || !g.fits(b * l * n, t.dtype) {
        return Err(g.unsplittable(op, format!("{} or its map", ShapeFmt(&t.shape))));
    }
    record(
        g,
        Spec {
            batch: b,
            m: n,
            n: l,
            k: c,
            a: w,
            a_strides: [0, c, 1],
            b: t,
            b_strides: [l * c, 1, c],
            bias,
            bias_rows: true,
            ln: None,
            act: Act::None,
            residual,
            out_shape: vec![b, n, l],
        },
    )
}

/// `x @ w^T + bias`, a PyTorch Linear: x (..., K), w (N, K) -> (..., N), with
/// the epilogue of [`gemm`]; the residual has the output's shape.
pub fn linear(g: &mut Graph, x: &Value, w: &Value, epi: Epilogue) -> Result<Value, ShapeError> {
    linear_normed(g, x, w, None, epi)
}

/// [`linear`] of `LayerNorm(x)` when `ln` is given, the norm applied as the
/// GEMM loads x ([`gemm_normed`]): a transformer's norm1/2/3 and the
/// projections after them in one dispatch each.
pub fn linear_normed(
    g: &mut Graph,
    x: &Value,
    w: &Value,
    ln: Option<LayerNormA>,
    epi: Epilogue,
) -> Result<Value, ShapeError> {
    if w.rank() != 2 || x.rank() == 0 || x.dim(-1) != w.dim(1) {
        return Err(shape_err(
            "linear",
            format!(
                "input {} does not match weight {} (N, K)",
                ShapeFmt(&x.shape),
                ShapeFmt(&w.shape)
            ),
        ));
    }
    let k = w.dim(1);
    let m = x.numel() / k;
    let x3 = g.reshape(x, &[1, m, k])?;
    let res3 = match epi.residual {
        Some(r) => {
            if r.numel() % m != 0 {
                return Err(shape_err(
                    "linear",
                    format!("residual {} does not match {} rows", ShapeFmt(&r.shape), m),
                ));
            }
            Some(g.reshape(r, &[1, m, r.numel() / m])?)
        }
        None => None,
    };
    let y = gemm_normed(
        g,
        &x3,
        w,
        true,
        ln,
        Epilogue {
            residual: res3.as_ref(),
            ..epi
        },
    )?;
    let mut shape = x.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = y.dim(2);
    }
    g.reshape(&y, &shape)
}
