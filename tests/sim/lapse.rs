//! Dropping a `Delivery` lets its lease lapse in memory: no record, no I/O, even where a
//! settlement would need a new segment and the disk cannot make one.

use std::path::Path;

use wharf::testing::{self, Fault, OpKind, SimFs};
use wharf::{Durability, Error, PushOptions, Wharf};

#[test]
fn dropping_a_delivery_does_no_io_even_when_a_settlement_would_need_a_new_segment() {
    let sim = SimFs::new();
    let w = testing::open(Wharf::builder().segment_bytes(64 << 10), &sim, Path::new("/s")).unwrap();
    let q = w.queue("q").unwrap();
    let opts = PushOptions::new().durability(Durability::None);
    let total = 10_000;
    for _ in 0..total / 500 {
        q.push_batch_with(vec![[7u8]; 500], opts.clone()).unwrap();
    }
    w.sync().unwrap();
    // No new segment can be made: pop (holding every delivery) until the log is full.
    let full = Fault { kind: OpKind::Create, nth: 1, no_space: true, persistent: true };
    sim.set_fault(Some(full));
    let mut held = Vec::new();
    let err = loop {
        match q.try_pop() {
            Ok(Some(d)) => held.push(d),
            Ok(None) => panic!("the queue ran dry before the log filled up"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::NoSpace), "{err}");
    assert!(held.len() > 1000, "only {} deliveries filled the log", held.len());
    // The old drop logged a release, so it made room first: a segment creation, refused.
    let ops = sim.ops();
    drop(held);
    assert_eq!(sim.ops(), ops, "dropping deliveries did I/O");
    let depth = q.depth().unwrap();
    assert_eq!((depth.ready, depth.in_flight), (total, 0), "every lease lapsed: all ready again");
    // The store is not poisoned: once a segment can be made, the messages go on.
    sim.set_fault(None);
    testing::maintain(&w).unwrap();
    let d = q.try_pop().unwrap().unwrap();
    assert_eq!(d.attempt(), 2, "the dropped delivery counted as an attempt");
    d.ack_with(Durability::Immediate).unwrap();
    assert_eq!(q.depth().unwrap().ready, total - 1);
}

#[test]
fn a_dropped_delivery_is_ready_again_at_once_and_in_flight_at_a_crash() {
    let sim = SimFs::new();
    let dir = Path::new("/s");
    let w = testing::open(Wharf::builder().segment_bytes(64 << 10), &sim, dir).unwrap();
    let q = w.queue("q").unwrap();
    q.push(b"job").unwrap();
    let d = q.try_pop().unwrap().unwrap();
    let records = w.stats().records;
    drop(d);
    assert_eq!(w.stats().records, records, "a drop logs nothing");
    let again = q.try_pop().unwrap().unwrap();
    assert_eq!((again.payload(), again.attempt()), (&b"job"[..], 2));
    drop(again);
    drop(q);
    w.close().unwrap();
    // The log still says delivered: the reopen finds it in flight, and ready.
    let w = testing::open(Wharf::builder().segment_bytes(64 << 10), &sim, dir).unwrap();
    assert_eq!(w.recovery_report().in_flight_at_crash, 1);
    let d = w.queue("q").unwrap().try_pop().unwrap().unwrap();
    assert_eq!((d.payload(), d.attempt()), (&b"job"[..], 3));
}
