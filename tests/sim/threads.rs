//! A panic in one of the store's own threads (`testing::panic_in`) poisons the store at once:
//! every later call fails with `Poisoned` naming the thread, a blocked pop wakes with that
//! error, and the close does not hang.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wharf::testing::{self, SimFs, Thread};
use wharf::{Error, Wharf, WharfBuilder};

/// Long enough that only a hang reaches it.
const LONG: Duration = Duration::from_secs(30);

/// `f` on a thread of its own; fails the test if it takes longer than [`LONG`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LONG).unwrap_or_else(|_| panic!("{what} hung or panicked"))
}

fn small() -> WharfBuilder {
    Wharf::builder().segment_bytes(64 << 10)
}

fn names(e: &Error, thread: &str) -> bool {
    matches!(e, Error::Poisoned(_))
        && e.to_string().contains(&format!("the {thread} thread panicked"))
}

fn a_panic_poisons_the_store(thread: Thread, name: &'static str) {
    within("the whole test", move || {
        let sim = SimFs::new();
        let w = testing::open_threaded(small(), &sim, Path::new("/store")).unwrap();
        let q = w.queue("q").unwrap();
        q.push(b"held").unwrap();
        let held = q.try_pop().unwrap().unwrap();
        // A pop blocked on an empty queue, with no deadline.
        let empty = w.queue("empty").unwrap();
        let (started, blocked_started) = mpsc::channel();
        let blocked = std::thread::spawn(move || {
            started.send(()).unwrap();
            empty.pop().map(drop)
        });
        blocked_started.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));

        testing::panic_in(&w, thread);
        let at = Instant::now();
        let err = loop {
            match q.push(b"x") {
                Ok(_) => assert!(at.elapsed() < LONG, "the panic never poisoned the store"),
                Err(e) => break e,
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(names(&err, name), "push: {err}");
        let err = q.try_pop().unwrap_err();
        assert!(names(&err, name), "pop: {err}");
        let err = held.ack().unwrap_err();
        assert!(names(&err, name), "ack: {err}");
        let err = blocked.join().unwrap().unwrap_err();
        assert!(names(&err, name), "blocked pop: {err}");
        let err = w.sync().unwrap_err();
        assert!(names(&err, name), "sync: {err}");
        let err = w.clone().close().unwrap_err();
        assert!(names(&err, name), "close: {err}");
        drop(q);
        drop(w);
        // Reopened, the store works again.
        let w = testing::open_threaded(small(), &sim, Path::new("/store")).unwrap();
        let d = w.queue("q").unwrap().try_pop().unwrap().unwrap();
        assert_eq!(d.payload(), b"held");
        d.ack().unwrap();
        w.close().unwrap();
    });
}

#[test]
fn a_panic_in_the_background_thread_poisons_the_store_at_once() {
    a_panic_poisons_the_store(Thread::Background, "background");
}

#[test]
fn a_panic_in_the_checkpointer_thread_poisons_the_store_at_once() {
    a_panic_poisons_the_store(Thread::Checkpointer, "checkpointer");
}
