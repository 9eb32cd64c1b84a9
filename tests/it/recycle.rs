//! Recycled segments: the file of a settled segment is made into a spare (its inode comes
//! back under a new base). A store that recycled many reopens with exactly its unsettled
//! messages, after a clean close and as a crash leaves it; its files' old records are never
//! read again, and `verify` finds nothing wrong with them.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use wharf::{Durability, Wharf, WharfBuilder};

use crate::{as_if_crashed, drain_payloads, payload};

/// 64 KiB segments whatever the rate: every segment has the size of the one it recycles.
fn tiny() -> WharfBuilder {
    Wharf::builder().segment_bytes(64 << 10).min_segment_bytes(64 << 10)
}

/// The segment files of the store in `dir`: base -> inode.
fn inodes(dir: &Path) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("log")).unwrap() {
        let Ok(e) = e else { continue };
        let name = e.file_name().into_string().unwrap();
        // A file the background thread just deleted or renamed is skipped.
        let base = name.strip_suffix(".seg").and_then(|b| b.parse().ok());
        if let (Some(base), Ok(m)) = (base, e.metadata()) {
            out.insert(base, m.ino());
        }
    }
    out
}

/// Rounds of 50 pushes of 1,000 bytes (about a segment each), all popped, all acked but one
/// every seventh round, which stays unsettled: most segments settle and go, and their files
/// come back as spares. Returns the payloads left unsettled (in push order) and how many
/// segment files were recycled.
fn workload(dir: &Path) -> (Vec<Vec<u8>>, usize) {
    let w = tiny().open(dir).unwrap();
    let q = w.queue("q").unwrap();
    let mut seen: HashMap<u64, u64> = HashMap::new(); // inode -> the first base it had
    let mut recycled = 0;
    let mut kept = Vec::new();
    let mut held = Vec::new();
    let mut i = 0;
    for round in 0..60 {
        let batch: Vec<Vec<u8>> = (i..i + 50).map(|i| payload(i, 1000)).collect();
        i += 50;
        q.push_batch(&batch).unwrap();
        for k in 0..50 {
            let d = q.try_pop().unwrap().unwrap();
            if round % 7 == 3 && k == 10 {
                kept.push(d.payload().to_vec());
                held.push(d);
            } else {
                d.ack_with(Durability::Immediate).unwrap();
            }
        }
        // The background thread deletes (keeps) settled segments and makes spares.
        let deadline = Instant::now() + Duration::from_secs(2);
        while inodes(dir).len() > 6 + held.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (base, ino) in inodes(dir) {
            match seen.get(&ino) {
                Some(&first) if first != base => {
                    recycled += 1;
                    seen.insert(ino, base);
                }
                Some(_) => {}
                None => {
                    seen.insert(ino, base);
                }
            }
        }
    }
    drop(held); // released: ready again (after the reopen, in push order)
    w.close().unwrap();
    (kept, recycled)
}

#[test]
fn a_store_that_recycled_many_segments_reopens_with_exactly_its_unsettled_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, recycled) = workload(dir.path());
    assert!(recycled >= 10, "segment files were recycled: {recycled}");
    assert_eq!(kept.len(), 9);
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(report.is_healthy(), "{report:?}");
    assert_eq!(report.torn_tail_bytes, 0, "a clean close leaves no torn tail");
    let w = tiny().open(dir.path()).unwrap();
    assert_eq!(w.recovery_report().messages, kept.len() as u64);
    let q = w.queue("q").unwrap();
    assert_eq!(drain_payloads(&q), kept, "exactly the unsettled messages, in order");
    // The records of the segments the files were before are never read as this log's.
    w.close().unwrap();
    as_if_crashed(dir.path());
    let w = tiny().open(dir.path()).unwrap();
    assert_eq!(w.recovery_report().messages, kept.len() as u64);
    let q = w.queue("q").unwrap();
    assert_eq!(drain_payloads(&q), kept);
    // And the store goes on recycling after the reopen (another queue: `q`'s are ready).
    let r = w.queue("r").unwrap();
    for n in 0..200 {
        r.push(payload(100_000 + n, 1000)).unwrap();
        r.try_pop().unwrap().unwrap().ack().unwrap();
    }
    w.close().unwrap();
    let w = tiny().open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    assert_eq!(drain_payloads(&q), kept);
    w.close().unwrap();
}

#[test]
fn a_closed_or_quiet_store_keeps_no_file_for_recycling() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recycled) = workload(dir.path());
    assert!(recycled > 0);
    let tmp = |dir: &Path| {
        std::fs::read_dir(dir.join("log"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .count()
    };
    assert_eq!(tmp(dir.path()), 0, "a close deletes the files kept for recycling");
    // Quiet for more than a second: the background thread deletes them too.
    let w = tiny().open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    for n in 0..300 {
        q.push(payload(n, 1000)).unwrap();
        q.try_pop().unwrap().unwrap().ack().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmp(dir.path()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tmp(dir.path()), 0, "a quiet store deletes the files kept for recycling");
    w.close().unwrap();
}

#[test]
fn verify_and_copies_of_a_store_that_recycles_meanwhile_find_nothing_wrong() {
    crate::with_deadline(crate::TEST_LIMIT, "verify_while_recycling", || {
        let dir = tempfile::tempdir().unwrap();
        let w = tiny().open(dir.path()).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let (q, stop) = (w.queue("q").unwrap(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    q.push_batch((n..n + 20).map(|i| payload(i, 1000))).unwrap();
                    for d in q.pop_batch(20, Duration::ZERO).unwrap() {
                        d.ack().unwrap();
                    }
                    n += 20;
                }
                n
            })
        };
        // Segments are deleted, their files renamed and made into new segments while each
        // verify and each copy reads them: neither takes a recycled file's bytes for damage.
        let start = inodes(dir.path());
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut copies = 0;
        while Instant::now() < deadline {
            let report = Wharf::verify(dir.path()).unwrap();
            assert!(report.problems.is_empty(), "{:#?}", report.problems);
            if let Some(copy) = crate::try_copy_store(dir.path(), &["state.redb"]) {
                let r = tiny().open(copy.path()).unwrap();
                assert_eq!(r.queue("q").unwrap().depth().unwrap().in_flight, 0);
                copies += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let pushed = worker.join().unwrap();
        let end = inodes(dir.path());
        assert!(start.keys().all(|b| !end.contains_key(b)), "segments went: {start:?} {end:?}");
        assert!(copies > 0 && pushed > 1_000, "{copies} copies, {pushed} pushes");
        w.close().unwrap();
    });
}
