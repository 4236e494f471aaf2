// Group norm and layer norm, one workgroup per normalised run of elements.
// In NCHW the channels of a group are contiguous, so group gid of a group norm
// is the run x[gid * n .. (gid + 1) * n] with n = (C / G) * H * W. A layer
// norm over rows of width D is the same computation with hw = 1, cpg = D and
// one group per row.
// Mean and variance are computed in two passes (mean first, then the mean of
// squared deviations) so large offsets do not cancel. Optional fused SiLU.
// CAT: x is the channel concatenation of x (c1 channels) and x2 (the rest),
// read from both where they lie (a UNet up block's skip concat, never
// written); only without chunks.
// A tensor larger than one binding is done in chunks of whole groups: this
// dispatch covers groups gid_base.., and x and y are bound through windows
// that begin x_lead and y_lead elements before its first group.

struct Params {
    n: u32,      // elements per group
    hw: u32,     // elements per channel
    cpg: u32,    // channels per group
    groups: u32, // groups per batch row (G); 1 for a layer norm
    eps: f32,
    gid_base: u32,
    x_lead: u32,
    y_lead: u32,
    c1: u32,     // CAT: channels of the first part
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>; // y: like x
@group(0) @binding(2) var<storage, read> x: array<T>;       // x: (B, C, H, W) or (rows, D)
@group(0) @binding(3) var<storage, read> gamma: array<T>;   // gamma: (C)
@group(0) @binding(4) var<storage, read> beta: array<T>;    // beta: (C)

#if CAT
@group(0) @binding(5) var<storage, read> x2: array<T>;      // x2: (B, C - c1, H, W)
#endif

var<workgroup> partial: array<f32, WG>;

// Element i of the (concatenated) input.
fn read_x(i: u32) -> f32 {
#if CAT
    let c_all = p.groups * p.cpg;
    let b = i / (c_all * p.hw);
    let c = (i / p.hw) % c_all;
    let px = i % p.hw;
    if (c < p.c1) {
        return f32(x[(b * p.c1 + c) * p.hw + px]);
    }
    return f32(x2[(b * (c_all - p.c1) + c - p.c1) * p.hw + px]);
#else
    return f32(x[i]);
#endif
}

fn workgroup_sum(v: f32, tid: u32) -> f32 {
    partial[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            partial[tid] += partial[tid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let local = wg.y * nwg.x + wg.x;
    let gid = p.gid_base + local;
    let base = p.x_lead + local * p.n;
    let out = p.y_lead + local * p.n;

    var s = 0.0;
    for (var i = tid; i < p.n; i += WG) {
        s += read_x(base + i);
    }
    let mean = workgroup_sum(s, tid) / f32(p.n);

    var q = 0.0;
    for (var i = tid; i < p.n; i += WG) {
        let d = read_x(base + i) - mean;
        q += d * d;
    }
    let inv_std = inverseSqrt(workgroup_sum(q, tid) / f32(p.n) + p.eps);

    let c0 = (gid % p.groups) * p.cpg;
    for (var i = tid; i < p.n; i += WG) {
        let c = c0 + i / p.hw;
        var v = (read_x(base + i) - mean) * inv_std * f32(gamma[c]) + f32(beta[c]);
        if (SILU == 1u) {
            v = v / (1.0 + exp(-v));
        }
        y[out + i] = T(v);
    }
}
