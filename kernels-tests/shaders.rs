//! Every shader family, in every variant the ops can request, parses and
//! validates with naga and translates to SPIR-V (Vulkan), MSL (Metal) and
//! HLSL (DX12). No GPU needed.

use pnp::gpu::{Access, DType, INCLUDES, KernelKey, shader_source};

/// One key per (family, variant) combination that the ops emit.
fn variants() -> Vec<KernelKey> {
    let mut keys = Vec::new();
    let key =
        |family: &'static str, dtype, consts: Vec<(&'static str, u32)>, nbind: u32| KernelKey {
            family,
            entry: "main",
            dtype,
            consts,
            bindings: (1..=nbind)
                .map(|b| {
                    (
                        b,
                        if b == 1 {
                            Access::ReadWrite
                        } else {
                            Access::Read
                        },
                    )
                })
                .collect(),
        };
    for dtype in [DType::F32, DType::F16] {
        for act in 0..=4 {
            for bias in 0..=1 {
                for res in 0..=1 {
                    for nfast in 0..=1 {
                        keys.push(key(
                            "gemm",
                            dtype,
                            vec![
                                ("ACT", act),
                                ("HAS_BIAS", bias),
                                ("HAS_RES", res),
                                ("B_N_FAST", nfast),
                            ],
                            5,
                        ));
                    }
                }
            }
        }
        for res in 0..=1 {
            keys.push(key("conv", dtype, vec![("HAS_RES", res)], 5));
        }
        for silu in 0..=1 {
            keys.push(key("norm", dtype, vec![("SILU", silu)], 4));
        }
        keys.push(key("softmax", dtype, vec![], 2));
        for d in [4, 8, 16, 40, 64, 80, 160] {
            keys.push(key(
                "attention",
                dtype,
                vec![("HEAD_DIM", d), ("CHUNKED", 0)],
                5,
            ));
            let mut chunked = key("attention", dtype, vec![("HEAD_DIM", d), ("CHUNKED", 1)], 5);
            chunked.bindings[1].1 = Access::ReadWrite;
            keys.push(chunked);
        }
        for (op, binary) in [(0, 1), (1, 1), (2, 0), (3, 0), (4, 0), (5, 0)] {
            keys.push(key(
                "elementwise",
                dtype,
                vec![("OP", op), ("BINARY", binary)],
                3,
            ));
        }
        keys.push(key("copy", dtype, vec![], 2));
        keys.push(key("upsample", dtype, vec![], 2));
        keys.push(key("timestep", dtype, vec![], 3));
    }
    keys
}

#[test]
fn every_shader_family_is_covered() {
    let covered: std::collections::HashSet<&str> = variants().iter().map(|k| k.family).collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(dir).expect("shaders/") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .to_string();
        let stem = name.trim_end_matches(".wgsl");
        // Shared files appended to other families are checked as part of them.
        let included = INCLUDES.iter().any(|(_, files)| files.contains(&stem));
        assert!(
            included || covered.contains(stem),
            "shaders/{name} has no variant in this test"
        );
    }
}

#[test]
fn shaders_validate_and_translate() {
    use naga::back::{hlsl, msl, spv};
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let mut failures = Vec::new();
    for key in variants() {
        let src = shader_source(&key);
        let what = format!("{} {:?} {:?}", key.family, key.dtype, key.consts);
        let module = match naga::front::wgsl::parse_str(&src) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{what}: parse: {}", e.emit_to_string(&src)));
                continue;
            }
        };
        let info =
            match Validator::new(ValidationFlags::all(), Capabilities::all()).validate(&module) {
                Ok(i) => i,
                Err(e) => {
                    failures.push(format!("{what}: validate: {}", e.emit_to_string(&src)));
                    continue;
                }
            };
        if let Err(e) = spv::write_vec(&module, &info, &spv::Options::default(), None) {
            failures.push(format!("{what}: SPIR-V: {e}"));
        }
        let pipeline = msl::PipelineOptions::default();
        if let Err(e) = msl::write_string(&module, &info, &msl::Options::default(), &pipeline) {
            failures.push(format!("{what}: MSL: {e}"));
        }
        let mut out = String::new();
        let opts = hlsl::Options::default();
        let popts = hlsl::PipelineOptions::default();
        let mut w = hlsl::Writer::new(&mut out, &opts, &popts);
        if let Err(e) = w.write(&module, &info, None) {
            failures.push(format!("{what}: HLSL: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} shader variant(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
