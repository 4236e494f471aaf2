// Batched GEMM with fused epilogue:
//   C[bt, m, n] = act(sum_k A[bt, m, k] * B[bt, k, n] + bias[n]) + R[bt, m, n]
// A and B are addressed through strides, so A.B and A.B^T (a PyTorch Linear
// weight stored [N, K]) are the same kernel; B's batch stride is 0 for a
// weight shared by the batch.
//
// Variants: ACT (0 none, 1 gelu (erf), 2 quick_gelu, 3 silu, 4 geglu),
// HAS_BIAS, BIAS_ROWS (the bias is per row m, not per column n: a product
// written channel-major), HAS_RES, B_N_FAST (B contiguous along n).
// GEGLU expects the projection's rows interleaved in groups of 16 (hidden
// rows h, then gate rows g, per group; see ops::gemm::geglu_interleave): the
// thread holding columns tx + TS*j of a 64- or 32-tile then owns both halves
// of two pairs (h, g) and writes h * gelu(g) at half the column index (a
// 16-tile's thread does not: GEGLU never runs at 16).

// LN_A: A is read through a LayerNorm over its rows (width K), with gamma
// and beta (K): each workgroup first computes the mean and the inverse
// standard deviation of its 64 rows, two-pass as norm.wgsl does, and the A
// loads apply them, so the normalised tensor is never written. A_M_FAST: A
// is contiguous along m (read channel-major, ops::linear_tokens).

// A tensor larger than one binding is done in chunks of rows of one batch
// row at a time: a, c and res (and a batched b) are bound through windows,
// and a_off, b_off and c_off say where the chunk begins inside them.

