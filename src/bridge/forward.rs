//! `Forwarder`: the handle, options and statistics of a forwarder, which drains a local queue
//! into a RabbitMQ exchange on a thread of its own (`publisher.rs`).
//!
//! Invariant: the handle only starts, watches and stops the thread; it touches no message.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::link::{get, ConnectionState, LinkOptions};
use super::publisher::{run, Cfg, Counters, ForwardStopReport};
use super::thread::Handle;
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
/// [`DEFAULT_STOP_DEADLINE`](super::DEFAULT_STOP_DEADLINE) (or
/// [`ForwarderBuilder::drop_deadline`]): the drop blocks that long at most while outstanding
/// confirms arrive, then releases the rest.
pub struct Forwarder {
    counters: Arc<Counters>,
    handle: Handle<ForwardStopReport>,
}

/// Options of a [`Forwarder`]: see [`Forwarder::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ForwarderBuilder {
    queue: Queue,
    link: LinkOptions,
    exchange: String,
    routing_key: Option<String>,
    window: usize,
    max_unroutable_tries: u32,
    confirm_timeout: Duration,
    retry_delay: Duration,
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
            link: LinkOptions::new(url.into()),
            exchange: String::new(),
            routing_key: None,
            window: DEFAULT_WINDOW,
            max_unroutable_tries: 5,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            retry_delay: Duration::from_secs(1),
        }
    }

    /// What the forwarder did so far, and where its connection stands.
    pub fn stats(&self) -> ForwarderStats {
        let c = &self.counters;
        ForwarderStats {
            forwarded: get(&c.forwarded),
            confirmed: get(&c.confirmed),
            republished: get(&c.republished),
            returned: get(&c.returned),
            nacked: get(&c.nacked),
            dead_lettered: get(&c.dead_lettered),
            timeouts: get(&c.timeouts),
            connections: get(&c.link.connections),
            window: c.window.load(Ordering::Relaxed),
            state: c.link.state.get(),
            last_error: c.link.last_error.get(),
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
        self.handle.stop(deadline)
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
        self.link.reconnect = (min, max);
        self
    }

    /// The AMQP heartbeat to ask for (default [`DEFAULT_HEARTBEAT`](super::DEFAULT_HEARTBEAT);
    /// a `heartbeat=` in the URL wins), in whole seconds from 1 to `u16::MAX` (outside values
    /// are brought in). The broker and the forwarder each take the other for dead after two
    /// silent intervals.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.link.heartbeat = d;
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
    /// [`DEFAULT_STOP_DEADLINE`](super::DEFAULT_STOP_DEADLINE)), as [`Forwarder::stop`]'s
    /// `deadline`.
    pub fn drop_deadline(mut self, d: Duration) -> Self {
        self.link.drop_deadline = d;
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
        let link = self.link.link(name.clone())?;
        let counters = Arc::new(Counters::default());
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
        let handle =
            Handle::start(&name, self.link.drop_deadline, move |stop| run(cfg, queue, c, stop))?;
        Ok(Forwarder { counters, handle })
    }
}
