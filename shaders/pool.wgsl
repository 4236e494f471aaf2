// Max pooling of (B, C, H, W) planes, as torch.nn.MaxPool2d(k, stride s,
// padding 0): output (B, C, OH, OW); a window that runs past the input's
// edge (ceil_mode) takes the maximum of the pixels it covers.

struct Params {
    total: u32, // B * C * OH * OW
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    s: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>; // y: (B, C, OH, OW)
@group(0) @binding(2) var<storage, read> x: array<T>;       // x: (B, C, H, W)

@compute @workgroup_size(FLAT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.total) {
        return;
    }
    let ox = i % p.ow;
    let oy = (i / p.ow) % p.oh;
    let plane = i / (p.ow * p.oh);
    let y0 = oy * p.s;
    let x0 = ox * p.s;
    let y1 = min(y0 + p.k, p.h);
    let x1 = min(x0 + p.k, p.w);
    let base = plane * p.h * p.w;
    var m = f32(x[base + y0 * p.w + x0]);
    for (var yy = y0; yy < y1; yy++) {
        for (var xx = x0; xx < x1; xx++) {
            m = max(m, f32(x[base + yy * p.w + xx]));
        }
    }
    y[i] = T(m);
}
