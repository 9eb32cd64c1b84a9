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

mod forward;
mod ingest;
mod publisher;

use std::sync::atomic::{AtomicU8, Ordering};
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
}

impl Link {
    /// Parses `url` (`amqp://user:pass@host:port/vhost?heartbeat=..`) and sets the heartbeat
    /// unless the URL has one.
    pub(crate) fn new(url: &str, heartbeat: Duration, name: String) -> Result<Link> {
        let mut uri: AMQPUri =
            url.parse().map_err(|e| Error::InvalidOption(format!("AMQP URL {url:?}: {e}")))?;
        if uri.query.heartbeat.is_none() {
            let secs = u16::try_from(heartbeat.as_secs().max(1)).unwrap_or(u16::MAX);
            uri.query.heartbeat = Some(secs);
        }
        if uri.query.connection_timeout.is_none() {
            uri.query.connection_timeout = Some(10_000);
        }
        Ok(Link {
            uri,
            name,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
        })
    }

    /// Opens a connection (lapin's automatic recovery off: the bridge reconnects itself).
    pub(crate) async fn connect(&self) -> lapin::Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name(self.name.clone().into());
        Connection::connect_uri(self.uri.clone(), props).await
    }
}

/// Exponential reconnection backoff with full jitter: the n-th wait is uniform in
/// `[min, min(max, min * 2^n)]`.
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
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        self.min + Duration::from_millis(if span == 0 { 0 } else { self.rng % (span + 1) })
    }

    /// Back to the shortest wait, after a connection that worked.
    pub(crate) fn reset(&mut self) {
        self.tries = 0;
    }
}

/// A stop request: the deadline by which the bridge must have finished.
/// How a connection's session (a forwarder's or an ingestor's) ended.
pub(crate) enum End {
    /// A stop was asked for (and its deadline reached or nothing is left in flight).
    Stopped,
    /// The connection or channel failed, or a confirm timed out: reconnect.
    Broken,
    /// The local store failed: the bridge ends with this error.
    Fatal(Error),
}

pub(crate) type StopTx = tokio::sync::watch::Sender<Option<Instant>>;
pub(crate) type StopRx = tokio::sync::watch::Receiver<Option<Instant>>;

/// Runs `task` on a new thread named `name`, inside a single-threaded tokio runtime it owns.
pub(crate) fn spawn<T, F>(
    name: &str,
    task: impl FnOnce() -> F + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || runtime.block_on(task()))?;
    Ok(handle)
}

/// Sleeps until `until`, or returns `false` early if a stop is requested.
pub(crate) async fn sleep_or_stop(stop: &mut StopRx, d: Duration) -> bool {
    if stop.borrow().is_some() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
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
