//! The worker pool: acks, retries, dead letters, panics, graceful shutdown.

use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use wharf::{
    Backoff, DeadReason, Delivery, Error, QueueConfig, TypedQueue, Wharf, Worker, WorkerBuilder,
};

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
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LONG, "condition never came true");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How long any test here may take before it counts as hung.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `test` on a thread of its own and fails if it is not done within `limit`: a worker that
/// hangs (in a handler, a shutdown or a join) fails its test with a message instead of
/// stalling the run. A panic in `test` is the test's panic.
fn within(limit: Duration, test: impl FnOnce() + Send + 'static) {
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    let (done_tx, done) = mpsc::channel::<()>();
    let body = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _done = done_tx; // dropped when `test` returns or panics
            test();
        })
        .unwrap();
    match done.recv_timeout(limit) {
        Err(RecvTimeoutError::Timeout) => panic!("{name} hung: not done after {limit:?}"),
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = body.join() {
                std::panic::resume_unwind(panic);
            }
        }
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
    within(LIMIT, || {
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
    });
}

#[test]
fn a_failed_job_waits_out_the_queue_backoff() {
    within(LIMIT, || {
        let (_dir, w) = store();
        let q = w.queue("jobs").unwrap();
        q.set_config(&QueueConfig::new().backoff(Backoff::Fixed(Duration::from_secs(3600))))
            .unwrap();
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
    });
}

#[test]
fn handler_errors_are_retried_then_dead_lettered_with_the_last_error() {
    within(LIMIT, || {
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
    });
}

#[test]
fn a_panicking_handler_fails_its_attempt_and_the_thread_goes_on() {
    within(LIMIT, || {
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
    });
}

#[test]
fn shutdown_waits_for_a_finishing_job_and_gives_up_on_a_stuck_one() {
    within(LIMIT, || {
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
    });
}

#[test]
fn a_job_given_up_at_shutdown_is_delivered_again_after_reopen() {
    within(LIMIT, || {
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
    });
}

