//! Replays the committed fuzz corpus (`tools/fuzz/corpus/<target>/`: the
//! seeds `tools/make_fuzz_corpus.py` writes, every bad input of the
//! robustness issue among them, and any input that once crashed a target)
//! through the fuzz targets' bodies on the stable toolchain: none may panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fuzz/corpus");
    let mut failed = Vec::new();
    for (target, run) in pnp::fuzz::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus", dir.display());
        for f in &files {
            let bytes = std::fs::read(f).expect("corpus file");
            if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
                failed.push(f.display().to_string());
            }
        }
        println!("{target}: {} inputs", files.len());
    }
    assert!(failed.is_empty(), "panicked on {failed:#?}");
}
