//! Test helpers that need no file system and no blocking: fixtures parsed
//! from bytes, case parameters, tolerances and a comparison that names the
//! first failing index. Shared by the native tests (`common/mod.rs`) and the
//! browser tests (`web/tests/browser.rs`).
#![allow(dead_code)]

use pnp::gpu::{DType, Gpu};
use pnp::graph::{Graph, Value};
use pnp::pipeline::{NegativeSchedule, PnpOptions, SourceLatents};
use serde_json::Value as Json;
use std::collections::HashMap;

/// The dtypes the kernels are tested in on `gpu`: f32, and f16 storage
/// where the adapter has SHADER_F16.
pub fn dtypes_of(gpu: &Gpu) -> Vec<DType> {
    let mut d = vec![DType::F32];
    if gpu.caps.shader_f16 {
        d.push(DType::F16);
    }
    d
}

/// Marks `y` as the graph's output, tunes (where the device has autotune
/// on), plans, runs once and reads `y` back.
pub async fn read_graph(g: &mut Graph, y: &Value) -> Vec<f32> {
    g.output(y);
    g.tune().await.expect("autotune");
    let plan = g.plan().expect("plan");
    plan.run();
    plan.read(y).await.expect("readback")
}

/// A safetensors fixture: f32 tensors by name, plus its metadata.
pub struct Fixture {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub ints: HashMap<String, Vec<i64>>,
    pub meta: HashMap<String, String>,
}

impl Fixture {
    /// Parses fixture file bytes; `name` names it in panics.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Fixture {
        let st =
            safetensors::SafeTensors::deserialize(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, md) = safetensors::SafeTensors::read_metadata(bytes).expect("metadata");
        let mut tensors = HashMap::new();
        let mut ints = HashMap::new();
        for (name, view) in st.tensors() {
            match view.dtype() {
                safetensors::Dtype::F32 => {
                    tensors.insert(
                        name,
                        (
                            view.shape().to_vec(),
                            bytemuck::pod_collect_to_vec(view.data()),
                        ),
                    );
                }
                safetensors::Dtype::I64 => {
                    ints.insert(name, bytemuck::pod_collect_to_vec(view.data()));
                }
                safetensors::Dtype::U8 => {
                    ints.insert(name, view.data().iter().map(|&b| i64::from(b)).collect());
                }
                other => panic!("{name}: unexpected fixture dtype {other:?}"),
            }
        }
        Fixture {
            tensors,
            ints,
            meta: md.metadata().clone().unwrap_or_default(),
        }
    }

    /// The fixture's cases; an empty list fails, so a loop over it cannot
    /// pass by checking nothing.
    pub fn cases(&self) -> Vec<Json> {
        let cases = serde_json::from_str::<Vec<Json>>(&self.meta["cases"]).expect("cases metadata");
        assert!(!cases.is_empty(), "the fixture lists no cases");
        cases
    }

    pub fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }
}

pub fn p_usize(c: &Json, k: &str) -> usize {
    c[k].as_u64()
        .unwrap_or_else(|| panic!("case param {k} missing in {c}")) as usize
}
pub fn p_bool(c: &Json, k: &str) -> bool {
    c[k].as_bool()
        .unwrap_or_else(|| panic!("case param {k} missing in {c}"))
}
pub fn p_f32(c: &Json, k: &str) -> f32 {
    c[k].as_f64()
        .unwrap_or_else(|| panic!("case param {k} missing in {c}")) as f32
}
pub fn p_f64(c: &Json, k: &str) -> f64 {
    c[k].as_f64()
        .unwrap_or_else(|| panic!("case param {k} missing in {c}"))
}
/// The PnP settings of a tools/reference_pnp.py case.
pub fn case_options(c: &Json) -> PnpOptions {
    PnpOptions {
        negative_prompt: p_str(c, "negative_prompt").into(),
        inversion_prompt: p_str(c, "inversion_prompt").into(),
        steps: p_usize(c, "steps"),
        inversion_steps: p_usize(c, "inversion_steps"),
        guidance: p_f32(c, "guidance"),
        pnp_f_t: p_f64(c, "pnp_f_t"),
        pnp_attn_t: p_f64(c, "pnp_attn_t"),
        negative_prompt_alpha: c["negative_prompt_alpha"].as_f64(),
        negative_prompt_schedule: match c["negative_prompt_schedule"].as_str() {
            None | Some("linear") => NegativeSchedule::Linear,
            Some("constant") => NegativeSchedule::Constant,
            Some("exp") => NegativeSchedule::Exp,
            Some(other) => panic!("unknown negative_prompt_schedule {other:?}"),
        },
        source_latents: match c["source_latents"].as_str() {
            None | Some("inversion") => SourceLatents::Inversion,
            Some("reconstruction") => SourceLatents::Reconstruction,
            Some(other) => panic!("unknown source_latents {other:?}"),
        },
        ..Default::default()
    }
}

/// The target prompts of a tools/reference_pnp.py case.
pub fn case_prompts(c: &Json) -> Vec<String> {
    c["prompts"]
        .as_array()
        .unwrap_or_else(|| panic!("case has no prompts: {c}"))
        .iter()
        .map(|p| p.as_str().expect("prompt").to_string())
        .collect()
}

pub fn p_str<'a>(c: &'a Json, k: &str) -> &'a str {
    c[k].as_str()
        .unwrap_or_else(|| panic!("case param {k} missing in {c}"))
}
pub fn p_shape(c: &Json, k: &str) -> Vec<usize> {
    c[k].as_array()
        .unwrap_or_else(|| panic!("case param {k} missing in {c}"))
        .iter()
        .map(|x| x.as_u64().expect("shape entry") as usize)
        .collect()
}

/// Tolerance |got - want| <= atol + rtol * |want|.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

/// Errors of one comparison.
#[derive(Debug)]
pub struct Report {
    pub max_abs: f32,
    pub max_rel: f32,
}

/// Checks every element; on failure the message names the first failing
/// index, both values, and how many elements failed.
pub fn compare(what: &str, got: &[f32], want: &[f32], tol: Tol) -> Result<Report, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut first = None;
    let mut bad = 0usize;
    let (mut max_abs, mut max_rel) = (0f32, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        let ok = d <= tol.atol + tol.rtol * w.abs();
        if !ok || !g.is_finite() {
            bad += 1;
            first.get_or_insert((i, g, w));
        }
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / w.abs().max(1e-6));
    }
    match first {
        None => Ok(Report { max_abs, max_rel }),
        Some((i, g, w)) => Err(format!(
            "{what}: {bad} of {} values out of tolerance {tol:?}; first at index {i}: got {g}, want {w}; max abs error {max_abs}",
            got.len()
        )),
    }
}

/// Collects failures across cases so one run reports all of them.
#[derive(Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    pub fn check(&mut self, r: Result<Report, String>) -> Option<Report> {
        match r {
            Ok(rep) => Some(rep),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }
    pub fn finish(self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} failure(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}
