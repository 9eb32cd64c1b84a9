//! Async pops: `pop_async` and `pop_batch_async` on tokio and on `futures::executor::block_on`,
//! and, polled by hand with a recording waker, exactly when a pending future is woken.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::executor::block_on;
use wharf::{Delivery, Error, PushOptions, Wharf};

use crate::LONG;

/// A waker that counts its wakes and reports each on a channel.
pub struct Recorder {
    wakes: AtomicUsize,
    tx: Mutex<mpsc::Sender<()>>,
}

impl Recorder {
    pub fn new() -> (Arc<Recorder>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        (Arc::new(Recorder { wakes: AtomicUsize::new(0), tx: Mutex::new(tx) }), rx)
    }

    pub fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.lock().unwrap().send(());
    }
}

/// Polls `fut` once with `waker`.
pub fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(waker))
}

fn store() -> (tempfile::TempDir, Wharf) {
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    (dir, w)
}

/// A two-thread tokio runtime, for tests that drive it from outside.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap()
}

/// Runs `f` on a new thread and waits at most [`LONG`] for its result.
fn within_long<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LONG).expect("the future never resolved")
}

#[test]
fn a_ready_message_resolves_at_once_on_block_on() {
    crate::with_deadline(crate::TEST_LIMIT, "a_ready_message_resolves_at_once_on_block_on", || {
        let (_dir, w) = store();
        let q = w.queue("q").unwrap();
        let id = q.push(b"ready").unwrap();
        let d = block_on(q.pop_async()).unwrap();
        assert_eq!((d.id(), d.payload(), d.attempt()), (id, &b"ready"[..], 1));
        d.ack().unwrap();
        assert!(q.try_pop().unwrap().is_none());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_message_resolves_at_once_on_tokio() {
    let (_dir, w) = store();
    let q = w.queue("q").unwrap();
    q.push(b"ready").unwrap();
    let d = q.pop_async().await.unwrap();
    assert_eq!(d.payload(), b"ready");
    d.ack().unwrap();
}

#[test]
fn a_pending_future_is_woken_by_a_push_from_another_thread() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_pending_future_is_woken_by_a_push_from_another_thread",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let (rec, woken) = Recorder::new();
            let waker = Waker::from(Arc::clone(&rec));
            let mut fut = pin!(q.pop_async());
            assert!(poll_once(fut.as_mut(), &waker).is_pending());
            assert!(woken.try_recv().is_err(), "nothing to wake for yet");

            let producer = q.clone();
            std::thread::spawn(move || producer.push(b"from afar").unwrap()).join().unwrap();
            woken.recv_timeout(LONG).expect("the push wakes the future");
            match poll_once(fut.as_mut(), &waker) {
                Poll::Ready(d) => assert_eq!(d.unwrap().payload(), b"from afar"),
                Poll::Pending => panic!("woken with a message ready, yet pending"),
            }
            assert_eq!(rec.wakes(), 1);
        },
    );
}

#[test]
fn a_pending_task_on_tokio_is_woken_by_a_push() {
    crate::with_deadline(crate::TEST_LIMIT, "a_pending_task_on_tokio_is_woken_by_a_push", || {
        let (_dir, w) = store();
        let q = w.queue("q").unwrap();
        let rt = runtime();
        let (pending_tx, pending) = mpsc::channel();
        let consumer = q.clone();
        let task = rt.spawn(async move {
            let mut fut = pin!(consumer.pop_async());
            // Says when the future first went pending, so the push below comes after it.
            std::future::poll_fn(|cx| {
                let r = fut.as_mut().poll(cx);
                if r.is_pending() {
                    let _ = pending_tx.send(());
                }
                r
            })
            .await
            .map(|d| d.payload().to_vec())
        });
        pending.recv_timeout(LONG).unwrap();
        q.push(b"wake up").unwrap();
        let got = rt.block_on(async { tokio::time::timeout(LONG, task).await }).unwrap().unwrap();
        assert_eq!(got.unwrap(), b"wake up");
    });
}

