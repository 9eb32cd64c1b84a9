//! Exhaustive damage sweeps over one fixed store (CRASH-TESTING.md 3.8): every single-bit flip
//! of the used part of a sealed segment and of the active segment, and every truncation of each
//! file kind. Damage must fail the open with `Error::Corrupted` naming the file and the damaged
//! record, or be provably harmless; a delivered payload is never wrong and nothing below the
//! damage is ever lost silently. Only a flip in the last record of the log may be cut as a torn
//! tail (it cannot be told from a torn write).
//!
//! Each case runs on a copy of the store on a tmpfs when there is one (`/dev/shm`, where fsync
//! is nearly free). An open that fails writes nothing, so after it only the damaged byte is put
//! back; after an open that succeeded every file is written out again.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wharf::{Error, Queue, Wharf, WharfBuilder};

use crate::{payload, segments, small};

/// Bytes of a segment header; the first record starts here.
const HEADER: usize = 64;
/// The record kind of a `Seal`.
const SEAL: u8 = 7;
/// The record kind of a `PushEx` (what every push writes).
const PUSH: u8 = 8;
/// Bytes of a `PushEx` record without a dedup key before its payload.
const PUSH_OVERHEAD: usize = 64;

/// A store built once and kept in memory; every case writes its files out again.
struct Fixture {
    /// Every file of `log/`, by name, oldest first (segments, then a spare if there is one).
    files: Vec<(String, Vec<u8>)>,
    /// Payloads pushed to queue `q`, in push order; none was ever popped.
    pushed: Vec<Vec<u8>>,
    /// The first segment: sealed, about 4 KiB used.
    sealed: Seg,
    /// The last segment with records: the log's end, about 4 KiB used.
    active: Seg,
}

/// Where the records of one segment of the fixture lie.
struct Seg {
    /// Index into `Fixture::files`.
    file: usize,
    /// Offset of every record in the file.
    records: Vec<usize>,
    /// One past the last record (the seal, in a sealed segment): the used part is `0..used`.
    used: usize,
}

impl Seg {
    /// The record holding byte `off` of the used part, as `(start, end)`; `None` in the header.
    fn record_of(&self, off: usize) -> Option<(usize, usize)> {
        let i = self.records.iter().rposition(|&r| r <= off)?;
        Some((self.records[i], self.records.get(i + 1).copied().unwrap_or(self.used)))
    }
}

/// Walks the records of a segment image: their offsets, where they end, and whether the last
/// one is a seal. A test-side reading of docs/format.md, independent of the crate.
fn walk(bytes: &[u8]) -> (Vec<usize>, usize, bool) {
    let mut at = HEADER;
    let mut records = Vec::new();
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            return (records, at, false);
        }
        records.push(at);
        let kind = bytes[at + 20];
        at += len;
        if kind == SEAL {
            return (records, at, true);
        }
    }
}

/// A temporary directory on a tmpfs if there is one, else in the default temp dir.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new().prefix("wharf-sweep-").tempdir_in(shm) {
            return t;
        }
    }
    tempfile::tempdir().unwrap()
}

