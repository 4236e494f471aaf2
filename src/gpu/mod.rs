//! The one place that knows wgpu: adapter choice, device limits, tensors,
//! the pipeline cache and readback. wgpu is pinned in Cargo.toml because its
//! API changes between releases; nothing outside `gpu/` and `graph/` touches it.

mod coop;
mod pipeline;
pub(crate) mod tensor;
mod tune;

pub use coop::Coop;
pub use pipeline::{Access, FLAT_WORKGROUP, INCLUDES, KernelKey, PipelineCache, shader_source};
pub use tensor::{DType, Tensor};
pub use tune::{Autotune, Choice, TuneSummary, Tuner, user_cache_dir};

use std::sync::Arc;

/// What went wrong on the device, phrased for the person running the program.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no usable GPU adapter was found{hint}. Install a Vulkan, Metal or DX12 driver; on a Linux \
         machine without a GPU, Mesa's lavapipe (Debian package mesa-vulkan-drivers) works"
    )]
    NoAdapter { hint: String },
    #[error(
        "no adapter name contains {wanted:?}; available: {available}. Set --adapter/PNP_ADAPTER to a part of one of these names"
    )]
    AdapterNotFound { wanted: String, available: String },
    #[error("the adapter {adapter:?} refused to open a device: {source}")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },
    #[error(
        "the GPU ran out of memory while {what}: {detail}. Use a smaller image size, fewer prompts, or f16 weights"
    )]
    OutOfMemory { what: String, detail: String },
    #[error("GPU validation error while {what}: {detail}")]
    Validation { what: String, detail: String },
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
    #[error(
        "{what} needs a {bytes}-byte storage binding but this adapter allows at most {limit} bytes per binding. Use a smaller image size or --precision f16"
    )]
    BindingTooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    #[error(
        "{what} needs a {bytes}-byte buffer but this adapter allows at most {limit} bytes per buffer. Use a smaller image size or --precision f16"
    )]
    BufferTooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    #[error(
        "{what} has {elems} elements; kernels address at most 4294967295 (32-bit indices). Use a smaller image size"
    )]
    TooManyElements { what: String, elems: usize },
    #[error(
        "{what} would dispatch {groups:?} workgroups; this adapter allows at most {limit} per dimension. Use a smaller image size"
    )]
    TooManyWorkgroups {
        what: String,
        groups: [u32; 3],
        limit: u32,
    },
}

/// Whether shader modules keep wgpu's runtime checks: in debug builds, when
/// asked in `opts`, or with `PNP_CHECKED_SHADERS=1` (the bounds-check path's
/// cost is what a release build saves).
fn checked_shaders(opts: &GpuOptions) -> bool {
    let env = || {
        #[cfg(not(target_arch = "wasm32"))]
        return std::env::var("PNP_CHECKED_SHADERS").is_ok_and(|v| v == "1");
        #[cfg(target_arch = "wasm32")]
        false
    };
    cfg!(debug_assertions) || opts.checked_shaders || env()
}

/// How to choose the adapter. `name` matches a substring of the adapter name,
/// case-insensitively (`--adapter` / `PNP_ADAPTER`).
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub adapter_name: Option<String>,
    /// Do not enable SHADER_F16 even where the adapter has it.
    pub disable_f16: bool,
    /// Keep wgpu's runtime checks (index clamps, loop bounding) in every
    /// shader even in a release build (also `PNP_CHECKED_SHADERS=1`).
    /// Debug builds always keep them.
    pub checked_shaders: bool,
    /// Tile every GEMM and convolution at this side (and run the fused
    /// attention with this many queries per workgroup), or at the nearest
    /// larger one an op allows, whatever the problem's size: how the tests
    /// run the small-tile kernels (32 or 16) at fixture sizes. `None`: the
    /// executor's choice ([`Graph::tile_for`](crate::graph::Graph)).
    pub force_tile: Option<usize>,
    /// Do not use cooperative matrices (tensor cores) even where the adapter
    /// has them (also `PNP_NO_COOP=1`): the fallback kernels, to compare.
    pub disable_coop: bool,
    /// f16 arithmetic in the ALU GEMM and convolution tiles for f16 storage
    /// (`F16_MATH` in tile_core.wgsl): `None` uses it on hardware adapters
    /// with SHADER_F16 and no cooperative matrices (a CPU driver only
    /// emulates f16), `Some(on)` decides (tests force it on lavapipe).
    pub f16_math: Option<bool>,
    /// Never write a convolution's columns out (`shaders/im2col.wgsl`) for
    /// the cooperative loop; gather them in the kernel instead, as without
    /// cooperative matrices: how the tests run both paths on one driver.
    pub no_im2col: bool,
    /// Time the variants of each distinct GEMM, convolution and attention
    /// dispatch once and run the fastest (see [`Tuner`]); `None` takes the
    /// executor's rule ([`Graph::tile_for`](crate::graph::Graph)) untimed.
    pub autotune: Option<Autotune>,
}

