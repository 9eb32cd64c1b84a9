//! `ShutdownSignal`: raised once, when a worker begins to shut down, for its handlers to watch.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Tells handlers that their [`Worker`](super::Worker) is shutting down, so that a long job
/// can stop at a good point (and, say, nack itself or save its progress) instead of being
/// given up at the deadline. Get it from
/// [`WorkerBuilder::shutdown_signal`](super::WorkerBuilder::shutdown_signal); clones share the
/// same signal.
#[derive(Clone)]
pub struct ShutdownSignal {
    inner: Arc<SignalInner>,
}

#[derive(Default)]
struct SignalInner {
    requested: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl ShutdownSignal {
    /// A signal not raised yet.
    pub(super) fn new() -> ShutdownSignal {
        ShutdownSignal { inner: Arc::default() }
    }

    /// Whether the worker began to shut down.
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Waits until the worker begins to shut down, at most `timeout`; returns
    /// [`ShutdownSignal::is_requested`]. Use it instead of `sleep` in a handler that waits. A
    /// `timeout` too large for the clock (say [`Duration::MAX`]) waits until shutdown begins.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        let mut g = self.inner.lock.lock();
        while !self.is_requested() {
            match until {
                Some(t) => {
                    if self.inner.cv.wait_until(&mut g, t).timed_out() {
                        return self.is_requested();
                    }
                }
                None => self.inner.cv.wait(&mut g),
            }
        }
        true
    }

    /// Raises the signal and wakes every handler waiting on it.
    pub(super) fn request(&self) {
        let _g = self.inner.lock.lock();
        self.inner.requested.store(true, Ordering::SeqCst);
        self.inner.cv.notify_all();
    }
}

impl fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownSignal").field("requested", &self.is_requested()).finish()
    }
}
