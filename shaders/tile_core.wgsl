// Tiled matrix-multiply main loop shared by gemm.wgsl and conv.wgsl (appended
// to either; never a module of its own).
//
// C tile of TILE x TILE per workgroup of TS x TS threads (TS = TILE / 4);
// each thread owns a 4 x 4 register block at rows ty + TS*i and columns
// tx + TS*j, so neighbouring threads touch neighbouring columns (coalesced
// stores, conflict-free shared reads). K advances in slices of BK through
// workgroup memory. TILE is 64, or 32 for a problem whose 64-tiles would
// leave the GPU idle (four times the workgroups).
//
// The including family provides:
//   p.m, p.n, p.k                         problem size (uniform)
//   fn load_a(bt, m, k) -> f32            A[bt, m, k], called only in range
//   fn load_b(bt, k, n) -> f32            B[bt, k, n], called only in range
//   fn epilogue(bt, m, n0, v: vec4<f32>)  v = C[bt, m, n0 + TS*j], j = 0..3
//   const TILE: u32                       64 or 32 (generated)
//   fn prepare(bt, m0, tid)               once per workgroup before the loop
//                                         (gemm's fused LayerNorm statistics)
//   const B_N_FAST: u32                   1 if B is contiguous along n
//   const A_M_FAST: u32                   1 if A is contiguous along m

const BM: u32 = TILE;
const BN: u32 = TILE;
const BK: u32 = 16u;
const TS: u32 = TILE / 4u;       // threads per side
const THREADS: u32 = TS * TS;
const LOADS: u32 = BK * TILE / THREADS; // tile elements each thread loads

var<workgroup> a_tile: array<f32, 1024>; // [BK][BM]
var<workgroup> b_tile: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(TS, TS, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let bt = wg.z;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let tx = lid.x;
    let ty = lid.y;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    prepare(bt, m0, tid);

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // A slice: 64 rows x 16 k, in whichever order reads memory contiguously.
        for (var r = 0u; r < LOADS; r++) {
            let e = tid + r * THREADS;
            var mi: u32;
            var kk: u32;
            if (A_M_FAST == 1u) {
                kk = e / BM;
                mi = e % BM;
            } else {
                mi = e / BK;
                kk = e % BK;
            }
            let m = m0 + mi;
            let k = k0 + kk;
            var v = 0.0;
            if (m < p.m && k < p.k) {
                v = load_a(bt, m, k);
            }
            a_tile[kk * BM + mi] = v;
        }
        // B slice: 16 k x 64 columns, in whichever order reads memory contiguously.
        for (var r = 0u; r < LOADS; r++) {
            let e = tid + r * THREADS;
            var ni: u32;
            var kk: u32;
            if (B_N_FAST == 1u) {
                kk = e / BN;
                ni = e % BN;
            } else {
                ni = e / BK;
                kk = e % BK;
            }
            let n = n0 + ni;
            let k = k0 + kk;
            var v = 0.0;
            if (n < p.n && k < p.k) {
                v = load_b(bt, k, n);
            }
            b_tile[kk * BN + ni] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let ab = kk * BM + ty;
            let bb = kk * BN + tx;
            let a = vec4<f32>(a_tile[ab], a_tile[ab + TS], a_tile[ab + 2u * TS], a_tile[ab + 3u * TS]);
            let b = vec4<f32>(b_tile[bb], b_tile[bb + TS], b_tile[bb + 2u * TS], b_tile[bb + 3u * TS]);
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty + TS * i;
        if (m < p.m) {
            epilogue(bt, m, n0 + tx, acc[i]);
        }
    }
}
