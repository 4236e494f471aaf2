//! The resamplings the metric networks' preprocessing uses, as PyTorch
//! computes them (in float64 here): torchvision's antialiased bilinear
//! `Resize` of tensors, and `interpolate(mode="bicubic")` with a scale factor
//! (DINO's position-embedding interpolation).

/// One output position's taps: first input index and weights.
struct Taps {
    first: usize,
    weights: Vec<f64>,
}

/// PyTorch's antialiased bilinear weights (`interpolate(..., antialias=True)`,
/// align_corners false) from `input` to `output` samples: a triangle filter
/// widened by the scale when shrinking, renormalised at the borders.
fn aa_bilinear_taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let (support, inv) = if scale >= 1.0 {
        (scale, 1.0 / scale)
    } else {
        (1.0, 1.0)
    };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            // PyTorch truncates toward zero, then clamps.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut weights: Vec<f64> = (lo..hi)
                .map(|j| {
                    let x = ((j as f64 - center + 0.5) * inv).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps { first: lo, weights }
        })
        .collect()
}

/// Planes (C, H, W) resized to (C, oh, ow) with antialiased bilinear
/// weights, width first, as torchvision's `Resize` does for float tensors.
pub fn resize_bilinear_aa(
    src: &[f64],
    c: usize,
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
) -> Vec<f64> {
    let (tx, ty) = (aa_bilinear_taps(w, ow), aa_bilinear_taps(h, oh));
    let mut rows = vec![0.0; c * h * ow];
    for p in 0..c * h {
        let line = &src[p * w..(p + 1) * w];
        for (x, t) in tx.iter().enumerate() {
            rows[p * ow + x] = (t.weights.iter().enumerate())
                .map(|(k, wt)| wt * line[t.first + k])
                .sum();
        }
    }
    let mut out = vec![0.0; c * oh * ow];
    for ch in 0..c {
        for (y, t) in ty.iter().enumerate() {
            for x in 0..ow {
                out[(ch * oh + y) * ow + x] = (t.weights.iter().enumerate())
                    .map(|(k, wt)| wt * rows[(ch * h + t.first + k) * ow + x])
                    .sum();
            }
        }
    }
    out
}

/// PyTorch's antialiased bicubic weights (a = -0.5, as PIL) for one axis,
/// made integer as its 8-bit path makes them: every weight scaled by
/// 2^precision and rounded, the precision the largest that keeps the
/// largest weight within 15 bits. Returns the taps and the precision.
fn bicubic_aa_taps_i16(input: usize, output: usize) -> (Vec<(usize, Vec<i32>)>, u32) {
    const A: f64 = -0.5;
    let filter = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    };
    let scale = input as f64 / output as f64;
    let (support, inv) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut w_max = 0f64;
    let taps: Vec<(usize, Vec<f64>)> = (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut w: Vec<f64> = (lo..hi)
                .map(|j| filter((j as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            w_max = w.iter().fold(w_max, |m, &v| m.max(v));
            (lo, w)
        })
        .collect();
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + w_max * f64::from(1u32 << (precision + 1))) as i64;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let one = f64::from(1u32 << precision);
    let taps = taps
        .into_iter()
        .map(|(lo, w)| {
            let w = w
                .into_iter()
                .map(|v| {
                    let v = v * one;
                    // int16 truncation of the rounded value.
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i16 as i32
                })
                .collect();
            (lo, w)
        })
        .collect();
    (taps, precision)
}

/// 8-bit RGB (H, W, 3) resized to (oh, ow) with antialiased bicubic
/// filtering in PyTorch's fixed-point 8-bit arithmetic (what torchvision's
/// resize of a uint8 tensor runs, and so transformers' CLIP image
/// processor): the width pass, then the height pass, each only where the
/// size changes, each rounded and clamped to 8 bits.
pub fn resize_bicubic_aa_u8(src: &[u8], [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Vec<u8> {
    let pass = |data: &[u8], n: usize, m: usize, along_w: bool, out_n: usize| -> Vec<u8> {
        // `n` samples along the axis, `m` lines across it.
        let (taps, precision) = bicubic_aa_taps_i16(n, out_n);
        let round = 1i64 << precision.saturating_sub(1);
        let mut out = vec![0u8; out_n * m * 3];
        for line in 0..m {
            for (o, (lo, wts)) in taps.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = round;
                    for (k, &wt) in wts.iter().enumerate() {
                        let j = lo + k;
                        let at = if along_w {
                            (line * n + j) * 3 + c
                        } else {
                            (j * m + line) * 3 + c
                        };
                        acc += i64::from(wt) * i64::from(data[at]);
                    }
                    let v = (acc >> precision).clamp(0, 255) as u8;
                    let dst = if along_w {
                        (line * out_n + o) * 3 + c
                    } else {
                        (o * m + line) * 3 + c
                    };
                    out[dst] = v;
                }
            }
        }
        out
    };
    let mut data = src.to_vec();
    if ow != w {
        data = pass(&data, w, h, true, ow);
    }
    if oh != h {
        data = pass(&data, h, ow, false, oh);
    }
    data
}

