//! Regression inputs written as typed values (see README.md, "When a target fails"): each must
//! pass its target. File inputs live in `regressions/<target>/` and are replayed by `replay.rs`.

use wharf_fuzz::ops::{BackoffSpec, Config, Dur, FaultSpec, JobOpts, Len, Op, Policy, QueueCfg};
use wharf_fuzz::targets::{
    run_ops_crash, run_ops_faults, run_ops_model, CrashInput, CrashPoint, End, FaultInput,
    ModelInput,
};

/// A log fsync fails (the store is poisoned), the store is reopened in the same process, then
/// the power fails. The reopened store must not have built on the records whose fsync failed
/// (the page cache still shows them, the disk never got them): the image opens and I1-I5 hold.
/// (Was open finding 2; fixed in 49c20d4.)
#[test]
fn a_reopen_after_a_failed_fsync_survives_a_power_loss() {
    assert_eq!(wharf::testing::OpKind::ALL[11], wharf::testing::OpKind::Sync);
    for nth in 1..=3 {
        let input = FaultInput {
            cfg: Config::new(Dur::None, Dur::Default),
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

/// A pop that finds its queue empty logs nothing, so (with `Immediate` ack durability) it makes
/// nothing durable either. The oracle once assumed it synced everything staged, and reported
/// an `Interval` push lost by a crash before its sync as a durable message lost (found by
/// `ops_crash` in CI; the input was `regressions/ops_crash/an-empty-pop-syncs-nothing`, now
/// `an_empty_pop_syncs_nothing_as_found` below, since the operation language grew). Every
/// crash point of the sequence, under the policy that drops all unsynced data.
#[test]
fn an_empty_pop_makes_nothing_durable() {
    for after in 0..40 {
        let input = CrashInput {
            cfg: Config::new(Dur::Default, Dur::Immediate),
            crashes: vec![CrashPoint {
                wait: 0,
                after,
                policy: Policy::DropAllUnsynced,
                seed: 0,
                recovery: None,
            }],
            ops: vec![
                Op::Pop { queue: 2 },
                Op::Push { queue: 1, len: Len::Large(87), durability: Dur::Interval },
                Op::PopBatch { queue: 2, max: 1 },
                Op::Pop { queue: 2 },
                Op::Push { queue: 2, len: Len::Small(9), durability: Dur::Interval },
                Op::Maintain,
            ],
        };
        run_ops_crash(&input);
    }
}

/// The input `ops_crash` found for the finding above, as it decoded before the operation
/// language grew the job operations (its raw bytes now decode into other operations).
#[test]
fn an_empty_pop_syncs_nothing_as_found() {
    let input = CrashInput {
        cfg: Config::new(Dur::Default, Dur::Immediate),
        crashes: vec![CrashPoint {
            wait: 0,
            after: 18,
            policy: Policy::KeepAll,
            seed: 30,
            recovery: None,
        }],
        ops: vec![
            Op::Pop { queue: 89 },
            Op::Ack { pick: 220, durability: Dur::Default },
            Op::Extend { pick: 3 },
            Op::Ack { pick: 6, durability: Dur::Immediate },
            Op::PushBatch { queue: 199, n: 148, len: Len::Large(87), durability: Dur::Interval },
            Op::PopBatch { queue: 71, max: 71 },
            Op::PopBatch { queue: 71, max: 71 },
            Op::Ack { pick: 71, durability: Dur::Immediate },
            Op::PopBatch { queue: 71, max: 71 },
            Op::Ack { pick: 6, durability: Dur::Immediate },
            Op::PushBatch { queue: 86, n: 148, len: Len::Large(87), durability: Dur::Interval },
            Op::Maintain,
        ],
    };
    run_ops_crash(&input);
}

/// Found by `ops_faults` (fixed in 9656d23): a seal record that was synced makes the log
/// durable up to its end; a reopen in the same process after a later failed sync cut the log
/// below it. A persistent ENOSPC on the 39th operation of one kind, with pushes that roll
/// segments. The input as it decoded before the operation language grew the job operations
/// (it was `regressions/ops_faults/a-synced-seal-advances-the-durable-end`).
#[test]
fn a_synced_seal_advances_the_durable_end() {
    let input = FaultInput {
        cfg: Config::new(Dur::Interval, Dur::Default),
        fault: FaultSpec { kind: 39, nth: 39, no_space: true, persistent: true },
        arm_at: 39,
        end: End::SameDisk,
        ops: vec![
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Large(255), durability: Dur::None },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 221 },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 255 },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::Push { queue: 0, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Small(39), durability: Dur::Default },
            Op::PushBatch { queue: 39, n: 39, len: Len::Large(255), durability: Dur::None },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 255 },
            Op::BadQueue { pick: 255 },
            Op::Maintain,
            Op::PopBatch { queue: 4, max: 72 },
            Op::PopBatch { queue: 246, max: 35 },
            Op::Push { queue: 0, len: Len::Small(0), durability: Dur::Default },
        ],
    };
    run_ops_faults(&input);
}

