// Staging of one K slice of a matmul's operands, shared by the two main loops
// (tile_core.wgsl and coop_core.wgsl, appended with them to gemm and conv).
// Each loop stores the values in its own layout and type; what they share is
// which element a load index e stands for and its value.
//
// The slice of A is TILE rows by BK k, that of B BK k by TILE columns
// (TILE and BK: the including loop's). Consecutive e walk the operand where it
// is contiguous: along its rows or columns when `fast` (A_M_FAST, B_N_FAST),
// else along k, so neighbouring invocations read neighbouring memory.

// (row or column in the tile, k in the slice) of load index e.
fn slice_at(e: u32, fast: u32) -> vec2<u32> {
    if (fast == 1u) {
        return vec2<u32>(e % TILE, e / TILE);
    }
    return vec2<u32>(e / BK, e % BK);
}

// A[bt, m, k], 0 outside the problem.
fn a_or_zero(bt: u32, m: u32, k: u32) -> f32 {
    if (m < p.m && k < p.k) {
        return load_a(bt, m, k);
    }
    return 0.0;
}

// B[bt, k, n], 0 outside the problem.
fn b_or_zero(bt: u32, k: u32, n: u32) -> f32 {
    if (n < p.n && k < p.k) {
        return load_b(bt, k, n);
    }
    return 0.0;
}
