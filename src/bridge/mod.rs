//! The AMQP bridge (feature `amqp`): a [`Forwarder`] that drains a local queue into a RabbitMQ
//! exchange with publisher confirms, and an [`Ingestor`] that stores a RabbitMQ queue's messages
//! in a local queue before acking them.
//!
//! Invariant: a local message is acked only after the broker confirmed it (`basic.ack`, not
//! returned as unroutable); a broker message is acked only after its local push is durable.
//! Everything else (a nack, a return, a timeout, a closed channel or connection, a crash) leaves
//! the message where it was, to be sent again: delivery is at least once, end to end.
//!
//! Each bridge runs on a thread of its own with a single-threaded tokio runtime it owns, so a
//! synchronous application uses it without knowing about tokio. Connections are made and
//! remade by the bridge itself, with exponential backoff and jitter (lapin's automatic
//! recovery is not used), and carry AMQP heartbeats so that a frozen broker is noticed.
//!
//! Invariant: no wait of a bridge's thread is unbounded. Every call to the broker has a timeout
//! (lapin may never resolve a call on a connection that died), and every wait is raced with the
//! stop request, so `stop` and drop return by their deadline and a short grace in any state;
//! a thread that still has not ended then is left detached, never joined. The thread's runtime
//! is shut down before it reports, which ends lapin's tasks and I/O threads with it.

mod forward;
mod ingest;
mod publisher;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use parking_lot::Mutex;

use crate::error::{Error, Result};

pub use forward::{
    ForwardStopReport, Forwarder, ForwarderBuilder, ForwarderStats, DEFAULT_CONFIRM_TIMEOUT,
    DEFAULT_WINDOW,
};
pub use ingest::{
    Ingestor, IngestorBuilder, IngestorStats, DEFAULT_DEDUP_WINDOW, DEFAULT_PREFETCH,
};

/// The AMQP heartbeat the bridges ask for unless told otherwise (or the URL sets one): a broker
/// that sends nothing for two of these is taken for dead.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// How long dropping a bridge waits for it to stop, as its `stop` does.
pub const DEFAULT_STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Where a bridge's connection to the broker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting, or waiting (backoff) before the next try.
    Connecting,
    /// Connected, with a channel open.
    Connected,
    /// Stopped: by `stop`, by a drop, or by a local store error.
    Stopped,
}

/// The connection state, shared between a bridge's thread and its handle.
#[derive(Debug, Default)]
pub(crate) struct StateCell(AtomicU8);

impl StateCell {
    pub(crate) fn set(&self, s: ConnectionState) {
        let v = match s {
            ConnectionState::Connecting => 0,
            ConnectionState::Connected => 1,
            ConnectionState::Stopped => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> ConnectionState {
        match self.0.load(Ordering::Relaxed) {
            0 => ConnectionState::Connecting,
            1 => ConnectionState::Connected,
            _ => ConnectionState::Stopped,
        }
    }
}

/// The last connection or broker error a bridge saw, for its stats.
#[derive(Debug, Default)]
pub(crate) struct LastError(Mutex<Option<String>>);

impl LastError {
    pub(crate) fn set(&self, e: impl std::fmt::Display) {
        *self.0.lock() = Some(e.to_string());
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().clone()
    }
}

/// Connection settings shared by both bridges.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) uri: AMQPUri,
    pub(crate) name: String,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    /// The longest a connection may take to open (TCP connect, AMQP handshake, channel and the
    /// ingestor's `qos` and `consume`), and the longest any later call to the broker may take
    /// (a publish written out, an ack, a close): the URL's `connection_timeout`, 10 s if unset.
    pub(crate) call_timeout: Duration,
}

impl Link {
    /// Parses `url` (`amqp://user:pass@host:port/vhost?heartbeat=..`) and sets the heartbeat
    /// unless the URL has one: whole seconds, at least 1, at most `u16::MAX`.
    pub(crate) fn new(url: &str, heartbeat: Duration, name: String) -> Result<Link> {
        let mut uri: AMQPUri =
            url.parse().map_err(|e| Error::InvalidOption(format!("AMQP URL {url:?}: {e}")))?;
        if uri.query.heartbeat.is_none() {
            let secs = u16::try_from(heartbeat.as_secs().max(1)).unwrap_or(u16::MAX);
            uri.query.heartbeat = Some(secs);
        }
        let ms = *uri.query.connection_timeout.get_or_insert(10_000);
        Ok(Link {
            uri,
            name,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            call_timeout: Duration::from_millis(ms.max(1)),
        })
    }

    /// Opens a connection (lapin's automatic recovery off: the bridge reconnects itself). The
    /// caller bounds the wait: lapin's own connect has no timeout.
    pub(crate) async fn connect(&self) -> lapin::Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name(self.name.clone().into());
        Connection::connect_uri(self.uri.clone(), props).await
    }
}

