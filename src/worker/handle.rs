//! `Worker`: the handle of a running pool, and its shutdown (`Worker::shutdown`, or drop).

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::run::{Inner, WorkerStats};
use crate::error::Result;
use crate::queue::Delivery;
use crate::queue::Queue;

/// How long dropping a [`Worker`] waits for its running handlers, unless
/// [`WorkerBuilder::drop_deadline`](super::WorkerBuilder::drop_deadline) says otherwise.
pub const DEFAULT_DROP_DEADLINE: Duration = Duration::from_secs(10);

/// A pool of threads processing one queue's messages with a handler, started by
/// [`WorkerBuilder::run`](super::WorkerBuilder::run).
///
/// Each thread pops a message, runs the handler on it, and settles the message by the outcome:
///
/// - `Ok(())`: [ack](Delivery::ack), done;
/// - `Err(e)`: [nack](Delivery::nack_with) with `e.to_string()` as the error text, so the
///   message is retried after the queue's [`Backoff`](crate::Backoff), and after its
///   `max_attempts` goes to the dead-letter queue, where [`Queue::peek`] shows the text;
/// - a panic: caught, and treated as `Err` with the panic message (`"panicked: ..."`); the
///   thread goes on with the next message. The panic hook still runs (by default it prints).
///
/// **Long jobs keep their lease.** While a handler runs, the pool's keeper thread renews its
/// message's lease every third of the queue's visibility timeout, to the full timeout from
/// then, so a job may run longer than the timeout without being delivered again (a lease the
/// handler [extended](Delivery::extend) further is left as it is). A renewal changes only the
/// store's memory, it writes nothing to the log. Renewals stop as the handler returns, before
/// the message is settled, and when shutdown gives a handler up; if the process dies, nothing
/// renews the lease any more and the message is delivered again after a restart. A renewal
/// that fails (say, the store was closed) changes nothing about how the handler's outcome is
/// settled and counted. A change of the queue's visibility timeout reaches the keeper at its
/// next renewal.
///
/// [`Worker::shutdown`] stops the pool: see there. **Dropping** a worker shuts it down the same
/// way with [`DEFAULT_DROP_DEADLINE`] (or
/// [`WorkerBuilder::drop_deadline`](super::WorkerBuilder::drop_deadline)), so the drop can
/// block that long while handlers finish.
///
/// ```
/// use std::time::Duration;
/// use wharf::{QueueConfig, Worker};
/// # let dir = tempfile::tempdir()?;
/// let wharf = wharf::Wharf::open(dir.path())?;
/// let thumbs = wharf.queue("thumbnails")?;
/// thumbs.set_config(&QueueConfig::new().max_attempts(3))?;
/// thumbs.push_batch(["a.jpg", "b.jpg", "c.jpg"])?;
///
/// let worker = Worker::builder(&thumbs).threads(2).run(|job| {
///     let name = std::str::from_utf8(job.payload()).map_err(|e| e.to_string())?;
///     println!("thumbnail for {name}");
///     Ok::<(), String>(())
/// })?;
/// # while thumbs.stats()?.processed < 3 { std::thread::sleep(Duration::from_millis(5)); }
/// let report = worker.shutdown(Duration::from_secs(5))?;
/// assert_eq!(report.stats.processed, 3);
/// # Ok::<(), wharf::Error>(())
/// ```
pub struct Worker {
    pub(super) queue: Queue,
    pub(super) inner: Arc<Inner>,
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) keeper: Option<JoinHandle<()>>,
    pub(super) drop_deadline: Duration,
}

/// What [`Worker::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Handlers running when shutdown began that returned before the deadline; their messages
    /// were settled by their outcome.
    pub finished: usize,
    /// Handlers still running at the deadline: their messages were given up on, and are ready
    /// again at once for another consumer (or after a reopen).
    pub released: usize,
    /// The worker's counters when it stopped.
    pub stats: WorkerStats,
}

impl Worker {
    /// The worker's counters so far.
    pub fn stats(&self) -> WorkerStats {
        self.inner.stats()
    }

    /// Stops the worker: no thread starts a new handler from now on, and shutdown waits up to
    /// `deadline` for the running handlers to return (their messages are settled as usual).
    /// Handlers still running then are given up on: their leases end at once, so their
    /// messages are ready again for another consumer (or after a reopen); their threads are
    /// left to finish on their own, and their outcome is discarded (each such thread keeps
    /// its [`Delivery`], and so the store, alive until its handler returns; use
    /// [`Wharf::close`](crate::Wharf::close) to close the store regardless).
    ///
    /// Until then, the leases of the running handlers are renewed as usual. All other threads
    /// (the keeper too) are joined before this returns, which can take up to one
    /// [`poll_timeout`](super::WorkerBuilder::poll_timeout) after the deadline. A `deadline` too
    /// large for the clock (say [`Duration::MAX`]) waits for every handler, however long.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) or [`Error::Poisoned`](crate::Error::Poisoned)
    /// if a worker thread stopped early because the store was closed or poisoned under it. The
    /// worker is stopped either way.
    pub fn shutdown(mut self, deadline: Duration) -> Result<ShutdownReport> {
        self.stop(deadline)
    }

    fn stop(&mut self, deadline: Duration) -> Result<ShutdownReport> {
        let until = Instant::now().checked_add(deadline);
        let inner = &*self.inner;
        let mut pool = inner.pool.lock();
        // Under the pool lock, so that no thread registers a handler after the count below.
        inner.signal.request();
        let in_flight = pool.busy.iter().flatten().count();
        while pool.live > 0 {
            match until {
                Some(t) => {
                    if inner.exited.wait_until(&mut pool, t).timed_out() {
                        break;
                    }
                }
                None => inner.exited.wait(&mut pool),
            }
        }
        let given_up: Vec<(usize, Arc<Delivery>)> = pool
            .busy
            .iter_mut()
            .enumerate()
            .filter_map(|(i, slot)| slot.take().map(|d| (i, d)))
            .collect();
        // Every slot is empty now, so the keeper's next round would renew nothing.
        pool.keeper_done = true;
        inner.keep.notify_all();
        drop(pool);
        for (_, d) in &given_up {
            // Ends the lease now: the message is ready again, and the handler's late
            // settlement (or its drop) fails with `LeaseExpired`, changing nothing. It fails
            // here only if the lease had already run out, which is as good.
            let _ = d.extend(Duration::ZERO);
        }
        for (i, thread) in self.threads.drain(..).enumerate() {
            if !given_up.iter().any(|&(j, _)| j == i) {
                // A thread only panics outside the handler on a bug here; its exit guard
                // has already accounted for it.
                let _ = thread.join();
            }
        }
        if let Some(keeper) = self.keeper.take() {
            // It holds the pool lock only for a round of renewals, and exits when it next
            // looks at `keeper_done`.
            let _ = keeper.join();
        }
        let fatal = inner.pool.lock().fatal.take();
        if let Some(e) = fatal {
            return Err(e);
        }
        Ok(ShutdownReport {
            finished: in_flight.saturating_sub(given_up.len()),
            released: given_up.len(),
            stats: inner.stats(),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.keeper.is_some() {
            // Best effort: a store error already stopped the threads it reached.
            let _ = self.stop(self.drop_deadline);
        }
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue.name())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
