//! An image's DDIM inversion, and the safetensors file that keeps it for
//! another translation of the same image (`--save-inversion`,
//! `--load-inversion`, and `generate --save-features`).
//!
//! The file holds float32 tensors `z0` and `inverted/<t>` for every
//! inversion timestep t, each (1, C, h, w), and the metadata
//! `inversion_steps`, `latent_hw` ("hxw") and `model` (the fingerprint of
//! the model it was made with, [`crate::models::sd::SdModel::fingerprint`]).

use super::scheduler::{Ddim, either};
use super::{PnpError, Result};
use std::collections::{BTreeMap, HashMap};

/// The inversion of one image: z_t for every inversion timestep.
#[derive(Clone, Debug)]
pub struct Inversion {
    /// Latent size (h, w) = image size / 8.
    pub hw: [usize; 2],
    pub z0: Vec<f32>,
    pub steps: usize,
    pub latents: BTreeMap<usize, Vec<f32>>,
    /// The fingerprint of the model that made it (None: a file written
    /// before fingerprints were recorded).
    pub model: Option<String>,
}

/// A safetensors file of float32 tensors (name, shape, data) with `meta`.
pub fn f32_safetensors(
    tensors: &[(String, Vec<usize>, &[f32])],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<&[u8]> = tensors
        .iter()
        .map(|(_, _, d)| bytemuck::cast_slice(d))
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PnpError::Input(format!("cannot lay out the tensors: {e}")))?;
    safetensors::serialize(views, Some(meta))
        .map_err(|e| PnpError::Input(format!("cannot serialise the tensors: {e}")))
}

impl Inversion {
    /// Latent channels (4 for SD).
    pub fn channels(&self) -> usize {
        self.z0.len() / (self.hw[0] * self.hw[1]).max(1)
    }

    /// One latent's shape: (1, C, h, w).
    pub fn latent_shape(&self) -> Vec<usize> {
        vec![1, self.channels(), self.hw[0], self.hw[1]]
    }

    /// Refuses an inversion that is incomplete (a latent of its own grid
    /// missing) or has no latent at some timestep of the `steps`-step
    /// sampling grid (the sampling starts from, and the source pass reads,
    /// those), naming the nearest sampling step counts it can serve.
    pub fn check_covers(&self, scheduler: &Ddim, steps: usize) -> Result<()> {
        let own = scheduler
            .timesteps(self.steps)
            .map_err(|e| PnpError::Input(format!("the inversion's declared step count: {e}")))?;
        if let Some(t) = own.iter().find(|t| !self.latents.contains_key(t)) {
            return Err(PnpError::Input(format!(
                "the inversion declares {} steps but has no latent at timestep {t}: it is incomplete; make it again",
                self.steps
            )));
        }
        let grid = scheduler
            .timesteps(steps)
            .map_err(|e| PnpError::Input(format!("sampling steps: {e}")))?;
        if grid.iter().any(|t| !self.latents.contains_key(t)) {
            let nearest = scheduler.nearest_sampling_steps(self.steps, steps);
            return Err(PnpError::Input(format!(
                "the {}-step inversion has no latent at every timestep of {steps} sampling steps; the nearest sampling step counts it serves: {}",
                self.steps,
                either(&nearest)
            )));
        }
        Ok(())
    }

    /// Refuses an inversion that is not for an image of `size` = [H, W]
    /// pixels or whose latents do not have the model's `channels`.
    pub fn check_fits(&self, size: [usize; 2], channels: usize) -> Result<()> {
        let hw = [size[0] / 8, size[1] / 8];
        if self.hw != hw || self.channels() != channels {
            return Err(PnpError::Input(format!(
                "the inversion's latents are {:?} but this image's are {:?}; it was made at another size or with another model",
                self.latent_shape(),
                [1, channels, hw[0], hw[1]]
            )));
        }
        Ok(())
    }

    /// Refuses an inversion made with another model than the one with
    /// fingerprint `model` (a file without a fingerprint is taken).
    pub fn check_model(&self, model: &str) -> Result<()> {
        match &self.model {
            Some(m) if m != model => Err(PnpError::Input(format!(
                "the inversion was made with another model (fingerprint {m}; this model's is {model}): its latents do not fit this model's features"
            ))),
            _ => Ok(()),
        }
    }

    /// The file's bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let shape = self.latent_shape();
        let mut t = vec![("z0".to_string(), shape.clone(), self.z0.as_slice())];
        for (step, z) in &self.latents {
            t.push((format!("inverted/{step}"), shape.clone(), z.as_slice()));
        }
        let mut meta = HashMap::from([
            ("inversion_steps".to_string(), self.steps.to_string()),
            (
                "latent_hw".to_string(),
                format!("{}x{}", self.hw[0], self.hw[1]),
            ),
        ]);
        if let Some(m) = &self.model {
            meta.insert("model".to_string(), m.clone());
        }
        f32_safetensors(&t, meta)
    }

    /// Reads a file written by [`Self::to_safetensors`] for an image whose
    /// latent is (1, C, h, w) with `hw` = (h, w); the channels C are z0's,
    /// checked against the model by [`Self::check_fits`]. `name` names the
    /// file in messages. Every tensor must be float32, of one shape, and
    /// finite.
    pub fn from_safetensors(name: &str, bytes: &[u8], hw: [usize; 2]) -> Result<Self> {
        let bad = |msg: String| PnpError::Input(format!("{name}: {msg}"));
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            bad(format!(
                "not a safetensors file written by --save-inversion ({e})"
            ))
        })?;
        let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("unreadable header ({e})")))?;
        let meta = md.metadata().as_ref();
        let model = meta.and_then(|m| m.get("model")).cloned();
        let steps: usize = meta
            .and_then(|m| m.get("inversion_steps"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                bad("no inversion_steps metadata: not written by --save-inversion".into())
            })?;
        let channels = st
            .tensor("z0")
            .map_err(|_| bad("no z0 tensor: not written by --save-inversion".into()))?
            .shape()
            .get(1)
            .copied()
            .unwrap_or(0);
        let want = [1, channels, hw[0], hw[1]];
        let mut latents = BTreeMap::new();
        let mut z0 = None;
        for (tensor, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!(
                    "tensor {tensor} is {:?}; an inversion file holds float32 latents",
                    view.dtype()
                )));
            }
            if view.shape() != want {
                return Err(bad(format!(
                    "tensor {tensor} has shape {:?} but this image's latent is {want:?}; the inversion was made at another size or with another model",
                    view.shape()
                )));
            }
            let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "tensor {tensor} holds a non-finite value ({}) at element {i}; the inversion is damaged: make it again",
                    data[i]
                )));
            }
            match tensor.strip_prefix("inverted/") {
                Some(t) => {
                    let t = t
                        .parse()
                        .map_err(|_| bad(format!("bad tensor name {tensor}")))?;
                    latents.insert(t, data);
                }
                None if tensor == "z0" => z0 = Some(data),
                None => {}
            }
        }
        Ok(Inversion {
            hw,
            z0: z0.ok_or_else(|| bad("no z0 tensor".into()))?,
            steps,
            latents,
            model,
        })
    }
}
