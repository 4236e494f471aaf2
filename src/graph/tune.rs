//! Autotune's timing: each alternative of each distinct dispatch, run on
//! scratch buffers of its bindings' sizes (so nothing a plan holds is
//! touched), the fastest kept in the device's [`Tuner`](crate::gpu::Tuner).

use super::{Graph, Node, Variant, variant_name};
use crate::gpu::tensor::STORAGE_USAGE;
use crate::gpu::{Choice, Gpu, GpuError, InFlight, KernelKey};
use crate::progress::Timer;
use std::collections::HashMap;

/// Seconds of GPU work one measurement should span: enough repetitions of
/// a dispatch that submitting and waiting are a small part of it. The
/// browser's clock counts whole milliseconds.
const SPAN: f64 = if cfg!(target_arch = "wasm32") {
    0.02
} else {
    0.003
};

/// Seconds of work that bring an idle GPU to its clocks before the first
/// measurement of a tune.
const WARM_UP: f64 = 0.2;

/// Scratch storage for the bindings of the dispatch being timed, by binding
/// position, grown as needed and freed with the tune.
#[derive(Default)]
struct Scratch(Vec<wgpu::Buffer>);

impl Scratch {
    fn get(&mut self, gpu: &Gpu, i: usize, bytes: u64) -> &wgpu::Buffer {
        let bytes = bytes.max(16).div_ceil(16) * 16;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || make(gpu, 16));
        }
        if self.0[i].size() < bytes {
            self.0[i] = make(gpu, bytes);
        }
        &self.0[i]
    }
}

fn make(gpu: &Gpu, size: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("autotune scratch"),
        size,
        usage: STORAGE_USAGE,
        mapped_at_creation: false,
    })
}

impl Graph {
    /// Times the alternatives of every dispatch that has some and whose
    /// winner the device's tuner does not know yet, keeps the winners (and
    /// writes the tuner's cache file), so that plans made afterwards run
    /// them. Does nothing where autotune is off. Call it before
    /// [`Graph::plan`]: planning itself never times anything.
    pub async fn tune(&self) -> Result<(), GpuError> {
        let Some(tuner) = &self.gpu.tuner else {
            return Ok(());
        };
        // Every pipeline first, each kernel once: compiling between
        // measurements would leave the GPU idle (and its clocks falling) in
        // the middle of them. A kernel the driver refuses is left out (the
        // op's own choice stays what it would be without autotune).
        let mut compiled: HashMap<KernelKey, bool> = HashMap::new();
        for node in self.nodes.iter().filter(|n| !n.alternatives.is_empty()) {
            if tuner.choice(&self.tune_key(node)).is_some() {
                continue;
            }
            for v in &node.alternatives {
                let key = v.key(&node.key);
                if compiled.contains_key(&key) {
                    continue;
                }
                let made = (self.gpu)
                    .scoped("compiling a kernel variant", || {
                        self.gpu.pipelines.get(&self.gpu.device, &key)
                    })
                    .await;
                if let Err(e) = &made {
                    tuner.warn(format!("{} {}: {e}", key.family, variant_name(&key.consts)));
                }
                compiled.insert(key, made.is_ok());
            }
        }
        let mut scratch = Scratch::default();
        let mut warm = false;
        for node in self.nodes.iter().filter(|n| !n.alternatives.is_empty()) {
            let key = self.tune_key(node);
            if tuner.choice(&key).is_some() {
                tuner.reuse(&key, node.key.family);
                continue;
            }
            let usable: Vec<&Variant> = (node.alternatives.iter())
                .filter(|v| compiled.get(&v.key(&node.key)) == Some(&true))
                .collect();
            let timer = Timer::start();
            match self.time_all(node, &usable, &mut scratch, &mut warm).await {
                Ok(timings) => {
                    let best = (timings.iter())
                        .min_by(|a, b| a.1.total_cmp(&b.1))
                        .map(|(name, _)| name.clone())
                        .unwrap_or_default();
                    let choice = Choice {
                        variant: best,
                        timings,
                    };
                    tuner.record(key, node.key.family, choice, timer.seconds());
                }
                // A failed measurement (out of memory for the scratch
                // buffers, say) leaves this dispatch to the rule.
                Err(e) => tuner.warn(format!("timing {}: {e}", node.label)),
            }
        }
        tuner.save();
        Ok(())
    }

