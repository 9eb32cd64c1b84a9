//! Background threads at rest use next to no CPU: in every state where one of the store's
//! loops cannot act (poisoned, backing off after a failed checkpoint) or has nothing to do
//! (nothing due, stragglers it will not relocate, async pops waiting on far-off timers, no
//! room for a spare segment), its thread sleeps until a deadline in the future or until it
//! is signalled, never in a busy loop.
//!
//! Each state is set up in a child process of its own (this binary, running `idle_child`), so
//! that the only wharf threads in it are the ones of the store under test: the child finds
//! them by name in `/proc/self/task` and reads their CPU time (not wall time) over a second.

use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use wharf::testing::{Fault, OpKind, SimFs};
use wharf::{Durability, Error, PushOptions, QueueConfig, Wharf, WharfBuilder};

use crate::{payload, LONG};

/// The store's threads, by the names `Core::open` gives them.
const THREADS: [&str; 2] = ["wharf-background", "wharf-checkpoint"];
/// CPU time a sleeping thread may use in [`WINDOW`]: a bound on busy loops (which use all of
/// it), generous for a loaded machine; not a measure of speed.
const BUDGET: Duration = Duration::from_millis(50);
/// The wall time over which CPU time is measured.
const WINDOW: Duration = Duration::from_secs(1);
/// A checkpoint interval long passed in every state below, so that a loop that waits for a
/// trigger it cannot act on would spin.
const INTERVAL: Duration = Duration::from_millis(20);
const SEG: u64 = 64 << 10;
/// Names the state a child process sets up.
const CASE: &str = "WHARF_IDLE_CASE";

#[test]
fn the_checkpointer_sleeps_in_each_of_its_waiting_states() {
    check_cases(&["ck-poisoned", "ck-backing-off", "ck-nothing-due", "ck-stragglers-kept"]);
}

#[test]
fn the_background_thread_sleeps_in_each_of_its_waiting_states() {
    check_cases(&["bg-poisoned", "bg-timers-ahead", "bg-timers-passed", "bg-no-room-for-spares"]);
}

/// The other side of sleeping without a deadline while the log holds nothing new: the first
/// write after that wakes the checkpointer, and its interval checkpoint still comes.
#[test]
fn an_idle_checkpointer_still_takes_its_interval_checkpoint_once_the_log_moves() {
    crate::with_deadline(crate::TEST_LIMIT, "interval_after_idle", || {
        let dir = tempfile::tempdir().unwrap();
        let w = builder().checkpoint_every_bytes(u64::MAX).open(dir.path()).unwrap();
        let q = w.queue("q").unwrap();
        q.push(b"first").unwrap();
        wait_for("the first interval checkpoint", || w.stats().checkpoint_lsn > 0);
        // Idle for many intervals, then something new.
        std::thread::sleep(10 * INTERVAL);
        let before = w.stats().checkpoint_lsn;
        q.push(b"second").unwrap();
        let end = w.stats().durable_lsn;
        assert!(end > before, "the push is past the checkpoint");
        wait_for("an interval checkpoint after the idle time", || w.stats().checkpoint_lsn >= end);
    });
}

