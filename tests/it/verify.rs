//! `Wharf::verify`: a healthy store verifies clean, open or closed, with or without a
//! checkpoint and relocated stragglers in `state.redb`; damage is reported with its file and
//! offset, where an open fails too; a torn tail is a torn tail; no bytes make it panic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wharf::{
    Backoff, Delivery, Error, MessageId, PushOptions, QueueConfig, StateDbCheck, VerifyReport,
    Wharf, WharfBuilder,
};

use crate::{
    as_if_crashed, copy_store, flip_a_bit_under_later_durable_records, payload, segments, small,
};

/// Small segments, and checkpoints only when a test takes one.
fn manual() -> WharfBuilder {
    small().checkpoint_every_bytes(u64::MAX).checkpoint_interval(None)
}

/// The state database of the store in `dir`.
fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.redb")
}

/// Verifies `dir`, which must be healthy.
fn check_healthy(dir: &Path) -> VerifyReport {
    let report = Wharf::verify(dir).unwrap();
    assert!(report.is_healthy(), "{:#?}", report.problems);
    report
}

/// A store whose log spans several segments, closed cleanly; no checkpoint was taken.
fn multi_segment_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = manual().open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    q.push_batch((0..600).map(|i| payload(i, 300))).unwrap();
    w.close().unwrap();
    assert!(segments(dir.path()).len() >= 4);
    dir
}

/// Verifies `dir`, which must have a problem in `file`; checks that an open fails on the same
/// file and offset, and returns the problem's offset.
fn check_damage_agrees_with_open(dir: &Path, file: &Path) -> u64 {
    let report = Wharf::verify(dir).unwrap();
    let problem = report
        .problems
        .iter()
        .find(|p| p.file == file)
        .unwrap_or_else(|| panic!("no problem in {}: {:#?}", file.display(), report.problems));
    match Wharf::open(dir) {
        Err(Error::Corrupted(c)) => {
            assert_eq!((&c.file, c.offset), (&problem.file, problem.offset), "{c}")
        }
        other => panic!("open: expected corruption in {}, got {other:?}", file.display()),
    }
    problem.offset
}

