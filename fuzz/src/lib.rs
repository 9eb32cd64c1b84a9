//! Shared code of wharf's fuzz targets (CRASH-TESTING.md 3.6): the operation language, its
//! driver of the crash oracle (invariants I1–I5; the oracle itself and the jobs model are
//! `wharf_check`'s, shared with tests/), an independent record scanner written from
//! `docs/format.md`, seeded workloads, and one function per target.
//!
//! The targets in `fuzz_targets/` only forward their input to [`targets`], so every input can
//! be replayed without libFuzzer: `cargo test` in this directory runs the committed seeds and
//! regression inputs through the same functions (`tests/replay.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check must abort

pub mod encode;
pub mod ops;
pub mod oracle;
pub mod scan;
pub mod stats;
pub mod targets;
pub mod workload;

/// The names of the targets, as in `fuzz_targets/<name>.rs` and `seeds/<name>/`.
pub const TARGETS: [&str; 8] = [
    "record_decode",
    "segment_recover",
    "dir_open",
    "ops_model",
    "ops_crash",
    "ops_faults",
    "corrupt_then_recover",
    "salvage",
];

/// Runs the target `name` on `data`, as its fuzz target does.
///
/// # Panics
/// On an unknown name, and wherever the target finds a violation.
pub fn run_target(name: &str, data: &[u8]) {
    match name {
        "record_decode" => targets::record_decode(data),
        "segment_recover" => targets::segment_recover(data),
        "dir_open" => targets::dir_open(data),
        "ops_model" => targets::ops_model(data),
        "ops_crash" => targets::ops_crash(data),
        "ops_faults" => targets::ops_faults(data),
        "corrupt_then_recover" => targets::corrupt_then_recover(data),
        "salvage" => targets::salvage(data),
        _ => panic!("unknown fuzz target {name}"),
    }
}

/// The input of target `name` as the target decodes it, for reading a crash artifact.
pub fn describe(name: &str, data: &[u8]) -> String {
    use arbitrary::{Arbitrary, Unstructured};
    fn show<T: for<'a> Arbitrary<'a> + std::fmt::Debug>(data: &[u8]) -> String {
        match T::arbitrary_take_rest(Unstructured::new(data)) {
            Ok(v) => format!("{v:#?}"),
            Err(e) => format!("(not decodable: {e}; the target ignores it)"),
        }
    }
    match name {
        "dir_open" => show::<targets::DirImage>(data),
        "ops_model" => show::<targets::ModelInput>(data),
        "ops_crash" => show::<targets::CrashInput>(data),
        "ops_faults" => show::<targets::FaultInput>(data),
        "corrupt_then_recover" | "salvage" => show::<targets::CorruptInput>(data),
        _ => format!("{} raw bytes, mode byte {:?}: {:02x?}", data.len(), data.first(), data),
    }
}