#[test]
fn dropping_a_worker_stops_its_threads() {
    within(LIMIT, || {
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
    });
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Email {
    to: String,
    subject: String,
}

#[test]
fn a_typed_worker_decodes_values_and_dead_letters_undecodable_payloads() {
    within(LIMIT, || {
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
    });
}

#[test]
fn a_closed_store_stops_the_worker_and_shutdown_reports_it() {
    within(LIMIT, || {
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
    });
}

/// A queue whose leases last `visibility`.
fn queue_with_lease(w: &Wharf, name: &str, visibility: Duration) -> wharf::Queue {
    let q = w.queue(name).unwrap();
    q.set_config(&QueueConfig::new().visibility_timeout(visibility)).unwrap();
    q
}

#[test]
fn a_job_longer_than_its_lease_runs_once_and_is_acked() {
    within(LIMIT, || {
        // Issue 14, finding 8: a 1 s lease, two threads, a 2.5 s job. Without renewals the
        // second thread got the job at 1 s, the first one's ack failed at 2.5 s, and so on.
        let (_dir, w) = store();
        let q = queue_with_lease(&w, "long", Duration::from_secs(1));
        q.push(b"transcode").unwrap();
        let (started_tx, started) = mpsc::channel();
        let worker = Worker::builder(&q)
            .threads(2)
            .run(move |job| {
                started_tx.send(job.attempt()).unwrap();
                std::thread::sleep(Duration::from_millis(2500));
                Ok::<(), String>(())
            })
            .unwrap();
        assert_eq!(take(&started, 1), [1]);
        wait_until(|| worker.stats().processed == 1);
        let report = worker.shutdown(LONG).unwrap();
        assert_eq!(started.try_iter().count(), 0, "the job started once");
        let s = report.stats;
        assert_eq!((s.processed, s.failed, s.lease_expired, s.errors), (1, 0, 0, 0));
        let stats = q.stats().unwrap();
        assert_eq!(stats.processed, 1);
        assert_eq!((stats.ready, stats.delayed, stats.in_flight), (0, 0, 0));
    });
}

#[test]
fn a_typed_job_longer_than_its_lease_runs_once_and_is_acked() {
    within(LIMIT, || {
        let (_dir, w) = store();
        let emails: TypedQueue<Email> =
            TypedQueue::new(queue_with_lease(&w, "emails", Duration::from_millis(300)));
        emails.push(&Email { to: "ada@example.com".into(), subject: "slow".into() }).unwrap();
        let (started_tx, started) = mpsc::channel();
        let worker = Worker::typed(&emails)
            .threads(2)
            .run(move |email: Email, job| {
                started_tx.send((email.subject, job.attempt())).unwrap();
                std::thread::sleep(Duration::from_millis(1000));
                Ok::<(), String>(())
            })
            .unwrap();
        assert_eq!(take(&started, 1), [("slow".to_owned(), 1)]);
        wait_until(|| worker.stats().processed == 1);
        let report = worker.shutdown(LONG).unwrap();
        assert_eq!(started.try_iter().count(), 0, "the job started once");
        assert_eq!((report.stats.processed, report.stats.lease_expired), (1, 0));
        assert_eq!(emails.queue().stats().unwrap().processed, 1);
    });
}

#[test]
fn a_lease_the_handler_extended_is_not_cut_back_by_renewals() {
    within(LIMIT, || {
        let (_dir, w) = store();
        let q = queue_with_lease(&w, "jobs", Duration::from_millis(200));
        q.push(b"extends itself").unwrap();
        let (started_tx, started) = mpsc::channel();
        let builder = Worker::builder(&q).threads(1);
        let stopping = builder.shutdown_signal();
        let worker = builder
            .run(move |job: &Delivery| {
                job.extend(Duration::from_secs(3600)).unwrap();
                started_tx.send(()).unwrap();
                assert!(stopping.wait_timeout(LONG));
                Ok::<(), String>(())
            })
            .unwrap();
        take(&started, 1);
        // Several renewal rounds: none cuts the hour back to 200 ms.
        std::thread::sleep(Duration::from_millis(700));
        assert!(q.try_pop().unwrap().is_none(), "still leased");
        assert_eq!(q.stats().unwrap().in_flight, 1);
        let report = worker.shutdown(LONG).unwrap();
        assert_eq!((report.finished, report.released, report.stats.processed), (1, 0, 1));
    });
}

#[test]
fn a_store_closed_under_a_long_job_delivers_it_again_after_reopen() {
    within(LIMIT, || {
        // What a process dying mid-job leaves: leases (and their renewals) live in memory
        // only, so the job is delivered again after a restart, and the renewals that fail
        // meanwhile do not change how the handler's outcome is reported.
        let dir = tempfile::tempdir().unwrap();
        let w = small().open(dir.path()).unwrap();
        let q = queue_with_lease(&w, "jobs", Duration::from_millis(200));
        q.push(b"interrupted").unwrap();
        let (started_tx, started) = mpsc::channel();
        let (gate_tx, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let worker = Worker::builder(&q)
            .threads(2)
            .run(move |job| {
                started_tx.send(job.attempt()).unwrap();
                gate.lock().unwrap().recv_timeout(LONG).unwrap();
                Ok::<(), String>(())
            })
            .unwrap();
        assert_eq!(take(&started, 1), [1]);
        // Renewed several times: the other thread never got it.
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(q.stats().unwrap().in_flight, 1);
        assert!(started.try_recv().is_err(), "not delivered again while it runs");
        drop(q);
        w.close().unwrap();
        std::thread::sleep(Duration::from_millis(300)); // a renewal round on a closed store

        let w = Wharf::open(dir.path()).unwrap();
        let q = w.queue("jobs").unwrap();
        let again = q.try_pop().unwrap().expect("delivered again after reopen");
        assert_eq!((again.payload(), again.attempt()), (&b"interrupted"[..], 2));
        again.ack().unwrap();
        // The old handler returns Ok; its ack meets the closed store, as without renewals.
        gate_tx.send(()).unwrap();
        assert!(matches!(worker.shutdown(LONG), Err(Error::Closed)));
    });
}

/// Where the child process of `a_killed_process_gives_its_long_job_back_after_restart` finds
/// its store.
const CHILD_DIR: &str = "WHARF_TEST_WORKER_CHILD_DIR";

#[test]
#[ignore = "the child process of a_killed_process_gives_its_long_job_back_after_restart"]
fn child_runs_a_long_job_until_killed() {
    // Run alone (`--include-ignored`), it has nothing to do.
    let Some(dir) = std::env::var_os(CHILD_DIR).map(std::path::PathBuf::from) else { return };
    let w = Wharf::open(&dir).unwrap();
    let q = queue_with_lease(&w, "jobs", Duration::from_millis(200));
    let marks = dir.clone();
    let _worker = Worker::builder(&q)
        .threads(2)
        .run(move |job| {
            std::fs::write(marks.join(format!("started-{}", job.attempt())), b"").unwrap();
            std::thread::sleep(LIMIT);
            Ok::<(), String>(())
        })
        .unwrap();
    std::thread::sleep(LIMIT); // until killed
}

#[test]
fn a_killed_process_gives_its_long_job_back_after_restart() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let w = Wharf::open(dir.path()).unwrap();
        w.queue("jobs").unwrap().push(b"killed mid-job").unwrap();
        w.close().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "worker::child_runs_a_long_job_until_killed", "--ignored"])
            .env(CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until(|| dir.path().join("started-1").exists());
        // Several renewal rounds of the child's keeper: its second thread never got the job.
        std::thread::sleep(Duration::from_millis(700));
        child.kill().unwrap(); // SIGKILL: no shutdown, no close
        let status = child.wait().unwrap();
        assert!(!status.success(), "{status}");
        assert!(!dir.path().join("started-2").exists(), "delivered again while it ran");

        let w = Wharf::open(dir.path()).unwrap();
        let q = w.queue("jobs").unwrap();
        let again = q.try_pop().unwrap().expect("delivered again after the restart");
        assert_eq!((again.payload(), again.attempt()), (&b"killed mid-job"[..], 2));
        again.ack().unwrap();
    });
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`, by
/// thread id, from `/proc/self/task/*/stat`.
#[cfg(target_os = "linux")]
fn cpu_by_thread(prefix: &str) -> std::collections::BTreeMap<u32, (String, Duration)> {
    // utime and stime are in clock ticks of USER_HZ, 100 on every Linux architecture we run.
    const TICK: Duration = Duration::from_millis(10);
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        // A thread may exit between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = &stat[open + 1..close];
        if !name.starts_with(prefix) {
            continue;
        }
        // The fields after the name start at the third, state; utime and stime are the 14th
        // and 15th.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let tid = task.file_name().to_str().unwrap().parse().unwrap();
        out.insert(tid, (name.to_owned(), TICK * u32::try_from(ticks).unwrap()));
    }
    out
}

/// The names of the threads starting with `prefix`, and the CPU time they use over a second.
#[cfg(target_os = "linux")]
fn cpu_over_a_second(prefix: &str) -> (Vec<String>, Duration) {
    let before = cpu_by_thread(prefix);
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_by_thread(prefix);
    let mut names: Vec<String> = after.values().map(|(name, _)| name.clone()).collect();
    names.sort();
    let used = after
        .iter()
        .map(|(tid, (_, t))| t.saturating_sub(before.get(tid).map_or(Duration::ZERO, |b| b.1)))
        .sum();
    (names, used)
}

#[cfg(target_os = "linux")]
#[test]
fn a_waiting_pool_uses_next_to_no_cpu() {
    within(LIMIT, || {
        // Per wall second, far above what waiting costs and far below a spinning thread.
        const BOUND: Duration = Duration::from_millis(50);
        let (_dir, w) = store();
        // A short lease, so that the keeper renews several times while it is measured.
        let q = queue_with_lease(&w, "cpu", Duration::from_millis(150));
        let (started_tx, started) = mpsc::channel();
        let (gate_tx, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let worker = Worker::builder(&q)
            .threads(2)
            .run(move |_job| {
                started_tx.send(()).unwrap();
                gate.lock().unwrap().recv_timeout(LONG).unwrap();
                Ok::<(), String>(())
            })
            .unwrap();

        // Idle: nothing to do. The kernel keeps 15 bytes of a thread name; a new thread takes
        // its name once it runs.
        wait_until(|| cpu_by_thread("wharf-cpu-").len() == 3);
        let (names, used) = cpu_over_a_second("wharf-cpu-");
        assert_eq!(names, ["wharf-cpu-0", "wharf-cpu-1", "wharf-cpu-keepe"]);
        assert!(used < BOUND, "an idle pool used {used:?} of CPU in a second");

        // Shutting down: one handler waits, the keeper renews its lease, the other thread is
        // gone, and the thread calling `shutdown` waits for the handler.
        q.push(b"waits").unwrap();
        take(&started, 1);
        let stopper = std::thread::Builder::new()
            .name("wharf-cpu-stop".into())
            .spawn(move || worker.shutdown(LONG))
            .unwrap();
        let waiting = |names: &[String]| {
            names.len() == 3
                && ["wharf-cpu-keepe", "wharf-cpu-stop"]
                    .iter()
                    .all(|n| names.contains(&(*n).to_owned()))
        };
        wait_until(|| {
            waiting(&cpu_by_thread("wharf-cpu-").into_values().map(|(n, _)| n).collect::<Vec<_>>())
        });
        let (names, used) = cpu_over_a_second("wharf-cpu-");
        assert!(waiting(&names), "{names:?}");
        assert!(used < BOUND, "a pool shutting down used {used:?} of CPU in a second");
        assert_eq!(q.stats().unwrap().in_flight, 1, "the lease was kept");

        gate_tx.send(()).unwrap();
        let report = stopper.join().unwrap().unwrap();
        assert_eq!(
            (report.finished, report.stats.processed, report.stats.lease_expired),
            (1, 1, 0)
        );
    });
}

#[test]
fn every_worker_option_works_or_is_refused() {
    within(LIMIT, || {
        // Issue 14, finding 2: no option value panics, spawns without bound or hangs.
        type Set = fn(WorkerBuilder) -> WorkerBuilder;
        let ms = Duration::from_millis;
        let cases: [(&str, Set, bool); 14] = [
            ("threads(0)", |b| b.threads(0), false),
            ("threads(1)", |b| b.threads(1), true),
            ("threads(3)", |b| b.threads(3), true),
            ("threads(1025)", |b| b.threads(1025), false),
            ("threads(usize::MAX)", |b| b.threads(usize::MAX), false),
            ("poll_timeout(0)", |b| b.poll_timeout(Duration::ZERO), false),
            ("poll_timeout(1 ns)", |b| b.poll_timeout(Duration::from_nanos(1)), false),
            ("poll_timeout(1 ms)", |b| b.poll_timeout(Duration::from_millis(1)), true),
            ("poll_timeout(60 s)", |b| b.poll_timeout(Duration::from_secs(60)), true),
            ("poll_timeout(60 s + 1 ns)", |b| b.poll_timeout(Duration::new(60, 1)), false),
            ("poll_timeout(MAX)", |b| b.poll_timeout(Duration::MAX), false),
            ("drop_deadline(0)", |b| b.drop_deadline(Duration::ZERO), true),
            ("drop_deadline(1 ns)", |b| b.drop_deadline(Duration::from_nanos(1)), true),
            ("drop_deadline(MAX)", |b| b.drop_deadline(Duration::MAX), true),
        ];
        let (_dir, w) = store();
        let q = w.queue("opts").unwrap();
        for (name, set, valid) in cases {
            let (tx, rx) = mpsc::channel();
            let run = set(Worker::builder(&q).threads(1)).run(move |job| {
                tx.send(job.payload().to_vec()).unwrap();
                Ok::<(), String>(())
            });
            let worker = match (run, valid) {
                (Err(Error::InvalidOption(_)), false) => continue,
                (Ok(worker), true) => worker,
                (run, _) => panic!("{name}: {run:?}"),
            };
            q.push(name.as_bytes()).unwrap();
            assert_eq!(take(&rx, 1), [name.as_bytes()], "{name}");
            // Idle threads wait in a pop for up to the poll timeout (a minute, in one case):
            // pushes wake them to see the shutdown sooner. One they took is released.
            let dropping = std::thread::spawn(move || drop(worker));
            while !dropping.is_finished() {
                q.push(b"wake").unwrap();
                std::thread::sleep(ms(20));
            }
            dropping.join().unwrap();
            while let Some(d) = q.try_pop().unwrap() {
                d.ack().unwrap();
            }
        }

        // The typed builder checks the same way.
        let typed: TypedQueue<Email> = TypedQueue::new(w.queue("typed").unwrap());
        let ok = |_: Email, _: &Delivery| Ok::<(), String>(());
        let many = Worker::typed(&typed).threads(usize::MAX).run(ok);
        assert!(matches!(many, Err(Error::InvalidOption(_))), "{many:?}");
        let never = Worker::typed(&typed).poll_timeout(Duration::MAX).run(ok);
        assert!(matches!(never, Err(Error::InvalidOption(_))), "{never:?}");

        // The longest deadlines wait as long as it takes, without overflowing.
        q.push(b"until shutdown").unwrap();
        let (started_tx, started) = mpsc::channel();
        let builder = Worker::builder(&q).threads(2).drop_deadline(Duration::MAX);
        let stopping = builder.shutdown_signal();
        let worker = builder
            .run(move |_job| {
                started_tx.send(()).unwrap();
                assert!(stopping.wait_timeout(Duration::MAX));
                Ok::<(), String>(())
            })
            .unwrap();
        take(&started, 1);
        let report = worker.shutdown(Duration::MAX).unwrap();
        assert_eq!((report.finished, report.released, report.stats.processed), (1, 0, 1));
    });
}