#[test]
fn a_healthy_store_with_every_record_kind_verifies_clean_while_open_and_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let w = manual().open(dir.path()).unwrap();
    let jobs = w.queue("jobs").unwrap();
    jobs.set_config(&QueueConfig::new().max_attempts(2).backoff(Backoff::None)).unwrap();
    // Enough plain pushes to seal a few segments.
    jobs.push_batch((0..600).map(|i| payload(i, 300))).unwrap();
    // A checkpoint in the middle: the replay starts from it (nothing is relocated: the old
    // segments are full of unsettled messages).
    let ck = w.checkpoint().unwrap();
    assert_eq!(ck.relocated, 0);
    let hour = Duration::from_secs(3600);
    let opts = PushOptions::new().priority(5).ttl(hour).dedup_key("only-once");
    let urgent = jobs.push_with(b"urgent", opts).unwrap();
    jobs.push_with(b"later", PushOptions::new().delay(hour)).unwrap();

    let d = jobs.pop().unwrap();
    assert_eq!(d.id(), urgent);
    d.ack().unwrap();
    // Two failed attempts: a retry, then a dead letter past max_attempts.
    let d = jobs.pop().unwrap();
    let failing = d.id();
    d.nack().unwrap();
    let d = jobs.pop().unwrap();
    assert_eq!((d.id(), d.attempt()), (failing, 2));
    d.nack().unwrap();
    jobs.pop().unwrap().dead_letter("gave up").unwrap();
    jobs.pop().unwrap().release().unwrap();
    let dlq = jobs.dead_letter_queue().unwrap().unwrap();
    assert!(dlq.requeue(failing).unwrap());
    let held = jobs.pop().unwrap();
    w.sync().unwrap();

    // Open in this process, with a delivery in flight.
    let report = check_healthy(dir.path());
    let r = report.records;
    // Every push writes a `PushEx`; a `Push` is what older versions wrote (read in
    // `record.rs`'s tests and the fuzz seeds).
    for (kind, n) in [
        ("push_ex", r.push_ex),
        ("deliver", r.deliver),
        ("ack", r.ack),
        ("nack", r.nack),
        ("retry", r.retry),
        ("dead_letter", r.dead_letter),
        ("requeue", r.requeue),
        ("queue", r.queue),
        ("config", r.config),
        ("epoch", r.epoch),
        ("seal", r.seal),
    ] {
        assert!(n > 0, "no {kind} record: {r:?}");
    }
    assert_eq!((r.push, r.push_ex, r.retry, r.dead_letter, r.requeue), (0, 602, 1, 2, 1));
    assert_eq!(report.segments, segments(dir.path()).len());
    assert!(report.segments >= 4);
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(report.mark_end, None, "never closed yet");
    assert_eq!(report.state, StateDbCheck::Opened, "read while the store holds it open");
    assert_eq!(report.checkpoint, Some(ck.position));
    assert_eq!((report.relocated, report.relocated_bytes, report.dedup_keys), (0, 0, 0));
    let names: Vec<_> = report.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["jobs", "jobs.dlq"]);
    let depth = jobs.depth().unwrap();
    let q = &report.queues[0];
    assert_eq!(q.ready as usize, depth.ready + depth.in_flight);
    assert_eq!((q.delayed as usize, q.in_flight as usize), (depth.delayed, depth.in_flight));
    // 602 pushed, one acked, one dead-lettered (another was requeued).
    assert_eq!((q.unsettled(), q.in_flight, q.delayed), (600, 1, 1));
    assert_eq!(report.queues[1].unsettled(), 1, "the explicit dead letter");

    held.release().unwrap();
    w.close().unwrap();
    let closed = check_healthy(dir.path());
    assert!(closed.mark_end.is_some());
    assert_eq!(closed.records.total(), r.total() + 1, "the release of the held delivery");
    assert_eq!(closed.queues[0].in_flight, 0);
    assert_eq!((closed.state, closed.checkpoint), (StateDbCheck::Opened, Some(ck.position)));
    // Verifying changed nothing: the store opens and recovers the same messages.
    let w = Wharf::open(dir.path()).unwrap();
    // An open replays the log from the checkpoint's snapshot on, verify all of it.
    assert!(w.recovery_report().records <= closed.records.total());
    assert_eq!(w.recovery_report().bytes_truncated, 0);
    let waiting: u64 = closed.queues.iter().map(|q| q.unsettled()).sum();
    assert_eq!(w.recovery_report().messages, waiting);
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_reported_where_open_fails() {
    let pristine = multi_segment_store();
    let first = segments(pristine.path())[0].clone();
    let original = std::fs::read(&first).unwrap();
    let used = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    for off in (0..64).step_by(13).chain((64..used).step_by(487)) {
        let dir = copy_store(pristine.path());
        let seg = dir.path().join("log").join(first.file_name().unwrap());
        let mut bytes = original.clone();
        bytes[off] ^= 0x04;
        std::fs::write(&seg, &bytes).unwrap();
        let at = check_damage_agrees_with_open(dir.path(), &seg);
        assert!(at <= off as u64, "reported {at} for damage at {off}");
    }
}

#[test]
fn a_flipped_bit_in_the_active_segment_is_reported_where_open_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, at) = flip_a_bit_under_later_durable_records(dir.path());
    // The push record's header and body come before its payload.
    let off = check_damage_agrees_with_open(dir.path(), &seg);
    assert_eq!(off, at as u64 - 64);
}

#[test]
fn a_torn_tail_is_reported_as_a_torn_tail_not_as_a_problem() {
    let pristine = tempfile::tempdir().unwrap();
    {
        let w = manual().open(pristine.path()).unwrap();
        let q = w.queue("q").unwrap();
        for i in 0..20 {
            q.push(payload(i, 100)).unwrap();
        }
        w.close().unwrap();
    }
    let seg_name = segments(pristine.path())[0].file_name().unwrap().to_owned();
    let original = std::fs::read(segments(pristine.path())[0].clone()).unwrap();
    let marker = payload(19, 100);
    let at = original.windows(marker.len()).rposition(|w| w == marker).unwrap();
    let (start, end) = (at - 64, at + marker.len());
    let tear = |dir: &Path| {
        let mut bytes = original.clone();
        for (k, b) in bytes[start + 10..end + 50].iter_mut().enumerate() {
            *b = (k as u8).wrapping_mul(31) | 1;
        }
        std::fs::write(dir.join("log").join(&seg_name), &bytes).unwrap();
    };

    // After a crash (no durable mark): a torn tail, which the open cuts.
    let dir = copy_store(pristine.path());
    as_if_crashed(dir.path());
    tear(dir.path());
    let report = check_healthy(dir.path());
    let seg = dir.path().join("log").join(&seg_name);
    assert_eq!(report.torn_tail_bytes as usize, end + 50 - start);
    assert_eq!(report.torn_tail_at, Some((seg, start as u64)));
    assert_eq!(report.queues[0].unsettled(), 19);
    let w = manual().open(dir.path()).unwrap();
    let recovered = w.recovery_report();
    assert_eq!(recovered.bytes_truncated, report.torn_tail_bytes);
    assert_eq!(recovered.truncated_at, report.torn_tail_at);
    assert_eq!(recovered.records, report.records.total());
    drop(w);
    assert_eq!(check_healthy(dir.path()).torn_tail_bytes, 0, "the open cut it");

    // After a clean close the same bytes are below the durable mark: records were lost.
    let dir = copy_store(pristine.path());
    tear(dir.path());
    let seg = dir.path().join("log").join(&seg_name);
    assert_eq!(check_damage_agrees_with_open(dir.path(), &seg), start as u64);
}

