//! Open findings as typed inputs (see README.md, "Known open findings"): each must still fail
//! its target until the library is fixed; then it moves to `regressions.rs` and its skip in
//! `src/targets.rs` goes.

use wharf_fuzz::ops::{Config, Dur, Len, Op};
use wharf_fuzz::targets::{run_ops_model, ModelInput};

/// Open finding 1 (a): a message leased when a checkpoint relocated it, and still leased at
/// the close, is not counted in `RecoveryReport::in_flight_at_crash` by the next open (0, not
/// 1). Its row in `state.redb` keeps its attempts but not that it was leased, and recovery
/// skips its delivery record below the checkpoint. (Its attempt count is right.)
#[test]
fn a_relocated_message_leased_at_the_close_counts_as_in_flight() {
    let input = ModelInput {
        cfg: Config::new(Dur::Default, Dur::Default),
        ops: vec![
            Op::Push { queue: 0, len: Len::Small(10), durability: Dur::Default },
            Op::Pop { queue: 0 },
            Op::Churn { queue: 1, n: 40, len: Len::Large(40), durability: Dur::None },
            Op::Checkpoint,
            Op::Reopen { release_first: false },
        ],
    };
    fails_with(|| run_ops_model(&input), "recovered in-flight count");
}

/// Open finding 1 (b): a message in flight at a close, released by the next run, which then
/// took a checkpoint (with nothing to relocate), is counted in
/// `RecoveryReport::in_flight_at_crash` at every later open (1, not 0). Replay starts from the
/// checkpoint's epoch (`Replay::from_checkpoint` sets `max_epoch`), so the epoch record of the
/// run after that close no longer ends the leases of the run before (found by `ops_model`).
#[test]
fn a_lease_of_a_run_before_a_checkpoint_is_not_in_flight_later() {
    let input = ModelInput {
        cfg: Config::new(Dur::Default, Dur::Default),
        ops: vec![
            Op::Push { queue: 0, len: Len::Small(10), durability: Dur::Default },
            Op::Pop { queue: 0 },
            Op::Reopen { release_first: false }, // in flight at this close: counted, rightly
            Op::Checkpoint,
            Op::Reopen { release_first: true }, // nothing in flight, 1 counted
        ],
    };
    fails_with(|| run_ops_model(&input), "recovered in-flight count");
}

/// Runs `f`, which must fail with a message containing `what`.
fn fails_with(f: impl FnOnce() + std::panic::UnwindSafe, what: &str) {
    let failed = std::panic::catch_unwind(f);
    let why = failed.expect_err("fixed: move this test to regressions.rs, remove its skip");
    let why = why.downcast_ref::<String>().map_or("", String::as_str);
    assert!(why.contains(what), "fails otherwise: {why}");
}

/// Open finding 2: one failed call on the state database (here a transient EIO on a write of
/// a checkpoint's redb transaction) makes every later checkpoint fail, until the store is
/// reopened: redb latches the error ("Previous I/O error occurred. Please close and re-open
/// the database") and wharf keeps the same `redb::Database`. `Wharf::checkpoint` documents
/// that the next checkpoint tries again.
#[test]
fn a_checkpoint_after_a_transient_state_database_fault_succeeds() {
    use wharf_fuzz::ops::FaultSpec;
    use wharf_fuzz::targets::{run_ops_faults, End, FaultInput};
    assert_eq!(wharf::testing::OpKind::ALL[10], wharf::testing::OpKind::Write);
    let input = FaultInput {
        cfg: Config::new(Dur::Default, Dur::Default),
        fault: FaultSpec { kind: 10, nth: 0, no_space: false, persistent: false },
        arm_at: 3, // before the second checkpoint: its first write is redb's
        end: End::SameDisk,
        ops: vec![
            Op::Push { queue: 0, len: Len::Small(10), durability: Dur::Default },
            Op::Checkpoint,
            Op::Checkpoint,
            Op::Checkpoint,
        ],
    };
    fails_with(|| run_ops_faults(&input), "Previous I/O error");
}

/// Open finding 3: a checkpoint's redb commit fails at its fsync (transient EIO; the
/// kernel drops the dirty pages it could not write, fsyncgate), the store is reopened in the
/// same process, then the power fails. The reopened redb read the page cache, took the failed
/// commit for a committed one and made its header durable (the open writes and syncs it); a page
/// that commit wrote never reached the disk. After the power loss the store no longer opens:
/// `Error::Corrupted` ("the state database cannot be read: redb panicked opening it"; redb:
/// "Invalid page type byte 0").
#[test]
fn a_reopen_after_a_failed_state_database_sync_survives_a_power_loss() {
    use wharf_fuzz::ops::{FaultSpec, Policy};
    use wharf_fuzz::targets::{run_ops_faults, End, FaultInput};
    assert_eq!(wharf::testing::OpKind::ALL[11], wharf::testing::OpKind::Sync);
    let input = FaultInput {
        cfg: Config::new(Dur::Default, Dur::Default),
        // The 2nd fsync from the second push on: the push's log sync, then the one fsync of
        // the second checkpoint's redb commit (redb writes its pages and header, then syncs).
        fault: FaultSpec { kind: 11, nth: 1, no_space: false, persistent: false },
        arm_at: 3,
        end: End::Image(Policy::DropAllUnsynced, 0),
        ops: vec![
            Op::Push { queue: 0, len: Len::Small(10), durability: Dur::Default },
            Op::Checkpoint,
            Op::Push { queue: 0, len: Len::Small(10), durability: Dur::Default },
            Op::Checkpoint,
            Op::Reopen { release_first: true },
        ],
    };
    fails_with(|| run_ops_faults(&input), "redb panicked opening it");
}
