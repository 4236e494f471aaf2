// Sinusoidal timestep embedding, as diffusers' get_timestep_embedding:
// arg_j = t * freq_j; [sin(arg), cos(arg)], or [cos, sin] with flip_sin_to_cos.
// The frequency table is computed on the host, rounded to f32 as PyTorch's
// float32 exp gives it. Arguments reach ~1000 rad, where a GPU's built-in
// sin/cos may be only 2^-11 accurate, so the reduction modulo pi/2 is done here
// in three parts (Cody-Waite) and sin/cos are minimax polynomials on
// [-pi/4, pi/4] (Cephes sinf/cosf coefficients).

struct Params {
    total: u32, // rows * dim
    dim: u32,
    half: u32,
    flip: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>;    // y: (N, dim)
@group(0) @binding(2) var<storage, read> t: array<f32>;        // t: (N) timesteps
@group(0) @binding(3) var<storage, read> freqs: array<f32>;    // freqs: (dim / 2)

fn sin_cos(x: f32) -> vec2<f32> {
    let k = round(x * 0.63661977236758134);
    var r = x - k * 1.5703125;
    r = r - k * 4.837512969970703125e-4;
    r = r - k * 7.54978995489188216e-8;
    let z = r * r;
    let s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * (-1.9515295891e-4)));
    let c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    let q = i32(k) & 3;
    if (q == 0) {
        return vec2<f32>(s, c);
    } else if (q == 1) {
        return vec2<f32>(c, -s);
    } else if (q == 2) {
        return vec2<f32>(-s, -c);
    }
    return vec2<f32>(-c, s);
}

@compute @workgroup_size(FLAT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.total) {
        return;
    }
    let row = i / p.dim;
    let c = i % p.dim;
    if (c >= 2u * p.half) {
        y[i] = T(0.0); // odd dim: zero pad, as diffusers does
        return;
    }
    let first = c < p.half;
    let j = select(c - p.half, c, first);
    let sc = sin_cos(t[row] * freqs[j]);
    // Unflipped: [sin, cos]; flipped: [cos, sin].
    let want_sin = first != (p.flip == 1u);
    y[i] = T(select(sc.y, sc.x, want_sin));
}
