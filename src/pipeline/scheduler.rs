//! The DDIM scheduler (docs/ALGORITHM.md, "The scheduler"), bit-compatible with
//! diffusers' `DDIMScheduler` (eta = 0, "leading" spacing; epsilon or v
//! prediction, the latter turned into epsilon by [`Ddim::epsilon`]).
//!
//! diffusers keeps `alphas_cumprod` in float32, so it is rebuilt here the way
//! PyTorch's CPU kernels compute it:
//! - `torch.linspace(start, end, n, dtype=float32)`: `step = (end - start) /
//!   (n - 1)` in f32; element `i < n / 2` is `fma(step, i, start)` and the
//!   rest `fma(-step, n - 1 - i, end)` (it computes from both ends). The fused
//!   multiply-add is what the AVX2/AVX512 builds of ATen do (the compiler
//!   contracts `start + step * i`); a torch forced to
//!   `ATEN_CPU_CAPABILITY=default` rounds the product separately and gets
//!   about 145 of the 1000 betas 1 ulp off.
//! - `betas ** 2` and `1 - betas` in f32;
//! - `torch.cumprod` on the CPU accumulates in double (ATen's `acc_type` of
//!   float) and rounds every prefix to f32.

use serde_json::Value as Json;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchedulerError {
    #[error("scheduler config: {0}")]
    Config(String),
    #[error("{0}")]
    Steps(String),
}

pub type Result<T> = std::result::Result<T, SchedulerError>;

/// What the UNet predicts (the scheduler config's `prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (SD 1.x, SD 2.x base).
    Epsilon,
    /// v = sqrt(a) eps - sqrt(1 - a) x0 (SD 2.x 768 checkpoints).
    V,
}

/// DDIM with eta = 0 (deterministic), as used by PnP for inversion and sampling.
#[derive(Clone, Debug)]
pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_train_timesteps: usize,
    steps_offset: usize,
    pub prediction: Prediction,
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on an AVX2/AVX512 CPU.
fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if steps == 1 {
        return vec![s];
    }
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, e)
            }
        })
        .collect()
}

fn cfg<'a>(json: &'a Json, key: &str) -> Option<&'a Json> {
    json.get(key).filter(|v| !v.is_null())
}

fn cfg_f64(json: &Json, key: &str, default: f64) -> Result<f64> {
    match cfg(json, key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| SchedulerError::Config(format!("{key} must be a number, got {v}"))),
    }
}

fn cfg_usize(json: &Json, key: &str, default: usize) -> Result<usize> {
    match cfg(json, key) {
        None => Ok(default),
        Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
            SchedulerError::Config(format!("{key} must be a non-negative integer, got {v}"))
        }),
    }
}

fn cfg_bool(json: &Json, key: &str, default: bool) -> Result<bool> {
    match cfg(json, key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| SchedulerError::Config(format!("{key} must be a boolean, got {v}"))),
    }
}

fn cfg_str<'a>(json: &'a Json, key: &str, default: &'a str) -> Result<&'a str> {
    match cfg(json, key) {
        None => Ok(default),
        Some(v) => v
            .as_str()
            .ok_or_else(|| SchedulerError::Config(format!("{key} must be a string, got {v}"))),
    }
}

