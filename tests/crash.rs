//! The kill -9 crash loop (CRASH-TESTING.md 3.7). A child process (this binary, re-executed with
//! `WHARF_CRASH_CHILD=<dir>`) runs a concurrent workload of durable pushes, pops and durable acks
//! (one by one, and batches with `ack_many`) on a real directory and reports every step on
//! stdout; the parent keeps those lines as its journal, kills the child with SIGKILL at a random
//! moment, reopens the directory in-process and checks invariants I1–I5 against the journal. The same directory carries on from cycle to
//! cycle, so state accumulates. With the `failpoints` feature a second phase aborts a child at
//! every named fail point of the library and checks the same invariants after each abort.
//!
//! Environment: `WHARF_CRASH_SEED` replays a run (the seed is printed), `WHARF_CRASH_CYCLES`
//! sets the number of kill cycles (default 500), `WHARF_CRASH_DIR` runs in that directory
//! (e.g. on another file system) instead of a temporary one.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use wharf::{Delivery, Durability, Queue, Wharf, WharfBuilder};

const CHILD_ENV: &str = "WHARF_CRASH_CHILD";
const GEN_ENV: &str = "WHARF_CRASH_GEN";
const CHILD_SEED_ENV: &str = "WHARF_CRASH_CHILD_SEED";
const RUN_MS_ENV: &str = "WHARF_CRASH_RUN_MS";
const CONSUMERS_ENV: &str = "WHARF_CRASH_CONSUMERS";
/// `0`: consumers hold no delivery until the end of the run (see `consumer`).
const HOLD_ENV: &str = "WHARF_CRASH_HOLD";
const FAILPOINT_ENV: &str = "WHARF_FAILPOINT";
const QUEUES: [&str; 2] = ["q0", "q1"];
const PUSHERS: u64 = 3;
const CONSUMERS: u64 = 4;
const SEQ_BITS: u32 = 40;
#[cfg(feature = "failpoints")]
const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;
/// A child that neither ends nor (when it is to be killed) reports `READY` within this is
/// killed and reported as hung: its run is at most 20 s (`WHARF_CRASH_RUN_MS`) plus a close.
const CHILD_LIMIT: Duration = Duration::from_secs(90);
/// One step of the parent (a child's run and the check of the directory after it) that takes
/// longer than this ends the test with a message naming the step, instead of stalling CI.
const STEP_LIMIT: Duration = Duration::from_secs(180);
/// More pending messages than this, and the parent acks the oldest down to `PENDING_LOW`.
const PENDING_HIGH: usize = 3000;
const PENDING_LOW: usize = 1000;

/// A push, named by the generation (cycle) of the child that made it and a sequence number.
type Key = (u64, u64);

/// Small segments, so that the workload rolls and deletes segments all the time.
fn builder() -> WharfBuilder {
    // Checkpoints every 16 segments' worth of log (the default would take one per 64 KiB
    // segment, a redb commit every few milliseconds, which starves the consumers of a child
    // that lives a fraction of a second); settled segments without relocated messages go
    // without waiting for one.
    // A small index window: past 4 ready messages a queue's plain pushes join its run, which
    // recovery rebuilds from the log and pops read back from it.
    Wharf::builder().segment_bytes(64 << 10).checkpoint_every_bytes(1 << 20).index_window(4)
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child::run(Path::new(&dir));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("crash: test");
        return;
    }
    // Like libtest: a name filter that does not match skips the test.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "crash".contains(f.as_str())) {
        return;
    }
    parent::run();
}

/// splitmix64: a small seeded generator, enough for delays and workload choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xCBF2_9CE4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

/// The queue a push goes to. Sequence numbers are taken in blocks of four (one push call uses
/// the first one to four of a block), and a block goes to one queue.
fn queue_of((g, s): Key) -> usize {
    (fnv(&[g.to_le_bytes(), (s / 4).to_le_bytes()].concat()) % QUEUES.len() as u64) as usize
}

/// The payload of push `(g, s)`: `g:s:`, filler derived from both, then a digest of it all.
/// Mostly small, sometimes up to 20 KB, so segments of 64 KiB fill quickly.
fn payload((g, s): Key) -> Vec<u8> {
    let mut rng = Rng::new(g.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ s);
    let len = match rng.below(100) {
        0..=79 => 16 + rng.below(400),
        80..=94 => 400 + rng.below(3600),
        _ => 4000 + rng.below(16_000),
    } as usize;
    let mut p = format!("{g}:{s}:").into_bytes();
    let header = p.len();
    while p.len() < len {
        p.extend_from_slice(&rng.next().to_le_bytes());
    }
    p.truncate(len.max(header));
    let digest = fnv(&p);
    p.extend_from_slice(&digest.to_le_bytes());
    p
}

