//! conv2d as an implicit GEMM (`shaders/conv.wgsl`).

use super::{expect_shape, same_dtype, u};
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, shape_err};

/// Geometry of a convolution. `pad` is [top, bottom, left, right].
#[derive(Clone, Copy, Debug)]
pub struct Conv2d {
    pub stride: usize,
    pub pad: [usize; 4],
}

impl Conv2d {
    /// Stride 1 with symmetric padding `p`.
    pub fn same(p: usize) -> Self {
        Conv2d {
            stride: 1,
            pad: [p; 4],
        }
    }
}

/// x (B, C_in, H, W) * w (C_out, C_in, KH, KW) + bias (C_out) [+ residual]
/// -> (B, C_out, H_out, W_out).
pub fn conv2d(
    g: &mut Graph,
    x: &Value,
    w: &Value,
    bias: &Value,
    geo: Conv2d,
    residual: Option<&Value>,
) -> Result<Value, ShapeError> {
    let op = "conv2d";
    if x.rank() != 4 || w.rank() != 4 || x.dim(1) != w.dim(1) {
        return Err(shape_err(
            op,
            format!(
                "input {} does not match weight {} (C_out, C_in, KH, KW)",
                ShapeFmt(&x.shape),
                ShapeFmt(&w.shape)
            ),
        ));
    }
    let (b, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (cout, kh, kw) = (w.dim(0), w.dim(2), w.dim(3));
    let [pt, pb, pl, pr] = geo.pad;
    let s = geo.stride.max(1);
    if h + pt + pb < kh || wd + pl + pr < kw {
        return Err(shape_err(
            op,
            format!(
                "kernel {kh}x{kw} is larger than the padded input {}",
                ShapeFmt(&x.shape)
            ),
        ));
    }
    let ho = (h + pt + pb - kh) / s + 1;
    let wo = (wd + pl + pr - kw) / s + 1;
    expect_shape(op, "bias", bias, &[cout])?;
    let out_shape = [b, cout, ho, wo];
    if let Some(r) = residual {
        expect_shape(op, "residual", r, &out_shape)?;
    }
    let mut all = vec![x, w, bias];
    all.extend(residual);
    same_dtype(op, &all)?;
    let y = g.temp(&out_shape, x.dtype);
    let (m, n, k) = (cout, ho * wo, cin * kh * kw);
    let mut inputs = vec![(2, x), (3, w), (4, bias)];
    if let Some(r) = residual {
        inputs.push((5, r));
    }
    let params = vec![
        u(m),
        u(n),
        u(k),
        u(cin),
        u(h),
        u(wd),
        u(wo),
        u(kh),
        u(kw),
        u(s),
        u(pt),
        u(pl),
    ];
    let wg = [u(n.div_ceil(64)), u(m.div_ceil(64)), u(b)];
    g.push(
        "conv",
        "main",
        x.dtype,
        vec![("HAS_RES", residual.is_some() as u32)],
        &[&y],
        &inputs,
        params,
        wg,
    );
    Ok(y)
}
