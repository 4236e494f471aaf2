// Row softmax with max subtraction, one workgroup per row.

struct Params {
    cols: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>; // y: (rows, cols)
@group(0) @binding(2) var<storage, read> x: array<T>;       // x: (rows, cols)

var<workgroup> partial: array<f32, WG>;

fn reduce(v: f32, tid: u32, is_max: bool) -> f32 {
    partial[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            if (is_max) {
                partial[tid] = max(partial[tid], partial[tid + s]);
            } else {
                partial[tid] += partial[tid + s];
            }
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let base = (wg.y * nwg.x + wg.x) * p.cols;
    var m = -3.0e38;
    for (var i = tid; i < p.cols; i += WG) {
        m = max(m, f32(x[base + i]));
    }
    m = reduce(m, tid, true);
    var s = 0.0;
    for (var i = tid; i < p.cols; i += WG) {
        s += exp(f32(x[base + i]) - m);
    }
    let inv = 1.0 / reduce(s, tid, false);
    for (var i = tid; i < p.cols; i += WG) {
        y[base + i] = T(exp(f32(x[base + i]) - m) * inv);
    }
}