/// The push a payload claims to be, if its header parses.
fn key_of(p: &[u8]) -> Option<Key> {
    let mut parts = p.splitn(3, |&b| b == b':');
    let num = |b: Option<&[u8]>| std::str::from_utf8(b?).ok()?.parse::<u64>().ok();
    let g = num(parts.next())?;
    let s = num(parts.next())?;
    parts.next()?;
    Some((g, s))
}

/// Whether `p` is exactly the payload of a push, and of which.
fn check_payload(p: &[u8]) -> Option<Key> {
    let k = key_of(p)?;
    (payload(k) == p).then_some(k)
}

fn epoch(id: u64) -> u64 {
    id >> SEQ_BITS
}

mod child {
    use super::*;

    /// One line to the parent, flushed at once (a pipe write of a short line is atomic).
    fn emit(line: &str) {
        let mut out = std::io::stdout().lock();
        if out.write_all(format!("{line}\n").as_bytes()).and_then(|()| out.flush()).is_err() {
            // The parent is gone.
            std::process::exit(0);
        }
    }

    fn die(what: &str, e: &dyn std::fmt::Display) -> ! {
        emit(&format!("ERROR {what}: {e}"));
        std::process::exit(2);
    }

    fn env_u64(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    pub fn run(dir: &Path) -> ! {
        let g = env_u64(GEN_ENV, 0);
        let seed = env_u64(CHILD_SEED_ENV, 0);
        let deadline = Instant::now() + Duration::from_millis(env_u64(RUN_MS_ENV, 20_000));
        let w = builder().open(dir).unwrap_or_else(|e| die("open", &e));
        let queues: Vec<Queue> =
            QUEUES.iter().map(|n| w.queue(n).unwrap_or_else(|e| die("queue", &e))).collect();
        emit("READY");
        let blocks = AtomicU64::new(0);
        std::thread::scope(|sc| {
            for t in 0..PUSHERS {
                let (queues, blocks) = (&queues, &blocks);
                sc.spawn(move || pusher(g, seed ^ (t + 1) << 48, queues, blocks, deadline));
            }
            for t in 0..env_u64(CONSUMERS_ENV, CONSUMERS) {
                let q = &queues[t as usize % QUEUES.len()];
                let qi = t as usize % QUEUES.len();
                sc.spawn(move || consumer(seed ^ (t + 17) << 48, q, qi, deadline));
            }
        });
        emit("DONE");
        drop(queues);
        w.close().unwrap_or_else(|e| die("close", &e));
        std::process::exit(0);
    }

    /// Durable pushes (default `Immediate`), one at a time or in small batches.
    fn pusher(g: u64, seed: u64, queues: &[Queue], blocks: &AtomicU64, deadline: Instant) {
        let mut rng = Rng::new(seed);
        while Instant::now() < deadline {
            let n = if rng.below(5) == 0 { 2 + rng.below(3) } else { 1 };
            let s0 = 4 * blocks.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Key> = (s0..s0 + n).map(|s| (g, s)).collect();
            let payloads: Vec<Vec<u8>> = keys.iter().map(|&k| payload(k)).collect();
            if n > 1 {
                emit(&format!("BATCH {g} {s0} {n}"));
            }
            for &(g, s) in &keys {
                emit(&format!("BEGIN-PUSH {g} {s}"));
            }
            let q = &queues[queue_of(keys[0])];
            let ids = if n == 1 {
                q.push(&payloads[0]).map(|id| vec![id])
            } else {
                q.push_batch(&payloads)
            };
            let ids = ids.unwrap_or_else(|e| die("push", &e));
            for (&(g, s), id) in keys.iter().zip(ids) {
                emit(&format!("PUSH {g} {s} {}", id.get()));
            }
            // Now and then a pause, so that the consumers keep up and the backlog stays small.
            if rng.below(4) == 0 {
                std::thread::sleep(Duration::from_micros(rng.below(2000)));
            }
        }
    }

    /// Pops, one at a time or in batches; acks most deliveries durably (one by one, or a
    /// batch's with one `ack_many`), nacks or drops (releases) the rest.
    fn consumer(seed: u64, q: &Queue, qi: usize, deadline: Instant) {
        let mut rng = Rng::new(seed);
        // Now and then a delivery is held (leased, never settled) until the run ends: a
        // straggler that keeps its segment, until a checkpoint relocates it into state.redb.
        let mut held = Vec::new();
        let hold = env_u64(HOLD_ENV, 1) != 0;
        while Instant::now() < deadline {
            let batched = rng.below(4) == 0;
            let got = if batched {
                let max = 1 + rng.below(32) as usize;
                q.pop_batch(max, Duration::from_millis(20)).unwrap_or_else(|e| die("pop", &e))
            } else {
                match q.pop_timeout(Duration::from_millis(20)) {
                    Ok(d) => d.into_iter().collect(),
                    Err(e) => die("pop", &e),
                }
            };
            let mut acks: Vec<(Delivery, Key)> = Vec::new();
            for d in got {
                let id = d.id().get();
                let Some((g, s)) = check_payload(d.payload()).filter(|&k| queue_of(k) == qi) else {
                    emit(&format!("VIOLATION I3: id {id} delivered a payload no push had"));
                    std::process::exit(3);
                };
                match rng.below(20) {
                    0..=16 if batched => acks.push((d, (g, s))),
                    0..=16 => {
                        emit(&format!("BEGIN-ACK {g} {s} {id}"));
                        d.ack_with(Durability::Immediate).unwrap_or_else(|e| die("ack", &e));
                        emit(&format!("ACK {g} {s} {id}"));
                    }
                    17..=18 => d.nack().unwrap_or_else(|e| die("nack", &e)),
                    _ if hold && rng.below(8) == 0 => held.push(d),
                    _ => drop(d),
                }
            }
            if acks.is_empty() {
                continue;
            }
            let keys: Vec<(u64, Key)> = acks.iter().map(|(d, k)| (d.id().get(), *k)).collect();
            for (id, (g, s)) in &keys {
                emit(&format!("BEGIN-ACK {g} {s} {id}"));
            }
            let report = q
                .ack_many_with(acks.into_iter().map(|(d, _)| d), Durability::Immediate)
                .unwrap_or_else(|e| die("ack_many", &e));
            if !report.lapsed.is_empty() || report.acked != keys.len() {
                emit(&format!("ERROR ack_many: a lease lapsed in a 30 s visibility: {report:?}"));
            }
            for (id, (g, s)) in keys {
                if !report.lapsed.iter().any(|l| l.get() == id) {
                    emit(&format!("ACK {g} {s} {id}"));
                }
            }
        }
        drop(held);
    }
}

/// What one child reported.
#[derive(Default)]
struct Journal {
    ready: bool,
    begun_push: BTreeSet<Key>,
    /// `push_batch` calls: (g, first s, n); the keys are (g, first s..first s + n).
    batches: Vec<(u64, u64, u64)>,
    pushed: BTreeMap<Key, u64>,
    begun_ack: BTreeMap<u64, Key>,
    acked: BTreeMap<u64, Key>,
    /// `ERROR` and `VIOLATION` lines, and lines that do not parse.
    problems: Vec<String>,
}

impl Journal {
    fn parse(lines: &[String]) -> Journal {
        let mut j = Journal::default();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            match (f[0], n(1), n(2), n(3)) {
                ("READY", ..) if f.len() == 1 => j.ready = true,
                ("DONE", ..) if f.len() == 1 => {}
                ("BATCH", Some(g), Some(s), Some(n)) => j.batches.push((g, s, n)),
                ("BEGIN-PUSH", Some(g), Some(s), None) => {
                    j.begun_push.insert((g, s));
                }
                ("PUSH", Some(g), Some(s), Some(id)) => {
                    j.pushed.insert((g, s), id);
                }
                ("BEGIN-ACK", Some(g), Some(s), Some(id)) => {
                    j.begun_ack.insert(id, (g, s));
                }
                ("ACK", Some(g), Some(s), Some(id)) => {
                    j.acked.insert(id, (g, s));
                }
                _ => j.problems.push(line.clone()),
            }
        }
        j
    }

