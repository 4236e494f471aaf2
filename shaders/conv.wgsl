// conv2d as an implicit GEMM (no im2col buffer): for each batch row bt,
//   M = C_out, N = H_out * W_out, K = C_in * KH * KW,
//   A = weight (C_out, C_in*KH*KW), B[k, n] = x gathered at the tap of (k, n).
// Padding is given per side (top, left); taps outside the image read 0, which
// also covers diffusers' asymmetric (0, 1, 0, 1) pad before the VAE's strided conv.
// CAT: the input is the channel concatenation of x (cin1 channels) and x2,
// read where they lie (a UNet up block's skip concat); only without chunks.
// Epilogue: + bias[c_out], + a per-row bias rowb[b, row_off + c_out] when
// HAS_ROW (a ResNet's time-embedding projection, one row per batch row,
// columns from row_off of a (B, row_stride) tensor holding every ResNet's),
// + residual (a ResNet's shortcut) when HAS_RES.
//
// A tensor larger than one binding is done in chunks, one batch row at a
// time: output channels m_base .. m_base + m, input channels ci_base ..
// ci_base + cin (of k_full / (KH*KW) in all). x, y and res are bound through
// windows that begin x_lead, y_lead and res_lead elements before the chunk;
// the weight and bias are bound whole. Input-channel chunks after the first
// add to y (ACCUMULATE); the bias goes in with the first, the residual with
// the last (flags).

struct Params {
    m: u32, n: u32, k: u32, cin: u32,
    h: u32, w: u32, wo: u32, kh: u32,
    kw: u32, stride: u32, pad_t: u32, pad_l: u32,
    x_lead: u32, y_lead: u32, res_lead: u32, m_base: u32,
    ci_base: u32, k_full: u32, flags: u32,
    row_off: u32, row_stride: u32, row_base: u32, cin1: u32,
}

const ADD_BIAS: u32 = 1u;
const ADD_RES: u32 = 2u;
const ACCUMULATE: u32 = 4u;

const B_N_FAST: u32 = 1u;
const A_M_FAST: u32 = 0u;

fn prepare(bt: u32, m0: u32, tid: u32) {}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>; // y: (B, C_out, H_out, W_out)
#if IM2COL
@group(0) @binding(2) var<storage, read> col: array<T>;     // col: (B, K, N), im2col.wgsl's
#else
@group(0) @binding(2) var<storage, read> x: array<T>;       // x: (B, C_in, H, W)
#endif
@group(0) @binding(3) var<storage, read> wt: array<T>;      // wt: (C_out, C_in, KH, KW)
@group(0) @binding(4) var<storage, read> bias: array<T>;    // bias: (C_out)
#if HAS_RES
@group(0) @binding(5) var<storage, read> res: array<T>;     // res: like y
#endif
#if HAS_ROW
@group(0) @binding(6) var<storage, read> rowb: array<T>;    // rowb: (B, row_stride)
#endif
#if CAT
@group(0) @binding(7) var<storage, read> x2: array<T>;      // x2: (B, C_in - cin1, H, W)
#endif

fn load_a(bt: u32, m: u32, k: u32) -> f32 {
    return f32(wt[(p.m_base + m) * p.k_full + p.ci_base * p.kh * p.kw + k]);
}

// The weight's cooperative tile at (m, k) straight from storage, row-major
// (coop_core.wgsl's DIRECT_A).
#if DIRECT_A
fn direct_a(bt: u32, m: u32, k: u32) -> MatA {
    let i = (p.m_base + m) * p.k_full + p.ci_base * p.kh * p.kw + k;
    let s = p.k_full;
    return coopLoadT<MatA>(&wt[i], s);
}
#endif

#if IM2COL
// IM2COL: B is the convolution's columns, written out by im2col.wgsl (or, for
// a 1x1 convolution of stride 1 without padding, x itself): row-major (K, N)
// per batch row, whole tiles of which the coop loop reads from storage.
fn load_b(bt: u32, k: u32, n: u32) -> f32 {
    return f32(col[(bt * p.k + k) * p.n + n]);
}

#if DIRECT_B
fn direct_b(bt: u32, k: u32, n: u32) -> MatB {
    let i = (bt * p.k + k) * p.n + n;
    let s = p.n;
    return coopLoadT<MatB>(&col[i], s);
}
#endif
#else
// The top-left input tap of the last output position n load_b was asked
// for. Both main loops stage B with B_N_FAST, where an invocation's column
// n stays the same through the whole K loop: the division by the output
// width is then paid once per invocation, not once per element.
var<private> memo_n: u32 = 0xffffffffu;
var<private> memo_tap: vec2<i32>;

fn load_b(bt: u32, k: u32, n: u32) -> f32 {
    if (n != memo_n) {
        memo_n = n;
        let oy = n / p.wo;
        let ox = n - oy * p.wo;
        memo_tap = vec2<i32>(i32(oy * p.stride) - i32(p.pad_t), i32(ox * p.stride) - i32(p.pad_l));
    }
    // KSIZE (generated): the kernel's side where it is square (3 or 1), so
    // that these divisions are by constants; 0: read p.kh and p.kw.
    var kw = p.kw;
    var taps = p.kh * p.kw;
    if (KSIZE != 0u) {
        kw = KSIZE;
        taps = KSIZE * KSIZE;
    }
    let ci = k / taps;
    let r = k - ci * taps;
    let ky = r / kw;
    let kx = r - ky * kw;
    let iy = memo_tap.x + i32(ky);
    let ix = memo_tap.y + i32(kx);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
#if CAT
    if (ci >= p.cin1) {
        return f32(x2[((bt * (p.cin - p.cin1) + ci - p.cin1) * p.h + u32(iy)) * p.w + u32(ix)]);
    }
    return f32(x[((bt * p.cin1 + ci) * p.h + u32(iy)) * p.w + u32(ix)]);
#else
    return f32(x[p.x_lead + ((bt * p.cin + ci) * p.h + u32(iy)) * p.w + u32(ix)]);
#endif
}
#endif

fn epilogue(bt: u32, m: u32, n0: u32, acc: vec4<f32>) {
    var b = 0.0;
    if ((p.flags & ADD_BIAS) != 0u) {
        b = f32(bias[p.m_base + m]);
#if HAS_ROW
        b += f32(rowb[(p.row_base + bt) * p.row_stride + p.row_off + p.m_base + m]);
#endif
    }
    for (var j = 0u; j < R; j++) {
        let n = n0 + TS * j;
        if (n < p.n) {
            let i = (bt * p.m + m) * p.n + n;
            var v = acc[j] + b;
            if ((p.flags & ACCUMULATE) != 0u) {
                v += f32(y[p.y_lead + i]);
            }
#if HAS_RES
            if ((p.flags & ADD_RES) != 0u) {
                v += f32(res[p.res_lead + i]);
            }
#endif
            y[p.y_lead + i] = T(v);
        }
    }
}
