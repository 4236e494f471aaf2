//! Fused multi-head attention (`shaders/attention.wgsl`).

use super::{same_dtype, u};
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, shape_err};

/// Keys per tile in attention.wgsl (BC): k and v tiles take 2 * BC * D floats
/// of workgroup memory.
const KEY_TILE: usize = 16;

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
    let op = "attention";
    let bad = || {
        shape_err(
            op,
            format!(
                "q {}, k {}, v {} are not (B, L, H*D) with {heads} heads",
                ShapeFmt(&q.shape),
                ShapeFmt(&k.shape),
                ShapeFmt(&v.shape)
            ),
        )
    };
    if q.rank() != 3 || k.rank() != 3 || k.shape != v.shape || heads == 0 {
        return Err(bad());
    }
    let (b, lq, c_) = (q.dim(0), q.dim(1), q.dim(2));
    let lk = k.dim(1);
    if k.dim(0) != b || k.dim(2) != c_ || c_ % heads != 0 || lk == 0 {
        return Err(bad());
    }
    let d = c_ / heads;
    // The head dimension is a compile-time variant: it sizes the per-row registers.
    let shared = 2 * KEY_TILE * d * 4;
    let limit = g.gpu.limits.max_compute_workgroup_storage_size as usize;
    if shared > limit {
        return Err(shape_err(
            op,
            format!(
                "head dimension {d} needs {shared} bytes of workgroup memory; this adapter has {limit}"
            ),
        ));
    }
    same_dtype(op, &[q, k, v])?;
    let scale = scale.unwrap_or(1.0 / (d as f32).sqrt());
    let o = g.temp(&q.shape, q.dtype);
    // Keys per dispatch: all of them, unless the driver bounds an invocation's
    // loop iterations (about 2D + 8 per key, see attention.wgsl).
    let chunk = match g.gpu.loop_budget {
        Some(budget) => (budget / (2 * d + 8) / KEY_TILE * KEY_TILE).max(KEY_TILE),
        None => lk,
    };
    let chunks = lk.div_ceil(chunk);
    let state = (chunks > 1).then(|| g.temp(&[b * heads * lq * (d + 2)], crate::gpu::DType::F32));
    for c in 0..chunks {
        let (k_begin, k_end) = (c * chunk, ((c + 1) * chunk).min(lk));
        let first_last = (c == 0) as u32 | (((c + 1 == chunks) as u32) << 1);
        let params = vec![
            u(lq),
            u(lk),
            causal as u32,
            scale.to_bits(),
            u(c_),
            u(c_),
            u(c_),
            u(c_),
            u(lq * c_),
            u(lk * c_),
            u(lk * c_),
            u(lq * c_),
            0,
            0,
            0,
            0,
            u(heads),
            u(k_begin),
            u(k_end),
            first_last,
        ];
        let mut outputs = vec![&o];
        outputs.extend(state.as_ref());
        g.push(
            "attention",
            "main",
            q.dtype,
            vec![("HEAD_DIM", u(d)), ("CHUNKED", state.is_some() as u32)],
            &outputs,
            &[(3, q), (4, k), (5, v)],
            params,
            [u(lq.div_ceil(64)), u(heads), u(b)],
        );
    }
    Ok(o)
}