    /// Whether a push, and whether an ack, was between its `BEGIN` and its `Ok`: inside a
    /// group commit.
    fn in_commit(&self) -> (bool, bool) {
        (
            self.begun_push.iter().any(|k| !self.pushed.contains_key(k)),
            self.begun_ack.keys().any(|id| !self.acked.contains_key(id)),
        )
    }
}

/// What the parent knows about every message ever seen.
#[derive(Default)]
struct Model {
    ids: HashMap<u64, Key>,
    keys: HashMap<Key, u64>,
    /// The messages found by the last recovery (released again, so all of them unsettled).
    pending: BTreeMap<u64, Key>,
    /// Messages acked for good: durably, or by an indeterminate ack that took effect.
    gone: HashSet<u64>,
    /// The newest epoch of any id seen before the current cycle.
    max_epoch: u64,
    torn_tails: u64,
    bytes_truncated: u64,
    parent_acks: u64,
}

impl Model {
    /// Records that `id` names push `k`; an id is never reused for another payload (I5) and a
    /// push never gets two ids (I3, at most once).
    fn bind(&mut self, id: u64, k: Key, new: &mut BTreeSet<u64>) -> Result<(), String> {
        match (self.ids.get(&id), self.keys.get(&k)) {
            (Some(&k2), _) if k2 != k => {
                return Err(format!("I5: id {id:#x} named push {k2:?} and now push {k:?}"))
            }
            (_, Some(&id2)) if id2 != id => {
                return Err(format!("I3: push {k:?} appeared as id {id2:#x} and as id {id:#x}"))
            }
            (Some(_), _) => {}
            (None, _) => {
                if epoch(id) <= self.max_epoch {
                    return Err(format!(
                        "I5: new id {id:#x} has epoch {} but epoch {} was already used",
                        epoch(id),
                        self.max_epoch
                    ));
                }
                self.ids.insert(id, k);
                self.keys.insert(k, id);
                new.insert(id);
            }
        }
        Ok(())
    }

