//! Memory and recovery time (issue 5's measurements), each in a fresh child process so that
//! its resident memory is its own:
//!
//! - **RSS per unsettled message**: N unsettled 128 B messages pushed into one queue; the
//!   growth of the anonymous resident memory (`RssAnon`: heap, not the mapped segment pages,
//!   which belong to the page cache) over an empty open store, after the pushes and after a
//!   reopen in a new process, divided by N.
//! - **(a) reopen after history**: N messages pushed and acked in batches, with 1,000 left
//!   unsettled at the end; closed; the time `Wharf::open` takes in a new process.
//! - **(b) reopen of a backlog**: N unsettled messages; closed; the time of `Wharf::open`.
//! - **(c) reopen after a crash with a full 64 MiB tail**: a child fills one 64 MiB segment
//!   with unsynced pushes and aborts; the time of the next `Wharf::open`.
//!
//! `cargo bench --bench footprint` uses N = 10,000,000 (several GiB of disk and minutes of
//! pushing); `-- --quick` (and a run without `--bench`, as `cargo test --all-targets` does)
//! uses N = 200,000. `WHARF_BENCH_DIR` is where the stores go (default: the package root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wharf::{Durability, Wharf};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SMALL: usize = 128;
const BATCH: usize = 1000;

fn builder() -> wharf::WharfBuilder {
    Wharf::builder().push_durability(Durability::None).ack_durability(Durability::None)
}

/// The anonymous resident memory of this process in bytes (`RssAnon` of /proc/self/status):
/// the heap and stacks, not the pages of mapped segment files (those are the page cache's,
/// shared and reclaimable).
fn rss() -> BoxResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .ok_or("no VmRSS in /proc/self/status")?
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// Pushes `n` messages; with `ack`, acks all but the last `keep`.
fn fill(dir: &Path, n: u64, ack: bool, keep: u64) -> BoxResult<()> {
    let w = builder().open(dir)?;
    let q = w.queue("q")?;
    let batch = vec![[0x42u8; SMALL]; BATCH];
    let (mut pushed, mut acked) = (0u64, 0u64);
    while pushed < n {
        let k = (n - pushed).min(BATCH as u64) as usize;
        q.push_batch(&batch[..k])?;
        pushed += k as u64;
        if ack {
            let allowed = pushed.saturating_sub(keep) - acked;
            for d in q.pop_batch(allowed as usize, Duration::ZERO)? {
                d.ack()?;
                acked += 1;
            }
        }
    }
    w.close()?;
    Ok(())
}

/// Child: opens the store and prints `open_ms rss_bytes messages`.
fn child_open(dir: &Path) -> BoxResult<()> {
    let before = rss()?;
    let t = Instant::now();
    let w = builder().open(dir)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let after = rss()?;
    let d = w.queue("q")?.depth()?;
    println!("{ms} {} {}", after.saturating_sub(before), d.ready + d.delayed + d.in_flight);
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

/// Child: fills most of a 64 MiB segment with unsynced pushes, then aborts.
fn child_crash(dir: &Path) -> BoxResult<()> {
    let w = builder().segment_bytes(64 << 20).open(dir)?;
    let q = w.queue("q")?;
    let batch = vec![[0x42u8; SMALL]; BATCH];
    // 128 B payloads take 164 B records: 400 batches fill 62.6 MiB of the segment.
    for _ in 0..400 {
        q.push_batch(&batch)?;
    }
    std::process::abort();
}

fn run_child(args: &[&str]) -> BoxResult<String> {
    let out = Command::new(std::env::current_exe()?).arg("--child").args(args).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && args.first() != Some(&"crash") {
        return Err(
            format!("child {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into()
        );
    }
    Ok(stdout)
}

fn nums(line: &str) -> BoxResult<Vec<f64>> {
    Ok(line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?)
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let dir = PathBuf::from(args.get(2).ok_or("child: no directory")?);
        return match args.get(1).map(String::as_str) {
            Some("open") => child_open(&dir),
            Some("push") => child_push(&dir, args.get(3).ok_or("no n")?.parse()?),
            Some("crash") => child_crash(&dir),
            _ => Err("child: unknown mode".into()),
        };
    }
    let quick = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--quick");
    let n: u64 = if quick { 200_000 } else { 10_000_000 };
    let root =
        std::env::var_os("WHARF_BENCH_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let tmp = || tempfile::Builder::new().prefix("wharf-footprint-").tempdir_in(&root);
    let started = Instant::now();

    let dir = tmp()?;
    let d = dir.path().to_str().ok_or("path")?.to_owned();
    let pushed = nums(&run_child(&["push", &d, &n.to_string()])?)?;
    let reopened = nums(&run_child(&["open", &d])?)?;
    let (empty, full) = (pushed[0], pushed[1]);
    let rss_push = (full - empty) / n as f64;
    let rss_open = reopened[1] / n as f64;
    let open_b = reopened[0];
    if reopened[2] as u64 != n {
        return Err(format!("reopen found {} of {n} messages", reopened[2]).into());
    }
    drop(dir);

    let dir = tmp()?;
    fill(dir.path(), n, true, 1000)?;
    let d = dir.path().to_str().ok_or("path")?.to_owned();
    let a = nums(&run_child(&["open", &d])?)?;
    if a[2] as u64 != 1000 {
        return Err(format!("(a) reopen found {} of 1000 messages", a[2]).into());
    }
    drop(dir);

    let dir = tmp()?;
    let d = dir.path().to_str().ok_or("path")?.to_owned();
    run_child(&["crash", &d])?;
    let c = nums(&run_child(&["open", &d])?)?;
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
        "| RssAnon per unsettled 128 B message, after the pushes | {rss_push:.0} B | ≤ 64 B |"
    );
    println!("| RssAnon per unsettled 128 B message, after a reopen | {rss_open:.0} B | ≤ 64 B |");
    println!("| (a) reopen after N pushed and acked, 1,000 left | {:.1} ms | < 100 ms |", a[0]);
    println!("| (b) reopen with N unsettled | {open_b:.1} ms | < 3 s |");
    println!(
        "| (c) reopen after a crash with a 64 MiB tail ({:.0} messages) | {:.1} ms | < 500 ms |",
        c[2], c[0]
    );
    Ok(())
}
