//! The operator API the `wharf` command is built on: purge, oldest, payload bytes, the
//! dead-letter queue's name, push times, expiry and keys in peeks, verify's progress, the
//! checkpoint position and the format version.

use std::time::{Duration, SystemTime};

use wharf::{PushOptions, Wharf, FORMAT_VERSION};

use crate::{payload, segments, small};

#[test]
fn purge_settles_every_waiting_message_durably_and_leaves_leases_alone() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let other = w.queue("other").unwrap();
    other.push(b"stays").unwrap();
    q.push_batch([b"a", b"b", b"c"]).unwrap();
    q.push_with(b"later", PushOptions::new().delay(Duration::from_secs(3600))).unwrap();
    q.push_with(b"keyed", PushOptions::new().dedup_key("k").priority(3)).unwrap();
    let held = q.pop().unwrap(); // "keyed": the highest priority
    assert_eq!(held.payload(), b"keyed");
    assert_eq!(q.purge().unwrap(), 4);
    let d = q.depth().unwrap();
    assert_eq!((d.ready, d.delayed, d.in_flight), (0, 0, 1));
    assert_eq!(q.purge().unwrap(), 0);
    drop(held); // released: ready again
    drop((q, other));
    w.close().unwrap();

    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let left: Vec<Vec<u8>> = q.peek(10).unwrap().into_iter().map(|m| m.payload).collect();
    assert_eq!(left, [b"keyed".to_vec()]);
    assert_eq!(w.queue("other").unwrap().peek(10).unwrap().len(), 1);
    w.close().unwrap();
    assert!(Wharf::verify(dir.path()).unwrap().is_healthy());
}

#[test]
fn purge_of_a_backlog_over_many_segments_lets_them_go() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    for chunk in 0..30 {
        let batch: Vec<Vec<u8>> = (0..100).map(|i| payload(chunk * 100 + i, 200)).collect();
        q.push_batch(&batch).unwrap();
    }
    let before = segments(dir.path()).len();
    assert!(before > 8, "{before} segments");
    assert_eq!(q.purge().unwrap(), 3000);
    w.checkpoint().unwrap();
    drop(q);
    w.close().unwrap();
    let w = small().open(dir.path()).unwrap();
    assert!(w.queue("jobs").unwrap().try_pop().unwrap().is_none());
    assert!(segments(dir.path()).len() < before);
    w.close().unwrap();
    assert!(Wharf::verify(dir.path()).unwrap().is_healthy());
}

#[test]
fn purge_reaches_a_relocated_message() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    q.push_with(b"a day away", PushOptions::new().delay(Duration::from_secs(86_400))).unwrap();
    for i in 0..600 {
        q.push(payload(i, 300)).unwrap();
        q.try_pop().unwrap().unwrap().ack().unwrap();
    }
    w.checkpoint().unwrap();
    w.checkpoint().unwrap();
    let relocated = Wharf::verify(dir.path()).unwrap().relocated;
    assert_eq!(q.purge().unwrap(), 1);
    w.checkpoint().unwrap();
    drop(q);
    w.close().unwrap();
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(report.is_healthy(), "{:?}", report.problems);
    assert_eq!((relocated, report.relocated), (1, 0));
    let w = small().open(dir.path()).unwrap();
    assert_eq!(w.queue("jobs").unwrap().depth().unwrap().delayed, 0);
}

#[test]
fn peek_shows_push_time_expiry_and_dedup_key_when_the_record_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let before = SystemTime::now() - Duration::from_millis(1);
    let expires = SystemTime::UNIX_EPOCH + Duration::from_millis(4_102_444_800_123);
    q.push(b"plain").unwrap();
    q.push_with(b"rich", PushOptions::new().expires_at(expires).dedup_key([0u8, 255])).unwrap();
    let after = SystemTime::now() + Duration::from_millis(1);
    // Reopened: what peek shows comes from the log, not from memory.
    drop(q);
    w.close().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let m = w.queue("jobs").unwrap().peek(10).unwrap();
    assert_eq!((m[0].expires, m[0].dedup_key.as_deref()), (None, None));
    for p in &m {
        let pushed = p.pushed_at.expect("every push records its time");
        assert!(before <= pushed && pushed <= after);
    }
    assert_eq!(m[1].expires, Some(expires));
    assert_eq!(m[1].dedup_key.as_deref(), Some(&[0u8, 255][..]));
}

#[test]
fn expires_at_is_a_ttl_in_wall_clock_time() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let past = SystemTime::now() - Duration::from_secs(1);
    q.push_with(b"too late", PushOptions::new().expires_at(past)).unwrap();
    q.push(b"fine").unwrap();
    let fine = q.try_pop().unwrap().unwrap();
    assert_eq!(fine.payload(), b"fine");
    fine.ack().unwrap();
    // The later option wins.
    let opts = PushOptions::new().expires_at(past).ttl(Duration::from_secs(60));
    q.push_with(b"ttl wins", opts).unwrap();
    assert_eq!(q.try_pop().unwrap().unwrap().payload(), b"ttl wins");
}

