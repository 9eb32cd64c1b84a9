//! Seeded workloads: a deterministic script of operations run on a fresh simulated disk and
//! closed cleanly, for the corruption and directory targets and for seed corpora.

use std::path::{Path, PathBuf};

use wharf::testing::{Rng, SimFs};

use crate::ops::{BackoffSpec, Config, Dur, JobOpts, Len, Op, QueueCfg};
use crate::oracle::{Ctx, Oracle, DIR};

/// A store left by a workload.
pub struct Store {
    pub sim: SimFs,
    pub oracle: Oracle,
    /// The files of the log directory: (name, bytes), in name order.
    pub files: Vec<(String, Vec<u8>)>,
    /// The state database (`state.redb`), if a checkpoint made one.
    pub state: Option<Vec<u8>>,
}

/// The log directory of the store.
pub fn log_dir() -> PathBuf {
    Path::new(DIR).join("log")
}

/// The state database's file name, in the store directory.
pub const STATE: &str = "state.redb";

/// The path of the state database.
pub fn state_path() -> PathBuf {
    Path::new(DIR).join(STATE)
}

/// The state database of `sim`, if there is one.
pub fn state_file(sim: &SimFs) -> Option<Vec<u8>> {
    sim.read_file(&state_path()).ok()
}

/// The files in the log directory of `sim`.
pub fn files(sim: &SimFs) -> Vec<(String, Vec<u8>)> {
    let dir = log_dir();
    sim.names(&dir)
        .into_iter()
        .map(|n| {
            let bytes = sim.read_file(&dir.join(&n)).expect("listed file");
            (n, bytes)
        })
        .collect()
}

fn dur(rng: &mut Rng) -> Dur {
    [Dur::Default, Dur::Immediate, Dur::Interval, Dur::None][rng.below(4) as usize]
}

/// Whether workload `seed` is one of checkpoints (bit 4 of its number: 16 to 31 of the 32
/// workloads of `corrupt_then_recover`).
pub fn checkpoints(seed: u64) -> bool {
    seed & 16 != 0
}

/// The script of workload `seed`: pushes (some large, so the log spans a few 64 KiB segments),
/// pops, acks, nacks, syncs and maintenance (which deletes settled segments); for a workload
/// of [`checkpoints`], [`checkpoint_script`].
pub fn script(seed: u64) -> Vec<Op> {
    if checkpoints(seed) {
        return checkpoint_script(seed);
    }
    let mut rng = Rng::new(seed);
    let n = 30 + rng.below(50);
    let mut ops = Vec::new();
    for _ in 0..n {
        let q = rng.below(3) as u8;
        let pick = rng.below(256) as u8;
        let op = match rng.below(20) {
            0..=5 => Op::Push {
                queue: q,
                len: if rng.below(3) == 0 {
                    Len::Large(rng.below(256) as u8)
                } else {
                    Len::Small(rng.below(200) as u8)
                },
                durability: dur(&mut rng),
            },
            6 => Op::PushBatch {
                queue: q,
                n: rng.below(4) as u8,
                len: Len::Small(rng.below(100) as u8),
                durability: dur(&mut rng),
            },
            7..=9 => Op::Pop { queue: q },
            10 => Op::PopBatch { queue: q, max: rng.below(5) as u8 },
            11..=13 => Op::Ack { pick, durability: dur(&mut rng) },
            14 => Op::Nack { pick },
            15 => Op::Release { pick },
            16 => Op::Sync,
            17 => Op::Maintain,
            18 => Op::Reopen { release_first: rng.below(2) == 0 },
            _ => Op::Extend { pick },
        };
        ops.push(op);
    }
    ops
}

/// Stragglers of every kind in queue `q`: one delayed for `delay` ticks, one dead-lettered,
/// one leased and never acked, one with a dedup key (acked: its key outlives it), on a store
/// whose `held` deliveries all come from queues (not dead-letter queues). One more is held
/// after.
pub fn stragglers(q: u8, delay: u8, key: u8, held: u8) -> Vec<Op> {
    let job = |delay, key| Op::PushJob {
        queue: q,
        len: Len::Small(40),
        durability: Dur::Default,
        opts: JobOpts { delay, priority: 0, ttl: 0, key },
    };
    vec![
        job(delay, None),
        job(0, None),
        Op::Pop { queue: q },
        Op::DeadLetter { pick: held },
        job(0, None),
        Op::Pop { queue: q },
        job(0, Some(key)),
        Op::Pop { queue: q },
        Op::Ack { pick: held + 1, durability: Dur::Default },
    ]
}

