//! Regression inputs written as typed values (see README.md, "When a target fails"): each must
//! pass its target. File inputs live in `regressions/<target>/` and are replayed by `replay.rs`.

use wharf_fuzz::ops::{Config, Dur, FaultSpec, Len, Op, Policy};
use wharf_fuzz::targets::{run_ops_faults, End, FaultInput};

/// A log fsync fails (the store is poisoned), the store is reopened in the same process, then
/// the power fails. The reopened store must not have built on the records whose fsync failed
/// (the page cache still shows them, the disk never got them): the image opens and I1-I5 hold.
/// (Was open finding 2; fixed in 49c20d4.)
#[test]
fn a_reopen_after_a_failed_fsync_survives_a_power_loss() {
    assert_eq!(wharf::testing::OpKind::ALL[11], wharf::testing::OpKind::Sync);
    for nth in 1..=3 {
        let input = FaultInput {
            cfg: Config { push: Dur::None, ack: Dur::Default },
            // nth 2: the 2nd fdatasync after the first open, the log sync of `Sync` below.
            fault: FaultSpec { kind: 11, nth, no_space: false, persistent: false },
            arm_at: 1,
            end: End::Image(Policy::DropAllUnsynced, 0),
            ops: vec![
                Op::Push { queue: 0, len: Len::Small(5), durability: Dur::Immediate },
                Op::Push { queue: 0, len: Len::Small(5), durability: Dur::None },
                Op::Sync,
                Op::Reopen { release_first: true },
            ],
        };
        run_ops_faults(&input);
    }
}
