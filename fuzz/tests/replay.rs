//! Replays every committed input through its target without libFuzzer (stable toolchain, plain
//! `cargo test`): the seed corpora in `seeds/<target>/` and the regression inputs in
//! `regressions/<target>/` (crash artifacts that were fixed; see README.md). The inputs in
//! `known/<target>/` reproduce open findings and must still fail until they are fixed.

use std::path::{Path, PathBuf};

/// The inputs under `kind/<target>/`, with their target.
fn inputs(kind: &str) -> Vec<(&'static str, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut out = Vec::new();
    for target in wharf_fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
        files.sort();
        out.extend(files.into_iter().map(|f| (target, f)));
    }
    out
}

fn replay_dir(kind: &str) -> usize {
    let all = inputs(kind);
    for (target, file) in &all {
        let data = std::fs::read(file).expect("input file");
        eprintln!("{target}: {}", file.display());
        wharf_fuzz::run_target(target, &data);
    }
    all.len()
}

#[test]
fn every_seed_input_passes() {
    let n = replay_dir("seeds");
    assert!(n > 0, "no seeds found: run `cargo run --example make_seeds`");
}

#[test]
fn every_regression_input_passes() {
    replay_dir("regressions");
}

#[test]
fn every_known_finding_still_reproduces() {
    for (target, file) in inputs("known") {
        let data = std::fs::read(&file).expect("input file");
        let failed = std::panic::catch_unwind(|| wharf_fuzz::run_target(target, &data)).is_err();
        assert!(
            failed,
            "{}: passes now; the finding is fixed: move it to regressions/{target}/ and remove \
             its skip from src/targets.rs",
            file.display()
        );
    }
}
