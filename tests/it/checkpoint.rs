//! Checkpoints and space reclamation: stragglers (a message delayed for a day, a dead letter, a
//! message leased and never acked) do not pin old segments; their payloads move into
//! `state.redb` and the segments go. What the state database holds survives reopens and
//! crashes, and is replayed with the log after it.

use std::fs;
use std::path::Path;
use std::time::Duration;

use wharf::{Delivery, Durability, PushOptions, QueueConfig, Wharf};

use crate::{as_if_crashed, payload, segments};

/// Bytes of the files of a store directory: every segment (spares included) and the state
/// database.
fn disk_bytes(dir: &Path) -> (u64, u64) {
    let log: u64 = segments(dir).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let state = fs::metadata(dir.join("state.redb")).map_or(0, |m| m.len());
    (log, state)
}

/// Segment files that hold at least one record (not spares made ahead of time): their first
/// record carries its own position (a spare made of a deleted segment's file holds that
/// segment's records, at positions below its base).
fn used_segments(dir: &Path) -> usize {
    segments(dir)
        .iter()
        .filter(|p| {
            let stem = p.file_name().unwrap().to_str().unwrap().trim_end_matches(".seg");
            let first = stem.parse::<u64>().unwrap() + 64;
            fs::read(p).unwrap()[72..80] == first.to_le_bytes()
        })
        .count()
}

fn open(dir: &Path, seg: u64) -> Wharf {
    builder(seg).open(dir).unwrap()
}

/// The checkpointer thread takes no checkpoint on its own: only `Wharf::checkpoint` does.
fn open_manual(dir: &Path, seg: u64) -> Wharf {
    builder(seg).checkpoint_every_bytes(u64::MAX).checkpoint_interval(None).open(dir).unwrap()
}

/// Segments of one size (`seg`), so that the tests know how many messages each one holds.
fn builder(seg: u64) -> wharf::WharfBuilder {
    Wharf::builder()
        .segment_bytes(seg)
        .min_segment_bytes(seg)
        .push_durability(Durability::None)
        .ack_durability(Durability::None)
        .visibility_timeout(Duration::from_secs(3600))
}

