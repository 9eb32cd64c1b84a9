//! Async pops: `Queue::pop_async` and `Queue::pop_batch_async`, futures driven by wakers, with
//! no runtime in the library.
//!
//! Invariant: a future takes a message only inside the poll that returns `Ready` with it, so a
//! future dropped at any other moment holds nothing; a pending future is registered in its
//! queue's `wakers` at most once, and removes its entry when it completes or is dropped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use parking_lot::MutexGuard;

use super::delivery::Delivery;
use super::handle::{Queue, Taken};
use crate::error::Result;
use crate::store::State;

/// Numbers pending futures, to key their entries in a queue's `wakers`.
static NEXT_WAITER: AtomicU64 = AtomicU64::new(0);

impl Queue {
    /// Pops the next ready message, as a future: it resolves when a message is ready (the
    /// highest priority first, the oldest first within a priority), like [`Queue::pop`] but
    /// without blocking a thread. It works on any executor; the library runs none.
    ///
    /// A pending future is woken by a push, a nack, a release or a close, and, through the
    /// store's background thread, by a delayed message becoming due or a lease running out. It
    /// is never woken on a fixed tick. (Stores opened without the background thread, such as
    /// the simulated-disk ones of `wharf::testing`, wake it only by pushes and settlements.)
    ///
    /// The future takes its message only in the poll that returns it: dropping it while it is
    /// pending (say, when a `select!` picks another branch) loses nothing. A poll may do the
    /// same short I/O as [`Queue::try_pop`]: write the delivery record (when the store counts
    /// crashed attempts or acks are `Immediate`) and read the payload.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let wharf = wharf::Wharf::open(dir.path())?;
    /// let jobs = wharf.queue("jobs")?;
    /// jobs.push(b"resize photo 17")?;
    ///
    /// let job = futures::executor::block_on(jobs.pop_async())?;
    /// assert_eq!(job.payload(), b"resize photo 17");
    /// job.ack()?;
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) when the store is closed, also while the future
    /// is pending; otherwise as [`Queue::try_pop`].
    pub fn pop_async(&self) -> PopFuture<'_> {
        PopFuture { waiter: Waiter::new(self) }
    }

    /// Pops up to `max` messages, as a future: it resolves once at least one is ready, with
    /// every message ready at that moment, up to `max`. `max == 0` resolves at once, empty.
    /// Wake-ups and dropping are as for [`Queue::pop_async`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let jobs = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// jobs.push_batch([b"a", b"b", b"c"])?;
    /// let batch = futures::executor::block_on(jobs.pop_batch_async(2))?;
    /// assert_eq!(batch.len(), 2);
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::pop_async`].
    pub fn pop_batch_async(&self, max: usize) -> PopBatchFuture<'_> {
        PopBatchFuture { waiter: Waiter::new(self), max }
    }
}

/// The future of [`Queue::pop_async`].
///
/// # Panics
/// When polled again after it returned `Ready`.
#[must_use = "futures do nothing unless awaited or polled"]
pub struct PopFuture<'a> {
    waiter: Waiter<'a>,
}

impl fmt::Debug for PopFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopFuture").field("queue", &self.waiter.queue.name()).finish()
    }
}

impl Future for PopFuture<'_> {
    type Output = Result<Delivery>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let waiter = &mut self.get_mut().waiter;
        let queue = waiter.queue;
        waiter.poll_take(cx, 1).map(|taken| {
            let t = taken?.into_iter().next().ok_or(crate::Error::Closed)?;
            queue.deliver(t)
        })
    }
}

/// The future of [`Queue::pop_batch_async`].
///
/// # Panics
/// When polled again after it returned `Ready`.
#[must_use = "futures do nothing unless awaited or polled"]
pub struct PopBatchFuture<'a> {
    waiter: Waiter<'a>,
    max: usize,
}

impl fmt::Debug for PopBatchFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopBatchFuture")
            .field("queue", &self.waiter.queue.name())
            .field("max", &self.max)
            .finish()
    }
}

impl Future for PopBatchFuture<'_> {
    type Output = Result<Vec<Delivery>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.max == 0 {
            return Poll::Ready(Ok(Vec::new()));
        }
        let queue = this.waiter.queue;
        this.waiter
            .poll_take(cx, this.max)
            .map(|taken| taken?.into_iter().map(|t| queue.deliver(t)).collect())
    }
}

/// The state both futures share: the queue, and the future's entry in its `wakers`.
struct Waiter<'a> {
    queue: &'a Queue,
    /// This future's key in the queue's `wakers`.
    key: u64,
    /// Whether an entry may be in `wakers` (it may also have been drained by a wake).
    registered: bool,
    done: bool,
}

impl<'a> Waiter<'a> {
    fn new(queue: &'a Queue) -> Waiter<'a> {
        let key = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
        Waiter { queue, key, registered: false, done: false }
    }

    /// Leases up to `max` (at least 1) ready messages and records their deliveries, or
    /// registers the task's waker and returns `Pending`. Resolves to at least one message or
    /// an error.
    fn poll_take(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Result<Vec<Taken>>> {
        assert!(!self.done, "a wharf pop future was polled after it completed");
        let shared = &self.queue.core.shared;
        let q = self.queue.id as usize;
        let mut g = shared.state.lock();
        if let Err(e) = g.check() {
            return self.finish(&mut g, Err(e));
        }
        let now = shared.opts.clock.now();
        let now_ms = crate::clock::now_ms(&*shared.opts.clock);
        let qs = &mut g.queues[q];
        qs.index.expire(now);
        qs.index.promote(now_ms);
        let mut taken = Vec::new();
        while taken.len() < max {
            match self.queue.lease_one(&mut g, now) {
                Ok(Some(t)) => taken.push(t),
                Ok(None) => break,
                // What was leased is handed out; the error will recur on the next call.
                Err(_) if !taken.is_empty() => break,
                Err(e) => return self.finish(&mut g, Err(e)),
            }
        }
        if !taken.is_empty() {
            let recorded = self.queue.record_deliveries(&mut g);
            return self.finish(&mut g, recorded.map(|()| taken));
        }
        // Nothing ready, under the lock: every later push or settlement sees this waker.
        let qs = &mut g.queues[q];
        let waker = cx.waker();
        match qs.wakers.iter_mut().find(|(k, _)| *k == self.key) {
            Some((_, w)) if w.will_wake(waker) => {}
            Some((_, w)) => w.clone_from(waker),
            None => qs.wakers.push((self.key, waker.clone())),
        }
        self.registered = true;
        if shared.opts.background {
            // A delayed message or a lease deadline earlier than the background thread's next
            // look at this queue: tell it.
            if let Some(t) = qs.next_timer(now, now_ms) {
                if qs.waker_timer.is_none_or(|armed| t < armed) {
                    qs.waker_timer = Some(t);
                    shared.bg_cv.notify_one();
                }
            }
        }
        Poll::Pending
    }

    /// Ends the future: removes its waker and returns `result`.
    fn finish<T>(&mut self, g: &mut MutexGuard<'_, State>, result: Result<T>) -> Poll<Result<T>> {
        self.done = true;
        self.unregister(g);
        Poll::Ready(result)
    }

    fn unregister(&mut self, g: &mut State) {
        if std::mem::take(&mut self.registered) {
            if let Some(qs) = g.queues.get_mut(self.queue.id as usize) {
                qs.wakers.retain(|(k, _)| *k != self.key);
            }
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.registered {
            let shared = &self.queue.core.shared;
            let mut g = shared.state.lock();
            self.unregister(&mut g);
        }
    }
}
