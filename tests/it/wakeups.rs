//! Wake-ups of waiting pops: a due message is delivered within milliseconds of its due time,
//! and an idle wait does not wake at all (no polling), for blocking and async pops alike.
//!
//! The only timed assertion is the lateness bound: a due message reaches a waiting pop less
//! than [`LATENESS_BOUND`] after its due time. The wait is deadline-based, so the lateness is
//! normally a millisecond or two; the bound leaves room for a loaded 2-core CI machine. Run with
//! `--nocapture` to see the measured figures.

use std::pin::pin;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime};

use futures::executor::block_on;
use wharf::{NackOptions, PushOptions, Queue, Wharf};

use crate::asyncpop::{poll_once, Recorder};
use crate::LONG;

/// How late after its due time a message may reach a waiting pop.
const LATENESS_BOUND: Duration = Duration::from_millis(100);

fn store() -> (tempfile::TempDir, Wharf) {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    (dir, w)
}

/// The due time of the next waiting message of `q`, or `fallback` if it was taken already.
fn due_of_next(q: &Queue, fallback: SystemTime) -> SystemTime {
    q.peek(1).unwrap().first().and_then(|p| p.due).unwrap_or(fallback)
}

/// How long after `due` the pop at `popped` took it; fails if it was early.
fn lateness(popped: SystemTime, due: SystemTime) -> Duration {
    popped.duration_since(due).expect("delivered before its due time")
}

#[test]
fn a_delayed_message_reaches_a_blocked_pop_within_milliseconds_of_its_due_time() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_delayed_message_reaches_a_blocked_pop_within_milliseconds_of_its_due_time",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let consumer = q.clone();
            let popper = std::thread::spawn(move || {
                let d = consumer.pop_timeout(LONG).unwrap().expect("delivered when due");
                (SystemTime::now(), d.payload().to_vec())
            });
            let delay = Duration::from_millis(200);
            let before = SystemTime::now();
            q.push_with(b"in 200 ms", PushOptions::new().delay(delay)).unwrap();
            // The stored due time (whole ms); if the pop already took it, a bound that can only
            // overstate the lateness.
            let due = due_of_next(&q, before + delay);
            let (popped, payload) = popper.join().unwrap();
            assert_eq!(payload, b"in 200 ms");
            let late = lateness(popped, due);
            println!("blocked pop: delayed message delivered {late:?} after its due time");
            assert!(late < LATENESS_BOUND, "{late:?} late");
        },
    );
}

#[test]
fn a_delayed_message_reaches_an_async_pop_within_milliseconds_of_its_due_time() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_delayed_message_reaches_an_async_pop_within_milliseconds_of_its_due_time",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let consumer = q.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let d = block_on(consumer.pop_async()).unwrap();
                tx.send((SystemTime::now(), d.payload().to_vec())).unwrap();
            });
            let delay = Duration::from_millis(200);
            let before = SystemTime::now();
            q.push_with(b"in 200 ms", PushOptions::new().delay(delay)).unwrap();
            let due = due_of_next(&q, before + delay);
            let (popped, payload) = rx.recv_timeout(LONG).expect("delivered when due");
            assert_eq!(payload, b"in 200 ms");
            let late = lateness(popped, due);
            println!("async pop: delayed message delivered {late:?} after its due time");
            assert!(late < LATENESS_BOUND, "{late:?} late");
        },
    );
}

#[test]
fn a_retry_backoff_becoming_due_wakes_a_blocked_pop() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_retry_backoff_becoming_due_wakes_a_blocked_pop",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let id = q.push(b"flaky").unwrap();
            let first = q.try_pop().unwrap().unwrap();
            let consumer = q.clone();
            let popper = std::thread::spawn(move || {
                let d = consumer.pop_timeout(LONG).unwrap().expect("retried when due");
                (SystemTime::now(), d.id(), d.attempt())
            });
            let backoff = Duration::from_millis(150);
            let before = SystemTime::now();
            first.nack_with(NackOptions::new().delay(backoff)).unwrap();
            let due = due_of_next(&q, before + backoff);
            let (popped, again, attempt) = popper.join().unwrap();
            assert_eq!((again, attempt), (id, 2));
            let late = lateness(popped, due);
            println!("blocked pop: retry delivered {late:?} after its due time");
        },
    );
}

