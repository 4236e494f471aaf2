//! A whole Stable Diffusion checkpoint: text encoder, UNet and VAE loaded
//! onto the device, with what was found recorded for `pnp info`.

use super::clip::ClipText;
use super::config::{ClipConfig, UnetConfig, VaeConfig, from_json, read_config};
use super::ldm::{LdmOverrides, split_ldm_with};
use super::loader::{ModelSource, component_weights};
use super::nn::Ctx;
use super::unet::Unet;
use super::vae::Vae;
use super::weights::{WeightError, Weights};
use std::path::{Path, PathBuf};

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
        }
    }
}

impl SdModel {
    /// Loads the three networks from a diffusers folder.
    pub fn load_folder(cx: Ctx, dir: &Path) -> Result<Self, WeightError> {
        let te = dir.join("text_encoder");
        let un = dir.join("unet");
        let va = dir.join("vae");
        let (tw, uw, vw) = (
            component_weights(&te)?,
            component_weights(&un)?,
            component_weights(&va)?,
        );
        let tc: ClipConfig = read_config(&te.join("config.json"))?;
        let uc: UnetConfig = read_config(&un.join("config.json"))?;
        let vc: VaeConfig = read_config(&va.join("config.json"))?;
        Self::from_parts(cx, dir.to_path_buf(), (tw, tc), (uw, uc), (vw, vc))
    }

    /// Loads from any `--model` source. `config_dir`: a diffusers folder whose
    /// config.json files supply what a single-file checkpoint cannot record
    /// (group and head counts); ignored for folders.
    pub fn load(
        cx: Ctx,
        source: &ModelSource,
        config_dir: Option<&Path>,
    ) -> Result<Self, WeightError> {
        match source {
            ModelSource::Folder(dir) => Self::load_folder(cx, dir),
            ModelSource::SingleFile(path) => {
                let overrides = match config_dir {
                    Some(d) => LdmOverrides::from_diffusers_dir(d)?,
                    None => LdmOverrides::default(),
                };
                let ck = split_ldm_with(path, &overrides)?;
                let tc = from_json(path, &ck.text_config)?;
                let uc = from_json(path, &ck.unet_config)?;
                let vc = from_json(path, &ck.vae_config)?;
                let mut m =
                    Self::from_parts(cx, path.clone(), (ck.text, tc), (ck.unet, uc), (ck.vae, vc))?;
                m.assumed = ck.assumed;
                Ok(m)
            }
        }
    }

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
