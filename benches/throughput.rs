//! Throughput and latency of wharf, measured against what the disk itself can do and against
//! redb used as a queue, in one run on one disk.
//!
//! What it measures (every metric over 3 rounds, taken round-robin over all measurements so a
//! drift of the disk touches all alike; the table shows the median and min–max):
//!
//! - **Floors**, with `std` only: `F_sync` is a 128 B `pwrite` + `fdatasync` into a file
//!   preallocated with zeros (ops/s, p50, p99); `F_sync sparse` the same into a `set_len`
//!   (sparse) file, for information; `B_dur` durable streaming bandwidth with 1 MiB `pwrite` per
//!   `fdatasync` into a zero-filled file (MiB/s), and `B_dur fallocated` the same into a fresh
//!   `fallocate`d file, for information (wharf appends to freshly preallocated segments, whose
//!   syncs also commit extent conversions).
//! - **T1** one producer, `Durability::Immediate`, 128 B pushes: ops/s, p50, p99.
//! - **T2** 4, 16 and 64 producers, Immediate, 128 B: acked ops/s, and from `Wharf::stats`
//!   deltas the `fdatasync`s per second and records per `fdatasync` (group commit).
//! - **T3** durable bulk: `push_batch` of 256 × 4 KiB, Immediate: MiB/s of payload.
//! - **T4** `Durability::None` pushes, 128 B, one producer: msgs/s.
//! - **T5** push + `try_pop` + ack with push and ack durability `None`, 128 B, one thread
//!   (and a variant with batches of 64): msgs/s; and `pop_batch` of 64 KiB payloads already in
//!   the page cache, every byte read: GB/s.
//! - **T7** the T5 cycle with delivery records staged instead of written before the hand-out
//!   (`count_crashed_attempts(false)`): T5 / T7 is what poison-message safety costs.
//! - **T8** the job cycle with four consumers (one producer, batches of 64): a `Worker` with a
//!   no-op handler against four plain threads calling `pop_timeout` + `ack`, with durability
//!   `None` and `Immediate`.
//! - **T9** what checkpointing costs the full cycle: 1 and 4 threads each pushing a 128 B
//!   message, popping one and acking it (durability `None`), with checkpoints at the default
//!   triggers against runs with both triggers off, interleaved (on, off, off, on) within each
//!   round: msgs/s of each, their ratio, the checkpoints (`state.redb` commits) seen and the
//!   checkpointer thread's CPU time. A run warms up for 1.25 segments' worth of log and
//!   measures the next 2 (64 MiB segments: 2 checkpoints due); fixed-time rounds would see
//!   none. And, for information, 16 threads with `Immediate` pushes, whose log grows too
//!   slowly to reach a default trigger within a round, with checkpoints every 1 MiB instead
//!   (64 times the default rate).
//! - **T6** push latency across segment rolls (4 MiB segments): each roll is approached with
//!   fast `Durability::None` filler, then crossed by 128 B Immediate pushes; the worst latency
//!   of a push that crossed a roll, and the p99 of all those Immediate pushes.
//! - **Baseline** redb as a queue: one write transaction (default durability, Immediate) per
//!   128 B insert, with 1 and 16 threads sharing one `Database`.
//!
//! It then prints each target as a ratio, marked PASS or MISS.
//!
//! Run it with `cargo bench --bench throughput` (about 4 min on a 2-core VM, T9 half of it), or
//! a smoke run with `cargo bench --bench throughput -- --quick` (or `WHARF_BENCH_QUICK=1`). Run
//! without `--bench` (as `cargo test --all-targets` does) it always runs the quick variant.
//!
//! Environment: `WHARF_BENCH_DIR` is where the temporary stores and files go (default: the
//! current directory, the package root under `cargo bench`; keep it off tmpfs, or the floors
//! mean nothing); `WHARF_BENCH_SECS` overrides the length of a timed round (default 1.5 s,
//! 0.15 s quick).

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{file_system, fill_zeros, num, BoxResult, Report};
use tempfile::TempDir;
use wharf::{Durability, PushOptions, Queue, Wharf};

mod common;

/// Payload of the small-message measurements.
const SMALL: usize = 128;
/// Rounds of every measurement.
const ROUNDS: usize = 3;

struct Cfg {
    dir: PathBuf,
    secs: Duration,
    quick: bool,
}

impl Cfg {
    fn from_env() -> BoxResult<Cfg> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let env_quick = std::env::var("WHARF_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let as_bench = args.iter().any(|a| a == "--bench");
        let quick = env_quick || !as_bench || args.iter().any(|a| a == "--quick");
        let secs = match std::env::var("WHARF_BENCH_SECS") {
            Ok(s) => Duration::from_secs_f64(s.parse()?),
            Err(_) if quick => Duration::from_millis(150),
            Err(_) => Duration::from_millis(1500),
        };
        let dir = common::bench_dir(Path::new("."));
        Ok(Cfg { dir, secs, quick })
    }

