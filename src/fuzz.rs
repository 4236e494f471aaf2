//! The parsers of untrusted input, as functions of raw bytes: the fuzz
//! targets (`tools/fuzz`, cargo-fuzz) call them, and the `fuzz_corpus` test
//! replays the committed corpus through them on the stable toolchain. Each
//! may return any error; none may panic, abort or allocate without bound.

use crate::models::config::{ClipConfig, UnetConfig, VaeConfig, from_json};
use crate::models::ldm::{LdmOverrides, split_ldm_tensors};
use crate::models::weights::Weights;
use crate::pipeline::inversion::Inversion;
use crate::pipeline::scheduler::Ddim;
use crate::pipeline::store::{TapShapes, Taps};
use std::path::Path;
use std::sync::Arc;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, for the replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("config", config),
    ("ldm", ldm),
    ("inversion", inversion),
    ("image", image),
];

/// Values wider than this are not converted (the parse is still checked).
const CONVERT_LIMIT: usize = 1 << 20;

/// Every tensor of `w` asked for by name (dtype and finiteness checks), then
/// the summaries the loader prints.
fn read_all(w: &Weights) {
    let vb = w.root();
    for key in w.tensors.keys() {
        if let Ok(t) = vb.get_any(key)
            && t.numel() <= CONVERT_LIMIT
        {
            let _ = t.to_f32();
        }
    }
    let _ = (
        w.fingerprint(),
        w.parameter_count(),
        w.stored_dtype(),
        w.unused(),
    );
}

/// A safetensors file: header, tensor table, element checks.
pub fn safetensors(data: &[u8]) {
    let Ok(tensors) = Weights::parse_safetensors(Path::new("fuzz"), Arc::new(data.to_vec())) else {
        return;
    };
    for t in tensors.values() {
        let _ = (t.is_float(), t.stored_dtype());
        if t.is_float() {
            let _ = t.first_non_finite();
        }
    }
    read_all(&Weights::new("fuzz", tensors));
}

/// The config.json of each network and the scheduler's, then what is
/// derived from a config without a GPU (head counts, feature-tap shapes,
/// the timestep grids).
pub fn config(data: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let path = Path::new("fuzz");
    if let Ok(u) = from_json::<UnetConfig>(path, &json) {
        for i in 0..u.block_out_channels.len() {
            let _ = u.heads(i);
        }
        let _ = TapShapes::new(&Taps::pnp(), &u.block_out_channels, [8, 8]);
    }
    let _ = from_json::<VaeConfig>(path, &json);
    let _ = from_json::<ClipConfig>(path, &json);
    if let Ok(d) = Ddim::from_config(&json) {
        for n in [1, 2, 50, 999, d.num_train_timesteps()] {
            let _ = d.timesteps(n);
        }
        let _ = d.nearest_inversion_steps(45, 30);
        let _ = d.nearest_sampling_steps(4, 3);
    }
}

/// A single-file LDM checkpoint: the key mapping to diffusers' layout and
/// the configs detected from its shapes.
pub fn ldm(data: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    let Ok(tensors) = Weights::parse_safetensors(path, Arc::new(data.to_vec())) else {
        return;
    };
    let Ok(ck) = split_ldm_tensors(path, tensors, &LdmOverrides::default()) else {
        return;
    };
    let _ = from_json::<UnetConfig>(path, &ck.unet_config);
    let _ = from_json::<VaeConfig>(path, &ck.vae_config);
    let _ = from_json::<ClipConfig>(path, &ck.text_config);
    for w in [&ck.unet, &ck.vae, &ck.text] {
        read_all(w);
    }
}

/// An inversion file (`--load-inversion`): the first byte picks the image
/// size it is read for, the second the sampling steps it must serve.
pub fn inversion(data: &[u8]) {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let hw = [1 + (*a as usize & 15), 1 + (*a as usize >> 4)];
    let Ok(inv) = Inversion::from_safetensors("fuzz", rest, hw) else {
        return;
    };
    let _ = inv.check_covers(&Ddim::sd(), 1 + *b as usize);
    let _ = inv.check_fits([hw[0] * 8, hw[1] * 8], 4);
    let _ = inv.check_model("0000000000000000");
    let _ = inv.to_safetensors();
}

/// An input image: the first two bytes pick the requested width and height
/// (none, a multiple of 64, or anything), the rest is the file. Decoded
/// only at sizes that bound the work.
pub fn image(data: &[u8]) {
    let [w, h, rest @ ..] = data else {
        return;
    };
    let side = |b: u8| match b % 4 {
        0 => None,
        1 => Some(64 * (b as usize >> 2)),
        2 => Some(b as usize),
        _ => Some(1 << (b >> 2).min(40)),
    };
    let Ok(plan) = crate::picture::inspect("fuzz", rest, side(*w), side(*h)) else {
        return;
    };
    let small = plan.width * plan.height <= 256 * 256;
    let shown = plan.shown.0 as u64 * plan.shown.1 as u64;
    if small && shown <= 1 << 22 {
        let _ = crate::picture::decode_planned("fuzz", rest, &plan);
    }
}
