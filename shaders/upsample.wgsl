// Nearest-neighbour 2x upsampling of (B, C, H, W), as F.interpolate(scale_factor=2.0, mode="nearest").

// A tensor larger than one binding is done in chunks of whole (b, c) planes,
// x and y bound through windows that begin x_lead and y_lead elements before
// the chunk.

struct Params {
    total: u32, // planes in this dispatch * 2H * 2W
    h: u32,
    w: u32,
    x_lead: u32,
    y_lead: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>; // y: (B, C, 2H, 2W)
@group(0) @binding(2) var<storage, read> x: array<T>;       // x: (B, C, H, W)

@compute @workgroup_size(FLAT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.total) {
        return;
    }
    let w2 = 2u * p.w;
    let ox = i % w2;
    let oy = (i / w2) % (2u * p.h);
    let bc = i / (w2 * 2u * p.h);
    y[p.y_lead + i] = x[p.x_lead + (bc * p.h + oy / 2u) * p.w + ox / 2u];
}
