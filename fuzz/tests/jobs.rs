//! The job operations through the stateful targets, as typed inputs: every one of them is
//! reached on every `cargo test`, whatever the seeds happen to hold (delays, priorities, TTLs,
//! dedup keys, nacks with backoff or delay, dead letters explicit and by exhausted attempts,
//! expiry and overflow, requeues, pops of dead-letter queues, config changes, clock advances,
//! batch acks).

use wharf_fuzz::ops::{
    BackoffSpec, Config, Dur, FaultSpec, JobOpts, Len, Op, Policy, QueueCfg, MAX_OPS,
};
use wharf_fuzz::targets::{
    run_ops_crash, run_ops_faults, run_ops_model, CrashInput, CrashPoint, End, FaultInput,
    ModelInput,
};

fn opts(delay: u8, priority: u8, ttl: u8, key: Option<u8>) -> JobOpts {
    JobOpts { delay, priority, ttl, key }
}

fn push(queue: u8, o: JobOpts) -> Op {
    Op::PushJob { queue, len: Len::Small(20), durability: Dur::Default, opts: o }
}

/// A config: `max_attempts` (0: none), a fixed backoff of `backoff` ticks, a length limit
/// that dead-letters the oldest, a TTL of `ttl` ticks that dead-letters, a dedup window.
fn cfg(max_attempts: u8, backoff: u8, max_len: Option<u8>, ttl: Option<u8>) -> QueueCfg {
    QueueCfg {
        max_attempts,
        backoff: BackoffSpec::Fixed(backoff),
        max_len: max_len.map(|n| (n, true)),
        ttl: ttl.map(|t| (t, true)),
        expiry_dead_letter: true,
        dedup_window: 50,
        drop_dead_letters: false,
    }
}

/// A run that uses every job operation at least once, and each way into and out of a
/// dead-letter queue.
fn script() -> Vec<Op> {
    let ops = vec![
        Op::SetConfig { queue: 0, cfg: cfg(2, 3, None, None) },
        push(0, opts(0, 0, 0, Some(1))),
        push(0, opts(0, 0, 0, Some(1))), // a duplicate: nothing stored
        push(0, opts(5, 9, 0, None)),    // delayed, urgent
        push(0, opts(0, 4, 0, None)),
        Op::Pop { queue: 0 },                               // priority 4 first
        Op::NackWith { pick: 0, delay: None, error: true }, // retried after 3 ticks
        Op::Pop { queue: 0 },                               // the keyed one
        Op::Nack { pick: 0 },                               // retried
        Op::Advance { by: 6 },                              // all due now
        Op::Pop { queue: 0 },                               // the urgent one
        Op::DeadLetter { pick: 0 },                         // explicitly
        Op::Pop { queue: 0 },                               // priority 4 again: attempt 2
        Op::NackWith { pick: 0, delay: Some(1), error: false }, // its last: dead-lettered
        Op::Pop { queue: 0 },                               // the keyed one: attempt 2
        Op::Ack { pick: 0, durability: Dur::Default },
        Op::Sync,
        Op::PopDead { queue: 0 },
        Op::Release { pick: 0 },
        Op::Requeue { queue: 0, all: false, pick: 0 },
        Op::Requeue { queue: 0, all: true, pick: 0 },
        Op::SetConfig { queue: 1, cfg: cfg(0, 0, Some(2), Some(10)) },
        push(1, opts(0, 0, 0, None)),
        push(1, opts(0, 0, 3, None)),
        push(1, opts(0, 0, 0, None)), // over the limit: the oldest is dead-lettered
        Op::Advance { by: 11 },       // everything in q1 expired
        Op::Pop { queue: 1 },         // dead-letters them on the way, finds nothing
        Op::Maintain,
        Op::Reopen { release_first: false },
        push(0, opts(0, 0, 0, Some(1))), // the key holds within its window after a reopen
        Op::PopBatch { queue: 0, max: 4 },
        Op::Ack { pick: 1, durability: Dur::Immediate },
        Op::Reopen { release_first: true },
        Op::PopDead { queue: 1 },
        Op::Ack { pick: 0, durability: Dur::Default },
    ];
    assert!(ops.len() <= MAX_OPS);
    ops
}

