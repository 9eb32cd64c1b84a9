//! The worker pool: acks, retries, dead letters, panics, graceful shutdown.

use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use wharf::{Backoff, DeadReason, Error, QueueConfig, TypedQueue, Wharf, Worker};

use crate::{payload, small, LONG};

fn store() -> (tempfile::TempDir, Wharf) {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    (dir, w)
}

/// The next `n` values from `rx`, each within [`LONG`] (a bound only a bug reaches).
fn take<T>(rx: &Receiver<T>, n: usize) -> Vec<T> {
    (0..n).map(|_| rx.recv_timeout(LONG).expect("the worker stalled")).collect()
}

/// Waits until `cond` holds, failing after [`LONG`].
fn wait_until(mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < LONG, "condition never came true");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn worker_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Worker>();
    check::<wharf::ShutdownSignal>();
}

#[test]
fn four_threads_process_every_job_and_ack_it() {
    const JOBS: usize = 200;
    let (_dir, w) = store();
    let q = w.queue("jobs").unwrap();
    q.push_batch((0..JOBS).map(|i| payload(i, 40))).unwrap();

    // The first four handlers wait for each other: they can only all arrive if four threads
    // run handlers at the same time.
    let arrived = std::sync::Arc::new((Mutex::new(0usize), Condvar::new()));
    let (tx, rx) = mpsc::channel();
    let meet = std::sync::Arc::clone(&arrived);
    let worker = Worker::builder(&q)
        .threads(4)
        .run(move |job| {
            let (count, cv) = &*meet;
            let mut n = count.lock().unwrap();
            let mut met = None;
            if *n < 4 {
                *n += 1;
                cv.notify_all();
                let (n, _) = cv.wait_timeout_while(n, LONG, |n| *n < 4).unwrap();
                met = Some(*n >= 4);
            } else {
                drop(n);
            }
            tx.send((job.payload().to_vec(), met)).unwrap();
            Ok::<(), String>(())
        })
        .unwrap();
    let got = take(&rx, JOBS);
    let report = worker.shutdown(LONG).unwrap();

    let payloads: BTreeSet<Vec<u8>> = got.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(payloads, (0..JOBS).map(|i| payload(i, 40)).collect());
    let meetings: Vec<bool> = got.iter().filter_map(|&(_, met)| met).collect();
    assert_eq!(meetings, [true; 4], "four handlers ran at once");
    assert_eq!((report.stats.processed, report.stats.failed), (JOBS as u64, 0));
    // Handlers still returning when shutdown began finished: none was given up on.
    assert_eq!((report.released, report.stats.threads), (0, 0));
    let stats = q.stats().unwrap();
    assert_eq!(stats.processed, JOBS as u64);
    assert_eq!((stats.ready, stats.delayed, stats.in_flight), (0, 0, 0));
}

#[test]
fn a_failed_job_waits_out_the_queue_backoff() {
    let (_dir, w) = store();
    let q = w.queue("jobs").unwrap();
    q.set_config(&QueueConfig::new().backoff(Backoff::Fixed(Duration::from_secs(3600)))).unwrap();
    q.push(b"call the api").unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = Worker::builder(&q)
        .threads(2)
        .run(move |job| {
            tx.send(job.attempt()).unwrap();
            Err("api: 503")
        })
        .unwrap();
    assert_eq!(take(&rx, 1), [1]);
    let report = worker.shutdown(LONG).unwrap();
    assert_eq!((report.stats.failed, report.stats.processed), (1, 0));

    let waiting = q.peek(10).unwrap();
    assert_eq!(waiting.len(), 1);
    let due = waiting[0].due.expect("delayed by the backoff");
    assert!(due > SystemTime::now() + Duration::from_secs(1800), "due an hour later");
    assert_eq!(waiting[0].attempts, 1);
    assert_eq!(waiting[0].last_error.as_deref(), Some("api: 503"));
    assert_eq!(q.depth().unwrap().delayed, 1);
    assert!(rx.try_recv().is_err(), "not delivered again before it is due");
}

