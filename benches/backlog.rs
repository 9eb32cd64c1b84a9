//! The targets of issue 16 (a large backlog, an idle store, durable bandwidth, CPU per
//! message), each measured against a baseline of the same run; no target is asserted, the
//! figures are printed as a table.
//!
//! 1. **Reopen + first pop after `kill -9`** with N unsettled 128 B messages in one FIFO queue
//!    (`reopen.rs`): wall and CPU time of `Wharf::open` + `try_pop` in a fresh process,
//!    against the same in `Plain`, a minimal append-only queue (`plain.rs`): open its files,
//!    read its cursor, read and check one record. N = 1 M (100 k quick); 100 M in the long tier.
//! 2. **Heap per unsettled message** (`heap.rs`): the growth of `RssAnon` over N messages of
//!    each kind (plain FIFO, delayed, non-default priority in a mixed queue, leased, keyed),
//!    after the pushes and after a reopen, in bytes per message; the other kinds also as a
//!    ratio to the plain FIFO figure. A plain FIFO backlog of 10 N too, and its heap in all at
//!    N and 10 N (flat past the index window); 100 M in the long tier. And what 10 M delayed
//!    messages cost: measured in the long tier, else extrapolated from N.
//! 3. **Idle footprint on disk** (`disk.rs`): a new store, closed and open-and-idle, and a store
//!    through which 2 GiB of 4 KiB messages were pushed and acked (256 MiB quick), open and
//!    idle and closed; sum of file sizes and allocated blocks, against the 8 MiB target.
//! 4. **Durable bandwidth** (`durable.rs`): single 4 KiB `Immediate` pushes and `push_batch`es
//!    of 100 × 128 B and 100 × 4 KiB, against the fsync floor of a preallocated, already
//!    written file doing the same bytes per `fdatasync`; and, for reference, against the same
//!    loop appending to a fresh `fallocate`d file. Two more shapes pop and ack each call's
//!    messages right after it (`None`), so that segments settle and their files are recycled;
//!    every shape also reports the bytes written to storage per payload byte
//!    (`/proc/self/io`), which shows what zeros written into new segments cost.
//! 5. **CPU per message** (`cpu.rs`): buffered `push_batch` of 100 × 128 B, and push + pop +
//!    ack in batches of 100, durability `None`, against `Plain` doing the same without fsyncs.
//!
//! Rows 4 and 5 run in interleaved rounds (5 of each), row 1 alternates wharf and the baseline
//! over 5 reopens; the table gives medians and, for ratios, the median of the rounds' ratios.
//!
//! Run it with `cargo bench --bench backlog` (a few minutes on a 2-core VM, up to 3 GiB of
//! disk at a time), or `cargo bench --bench backlog -- --quick` (or `WHARF_BENCH_QUICK=1`) for a
//! smoke run of the same shapes, smaller (well under a minute); run without `--bench`, as
//! `cargo test --all-targets` does, it is always quick. `WHARF_BENCH_LONG=1` adds the long
//! tier: row 1 at 100 M messages and row 2's delayed kind at 10 M. It needs about 17 GiB free
//! on the bench disk (a 15.3 GiB wharf log; the baseline's 12.7 GiB file is written after the
//! store is deleted, so the two run one after the other there) and 8 GiB of free memory, and
//! is skipped, with a message, when either is missing; it takes about 10 minutes more.
//!
//! Environment: `WHARF_BENCH_DIR` is where the stores and files go (default: `target/tmp` of
//! this package, `CARGO_TARGET_TMPDIR`; keep it on a real disk, not tmpfs, or the durable
//! rows mean nothing); `WHARF_BENCH_SECS` the length of a timed durable run (default 1 s,
//! 0.15 s quick); `WHARF_BENCH_ONLY=reopen,heap,disk,durable,cpu` runs only the rows named.