fn push(q: &Queue, pushed: &mut Vec<Vec<u8>>, len: usize) {
    let p = payload(pushed.len(), len);
    q.push(&p).unwrap(); // `Immediate`: synced before the next record is staged
    pushed.push(p);
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

/// Small segments and no checkpoint: the fixture is the log alone (its copies hold no
/// `state.redb`, which a checkpoint would make the log depend on).
fn no_checkpoints() -> wharf::WharfBuilder {
    small().checkpoint_every_bytes(u64::MAX).checkpoint_interval(None)
}

/// Builds the store: segment 0 (64 KiB) holds about 6 KiB of small pushes and is sealed by a
/// payload too large for the rest of it (allowed because the store is reopened with 128 KiB
/// segments, which raises the largest payload); segment 1 holds that payload and is filled up;
/// segment 2 (64 KiB), the log's end, holds about 6 KiB of small pushes, each synced before
/// the next was staged, so that every record but the last is proven durable by a later one.
fn build() -> Fixture {
    let root = scratch();
    let dir = root.path();
    let mut pushed = Vec::new();
    {
        let w = open_retrying(&no_checkpoints(), dir).unwrap();
        let q = w.queue("q").unwrap();
        for i in 0..56 {
            push(&q, &mut pushed, 24 + i % 32);
        }
        w.close().unwrap();
    }
    {
        let w = open_retrying(&no_checkpoints().segment_bytes(128 << 10), dir).unwrap();
        let q = w.queue("q").unwrap();
        push(&q, &mut pushed, 63_000); // more than is left of segment 0: it is sealed
        let second = fs::read(&segments(dir)[1]).unwrap();
        let used = second.iter().rposition(|&b| b != 0).unwrap() + 1;
        let mut room = second.len() - used;
        // Fill segment 1 until 132..=136 bytes are left: room for the next open's epoch and
        // anchor records (28 + 40) and the reserve every segment keeps for a seal and an
        // anchor (24 + 40), but not for a small push (at least 64 + 17) besides them.
        while room >= 213 {
            let len = (room - 200).clamp(17, 30_000);
            push(&q, &mut pushed, len);
            room -= PUSH_OVERHEAD + len;
        }
        w.close().unwrap();
    }
    // Spares made ahead of time hold no record: removing them is as if they were never made, so
    // the next segment is made with 64 KiB (less for recovery to scan per case).
    for spare in &segments(dir)[2..] {
        assert!(fs::read(spare).unwrap()[HEADER..].iter().all(|&b| b == 0));
        fs::remove_file(spare).unwrap();
    }
    {
        let w = open_retrying(&no_checkpoints(), dir).unwrap(); // its epoch record still fits in segment 1
        let q = w.queue("q").unwrap();
        for i in 0..56 {
            push(&q, &mut pushed, 24 + (i * 7) % 32); // the first one rolls the log again
        }
        w.close().unwrap();
    }
    let files: Vec<(String, Vec<u8>)> = segments(dir)
        .iter()
        .map(|p| (p.file_name().unwrap().to_str().unwrap().to_owned(), fs::read(p).unwrap()))
        .collect();
    assert!(files.len() >= 3, "three segments, and maybe a spare: {}", files.len());
    for (_, spare) in &files[3..] {
        assert!(spare[HEADER..].iter().all(|&b| b == 0), "only a spare may follow");
    }
    let seg = |file: usize, sealed: bool| {
        let bytes = &files[file].1;
        let (records, used, is_sealed) = walk(bytes);
        assert_eq!(is_sealed, sealed, "segment {file}");
        assert!(bytes[used..].iter().all(|&b| b == 0), "segment {file}: zeros after the data");
        Seg { file, records, used }
    };
    let sealed = seg(0, true);
    assert!(sealed.used >= 4096 && sealed.used < 7000, "sealed used {}", sealed.used);
    assert_eq!(files[0].1.len(), 64 << 10);
    seg(1, true);
    let active = seg(2, false);
    assert_eq!(files[2].1.len(), 64 << 10);
    assert!(active.used >= 4096 && active.used < 7000, "active used {}", active.used);
    let last = &files[2].1[*active.records.last().unwrap()..active.used];
    assert_eq!(last[20], PUSH);
    assert_eq!(&last[PUSH_OVERHEAD..], pushed.last().unwrap().as_slice(), "last is a push");
    Fixture { files, pushed, sealed, active }
}

/// A copy of the fixture's store in a scratch directory.
struct StoreCopy {
    _root: tempfile::TempDir,
    dir: PathBuf,
}

impl StoreCopy {
    fn new(f: &Fixture) -> StoreCopy {
        let root = scratch();
        let dir = root.path().join("store");
        fs::create_dir_all(dir.join("log")).unwrap();
        let copy = StoreCopy { _root: root, dir };
        copy.reset(f);
        copy
    }

    fn file(&self, f: &Fixture, i: usize) -> PathBuf {
        self.dir.join("log").join(&f.files[i].0)
    }

    fn open_file(&self, f: &Fixture, i: usize) -> File {
        OpenOptions::new().write(true).open(self.file(f, i)).unwrap()
    }

    /// Writes every file of the fixture again and removes any other file of `log/`, and the
    /// state database a case's open made (the fixture's log alone is the whole store: nothing
    /// in it was ever relocated).
    fn reset(&self, f: &Fixture) {
        let _ = fs::remove_file(self.dir.join("state.redb"));
        for e in fs::read_dir(self.dir.join("log")).unwrap() {
            let name = e.unwrap().file_name();
            if !f.files.iter().any(|(n, _)| name == n.as_str()) {
                fs::remove_file(self.dir.join("log").join(name)).unwrap();
            }
        }
        for (i, (_, bytes)) in f.files.iter().enumerate() {
            fs::write(self.file(f, i), bytes).unwrap();
        }
    }

    /// Panics unless the copy holds exactly the fixture's files: failed opens wrote nothing.
    fn assert_pristine(&self, f: &Fixture, after: &str) {
        let names = fs::read_dir(self.dir.join("log")).unwrap().count();
        assert_eq!(names, f.files.len(), "files in log/ after {after}");
        for (i, (name, bytes)) in f.files.iter().enumerate() {
            assert!(fs::read(self.file(f, i)).unwrap() == *bytes, "{name} changed after {after}");
        }
    }
}

/// What opening a damaged copy gave.
#[derive(Debug)]
enum Outcome {
    Corrupted {
        file: PathBuf,
        offset: u64,
    },
    /// Opened; every ready payload, in order, and what recovery cut.
    Opened {
        got: Vec<Vec<u8>>,
        truncated: u64,
        truncated_at: Option<(PathBuf, u64)>,
    },
    /// Any other error, or a panic.
    Failed(String),
}

/// Opens the store in `dir` with the options of `b`. `Locked` is retried: nothing else opens
/// these copies, but while another test of this binary spawns a child process, the child holds
/// a copy of the `LOCK` descriptor of a handle just closed here until it execs.
pub fn open_retrying(b: &WharfBuilder, dir: &Path) -> wharf::Result<Wharf> {
    let started = Instant::now();
    loop {
        match b.clone().open(dir) {
            Err(Error::Locked(_)) if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// Opens the store in `dir`, pops every message (holding all leases), and closes it.
fn open_and_drain(dir: &Path) -> Outcome {
    let run = || match open_retrying(&no_checkpoints(), dir) {
        Err(Error::Corrupted(c)) => Outcome::Corrupted { file: c.file, offset: c.offset },
        Err(e) => Outcome::Failed(format!("open: {e}")),
        Ok(w) => {
            let r = w.recovery_report().clone();
            let q = match w.queue("q") {
                Ok(q) => q,
                Err(e) => return Outcome::Failed(format!("queue: {e}")),
            };
            let (mut got, mut held) = (Vec::new(), Vec::new());
            loop {
                match q.try_pop() {
                    Ok(Some(d)) => {
                        got.push(d.payload().to_vec());
                        held.push(d);
                    }
                    Ok(None) => break,
                    Err(e) => return Outcome::Failed(format!("pop: {e}")),
                }
            }
            if let Err(e) = w.close() {
                return Outcome::Failed(format!("close: {e}"));
            }
            drop(held); // after the close: releasing stages nothing
            Outcome::Opened { got, truncated: r.bytes_truncated, truncated_at: r.truncated_at }
        }
    };
    panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome::Failed(format!("panic: {msg}"))
    })
}

/// What a case must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `Error::Corrupted` naming the damaged file, at this offset (the damaged record's start).
    Corrupted(u64),
    /// Opens with every message but the last; the log is cut at this offset of the file.
    TornTail(u64),
    /// Opens with every message; `cut`: a tail of stray bytes was zeroed at this offset.
    Harmless { cut: Option<u64> },
}

/// Checks an outcome against the invariants and the exact expectation. `Err` describes how it
/// failed.
fn check(out: &Outcome, want: Expect, file: &Path, pushed: &[Vec<u8>]) -> Result<(), String> {
    match (out, want) {
        (Outcome::Corrupted { file: f, offset }, Expect::Corrupted(at)) => {
            if f != file {
                return Err(format!(
                    "corruption reported in {} not {}",
                    f.display(),
                    file.display()
                ));
            }
            if *offset != at {
                return Err(format!("corruption reported at offset {offset}, expected {at}"));
            }
            Ok(())
        }
        (Outcome::Opened { got, truncated, truncated_at }, _) => {
            if let Some(bad) = got.iter().find(|p| !pushed.contains(p)) {
                let head = String::from_utf8_lossy(&bad[..bad.len().min(24)]).into_owned();
                return Err(format!(
                    "PHANTOM payload delivered ({} bytes, {head:?}...)",
                    bad.len()
                ));
            }
            let n = match want {
                Expect::TornTail(_) => pushed.len() - 1,
                _ => pushed.len(),
            };
            if got.as_slice() != &pushed[..n] {
                return Err(format!(
                    "opened with {} of the {} messages expected (silent loss), {want:?}",
                    got.len(),
                    n
                ));
            }
            let cut_at = match want {
                Expect::TornTail(at) => Some(at),
                Expect::Harmless { cut } => cut,
                Expect::Corrupted(at) => {
                    return Err(format!("damage below the durable end (record at {at}) undetected"))
                }
            };
            let seen = truncated_at.as_ref().map(|(f, o)| (f.as_path(), *o));
            if (*truncated > 0) != cut_at.is_some() || seen != cut_at.map(|o| (file, o)) {
                return Err(format!(
                    "cut {truncated} bytes at {seen:?}, expected a cut at {cut_at:?}"
                ));
            }
            Ok(())
        }
        (Outcome::Failed(why), _) => Err(format!("expected {want:?}, got {why}")),
        (other, _) => Err(format!("expected {want:?}, got {other:?}")),
    }
}

/// Collects failures of a sweep and panics at its end with the first few.
#[derive(Default)]
struct Failures {
    count: usize,
    first: Vec<String>,
}

impl Failures {
    fn add(&mut self, case: String, why: String) {
        self.count += 1;
        if self.first.len() < 20 {
            self.first.push(format!("{case}: {why}"));
        }
    }

    fn assert_none(&self, sweep: &str) {
        assert!(
            self.count == 0,
            "{sweep}: {} failing cases; first ones:\n{}",
            self.count,
            self.first.join("\n")
        );
    }
}

/// Whether `WHARF_SWEEP_FULL=1` asks for every bit of every byte of the active segment too.
fn full() -> bool {
    std::env::var_os("WHARF_SWEEP_FULL").is_some_and(|v| v == "1")
}

/// The flips of the used part of `seg`, as `(offset, bit)`: every bit of every byte if
/// `every_bit`. Otherwise (recovery scans the whole preallocated segment per open, which is
/// slow in the debug profile): every bit of the header, of the first and last records and of
/// every 7th byte, and one bit of every other byte (rotating with the offset, so every byte and
/// every bit position of every field is hit).
fn used_flips(seg: &Seg, every_bit: bool) -> Vec<(usize, u8)> {
    let first = seg.records[0]..seg.records[1];
    let last = *seg.records.last().unwrap();
    (0..seg.used)
        .flat_map(|off| {
            let all =
                every_bit || off < HEADER || first.contains(&off) || off >= last || off % 7 == 0;
            let bits = if all { 0..8 } else { (off % 8) as u8..(off % 8) as u8 + 1 };
            bits.map(move |bit| (off, bit))
        })
        .collect()
}

/// Flips each `(offset, bit)` of fixture file `which`, one case at a time on copies of the
/// store (one per core), and checks each outcome against `expect(offset)`. Returns the offsets
/// where a flip was harmless (opened with every message, nothing cut).
fn flip_sweep(
    which: usize,
    flips: &[(usize, u8)],
    expect: impl Fn(usize) -> Expect + Sync,
    name: &str,
) -> BTreeSet<usize> {
    let f = fixture();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let results: Vec<(BTreeSet<usize>, Failures)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let expect = &expect;
                s.spawn(move || {
                    flip_worker(f, which, flips.iter().skip(w).step_by(workers), expect, name)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut harmless = BTreeSet::new();
    let mut failures = Failures::default();
    for (h, fl) in results {
        harmless.extend(h);
        failures.count += fl.count;
        failures.first.extend(fl.first);
    }
    failures.first.truncate(20);
    failures.assert_none(name);
    harmless
}

fn flip_worker<'a>(
    f: &Fixture,
    which: usize,
    flips: impl Iterator<Item = &'a (usize, u8)>,
    expect: &impl Fn(usize) -> Expect,
    name: &str,
) -> (BTreeSet<usize>, Failures) {
    let copy = StoreCopy::new(f);
    let path = copy.file(f, which);
    let original = &f.files[which].1;
    let mut file = copy.open_file(f, which);
    let (mut cases, mut harmless, mut failures) = (0, BTreeSet::new(), Failures::default());
    for &(off, bit) in flips {
        cases += 1;
        file.write_all_at(&[original[off] ^ (1 << bit)], off as u64).unwrap();
        let out = open_and_drain(&copy.dir);
        if let Err(why) = check(&out, expect(off), &path, &f.pushed) {
            failures.add(format!("{name}: byte {off} bit {bit}"), why);
        }
        match out {
            Outcome::Corrupted { .. } => {
                file.write_all_at(&original[off..=off], off as u64).unwrap();
            }
            Outcome::Opened { truncated, .. } => {
                if truncated == 0 {
                    harmless.insert(off);
                }
                copy.reset(f);
                file = copy.open_file(f, which);
            }
            Outcome::Failed(_) => {
                copy.reset(f);
                file = copy.open_file(f, which);
            }
        }
        if cases % 2048 == 0 {
            copy.assert_pristine(f, &format!("{name} byte {off}"));
        }
    }
    copy.assert_pristine(f, name);
    (harmless, failures)
}

/// What a flip in the used part of a segment must give: corruption at the damaged record (or
/// the header), except in the last record of the log, which is cut as a torn tail.
fn expect_in_used(seg: &Seg, log_end: bool) -> impl Fn(usize) -> Expect + '_ {
    move |off| match seg.record_of(off) {
        None => Expect::Corrupted(0),
        Some((start, end)) if log_end && end == seg.used => Expect::TornTail(start as u64),
        Some((start, _)) => Expect::Corrupted(start as u64),
    }
}

/// Flips past the used part: every bit of the first 32 bytes (where a stray record header
/// would start), and one bit of the first and of the last byte of every 4 KiB page after them.
fn slack_flips(seg: &Seg, len: usize) -> Vec<(usize, u8)> {
    let mut v: Vec<(usize, u8)> =
        (seg.used..seg.used + 32).flat_map(|o| (0..8).map(move |b| (o, b))).collect();
    let page = (seg.used + 32).next_multiple_of(4096);
    v.extend((page..len).step_by(4096).flat_map(|p| [(p, 0), (p + 4095, 7)]));
    v
}

#[test]
fn every_bit_flip_in_the_used_part_of_a_sealed_segment_is_detected() {
    let f = fixture();
    let seg = &f.sealed;
    let started = Instant::now();
    let flips = used_flips(seg, true);
    let harmless = flip_sweep(seg.file, &flips, expect_in_used(seg, false), "sealed");
    // No byte of the used part is ignored by the format: the header (reserved bytes included)
    // is under its CRC, every record byte under the record's CRC, and so is the seal.
    assert_eq!(harmless, BTreeSet::new(), "harmless flips in the sealed segment");
    println!(
        "sealed segment: {} bit flips (every bit) over {} used bytes ({} records), all \
         detected as corruption of the damaged record, in {:.1?}",
        flips.len(),
        seg.used,
        seg.records.len(),
        started.elapsed()
    );
}

#[test]
fn every_bit_flip_in_the_used_part_of_the_active_segment_is_detected_or_a_torn_tail() {
    let f = fixture();
    let seg = &f.active;
    let started = Instant::now();
    let flips = used_flips(seg, full());
    let harmless = flip_sweep(seg.file, &flips, expect_in_used(seg, true), "active");
    assert_eq!(harmless, BTreeSet::new(), "harmless flips in the active segment");
    let last = *seg.records.last().unwrap();
    println!(
        "active segment: {} bit flips ({}) over {} used bytes ({} records); the {} in the last \
         record ({} bytes) cut it as a torn tail, all others detected as corruption, in {:.1?}",
        flips.len(),
        if full() { "all" } else { "sampled; WHARF_SWEEP_FULL=1 for all" },
        seg.used,
        seg.records.len(),
        flips.iter().filter(|&&(o, _)| o >= last).count(),
        seg.used - last,
        started.elapsed()
    );
}

#[test]
fn bit_flips_past_the_data_are_ignored_or_cut_as_a_torn_tail() {
    // The only bytes the format ignores: the preallocated zeros after a seal (never read) and
    // after the last record of the log. A flip there is zeroed as a torn tail when it lies
    // within the segment's unsynced bound (an eighth of it) of the log's end, where the records
    // of a torn tail can be; further on it is left alone (it is not a record at its position,
    // and no write of the log ever reached it). Nothing is lost either way.
    let f = fixture();
    let started = Instant::now();
    let (sealed, active) = (&f.sealed, &f.active);
    let flips = slack_flips(sealed, f.files[sealed.file].1.len());
    let harmless = flip_sweep(sealed.file, &flips, |_| Expect::Harmless { cut: None }, "seal");
    assert_eq!(harmless.len(), flips.iter().map(|f| f.0).collect::<BTreeSet<_>>().len());
    let len = f.files[active.file].1.len();
    let tail = slack_flips(active, len);
    let bound = (len / 8).clamp(4 << 10, 4 << 20);
    let within = |o: usize| o < active.used + bound;
    let cut = |o: usize| within(o).then_some(active.used as u64);
    flip_sweep(active.file, &tail, |o| Expect::Harmless { cut: cut(o) }, "tail");
    assert!(tail.iter().any(|&(o, _)| within(o)) && tail.iter().any(|&(o, _)| !within(o)));
    println!(
        "past the data: {} flips after the seal ignored, {} flips after the log's end cut as a \
         torn tail, in {:.1?}",
        flips.len(),
        tail.len(),
        started.elapsed()
    );
}

/// Lengths to truncate a file to: every one up to `used`, then a few beyond, up to `len`.
fn cut_lengths(used: usize, len: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=used).collect();
    v.extend([used + 1, used + 7, used + 64]);
    v.extend((used.next_multiple_of(4096)..len).step_by(4096).skip(1));
    v.extend([len - 1, len]);
    v.retain(|&l| l <= len);
    v.dedup();
    v
}

