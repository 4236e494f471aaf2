//! Buffer planning and replay (the approach of ggml's gallocr): each
//! intermediate lives from the node that writes it to the last node that
//! reads it; buffers are shared greedily by best fit. Inputs, outputs and
//! external tensors are pinned. Bind groups are made once, here.

use super::{Graph, Storage, Value, ValueId};
use crate::gpu::tensor::{STORAGE_USAGE, padded_bytes};
use crate::gpu::{Gpu, GpuError, Tensor};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

struct Step {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

pub struct Plan {
    gpu: Arc<Gpu>,
    /// The dispatches of every replay.
    steps: Vec<Step>,
    /// The constant dispatches ([`Graph::constant_nodes`]), run before the
    /// first replay and after each [`Plan::refresh`].
    prologue: Vec<Step>,
    /// The prologue's results are out of date.
    stale: AtomicBool,
    /// Storage of every input, output and external value, by id.
    pinned: HashMap<ValueId, Tensor>,
    /// Bytes of planned intermediate buffers.
    pub intermediate_bytes: u64,
    /// Bytes of planned input and output buffers.
    pub io_bytes: u64,
    /// What the intermediates would need without sharing.
    pub unshared_bytes: u64,
    uniforms: wgpu::Buffer,
    /// (byte offset in `uniforms`, base, per_step) of each step-dependent word.
    dynamic: Vec<(u64, u32, u32)>,
}

impl Graph {
    /// The device limits [`Graph::plan`] needs met, checked without
    /// allocating anything: every bound value fits one buffer, and every
    /// binding (whole, or a window of a value an op split) fits the binding
    /// limit. Callers use it to refuse a size before any work starts.
    pub fn check_limits(&self) -> Result<(), GpuError> {
        let name_of = |v: usize| {
            let info = &self.values[v];
            format!(
                "tensor {:?} of shape {:?}",
                if info.name.is_empty() {
                    "(intermediate)"
                } else {
                    &info.name
                },
                info.shape
            )
        };
        let max_buffer = self.gpu.limits.max_buffer_size;
        let max_groups = self.gpu.limits.max_compute_workgroups_per_dimension;
        for node in &self.nodes {
            if node.workgroups.iter().any(|&g| g > max_groups) {
                return Err(GpuError::TooManyWorkgroups {
                    what: node.label.clone(),
                    groups: node.workgroups,
                    limit: max_groups,
                });
            }
            for (id, w) in &node.binds {
                let v = id.0 as usize;
                let info = &self.values[v];
                let elems: usize = info.shape.iter().product();
                // Every uniform word (dims, strides, offsets, workgroup
                // counts) is at most a bound value's element count, so this
                // one check makes the ops' u32 casts exact.
                if u32::try_from(elems).is_err() {
                    return Err(GpuError::TooManyElements {
                        what: name_of(v),
                        elems,
                    });
                }
                let bytes = (elems * info.dtype.size()) as u64;
                if bytes > max_buffer {
                    return Err(GpuError::BufferTooLarge {
                        what: name_of(v),
                        bytes,
                        limit: max_buffer,
                    });
                }
                let bound = (w.map_or(elems, |w| w.len) * info.dtype.size()) as u64;
                if bound > self.max_binding {
                    return Err(GpuError::BindingTooLarge {
                        what: format!("{} ({})", name_of(v), node.label),
                        bytes: bound,
                        limit: self.max_binding,
                    });
                }
            }
        }
        Ok(())
    }

    /// Best-fit sharing of intermediates (but the `hoisted` values, which
    /// keep their own buffers), in node order: each intermediate's slot and
    /// each slot's size. Pure bookkeeping: nothing
    /// is allocated (the performance model reads it too).
    pub(crate) fn assign_slots(&self, hoisted: &[bool]) -> (Vec<Option<usize>>, Vec<u64>) {
        let n_values = self.values.len();
        // Lifetimes: first node that binds a value, last node that binds it.
        let mut first = vec![usize::MAX; n_values];
        let mut last = vec![0usize; n_values];
        for (i, node) in self.nodes.iter().enumerate() {
            for (v, _) in &node.binds {
                let v = v.0 as usize;
                first[v] = first[v].min(i);
                last[v] = last[v].max(i);
            }
        }
        let mut slot_size: Vec<u64> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut slot_of: Vec<Option<usize>> = vec![None; n_values];
        let mut starts: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        let mut ends: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for v in 0..n_values {
            let shared = matches!(self.values[v].storage, Storage::Intermediate) && !hoisted[v];
            if first[v] != usize::MAX && shared {
                starts[first[v]].push(v);
                ends[last[v]].push(v);
            }
        }
        for i in 0..self.nodes.len() {
            for &v in &starts[i] {
                let need = self.value_bytes(v);
                let pick = free
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| slot_size[**s] >= need)
                    .min_by_key(|(_, s)| slot_size[**s])
                    .or_else(|| free.iter().enumerate().max_by_key(|(_, s)| slot_size[**s]))
                    .map(|(pos, _)| pos);
                let slot = match pick {
                    Some(pos) => free.swap_remove(pos),
                    None => {
                        slot_size.push(0);
                        slot_size.len() - 1
                    }
                };
                slot_size[slot] = slot_size[slot].max(need);
                slot_of[v] = Some(slot);
            }
            // Released only after the node's outputs are placed, so a node never
            // reads and writes the same buffer.
            for &v in &ends[i] {
                if let Some(s) = slot_of[v] {
                    free.push(s);
                }
            }
        }
        (slot_of, slot_size)
    }

