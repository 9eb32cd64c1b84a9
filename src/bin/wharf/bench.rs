//! `wharf bench`: this disk's fsync floor and wharf's throughput on it, side by side: the
//! measurements of `benches/throughput.rs` (F_sync, T1, T2, a batch, the T5 cycle) packaged
//! for users, in a few seconds (`--quick`) or about half a minute.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use wharf::{Durability, Queue, Wharf, WharfBuilder};

use crate::store::{say, short_bytes, CliError};

/// Payload of every measurement, bytes.
const SMALL: usize = 128;
/// Messages of a `push_batch`.
const BATCH: usize = 64;

struct Cfg {
    /// The directory the stores are made in (removed at the end).
    dir: PathBuf,
    secs: Duration,
    segment_bytes: u64,
}

/// The scratch directory, removed when the benchmark ends however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A result: ops/s, and optionally p50/p99 latency in µs and records per fsync.
struct Row {
    what: String,
    ops: f64,
    lat: Option<(f64, f64)>,
    per_fsync: Option<f64>,
}

fn err(what: &str) -> impl Fn(wharf::Error) -> CliError + '_ {
    move |e| CliError::failed(format!("bench ({what}): {e}"))
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::failed(format!("bench ({what}): {e}"))
}

/// `wharf bench [--dir D] [--quick]`.
pub fn bench(dir: Option<PathBuf>, quick: bool) -> Result<ExitCode, CliError> {
    let (base, whence) = match dir {
        Some(d) => (d, "--dir"),
        None => match std::env::var_os("TMPDIR") {
            Some(t) => (PathBuf::from(t), "$TMPDIR"),
            None => (PathBuf::from("."), "the current directory; --dir D measures another disk"),
        },
    };
    if !base.is_dir() {
        return Err(CliError::usage(format!("{}: no such directory", base.display())));
    }
    let scratch = base.join(format!("wharf-bench-{}", std::process::id()));
    std::fs::create_dir(&scratch).map_err(io_err("making the scratch directory"))?;
    let scratch = Scratch(scratch);
    let cfg = Cfg {
        dir: scratch.0.clone(),
        secs: if quick { Duration::from_millis(500) } else { Duration::from_millis(1200) },
        segment_bytes: if quick { 8 << 20 } else { wharf::DEFAULT_SEGMENT_BYTES },
    };
    say(&format!(
        "wharf bench{}: {}",
        if quick { " --quick" } else { "" },
        file_system(&base, whence)
    ))?;
    let rounds = if quick { 1 } else { ROUNDS };
    say(&format!(
        "{SMALL} B messages, {} per measurement, {}, segments of {}, scratch {}",
        humantime(cfg.secs),
        if rounds == 1 { "one round".to_owned() } else { format!("median of {rounds} rounds") },
        short_bytes(cfg.segment_bytes),
        cfg.dir.display()
    ))?;
    let threads: &[usize] = if quick { &[4] } else { &[4, 16] };

    // Rounds interleave the measurements, so that a slow spell of a shared disk spreads over
    // all of them rather than falling on one.
    let mut runs: Vec<Vec<Row>> = Vec::new();
    for _ in 0..rounds {
        let floor = f_sync(&cfg)?;
        let mut rows = vec![Row {
            what: "F_sync: 128 B write + fdatasync (the disk's floor)".into(),
            ops: floor.0,
            lat: Some((floor.1, floor.2)),
            per_fsync: Some(1.0),
        }];
        rows.push(push_one(&cfg)?);
        for &p in threads {
            rows.push(push_many(&cfg, p)?);
        }
        rows.push(push_batch(&cfg)?);
        rows.push(cycle(&cfg)?);
        runs.push(rows);
    }
    let rows = medians(runs);
    print_rows(&rows, rows.first().map_or(0.0, |r| r.ops))?;
    drop(scratch);
    Ok(ExitCode::SUCCESS)
}

/// Rounds of every measurement.
const ROUNDS: usize = 3;

/// Each measurement's round with the median rate.
fn medians(runs: Vec<Vec<Row>>) -> Vec<Row> {
    let mut by_row: Vec<Vec<Row>> = Vec::new();
    for run in runs {
        for (i, row) in run.into_iter().enumerate() {
            match by_row.get_mut(i) {
                Some(v) => v.push(row),
                None => by_row.push(vec![row]),
            }
        }
    }
    by_row
        .into_iter()
        .filter_map(|mut v| {
            v.sort_by(|a, b| a.ops.total_cmp(&b.ops));
            let mid = v.len() / 2;
            v.into_iter().nth(mid)
        })
        .collect()
}

