//! Writes the seed corpora `seeds/<target>/` deterministically, using wharf itself: records and
//! segments cut from stores made by scripted workloads on the simulated disk, and, for the
//! targets whose input is decoded by `arbitrary`, pseudo-random inputs chosen because they
//! decode into varied operations.
//!
//! `cargo run --example make_seeds [-- <dir>]` (default: `seeds/` next to this crate's manifest).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use wharf::testing::{self, CrashPolicy, OpKind, Rng, SimFs};
use wharf_fuzz::encode::to_bytes;
use wharf_fuzz::ops::{Config, Dur, FaultSpec, Len, Op, Policy};
use wharf_fuzz::oracle::Ctx;
use wharf_fuzz::scan;
use wharf_fuzz::stats;
use wharf_fuzz::targets::{
    self, CorruptInput, CrashInput, CrashPoint, DirImage, End, FaultInput, ModelInput,
};
use wharf_fuzz::workload::{self, log_dir, relocation_script};

/// Largest seed file written.
const MAX_SEED: usize = 4096;

fn main() {
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"), PathBuf::from);
    let mut total = 0;
    // Before `passes` swaps hooks: redb's panics, which wharf catches, stay quiet.
    targets::tolerate_redb_panics();
    for target in wharf_fuzz::TARGETS {
        let seeds = match target {
            "record_decode" => record_seeds(),
            "segment_recover" => segment_seeds(),
            "dir_open" => pick(target, 12, score_dir),
            "ops_model" => with_typed(target, 12, relocation_model(), score_model),
            "ops_crash" => with_typed(target, 12, relocation_crash(), score_crash),
            "ops_faults" => with_typed(target, 16, relocation_faults(), score_faults),
            "corrupt_then_recover" => pick(target, 16, score_corrupt),
            // The same input as corrupt_then_recover: its seeds.
            "salvage" => pick("corrupt_then_recover", 16, score_corrupt),
            _ => unreachable!(),
        };
        let dir = out.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            assert!(s.len() <= MAX_SEED, "{target} seed {i} is {} bytes", s.len());
            // Every seed must pass its target before it is committed.
            wharf_fuzz::run_target(target, s);
            std::fs::write(dir.join(format!("seed-{i:03}")), s).unwrap();
        }
        let bytes: usize = seeds.iter().map(Vec::len).sum();
        println!("{target}: {} seeds, {bytes} bytes", seeds.len());
        total += bytes;
    }
    println!("total {total} bytes in {}", out.display());
}

/// A store of small messages only, so its first segment's records fit in a small seed.
fn small_store(seed: u64, crash_at: Option<u64>, policy: CrashPolicy) -> SimFs {
    let sim = SimFs::new();
    let mut ctx = Ctx::new(sim.clone(), workload::config(seed));
    if let Some(k) = crash_at {
        sim.crash_at(k);
    }
    if ctx.open().is_ok() {
        for op in workload::script(seed).into_iter().take(30) {
            let op = match op {
                Op::Push { queue, len: Len::Large(n), durability } => {
                    Op::Push { queue, len: Len::Small(n / 4), durability }
                }
                op => op,
            };
            if ctx.apply(op).is_err() {
                break;
            }
        }
    }
    let _ = ctx.close();
    drop(ctx);
    sim.crash_image(policy, seed)
}

/// The first segment (base 0) of a store: its bytes up to a little past the last record.
fn first_segment(sim: &SimFs) -> Option<Vec<u8>> {
    let bytes = sim.read_file(&log_dir().join(testing::segment_file_name(0))).ok()?;
    let used = bytes.iter().rposition(|&b| b != 0).map_or(64, |p| p + 1);
    Some(bytes[..(used + 32).min(bytes.len())].to_vec())
}

fn record_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut kinds = std::collections::BTreeMap::new();
    for seed in 0..8 {
        let Some(seg) = first_segment(&small_store(seed, None, CrashPolicy::KeepAll)) else {
            continue;
        };
        for (off, rec) in scan::records(&seg, 0).0 {
            let kind = format!("{rec:?}").split([' ', '{']).next().unwrap_or("").to_owned();
            let len = testing::decode_record(&seg[off..], off as u64).unwrap();
            // Two of each kind, with the bytes that follow the record.
            let seen = kinds.entry(kind).or_insert(0);
            if *seen < 2 {
                *seen += 1;
                let mut s = vec![0u8];
                s.extend_from_slice(&seg[off..(off + len + 24).min(seg.len())]);
                out.push(s);
            }
        }
    }
    // The same records decoded at the wrong position, and a push made by `encode_push`.
    let wrong: Vec<Vec<u8>> = out.iter().take(3).map(|s| [&[0xf3], &s[1..]].concat()).collect();
    out.extend(wrong);
    out.push([&[0u8][..], &testing::encode_push(4096, 1, 7 << 40 | 1, b"hello")].concat());
    let ids = [7 << 40 | 1, 7 << 40 | 2, 7 << 40 | 9];
    out.push([&[0u8][..], &testing::encode_acks(4096, 1, &ids).unwrap_or_default()].concat());
    out.push(vec![0; 40]);
    out
}

