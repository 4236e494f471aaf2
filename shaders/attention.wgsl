// Fused attention, softmax(Q K^T * scale [+ causal mask]) V, without the score
// matrix: a workgroup of 64 invocations takes BQ query rows (64, 32 or 16,
// generated) with KS = 64 / BQ invocations per row. Each keeps the row's q
// and its own output accumulator in registers and takes every KS-th key of
// the tiles of BC keys and values streamed through workgroup memory, with the
// online softmax (running max and sum, rescaled once per tile); at the end
// the row's KS partial states are merged through workgroup memory. Fewer rows
// per workgroup is more workgroups and more invocations for short sequences
// (a 32x32 latent's self-attention), at the same workgroup size.
//
// Tensors are in the layout right after the q/k/v projections, (B, L, H*D)
// with head h in columns h*D .. h*D+D, addressed through row/batch strides and
// a column offset, so a fused QKV projection can be read in place and the
// output feeds the out-projection directly. HEAD_DIM is a compile-time
// variant (it sizes the register arrays).
//
// CHUNKED: keys [k_begin, k_end) only, carrying the running (max, sum, acc) of
// each row in `state` between dispatches; the dispatch with `last` set
// normalises and writes o. Used where a driver bounds the loop iterations of
// one invocation (llvmpipe stops every loop of an invocation after 65535
// iterations in total, silently); elsewhere one dispatch covers all keys.

struct Params {
    lq: u32, lk: u32, causal: u32, scale: f32,
    q_rs: u32, k_rs: u32, v_rs: u32, o_rs: u32,
    q_bs: u32, k_bs: u32, v_bs: u32, o_bs: u32,
    q_off: u32, k_off: u32, v_off: u32, o_off: u32,
    heads: u32, k_begin: u32, k_end: u32, first_last: u32, // first_last: bit 0 first chunk, bit 1 last
}

const THREADS: u32 = 64u;
const KS: u32 = THREADS / BQ; // invocations (key lanes) per query row
const BC: u32 = 16u;
const NEG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> o: array<T>; // o: (B, Lq, H*D)
#if CHUNKED
@group(0) @binding(2) var<storage, read_write> state: array<f32>; // state: (B, H, Lq, D + 2): max, sum, acc
#endif
@group(0) @binding(3) var<storage, read> q: array<T>;       // q: (B, Lq, H*D), strided
@group(0) @binding(4) var<storage, read> k: array<T>;       // k: (B, Lk, H*D), strided
@group(0) @binding(5) var<storage, read> v: array<T>;       // v: (B, Lk, H*D), strided

var<workgroup> k_tile: array<f32, BC * HEAD_DIM>;
var<workgroup> v_tile: array<f32, BC * HEAD_DIM>;
var<workgroup> merge_ml: array<vec2<f32>, 32>; // (max, sum) of the lane being merged, per row

// The k and v tiles, end to end, hold one lane's accumulators (BQ rows of
// HEAD_DIM, BQ <= 32 whenever KS > 1) while the lanes merge.
fn stash(e: u32, x: f32) {
    if (e < BC * HEAD_DIM) {
        k_tile[e] = x;
    } else {
        v_tile[e - BC * HEAD_DIM] = x;
    }
}

