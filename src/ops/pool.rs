//! Max pooling (`shaders/pool.wgsl`): SqueezeNet's, for LPIPS.

use super::u;
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, grid_flat, shape_err};

/// PyTorch's pooled size of `n` samples: windows of `k` every `s`, no
/// padding; with `ceil`, a last window that starts inside the input but runs
/// past it counts.
pub fn pooled_size(n: usize, k: usize, s: usize, ceil: bool) -> usize {
    if n < k {
        // Only a ceil-mode window that starts at 0 covers anything.
        return usize::from(ceil && n > 0);
    }
    let span = n - k;
    let mut out = if ceil { span.div_ceil(s) } else { span / s } + 1;
    if ceil && (out - 1) * s >= n {
        out -= 1;
    }
    out
}

/// torch.nn.MaxPool2d(k, stride=s, padding=0, ceil_mode=ceil) on (B, C, H, W).
pub fn max_pool2d(
    g: &mut Graph,
    x: &Value,
    k: usize,
    s: usize,
    ceil: bool,
) -> Result<Value, ShapeError> {
    let op = "max_pool2d";
    if x.rank() != 4 || k == 0 || s == 0 {
        return Err(shape_err(
            op,
            format!(
                "expected (B, C, H, W) and a positive window and stride, got {} k {k} s {s}",
                ShapeFmt(&x.shape)
            ),
        ));
    }
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (oh, ow) = (pooled_size(h, k, s, ceil), pooled_size(w, k, s, ceil));
    if oh == 0 || ow == 0 {
        return Err(shape_err(
            op,
            format!("a {h}x{w} input has no {k}x{k} window"),
        ));
    }
    if !g.fits(x.numel(), x.dtype) {
        return Err(g.unsplittable(op, format!("a {}", ShapeFmt(&x.shape))));
    }
    let y = g.temp(&[b, c, oh, ow], x.dtype);
    let total = y.numel();
    g.push(
        "pool",
        "main",
        x.dtype,
        vec![],
        &[&y],
        &[(2, x)],
        vec![u(total), u(h), u(w), u(oh), u(ow), u(k), u(s)],
        grid_flat(total),
    );
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::pooled_size;

    #[test]
    fn pooled_sizes_are_pytorchs() {
        // 3x3 windows every 2, ceil_mode: SqueezeNet's.
        assert_eq!(pooled_size(255, 3, 2, true), 127);
        assert_eq!(pooled_size(31, 3, 2, true), 15);
        assert_eq!(pooled_size(8, 3, 2, true), 4);
        assert_eq!(pooled_size(4, 3, 2, true), 2);
        assert_eq!(pooled_size(2, 3, 2, true), 1);
        assert_eq!(pooled_size(8, 3, 2, false), 3);
        assert_eq!(pooled_size(2, 3, 2, false), 0);
    }
}