/// The workload: 1 GiB through a queue on 16 MiB segments, one straggler per segment
/// (rotating: delayed for a day, dead-lettered, leased and never acked), everything else
/// acked. Afterwards at most 2 segments hold records, and the files take at most those 2
/// segments, the 2 spares made ahead of time, and the stragglers' payloads (plus the state
/// database's own pages).
#[test]
fn stragglers_do_not_pin_segments_after_a_gibibyte() {
    const SEG: u64 = 16 << 20;
    const LEN: usize = 256 << 10;
    const TOTAL: usize = 1 << 30;
    const PER_SEG: usize = (SEG as usize) / (LEN + 64);
    let dir = tempfile::tempdir().unwrap();
    let w = open(dir.path(), SEG);
    let q = w.queue("jobs").unwrap();
    let mut held: Vec<Delivery> = Vec::new();
    let mut stragglers = 0usize;
    let mut straggler_bytes = 0u64;
    let n = TOTAL / LEN;
    for i in 0..n {
        let p = payload(i, LEN);
        if i % PER_SEG == 7 {
            stragglers += 1;
            straggler_bytes += LEN as u64;
            match stragglers % 3 {
                0 => {
                    q.push_with(&p, PushOptions::new().delay(Duration::from_secs(86_400))).unwrap();
                }
                1 => {
                    q.push(&p).unwrap();
                    q.try_pop().unwrap().unwrap().dead_letter("poison").unwrap();
                }
                _ => {
                    q.push(&p).unwrap();
                    held.push(q.try_pop().unwrap().unwrap());
                }
            }
            continue;
        }
        q.push(&p).unwrap();
        let d = q.try_pop().unwrap().unwrap();
        assert_eq!(d.payload(), &p[..]);
        d.ack().unwrap();
    }
    w.sync().unwrap();
    // The checkpointer thread relocated stragglers all along; two more checkpoints cover the
    // log's end (the first relocates what the last segments hold, the second covers them).
    w.checkpoint().unwrap();
    w.checkpoint().unwrap();
    let used = used_segments(dir.path());
    let (log, state) = disk_bytes(dir.path());
    println!(
        "1 GiB through {SEG}-byte segments, {stragglers} stragglers ({straggler_bytes} bytes): \
         {used} segments with records, log files {log} bytes ({} files), state.redb {state} \
         bytes",
        segments(dir.path()).len()
    );
    assert!(used <= 2, "{used} segments still hold records");
    let bound = 2 * SEG + 2 * SEG + straggler_bytes + straggler_bytes / 4 + (1 << 20);
    assert!(log + state <= bound, "{log} + {state} bytes on disk, bound {bound}");
    assert!(state <= straggler_bytes + straggler_bytes / 4 + (1 << 20), "state.redb {state}");

    // Every straggler is still there, with its payload, after a reopen.
    let expect_held: Vec<Vec<u8>> = held.iter().map(|d| d.payload().to_vec()).collect();
    drop(held);
    drop(q);
    w.close().unwrap();
    let w = open(dir.path(), SEG);
    let r = w.recovery_report();
    println!("reopen: {:?}, {} segments read, {} relocated", r.duration, r.segments, r.relocated);
    assert!(r.checkpoint.is_some());
    assert!(r.relocated as usize + 2 >= stragglers, "{} of {stragglers} relocated", r.relocated);
    let q = w.queue("jobs").unwrap();
    let dlq = w.queue("jobs.dlq").unwrap();
    let depth = q.depth().unwrap();
    assert_eq!(depth.delayed as usize, stragglers / 3, "{depth:?}");
    let dead = crate::drain_payloads(&dlq);
    assert_eq!(dead.len(), stragglers.div_ceil(3), "dead letters");
    let released = crate::drain_payloads(&q);
    assert_eq!(released, expect_held, "leased-and-never-acked stragglers are ready again");
    let peeked = q.peek(usize::MAX).unwrap();
    for p in &peeked {
        assert_eq!(p.payload.len(), LEN);
    }
    // `drain_payloads` released what it popped: the ready ones are back, then the delayed.
    assert_eq!(peeked.len(), stragglers / 3 + expect_held.len());
    assert_eq!(peeked.iter().filter(|p| p.due.is_some()).count(), stragglers / 3);
}

/// A relocated message keeps its whole state (attempts, priority, last error, dead-letter
/// origin) and everything done to it after the checkpoint is replayed from the log.
#[test]
fn relocated_messages_keep_their_state_and_later_records_replay_over_it() {
    const SEG: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let (straggler, dead_id) = {
        let w = open_manual(dir.path(), SEG);
        let q = w.queue("q").unwrap();
        q.set_config(&QueueConfig::new().max_attempts(5)).unwrap();
        let straggler = q.push_with(b"straggler", PushOptions::new().priority(3)).unwrap();
        // Leased (attempt 1) through the checkpoint, released after it.
        let held = q.try_pop().unwrap().unwrap();
        assert_eq!(held.id(), straggler);
        let dead_id = q.push(b"dead").unwrap();
        q.try_pop().unwrap().unwrap().dead_letter("bad input").unwrap();
        // Fill several segments with acked messages.
        for i in 0..400 {
            q.push(payload(i, 900)).unwrap();
            q.try_pop().unwrap().unwrap().ack().unwrap();
        }
        w.sync().unwrap();
        let r1 = w.checkpoint().unwrap();
        let r2 = w.checkpoint().unwrap();
        assert_eq!(r1.relocated + r2.relocated, 2, "{r1:?} {r2:?}");
        assert!(r1.segments_deleted + r2.segments_deleted > 0, "{r1:?} {r2:?}");
        assert!(
            !segments(dir.path()).iter().any(|p| p.ends_with("00000000000000000000.seg")),
            "the stragglers' segment was deleted"
        );
        // After the checkpoint: a release and one more delivery of the straggler, logged only.
        held.release().unwrap();
        let d = q.try_pop().unwrap().unwrap();
        assert_eq!((d.id(), d.payload()), (straggler, &b"straggler"[..]));
        let attempt = d.attempt();
        drop(d);
        w.sync().unwrap();
        drop(q);
        drop(w);
        as_if_crashed(dir.path());
        assert!(attempt >= 2);
        (straggler, dead_id)
    };
    let w = open(dir.path(), SEG);
    let q = w.queue("q").unwrap();
    assert_eq!(q.peek(10).unwrap()[0].priority, 3);
    let d = q.try_pop().unwrap().unwrap();
    assert_eq!((d.id(), d.payload()), (straggler, &b"straggler"[..]));
    assert!(d.attempt() >= 3, "attempts before and after the checkpoint count: {}", d.attempt());
    d.ack_with(Durability::Immediate).unwrap();
    let dlq = w.queue("q.dlq").unwrap();
    let peeked = dlq.peek(10).unwrap();
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].id, dead_id);
    assert_eq!(peeked[0].payload, b"dead");
    assert!(peeked[0].dead_lettered_from.is_some());
    assert_eq!(dlq.requeue_all().unwrap(), 1);
    drop(dlq);
    drop(q);
    w.close().unwrap();
    // The ack and the requeue after the checkpoint are in the log: after a reopen the
    // straggler is gone for good and the dead letter is back in its queue.
    let w = open(dir.path(), SEG);
    let q = w.queue("q").unwrap();
    assert_eq!(crate::drain_payloads(&q), [b"dead".to_vec()]);
    assert_eq!(w.queue("q.dlq").unwrap().depth().unwrap().ready, 0);
}

