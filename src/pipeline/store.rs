//! The GPU-resident feature store: the source pass's injected tensors for
//! every injected sampling step, bound directly by the target pass.
//!
//! The source row at step t depends only on (z_t, t, c_src), so it is the
//! same for every target prompt: computed once per guidance image, it saves
//! the batch-3 UNet call's source row for each prompt and, in the injected
//! layers, the target rows' to_q/to_k GEMMs and the injected ResNet's
//! residual branch (docs/ALGORITHM.md, "The GPU-resident feature store").

use super::{PnpError, StoreMode};
use crate::gpu::{DType, Gpu, Tensor};
use crate::graph::{Graph, Value};
use crate::models::hooks::{AttnTap, Hooks, QkHook, ResnetHook, ResnetTap, Source};

/// The layers PnP injects (docs/ALGORITHM.md,
/// "Source pass and captured features"): the residual branch of
/// up_blocks[1].resnets[1], and attn1 of up_blocks[1].attentions[1..3],
/// up_blocks[2].attentions[0..3], up_blocks[3].attentions[0..3].
pub struct Taps {
    pub resnet: ResnetTap,
    pub attn: Vec<AttnTap>,
}

impl Taps {
    pub fn pnp() -> Self {
        let mut attn = vec![AttnTap { up: 1, attn: 1 }, AttnTap { up: 1, attn: 2 }];
        for up in 2..4 {
            attn.extend((0..3).map(|a| AttnTap { up, attn: a }));
        }
        Taps {
            resnet: ResnetTap { up: 1, resnet: 1 },
            attn,
        }
    }
}

/// Shapes of the tapped tensors at one resolution, per batch row.
#[derive(Clone, Debug)]
pub struct TapShapes {
    /// (C, H, W) of the ResNet's residual branch.
    pub resnet: [usize; 3],
    /// (L, C) of each attention's q (and k).
    pub attn: Vec<[usize; 2]>,
}

impl TapShapes {
    /// From the UNet's channels: up block i runs at latent / 2^(n-1-i) with
    /// the reversed block channels. A tap past the last up block is refused.
    pub fn new(
        taps: &Taps,
        block_out_channels: &[usize],
        latent_hw: [usize; 2],
    ) -> Result<Self, PnpError> {
        let n = block_out_channels.len();
        let at = |up: usize| {
            if up >= n {
                return Err(PnpError::Input(format!(
                    "a feature tap names up_blocks[{up}], but this UNet has {n} up blocks"
                )));
            }
            let div = 1usize << (n - 1 - up);
            let c = block_out_channels[n - 1 - up];
            Ok((c, latent_hw[0] / div, latent_hw[1] / div))
        };
        let (c, h, w) = at(taps.resnet.up)?;
        let attn = taps
            .attn
            .iter()
            .map(|t| at(t.up).map(|(c, h, w)| [h * w, c]))
            .collect::<Result<_, _>>()?;
        Ok(TapShapes {
            resnet: [c, h, w],
            attn,
        })
    }

    /// Bytes of the largest single store tensor (one binding).
    pub fn largest_tensor(&self, schedule: Schedule, dtype: DType) -> u64 {
        let res: usize = self.resnet.iter().product();
        self.attn
            .iter()
            .map(|[l, c]| schedule.qk_steps * l * c)
            .chain([schedule.feature_steps * res])
            .max()
            .map_or(0, |n| (n * dtype.size()) as u64)
    }

    /// Bytes a store with these slot counts takes.
    pub fn store_bytes(&self, schedule: Schedule, dtype: DType) -> u64 {
        let res: usize = self.resnet.iter().product();
        let qk: usize = self.attn.iter().map(|[l, c]| 2 * l * c).sum();
        ((schedule.feature_steps * res + schedule.qk_steps * qk) * dtype.size()) as u64
    }
}

pub struct FeatureStore {
    /// (feature slots, C, H, W).
    pub resnet: Tensor,
    /// Per tapped attention: (qk slots, L, C) for q and for k.
    pub q: Vec<Tensor>,
    pub k: Vec<Tensor>,
}

impl FeatureStore {
    /// A store with one slot per injected step of `schedule`.
    pub fn new(gpu: &Gpu, shapes: &TapShapes, schedule: Schedule, dtype: DType) -> Self {
        let [c, h, w] = shapes.resnet;
        let slots = |n: usize| n.max(1);
        FeatureStore {
            resnet: Tensor::empty(
                gpu,
                "store resnet",
                &[slots(schedule.feature_steps), c, h, w],
                dtype,
            ),
            q: shapes
                .attn
                .iter()
                .map(|&[l, c]| {
                    Tensor::empty(gpu, "store q", &[slots(schedule.qk_steps), l, c], dtype)
                })
                .collect(),
            k: shapes
                .attn
                .iter()
                .map(|&[l, c]| {
                    Tensor::empty(gpu, "store k", &[slots(schedule.qk_steps), l, c], dtype)
                })
                .collect(),
        }
    }

    /// The store's tensors as values of graph `g`.
    pub fn bind(&self, g: &mut Graph) -> StoreValues {
        StoreValues {
            resnet: g.external("store resnet", &self.resnet),
            q: self.q.iter().map(|t| g.external("store q", t)).collect(),
            k: self.k.iter().map(|t| g.external("store k", t)).collect(),
        }
    }
}

