//! The cooperative-matrix (tensor-core) configuration of a device: which
//! square f16 -> f32 tile the adapter lists and whether our kernels can use it.

/// The cooperative-matrix configuration the GEMM and convolution kernels
/// use (`shaders/coop_core.wgsl`): tiles of `side` x `side` (x `side` deep),
/// f16 inputs and f32 accumulators, by subgroups of `subgroup_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coop {
    pub side: u32,
    pub subgroup_size: u32,
}

impl Coop {
    /// Workgroup memory of the coop main loop at its largest block
    /// (2 x 2 subgroups of 2 x 2 tiles): the f16 slices of A and B and the
    /// f32 block of C, plus the fused LayerNorm's scratch.
    pub fn workgroup_bytes(side: u32) -> u32 {
        let tile = 4 * side;
        let bk = 2 * side;
        2 * tile * bk * 2 + tile * tile * 4 + 256 * 4 + 64 * 8
    }

    /// The configuration to use on `adapter`, if any: the largest square
    /// f16 -> f32 one it lists (16 before 8), with one fixed subgroup size at
    /// least as wide as a tile's side and the workgroup memory the loop needs.
    pub(super) fn choose(
        adapter: &wgpu::Adapter,
        info: &wgpu::AdapterInfo,
        limits: &wgpu::Limits,
    ) -> Option<Coop> {
        use wgpu::CooperativeScalarType as S;
        let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
            | wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16;
        if !adapter.features().contains(needed) {
            return None;
        }
        // The loop's workgroup is exactly four subgroups (its cooperative
        // operations need uniform control flow across the workgroup, so no
        // subgroup may sit out): only where the subgroup size is fixed.
        let subgroup_size = info.subgroup_max_size;
        if info.subgroup_min_size != subgroup_size {
            return None;
        }
        let listed = adapter.cooperative_matrix_properties();
        [16, 8].into_iter().find_map(|side| {
            let square = listed.iter().any(|c| {
                c.m_size == side
                    && c.n_size == side
                    && c.k_size == side
                    && c.ab_type == S::F16
                    && c.cr_type == S::F32
            });
            let fits = Coop::workgroup_bytes(side) <= limits.max_compute_workgroup_storage_size
                && subgroup_size >= side
                && 4 * subgroup_size <= limits.max_compute_invocations_per_workgroup
                && 4 * subgroup_size <= 256;
            (square && fits).then_some(Coop {
                side,
                subgroup_size,
            })
        })
    }
}