/// Runs one child per case (at once) and checks that each reports its threads idle.
fn check_cases(cases: &[&str]) {
    let children: Vec<_> = cases
        .iter()
        .map(|case| {
            let child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "idle::idle_child", "--ignored", "--nocapture"])
                .args(["--test-threads=1"])
                .env(CASE, case)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (*case, child)
        })
        .collect();
    let mut failed = Vec::new();
    for (case, mut child) in children {
        let deadline = Instant::now() + 6 * LONG;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("case {case}: the child process did not finish within {:?}", 6 * LONG);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines().filter(|l| l.contains("idle-cpu")) {
            println!("{}", &line[line.find("idle-cpu").unwrap()..]);
        }
        if !status.success() {
            failed.push(format!("{case}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(failed.is_empty(), "busy background threads:\n{}", failed.join("\n"));
}

/// The child process: sets up the state named by `WHARF_IDLE_CASE`, then measures.
#[test]
#[ignore = "run in a child process by the tests above"]
fn idle_child() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = SimFs::new();
    let dir = dir.path();
    match case.as_str() {
        "ck-poisoned" | "bg-poisoned" => poisoned(&sim, dir),
        "ck-backing-off" => backing_off(&sim, dir),
        "ck-nothing-due" => nothing_due(dir),
        "ck-stragglers-kept" => stragglers_kept(dir),
        "bg-timers-ahead" => timers_ahead(dir),
        "bg-timers-passed" => timers_passed(dir),
        "bg-no-room-for-spares" => no_room_for_spares(dir),
        other => panic!("unknown case {other}"),
    }
}

fn builder() -> WharfBuilder {
    Wharf::builder().segment_bytes(SEG).checkpoint_interval(Some(INTERVAL))
}

/// Measures this process's wharf threads over [`WINDOW`] (the store, and whatever the case
/// holds, stay alive meanwhile) and asserts that each stayed within [`BUDGET`].
fn measure(case: &str) {
    let before = cpu_by_thread();
    assert_eq!(before.len(), THREADS.len(), "{case}: the store's threads: {before:?}");
    std::thread::sleep(WINDOW);
    let after = cpu_by_thread();
    let mut busy = Vec::new();
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        let used = b.saturating_sub(*a);
        println!("idle-cpu {case}: {name} used {:.1} ms of CPU in {WINDOW:?}", ms(used));
        if used > BUDGET {
            busy.push(format!("{name} used {:.1} ms", ms(used)));
        }
    }
    assert!(busy.is_empty(), "{case}: {}", busy.join(", "));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The CPU time so far of each of this process's threads named in [`THREADS`], in that order.
fn cpu_by_thread() -> Vec<(&'static str, Duration)> {
    let mut out = Vec::new();
    for name in THREADS {
        // The kernel keeps 15 bytes of a thread's name.
        let comm = &name[..name.len().min(15)];
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let Ok(c) = std::fs::read_to_string(path.join("comm")) else { continue };
            if c.trim_end() == comm {
                out.push((name, thread_cpu(&path)));
            }
        }
    }
    out
}

/// A thread's CPU time: from `schedstat` (nanoseconds) or, without it, from `stat` (utime and
/// stime, in clock ticks of 10 ms).
fn thread_cpu(task: &Path) -> Duration {
    if let Ok(s) = std::fs::read_to_string(task.join("schedstat")) {
        if let Some(ns) = s.split_whitespace().next().and_then(|n| n.parse().ok()) {
            return Duration::from_nanos(ns);
        }
    }
    let stat = std::fs::read_to_string(task.join("stat")).unwrap();
    // The fields after the parenthesised name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split(' ').skip(11).take(2).map(|x| x.parse().unwrap()).collect();
    Duration::from_millis(10 * (f[0] + f[1]))
}

/// Waits until `cond` holds, or fails.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A pending `pop_async` on `q`, polled once with a waker that does nothing: the background
/// thread keeps the timers of its queue.
fn pending_pop(q: &wharf::Queue) -> impl Future + '_ {
    let mut fut = Box::pin(q.pop_async());
    let polled = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    assert!(polled.is_pending(), "nothing is ready");
    fut
}

/// A store poisoned by a failed fsync (on the simulated disk), with the checkpoint interval
/// passed, a pending async pop, a delayed message and a lease running out.
fn poisoned(sim: &SimFs, dir: &Path) {
    let w = wharf::testing::open_threaded(builder(), sim, dir).unwrap();
    let q = w.queue("q").unwrap();
    q.set_config(&QueueConfig::new().visibility_timeout(INTERVAL)).unwrap();
    q.push(b"leased").unwrap();
    let leased = q.try_pop().unwrap().unwrap();
    q.push_with(b"later", PushOptions::new().delay(Duration::from_secs(3600))).unwrap();
    let fut = pending_pop(&q);
    wait_for("a checkpoint", || w.stats().checkpoint_lsn > 0);
    sim.set_fault(Some(Fault { kind: OpKind::Sync, nth: 1, no_space: false, persistent: true }));
    assert!(matches!(q.push(b"lost"), Err(Error::Poisoned(_))));
    std::thread::sleep(2 * INTERVAL);
    measure("poisoned");
    drop((fut, leased));
}

