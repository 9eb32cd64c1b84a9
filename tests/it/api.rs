//! The basic contract: push, pop, ack, nack, names, errors, ids.

use std::time::Duration;

use wharf::{Durability, Error, PushOptions, ReadMode, Wharf};

use crate::{drain_payloads, payload, small};

#[test]
fn push_pop_ack_in_fifo_order() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let ids: Vec<_> = (0..10).map(|i| q.push(payload(i, 40)).unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase in push order");
    for (i, id) in ids.iter().enumerate() {
        let d = q.try_pop().unwrap().expect("a message is ready");
        assert_eq!(d.id(), *id);
        assert_eq!(d.payload(), payload(i, 40));
        assert_eq!(d.attempt(), 1);
        d.ack().unwrap();
    }
    assert!(q.try_pop().unwrap().is_none());
    assert_eq!(q.depth().unwrap().ready + q.depth().unwrap().in_flight, 0);
}

#[test]
fn nack_makes_a_message_ready_again_first_in_line() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    q.push_batch([b"a", b"b"]).unwrap();
    let a = q.try_pop().unwrap().unwrap();
    a.nack().unwrap();
    let again = q.try_pop().unwrap().unwrap();
    assert_eq!((again.payload(), again.attempt()), (&b"a"[..], 2));
    drop(again); // dropping releases too
    let third = q.try_pop().unwrap().unwrap();
    assert_eq!((third.payload(), third.attempt()), (&b"a"[..], 3));
    third.ack().unwrap();
    assert_eq!(q.try_pop().unwrap().unwrap().payload(), b"b");
}

#[test]
fn queues_are_independent_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let a = w.queue("a").unwrap();
    let b = w.queue("b.2_x-y").unwrap();
    a.push(b"for a").unwrap();
    assert!(b.try_pop().unwrap().is_none());
    assert_eq!(a.try_pop().unwrap().unwrap().payload(), b"for a");
    assert_eq!(w.queue_names(), vec!["a".to_string(), "b.2_x-y".to_string()]);
    // The same name gives the same queue.
    w.queue("b.2_x-y").unwrap().push(b"x").unwrap();
    assert_eq!(b.depth().unwrap().ready, 1);
}

#[test]
fn invalid_names_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    for bad in ["", "has space", "slash/", "ü", &"x".repeat(129)] {
        let err = w.queue(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidName(_)), "{bad:?}: {err}");
        assert!(err.to_string().contains("invalid queue name"));
    }
    assert!(w.queue(&"x".repeat(128)).is_ok());
}

#[test]
fn payload_too_large_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().max_payload(1000).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let err = q.push(vec![0u8; 1001]).unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { len: 1001, max: 1000 }), "{err}");
    let err = q.push_batch([vec![1u8; 10], vec![0u8; 5000]]).unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }));
    assert_eq!(q.depth().unwrap().ready, 0);
    q.push(vec![7u8; 1000]).unwrap();
    assert_eq!(q.try_pop().unwrap().unwrap().payload().len(), 1000);
}

#[test]
fn options_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Wharf::builder().segment_bytes(1000).open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    let err = small().max_payload(1 << 20).open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    let err = Wharf::builder().visibility_timeout(Duration::ZERO).open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
}

#[test]
fn calls_after_close_fail_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    q.push(b"x").unwrap();
    let d = q.try_pop().unwrap().unwrap();
    w.clone().close().unwrap();
    assert!(matches!(q.push(b"y"), Err(Error::Closed)));
    assert!(matches!(q.try_pop(), Err(Error::Closed)));
    assert!(matches!(w.queue("other"), Err(Error::Closed)));
    assert!(matches!(d.ack(), Err(Error::Closed)));
}

#[test]
fn every_durability_mode_delivers_and_survives_a_clean_close() {
    for mode in
        [Durability::Immediate, Durability::Interval(Duration::from_millis(5)), Durability::None]
    {
        let dir = tempfile::tempdir().unwrap();
        {
            let w = small().push_durability(mode).ack_durability(mode).open(dir.path()).unwrap();
            let q = w.queue("q").unwrap();
            for i in 0..500 {
                q.push(payload(i, 64)).unwrap();
            }
            q.push_with(b"override", PushOptions::new().durability(Durability::Immediate)).unwrap();
            for _ in 0..100 {
                q.try_pop().unwrap().unwrap().ack().unwrap();
            }
            w.close().unwrap();
        }
        let w = Wharf::open(dir.path()).unwrap();
        let got = drain_payloads(&w.queue("q").unwrap());
        assert_eq!(got.len(), 401, "{mode:?}");
        assert_eq!(got[0], payload(100, 64));
        assert_eq!(got[400], b"override");
    }
}