impl Ddim {
    /// Builds the scheduler from a diffusers `scheduler_config.json` (any
    /// `_class_name`: SD ships a PNDM config, PnP runs DDIM on it). Missing
    /// keys take DDIMScheduler's defaults; settings this implementation does
    /// not support are rejected.
    pub fn from_config(json: &Json) -> Result<Self> {
        if !json.is_object() {
            return Err(SchedulerError::Config("expected a JSON object".into()));
        }
        let n_train = cfg_usize(json, "num_train_timesteps", 1000)?;
        let beta_start = cfg_f64(json, "beta_start", 0.0001)?;
        let beta_end = cfg_f64(json, "beta_end", 0.02)?;
        let schedule = cfg_str(json, "beta_schedule", "linear")?;
        let set_alpha_to_one = cfg_bool(json, "set_alpha_to_one", true)?;
        let steps_offset = cfg_usize(json, "steps_offset", 0)?;
        let prediction = cfg_str(json, "prediction_type", "epsilon")?;
        let spacing = cfg_str(json, "timestep_spacing", "leading")?;
        let unsupported = |what: String| Err(SchedulerError::Config(what));
        // SD trains on 1000; the cap keeps a damaged config from allocating
        // the schedule of billions of timesteps.
        const MAX_TRAIN: usize = 100_000;
        if !(2..=MAX_TRAIN).contains(&n_train) {
            return unsupported(format!(
                "num_train_timesteps = {n_train}; it must be in 2..={MAX_TRAIN} (SD: 1000)"
            ));
        }
        let prediction = match prediction {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            other => {
                return unsupported(format!(
                    "prediction_type \"{other}\" is not supported (\"epsilon\" or \"v_prediction\")"
                ));
            }
        };
        if spacing != "leading" {
            return unsupported(format!(
                "timestep_spacing \"{spacing}\" is not supported (only \"leading\")"
            ));
        }
        if cfg(json, "trained_betas").is_some() {
            return unsupported("trained_betas is not supported".into());
        }
        if cfg_bool(json, "clip_sample", true)? {
            return unsupported("clip_sample = true is not supported (PnP runs with false)".into());
        }
        if cfg_bool(json, "thresholding", false)? {
            return unsupported("thresholding = true is not supported".into());
        }
        if cfg_bool(json, "rescale_betas_zero_snr", false)? {
            return unsupported("rescale_betas_zero_snr = true is not supported".into());
        }
        if steps_offset >= n_train {
            return unsupported(format!(
                "steps_offset {steps_offset} >= num_train_timesteps {n_train}"
            ));
        }
        let betas: Vec<f32> = match schedule {
            "linear" => torch_linspace_f32(beta_start, beta_end, n_train),
            "scaled_linear" => torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), n_train)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            other => {
                return unsupported(format!(
                    "beta_schedule \"{other}\" is not supported (only \"scaled_linear\" and \"linear\")"
                ));
            }
        };
        if let Some((t, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            return unsupported(format!(
                "beta_start {beta_start} and beta_end {beta_end} give beta {b} at timestep {t}; every beta must lie in (0, 1)"
            ));
        }
        let mut acc = 1f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|&b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect();
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Ddim {
            alphas_cumprod,
            final_alpha_cumprod,
            num_train_timesteps: n_train,
            steps_offset,
            prediction,
        })
    }

    /// [`Self::from_config`] of a model's scheduler config; SD's values
    /// ([`Self::sd`]) when the model has none.
    pub fn from_optional_config(json: Option<&Json>) -> Result<Self> {
        match json {
            Some(j) => Self::from_config(j),
            None => Ok(Self::sd()),
        }
    }

    /// The Stable Diffusion scheduler config (docs/ALGORITHM.md, "The scheduler").
    pub fn sd() -> Self {
        Self::from_config(&serde_json::json!({
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "set_alpha_to_one": false,
            "steps_offset": 1,
            "clip_sample": false,
            "prediction_type": "epsilon",
            "timestep_spacing": "leading",
        }))
        .expect("the built-in SD config is supported")
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.num_train_timesteps
    }
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    /// The spacing between inference timesteps for `n` steps.
    pub fn step_ratio(&self, n: usize) -> usize {
        self.num_train_timesteps / n.max(1)
    }

    /// Inference timesteps for `n` steps, descending ("leading" spacing):
    /// `[0, 1, .., n-1] * (num_train div n) + steps_offset`, reversed.
    /// n = 0, n > num_train_timesteps, or a grid whose largest timestep falls
    /// outside the training range (n = 1000 with steps_offset 1: diffusers
    /// would index alphas_cumprod[1000]) is an error.
    pub fn timesteps(&self, n: usize) -> Result<Vec<usize>> {
        if n == 0 || n > self.num_train_timesteps {
            return Err(SchedulerError::Steps(format!(
                "number of steps must be in 1..={}, got {n}",
                self.num_train_timesteps
            )));
        }
        let ratio = self.step_ratio(n);
        let last = (n - 1) * ratio + self.steps_offset;
        if last >= self.num_train_timesteps {
            return Err(SchedulerError::Steps(format!(
                "{n} steps put timestep {last} outside 0..{} (steps_offset {})",
                self.num_train_timesteps, self.steps_offset
            )));
        }
        Ok((0..n)
            .rev()
            .map(|i| i * ratio + self.steps_offset)
            .collect())
    }

    /// The noise the UNet's output `out` at timestep `t` on the latent `x`
    /// stands for: `out` itself under epsilon prediction; under v
    /// prediction `sqrt(a) v + sqrt(1 - a) x`, as diffusers'
    /// `DDIMScheduler.step` computes `pred_epsilon` (a = alphas_cumprod[t],
    /// f32). The DDIM updates then take it as they take epsilon: their x0,
    /// `(x - sqrt(1 - a) eps) / sqrt(a)`, is diffusers' `sqrt(a) x -
    /// sqrt(1 - a) v` up to rounding. Guidance commutes with this (it is
    /// affine in `out` with the same `x` for every row).
    pub fn epsilon<'a>(&self, out: &'a [f32], x: &[f32], t: usize) -> std::borrow::Cow<'a, [f32]> {
        match self.prediction {
            Prediction::Epsilon => std::borrow::Cow::Borrowed(out),
            Prediction::V => {
                let [sa, sb] = self.v_coefficients(t);
                out.iter().zip(x).map(|(&v, &x)| sa * v + sb * x).collect()
            }
        }
    }

    /// `[sqrt(a), sqrt(1 - a)]` at t (f32): epsilon = sqrt(a) v + sqrt(1 - a) x.
    pub fn v_coefficients(&self, t: usize) -> [f32; 2] {
        let a = self.alpha(t);
        [a.sqrt(), (1.0 - a).sqrt()]
    }

    /// The sampling step's coefficients from t of an `n`-step grid, in the
    /// form the GPU loop takes (`shaders/ddim.wgsl`): `[c_eps, c_div, c_x0,
    /// c_dir]` with `x0 = (x - c_eps e) / c_div`, `x' = c_x0 x0 + c_dir e`.
    /// The values [`Self::step`] uses, computed in f32 as diffusers does.
    pub fn step_coefficients(&self, t: usize, n: usize) -> [f32; 4] {
        let a = self.alpha(t);
        let ap = self.prev_alpha(t, n);
        // diffusers: (1 - ap - std_dev_t**2) ** 0.5 with std_dev_t = 0.
        [
            (1.0 - a).sqrt(),
            a.sqrt(),
            ap.sqrt(),
            (1.0 - ap - 0.0).sqrt(),
        ]
    }

    /// The inversion step's coefficients (to t from `t_prev`, see
    /// [`Self::invert_step`]) in the same form: `[sqrt(1 - ap), sqrt(ap),
    /// sqrt(a), sqrt(1 - a)]`, each computed in f64 and rounded once.
    pub fn invert_coefficients(&self, t: usize, t_prev: Option<usize>) -> [f32; 4] {
        let a = self.alpha(t) as f64;
        let ap = t_prev.map_or(self.final_alpha_cumprod, |p| self.alpha(p)) as f64;
        [(1.0 - ap).sqrt(), ap.sqrt(), a.sqrt(), (1.0 - a).sqrt()].map(|c| c as f32)
    }

    /// `alphas_cumprod[t]`.
    pub fn alpha(&self, t: usize) -> f32 {
        self.alphas_cumprod[t]
    }

    /// The alpha of the previous (less noisy) sampling timestep for an
    /// `n`-step grid: `alphas_cumprod[t - ratio]`, or final_alpha_cumprod
    /// when that is negative.
    pub fn prev_alpha(&self, t: usize, n: usize) -> f32 {
        match t.checked_sub(self.step_ratio(n)) {
            Some(p) => self.alphas_cumprod[p],
            None => self.final_alpha_cumprod,
        }
    }

    /// One DDIM sampling step (eta = 0) from timestep `t` of an `n`-step grid,
    /// computed in f32 in the order of diffusers' `DDIMScheduler.step`:
    /// `x0 = (x - sqrt(1 - a) eps) / sqrt(a)`,
    /// `x' = sqrt(ap) x0 + sqrt(1 - ap) eps`. Uses IEEE sqrt; torch's f32
    /// sqrt is sometimes 1 ulp off it, so results match diffusers to ~1 ulp.
    pub fn step(&self, x: &[f32], eps: &[f32], t: usize, n: usize) -> Vec<f32> {
        assert_eq!(x.len(), eps.len(), "step: x and eps lengths differ");
        let [sqrt_beta, sqrt_a, sqrt_ap, dir] = self.step_coefficients(t, n);
        x.iter()
            .zip(eps)
            .map(|(&x, &e)| {
                let x0 = (x - sqrt_beta * e) / sqrt_a;
                sqrt_ap * x0 + dir * e
            })
            .collect()
    }

    /// One DDIM inversion step to timestep `t` from the previous (less noisy)
    /// timestep `t_prev` of the ascending inversion grid (None at the first
    /// step, which uses final_alpha_cumprod). From docs/ALGORITHM.md,
    /// "DDIM inversion", which follows the PnP authors' `inversion_func`
    /// (pnp-diffusers preprocess.py):
    /// `x0 = (z - sqrt(1 - ap) eps) / sqrt(ap)`, `z' = sqrt(a) x0 + sqrt(1 - a) eps`.
    /// Evaluated in f64 from the f32 alphas and rounded once to f32 (the
    /// authors' f32/f16 arithmetic only adds rounding noise to this).
    pub fn invert_step(&self, z: &[f32], eps: &[f32], t: usize, t_prev: Option<usize>) -> Vec<f32> {
        assert_eq!(z.len(), eps.len(), "invert_step: z and eps lengths differ");
        let a = self.alpha(t) as f64;
        let ap = t_prev.map_or(self.final_alpha_cumprod, |p| self.alpha(p)) as f64;
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        let (sap, sbp) = (ap.sqrt(), (1.0 - ap).sqrt());
        z.iter()
            .zip(eps)
            .map(|(&z, &e)| {
                let (z, e) = (z as f64, e as f64);
                let x0 = (z - sbp * e) / sap;
                (sa * x0 + sb * e) as f32
            })
            .collect()
    }

    /// Whether an `inv_n`-step inversion stores a latent at every timestep of
    /// an `samp_n`-step sampling grid (PnP starts sampling from, and injects
    /// from, the inversion latents). False if either count is invalid.
    /// Constant time: both grids are `i * ratio + steps_offset`, so the
    /// sampling grid is inside the inversion's when its ratio is a multiple
    /// of the inversion's and its last index falls within the inversion's
    /// (the error messages search over every count with it).
    pub fn inversion_grid_contains(&self, inv_n: usize, samp_n: usize) -> bool {
        if !self.valid_steps(inv_n) || !self.valid_steps(samp_n) {
            return false;
        }
        if samp_n == 1 {
            return true;
        }
        let (ri, rs) = (self.step_ratio(inv_n), self.step_ratio(samp_n));
        rs.is_multiple_of(ri) && (samp_n - 1) * rs / ri < inv_n
    }

    /// Whether [`Self::timesteps`] takes `n` (without building the grid).
    fn valid_steps(&self, n: usize) -> bool {
        (1..=self.num_train_timesteps).contains(&n)
            && (n - 1) * self.step_ratio(n) + self.steps_offset < self.num_train_timesteps
    }

    /// The inversion step counts nearest to `inv_n` (the largest below it
    /// and the smallest above it that exist) whose grid contains the
    /// `samp_n`-step sampling grid: what an error suggests instead of a list.
    pub fn nearest_inversion_steps(&self, inv_n: usize, samp_n: usize) -> Vec<usize> {
        nearest(inv_n, self.num_train_timesteps, |n| {
            self.inversion_grid_contains(n, samp_n)
        })
    }

    /// The sampling step counts nearest to `samp_n` whose grid an
    /// `inv_n`-step inversion contains.
    pub fn nearest_sampling_steps(&self, inv_n: usize, samp_n: usize) -> Vec<usize> {
        nearest(samp_n, self.num_train_timesteps, |n| {
            self.inversion_grid_contains(inv_n, n)
        })
    }

    /// Every inversion step count whose grid contains the `samp_n`-step
    /// sampling grid, ascending (for error messages; empty if samp_n is invalid).
    pub fn compatible_inversion_steps(&self, samp_n: usize) -> Vec<usize> {
        (1..=self.num_train_timesteps)
            .filter(|&n| self.inversion_grid_contains(n, samp_n))
            .collect()
    }
}

/// The largest n < `want` and the smallest n > `want` in 1..=`max` with
/// `ok(n)` (those that exist), or `want` alone when it is ok.
fn nearest(want: usize, max: usize, ok: impl Fn(usize) -> bool) -> Vec<usize> {
    if (1..=max).contains(&want) && ok(want) {
        return vec![want];
    }
    let below = (1..want.min(max + 1)).rev().find(|&n| ok(n));
    let above = (want + 1..=max).find(|&n| ok(n));
    below.into_iter().chain(above).collect()
}

/// "a", "a or b", or "none" when empty: counts for a message.
pub fn either(counts: &[usize]) -> String {
    match counts {
        [] => "none".into(),
        _ => counts
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" or "),
    }
}
