//! The integration tests: one binary, driving wharf through its public API only.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod ack_many;
mod api;
mod asyncpop;
mod checkpoint;
mod concurrency;
mod corruption;
mod enospc;
mod extremes;
mod fileset;
mod fixtures;
#[cfg(all(target_os = "linux", feature = "testing"))]
mod idle;
mod jobs;
mod jobs_model;
mod leases;
mod operate;
mod poison;
mod quota;
mod recovery;
mod recycle;
mod runs;
mod salvage;
mod sizes;
mod snapshot;
mod soak;
mod state_damage;
mod sweeps;
mod typed;
mod verify;
mod wakeups;
mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use wharf::{Wharf, WharfBuilder};

/// A builder with small segments, so that tests roll and delete segments quickly.
pub fn small() -> WharfBuilder {
    Wharf::builder().segment_bytes(64 << 10)
}

pub use wharf_check::segments;

/// Makes a store in `dir` of ten durable pushes of `payload(i, 100)` into one (active) segment,
/// then flips a bit in the payload of the fifth, under the later durable records; returns the
/// segment and the offset of that payload in it.
pub fn flip_a_bit_under_later_durable_records(dir: &Path) -> (PathBuf, usize) {
    {
        let w = Wharf::open(dir).unwrap();
        let q = w.queue("q").unwrap();
        for i in 0..10 {
            q.push(payload(i, 100)).unwrap(); // each push is synced before the next is staged
        }
    }
    let seg = segments(dir)[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(16).position(|w| w == &payload(4, 100)[..16]).unwrap();
    bytes[at + 20] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    (seg, at)
}

/// Pops everything ready in `queue` without acking it, then releases it all; returns payloads.
pub fn drain_payloads(q: &wharf::Queue) -> Vec<Vec<u8>> {
    let mut held = Vec::new();
    while let Some(d) = q.try_pop().unwrap() {
        held.push(d);
    }
    let out = held.iter().map(|d| d.payload().to_vec()).collect();
    for d in held {
        d.nack().unwrap();
    }
    out
}

/// A distinct, checkable payload for message `i`.
pub fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut p = format!("message-{i:08}-").into_bytes();
    while p.len() < len {
        p.push(b'a' + (p.len() % 26) as u8);
    }
    p.truncate(len.max(17));
    p
}

/// Copies a store directory (its log files) to a new temp dir: the files as a crash would
/// leave them when the store is open. See [`try_copy_store`]; taken again until it holds.
pub fn copy_store(from: &Path) -> tempfile::TempDir {
    copy_store_with(from, &[])
}

/// [`copy_store`], with these files of the store directory itself copied after the log.
pub fn copy_store_with(from: &Path, top: &[&str]) -> tempfile::TempDir {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        if let Some(to) = try_copy_store(from, top) {
            return to;
        }
        assert!(std::time::Instant::now() < deadline, "the store's files kept changing");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The files of a store: those of its log directory but the ones under a temporary name
/// (`*.tmp`: a segment being made, or a deleted one's file kept to be recycled, which an open
/// removes), then the files `top` of the directory itself, each with its inode and bytes.
/// `None` if one was renamed or deleted while they were read.
type Files = Vec<(PathBuf, u64, Vec<u8>)>;

fn read_store(from: &Path, top: &[&str]) -> Option<Files> {
    use std::os::unix::fs::MetadataExt;
    let mut names = Vec::new();
    for e in std::fs::read_dir(from.join("log")).ok()? {
        let name = e.ok()?.file_name().into_string().ok()?;
        if !name.ends_with(".tmp") {
            names.push(Path::new("log").join(name));
        }
    }
    names.sort();
    names.extend(top.iter().map(PathBuf::from));
    names
        .into_iter()
        .map(|name| {
            let mut f = std::fs::File::open(from.join(&name)).ok()?;
            let ino = f.metadata().ok()?.ino();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).ok()?;
            Some((name, ino, bytes))
        })
        .collect()
}

/// Copies the log files of the store in `from` (and the files `top` of the directory itself)
/// to a new temp dir, as they all were at one moment; `None` if they changed while they were
/// read. The store may be open: it appends to its active segment, deletes settled segments or
/// renames their files out of the log and makes new segments of them (recycling), whose bytes
/// then change. The files are read twice, and the copy counts only if both reads found the
/// same files (names and inodes) with the same bytes: each file then held those bytes from
/// its first read to its second, so all of them did at the moment the first pass ended.
pub fn try_copy_store(from: &Path, top: &[&str]) -> Option<tempfile::TempDir> {
    let first = read_store(from, top)?;
    if read_store(from, top)? != first {
        return None;
    }
    let to = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(to.path().join("log")).unwrap();
    for (name, _, bytes) in first {
        std::fs::write(to.path().join(name), bytes).unwrap();
    }
    Some(to)
}

/// A wait long enough that only a bug reaches it.
pub const LONG: Duration = Duration::from_secs(10);

/// The time limit of a whole test that waits on other threads or processes: long enough that
/// only a hang reaches it, even on a loaded machine.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Runs `body` (a whole test) on a thread of its own and returns what it returns; if it does
/// not finish within `limit`, fails naming `test`, so that a hang fails with a message instead
/// of stalling CI (the hung thread is left behind). A panic in `body` is the test's panic.
pub fn with_deadline<T: Send + 'static>(
    limit: Duration,
    test: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(test.to_owned())
        .spawn(move || {
            let _ = tx.send(body());
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let _ = thread.join();
            out
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{test}: did not finish within {limit:?}; hung?")
        }
        // The body panicked (and dropped the sender): its panic is the test's.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body ended without a result"),
        },
    }
}

/// Makes a cleanly closed store look as if its process had died before the close: removes the
/// durable mark the close wrote (`log/mark`), so that edits simulating a torn tail are judged
/// as a crash would leave them rather than as damage below a known durable end.
pub fn as_if_crashed(dir: &Path) {
    std::fs::remove_file(dir.join("log").join("mark")).unwrap();
}

#[test]
#[should_panic(expected = "a_hang: did not finish within 50ms; hung?")]
fn with_deadline_fails_a_hung_test_with_a_message() {
    with_deadline(Duration::from_millis(50), "a_hang", || std::thread::sleep(LONG));
}

#[test]
#[should_panic(expected = "the body's own panic")]
fn with_deadline_passes_on_the_body_s_panic() {
    with_deadline(LONG, "a_panic", || panic!("the body's own panic"));
}