    /// Reopens the store in `dir`, checks I1–I5 against what the model knew and what the
    /// child reported, and settles: releases every message (or acks the oldest when too many
    /// piled up). Returns an error naming the broken invariant.
    fn check(&mut self, dir: &Path, j: &Journal) -> Result<(), String> {
        if let Some(p) = j.problems.first() {
            return Err(format!("the child reported: {p}"));
        }
        let mut new = BTreeSet::new();
        for (&k, &id) in &j.pushed {
            self.bind(id, k, &mut new)?;
        }
        for (&id, &k) in j.begun_ack.iter().chain(&j.acked) {
            self.bind(id, k, &mut new)?;
        }
        let w = builder().open(dir).map_err(|e| format!("I6/I9: reopening failed: {e}"))?;
        let report = w.recovery_report();
        if report.bytes_truncated > 0 {
            self.torn_tails += 1;
            self.bytes_truncated += report.bytes_truncated;
        }
        // Pop everything, holding every delivery so that nothing comes back before the end.
        let mut held: Vec<Delivery> = Vec::new();
        let mut found: BTreeMap<u64, Key> = BTreeMap::new();
        let mut seen_keys: HashSet<Key> = HashSet::new();
        for name in w.queue_names() {
            let qi =
                QUEUES.iter().position(|n| *n == name).ok_or(format!("unknown queue {name}"))?;
            let q = w.queue(&name).map_err(|e| format!("I6: queue {name}: {e}"))?;
            let mut last = 0;
            // In batches: each pop writes its delivery record before the hand-out, and a
            // batch shares one write.
            loop {
                let batch = q
                    .pop_batch(256, Duration::ZERO)
                    .map_err(|e| format!("I6: pop from {name}: {e}"))?;
                if batch.is_empty() {
                    break;
                }
                for d in batch {
                    let id = d.id().get();
                    if id <= last {
                        return Err(format!("I4: {name} delivered id {id:#x} after id {last:#x}"));
                    }
                    last = id;
                    let Some(k) = check_payload(d.payload()) else {
                        return Err(format!(
                            "I3: id {id:#x} in {name} delivered a payload no push was called with \
                         ({} bytes, starting {:?})",
                            d.payload().len(),
                            String::from_utf8_lossy(&d.payload()[..d.payload().len().min(24)])
                        ));
                    };
                    if queue_of(k) != qi {
                        return Err(format!("I3: push {k:?} (id {id:#x}) delivered from {name}"));
                    }
                    if !seen_keys.insert(k) {
                        return Err(format!("I3: push {k:?} delivered twice in one recovery"));
                    }
                    if !self.ids.contains_key(&id) && !j.begun_push.contains(&k) {
                        return Err(format!(
                        "I3: id {id:#x} delivered push {k:?}, which no push call of this cycle made"
                    ));
                    }
                    self.bind(id, k, &mut new)?;
                    if j.acked.contains_key(&id) || self.gone.contains(&id) {
                        return Err(format!("I2: id {id:#x} (push {k:?}) was acked and came back"));
                    }
                    let allowed = self.pending.contains_key(&id) || new.contains(&id);
                    if !allowed {
                        return Err(format!(
                        "I2/I3: id {id:#x} (push {k:?}) was settled or lost before and came back"
                    ));
                    }
                    found.insert(id, k);
                    held.push(d);
                }
            }
        }
        // A batch is kept whole or not at all: if one of its messages survived, so did every
        // other one that was not (maybe) acked since.
        let acked: HashSet<Key> = j.begun_ack.values().chain(j.acked.values()).copied().collect();
        for &(g, s0, n) in &j.batches {
            let keys: Vec<Key> = (s0..s0 + n).map(|s| (g, s)).collect();
            let kept = keys.iter().filter(|k| seen_keys.contains(k)).count();
            let lost: Vec<&Key> =
                keys.iter().filter(|k| !seen_keys.contains(k) && !acked.contains(k)).collect();
            if kept > 0 && !lost.is_empty() {
                return Err(format!(
                    "batch of {n} from {:?} cut by the crash: {kept} kept, {lost:?} lost",
                    (g, s0)
                ));
            }
        }
        // I1: every durable push that was not (maybe) acked is there.
        let must = self
            .pending
            .iter()
            .map(|(&id, &k)| (id, k))
            .chain(j.pushed.iter().map(|(&k, &id)| (id, k)));
        for (id, k) in must {
            if !found.contains_key(&id)
                && !j.acked.contains_key(&id)
                && !j.begun_ack.contains_key(&id)
            {
                return Err(format!("I1: id {id:#x} (push {k:?}) is durable, not acked, and lost"));
            }
        }
        // I4, no holes: ids of one open are dense and the log is durable as a prefix, so below
        // the newest id known durable (found, pushed, or durably acked) every id of the child's
        // epoch survived or was acked. (A message whose push was not yet durable may have been
        // popped and begun to be acked: that proves nothing.)
        let epochs: BTreeSet<u64> = new.iter().map(|&id| epoch(id)).collect();
        if epochs.len() > 1 {
            return Err(format!("I5: one open handed out ids of epochs {epochs:?}"));
        }
        if let Some(&e) = epochs.first() {
            let durable = found.keys().chain(j.pushed.values()).chain(j.acked.keys());
            let of_e = durable.filter(|&&id| epoch(id) == e);
            let max = of_e.map(|&id| id & ((1 << SEQ_BITS) - 1)).max().unwrap_or(0);
            for seq in 1..=max {
                let id = e << SEQ_BITS | seq;
                if !found.contains_key(&id)
                    && !j.acked.contains_key(&id)
                    && !j.begun_ack.contains_key(&id)
                {
                    return Err(format!(
                        "I4: hole: id {id:#x} is missing while id {:#x} of the same open survived",
                        e << SEQ_BITS | max
                    ));
                }
            }
            self.max_epoch = self.max_epoch.max(e);
        }
        // Settle: acked ids are gone for good, as are maybe-acked ones that did not survive.
        self.gone.extend(j.acked.keys());
        self.gone.extend(j.begun_ack.keys().filter(|id| !found.contains_key(id)));
        if found.len() > PENDING_HIGH {
            held.sort_by_key(Delivery::id);
            let n = found.len() - PENDING_LOW;
            for d in held.drain(..n) {
                let id = d.id().get();
                d.ack_with(Durability::Immediate).map_err(|e| format!("parent ack: {e}"))?;
                found.remove(&id);
                self.gone.insert(id);
                self.parent_acks += 1;
            }
        }
        self.pending = found;
        drop(held);
        w.close().map_err(|e| format!("closing after the check: {e}"))?;
        Ok(())
    }
}

