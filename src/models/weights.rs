//! Checkpoint tensors on the host, addressed by path prefix (candle's
//! VarBuilder): `vb.pp("down_blocks").pp(0).get("conv1.weight", &[320, 320, 3, 3])`.
//! A missing tensor or a wrong shape names the file, the full key and both
//! shapes; tensors that nothing asked for are reported by [`Weights::unused`].
//! [`Weights::synthetic`] makes up any tensor asked for (benchmarks need no files).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid safetensors file ({msg}); the download may be truncated: fetch it again"
    )]
    Corrupt { path: PathBuf, msg: String },
    #[error("preparing {what} on the device: {msg}")]
    Prepare { what: String, msg: String },
    #[error("{file}: tensor {key} is missing")]
    Missing { file: String, key: String },
    #[error("{file}: tensor {key} has shape {actual:?}, expected {expected:?}")]
    Shape {
        file: String,
        key: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error(
        "{file}: tensor {key} holds a non-finite value ({value}) at element {index}; the file is damaged or was saved from a diverged model: fetch it again"
    )]
    NonFinite {
        file: String,
        key: String,
        index: usize,
        value: f32,
    },
    #[error(
        "{file}: tensor {key} holds {value} at element {index}, beyond f16's range (65504); use --precision f32"
    )]
    F16Range {
        file: String,
        key: String,
        index: usize,
        value: f32,
    },
    #[error("{file}: tensor {key} has element type {dtype}, expected f32, f16 or bf16")]
    DType {
        file: String,
        key: String,
        dtype: String,
    },
    #[error(
        "{path} holds only pickle weights ({found}); pickle files can run code and are not loaded. Convert them to \
         safetensors, e.g. in Python: `from diffusers import StableDiffusionPipeline; \
         StableDiffusionPipeline.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)`"
    )]
    Pickle { path: PathBuf, found: String },
    #[error("{path}: {msg}")]
    Layout { path: PathBuf, msg: String },
    #[error("{path}: bad config: {msg}")]
    Config { path: PathBuf, msg: String },
}

/// Element data of one host tensor: a slice of a file's bytes, or values
/// computed while mapping a checkpoint layout (a split fused qkv, say).
#[derive(Clone, Debug)]
pub enum HostData {
    Raw {
        dtype: safetensors::Dtype,
        bytes: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    },
    F32(Arc<Vec<f32>>),
}

#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor {
            shape,
            data: HostData::F32(Arc::new(data)),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (f16 and bf16 widen exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.as_ref().clone(),
            HostData::Raw {
                dtype,
                bytes,
                start,
                end,
            } => {
                let b = &bytes[*start..*end];
                match dtype {
                    safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(b),
                    safetensors::Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(b)
                        .into_iter()
                        .map(f32::from)
                        .collect(),
                    safetensors::Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(b)
                        .into_iter()
                        .map(f32::from)
                        .collect(),
                    _ => unreachable!("non-float tensors are refused by VarBuilder::checked"),
                }
            }
        }
    }

    /// Whether the elements are floats we read (f32, f16, bf16).
    pub fn is_float(&self) -> bool {
        match &self.data {
            HostData::F32(_) => true,
            HostData::Raw { dtype, .. } => is_float(*dtype),
        }
    }

    /// The first non-finite element, (index, value), in one pass over the
    /// stored bits (no conversion).
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        fn scan<T: bytemuck::Pod>(
            b: &[u8],
            bad: impl Fn(T) -> bool,
            value: impl Fn(T) -> f32,
        ) -> Option<(usize, f32)> {
            let size = std::mem::size_of::<T>();
            b.chunks_exact(size)
                .map(bytemuck::pod_read_unaligned::<T>)
                .enumerate()
                .find(|&(_, x)| bad(x))
                .map(|(i, x)| (i, value(x)))
        }
        match &self.data {
            HostData::F32(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
            HostData::Raw {
                dtype,
                bytes,
                start,
                end,
            } => {
                let b = &bytes[*start..*end];
                // All-ones exponent: infinity or NaN.
                match dtype {
                    safetensors::Dtype::F32 => {
                        scan(b, |x: u32| x & 0x7f80_0000 == 0x7f80_0000, f32::from_bits)
                    }
                    safetensors::Dtype::F16 => scan(
                        b,
                        |x: u16| x & 0x7c00 == 0x7c00,
                        |x| half::f16::from_bits(x).to_f32(),
                    ),
                    safetensors::Dtype::BF16 => scan(
                        b,
                        |x: u16| x & 0x7f80 == 0x7f80,
                        |x| half::bf16::from_bits(x).to_f32(),
                    ),
                    _ => None,
                }
            }
        }
    }

    /// Element `i` as f32 (a float tensor; see [`Self::is_float`]).
    fn element(&self, i: usize) -> f32 {
        match &self.data {
            HostData::F32(v) => v[i],
            HostData::Raw {
                dtype,
                bytes,
                start,
                ..
            } => {
                let b = &bytes[*start..];
                let at = |size: usize| &b[i * size..(i + 1) * size];
                match dtype {
                    safetensors::Dtype::F16 => {
                        half::f16::from_bits(bytemuck::pod_read_unaligned(at(2))).to_f32()
                    }
                    safetensors::Dtype::BF16 => {
                        half::bf16::from_bits(bytemuck::pod_read_unaligned(at(2))).to_f32()
                    }
                    _ => f32::from_bits(bytemuck::pod_read_unaligned(at(4))),
                }
            }
        }
    }

    /// Element type as stored ("f32", "f16", "bf16").
    pub fn stored_dtype(&self) -> &'static str {
        match &self.data {
            HostData::F32(_) => "f32",
            HostData::Raw { dtype, .. } => match dtype {
                safetensors::Dtype::F16 => "f16",
                safetensors::Dtype::BF16 => "bf16",
                _ => "f32",
            },
        }
    }
}

