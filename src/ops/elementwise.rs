//! Elementwise ops with broadcasting (`shaders/elementwise.wgsl`).

use super::{same_dtype, u, word_of, words};
use crate::graph::{Graph, Offset, ShapeError, ShapeFmt, Value, grid_flat, shape_err};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Silu,
    /// erf GELU.
    Gelu,
    QuickGelu,
    /// max(x, 0).
    Relu,
}

/// elementwise.wgsl's `Params`: y[i] = op(a[i], b[b_off + ((i_base + i) / b_div) % b_mod]).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ElementwiseParams {
    n: u32,
    b_div: u32,
    b_mod: u32,
    alpha: f32,
    /// Where b starts (a feature-store slot, say): moves with the step.
    b_off: u32,
    /// Index of this dispatch's first element in the whole of a (split runs).
    i_base: u32,
    a_lead: u32,
    y_lead: u32,
}

fn record(
    g: &mut Graph,
    a: &Value,
    b: Option<(&Value, u32, u32, Offset)>,
    op: u32,
    alpha: f32,
) -> Value {
    let y = g.temp(&a.shape, a.dtype);
    let n = a.numel();
    let consts = vec![("OP", op), ("BINARY", b.is_some() as u32)];
    // b is windowed with a when it is an a-shaped operand too large to bind
    // whole; any other b is bound whole (the planner refuses one too large).
    let b_whole = b.is_none_or(|(b, div, modulo, off)| {
        g.fits(b.numel(), b.dtype) || (div, modulo as usize, off) != (1, n, Offset::default())
    });
    let chunk = if g.fits(n, a.dtype) && b_whole {
        n.max(1)
    } else {
        g.window_capacity(a.dtype).max(1)
    };
    for start in (0..n.max(1)).step_by(chunk) {
        let len = chunk.min(n - start);
        let whole = len == n;
        let (wa, wy) = (g.window(a, start, len), g.window(&y, start, len));
        let win = |w: crate::graph::Windowed| (!whole).then_some(w.window);
        let mut inputs = vec![(2, a, win(wa))];
        let mut params = ElementwiseParams {
            n: u(len),
            b_div: 1,
            b_mod: u(len),
            alpha,
            b_off: 0,
            i_base: 0,
            a_lead: 0,
            y_lead: 0,
        };
        let mut b_off = Offset::default();
        if let Some((b, div, modulo, off)) = b {
            if b_whole {
                inputs.push((3, b, None));
                (params.b_div, params.b_mod, params.i_base) = (div, modulo, u(start));
                b_off = off;
            } else {
                // Same shape as a: b[lead + i] in b's window.
                let wb = g.window(b, start, len);
                inputs.push((3, b, Some(wb.window)));
                b_off = Offset::fixed(wb.lead);
            }
        }
        if !whole {
            (params.a_lead, params.y_lead) = (u(wa.lead), u(wy.lead));
        }
        let node = g.push_windowed(
            "elementwise",
            "main",
            a.dtype,
            consts.clone(),
            &[(&y, win(wy))],
            &inputs,
            words(&params),
            grid_flat(len),
        );
        g.step_param(node, word_of!(ElementwiseParams, b_off), b_off);
    }
    y
}

/// How b broadcasts over a: b's shape, right-aligned to a's, may have size 1
/// anywhere outside one contiguous run of dimensions equal to a's. Returns
/// (div, mod) with b index = (i / div) % mod.
fn broadcast(op: &str, a: &Value, b: &Value) -> Result<(u32, u32), ShapeError> {
    let err = || {
        shape_err(
            op,
            format!(
                "{} does not broadcast to {}",
                ShapeFmt(&b.shape),
                ShapeFmt(&a.shape)
            ),
        )
    };
    if b.rank() > a.rank() {
        return Err(err());
    }
    let mut bs = vec![1; a.rank() - b.rank()];
    bs.extend(&b.shape);
    let kept: Vec<usize> = (0..a.rank()).filter(|&i| bs[i] != 1).collect();
    let (Some(&lo), Some(&hi)) = (kept.first(), kept.last()) else {
        return Ok((1, 1));
    };
    if bs[lo..=hi] != a.shape[lo..=hi] {
        return Err(err());
    }
    let div: usize = a.shape[hi + 1..].iter().product();
    let modulo: usize = a.shape[lo..=hi].iter().product();
    Ok((u(div), u(modulo)))
}

/// a + b, b broadcast to a's shape (see [`broadcast`]).
pub fn add(g: &mut Graph, a: &Value, b: &Value) -> Result<Value, ShapeError> {
    same_dtype("add", &[a, b])?;
    let (div, modulo) = broadcast("add", a, b)?;
    Ok(record(
        g,
        a,
        Some((b, div, modulo, Offset::default())),
        0,
        0.0,
    ))
}

/// a + src[offset + i % row], for each element i of a: every row of `row`
/// elements of a gets the same run of `src` (one source row's features added
/// to each batch row; the offset may move with the step).
pub fn add_row(
    g: &mut Graph,
    a: &Value,
    src: &Value,
    offset: Offset,
    row: usize,
) -> Result<Value, ShapeError> {
    same_dtype("add_row", &[a, src])?;
    if row == 0 || !a.numel().is_multiple_of(row) || offset.base + row > src.numel() {
        return Err(shape_err(
            "add_row",
            format!(
                "rows of {row} from {} do not tile {}",
                ShapeFmt(&src.shape),
                ShapeFmt(&a.shape)
            ),
        ));
    }
    Ok(record(g, a, Some((src, 1, u(row), offset)), 0, 0.0))
}

/// a * b, b broadcast to a's shape.
pub fn mul(g: &mut Graph, a: &Value, b: &Value) -> Result<Value, ShapeError> {
    same_dtype("mul", &[a, b])?;
    let (div, modulo) = broadcast("mul", a, b)?;
    Ok(record(
        g,
        a,
        Some((b, div, modulo, Offset::default())),
        1,
        0.0,
    ))
}

pub fn unary(g: &mut Graph, x: &Value, op: Unary) -> Value {
    let code = match op {
        Unary::Silu => 2,
        Unary::Gelu => 3,
        Unary::QuickGelu => 4,
        Unary::Relu => 6,
    };
    record(g, x, None, code, 0.0)
}

/// alpha * x.
pub fn scale(g: &mut Graph, x: &Value, alpha: f32) -> Value {
    record(g, x, None, 5, alpha)
}