/// A store whose checkpoints fail (its directory cannot be listed, so the state database
/// cannot be opened): the checkpointer retries once a second.
fn backing_off(sim: &SimFs, dir: &Path) {
    let w = wharf::testing::open_threaded(builder(), sim, dir).unwrap();
    let q = w.queue("q").unwrap();
    sim.set_fault(Some(Fault { kind: OpKind::List, nth: 1, no_space: false, persistent: true }));
    q.push(b"to checkpoint").unwrap();
    wait_for("a failed checkpoint", || sim.fault_fired());
    std::thread::sleep(2 * INTERVAL);
    measure("backing off");
    assert_eq!(w.stats().checkpoint_lsn, 0, "no checkpoint can succeed");
}

/// An idle store: checkpointed, nothing logged since, the interval long passed.
fn nothing_due(dir: &Path) {
    let w = builder().open(dir).unwrap();
    w.queue("q").unwrap().push(b"one").unwrap();
    wait_for("a checkpoint", || w.stats().checkpoint_lsn > 0);
    std::thread::sleep(2 * INTERVAL);
    measure("nothing due");
}

/// A sealed segment with a few unsettled messages (due for relocation 250 ms after the seal),
/// too many bytes to relocate: checkpoints leave them in the log.
fn stragglers_kept(dir: &Path) {
    let w = builder().open(dir).unwrap();
    let q = w.queue("q").unwrap();
    q.push(payload(0, 9000)).unwrap();
    let small: Vec<_> = (1..100).map(|i| q.push(payload(i, 900)).unwrap()).collect();
    assert!(crate::segments(dir).len() >= 2);
    let big = q.try_pop().unwrap().unwrap();
    for _ in &small {
        q.try_pop().unwrap().unwrap().ack_with(Durability::None).unwrap();
    }
    w.sync().unwrap();
    // Past the straggler grace of 250 ms and the checkpoint it triggers.
    std::thread::sleep(Duration::from_millis(600));
    wait_for("a checkpoint", || w.stats().checkpoint_lsn > 0);
    measure("stragglers kept");
    assert_eq!(w.checkpoint().unwrap().relocated, 0, "the straggler is too large to relocate");
    drop(big);
}

/// A pending async pop whose queue has a lease and a delayed message, both an hour away.
fn timers_ahead(dir: &Path) {
    let w = builder().open(dir).unwrap();
    let q = w.queue("q").unwrap();
    q.set_config(&QueueConfig::new().visibility_timeout(Duration::from_secs(3600))).unwrap();
    q.push(b"leased").unwrap();
    let leased = q.try_pop().unwrap().unwrap();
    q.push_with(b"later", PushOptions::new().delay(Duration::from_secs(3600))).unwrap();
    let fut = pending_pop(&q);
    std::thread::sleep(2 * INTERVAL);
    measure("timers ahead");
    drop((fut, leased));
}

/// A lease run out and a delayed message come due, on a queue that no future waits on (only
/// a pending future on another queue).
fn timers_passed(dir: &Path) {
    let w = builder().open(dir).unwrap();
    let q = w.queue("q").unwrap();
    let other = w.queue("other").unwrap();
    q.set_config(&QueueConfig::new().visibility_timeout(INTERVAL)).unwrap();
    q.push(b"leased").unwrap();
    let leased = q.try_pop().unwrap().unwrap();
    q.push_with(b"later", PushOptions::new().delay(INTERVAL)).unwrap();
    let fut = pending_pop(&other);
    std::thread::sleep(2 * INTERVAL);
    measure("timers passed");
    drop((fut, leased));
}

/// A store full up to its disk quota: no spare segment can be made, and a pending async pop.
fn no_room_for_spares(dir: &Path) {
    let w = builder().max_disk_bytes(6 * SEG).open(dir).unwrap();
    let q = w.queue("q").unwrap();
    let other = w.queue("other").unwrap();
    for i in 0.. {
        match q.push(payload(i, 1000)) {
            Ok(_) => assert!(i < 10_000, "never full"),
            Err(Error::Full { .. }) => break,
            Err(e) => panic!("push {i}: {e}"),
        }
    }
    let fut = pending_pop(&other);
    std::thread::sleep(2 * INTERVAL);
    measure("no room for spares");
    drop(fut);
}