#[test]
fn the_job_operations_match_the_model() {
    for cfg in [Config::new(Dur::Default, Dur::Default), Config::new(Dur::None, Dur::Immediate)] {
        run_ops_model(&ModelInput { cfg, ops: script() });
    }
}

#[test]
fn a_crash_anywhere_in_the_job_operations_recovers_to_an_allowed_state() {
    for after in 0..=200 {
        for policy in [Policy::KeepAll, Policy::DropAllUnsynced, Policy::RandomSubset] {
            let input = CrashInput {
                cfg: Config::new(Dur::Default, Dur::Default),
                crashes: vec![CrashPoint { wait: 0, after, policy, seed: after, recovery: None }],
                ops: script(),
            };
            run_ops_crash(&input);
        }
    }
}

#[test]
fn a_fault_anywhere_in_the_job_operations_leaves_the_store_safe() {
    for kind in 0..16 {
        for nth in [0, 2, 7] {
            for end in [End::SameDisk, End::Image(Policy::KeepAll, 1)] {
                let input = FaultInput {
                    cfg: Config::new(Dur::Interval, Dur::Default),
                    fault: FaultSpec { kind, nth, no_space: nth == 2, persistent: nth == 7 },
                    arm_at: 1,
                    end,
                    ops: script(),
                };
                run_ops_faults(&input);
            }
        }
    }
}

/// Batch acks (`Op::AckMany`): of a queue's deliveries, of a dead-letter queue's, some but not
/// all of what is held (the rest acked singly later), with each durability, across a reopen.
fn ack_many_script() -> Vec<Op> {
    let batch = |queue| Op::PushBatch { queue, n: 3, len: Len::Small(30), durability: Dur::None };
    let ops = vec![
        Op::SetConfig { queue: 0, cfg: cfg(1, 0, None, None) },
        batch(0),
        batch(0),
        batch(1),
        Op::PopBatch { queue: 0, max: 4 },
        Op::Pop { queue: 1 },
        Op::AckMany { pick: 1, n: 2, durability: Dur::Immediate }, // three of q0's four
        Op::PopBatch { queue: 0, max: 4 },
        Op::AckMany { pick: 0, n: 7, durability: Dur::Default }, // q0's: the q1 one stays
        Op::Pop { queue: 1 },
        Op::AckMany { pick: 0, n: 7, durability: Dur::Interval }, // both of q1's
        Op::Pop { queue: 0 },
        Op::Nack { pick: 0 }, // its last attempt: dead-lettered
        Op::PopDead { queue: 0 },
        Op::AckMany { pick: 0, n: 0, durability: Dur::Immediate }, // a dead letter's
        batch(2),
        Op::PopBatch { queue: 2, max: 3 },
        Op::Reopen { release_first: false }, // in flight at the close: ready again
        Op::PopBatch { queue: 2, max: 3 },
        Op::AckMany { pick: 2, n: 3, durability: Dur::Default },
        Op::Sync,
    ];
    assert!(ops.len() <= MAX_OPS);
    ops
}

#[test]
fn batch_acks_match_the_model() {
    for cfg in [Config::new(Dur::Default, Dur::Default), Config::new(Dur::None, Dur::Immediate)] {
        run_ops_model(&ModelInput { cfg, ops: ack_many_script() });
    }
}

#[test]
fn a_crash_anywhere_in_batch_acks_recovers_to_an_allowed_state() {
    for after in 0..=160 {
        for policy in [Policy::KeepAll, Policy::DropAllUnsynced, Policy::RandomSubset] {
            let input = CrashInput {
                cfg: Config::new(Dur::Default, Dur::Default),
                crashes: vec![CrashPoint { wait: 0, after, policy, seed: after, recovery: None }],
                ops: ack_many_script(),
            };
            run_ops_crash(&input);
        }
    }
}

#[test]
fn a_fault_anywhere_in_batch_acks_leaves_the_store_safe() {
    for kind in 0..16 {
        for nth in [0, 2, 7] {
            for end in [End::SameDisk, End::Image(Policy::KeepAll, 1)] {
                let input = FaultInput {
                    cfg: Config::new(Dur::Interval, Dur::Default),
                    fault: FaultSpec { kind, nth, no_space: nth == 2, persistent: nth == 7 },
                    arm_at: 1,
                    end,
                    ops: ack_many_script(),
                };
                run_ops_faults(&input);
            }
        }
    }
}