    /// A signature of each value that exactly one constant node writes,
    /// from what computes it: the kernel, its uniform words, its grid, and
    /// its inputs (an external by its storage, an intermediate by its own
    /// signature). Equal signatures in two graphs mean equal contents.
    fn constant_signatures(&self, constant: &[bool]) -> Vec<Option<u64>> {
        use std::hash::{Hash, Hasher};
        let mut writers = vec![0usize; self.values.len()];
        for node in &self.nodes {
            for (i, (v, _)) in node.binds.iter().enumerate() {
                if node.writes(i) {
                    writers[v.0 as usize] += 1;
                }
            }
        }
        let mut sig: Vec<Option<u64>> = vec![None; self.values.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            if !constant[n] {
                continue;
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&node.key, &node.params, node.workgroups).hash(&mut h);
            let mut known = true;
            for (i, (v, w)) in node.binds.iter().enumerate() {
                let vi = v.0 as usize;
                (i, w.map(|w| (w.start, w.len))).hash(&mut h);
                if node.writes(i) {
                    continue;
                }
                match &self.values[vi].storage {
                    Storage::External(t) => {
                        (Arc::as_ptr(&t.buffer) as usize, t.offset, &t.shape).hash(&mut h)
                    }
                    _ => match sig[vi] {
                        Some(s) => s.hash(&mut h),
                        None => known = false,
                    },
                }
            }
            for (i, (v, _)) in node.binds.iter().enumerate() {
                let vi = v.0 as usize;
                if node.writes(i) && writers[vi] == 1 && known {
                    let mut hv = h.clone();
                    i.hash(&mut hv);
                    sig[vi] = Some(hv.finish());
                }
            }
        }
        sig
    }

    /// Bytes of the shared intermediate slots a plan of this graph needs.
    pub fn intermediate_bytes(&self) -> u64 {
        let hoisted = self.hoisted_values(&self.constant_nodes());
        self.assign_slots(&hoisted).1.iter().sum()
    }

    /// Device bytes of value `v` as planned (padded).
    pub(crate) fn value_bytes(&self, v: usize) -> u64 {
        padded_bytes(self.values[v].shape.iter().product(), self.values[v].dtype)
    }

    /// Bytes a plan of this graph would hold: the shared intermediate slots
    /// plus its inputs, outputs and hoisted values (weights and stores are
    /// external).
    pub fn activation_bytes(&self) -> u64 {
        let hoisted = self.hoisted_values(&self.constant_nodes());
        let (_, slots) = self.assign_slots(&hoisted);
        let io: u64 = (0..self.values.len())
            .filter(|&v| {
                hoisted[v] || matches!(self.values[v].storage, Storage::Input | Storage::Output)
            })
            .map(|v| self.value_bytes(v))
            .sum();
        slots.iter().sum::<u64>() + io
    }

    /// Assigns storage, creates pipelines, uniform blocks and bind groups.
    pub fn plan(&self) -> Result<Plan, GpuError> {
        self.plan_in(&mut Arena::default())
    }

