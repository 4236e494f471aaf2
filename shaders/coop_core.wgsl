// Matrix-multiply main loop on cooperative matrices (tensor cores), shared by
// gemm.wgsl and conv.wgsl in place of tile_core.wgsl where the adapter has
// them and the storage is f16 (never a module of its own).
//
// The workgroup computes a TILE x TILE block of C with four subgroups of SG
// invocations (SG: the adapter's subgroup size, generated), in a 2 x 2
// arrangement; each subgroup owns RT x RT cooperative tiles of CT x CT (CT =
// COOP: 16 where the adapter lists 16x16x16 f16 -> f32, else 8), so
// TILE = 2 * RT * CT. K advances in slices of BK = 2 * CT: every invocation
// helps stage the slice of A (TILE x BK) and of B (BK x TILE) in workgroup
// memory as f16 (slice.wgsl), through the family's load_a / load_b (so an implicit-GEMM
// gather, a fused LayerNorm or a concatenation reads exactly as in the
// fallback), then each subgroup multiplies its tiles with f32 accumulators.
// At the end the accumulators go through workgroup memory to the family's
// epilogue, called as tile_core calls it from a 64- or 32-tile (TS = TILE / 4
// columns apart, R = 4), so bias, activation, GEGLU pairs and residual are the
// same code.
//
// The including family provides what tile_core.wgsl lists, with TILE the
// block side (2 * RT * CT, generated) and COOP and SG generated; the header
// declares the cooperative types MatA, MatB (f16) and MatC (f32) of side COOP.

const CT: u32 = COOP;
const BM: u32 = TILE;
const BN: u32 = TILE;
const BK: u32 = 2u * CT;
const RT: u32 = TILE / (2u * CT); // cooperative tiles per subgroup side: 1 or 2
const SUBGROUPS: u32 = 4u;
const THREADS: u32 = SUBGROUPS * SG;
const TS: u32 = TILE / 4u; // the epilogue's column spacing
const R: u32 = 4u;

var<workgroup> a_sh: array<f16, BM * BK>; // [m][k]
var<workgroup> b_sh: array<f16, BK * BN>; // [k][n]
var<workgroup> c_sh: array<f32, BM * BN>; // [m][n]

// DIRECT_A, DIRECT_B (generated, for operands the family can hand over as
// whole cooperative tiles straight from storage: contiguous along k or
// along m / n, every side a multiple of CT, aligned): that operand is not
// staged; each subgroup loads its tiles from storage (the device's caches
// serve the reuse). The family then provides direct_a(bt, m, k) -> MatA
// and direct_b(bt, k, n) -> MatB, the CT x CT tile at (m, k) or (k, n).
// Tiles wholly past the problem's edge (a block hanging over M or N) load
// the last tile inside instead; the epilogue drops their results.
const STAGED: bool = DIRECT_A == 0u || DIRECT_B == 0u;

// This subgroup's A tile at block row r (0 or CT) of k slice offset ks.
fn tile_a(bt: u32, m0: u32, sm: u32, k0: u32, ks: u32) -> MatA {
#if DIRECT_A
    let m = min(m0 + sm, p.m - CT);
    return direct_a(bt, m, k0 + ks);
#else
    let i = sm * BK + ks;
    return coopLoadT<MatA>(&a_sh[i], BK);
#endif
}

fn tile_b(bt: u32, n0: u32, sn: u32, k0: u32, ks: u32) -> MatB {
#if DIRECT_B
    let n = min(n0 + sn, p.n - CT);
    return direct_b(bt, k0 + ks, n);
#else
    let i = ks * BN + sn;
    return coopLoadT<MatB>(&b_sh[i], BN);
#endif
}

@compute @workgroup_size(THREADS, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let bt = wg.z;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    // This subgroup's corner inside the block. Cooperative operations need
    // uniform control flow across the workgroup, so every subgroup computes:
    // the device uses this loop only where the subgroup size is fixed (its
    // minimum and maximum agree), so the workgroup is exactly 4 subgroups.
    let sm = (sg / 2u) * RT * CT;
    let sn = (sg % 2u) * RT * CT;
    var c00 = MatC();
    var c01 = MatC();
    var c10 = MatC();
    var c11 = MatC();
    prepare(bt, m0, tid);

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
#if DIRECT_A == 0
        for (var e = tid; e < BM * BK; e += THREADS) {
            let at = slice_at(e, A_M_FAST);
            a_sh[at.x * BK + at.y] = f16(a_or_zero(bt, m0 + at.x, k0 + at.y));
        }
#endif
#if DIRECT_B == 0
        for (var e = tid; e < BK * BN; e += THREADS) {
            let at = slice_at(e, B_N_FAST);
            b_sh[at.y * BN + at.x] = f16(b_or_zero(bt, k0 + at.y, n0 + at.x));
        }
#endif
        if (STAGED) {
            workgroupBarrier();
        }
        // A direct K slice may end inside this one (K a multiple of CT, not
        // of BK); a staged slice is zero there. (A loop bound, not an `if`:
        // naga's uniformity analysis does not follow values through `var`s.)
        let k_end = min(BK, p.k - k0);
        for (var ks = 0u; ks < k_end; ks += CT) {
            let a0 = tile_a(bt, m0, sm, k0, ks);
            let b0 = tile_b(bt, n0, sn, k0, ks);
            c00 = coopMultiplyAdd(a0, b0, c00);
            if (RT == 2u) {
                let a1 = tile_a(bt, m0, sm + CT, k0, ks);
                let b1 = tile_b(bt, n0, sn + CT, k0, ks);
                c01 = coopMultiplyAdd(a0, b1, c01);
                c10 = coopMultiplyAdd(a1, b0, c10);
                c11 = coopMultiplyAdd(a1, b1, c11);
            }
        }
        if (STAGED) {
            workgroupBarrier();
        }
    }

    // naga 30 needs the index and the stride of a coopStore as named values.
    let stride = BN;
    let i00 = sm * BN + sn;
    coopStoreT(c00, &c_sh[i00], stride);
    if (RT == 2u) {
        let i01 = i00 + CT;
        let i10 = i00 + CT * BN;
        let i11 = i10 + CT;
        coopStoreT(c01, &c_sh[i01], stride);
        coopStoreT(c10, &c_sh[i10], stride);
        coopStoreT(c11, &c_sh[i11], stride);
    }
    workgroupBarrier();
    for (var e = tid; e < BM * TS; e += THREADS) {
        let mi = e / TS;
        let c = e % TS;
        let m = m0 + mi;
        if (m < p.m) {
            let row = mi * BN + c;
            let v = vec4<f32>(c_sh[row], c_sh[row + TS], c_sh[row + 2u * TS], c_sh[row + 3u * TS]);
            epilogue(bt, m, n0 + c, v);
        }
    }
}
