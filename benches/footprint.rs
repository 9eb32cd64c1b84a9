//! Memory, recovery time and disk footprint (issue 5's measurements). Every store runs with
//! the default checkpoint triggers (a checkpoint every segment's worth of log, and every 30 s)
//! unless a row says otherwise; each reopen is timed in a fresh child process, so that its
//! resident memory is its own:
//!
//! - **RSS per unsettled message**: N unsettled 128 B messages pushed into one queue; the
//!   growth of the anonymous resident memory (`RssAnon`: heap, not the mapped segment pages,
//!   which belong to the page cache) over an empty open store, after the pushes and after a
//!   reopen in a new process, divided by N.
//! - **(a) reopen after history**: N messages pushed in batches of 1,000 and popped as they
//!   come; one in every N / 1,000 is left unsettled (in turn leased and never acked, nacked
//!   with a delay of a day, or dead-lettered), the rest are acked: 1,000 stragglers spread
//!   over the whole history. Closed; the time `Wharf::open` takes in a new process. The
//!   checkpointer relocates the stragglers into `state.redb` so that their segments go, and
//!   the reopen replays only the log after the last checkpoint. For comparison (info), the
//!   same with checkpoints disabled, where the stragglers pin the whole log.
//! - **(b) reopen of a backlog**: N unsettled messages; closed; the time of `Wharf::open`
//!   (a backlog stays in the log: the whole of it is replayed).
//! - **(c) reopen after a crash with a full 64 MiB tail**: a child pushes and acks 10,000
//!   messages, takes a checkpoint, then hands 62.6 MiB of pushes to the OS after it, unsynced
//!   (just under the 64 MiB that would make the next checkpoint due), and aborts; the time of
//!   the next `Wharf::open`. Recovery replays every segment still there from its start, the
//!   one holding the checkpoint's position included; so (info) the same with 260,000 messages
//!   before the checkpoint, which then falls near the end of its segment: the worst case, two
//!   segments replayed.
//! - **(2) disk after the straggler workload**: 1 GiB of 64 KiB payloads pushed through one
//!   queue on 64 MiB segments, one message per segment left unsettled (in turn delayed by a
//!   day, dead-lettered, leased and never acked), every other one popped and acked at once;
//!   the segment files, how many hold records, and `state.redb`, against two segments plus
//!   the stragglers' payloads. Measured as the checkpointer thread left it (1 s after the
//!   workload), after one more `Wharf::checkpoint`, and once the store is closed.
//!
//! `cargo bench --bench footprint` uses N = 10,000,000 (up to 2.5 GiB of disk at a time and
//! about a minute on a 2-core VM); `-- --quick` (and a run without `--bench`, as `cargo test --all-targets` does)
//! uses N = 200,000 on 1 MiB segments for (a), and (2) pushes 64 MiB through 4 MiB segments:
//! the same shapes, smaller, and no targets judged. `WHARF_BENCH_DIR` is where the stores go
//! (default: the package root).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{nums, rss, BoxResult};
use wharf::{Delivery, Durability, NackOptions, PushOptions, Wharf};

mod common;

const SMALL: usize = 128;
const BATCH: usize = 1000;
/// Messages left unsettled by (a)'s history, spread evenly over it.
const STRAGGLERS: u64 = 1000;
/// A delay that outlasts any run: a message delayed by it stays put.
const DAY: Duration = Duration::from_secs(86_400);
/// Bytes of a segment file's header; records follow it.
const SEGMENT_HEADER: u64 = 64;

/// Durability `None`: the pushes and acks are what is measured, not the disk's syncs.
fn builder() -> wharf::WharfBuilder {
    Wharf::builder().push_durability(Durability::None).ack_durability(Durability::None)
}

/// `b` with both automatic checkpoint triggers off (`Wharf::checkpoint` still works).
fn no_checkpoints(b: wharf::WharfBuilder) -> wharf::WharfBuilder {
    b.checkpoint_every_bytes(u64::MAX).checkpoint_interval(None)
}

/// CPU time (user + system) this process has used, in ms (10 ms ticks).
fn cpu_ms() -> BoxResult<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised name: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').ok_or("no ) in /proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> BoxResult<u64> { Ok(f.get(i).ok_or("short stat")?.parse()?) };
    // `/proc` counts in USER_HZ, 100 per second on Linux.
    Ok((ticks(11)? + ticks(12)?) as f64 * 10.0)
}