#[test]
fn a_delayed_message_becoming_due_wakes_a_future_on_block_on() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_delayed_message_becoming_due_wakes_a_future_on_block_on",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            q.push_with(b"later", PushOptions::new().delay(Duration::from_millis(50))).unwrap();
            assert!(q.try_pop().unwrap().is_none(), "not due yet");
            // No push or settlement follows: only the store's timer can wake this future.
            let consumer = q.clone();
            let got =
                within_long(move || block_on(consumer.pop_async()).map(|d| d.payload().to_vec()));
            assert_eq!(got.unwrap(), b"later");
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_becoming_due_wakes_a_future_on_tokio() {
    let (_dir, w) = store();
    let q = w.queue("q").unwrap();
    q.push_with(b"later", PushOptions::new().delay(Duration::from_millis(50))).unwrap();
    let d = tokio::time::timeout(LONG, q.pop_async()).await.expect("woken when due").unwrap();
    assert_eq!(d.payload(), b"later");
}

#[test]
fn an_expiring_lease_wakes_a_pending_future() {
    crate::with_deadline(crate::TEST_LIMIT, "an_expiring_lease_wakes_a_pending_future", || {
        let dir = tempfile::tempdir().unwrap();
        let w = Wharf::builder()
            .visibility_timeout(Duration::from_millis(100))
            .open(dir.path())
            .unwrap();
        let q = w.queue("q").unwrap();
        q.push(b"job").unwrap();
        let held = q.try_pop().unwrap().unwrap();
        let consumer = q.clone();
        let again = within_long(move || {
            block_on(consumer.pop_async()).map(|d| (d.id(), d.attempt(), d.payload().to_vec()))
        });
        assert_eq!(again.unwrap(), (held.id(), 2, b"job".to_vec()));
        assert!(matches!(held.ack(), Err(Error::LeaseExpired)));
    });
}

#[test]
fn pop_batch_async_takes_what_is_ready_up_to_max() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "pop_batch_async_takes_what_is_ready_up_to_max",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            assert!(block_on(q.pop_batch_async(0)).unwrap().is_empty());
            q.push_batch([b"a", b"b", b"c"]).unwrap();
            let two = block_on(q.pop_batch_async(2)).unwrap();
            let payloads: Vec<&[u8]> = two.iter().map(Delivery::payload).collect();
            assert_eq!(payloads, [b"a", b"b"]);
            let rest = block_on(q.pop_batch_async(10)).unwrap();
            assert_eq!(rest.len(), 1);
            assert_eq!(rest[0].payload(), b"c");
        },
    );
}

#[test]
fn a_pending_batch_is_woken_by_a_batch_push_and_takes_all_of_it() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_pending_batch_is_woken_by_a_batch_push_and_takes_all_of_it",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let (rec, woken) = Recorder::new();
            let waker = Waker::from(rec);
            let mut fut = pin!(q.pop_batch_async(10));
            assert!(poll_once(fut.as_mut(), &waker).is_pending());
            let producer = q.clone();
            std::thread::spawn(move || {
                producer.push_batch([b"1", b"2", b"3", b"4", b"5"]).unwrap()
            });
            woken.recv_timeout(LONG).unwrap();
            let Poll::Ready(got) = poll_once(fut.as_mut(), &waker) else { panic!("still pending") };
            let payloads: Vec<Vec<u8>> =
                got.unwrap().iter().map(|d| d.payload().to_vec()).collect();
            assert_eq!(payloads, [b"1", b"2", b"3", b"4", b"5"]);
        },
    );
}

#[test]
fn closing_the_store_resolves_a_pending_future_with_closed() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "closing_the_store_resolves_a_pending_future_with_closed",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let (rec, woken) = Recorder::new();
            let waker = Waker::from(rec);
            let mut fut = pin!(q.pop_async());
            assert!(poll_once(fut.as_mut(), &waker).is_pending());
            w.close().unwrap();
            woken.recv_timeout(LONG).expect("the close wakes the future");
            match poll_once(fut.as_mut(), &waker) {
                Poll::Ready(Err(Error::Closed)) => {}
                other => panic!("expected Closed, got {other:?}"),
            }
        },
    );
}

#[test]
fn closing_the_store_ends_tokio_tasks_waiting_in_pop_async() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "closing_the_store_ends_tokio_tasks_waiting_in_pop_async",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let rt = runtime();
            let (pending_tx, pending) = mpsc::channel();
            let tasks: Vec<_> = (0..3)
                .map(|_| {
                    let (q, pending_tx) = (q.clone(), pending_tx.clone());
                    rt.spawn(async move {
                        let mut fut = pin!(q.pop_async());
                        let mut told = false;
                        std::future::poll_fn(|cx| {
                            let r = fut.as_mut().poll(cx);
                            if r.is_pending() && !std::mem::replace(&mut told, true) {
                                let _ = pending_tx.send(());
                            }
                            r
                        })
                        .await
                    })
                })
                .collect();
            for _ in 0..3 {
                pending.recv_timeout(LONG).unwrap();
            }
            w.close().unwrap();
            for t in tasks {
                let r =
                    rt.block_on(async { tokio::time::timeout(LONG, t).await }).unwrap().unwrap();
                assert!(matches!(r, Err(Error::Closed)), "{r:?}");
            }
            assert!(matches!(block_on(q.pop_async()), Err(Error::Closed)));
        },
    );
}

