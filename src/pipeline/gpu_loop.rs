//! The loop on the GPU (docs/ALGORITHM.md, "The loop on the GPU"). A phase
//! (inversion, source pass, sampling, generation) keeps its latents in a
//! float32 state buffer of slots, one latent per step, and its per-step
//! values in two tables written once: the timesteps and the update's
//! coefficients. Each UNet plan of the phase starts with
//! [`ops::latent_rows`] (its inputs from the state) and ends with
//! [`ops::ddim_update`] (guidance and the DDIM step into the next slot), so a
//! step is a replay whose only change is a few uniform words
//! ([`Plan::set_step`]). Steps are submitted back to back; the host waits
//! only on completion callbacks, to report progress, and reads nothing until
//! the phase's result is wanted.

use super::stages::Pipeline;
use super::store::{FeatureStore, StoreValues};
use super::{PnpError, Result};
use crate::gpu::{DType, Gpu, InFlight, Tensor};
use crate::graph::{Graph, Plan};
use crate::models::hooks::Hooks;
use crate::models::unet::Unet;
use crate::ops::{self, DDIM_COEFFICIENTS, Guidance, Slot};
use crate::progress::Progress;

/// Steps submitted beyond the one the host waits for: enough that the GPU
/// never waits for the host between steps, few enough that progress is
/// current.
const AHEAD: usize = 2;

/// One step's coefficients for `ops::ddim_update` (see `shaders/ddim.wgsl`).
pub(super) fn coefficients(
    guidance: f32,
    mix: f32,
    v: [f32; 2],
    update: [f32; 4],
) -> [f32; DDIM_COEFFICIENTS] {
    let [a, b, c, d] = update;
    [guidance, mix, v[0], v[1], a, b, c, d]
}

/// A phase's per-step tables on the GPU.
pub struct StepTables {
    /// (steps) float32 timesteps.
    pub timesteps: Tensor,
    /// (steps, 8) float32 update coefficients.
    pub coef: Tensor,
}

impl StepTables {
    /// Tables of one step per entry of `timesteps`, with `coef` (empty for
    /// a phase without updates).
    pub fn new(gpu: &Gpu, timesteps: &[usize], coef: &[[f32; DDIM_COEFFICIENTS]]) -> Self {
        let ts: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        let flat: Vec<f32> = coef.iter().flatten().copied().collect();
        StepTables {
            timesteps: Tensor::from_f32(gpu, "step timesteps", &ts, &[ts.len()], DType::F32),
            coef: Tensor::from_f32(gpu, "step coefficients", &flat, &[flat.len()], DType::F32),
        }
    }
}

/// How one loop plan takes its inputs from the GPU state and where its
/// result goes.
pub struct LoopIo<'a> {
    /// The latent state, (slots, C, h, w) float32.
    pub state: &'a Tensor,
    /// The slot the UNet's latent rows come from.
    pub read: Slot,
    /// The first rows from another state instead (the inline source row
    /// from the inversion trajectory): tensor, slot, rows.
    pub source: Option<(&'a Tensor, Slot, usize)>,
    /// The slot the update writes and the guidance it applies; None: no
    /// update (the source pass only captures).
    pub update: Option<(Slot, Guidance)>,
    pub tables: &'a StepTables,
    /// Text rows, (batch, tokens, width) in the graph's type.
    pub ctx: &'a Tensor,
}

/// Records one step of the loop into `g`: the UNet's latent rows and
/// timesteps from the state ([`ops::latent_rows`]), the UNet of `batch` rows
/// at latent size `hw` with `hooks`, and the update ([`ops::ddim_update`]).
pub fn record_step(
    g: &mut Graph,
    unet: &Unet,
    batch: usize,
    hw: [usize; 2],
    io: &LoopIo,
    hooks: &Hooks,
) -> Result<()> {
    let state = g.external("latent state", io.state);
    let table = g.external("step timesteps", &io.tables.timesteps);
    let source = io
        .source
        .map(|(t, slot, rows)| (g.external("source latents", t), slot, rows));
    let ctx = g.external("text", io.ctx);
    let latent = [unet.config.in_channels, hw[0], hw[1]];
    let (x, t) = ops::latent_rows(
        g,
        &state,
        io.read,
        source.as_ref().map(|(v, s, r)| (v, *s, *r)),
        Some(&table),
        batch,
        &latent,
        1.0,
    )?;
    let t = t.expect("latent_rows makes timesteps when given a table");
    let out = unet.forward_hooked(g, &x, &t, &ctx, hooks)?;
    if let Some((next, guidance)) = io.update {
        let coef = g.external("step coefficients", &io.tables.coef);
        ops::ddim_update(g, &state, io.read, next, &out, guidance, &coef)?;
    }
    Ok(())
}