/// A finished child: how it ended, its stdout lines and its stderr.
struct Outcome {
    status: ExitStatus,
    lines: Vec<String>,
    journal: Journal,
    stderr: String,
    /// Killed after [`CHILD_LIMIT`] without ending (or reaching `READY`, if it was to be killed).
    hung: bool,
}

/// Runs a child on `dir` as generation `g`. With `kill_after`, kills it with SIGKILL that long
/// after it printed `READY`; otherwise waits for it to end by itself (or by a fail point). Either
/// way, a child still running [`CHILD_LIMIT`] later is killed as hung.
fn run_child(
    dir: &Path,
    g: u64,
    seed: u64,
    kill_after: Option<Duration>,
    env: &[(&str, String)],
) -> Outcome {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, dir)
        .env(GEN_ENV, g.to_string())
        .env(CHILD_SEED_ENV, seed.to_string())
        .env_remove(FAILPOINT_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                // A line cut short by the kill is not a report.
                Ok(_) if buf.last() == Some(&b'\n') => {
                    buf.pop();
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                }
                _ => return,
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    let limit = Instant::now() + CHILD_LIMIT;
    let mut hung = false;
    loop {
        match rx.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let ready = line == "READY";
                lines.push(line);
                if let (true, Some(delay)) = (ready, kill_after) {
                    std::thread::sleep(delay);
                    break;
                }
            }
            // The reader is done: the child closed its stdout, it has ended.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                hung = true;
                break;
            }
        }
    }
    if kill_after.is_some() || hung {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap();
    Outcome { status, journal: Journal::parse(&lines), lines, stderr, hung }
}

