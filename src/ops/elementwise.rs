//! Elementwise ops with broadcasting (`shaders/elementwise.wgsl`).

use super::{same_dtype, u};
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, grid_1d, shape_err};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Silu,
    /// erf GELU.
    Gelu,
    QuickGelu,
}

fn record(g: &mut Graph, a: &Value, b: Option<(&Value, u32, u32)>, op: u32, alpha: f32) -> Value {
    let y = g.temp(&a.shape, a.dtype);
    let n = a.numel();
    let (inputs, div, modulo): (Vec<(u32, &Value)>, u32, u32) = match b {
        Some((b, div, modulo)) => (vec![(2, a), (3, b)], div, modulo),
        None => (vec![(2, a)], 1, u(n)),
    };
    g.push(
        "elementwise",
        "main",
        a.dtype,
        vec![("OP", op), ("BINARY", b.is_some() as u32)],
        &[&y],
        &inputs,
        vec![u(n), div, modulo, alpha.to_bits()],
        grid_1d(n, 256),
    );
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
    Ok(record(g, a, Some((b, div, modulo)), 0, 0.0))
}

/// a * b, b broadcast to a's shape.
pub fn mul(g: &mut Graph, a: &Value, b: &Value) -> Result<Value, ShapeError> {
    same_dtype("mul", &[a, b])?;
    let (div, modulo) = broadcast("mul", a, b)?;
    Ok(record(g, a, Some((b, div, modulo)), 1, 0.0))
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