struct Params {
    m: u32, n: u32, k: u32, n_out: u32,
    a_bs: u32, a_rs: u32, a_cs: u32, b_bs: u32,
    b_ks: u32, b_ns: u32, c_bs: u32, c_rs: u32,
    a_off: u32, b_off: u32, c_off: u32, ln_eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> c: array<T>; // c: (batch, M, N_out), row stride c_rs
@group(0) @binding(2) var<storage, read> a: array<T>;       // a: (batch, M, K), strided
@group(0) @binding(3) var<storage, read> b: array<T>;       // b: (batch|1, K, N), strided
#if HAS_BIAS
@group(0) @binding(4) var<storage, read> bias: array<T>;    // bias: (N), or (M) with BIAS_ROWS
#endif
#if HAS_RES
@group(0) @binding(5) var<storage, read> res: array<T>;     // res: like c
#endif

#if LN_A
@group(0) @binding(6) var<storage, read> ln_gamma: array<T>; // ln_gamma: (K)
@group(0) @binding(7) var<storage, read> ln_beta: array<T>;  // ln_beta: (K)

var<workgroup> ln_part: array<f32, 256>;
var<workgroup> ln_stat: array<vec2<f32>, 64>; // (mean, 1 / std) per row of the tile
var<private> ln_m0: u32;

fn raw_a(bt: u32, m: u32, k: u32) -> f32 {
    return f32(a[p.a_off + bt * p.a_bs + m * p.a_rs + k * p.a_cs]);
}

// LN_TPR threads per row of the tile: each sums every LN_TPR-th element,
// then each adds the row's partials in the same order.
const LN_TPR: u32 = THREADS / BM;

fn ln_row_sum(tid: u32, v: f32) -> f32 {
    ln_part[tid] = v;
    workgroupBarrier();
    let r = tid - tid % LN_TPR;
    var total = 0.0;
    for (var j = 0u; j < LN_TPR; j++) {
        total += ln_part[r + j];
    }
    workgroupBarrier();
    return total;
}

fn prepare(bt: u32, m0: u32, tid: u32) {
    ln_m0 = m0;
    let row = tid / LN_TPR;
    let lane = tid % LN_TPR;
    let m = m0 + row;
    var s = 0.0;
    if (m < p.m) {
        for (var k = lane; k < p.k; k += LN_TPR) {
            s += raw_a(bt, m, k);
        }
    }
    let mean = ln_row_sum(tid, s) / f32(p.k);
    var q = 0.0;
    if (m < p.m) {
        for (var k = lane; k < p.k; k += LN_TPR) {
            let d = raw_a(bt, m, k) - mean;
            q += d * d;
        }
    }
    let inv_std = inverseSqrt(ln_row_sum(tid, q) / f32(p.k) + p.ln_eps);
    if (lane == 0u) {
        ln_stat[row] = vec2<f32>(mean, inv_std);
    }
    workgroupBarrier();
}

fn load_a(bt: u32, m: u32, k: u32) -> f32 {
    let st = ln_stat[m - ln_m0];
    return (raw_a(bt, m, k) - st.x) * st.y * f32(ln_gamma[k]) + f32(ln_beta[k]);
}
#else
fn prepare(bt: u32, m0: u32, tid: u32) {}

fn load_a(bt: u32, m: u32, k: u32) -> f32 {
    return f32(a[p.a_off + bt * p.a_bs + m * p.a_rs + k * p.a_cs]);
}
#endif

fn load_b(bt: u32, k: u32, n: u32) -> f32 {
    return f32(b[p.b_off + bt * p.b_bs + k * p.b_ks + n * p.b_ns]);
}

// The cooperative tiles of A and B straight from storage (coop_core.wgsl's
// DIRECT_A, DIRECT_B): A is read row-major (along k) or, with A_M_FAST,
// column-major; B row-major (along n, B_N_FAST) or column-major (a Linear
// weight, along k). naga wants the index and the stride as named values.
#if DIRECT_A
fn direct_a(bt: u32, m: u32, k: u32) -> MatA {
    let i = p.a_off + bt * p.a_bs + m * p.a_rs + k * p.a_cs;
#if A_M_FAST
    let s = p.a_cs;
    return coopLoad<MatA>(&a[i], s);
#else
    let s = p.a_rs;
    return coopLoadT<MatA>(&a[i], s);
#endif
}
#endif
#if DIRECT_B
fn direct_b(bt: u32, k: u32, n: u32) -> MatB {
    let i = p.b_off + bt * p.b_bs + k * p.b_ks + n * p.b_ns;
#if B_N_FAST
    let s = p.b_ks;
    return coopLoadT<MatB>(&b[i], s);
#else
    let s = p.b_ns;
    return coopLoad<MatB>(&b[i], s);
#endif
}
#endif

fn activate(x: f32) -> f32 {
    if (ACT == 1u) {
        return gelu_erf(x);
    } else if (ACT == 2u) {
        return x / (1.0 + exp(-1.702 * x));
    } else if (ACT == 3u) {
        return x / (1.0 + exp(-x));
    }
    return x;
}

fn finish(bt: u32, m: u32, n: u32, x: f32) {
    var v = x;
#if HAS_RES
    v += f32(res[p.c_off + bt * p.c_bs + m * p.c_rs + n]);
#endif
    c[p.c_off + bt * p.c_bs + m * p.c_rs + n] = T(v);
}

fn epilogue(bt: u32, m: u32, n0: u32, acc: vec4<f32>) {
    var v = acc;
    for (var j = 0u; j < R; j++) {
        let n = n0 + TS * j;
#if HAS_BIAS
        if (n < p.n) {
            if (BIAS_ROWS == 1u) {
                v[j] += f32(bias[m]);
            } else {
                v[j] += f32(bias[n]);
            }
        }
#endif
    }
    if (ACT == 4u) {
        // The pairs (h, g) lie 16 columns apart: registers (0, 1) and (2, 3)
        // of a 64-tile (TS = 16), (0, 2) and (1, 3) of a 32-tile (TS = 8).
        for (var q = 0u; q < 2u; q++) {
            let hj = select(q, 2u * q, TS == 16u);
            let n = n0 + TS * hj;
            let out_col = (n / 32u) * 16u + (n % 16u);
            if (n < p.n && out_col < p.n_out) {
                finish(bt, m, out_col, v[hj] * gelu_erf(v[hj + 16u / TS]));
            }
        }
    } else {
        for (var j = 0u; j < R; j++) {
            let n = n0 + TS * j;
            if (n < p.n) {
                finish(bt, m, n, activate(v[j]));
            }
        }
    }
}
