// Elementwise ops. OP: 0 add, 1 mul (binary), 2 silu, 3 gelu (erf),
// 4 quick_gelu, 5 scale, 6 relu (unary).
// The second operand of a binary op broadcasts by index arithmetic:
// b index = b_off + ((i_base + i) / b_div) % b_mod. Same shape: div 1, mod n. A
// per-channel vector on NCHW: div H*W, mod C. A (B, C) time embedding added to a
// (B, C, H, W) map: div H*W, mod B*C. A last-dim vector: div 1, mod D.
// A tensor larger than one binding is done in chunks: this dispatch covers
// elements i_base .. i_base + n, and a and y are bound through windows that
// begin a_lead and y_lead elements before the chunk.

struct Params {
    n: u32,
    b_div: u32,
    b_mod: u32,
    alpha: f32,
    b_off: u32, // where b starts (a feature-store slot, say)
    i_base: u32,
    a_lead: u32,
    y_lead: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>; // y: like a
@group(0) @binding(2) var<storage, read> a: array<T>;       // a: any shape, n elements
#if BINARY
@group(0) @binding(3) var<storage, read> b: array<T>;       // b: broadcast to a
#endif

@compute @workgroup_size(FLAT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.n) {
        return;
    }
    let x = f32(a[p.a_lead + i]);
    var r = x;
#if BINARY
    let bv = f32(b[p.b_off + ((p.i_base + i) / p.b_div) % p.b_mod]);
    if (OP == 0u) {
        r = x + bv;
    } else {
        r = x * bv;
    }
#else
    if (OP == 2u) {
        r = x / (1.0 + exp(-x));
    } else if (OP == 3u) {
        r = gelu_erf(x);
    } else if (OP == 4u) {
        r = x / (1.0 + exp(-1.702 * x));
    } else if (OP == 5u) {
        r = x * p.alpha;
    } else if (OP == 6u) {
        r = max(x, 0.0);
    }
#endif
    y[p.y_lead + i] = T(r);
}
