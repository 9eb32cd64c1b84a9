//! Open findings written as typed inputs (see README.md, "Known open findings"): each must
//! still fail its target. When one passes, the library was fixed: keep the input as a
//! regression test that must pass, and remove the finding's skip from `src/targets.rs`.

use wharf_fuzz::ops::{Config, Dur, FaultSpec, Len, Op, Policy};
use wharf_fuzz::targets::{run_ops_faults, End, FaultInput};

fn fails(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(f).is_err()
}

/// Finding 2: a log fsync fails (the store is poisoned), the store is reopened in the same
/// process, then the power fails: the reopened store synced an epoch record after the records
/// whose fsync failed, which never reached the disk, and the image no longer opens.
#[test]
fn finding_2_reopen_after_a_failed_fsync_then_power_loss() {
    let input = FaultInput {
        cfg: Config { push: Dur::None, ack: Dur::Default },
        // The 2nd fdatasync after the first open: the log sync of `Sync` below.
        fault: FaultSpec { kind: 11, nth: 2, no_space: false, persistent: false },
        arm_at: 1,
        end: End::Image(Policy::DropAllUnsynced, 0),
        ops: vec![
            Op::Push { queue: 0, len: Len::Small(5), durability: Dur::Immediate },
            Op::Push { queue: 0, len: Len::Small(5), durability: Dur::None },
            Op::Sync,
            Op::Reopen { release_first: true },
        ],
    };
    assert_eq!(wharf::testing::OpKind::ALL[11], wharf::testing::OpKind::Sync);
    assert!(fails(|| run_ops_faults(&input)), "finding 2 is fixed: see this file's header");
}