#[test]
fn a_truncated_segment_is_a_problem() {
    let dir = multi_segment_store();
    let seg = segments(dir.path())[1].clone();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(40_000).unwrap();
    drop(f);
    assert_eq!(check_damage_agrees_with_open(dir.path(), &seg), 0);
    let problems = Wharf::verify(dir.path()).unwrap().problems;
    assert!(problems[0].reason.contains("40000 bytes"), "{}", problems[0]);
    assert!(problems[0].reason.contains("truncated"), "{}", problems[0]);
    // Shorter than a header.
    std::fs::write(&seg, b"WHARFLOG").unwrap();
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(report.problems.iter().any(|p| p.file == seg && p.reason.contains("header")));
}

#[test]
fn swapped_segments_are_named_as_such() {
    let dir = multi_segment_store();
    let segs = segments(dir.path());
    let tmp = dir.path().join("log").join("tmp");
    std::fs::rename(&segs[0], &tmp).unwrap();
    std::fs::rename(&segs[1], &segs[0]).unwrap();
    std::fs::rename(&tmp, &segs[1]).unwrap();
    check_damage_agrees_with_open(dir.path(), &segs[0]);
    let report = Wharf::verify(dir.path()).unwrap();
    for seg in &segs[..2] {
        let p = report.problems.iter().find(|p| &p.file == seg).unwrap();
        assert!(p.reason.contains("renamed, or swapped with another segment"), "{p}");
    }
}

#[test]
fn a_damaged_record_is_explained_not_only_located() {
    let pristine = multi_segment_store();
    let first = segments(pristine.path())[0].clone();
    let original = std::fs::read(&first).unwrap();
    let marker = payload(5, 300);
    let at = original.windows(marker.len()).position(|w| w == marker).unwrap();
    // A byte of the payload, then a byte of the record's position field (24 + 40 bytes of
    // header and push fields come before the payload).
    for (off, says) in [
        (at + 100, "so the damage is in its body or payload"),
        (at - 64 + 9, "its position field says"),
    ] {
        let dir = copy_store(pristine.path());
        let seg = dir.path().join("log").join(first.file_name().unwrap());
        let mut bytes = original.clone();
        bytes[off] ^= 0x01;
        std::fs::write(&seg, &bytes).unwrap();
        let record = check_damage_agrees_with_open(dir.path(), &seg);
        let report = Wharf::verify(dir.path()).unwrap();
        let p = report.problems.iter().find(|p| p.file == seg).unwrap();
        let lsn = format!("checksum mismatch in the record at log position {record}");
        assert!(p.reason.contains(&lsn) && p.reason.contains(says), "flip at {off}: {p}");
        // The open names the same cause.
        let err = Wharf::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&lsn) && err.contains(says), "flip at {off}: {err}");
    }
}

#[test]
fn a_segment_of_another_store_is_a_problem() {
    let a = multi_segment_store();
    let b = multi_segment_store();
    let target = segments(a.path()).last().unwrap().clone();
    std::fs::copy(segments(b.path()).last().unwrap(), &target).unwrap();
    let report = Wharf::verify(a.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.file == target && p.reason.contains("another store")),
        "{:#?}",
        report.problems
    );
    assert!(matches!(Wharf::open(a.path()), Err(Error::ForeignSegment(f)) if f == target));
}