/// A dedup key outlives the segment that held its push: it is in the state database.
#[test]
fn a_dedup_window_outlives_the_segment_of_its_push() {
    const SEG: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let w = open_manual(dir.path(), SEG);
        let q = w.queue("q").unwrap();
        q.set_config(&QueueConfig::new().dedup_window(Duration::from_secs(3600))).unwrap();
        let first = q.push_with(b"once", PushOptions::new().dedup_key("order-1")).unwrap();
        q.try_pop().unwrap().unwrap().ack().unwrap();
        for i in 0..300 {
            q.push(payload(i, 900)).unwrap();
            q.try_pop().unwrap().unwrap().ack().unwrap();
        }
        w.sync().unwrap();
        w.checkpoint().unwrap();
        w.checkpoint().unwrap();
        assert!(
            !segments(dir.path()).iter().any(|p| p.ends_with("00000000000000000000.seg")),
            "the first segment was deleted"
        );
        w.close().unwrap();
        first
    };
    let w = open(dir.path(), SEG);
    let q = w.queue("q").unwrap();
    let again = q.push_with(b"twice?", PushOptions::new().dedup_key("order-1")).unwrap();
    assert_eq!(again, first, "the key still holds after its segment was deleted");
    assert!(q.try_pop().unwrap().is_none());
}

/// A checkpoint with nothing new is harmless, and a store opens from a checkpoint alone when
/// the log after it is empty.
#[test]
fn checkpoints_are_idempotent_and_reopen_replays_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let w = open(dir.path(), 64 << 10);
        let q = w.queue("q").unwrap();
        for i in 0..50 {
            q.push(payload(i, 100)).unwrap();
        }
        let a = w.checkpoint().unwrap();
        let b = w.checkpoint().unwrap();
        assert!(b.position >= a.position);
        assert_eq!(b.relocated, 0);
        w.close().unwrap();
    }
    let w = open(dir.path(), 64 << 10);
    let q = w.queue("q").unwrap();
    let got = crate::drain_payloads(&q);
    assert_eq!(got, (0..50).map(|i| payload(i, 100)).collect::<Vec<_>>());
}

/// A damaged state database is an error naming it, never a silently empty store.
#[test]
fn a_damaged_state_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let w = open(dir.path(), 64 << 10);
        w.queue("q").unwrap().push(b"x").unwrap();
        w.checkpoint().unwrap();
        w.close().unwrap();
    }
    let path = dir.path().join("state.redb");
    fs::write(&path, b"").unwrap();
    match Wharf::open(dir.path()) {
        Err(wharf::Error::Corrupted(c)) => assert_eq!(c.file, path),
        other => panic!("empty state.redb: {other:?}"),
    }
    fs::write(&path, vec![0x5a; 8192]).unwrap();
    match Wharf::open(dir.path()) {
        Err(wharf::Error::Corrupted(c)) => assert_eq!(c.file, path),
        other => panic!("garbage state.redb: {other:?}"),
    }
}

