//! An image's DDIM inversion, and the safetensors file that keeps it for
//! another translation of the same image (`--save-inversion`,
//! `--load-inversion`, and `generate --save-features`).
//!
//! The file holds float32 tensors `z0` and `inverted/<t>` for every
//! inversion timestep t, each (1, C, h, w), and the metadata
//! `inversion_steps` and `latent_hw` ("hxw").

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

    /// Refuses an inversion without a latent at every sampling timestep of
    /// `grid` (the sampling starts from, and the source pass reads, those).
    pub fn check_covers(&self, grid: &[usize]) -> Result<()> {
        match grid.iter().find(|t| !self.latents.contains_key(t)) {
            Some(t) => Err(PnpError::Input(format!(
                "the {}-step inversion has no latent at sampling timestep {t} of {} sampling steps",
                self.steps,
                grid.len()
            ))),
            None => Ok(()),
        }
    }

    /// The file's bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let shape = self.latent_shape();
        let mut t = vec![("z0".to_string(), shape.clone(), self.z0.as_slice())];
        for (step, z) in &self.latents {
            t.push((format!("inverted/{step}"), shape.clone(), z.as_slice()));
        }
        let meta = HashMap::from([
            ("inversion_steps".to_string(), self.steps.to_string()),
            (
                "latent_hw".to_string(),
                format!("{}x{}", self.hw[0], self.hw[1]),
            ),
        ]);
        f32_safetensors(&t, meta)
    }

    /// Reads a file written by [`Self::to_safetensors`] for an image whose
    /// latent is (1, `channels`, h, w) with `hw` = (h, w). `name` names the
    /// file in messages. Every tensor must be float32, of that shape, and
    /// finite.
    pub fn from_safetensors(
        name: &str,
        bytes: &[u8],
        hw: [usize; 2],
        channels: usize,
    ) -> Result<Self> {
        let bad = |msg: String| PnpError::Input(format!("{name}: {msg}"));
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            bad(format!(
                "not a safetensors file written by --save-inversion ({e})"
            ))
        })?;
        let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("unreadable header ({e})")))?;
        let steps: usize = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get("inversion_steps"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                bad("no inversion_steps metadata: not written by --save-inversion".into())
            })?;
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
        })
    }
}