/// The shortest reconnection wait: a smaller `min` (zero included) would retry in a hot loop.
pub(crate) const MIN_RECONNECT_WAIT: Duration = Duration::from_millis(10);

/// Exponential reconnection backoff with full jitter: the n-th wait is uniform in
/// `[min, min(max, min * 2^n)]`, `min` at least [`MIN_RECONNECT_WAIT`].
#[derive(Debug)]
pub(crate) struct Reconnect {
    min: Duration,
    max: Duration,
    tries: u32,
    rng: u64,
}

impl Reconnect {
    pub(crate) fn new(min: Duration, max: Duration) -> Reconnect {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos());
        let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32) | 1;
        let min = min.max(MIN_RECONNECT_WAIT);
        Reconnect { min, max: max.max(min), tries: 0, rng: seed }
    }

    /// The wait before the next try.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let ceiling = self.min.saturating_mul(1u32 << self.tries.min(20)).min(self.max);
        self.tries = self.tries.saturating_add(1);
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = u64::try_from(ceiling.saturating_sub(self.min).as_millis()).unwrap_or(u64::MAX);
        let jitter = match span.checked_add(1) {
            Some(n) => self.rng % n,
            None => self.rng,
        };
        self.min.saturating_add(Duration::from_millis(jitter))
    }

    /// Back to the shortest wait, after a connection that worked.
    pub(crate) fn reset(&mut self) {
        self.tries = 0;
    }
}

/// `Instant::now() + d`, saturating about 30 years ahead (`Instant + Duration::MAX` panics).
pub(crate) fn after(d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    let now = Instant::now();
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// How a connection's session (a forwarder's or an ingestor's) ended.
pub(crate) enum End {
    /// A stop was asked for (and its deadline reached or nothing is left in flight).
    Stopped,
    /// The connection or channel failed, or a confirm timed out: reconnect.
    Broken,
    /// The local store failed: the bridge ends with this error.
    Fatal(Error),
}

/// A stop request: the deadline by which the bridge must have finished. The handle sends it
/// once; every wait of the bridge's thread is raced with it.
pub(crate) type StopTx = tokio::sync::watch::Sender<Option<Instant>>;
pub(crate) type StopRx = tokio::sync::watch::Receiver<Option<Instant>>;

/// The deadline of the stop requested so far, if any. A handle gone without a word (it never
/// is: its drop sends a stop first) counts as a stop due now.
pub(crate) fn stop_deadline(stop: &StopRx) -> Option<Instant> {
    match stop.has_changed() {
        Err(_) => Some(stop.borrow().unwrap_or_else(Instant::now)),
        Ok(_) => *stop.borrow(),
    }
}

/// Waits until a stop is requested (at once if one was).
pub(crate) async fn stopped(stop: &mut StopRx) {
    // `Err`: the handle is gone, which only happens after it asked for a stop.
    let _ = stop.wait_for(Option::is_some).await;
}

/// Awaits `fut` for at most `limit`, giving up at once when a stop is requested: for the waits
/// a stop abandons (connecting, a backoff, an idle consumer). `None` if it did not finish.
pub(crate) async fn unless_stopped<F: Future>(
    stop: &mut StopRx,
    limit: Duration,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = stopped(stop) => None,
        r = tokio::time::timeout(limit, fut) => r.ok(),
    }
}

/// Awaits `fut` for at most `limit`, and once a stop is requested, not past its deadline: for
/// the calls a stop lets finish in time (an ack for a stored batch, a publish under way). Gives
/// up too once `alive` (looked at every [`IDLE_CHECK`]) says the connection is gone: lapin may
/// leave a call on a closed connection pending for good. `None` if it did not finish.
pub(crate) async fn within<F: Future>(
    stop: &mut StopRx,
    limit: Duration,
    alive: impl Fn() -> bool,
    fut: F,
) -> Option<F::Output> {
    let give_up = after(limit);
    let mut fut = std::pin::pin!(fut);
    loop {
        let deadline = stop_deadline(stop);
        let end = deadline.map_or(give_up, |d| d.min(give_up));
        let check = Instant::now() + IDLE_CHECK;
        tokio::select! {
            biased;
            r = &mut fut => return Some(r),
            () = tokio::time::sleep_until(end.min(check).into()) => {
                if end <= check || !alive() {
                    return None;
                }
            }
            () = stopped(stop), if deadline.is_none() => {}
        }
    }
}

/// Sleeps for `d`, or returns `false` early if a stop is requested.
pub(crate) async fn sleep_or_stop(stop: &mut StopRx, d: Duration) -> bool {
    let sleep = tokio::time::sleep_until(after(d).into());
    tokio::select! {
        biased;
        () = stopped(stop) => false,
        () = sleep => true,
    }
}

