//! The diffusion loops: DDIM inversion, the source pass into the feature
//! store, the injected sampling with classifier-free guidance, and
//! text-to-image generation (docs/ALGORITHM.md, "DDIM inversion",
//! "Source pass", "Injected sampling").

use super::gpu_loop::{LoopIo, StepTables, coefficients};
use super::inversion::Inversion;
use super::options::{Embeddings, GuidanceBase, PnpOptions, check_guidance};
use super::scheduler::Prediction;
use super::stages::{Pipeline, PlanCache, concat_rows};
use super::store::{
    FeatureStore, Inject, Schedule, StorePlan, TapShapes, capture_hooks, inject_hooks,
};
use super::{PnpError, Result};
use crate::gpu::{InFlight, Tensor};
use crate::models::hooks::Hooks;
use crate::ops::{Guidance, Slot};
use crate::progress::{Progress, Timer};

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

    /// DDIM inversion of z0 under the inversion prompt's embedding `c_inv`,
    /// on the GPU: the trajectory stays in a state buffer of `steps + 1`
    /// slots (slot j holds z at the j-th timestep of the descending grid,
    /// slot `steps` holds z0) and is read back once at the end.
    pub async fn invert(
        &mut self,
        z0: &[f32],
        hw: [usize; 2],
        c_inv: &[f32],
        steps: usize,
        progress: &mut dyn Progress,
    ) -> Result<Inversion> {
        let timer = Timer::start();
        let grid = self.scheduler.timesteps(steps)?; // descending
        self.check_slots("the inversion", steps + 1, hw)?;
        let s = &self.scheduler;
        let coef: Vec<_> = (0..steps)
            .map(|j| {
                let prev = grid.get(j + 1).copied();
                coefficients(
                    0.0,
                    0.0,
                    s.v_coefficients(grid[j]),
                    s.invert_coefficients(grid[j], prev),
                )
            })
            .collect();
        let tables = StepTables::new(&self.gpu, &grid, &coef);
        let state = self.slots("inversion", steps + 1, hw, None);
        state.row(steps).write_f32(&self.gpu, z0);
        let ctx = self.text_rows(&[c_inv]);
        // Step j reads slot j + 1 and writes slot j (the grid descends).
        let io = LoopIo {
            state: &state,
            read: Slot::each_step(1),
            source: None,
            update: Some((
                Slot::each_step(0),
                Guidance {
                    row0: 0,
                    rows: 1,
                    v_prediction: self.scheduler.prediction == Prediction::V,
                },
            )),
            tables: &tables,
            ctx: &ctx,
        };
        let g = self.loop_graph(1, hw, &io, None, |_| Ok(Hooks::default()))?;
        g.tune().await?;
        let plan = g.plan()?;
        self.note_peak(plan.planned_bytes() + state.bytes());
        progress.phase("inversion", steps);
        let mut flight = InFlight::default();
        // The grid ascends in time: the step index j descends.
        for j in (0..steps).rev() {
            self.submit_step(&plan, j, 1, &mut flight, progress).await?;
        }
        self.drain(&mut flight, progress).await?;
        let all = state.to_f32(&self.gpu).await?;
        self.check_finite(
            "the inversion",
            &all[..steps * z0.len()],
            "the UNet's weights",
        )?;
        let inv = self.trajectory(&grid, &all, z0.to_vec(), hw);
        self.phase_done("inversion", timer);
        Ok(inv)
    }

    /// The [`Inversion`] of a loop's state read back (`slots`): slot j is
    /// the latent at `grid[j]` (descending), then `z0`.
    fn trajectory(&self, grid: &[usize], slots: &[f32], z0: Vec<f32>, hw: [usize; 2]) -> Inversion {
        let latents = (grid.iter())
            .zip(slots.chunks_exact(z0.len()))
            .map(|(&t, z)| (t, z.to_vec()))
            .collect();
        Inversion {
            hw,
            z0,
            steps: grid.len(),
            latents,
            model: Some(self.model.fingerprint()),
        }
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
        let finals = self.sample_on_gpu(inv, emb, opts, progress).await?;
        let all = finals.to_f32(&self.gpu).await?;
        let finals: Vec<Vec<f32>> = all
            .chunks_exact(inv.z0.len())
            .map(<[f32]>::to_vec)
            .collect();
        self.check_sampled(&finals)?;
        Ok(finals)
    }

    /// Refuses non-finite final latents, naming the prompt.
    pub(super) fn check_sampled(&self, finals: &[Vec<f32>]) -> Result<()> {
        for (pi, x) in finals.iter().enumerate() {
            self.check_finite(
                &format!("sampling prompt {}", pi + 1),
                x,
                "the UNet's weights or an extreme guidance scale",
            )?;
        }
        Ok(())
    }

    /// [`Self::sample`] without the read: the final latents stay on the GPU,
    /// (prompts, C, h, w) float32.
    pub(super) async fn sample_on_gpu(
        &mut self,
        inv: &Inversion,
        emb: &Embeddings,
        opts: &PnpOptions,
        progress: &mut dyn Progress,
    ) -> Result<Tensor> {
        let n = opts.steps;
        inv.check_covers(&self.scheduler, n)?;
        let grid = self.scheduler.timesteps(n)?;
        let hw = inv.hw;
        let store_plan = self.store_plan(opts, hw)?;
        let schedule = store_plan.schedule;
        if let Some(note) = &store_plan.fallback {
            progress.note(note);
        }
        self.check_slots("the sampling", n + 1, hw)?;
        // The inversion's latents on the sampling grid, slot i at step i: the
        // source rows, and slot 0 the start of every prompt's sampling.
        let sources: Vec<f32> = concat_rows(
            &grid
                .iter()
                .map(|t| inv.latents[t].as_slice())
                .collect::<Vec<_>>(),
        );
        let sources = self.slots("source latents", n, hw, Some(&sources));
        self.stats.used_store = store_plan.resident;
        let store = match store_plan.resident {
            true => Some(
                self.source_pass(&sources, emb, &store_plan, &grid, hw, progress)
                    .await?,
            ),
            false => None,
        };

        let timer = Timer::start();
        let base = opts.guidance_base();
        let rows = base.rows();
        let s = &self.scheduler;
        let coef: Vec<_> = (0..n)
            .map(|i| {
                let mix = match &base {
                    GuidanceBase::Mixed(a) => a[i] as f32,
                    _ => 0.0,
                };
                let (v, update) = (s.v_coefficients(grid[i]), s.step_coefficients(grid[i], n));
                coefficients(opts.guidance, mix, v, update)
            })
            .collect();
        let tables = StepTables::new(&self.gpu, &grid, &coef);
        let state = self.slots("sampling", n + 1, hw, None);
        let finals = self.slots("final latents", emb.targets.len(), hw, None);
        // The guidance rows' texts: negative, or "", or both (the schedule),
        // then the target; the inline calls put the source row first.
        let unguided: Vec<&[f32]> = match &base {
            GuidanceBase::Negative => vec![&emb.negative],
            GuidanceBase::Unconditional => vec![&emb.source],
            GuidanceBase::Mixed(_) => vec![&emb.negative, &emb.source],
        };
        let mut texts = unguided.clone();
        texts.push(&emb.targets[0]);
        let ctx = self.text_rows(&texts);
        texts.insert(0, &emb.source);
        let ctx_inline = self.text_rows(&texts);
        let v_prediction = self.scheduler.prediction == Prediction::V;
        let loop_io = |what: Inject| {
            let batch = store_plan.batch(what);
            let inline = batch > rows;
            let text = if inline { &ctx_inline } else { &ctx };
            let io = LoopIo {
                source: inline.then_some((&sources, Slot::each_step(0), 1)),
                ..LoopIo::forward(
                    &state,
                    &tables,
                    text,
                    Guidance {
                        row0: batch - rows,
                        rows,
                        v_prediction,
                    },
                )
            };
            (batch, io)
        };
        let whats: Vec<Inject> = (0..n).map(|i| schedule.at(i)).collect();
        let mut plans = PlanCache::default();
        plans
            .plan_all(&whats, |what| {
                let (batch, io) = loop_io(what);
                self.loop_graph(batch, hw, &io, store.as_ref(), |v| {
                    Ok(inject_hooks(&self.taps, v, what))
                })
            })
            .await?;
        let mut flight = InFlight::default();
        for (pi, c) in emb.targets.iter().enumerate() {
            progress.phase(&format!("sampling prompt {}", pi + 1), n);
            ctx.row(rows - 1).write_f32(&self.gpu, c);
            ctx_inline.row(rows).write_f32(&self.gpu, c);
            plans.refresh();
            self.copy_slot(&sources, 0, &state, 0);
            for (i, &what) in whats.iter().enumerate() {
                let batch = store_plan.batch(what);
                let plan = plans.get(what)?;
                self.submit_step(plan, i, batch, &mut flight, progress)
                    .await?;
            }
            self.copy_slot(&state, n, &finals, pi);
            self.drain(&mut flight, progress).await?;
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
    /// prompts: z_t of the inversion (`sources`' slot i at step i) under the
    /// empty prompt, captured.
    async fn source_pass(
        &mut self,
        sources: &Tensor,
        emb: &Embeddings,
        store_plan: &StorePlan,
        grid: &[usize],
        hw: [usize; 2],
        progress: &mut dyn Progress,
    ) -> Result<FeatureStore> {
        let timer = Timer::start();
        let schedule = store_plan.schedule;
        let store = FeatureStore::new(&self.gpu, &store_plan.shapes, schedule, self.dtype);
        let tables = StepTables::new(&self.gpu, grid, &[]);
        let ctx = self.text_rows(&[&emb.source]);
        let steps = schedule.source_steps();
        let io = LoopIo {
            state: sources,
            read: Slot::each_step(0),
            source: None,
            update: None,
            tables: &tables,
            ctx: &ctx,
        };
        let whats: Vec<Inject> = (0..steps).map(|i| schedule.at(i)).collect();
        let mut plans = PlanCache::default();
        plans
            .plan_all(&whats, |what| {
                self.loop_graph(1, hw, &io, Some(&store), |v| {
                    v.map(|v| capture_hooks(&self.taps, v, what))
                        .ok_or_else(|| PnpError::Input("the store was not bound".into()))
                })
            })
            .await?;
        progress.phase("source features", steps);
        let mut flight = InFlight::default();
        for (i, &what) in whats.iter().enumerate() {
            self.submit_step(plans.get(what)?, i, 1, &mut flight, progress)
                .await?;
        }
        self.drain(&mut flight, progress).await?;
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
        let lat = self.model.unet.config.in_channels * hw[0] * hw[1];
        let noise = crate::rand::gaussian(seed, lat);
        let walk = Walk {
            what: "generation",
            texts: &[c_neg, c_pos],
            guidance,
            suspect: "the UNet's weights or an extreme guidance scale",
        };
        let (grid, all) = self.walk(&walk, &noise, hw, steps, progress).await?;
        let x = all[steps * lat..].to_vec();
        let inv = self.trajectory(&grid, &all, x, hw);
        self.phase_done("generation", timer);
        Ok(inv)
    }

    /// The DDIM reconstruction of an inversion (docs/ALGORITHM.md, "Source
    /// latents"): from the inverted latent at the first of `steps` sampling
    /// timesteps, denoise under the inversion prompt's embedding `c_inv`
    /// without guidance, keeping every latent. As PIE-Bench's "ddim+pnp"
    /// runner keeps them, `latents[t_i]` is the latent step i produced (one
    /// step further down than t_i), and `z0` the last.
    pub async fn reconstruct(
        &mut self,
        inv: &Inversion,
        c_inv: &[f32],
        steps: usize,
        progress: &mut dyn Progress,
    ) -> Result<Inversion> {
        let timer = Timer::start();
        let first = self.scheduler.timesteps(steps)?[0];
        let start = inv.latents.get(&first).ok_or_else(|| {
            PnpError::Input(format!(
                "the inversion has no latent at timestep {first}, where a {steps}-step reconstruction starts"
            ))
        })?;
        let walk = Walk {
            what: "reconstruction",
            texts: &[c_inv],
            guidance: 0.0,
            suspect: "the UNet's weights",
        };
        let hw = inv.hw;
        let (grid, all) = self.walk(&walk, start, hw, steps, progress).await?;
        let lat = start.len();
        let x = all[steps * lat..].to_vec();
        let inv = self.trajectory(&grid, &all[lat..], x, hw);
        self.phase_done("reconstruction", timer);
        Ok(inv)
    }

    /// A DDIM walk down the `steps`-step grid from `start` (eta 0), on the
    /// GPU. Returns the grid and the state read back: slot i is the latent
    /// step i started from, slot `steps` the last.
    async fn walk(
        &mut self,
        walk: &Walk<'_>,
        start: &[f32],
        hw: [usize; 2],
        steps: usize,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let grid = self.scheduler.timesteps(steps)?;
        self.check_slots(&format!("the {}", walk.what), steps + 1, hw)?;
        let state = self.slots(walk.what, steps + 1, hw, None);
        state.row(0).write_f32(&self.gpu, start);
        let s = &self.scheduler;
        let coef: Vec<_> = (grid.iter())
            .map(|&t| {
                coefficients(
                    walk.guidance,
                    0.0,
                    s.v_coefficients(t),
                    s.step_coefficients(t, steps),
                )
            })
            .collect();
        let tables = StepTables::new(&self.gpu, &grid, &coef);
        let rows = walk.texts.len();
        let ctx = self.text_rows(walk.texts);
        let io = LoopIo::forward(
            &state,
            &tables,
            &ctx,
            Guidance {
                row0: 0,
                rows,
                v_prediction: self.scheduler.prediction == Prediction::V,
            },
        );
        let g = self.loop_graph(rows, hw, &io, None, |_| Ok(Hooks::default()))?;
        g.tune().await?;
        let plan = g.plan()?;
        self.note_peak(plan.planned_bytes() + state.bytes());
        progress.phase(walk.what, steps);
        let mut flight = InFlight::default();
        for i in 0..steps {
            self.submit_step(&plan, i, rows, &mut flight, progress)
                .await?;
        }
        self.drain(&mut flight, progress).await?;
        let all = state.to_f32(&self.gpu).await?;
        let last = &all[steps * start.len()..];
        self.check_finite(&format!("the {}", walk.what), last, walk.suspect)?;
        Ok((grid, all))
    }
}

/// What a [`Pipeline::walk`] runs: one UNet row per text, with classifier-free
/// guidance between two rows (none for one).
struct Walk<'a> {
    what: &'static str,
    texts: &'a [&'a [f32]],
    guidance: f32,
    /// The likely cause of a non-finite result, for the error.
    suspect: &'static str,
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