impl<'a> LoopIo<'a> {
    /// The common wiring: step i reads slot i of `state` and writes its
    /// update, guided by `guidance`, into slot i + 1; no source rows.
    pub fn forward(
        state: &'a Tensor,
        tables: &'a StepTables,
        ctx: &'a Tensor,
        guidance: Guidance,
    ) -> Self {
        LoopIo {
            state,
            read: Slot::each_step(0),
            source: None,
            update: Some((Slot::each_step(1), guidance)),
            tables,
            ctx,
        }
    }
}

impl Pipeline<'_> {
    /// Float32 latent slots `(slots, C, h, w)` on the device, filled with `data`
    /// (or left for the loop to write; [`Tensor::row`] writes one slot).
    pub(super) fn slots(
        &self,
        name: &str,
        slots: usize,
        hw: [usize; 2],
        data: Option<&[f32]>,
    ) -> Tensor {
        let shape = [slots, self.model.unet.config.in_channels, hw[0], hw[1]];
        match data {
            Some(d) => Tensor::from_f32(&self.gpu, name, d, &shape, DType::F32),
            None => Tensor::empty(&self.gpu, name, &shape, DType::F32),
        }
    }

    /// Refuses a state of `slots` latents of size `hw` that one binding
    /// cannot hold (the loop binds its state whole).
    pub(super) fn check_slots(&self, what: &str, slots: usize, hw: [usize; 2]) -> Result<()> {
        let bytes = (slots * self.model.unet.config.in_channels * hw[0] * hw[1] * 4) as u64;
        if bytes > self.max_binding() {
            return Err(PnpError::Input(format!(
                "{what} keeps {slots} latents on the GPU ({bytes} bytes), more than this adapter binds at once ({} bytes): use fewer steps or a smaller size",
                self.max_binding()
            )));
        }
        Ok(())
    }

    /// A UNet graph of `batch` rows wired to the GPU loop by `io`, with the
    /// hooks `hooks` makes from the store's values (None when no store is
    /// bound), recorded and not yet planned.
    pub(super) fn loop_graph(
        &self,
        batch: usize,
        hw: [usize; 2],
        io: &LoopIo,
        store: Option<&FeatureStore>,
        hooks: impl FnOnce(Option<&StoreValues>) -> Result<Hooks<'_>>,
    ) -> Result<Graph> {
        let mut g = self.graph();
        let values = store.map(|s| s.bind(&mut g));
        let hooks = hooks(values.as_ref())?;
        record_step(&mut g, &self.model.unet, batch, hw, io, &hooks)?;
        drop(hooks);
        Ok(g)
    }

    /// Submits step `step` of `plan` (`batch` UNet rows) without waiting
    /// for it, then waits while more than [`AHEAD`] steps are in flight,
    /// ticking `progress` as each completes. Fails with
    /// [`PnpError::Cancelled`] instead when `progress` says the run is
    /// cancelled (the steps in flight finish on the GPU; nothing waits for
    /// them).
    pub(super) async fn submit_step(
        &mut self,
        plan: &Plan,
        step: usize,
        batch: usize,
        flight: &mut InFlight,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if progress.cancelled() {
            return Err(PnpError::Cancelled);
        }
        plan.set_step(step);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        plan.encode(&mut enc);
        self.gpu.submit(enc.finish(), flight);
        self.stats.unet_evals += batch;
        self.stats.step_dispatches = self.stats.step_dispatches.max(plan.dispatch_counts());
        while flight.len() > AHEAD {
            self.gpu.oldest_done(flight).await?;
            progress.tick();
        }
        Ok(())
    }

    /// Waits for every step in flight, ticking `progress` for each.
    pub(super) async fn drain(
        &self,
        flight: &mut InFlight,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        while !flight.is_empty() {
            self.gpu.oldest_done(flight).await?;
            progress.tick();
        }
        Ok(())
    }

    /// Copies `slot` of `from` into `slot_to` of `to` (same latent size) on
    /// the GPU, after the work submitted so far.
    pub(super) fn copy_slot(&self, from: &Tensor, slot: usize, to: &Tensor, slot_to: usize) {
        let (src, dst) = (from.row(slot), to.row(slot_to));
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(
            &src.buffer,
            src.offset,
            &dst.buffer,
            dst.offset,
            src.bytes(),
        );
        self.gpu.queue.submit([enc.finish()]);
        self.gpu.counters.submit();
    }
}