fn segment_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for seed in 0..6u64 {
        let sim = small_store(seed, None, CrashPolicy::KeepAll);
        let Some(seg) = first_segment(&sim) else { continue };
        if seg.len() + 1 > MAX_SEED {
            continue;
        }
        let area = &seg[64..];
        // Behind a made-up header (mode 0), padded (mode 2), with a crashed recovery (mode 8+).
        out.push([&[0u8][..], area].concat());
        out.push([&[2u8 | 8 | (seed as u8 % 8) << 5][..], area].concat());
        // The whole file, its header's length fixed to the cut file (mode 1).
        let mut raw = testing::segment_header(targets::STORE_ID, 0, seg.len() as u64);
        raw.extend_from_slice(area);
        out.push([&[1u8][..], &raw].concat());
    }
    // Torn tails: stores crashed mid-run, recovered from random images.
    for (seed, k) in [(1u64, 40u64), (2, 55), (3, 70), (4, 33)] {
        let sim = small_store(seed, Some(k), CrashPolicy::RandomSubset);
        if let Some(seg) = first_segment(&sim) {
            if seg.len() < MAX_SEED {
                out.push([&[0u8][..], &seg[64..]].concat());
            }
        }
    }
    out
}

/// A few thousand pseudo-random inputs, best `score` first.
fn candidates(target: &str, score: impl Fn(&[u8]) -> u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(target.len() as u64 * 7919);
    let mut cands: Vec<(u64, Vec<u8>)> = (0..3000)
        .map(|_| {
            let len = 32 + rng.below(480) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            (score(&data), data)
        })
        .collect();
    cands.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    cands.into_iter().map(|(_, d)| d).collect()
}

/// Whether `data` passes `target` (an input may reach an open finding: not a seed then).
fn passes(target: &str, data: &[u8]) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(|| wharf_fuzz::run_target(target, data)).is_ok();
    std::panic::set_hook(hook);
    ok
}

/// The `n` best of a few thousand pseudo-random inputs by `score` that pass their target.
fn pick(target: &str, n: usize, score: impl Fn(&[u8]) -> u64) -> Vec<Vec<u8>> {
    candidates(target, score).into_iter().filter(|d| passes(target, d)).take(n).collect()
}

/// The `typed` inputs that pass `target` (at most half of `n`), then the best pseudo-random
/// ones by `score`; says how many of them relocate messages into `state.redb`.
fn with_typed(
    target: &str,
    n: usize,
    typed: Vec<Vec<u8>>,
    score: impl Fn(&[u8]) -> u64,
) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> =
        typed.into_iter().filter(|d| passes(target, d)).take(n / 2).collect();
    for d in candidates(target, score) {
        if out.len() == n {
            break;
        }
        if !out.contains(&d) && passes(target, &d) {
            out.push(d);
        }
    }
    let relocating = out
        .iter()
        .filter(|d| {
            let before = stats::counts().relocated;
            passes(target, d);
            stats::counts().relocated > before
        })
        .count();
    println!("{target}: {relocating} of {} seeds relocate messages", out.len());
    out
}

/// `workload::relocation_script` as `ops_model` inputs.
fn relocation_model() -> Vec<Vec<u8>> {
    let configs = [
        Config::new(Dur::Default, Dur::Default),
        Config { push: Dur::None, ack: Dur::Immediate, checkpoint_kib: Some(15) },
    ];
    configs.map(|cfg| to_bytes(&ModelInput { cfg, ops: relocation_script() })).to_vec()
}

/// The step (0: the first open, k + 1: operation k) of each checkpoint of `ops`.
fn checkpoint_steps(ops: &[Op]) -> Vec<u8> {
    let steps = ops.iter().enumerate().filter(|(_, op)| matches!(op, Op::Checkpoint));
    steps.map(|(k, _)| u8::try_from(k + 1).unwrap()).collect()
}

