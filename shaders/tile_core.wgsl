// Tiled matrix-multiply main loop shared by gemm.wgsl and conv.wgsl (appended
// to either; never a module of its own).
//
// C tile of BM x BN per workgroup of 16 x 16 threads; each thread owns a 4 x 4
// register block at rows ty + 16*i and columns tx + 16*j, so neighbouring
// threads touch neighbouring columns (coalesced stores, conflict-free shared
// reads). K advances in slices of BK through workgroup memory.
//
// The including family provides:
//   p.m, p.n, p.k                         problem size (uniform)
//   fn load_a(bt, m, k) -> f32            A[bt, m, k], called only in range
//   fn load_b(bt, k, n) -> f32            B[bt, k, n], called only in range
//   fn epilogue(bt, m, n0, v: vec4<f32>)  v = C[bt, m, n0 + 16*j], j = 0..3
//   fn prepare(bt, m0, tid)               once per workgroup before the loop
//                                         (gemm's fused LayerNorm statistics)
//   const B_N_FAST: u32                   1 if B is contiguous along n
//   const A_M_FAST: u32                   1 if A is contiguous along m

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [BK][BM]
var<workgroup> b_tile: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16, 1)
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
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
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
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
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
            let a = vec4<f32>(a_tile[ab], a_tile[ab + 16u], a_tile[ab + 32u], a_tile[ab + 48u]);
            let b = vec4<f32>(b_tile[bb], b_tile[bb + 16u], b_tile[bb + 32u], b_tile[bb + 48u]);
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty + 16u * i;
        if (m < p.m) {
            epilogue(bt, m, n0 + tx, acc[i]);
        }
    }
}