/// Closes a connection, waiting at most `limit` (a dead broker answers nothing), and not much
/// past a stop's deadline, even one requested meanwhile ([`CLOSE_GRACE`] past it at least, for
/// the close to go out).
pub(crate) async fn close(conn: &Connection, stop: &mut StopRx, limit: Duration) {
    if !conn.status().connected() {
        return;
    }
    let give_up = after(limit);
    let mut closing = std::pin::pin!(conn.close(200, "wharf: bye".into()));
    loop {
        let deadline = stop_deadline(stop);
        let end = deadline.map_or(give_up, |t| give_up.min(t.max(Instant::now() + CLOSE_GRACE)));
        tokio::select! {
            biased;
            _ = &mut closing => return,
            () = tokio::time::sleep_until(end.into()) => return,
            () = stopped(stop), if deadline.is_none() => {}
        }
    }
}

/// How often an idle bridge looks at its channel (lapin marks it closed once heartbeats are
/// missed or the broker closed it).
pub(crate) const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long past a stop's deadline a bridge still waits for its connection's close.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// How long a bridge's runtime still runs after its task ended, for the connection closes and
/// connects under way on it to go out or fail.
const RUNTIME_DRAIN: Duration = Duration::from_millis(50);

/// How long a bridge's runtime is given to shut down after its task ended: its tasks are
/// dropped at once; this only bounds waits on blocking work (a name lookup).
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

/// How long past a stop's deadline its handle waits for the thread before leaving it detached:
/// the close's grace, the runtime's shutdown, and slack for a loaded machine.
pub(crate) const JOIN_GRACE: Duration = Duration::from_secs(2);

/// A bridge's thread, and the channel its result comes back on.
pub(crate) struct Worker<T> {
    name: String,
    thread: std::thread::JoinHandle<()>,
    done: mpsc::Receiver<Result<T>>,
}

impl<T> Worker<T> {
    /// Waits at most `limit` for the thread's result. A thread still running then is left
    /// detached (it is told to stop already and ends on its own), with a line on stderr.
    ///
    /// # Errors
    /// The thread's own error; [`Error::Internal`] if it panicked, [`Error::Io`] if it did not
    /// end within `limit`.
    pub(crate) fn finish(self, limit: Duration) -> Result<T> {
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
pub(crate) fn spawn<T, F>(
    name: &str,
    task: impl FnOnce() -> F + Send + 'static,
) -> Result<Worker<T>>
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
    Ok(Worker { name: name.to_string(), thread, done })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_with_jitter_up_to_the_cap_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(3));
        let mut r = Reconnect::new(min, max);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..12u32 {
            let ceiling = (min * 2u32.pow(n)).min(max);
            let w = r.next_wait();
            assert!(min <= w && w <= ceiling, "try {n}: {w:?} outside [{min:?}, {ceiling:?}]");
            seen.insert(w);
        }
        assert!(seen.len() > 6, "jittered: {seen:?}");
        r.reset();
        assert!(r.next_wait() <= min * 2);
        let mut fixed = Reconnect::new(min, min);
        assert_eq!(fixed.next_wait(), min);
    }

    #[test]
    fn reconnect_waits_and_deadlines_saturate_at_the_edges() {
        for (min, max) in [
            (Duration::ZERO, Duration::ZERO),
            (Duration::ZERO, Duration::MAX),
            (Duration::MAX, Duration::ZERO),
            (Duration::MAX, Duration::MAX),
            (Duration::from_nanos(1), Duration::from_secs(1)),
        ] {
            let mut r = Reconnect::new(min, max);
            for _ in 0..40 {
                let w = r.next_wait();
                assert!(w >= min.max(MIN_RECONNECT_WAIT), "{min:?} {max:?}: {w:?}");
            }
        }
        let far = after(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(365 * 86_400));
        assert!(after(Duration::ZERO) <= Instant::now());
    }

    #[test]
    fn a_url_gets_a_heartbeat_unless_it_has_one() {
        let l = Link::new("amqp://guest:guest@127.0.0.1:5672/%2f", DEFAULT_HEARTBEAT, "t".into());
        assert_eq!(l.unwrap().uri.query.heartbeat, Some(10));
        let l = Link::new("amqp://127.0.0.1/%2f?heartbeat=3", DEFAULT_HEARTBEAT, "t".into());
        assert_eq!(l.unwrap().uri.query.heartbeat, Some(3));
        assert!(matches!(
            Link::new("not a url", DEFAULT_HEARTBEAT, "t".into()),
            Err(Error::InvalidOption(_))
        ));
    }
}
