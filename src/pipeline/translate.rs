//! The whole translation (docs/ALGORITHM.md, "Stages"): every check before
//! GPU work, then text, encode and inversion ([`Pipeline::prepare`]), then
//! sampling and decode ([`Pipeline::finish`]). The command line saves the
//! inversion between the two.

use super::inversion::Inversion;
use super::options::{Embeddings, PnpOptions, SourceLatents};
use super::stages::{Pipeline, check_size};
use super::{PnpError, Result};
use crate::gpu::tensor::decode;
use crate::gpu::{DType, Tensor};
use crate::models::hooks::Hooks;
use crate::progress::Progress;

/// Text embeddings and the inversion, from [`Pipeline::prepare`].
pub struct Prepared {
    pub embeddings: Embeddings,
    pub inversion: Inversion,
    /// The inversion's DDIM reconstruction, with
    /// [`SourceLatents::Reconstruction`].
    pub reconstruction: Option<Inversion>,
    /// Latent size (h, w).
    pub hw: [usize; 2],
}

impl Prepared {
    /// The latents the source branch walks.
    pub fn source_latents(&self) -> &Inversion {
        self.reconstruction.as_ref().unwrap_or(&self.inversion)
    }
}

/// What [`Pipeline::translate`] made, per target prompt.
pub struct Translation {
    /// Final latents (1, 4, H/8, W/8).
    pub finals: Vec<Vec<f32>>,
    /// Decoded images (3, H, W) in [0, 1].
    pub images: Vec<Vec<f32>>,
    pub inversion: Inversion,
    /// With [`SourceLatents::Reconstruction`]: the latents the source branch walked.
    pub reconstruction: Option<Inversion>,
}