/// Features this crate uses where the adapter offers them.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
    /// Cooperative matrices in use: the side (16 or 8) of the square f16 x
    /// f16 -> f32 configuration the adapter lists (see [`Coop`]).
    pub coop: Option<Coop>,
    /// f16 multiply-adds in the ALU matmul tiles by default (see
    /// [`GpuOptions::f16_math`]).
    pub f16_math: bool,
    /// The ALU matmul tiles can do f16 multiply-adds (hardware f16, or
    /// forced): the F16_MATH tiles are candidates for autotune even where
    /// cooperative matrices are the default.
    pub f16_alu: bool,
}

/// What the host asked of the device, counted since it was opened: how
/// often the CPU waits for the GPU (`reads`) is what a GPU-resident loop
/// drives down.
#[derive(Debug, Default)]
pub struct Counters {
    submits: std::sync::atomic::AtomicU64,
    reads: std::sync::atomic::AtomicU64,
    read_bytes: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    write_bytes: std::sync::atomic::AtomicU64,
}

/// A reading of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterValues {
    /// Command buffers submitted.
    pub submits: u64,
    /// Host reads of GPU buffers (each one waits for the queue).
    pub reads: u64,
    pub read_bytes: u64,
    /// Host writes into GPU buffers (weights, inputs, step uniforms).
    pub writes: u64,
    pub write_bytes: u64,
}