#[test]
fn handler_errors_are_retried_then_dead_lettered_with_the_last_error() {
    let (_dir, w) = store();
    let q = w.queue("jobs").unwrap();
    let backoff = Backoff::exponential(Duration::from_millis(1), Duration::from_millis(8));
    q.set_config(&QueueConfig::new().max_attempts(3).backoff(backoff)).unwrap();
    q.push(b"doomed").unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = Worker::builder(&q)
        .threads(4)
        .run(move |job| {
            tx.send(job.attempt()).unwrap();
            Err(format!("boom on attempt {}", job.attempt()))
        })
        .unwrap();
    assert_eq!(take(&rx, 3), [1, 2, 3]);
    let report = worker.shutdown(LONG).unwrap();
    assert_eq!((report.stats.failed, report.stats.processed), (3, 0));
    assert!(rx.try_recv().is_err(), "no fourth attempt");

    let stats = q.stats().unwrap();
    assert_eq!((stats.failed, stats.dead_lettered), (3, 1));
    assert_eq!((stats.ready, stats.delayed, stats.in_flight), (0, 0, 0));
    let dead = q.dead_letter_queue().unwrap().unwrap().peek(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"doomed");
    assert_eq!(dead[0].dead_lettered_from, Some(("jobs".to_owned(), DeadReason::MaxAttempts)));
    assert_eq!(dead[0].last_error.as_deref(), Some("boom on attempt 3"));
}

#[test]
fn a_panicking_handler_fails_its_attempt_and_the_thread_goes_on() {
    let (_dir, w) = store();
    let q = w.queue("jobs").unwrap();
    q.set_config(&QueueConfig::new().max_attempts(1)).unwrap();
    q.push(b"bad").unwrap();
    q.push_batch((0..5).map(|i| payload(i, 20))).unwrap();
    let (tx, rx) = mpsc::channel();
    // One thread: the jobs after the panic can only be done by the thread that panicked.
    let worker = Worker::builder(&q)
        .threads(1)
        .run(move |job| {
            assert_ne!(job.payload(), b"bad", "kaboom");
            tx.send(job.payload().to_vec()).unwrap();
            Ok::<(), String>(())
        })
        .unwrap();
    assert_eq!(take(&rx, 5), (0..5).map(|i| payload(i, 20)).collect::<Vec<_>>());
    let report = worker.shutdown(LONG).unwrap();
    let s = report.stats;
    assert_eq!((s.processed, s.failed, s.panicked), (5, 1, 1));

    let dead = q.dead_letter_queue().unwrap().unwrap().peek(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"bad");
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(error.starts_with("panicked: ") && error.contains("kaboom"), "{error}");
}

