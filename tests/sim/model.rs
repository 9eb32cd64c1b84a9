//! Model-based test: random sequences of operations, crashes and reopens, on the simulated
//! disk (and a smaller run on the real file system), checked against a model after every step.
//! Without a crash the store must match the model exactly (FIFO head, acked gone); after a
//! crash it must be in an allowed state, and the model collapses to what was observed.
//!
//! Checkpoints (`Wharf::checkpoint`, and those `maintain` takes when one is due) come at random
//! among the other operations, reopens and crashes; `Roll` fills a segment with messages that
//! are acked at once, so that the model's unsettled messages become stragglers of old segments,
//! relocated into `state.redb` by the next checkpoint, and the segments deleted. Pops must still
//! return the model's head, acked messages must stay gone, across reopens and crashes.
//!
//! `PROPTEST_CASES` sets the number of cases (the long tier uses 100000).

use std::path::Path;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use wharf::testing::{CrashPolicy, SimFs};
use wharf::{Durability, Wharf};

use crate::oracle::{check, probe_fresh_id, Ctx, St};

#[derive(Debug, Clone)]
enum Op {
    Push {
        queue: u8,
        len: u16,
        durable: bool,
    },
    Batch {
        queue: u8,
        n: u8,
    },
    Pop {
        queue: u8,
    },
    Ack {
        durable: bool,
    },
    Nack,
    Drop,
    Sync,
    Maintain,
    /// `Wharf::checkpoint`.
    Checkpoint,
    /// 24 small messages and four of 16 kB pushed into queue `roll` and acked: a 64 KiB
    /// segment rolls over.
    Roll,
    Reopen,
    /// Power loss after `after` more disk operations (those of closing, say), under `policy`.
    Crash {
        after: u8,
        policy: u8,
        seed: u64,
    },
}

fn op(crashes: bool) -> impl Strategy<Value = Op> {
    let queue = 0u8..3;
    let mut ops = vec![
        (
            6,
            (queue.clone(), prop_oneof![0u16..64, 0u16..3000], any::<bool>())
                .prop_map(|(queue, len, durable)| Op::Push { queue, len, durable })
                .boxed(),
        ),
        (1, (queue.clone(), 1u8..6).prop_map(|(queue, n)| Op::Batch { queue, n }).boxed()),
        (5, queue.prop_map(|queue| Op::Pop { queue }).boxed()),
        (3, any::<bool>().prop_map(|durable| Op::Ack { durable }).boxed()),
        (1, Just(Op::Nack).boxed()),
        (1, Just(Op::Drop).boxed()),
        (1, Just(Op::Sync).boxed()),
        (1, Just(Op::Maintain).boxed()),
        (1, Just(Op::Checkpoint).boxed()),
        (1, Just(Op::Roll).boxed()),
        (1, Just(Op::Reopen).boxed()),
    ];
    if crashes {
        ops.push((
            1,
            (0u8..8, 0u8..5, any::<u64>())
                .prop_map(|(after, policy, seed)| Op::Crash { after, policy, seed })
                .boxed(),
        ));
    }
    proptest::strategy::Union::new_weighted(ops)
}

const QUEUES: [&str; 3] = ["a", "b", "c"];

/// The message the model says a pop of `queue` must return: the oldest ready one.
fn expected_head(c: &Ctx, queue: &str) -> Option<usize> {
    c.o.msgs
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            m.queue == queue
                && m.push.happened()
                && m.ack == St::No
                && !m.gone
                && !c.held.iter().any(|(h, _)| h == i)
        })
        .min_by_key(|(_, m)| m.id)
        .map(|(i, _)| i)
}

/// What the checkpoints of a run did.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    checkpoints: u64,
    relocated: u64,
    segments_deleted: u64,
}