/// torchvision's `Resize(size, max_size)` output [height, width]: the
/// shorter side becomes `size` (the longer scaled and truncated), unless the
/// longer would pass `max_size`, which then bounds it.
pub fn resize_shorter_side(h: usize, w: usize, size: usize, max_size: usize) -> [usize; 2] {
    let (short, long) = (h.min(w), h.max(w));
    let (mut new_short, mut new_long) = (size, size * long / short);
    if new_long > max_size {
        new_short = max_size * new_short / new_long;
        new_long = max_size;
    }
    if w <= h {
        [new_long, new_short]
    } else {
        [new_short, new_long]
    }
}

/// Keys' cubic convolution, PyTorch's A = -0.75.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// `interpolate(x, scale_factor=(sy, sx), mode="bicubic")` of planes (C, H,
/// W), align_corners false: the output is floor(H sy) x floor(W sx), and an
/// output index d samples the input at (d + 0.5) / s - 0.5 (the scale factor
/// given, not the size ratio), taps clamped to the border.
pub fn interpolate_bicubic(
    src: &[f64],
    c: usize,
    [h, w]: [usize; 2],
    [sy, sx]: [f64; 2],
) -> (Vec<f64>, [usize; 2]) {
    let (oh, ow) = (
        (h as f64 * sy).floor() as usize,
        (w as f64 * sx).floor() as usize,
    );
    let taps = |d: usize, s: f64, n: usize| -> ([usize; 4], [f64; 4]) {
        let x = (d as f64 + 0.5) / s - 0.5;
        let f = x.floor();
        let idx = |k: i64| (f as i64 + k).clamp(0, n as i64 - 1) as usize;
        ([idx(-1), idx(0), idx(1), idx(2)], cubic_weights(x - f))
    };
    let mut out = vec![0.0; c * oh * ow];
    for y in 0..oh {
        let (iy, wy) = taps(y, sy, h);
        for x in 0..ow {
            let (ix, wx) = taps(x, sx, w);
            for ch in 0..c {
                let mut acc = 0.0;
                for (r, wr) in iy.iter().zip(wy) {
                    let row = &src[(ch * h + r) * w..];
                    acc += wr * (ix.iter().zip(wx)).map(|(&q, wq)| wq * row[q]).sum::<f64>();
                }
                out[(ch * oh + y) * ow + x] = acc;
            }
        }
    }
    (out, [oh, ow])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_sizes_follow_torchvision() {
        assert_eq!(resize_shorter_side(512, 512, 224, 480), [224, 224]);
        assert_eq!(resize_shorter_side(64, 96, 224, 480), [224, 336]);
        assert_eq!(resize_shorter_side(47, 61, 224, 480), [224, 290]);
        // 17 x 23: the long side 303 fits; 10 x 40 would be 896: capped.
        assert_eq!(resize_shorter_side(17, 23, 224, 480), [224, 303]);
        assert_eq!(resize_shorter_side(40, 10, 224, 480), [480, 120]);
    }

    #[test]
    fn resampling_keeps_constants_and_identity() {
        let flat = vec![3.5; 2 * 7 * 9];
        let r = resize_bilinear_aa(&flat, 2, [7, 9], [20, 4]);
        assert!(r.iter().all(|v| (v - 3.5).abs() < 1e-12));
        let ramp: Vec<f64> = (0..5 * 6).map(|i| i as f64).collect();
        let same = resize_bilinear_aa(&ramp, 1, [5, 6], [5, 6]);
        assert!(same.iter().zip(&ramp).all(|(a, b)| (a - b).abs() < 1e-12));
        let (up, size) = interpolate_bicubic(&flat, 2, [7, 9], [10.1 / 7.0, 9.1 / 9.0]);
        assert_eq!(size, [10, 9]);
        assert!(up.iter().all(|v| (v - 3.5).abs() < 1e-12));
    }
}