#[test]
fn oldest_is_the_first_pushed_wherever_it_is_and_bytes_count_every_unsettled_message() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    assert!(q.oldest().unwrap().is_none());
    assert_eq!(q.payload_bytes().unwrap(), 0);
    let first = q.push(b"first").unwrap();
    q.push_with(b"delayed", PushOptions::new().delay(Duration::from_secs(60))).unwrap();
    q.push_with(b"urgent", PushOptions::new().priority(9)).unwrap();
    assert_eq!(q.payload_bytes().unwrap(), 5 + 7 + 6);
    let held = q.pop().unwrap(); // "urgent"
    let d2 = q.pop().unwrap(); // "first": in flight now
    assert_eq!(d2.id(), first);
    let oldest = q.oldest().unwrap().unwrap();
    assert_eq!((oldest.id, oldest.payload.as_slice()), (first, &b"first"[..]));
    assert_eq!(q.payload_bytes().unwrap(), 18);
    d2.ack().unwrap();
    let oldest = q.oldest().unwrap().unwrap();
    assert_eq!(oldest.payload, b"delayed");
    assert!(oldest.due.is_some() && oldest.pushed_at.is_some());
    q.purge().unwrap();
    let oldest = q.oldest().unwrap().unwrap();
    assert_eq!(oldest.id, held.id());
    assert_eq!(q.payload_bytes().unwrap(), 6);
    held.ack().unwrap();
    assert!(q.oldest().unwrap().is_none());
}

#[test]
fn the_dead_letter_queue_name_is_known_before_the_queue_exists() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("mail").unwrap();
    assert_eq!(q.dead_letter_queue_name().unwrap().as_deref(), Some("mail.dlq"));
    q.set_config(&wharf::QueueConfig::new().dead_letters(wharf::DeadLetters::To("bin".into())))
        .unwrap();
    assert_eq!(q.dead_letter_queue_name().unwrap().as_deref(), Some("bin"));
    q.set_config(&wharf::QueueConfig::new().dead_letters(wharf::DeadLetters::Drop)).unwrap();
    assert_eq!(q.dead_letter_queue_name().unwrap(), None);
    assert_eq!(w.queue_names(), ["mail"]);
}

#[test]
fn verify_reports_progress_over_every_segment_byte() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    for i in 0..1000 {
        q.push(payload(i, 500)).unwrap();
    }
    drop(q);
    w.close().unwrap();
    let on_disk: u64 = segments(dir.path()).iter().map(|p| p.metadata().unwrap().len()).sum();
    let mut calls = Vec::new();
    let report =
        Wharf::verify_with_progress(dir.path(), |done, total| calls.push((done, total))).unwrap();
    assert!(report.is_healthy());
    assert_eq!(calls.first(), Some(&(0, on_disk)));
    assert_eq!(calls.last(), Some(&(on_disk, on_disk)));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
    assert!(calls.len() > 3, "{calls:?}");
}

#[test]
fn stats_name_the_checkpoint_and_segments_carry_the_format_version() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    w.queue("jobs").unwrap().push(b"x").unwrap();
    assert_eq!(w.stats().checkpoint_lsn, 0);
    let ck = w.checkpoint().unwrap();
    assert_eq!(w.stats().checkpoint_lsn, ck.position);
    assert!(ck.position > 0);
    let header = std::fs::read(&segments(dir.path())[0]).unwrap();
    assert_eq!(header[8..12], FORMAT_VERSION.to_le_bytes());
}

#[test]
fn waiting_ids_list_what_peek_lists_and_peek_id_finds_each() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let other = w.queue("other").unwrap().push(b"elsewhere").unwrap();
    q.push_batch([b"a", b"b", b"c"]).unwrap();
    q.push_with(b"later", PushOptions::new().delay(Duration::from_secs(60))).unwrap();
    q.push_with(b"first", PushOptions::new().priority(2)).unwrap();
    let held = q.pop().unwrap();
    assert_eq!(held.payload(), b"first");
    let ids = q.waiting_ids().unwrap();
    let peeked: Vec<_> = q.peek(usize::MAX).unwrap();
    assert_eq!(ids, peeked.iter().map(|m| m.id).collect::<Vec<_>>());
    for m in &peeked {
        assert_eq!(q.peek_id(m.id).unwrap().as_ref(), Some(m));
    }
    assert_eq!(q.peek_id(held.id()).unwrap(), None, "in flight");
    assert_eq!(q.peek_id(other).unwrap(), None, "another queue's");
    let a = q.pop().unwrap();
    let a_id = a.id();
    a.ack().unwrap();
    assert_eq!(q.peek_id(a_id).unwrap(), None, "acked");
    assert_eq!(q.waiting_ids().unwrap().len(), 3);
}
