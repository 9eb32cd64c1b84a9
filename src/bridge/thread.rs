//! A bridge's thread, with the tokio runtime it owns, and the handle's side of it: the stop
//! request, and a join that never waits past the stop's deadline and a grace.
//!
//! Invariant: the thread's runtime is shut down before it reports, which ends lapin's tasks
//! and I/O threads with it; a thread that does not end in time is left detached, never joined.

use std::future::Future;
use std::io;
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::Mutex;

use super::wait::{after, StopRx, StopTx};
use crate::error::{Error, Result};

/// How long a bridge's runtime still runs after its task ended, for the connection closes and
/// connects under way on it to go out or fail.
const RUNTIME_DRAIN: Duration = Duration::from_millis(50);

/// How long a bridge's runtime is given to shut down after its task ended: its tasks are
/// dropped at once; this only bounds waits on blocking work (a name lookup).
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

/// How long past a stop's deadline its handle waits for the thread before leaving it detached:
/// the close's grace, the runtime's shutdown, and slack for a loaded machine.
const JOIN_GRACE: Duration = Duration::from_secs(2);

/// A running bridge as its handle holds it. Dropping it stops the bridge as
/// [`Handle::stop`] does with the drop deadline (best effort: a store error already stopped
/// the thread, and `stop` shows it; a thread that does not end in time is reported on stderr
/// and left detached).
pub(super) struct Handle<T: Default> {
    stop: StopTx,
    thread: Mutex<Option<BridgeThread<T>>>,
    drop_deadline: Duration,
}

impl<T: Default + Send + 'static> Handle<T> {
    /// Runs `task` on a new thread named `name` (see [`spawn`]), handing it the stop request.
    pub(super) fn start<F>(
        name: &str,
        drop_deadline: Duration,
        task: impl FnOnce(StopRx) -> F + Send + 'static,
    ) -> Result<Handle<T>>
    where
        F: Future<Output = Result<T>>,
    {
        let (stop, stop_rx) = tokio::sync::watch::channel(None);
        let thread = spawn(name, move || task(stop_rx))?;
        Ok(Handle { stop, thread: Mutex::new(Some(thread)), drop_deadline })
    }
}

impl<T: Default> Handle<T> {
    /// Asks the thread to stop by `deadline` and waits for its result, a [`JOIN_GRACE`] past
    /// the deadline at most. Once stopped, `T::default()`.
    pub(super) fn stop(&self, deadline: Duration) -> Result<T> {
        let Some(thread) = self.thread.lock().take() else { return Ok(T::default()) };
        self.stop.send_replace(Some(after(deadline)));
        thread.finish(deadline.saturating_add(JOIN_GRACE))
    }
}

impl<T: Default> Drop for Handle<T> {
    fn drop(&mut self) {
        let _ = self.stop(self.drop_deadline);
    }
}

/// A bridge's thread, and the channel its result comes back on.
struct BridgeThread<T> {
    name: String,
    thread: std::thread::JoinHandle<()>,
    done: mpsc::Receiver<Result<T>>,
}

impl<T> BridgeThread<T> {
    /// Waits at most `limit` for the thread's result. A thread still running then is left
    /// detached (it is told to stop already and ends on its own), with a line on stderr.
    ///
    /// # Errors
    /// The thread's own error; [`Error::Internal`] if it panicked, [`Error::Io`] if it did not
    /// end within `limit`.
    fn finish(self, limit: Duration) -> Result<T> {
        match self.done.recv_timeout(limit) {
            Ok(r) => {
                // It sent its result as its last act: the join is immediate.
                let _ = self.thread.join();
                r
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
                Err(Error::Internal(format!("the {} thread panicked", self.name)))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let why = format!("the {} thread did not stop within {limit:?}", self.name);
                eprintln!("wharf: {why}: left running detached");
                Err(Error::Io(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
        }
    }
}

/// Runs `task` on a new thread named `name`, inside a single-threaded tokio runtime it owns.
/// When the task ends, the runtime is shut down (which ends lapin's tasks and wakes its I/O
/// threads, so they end too), and only then is the result sent.
fn spawn<T, F>(name: &str, task: impl FnOnce() -> F + Send + 'static) -> Result<BridgeThread<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tx, done) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let r = runtime.block_on(task());
        // lapin's I/O threads run their connects on this runtime: let one under way (a name
        // lookup, a refused connect) finish before the runtime goes away under it.
        runtime.block_on(async { tokio::time::sleep(RUNTIME_DRAIN).await });
        runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
        let _ = tx.send(r);
    })?;
    Ok(BridgeThread { name: name.to_string(), thread, done })
}