#[test]
fn a_gap_in_the_segments_is_a_problem() {
    let dir = multi_segment_store();
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[1]).unwrap();
    let at = check_damage_agrees_with_open(dir.path(), &segs[2]);
    assert_eq!(at, 0);
    let report = Wharf::verify(dir.path()).unwrap();
    // The cause: which file is missing.
    let missing =
        format!("segment file {} is missing", segs[1].file_name().unwrap().to_str().unwrap());
    let why = &report.problems[0].reason;
    assert!(why.contains("gap") && why.contains(&missing), "{}", report.problems[0]);
}

#[test]
fn a_damaged_mark_is_a_problem() {
    let dir = multi_segment_store();
    let mark = dir.path().join("log").join("mark");
    let original = std::fs::read(&mark).unwrap();
    assert_eq!(check_healthy(dir.path()).mark_end.map(|_| ()), Some(()));
    // Both slots damaged.
    let mut bytes = original.clone();
    bytes[3] ^= 1;
    bytes[64 + 40] ^= 1;
    std::fs::write(&mark, &bytes).unwrap();
    assert_eq!(check_damage_agrees_with_open(dir.path(), &mark), 0);
    // One slot damaged: the other still counts.
    bytes[3] ^= 1;
    std::fs::write(&mark, &bytes).unwrap();
    check_healthy(dir.path());
    // The wrong length.
    std::fs::write(&mark, &original[..64]).unwrap();
    assert_eq!(check_damage_agrees_with_open(dir.path(), &mark), 0);
    // A mark beyond the end of the log: all segments but the first are gone. The first ends
    // with a seal, so the second is named missing (and the log ends below the mark).
    std::fs::write(&mark, &original).unwrap();
    let segs = segments(dir.path());
    for seg in &segs[1..] {
        std::fs::remove_file(seg).unwrap();
    }
    check_damage_agrees_with_open(dir.path(), &segs[1]);
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(report.problems.iter().any(|p| p.file == segs[0]), "{:#?}", report.problems);
}

#[test]
fn foreign_temporary_and_state_files_are_reported_not_problems() {
    let dir = multi_segment_store();
    let log = dir.path().join("log");
    std::fs::write(log.join("notes.txt"), b"hello").unwrap();
    std::fs::write(log.join("00000000000009999999.seg.tmp"), b"partial").unwrap();
    let report = check_healthy(dir.path());
    assert_eq!(report.ignored_files, ["notes.txt"]);
    assert_eq!(report.temporary_files, ["00000000000009999999.seg.tmp"]);
    assert!(log.join("00000000000009999999.seg.tmp").exists(), "verify removes nothing");
    assert_eq!(report.state, StateDbCheck::Absent);
    assert_eq!(report.checkpoint, None);
    // A temporary state database of an interrupted creation: the next open removes it.
    std::fs::write(dir.path().join("state.redb.tmp"), b"partial").unwrap();
    let report = check_healthy(dir.path());
    assert_eq!(report.temporary_files, ["00000000000009999999.seg.tmp", "state.redb.tmp"]);
    assert!(dir.path().join("state.redb.tmp").exists(), "verify removes nothing");
}

/// Copies a store directory with its state database.
fn copy_with_state(from: &Path) -> tempfile::TempDir {
    let to = copy_store(from);
    std::fs::copy(state_file(from), state_file(to.path())).unwrap();
    to
}

/// Length of the stragglers' payloads.
const STRAGGLER_LEN: usize = 900;

/// A store whose oldest segments are gone: their stragglers (one held leased, one delayed for
/// an hour with a dedup key) were relocated into `state.redb` by a checkpoint, while a few
/// hundred messages behind them were pushed, popped and acked.
struct Relocated {
    dir: tempfile::TempDir,
    w: Wharf,
    held: Delivery,
    held_id: MessageId,
    delayed_id: MessageId,
    /// Where the last checkpoint left the log.
    position: u64,
}

fn relocated_store() -> Relocated {
    let dir = tempfile::tempdir().unwrap();
    let w = manual().visibility_timeout(Duration::from_secs(3600)).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let held_id = q.push(payload(1_000_000, STRAGGLER_LEN)).unwrap();
    let held = q.pop().unwrap();
    assert_eq!(held.id(), held_id);
    let later = PushOptions::new().delay(Duration::from_secs(3600)).dedup_key("once");
    let delayed_id = q.push_with(payload(1_000_001, STRAGGLER_LEN), later).unwrap();
    for i in 0..300 {
        q.push(payload(i, 900)).unwrap();
        q.pop().unwrap().ack().unwrap();
    }
    let first = w.checkpoint().unwrap();
    let second = w.checkpoint().unwrap();
    assert_eq!(first.relocated + second.relocated, 2, "{first:?} {second:?}");
    assert_eq!(first.relocated_bytes + second.relocated_bytes, 2 * STRAGGLER_LEN as u64);
    assert!(first.segments_deleted + second.segments_deleted >= 2, "{first:?} {second:?}");
    assert!(!segments(dir.path())[0].ends_with("00000000000000000000.seg"));
    Relocated { dir, w, held, held_id, delayed_id, position: second.position }
}

