//! Shader composition and the get-or-create pipeline cache.
//!
//! A kernel variant is a typed [`KernelKey`]: the family (one `shaders/*.wgsl`
//! file), the entry point, the storage dtype and a few compile-time constants
//! (tile shape, fused epilogue, head dimension). Shapes never go into the
//! shader text: they travel in each node's uniform block, so a new resolution
//! needs no new compile.

use super::DType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a kernel binds one slot. Binding 0 is always the uniform parameter block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    /// File stem under `shaders/`.
    pub family: &'static str,
    pub entry: &'static str,
    pub dtype: DType,
    /// Compile-time constants, emitted as `const NAME: u32 = V;`.
    pub consts: Vec<(&'static str, u32)>,
    /// Storage bindings: (binding number, access). Binding 0 is the uniform block.
    pub bindings: Vec<(u32, Access)>,
}

/// Shader files, embedded at build time. The files in [`INCLUDES`]' lists are
/// not modules of their own: they are appended to the families that use them.
pub const SHADERS: &[(&str, &str)] = &[
    ("tile_core", include_str!("../../shaders/tile_core.wgsl")),
    ("coop_core", include_str!("../../shaders/coop_core.wgsl")),
    ("slice", include_str!("../../shaders/slice.wgsl")),
    ("math", include_str!("../../shaders/math.wgsl")),
    ("gemm", include_str!("../../shaders/gemm.wgsl")),
    ("conv", include_str!("../../shaders/conv.wgsl")),
    ("norm", include_str!("../../shaders/norm.wgsl")),
    ("softmax", include_str!("../../shaders/softmax.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    (
        "attention_coop",
        include_str!("../../shaders/attention_coop.wgsl"),
    ),
    (
        "elementwise",
        include_str!("../../shaders/elementwise.wgsl"),
    ),
    ("copy", include_str!("../../shaders/copy.wgsl")),
    ("im2col", include_str!("../../shaders/im2col.wgsl")),
    ("upsample", include_str!("../../shaders/upsample.wgsl")),
    ("timestep", include_str!("../../shaders/timestep.wgsl")),
    ("ddim", include_str!("../../shaders/ddim.wgsl")),
    ("pool", include_str!("../../shaders/pool.wgsl")),
    ("lpips", include_str!("../../shaders/lpips.wgsl")),
];

/// Shared files appended after a family's own: the tiled-matmul main loop of
/// gemm and conv with its operand staging, and the math helpers (erf) that
/// WGSL lacks. A variant with
/// a nonzero `COOP` constant takes the cooperative-matrix loop, `coop_core`,
/// in place of `tile_core` ([`shader_source`]).
pub const INCLUDES: &[(&str, &[&str])] = &[
    ("gemm", &["tile_core", "coop_core", "slice", "math"]),
    ("conv", &["tile_core", "coop_core", "slice"]),
    ("elementwise", &["math"]),
];

fn file(name: &str) -> &'static str {
    SHADERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("no shader file shaders/{name}.wgsl is embedded"))
}

/// Invocations per workgroup of the flat kernels (copy, elementwise,
/// timestep, upsample): one element each, over a 2-D grid of workgroups
/// when one dimension would pass 65535 ([`crate::graph`]'s `grid_flat`).
pub const FLAT_WORKGROUP: usize = 256;

