//! Ops are recorded, not run. An op checks shapes when it is called and
//! appends a [`Node`]: the kernel variant, the values it binds, a uniform block
//! with the shapes and the workgroup count. [`Graph::plan`] then assigns
//! buffers and builds bind groups once; the [`Plan`] replays for every step.

mod plan;
mod tune;
mod variants;

pub use plan::{Arena, Plan};
pub use tune::TunedDispatch;
pub use variants::{MIN_WORKGROUPS, min_workgroups_for};
pub(crate) use variants::{Variant, variant_name};

use crate::gpu::{Access, DType, Gpu, KernelKey, Tensor};
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub(crate) u32);

/// A handle to a tensor in the graph: shape and dtype, no storage yet.
#[derive(Clone, Debug)]
pub struct Value {
    pub id: ValueId,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Value {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn dim(&self, i: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[(if i < 0 { r + i } else { i }) as usize]
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// Where a value's storage comes from.
#[derive(Clone, Debug)]
pub(crate) enum Storage {
    /// Planned by the graph; shares buffers with values whose lifetimes do not overlap.
    Intermediate,
    /// Planned, pinned, and written by the caller before a run (latents, timesteps).
    Input,
    /// Planned, pinned, read by the caller after a run.
    Output,
    /// Storage owned outside the graph: weights, and feature-store buffers that a
    /// capture writes and an injection reads.
    External(Tensor),
}

#[derive(Clone, Debug)]
pub(crate) struct ValueInfo {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub storage: Storage,
    pub name: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub key: KernelKey,
    /// 32-bit words of the uniform block (shapes, strides, f32 bit patterns).
    pub params: Vec<u32>,
    /// The value bound at each of `key.bindings`, in the same order, whole
    /// or through a window.
    pub binds: Vec<(ValueId, Option<Window>)>,
    pub workgroups: [u32; 3],
    pub label: String,
    /// Arithmetic of the dispatch, for the performance model: set by the
    /// ops that do real math (GEMM, convolution, attention), else one
    /// operation per output element.
    pub flops: u64,
    /// Other variants of the same work, for autotune ([`Graph::tune`]);
    /// empty where there is no choice or autotune is off.
    pub alternatives: Vec<Variant>,
}

impl Node {
    /// Whether the node writes the value at its `i`-th binding.
    pub(crate) fn writes(&self, i: usize) -> bool {
        self.key.bindings[i].1 == Access::ReadWrite
    }
}

/// Part of a value bound on its own: elements `start .. start + len`, with
/// `start` aligned for a storage-binding offset. How a tensor larger than the
/// device's largest binding is still used: ops split their work so that each
/// dispatch binds windows that fit (see [`Graph::window`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
}

/// A window from [`Graph::window`] and where the wanted range begins inside it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Windowed {
    pub window: Window,
    /// Elements from the window's start to the first wanted element (the
    /// binding offset is rounded down to the device's alignment).
    pub lead: usize,
}

/// A shape error, found while the graph is built rather than mid-run.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {msg}")]
pub struct ShapeError {
    pub op: String,
    pub msg: String,
}

pub fn shape_err(op: &str, msg: impl Into<String>) -> ShapeError {
    ShapeError {
        op: op.to_string(),
        msg: msg.into(),
    }
}

/// Formats a shape like PyTorch does: `[2, 320, 64, 64]`.
pub struct ShapeFmt<'a>(pub &'a [usize]);
impl fmt::Display for ShapeFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

pub struct Graph {
    pub gpu: Arc<Gpu>,
    /// Storage type of activations the ops create.
    pub dtype: DType,
    pub(crate) values: Vec<ValueInfo>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) dynamic: Vec<StepParam>,
    /// Largest storage binding, in bytes: the device's, unless lowered with
    /// [`Graph::set_max_binding`]. Ops split their work to stay under it.
    pub(crate) max_binding: u64,
    /// Loop iterations one invocation may run (the device's, see
    /// [`Gpu::loop_budget`]); attention splits its keys under it.
    pub(crate) loop_budget: Option<usize>,
    /// Recorded for another device's limits ([`Graph::model_device`]): for
    /// the performance model, never planned.
    model_only: bool,
    /// Workgroups a heavy dispatch should launch at least ([`Graph::tile_for`]).
    pub(crate) min_workgroups: u64,
}