/// The checkpointer relocates the few stragglers of a segment soon after it is sealed (250 ms,
/// so that messages in flight at the seal are acked rather than copied), without waiting for
/// another segment's worth of log or for its interval: the segment goes while the log stands
/// still. (Polled for up to 10 s: a liveness check, not a timing one.)
#[test]
fn a_sealed_segment_with_a_few_stragglers_goes_soon_after_the_seal() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_sealed_segment_with_a_few_stragglers_goes_soon_after_the_seal",
        || {
            const SEG: u64 = 64 << 10;
            let dir = tempfile::tempdir().unwrap();
            let w = open(dir.path(), SEG); // default triggers: every segment of log, every 30 s
            let q = w.queue("q").unwrap();
            let straggler =
                q.push_with(b"tomorrow", PushOptions::new().delay(Duration::from_secs(86_400)));
            let straggler = straggler.unwrap();
            let first = segments(dir.path())[0].clone();
            let mut i = 0;
            let mut push_and_ack = |n: usize| {
                for _ in 0..n {
                    q.push(payload(i, 900)).unwrap();
                    q.try_pop().unwrap().unwrap().ack_with(Durability::Immediate).unwrap();
                    i += 1;
                }
            };
            // A checkpoint a third into the first segment: the next comes due by log only a segment's
            // worth later, by time only after 30 s.
            push_and_ack(20);
            w.checkpoint().unwrap();
            // Acked messages until the first segment is sealed, and a few in the next.
            while used_segments(dir.path()) < 2 {
                push_and_ack(1);
            }
            push_and_ack(5);
            w.sync().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while first.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                !first.exists(),
                "the sealed segment with one straggler is still there after 10 s"
            );
            let peeked = q.peek(10).unwrap();
            assert_eq!(peeked.len(), 1);
            assert_eq!((peeked[0].id, &peeked[0].payload[..]), (straggler, &b"tomorrow"[..]));
            assert!(peeked[0].pushed_at.is_some(), "a relocated message keeps its push time");
            drop(q);
            w.close().unwrap();
            let w = open(dir.path(), SEG);
            let peeked = w.queue("q").unwrap().peek(10).unwrap();
            assert_eq!((peeked.len(), peeked[0].id), (1, straggler));
            assert!(peeked[0].pushed_at.is_some(), "and keeps it across a reopen");
        },
    );
}

/// Thousands of dedup keys (past the point where the index prunes them and compacts its arena:
/// at 4096 keys, 2500 of them settled), some settled, across checkpoints, a reopen and a crash: a key whose message is unsettled answers
/// with its first id, a settled one (no window) stores anew.
#[test]
fn many_dedup_keys_hold_across_checkpoints_a_reopen_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let key = |i: usize| PushOptions::new().dedup_key(format!("job-{i:010}"));
    let ids = {
        let w = open_manual(dir.path(), 1 << 20);
        let q = w.queue("q").unwrap();
        let mut ids = Vec::new();
        for i in 0..3000 {
            ids.push(q.push_with(b"x", key(i)).unwrap());
            if i % 700 == 0 {
                w.checkpoint().unwrap();
            }
        }
        for _ in 0..2500 {
            q.try_pop().unwrap().unwrap().ack().unwrap();
        }
        for i in 3000..4500 {
            ids.push(q.push_with(b"y", key(i)).unwrap());
            assert_eq!(q.push_with(b"y", key(i)).unwrap(), ids[i]);
        }
        w.checkpoint().unwrap();
        for i in 4500..5000 {
            ids.push(q.push_with(b"z", key(i)).unwrap());
        }
        w.sync().unwrap();
        w.close().unwrap();
        as_if_crashed(dir.path());
        ids
    };
    let w = open(dir.path(), 1 << 20);
    let q = w.queue("q").unwrap();
    for (i, &id) in ids.iter().enumerate().skip(2500) {
        assert_eq!(q.push_with(b"again", key(i)).unwrap(), id, "key {i}");
    }
    assert_eq!(q.depth().unwrap().ready, 2500, "no duplicate was stored");
    for (i, &id) in ids.iter().enumerate().take(2500) {
        assert_ne!(q.push_with(b"anew", key(i)).unwrap(), id, "key {i} was settled");
    }
    assert_eq!(q.depth().unwrap().ready, 5000);
}
