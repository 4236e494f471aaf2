//! Elementwise ops with broadcasting (`shaders/elementwise.wgsl`).

use super::{same_dtype, u};
use crate::graph::{Graph, Offset, ShapeError, ShapeFmt, Value, grid_1d, shape_err};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Silu,
    /// erf GELU.
    Gelu,
    QuickGelu,
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
    let (inputs, div, modulo, b_off): (Vec<(u32, &Value)>, u32, u32, Offset) = match b {
        Some((b, div, modulo, off)) => (vec![(2, a), (3, b)], div, modulo, off),
        None => (vec![(2, a)], 1, u(n), Offset::default()),
    };
    let node = g.push(
        "elementwise",
        "main",
        a.dtype,
        vec![("OP", op), ("BINARY", b.is_some() as u32)],
        &[&y],
        &inputs,
        vec![u(n), div, modulo, alpha.to_bits(), 0],
        grid_1d(n, 256),
    );
    g.step_param(node, 4, b_off);
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
    };
    record(g, x, None, code, 0.0)
}

/// alpha * x.
pub fn scale(g: &mut Graph, x: &Value, alpha: f32) -> Value {
    record(g, x, None, 5, alpha)
}