/// Truncates fixture file `which` to each length; the open must fail with `Corrupted` naming
/// it, or succeed with every message. Returns (cases, refused, harmless, refused zero-only cuts).
fn truncation_sweep(which: usize, used: usize, name: &str) -> [usize; 4] {
    let f = fixture();
    let copy = StoreCopy::new(f);
    let path = copy.file(f, which);
    let original = &f.files[which].1;
    let len = original.len();
    let mut file = copy.open_file(f, which);
    let (mut counts, mut failures) = ([0; 4], Failures::default());
    for cut in cut_lengths(used, len) {
        counts[0] += 1;
        file.set_len(cut as u64).unwrap();
        let out = open_and_drain(&copy.dir);
        let harmless = Expect::Harmless { cut: None };
        let verdict = match &out {
            _ if cut == len => check(&out, harmless, &path, &f.pushed),
            Outcome::Corrupted { file, .. } if *file == path => {
                counts[1] += 1;
                if cut >= used {
                    counts[3] += 1;
                }
                Ok(())
            }
            Outcome::Opened { .. } => {
                counts[2] += 1;
                check(&out, harmless, &path, &f.pushed)
            }
            other => Err(format!("expected corruption naming the file or no harm, got {other:?}")),
        };
        if let Err(why) = verdict {
            failures.add(format!("{name} cut to {cut} of {len}"), why);
        }
        if matches!(out, Outcome::Corrupted { .. }) {
            file.write_all_at(&original[cut..], cut as u64).unwrap();
        } else {
            copy.reset(f);
            file = copy.open_file(f, which);
        }
    }
    copy.assert_pristine(f, name);
    failures.assert_none(name);
    counts
}