/// The store of [`relocated_store`], closed (the held delivery released first).
fn closed_relocated_store() -> (tempfile::TempDir, MessageId, MessageId) {
    let s = relocated_store();
    s.held.release().unwrap();
    s.w.close().unwrap();
    (s.dir, s.held_id, s.delayed_id)
}

#[test]
fn relocated_stragglers_verify_clean_while_open_and_after_close_and_are_reported() {
    let s = relocated_store();
    let dir = s.dir.path();
    let check = |report: &VerifyReport| {
        assert_eq!(report.state, StateDbCheck::Opened);
        assert_eq!(report.checkpoint, Some(s.position));
        assert_eq!(report.relocated, 2);
        assert_eq!(report.relocated_bytes, 2 * STRAGGLER_LEN as u64);
        assert_eq!(report.dedup_keys, 1);
        let q = &report.queues[0];
        assert_eq!((q.name.as_str(), q.ready, q.delayed), ("q", 1, 1), "{q:?}");
    };
    // Open in this process, holding a straggler's lease and the state database.
    let open = check_healthy(dir);
    check(&open);
    assert_eq!(open.segments, segments(dir).len());

    s.held.release().unwrap();
    s.w.close().unwrap();
    let closed = check_healthy(dir);
    check(&closed);
    assert_eq!(closed.records.total(), open.records.total() + 1, "the release");
    // What an open finds agrees, and the relocated payloads come back.
    let w = manual().open(dir).unwrap();
    let r = w.recovery_report();
    assert!(r.records <= closed.records.total(), "the open replays from the snapshot on");
    assert_eq!(r.messages, 2);
    let d = w.queue("q").unwrap().try_pop().unwrap().unwrap();
    assert_eq!((d.id(), d.payload()), (s.held_id, &payload(1_000_000, STRAGGLER_LEN)[..]));
    assert_ne!(d.id(), s.delayed_id);
}

/// Every position of `needle` in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect()
}

#[test]
fn a_damaged_relocated_payload_is_reported_and_the_open_fails_with_corruption() {
    let (dir, ..) = closed_relocated_store();
    let path = state_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let hits = find_all(&bytes, &payload(1_000_000, STRAGGLER_LEN));
    assert!(!hits.is_empty(), "the payload is stored as it is");
    for at in hits {
        bytes[at + STRAGGLER_LEN / 2] ^= 0x55;
    }
    std::fs::write(&path, &bytes).unwrap();

    // The payload's page fails redb's page checksum: verify refuses the file before it reads a
    // row (redb can panic on pages it has not verified), naming the file.
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.file == path && p.offset == 0),
        "{:#?}",
        report.problems
    );
    assert!(matches!(report.state, StateDbCheck::NotOpened(_)), "{:?}", report.state);
    // The open checks every page of the state database (redb's integrity check): it refuses
    // the store, naming the file, rather than hand out damaged bytes later.
    match manual().open(dir.path()) {
        Err(Error::Corrupted(c)) => assert_eq!(c.file, path, "{c}"),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("a damaged state database opened"),
    }
}

#[test]
fn a_state_database_of_another_store_is_a_problem() {
    let make = || {
        let dir = tempfile::tempdir().unwrap();
        let w = manual().open(dir.path()).unwrap();
        w.queue("q").unwrap().push_batch((0..10).map(|i| payload(i, 100))).unwrap();
        w.checkpoint().unwrap();
        w.close().unwrap();
        dir
    };
    let (a, b) = (make(), make());
    std::fs::copy(state_file(b.path()), state_file(a.path())).unwrap();
    assert_eq!(check_damage_agrees_with_open(a.path(), &state_file(a.path())), 0);
    let report = Wharf::verify(a.path()).unwrap();
    assert!(report.problems.iter().any(|p| p.reason.contains("another store")), "{report:#?}");
}