mod common;
#[path = "backlog/cpu.rs"]
mod cpu;
#[path = "backlog/disk.rs"]
mod disk;
#[path = "backlog/durable.rs"]
mod durable;
#[path = "backlog/heap.rs"]
mod heap;
#[path = "backlog/plain.rs"]
mod plain;
#[path = "backlog/reopen.rs"]
mod reopen;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{file_system, num, BoxResult, Report};
use tempfile::TempDir;

/// Payload of the small-message rows.
pub(crate) const SMALL: usize = 128;

/// The sizes of a run: the default tier, quick, and whether the long tier is added.
pub(crate) struct Tier {
    pub(crate) quick: bool,
    pub(crate) long: bool,
    pub(crate) dir: PathBuf,
    /// Length of a timed durable run.
    pub(crate) secs: Duration,
    /// Rounds of rows 4 and 5; reopens of row 1 (each of wharf and the baseline).
    pub(crate) rounds: usize,
    pub(crate) reopen_rounds: usize,
    /// Messages of row 1 and row 2.
    pub(crate) backlog: u64,
    /// Bytes pushed and acked by row 3.
    pub(crate) disk_volume: u64,
    /// The floors' files of row 4: the written one (wrapped around), the fallocated one.
    pub(crate) floor_file: u64,
    pub(crate) fallocated_file: u64,
    /// Messages of a row 5 run: pushes, and push + pop + ack cycles.
    pub(crate) cpu_push: u64,
    pub(crate) cpu_cycle: u64,
    /// The rows to run (`WHARF_BENCH_ONLY`); all when empty.
    only: Vec<String>,
}

