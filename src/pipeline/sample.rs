//! The diffusion loops: DDIM inversion, the source pass into the feature
//! store, the injected sampling with classifier-free guidance, and
//! text-to-image generation (docs/ALGORITHM.md, "DDIM inversion",
//! "Source pass", "Injected sampling").

use super::inversion::Inversion;
use super::options::{Embeddings, GuidanceBase, PnpOptions, check_guidance};
use super::stages::{Pipeline, PlanCache, concat_rows};
use super::store::{FeatureStore, Schedule, StorePlan, TapShapes, capture_hooks, inject_hooks};
use super::{PnpError, Result};
use crate::models::hooks::Hooks;
use crate::progress::{Progress, Timer};
use std::collections::BTreeMap;

/// Classifier-free guidance: eps_u + g (eps_c - eps_u), from the UNet's
/// output rows (unconditional, conditional) of `lat` elements each.
pub fn guide(eps: &[f32], lat: usize, guidance: f32) -> Vec<f32> {
    let (u, c) = eps.split_at(lat);
    u.iter()
        .zip(c)
        .map(|(u, c)| u + guidance * (c - u))
        .collect()
}

/// Guidance with the original PnP's negative-prompt schedule: from rows
/// (negative, unconditional, conditional), the base b = a e_u + (1 - a) e_n
/// and b + g (e_c - b).
pub fn guide_mixed(eps: &[f32], lat: usize, guidance: f32, a: f32) -> Vec<f32> {
    let (n, rest) = eps.split_at(lat);
    let (u, c) = rest.split_at(lat);
    n.iter()
        .zip(u)
        .zip(c)
        .map(|((n, u), c)| {
            let b = a * u + (1.0 - a) * n;
            b + guidance * (c - b)
        })
        .collect()
}