    /// [`Self::plan`] with the intermediates in `arena`'s buffers, shared
    /// with every other plan made in it: plans that never run at the same
    /// time (a phase's UNet variants, replayed one after another on one
    /// queue) then cost the largest plan's activations, not their sum.
    pub fn plan_in(&self, arena: &mut Arena) -> Result<Plan, GpuError> {
        assert!(
            !self.model_only,
            "a graph recorded for another device's limits is never planned"
        );
        let gpu = self.gpu.clone();
        let constant = self.constant_nodes();
        let hoisted = self.hoisted_values(&constant);
        let (slot_of, slot_size) = self.assign_slots(&hoisted);
        let size_of = |v: usize| self.value_bytes(v);
        let unshared: u64 = (0..self.values.len())
            .filter(|&v| slot_of[v].is_some())
            .map(size_of)
            .sum();

        self.check_limits()?;

        let alloc = |label: &str, size: u64| {
            Arc::new(gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(16),
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            }))
        };
        let slots = arena.buffers_for(&slot_size, |i, size| alloc(&format!("slot {i}"), size));
        let signatures = self.constant_signatures(&constant);
        let mut pinned = HashMap::new();
        let mut io_bytes = 0;
        for (v, info) in self.values.iter().enumerate() {
            let tensor = match (&info.storage, signatures[v]) {
                (Storage::External(t), _) => t.clone(),
                (Storage::Intermediate, _) if !hoisted[v] => continue,
                // The same constant work in another plan of the arena (a
                // phase's variants all project the same text): one buffer.
                (Storage::Intermediate, Some(sig)) => {
                    let (t, new) = arena.constant(sig, || Tensor {
                        buffer: alloc(&info.name, size_of(v)),
                        offset: 0,
                        shape: info.shape.clone(),
                        dtype: info.dtype,
                    });
                    if new {
                        io_bytes += size_of(v);
                    }
                    t
                }
                (Storage::Input | Storage::Output | Storage::Intermediate, _) => {
                    let size = size_of(v);
                    io_bytes += size;
                    Tensor {
                        buffer: alloc(&info.name, size),
                        offset: 0,
                        shape: info.shape.clone(),
                        dtype: info.dtype,
                    }
                }
            };
            pinned.insert(ValueId(v as u32), tensor);
        }

        // One uniform buffer; each node's block at an aligned offset.
        let align = gpu.limits.min_uniform_buffer_offset_alignment as usize;
        let mut blocks = Vec::<u8>::new();
        let mut offsets = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            offsets.push(blocks.len() as u64);
            let mut words = node.params.clone();
            words.resize(words.len().div_ceil(4).max(1) * 4, 0);
            blocks.extend_from_slice(bytemuck::cast_slice(&words));
            blocks.resize(blocks.len().div_ceil(align) * align, 0);
        }
        blocks.resize(blocks.len().max(16), 0);
        let uniforms = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("node params"),
            size: blocks.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&uniforms, 0, &blocks);
        gpu.counters.write(blocks.len() as u64);

        let mut steps = Vec::with_capacity(self.nodes.len());
        let mut prologue = Vec::new();
        for ((node, &uoff), once) in self.nodes.iter().zip(&offsets).zip(constant) {
            let (key, workgroups) = self.chosen(node);
            let pipeline = gpu.pipelines.get(&gpu.device, &key);
            let ubytes = (node.params.len().div_ceil(4).max(1) * 16) as u64;
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniforms,
                    offset: uoff,
                    size: std::num::NonZeroU64::new(ubytes),
                }),
            }];
            let resolved: Vec<(Arc<wgpu::Buffer>, u64, u64)> = node
                .binds
                .iter()
                .map(|(id, window)| {
                    let v = id.0 as usize;
                    let (buf, off, size) = match (pinned.get(id), slot_of[v]) {
                        (Some(t), _) => (t.buffer.clone(), t.offset, t.bytes().div_ceil(4) * 4),
                        (None, Some(s)) => (slots[s].clone(), 0, size_of(v)),
                        (None, None) => unreachable!("value {v} bound but never planned"),
                    };
                    match window {
                        None => (buf, off, size),
                        Some(w) => {
                            let elem = self.values[v].dtype.size() as u64;
                            let start = w.start as u64 * elem;
                            let len = (w.len as u64 * elem).div_ceil(4) * 4;
                            (buf, off + start, len.min(size - start))
                        }
                    }
                })
                .collect();
            for ((binding, _), (buf, off, size)) in key.bindings.iter().zip(&resolved) {
                entries.push(wgpu::BindGroupEntry {
                    binding: *binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: buf,
                        offset: *off,
                        size: std::num::NonZeroU64::new((*size).max(4)),
                    }),
                });
            }
            let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&node.label),
                layout: &pipeline.layout,
                entries: &entries,
            });
            let step = Step {
                pipeline: pipeline.pipeline.clone(),
                bind_group,
                workgroups,
            };
            match once {
                true => prologue.push(step),
                false => steps.push(step),
            }
        }

        let dynamic = self
            .dynamic
            .iter()
            .map(|d| (offsets[d.node] + 4 * d.word as u64, d.base, d.per_step))
            .collect();
        Ok(Plan {
            gpu: gpu.clone(),
            steps,
            prologue,
            stale: AtomicBool::new(true),
            pinned,
            dynamic,
            intermediate_bytes: slot_size.iter().sum(),
            io_bytes,
            unshared_bytes: unshared,
            uniforms,
        })
    }
}