impl Tier {
    fn from_env() -> BoxResult<Tier> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let flag = |v: &str| std::env::var(v).is_ok_and(|v| !v.is_empty() && v != "0");
        let quick = flag("WHARF_BENCH_QUICK")
            || !args.iter().any(|a| a == "--bench")
            || args.iter().any(|a| a == "--quick");
        let secs = match std::env::var("WHARF_BENCH_SECS") {
            Ok(s) => Duration::from_secs_f64(s.parse()?),
            Err(_) if quick => Duration::from_millis(150),
            Err(_) => Duration::from_secs(1),
        };
        let dir = common::bench_dir(Path::new(env!("CARGO_TARGET_TMPDIR")));
        let big = |full: u64, small: u64| if quick { small } else { full };
        Ok(Tier {
            quick,
            long: flag("WHARF_BENCH_LONG"),
            dir,
            secs,
            rounds: 5,
            reopen_rounds: 5,
            backlog: big(1_000_000, 100_000),
            disk_volume: big(2 << 30, 256 << 20),
            floor_file: big(256 << 20, 32 << 20),
            fallocated_file: big(2 << 30, 256 << 20),
            cpu_push: big(2_000_000, 200_000),
            cpu_cycle: big(1_000_000, 100_000),
            only: std::env::var("WHARF_BENCH_ONLY")
                .map(|v| v.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }

    /// Whether row `name` runs: `WHARF_BENCH_ONLY=cpu,disk` runs only those rows.
    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    pub(crate) fn tempdir(&self) -> BoxResult<TempDir> {
        Ok(tempfile::Builder::new().prefix("wharf-backlog-").tempdir_in(&self.dir)?)
    }
}

/// Calls `push(i, batch)` with `n` messages of 128 B in batches of 1,000 (the last one shorter),
/// `i` counting the batches.
pub(crate) fn in_batches(
    n: u64,
    mut push: impl FnMut(u64, &[[u8; SMALL]]) -> BoxResult<()>,
) -> BoxResult<()> {
    let batch = vec![[0x42u8; SMALL]; 1000];
    let (mut pushed, mut i) = (0u64, 0u64);
    while pushed < n {
        let k = (n - pushed).min(batch.len() as u64) as usize;
        push(i, &batch[..k])?;
        pushed += k as u64;
        i += 1;
    }
    Ok(())
}

/// `n` as the rows name it: `1M`, `100k`.
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// Whether the long tier fits: free disk under `dir` and free memory; why not, if it does not.
fn long_tier_room(dir: &Path, n: u64) -> BoxResult<Option<String>> {
    let st = rustix::fs::statvfs(dir)?;
    let free = st.f_bavail * st.f_frsize;
    // The wharf log and its spares; the baseline's smaller file comes after it is deleted.
    let disk = n * reopen::WHARF_RECORD + (2 << 30);
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let avail_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .ok_or("no MemAvailable in /proc/meminfo")?
        .trim()
        .parse()?;
    // The index of `n` messages, about 50 B each, twice over for a margin.
    let mem = n * 80;
    Ok(if free < disk {
        Some(format!(
            "{:.1} GiB free under {}, {:.1} GiB needed",
            gib(free),
            dir.display(),
            gib(disk)
        ))
    } else if avail_kb * 1024 < mem {
        Some(format!(
            "{:.1} GiB of memory available, {:.1} GiB needed",
            gib(avail_kb * 1024),
            gib(mem)
        ))
    } else {
        None
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

fn child(args: &[String]) -> BoxResult<()> {
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("child: missing argument");
    let path = |i: usize| arg(i).map(Path::new);
    match arg(0)? {
        "fill" => reopen::child_fill(arg(1)?, path(2)?, arg(3)?.parse()?),
        "open" => reopen::child_open(arg(1)?, path(2)?),
        "heap" => heap::child_push(arg(1)?, path(2)?, arg(3)?.parse()?),
        "heap-open" => heap::child_open(path(1)?),
        other => Err(format!("child: unknown mode {other:?}").into()),
    }
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let tier = Tier::from_env()?;
    std::fs::create_dir_all(&tier.dir)?;
    let (fs, in_memory) = file_system(&tier.dir);
    if in_memory {
        eprintln!("warning: {fs} is in memory: the durable rows and floors mean nothing");
    }
    let started = Instant::now();
    let mut r = Report::default();
    let n = tier.backlog;
    let reopen_name = format!("reopen {}", count(n));
    if tier.runs("reopen") {
        reopen::measure(&mut r, &tier, &reopen_name, n)?;
    }
    if tier.runs("heap") {
        heap::measure(&mut r, &tier, "heap", &heap::KINDS, n)?;
        // A plain FIFO backlog ten times as long: past the index window it should cost the same.
        heap::measure(&mut r, &tier, "heap 10x", &["fifo"], 10 * n)?;
    }
    if tier.runs("disk") {
        disk::measure(&mut r, &tier, tier.disk_volume)?;
    }
    let written = if tier.runs("durable") { Some(durable::Written::new(&tier)?) } else { None };
    let rounds = if written.is_some() || tier.runs("cpu") { tier.rounds } else { 0 };
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        if let Some(written) = &written {
            durable::round(&mut r, &tier, written)?;
        }
        if tier.runs("cpu") {
            cpu::round(&mut r, &tier, round)?;
        }
    }
    drop(written);
    let mut long = None;
    if tier.long {
        let n = 100_000_000;
        match long_tier_room(&tier.dir, n)? {
            Some(why) => eprintln!("long tier skipped: {why}"),
            None => {
                let name = format!("reopen {}", count(n));
                if tier.runs("reopen") {
                    reopen::measure_sequential(&mut r, &tier, &name, n)?;
                    long = Some(name);
                }
                if tier.runs("heap") {
                    heap::measure(&mut r, &tier, "heap 10M", &["delayed"], 10_000_000)?;
                    heap::measure(&mut r, &tier, "heap 100M", &["fifo"], n)?;
                }
            }
        }
    }

    println!();
    println!(
        "wharf backlog: {} run{}, {} CPUs, {fs}, took {:.0} s",
        if tier.quick { "quick" } else { "default" },
        if long.is_some() { " with the long tier" } else { "" },
        std::thread::available_parallelism().map_or(0, usize::from),
        started.elapsed().as_secs_f64(),
    );
    println!();
    print_table(&r, &tier, &reopen_name, long.as_deref())?;
    println!();
    println!("Every metric (medians of rounds, min–max):");
    println!();
    r.print();
    Ok(())
}

/// `median (min–max)` of a ratio row.
fn ratio(r: &Report, label: &str) -> BoxResult<String> {
    let row = r.row(label)?;
    if row.vals.len() == 1 {
        return Ok(format!("{} ×", num(row.median())));
    }
    Ok(format!("{} × ({}–{})", num(row.median()), num(row.min()), num(row.max())))
}

fn print_table(r: &Report, tier: &Tier, reopen_name: &str, long: Option<&str>) -> BoxResult<()> {
    println!("| row | wharf | baseline | wharf ÷ baseline | issue 16: today |");
    println!("|---|---|---|---|---|");
    if tier.runs("reopen") {
        print_reopen(r, [(reopen_name, "307 ms at 1M")].into_iter().chain(long.map(|l| (l, ""))))?;
    }
    if tier.runs("heap") {
        print_heap(r, tier)?;
    }
    if tier.runs("disk") {
        print_disk(r, tier)?;
    }
    if tier.runs("durable") {
        print_durable(r)?;
    }
    if tier.runs("cpu") {
        print_cpu(r)?;
    }
    Ok(())
}

fn print_reopen<'a>(r: &Report, rows: impl Iterator<Item = (&'a str, &'a str)>) -> BoxResult<()> {
    let m = |label: &str| r.median(label);
    for (name, today) in rows {
        println!(
            "| 1. {name}: `open` + first pop after `kill -9` (wall; CPU) | {} ms; CPU {} ms \
             (open alone {} ms) | minimal queue: {} ms; CPU {} ms | {} (CPU {}) | {today} |",
            num(m(&format!("{name} wharf ms"))?),
            num(m(&format!("{name} wharf CPU ms"))?),
            num(m(&format!("{name} wharf open ms"))?),
            num(m(&format!("{name} plain ms"))?),
            num(m(&format!("{name} plain CPU ms"))?),
            ratio(r, &format!("{name} ratio"))?,
            ratio(r, &format!("{name} CPU ratio"))?,
        );
    }
    Ok(())
}

fn print_heap(r: &Report, tier: &Tier) -> BoxResult<()> {
    let m = |label: &str| r.median(label);
    let fifo = (m("heap fifo push")?, m("heap fifo reopen")?);
    for kind in heap::KINDS {
        let (push, reopen) = (m(&format!("heap {kind} push"))?, m(&format!("heap {kind} reopen"))?);
        let (base, ratios) = if kind == "fifo" {
            ("—".to_owned(), "—".to_owned())
        } else {
            (
                format!("plain FIFO: {} / {} B", num(fifo.0), num(fifo.1)),
                format!("{} / {} ×", num(push / fifo.0), num(reopen / fifo.1)),
            )
        };
        let today = if kind == "fifo" { "50–66 B/msg" } else { "" };
        println!(
            "| 2. heap per unsettled message, {kind}, {}: after the pushes / after a reopen | \
             {} / {} B | {base} | {ratios} | {today} |",
            count(tier.backlog),
            num(push),
            num(reopen)
        );
    }
    let delayed_10m = if r.row("heap 10M delayed push").is_ok() {
        format!(
            "{} MiB (measured at 10M: {} B/msg)",
            num(m("heap 10M delayed push")? * 1e7 / f64::from(1u32 << 20)),
            num(m("heap 10M delayed push")?)
        )
    } else {
        format!(
            "{} MiB (extrapolated from {}: 10M × {} B/msg)",
            num(m("heap delayed push")? * 1e7 / f64::from(1u32 << 20)),
            count(tier.backlog),
            num(m("heap delayed push")?)
        )
    };
    println!("| 2. heap of 10M delayed messages | {delayed_10m} | | | |");
    let mib = |per_msg: f64, n: u64| num(per_msg * n as f64 / f64::from(1u32 << 20));
    let total = |label: &str, n: u64| -> BoxResult<String> {
        let (push, reopen) =
            (m(&format!("{label} fifo push"))?, m(&format!("{label} fifo reopen"))?);
        Ok(format!("{} / {} MiB", mib(push, n), mib(reopen, n)))
    };
    println!(
        "| 2. heap of a plain FIFO backlog, in all, after the pushes / after a reopen: {} · {} |          {} · {} | | | target: < 128 MiB at 100M |",
        count(tier.backlog),
        count(10 * tier.backlog),
        total("heap", tier.backlog)?,
        total("heap 10x", 10 * tier.backlog)?
    );
    if r.row("heap 100M fifo push").is_ok() {
        println!(
            "| 2. heap of 100M plain FIFO messages | {} | | | < 128 MiB |",
            total("heap 100M", 100_000_000)?
        );
    }
    Ok(())
}

fn print_disk(r: &Report, tier: &Tier) -> BoxResult<()> {
    let m = |label: &str| r.median(label);
    for (what, today) in [
        ("new, closed", ""),
        ("new, open and idle", "192 MiB"),
        ("used, open and idle", ""),
        ("used, closed", ""),
    ] {
        let used = if what.starts_with("used") {
            format!(", after {} MiB of 4 KiB messages pushed and acked", tier.disk_volume >> 20)
        } else {
            String::new()
        };
        let (size, alloc) =
            (m(&format!("disk {what} size"))?, m(&format!("disk {what} allocated"))?);
        println!(
            "| 3. disk, {what}{used}: file sizes / allocated | {} / {} MiB | target 8 MiB | \
             {} / {} × | {today} |",
            num(size),
            num(alloc),
            num(size / 8.0),
            num(alloc / 8.0)
        );
    }
    Ok(())
}

fn print_durable(r: &Report) -> BoxResult<()> {
    let m = |label: &str| r.median(label);
    let today = ["0.60 ×", "0.55 ×", "0.50 ×", "—", "—"];
    for (shape, today) in durable::SHAPES.iter().zip(today) {
        let name = shape.name;
        let mib = |msgs: f64| msgs * (shape.len as f64) / f64::from(1u32 << 20);
        let (w, f, a) = (
            m(&format!("durable {name} wharf"))?,
            m(&format!("durable {name} floor"))?,
            m(&format!("durable {name} fallocated floor"))?,
        );
        println!(
            "| 4. durable, {name}, `Immediate` | {} msgs/s ({} MiB/s) | written-file floor: {} \
             msgs/s ({} MiB/s); fallocated file: {} msgs/s | {} (to the fallocated file: {}) | \
             {today} |",
            num(w),
            num(mib(w)),
            num(f),
            num(mib(f)),
            num(a),
            ratio(r, &format!("durable {name} ratio"))?,
            ratio(r, &format!("durable {name} ratio to fallocated"))?,
        );
    }
    Ok(())
}

fn print_cpu(r: &Report) -> BoxResult<()> {
    let m = |label: &str| r.median(label);
    for (name, what, today) in [
        ("push", "`push_batch` of 100 × 128 B, `None`", "3.1M msgs/s"),
        ("push+pop+ack", "push + pop + ack in batches of 100, `None`", "628k msgs/s"),
    ] {
        println!(
            "| 5. CPU, {what} | {} ns/msg CPU; {} msgs/s | minimal queue: {} ns/msg; {} msgs/s | \
             {} (CPU per message) | {today} |",
            num(m(&format!("cpu {name} wharf"))?),
            num(m(&format!("cpu {name} wharf rate"))?),
            num(m(&format!("cpu {name} plain"))?),
            num(m(&format!("cpu {name} plain rate"))?),
            ratio(r, &format!("cpu {name} ratio"))?,
        );
    }
    Ok(())
}
