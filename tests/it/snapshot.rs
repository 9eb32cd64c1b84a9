//! A checkpoint's snapshot of the index: an open after it replays only the log past the
//! checkpoint, and finds exactly what a replay of the whole log finds (the same test drops the
//! snapshot from a copy of the store and compares the two opens), whatever the queues held:
//! runs, priorities, delays, leases, redeliveries, dead letters, dedup keys, relocated
//! stragglers.

use std::path::Path;
use std::time::Duration;

use wharf::{Durability, NackOptions, Peeked, PushOptions, Wharf, WharfBuilder};

fn builder(window: usize) -> WharfBuilder {
    Wharf::builder()
        .segment_bytes(64 << 10)
        .min_segment_bytes(64 << 10)
        .index_window(window)
        .push_durability(Durability::None)
        .checkpoint_every_bytes(u64::MAX)
        .checkpoint_interval(None)
}

/// The store's files as a crash would leave them (nothing closed), state database included.
fn crash_copy(from: &Path) -> tempfile::TempDir {
    crate::copy_store_with(from, &["state.redb"])
}

/// [`crash_copy`] of a store that is open and may delete or recycle files meanwhile: `None` if
/// its files changed while they were copied.
fn try_crash_copy(from: &Path) -> Option<tempfile::TempDir> {
    crate::try_copy_store(from, &["state.redb"])
}

/// Another copy of a copy (closed or crashed: it was never opened).
fn copy_again(from: &Path) -> tempfile::TempDir {
    crash_copy(from)
}

/// Everything a queue shows: its depth, its waiting messages as peeked, and what pops
/// deliver (id, attempt, payload) until none is ready.
type Shown = Vec<(String, (usize, usize, usize), Vec<Peeked>, Vec<(u64, u32, Vec<u8>)>)>;

fn shown(w: &Wharf, names: &[&str]) -> Shown {
    names
        .iter()
        .map(|&name| {
            let q = w.queue(name).unwrap();
            let d = q.depth().unwrap();
            let peeked = q.peek(100_000).unwrap();
            let mut popped = Vec::new();
            while let Some(m) = q.try_pop().unwrap() {
                popped.push((m.id().get(), m.attempt(), m.payload().to_vec()));
                m.ack().unwrap();
            }
            (name.to_owned(), (d.ready, d.in_flight, d.delayed), peeked, popped)
        })
        .collect()
}

/// Opens `dir` twice in copies, with its snapshot and without, and compares what they show;
/// returns the records each open replayed.
fn compare(dir: &Path, window: usize, names: &[&str]) -> (u64, u64) {
    let full = copy_again(dir);
    assert!(wharf::testing::drop_snapshot(full.path()).unwrap(), "the checkpoint took one");
    let snap = copy_again(dir);
    let a = builder(window).open(snap.path()).unwrap();
    let b = builder(window).open(full.path()).unwrap();
    let (ra, rb) = (a.recovery_report().clone(), b.recovery_report().clone());
    assert!(ra.from_snapshot && !rb.from_snapshot, "{ra:?}\n{rb:?}");
    assert_eq!(ra.messages, rb.messages);
    assert_eq!(ra.in_flight_at_crash, rb.in_flight_at_crash);
    assert_eq!(ra.relocated, rb.relocated);
    assert_eq!(shown(&a, names), shown(&b, names));
    (ra.records, rb.records)
}

fn num(i: u32) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.resize(40, 0x5a);
    p
}

#[test]
fn a_fifo_backlog_reopens_from_its_snapshot_without_replaying_it() {
    for window in [4, 64] {
        let dir = tempfile::tempdir().unwrap();
        let w = builder(window).open(dir.path()).unwrap();
        let q = w.queue("q").unwrap();
        let batch: Vec<Vec<u8>> = (0..5_000).map(num).collect();
        q.push_batch(&batch).unwrap();
        for _ in 0..100 {
            q.try_pop().unwrap().unwrap().ack().unwrap();
        }
        w.checkpoint().unwrap();
        // A little more after the checkpoint, which the open replays.
        q.push(num(9_999)).unwrap();
        q.try_pop().unwrap().unwrap().ack().unwrap();
        w.sync().unwrap();
        let crashed = crash_copy(dir.path());
        let (snap, full) = compare(crashed.path(), window, &["q"]);
        assert!(snap < 20, "replayed {snap} records from the snapshot (window {window})");
        assert!(full > 5_000, "replayed {full} records without it");
    }
}

