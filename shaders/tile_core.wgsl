// Tiled matrix-multiply main loop shared by gemm.wgsl and conv.wgsl (appended
// to either; never a module of its own).
//
// C tile of TILE x TILE per workgroup of TS x TS threads; each thread owns an
// R x R register block (R = TILE / TS) at rows ty + TS*i and columns
// tx + TS*j, so neighbouring threads touch neighbouring columns (coalesced
// stores, conflict-free shared reads). K advances in slices of BK through
// workgroup memory. TILE is 64 (16 x 16 threads of 4 x 4), or, for a problem
// whose larger tiles would leave the GPU idle, 32 (8 x 8 threads of 4 x 4) or
// 16 (8 x 8 threads of 2 x 2): every variant keeps at least 64 threads, so a
// smaller tile means more threads in flight, not emptier workgroups.
//
// The including family provides:
//   p.m, p.n, p.k                         problem size (uniform)
//   fn load_a(bt, m, k) -> f32            A[bt, m, k], called only in range
//   fn load_b(bt, k, n) -> f32            B[bt, k, n], called only in range
//   fn epilogue(bt, m, n0, v: vec4<f32>)  v[j] = C[bt, m, n0 + TS*j] for j < R
//   const TILE: u32                       64, 32 or 16 (generated)
//   fn prepare(bt, m0, tid)               once per workgroup before the loop
//                                         (gemm's fused LayerNorm statistics)
//   const B_N_FAST: u32                   1 if B is contiguous along n
//   const A_M_FAST: u32                   1 if A is contiguous along m
//
// F16_MATH (generated; f16 storage on an adapter with shader-f16 and no
// cooperative matrices): the tiles hold f16 and the products are f16 fused
// multiply-adds, summed in f16 over one K slice (BK = 16 terms) and then
// added to the f32 accumulators, so long sums still accumulate in f32.

const BM: u32 = TILE;
const BN: u32 = TILE;
const BK: u32 = 16u;
const TS: u32 = select(8u, 16u, TILE == 64u); // threads per side
const R: u32 = TILE / TS;                       // register block side: 4 or 2
const THREADS: u32 = TS * TS;
const LOADS: u32 = BK * TILE / THREADS; // tile elements each thread loads

#if F16_MATH
alias TileT = f16;
#else
alias TileT = f32;
#endif
var<workgroup> a_tile: array<TileT, 1024>; // [BK][BM]
var<workgroup> b_tile: array<TileT, 1024>; // [BK][BN]

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
        // The A and B slices (slice.wgsl), LOADS elements per invocation.
        for (var r = 0u; r < LOADS; r++) {
            let e = tid + r * THREADS;
            let a = slice_at(e, A_M_FAST);
            a_tile[a.y * BM + a.x] = TileT(a_or_zero(bt, m0 + a.x, k0 + a.y));
            let b = slice_at(e, B_N_FAST);
            b_tile[b.y * BN + b.x] = TileT(b_or_zero(bt, k0 + b.y, n0 + b.x));
        }
        workgroupBarrier();
#if F16_MATH
        var part = array<vec4<f16>, 4>();
#endif
        for (var kk = 0u; kk < BK; kk++) {
            let ab = kk * BM + ty;
            let bb = kk * BN + tx;
            var a = vec4<TileT>();
            var b = vec4<TileT>();
            for (var r = 0u; r < R; r++) {
                a[r] = a_tile[ab + r * TS];
                b[r] = b_tile[bb + r * TS];
            }
            for (var i = 0u; i < R; i++) {
#if F16_MATH
                if (R == 4u) {
                    part[i] = fma(vec4<f16>(a[i]), b, part[i]);
                } else {
                    for (var j = 0u; j < R; j++) {
                        part[i][j] = fma(a[i], b[j], part[i][j]);
                    }
                }
#else
                if (R == 4u) {
                    acc[i] += a[i] * b;
                } else {
                    for (var j = 0u; j < R; j++) {
                        acc[i][j] += a[i] * b[j];
                    }
                }
#endif
            }
        }
#if F16_MATH
        for (var i = 0u; i < R; i++) {
            acc[i] += vec4<f32>(part[i]);
        }
#endif
        workgroupBarrier();
    }

    for (var i = 0u; i < R; i++) {
        let m = m0 + ty + TS * i;
        if (m < p.m) {
            epilogue(bt, m, n0 + tx, acc[i]);
        }
    }
}
