//! `Forwarder`: the handle, options and statistics of a forwarder, which drains a local queue
//! into a RabbitMQ exchange on a thread of its own (`publisher.rs`).
//!
//! Invariant: the handle only starts, watches and stops the thread; it touches no message.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::publisher::{run, Cfg};
use super::{
    after, spawn, ConnectionState, LastError, Link, StateCell, StopTx, Worker, DEFAULT_HEARTBEAT,
    DEFAULT_STOP_DEADLINE, JOIN_GRACE,
};
use crate::error::{Error, Result};
use crate::queue::Queue;

/// Unconfirmed messages a forwarder keeps in flight unless told otherwise: enough that a slow
/// confirm (or a few) does not stall the stream, few enough to hold little (a delivery holds
/// no copy of its payload).
pub const DEFAULT_WINDOW: usize = 1024;

/// How long a forwarder waits for a confirm before it takes the connection for broken: below
/// the store's default visibility timeout (30 s), so that a message's lease outlives the wait
/// for its confirm (a lease that ran out first only costs a duplicate: the message is
/// delivered and published again).
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(20);

/// Drains a local queue into a RabbitMQ exchange with publisher confirms, on a thread of its
/// own (started by [`ForwarderBuilder::start`]).
///
/// Each message is published with `mandatory`, persistent delivery mode (2), its wharf id as
/// the AMQP `message_id` (16 hex digits, [`MessageId`](crate::MessageId)'s `Display`), and the
/// headers `x-wharf-attempt` (its delivery count, [`Delivery::attempt`](crate::Delivery::attempt)), `x-wharf-queue` (the
/// local queue), `x-wharf-forwarded-at` (Unix milliseconds of this publish; the AMQP
/// `timestamp` holds the same in seconds) and, when the push recorded its time
/// ([`Delivery::pushed_at`](crate::Delivery::pushed_at): every push does, except a plain `Push` record of an older store), `x-wharf-pushed-at`
/// (Unix milliseconds of the original push).
///
/// The local message is acked only once the broker confirmed it and did not return it. A nack
/// (say, a queue full with `reject-publish`) or a return releases it, to be published again
/// after [`ForwarderBuilder::retry_delay`]; a message returned as unroutable
/// [`max_unroutable_tries`](ForwarderBuilder::max_unroutable_tries) times goes to the local
/// queue's dead-letter queue with the broker's reply text as its reason. A confirm that does
/// not come within [`confirm_timeout`](ForwarderBuilder::confirm_timeout), a closed channel or
/// a lost connection releases every unconfirmed message and reconnects, with exponential
/// backoff and jitter. Duplicates are possible (a confirm lost with its connection); consumers
/// tell them by `message_id`.
///
/// The local queue's `max_attempts`, if set, counts every publish of a message (each is a
/// delivery): leave it unset on a queue a forwarder drains, or set it high.
///
/// **Dropping** a forwarder stops it as [`Forwarder::stop`] does with
/// [`DEFAULT_STOP_DEADLINE`] (or [`ForwarderBuilder::drop_deadline`]): the drop blocks that long
/// at most while outstanding confirms arrive, then releases the rest.
pub struct Forwarder {
    counters: Arc<Counters>,
    stop: StopTx,
    thread: Mutex<Option<Worker<ForwardStopReport>>>,
    drop_deadline: Duration,
}

/// Options of a [`Forwarder`]: see [`Forwarder::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ForwarderBuilder {
    queue: Queue,
    url: String,
    exchange: String,
    routing_key: Option<String>,
    window: usize,
    max_unroutable_tries: u32,
    reconnect: (Duration, Duration),
    heartbeat: Duration,
    confirm_timeout: Duration,
    retry_delay: Duration,
    drop_deadline: Duration,
}

/// What a [`Forwarder`] did since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwarderStats {
    /// Publishes sent to the broker (a message published again counts again).
    pub forwarded: u64,
    /// Messages the broker confirmed and that were then acked locally.
    pub confirmed: u64,
    /// Messages given back to the local queue to be published again (after a nack, a return,
    /// a timeout or a lost connection).
    pub republished: u64,
    /// Publishes the broker returned as unroutable.
    pub returned: u64,
    /// Publishes the broker nacked.
    pub nacked: u64,
    /// Messages moved to the local dead-letter queue after too many returns.
    pub dead_lettered: u64,
    /// Confirms that did not come within the confirm timeout.
    pub timeouts: u64,
    /// Connections made (the first one included).
    pub connections: u64,
    /// Messages published and not yet confirmed, now.
    pub window: usize,
    /// The connection, now.
    pub state: ConnectionState,
    /// The last connection, channel or broker error seen, if any.
    pub last_error: Option<String>,
}

