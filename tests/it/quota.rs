//! The disk quota: past `max_disk_bytes` a push fails with `Full` (or waits for room) and
//! stores nothing; everything stored stays; acks make room again.

use std::time::Duration;

use wharf::{Durability, Error, PushOptions, Wharf};

use crate::{payload, LONG};

const SEG: u64 = 64 << 10;

fn open(dir: &std::path::Path) -> Wharf {
    Wharf::builder().segment_bytes(SEG).max_disk_bytes(6 * SEG).open(dir).unwrap()
}

/// Pushes 1 KiB messages until the store is full; returns how many went in.
fn fill(q: &wharf::Queue) -> usize {
    for i in 0.. {
        match q.push(payload(i, 1000)) {
            Ok(_) => {}
            Err(Error::Full { max_disk_bytes }) => {
                assert_eq!(max_disk_bytes, 6 * SEG);
                return i;
            }
            Err(e) => panic!("push {i}: {e}"),
        }
        assert!(i < 10_000, "never full");
    }
    unreachable!()
}

#[test]
fn a_full_store_refuses_pushes_keeps_everything_and_takes_pushes_again_once_acked() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_full_store_refuses_pushes_keeps_everything_and_takes_pushes_again_once_acked",
        || {
            let dir = tempfile::tempdir().unwrap();
            let w = open(dir.path());
            let q = w.queue("q").unwrap();
            let n = fill(&q);
            assert!(n > 100, "only {n} messages fit");
            assert!(w.stats().disk_bytes <= 6 * SEG, "{} bytes on disk", w.stats().disk_bytes);
            let same = payload(n, 1000);
            assert!(matches!(q.push(&same), Err(Error::Full { .. })), "still full");
            // Nothing stored was harmed, and a full store can still be drained.
            let mut got = 0;
            while let Some(d) = q.try_pop().unwrap() {
                assert_eq!(d.payload(), &payload(got, 1000)[..]);
                d.ack_with(Durability::Immediate).unwrap();
                got += 1;
            }
            assert_eq!(got, n);
            // The background thread deletes the acked segments; then pushes work again.
            let deadline = std::time::Instant::now() + LONG;
            loop {
                match q.push(b"again") {
                    Ok(_) => break,
                    Err(Error::Full { .. }) => {
                        assert!(std::time::Instant::now() < deadline, "no room came back");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            w.close().unwrap();
            let w = open(dir.path());
            assert_eq!(crate::drain_payloads(&w.queue("q").unwrap()), [b"again".to_vec()]);
        },
    );
}

#[test]
fn a_push_can_wait_for_acks_to_make_room() {
    crate::with_deadline(crate::TEST_LIMIT, "a_push_can_wait_for_acks_to_make_room", || {
        let dir = tempfile::tempdir().unwrap();
        let w = open(dir.path());
        let q = w.queue("q").unwrap();
        let n = fill(&q);
        let waited = std::thread::scope(|s| {
            let pusher = s.spawn(|| {
                let opts = PushOptions::new().wait_for_space(LONG);
                // As large as the others: it does not fit where the last one did not.
                q.push_with(vec![b'p'; 1000], opts)
            });
            // Drain from another thread: the waiting push gets its room from these acks.
            let mut acked = 0;
            while acked < n {
                if let Some(d) = q.pop_timeout(Duration::from_millis(100)).unwrap() {
                    if d.payload() != [b'p'; 1000] {
                        acked += 1;
                    }
                    d.ack_with(Durability::Immediate).unwrap();
                }
            }
            pusher.join().unwrap()
        });
        waited.unwrap();
        // A wait that runs out fails like a plain push.
        let m = fill(&q);
        let opts = PushOptions::new().wait_for_space(Duration::from_millis(50));
        let err = q.push_with(payload(m, 1000), opts);
        assert!(matches!(err, Err(Error::Full { .. })), "{err:?}");
    });
}

#[test]
fn a_quota_below_three_segments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Wharf::builder().segment_bytes(SEG).max_disk_bytes(3 * SEG - 1).open(dir.path());
    assert!(matches!(err, Err(Error::InvalidOption(_))));
}