#[test]
fn dropping_a_pending_future_loses_nothing_and_keeps_no_waker() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "dropping_a_pending_future_loses_nothing_and_keeps_no_waker",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let (rec, _woken) = Recorder::new();
            {
                let waker = Waker::from(Arc::clone(&rec));
                let mut fut = pin!(q.pop_async());
                assert!(poll_once(fut.as_mut(), &waker).is_pending());
                assert!(Arc::strong_count(&rec) > 2, "the queue holds the waker while pending");
            }
            assert_eq!(Arc::strong_count(&rec), 1, "a dropped future leaves no waker behind");
            q.push(b"kept").unwrap();
            assert_eq!(rec.wakes(), 0);
            assert_eq!(q.try_pop().unwrap().unwrap().payload(), b"kept");
        },
    );
}

#[test]
fn a_woken_future_dropped_before_its_next_poll_leaves_the_message_to_another() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_woken_future_dropped_before_its_next_poll_leaves_the_message_to_another",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let (rec_a, woken_a) = Recorder::new();
            let (rec_b, woken_b) = Recorder::new();
            let (waker_a, waker_b) = (Waker::from(rec_a), Waker::from(rec_b));
            let mut a = Box::pin(q.pop_async());
            let mut b = Box::pin(q.pop_async());
            assert!(poll_once(a.as_mut(), &waker_a).is_pending());
            assert!(poll_once(b.as_mut(), &waker_b).is_pending());
            q.push(b"one").unwrap();
            woken_a.recv_timeout(LONG).unwrap();
            woken_b.recv_timeout(LONG).unwrap();
            drop(a); // say, `select!` took another branch
            let Poll::Ready(d) = poll_once(b.as_mut(), &waker_b) else {
                panic!("b was woken for it")
            };
            assert_eq!(d.unwrap().payload(), b"one");
        },
    );
}

#[test]
fn one_future_repolled_by_different_tasks_keeps_one_registration() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "one_future_repolled_by_different_tasks_keeps_one_registration",
        || {
            let (_dir, w) = store();
            let q = w.queue("q").unwrap();
            let (first, _) = Recorder::new();
            let (second, woken) = Recorder::new();
            let mut fut = pin!(q.pop_async());
            for _ in 0..100 {
                assert!(poll_once(fut.as_mut(), &Waker::from(Arc::clone(&first))).is_pending());
            }
            assert_eq!(Arc::strong_count(&first), 2, "re-polls replace, not add");
            assert!(poll_once(fut.as_mut(), &Waker::from(Arc::clone(&second))).is_pending());
            assert_eq!(Arc::strong_count(&first), 1, "the newer task's waker replaced it");
            q.push(b"x").unwrap();
            woken.recv_timeout(LONG).unwrap();
            assert_eq!(first.wakes(), 0);
        },
    );
}

#[test]
fn many_async_consumers_get_every_message_once() {
    crate::with_deadline(crate::TEST_LIMIT, "many_async_consumers_get_every_message_once", || {
        const N: usize = 300;
        let (_dir, w) = store();
        let q = w.queue("q").unwrap();
        let rt = runtime();
        let (acked_tx, acked) = mpsc::channel();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let (q, acked_tx) = (q.clone(), acked_tx.clone());
                rt.spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        match q.pop_async().await {
                            Ok(d) => {
                                got.push(d.payload().to_vec());
                                d.ack().unwrap();
                                acked_tx.send(()).unwrap();
                            }
                            Err(Error::Closed) => return got,
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        let producer = q.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                producer.push(crate::payload(i, 24)).unwrap();
            }
        })
        .join()
        .unwrap();
        for _ in 0..N {
            acked.recv_timeout(LONG).expect("consumers stalled");
        }
        // Every consumer is now waiting in `pop_async`: the close ends them.
        w.close().unwrap();
        let mut all = Vec::new();
        for c in consumers {
            all.extend(rt.block_on(c).unwrap());
        }
        let distinct: HashSet<&Vec<u8>> = all.iter().collect();
        assert_eq!((all.len(), distinct.len()), (N, N));
    });
}