/// A set of named tensors from one or more files (a component of a model).
#[derive(Debug, Default)]
pub struct Weights {
    /// Where the tensors came from, for messages.
    pub source: String,
    pub tensors: BTreeMap<String, HostTensor>,
    used: Mutex<HashSet<String>>,
    /// Synthetic mode: the seed tensors are made up from.
    synthetic: Option<u64>,
    /// Tensors made up in synthetic mode, kept so a second request and the
    /// parameter count see them.
    generated: Mutex<BTreeMap<String, HostTensor>>,
}

impl Weights {
    pub fn new(source: impl Into<String>, tensors: BTreeMap<String, HostTensor>) -> Self {
        Weights {
            source: source.into(),
            tensors,
            used: Mutex::new(HashSet::new()),
            synthetic: None,
            generated: Mutex::new(BTreeMap::new()),
        }
    }

    /// Weights with no file behind them: any tensor asked for with
    /// [`VarBuilder::get`] is made up (deterministically from `seed` and its
    /// key) with the requested shape and remembered. Weights are
    /// uniform(-1, 1) / sqrt(fan_in), 1-d weights (norm scales) near 1,
    /// biases small, so activations stay finite through a deep network.
    /// [`VarBuilder::get_any`] cannot know a shape and reports the key missing.
    pub fn synthetic(source: impl Into<String>, seed: u64) -> Self {
        Weights {
            synthetic: Some(seed),
            ..Weights::new(source, BTreeMap::new())
        }
    }

    /// Reads every tensor of a safetensors file.
    pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, WeightError> {
        let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_safetensors(path, Arc::new(bytes))
    }

    /// The tensors of a safetensors file already in memory (a browser's
    /// file input, say). They borrow `bytes`: nothing is copied until upload.
    /// `path` names the file in messages.
    pub fn parse_safetensors(
        path: &Path,
        bytes: Arc<Vec<u8>>,
    ) -> Result<BTreeMap<String, HostTensor>, WeightError> {
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| WeightError::Corrupt {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let base = bytes.as_ptr() as usize;
        let mut out = BTreeMap::new();
        for (name, view) in st.tensors() {
            // Every tensor is kept; one that is not a float is refused by
            // name when a module asks for it, and is otherwise ignored
            // (integer buffers such as position_ids, which no module reads).
            let dtype = view.dtype();
            let start = view.data().as_ptr() as usize - base;
            let end = start + view.data().len();
            out.insert(
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    data: HostData::Raw {
                        dtype,
                        bytes: bytes.clone(),
                        start,
                        end,
                    },
                },
            );
        }
        Ok(out)
    }