/// `RecoveryReport::in_flight_at_crash` counted a message that was in flight at an earlier
/// close, ready since and never delivered again, at every later open too (was open finding 1,
/// found by `ops_model`; fixed: a new epoch record ends the leases of earlier runs).
#[test]
fn in_flight_at_crash_counts_only_the_last_run() {
    use wharf_fuzz::targets::{run_ops_model, ModelInput};
    let input = ModelInput {
        cfg: Config::new(Dur::Default, Dur::Default),
        ops: vec![
            Op::Push { queue: 0, len: Len::Small(3), durability: Dur::Default },
            Op::Pop { queue: 0 },
            Op::Reopen { release_first: false }, // in flight at the close: counted
            Op::Reopen { release_first: false }, // nothing in flight: not counted
        ],
    };
    run_ops_model(&input);
}

/// A segment whose valid header declares fewer bytes than a preamble and a seal need (65 bytes
/// here) is refused, not opened and overrun (found by `dir_open` and `segment_recover`; fixed
/// in 49c20d4). It was `regressions/dir_open/segment-shorter-than-64k-is-refused`, as that
/// input decoded before `dir_open` learned the state database's files (its bytes now decode
/// into another image).
#[test]
fn segment_shorter_than_64k_is_refused_in_a_directory() {
    use wharf_fuzz::targets::{run_dir_open, Content, DirImage, FileSpec, NameKind};
    let header_only = Content::HeaderOnly { seg: 0, len: 0, other_store: false };
    run_dir_open(&DirImage {
        files: vec![FileSpec { name: NameKind::Segment(0), content: header_only }],
    });
}

/// Not a wharf bug: a dead letter clears a message's TTL for good (a requeue does not bring it
/// back), but the `ops_crash` oracle kept the TTL of its push and called the requeued message
/// delivered after a crash "expired". Found by `ops_crash` (from a seed of relocation, where the
/// message was relocated into `state.redb` as a dead letter); fixed in the oracle.
#[test]
fn a_requeued_dead_letter_has_no_ttl_after_a_crash() {
    use wharf_fuzz::ops::JobOpts;
    for after in 0..24 {
        let input = CrashInput {
            cfg: Config::new(Dur::Default, Dur::Default),
            crashes: vec![CrashPoint {
                wait: 5,
                after,
                policy: Policy::RandomSubset,
                seed: after,
                recovery: None,
            }],
            ops: vec![
                Op::PushJob {
                    queue: 1,
                    len: Len::Small(40),
                    durability: Dur::Default,
                    opts: JobOpts { delay: 0, priority: 0, ttl: 6, key: None },
                },
                Op::Pop { queue: 1 },
                Op::DeadLetter { pick: 0 },
                Op::Requeue { queue: 1, all: true, pick: 0 },
                Op::Advance { by: 60 },
                Op::Sync,
                Op::Checkpoint,
                Op::Push { queue: 1, len: Len::Small(3), durability: Dur::Default },
            ],
        };
        run_ops_crash(&input);
    }
}

/// Not a wharf bug: a pop whose payload read fails has logged its delivery (its attempt
/// counts), but the `ops_faults` oracle took an ENOSPC (which the simulated disk returns from
/// a read too) for a refusal that changed nothing, and called the attempt found after the
/// reopen one too many. Found by `ops_faults`; fixed in the oracle (ENOSPC is judged like EIO).
#[test]
fn a_pop_failing_with_enospc_may_have_delivered() {
    assert_eq!(wharf::testing::OpKind::ALL[9], wharf::testing::OpKind::Read);
    let input = FaultInput {
        cfg: Config::new(Dur::Default, Dur::Default),
        fault: FaultSpec { kind: 9, nth: 0, no_space: true, persistent: true },
        arm_at: 2,
        end: End::SameDisk,
        ops: vec![
            Op::Push { queue: 0, len: Len::Small(40), durability: Dur::Default },
            Op::Pop { queue: 0 },
            Op::Checkpoint,
        ],
    };
    run_ops_faults(&input);
}

/// A message leased when a checkpoint relocated it, and still leased at the close, is in
/// flight at the next open (`RecoveryReport::in_flight_at_crash` was 0): recovery skips its
/// delivery record below the checkpoint, so its row now keeps the epoch that leased it. (Was
/// open finding 1 (a).)
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
    run_ops_model(&input);
}

/// A message in flight at a close, released by the next run, which then took a checkpoint, is
/// not in flight at later opens (it was counted at each): replay started at the checkpoint's
/// epoch, so the epoch record of the run after that close no longer ended the leases of the
/// run before. Leases now carry the epoch that made them. (Was open finding 1 (b), found by
/// `ops_model`.)
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
    run_ops_model(&input);
}