fn unstash(e: u32) -> f32 {
    if (e < BC * HEAD_DIM) {
        return k_tile[e];
    }
    return v_tile[e - BC * HEAD_DIM];
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let b = wg.z;
    let col = wg.y * HEAD_DIM;
    let row = tid / KS;
    let lane = tid % KS;
    let i = wg.x * BQ + row;
    let live = i < p.lq;

    var qr: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    if (live) {
        let qb = b * p.q_bs + i * p.q_rs + p.q_off + col;
        for (var d = 0u; d < HEAD_DIM; d++) {
            qr[d] = f32(q[qb + d]) * p.scale;
            acc[d] = 0.0;
        }
    }
    var m = NEG;
    var l = 0.0;
#if CHUNKED
    let sb = ((b * p.heads + wg.y) * p.lq + i) * (HEAD_DIM + 2u);
    // The carried state goes to lane 0; the other lanes start empty.
    if (live && lane == 0u && (p.first_last & 1u) == 0u) {
        m = state[sb];
        l = state[sb + 1u];
        for (var d = 0u; d < HEAD_DIM; d++) {
            acc[d] = state[sb + 2u + d];
        }
    }
#endif

    // With the causal mask no query of this workgroup sees keys past its last row.
    var k_end = p.k_end;
    if (p.causal == 1u) {
        k_end = min(k_end, (wg.x + 1u) * BQ);
    }
    for (var k0 = p.k_begin; k0 < k_end; k0 += BC) {
        for (var e = tid; e < BC * HEAD_DIM; e += THREADS) {
            let j = k0 + e / HEAD_DIM;
            let d = e % HEAD_DIM;
            var kv = 0.0;
            var vv = 0.0;
            if (j < k_end) {
                kv = f32(k[b * p.k_bs + j * p.k_rs + p.k_off + col + d]);
                vv = f32(v[b * p.v_bs + j * p.v_rs + p.v_off + col + d]);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();
        if (live) {
            var s: array<f32, BC>;
            var tile_max = NEG;
            for (var jj = lane; jj < BC; jj += KS) {
                let j = k0 + jj;
                var sv = NEG;
                if (j < k_end && (p.causal == 0u || j <= i)) {
                    sv = 0.0;
                    for (var d = 0u; d < HEAD_DIM; d++) {
                        sv += qr[d] * k_tile[jj * HEAD_DIM + d];
                    }
                }
                s[jj] = sv;
                tile_max = max(tile_max, sv);
            }
            if (tile_max > NEG) {
                let m_new = max(m, tile_max);
                let corr = exp(m - m_new);
                l *= corr;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    acc[d] *= corr;
                }
                for (var jj = lane; jj < BC; jj += KS) {
                    if (s[jj] > NEG) {
                        let pj = exp(s[jj] - m_new);
                        l += pj;
                        for (var d = 0u; d < HEAD_DIM; d++) {
                            acc[d] += pj * v_tile[jj * HEAD_DIM + d];
                        }
                    }
                }
                m = m_new;
            }
        }
        workgroupBarrier();
    }

    // Lane 0 of each row takes in the other lanes' (max, sum, acc), one lane
    // at a time (uniform control flow: KS is a constant).
    for (var r = 1u; r < KS; r++) {
        if (live && lane == r) {
            merge_ml[row] = vec2<f32>(m, l);
            for (var d = 0u; d < HEAD_DIM; d++) {
                stash(row * HEAD_DIM + d, acc[d]);
            }
        }
        workgroupBarrier();
        if (live && lane == 0u) {
            let other = merge_ml[row];
            let m_new = max(m, other.x);
            let c_own = exp(m - m_new);
            let c_other = exp(other.x - m_new);
            l = l * c_own + other.y * c_other;
            for (var d = 0u; d < HEAD_DIM; d++) {
                acc[d] = acc[d] * c_own + unstash(row * HEAD_DIM + d) * c_other;
            }
            m = m_new;
        }
        workgroupBarrier();
    }

#if CHUNKED
    if ((p.first_last & 2u) == 0u) {
        if (live && lane == 0u) {
            state[sb] = m;
            state[sb + 1u] = l;
            for (var d = 0u; d < HEAD_DIM; d++) {
                state[sb + 2u + d] = acc[d];
            }
        }
        return;
    }
#endif
    if (live && lane == 0u) {
        let inv = 1.0 / l;
        let ob = b * p.o_bs + i * p.o_rs + p.o_off + col;
        for (var d = 0u; d < HEAD_DIM; d++) {
            o[ob + d] = T(acc[d] * inv);
        }
    }
}