/// Ends the test with a message if a step of the parent does not finish in time: each
/// [`arm`](Watchdog::arm) starts the clock for the next step and stops it for the last one.
struct Watchdog {
    tx: mpsc::Sender<(String, Duration)>,
}

impl Watchdog {
    /// The message names the seed and directory of the run, which an exit keeps.
    fn new(seed: u64, dir: &Path) -> Watchdog {
        let (tx, rx) = mpsc::channel::<(String, Duration)>();
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            let Ok(mut step) = rx.recv() else { return };
            loop {
                match rx.recv_timeout(step.1) {
                    Ok(next) => step = next,
                    Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {
                        eprintln!(
                            "crash: HUNG: {} did not finish within {:?} (seed {seed}, directory \
                             {}; replay with WHARF_CRASH_SEED={seed})",
                            step.0,
                            step.1,
                            dir.display()
                        );
                        std::process::exit(1);
                    }
                }
            }
        });
        Watchdog { tx }
    }

    /// `what` must finish within `limit`.
    fn arm(&self, what: &str, limit: Duration) {
        let _ = self.tx.send((what.to_owned(), limit));
    }
}

mod parent {
    use super::*;

    struct Run {
        seed: u64,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        model: Model,
        rng: Rng,
    }

    impl Run {
        fn fail(&mut self, what: &str, why: &str, out: Option<&Outcome>) -> ! {
            if let Some(t) = self.temp.take() {
                let _ = t.keep();
            }
            eprintln!("crash: VIOLATION in {what} (seed {}): {why}", self.seed);
            if let Some(o) = out {
                eprintln!("crash: the child ended with {:?}; its stderr:\n{}", o.status, o.stderr);
                let journal = self.dir.join("crash-journal.txt");
                if std::fs::write(&journal, o.lines.join("\n") + "\n").is_ok() {
                    eprintln!("crash: the child's journal is in {}", journal.display());
                }
            }
            eprintln!(
                "crash: directory kept at {}; replay with WHARF_CRASH_SEED={}",
                self.dir.display(),
                self.seed
            );
            std::process::exit(1);
        }

        /// Fails the run if the child had to be killed as hung.
        fn not_hung(&mut self, what: &str, out: &Outcome) {
            if out.hung {
                let why = format!("the child hung: killed after {CHILD_LIMIT:?}");
                self.fail(what, &why, Some(out));
            }
        }

        fn check(&mut self, what: &str, out: &Outcome) {
            let dir = self.dir.clone();
            if let Err(why) = self.model.check(&dir, &out.journal) {
                self.fail(what, &why, Some(out));
            }
        }
    }