impl Pipeline<'_> {
    /// The whole translation for one image (pixels (3, H, W) in [0, 1],
    /// `size` = [H, W]) and every prompt in `prompts`:
    /// [`Pipeline::prepare`], then [`Pipeline::finish`].
    pub async fn translate(
        &mut self,
        pixels: &[f32],
        size: [usize; 2],
        prompts: &[&str],
        opts: &PnpOptions,
        progress: &mut dyn Progress,
    ) -> Result<Translation> {
        let prepared = self
            .prepare(pixels, size, prompts, opts, None, progress)
            .await?;
        let (finals, images) = self.finish(&prepared, opts, progress).await?;
        Ok(Translation {
            finals,
            images,
            inversion: prepared.inversion,
            reconstruction: prepared.reconstruction,
        })
    }

    /// Checks the options and the size against this adapter before any GPU
    /// work, then makes the text embeddings and the inversion: VAE encode and
    /// DDIM inversion of the image, or `inversion` when one is given (a saved
    /// one, or a generation's own trajectory).
    pub async fn prepare(
        &mut self,
        pixels: &[f32],
        size: [usize; 2],
        prompts: &[&str],
        opts: &PnpOptions,
        inversion: Option<Inversion>,
        progress: &mut dyn Progress,
    ) -> Result<Prepared> {
        self.check_translation(size, prompts, opts, inversion.as_ref())?;
        let hw = [size[0] / 8, size[1] / 8];
        let embeddings = self.embeddings(opts, prompts, progress).await?;
        let inversion = match inversion {
            Some(inv) => inv,
            None => {
                progress.phase("encode", 1);
                let z0 = self.encode_image(pixels, size).await?;
                progress.tick();
                let (c, steps) = (&embeddings.inversion, opts.inversion_steps);
                self.invert(&z0, hw, c, steps, progress).await?
            }
        };
        let reconstruction = match opts.source_latents {
            SourceLatents::Inversion => None,
            SourceLatents::Reconstruction => {
                let c = &embeddings.inversion;
                Some(
                    self.reconstruct(&inversion, c, opts.steps, progress)
                        .await?,
                )
            }
        };
        Ok(Prepared {
            embeddings,
            inversion,
            reconstruction,
            hw,
        })
    }

    /// Every check of a translation of an image of `size` = [H, W] pixels
    /// (with the given inversion, if any) that needs no GPU work: the
    /// options, the inversion's fit, and the adapter's limits for the
    /// largest graphs ([`Self::preflight`]). [`Self::prepare`] runs it; a
    /// caller may run it before decoding the image.
    pub fn check_translation(
        &self,
        size: [usize; 2],
        prompts: &[&str],
        opts: &PnpOptions,
        given: Option<&Inversion>,
    ) -> Result<()> {
        check_size(size)?;
        self.check_options(opts, prompts, given)?;
        if let Some(inv) = given {
            inv.check_fits(size, self.model.vae.config.latent_channels)?;
        }
        let hw = [size[0] / 8, size[1] / 8];
        self.preflight(size, self.store_plan(opts, hw)?.max_batch())
    }

    /// The options that do not depend on the image: prompts, fractions, and
    /// the inversion grid: of `inversion_steps`, or of the given inversion.
    fn check_options(
        &self,
        opts: &PnpOptions,
        prompts: &[&str],
        given: Option<&Inversion>,
    ) -> Result<()> {
        if prompts.is_empty() {
            return Err(PnpError::Input("give at least one target prompt".into()));
        }
        opts.check()?;
        let steps = |what: &str, n: usize| {
            self.scheduler
                .timesteps(n)
                .map(drop)
                .map_err(|e| PnpError::Input(format!("{what}: {e}")))
        };
        steps("sampling steps", opts.steps)?;
        if let Some(inv) = given {
            return inv.check_covers(&self.scheduler, opts.steps);
        }
        steps("inversion steps", opts.inversion_steps)?;
        let grid_ok = self
            .scheduler
            .inversion_grid_contains(opts.inversion_steps, opts.steps);
        if !grid_ok {
            return Err(PnpError::InversionGrid {
                inversion_steps: opts.inversion_steps,
                steps: opts.steps,
                nearest: self
                    .scheduler
                    .nearest_inversion_steps(opts.inversion_steps, opts.steps),
            });
        }
        Ok(())
    }

    /// The sampling for every target prompt, sharing one inversion and one
    /// feature store, and the VAE decode: the final latents and the images,
    /// read back together once everything has run.
    pub async fn finish(
        &mut self,
        prepared: &Prepared,
        opts: &PnpOptions,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        let finals = self
            .sample_on_gpu(
                prepared.source_latents(),
                &prepared.embeddings,
                opts,
                progress,
            )
            .await?;
        let n = finals.shape[0];
        progress.phase("decode", n);
        let images = self.decode_on_gpu(&finals, prepared.hw, progress).await?;
        let bytes = self
            .gpu
            .read_many(&[
                (&finals.buffer, finals.offset, finals.bytes()),
                (&images.buffer, images.offset, images.bytes()),
            ])
            .await?;
        let split = |t: &Tensor, b: &[u8]| -> Vec<Vec<f32>> {
            let all = decode(b, t.numel(), t.dtype);
            all.chunks_exact(t.numel() / n)
                .map(<[f32]>::to_vec)
                .collect()
        };
        let finals = split(&finals, &bytes[0]);
        self.check_sampled(&finals)?;
        let images = (split(&images, &bytes[1]).into_iter())
            .map(|img| self.image(img))
            .collect::<Result<_>>()?;
        Ok((finals, images))
    }

    /// Records the largest graphs a translation of an image of `size` = [H,
    /// W] pixels needs (the VAE encoder and decoder, the UNet at `batch`
    /// rows) and checks them against the device's limits without running or
    /// allocating anything, so that a size this adapter cannot take is
    /// refused before minutes of work, not at the final decode.
    pub fn preflight(&self, size: [usize; 2], batch: usize) -> Result<()> {
        check_size(size)?;
        let [h, w] = size;
        self.record_all(size, batch).map_err(|e| {
            // Device-limit errors carry their own advice; shape errors do not.
            let advice = match e {
                PnpError::Gpu(_) => "",
                _ if self.dtype == DType::F32 => "; use a smaller size or f16",
                _ => "; use a smaller size",
            };
            PnpError::Input(format!(
                "this adapter cannot translate a {w}x{h} image: {e}{advice}"
            ))
        })
    }

    fn record_all(&self, [h, w]: [usize; 2], batch: usize) -> Result<()> {
        let vae = &self.model.vae;
        let unet = &self.model.unet;
        let mut g = self.graph();
        let x = g.input("image", &[1, 3, h, w], self.dtype);
        vae.encode_moments(&mut g, &x)?;
        let lat = [1, vae.config.latent_channels, h / 8, w / 8];
        let z = g.input("latent", &lat, self.dtype);
        vae.decode(&mut g, &z)?;
        let (x, t, ctx) = self.unet_inputs(&mut g, batch, [h / 8, w / 8]);
        unet.forward_hooked(&mut g, &x, &t, &ctx, &Hooks::default())?;
        Ok(g.check_limits()?)
    }
}
