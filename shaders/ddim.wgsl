// The diffusion loop's own arithmetic, so that a step never leaves the GPU
// (docs/ALGORITHM.md, "The loop on the GPU"). The latents live in a float32
// state buffer of slots, one latent each; a step reads one slot and writes
// the next. Slot and table offsets are uniform words that move with the step.
//
// ROWS = 1, entry `rows`: the UNet's inputs for one step. Row b of y is the
//   state slot at x_off, or, for the first src_rows rows, the source
//   trajectory's slot at src_off, times `scale`, in the storage type; with
//   TIMES, every row's timestep is the step table's entry at t_off (the VAE
//   decoder's input takes the rows alone).
// ROWS = 0, entry `update`: classifier-free guidance over GUIDE rows of the
//   UNet's output (1: none; 2: unconditional, conditional; 3: negative,
//   unconditional, conditional, mixed by the schedule), v-prediction turned
//   into epsilon when VPRED, then the DDIM update written to slot out_off.
//   The eight coefficients of a step, at coef_off:
//   [guidance, mix, v_a, v_b, c_eps, c_div, c_x0, c_dir], and the update is
//   x0 = (x - c_eps e) / c_div, x' = c_x0 x0 + c_dir e: the sampling step
//   and the inversion step are this form with different alphas, computed in
//   the order diffusers and the authors compute them.

struct Params {
    lat: u32,      // elements of one latent
    batch: u32,    // rows: UNet rows written
    src_rows: u32, // rows: leading rows taken from the source trajectory
    x_off: u32,    // state slot read (elements)
    src_off: u32,  // rows: source slot read (elements)
    t_off: u32,    // rows: step table entry; update: first coefficient
    out_off: u32,  // update: state slot written (elements)
    row0: u32,     // update: first UNet output row that guidance reads
    scale: f32,    // rows: factor applied to every element
    _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#if ROWS
@group(0) @binding(1) var<storage, read_write> y: array<T>;    // y: (batch, lat) UNet latents
#if TIMES
@group(0) @binding(2) var<storage, read_write> ts: array<f32>; // ts: (batch) timesteps
@group(0) @binding(4) var<storage, read> table: array<f32>;    // table: (steps) timesteps
#endif
@group(0) @binding(3) var<storage, read> state: array<f32>;    // state: (slots, lat)
#if SOURCE
@group(0) @binding(5) var<storage, read> source: array<f32>;   // source: (slots, lat)
#endif

@compute @workgroup_size(FLAT_WG)
fn rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.batch * p.lat) {
        return;
    }
#if TIMES
    if (i < p.batch) {
        ts[i] = table[p.t_off];
    }
#endif
    let b = i / p.lat;
    let e = i % p.lat;
    var v = state[p.x_off + e];
#if SOURCE
    if (b < p.src_rows) {
        v = source[p.src_off + e];
    }
#endif
    y[i] = T(v * p.scale);
}
#else
@group(0) @binding(1) var<storage, read_write> state: array<f32>; // state: (slots, lat)
@group(0) @binding(2) var<storage, read> out: array<T>;           // out: (rows, lat) UNet output
@group(0) @binding(3) var<storage, read> coef: array<f32>;        // coef: (steps, 8)

@compute @workgroup_size(FLAT_WG)
fn update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) tid: u32) {
    let i = flat_index(wg, nwg, tid);
    if (i >= p.lat) {
        return;
    }
    let c = p.t_off;
    let guidance = coef[c];
    let r = p.row0 * p.lat + i;
    var o = f32(out[r]);
    if (GUIDE == 2u) {
        let u = o;
        let t = f32(out[r + p.lat]);
        o = u + guidance * (t - u);
    } else if (GUIDE == 3u) {
        let mix = coef[c + 1u];
        let n = o;
        let u = f32(out[r + p.lat]);
        let t = f32(out[r + 2u * p.lat]);
        let base = mix * u + (1.0 - mix) * n;
        o = base + guidance * (t - base);
    }
    let x = state[p.x_off + i];
    var e = o;
    if (VPRED == 1u) {
        e = coef[c + 2u] * o + coef[c + 3u] * x;
    }
    let x0 = (x - coef[c + 4u] * e) / coef[c + 5u];
    state[p.out_off + i] = coef[c + 6u] * x0 + coef[c + 7u] * e;
}
#endif