pub struct StoreValues {
    pub resnet: Value,
    pub q: Vec<Value>,
    pub k: Vec<Value>,
}

/// Which injections a step makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Inject {
    pub features: bool,
    pub qk: bool,
}

impl Inject {
    pub fn any(self) -> bool {
        self.features || self.qk
    }
}

/// When each injection runs (docs/ALGORITHM.md, "Injection schedule"):
/// ResNet features while step i < floor(n pnp_f_t), self-attention queries
/// and keys while i < floor(n pnp_attn_t), for n sampling steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub feature_steps: usize,
    pub qk_steps: usize,
}

impl Schedule {
    pub fn new(steps: usize, pnp_f_t: f64, pnp_attn_t: f64) -> Self {
        let of = |f: f64| ((steps as f64) * f).floor() as usize;
        Schedule {
            feature_steps: of(pnp_f_t),
            qk_steps: of(pnp_attn_t),
        }
    }

    /// The injections of sampling step `i` (0 = the noisiest).
    pub fn at(self, i: usize) -> Inject {
        Inject {
            features: i < self.feature_steps,
            qk: i < self.qk_steps,
        }
    }

    /// Steps the source pass must run to fill the store.
    pub fn source_steps(self) -> usize {
        self.feature_steps.max(self.qk_steps)
    }
}

/// Whether the target pass reads a resident store or the inline source row,
/// for one translation's schedule and tap shapes.
#[derive(Clone, Debug)]
pub struct StorePlan {
    pub schedule: Schedule,
    pub shapes: TapShapes,
    pub resident: bool,
    /// Bytes the resident store takes (whether or not it is used).
    pub bytes: u64,
    /// Why `auto` fell back to the inline row, for the user.
    pub fallback: Option<String>,
    /// Target rows of each sampling call: 2 (negative, target), or 3 with
    /// the negative-prompt schedule ([`super::options::GuidanceBase::rows`]).
    pub target_rows: usize,
}

impl StorePlan {
    /// The store for `mode`: `auto` keeps it resident when every store
    /// tensor fits one binding and the whole fits `budget` bytes.
    pub fn decide(
        mode: StoreMode,
        shapes: TapShapes,
        schedule: Schedule,
        dtype: DType,
        max_binding: u64,
        budget: u64,
        target_rows: usize,
    ) -> Self {
        let bytes = shapes.store_bytes(schedule, dtype);
        let fits = shapes.largest_tensor(schedule, dtype) <= max_binding && bytes <= budget;
        let resident = match mode {
            StoreMode::Resident => true,
            StoreMode::Inline => false,
            StoreMode::Auto => fits,
        };
        let fallback = (mode == StoreMode::Auto && !fits).then(|| {
            format!(
                "the feature store would take {} MiB (budget {} MiB, largest binding {} MiB): using the reference's inline source row instead",
                bytes >> 20,
                budget >> 20,
                max_binding >> 20
            )
        });
        StorePlan {
            schedule,
            shapes,
            resident,
            bytes,
            fallback,
            target_rows,
        }
    }

    /// Rows of the UNet call of a sampling step injecting `what`: the
    /// target rows, and the inline source row first when it injects.
    pub fn batch(&self, what: Inject) -> usize {
        self.target_rows + (!self.resident && what.any()) as usize
    }

    /// The largest batch any sampling step runs (step 0 injects whatever
    /// any step does).
    pub fn max_batch(&self) -> usize {
        self.batch(self.schedule.at(0))
    }
}

/// Hooks for the source pass (batch 1) that write into the store.
pub fn capture_hooks<'a>(taps: &Taps, store: &'a StoreValues, what: Inject) -> Hooks<'a> {
    let mut hooks = Hooks::default();
    if what.features {
        hooks.resnets.push((
            taps.resnet,
            ResnetHook {
                capture: Some(&store.resnet),
                inject: None,
            },
        ));
    }
    if what.qk {
        for (i, t) in taps.attn.iter().enumerate() {
            hooks.attn1.push((
                *t,
                QkHook {
                    capture: Some((&store.q[i], &store.k[i])),
                    inject: None,
                },
            ));
        }
    }
    hooks
}

/// Hooks for a target pass: from the store, or from row 0 of a batch-3 call
/// when `store` is None (the reference's inline source row).
pub fn inject_hooks<'a>(taps: &Taps, store: Option<&'a StoreValues>, what: Inject) -> Hooks<'a> {
    let mut hooks = Hooks::default();
    if what.features {
        let inject = match store {
            Some(s) => Source::Store(&s.resnet),
            None => Source::Row0,
        };
        hooks.resnets.push((
            taps.resnet,
            ResnetHook {
                capture: None,
                inject: Some(inject),
            },
        ));
    }
    if what.qk {
        for (i, t) in taps.attn.iter().enumerate() {
            let inject = match store {
                Some(s) => Source::Store((&s.q[i], &s.k[i])),
                None => Source::Row0,
            };
            hooks.attn1.push((
                *t,
                QkHook {
                    capture: None,
                    inject: Some(inject),
                },
            ));
        }
    }
    hooks
}
