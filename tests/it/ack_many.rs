//! `Queue::ack_many`: a batch of deliveries acked in one step, lapsed leases reported, foreign
//! deliveries refused, batches larger than one record, and what a reopen and `verify` find.

use std::time::Duration;

use wharf::{Durability, Error, Wharf};

use crate::small;

fn ids(ds: &[wharf::Delivery]) -> Vec<wharf::MessageId> {
    ds.iter().map(wharf::Delivery::id).collect()
}

#[test]
fn a_batch_is_acked_durably_and_stays_acked_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    q.push_batch((0..10).map(|i| crate::payload(i, 40))).unwrap();
    let batch = q.pop_batch(6, Duration::ZERO).unwrap();
    assert_eq!(batch.len(), 6);
    let report = q.ack_many_with(batch, Durability::Immediate).unwrap();
    assert_eq!((report.acked, report.lapsed.len()), (6, 0));
    let depth = q.depth().unwrap();
    assert_eq!((depth.ready, depth.in_flight), (4, 0), "the acked deliveries' drops did nothing");
    assert_eq!(q.stats().unwrap().processed, 6);
    drop((q, w));
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let left: Vec<Vec<u8>> = crate::drain_payloads(&q);
    assert_eq!(left, (6..10).map(|i| crate::payload(i, 40)).collect::<Vec<_>>());
    w.close().unwrap();
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(report.is_healthy(), "{:?}", report.problems);
    assert_eq!(report.records.acks, 1, "one batch-ack record");
}

#[test]
fn lapsed_leases_are_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    q.push_batch(["a", "b", "c", "d"]).unwrap();
    let batch = q.pop_batch(4, Duration::ZERO).unwrap();
    let all = ids(&batch);
    // b's lease ends now; c's ends and c is delivered again, to a holder that keeps it.
    batch[1].extend(Duration::ZERO).unwrap();
    batch[2].extend(Duration::ZERO).unwrap();
    let b = q.try_pop().unwrap().expect("b is ready again");
    let again = q.try_pop().unwrap().expect("c is ready again");
    assert_eq!((b.id(), again.id(), again.attempt()), (all[1], all[2], 2));
    drop(b); // ready again at once
    let report = q.ack_many(batch).unwrap();
    assert_eq!(report.acked, 2);
    assert_eq!(report.lapsed, vec![all[1], all[2]], "in the order given");
    // b is ready, c is still leased by its new holder, which can ack it.
    assert_eq!(q.depth().unwrap().ready, 1);
    assert_eq!(q.depth().unwrap().in_flight, 1);
    again.ack().unwrap();
    let b = q.try_pop().unwrap().unwrap();
    assert_eq!(b.id(), all[1]);
    // A batch of lapsed leases only writes nothing.
    b.extend(Duration::ZERO).unwrap();
    let records = w.stats().records;
    let report = q.ack_many([b]).unwrap();
    assert_eq!((report.acked, report.lapsed), (0, vec![all[1]]));
    assert_eq!(w.stats().records, records, "nothing to ack, nothing written");
}

#[test]
fn an_empty_batch_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let records = w.stats().records;
    let report = q.ack_many(Vec::new()).unwrap();
    assert_eq!(report, wharf::AckReport::default());
    assert_eq!((report.acked, report.lapsed.len()), (0, 0));
    assert_eq!(w.stats().records, records);
}

#[test]
fn deliveries_of_another_queue_or_store_are_refused_and_nothing_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let (jobs, mail) = (w.queue("jobs").unwrap(), w.queue("mail").unwrap());
    jobs.push_batch(["j1", "j2"]).unwrap();
    mail.push("m1").unwrap();
    let mut batch = jobs.pop_batch(2, Duration::ZERO).unwrap();
    batch.push(mail.try_pop().unwrap().unwrap());
    let records = w.stats().records;
    let err = jobs.ack_many(batch).unwrap_err();
    assert!(matches!(&err, Error::InvalidOption(why) if why.contains("another queue")), "{err}");
    assert_eq!(w.stats().records, records, "nothing was written");
    // Nothing acked: the deliveries were dropped, so their messages are ready again.
    assert_eq!(jobs.depth().unwrap().ready, 2);
    assert_eq!(mail.depth().unwrap().ready, 1);

    let other_dir = tempfile::tempdir().unwrap();
    let other = small().open(other_dir.path()).unwrap();
    let other_jobs = other.queue("jobs").unwrap();
    other_jobs.push("x").unwrap();
    let foreign = other_jobs.try_pop().unwrap().unwrap();
    let own = jobs.try_pop().unwrap().unwrap();
    let err = jobs.ack_many([own, foreign]).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    assert_eq!(jobs.depth().unwrap().ready, 2);
    assert_eq!(other_jobs.depth().unwrap().ready, 1);
}

#[test]
fn a_batch_larger_than_one_record_is_acked_whole() {
    const N: usize = 2_500; // three records: 1,024 + 1,024 + 452 ids
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let mut pushed = Vec::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(250) {
        pushed.extend(q.push_batch(chunk.iter().map(|&i| crate::payload(i, 60))).unwrap());
    }
    let mut batch = Vec::new();
    while batch.len() < N {
        batch.extend(q.pop_batch(N, Duration::ZERO).unwrap());
    }
    let report = q.ack_many_with(batch, Durability::Immediate).unwrap();
    assert_eq!((report.acked, report.lapsed.len()), (N, 0));
    assert_eq!(q.depth().unwrap().in_flight, 0);
    q.push("after").unwrap();
    w.close().unwrap();
    let report = Wharf::verify(dir.path()).unwrap();
    assert!(report.is_healthy(), "{:?}", report.problems);
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    assert_eq!(crate::drain_payloads(&q), vec![b"after".to_vec()]);
}
