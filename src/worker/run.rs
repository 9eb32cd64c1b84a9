//! The pool's threads: each worker thread pops, runs the handler and settles; the keeper
//! renews the leases of running handlers. Also the state they share with the handle (`Inner`).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::signal::ShutdownSignal;
use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::queue::{Delivery, NackOptions};

/// The shortest time between two renewal rounds of the keeper, whatever the visibility timeout.
const MIN_RENEW_PERIOD: Duration = Duration::from_millis(1);

/// Counters of a [`Worker`](super::Worker) since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Messages whose handler returned `Ok` and whose ack went through.
    pub processed: u64,
    /// Messages whose handler returned `Err` or panicked (or, for a typed worker, whose
    /// payload did not decode); each was nacked or dead-lettered.
    pub failed: u64,
    /// Of `failed`, the handler calls that panicked.
    pub panicked: u64,
    /// Settlements refused because the handler took longer than the message's lease.
    pub lease_expired: u64,
    /// Other errors from the store on pop or settle. On [`Error::Closed`] or
    /// [`Error::Poisoned`] a thread stops, and [`Worker::shutdown`](super::Worker::shutdown)
    /// returns that error.
    pub errors: u64,
    /// Handlers running now.
    pub in_flight: usize,
    /// Worker threads still running.
    pub threads: usize,
}

/// What the thread does with a message after its handler ran.
pub(super) enum Outcome {
    Ack,
    Nack(String),
    DeadLetter(String),
}

pub(super) type Job = dyn Fn(&Delivery) -> Outcome + Send + Sync;

/// What the threads share with the handle.
pub(super) struct Inner {
    pub(super) signal: ShutdownSignal,
    pub(super) pool: Mutex<Pool>,
    /// Notified when a thread exits.
    pub(super) exited: Condvar,
    /// Wakes the keeper: a handler started while it had nothing to renew, or the pool stopped.
    pub(super) keep: Condvar,
    pub(super) counters: Counters,
}

/// The threads' registry, under `Inner::pool`.
pub(super) struct Pool {
    /// The delivery each thread's handler is running on. Taken back by the thread when the
    /// handler returns, or by `shutdown` at the deadline to give it up; the keeper renews
    /// the leases of those here.
    pub(super) busy: Vec<Option<Arc<Delivery>>>,
    /// Worker threads still running.
    pub(super) live: usize,
    /// The store error that stopped a thread, for `shutdown` to return.
    pub(super) fatal: Option<Error>,
    /// The keeper waits without a timeout, for a handler to start.
    pub(super) keeper_idle: bool,
    /// No lease needs keeping any more: the keeper exits.
    pub(super) keeper_done: bool,
}

#[derive(Default)]
pub(super) struct Counters {
    processed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    lease_expired: AtomicU64,
    errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Inner {
    pub(super) fn stats(&self) -> WorkerStats {
        let c = &self.counters;
        let (in_flight, threads) = {
            let pool = self.pool.lock();
            (pool.busy.iter().flatten().count(), pool.live)
        };
        WorkerStats {
            processed: c.processed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
            lease_expired: c.lease_expired.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            in_flight,
            threads,
        }
    }
}

/// Errors after which a worker thread cannot go on.
fn is_fatal(e: &Error) -> bool {
    matches!(e, Error::Closed | Error::Poisoned(_))
}

/// Accounts for a thread's exit however it ends, so that `shutdown` never waits for a thread
/// that is gone.
struct Exit<'a> {
    inner: &'a Inner,
    fatal: Option<Error>,
}

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let mut pool = self.inner.pool.lock();
        pool.live -= 1;
        if pool.fatal.is_none() {
            pool.fatal = self.fatal.take();
        }
        self.inner.exited.notify_all();
    }
}

/// One worker thread.
pub(super) fn work(i: usize, queue: &Queue, job: &Job, inner: &Inner, poll: Duration) {
    let mut exit = Exit { inner, fatal: None };
    while !inner.signal.is_requested() {
        let d = match queue.pop_timeout(poll) {
            Ok(Some(d)) => Arc::new(d),
            Ok(None) => continue,
            Err(e) if is_fatal(&e) => {
                exit.fatal = Some(e);
                return;
            }
            Err(_) => {
                // Say, a payload failing its checksum (it stays leased) or a full disk: go on,
                // without spinning on a persistent error.
                bump(&inner.counters.errors);
                inner.signal.wait_timeout(poll);
                continue;
            }
        };
        {
            let mut pool = inner.pool.lock();
            if inner.signal.is_requested() {
                drop(pool);
                // Popped as shutdown began: not started, so give it back at once.
                if let Some(d) = Arc::into_inner(d) {
                    let _ = d.release();
                }
                return;
            }
            pool.busy[i] = Some(Arc::clone(&d));
            if pool.keeper_idle {
                inner.keep.notify_one();
            }
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| job(&d))).unwrap_or_else(|panic| {
            bump(&inner.counters.panicked);
            Outcome::Nack(format!("panicked: {}", panic_text(&*panic)))
        });
        let ours = inner.pool.lock().busy[i].take();
        let Some(ours) = ours else {
            // Given up on by `shutdown`: the lease is over and the message may be with
            // another consumer already. Dropping `d` changes nothing.
            return;
        };
        drop(ours);
        let Some(d) = Arc::into_inner(d) else { return };
        if let Err(e) = settle(d, outcome, &inner.counters) {
            if is_fatal(&e) {
                exit.fatal = Some(e);
                return;
            }
        }
    }
}

/// The keeper thread: renews the lease of every running handler's delivery, a round every
/// third of the shortest visibility timeout among them, and waits without a timeout while no
/// handler runs. A renewal that fails is left at that: the lease lapses (or the store is gone)
/// and the handler's thread settles and counts its outcome as usual.
pub(super) fn keep(inner: &Inner) {
    let mut pool = inner.pool.lock();
    while !pool.keeper_done {
        // Under the pool lock: a thread takes its delivery out of `busy` (to settle it), and
        // `stop` gives one up, only between two rounds.
        let period = pool
            .busy
            .iter()
            .flatten()
            .filter_map(|d| d.renew().ok())
            .map(|visibility| (visibility / 3).max(MIN_RENEW_PERIOD))
            .min();
        match period {
            // Woken early only by `stop` (or spuriously: one more round does no harm).
            Some(p) => {
                inner.keep.wait_for(&mut pool, p);
            }
            None => {
                pool.keeper_idle = true;
                inner.keep.wait(&mut pool);
                pool.keeper_idle = false;
            }
        }
    }
}

/// Settles `d` by its handler's outcome, counting it.
fn settle(d: Delivery, outcome: Outcome, c: &Counters) -> Result<()> {
    let settled = match outcome {
        Outcome::Ack => d.ack().map(|()| bump(&c.processed)),
        Outcome::Nack(text) => {
            bump(&c.failed);
            d.nack_with(NackOptions::new().error(text))
        }
        Outcome::DeadLetter(text) => {
            bump(&c.failed);
            d.dead_letter(&text)
        }
    };
    match settled {
        Err(Error::LeaseExpired) => bump(&c.lease_expired),
        Err(_) => bump(&c.errors),
        Ok(()) => {}
    }
    settled
}

/// The message of a panic, if it has one.
fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}