fn print_rows(rows: &[Row], floor: f64) -> Result<(), CliError> {
    say(&format!(
        "{:<58}  {:>12}  {:>9}  {:>17}  {:>10}",
        "measurement", "ops/s", "× F_sync", "p50 / p99 µs", "per fsync"
    ))?;
    for r in rows {
        let lat = r.lat.map_or_else(|| "-".to_owned(), |(a, b)| format!("{a:.0} / {b:.0}"));
        let per = r.per_fsync.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let ratio = if floor > 0.0 { format!("{:.2}", r.ops / floor) } else { "-".into() };
        say(&format!("{:<58}  {:>12.0}  {:>9}  {:>17}  {:>10}", r.what, r.ops, ratio, lat, per))?;
    }
    say("Durable pushes (Immediate) can beat F_sync only by sharing an fdatasync: group commit \
         (threads) and batches. The last row makes nothing durable as it goes (Durability::None): \
         it is the CPU cost of a message's whole life.")
}

fn humantime(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The file system holding `dir`, from the longest matching mount point (Linux), and where
/// the directory came from.
fn file_system(dir: &Path, whence: &str) -> String {
    let shown = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(mp), Some(ty)) = (f.next(), f.next(), f.next()) else { continue };
        if shown.starts_with(mp) && best.as_ref().is_none_or(|(len, _)| mp.len() >= *len) {
            let mem = if ty == "tmpfs" || ty == "ramfs" {
                " — in memory: fsync costs nothing here, use --dir on a real disk"
            } else {
                ""
            };
            best = Some((mp.len(), format!("{ty} on {dev} at {mp}{mem}")));
        }
    }
    let fs = best.map_or_else(|| "unknown file system".to_owned(), |(_, t)| t);
    format!("{} ({whence}), {fs}", shown.display())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    let Some(last) = sorted_ns.len().checked_sub(1) else { return 0.0 };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // an index in range
    let i = ((last as f64) * p).round() as usize;
    sorted_ns.get(i.min(last)).map_or(0.0, |&ns| ns as f64 / 1e3)
}

/// Rate, p50 and p99 (µs) of timed operations.
fn lat(mut ns: Vec<u64>, elapsed: Duration) -> (f64, f64, f64) {
    ns.sort_unstable();
    let rate = ns.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    (rate, percentile_us(&ns, 0.50), percentile_us(&ns, 0.99))
}

/// F_sync: 128 B `pwrite` + `fdatasync` through a zero-filled region (overwrites touch no
/// metadata): the fastest a durable write can return on this disk.
fn f_sync(cfg: &Cfg) -> Result<(f64, f64, f64), CliError> {
    let what = io_err("F_sync");
    let path = cfg.dir.join("fsync.dat");
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(&what)?;
    let region: u64 = 4 << 20;
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < region {
        file.write_all_at(&zeros, off).map_err(&what)?;
        off += zeros.len() as u64;
    }
    file.sync_all().map_err(&what)?;
    let buf = [0xA5u8; SMALL];
    let (mut off, mut ns) = (0u64, Vec::new());
    let start = Instant::now();
    let deadline = start + cfg.secs;
    loop {
        let t = Instant::now();
        if t >= deadline {
            break;
        }
        file.write_all_at(&buf, off).map_err(&what)?;
        file.sync_data().map_err(&what)?;
        ns.push(nanos(t.elapsed()));
        off = (off + SMALL as u64) % region;
    }
    let out = lat(ns, start.elapsed());
    drop(file);
    std::fs::remove_file(&path).map_err(&what)?;
    Ok(out)
}

/// A fresh store in its own directory under the scratch directory, and its one queue.
struct Store {
    wharf: Wharf,
    queue: Queue,
    dir: PathBuf,
}

impl Store {
    fn open(cfg: &Cfg, name: &str, builder: WharfBuilder) -> Result<Store, CliError> {
        let dir = cfg.dir.join(name);
        let wharf = builder.segment_bytes(cfg.segment_bytes).open(&dir).map_err(err(name))?;
        let queue = wharf.queue("bench").map_err(err(name))?;
        Ok(Store { wharf, queue, dir })
    }