/// One dispatch of a recorded graph, as the performance model sees it.
#[derive(Clone, Debug)]
pub struct Dispatch {
    /// Hoisted out of the replay: constant work that runs once per refresh
    /// of the plan ([`Plan::refresh`]), not every step.
    pub once: bool,
    /// Kernel family (`shaders/<family>.wgsl`).
    pub family: &'static str,
    pub flops: u64,
    /// Bytes of every binding (inputs read and outputs written once).
    pub bytes: u64,
    pub workgroups: u64,
    /// The kernel variant's main-loop constants (tile, cooperative-matrix
    /// side, queries per workgroup), as "TILE=64 COOP=16"; empty for
    /// kernels without any.
    pub variant: String,
}

/// An element offset into a tensor that may move with the step:
/// `base + per_step * step`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offset {
    pub base: usize,
    pub per_step: usize,
}

impl Offset {
    pub fn fixed(base: usize) -> Self {
        Offset { base, per_step: 0 }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct StepParam {
    pub node: usize,
    pub word: usize,
    pub base: u32,
    pub per_step: u32,
}

impl Graph {
    pub fn new(gpu: Arc<Gpu>, dtype: DType) -> Self {
        Graph {
            max_binding: gpu.max_binding(),
            loop_budget: gpu.loop_budget,
            model_only: false,
            min_workgroups: min_workgroups_for(&gpu),
            gpu,
            dtype,
            values: Vec::new(),
            nodes: Vec::new(),
            dynamic: Vec::new(),
        }
    }

    /// Lowers the largest binding ops may use (never above the device's), so
    /// tests can exercise the split paths at small sizes.
    pub fn set_max_binding(&mut self, bytes: u64) {
        self.max_binding = bytes.min(self.gpu.max_binding());
    }

    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Records the ops as they would be on a device whose largest binding
    /// is `max_binding`, with `compute_units`, and whose loops are
    /// unbounded (a discrete GPU), for
    /// the performance model ([`Graph::dispatches`]); such a graph is never
    /// planned.
    pub fn model_device(&mut self, max_binding: u64, compute_units: u64) {
        self.min_workgroups = 2 * compute_units;
        self.max_binding = max_binding;
        self.loop_budget = None;
        self.model_only = true;
    }

    /// Bytes of the storage the graph binds but does not own (weights,
    /// feature stores), each value once.
    pub fn external_bytes(&self) -> u64 {
        (self.values.iter())
            .filter(|v| matches!(v.storage, Storage::External(_)))
            .map(|v| (v.shape.iter().product::<usize>() * v.dtype.size()) as u64)
            .sum()
    }

    /// Which nodes compute the same thing on every replay, so that a plan
    /// runs them once ([`Plan::refresh`]) instead of every step: nodes with
    /// no step-dependent word that read only constant values and write only
    /// intermediates. Constant values are the externals no node writes
    /// (weights, a phase's text rows) and the intermediates whose every
    /// writer is constant. The cross-attention keys and values of an
    /// unchanged text context are such nodes.
    pub(crate) fn constant_nodes(&self) -> Vec<bool> {
        let mut written_external = vec![false; self.values.len()];
        for n in &self.nodes {
            for (i, (v, _)) in n.binds.iter().enumerate() {
                if n.writes(i) {
                    written_external[v.0 as usize] = true;
                }
            }
        }
        let mut dynamic = vec![false; self.nodes.len()];
        for d in &self.dynamic {
            dynamic[d.node] = true;
        }
        let mut constant: Vec<bool> = (0..self.nodes.len()).map(|i| !dynamic[i]).collect();
        // Shrinks to a fixed point: a value is constant while all its
        // writers are.
        loop {
            let mut value_const: Vec<bool> = (self.values.iter().enumerate())
                .map(|(v, info)| match info.storage {
                    Storage::External(_) => !written_external[v],
                    Storage::Intermediate => true,
                    Storage::Input | Storage::Output => false,
                })
                .collect();
            for (n, node) in self.nodes.iter().enumerate() {
                for (i, (v, _)) in node.binds.iter().enumerate() {
                    let info = &self.values[v.0 as usize];
                    if node.writes(i) && matches!(info.storage, Storage::Intermediate) {
                        value_const[v.0 as usize] &= constant[n];
                    }
                }
            }
            let mut changed = false;
            for (n, node) in self.nodes.iter().enumerate() {
                if !constant[n] {
                    continue;
                }
                let ok = node.binds.iter().enumerate().all(|(i, (v, _))| {
                    let info = &self.values[v.0 as usize];
                    if node.writes(i) {
                        matches!(info.storage, Storage::Intermediate)
                    } else {
                        value_const[v.0 as usize]
                    }
                });
                if !ok {
                    constant[n] = false;
                    changed = true;
                }
            }
            if !changed {
                return constant;
            }
        }
    }

    /// The values written by the `constant` nodes ([`Self::constant_nodes`]):
    /// kept in buffers of their own, since they outlive every replay.
    pub(crate) fn hoisted_values(&self, constant: &[bool]) -> Vec<bool> {
        let mut hoisted = vec![false; self.values.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            if constant[n] {
                for (i, (v, _)) in node.binds.iter().enumerate() {
                    if node.writes(i) {
                        hoisted[v.0 as usize] = true;
                    }
                }
            }
        }
        hoisted
    }

    /// Every dispatch recorded so far, with its arithmetic, bytes and grid.
    pub fn dispatches(&self) -> Vec<Dispatch> {
        let constant = self.constant_nodes();
        self.nodes
            .iter()
            .zip(constant)
            .map(|(n, once)| {
                let (key, workgroups) = self.chosen(n);
                Dispatch {
                    once,
                    family: n.key.family,
                    flops: n.flops,
                    bytes: (n.binds.iter())
                        .map(|(id, w)| {
                            let info = &self.values[id.0 as usize];
                            let elems = w.map_or(info.shape.iter().product(), |w| w.len);
                            (elems * info.dtype.size()) as u64
                        })
                        .sum(),
                    workgroups: workgroups.iter().map(|&g| g as u64).product(),
                    variant: variant_name(&key.consts),
                }
            })
            .collect()
    }

    /// Whether `elems` elements of `dtype` fit one binding.
    pub(crate) fn fits(&self, elems: usize, dtype: DType) -> bool {
        (elems * dtype.size()) as u64 <= self.max_binding
    }

    /// Elements `start .. start + len` of `v` as a window to bind: its start is
    /// rounded down to the device's storage-offset alignment, and `lead` says
    /// how far into the window the range begins.
    pub(crate) fn window(&self, v: &Value, start: usize, len: usize) -> Windowed {
        let elem = v.dtype.size();
        let align = (self.gpu.limits.min_storage_buffer_offset_alignment as usize).max(elem);
        let aligned = start * elem / align * align / elem;
        Windowed {
            window: Window {
                start: aligned,
                len: len + (start - aligned),
            },
            lead: start - aligned,
        }
    }

    /// Units of `unit` elements one window holds (0: not even one).
    pub(crate) fn units_per_window(&self, unit: usize, dtype: DType) -> usize {
        self.window_capacity(dtype) / unit.max(1)
    }

    /// The error of an op whose smallest piece, `what`, alone outgrows a binding.
    pub(crate) fn unsplittable(&self, op: &str, what: String) -> ShapeError {
        shape_err(
            op,
            format!(
                "{what} exceeds the device's {}-byte binding limit",
                self.max_binding
            ),
        )
    }

    /// Elements a window may hold so that its binding fits, allowing for the
    /// alignment slack at its start.
    pub(crate) fn window_capacity(&self, dtype: DType) -> usize {
        let align = self.gpu.limits.min_storage_buffer_offset_alignment as u64;
        (self.max_binding.saturating_sub(align) / dtype.size() as u64) as usize
    }

    fn add_value(&mut self, shape: &[usize], dtype: DType, storage: Storage, name: &str) -> Value {
        let id = ValueId(self.values.len() as u32);
        self.values.push(ValueInfo {
            shape: shape.to_vec(),
            dtype,
            storage,
            name: name.to_string(),
        });
        Value {
            id,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// A pinned input that the caller writes before each run.
    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> Value {
        self.add_value(shape, dtype, Storage::Input, name)
    }

    /// A tensor that lives outside the graph (a weight, a feature-store slot).
    /// One that no node writes is taken as constant between the plan's
    /// refreshes ([`Plan::refresh`]): work that reads only such tensors runs
    /// once, not every replay.
    pub fn external(&mut self, name: &str, t: &Tensor) -> Value {
        let shape = t.shape.clone();
        self.add_value(&shape, t.dtype, Storage::External(t.clone()), name)
    }

    /// Marks a value as a graph output: pinned, readable after the run.
    pub fn output(&mut self, v: &Value) {
        let info = &mut self.values[v.id.0 as usize];
        if matches!(info.storage, Storage::Intermediate) {
            info.storage = Storage::Output;
        }
    }

    /// A fresh intermediate value; ops call this for their results.
    pub fn temp(&mut self, shape: &[usize], dtype: DType) -> Value {
        self.add_value(shape, dtype, Storage::Intermediate, "")
    }

    /// The same storage seen with another shape of equal element count (a free reshape).
    pub fn reshape(&mut self, v: &Value, shape: &[usize]) -> Result<Value, ShapeError> {
        if shape.iter().product::<usize>() != v.numel() {
            return Err(shape_err(
                "reshape",
                format!("cannot view {} as {}", ShapeFmt(&v.shape), ShapeFmt(shape)),
            ));
        }
        Ok(Value {
            id: v.id,
            shape: shape.to_vec(),
            dtype: v.dtype,
        })
    }

    /// Appends a dispatch. `outputs` are bound read-write at bindings 1.., then
    /// `inputs` read-only at the numbers given (optional bindings leave gaps).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        family: &'static str,
        entry: &'static str,
        dtype: DType,
        consts: Vec<(&'static str, u32)>,
        outputs: &[&Value],
        inputs: &[(u32, &Value)],
        params: Vec<u32>,
        workgroups: [u32; 3],
    ) -> usize {
        let outputs: Vec<(&Value, Option<Window>)> = outputs.iter().map(|v| (*v, None)).collect();
        let inputs: Vec<(u32, &Value, Option<Window>)> =
            inputs.iter().map(|(b, v)| (*b, *v, None)).collect();
        self.push_windowed(
            family, entry, dtype, consts, &outputs, &inputs, params, workgroups,
        )
    }

    /// [`Graph::push`] with some values bound through windows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_windowed(
        &mut self,
        family: &'static str,
        entry: &'static str,
        dtype: DType,
        consts: Vec<(&'static str, u32)>,
        outputs: &[(&Value, Option<Window>)],
        inputs: &[(u32, &Value, Option<Window>)],
        params: Vec<u32>,
        workgroups: [u32; 3],
    ) -> usize {
        let flops = outputs
            .iter()
            .map(|(v, w)| w.map_or(v.numel(), |w| w.len) as u64)
            .sum();
        let mut bindings = Vec::new();
        let mut binds = Vec::new();
        for (i, (v, w)) in outputs.iter().enumerate() {
            bindings.push((i as u32 + 1, Access::ReadWrite));
            binds.push((v.id, *w));
        }
        for (b, v, w) in inputs {
            bindings.push((*b, Access::Read));
            binds.push((v.id, *w));
        }
        self.nodes.push(Node {
            key: KernelKey {
                family,
                entry,
                dtype,
                consts,
                bindings,
            },
            params,
            binds,
            workgroups,
            label: format!("{family}::{entry}"),
            flops,
            alternatives: Vec::new(),
        });
        self.nodes.len() - 1
    }

    /// Sets the arithmetic of node `node` (see [`Node::flops`]).
    pub(crate) fn set_flops(&mut self, node: usize, flops: usize) {
        self.nodes[node].flops = flops as u64;
    }

    /// Makes word `word` of node `node`'s uniform block `base + per_step * step`,
    /// rewritten by [`Plan::set_step`](plan::Plan::set_step) (a feature-store slot
    /// offset, say): a step changes a few uniform words, never the plan.
    pub(crate) fn step_param(&mut self, node: usize, word: usize, offset: Offset) {
        self.nodes[node].params[word] = offset.base as u32;
        if offset.per_step != 0 {
            self.dynamic.push(StepParam {
                node,
                word,
                base: offset.base as u32,
                per_step: offset.per_step as u32,
            });
        }
    }

    /// Number of recorded dispatches.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Workgroups for `n` elements of a flat kernel (see
/// [`crate::gpu::FLAT_WORKGROUP`]).
pub(crate) fn grid_flat(n: usize) -> [u32; 3] {
    grid_1d(n, crate::gpu::FLAT_WORKGROUP)
}

/// Workgroup counts for `n` independent items in groups of `per_group`,
/// spread over x and y because one dimension stops at 65535.
pub(crate) fn grid_1d(n: usize, per_group: usize) -> [u32; 3] {
    let groups = n.div_ceil(per_group).max(1) as u32;
    if groups <= 65535 {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y), y, 1]
    }
}
