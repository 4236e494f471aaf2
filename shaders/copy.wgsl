// Strided 4-d copy: y[dst_off + sum_d i_d * dst_s_d] = x[src_off + sum_d i_d * src_s_d]
// over the index space (n0, n1, n2, n3). Layout transforms ((B, C, HW) to
// (B, HW, C)), channel concatenation (one copy per input into its slice) and
// slicing are all this kernel with different strides.

struct Params {
    n0: u32, n1: u32, n2: u32, n3: u32,
    s0: u32, s1: u32, s2: u32, s3: u32,
    d0: u32, d1: u32, d2: u32, d3: u32,
    src_off: u32, dst_off: u32, total: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>; // y: destination, strided
@group(0) @binding(2) var<storage, read> x: array<T>;       // x: source, strided

@compute @workgroup_size(FLAT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.total) {
        return;
    }
    let i3 = i % p.n3;
    let r2 = i / p.n3;
    let i2 = r2 % p.n2;
    let r1 = r2 / p.n2;
    let i1 = r1 % p.n1;
    let i0 = r1 / p.n1;
    let src = p.src_off + i0 * p.s0 + i1 * p.s1 + i2 * p.s2 + i3 * p.s3;
    let dst = p.dst_off + i0 * p.d0 + i1 * p.d1 + i2 * p.d2 + i3 * p.d3;
    y[dst] = x[src];
}
