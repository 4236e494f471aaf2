//! Softmax over the last dimension (`shaders/softmax.wgsl`).

use super::u;
use crate::graph::{Graph, ShapeError, Value, grid_1d, shape_err};

pub fn softmax(g: &mut Graph, x: &Value) -> Result<Value, ShapeError> {
    if x.rank() == 0 || x.dim(-1) == 0 {
        return Err(shape_err("softmax", "needs a non-empty last dimension"));
    }
    let cols = x.dim(-1);
    let y = g.temp(&x.shape, x.dtype);
    g.push(
        "softmax",
        "main",
        x.dtype,
        vec![],
        &[&y],
        &[(2, x)],
        vec![u(cols)],
        grid_1d(x.numel() / cols, 1),
    );
    Ok(y)
}