#[test]
fn a_retry_backoff_becoming_due_wakes_an_async_pop() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_retry_backoff_becoming_due_wakes_an_async_pop",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let id = q.push(b"flaky").unwrap();
            let first = q.try_pop().unwrap().unwrap();
            first.nack_with(NackOptions::new().delay(Duration::from_millis(50))).unwrap();
            let consumer = q.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let d = block_on(consumer.pop_async()).unwrap();
                tx.send((d.id(), d.attempt())).unwrap();
            });
            assert_eq!(rx.recv_timeout(LONG).expect("retried when due"), (id, 2));
        },
    );
}

#[test]
fn an_idle_blocked_pop_makes_no_periodic_wakeups() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "an_idle_blocked_pop_makes_no_periodic_wakeups",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let before = q.stats().unwrap().wakeups;
            assert!(q.pop_timeout(Duration::from_millis(500)).unwrap().is_none());
            let woke = q.stats().unwrap().wakeups - before;
            println!("idle pop_timeout(500 ms) on an empty queue: {woke} wake-up(s)");
            assert!(woke <= 1, "{woke} wake-ups: only the timeout itself may wake it");
        },
    );
}

#[test]
fn a_blocked_pop_with_only_distant_timers_makes_no_periodic_wakeups() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_blocked_pop_with_only_distant_timers_makes_no_periodic_wakeups",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            q.push(b"leased for 30 s").unwrap();
            let _held = q.try_pop().unwrap().unwrap();
            q.push_with(b"due in an hour", PushOptions::new().delay(Duration::from_secs(3600)))
                .unwrap();
            let before = q.stats().unwrap().wakeups;
            assert!(q.pop_timeout(Duration::from_millis(500)).unwrap().is_none());
            let woke = q.stats().unwrap().wakeups - before;
            println!(
                "pop_timeout(500 ms) with a lease and a delayed message pending: {woke} wake-up(s)"
            );
            assert!(woke <= 1, "{woke} wake-ups: only the timeout itself may wake it");
        },
    );
}

#[test]
fn a_blocked_pop_woken_by_one_push_wakes_once() {
    crate::with_deadline(crate::TEST_LIMIT, "a_blocked_pop_woken_by_one_push_wakes_once", || {
        let (_dir, w) = store();
        let q = w.queue("q").unwrap();
        let before = q.stats().unwrap().wakeups;
        let consumer = q.clone();
        let popper = std::thread::spawn(move || consumer.pop_timeout(LONG).unwrap().is_some());
        // Gives the pop time to block, so that the push wakes it; the assertion below holds
        // either way (a pop that has not blocked yet finds the message without a wake-up).
        std::thread::sleep(Duration::from_millis(100));
        q.push(b"one").unwrap();
        assert!(popper.join().unwrap());
        let woke = q.stats().unwrap().wakeups - before;
        println!("blocked pop woken by one push: {woke} wake-up(s)");
        assert!(woke <= 1, "{woke} wake-ups for one push");
    });
}

#[test]
fn a_pending_async_pop_is_not_woken_while_nothing_is_due() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_pending_async_pop_is_not_woken_while_nothing_is_due",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            // Timers the store knows of, neither due for a long time.
            q.push(b"leased for 30 s").unwrap();
            let _held = q.try_pop().unwrap().unwrap();
            q.push_with(b"due in an hour", PushOptions::new().delay(Duration::from_secs(3600)))
                .unwrap();
            let (rec, woken) = Recorder::new();
            let waker = Waker::from(Arc::clone(&rec));
            let mut fut = pin!(q.pop_async());
            assert!(poll_once(fut.as_mut(), &waker).is_pending());
            // An observation window, not a synchronisation: a polling implementation wakes in it.
            assert!(woken.recv_timeout(Duration::from_millis(500)).is_err());
            println!("pending pop_async over 500 ms with distant timers: {} wake(s)", rec.wakes());
            assert_eq!(rec.wakes(), 0);
            q.push(b"now").unwrap();
            woken.recv_timeout(LONG).unwrap();
            let Poll::Ready(d) = poll_once(fut.as_mut(), &waker) else {
                panic!("woken for nothing")
            };
            assert_eq!(d.unwrap().payload(), b"now");
            assert_eq!(rec.wakes(), 1);
        },
    );
}