/// `workload::relocation_script` as `ops_crash` inputs: a crash inside each checkpoint (the
/// first, which relocates, at a few points), one more after it.
fn relocation_crash() -> Vec<Vec<u8>> {
    let ops = relocation_script();
    let steps = checkpoint_steps(&ops);
    let mut out = Vec::new();
    let policies = [Policy::DropAllUnsynced, Policy::RandomSubset, Policy::KeepAll];
    for (i, (&step, after)) in steps.iter().zip([40u8, 5, 9]).enumerate() {
        let crash = CrashPoint {
            wait: step,
            after,
            policy: policies[i % 3],
            seed: i as u8,
            recovery: (i == 1).then_some((12, Policy::DropAllUnsynced)),
        };
        let then = CrashPoint {
            wait: 3,
            after: 30,
            policy: Policy::GrowWithGarbage,
            seed: 7,
            recovery: None,
        };
        let cfg = Config::new(Dur::Default, Dur::Default);
        out.push(to_bytes(&CrashInput { cfg, crashes: vec![crash, then], ops: ops.clone() }));
    }
    out
}

/// `workload::relocation_script` as `ops_faults` inputs: faults in the first checkpoint's
/// calls on the state database and in its segment deletions, in a read of a relocated payload
/// and in the second checkpoint (which rewrites the rows of relocated messages).
fn relocation_faults() -> Vec<Vec<u8>> {
    let ops = relocation_script();
    let steps = checkpoint_steps(&ops);
    let kind = |k: OpKind| OpKind::ALL.iter().position(|x| *x == k).unwrap() as u8;
    let faults = [
        (steps[0], kind(OpKind::Write), 3, true, End::Image(Policy::DropAllUnsynced, 1)),
        (steps[0], kind(OpKind::Sync), 1, true, End::SameDisk),
        (steps[0], kind(OpKind::Remove), 0, false, End::Image(Policy::RandomSubset, 2)),
        (steps[0] + 1, kind(OpKind::Read), 0, true, End::SameDisk),
        (steps[1], kind(OpKind::Write), 1, true, End::Image(Policy::DropAllUnsynced, 3)),
    ];
    let cfg = Config::new(Dur::Default, Dur::Default);
    let inputs = faults.map(|(arm_at, kind, nth, persistent, end)| FaultInput {
        cfg,
        fault: FaultSpec { kind, nth, no_space: nth == 0, persistent },
        arm_at,
        end,
        ops: ops.clone(),
    });
    inputs.iter().map(to_bytes).collect()
}

fn op_kinds(ops: &[Op]) -> u64 {
    let kinds: BTreeSet<String> = ops
        .iter()
        .take(wharf_fuzz::ops::MAX_OPS)
        .map(|o| format!("{o:?}").split([' ', '{']).next().unwrap_or("").to_owned())
        .collect();
    kinds.len() as u64
}

fn score_model(d: &[u8]) -> u64 {
    let Ok(i) = ModelInput::arbitrary_take_rest(Unstructured::new(d)) else { return 0 };
    op_kinds(&i.ops) * 10 + i.ops.len().min(wharf_fuzz::ops::MAX_OPS) as u64
}

fn score_crash(d: &[u8]) -> u64 {
    let Ok(i) = CrashInput::arbitrary_take_rest(Unstructured::new(d)) else { return 0 };
    let early = i.crashes.iter().take(4).filter(|c| c.after < 60).count() as u64;
    early * 40 + op_kinds(&i.ops) * 10 + i.ops.len().min(wharf_fuzz::ops::MAX_OPS) as u64
}

fn score_faults(d: &[u8]) -> u64 {
    let Ok(i) = FaultInput::arbitrary_take_rest(Unstructured::new(d)) else { return 0 };
    let f = i.fault.get();
    // Spread the seeds over the kinds of operation that fail.
    let kind = f.kind as u64;
    let near = u64::from(f.nth < 4) * 30;
    (kind * 7919) % 97 + near + op_kinds(&i.ops) * 10
}

fn score_dir(d: &[u8]) -> u64 {
    let Ok(i) = DirImage::arbitrary_take_rest(Unstructured::new(d)) else { return 0 };
    let kinds: BTreeSet<String> = i
        .files
        .iter()
        .take(8)
        .map(|f| format!("{:?}", f.content).split(['(', ' ', '{']).next().unwrap_or("").to_owned())
        .collect();
    let segs = i.files.iter().take(8).filter(|f| matches!(f.name, targets::NameKind::Segment(_)));
    kinds.len() as u64 * 10 + segs.count() as u64
}

fn score_corrupt(d: &[u8]) -> u64 {
    let Ok(i) = CorruptInput::arbitrary_take_rest(Unstructured::new(d)) else { return 0 };
    // Half of them on a workload of checkpoints (whose state database the damage may hit).
    let checkpoints = u64::from(workload::checkpoints(u64::from(i.workload))) * 5;
    let kinds: BTreeSet<String> = i
        .corruptions
        .iter()
        .take(8)
        .map(|c| format!("{c:?}").split([' ', '{']).next().unwrap_or("").to_owned())
        .collect();
    kinds.len() as u64 * 10 + (8 - i.corruptions.len().min(8) as u64) + checkpoints
}