#[test]
fn a_checkpoint_past_the_end_of_the_log_is_a_problem() {
    // The log as it was before a checkpoint, with the state database written after it.
    let dir = tempfile::tempdir().unwrap();
    let w = manual().open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    q.push_batch((0..10).map(|i| payload(i, 100))).unwrap();
    w.close().unwrap();
    let old = copy_store(dir.path());
    let w = manual().open(dir.path()).unwrap();
    w.queue("q").unwrap().push_batch((0..100).map(|i| payload(i, 1000))).unwrap();
    let ck = w.checkpoint().unwrap();
    w.close().unwrap();
    std::fs::copy(state_file(dir.path()), state_file(old.path())).unwrap();

    let last = segments(old.path()).pop().unwrap();
    assert_eq!(check_damage_agrees_with_open(old.path(), &last), 0);
    let report = Wharf::verify(old.path()).unwrap();
    assert_eq!(report.checkpoint, Some(ck.position));
    let why = format!("checkpoint covers it up to {}", ck.position);
    assert!(report.problems.iter().any(|p| p.reason.contains(&why)), "{report:#?}");
}

#[test]
fn an_empty_short_or_garbage_state_database_is_a_problem_and_never_panics() {
    let (pristine, ..) = closed_relocated_store();
    let original = std::fs::read(state_file(pristine.path())).unwrap();
    let mut rng = Rng(0x57A7_E0DB);
    let mut variants: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("garbage".into(), rng.bytes(5000)),
        ("zeros".into(), vec![0; original.len()]),
        ("redb's header, then garbage".into(), {
            let mut b = original[..512].to_vec();
            b.extend(rng.bytes(original.len() - 512));
            b
        }),
    ];
    for len in [1, 100, 512, 4096, original.len() / 2, original.len() - 1] {
        variants.push((format!("cut to {len} bytes"), original[..len].to_vec()));
    }
    for (what, bytes) in variants {
        let dir = copy_with_state(pristine.path());
        let path = state_file(dir.path());
        std::fs::write(&path, &bytes).unwrap();
        let report = Wharf::verify(dir.path()).unwrap();
        assert!(
            report.problems.iter().any(|p| p.file == path && p.offset == 0),
            "{what}: {report:#?}"
        );
        assert!(matches!(report.state, StateDbCheck::NotOpened(_)), "{what}: {:?}", report.state);
        // An open refuses it too, naming the state database; a file shorter than redb's
        // header is an I/O error there (redb's read of the header comes up short).
        match manual().open(dir.path()) {
            Err(Error::Corrupted(c)) => assert_eq!((c.file, c.offset), (path, 0), "{what}"),
            Err(Error::Io(e)) if bytes.len() < 512 => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{what}");
            }
            Err(e) => panic!("{what}: expected corruption, got {e}"),
            Ok(_) => panic!("{what}: the open took it"),
        }
    }
}

#[test]
fn flipped_bits_in_the_state_database_never_panic_and_verify_agrees_with_open() {
    let (pristine, ..) = closed_relocated_store();
    let original = std::fs::read(state_file(pristine.path())).unwrap();
    let used = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    let healthy = check_healthy(pristine.path());
    let mut flagged = 0;
    let offsets: Vec<usize> = (0..used).step_by(used / 150 + 1).collect();
    for &off in &offsets {
        let dir = copy_with_state(pristine.path());
        let mut bytes = original.clone();
        bytes[off] ^= 0x10;
        std::fs::write(state_file(dir.path()), &bytes).unwrap();
        let report = Wharf::verify(dir.path()).unwrap();
        flagged += usize::from(!report.is_healthy());
        match manual().open(dir.path()) {
            Ok(w) if report.is_healthy() => {
                let r = w.recovery_report();
                assert!(r.records <= healthy.records.total(), "flip at {off}");
                assert_eq!(r.messages, 2, "flip at {off}");
            }
            // redb checks page checksums only in a repair or an integrity check, which verify
            // runs and an open of a cleanly closed database does not: damage an open does not
            // read (a payload before its pop, a page of another table) is verify's alone.
            Ok(_) => {}
            Err(e @ Error::Corrupted(_)) => {
                assert!(!report.is_healthy(), "flip at {off}: open failed ({e}), verify ok");
            }
            Err(e) => panic!("flip at {off}: open failed with {e}"),
        }
    }
    assert!(flagged > 0, "no flip of {} was found", offsets.len());
}

