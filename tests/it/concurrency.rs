//! Many producers and consumers at once: every message delivered and acked exactly once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wharf::Wharf;

#[test]
fn four_producers_four_consumers_deliver_every_message_exactly_once() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "four_producers_four_consumers_deliver_every_message_exactly_once",
        || {
            const PRODUCERS: usize = 4;
            const CONSUMERS: usize = 4;
            const TOTAL: usize = 100_000;
            let dir = tempfile::tempdir().unwrap();
            let w = Wharf::builder().segment_bytes(4 << 20).open(dir.path()).unwrap();
            let q = w.queue("work").unwrap();
            let seen = Arc::new(Mutex::new(HashSet::with_capacity(TOTAL)));
            let acked = Arc::new(AtomicUsize::new(0));
            let consumers: Vec<_> = (0..CONSUMERS)
                .map(|_| {
                    let (q, seen, acked) = (q.clone(), seen.clone(), acked.clone());
                    std::thread::spawn(move || {
                        while acked.load(Ordering::SeqCst) < TOTAL {
                            for d in q.pop_batch(64, Duration::from_millis(50)).unwrap() {
                                let n = u64::from_le_bytes(d.payload()[..8].try_into().unwrap());
                                assert!(
                                    seen.lock().unwrap().insert(n),
                                    "message {n} delivered twice"
                                );
                                d.ack().unwrap();
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    })
                })
                .collect();
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let q = q.clone();
                    std::thread::spawn(move || {
                        for i in (p..TOTAL).step_by(PRODUCERS) {
                            let mut payload = (i as u64).to_le_bytes().to_vec();
                            payload.extend_from_slice(&[0xAB; 56]);
                            q.push(payload).unwrap();
                        }
                    })
                })
                .collect();
            for t in producers.into_iter().chain(consumers) {
                t.join().unwrap();
            }
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), TOTAL);
            assert!((0..TOTAL as u64).all(|n| seen.contains(&n)), "none lost");
            assert!(q.try_pop().unwrap().is_none());
            let stats = w.stats();
            assert!(stats.fsyncs < TOTAL as u64, "group commit shared fsyncs: {stats:?}");
        },
    );
}

#[test]
fn a_second_open_is_locked_and_a_dropped_handle_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let err = Wharf::open(dir.path()).unwrap_err();
    assert!(matches!(err, wharf::Error::Locked(_)), "{err}");
    assert!(err.to_string().contains("already open"));
    drop(w);
    // The queue handle still holds the store open.
    assert!(matches!(Wharf::open(dir.path()), Err(wharf::Error::Locked(_))));
    drop(q);
    Wharf::open(dir.path()).unwrap();
}

/// The child side of the cross-process lock test: holds the store until killed.
#[test]
#[ignore = "run as a child process by a_lock_held_by_another_process_blocks_until_it_dies"]
fn lock_child() {
    let Ok(dir) = std::env::var("WHARF_LOCK_CHILD_DIR") else {
        return;
    };
    let _w = Wharf::open(&dir).unwrap();
    println!("holding");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_lock_held_by_another_process_blocks_until_it_dies() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_lock_held_by_another_process_blocks_until_it_dies",
        || {
            use std::io::BufRead;
            let dir = tempfile::tempdir().unwrap();
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "concurrency::lock_child", "--ignored", "--nocapture"])
                .env("WHARF_LOCK_CHILD_DIR", dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            while let Some(Ok(line)) = lines.next() {
                if line == "holding" {
                    break;
                }
            }
            assert!(matches!(Wharf::open(dir.path()), Err(wharf::Error::Locked(_))));
            child.kill().unwrap();
            child.wait().unwrap();
            // The dead process's lock is gone with it: no stale lock blocks the next open.
            Wharf::open(dir.path()).unwrap();
        },
    );
}