/// One failed call on the state database (a transient EIO on a write of a checkpoint's redb
/// transaction) no longer fails every later checkpoint: redb latches the error ("Previous I/O
/// error occurred"), so wharf closes that database and rebuilds the file at its next use.
/// (Was open finding 2.)
#[test]
fn a_checkpoint_after_a_transient_state_database_fault_succeeds() {
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
    run_ops_faults(&input);
}

/// A checkpoint's redb commit fails at its fsync (the kernel drops the dirty pages it could not
/// write, fsyncgate), the store is reopened in the same process, then the power fails. The
/// reopened redb used to take the failed commit (in the page cache) for a committed one and make
/// its header durable; after the power loss the store no longer opened ("Invalid page type byte
/// 0"). A failed transaction now leaves the file marked in doubt for the process, and the next
/// open rebuilds it whole. (Was open finding 3.)
#[test]
fn a_reopen_after_a_failed_state_database_sync_survives_a_power_loss() {
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
    run_ops_faults(&input);
}

/// `regressions/ops_model/in-flight-count-after-a-checkpoint-counts-leases-of-earlier-runs` as
/// it decoded before `Op::AckMany` changed how bytes decode into operations (the finding is the
/// first of the three state-database findings of README.md): a lease of a run before a
/// checkpoint is not in flight at later opens.
#[test]
fn in_flight_count_after_a_checkpoint_counts_leases_of_earlier_runs() {
    let input = ModelInput {
        cfg: Config { push: Dur::Default, ack: Dur::Default, checkpoint_kib: None },
        ops: vec![
            Op::SetConfig {
                queue: 0,
                cfg: QueueCfg {
                    max_attempts: 0,
                    backoff: BackoffSpec::None,
                    max_len: None,
                    ttl: None,
                    expiry_dead_letter: false,
                    dedup_window: 200,
                    drop_dead_letters: false,
                },
            },
            Op::PushJob {
                queue: 0,
                len: Len::Small(40),
                durability: Dur::Default,
                opts: JobOpts { delay: 49, priority: 0, ttl: 0, key: None },
            },
            Op::PushJob {
                queue: 0,
                len: Len::Small(40),
                durability: Dur::Default,
                opts: JobOpts { delay: 0, priority: 0, ttl: 0, key: None },
            },
            Op::Pop { queue: 0 },
            Op::DeadLetter { pick: 0 },
            Op::PushJob {
                queue: 0,
                len: Len::Small(40),
                durability: Dur::Default,
                opts: JobOpts { delay: 0, priority: 0, ttl: 0, key: None },
            },
            Op::Pop { queue: 0 },
            Op::PushJob {
                queue: 0,
                len: Len::Small(40),
                durability: Dur::Default,
                opts: JobOpts { delay: 0, priority: 0, ttl: 0, key: Some(1) },
            },
            Op::Pop { queue: 0 },
            Op::Ack { pick: 1, durability: Dur::Default },
            Op::Churn { queue: 0, n: 60, len: Len::Small(200), durability: Dur::None },
            Op::PushJob {
                queue: 1,
                len: Len::Small(40),
                durability: Dur::Default,
                opts: JobOpts { delay: 30, priority: 0, ttl: 0, key: None },
            },
            Op::PushJob {
                queue: 1,
                len: Len::Small(40),
                durability: Dur::Default,
                opts: JobOpts { delay: 0, priority: 0, ttl: 0, key: None },
            },
            Op::Pop { queue: 1 },
            Op::DeadLetter { pick: 1 },
            Op::PushJob {
                queue: 1,
                len: Len::Small(40),
                durability: Dur::Default,
                opts: JobOpts { delay: 0, priority: 0, ttl: 0, key: None },
            },
            Op::Pop { queue: 1 },
            Op::PushJob {
                queue: 1,
                len: Len::Small(183),
                durability: Dur::Default,
                opts: JobOpts { delay: 1, priority: 0, ttl: 1, key: Some(36) },
            },
            Op::Push { queue: 0, len: Len::Small(0), durability: Dur::Default },
            Op::Reopen { release_first: false },
            Op::SetConfig {
                queue: 121,
                cfg: QueueCfg {
                    max_attempts: 1,
                    backoff: BackoffSpec::Fixed(24),
                    max_len: Some((1, true)),
                    ttl: None,
                    expiry_dead_letter: true,
                    dedup_window: 24,
                    drop_dead_letters: true,
                },
            },
            Op::Ack { pick: 0, durability: Dur::Immediate },
            Op::Churn { queue: 2, n: 60, len: Len::Small(250), durability: Dur::None },
            Op::Maintain,
            Op::Checkpoint,
            Op::Reopen { release_first: true },
            Op::PopDead { queue: 1 },
            Op::Pop { queue: 0 },
        ],
    };
    run_ops_model(&input);
}
