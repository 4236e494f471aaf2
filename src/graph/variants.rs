//! Kernel variants: the rule that picks a dispatch's variant without
//! timing anything, and the alternatives autotune times instead
//! ([`Graph::tune`](super::Graph::tune)).

use super::{Graph, Node};
use crate::gpu::{DType, Gpu, KernelKey};
use std::borrow::Cow;

/// Twice the compute units of the largest GPU we tune for (an H100's 132
/// SMs): the rule is that no dispatch of at least 1 GFLOP launches fewer
/// workgroups than twice the target's compute units, and wgpu does not say
/// how many an adapter has. A software adapter's units are the CPU's
/// threads ([`min_workgroups_for`]).
pub const MIN_WORKGROUPS: u64 = 2 * 132;

/// [`MIN_WORKGROUPS`], or twice the CPU's threads on a software adapter
/// (lavapipe, SwiftShader), where smaller tiles only cost time.
pub fn min_workgroups_for(gpu: &Gpu) -> u64 {
    if gpu.info.device_type == wgpu::DeviceType::Cpu {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        2 * threads as u64
    } else {
        MIN_WORKGROUPS
    }
}

impl Graph {
    /// The main loop of a GEMM or convolution (`gemm.wgsl`, `conv.wgsl`)
    /// as the constants of its kernel variant: cooperative matrices
    /// (`coop_core.wgsl`: `COOP` their side, `SG` the subgroup size, `TILE`
    /// twice or four times the side) where the device has them and the
    /// storage is f16, else the ALU tiles (`tile_core.wgsl`: `TILE` 64, 32
    /// or 16; `F16_MATH` for f16 storage where the device does f16
    /// arithmetic); the side from [`Graph::tile_for`]. `min_tile`: the smallest
    /// block the epilogue allows (GEGLU's column pairs need 32). `direct(side)`:
    /// which operands (A, B) the op can hand to the cooperative loop as
    /// whole tiles of that side straight from storage (`DIRECT_A`,
    /// `DIRECT_B`; the rule takes them wherever offered). With
    /// autotune on, the other variants that fit are its candidates
    /// ([`MatmulLoop::variants`]).
    pub(crate) fn matmul_loop(
        &self,
        dtype: DType,
        flops: usize,
        min_tile: usize,
        direct: &dyn Fn(usize) -> [bool; 2],
        groups_at: impl Fn(usize) -> u64,
    ) -> MatmulLoop {
        let coop = self.coop_for(dtype);
        let coop_consts = |tile: usize, c: crate::gpu::Coop, [a, b]: [bool; 2]| {
            vec![
                ("TILE", tile as u32),
                ("COOP", c.side),
                ("SG", c.subgroup_size),
                ("DIRECT_A", a as u32),
                ("DIRECT_B", b as u32),
            ]
        };
        let direct = coop.map_or([false; 2], |c| direct(c.side as usize));
        let alu_consts = |tile: usize, f16_math: bool| {
            let mut consts = vec![("TILE", tile as u32)];
            if dtype == DType::F16 && f16_math {
                consts.push(("F16_MATH", 1));
            }
            consts
        };
        let tiles: Vec<usize> = match coop {
            Some(c) => vec![4 * c.side as usize, 2 * c.side as usize],
            None => vec![64, 32, 16],
        };
        let tiles: Vec<usize> = tiles.into_iter().filter(|&t| t >= min_tile).collect();
        let tile = self.tile_for(flops, &tiles, groups_at);
        let consts = match coop {
            Some(c) => coop_consts(tile, c, direct),
            None => alu_consts(tile, self.gpu.caps.f16_math),
        };
        let mut candidates = Vec::new();
        if self.tunable() {
            if let Some(c) = coop {
                for &t in &tiles {
                    if direct != [false; 2] {
                        candidates.push((t, coop_consts(t, c, direct)));
                    }
                    candidates.push((t, coop_consts(t, c, [false; 2])));
                }
            }
            let alu = [64, 32, 16].into_iter().filter(|&t| t >= min_tile);
            candidates.extend(alu.map(|t| (t, alu_consts(t, self.gpu.caps.f16_alu))));
        }
        MatmulLoop {
            tile,
            consts,
            candidates,
        }
    }

    /// The tile side of a tiled GEMM or convolution (or the queries per
    /// workgroup of the fused attention), from `tiles`, the sides the op
    /// allows, largest first; `groups_at(tile)` is its grid's workgroup count.
    ///
    /// The rule: no dispatch of at least 1 GFLOP (`flops`) launches fewer
    /// than [`Graph::min_workgroups`] (twice the target's compute units)
    /// where a smaller tile launches enough. So: the largest tile (the most
    /// reuse per load) unless the dispatch is heavy and starved, then the
    /// largest that fills the GPU, else the one with the most workgroups.
    /// Every tile keeps the same threads per workgroup, so a smaller tile is
    /// more threads in flight.
    pub(crate) fn tile_for(
        &self,
        flops: usize,
        tiles: &[usize],
        groups_at: impl Fn(usize) -> u64,
    ) -> usize {
        let largest = tiles[0];
        if let Some(forced) = self.gpu.force_tile {
            return tiles
                .iter()
                .rev()
                .copied()
                .find(|&t| t >= forced)
                .unwrap_or(largest);
        }
        if flops < 1_000_000_000 || groups_at(largest) >= self.min_workgroups {
            return largest;
        }
        tiles
            .iter()
            .copied()
            .find(|&t| groups_at(t) >= self.min_workgroups)
            .unwrap_or_else(|| {
                let most = tiles.iter().map(|&t| groups_at(t)).max().unwrap_or(0);
                tiles
                    .iter()
                    .copied()
                    .find(|&t| groups_at(t) == most)
                    .unwrap_or(largest)
            })
    }
}