    pub fn run() {
        let started = Instant::now();
        let seed = std::env::var("WHARF_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                Rng::new(t ^ u64::from(std::process::id())).next()
            });
        let cycles: u64 =
            std::env::var("WHARF_CRASH_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
        let (dir, temp) = match std::env::var("WHARF_CRASH_DIR") {
            Ok(d) => (PathBuf::from(d), None),
            Err(_) => {
                let t = tempfile::tempdir().unwrap();
                (t.path().to_owned(), Some(t))
            }
        };
        println!("crash: seed {seed} (replay with WHARF_CRASH_SEED={seed}), {cycles} cycles");
        let watchdog = Watchdog::new(seed, &dir);
        let mut run = Run { seed, dir, temp, model: Model::default(), rng: Rng::new(seed) };

        let (mut in_commit, mut push_in_flight, mut ack_in_flight) = (0u64, 0u64, 0u64);
        for cycle in 0..cycles {
            let delay = Duration::from_micros(run.rng.below(100_001));
            let child_seed = run.rng.next();
            let what = format!("cycle {cycle}");
            watchdog.arm(&what, STEP_LIMIT);
            let out = run_child(&run.dir.clone(), cycle, child_seed, Some(delay), &[]);
            run.not_hung(&what, &out);
            if let Some(p) = out.journal.problems.first() {
                run.fail(&what, &format!("the child reported: {p}"), Some(&out));
            }
            if !out.journal.ready || out.status.signal() != Some(SIGKILL) {
                let why = "the child did not reach READY or ended before the kill".to_owned();
                run.fail(&what, &why, Some(&out));
            }
            let (push, ack) = out.journal.in_commit();
            in_commit += u64::from(push || ack);
            push_in_flight += u64::from(push);
            ack_in_flight += u64::from(ack);
            run.check(&what, &out);
            if (cycle + 1) % 1000 == 0 && cycle + 1 < cycles {
                println!("crash: {} cycles in {:.0} s", cycle + 1, started.elapsed().as_secs_f64());
            }
        }
        let m = &run.model;
        let share = in_commit as f64 / cycles.max(1) as f64;
        println!(
            "crash: {cycles} kill -9 cycles in {:.1} s: {in_commit} kills inside a group commit \
             ({:.0}%; a push in flight {push_in_flight}, an ack {ack_in_flight}); {} torn tails \
             cut ({} bytes); {} messages seen, {} pending, {} acked ({} by the parent)",
            started.elapsed().as_secs_f64(),
            100.0 * share,
            m.torn_tails,
            m.bytes_truncated,
            m.ids.len(),
            m.pending.len(),
            m.gone.len(),
            m.parent_acks,
        );
        if cycles >= 50 && share < 0.3 {
            let why =
                format!("only {:.0}% of the kills landed inside a group commit", 100.0 * share);
            run.fail("the kill loop", &why, None);
        }
        #[cfg(feature = "failpoints")]
        failpoints::run(&mut run, cycles, &watchdog);
        drop(watchdog);
        println!("crash: passed in {:.1} s", started.elapsed().as_secs_f64());
    }

    #[cfg(feature = "failpoints")]
    mod failpoints {
        use super::*;

        /// Every fail point of the library, with the hit counts to abort at.
        const POINTS: [(&str, &[u64]); 9] = [
            ("after-write-before-sync", &[1, 7, 40]),
            ("after-sync-before-wake", &[1, 7, 40]),
            ("segment-created-before-dir-sync", &[1, 2, 5]),
            ("segment-removed-before-dir-sync", &[1, 2, 4]),
            // A checkpoint's redb transaction, just before and just after its commit: the log
            // is durable up to the checkpoint, and the segments it covers are not deleted yet.
            ("checkpoint-before-commit", &[1, 3, 8]),
            ("checkpoint-after-commit", &[1, 3, 8]),
            ("recovery-after-zero-before-sync", &[1, 1, 1]),
            // The child's clean close rewrites the durable mark (the parent's first check made
            // it): a short run, then an abort with the first slot written but not synced, or
            // with the second (the first synced).
            ("mark-written-before-sync", &[1, 2]),
            // Replaced by 1, 2 and the number of segments with records, after a run without
            // consumers has filled several segments.
            ("recovery-replay", &[]),
        ];

        /// The log position of the first byte of the segment file `path` (its name).
        fn base_of(path: &Path) -> u64 {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.trim_end_matches(".seg").parse().unwrap()
        }

        /// The position field of the record at offset `off` of a segment's bytes.
        fn lsn_at(bytes: &[u8], off: usize) -> Option<u64> {
            bytes.get(off + 8..off + 16).map(|l| u64::from_le_bytes(l.try_into().unwrap()))
        }

        /// Segment files, oldest first, and whether each holds a record: its first record
        /// carries its own position (a spare made of a deleted segment's file holds that
        /// segment's records, at positions below its base).
        fn segments(dir: &Path) -> Vec<(PathBuf, bool)> {
            wharf_check::segments(dir)
                .into_iter()
                .map(|p| {
                    let b = std::fs::read(&p).unwrap();
                    let has = lsn_at(&b, 64) == Some(base_of(&p) + 64);
                    (p, has)
                })
                .collect()
        }

