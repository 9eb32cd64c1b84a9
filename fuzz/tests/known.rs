//! Open findings as typed inputs (see README.md, "Known open findings"): each must still fail
//! its target until the library is fixed; then it moves to `regressions.rs` and its skip in
//! `src/targets.rs` goes.

// None is open now (see README.md).
