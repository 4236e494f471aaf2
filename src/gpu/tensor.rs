//! A tensor is a typed view of a GPU buffer: shape, element type and a byte
//! offset (so a weight can live inside a larger buffer).

use super::{Gpu, GpuError};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Element type of a tensor on the device. Kernels always accumulate in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
    /// The WGSL scalar type used for storage of this dtype.
    pub fn wgsl(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub buffer: Arc<wgpu::Buffer>,
    /// Byte offset of element 0 in `buffer`.
    pub offset: u64,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// Storage buffers are padded to 4 bytes; `array<f16>` of odd length still
/// occupies whole words.
pub(crate) fn padded_bytes(elems: usize, dtype: DType) -> u64 {
    ((elems * dtype.size()) as u64).div_ceil(16) * 16
}

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Host values converted to the bytes of `dtype`, padded to 16 bytes.
pub(crate) fn encode(data: &[f32], dtype: DType) -> Vec<u8> {
    let mut bytes = match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::F16 => {
            let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
            bytemuck::cast_slice(&h).to_vec()
        }
    };
    bytes.resize(padded_bytes(data.len(), dtype) as usize, 0);
    bytes
}

pub(crate) fn decode(bytes: &[u8], elems: usize, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[..elems * 4]),
        DType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(&bytes[..elems * 2])
            .into_iter()
            .map(f32::from)
            .collect(),
    }
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }

    /// Uploads host f32 values, converting to `dtype` on the way.
    pub fn from_f32(gpu: &Gpu, label: &str, data: &[f32], shape: &[usize], dtype: DType) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        let buffer = gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &encode(data, dtype),
                usage: STORAGE_USAGE,
            });
        Tensor {
            buffer: Arc::new(buffer),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// An uninitialised device tensor.
    pub fn empty(gpu: &Gpu, label: &str, shape: &[usize], dtype: DType) -> Self {
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: padded_bytes(shape.iter().product(), dtype).max(16),
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        });
        Tensor {
            buffer: Arc::new(buffer),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// Row `i` along the first dimension as a tensor of shape (1, ...) on
    /// the same buffer: a slot of a state, a prompt's text row.
    pub fn row(&self, i: usize) -> Tensor {
        let mut shape = self.shape.clone();
        let per = self.numel() / shape.first().copied().unwrap_or(1).max(1);
        if let Some(first) = shape.first_mut() {
            *first = 1;
        }
        Tensor {
            buffer: self.buffer.clone(),
            offset: self.offset + (i * per * self.dtype.size()) as u64,
            shape,
            dtype: self.dtype,
        }
    }

    /// Overwrites the tensor with host values. Only the tensor's own bytes
    /// are written (rounded up to the 4 bytes a write takes), so a view
    /// ([`Tensor::row`]) leaves its neighbours alone.
    pub fn write_f32(&self, gpu: &Gpu, data: &[f32]) {
        debug_assert_eq!(data.len(), self.numel());
        let bytes = encode(data, self.dtype);
        let bytes = &bytes[..self.bytes().div_ceil(4) as usize * 4];
        gpu.queue.write_buffer(&self.buffer, self.offset, bytes);
        gpu.counters.write(bytes.len() as u64);
    }

    /// Reads the tensor back as f32.
    pub async fn to_f32(&self, gpu: &Gpu) -> Result<Vec<f32>, GpuError> {
        let bytes = gpu
            .read_bytes(&self.buffer, self.offset, self.bytes())
            .await?;
        Ok(decode(&bytes, self.numel(), self.dtype))
    }
}