/// A workload of checkpoints: stragglers (delayed, dead-lettered, leased and never acked,
/// keyed) behind segments of settled messages, checkpoints that relocate them and delete the
/// segments, then operations on the relocated messages (deliveries, acks, requeues) and on
/// new ones, reopens and more checkpoints, some with records after them.
pub fn checkpoint_script(seed: u64) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut ops = Vec::new();
    let mut held = 0;
    for q in 0..3u8 {
        if rng.below(3) != 0 {
            ops.extend(stragglers(q, 20 + rng.below(200) as u8, rng.below(4) as u8, held));
            held += 1;
            // Enough settled messages behind them for a checkpoint to relocate them.
            ops.push(Op::Churn { queue: q, n: 60, len: Len::Small(200), durability: Dur::None });
        }
    }
    let churn = |rng: &mut Rng| Op::Churn {
        queue: rng.below(3) as u8,
        n: 20 + rng.below(40) as u8,
        len: Len::Large(rng.below(48) as u8),
        durability: if rng.below(2) == 0 { Dur::None } else { Dur::Default },
    };
    ops.push(churn(&mut rng));
    ops.push(Op::Checkpoint);
    ops.push(Op::Checkpoint);
    let n = 10 + rng.below(30);
    for _ in 0..n {
        let q = rng.below(3) as u8;
        let pick = rng.below(256) as u8;
        let op = match rng.below(16) {
            0..=2 => Op::Push {
                queue: q,
                len: Len::Small(rng.below(200) as u8),
                durability: dur(&mut rng),
            },
            3 => churn(&mut rng),
            4..=5 => Op::Pop { queue: q },
            6 => Op::PopDead { queue: q },
            7..=8 => Op::Ack { pick, durability: dur(&mut rng) },
            9 => Op::Requeue { queue: q, all: rng.below(2) == 0, pick },
            10 => Op::Advance { by: rng.below(256) as u8 },
            11..=12 => Op::Checkpoint,
            13 => Op::Maintain,
            14 => Op::Reopen { release_first: rng.below(2) == 0 },
            _ => Op::Nack { pick },
        };
        ops.push(op);
    }
    ops
}

/// A churn without syncs.
fn churn(queue: u8, n: u8, len: Len) -> Op {
    Op::Churn { queue, n, len, durability: Dur::None }
}

/// A scenario of relocation (`tests/checkpoints.rs`, and seeds): stragglers of every kind in
/// two queues behind segments of settled messages; a checkpoint that relocates them and
/// deletes their segments; then a dead letter popped and acked, a delayed one popped when due
/// and nacked with an error, dead letters requeued, a duplicate push of a key whose push
/// record's segment is gone, another checkpoint, a reopen, deliveries and an ack, more churn, maintenance,
/// a third checkpoint and a reopen.
pub fn relocation_script() -> Vec<Op> {
    let window = QueueCfg {
        max_attempts: 0,
        backoff: BackoffSpec::None,
        max_len: None,
        ttl: None,
        expiry_dead_letter: false,
        dedup_window: 200,
        drop_dead_letters: false,
    };
    let mut ops = vec![Op::SetConfig { queue: 0, cfg: window }];
    ops.extend(stragglers(0, 50, 1, 0));
    ops.push(churn(0, 60, Len::Small(200)));
    ops.extend(stragglers(1, 30, 2, 1));
    ops.push(churn(1, 60, Len::Small(120)));
    ops.push(churn(2, 40, Len::Large(40)));
    ops.extend([
        Op::Checkpoint,
        Op::PopDead { queue: 0 }, // a relocated dead letter, read from state.redb
        Op::Ack { pick: 2, durability: Dur::Default },
        Op::Advance { by: 60 },
        Op::Pop { queue: 0 }, // the relocated delayed one, due now
        Op::NackWith { pick: 2, delay: None, error: true },
        Op::Requeue { queue: 1, all: true, pick: 0 },
        Op::PushJob {
            queue: 0,
            len: Len::Small(9),
            durability: Dur::Default,
            opts: JobOpts { delay: 0, priority: 0, ttl: 0, key: Some(1) }, // a duplicate
        },
        Op::Checkpoint,
        // Not with the relocated ones in flight at the close: known open finding 1 (README).
        Op::Reopen { release_first: true },
        Op::Pop { queue: 1 },
        Op::Pop { queue: 1 },
        Op::Ack { pick: 0, durability: Dur::Immediate },
        churn(2, 60, Len::Small(250)),
        Op::Maintain,
        Op::Checkpoint,
        Op::Reopen { release_first: true },
        Op::PopDead { queue: 1 },
        Op::Pop { queue: 0 },
    ]);
    assert!(ops.len() <= crate::ops::MAX_OPS, "{} operations", ops.len());
    ops
}

/// The configuration of workload `seed`.
pub fn config(seed: u64) -> Config {
    let mut rng = Rng::new(seed ^ 0x5eed);
    Config::new(dur(&mut rng), dur(&mut rng))
}

/// Runs workload `seed` on a fresh disk and closes the store cleanly: every record is durable.
pub fn run(seed: u64) -> Store {
    let sim = SimFs::new();
    let mut ctx = Ctx::new(sim.clone(), config(seed));
    ctx.open().expect("open of a fresh store");
    for op in script(seed) {
        if let Err(e) = ctx.apply(op) {
            panic!("workload {seed}: {op:?} failed on a healthy disk: {e}");
        }
    }
    ctx.close().expect("clean close");
    let files = files(&sim);
    let state = state_file(&sim);
    Store { sim, oracle: ctx.o, files, state }
}