impl Counters {
    fn add(c: &std::sync::atomic::AtomicU64, n: u64) {
        c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn submit(&self) {
        Self::add(&self.submits, 1);
    }
    pub(crate) fn read(&self, bytes: u64) {
        Self::add(&self.reads, 1);
        Self::add(&self.read_bytes, bytes);
    }
    pub(crate) fn write(&self, bytes: u64) {
        Self::add(&self.writes, 1);
        Self::add(&self.write_bytes, bytes);
    }

    /// The counts so far.
    pub fn values(&self) -> CounterValues {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        CounterValues {
            submits: get(&self.submits),
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            writes: get(&self.writes),
            write_bytes: get(&self.write_bytes),
        }
    }
}

impl std::ops::Sub for CounterValues {
    type Output = CounterValues;
    fn sub(self, o: CounterValues) -> CounterValues {
        CounterValues {
            submits: self.submits - o.submits,
            reads: self.reads - o.reads,
            read_bytes: self.read_bytes - o.read_bytes,
            writes: self.writes - o.writes,
            write_bytes: self.write_bytes - o.write_bytes,
        }
    }
}

/// Submissions not yet known to be complete, oldest first ([`Gpu::submit`]).
#[derive(Default)]
pub struct InFlight {
    pending: std::collections::VecDeque<(
        wgpu::SubmissionIndex,
        futures_channel::oneshot::Receiver<()>,
    )>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// An opened device with its queue, limits and pipeline cache.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub caps: Capabilities,
    /// Loop iterations one shader invocation may run, where the driver bounds
    /// them: llvmpipe (lavapipe) silently leaves every loop of an invocation
    /// after 65535 iterations in total. Kernels with long per-invocation loops
    /// (attention over many keys) split their work into several dispatches to
    /// stay under it. `None`: no bound.
    pub loop_budget: Option<usize>,
    /// See [`GpuOptions::force_tile`].
    pub force_tile: Option<usize>,
    /// See [`GpuOptions::no_im2col`].
    pub no_im2col: bool,
    pub(crate) pipelines: PipelineCache,
    /// Autotune's winners, where it is on ([`GpuOptions::autotune`]).
    pub tuner: Option<Tuner>,
    /// Submits, reads and writes so far.
    pub counters: Counters,
    /// The first error no error scope caught (wgpu's default handler would
    /// panic); reported by the next read ([`Gpu::read_bytes`]).
    /// (out of memory?, message).
    uncaptured: Arc<std::sync::Mutex<Option<(bool, String)>>>,
}

impl Gpu {
    /// Opens the adapter picked by `opts` with the adapter's own limits (the
    /// defaults allow only 128 MiB bindings and 16 KiB workgroup memory).
    pub async fn new(opts: &GpuOptions) -> Result<Arc<Gpu>, GpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pick_adapter(&instance, opts).await?;
        let info = adapter.get_info();
        let available = adapter.features();
        let mut wanted = wgpu::Features::empty();
        let limits = adapter.limits();
        let shader_f16 = available.contains(wgpu::Features::SHADER_F16) && !opts.disable_f16;
        let no_coop = opts.disable_coop || std::env::var("PNP_NO_COOP").is_ok_and(|v| v == "1");
        let coop = if shader_f16 && !no_coop {
            Coop::choose(&adapter, &info, &limits)
        } else {
            None
        };
        let f16_alu = shader_f16
            && opts
                .f16_math
                .unwrap_or(info.device_type != wgpu::DeviceType::Cpu);
        let caps = Capabilities {
            shader_f16,
            subgroups: available.contains(wgpu::Features::SUBGROUP),
            timestamps: available.contains(wgpu::Features::TIMESTAMP_QUERY),
            coop,
            f16_math: f16_alu && coop.is_none(),
            f16_alu,
        };
        if caps.shader_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if caps.subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        if caps.timestamps {
            wanted |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let experimental_features = if caps.coop.is_some() {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: wgpu asks callers of its experimental features to accept
            // that their implementation may still have bugs. We use one, the
            // cooperative matrices, in the kernels of coop_core.wgsl only;
            // their results are checked against PyTorch in the test suite
            // (under a driver that has them, with the Vulkan validation layer).
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("pnp"),
                required_features: wanted,
                required_limits: limits.clone(),
                experimental_features,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|source| GpuError::RequestDevice {
                adapter: info.name.clone(),
                source,
            })?;
        // Measured: results go wrong past ~65k iterations; keep a margin.
        let loop_budget = info
            .name
            .to_lowercase()
            .contains("llvmpipe")
            .then_some(48_000);
        // Errors outside a scope are kept for the next read to report,
        // never a panic (wgpu's default handler panics).
        let uncaptured = Arc::new(std::sync::Mutex::new(None));
        let slot = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut first = slot.lock().unwrap_or_else(|p| p.into_inner());
            let oom = matches!(e, wgpu::Error::OutOfMemory { .. });
            first.get_or_insert((oom, e.to_string()));
        }));
        Ok(Arc::new(Gpu {
            uncaptured,
            counters: Counters::default(),
            pipelines: PipelineCache::new(checked_shaders(opts)),
            force_tile: opts.force_tile,
            no_im2col: opts.no_im2col,
            tuner: (opts.autotune.as_ref())
                .filter(|a| a.on_cpu || info.device_type != wgpu::DeviceType::Cpu)
                .map(|a| Tuner::new(a, &info)),
            loop_budget,
            device,
            queue,
            info,
            limits,
            caps,
        }))
    }

    /// Whether shader modules keep wgpu's runtime checks (see [`GpuOptions::checked_shaders`]).
    pub fn checked_shaders(&self) -> bool {
        self.pipelines.checked()
    }

    /// One line naming the adapter, its backend and the features in use.
    pub fn describe(&self) -> String {
        let mut feats = Vec::new();
        if self.caps.shader_f16 {
            feats.push("shader-f16");
        }
        if self.caps.subgroups {
            feats.push("subgroups");
        }
        if self.caps.timestamps {
            feats.push("timestamps");
        }
        let coop = self.caps.coop.map(|c| {
            format!(
                "cooperative matrices {0}x{0}x{0} f16->f32 by subgroups of {1}",
                c.side, c.subgroup_size
            )
        });
        if let Some(c) = &coop {
            feats.push(c);
        }
        if self.caps.f16_math {
            feats.push("f16 math");
        }
        if self.checked_shaders() {
            feats.push("checked shaders");
        }
        // Browsers do not expose the adapter's name to WebGPU.
        let name = match (self.info.name.as_str(), self.info.driver_info.as_str()) {
            ("", "") => "(name not exposed)",
            ("", d) => d,
            (n, _) => n,
        };
        format!(
            "{} ({:?}, {:?}; {}; max binding {} MiB)",
            name,
            self.info.backend,
            self.info.device_type,
            if feats.is_empty() {
                "no optional features".to_string()
            } else {
                feats.join(", ")
            },
            self.limits.max_storage_buffer_binding_size >> 20
        )
    }

    /// The kernel variants this device has made pipelines for.
    pub fn kernel_keys(&self) -> Vec<KernelKey> {
        self.pipelines.keys()
    }

    /// Largest storage binding this device accepts, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }

    /// Runs `f` inside out-of-memory and validation error scopes, turning what
    /// they catch into a [`GpuError`] that says what we were doing.
    pub async fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let val_err = val.pop().await;
        let oom_err = oom.pop().await;
        if let Some(e) = oom_err {
            return Err(GpuError::OutOfMemory {
                what: what.to_string(),
                detail: e.to_string(),
            });
        }
        if let Some(e) = val_err {
            return Err(GpuError::Validation {
                what: what.to_string(),
                detail: e.to_string(),
            });
        }
        Ok(out)
    }

    /// The first error the device reported outside an error scope since
    /// the last call, as a [`GpuError`] saying what we were doing.
    pub fn take_error(&self, what: &str) -> Result<(), GpuError> {
        let taken = self
            .uncaptured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match taken {
            None => Ok(()),
            Some((true, detail)) => Err(GpuError::OutOfMemory {
                what: what.to_string(),
                detail,
            }),
            Some((false, detail)) => Err(GpuError::Validation {
                what: what.to_string(),
                detail,
            }),
        }
    }

    /// Copies `bytes` bytes of `buffer` from `offset` back to the host.
    pub async fn read_bytes(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let mut parts = self.read_many(&[(buffer, offset, bytes)]).await?;
        Ok(parts.pop().unwrap_or_default())
    }

    /// Copies several ranges `(buffer, offset, bytes)` back to the host in
    /// one read: one staging buffer, one wait.
    pub async fn read_many(
        &self,
        ranges: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Vec<Vec<u8>>, GpuError> {
        let mut at = Vec::with_capacity(ranges.len());
        let mut size = 0;
        for (_, _, bytes) in ranges {
            at.push(size);
            size += bytes.div_ceil(4) * 4;
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        for ((buffer, offset, bytes), &to) in ranges.iter().zip(&at) {
            enc.copy_buffer_to_buffer(buffer, *offset, &staging, to, bytes.div_ceil(4) * 4);
        }
        self.queue.submit([enc.finish()]);
        self.counters.submit();
        self.counters
            .read(ranges.iter().map(|(_, _, b)| b).sum::<u64>());
        let slice = staging.slice(..);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        // Native backends need a poll to fire the callback; the browser fires it itself.
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        rx.await
            .map_err(|_| GpuError::Readback("the map callback was dropped".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let out = ranges
            .iter()
            .zip(&at)
            .map(|((_, _, bytes), &to)| data[to as usize..(to + bytes) as usize].to_vec())
            .collect();
        drop(data);
        staging.unmap();
        // Whatever ran before this read and failed is reported here.
        self.take_error("running the GPU work before a read")?;
        Ok(out)
    }

    /// Submits `work` without waiting; [`Gpu::oldest_done`] waits for
    /// it, in submission order.
    pub fn submit(&self, work: wgpu::CommandBuffer, flight: &mut InFlight) {
        let index = self.queue.submit([work]);
        self.counters.submit();
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        flight.pending.push_back((index, rx));
    }

    /// Waits for the oldest submission `flight` holds (a completion
    /// callback, not a read): how a loop of back-to-back submissions reports
    /// progress. Any error the device raised meanwhile is returned.
    pub async fn oldest_done(&self, flight: &mut InFlight) -> Result<(), GpuError> {
        let Some((_index, done)) = flight.pending.pop_front() else {
            return Ok(());
        };
        // Native backends fire callbacks from a poll; the browser fires them itself.
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(_index),
                timeout: None,
            })
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        done.await
            .map_err(|_| GpuError::Readback("the completion callback was dropped".into()))?;
        self.take_error("running the GPU work")
    }

    /// Waits until the queue is idle (native only; a no-op in the browser).
    pub fn wait_idle(&self) -> Result<(), GpuError> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        Ok(())
    }
}

async fn pick_adapter(
    instance: &wgpu::Instance,
    opts: &GpuOptions,
) -> Result<wgpu::Adapter, GpuError> {
    let wanted = opts
        .adapter_name
        .clone()
        .filter(|s| !s.is_empty())
        .map(|s| s.to_lowercase());
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(wanted) = wanted {
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let names: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or(GpuError::AdapterNotFound {
                wanted,
                available: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            });
    }
    #[cfg(target_arch = "wasm32")]
    let _ = wanted;
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::NoAdapter {
            hint: format!(" ({e})"),
        })
}
