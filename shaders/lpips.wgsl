// LPIPS's per-pixel distance of two feature maps a, b (C, H, W): each unit-
// normalised over its channels (norm sqrt(eps + sum_c f^2)), the squared
// difference weighted by the linear head w (C) and summed over channels.
// One invocation per pixel; the spatial mean is the caller's.

struct Params {
    c: u32,
    hw: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>;   // y: (H, W)
@group(0) @binding(2) var<storage, read> a: array<T>;         // a: (C, H, W)
@group(0) @binding(3) var<storage, read> b: array<T>;         // b: (C, H, W)
@group(0) @binding(4) var<storage, read> w: array<T>;         // w: (C)

@compute @workgroup_size(FLAT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.hw) {
        return;
    }
    var sa = 0.0;
    var sb = 0.0;
    for (var c = 0u; c < p.c; c++) {
        let va = f32(a[c * p.hw + i]);
        let vb = f32(b[c * p.hw + i]);
        sa += va * va;
        sb += vb * vb;
    }
    let na = sqrt(p.eps + sa);
    let nb = sqrt(p.eps + sb);
    var d = 0.0;
    for (var c = 0u; c < p.c; c++) {
        let diff = f32(a[c * p.hw + i]) / na - f32(b[c * p.hw + i]) / nb;
        d += f32(w[c]) * diff * diff;
    }
    y[i] = T(d);
}
