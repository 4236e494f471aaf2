// conv2d as an implicit GEMM (no im2col buffer): for each batch row bt,
//   M = C_out, N = H_out * W_out, K = C_in * KH * KW,
//   A = weight (C_out, C_in*KH*KW), B[k, n] = x gathered at the tap of (k, n).
// Padding is given per side (top, left); taps outside the image read 0, which
// also covers diffusers' asymmetric (0, 1, 0, 1) pad before the VAE's strided conv.
// Epilogue: + bias[c_out], + residual (a ResNet's shortcut) when HAS_RES.

struct Params {
    m: u32, n: u32, k: u32, cin: u32,
    h: u32, w: u32, wo: u32, kh: u32,
    kw: u32, stride: u32, pad_t: u32, pad_l: u32,
}

const B_N_FAST: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>; // y: (B, C_out, H_out, W_out)
@group(0) @binding(2) var<storage, read> x: array<T>;       // x: (B, C_in, H, W)
@group(0) @binding(3) var<storage, read> wt: array<T>;      // wt: (C_out, C_in, KH, KW)
@group(0) @binding(4) var<storage, read> bias: array<T>;    // bias: (C_out)
#if HAS_RES
@group(0) @binding(5) var<storage, read> res: array<T>;     // res: like y
#endif

fn load_a(bt: u32, m: u32, k: u32) -> f32 {
    return f32(wt[m * p.k + k]);
}

fn load_b(bt: u32, k: u32, n: u32) -> f32 {
    let taps = p.kh * p.kw;
    let ci = k / taps;
    let r = k % taps;
    let ky = r / p.kw;
    let kx = r % p.kw;
    let oy = n / p.wo;
    let ox = n % p.wo;
    let iy = i32(oy * p.stride + ky) - i32(p.pad_t);
    let ix = i32(ox * p.stride + kx) - i32(p.pad_l);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return f32(x[((bt * p.cin + ci) * p.h + u32(iy)) * p.w + u32(ix)]);
}

fn epilogue(bt: u32, m: u32, n0: u32, acc: vec4<f32>) {
    let b = f32(bias[m]);
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + 16u * j;
        if (n < p.n) {
            let i = (bt * p.m + m) * p.n + n;
            var v = acc[j] + b;
#if HAS_RES
            v += f32(res[i]);
#endif
            y[i] = T(v);
        }
    }
}