#[test]
fn every_kind_of_message_survives_a_reopen_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let window = 8;
    let w = builder(window).open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let other = w.queue("other").unwrap();
    q.set_config(&wharf::QueueConfig::default().max_attempts(2)).unwrap();
    let day = Duration::from_secs(86_400);
    for i in 0..400u32 {
        q.push(num(i)).unwrap();
        if i % 20 == 0 {
            q.push_with(num(1_000 + i), PushOptions::new().priority(3)).unwrap();
            q.push_with(num(2_000 + i), PushOptions::new().delay(day)).unwrap();
            let key = format!("k{i}");
            q.push_with(num(3_000 + i), PushOptions::new().dedup_key(key.as_bytes())).unwrap();
        }
        other.push(num(4_000 + i)).unwrap();
    }
    // Deliveries of every outcome: acked, released, retried later, dead-lettered, in flight.
    let mut held = Vec::new();
    for i in 0..60 {
        let d = q.try_pop().unwrap().unwrap();
        match i % 6 {
            0 | 1 => d.ack().unwrap(),
            2 => d.nack().unwrap(),
            3 => d.nack_with(NackOptions::new().delay(day).error("later")).unwrap(),
            4 => d.dead_letter("bad").unwrap(),
            _ => held.push(d),
        }
    }
    for _ in 0..30 {
        other.try_pop().unwrap().unwrap().ack().unwrap();
    }
    w.checkpoint().unwrap();
    // After the checkpoint: more of each, which the open replays on top of the snapshot.
    for i in 400..460u32 {
        q.push(num(i)).unwrap();
    }
    q.push_with(num(3_000), PushOptions::new().dedup_key(b"k0")).unwrap();
    let d = q.try_pop().unwrap().unwrap();
    d.nack_with(NackOptions::new().error("again")).unwrap();
    held.push(q.try_pop().unwrap().unwrap());
    let acked = held.remove(0);
    acked.ack().unwrap();
    for _ in 0..5 {
        other.try_pop().unwrap().unwrap().ack().unwrap();
    }
    w.sync().unwrap();
    let crashed = crash_copy(dir.path());
    std::mem::forget(held);
    let (snap, full) = compare(crashed.path(), window, &["jobs", "other", "jobs.dlq"]);
    assert!(snap < full / 4, "replayed {snap} records from the snapshot, {full} without");
}

#[test]
fn a_snapshot_covers_stragglers_relocated_by_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let window = 4;
    let w = builder(window).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let slow = w.queue("slow").unwrap();
    // A few messages of a slow queue in old segments, the rest of those segments settled.
    for i in 0..3_000u32 {
        q.push(num(i)).unwrap();
        if i % 500 == 0 {
            slow.push(num(10_000 + i)).unwrap();
        }
    }
    while let Some(d) = q.try_pop().unwrap() {
        d.ack().unwrap();
    }
    q.push(num(7)).unwrap();
    let report = w.checkpoint().unwrap();
    assert!(report.relocated > 0, "{report:?}");
    slow.push(num(20_000)).unwrap();
    w.sync().unwrap();
    let crashed = crash_copy(dir.path());
    let (snap, full) = compare(crashed.path(), window, &["q", "slow"]);
    assert!(snap < full, "replayed {snap} records from the snapshot, {full} without");
}

#[test]
fn a_snapshot_too_big_is_not_kept_and_the_open_replays_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let window = 4;
    let w = builder(window).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    // Delayed messages are listed one by one: more than the snapshot's limit (twice the
    // window, and at least 4,096).
    let batch: Vec<Vec<u8>> = (0..5_000).map(num).collect();
    let delayed = PushOptions::new().delay(Duration::from_secs(3_600));
    q.push_batch_with(&batch, delayed).unwrap();
    w.checkpoint().unwrap();
    w.sync().unwrap();
    let crashed = crash_copy(dir.path());
    assert!(!wharf::testing::drop_snapshot(crashed.path()).unwrap(), "no snapshot was kept");
    let w = builder(window).open(copy_again(crashed.path()).path()).unwrap();
    assert_eq!(w.queue("q").unwrap().depth().unwrap().delayed, 5_000);
    assert!(!w.recovery_report().from_snapshot);
    assert!(w.recovery_report().records >= 5_000);
}

#[test]
fn verify_checks_the_snapshot_against_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let w = builder(4).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let batch: Vec<Vec<u8>> = (0..100).map(num).collect();
    q.push_batch(&batch).unwrap();
    w.checkpoint().unwrap();
    q.push(num(100)).unwrap();
    w.close().unwrap();
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(report.is_healthy(), "{:#?}", report.problems);
    assert!(wharf::testing::skew_snapshot(dir.path()).unwrap());
    let report = Wharf::verify(dir.path()).unwrap();
    let problem = report.problems.iter().find(|p| p.reason.contains("snapshot"));
    let problem = problem.unwrap_or_else(|| panic!("{:#?}", report.problems));
    assert!(problem.reason.contains("holds 101 unsettled messages"), "{problem:?}");
    assert!(problem.reason.contains("the log 100"), "{problem:?}");
}

#[test]
fn draining_past_what_the_snapshot_needs_brings_a_new_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let w = builder(4).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let batch: Vec<Vec<u8>> = (0..3_000).map(num).collect();
    q.push_batch(&batch).unwrap();
    w.checkpoint().unwrap();
    // The consumer drains the segments the snapshot needs; they are deleted, and the
    // checkpointer (every other trigger off) takes a new snapshot without being asked.
    for _ in 0..2_000 {
        q.try_pop().unwrap().unwrap().ack().unwrap();
    }
    w.sync().unwrap();
    // The whole log is over 7,000 records (3,000 pushes, 2,000 deliveries and acks); the
    // tail past the last of the checkpoints the drain brought is a few hundred at most.
    let deadline = std::time::Instant::now() + crate::LONG;
    loop {
        // The store runs on: a segment deleted while it is copied makes the copy start again.
        let Some(crashed) = try_crash_copy(dir.path()) else { continue };
        let r = builder(4).open(crashed.path()).unwrap();
        let report = r.recovery_report();
        assert_eq!(report.messages, 1_000);
        if report.records < 1_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replayed {} records", report.records);
        std::thread::sleep(Duration::from_millis(20));
    }
}
