//! Seeded workloads: a deterministic script of operations run on a fresh simulated disk and
//! closed cleanly, for the corruption and directory targets and for seed corpora.

use std::path::{Path, PathBuf};

use wharf::testing::{Rng, SimFs};

use crate::ops::{Config, Dur, Len, Op};
use crate::oracle::{Ctx, Oracle, DIR};

/// A store left by a workload.
pub struct Store {
    pub sim: SimFs,
    pub oracle: Oracle,
    /// The files of the log directory: (name, bytes), in name order.
    pub files: Vec<(String, Vec<u8>)>,
}

/// The log directory of the store.
pub fn log_dir() -> PathBuf {
    Path::new(DIR).join("log")
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

/// The script of workload `seed`: pushes (some large, so the log spans a few 64 KiB segments),
/// pops, acks, nacks, syncs and maintenance (which deletes settled segments).
pub fn script(seed: u64) -> Vec<Op> {
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

/// The configuration of workload `seed`.
pub fn config(seed: u64) -> Config {
    let mut rng = Rng::new(seed ^ 0x5eed);
    Config { push: dur(&mut rng), ack: dur(&mut rng) }
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
    Store { sim, oracle: ctx.o, files }
}
