//! Segments sized to the rate the log grows at: a new or settled store stays small on disk, a
//! burst grows its segments, a record larger than the spares made ahead still fits.

use std::path::Path;
use std::time::{Duration, Instant};

use wharf::{Durability, Wharf};

/// Bytes of the store's files (their lengths: segments are preallocated and written once).
fn disk(dir: &Path) -> u64 {
    let mut total = 0;
    for sub in [dir.to_path_buf(), dir.join("log")] {
        for e in std::fs::read_dir(sub).unwrap() {
            let m = e.unwrap().metadata().unwrap();
            if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

/// Every file of the store's log directory with its length, for a failure's message.
fn log_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len()))
        })
        .collect();
    files.sort();
    files
}

fn segment_lens(dir: &Path) -> Vec<u64> {
    let mut lens: Vec<u64> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    lens.sort_unstable();
    lens
}

const MIB: u64 = 1 << 20;

#[test]
fn a_new_store_takes_a_few_small_segments() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    w.queue("q").unwrap();
    w.close().unwrap();
    let lens = segment_lens(dir.path());
    assert!(lens.iter().all(|&l| l == wharf::DEFAULT_MIN_SEGMENT_BYTES), "{lens:?}");
    assert!(disk(dir.path()) <= 8 * MIB, "{} bytes", disk(dir.path()));
}

#[test]
fn a_burst_grows_the_segments_and_a_settled_store_shrinks_back() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Wharf::builder()
            .segment_bytes(16 * MIB)
            .push_durability(Durability::None)
            .ack_durability(Durability::None)
            .open(dir.path())
            .unwrap()
    };
    let w = open();
    let q = w.queue("q").unwrap();
    let payload = vec![7u8; 4096];
    let mut largest = 0;
    for _ in 0..40 {
        q.push_batch(std::iter::repeat_n(&payload[..], 256)).unwrap();
        largest = largest.max(segment_lens(dir.path()).last().copied().unwrap_or(0));
    }
    assert!(largest > MIB, "segments never grew past the smallest size: {largest}");
    let mut n = 0;
    while let Some(d) = q.try_pop().unwrap() {
        d.ack().unwrap();
        n += 1;
    }
    assert_eq!(n, 40 * 256);
    // Quiet and settled: the background thread gives the log small segments again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while disk(dir.path()) > 8 * MIB && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(disk(dir.path()) <= 8 * MIB, "while open: {:?}", segment_lens(dir.path()));
    w.close().unwrap();
    assert!(disk(dir.path()) <= 8 * MIB, "closed: {:?}", segment_lens(dir.path()));
    // It is the same store: empty, and working.
    let w = open();
    let q = w.queue("q").unwrap();
    assert_eq!(q.depth().unwrap().ready, 0);
    q.push(b"again").unwrap();
    assert_eq!(q.try_pop().unwrap().unwrap().payload(), b"again");
    w.close().unwrap();
}

#[test]
fn closing_a_settled_store_leaves_it_small() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::builder()
        .segment_bytes(16 * MIB)
        .push_durability(Durability::None)
        .open(dir.path())
        .unwrap();
    let q = w.queue("q").unwrap();
    let payload = vec![1u8; 4096];
    for _ in 0..20 {
        q.push_batch(std::iter::repeat_n(&payload[..], 256)).unwrap();
    }
    for d in q.pop_batch(20 * 256, Duration::ZERO).unwrap() {
        d.ack().unwrap();
    }
    w.close().unwrap();
    assert!(disk(dir.path()) <= 8 * MIB, "closed: {:?}", log_files(dir.path()));
}

#[test]
fn a_record_larger_than_the_spares_made_ahead_still_fits() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::builder().segment_bytes(16 * MIB).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    q.push(b"small").unwrap();
    let big = vec![9u8; 3 * MIB as usize];
    q.push(&big).unwrap();
    q.push(b"after").unwrap();
    w.close().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let got: Vec<Vec<u8>> = q
        .pop_batch(3, Duration::ZERO)
        .unwrap()
        .into_iter()
        .map(|d| {
            let p = d.payload().to_vec();
            d.ack().unwrap();
            p
        })
        .collect();
    assert_eq!(got, vec![b"small".to_vec(), big, b"after".to_vec()]);
}