/// Intermediate buffers shared by plans that never run at the same time
/// ([`Graph::plan_in`]).
#[derive(Default)]
pub struct Arena {
    buffers: Vec<(u64, Arc<wgpu::Buffer>)>,
    /// Hoisted values by signature, shared by the arena's plans.
    constants: HashMap<u64, Tensor>,
    /// Bytes of buffers replaced by larger ones: earlier plans still hold them.
    retired: u64,
}

impl Arena {
    /// A buffer for each slot size of `sizes`: the largest slots take the
    /// largest buffers; a buffer smaller than its slot is replaced by a new
    /// one (made by `alloc`), which later plans then share.
    fn buffers_for(
        &mut self,
        sizes: &[u64],
        alloc: impl Fn(usize, u64) -> Arc<wgpu::Buffer>,
    ) -> Vec<Arc<wgpu::Buffer>> {
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
        self.buffers
            .sort_by_key(|(size, _)| std::cmp::Reverse(*size));
        let mut out = vec![None; sizes.len()];
        for (rank, &i) in order.iter().enumerate() {
            let need = sizes[i].max(16);
            match self.buffers.get(rank) {
                Some((size, buffer)) if *size >= need => out[i] = Some(buffer.clone()),
                _ => {
                    let buffer = alloc(rank, need);
                    let entry = (need, buffer.clone());
                    match self.buffers.get_mut(rank) {
                        Some(slot) => {
                            self.retired += slot.0;
                            *slot = entry;
                        }
                        None => self.buffers.push(entry),
                    }
                    out[i] = Some(buffer);
                }
            }
        }
        out.into_iter()
            .map(|b| b.expect("every slot has a buffer"))
            .collect()
    }

    /// The hoisted value of signature `sig`, made by `make` the first time
    /// (then `true`).
    fn constant(&mut self, sig: u64, make: impl FnOnce() -> Tensor) -> (Tensor, bool) {
        let mut new = false;
        let t = self.constants.entry(sig).or_insert_with(|| {
            new = true;
            make()
        });
        (t.clone(), new)
    }

    /// Bytes of the arena's buffers, with any its earlier plans still
    /// hold: what its plans' intermediates cost together.
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().map(|(size, _)| size).sum::<u64>() + self.retired
    }
}

impl Plan {
    /// Records every dispatch of a replay into one compute pass, after the
    /// constant ones when they are stale.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("plan"),
            timestamp_writes: None,
        });
        let prologue = match self.stale.swap(false, Ordering::Relaxed) {
            true => self.prologue.as_slice(),
            false => &[],
        };
        for s in prologue.iter().chain(&self.steps) {
            pass.set_pipeline(&s.pipeline);
            pass.set_bind_group(0, &s.bind_group, &[]);
            let [x, y, z] = s.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Marks the constant dispatches to run again before the next replay:
    /// an external they read (the text rows) was rewritten.
    pub fn refresh(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Dispatches of one replay, and of the constant prologue.
    pub fn dispatch_counts(&self) -> (usize, usize) {
        (self.steps.len(), self.prologue.len())
    }

    /// Points every step-dependent parameter at `step` (takes effect for the
    /// next submitted run).
    pub fn set_step(&self, step: usize) {
        for &(at, base, per_step) in &self.dynamic {
            let v = base + per_step * step as u32;
            self.gpu
                .queue
                .write_buffer(&self.uniforms, at, bytemuck::bytes_of(&v));
            self.gpu.counters.write(4);
        }
    }

    /// Peak device bytes this plan holds (intermediates plus inputs and outputs;
    /// weights and feature stores are external and not counted).
    pub fn planned_bytes(&self) -> u64 {
        self.intermediate_bytes + self.io_bytes
    }

    /// Encodes and submits one replay.
    pub fn run(&self) {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.encode(&mut enc);
        self.gpu.queue.submit([enc.finish()]);
        self.gpu.counters.submit();
    }

    /// Storage of a pinned value (input, output or external).
    pub fn tensor(&self, v: &Value) -> &Tensor {
        self.pinned
            .get(&v.id)
            .expect("Plan::tensor takes inputs, outputs and externals only")
    }

    pub fn write(&self, v: &Value, data: &[f32]) {
        self.tensor(v).write_f32(&self.gpu, data);
    }

    pub async fn read(&self, v: &Value) -> Result<Vec<f32>, GpuError> {
        let t = self.tensor(v);
        let view = Tensor {
            shape: v.shape.clone(),
            ..t.clone()
        };
        view.to_f32(&self.gpu).await
    }

    pub fn len(&self) -> usize {
        self.steps.len() + self.prologue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