    fn close(self) -> Result<(), CliError> {
        drop(self.queue);
        self.wharf.close().map_err(err("close"))?;
        std::fs::remove_dir_all(&self.dir).map_err(io_err("removing a store"))
    }
}

/// T1: one thread, `Immediate` pushes.
fn push_one(cfg: &Cfg) -> Result<Row, CliError> {
    let s = Store::open(cfg, "t1", Wharf::builder())?;
    let payload = [0x42u8; SMALL];
    let (mut ns, before) = (Vec::new(), s.wharf.stats());
    let start = Instant::now();
    let deadline = start + cfg.secs;
    loop {
        let t = Instant::now();
        if t >= deadline {
            break;
        }
        s.queue.push(payload).map_err(err("push"))?;
        ns.push(nanos(t.elapsed()));
    }
    let (ops, p50, p99) = lat(ns, start.elapsed());
    let per = per_fsync(&before, &s.wharf.stats());
    s.close()?;
    Ok(Row {
        what: "push, 1 thread, durable (Immediate)".into(),
        ops,
        lat: Some((p50, p99)),
        per_fsync: per,
    })
}

fn per_fsync(before: &wharf::Stats, after: &wharf::Stats) -> Option<f64> {
    let fsyncs = after.fsyncs.saturating_sub(before.fsyncs);
    (fsyncs > 0).then(|| after.records.saturating_sub(before.records) as f64 / fsyncs as f64)
}

/// T2: `p` threads, `Immediate` pushes: group commit.
fn push_many(cfg: &Cfg, p: usize) -> Result<Row, CliError> {
    let s = Store::open(cfg, &format!("t2-{p}"), Wharf::builder())?;
    let barrier = Barrier::new(p + 1);
    let secs = cfg.secs;
    let (total, elapsed, before, after) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..p)
            .map(|_| {
                let (q, barrier) = (s.queue.clone(), &barrier);
                scope.spawn(move || -> wharf::Result<u64> {
                    barrier.wait();
                    let deadline = Instant::now() + secs;
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        q.push([0x42u8; SMALL])?;
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
            match h.join() {
                Ok(n) => total += n.map_err(err("push"))?,
                Err(_) => return Err(CliError::failed("bench: a producer thread panicked")),
            }
        }
        Ok((total, start.elapsed(), before, s.wharf.stats()))
    })?;
    let per = per_fsync(&before, &after);
    s.close()?;
    Ok(Row {
        what: format!("push, {p} threads, durable (group commit)"),
        ops: total as f64 / elapsed.as_secs_f64().max(1e-9),
        lat: None,
        per_fsync: per,
    })
}

/// `push_batch` of 64, `Immediate`: one fsync per batch at most.
fn push_batch(cfg: &Cfg) -> Result<Row, CliError> {
    let s = Store::open(cfg, "batch", Wharf::builder())?;
    let batch = vec![[0x42u8; SMALL]; BATCH];
    let before = s.wharf.stats();
    let (mut n, start) = (0u64, Instant::now());
    while start.elapsed() < cfg.secs {
        s.queue.push_batch(&batch).map_err(err("push_batch"))?;
        n += BATCH as u64;
    }
    let ops = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let per = per_fsync(&before, &s.wharf.stats());
    s.close()?;
    Ok(Row {
        what: format!("push_batch of {BATCH}, 1 thread, durable"),
        ops,
        lat: None,
        per_fsync: per,
    })
}

/// T5: push, pop and ack one at a time, nothing waited for (`Durability::None`).
fn cycle(cfg: &Cfg) -> Result<Row, CliError> {
    let builder =
        Wharf::builder().push_durability(Durability::None).ack_durability(Durability::None);
    let s = Store::open(cfg, "cycle", builder)?;
    let (mut n, start) = (0u64, Instant::now());
    while start.elapsed() < cfg.secs {
        for _ in 0..256 {
            s.queue.push([0x42u8; SMALL]).map_err(err("push"))?;
            let d =
                s.queue.try_pop().map_err(err("pop"))?.ok_or_else(|| {
                    CliError::failed("bench: pop found nothing right after a push")
                })?;
            black_box(d.payload().first());
            d.ack().map_err(err("ack"))?;
        }
        n += 256;
    }
    let ops = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
    s.close()?;
    Ok(Row {
        what: "push + pop + ack, 1 thread, not durable (None)".into(),
        ops,
        lat: None,
        per_fsync: None,
    })
}
