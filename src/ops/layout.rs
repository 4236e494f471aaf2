//! Layout transforms: strided copies (`shaders/copy.wgsl`) and nearest 2x
//! upsampling (`shaders/upsample.wgsl`).

use super::{same_dtype, u, word_of, words};
use crate::graph::{Graph, Offset, ShapeError, ShapeFmt, Value, Window, grid_flat, shape_err};

/// copy.wgsl's `Params`: sizes n, source strides s and destination strides
/// d of four dimensions, element offsets, and the element count.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyParams {
    n: [u32; 4],
    s: [u32; 4],
    d: [u32; 4],
    src_off: u32,
    /// Moves with the step when the destination is a store slot.
    dst_off: u32,
    total: u32,
    _pad: u32,
}

/// Copies the 4-d index space `n` from `src` (strides `s`, offset `so`) into
/// `dst` (strides `d`, offset `dof`). Tensors larger than one binding are
/// copied per index of dimension 1 (the batch row, for every caller) and in
/// chunks of dimension 2, each binding the windows it touches; a destination
/// offset that moves with the step (a feature-store slot) binds whole.
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy4(
    g: &mut Graph,
    dst: &Value,
    src: &Value,
    n: [usize; 4],
    s: [usize; 4],
    so: usize,
    d: [usize; 4],
    dof: Offset,
) {
    let record = |g: &mut Graph, n: [usize; 4], wins: [Option<Window>; 2], so: usize, dof| {
        let total: usize = n.iter().product();
        let params = CopyParams {
            n: n.map(u),
            s: s.map(u),
            d: d.map(u),
            src_off: u(so),
            dst_off: 0, // moves with the step (a store slot): set below
            total: u(total),
            _pad: 0,
        };
        let node = g.push_windowed(
            "copy",
            "main",
            src.dtype,
            vec![],
            &[(dst, wins[1])],
            &[(2, src, wins[0])],
            words(&params),
            grid_flat(total),
        );
        g.step_param(node, word_of!(CopyParams, dst_off), dof);
    };
    // Elements one (i1, i2 chunk of `c`) block spans in a tensor of strides `st`.
    let span = |st: [usize; 4], c: usize| {
        (n[0].max(1) - 1) * st[0] + (c.max(1) - 1) * st[2] + (n[3].max(1) - 1) * st[3] + 1
    };
    let cap = g.window_capacity(src.dtype);
    let most = |st: [usize; 4]| match st[2] {
        0 => n[2],
        s2 => (cap.saturating_sub(span(st, 1)) / s2 + 1).min(n[2]),
    };
    let whole = g.fits(src.numel(), src.dtype) && g.fits(dst.numel(), dst.dtype);
    let chunk = most(s).min(most(d));
    if whole || dof.per_step != 0 || span(s, 1) > cap || span(d, 1) > cap || chunk == 0 {
        record(g, n, [None, None], so, dof);
        return;
    }
    for i1 in 0..n[1] {
        for c0 in (0..n[2]).step_by(chunk) {
            let c = chunk.min(n[2] - c0);
            let ws = g.window(src, so + i1 * s[1] + c0 * s[2], span(s, c));
            let wd = g.window(dst, dof.base + i1 * d[1] + c0 * d[2], span(d, c));
            record(
                g,
                [n[0], 1, c, n[3]],
                [Some(ws.window), Some(wd.window)],
                ws.lead,
                Offset::fixed(wd.lead),
            );
        }
    }
}

/// Copies all of `src` into `dst` (an external tensor, e.g. a feature-store
/// slot) from element `offset` on; the offset may move with the step.
pub fn copy_into(
    g: &mut Graph,
    dst: &Value,
    src: &Value,
    offset: Offset,
) -> Result<(), ShapeError> {
    same_dtype("copy_into", &[dst, src])?;
    let n = src.numel();
    if offset.base + n > dst.numel() {
        return Err(shape_err(
            "copy_into",
            format!(
                "{} does not fit in {} at {}",
                ShapeFmt(&src.shape),
                ShapeFmt(&dst.shape),
                offset.base
            ),
        ));
    }
    copy4(
        g,
        dst,
        src,
        [1, 1, 1, n],
        [0, 0, 0, 1],
        0,
        [0, 0, 0, 1],
        offset,
    );
    Ok(())
}