/// One way to run a dispatch: its kernel's variant constants (the rest of
/// its constants included) and its grid.
#[derive(Clone, Debug)]
pub(crate) struct Variant {
    pub consts: Vec<(&'static str, u32)>,
    pub workgroups: [u32; 3],
}

impl Variant {
    /// The kernel of a dispatch recorded as `of`, run as this variant.
    pub(crate) fn key(&self, of: &KernelKey) -> KernelKey {
        KernelKey {
            consts: self.consts.clone(),
            ..of.clone()
        }
    }
}

/// The constants that pick how a kernel computes, never what: the tile or
/// block side, the cooperative-matrix side and subgroup size, f16 tile
/// arithmetic, the attention's queries per workgroup.
const VARIANT_CONSTS: &[&str] = &[
    "TILE", "COOP", "SG", "DIRECT_A", "DIRECT_B", "F16_MATH", "BQ",
];

/// How a variant's constants read in reports and the autotune cache:
/// "TILE=64 COOP=16", "BQ=32", "TILE=32 F16_MATH=1" (the subgroup size
/// left out: one per device).
pub(crate) fn variant_name(consts: &[(&'static str, u32)]) -> String {
    consts
        .iter()
        .filter(|(name, v)| VARIANT_CONSTS.contains(name) && *name != "SG" && *v != 0)
        .map(|(name, v)| format!("{name}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A GEMM's or convolution's main loop ([`Graph::matmul_loop`]): the rule's
/// tile and constants, and with autotune on every (tile, constants) it
/// could run instead.
pub(crate) struct MatmulLoop {
    pub tile: usize,
    pub consts: Vec<(&'static str, u32)>,
    candidates: Vec<(usize, Vec<(&'static str, u32)>)>,
}

impl MatmulLoop {
    /// The candidates as variants of a dispatch with the op's own constants
    /// `extra` appended and the grid `grid(tile)`.
    pub fn variants(
        &self,
        extra: &[(&'static str, u32)],
        grid: impl Fn(usize) -> [u32; 3],
    ) -> Vec<Variant> {
        (self.candidates.iter())
            .map(|(tile, consts)| Variant {
                consts: consts.iter().chain(extra).copied().collect(),
                workgroups: grid(*tile),
            })
            .collect()
    }
}

impl Graph {
    /// The device's cooperative-matrix configuration where kernels of
    /// storage type `dtype` can use it (their inputs are f16).
    pub(crate) fn coop_for(&self, dtype: DType) -> Option<crate::gpu::Coop> {
        self.gpu.caps.coop.filter(|_| dtype == DType::F16)
    }

    /// Whether ops record alternatives for autotune: the device has a tuner,
    /// no tile is forced, and the graph will be planned.
    pub(crate) fn tunable(&self) -> bool {
        self.gpu.tuner.is_some() && self.gpu.force_tile.is_none() && !self.model_only
    }

    /// Gives node `node` the variants autotune may choose from (its own
    /// among them); those whose grid the device cannot launch are dropped.
    pub(crate) fn set_alternatives(&mut self, node: usize, variants: Vec<Variant>) {
        let max = self.gpu.limits.max_compute_workgroups_per_dimension;
        let fit: Vec<Variant> = (variants.into_iter())
            .filter(|v| v.workgroups.iter().all(|&g| g <= max))
            .collect();
        if fit.len() > 1 {
            self.nodes[node].alternatives = fit;
        }
    }

    /// What autotune's choice for `node` is keyed by: the kernel, storage
    /// type and non-variant constants, every uniform word, and the bytes of
    /// every binding (the batch, which no uniform word holds, shows there).
    pub(crate) fn tune_key(&self, node: &Node) -> String {
        let k = &node.key;
        let consts: Vec<String> = (k.consts.iter())
            .filter(|(name, _)| !VARIANT_CONSTS.contains(name))
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        format!(
            "{}:{} {:?} [{}] {:?} bytes {:?}",
            k.family,
            k.entry,
            k.dtype,
            consts.join(" "),
            node.params,
            self.binding_bytes(node)
        )
    }

    /// Bytes of each binding of `node` (a window's, or the whole value's).
    pub(crate) fn binding_bytes(&self, node: &Node) -> Vec<u64> {
        (node.binds.iter())
            .map(|(id, w)| {
                let v = id.0 as usize;
                let elem = self.values[v].dtype.size() as u64;
                w.map_or(self.value_bytes(v), |w| w.len as u64 * elem)
            })
            .collect()
    }

    /// The kernel and grid `node` runs with: autotune's winner where the
    /// device's tuner knows one for it, else what the op recorded.
    pub(crate) fn chosen<'a>(&self, node: &'a Node) -> (Cow<'a, KernelKey>, [u32; 3]) {
        let winner = (self.gpu.tuner.as_ref())
            .filter(|_| !node.alternatives.is_empty())
            .and_then(|t| t.choice(&self.tune_key(node)))
            .and_then(|c| {
                (node.alternatives.iter()).find(|v| variant_name(&v.consts) == c.variant)
            });
        match winner {
            Some(v) => (Cow::Owned(v.key(&node.key)), v.workgroups),
            None => (Cow::Borrowed(&node.key), node.workgroups),
        }
    }
}
