// Fused attention on cooperative matrices (tensor cores): softmax(Q K^T *
// scale [+ causal mask]) V with f16 operands and f32 accumulation, the
// score matrix never written to memory. Same tensors, layout and Params as
// attention.wgsl (one dispatch over all keys, no chunks).
//
// A workgroup of four subgroups (SG invocations each, generated) takes BQ =
// 4 * CT query rows of one head, CT rows per subgroup (CT = COOP, the
// cooperative tile side; the header declares MatA, MatB and MatC of it). Q, scaled, is staged once in workgroup memory as
// f16, its head dimension zero-padded to DP, a multiple of CT. Keys and
// values stream through workgroup memory in blocks of CT.
//
// A cooperative accumulator cannot be rescaled row by row (its layout is
// the driver's), so the online softmax's running correction is not
// available; the kernel takes two passes over the keys instead. Pass 1
// computes each block's scores (Q K^T on cooperative tiles, stored to
// workgroup memory) and keeps each row's running max and sum. Pass 2
// recomputes the scores, turns them into probabilities with the final max
// and sum (f16), and accumulates P V on DT = DP / CT cooperative tiles per
// subgroup. That is 3 products where the one-pass form has 2, all on the
// tensor cores.

struct Params {
    lq: u32, lk: u32, causal: u32, scale: f32,
    q_rs: u32, k_rs: u32, v_rs: u32, o_rs: u32,
    q_bs: u32, k_bs: u32, v_bs: u32, o_bs: u32,
    q_off: u32, k_off: u32, v_off: u32, o_off: u32,
    heads: u32, k_begin: u32, k_end: u32, first_last: u32,
}

const CT: u32 = COOP;
const SUBGROUPS: u32 = 4u;
const THREADS: u32 = SUBGROUPS * SG;
const BQ: u32 = SUBGROUPS * CT;                  // query rows per workgroup
const BC: u32 = CT;                              // keys per block
const DP: u32 = (HEAD_DIM + CT - 1u) / CT * CT;  // head dimension, padded
const DT: u32 = DP / CT;                         // cooperative tiles along it
const NEG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> o: array<T>; // o: (B, Lq, H*D)
@group(0) @binding(3) var<storage, read> q: array<T>;       // q: (B, Lq, H*D), strided
@group(0) @binding(4) var<storage, read> k: array<T>;       // k: (B, Lk, H*D), strided
@group(0) @binding(5) var<storage, read> v: array<T>;       // v: (B, Lk, H*D), strided

var<workgroup> q_sh: array<f16, BQ * DP>;          // [row][d], scaled
var<workgroup> k_sh: array<f16, BC * DP>;          // [key][d]
var<workgroup> v_sh: array<f16, BC * DP>;          // [key][d]
var<workgroup> s_sh: array<f32, BQ * BC>;          // scores [row][key]
var<workgroup> p_sh: array<f16, BQ * BC>;          // probabilities [row][key]
var<workgroup> stat: array<vec2<f32>, BQ>;         // (max, sum) per row
var<workgroup> o_sh: array<f32, SUBGROUPS * CT * CT>; // an output tile per subgroup

// Keys k0 .. k0 + BC of this head into k_sh (and v_sh), zero past k_end
// and past the head dimension.
fn stage_keys(b: u32, col: u32, k0: u32, k_end: u32, tid: u32, with_values: bool) {
    for (var e = tid; e < BC * DP; e += THREADS) {
        let j = k0 + e / DP;
        let d = e % DP;
        var kv = 0.0;
        var vv = 0.0;
        if (j < k_end && d < HEAD_DIM) {
            kv = f32(k[b * p.k_bs + j * p.k_rs + p.k_off + col + d]);
            if (with_values) {
                vv = f32(v[b * p.v_bs + j * p.v_rs + p.v_off + col + d]);
            }
        }
        k_sh[e] = f16(kv);
        if (with_values) {
            v_sh[e] = f16(vv);
        }
    }
}