/// (B, R, C) -> (B, C, R); (R, C) is taken as B = 1.
pub fn transpose_last2(g: &mut Graph, x: &Value) -> Result<Value, ShapeError> {
    if x.rank() < 2 {
        return Err(shape_err(
            "transpose",
            format!("{} has fewer than 2 dimensions", ShapeFmt(&x.shape)),
        ));
    }
    let (r, c) = (x.dim(-2), x.dim(-1));
    let b = x.numel() / (r * c).max(1);
    let mut shape = x.shape.clone();
    let rank = shape.len();
    shape.swap(rank - 1, rank - 2);
    let y = g.temp(&shape, x.dtype);
    copy4(
        g,
        &y,
        x,
        [1, b, c, r],
        [0, r * c, 1, c],
        0,
        [0, r * c, r, 1],
        Offset::default(),
    );
    Ok(y)
}

/// torch.cat(parts, dim).
pub fn concat(g: &mut Graph, parts: &[&Value], dim: usize) -> Result<Value, ShapeError> {
    let first = parts
        .first()
        .ok_or_else(|| shape_err("concat", "nothing to concatenate"))?;
    same_dtype("concat", parts)?;
    let mut shape = first.shape.clone();
    if dim >= shape.len() {
        return Err(shape_err(
            "concat",
            format!("dimension {dim} out of range for {}", ShapeFmt(&shape)),
        ));
    }
    shape[dim] = 0;
    for p in parts {
        let same_rest = p.rank() == first.rank()
            && (0..p.rank()).all(|i| i == dim || p.shape[i] == first.shape[i]);
        if !same_rest {
            return Err(shape_err(
                "concat",
                format!(
                    "{} and {} differ outside dimension {dim}",
                    ShapeFmt(&first.shape),
                    ShapeFmt(&p.shape)
                ),
            ));
        }
        shape[dim] += p.shape[dim];
    }
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let total_d = shape[dim];
    let y = g.temp(&shape, first.dtype);
    let mut at = 0;
    for p in parts {
        let pd = p.shape[dim];
        copy4(
            g,
            &y,
            p,
            [1, outer, pd, inner],
            [0, pd * inner, inner, 1],
            0,
            [0, total_d * inner, inner, 1],
            Offset::fixed(at * inner),
        );
        at += pd;
    }
    Ok(y)
}

/// F.interpolate(x, scale_factor=2.0, mode="nearest") on (B, C, H, W).
pub fn upsample_nearest2x(g: &mut Graph, x: &Value) -> Result<Value, ShapeError> {
    if x.rank() != 4 {
        return Err(shape_err(
            "upsample",
            format!("expected (B, C, H, W), got {}", ShapeFmt(&x.shape)),
        ));
    }
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let y = g.temp(&[b, c, 2 * h, 2 * w], x.dtype);
    // Tensors larger than one binding: chunks of whole (b, c) planes.
    let planes = b * c;
    let plane = 4 * h * w;
    let per = if g.fits(y.numel(), y.dtype) {
        planes.max(1)
    } else {
        match g.units_per_window(plane, y.dtype) {
            0 => {
                let what = format!("one {}x{} plane", 2 * h, 2 * w);
                return Err(g.unsplittable("upsample", what));
            }
            per => per,
        }
    };
    for first in (0..planes.max(1)).step_by(per) {
        let count = per.min(planes - first);
        let whole = count == planes;
        let wx = g.window(x, first * h * w, count * h * w);
        let wy = g.window(&y, first * plane, count * plane);
        let total = count * plane;
        g.push_windowed(
            "upsample",
            "main",
            x.dtype,
            vec![],
            &[(&y, (!whole).then_some(wy.window))],
            &[(2, x, (!whole).then_some(wx.window))],
            vec![
                u(total),
                u(h),
                u(w),
                if whole { 0 } else { u(wx.lead) },
                if whole { 0 } else { u(wy.lead) },
            ],
            grid_flat(total),
        );
    }
    Ok(y)
}