#[test]
fn shutdown_waits_for_a_finishing_job_and_gives_up_on_a_stuck_one() {
    let (_dir, w) = store();
    let q = w.queue("jobs").unwrap();
    q.push_batch(["finishes", "stuck"]).unwrap();
    let (started_tx, started) = mpsc::channel();
    let (gate_tx, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let builder = Worker::builder(&q).threads(2);
    let stopping = builder.shutdown_signal();
    let worker = builder
        .run(move |job| {
            started_tx.send(job.payload().to_vec()).unwrap();
            if job.payload() == b"finishes" {
                // Still running when shutdown begins, done right after.
                assert!(stopping.wait_timeout(LONG));
            } else {
                // Done only once the test says so, long after the deadline.
                gate.lock().unwrap().recv_timeout(LONG).unwrap();
            }
            Ok::<(), String>(())
        })
        .unwrap();
    let mut both = take(&started, 2);
    both.sort();
    assert_eq!(both, [b"finishes".to_vec(), b"stuck".to_vec()]);

    let report = worker.shutdown(Duration::from_secs(2)).unwrap();
    assert_eq!((report.finished, report.released), (1, 1));
    assert_eq!(report.stats.processed, 1);
    // The stuck job is ready again at once, for another consumer.
    let again = q.try_pop().unwrap().expect("the stuck job is ready again");
    assert_eq!((again.payload(), again.attempt()), (&b"stuck"[..], 2));
    again.ack().unwrap();
    assert!(q.try_pop().unwrap().is_none(), "the finished job was acked");
    assert_eq!(q.stats().unwrap().processed, 2);
    // The late handler's outcome is discarded.
    gate_tx.send(()).unwrap();
}

#[test]
fn a_job_given_up_at_shutdown_is_delivered_again_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    q.push(b"stuck").unwrap();
    let (started_tx, started) = mpsc::channel();
    let (gate_tx, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let worker = Worker::builder(&q)
        .threads(1)
        .run(move |_job| {
            started_tx.send(()).unwrap();
            gate.lock().unwrap().recv_timeout(LONG).unwrap();
            Ok::<(), String>(())
        })
        .unwrap();
    take(&started, 1);
    let report = worker.shutdown(Duration::ZERO).unwrap();
    assert_eq!((report.finished, report.released), (0, 1));
    // The abandoned handler still holds its delivery: close the store for every handle.
    drop(q);
    w.close().unwrap();

    let w = Wharf::open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let again = q.try_pop().unwrap().expect("delivered again after reopen");
    assert_eq!((again.payload(), again.attempt()), (&b"stuck"[..], 2));
    again.ack().unwrap();
    gate_tx.send(()).unwrap();
}

#[test]
fn dropping_a_worker_stops_its_threads() {
    let (_dir, w) = store();
    let q = w.queue("jobs").unwrap();
    q.push_batch(["a", "b", "c"]).unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = Worker::builder(&q)
        .threads(2)
        .drop_deadline(LONG)
        .run(move |job| {
            tx.send(job.payload().to_vec()).unwrap();
            Ok::<(), String>(())
        })
        .unwrap();
    take(&rx, 3);
    drop(worker);
    assert_eq!(q.stats().unwrap().processed, 3, "handlers done before the drop were acked");
    q.push(b"after").unwrap();
    let d = q.try_pop().unwrap().expect("no worker thread took it");
    assert_eq!(d.payload(), b"after");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Email {
    to: String,
    subject: String,
}

#[test]
fn a_typed_worker_decodes_values_and_dead_letters_undecodable_payloads() {
    let (_dir, w) = store();
    let emails: TypedQueue<Email> = TypedQueue::new(w.queue("emails").unwrap());
    emails.queue().push(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    let sent: Vec<Email> = (0..3)
        .map(|i| Email { to: format!("user{i}@example.com"), subject: format!("hello {i}") })
        .collect();
    emails.push_batch(&sent).unwrap();
    let (tx, rx) = mpsc::channel();
    // One thread, so the bad payload (first in line) is settled before the good ones arrive.
    let worker = Worker::typed(&emails)
        .threads(1)
        .run(move |email: Email, job| {
            tx.send((email, job.attempt())).unwrap();
            Ok::<(), String>(())
        })
        .unwrap();
    let got = take(&rx, 3);
    let report = worker.shutdown(LONG).unwrap();
    assert_eq!(got, sent.into_iter().map(|e| (e, 1)).collect::<Vec<_>>());
    assert_eq!((report.stats.processed, report.stats.failed), (3, 1));

    let dead = emails.queue().dead_letter_queue().unwrap().unwrap().peek(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].dead_lettered_from, Some(("emails".to_owned(), DeadReason::Explicit)));
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(error.starts_with("payload codec: decoding a "), "{error}");
}

#[test]
fn a_closed_store_stops_the_worker_and_shutdown_reports_it() {
    let (_dir, w) = store();
    let q = w.queue("jobs").unwrap();
    let worker = Worker::builder(&q)
        .threads(2)
        .poll_timeout(Duration::from_millis(10))
        .run(|_job| Ok::<(), String>(()))
        .unwrap();
    w.close().unwrap();
    wait_until(|| worker.stats().threads == 0);
    assert!(matches!(worker.shutdown(LONG), Err(Error::Closed)));
}

#[test]
fn a_worker_needs_a_thread_and_a_poll_timeout() {
    let (_dir, w) = store();
    let q = w.queue("jobs").unwrap();
    let ok = |_: &wharf::Delivery| Ok::<(), String>(());
    let zero_threads = Worker::builder(&q).threads(0).run(ok);
    assert!(matches!(zero_threads, Err(Error::InvalidOption(_))));
    let zero_poll = Worker::builder(&q).poll_timeout(Duration::ZERO).run(ok);
    assert!(matches!(zero_poll, Err(Error::InvalidOption(_))));
}