    pub fn root(&self) -> VarBuilder<'_> {
        VarBuilder {
            weights: self,
            prefix: String::new(),
        }
    }

    /// Tensors that no module asked for, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let generated = self.generated();
        let mut out: Vec<String> = self
            .tensors
            .keys()
            .chain(generated.keys())
            .filter(|k| !used.contains(*k))
            .filter(|k| self.tensors.get(*k).is_none_or(HostTensor::is_float))
            .cloned()
            .collect();
        out.sort();
        out
    }

    fn generated(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HostTensor>> {
        self.generated.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn parameter_count(&self) -> usize {
        let generated = self.generated();
        self.tensors
            .values()
            .chain(generated.values())
            .filter(|t| t.is_float())
            .map(HostTensor::numel)
            .sum()
    }

    /// A fingerprint of the weights the networks read: FNV-1a over each
    /// used tensor's key and shape and 64 of its values spread over it,
    /// rounded to f16 first, so that a checkpoint's f32 and fp16 files give
    /// the same fingerprint while another model's (a fine-tune changes
    /// every tensor) does not. Cheap: a few thousand values, not a pass.
    pub fn fingerprint(&self) -> u64 {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let generated = self.generated();
        let mut h = Fnv::default();
        for (key, t) in self.tensors.iter().chain(generated.iter()) {
            if !used.contains(key) {
                continue;
            }
            h.write(key.as_bytes());
            for &d in &t.shape {
                h.write(&(d as u64).to_le_bytes());
            }
            let n = t.numel();
            for k in 0..n.min(64) {
                let v = half::f16::from_f32(t.element(k * n / n.min(64)));
                h.write(&v.to_bits().to_le_bytes());
            }
        }
        h.0
    }

    /// The element type most tensors are stored in.
    pub fn stored_dtype(&self) -> &'static str {
        let mut counts = BTreeMap::new();
        let generated = self.generated();
        for t in self.tensors.values().chain(generated.values()) {
            if !t.is_float() {
                continue;
            }
            *counts.entry(t.stored_dtype()).or_insert(0usize) += t.numel();
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or("f32", |(d, _)| d)
    }
}

/// A view of [`Weights`] under a key prefix.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> VarBuilder<'a> {
    /// The builder for `prefix.name`.
    pub fn pp(&self, name: impl Display) -> VarBuilder<'a> {
        VarBuilder {
            weights: self.weights,
            prefix: self.key(&name.to_string()),
        }
    }

    /// Where the weights came from, for messages.
    pub fn source(&self) -> &str {
        &self.weights.source
    }

    /// The full key of `name` under this builder.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        let key = self.key(name);
        self.weights.tensors.contains_key(&key) || self.weights.generated().contains_key(&key)
    }

    fn mark_used(&self, key: String) {
        self.weights
            .used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
    }

    /// The tensor `prefix.name`, which must have `shape` (a clone: the data
    /// is shared). In synthetic mode a tensor not yet asked for is made up.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor, WeightError> {
        let key = self.key(name);
        let t = match (self.weights.tensors.get(&key), self.weights.synthetic) {
            (Some(t), _) => t.clone(),
            (None, Some(seed)) => self
                .weights
                .generated()
                .entry(key.clone())
                .or_insert_with(|| synthesize(&key, shape, seed))
                .clone(),
            (None, None) => {
                return Err(WeightError::Missing {
                    file: self.weights.source.clone(),
                    key,
                });
            }
        };
        if t.shape != shape {
            return Err(WeightError::Shape {
                file: self.weights.source.clone(),
                key,
                expected: shape.to_vec(),
                actual: t.shape,
            });
        }
        self.checked(key, t)
    }

    /// The tensor `prefix.name` with whatever shape it has (a synthetic
    /// tensor only once `get` made it).
    pub fn get_any(&self, name: &str) -> Result<HostTensor, WeightError> {
        let key = self.key(name);
        let t = self
            .weights
            .tensors
            .get(&key)
            .cloned()
            .or_else(|| self.weights.generated().get(&key).cloned())
            .ok_or_else(|| WeightError::Missing {
                file: self.weights.source.clone(),
                key: key.clone(),
            })?;
        self.checked(key, t)
    }

    /// `t` once its element type is one we read and every value is finite
    /// (one pass over bytes already in memory), marked used.
    fn checked(&self, key: String, t: HostTensor) -> Result<HostTensor, WeightError> {
        let file = || self.weights.source.clone();
        if let HostData::Raw { dtype, .. } = &t.data
            && !is_float(*dtype)
        {
            let dtype = format!("{dtype:?}");
            return Err(WeightError::DType {
                file: file(),
                key,
                dtype,
            });
        }
        if let Some((index, value)) = t.first_non_finite() {
            return Err(WeightError::NonFinite {
                file: file(),
                key,
                index,
                value,
            });
        }
        self.mark_used(key);
        Ok(t)
    }
}

/// 64-bit FNV-1a.
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn is_float(dtype: safetensors::Dtype) -> bool {
    matches!(
        dtype,
        safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
    )
}

/// A made-up tensor for `key` (see [`Weights::synthetic`]).
fn synthesize(key: &str, shape: &[usize], seed: u64) -> HostTensor {
    let mut rng = crate::rand::SplitMix64::for_key(key, seed);
    let n: usize = shape.iter().product();
    let (offset, scale) = if key.ends_with("bias") {
        (0.0, 0.01)
    } else if shape.len() == 1 {
        (1.0, 0.01)
    } else {
        let fan_in: usize = shape[1..].iter().product();
        (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    };
    let data = (0..n).map(|_| offset + scale * rng.signed_unit()).collect();
    HostTensor::from_f32(shape.to_vec(), data)
}