#[test]
fn a_directory_that_is_not_a_store_is_a_problem_and_a_missing_one_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(!report.is_healthy());
    assert!(!dir.path().join("log").exists(), "verify creates nothing");
    assert!(matches!(Wharf::verify(dir.path().join("missing")), Err(Error::Io(_))));
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The files of a store image: paths relative to its directory, and contents.
type Image = Vec<(PathBuf, Vec<u8>)>;

fn read_image(dir: &Path) -> Image {
    let mut files: Image = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (Path::new("log").join(p.file_name().unwrap()), std::fs::read(&p).unwrap())
        })
        .collect();
    if let Ok(bytes) = std::fs::read(state_file(dir)) {
        files.push((PathBuf::from("state.redb"), bytes));
    }
    files.sort();
    files
}

fn write_image(dir: &Path, image: &Image) {
    let _ = std::fs::remove_dir_all(dir.join("log"));
    let _ = std::fs::remove_file(dir.join("state.redb"));
    std::fs::create_dir_all(dir.join("log")).unwrap();
    for (name, bytes) in image {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// One random change to a store image.
fn mutate(image: &mut Image, rng: &mut Rng) {
    let n = image.len();
    let k = rng.below(n);
    match rng.below(10) {
        0 | 1 => {
            let f = &mut image[k].1;
            if !f.is_empty() {
                let at = rng.below(f.len());
                f[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            // Random bytes over a short range, where records are (near the start).
            let f = &mut image[k].1;
            let at = rng.below(f.len().min(8192));
            let len = (1 + rng.below(64)).min(f.len() - at.min(f.len()));
            let junk = rng.bytes(len);
            f[at..at + len].copy_from_slice(&junk);
        }
        3 => {
            let f = &mut image[k].1;
            let at = rng.below(f.len());
            let len = rng.below(4096).min(f.len() - at);
            f[at..at + len].fill(0);
        }
        4 => {
            let len = rng.below(image[k].1.len() + 1);
            image[k].1.truncate(len);
        }
        5 => {
            let len = rng.below(200);
            let junk = rng.bytes(len);
            image[k].1.extend(junk);
        }
        6 => {
            image.remove(k);
        }
        7 => {
            let from = image[rng.below(n)].1.clone();
            image[k].1 = from;
        }
        8 => {
            // A new file under a name wharf knows, or not.
            let names = ["mark", "mark.tmp", "00000000000000000000.seg", "x.seg", "junk"];
            let name = match rng.below(names.len() + 1) {
                i if i < names.len() => names[i].to_owned(),
                _ => format!("{:020}.seg", (rng.below(8) as u64) * (64 << 10)),
            };
            let bytes = match rng.below(3) {
                0 => {
                    let len = rng.below(300);
                    rng.bytes(len)
                }
                1 => image[k].1.clone(),
                _ => vec![0; rng.below(1 << 17)],
            };
            image.retain(|(p, _)| !p.ends_with(&name));
            image.push((Path::new("log").join(name), bytes));
        }
        _ => {
            let len = rng.below(5000);
            let junk = rng.bytes(len);
            image.retain(|(p, _)| p != Path::new("state.redb"));
            image.push((PathBuf::from("state.redb"), junk));
        }
    }
}

#[test]
fn random_damage_never_panics_and_verify_agrees_with_open() {
    let pristine = tempfile::tempdir().unwrap();
    {
        let w = manual().open(pristine.path()).unwrap();
        let (a, b) = (w.queue("a").unwrap(), w.queue("b").unwrap());
        b.push_with(b"keyed", PushOptions::new().dedup_key("k").priority(2)).unwrap();
        a.push_batch((0..300).map(|i| payload(i, 300))).unwrap();
        for _ in 0..250 {
            a.pop().unwrap().ack().unwrap();
        }
        a.pop().unwrap().nack().unwrap();
        b.pop().unwrap().dead_letter("no").unwrap();
        // The dead letter is relocated out of the first segment, which goes.
        let ck = w.checkpoint().unwrap();
        assert_eq!((ck.relocated, ck.segments_deleted), (1, 1), "{ck:?}");
        w.close().unwrap();
    }
    let image = read_image(pristine.path());
    let healthy = check_healthy(pristine.path());
    assert!(healthy.segments >= 3);
    assert_eq!((healthy.relocated, healthy.dedup_keys), (1, 1));

    let work = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let rounds = if cfg!(debug_assertions) { 2000 } else { 5000 };
    let (mut unhealthy, mut opened) = (0, 0);
    for round in 0..rounds {
        let mut img = image.clone();
        for _ in 0..1 + rng.below(3) {
            if !img.is_empty() {
                mutate(&mut img, &mut rng);
            }
        }
        write_image(work.path(), &img);
        let report = Wharf::verify(work.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        unhealthy += usize::from(!report.is_healthy());
        // Every 8th image is opened too: damage that fails an open is never healthy, and a
        // healthy image recovers what verify found.
        if round % 8 == 0 {
            match manual().open(work.path()) {
                Ok(w) => {
                    opened += 1;
                    if report.is_healthy() {
                        let r = w.recovery_report();
                        let waiting: u64 = report.queues.iter().map(|q| q.unsettled()).sum();
                        assert_eq!(r.bytes_truncated, report.torn_tail_bytes, "round {round}");
                        assert_eq!(r.truncated_at, report.torn_tail_at, "round {round}");
                        assert!(r.records <= report.records.total(), "round {round}");
                        assert_eq!(r.messages, waiting, "round {round}");
                    }
                }
                Err(e @ (Error::Corrupted(_) | Error::ForeignSegment(_))) => {
                    assert!(!report.is_healthy(), "round {round}: open failed ({e}), verify ok");
                }
                Err(e @ Error::UnsupportedVersion { .. }) => {
                    assert!(!report.is_healthy(), "round {round}: open failed ({e}), verify ok");
                }
                // A state database shorter than redb's header fails an open with a short read.
                Err(Error::Io(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof
                        && img
                            .iter()
                            .any(|(p, b)| p == Path::new("state.redb") && b.len() < 512) =>
                {
                    assert!(!report.is_healthy(), "round {round}: open failed ({e}), verify ok");
                }
                Err(e) => panic!("round {round}: open failed with {e}"),
            }
        }
    }
    // The mutations found both kinds of image.
    assert!(unhealthy > rounds / 4 && unhealthy < rounds, "{unhealthy} of {rounds} unhealthy");
    assert!(opened > 0);
}

/// A store open in this process writes, relocates stragglers and commits checkpoints all the
/// time; verify reads its state database as it changes (and reads it again when a commit
/// raced the read) and finds nothing wrong.
#[test]
fn verify_beside_a_store_that_keeps_checkpointing_finds_no_problem() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "verify_beside_a_store_that_keeps_checkpointing_finds_no_problem",
        || {
            use std::sync::atomic::{AtomicBool, Ordering};
            let dir = tempfile::tempdir().unwrap();
            let w = manual()
                .visibility_timeout(Duration::from_secs(3600))
                .push_durability(wharf::Durability::None)
                .ack_durability(wharf::Durability::None)
                .open(dir.path())
                .unwrap();
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let writer = {
                let (w, stop) = (w.clone(), stop.clone());
                std::thread::spawn(move || {
                    let q = w.queue("q").unwrap();
                    let mut held = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..40 {
                            q.push(payload(i, 900)).unwrap();
                            let d = q.pop().unwrap();
                            if i % 25 == 0 {
                                held.push(d); // a straggler, relocated by a later checkpoint
                            } else {
                                d.ack().unwrap();
                            }
                            i += 1;
                        }
                        w.checkpoint().unwrap();
                    }
                })
            };
            let (mut checked, mut with_relocated) = (0, 0);
            let until = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < until || with_relocated == 0 {
                let report = Wharf::verify(dir.path()).unwrap();
                assert!(report.is_healthy(), "{:#?}", report.problems);
                checked += 1;
                with_relocated += usize::from(report.relocated > 0);
            }
            stop.store(true, Ordering::Relaxed);
            writer.join().unwrap();
            assert!(checked > 1);
            w.close().unwrap();
            let closed = check_healthy(dir.path());
            let r = manual().open(dir.path()).unwrap().recovery_report().clone();
            let waiting: u64 = closed.queues.iter().map(|q| q.unsettled()).sum();
            assert_eq!(r.messages, waiting);
            assert!(r.records <= closed.records.total(), "the open replays from the snapshot on");
            assert!(closed.relocated > 0);
        },
    );
}

#[test]
#[allow(deprecated)]
fn the_former_name_state_db_still_names_the_status() {
    let old: wharf::StateDb = wharf::StateDb::Absent;
    assert_eq!(old, StateDbCheck::Absent);
    assert!(matches!(StateDbCheck::NotOpened("x".into()), wharf::StateDb::NotOpened(_)));
}