#[test]
fn every_truncation_of_a_segment_is_refused_or_harmless() {
    let f = fixture();
    let started = Instant::now();
    let mut total = 0;
    for (seg, name) in [(&f.sealed, "sealed segment"), (&f.active, "active segment")] {
        let [cases, refused, harmless, zeros_refused] = truncation_sweep(seg.file, seg.used, name);
        total += cases;
        println!(
            "{name}: {cases} truncations (0..={} and beyond, up to {}): {refused} refused as \
             corrupt ({zeros_refused} of them cut only zeros past the data), {harmless} harmless",
            seg.used,
            f.files[seg.file].1.len()
        );
    }
    println!("truncation sweep: {total} cases in {:.1?}", started.elapsed());
}

#[test]
fn the_lock_file_may_be_missing_empty_or_hold_anything() {
    let f = fixture();
    let copy = StoreCopy::new(f);
    let lock = copy.dir.join("LOCK");
    let mut cases = 0;
    // LOCK is empty, so its only truncation is to 0; it is never read, so any content is fine.
    for len in [None, Some(0), Some(1), Some(63), Some(4096)] {
        match len {
            None => {
                let _ = fs::remove_file(&lock);
            }
            Some(n) => {
                fs::write(&lock, (0..n).map(|i| (i * 37 + 1) as u8).collect::<Vec<_>>()).unwrap()
            }
        }
        let out = open_and_drain(&copy.dir);
        check(&out, Expect::Harmless { cut: None }, &lock, &f.pushed)
            .unwrap_or_else(|why| panic!("LOCK of {len:?} bytes: {why}"));
        copy.reset(f);
        cases += 1;
    }
    println!("LOCK file: {cases} cases (absent, empty, 1, 63, 4096 bytes), all harmless");
}