/// What a store directory takes on disk.
#[derive(Default, Clone, Copy)]
struct Disk {
    /// Segment files (spares made ahead of time included).
    files: usize,
    /// Of those, the ones holding at least one record.
    used: usize,
    /// Bytes of all segment files, and of those holding records.
    log_bytes: u64,
    used_bytes: u64,
    /// Bytes of `state.redb` (0 if there is none).
    state_bytes: u64,
}

fn disk(dir: &Path) -> BoxResult<Disk> {
    let mut d = Disk::default();
    for e in std::fs::read_dir(dir.join("log"))? {
        let path = e?.path();
        if path.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        // A spare is all zeros past its header; a used segment starts with a record.
        let mut first = [0u8; 64];
        let n = file.read_at(&mut first, SEGMENT_HEADER)?;
        d.files += 1;
        d.log_bytes += len;
        if first[..n].iter().any(|&b| b != 0) {
            d.used += 1;
            d.used_bytes += len;
        }
    }
    d.state_bytes = std::fs::metadata(dir.join("state.redb")).map_or(0, |m| m.len());
    Ok(d)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Bytes in KiB below 10 MiB, else in MiB.
fn size(bytes: u64) -> String {
    if bytes < 10 << 20 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", mib(bytes))
    }
}

/// Pops every ready message of `q` (in batches), handing each to `f`.
fn drain(q: &wharf::Queue, mut f: impl FnMut(Delivery) -> wharf::Result<()>) -> BoxResult<()> {
    loop {
        let got = q.pop_batch(BATCH, Duration::ZERO)?;
        if got.is_empty() {
            return Ok(());
        }
        for d in got {
            f(d)?;
        }
    }
}

/// (a)'s history: `n` messages pushed in batches of 1,000 and popped as they come; every
/// `n / STRAGGLERS`-th popped is left unsettled, in turn leased and never acked, nacked with a
/// delay of a day, or dead-lettered; the rest are acked. Returns the seconds it took.
fn fill_history(dir: &Path, seg: u64, n: u64, checkpoints: bool) -> BoxResult<f64> {
    let t = Instant::now();
    // Leases outlast the run: a held straggler stays in flight until the store closes.
    let b = builder().segment_bytes(seg).visibility_timeout(DAY);
    let w = if checkpoints { b } else { no_checkpoints(b) }.open(dir)?;
    let q = w.queue("q")?;
    let every = (n / STRAGGLERS).max(1);
    let batch = vec![[0x42u8; SMALL]; BATCH];
    let mut held = Vec::new();
    let (mut pushed, mut popped, mut left) = (0u64, 0u64, 0u64);
    while pushed < n {
        let k = (n - pushed).min(BATCH as u64) as usize;
        q.push_batch(&batch[..k])?;
        pushed += k as u64;
        drain(&q, |d| {
            popped += 1;
            if popped % every != 0 {
                return d.ack();
            }
            left += 1;
            match left % 3 {
                0 => {
                    held.push(d);
                    Ok(())
                }
                1 => d.nack_with(NackOptions::new().delay(DAY)),
                _ => d.dead_letter("straggler"),
            }
        })?;
    }
    drop(q);
    // Closed with the leased stragglers still in flight, as a process that stops mid-work.
    w.close()?;
    drop(held);
    Ok(t.elapsed().as_secs_f64())
}

/// Child: opens the store and prints `open_ms rss_bytes messages segments records cpu_ms`
/// (messages counted over every queue; segments read and records replayed by recovery; the
/// CPU time of the whole process during the open, the background threads' included: on a
/// shared machine, wall time well above it means the open waited for a CPU or the disk).
fn child_open(dir: &Path, seg: u64) -> BoxResult<()> {
    let before = rss()?;
    let cpu = cpu_ms()?;
    let t = Instant::now();
    let w = builder().segment_bytes(seg).open(dir)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let cpu = cpu_ms()? - cpu;
    let after = rss()?;
    let mut messages = 0;
    for name in w.queue_names() {
        let d = w.queue(&name)?.depth()?;
        messages += d.ready + d.delayed + d.in_flight;
    }
    let r = w.recovery_report();
    let rss = after.saturating_sub(before);
    println!("{ms} {rss} {messages} {} {} {cpu}", r.segments, r.records);
    w.close()?;
    Ok(())
}

/// Child: an empty store's resident set, then after pushing `n` unsettled messages; prints
/// `rss_empty rss_full`.
fn child_push(dir: &Path, n: u64) -> BoxResult<()> {
    let w = builder().open(dir)?;
    let q = w.queue("q")?;
    let empty = rss()?;
    let batch = vec![[0x42u8; SMALL]; BATCH];
    let mut pushed = 0;
    while pushed < n {
        let k = (n - pushed).min(BATCH as u64) as usize;
        q.push_batch(&batch[..k])?;
        pushed += k as u64;
    }
    w.sync()?;
    println!("{empty} {}", rss()?);
    w.close()?;
    Ok(())
}

