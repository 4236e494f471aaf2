// The columns of a convolution's implicit GEMM, written out:
//   col[bt, k, n] = x[bt, ci, oy * stride + ky - pad_t, ox * stride + kx - pad_l]
// with k = (ci, ky, kx) and n = (oy, ox), 0 at taps in the padding. conv.wgsl's
// IM2COL variant then reads B as this row-major (K, N) matrix, which the
// cooperative-matrix loop loads as whole tiles straight from storage
// (coop_core.wgsl's DIRECT_B) instead of gathering every element.
// CAT: the input is the channel concatenation of x (cin1 channels) and x2.

struct Params {
    total: u32, k: u32, n: u32, cin: u32,
    h: u32, w: u32, wo: u32, kh: u32,
    kw: u32, stride: u32, pad_t: u32, pad_l: u32,
    cin1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> col: array<T>; // col: (B, K, N)
@group(0) @binding(2) var<storage, read> x: array<T>;         // x: (B, cin1, H, W)
#if CAT
@group(0) @binding(3) var<storage, read> x2: array<T>;        // x2: (B, cin - cin1, H, W)
#endif

@compute @workgroup_size(FLAT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.total) {
        return;
    }
    let n = i % p.n;
    let row = i / p.n;
    let k = row % p.k;
    let bt = row / p.k;
    let taps = p.kh * p.kw;
    let ci = k / taps;
    let r = k - ci * taps;
    let ky = r / p.kw;
    let kx = r - ky * p.kw;
    let oy = n / p.wo;
    let ox = n - oy * p.wo;
    let iy = i32(oy * p.stride + ky) - i32(p.pad_t);
    let ix = i32(ox * p.stride + kx) - i32(p.pad_l);
    var v = T(0.0);
    if (iy >= 0 && ix >= 0 && iy < i32(p.h) && ix < i32(p.w)) {
        let at = u32(iy) * p.w + u32(ix);
#if CAT
        if (ci >= p.cin1) {
            v = x2[(bt * (p.cin - p.cin1) + ci - p.cin1) * p.h * p.w + at];
        } else {
            v = x[(bt * p.cin1 + ci) * p.h * p.w + at];
        }
#else
        v = x[(bt * p.cin + ci) * p.h * p.w + at];
#endif
    }
    col[i] = v;
}
