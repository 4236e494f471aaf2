//! A whole Stable Diffusion checkpoint: text encoder, UNet and VAE loaded
//! onto the device, with what was found recorded for `pnp info`.

use super::clip::ClipText;
use super::config::{ClipConfig, UnetConfig, VaeConfig};
use super::nn::Ctx;
use super::unet::Unet;
use super::vae::Vae;
use super::weights::{WeightError, Weights};
use std::path::PathBuf;

pub use super::ldm::Family;

/// What one component's checkpoint held.
#[derive(Clone, Debug)]
pub struct ComponentReport {
    pub name: &'static str,
    pub source: String,
    pub parameters: usize,
    pub stored_dtype: &'static str,
    /// Tensors in the file that no module read.
    pub unused: Vec<String>,
    /// [`Weights::fingerprint`] of what was read.
    pub fingerprint: u64,
}

pub struct SdModel {
    pub family: Family,
    pub root: PathBuf,
    pub text: ClipText,
    pub unet: Unet,
    pub vae: Vae,
    pub report: Vec<ComponentReport>,
    /// Settings a single-file checkpoint does not record, filled with SD's values.
    pub assumed: Vec<String>,
}

impl ComponentReport {
    /// What `w` held and what of it was read, after a network loaded from it.
    pub fn of(name: &'static str, w: &Weights) -> Self {
        ComponentReport {
            name,
            source: w.source.clone(),
            parameters: w.parameter_count(),
            stored_dtype: w.stored_dtype(),
            unused: w.unused(),
            fingerprint: w.fingerprint(),
        }
    }
}

impl SdModel {
    pub fn from_parts(
        cx: Ctx,
        root: PathBuf,
        text: (Weights, ClipConfig),
        unet: (Weights, UnetConfig),
        vae: (Weights, VaeConfig),
    ) -> Result<Self, WeightError> {
        let t = ClipText::load(cx, &text.0, text.1)?;
        let u = Unet::load(cx, &unet.0, unet.1)?;
        let v = Vae::load(cx, &vae.0, vae.1)?;
        Ok(Self::assemble(
            root,
            (t, ComponentReport::of("text_encoder", &text.0)),
            (u, ComponentReport::of("unet", &unet.0)),
            (v, ComponentReport::of("vae", &vae.0)),
        ))
    }

    /// A fingerprint of the weights of every network (16 hex digits),
    /// recorded in inversion files so that one made with another model is
    /// refused (see [`ComponentReport::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        let mut h = crate::models::weights::Fnv::default();
        for r in &self.report {
            h.write(&r.fingerprint.to_le_bytes());
        }
        format!("{:016x}", h.0)
    }

    /// What the user should read about this model: config values a single
    /// file does not record and were assumed, and checkpoint tensors that no
    /// module read (the layout may not be what it seems).
    pub fn notes(&self) -> Vec<String> {
        let assumed = self.assumed.iter().map(|a| {
            format!(
                "assumed {a} (a single-file checkpoint does not record it; a diffusers folder \
                 given as its config, --config DIR, sets it)"
            )
        });
        let unused = self.report.iter().filter_map(|r| {
            let first = r.unused.first()?;
            Some(format!(
                "{} tensor(s) of the {} ({}) were not used, {first} among them: the checkpoint \
                 may not be the architecture it seems",
                r.unused.len(),
                r.name,
                r.source
            ))
        });
        assumed.chain(unused).collect()
    }

    /// A model from networks loaded one at a time, so that a caller reading
    /// files on demand (the browser) holds one file's bytes at once.
    pub fn assemble(
        root: PathBuf,
        text: (ClipText, ComponentReport),
        unet: (Unet, ComponentReport),
        vae: (Vae, ComponentReport),
    ) -> Self {
        let family = if unet.0.config.use_linear_projection {
            Family::Sd2
        } else {
            Family::Sd1
        };
        SdModel {
            family,
            root,
            text: text.0,
            unet: unet.0,
            vae: vae.0,
            report: vec![text.1, unet.1, vae.1],
            assumed: Vec::new(),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl SdModel {
    /// The three networks of `--model` on disk, blocking: [`super::loader`]
    /// over [`super::files::Disk`], without the tokenizer.
    pub fn load(
        cx: Ctx,
        source: &super::locate::ModelSource,
        config_dir: Option<&std::path::Path>,
    ) -> Result<Self, super::loader::LoadError> {
        let layout = source.layout(config_dir);
        let mut quiet = crate::progress::Quiet;
        let load = super::loader::load_networks(&super::files::Disk, &layout, cx, &mut quiet);
        pollster::block_on(load)
    }

    /// [`SdModel::load`] of a diffusers folder.
    pub fn load_folder(cx: Ctx, dir: &std::path::Path) -> Result<Self, super::loader::LoadError> {
        Self::load(cx, &super::locate::ModelSource::Folder(dir.into()), None)
    }
}