/// Child: `history` thousand messages pushed and acked and a checkpoint; then 400,000 unsynced
/// pushes after it (62.6 MiB of log: 128 B payloads take 164 B records; the next checkpoint
/// would be due at 64 MiB), handed to the OS; then it aborts.
fn child_crash(dir: &Path, history: u64) -> BoxResult<()> {
    let w = builder().segment_bytes(64 << 20).open(dir)?;
    let q = w.queue("q")?;
    let batch = vec![[0x42u8; SMALL]; BATCH];
    for _ in 0..history {
        q.push_batch(&batch)?;
        drain(&q, Delivery::ack)?;
    }
    w.checkpoint()?;
    for _ in 0..400 {
        q.push_batch(&batch)?;
    }
    // `Durability::None` hands records to the OS within 5 ms, unless the background thread is
    // busy making the next segment: give the whole tail time to get there.
    std::thread::sleep(Duration::from_millis(300));
    std::process::abort();
}

/// Child: a store with `n` empty queues, reopened; prints the resident set each queue adds
/// (its index structures, config, counters, condvar and catalog entry), in bytes.
fn child_queues(dir: &Path, n: usize) -> BoxResult<()> {
    {
        let w = builder().open(dir)?;
        for i in 0..n {
            w.queue(&format!("queue-{i:06}"))?;
        }
        w.close()?;
    }
    let empty = tempfile::tempdir()?;
    let w0 = builder().open(empty.path())?;
    let base = rss()?;
    drop(w0);
    let before = rss()?;
    let w = builder().open(dir)?;
    let handles: Vec<wharf::Queue> =
        (0..n).map(|i| w.queue(&format!("queue-{i:06}"))).collect::<Result<_, _>>()?;
    let after = rss()?;
    drop(handles);
    // An empty store's own footprint (buffers, threads) is not the queues'.
    let store = base.saturating_sub(before.min(base));
    println!("{}", after.saturating_sub(before).saturating_sub(store) as f64 / n as f64);
    w.close()?;
    Ok(())
}

/// `common::run_child`: a `crash` child aborts on purpose.
fn run_child(args: &[&str]) -> BoxResult<String> {
    common::run_child(args, args.first() == Some(&"crash"))
}

/// A reopen timed in a child: `[open_ms, rss, messages, segments, records, cpu_ms]`.
fn reopen(dir: &Path, seg: u64) -> BoxResult<Vec<f64>> {
    let d = dir.to_str().ok_or("path")?;
    let v = nums(&run_child(&["open", d, &seg.to_string()])?)?;
    if v.len() != 6 {
        return Err(format!("child open printed {v:?}").into());
    }
    Ok(v)
}

/// (2): what the store's files take after the straggler workload.
struct Straggled {
    stragglers: u64,
    straggler_bytes: u64,
    secs: f64,
    /// As the checkpointer thread left it, after one more `Wharf::checkpoint`, and once the
    /// store is closed (redb grows its file ahead of the pages it uses while it is open).
    auto: Disk,
    after: Disk,
    closed: Disk,
}

/// (2): `total` bytes of `len`-byte payloads pushed through one queue on `seg`-byte segments;
/// the 8th message of each segment's worth is left unsettled (in turn delayed by a day,
/// dead-lettered, leased and never acked), every other one is popped and acked at once.
fn straggler_workload(dir: &Path, seg: u64, total: u64, len: usize) -> BoxResult<Straggled> {
    let t = Instant::now();
    let w = builder().segment_bytes(seg).visibility_timeout(DAY).open(dir)?;
    let q = w.queue("jobs")?;
    // A 64 KiB payload takes a record of its length plus 36 bytes: a segment holds `per_seg`.
    let per_seg = seg / (len as u64 + 64);
    let payload = vec![0x5Au8; len];
    let mut held = Vec::new();
    let (mut stragglers, mut straggler_bytes) = (0u64, 0u64);
    for i in 0..total / len as u64 {
        if i % per_seg != 7 {
            q.push(&payload)?;
            q.try_pop()?.ok_or("nothing to pop right after a push")?.ack()?;
            continue;
        }
        stragglers += 1;
        straggler_bytes += len as u64;
        match stragglers % 3 {
            0 => {
                q.push_with(&payload, PushOptions::new().delay(DAY))?;
            }
            1 => {
                q.push(&payload)?;
                q.try_pop()?.ok_or("nothing to pop")?.dead_letter("straggler")?;
            }
            _ => {
                q.push(&payload)?;
                held.push(q.try_pop()?.ok_or("nothing to pop")?);
            }
        }
    }
    w.sync()?;
    let secs = t.elapsed().as_secs_f64();
    // Time for a checkpoint that came due at the end to finish.
    std::thread::sleep(Duration::from_secs(1));
    let auto = disk(dir)?;
    w.checkpoint()?;
    let after = disk(dir)?;
    drop(held);
    drop(q);
    w.close()?;
    let closed = disk(dir)?;
    Ok(Straggled { stragglers, straggler_bytes, secs, auto, after, closed })
}