    fn tempdir(&self) -> BoxResult<TempDir> {
        Ok(tempfile::Builder::new().prefix("wharf-bench-").tempdir_in(&self.dir)?)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.secs
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Rate and latency of a run of operations.
#[derive(Clone, Copy)]
struct Lat {
    ops: f64,
    p50_us: f64,
    p99_us: f64,
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[i.min(sorted_ns.len() - 1)] as f64 / 1e3
}

fn lat(mut ns: Vec<u64>, elapsed: Duration) -> Lat {
    ns.sort_unstable();
    Lat {
        ops: ns.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile_us(&ns, 0.50),
        p99_us: percentile_us(&ns, 0.99),
    }
}

// ---------------------------------------------------------------------------------------------
// Floors: std only.

fn open_rw(path: &Path) -> BoxResult<File> {
    Ok(OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?)
}

/// F_sync: 128 B `pwrite` + `fdatasync`, appending through a preallocated region.
fn f_sync(cfg: &Cfg, sparse: bool) -> BoxResult<Lat> {
    let dir = cfg.tempdir()?;
    let file = open_rw(&dir.path().join("fsync.dat"))?;
    let region: u64 = 16 << 20;
    if sparse {
        file.set_len(region)?;
        file.sync_all()?;
    } else {
        fill_zeros(&file, region)?;
    }
    let buf = [0xA5u8; SMALL];
    let mut off = 0u64;
    let mut ns = Vec::with_capacity(1 << 14);
    let start = Instant::now();
    let deadline = start + cfg.secs;
    loop {
        let t = Instant::now();
        if t >= deadline {
            break;
        }
        file.write_all_at(&buf, off)?;
        file.sync_data()?;
        ns.push(nanos(t.elapsed()));
        off = (off + SMALL as u64) % region;
    }
    Ok(lat(ns, start.elapsed()))
}

/// A zero-filled file for B_dur, made once and overwritten round after round.
struct BwFile {
    _dir: TempDir,
    file: File,
    len: u64,
}

fn b_dur_file(cfg: &Cfg) -> BoxResult<BwFile> {
    let dir = cfg.tempdir()?;
    let file = open_rw(&dir.path().join("bandwidth.dat"))?;
    let len: u64 = if cfg.quick { 32 << 20 } else { 256 << 20 };
    fill_zeros(&file, len)?;
    Ok(BwFile { _dir: dir, file, len })
}

/// B_dur: 1 MiB `pwrite` + `fdatasync`, sequentially: MiB/s.
fn b_dur(cfg: &Cfg, f: &BwFile) -> BoxResult<f64> {
    let buf = vec![0x5Au8; 1 << 20];
    let (mut off, mut n) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + cfg.secs;
    while Instant::now() < deadline {
        f.file.write_all_at(&buf, off)?;
        f.file.sync_data()?;
        off = (off + buf.len() as u64) % f.len;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// B_dur into a fresh `fallocate`d file, for information: the floor for a log that appends to
/// newly preallocated segments, as wharf does (every sync also commits the conversion of the
/// extents it wrote from "unwritten" to "written" in the file system's journal).
fn b_dur_fallocated(cfg: &Cfg) -> BoxResult<f64> {
    let dir = cfg.tempdir()?;
    let file = open_rw(&dir.path().join("fallocated.dat"))?;
    let len: u64 = if cfg.quick { 256 << 20 } else { 4 << 30 };
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)?;
    file.sync_all()?;
    let buf = vec![0x5Au8; 1 << 20];
    let (mut off, mut n) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + cfg.secs;
    while Instant::now() < deadline && off + buf.len() as u64 <= len {
        file.write_all_at(&buf, off)?;
        file.sync_data()?;
        off += buf.len() as u64;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// wharf.

/// A fresh store in its own temporary directory, and its one queue.
struct Store {
    wharf: Wharf,
    queue: Queue,
    _dir: TempDir,
}

impl Store {
    fn open(cfg: &Cfg, builder: wharf::WharfBuilder) -> BoxResult<Store> {
        let dir = cfg.tempdir()?;
        let wharf = builder.open(dir.path())?;
        let queue = wharf.queue("bench")?;
        Ok(Store { wharf, queue, _dir: dir })
    }

    fn close(self) -> BoxResult<()> {
        let Store { wharf, queue, _dir } = self;
        drop(queue);
        wharf.close()?;
        Ok(())
    }
}

fn no_sync() -> wharf::WharfBuilder {
    Wharf::builder().push_durability(Durability::None).ack_durability(Durability::None)
}

/// T1: one producer, Immediate, 128 B.
fn t1(cfg: &Cfg) -> BoxResult<Lat> {
    let s = Store::open(cfg, Wharf::builder())?;
    let payload = [0x42u8; SMALL];
    for _ in 0..10 {
        s.queue.push(payload)?;
    }
    let mut ns = Vec::with_capacity(1 << 14);
    let start = Instant::now();
    let deadline = start + cfg.secs;
    loop {
        let t = Instant::now();
        if t >= deadline {
            break;
        }
        s.queue.push(payload)?;
        ns.push(nanos(t.elapsed()));
    }
    let out = lat(ns, start.elapsed());
    s.close()?;
    Ok(out)
}

struct Group {
    ops: f64,
    fsyncs_per_s: f64,
    records_per_fsync: f64,
}

/// T2: `p` producers, Immediate, 128 B.
fn t2(cfg: &Cfg, p: usize) -> BoxResult<Group> {
    let s = Store::open(cfg, Wharf::builder())?;
    let payload = [0x42u8; SMALL];
    let barrier = Barrier::new(p + 1);
    let secs = cfg.secs;
    let (total, elapsed, before, after) = std::thread::scope(|scope| -> BoxResult<_> {
        let handles: Vec<_> = (0..p)
            .map(|_| {
                let (q, barrier) = (s.queue.clone(), &barrier);
                scope.spawn(move || -> BoxResult<u64> {
                    barrier.wait();
                    let deadline = Instant::now() + secs;
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        q.push(payload)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        let before = s.wharf.stats();
        barrier.wait();
        let start = Instant::now();
        let mut total = 0u64;
        for h in handles {
            total += h.join().map_err(|_| "a producer thread panicked")??;
        }
        Ok((total, start.elapsed(), before, s.wharf.stats()))
    })?;
    s.close()?;
    let fsyncs = (after.fsyncs - before.fsyncs) as f64;
    let records = (after.records - before.records) as f64;
    let secs = elapsed.as_secs_f64();
    Ok(Group {
        ops: total as f64 / secs,
        fsyncs_per_s: fsyncs / secs,
        records_per_fsync: records / fsyncs.max(1.0),
    })
}

/// T3: `push_batch` of 256 × 4 KiB, Immediate: MiB/s of payload.
fn t3(cfg: &Cfg) -> BoxResult<f64> {
    let s = Store::open(cfg, Wharf::builder())?;
    let batch: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b; 4096]).collect();
    let (mut bytes, deadline, start) = (0u64, cfg.deadline(), Instant::now());
    while Instant::now() < deadline {
        s.queue.push_batch(&batch)?;
        bytes += (batch.len() * 4096) as u64;
    }
    let mib_s = bytes as f64 / f64::from(1u32 << 20) / start.elapsed().as_secs_f64();
    s.close()?;
    Ok(mib_s)
}

/// T4: `Durability::None` pushes, 128 B, one producer: msgs/s.
fn t4(cfg: &Cfg) -> BoxResult<f64> {
    let s = Store::open(cfg, Wharf::builder().push_durability(Durability::None))?;
    let payload = [0x42u8; SMALL];
    let (mut n, deadline, start) = (0u64, cfg.deadline(), Instant::now());
    while Instant::now() < deadline {
        for _ in 0..256 {
            s.queue.push(payload)?;
        }
        n += 256;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    s.close()?;
    Ok(rate)
}

/// T5: push, `try_pop`, ack, one at a time, all with durability `None`: msgs/s.
fn t5_cycle(cfg: &Cfg) -> BoxResult<f64> {
    cycle(cfg, no_sync())
}

/// T7: the T5 cycle with delivery records staged like acks instead of written before the
/// payload is handed out (`count_crashed_attempts(false)`): what recording deliveries costs.
fn t7_cycle(cfg: &Cfg) -> BoxResult<f64> {
    cycle(cfg, no_sync().count_crashed_attempts(false))
}

/// Push, `try_pop`, ack, one at a time, on a store opened with `builder`: msgs/s.
fn cycle(cfg: &Cfg, builder: wharf::WharfBuilder) -> BoxResult<f64> {
    let s = Store::open(cfg, builder)?;
    let payload = [0x42u8; SMALL];
    let (mut n, deadline, start) = (0u64, cfg.deadline(), Instant::now());
    while Instant::now() < deadline {
        for _ in 0..256 {
            s.queue.push(payload)?;
            let d = s.queue.try_pop()?.ok_or("try_pop found nothing right after a push")?;
            black_box(d.payload().first());
            d.ack()?;
        }
        n += 256;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    s.close()?;
    Ok(rate)
}

/// T5, batched: `push_batch` of 64, `pop_batch` of 64, 64 acks, all with durability `None`.
fn t5_batch(cfg: &Cfg) -> BoxResult<f64> {
    let s = Store::open(cfg, no_sync())?;
    let batch = vec![[0x42u8; SMALL]; 64];
    let (mut n, deadline, start) = (0u64, cfg.deadline(), Instant::now());
    while Instant::now() < deadline {
        s.queue.push_batch(&batch)?;
        let got = s.queue.pop_batch(batch.len(), Duration::ZERO)?;
        if got.len() != batch.len() {
            return Err(format!("pop_batch returned {} of {}", got.len(), batch.len()).into());
        }
        for d in got {
            black_box(d.payload().first());
            d.ack()?;
        }
        n += batch.len() as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    s.close()?;
    Ok(rate)
}

/// T8: the full job cycle with four consumers. One producer pushes 128 B messages in batches
/// of 64 (keeping about 20,000 waiting); four threads pop one message at a time and ack it,
/// push and ack durability `d`. With `worker`, the four threads are a `Worker` with a no-op
/// handler; without, plain threads calling `pop_timeout` and `ack` (the raw cycle). Acked
/// msgs/s.
fn t8(cfg: &Cfg, d: Durability, worker: bool) -> BoxResult<f64> {
    use std::sync::atomic::AtomicBool;
    let s = Store::open(cfg, Wharf::builder().push_durability(d).ack_durability(d))?;
    let batch = vec![[0x42u8; SMALL]; 64];
    for _ in 0..(20_000 / batch.len()) {
        s.queue.push_batch(&batch)?;
    }
    let stop = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    let rate = std::thread::scope(|sc| -> BoxResult<f64> {
        let producer = sc.spawn(|| -> BoxResult<()> {
            while !stop.load(Ordering::Relaxed) {
                if s.queue.depth()?.ready > 20_000 {
                    std::thread::yield_now();
                    continue;
                }
                s.queue.push_batch(&batch)?;
            }
            Ok(())
        });
        let rate = if worker {
            let w = wharf::Worker::builder(&s.queue).threads(4).run(
                |d: &wharf::Delivery| -> Result<(), String> {
                    black_box(d.payload().first());
                    Ok(())
                },
            )?;
            let (before, start) = (w.stats().processed, Instant::now());
            std::thread::sleep(cfg.secs);
            let n = w.stats().processed - before;
            let rate = n as f64 / start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            w.shutdown(Duration::from_secs(10))?;
            rate
        } else {
            let consumers: Vec<_> = (0..4)
                .map(|_| {
                    sc.spawn(|| -> BoxResult<()> {
                        while !stop.load(Ordering::Relaxed) {
                            if let Some(job) = s.queue.pop_timeout(Duration::from_millis(100))? {
                                black_box(job.payload().first());
                                job.ack()?;
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            let (before, start) = (acked.load(Ordering::Relaxed), Instant::now());
            std::thread::sleep(cfg.secs);
            let n = acked.load(Ordering::Relaxed) - before;
            let rate = n as f64 / start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            for c in consumers {
                c.join().map_err(|_| "a consumer panicked")??;
            }
            rate
        };
        producer.join().map_err(|_| "the producer panicked")??;
        Ok(rate)
    })?;
    s.close()?;
    Ok(rate)
}

/// How T9 runs with checkpoints.
#[derive(Clone, Copy, PartialEq)]
enum Checkpoints {
    /// At the default triggers.
    Default,
    /// Every this many bytes of log.
    Every(u64),
    /// Both automatic triggers off (`checkpoint_every_bytes(u64::MAX)`,
    /// `checkpoint_interval(None)`). The store still takes the checkpoint that the deletion
    /// of a settled segment waits for: the first segment after an open needs one.
    Off,
}

/// How long a T9 run measures.
#[derive(Clone, Copy)]
enum Window {
    /// From the point where the log has `warmup` bytes until `len` more were appended.
    Bytes { warmup: u64, len: u64 },
    /// For this long, from the start.
    Time(Duration),
}

/// One T9 run.
struct CycleRun {
    /// Acked msgs/s over the window.
    rate: f64,
    /// Log bytes appended over the window.
    bytes: u64,
    /// Checkpoints seen over the window: commits of `state.redb` (changes of its modification
    /// time at least 100 ms after the previous one; 10 ms in a quick run).
    commits: u64,
    /// CPU time of the checkpointer thread over the window, ms (in 10 ms ticks).
    ck_cpu_ms: f64,
}

/// User + system CPU time of this process's checkpointer thread (`wharf-checkpoint`, shown
/// truncated to 15 bytes in `comm`), in ms; 0 if there is none.
fn checkpointer_cpu_ms() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("wharf-checkpoin") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    // `/proc` counts in USER_HZ, 100 per second on Linux.
    ticks as f64 * 10.0
}

/// A T9 run: `threads` threads each push a 128 B message, `try_pop` one and ack it, over and
/// over (T5's cycle, concurrently as T2), on `seg`-byte segments. Push durability `d`; acks
/// `None` with `d = None`, else the default (`Interval(10 ms)`). Acked msgs/s over `window`.
fn cycle_run(
    cfg: &Cfg,
    d: Durability,
    threads: usize,
    seg: u64,
    ck: Checkpoints,
    window: Window,
) -> BoxResult<CycleRun> {
    use std::sync::atomic::AtomicBool;
    let mut b = Wharf::builder().segment_bytes(seg).push_durability(d);
    if d == Durability::None {
        b = b.ack_durability(Durability::None);
    }
    b = match ck {
        Checkpoints::Default => b,
        Checkpoints::Every(bytes) => b.checkpoint_every_bytes(bytes),
        Checkpoints::Off => b.checkpoint_every_bytes(u64::MAX).checkpoint_interval(None),
    };
    let s = Store::open(cfg, b)?;
    let stop = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    std::thread::scope(|sc| -> BoxResult<CycleRun> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (q, stop, acked) = (&s.queue, &stop, &acked);
                sc.spawn(move || -> BoxResult<()> {
                    let payload = [0x42u8; SMALL];
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            q.push(payload)?;
                            // Another thread may have taken it: every pop follows a push, so
                            // a message is waiting unless one is being popped.
                            if let Some(d) = q.try_pop()? {
                                black_box(d.payload().first());
                                d.ack()?;
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let measured = measure_window(cfg, &s, &acked, window);
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().map_err(|_| "a T9 thread panicked")??;
        }
        measured
    })
    .and_then(|run| {
        s.close()?;
        Ok(run)
    })
}

/// Measures a T9 run over `window` while its threads run: acks counted in `acked`.
fn measure_window(cfg: &Cfg, s: &Store, acked: &AtomicU64, window: Window) -> BoxResult<CycleRun> {
    let state_file = s._dir.path().join("state.redb");
    let modified = || std::fs::metadata(&state_file).and_then(|m| m.modified()).ok();
    let tick = Duration::from_millis(if cfg.quick { 1 } else { 5 });
    // One commit may change the modification time twice (its pages, then its header,
    // a sync apart); commits of the default triggers are seconds apart, those of a
    // quick run's 1 MiB segments tens of ms.
    let apart = Duration::from_millis(if cfg.quick { 10 } else { 100 });
    let give_up = Instant::now() + Duration::from_secs(120);
    if let Window::Bytes { warmup, .. } = window {
        while s.wharf.stats().bytes < warmup && Instant::now() < give_up {
            std::thread::sleep(tick);
        }
    }
    let (bytes0, n0, cpu0) =
        (s.wharf.stats().bytes, acked.load(Ordering::Relaxed), checkpointer_cpu_ms());
    let start = Instant::now();
    let (mut seen, mut commits, mut last_commit) = (modified(), 0u64, None::<Instant>);
    loop {
        std::thread::sleep(tick);
        let now = modified();
        if now != seen {
            seen = now;
            if last_commit.is_none_or(|t| t.elapsed() >= apart) {
                commits += 1;
            }
            last_commit = Some(Instant::now());
        }
        let done = match window {
            Window::Bytes { len, .. } => s.wharf.stats().bytes - bytes0 >= len,
            Window::Time(t) => start.elapsed() >= t,
        };
        // A stuck run ends too; its rate shows it.
        if done || Instant::now() >= give_up {
            break;
        }
    }
    let n = acked.load(Ordering::Relaxed) - n0;
    Ok(CycleRun {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        bytes: s.wharf.stats().bytes - bytes0,
        commits,
        ck_cpu_ms: checkpointer_cpu_ms() - cpu0,
    })
}

/// T9: what checkpointing costs the full cycle. `cycle_run` with checkpoints on (`ck`) and
/// off, in the order on, off, off, on, so that a drift of the machine during the round
/// touches both alike; each side's mean rate, their ratio, and per run with them on: log
/// bytes per checkpoint taken, and the checkpointer thread's CPU time.
///
/// With durability `None`, on 64 MiB segments (the default; 1 MiB in a quick run) and the
/// default triggers: each run warms up for 1.25 segments' worth of log (so that the one
/// checkpoint a store with them off still takes, for its first settled segment, falls
/// before the window) and then measures 2 segments' worth, in which a store with them on
/// takes 2. Time-boxed rounds would see none: 1.5 s of this cycle writes less than 64 MiB.
/// With `Immediate` pushes, whose log would reach a default trigger only every ~10 s or so,
/// checkpoints are taken every 1/64 segment (1 MiB, 64 times the default rate) instead, in
/// time-boxed runs: for information, an upper bound.
fn t9(cfg: &Cfg, name: &str, d: Durability, threads: usize) -> BoxResult<Sample> {
    let seg = if cfg.quick { 1 << 20 } else { wharf::DEFAULT_SEGMENT_BYTES };
    let (ck, window) = if d == Durability::None {
        (Checkpoints::Default, Window::Bytes { warmup: seg * 5 / 4, len: 2 * seg })
    } else {
        (Checkpoints::Every(seg / 64), Window::Time(cfg.secs))
    };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for run_on in [true, false, false, true] {
        let r =
            cycle_run(cfg, d, threads, seg, if run_on { ck } else { Checkpoints::Off }, window)?;
        if run_on {
            on.push(r);
        } else {
            off.push(r);
        }
    }
    fn mean(v: &[CycleRun], f: impl Fn(&CycleRun) -> f64) -> f64 {
        v.iter().map(f).sum::<f64>() / v.len() as f64
    }
    let (rate_on, rate_off) = (mean(&on, |r| r.rate), mean(&off, |r| r.rate));
    let mut out = vec![
        (format!("{name}, checkpoints on"), "msgs/s", rate_on),
        (format!("{name}, checkpoints off"), "msgs/s", rate_off),
        (format!("{name}, on / off"), "ratio", rate_on / rate_off),
    ];
    if d == Durability::None {
        out.push((
            format!("{name}, checkpoints on: commits per window"),
            "ckpts",
            mean(&on, |r| r.commits as f64),
        ));
        out.push((
            format!("{name}, checkpoints off: commits per window"),
            "ckpts",
            mean(&off, |r| r.commits as f64),
        ));
    } else {
        let per = |r: &CycleRun| r.bytes as f64 / (seg / 64) as f64;
        out.push((format!("{name}, checkpoints on: due per run"), "ckpts", mean(&on, per)));
    }
    out.push((format!("{name}, checkpointer CPU per run, on"), "ms", mean(&on, |r| r.ck_cpu_ms)));
    Ok(out)
}

/// Reads every byte of `bytes`.
fn checksum(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder().iter().fold(0u64, |a, &b| a.rotate_left(8) ^ u64::from(b));
    words.fold(tail, |a, w| {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        a.wrapping_add(u64::from_le_bytes(word))
    })
}

/// T5, large: pops of 64 KiB payloads already in the page cache, every byte read: GB/s.
fn t5_large(cfg: &Cfg) -> BoxResult<f64> {
    const LEN: usize = 64 << 10;
    let count: usize = if cfg.quick { 256 } else { 4096 };
    let s = Store::open(cfg, no_sync())?;
    let batch: Vec<Vec<u8>> = (0u8..64).map(|b| vec![b; LEN]).collect();
    for _ in 0..count / batch.len() {
        s.queue.push_batch(&batch)?;
    }
    s.wharf.sync()?;
    let (mut bytes, mut sum) = (0usize, 0u64);
    let start = Instant::now();
    loop {
        let got = s.queue.pop_batch(64, Duration::ZERO)?;
        if got.is_empty() {
            break;
        }
        for d in got {
            let p = d.payload();
            sum = sum.wrapping_add(checksum(p));
            bytes += p.len();
            d.ack()?;
        }
    }
    let elapsed = start.elapsed();
    black_box(sum);
    if bytes != count * LEN {
        return Err(format!("popped {bytes} bytes, pushed {}", count * LEN).into());
    }
    s.close()?;
    Ok(bytes as f64 / 1e9 / elapsed.as_secs_f64())
}

struct Roll {
    max_roll_us: f64,
    p99_us: f64,
    rolls: usize,
}

/// T6: Immediate 128 B pushes across segment rolls of 4 MiB segments. Each roll is approached
/// with `Durability::None` filler (synced, so the Immediate pushes start from a clean state),
/// then crossed by `2 × WINDOW` Immediate pushes; a push crossed a roll when the durable end of
/// the log moved into the next segment.
fn t6(cfg: &Cfg) -> BoxResult<Roll> {
    const SEG: u64 = 4 << 20;
    const WINDOW: u64 = 100;
    let rolls = if cfg.quick { 2 } else { 6 };
    let s = Store::open(cfg, Wharf::builder().segment_bytes(SEG))?;
    let (q, w) = (&s.queue, &s.wharf);
    let payload = [0x42u8; SMALL];
    let filler = vec![[0x11u8; SMALL]; 1024];
    let lazy = PushOptions::new().durability(Durability::None);
    let before = w.stats().bytes;
    q.push(payload)?;
    let rec = w.stats().bytes - before;
    let (mut all, mut at_roll) = (Vec::new(), Vec::new());
    for _ in 0..rolls {
        w.sync()?;
        let lsn = w.stats().durable_lsn;
        let room = ((lsn / SEG + 1) * SEG - lsn) / rec;
        let mut fill = room.saturating_sub(WINDOW);
        while fill > 0 {
            let k = fill.min(filler.len() as u64);
            q.push_batch_with(filler.iter().take(k as usize), lazy.clone())?;
            fill -= k;
        }
        w.sync()?;
        // A running store prepares the next segment long before it is needed; give it time.
        std::thread::sleep(Duration::from_millis(20));
        let mut prev = w.stats().durable_lsn;
        for _ in 0..2 * WINDOW {
            let t = Instant::now();
            q.push(payload)?;
            let ns = nanos(t.elapsed());
            let now = w.stats().durable_lsn;
            if now / SEG != prev / SEG {
                at_roll.push(ns);
            }
            all.push(ns);
            prev = now;
        }
    }
    s.close()?;
    all.sort_unstable();
    Ok(Roll {
        max_roll_us: at_roll.iter().max().map_or(f64::NAN, |&n| n as f64 / 1e3),
        p99_us: percentile_us(&all, 0.99),
        rolls: at_roll.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// redb as a queue: one write transaction per push.

const REDB_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("queue");

fn redb_open(dir: &TempDir) -> BoxResult<redb::Database> {
    let db = redb::Database::create(dir.path().join("queue.redb"))?;
    let txn = db.begin_write()?;
    txn.open_table(REDB_TABLE)?;
    txn.commit()?;
    Ok(db)
}

fn redb_push(db: &redb::Database, key: u64, payload: &[u8]) -> BoxResult<()> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(REDB_TABLE)?;
        table.insert(key, payload)?;
    }
    txn.commit()?;
    Ok(())
}

fn redb_t1(cfg: &Cfg) -> BoxResult<Lat> {
    let dir = cfg.tempdir()?;
    let db = redb_open(&dir)?;
    let payload = [0x42u8; SMALL];
    let mut key = 0u64;
    let mut ns = Vec::with_capacity(1 << 14);
    let start = Instant::now();
    let deadline = start + cfg.secs;
    loop {
        let t = Instant::now();
        if t >= deadline {
            break;
        }
        redb_push(&db, key, &payload)?;
        key += 1;
        ns.push(nanos(t.elapsed()));
    }
    Ok(lat(ns, start.elapsed()))
}

fn redb_t2(cfg: &Cfg, p: usize) -> BoxResult<f64> {
    let dir = cfg.tempdir()?;
    let db = redb_open(&dir)?;
    let payload = [0x42u8; SMALL];
    let (next_key, barrier, secs) = (AtomicU64::new(0), Barrier::new(p + 1), cfg.secs);
    let (total, elapsed) = std::thread::scope(|scope| -> BoxResult<_> {
        let handles: Vec<_> = (0..p)
            .map(|_| {
                let (db, barrier, next_key) = (&db, &barrier, &next_key);
                scope.spawn(move || -> BoxResult<u64> {
                    barrier.wait();
                    let deadline = Instant::now() + secs;
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        redb_push(db, next_key.fetch_add(1, Ordering::Relaxed), &payload)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut total = 0u64;
        for h in handles {
            total += h.join().map_err(|_| "a redb writer thread panicked")??;
        }
        Ok((total, start.elapsed()))
    })?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Reporting.

/// One round's values of one measurement: (metric, unit, value).
type Sample = Vec<(String, &'static str, f64)>;

fn one(label: &str, unit: &'static str, value: f64) -> Sample {
    vec![(label.to_owned(), unit, value)]
}

fn lat_sample(name: &str, l: Lat) -> Sample {
    vec![
        (format!("{name} ops/s"), "ops/s", l.ops),
        (format!("{name} p50"), "µs", l.p50_us),
        (format!("{name} p99"), "µs", l.p99_us),
    ]
}

/// A measurement: its name and one round of it.
type Measure<'a> = (String, Box<dyn FnMut() -> BoxResult<Sample> + 'a>);

/// Every measurement, in the order of a round.
fn measures<'a>(cfg: &'a Cfg, bw: &'a BwFile) -> Vec<Measure<'a>> {
    let mut m: Vec<Measure<'a>> = vec![
        ("F_sync".into(), Box::new(|| Ok(lat_sample("F_sync", f_sync(cfg, false)?)))),
        (
            "F_sync sparse".into(),
            Box::new(|| Ok(lat_sample("F_sync sparse (info)", f_sync(cfg, true)?))),
        ),
        ("B_dur".into(), Box::new(|| Ok(one("B_dur", "MiB/s", b_dur(cfg, bw)?)))),
        (
            "B_dur fallocated".into(),
            Box::new(|| Ok(one("B_dur fallocated (info)", "MiB/s", b_dur_fallocated(cfg)?))),
        ),
        ("T1".into(), Box::new(|| Ok(lat_sample("T1", t1(cfg)?)))),
    ];
    for p in [4, 16, 64] {
        m.push((
            format!("T2@{p}"),
            Box::new(move || {
                let g = t2(cfg, p)?;
                Ok(vec![
                    (format!("T2@{p} ops/s"), "ops/s", g.ops),
                    (format!("T2@{p} fsyncs/s"), "/s", g.fsyncs_per_s),
                    (format!("T2@{p} records/fsync"), "rec", g.records_per_fsync),
                ])
            }),
        ));
    }
    m.extend::<[Measure<'a>; 16]>([
        ("T3".into(), Box::new(|| Ok(one("T3 push_batch 256×4 KiB", "MiB/s", t3(cfg)?)))),
        ("T4".into(), Box::new(|| Ok(one("T4 push None", "msgs/s", t4(cfg)?)))),
        ("T5 cycle".into(), Box::new(|| Ok(one("T5 push+try_pop+ack", "msgs/s", t5_cycle(cfg)?)))),
        ("T5 batch".into(), Box::new(|| Ok(one("T5 batch 64 cycle", "msgs/s", t5_batch(cfg)?)))),
        (
            "T8 raw None".into(),
            Box::new(|| {
                Ok(one("T8 raw 4 consumers, None", "msgs/s", t8(cfg, Durability::None, false)?))
            }),
        ),
        (
            "T8 worker None".into(),
            Box::new(|| Ok(one("T8 Worker ×4, None", "msgs/s", t8(cfg, Durability::None, true)?))),
        ),
        (
            "T8 raw Immediate".into(),
            Box::new(|| {
                Ok(one(
                    "T8 raw 4 consumers, Immediate",
                    "msgs/s",
                    t8(cfg, Durability::Immediate, false)?,
                ))
            }),
        ),
        (
            "T8 worker Immediate".into(),
            Box::new(|| {
                Ok(one("T8 Worker ×4, Immediate", "msgs/s", t8(cfg, Durability::Immediate, true)?))
            }),
        ),
        (
            "T7 cycle".into(),
            Box::new(|| Ok(one("T7 cycle, deliveries staged", "msgs/s", t7_cycle(cfg)?))),
        ),
        ("T5 large".into(), Box::new(|| Ok(one("T5 pop 64 KiB", "GB/s", t5_large(cfg)?)))),
        (
            "T6".into(),
            Box::new(|| {
                let x = t6(cfg)?;
                Ok(vec![
                    ("T6 roll max".into(), "µs", x.max_roll_us),
                    ("T6 p99 (all)".into(), "µs", x.p99_us),
                    ("T6 rolls crossed".into(), "rolls", x.rolls as f64),
                ])
            }),
        ),
        ("T9@1 None".into(), Box::new(|| t9(cfg, "T9@1 None", Durability::None, 1))),
        ("T9@4 None".into(), Box::new(|| t9(cfg, "T9@4 None", Durability::None, 4))),
        (
            "T9@16 Immediate".into(),
            Box::new(|| t9(cfg, "T9@16 Immediate, every 1/64 segment", Durability::Immediate, 16)),
        ),
        ("redb T1".into(), Box::new(|| Ok(lat_sample("redb T1", redb_t1(cfg)?)))),
        ("redb T2@16".into(), Box::new(|| Ok(one("redb T2@16 ops/s", "ops/s", redb_t2(cfg, 16)?)))),
    ]);
    m
}

/// One target: `value` (a ratio, or for the p50 target a difference) against `bound`.
struct Check {
    target: String,
    /// The measured ratio in the target's own terms, e.g. "0.83 × F_sync".
    ratio: String,
    /// The raw numbers the ratio comes from.
    detail: String,
    pass: bool,
}

/// `a / b` must be at least `bound` (or at most, with `at_most`).
fn ratio(target: &str, a: f64, b: f64, per: &str, bound: f64, at_most: bool, unit: &str) -> Check {
    let x = a / b;
    Check {
        target: target.into(),
        ratio: if x < 10.0 { format!("{x:.3} × {per}") } else { format!("{x:.1} × {per}") },
        detail: format!("{} vs {} {unit}", num(a), num(b)),
        pass: if at_most { x <= bound } else { x >= bound },
    }
}

fn checks(r: &Report) -> BoxResult<Vec<Check>> {
    let f_ops = r.median("F_sync ops/s")?;
    let f_p50 = r.median("F_sync p50")?;
    let f_p99 = r.median("F_sync p99")?;
    let b_dur = r.median("B_dur")?;
    let t1_p50 = r.median("T1 p50")?;
    let mut out = vec![
        ratio(
            "T1 ≥ 0.8 × F_sync ops/s",
            r.median("T1 ops/s")?,
            f_ops,
            "F_sync",
            0.8,
            false,
            "ops/s",
        ),
        Check {
            target: "T1 p50 ≤ F_sync p50 + 15 µs".into(),
            ratio: format!("{:+.1} µs", t1_p50 - f_p50),
            detail: format!("{} vs {} µs", num(t1_p50), num(f_p50)),
            pass: t1_p50 <= f_p50 + 15.0,
        },
    ];
    for p in [4, 16, 64] {
        let per = r.median(&format!("T2@{p} records/fsync"))?;
        let target = format!("T2@{p} records/fsync ≥ P/3");
        out.push(ratio(&target, per, p as f64, "P", 1.0 / 3.0, false, "records"));
        // Round by round (rounds are interleaved), so a drift of the disk between rounds does
        // not count against the store: the worst round's ratio is reported.
        let fsyncs = &r.row(&format!("T2@{p} fsyncs/s"))?.vals;
        let floors = &r.row("F_sync ops/s")?.vals;
        let (worst, floor) = fsyncs
            .iter()
            .zip(floors)
            .map(|(&a, &b)| (a, b))
            .max_by(|x, y| (x.0 / x.1).total_cmp(&(y.0 / y.1)))
            .unwrap_or((f64::NAN, f64::NAN));
        let target = format!("T2@{p} fsyncs/s ≤ F_sync ops/s (worst round vs its F_sync)");
        out.push(ratio(&target, worst, floor, "F_sync", 1.0, true, "/s"));
    }
    let t2_64 = r.median("T2@64 ops/s")?;
    let t3 = r.median("T3 push_batch 256×4 KiB")?;
    let t6 = r.median("T6 roll max")?;
    let redb = r.median("redb T2@16 ops/s")?;
    out.extend([
        ratio("T2@64 ≥ 2.5 × F_sync ops/s", t2_64, f_ops, "F_sync", 2.5, false, "ops/s"),
        ratio("T3 ≥ 0.6 × B_dur", t3, b_dur, "B_dur", 0.6, false, "MiB/s"),
        ratio("T4 ≥ 2,000,000 msgs/s", r.median("T4 push None")?, 2e6, "2 M", 1.0, false, "/s"),
        ratio(
            "T5 cycle ≥ 1,000,000 msgs/s",
            r.median("T5 push+try_pop+ack")?,
            1e6,
            "1 M",
            1.0,
            false,
            "/s",
        ),
        ratio(
            "T5 batch ≥ 1,000,000 msgs/s",
            r.median("T5 batch 64 cycle")?,
            1e6,
            "1 M",
            1.0,
            false,
            "/s",
        ),
        ratio(
            "T5 large pops ≥ 2.5 GB/s",
            r.median("T5 pop 64 KiB")?,
            2.5,
            "2.5 GB/s",
            1.0,
            false,
            "GB/s",
        ),
        ratio("T6 roll max ≤ 2 × F_sync p99", t6, f_p99, "F_sync p99", 2.0, true, "µs"),
        ratio("T2@16 ≥ 6 × redb@16", r.median("T2@16 ops/s")?, redb, "redb", 6.0, false, "ops/s"),
        ratio(
            "T8 Worker ≥ 0.7 × raw cycle, None",
            r.median("T8 Worker ×4, None")?,
            r.median("T8 raw 4 consumers, None")?,
            "raw",
            0.7,
            false,
            "msgs/s",
        ),
        ratio(
            "T8 Worker ≥ 0.7 × raw cycle, Immediate",
            r.median("T8 Worker ×4, Immediate")?,
            r.median("T8 raw 4 consumers, Immediate")?,
            "raw",
            0.7,
            false,
            "msgs/s",
        ),
        ratio(
            "T8 Worker, None, vs T5 one-thread cycle (info)",
            r.median("T8 Worker ×4, None")?,
            r.median("T5 push+try_pop+ack")?,
            "T5",
            0.0,
            false,
            "msgs/s",
        ),
        // Information, no bound: what writing each delivery record before the hand-out costs.
        ratio(
            "T5 / T7: cycle with deliveries recorded first (info)",
            r.median("T5 push+try_pop+ack")?,
            r.median("T7 cycle, deliveries staged")?,
            "T7",
            0.0,
            false,
            "msgs/s",
        ),
    ]);
    for (name, target, bound) in [
        ("T9@1 None", "T9@1 checkpoints at the default triggers ≥ 0.9 × off (None)", 0.9),
        ("T9@4 None", "T9@4 checkpoints at the default triggers ≥ 0.9 × off (None)", 0.9),
        (
            "T9@16 Immediate, every 1/64 segment",
            "T9@16 Immediate, checkpoints 64 × as often as by default, vs off (info)",
            0.0,
        ),
    ] {
        // The median of the rounds' ratios: each round's on and off runs were interleaved.
        let x = r.median(&format!("{name}, on / off"))?;
        let on = r.median(&format!("{name}, checkpoints on"))?;
        let off = r.median(&format!("{name}, checkpoints off"))?;
        out.push(Check {
            target: target.into(),
            ratio: format!("{x:.3} × off"),
            detail: format!(
                "{} vs {} msgs/s (medians; ratio: median of the rounds)",
                num(on),
                num(off)
            ),
            pass: x >= bound,
        });
    }
    Ok(out)
}

fn main() -> BoxResult<()> {
    let cfg = Cfg::from_env()?;
    std::fs::create_dir_all(&cfg.dir)?;
    let (fs, in_memory) = file_system(&cfg.dir);
    if in_memory {
        eprintln!("warning: {fs} is in memory: the durable numbers and floors mean nothing");
    }
    let started = Instant::now();
    let mut r = Report::default();
    // Rounds run round-robin over every measurement, so a drift of the disk's speed during the
    // run (common on shared cloud disks) touches the floors and wharf alike.
    let bw = b_dur_file(&cfg)?;
    let mut all = measures(&cfg, &bw);
    // `WHARF_BENCH_ONLY=T5,T7` runs only the measurements whose names start with one of these
    // (no targets are judged then).
    let only: Vec<String> = std::env::var("WHARF_BENCH_ONLY")
        .map(|v| v.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if !only.is_empty() {
        all.retain(|(name, _)| only.iter().any(|p| name.starts_with(p.as_str())));
    }
    for round in 1..=ROUNDS {
        for (name, run) in &mut all {
            eprintln!("round {round}/{ROUNDS}: {name}");
            r.record_all(run()?);
        }
    }
    drop(all);
    drop(bw);

    let mode = if cfg.quick { "quick" } else { "full" };
    println!();
    println!(
        "wharf throughput: {mode} run, {ROUNDS} rounds of {:.2} s, {} CPUs, {fs}, took {:.0} s",
        cfg.secs.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, usize::from),
        started.elapsed().as_secs_f64(),
    );
    println!();
    r.print();
    println!();
    if !only.is_empty() {
        return Ok(());
    }
    println!("| target | measured ratio | from | result |");
    println!("|---|---:|---|---|");
    for c in checks(&r)? {
        let result = if c.pass { "PASS" } else { "MISS" };
        println!("| {} | {} | {} | {result} |", c.target, c.ratio, c.detail);
    }
    let sparse = r.median("B_dur fallocated (info)")?;
    let t3 = r.median("T3 push_batch 256×4 KiB")?;
    println!();
    println!(
        "Info: T3 / B_dur fallocated = {:.2} (the floor for appending to new preallocated blocks).",
        t3 / sparse
    );
    Ok(())
}
