//! LPIPS's per-pixel distance of two feature maps (`shaders/lpips.wgsl`).

use super::{expect_shape, same_dtype, u};
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, grid_flat, shape_err};

/// For feature maps `a`, `b` (1, C, H, W) and head weights `w` (C): at each
/// pixel, sum_c w_c (a_c / |a| - b_c / |b|)^2, |f| = sqrt(eps + sum_c f_c^2).
/// Returns (H, W); LPIPS averages it.
pub fn lpips_distance(
    g: &mut Graph,
    a: &Value,
    b: &Value,
    w: &Value,
    eps: f32,
) -> Result<Value, ShapeError> {
    let op = "lpips_distance";
    same_dtype(op, &[a, b, w])?;
    if a.rank() != 4 || a.dim(0) != 1 || a.shape != b.shape {
        return Err(shape_err(
            op,
            format!(
                "expected two (1, C, H, W) maps, got {} and {}",
                ShapeFmt(&a.shape),
                ShapeFmt(&b.shape)
            ),
        ));
    }
    let (c, h, wd) = (a.dim(1), a.dim(2), a.dim(3));
    expect_shape(op, "head", w, &[c])?;
    for v in [a, b] {
        if !g.fits(v.numel(), v.dtype) {
            return Err(g.unsplittable(op, format!("a {}", ShapeFmt(&v.shape))));
        }
    }
    let y = g.temp(&[h, wd], a.dtype);
    g.push(
        "lpips",
        "main",
        a.dtype,
        vec![],
        &[&y],
        &[(2, a), (3, b), (4, w)],
        vec![u(c), u(h * wd), eps.to_bits()],
        grid_flat(h * wd),
    );
    Ok(y)
}