/// `v` (a reopen's figures) and `disk` as a table cell.
fn replayed(v: &[f64], disk: &Disk) -> String {
    format!(
        "CPU {:.0} ms; {:.0} records from {:.0} segments replayed; log {:.0} MiB in {} files, \
         state.redb {}",
        v[5],
        v[4],
        v[3],
        mib(disk.log_bytes),
        disk.files,
        size(disk.state_bytes)
    )
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let dir = PathBuf::from(args.get(2).ok_or("child: no directory")?);
        return match args.get(1).map(String::as_str) {
            Some("open") => child_open(&dir, args.get(3).ok_or("no size")?.parse()?),
            Some("push") => child_push(&dir, args.get(3).ok_or("no n")?.parse()?),
            Some("crash") => child_crash(&dir, args.get(3).ok_or("no history")?.parse()?),
            Some("queues") => child_queues(&dir, args.get(3).ok_or("no n")?.parse()?),
            _ => Err("child: unknown mode".into()),
        };
    }
    let quick = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--quick");
    let n: u64 = if quick { 200_000 } else { 10_000_000 };
    const SEG: u64 = wharf::DEFAULT_SEGMENT_BYTES;
    // Quick runs keep (a) and (2) the same shape at a smaller scale: smaller segments (and so
    // checkpoints, which are due every segment's worth of log by default).
    let seg_a = if quick { 1 << 20 } else { SEG };
    let (seg2, total2) = if quick { (4u64 << 20, 64u64 << 20) } else { (SEG, 1 << 30) };
    let root = common::bench_dir(Path::new("."));
    let tmp = || tempfile::Builder::new().prefix("wharf-footprint-").tempdir_in(&root);
    let started = Instant::now();
    // Targets are judged on full runs only: a quick run's figures are of a smaller store.
    let verdict = |ok: bool| match (quick, ok) {
        (true, _) => "not judged (quick run)",
        (false, true) => "PASS",
        (false, false) => "MISS",
    };

    eprintln!("RSS and (b): {n} unsettled messages");
    let dir = tmp()?;
    let d = dir.path().to_str().ok_or("path")?.to_owned();
    let pushed = nums(&run_child(&["push", &d, &n.to_string()])?)?;
    let disk_b = disk(dir.path())?;
    let b = reopen(dir.path(), SEG)?;
    let (empty, full) = (pushed[0], pushed[1]);
    let rss_push = (full - empty) / n as f64;
    let rss_open = b[1] / n as f64;
    if b[2] as u64 != n {
        return Err(format!("(b) reopen found {} of {n} messages", b[2]).into());
    }
    drop(dir);

    let queues_n: usize = if quick { 1_000 } else { 10_000 };
    eprintln!("RSS per queue: {queues_n} queues");
    let dir = tmp()?;
    let d = dir.path().to_str().ok_or("path")?.to_owned();
    let per_queue = nums(&run_child(&["queues", &d, &queues_n.to_string()])?)?;
    let per_queue = per_queue.first().copied().ok_or("child queues printed nothing")?;
    drop(dir);

    let mut history = Vec::new();
    for checkpoints in [true, false] {
        eprintln!(
            "(a): {n} messages of history, {STRAGGLERS} stragglers, checkpoints {checkpoints}"
        );
        let dir = tmp()?;
        let secs = fill_history(dir.path(), seg_a, n, checkpoints)?;
        let on_disk = disk(dir.path())?;
        let v = reopen(dir.path(), seg_a)?;
        if v[2] as u64 != STRAGGLERS {
            return Err(format!("(a) reopen found {} of {STRAGGLERS} messages", v[2]).into());
        }
        history.push((v, on_disk, secs));
    }

    // (c) with a short history before the checkpoint, and (info) with one that ends near the
    // end of the first segment: recovery replays every segment still there from its start, so
    // the segment holding the checkpoint's position is replayed whole.
    let mut crashes = Vec::new();
    for thousands in [10u64, 260] {
        eprintln!("(c): a crash with a 64 MiB tail after {thousands},000 messages of history");
        let dir = tmp()?;
        let d = dir.path().to_str().ok_or("path")?.to_owned();
        run_child(&["crash", &d, &thousands.to_string()])?;
        let on_disk = disk(dir.path())?;
        crashes.push((thousands, reopen(dir.path(), SEG)?, on_disk));
    }

    eprintln!("(2): {} MiB through {} MiB segments", total2 >> 20, seg2 >> 20);
    let dir = tmp()?;
    let s = straggler_workload(dir.path(), seg2, total2, 64 << 10)?;
    drop(dir);

    println!();
    println!(
        "wharf footprint: {} run, N = {n}, took {:.0} s",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("| measurement | result | target |");
    println!("|---|---:|---|");
    println!(
        "| RssAnon per unsettled 128 B message, after the pushes | {rss_push:.0} B | ≤ 64 B: {} |",
        verdict(rss_push <= 64.0)
    );
    println!(
        "| RssAnon per unsettled 128 B message, after a reopen | {rss_open:.0} B | ≤ 64 B: {} |",
        verdict(rss_open <= 64.0)
    );
    println!(
        "| RssAnon per queue (an empty queue: index, config, counters, catalog entry), \
         {queues_n} queues after a reopen | {per_queue:.0} B | documented |"
    );
    for (i, (v, on_disk, secs)) in history.iter().enumerate() {
        let what = if i == 0 {
            format!(
                "(a) reopen after N pushed and acked on {} MiB segments, {STRAGGLERS} stragglers \
                 spread over them",
                seg_a >> 20
            )
        } else {
            "(a) the same with checkpoints disabled (info)".into()
        };
        let target =
            if i == 0 { format!("< 100 ms: {}", verdict(v[0] < 100.0)) } else { "—".into() };
        println!(
            "| {what} | {:.1} ms ({}; history took {secs:.0} s) | {target} |",
            v[0],
            replayed(v, on_disk)
        );
    }
    println!(
        "| (b) reopen with N unsettled | {:.1} ms ({}) | < 3 s: {} |",
        b[0],
        replayed(&b, &disk_b),
        verdict(b[0] < 3000.0)
    );
    for (i, (thousands, v, on_disk)) in crashes.iter().enumerate() {
        let what = if i == 0 {
            format!(
                "(c) reopen after a crash with a 64 MiB tail past the checkpoint ({:.0} messages; \
                 {thousands},000 acked before the checkpoint)",
                v[2]
            )
        } else {
            format!(
                "(c) the same with {thousands},000 acked before the checkpoint, which falls near \
                 the end of a segment (info)"
            )
        };
        let target =
            if i == 0 { format!("< 500 ms: {}", verdict(v[0] < 500.0)) } else { "—".into() };
        println!("| {what} | {:.1} ms ({}) | {target} |", v[0], replayed(v, on_disk));
    }
    let bound = 2 * seg2 + s.straggler_bytes;
    let show = |x: &Disk| {
        format!(
            "{} of {} segment files hold records ({:.0} MiB; all files {:.0} MiB), state.redb \
             {} ({:.2} × the stragglers' payloads): {:.1} MiB with records",
            x.used,
            x.files,
            mib(x.used_bytes),
            mib(x.log_bytes),
            size(x.state_bytes),
            x.state_bytes as f64 / s.straggler_bytes as f64,
            mib(x.used_bytes + x.state_bytes)
        )
    };
    let ok = |x: &Disk| x.used <= 2 && x.used_bytes + x.state_bytes <= bound;
    println!(
        "| (2) disk after {} MiB of 64 KiB messages through {} MiB segments, {} stragglers ({}), \
         as the checkpointer left it | {} (workload took {:.1} s) | ≤ 2 segments + stragglers = \
         {:.1} MiB: {} |",
        total2 >> 20,
        seg2 >> 20,
        s.stragglers,
        size(s.straggler_bytes),
        show(&s.auto),
        s.secs,
        mib(bound),
        verdict(ok(&s.auto))
    );
    println!(
        "| (2) the same after one more `Wharf::checkpoint` | {} | {} |",
        show(&s.after),
        verdict(ok(&s.after))
    );
    println!(
        "| (2) the same once the store is closed | {} | {} |",
        show(&s.closed),
        verdict(ok(&s.closed))
    );
    Ok(())
}