#[test]
fn pread_mode_reads_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().read_mode(ReadMode::Pread).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    for i in 0..300 {
        q.push(payload(i, 300)).unwrap();
    }
    let mut held = Vec::new();
    for i in 0..300 {
        let d = q.try_pop().unwrap().unwrap();
        assert_eq!(d.payload(), payload(i, 300));
        if i < 100 {
            held.push(d);
        } else {
            d.ack().unwrap();
        }
    }
    w.close().unwrap();
    // Recovery reads the segments with pread too.
    let w = small().read_mode(ReadMode::Pread).open(dir.path()).unwrap();
    let got = drain_payloads(&w.queue("q").unwrap());
    assert_eq!(got, (0..100).map(|i| payload(i, 300)).collect::<Vec<_>>());
}

#[test]
fn big_payloads_round_trip_through_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::builder().segment_bytes(4 << 20).open(dir.path()).unwrap();
    let q = w.queue("big").unwrap();
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..5 {
        q.push(&big).unwrap();
    }
    w.sync().unwrap();
    for _ in 0..5 {
        let d = q.try_pop().unwrap().unwrap();
        assert!(d.payload() == big.as_slice());
        d.ack().unwrap();
    }
}

#[test]
fn settled_segments_are_deleted_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    for round in 0..20 {
        let ids = q.push_batch((0..100).map(|i| payload(round * 100 + i, 500))).unwrap();
        assert_eq!(ids.len(), 100);
        for _ in 0..100 {
            q.try_pop().unwrap().unwrap().ack_with(Durability::Immediate).unwrap();
        }
    }
    // About 1 MB went through 64 KiB segments; settled ones must be gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::segments(dir.path()).len() > 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let n = crate::segments(dir.path()).len();
    assert!(n <= 4, "{n} segments left");
    // A straggler pins its segment and everything after it, but nothing is lost.
    q.push(b"straggler").unwrap();
    let held = q.try_pop().unwrap().unwrap();
    for i in 0..300 {
        q.push(payload(i, 500)).unwrap();
        q.try_pop().unwrap().unwrap().ack().unwrap();
    }
    held.nack().unwrap();
    drop(q);
    w.close().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    assert_eq!(drain_payloads(&w.queue("q").unwrap()), vec![b"straggler".to_vec()]);
}

#[test]
fn message_ids_are_never_reused_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let w = Wharf::open(dir.path()).unwrap();
        let q = w.queue("q").unwrap();
        for _ in 0..20 {
            let id = q.push(b"x").unwrap();
            assert!(seen.insert(id), "id {id} reused");
            // Acked messages leave nothing behind whose id the next open could see.
            q.try_pop().unwrap().unwrap().ack().unwrap();
        }
    }
}

#[test]
fn settled_segments_are_reclaimed_without_any_durable_call() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "settled_segments_are_reclaimed_without_any_durable_call",
        || {
            let dir = tempfile::tempdir().unwrap();
            let w = small()
                .push_durability(Durability::None)
                .ack_durability(Durability::None)
                .open(dir.path())
                .unwrap();
            let q = w.queue("q").unwrap();
            for i in 0..3000 {
                q.push(payload(i, 500)).unwrap();
                q.try_pop().unwrap().unwrap().ack().unwrap();
            }
            // 1.5 MB went through 64 KiB segments and nothing asked for a sync; the store still
            // reclaims them (with one sync per segment of its own).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let done = || w.stats().segments <= 4 && crate::segments(dir.path()).len() <= 4;
            while !done() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(done(), "{:?}", w.stats());
        },
    );
}

#[test]
fn handles_are_send_sync_and_clone() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Wharf>();
    check::<wharf::Queue>();
    check::<wharf::Delivery>();
    check::<wharf::Error>();
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.clone().queue("q").unwrap();
    let q2 = q.clone();
    q.push(b"x").unwrap();
    assert_eq!(q2.name(), "q");
    assert_eq!(q2.try_pop().unwrap().unwrap().payload(), b"x");
}
