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
use super::payload::Taken;
use super::pop::{deliver, lease_one, record_deliveries, write_pushes_first};
use super::target::QueueRef;
use crate::error::{Error, Result};
use crate::store::State;

/// Numbers pending futures, to key their entries in a queue's `wakers`.
static NEXT_WAITER: AtomicU64 = AtomicU64::new(0);

/// The future of [`Queue::pop_async`].
///
/// # Panics
/// When polled again after it returned `Ready`.
#[must_use = "futures do nothing unless awaited or polled"]
pub struct PopFuture<'a> {
    waiter: Waiter<'a>,
}

impl<'a> PopFuture<'a> {
    pub(crate) fn new(queue: &'a QueueRef) -> Self {
        PopFuture { waiter: Waiter::new(queue) }
    }
}

impl fmt::Debug for PopFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopFuture").field("queue", self.waiter.queue.name()).finish()
    }
}

impl Future for PopFuture<'_> {
    type Output = Result<Delivery>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let waiter = &mut self.get_mut().waiter;
        let queue = waiter.queue;
        waiter.poll_take(cx, 1).map(|taken| {
            let t = taken?.into_iter().next().ok_or(Error::Closed)?;
            deliver(queue, t)
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

impl<'a> PopBatchFuture<'a> {
    pub(crate) fn new(queue: &'a QueueRef, max: usize) -> Self {
        PopBatchFuture { waiter: Waiter::new(queue), max }
    }
}

impl fmt::Debug for PopBatchFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopBatchFuture")
            .field("queue", self.waiter.queue.name())
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
            .map(|taken| taken?.into_iter().map(|t| deliver(queue, t)).collect())
    }
}

/// The state both futures share: the queue, and the future's entry in its `wakers`.
struct Waiter<'a> {
    queue: &'a QueueRef,
    /// This future's key in the queue's `wakers`.
    key: u64,
    /// Whether an entry may be in `wakers` (it may also have been drained by a wake).
    registered: bool,
    done: bool,
}

impl<'a> Waiter<'a> {
    fn new(queue: &'a QueueRef) -> Waiter<'a> {
        let key = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
        Waiter { queue, key, registered: false, done: false }
    }

    /// Leases up to `max` (at least 1) ready messages and records their deliveries, or
    /// registers the task's waker and returns `Pending`. Resolves to at least one message or
    /// an error.
    fn poll_take(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Result<Vec<Taken>>> {
        assert!(!self.done, "a wharf pop future was polled after it completed");
        let shared = self.queue.shared();
        let q = self.queue.id();
        let mut g = shared.lock();
        if let Err(e) = g.check() {
            return self.finish(&mut g, Err(e));
        }
        let now = shared.opts().clock.now();
        let now_ms = shared.now_ms();
        let index = g.queue_mut(q).index_mut();
        index.expire(now);
        index.promote(now_ms);
        if max > 1 && g.queue_mut(q).index_mut().ready_len() > 0 {
            if let Err(e) = write_pushes_first(self.queue, &mut g) {
                return self.finish(&mut g, Err(e));
            }
        }
        let mut taken = Vec::new();
        while taken.len() < max {
            match lease_one(self.queue, &mut g, now, now_ms) {
                Ok(Some(t)) => taken.push(t),
                Ok(None) => break,
                // What was leased is handed out; the error will recur on the next call.
                Err(_) if !taken.is_empty() => break,
                Err(e) => return self.finish(&mut g, Err(e)),
            }
        }
        if !taken.is_empty() {
            let recorded = record_deliveries(self.queue, &mut g);
            return self.finish(&mut g, recorded.map(|()| taken));
        }
        // Nothing ready, under the lock: every later push or settlement sees this waker.
        let qs = g.queue_mut(q);
        qs.set_waker(self.key, cx.waker());
        self.registered = true;
        if shared.opts().background {
            // A delayed message or a lease deadline earlier than the background thread's next
            // look at this queue: tell it.
            if let Some(t) = qs.next_timer(now, now_ms) {
                if qs.waker_timer().is_none_or(|armed| t < armed) {
                    qs.set_waker_timer(Some(t));
                    shared.log().background().notify_one();
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
            if let Some(qs) = g.get_queue_mut(self.queue.id()) {
                qs.remove_waker(self.key);
            }
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.registered {
            let mut g = self.queue.shared().lock();
            self.unregister(&mut g);
        }
    }
}