        /// Appends a torn record after the last record of the active segment (the newest one
        /// with records), as a crash in the middle of a write would leave it.
        fn tear_tail(dir: &Path, rng: &mut Rng) -> Result<String, String> {
            let segs = segments(dir);
            let (path, _) =
                segs.iter().rev().find(|(_, has)| *has).ok_or("no segment has records")?;
            let bytes = std::fs::read(path).unwrap();
            let base = base_of(path);
            let mut off = 64usize;
            loop {
                let len = bytes
                    .get(off..off + 4)
                    .map_or(0, |l| u32::from_le_bytes(l.try_into().unwrap()));
                // Zeros, or an older segment's record left in a recycled file: the end.
                if len == 0 || lsn_at(&bytes, off) != Some(base + off as u64) {
                    break;
                }
                if bytes.get(off + 20) == Some(&7) {
                    return Err(format!("{} ends with a seal", path.display()));
                }
                off += len as usize;
            }
            let room = bytes.len().saturating_sub(off);
            let n = (24 + rng.below(400) as usize).min(room);
            let mut torn: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            // A length that claims more than was written, as in a torn write.
            if let Some(l) = torn.get_mut(..4) {
                l.copy_from_slice(&(n as u32 + 64).to_le_bytes());
            }
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &torn, off as u64).unwrap();
            Ok(format!("{n} bytes at offset {off} of {}", path.display()))
        }

        pub fn run(run: &mut Run, first_gen: u64, watchdog: &Watchdog) {
            let started = Instant::now();
            let mut gen = first_gen;
            let mut hits: Vec<(&str, Vec<u64>)> = Vec::new();
            for (name, ns) in POINTS {
                let ns: Vec<u64> = if ns.is_empty() {
                    let what = format!("generation {gen}, pushes only");
                    watchdog.arm(&what, STEP_LIMIT);
                    let env = [(CONSUMERS_ENV, "0".to_owned())];
                    let delay = Some(Duration::from_millis(150));
                    let out = run_child(&run.dir.clone(), gen, run.rng.next(), delay, &env);
                    run.not_hung(&what, &out);
                    gen += 1;
                    if out.status.signal() != Some(SIGKILL) {
                        run.fail(&what, "the child ended before the kill", Some(&out));
                    }
                    run.check(&what, &out);
                    let with_records = segments(&run.dir).iter().filter(|(_, has)| *has).count();
                    let mut v = vec![1, 2, with_records as u64];
                    v.retain(|&n| n <= with_records as u64);
                    v.dedup();
                    v
                } else {
                    ns.to_vec()
                };
                let mut hit = Vec::new();
                for n in ns {
                    let spec = format!("{name}:{n}");
                    let what = format!("fail point {spec} (generation {gen})");
                    watchdog.arm(&what, STEP_LIMIT);
                    if name == "recovery-after-zero-before-sync" {
                        if let Err(why) = tear_tail(&run.dir, &mut run.rng) {
                            run.fail(&what, &format!("cannot tear the tail: {why}"), None);
                        }
                    }
                    let child_seed = run.rng.next();
                    let run_ms = if name.starts_with("mark-") { "300" } else { "10000" };
                    let mut env =
                        vec![(FAILPOINT_ENV, spec.clone()), (RUN_MS_ENV, run_ms.to_owned())];
                    if name == "segment-removed-before-dir-sync" {
                        // Deliveries held for the whole run pin their segments (unless a
                        // checkpoint relocates them, which the share of them held decides): a
                        // run that must delete segments holds none.
                        env.push((HOLD_ENV, "0".to_owned()));
                    }
                    let out = run_child(&run.dir.clone(), gen, child_seed, None, &env);
                    run.not_hung(&what, &out);
                    gen += 1;
                    let reached = out.status.signal() == Some(SIGABRT)
                        && out.stderr.contains(&format!("fail point {name} reached"));
                    if !reached {
                        run.fail(&what, "the child did not abort at the fail point", Some(&out));
                    }
                    hit.push(n);
                    run.check(&what, &out);
                }
                hits.push((name, hit));
            }
            let list: Vec<String> =
                hits.iter().map(|(p, ns)| format!("{p} ×{} (n = {ns:?})", ns.len())).collect();
            println!(
                "crash: fail points hit in {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                list.join(", ")
            );
        }
    }
}
