//! Open findings as typed inputs (see README.md, "Known open findings"): each must still fail
//! its target until the library is fixed; then it moves to `regressions.rs` and its skip in
//! `src/targets.rs` goes. None is open now; write one as
//!
//! ```ignore
//! #[test]
//! fn what_goes_wrong() {
//!     let input = ModelInput { .. };
//!     fails_with(|| run_ops_model(&input), "the assertion's message");
//! }
//! ```

/// Runs `f`, which must fail with a message containing `what`.
#[allow(dead_code)] // no finding is open
fn fails_with(f: impl FnOnce() + std::panic::UnwindSafe, what: &str) {
    let failed = std::panic::catch_unwind(f);
    let why = failed.expect_err("fixed: move this test to regressions.rs, remove its skip");
    let why = why.downcast_ref::<String>().map_or("", String::as_str);
    assert!(why.contains(what), "fails otherwise: {why}");
}