/// The complete WGSL module for a key: a generated header (f16 enable, the
/// storage type alias `T`, the cooperative-matrix types `MatA`, `MatB`,
/// `MatC` of a `COOP` variant, the flat kernels' workgroup size and index,
/// the constants), then the family file.
pub fn shader_source(key: &KernelKey) -> String {
    let mut src = String::new();
    let coop_side = key
        .consts
        .iter()
        .find(|&&(n, _)| n == "COOP")
        .map_or(0, |&(_, v)| v);
    let coop = coop_side != 0;
    if key.dtype == DType::F16 || coop {
        src.push_str("enable f16;\n");
    }
    if coop {
        // The cooperative types of the variant's tile side, by role.
        src.push_str("enable wgpu_cooperative_matrix;\n");
        let m = format!("coop_mat{coop_side}x{coop_side}");
        src.push_str(&format!(
            "alias MatA = {m}<f16, A>;\nalias MatB = {m}<f16, B>;\nalias MatC = {m}<f32, C>;\n"
        ));
    }
    src.push_str(&format!("alias T = {};\n", key.dtype.wgsl()));
    // The flat (one element per invocation) kernels' workgroup size and
    // index, from the same constant the launcher divides by.
    src.push_str(&format!(
        "const FLAT_WG: u32 = {FLAT_WORKGROUP}u;\n\
         fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, tid: u32) -> u32 {{\n\
         \x20   return (wg.y * nwg.x + wg.x) * FLAT_WG + tid;\n}}\n"
    ));
    for (name, value) in &key.consts {
        src.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    preprocess(file(key.family), &key.consts, &mut src);
    let main_loop = if coop { "coop_core" } else { "tile_core" };
    let skipped = |name: &str| name.ends_with("_core") && name != main_loop;
    for (_, extra) in INCLUDES.iter().filter(|(f, _)| *f == key.family) {
        for name in extra.iter().filter(|n| !skipped(n)) {
            preprocess(file(name), &key.consts, &mut src);
        }
    }
    src
}

/// Keeps or drops the lines between `#if NAME` (or `#if NAME == V`) /
/// `#else` / `#endif` (nestable) by the value of the constant NAME (absent
/// counts as 0): nonzero, or equal to V. This is how an
/// optional binding (a bias, a residual) exists only in the variants that bind
/// it: WGSL itself cannot leave a declared binding out of an entry point.
fn preprocess(text: &str, consts: &[(&'static str, u32)], out: &mut String) {
    let value = |name: &str| {
        consts
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    };
    // Each level: (this branch is live, an enclosing branch is live).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let live = |stack: &Vec<(bool, bool)>| stack.last().is_none_or(|&(on, outer)| on && outer);
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(cond) = t.strip_prefix("#if ") {
            let outer = live(&stack);
            let on = match cond.split_once("==") {
                Some((name, v)) => v.trim().parse() == Ok(value(name.trim())),
                None => value(cond.trim()) != 0,
            };
            stack.push((on, outer));
        } else if t.starts_with("#else") {
            if let Some(top) = stack.last_mut() {
                top.0 = !top.0;
            }
        } else if t.starts_with("#endif") {
            stack.pop();
        } else if live(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
}

pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<KernelKey, Arc<Pipeline>>>,
    /// Whether modules keep wgpu's runtime checks (index clamps, loop
    /// bounding); see [`PipelineCache::new`].
    checked: bool,
}

impl PipelineCache {
    /// A cache whose shader modules keep wgpu's runtime checks when
    /// `checked`, and otherwise are created without them (see `get`).
    pub fn new(checked: bool) -> Self {
        PipelineCache {
            checked,
            ..Default::default()
        }
    }

    /// Whether this cache's modules keep wgpu's runtime checks.
    pub fn checked(&self) -> bool {
        self.checked
    }

    /// Every key a pipeline was made for so far: the variants the ops
    /// really requested (the shader test validates exactly these).
    pub fn keys(&self) -> Vec<KernelKey> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    pub fn get(&self, device: &wgpu::Device, key: &KernelKey) -> Arc<Pipeline> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(key) {
            return p.clone();
        }
        let label = format!(
            "{}::{} {:?} {:?}",
            key.family, key.entry, key.dtype, key.consts
        );
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(shader_source(key).into()),
        };
        let module = if self.checked {
            device.create_shader_module(desc)
        } else {
            // SAFETY: every index a kernel computes is bounded by the shape
            // words of its uniform block, which the ops derive from the
            // bound values' shapes and windows (the planner refuses values
            // past u32 addressing and bindings past the device's limits);
            // every loop runs to a uniform count. The kernel tests run each
            // family at edge shapes (tails, splits, windows) against
            // PyTorch, and one CI run keeps the checks
            // (PNP_CHECKED_SHADERS=1) to compare.
            unsafe {
                device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for &(binding, access) in &key.bindings {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: access == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(&label),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let p = Arc::new(Pipeline { pipeline, layout });
        map.insert(key.clone(), p.clone());
        p
    }
}
