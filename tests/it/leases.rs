//! Leases: visibility timeouts, extension, and stale holders.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wharf::{Error, Wharf};

use crate::LONG;

fn store(visibility_ms: u64) -> (tempfile::TempDir, Wharf) {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::builder()
        .visibility_timeout(Duration::from_millis(visibility_ms))
        .open(dir.path())
        .unwrap();
    (dir, w)
}

#[test]
fn an_unsettled_delivery_becomes_visible_again_after_its_timeout() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "an_unsettled_delivery_becomes_visible_again_after_its_timeout",
        || {
            let (_dir, w) = store(100);
            let q = w.queue("q").unwrap();
            q.push(b"job").unwrap();
            let first = q.try_pop().unwrap().unwrap();
            assert!(q.try_pop().unwrap().is_none(), "hidden while leased");
            // A blocked pop is woken by the expiring lease, not by polling.
            let second = q.pop_timeout(LONG).unwrap().expect("redelivered after the lease ran out");
            assert_eq!((second.payload(), second.attempt()), (&b"job"[..], 2));
            assert_eq!(first.id(), second.id());
            // The stale holder can no longer settle; the current one can.
            assert!(matches!(first.ack(), Err(Error::LeaseExpired)));
            second.ack().unwrap();
            assert!(q.try_pop().unwrap().is_none());
        },
    );
}

#[test]
fn extend_keeps_a_message_hidden() {
    crate::with_deadline(crate::TEST_LIMIT, "extend_keeps_a_message_hidden", || {
        let (_dir, w) = store(150);
        let q = w.queue("q").unwrap();
        q.push(b"slow job").unwrap();
        let d = q.try_pop().unwrap().unwrap();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(75));
            d.extend(Duration::from_millis(150)).unwrap();
            assert!(q.try_pop().unwrap().is_none(), "still hidden after extend");
        }
        d.ack().unwrap();
        assert!(q.pop_timeout(Duration::from_millis(300)).unwrap().is_none());
    });
}

#[test]
fn a_stale_holder_cannot_nack_or_extend_either() {
    crate::with_deadline(crate::TEST_LIMIT, "a_stale_holder_cannot_nack_or_extend_either", || {
        let (_dir, w) = store(50);
        let q = w.queue("q").unwrap();
        q.push(b"x").unwrap();
        let stale = q.try_pop().unwrap().unwrap();
        let current = q.pop_timeout(LONG).unwrap().unwrap();
        assert!(matches!(stale.extend(Duration::from_secs(10)), Err(Error::LeaseExpired)));
        assert!(matches!(stale.nack(), Err(Error::LeaseExpired)));
        current.extend(Duration::from_secs(10)).unwrap();
        assert!(q.try_pop().unwrap().is_none(), "the stale nack released nothing");
        current.ack().unwrap();
    });
}

#[test]
fn a_blocked_pop_is_woken_by_a_push_from_another_thread() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_blocked_pop_is_woken_by_a_push_from_another_thread",
        || {
            let (_dir, w) = store(30_000);
            let q = w.queue("q").unwrap();
            let woken = Arc::new(AtomicBool::new(false));
            let consumer = {
                let (q, woken) = (q.clone(), woken.clone());
                std::thread::spawn(move || {
                    let d = q.pop_timeout(LONG).unwrap();
                    woken.store(true, Ordering::SeqCst);
                    d.map(|d| d.payload().to_vec())
                })
            };
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !woken.load(Ordering::SeqCst),
                "the consumer is blocked while the queue is empty"
            );
            q.push(b"wake up").unwrap();
            assert_eq!(consumer.join().unwrap().as_deref(), Some(&b"wake up"[..]));
        },
    );
}

#[test]
fn pop_batch_takes_what_is_ready_and_times_out_empty() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "pop_batch_takes_what_is_ready_and_times_out_empty",
        || {
            let (_dir, w) = store(30_000);
            let q = w.queue("q").unwrap();
            assert!(q.pop_batch(10, Duration::from_millis(20)).unwrap().is_empty());
            q.push_batch((0..25).map(|i| vec![i as u8])).unwrap();
            let batch = q.pop_batch(10, LONG).unwrap();
            assert_eq!(
                batch.iter().map(|d| d.payload()[0]).collect::<Vec<_>>(),
                (0..10).collect::<Vec<_>>()
            );
            let rest = q.pop_batch(100, LONG).unwrap();
            assert_eq!(rest.len(), 15);
            assert_eq!(q.depth().unwrap().in_flight, 25);
            drop((batch, rest)); // dropping releases every delivery
            assert_eq!(q.depth().unwrap().ready, 25);
        },
    );
}