/// What [`Forwarder::stop`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardStopReport {
    /// Unconfirmed messages when the stop was asked for.
    pub unconfirmed_at_stop: usize,
    /// Of those, messages whose confirm came before the deadline (acked locally).
    pub confirmed_while_stopping: u64,
    /// Messages released to the local queue unconfirmed (they will be published again by the
    /// next forwarder; the broker may hold them already).
    pub released: u64,
}

/// The counters behind [`ForwarderStats`], shared by the handle and the thread.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) forwarded: AtomicU64,
    pub(super) confirmed: AtomicU64,
    pub(super) republished: AtomicU64,
    pub(super) returned: AtomicU64,
    pub(super) nacked: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) connections: AtomicU64,
    pub(super) window: AtomicUsize,
    pub(super) state: StateCell,
    pub(super) last_error: LastError,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Forwarder {
    /// A forwarder draining `queue` into the broker at `url`
    /// (`amqp://user:password@host:port/vhost`, the vhost URL-encoded: `%2f` for `/`; no TLS:
    /// lapin is built without its TLS features, so `amqps://` fails to connect). By
    /// default it publishes to the default exchange (`""`) with the local queue's name as the
    /// routing key, so into the broker queue of the same name.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use wharf::bridge::Forwarder;
    ///
    /// # fn main() -> wharf::Result<()> {
    /// let store = wharf::Wharf::open("./outbox")?;
    /// let jobs = store.queue("jobs")?;
    /// let forwarder = Forwarder::builder(&jobs, "amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .exchange("jobs")
    ///     .routing_key("new")
    ///     .start()?;
    /// jobs.push(b"resize photo 17")?; // durable here, then confirmed by RabbitMQ
    /// // ...
    /// let report = forwarder.stop(Duration::from_secs(5))?;
    /// println!("{} released unconfirmed", report.released);
    /// # Ok(()) }
    /// ```
    pub fn builder(queue: &Queue, url: impl Into<String>) -> ForwarderBuilder {
        ForwarderBuilder {
            queue: queue.clone(),
            url: url.into(),
            exchange: String::new(),
            routing_key: None,
            window: DEFAULT_WINDOW,
            max_unroutable_tries: 5,
            reconnect: (Duration::from_millis(100), Duration::from_secs(30)),
            heartbeat: DEFAULT_HEARTBEAT,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            retry_delay: Duration::from_secs(1),
            drop_deadline: DEFAULT_STOP_DEADLINE,
        }
    }

    /// What the forwarder did so far, and where its connection stands.
    pub fn stats(&self) -> ForwarderStats {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ForwarderStats {
            forwarded: n(&c.forwarded),
            confirmed: n(&c.confirmed),
            republished: n(&c.republished),
            returned: n(&c.returned),
            nacked: n(&c.nacked),
            dead_lettered: n(&c.dead_lettered),
            timeouts: n(&c.timeouts),
            connections: n(&c.connections),
            window: c.window.load(Ordering::Relaxed),
            state: c.state.get(),
            last_error: c.last_error.get(),
        }
    }

    /// Stops the forwarder: it pops nothing more, waits up to `deadline` for the confirms of
    /// the messages in flight (acking those confirmed), releases the rest to the local queue,
    /// closes the connection and ends its thread. Whatever its connection is doing
    /// (connecting, backing off, publishing, waiting for confirms), it returns by `deadline`
    /// and a short grace for the close (2 s at most, for a loaded machine). A `deadline` of
    /// `Duration::MAX` waits for every confirm, each at most the
    /// [`confirm_timeout`](ForwarderBuilder::confirm_timeout).
    ///
    /// # Errors
    /// The local store error that stopped the forwarder earlier, if one did
    /// ([`Error::Closed`], [`Error::Poisoned`], ...); [`Error::Io`] (`TimedOut`) if its thread
    /// did not end in time, which is then left to end on its own.
    pub fn stop(self, deadline: Duration) -> Result<ForwardStopReport> {
        self.stop_now(deadline)
    }

    fn stop_now(&self, deadline: Duration) -> Result<ForwardStopReport> {
        let Some(thread) = self.thread.lock().take() else {
            return Ok(ForwardStopReport::default());
        };
        self.stop.send_replace(Some(after(deadline)));
        thread.finish(deadline.saturating_add(JOIN_GRACE))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Best effort: a store error already stopped the thread (`stop` shows it); a thread that
        // does not end in time is reported on stderr and left detached.
        let _ = self.stop_now(self.drop_deadline);
    }
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl ForwarderBuilder {
    /// The exchange to publish to (default `""`, the default exchange). It must exist.
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self
    }

    /// The routing key (default: the local queue's name).
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// The most messages published and not yet confirmed (default [`DEFAULT_WINDOW`]). A
    /// window of 1 publishes one message at a time, in queue order, each only after the one
    /// before it was confirmed (a message that fails is retried before any later one).
    pub fn window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }

    /// How many times a message may come back unroutable before it is dead-lettered locally
    /// with the broker's reply text (default 5; counted in memory since this forwarder
    /// started).
    pub fn max_unroutable_tries(mut self, n: u32) -> Self {
        self.max_unroutable_tries = n;
        self
    }

    /// The reconnection backoff: the first wait is between `min` and `2 * min`, each failure
    /// doubles the ceiling up to `max` (defaults 100 ms and 30 s), each wait is jittered. A
    /// `min` below 10 ms is taken as 10 ms, a `max` below `min` as `min`.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect = (min, max);
        self
    }

    /// The AMQP heartbeat to ask for (default [`DEFAULT_HEARTBEAT`]; a `heartbeat=` in the URL
    /// wins), in whole seconds from 1 to `u16::MAX` (outside values are brought in). The broker
    /// and the forwarder each take the other for dead after two silent intervals.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// How long to wait for a confirm before the connection is taken for broken (default
    /// [`DEFAULT_CONFIRM_TIMEOUT`]; zero is refused by [`start`](Self::start)). Keep it below
    /// the local queue's visibility timeout.
    pub fn confirm_timeout(mut self, d: Duration) -> Self {
        self.confirm_timeout = d;
        self
    }

    /// How long publishing pauses after a nack or a return before messages go out again
    /// (default 1 s).
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }

    /// How long dropping the forwarder waits for outstanding confirms (default
    /// [`DEFAULT_STOP_DEADLINE`]), as [`Forwarder::stop`]'s `deadline`.
    pub fn drop_deadline(mut self, d: Duration) -> Self {
        self.drop_deadline = d;
        self
    }

    /// Starts the forwarder on a thread of its own. It connects in the background: a broker
    /// that cannot be reached is retried with backoff, never an error here.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a bad URL, a window of 0 or a confirm timeout of 0;
    /// [`Error::Io`] if the thread or its runtime cannot be created.
    pub fn start(self) -> Result<Forwarder> {
        if self.window == 0 {
            return Err(Error::InvalidOption("a forwarder's window must be at least 1".into()));
        }
        if self.confirm_timeout.is_zero() {
            return Err(Error::InvalidOption("a forwarder's confirm timeout must not be 0".into()));
        }
        let name = format!("wharf-forward-{}", self.queue.name());
        let mut link = Link::new(&self.url, self.heartbeat, name.clone())?;
        (link.reconnect_min, link.reconnect_max) = self.reconnect;
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(None);
        let drop_deadline = self.drop_deadline;
        let routing_key = self.routing_key.clone().unwrap_or_else(|| self.queue.name().into());
        let cfg = Cfg {
            link,
            exchange: self.exchange,
            routing_key,
            window: self.window,
            max_unroutable_tries: self.max_unroutable_tries.max(1),
            confirm_timeout: self.confirm_timeout,
            retry_delay: self.retry_delay,
        };
        let (queue, c) = (self.queue, Arc::clone(&counters));
        let thread = spawn(&name, move || run(cfg, queue, c, stop_rx))?;
        Ok(Forwarder { counters, stop, thread: Mutex::new(Some(thread)), drop_deadline })
    }
}