    /// Microseconds per dispatch of each of `variants` of `node`: every
    /// variant twice, round robin, the faster of each kept, so that clocks
    /// still moving bias none; the first measurement of a tune warms the GPU.
    async fn time_all(
        &self,
        node: &Node,
        variants: &[&Variant],
        scratch: &mut Scratch,
        warm: &mut bool,
    ) -> Result<Vec<(String, f64)>, GpuError> {
        if !*warm && !variants.is_empty() {
            // An idle GPU runs at low clocks for a while: the first
            // measurements would favour whichever variant came last.
            self.time_variant(node, variants[0], scratch, WARM_UP)
                .await?;
            *warm = true;
        }
        let mut best = vec![f64::INFINITY; variants.len()];
        for _ in 0..2 {
            for (v, b) in variants.iter().zip(&mut best) {
                *b = b.min(self.time_variant(node, v, scratch, SPAN).await?);
            }
        }
        Ok((variants.iter().zip(best))
            .map(|(v, s)| (variant_name(&v.consts), s * 1e6))
            .collect())
    }

    /// Each replayed dispatch with autotune's time for its winner, where it
    /// has one (a dispatch without variants has none): the benchmark's
    /// profile of a step. `None` where autotune is off.
    pub fn tuned_dispatches(&self) -> Option<Vec<TunedDispatch>> {
        let tuner = self.gpu.tuner.as_ref()?;
        let constant = self.constant_nodes();
        let out = (self.nodes.iter().zip(constant))
            .filter(|(_, once)| !once)
            .map(|(n, _)| {
                let micros = (!n.alternatives.is_empty())
                    .then(|| tuner.choice(&self.tune_key(n)))
                    .flatten()
                    .and_then(|c| {
                        (c.timings.iter())
                            .find(|(v, _)| *v == c.variant)
                            .map(|t| t.1)
                    });
                TunedDispatch {
                    family: n.key.family,
                    flops: n.flops,
                    micros,
                }
            })
            .collect();
        Some(out)
    }

    /// Seconds per dispatch of `node` run as `v`, on scratch buffers, over
    /// repetitions that span about `span` seconds.
    async fn time_variant(
        &self,
        node: &Node,
        v: &Variant,
        scratch: &mut Scratch,
        span: f64,
    ) -> Result<f64, GpuError> {
        let gpu = &self.gpu;
        let key = v.key(&node.key);
        let pipeline = gpu.pipelines.get(&gpu.device, &key);
        let mut words = node.params.clone();
        words.resize(words.len().div_ceil(4).max(1) * 4, 0);
        let uniform = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("autotune params"),
            size: 4 * words.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue
            .write_buffer(&uniform, 0, bytemuck::cast_slice(&words));
        let sizes = self.binding_bytes(node);
        for (i, &bytes) in sizes.iter().enumerate() {
            scratch.get(gpu, i, bytes);
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, ((binding, _), &bytes)) in key.bindings.iter().zip(&sizes).enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &scratch.0[i],
                    offset: 0,
                    size: std::num::NonZeroU64::new(bytes.div_ceil(4).max(1) * 4),
                }),
            });
        }
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("autotune"),
            layout: &pipeline.layout,
            entries: &entries,
        });
        let run = |reps: usize| {
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                for _ in 0..reps {
                    let [x, y, z] = v.workgroups;
                    pass.dispatch_workgroups(x, y, z);
                }
            }
            encoder.finish()
        };
        // A warm-up (first use of the pipeline), a short run to size the
        // measured one.
        timed(gpu, run(1)).await?;
        let first = timed(gpu, run(2)).await? / 2.0;
        let reps = ((span / first.max(1e-7)).ceil() as usize).clamp(2, 4096);
        Ok(timed(gpu, run(reps)).await? / reps as f64)
    }
}

/// A dispatch of [`Graph::tuned_dispatches`].
#[derive(Clone, Debug)]
pub struct TunedDispatch {
    pub family: &'static str,
    pub flops: u64,
    /// Autotune's microseconds for the variant it chose.
    pub micros: Option<f64>,
}

/// Wall-clock seconds from submitting `work` until the device finished it.
async fn timed(gpu: &Gpu, work: wgpu::CommandBuffer) -> Result<f64, GpuError> {
    let mut flight = InFlight::default();
    let timer = Timer::start();
    gpu.submit(work, &mut flight);
    gpu.oldest_done(&mut flight).await?;
    Ok(timer.seconds())
}