impl Pipeline<'_> {
    /// The feature store decision for a translation at latent size `hw`.
    pub fn store_plan(&self, opts: &PnpOptions, hw: [usize; 2]) -> Result<StorePlan> {
        let schedule = Schedule::new(opts.steps, opts.pnp_f_t, opts.pnp_attn_t);
        let shapes = TapShapes::new(&self.taps, &self.model.unet.config.block_out_channels, hw)?;
        Ok(StorePlan::decide(
            opts.store,
            shapes,
            schedule,
            self.dtype,
            self.max_binding(),
            opts.store_budget,
            opts.guidance_base().rows(),
        ))
    }

    /// DDIM inversion of z0 under the inversion prompt's embedding `c_inv`.
    pub async fn invert(
        &mut self,
        z0: &[f32],
        hw: [usize; 2],
        c_inv: &[f32],
        steps: usize,
        progress: &mut dyn Progress,
    ) -> Result<Inversion> {
        let timer = Timer::start();
        let mut grid = self.scheduler.timesteps(steps)?;
        grid.reverse(); // ascending
        let p = self.unet_plan(1, hw, None, |_| Ok(Hooks::default()))?;
        self.note_peak(p.plan.planned_bytes());
        progress.phase("inversion", grid.len());
        let mut z = z0.to_vec();
        let mut latents = BTreeMap::new();
        for (i, &t) in grid.iter().enumerate() {
            let out = self.run_unet(&p, &z, t, c_inv).await?;
            let eps = self.scheduler.epsilon(&out, &z, t);
            z = self
                .scheduler
                .invert_step(&z, &eps, t, (i > 0).then(|| grid[i - 1]));
            latents.insert(t, z.clone());
            progress.tick();
        }
        self.check_finite("the inversion", &z, "the UNet's weights")?;
        self.phase_done("inversion", timer);
        Ok(Inversion {
            hw,
            z0: z0.to_vec(),
            steps,
            latents,
            model: Some(self.model.fingerprint()),
        })
    }

    /// The injected sampling for every target prompt, sharing one inversion
    /// and one feature store. Returns the final latents per prompt.
    pub async fn sample(
        &mut self,
        inv: &Inversion,
        emb: &Embeddings,
        opts: &PnpOptions,
        progress: &mut dyn Progress,
    ) -> Result<Vec<Vec<f32>>> {
        let n = opts.steps;
        inv.check_covers(&self.scheduler, n)?;
        let grid = self.scheduler.timesteps(n)?;
        let hw = inv.hw;
        let store_plan = self.store_plan(opts, hw)?;
        let schedule = store_plan.schedule;
        if let Some(note) = &store_plan.fallback {
            progress.note(note);
        }
        self.stats.used_store = store_plan.resident;
        let store = match store_plan.resident {
            true => Some(
                self.source_pass(inv, emb, &store_plan, &grid, progress)
                    .await?,
            ),
            false => None,
        };

        let timer = Timer::start();
        let mut plans = PlanCache::default();
        let lat = inv.z0.len();
        let mut finals = Vec::new();
        let base = opts.guidance_base();
        let rows = base.rows();
        // The guidance rows' texts: negative, or "", or both (the schedule).
        let unguided: Vec<&[f32]> = match &base {
            GuidanceBase::Negative => vec![&emb.negative],
            GuidanceBase::Unconditional => vec![&emb.source],
            GuidanceBase::Mixed(_) => vec![&emb.negative, &emb.source],
        };
        for (pi, c) in emb.targets.iter().enumerate() {
            progress.phase(&format!("sampling prompt {}", pi + 1), n);
            let mut x = inv.latents[&grid[0]].clone();
            let mut texts = unguided.clone();
            texts.push(c);
            let ctx = concat_rows(&texts);
            texts.insert(0, &emb.source);
            let ctx_inline = concat_rows(&texts);
            for (i, &t) in grid.iter().enumerate() {
                let what = schedule.at(i);
                let batch = store_plan.batch(what);
                let p = plans.get(what, || {
                    self.unet_plan(batch, hw, store.as_ref(), |v| {
                        Ok(inject_hooks(&self.taps, v, what))
                    })
                })?;
                p.plan.set_step(i);
                let inline = batch > rows;
                let mut xs: Vec<&[f32]> = vec![&x; rows];
                if inline {
                    xs.insert(0, &inv.latents[&t]);
                }
                let ctx = if inline { &ctx_inline } else { &ctx };
                let out = self.run_unet(p, &concat_rows(&xs), t, ctx).await?;
                // The inline call's row 0 is the source row: not guided.
                let out = &out[(batch - rows) * lat..];
                let guided = match &base {
                    GuidanceBase::Mixed(a) => guide_mixed(out, lat, opts.guidance, a[i] as f32),
                    _ => guide(out, lat, opts.guidance),
                };
                let eps = self.scheduler.epsilon(&guided, &x, t);
                x = self.scheduler.step(&x, &eps, t, n);
                progress.tick();
            }
            self.check_finite(
                &format!("sampling prompt {}", pi + 1),
                &x,
                "the UNet's weights or an extreme guidance scale",
            )?;
            finals.push(x);
        }
        let store_bytes = if store_plan.resident {
            store_plan.bytes
        } else {
            0
        };
        self.note_peak(plans.planned_bytes() + store_bytes);
        self.phase_done("sampling", timer);
        Ok(finals)
    }

    /// The source row's features for every injected step, once for all
    /// prompts: z_t of the inversion under the empty prompt, captured.
    async fn source_pass(
        &mut self,
        inv: &Inversion,
        emb: &Embeddings,
        store_plan: &StorePlan,
        grid: &[usize],
        progress: &mut dyn Progress,
    ) -> Result<FeatureStore> {
        let timer = Timer::start();
        let schedule = store_plan.schedule;
        let store = FeatureStore::new(&self.gpu, &store_plan.shapes, schedule, self.dtype);
        let mut plans = PlanCache::default();
        let steps = schedule.source_steps();
        progress.phase("source features", steps);
        for (i, &t) in grid.iter().enumerate().take(steps) {
            let what = schedule.at(i);
            let p = plans.get(what, || {
                self.unet_plan(1, inv.hw, Some(&store), |v| {
                    v.map(|v| capture_hooks(&self.taps, v, what))
                        .ok_or_else(|| PnpError::Input("the store was not bound".into()))
                })
            })?;
            p.plan.set_step(i);
            let _ = self.run_unet(p, &inv.latents[&t], t, &emb.source).await?;
            progress.tick();
        }
        self.note_peak(plans.planned_bytes() + store_plan.bytes);
        self.phase_done("source pass (feature store)", timer);
        Ok(store)
    }

    /// Text-to-image DDIM (eta 0) from seeded Gaussian noise, for generated
    /// guidance images (the paper's generated-image setting). Returns the
    /// trajectory as an [`Inversion`]: `latents[t]` is the latent the step at
    /// t started from, so `sample` injects the generation's own features;
    /// `z0` is the final latent. The noise comes from [`crate::rand`], not
    /// PyTorch's generator, so seeds do not carry over.
    #[allow(clippy::too_many_arguments)]
    pub async fn generate(
        &mut self,
        c_neg: &[f32],
        c_pos: &[f32],
        hw: [usize; 2],
        seed: u64,
        steps: usize,
        guidance: f32,
        progress: &mut dyn Progress,
    ) -> Result<Inversion> {
        let timer = Timer::start();
        check_guidance(guidance)?;
        let grid = self.scheduler.timesteps(steps)?;
        let channels = self.model.unet.config.in_channels;
        let mut x = crate::rand::gaussian(seed, channels * hw[0] * hw[1]);
        let p = self.unet_plan(2, hw, None, |_| Ok(Hooks::default()))?;
        self.note_peak(p.plan.planned_bytes());
        let ctx = concat_rows(&[c_neg, c_pos]);
        let lat = x.len();
        let mut latents = BTreeMap::new();
        progress.phase("generation", grid.len());
        for &t in &grid {
            latents.insert(t, x.clone());
            let out = self.run_unet(&p, &concat_rows(&[&x, &x]), t, &ctx).await?;
            let guided = guide(&out, lat, guidance);
            let eps = self.scheduler.epsilon(&guided, &x, t);
            x = self.scheduler.step(&x, &eps, t, steps);
            progress.tick();
        }
        self.check_finite(
            "the generation",
            &x,
            "the UNet's weights or an extreme guidance scale",
        )?;
        self.phase_done("generation", timer);
        Ok(Inversion {
            hw,
            z0: x,
            steps,
            latents,
            model: Some(self.model.fingerprint()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::guide;

    #[test]
    fn guidance_extrapolates_from_the_unconditional_row() {
        let eps = [1.0, 2.0, 3.0, 6.0];
        assert_eq!(guide(&eps, 2, 7.5), vec![1.0 + 7.5 * 2.0, 2.0 + 7.5 * 4.0]);
        assert_eq!(guide(&eps, 2, 1.0), vec![3.0, 6.0]);
    }
}