fn apply(c: &mut Ctx, op: &Op, stats: &mut Stats) {
    let d = |durable: bool| if durable { Durability::Immediate } else { Durability::None };
    match *op {
        Op::Push { queue, len, durable } => {
            c.push(QUEUES[queue as usize], len as usize, d(durable)).unwrap();
        }
        Op::Batch { queue, n } => c.push_batch(QUEUES[queue as usize], n as usize).unwrap(),
        Op::Pop { queue } => {
            let q = QUEUES[queue as usize];
            let want = expected_head(c, q);
            let before = c.held.len();
            c.pop(q).unwrap();
            let got = (c.held.len() > before).then(|| c.held[before].0);
            assert_eq!(got, want, "pop of {q} returned message {got:?}, the model says {want:?}");
        }
        Op::Ack { durable } => c.ack(d(durable)).unwrap(),
        Op::Nack => c.nack().unwrap(),
        Op::Drop => {
            if !c.held.is_empty() {
                c.held.remove(0);
            }
        }
        Op::Sync => c.sync().unwrap(),
        Op::Maintain => {
            if c.real.is_none() {
                c.maintain().unwrap();
            }
        }
        Op::Checkpoint => {
            let r = c.checkpoint().unwrap();
            stats.checkpoints += 1;
            stats.relocated += r.relocated;
            stats.segments_deleted += r.segments_deleted as u64;
        }
        Op::Roll => {
            // Many small messages settled in the segment make its few unsettled ones
            // stragglers (a segment is relocated when at most one in eight is left).
            c.push_batch("roll", 24).unwrap();
            let n = c.pop_batch("roll", 24).unwrap();
            for _ in 0..n {
                c.ack_newest(Durability::None).unwrap();
            }
            for _ in 0..4 {
                c.push("roll", 16_000, Durability::None).unwrap();
                c.pop("roll").unwrap();
                c.ack_newest(Durability::None).unwrap();
            }
        }
        Op::Reopen => {
            c.close().unwrap();
            c.open().unwrap();
        }
        Op::Crash { after, policy, seed } => {
            let policy = match policy {
                0 => CrashPolicy::KeepAll,
                1 => CrashPolicy::DropAllUnsynced,
                2 => CrashPolicy::DropUnsyncedDirOps,
                3 => CrashPolicy::GrowWithGarbage,
                _ => CrashPolicy::RandomSubset,
            };
            c.sim.crash_at(c.sim.ops() + u64::from(after) + 1);
            c.held.clear();
            c.wharf = None; // closing runs into the crash
            c.sim = c.sim.crash_image(policy, seed);
            c.open().unwrap_or_else(|e| panic!("open after {op:?} failed: {e}"));
            // The model becomes what the recovered store holds.
            let (w, now, what) = (c.wharf.clone().unwrap(), c.now_ms(), format!("after {op:?}"));
            c.o.check_and_collapse(&w, now, policy == CrashPolicy::KeepAll, &what);
            probe_fresh_id(&w, c.o.max_id, &what);
        }
    }
}

fn run(ops: &[Op], real: Option<&Path>) -> Stats {
    let builder =
        Wharf::builder().segment_bytes(64 << 10).visibility_timeout(Duration::from_secs(3600));
    // A small index window: most plain pushes join their queue's run (read back from the log).
    let builder = builder.index_window(3);
    let mut c = Ctx::new(SimFs::new(), builder);
    c.real = real.map(Path::to_path_buf);
    c.open().unwrap();
    let mut stats = Stats::default();
    for op in ops {
        apply(&mut c, op, &mut stats);
    }
    // The end state survives a clean reopen as the model says.
    c.close().unwrap();
    c.open().unwrap();
    check(c.wharf.as_ref().unwrap(), &c.record(), true, "final reopen");
    stats
}

/// Runs `cases` random sequences of up to `max_ops` operations (`PROPTEST_CASES` overrides
/// `cases`); returns what their checkpoints did, summed.
fn run_cases(cases: u32, max_ops: usize, crashes: bool, real: bool) -> Stats {
    let mut config = Config { failure_persistence: None, ..Config::default() };
    if std::env::var("PROPTEST_CASES").is_err() {
        config.cases = cases;
    }
    let total = std::cell::Cell::new(Stats::default());
    let mut runner = TestRunner::new(config);
    let outcome = runner.run(&vec(op(crashes), 1..max_ops), |ops| {
        let dir = real.then(|| tempfile::tempdir().unwrap());
        let s = run(&ops, dir.as_ref().map(|d| d.path()));
        let t = total.get();
        total.set(Stats {
            checkpoints: t.checkpoints + s.checkpoints,
            relocated: t.relocated + s.relocated,
            segments_deleted: t.segments_deleted + s.segments_deleted,
        });
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    total.get()
}

#[test]
fn random_operations_and_crashes_on_the_simulated_disk_match_the_model() {
    let s = run_cases(256, 100, true, false);
    println!(
        "model: {} checkpoints relocated {} messages and deleted {} segments",
        s.checkpoints, s.relocated, s.segments_deleted
    );
    assert!(s.relocated > 0 && s.segments_deleted > 0, "no checkpoint relocated: {s:?}");
}

#[test]
fn random_operations_on_the_real_file_system_match_the_model() {
    run_cases(24, 60, false, true);
}
