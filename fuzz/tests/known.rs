//! Open findings as typed inputs (see README.md, "Known open findings"): each must still fail
//! its target until the library is fixed; then it moves to `regressions.rs` and its skip in
//! `src/targets.rs` goes.

use wharf_fuzz::ops::{Config, Dur, Len, Op};
use wharf_fuzz::targets::{run_ops_model, ModelInput};

/// Known finding 1: `RecoveryReport::in_flight_at_crash` counts a message that was in flight
/// at an earlier close, ready since and never delivered again, at every later open too.
#[test]
fn in_flight_at_crash_counts_leases_of_earlier_runs() {
    let input = ModelInput {
        cfg: Config { push: Dur::Default, ack: Dur::Default },
        ops: vec![
            Op::Push { queue: 0, len: Len::Small(3), durability: Dur::Default },
            Op::Pop { queue: 0 },
            Op::Reopen { release_first: false }, // in flight at the close: counted, rightly
            Op::Reopen { release_first: false }, // nothing in flight: counted again
        ],
    };
    let failed = std::panic::catch_unwind(|| run_ops_model(&input)).is_err();
    assert!(
        failed || wharf_fuzz::targets::skip_known(),
        "passes now: the finding is fixed; move this test to regressions.rs and remove its skip"
    );
}