// The scores of this subgroup's CT rows against the staged block of keys,
// Q K^T on cooperative tiles, into s_sh.
fn block_scores(row0: u32) {
    var s = MatC();
    for (var t = 0u; t < DT; t++) {
        let qa = coopLoadT<MatA>(&q_sh[row0 * DP + t * CT], DP);
        let kb = coopLoad<MatB>(&k_sh[t * CT], DP);
        s = coopMultiplyAdd(qa, kb, s);
    }
    // naga 30 needs a coopStore's index and stride as named values.
    let at = row0 * BC;
    let stride = BC;
    coopStoreT(s, &s_sh[at], stride);
}

// Whether key j counts for query row i.
fn visible(i: u32, j: u32, k_end: u32) -> bool {
    return j < k_end && (p.causal == 0u || j <= i);
}

@compute @workgroup_size(THREADS, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let b = wg.z;
    let col = wg.y * HEAD_DIM;
    let q0 = wg.x * BQ;
    let row0 = sg * CT; // this subgroup's first row in the block

    for (var e = tid; e < BQ * DP; e += THREADS) {
        let i = q0 + e / DP;
        let d = e % DP;
        var x = 0.0;
        if (i < p.lq && d < HEAD_DIM) {
            x = f32(q[b * p.q_bs + i * p.q_rs + p.q_off + col + d]) * p.scale;
        }
        q_sh[e] = f16(x);
    }
    for (var r = tid; r < BQ; r += THREADS) {
        stat[r] = vec2<f32>(NEG, 0.0);
    }
    // With the causal mask no row of this block sees keys past its last row.
    var k_end = p.lk;
    if (p.causal == 1u) {
        k_end = min(k_end, q0 + BQ);
    }

    // Pass 1: each row's max and sum over all keys.
    for (var k0 = 0u; k0 < k_end; k0 += BC) {
        stage_keys(b, col, k0, k_end, tid, false);
        workgroupBarrier();
        block_scores(row0);
        workgroupBarrier();
        for (var r = tid; r < BQ; r += THREADS) {
            let i = q0 + r;
            var block_max = NEG;
            for (var jj = 0u; jj < BC; jj++) {
                if (visible(i, k0 + jj, k_end)) {
                    block_max = max(block_max, s_sh[r * BC + jj]);
                }
            }
            if (block_max > NEG) {
                let st = stat[r];
                let m = max(st.x, block_max);
                var l = st.y * exp(st.x - m);
                for (var jj = 0u; jj < BC; jj++) {
                    if (visible(i, k0 + jj, k_end)) {
                        l += exp(s_sh[r * BC + jj] - m);
                    }
                }
                stat[r] = vec2<f32>(m, l);
            }
        }
        workgroupBarrier();
    }

    // Pass 2: P = exp(S - max) / sum, O += P V.
    var acc: array<MatC, DT>;
    for (var t = 0u; t < DT; t++) {
        acc[t] = MatC();
    }
    for (var k0 = 0u; k0 < k_end; k0 += BC) {
        stage_keys(b, col, k0, k_end, tid, true);
        workgroupBarrier();
        block_scores(row0);
        workgroupBarrier();
        for (var e = tid; e < BQ * BC; e += THREADS) {
            let r = e / BC;
            let st = stat[r];
            var pv = 0.0;
            if (visible(q0 + r, k0 + e % BC, k_end)) {
                pv = exp(s_sh[e] - st.x) / st.y;
            }
            p_sh[e] = f16(pv);
        }
        workgroupBarrier();
        let pa = coopLoadT<MatA>(&p_sh[row0 * BC], BC);
        for (var t = 0u; t < DT; t++) {
            let vb = coopLoadT<MatB>(&v_sh[t * CT], DP);
            acc[t] = coopMultiplyAdd(pa, vb, acc[t]);
        }
        workgroupBarrier();
    }

    // Out through workgroup memory, one tile of the head dimension at a time.
    let o_at = sg * CT * CT;
    let o_stride = CT;
    for (var t = 0u; t < DT; t++) {
        coopStoreT(acc[t], &o_sh[o_at], o_stride);
        workgroupBarrier();
        for (var e = tid; e < SUBGROUPS * CT * CT; e += THREADS) {
            let r = e / CT; // row in the block (subgroup-major, as o_sh is laid out)
            let d = t * CT + e % CT;
            let i = q0 + r;
            if (i < p.lq && d < HEAD_DIM) {
                o[b * p.o_bs + i * p.o_rs + p.o_off + col + d] = T(o_sh[e]);
            }
        }
        workgroupBarrier();
    }
}
