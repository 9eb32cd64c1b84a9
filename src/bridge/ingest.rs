//! `Ingestor`: consumes a RabbitMQ queue into a local queue, acking the broker only after the
//! local push is durable.
//!
//! Invariant: a broker delivery is acked (`basic.ack`, `multiple` up to its tag) only after the
//! pushes of it and of every delivery before it on the channel returned from a push with
//! `Durability::Immediate` (the log is durable as a prefix, so the last push of a batch being
//! durable makes the whole batch durable). A crash in between leads to a redelivery, which the
//! AMQP `message_id` used as the dedup key absorbs.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_core::Stream;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use super::link::{
    add, get, keep_connected, ConnectionState, End, Link, LinkOptions, LinkStats, Reconnect, Side,
};
use super::thread::Handle;
use super::wait::{stop_deadline, unless_stopped, within, StopRx, IDLE_CHECK};
use crate::error::{Error, Result};
use crate::limits::MAX_DEDUP_KEY;
use crate::options::Durability;
use crate::queue::{PushOptions, Queue};

/// Unacked broker deliveries an ingestor takes at once (`basic.qos` prefetch) unless told
/// otherwise; they are pushed together and made durable with one `fdatasync`.
pub const DEFAULT_PREFETCH: u16 = 256;

/// The dedup window an ingestor gives its local queue unless told otherwise: a message the
/// broker delivers again within this time of its first push is stored once.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(3600);

/// Consumes a RabbitMQ queue into a local queue, on a thread of its own (started by
/// [`IngestorBuilder::start`]).
///
/// It consumes with manual acks and a prefetch limit, pushes each message's body into the local
/// queue with its AMQP `message_id` as the dedup key, and acks the broker only once the push is
/// durable. A crash or a lost connection between the two makes the broker deliver the message
/// again, and the dedup key stores it once: at start, the ingestor raises the local queue's
/// [`dedup_window`](crate::QueueConfig::dedup_window) to
/// [`IngestorBuilder::dedup_window`] if it is shorter, so that keys outlive their messages'
/// acks. A message without a `message_id` is pushed without a key: a redelivery of it (after a
/// crash between the push and the broker ack) is stored twice. Only the body is kept; the
/// AMQP properties and headers are not.
///
/// A message the local queue refuses (larger than its `max_payload`, or the queue full with
/// `Overflow::Reject`) is rejected to the broker without requeueing (to the broker queue's
/// dead-letter exchange, if it has one) and counted in [`IngestorStats::rejected`]. A store
/// out of room ([`Error::NoSpace`], [`Error::Full`]) makes the ingestor close its channel (the
/// broker requeues what it had delivered) and try again after its reconnection backoff. Any
/// other store error (closed, poisoned) stops the ingestor, leaving the messages unacked on the
/// broker; [`Ingestor::stop`] returns it.
///
/// **Dropping** an ingestor stops it as [`Ingestor::stop`] does.
pub struct Ingestor {
    counters: Arc<Counters>,
    handle: Handle<()>,
}

/// Options of an [`Ingestor`]: see [`Ingestor::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct IngestorBuilder {
    queue: Queue,
    link: LinkOptions,
    source: Option<String>,
    prefetch: u16,
    dedup_window: Duration,
}

/// What an [`Ingestor`] did since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IngestorStats {
    /// Deliveries received from the broker (redeliveries count again).
    pub received: u64,
    /// Deliveries pushed durably into the local queue, duplicates included.
    pub stored: u64,
    /// Of those, deliveries the dedup key found already stored: a lower bound, counting the
    /// pushes answered with an id no newer than one this ingestor was given before (a
    /// duplicate of a message stored before the ingestor started may go uncounted).
    pub duplicates: u64,
    /// Deliveries acked to the broker.
    pub acked: u64,
    /// Deliveries the local queue refused, rejected to the broker.
    pub rejected: u64,
    /// Connections made (the first one included).
    pub connections: u64,
    /// The connection, now.
    pub state: ConnectionState,
    /// The last connection, channel or store error seen, if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    link: LinkStats,
}

impl Ingestor {
    /// An ingestor consuming the broker at `url` into `queue`; by default from the broker queue
    /// of the same name as the local one (see [`IngestorBuilder::source_queue`]). The broker
    /// queue must exist.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use wharf::bridge::Ingestor;
    ///
    /// # fn main() -> wharf::Result<()> {
    /// let store = wharf::Wharf::open("./inbox")?;
    /// let orders = store.queue("orders")?;
    /// let ingestor = Ingestor::builder(&orders, "amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .source_queue("orders.eu")
    ///     .start()?;
    /// while let Some(order) = orders.pop_timeout(Duration::from_secs(1))? {
    ///     // ... durable here before RabbitMQ forgot it
    ///     order.ack()?;
    /// }
    /// ingestor.stop(Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    pub fn builder(queue: &Queue, url: impl Into<String>) -> IngestorBuilder {
        IngestorBuilder {
            queue: queue.clone(),
            link: LinkOptions::new(url.into()),
            source: None,
            prefetch: DEFAULT_PREFETCH,
            dedup_window: DEFAULT_DEDUP_WINDOW,
        }
    }

    /// What the ingestor did so far, and where its connection stands.
    pub fn stats(&self) -> IngestorStats {
        let c = &self.counters;
        IngestorStats {
            received: get(&c.received),
            stored: get(&c.stored),
            duplicates: get(&c.duplicates),
            acked: get(&c.acked),
            rejected: get(&c.rejected),
            connections: get(&c.link.connections),
            state: c.link.state.get(),
            last_error: c.link.last_error.get(),
        }
    }

    /// Stops the ingestor: it finishes the batch it is pushing (acking it if it is durable
    /// before `deadline`), closes the connection (the broker requeues what it delivered and was
    /// not acked) and ends its thread. Whatever its connection is doing (connecting, backing
    /// off, consuming), it returns by `deadline` and a short grace for the close (2 s at most,
    /// for a loaded machine).
    ///
    /// # Errors
    /// The local store error that stopped the ingestor earlier, if one did; [`Error::Io`]
    /// (`TimedOut`) if its thread did not end in time, which is then left to end on its own.
    pub fn stop(self, deadline: Duration) -> Result<()> {
        self.handle.stop(deadline)
    }
}

impl fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingestor").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl IngestorBuilder {
    /// The broker queue to consume (default: the local queue's name). It must exist.
    pub fn source_queue(mut self, name: impl Into<String>) -> Self {
        self.source = Some(name.into());
        self
    }

    /// Unacked deliveries the broker sends ahead (default [`DEFAULT_PREFETCH`]; 0 is taken as
    /// 1).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// The shortest dedup window the local queue gets (default [`DEFAULT_DEDUP_WINDOW`]). Keys
    /// are held in memory for this long after their push.
    pub fn dedup_window(mut self, d: Duration) -> Self {
        self.dedup_window = d;
        self
    }

    /// The reconnection backoff, as [`ForwarderBuilder::reconnect_backoff`](super::ForwarderBuilder::reconnect_backoff).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.link.reconnect = (min, max);
        self
    }

    /// The AMQP heartbeat to ask for (default [`DEFAULT_HEARTBEAT`](super::DEFAULT_HEARTBEAT)),
    /// as [`ForwarderBuilder::heartbeat`](super::ForwarderBuilder::heartbeat).
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.link.heartbeat = d;
        self
    }

    /// How long dropping the ingestor waits for it (default
    /// [`DEFAULT_STOP_DEADLINE`](super::DEFAULT_STOP_DEADLINE)), as
    /// [`Ingestor::stop`]'s `deadline`.
    pub fn drop_deadline(mut self, d: Duration) -> Self {
        self.link.drop_deadline = d;
        self
    }

    /// Raises the local queue's dedup window if needed, and starts the ingestor on a thread of
    /// its own. It connects in the background: a broker that cannot be reached is retried with
    /// backoff, never an error here.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a bad URL; the store's errors from setting the dedup
    /// window; [`Error::Io`] if the thread or its runtime cannot be created.
    pub fn start(self) -> Result<Ingestor> {
        let name = format!("wharf-ingest-{}", self.queue.name());
        let link = self.link.link(name.clone())?;
        let config = self.queue.config()?;
        if config.get_dedup_window() < self.dedup_window {
            self.queue.set_config(&config.dedup_window(self.dedup_window))?;
        }
        let counters = Arc::new(Counters::default());
        let source = self.source.clone().unwrap_or_else(|| self.queue.name().into());
        let cfg = Cfg { link, source, prefetch: self.prefetch, tag: name.clone() };
        let (queue, c) = (self.queue, Arc::clone(&counters));
        let handle =
            Handle::start(&name, self.link.drop_deadline, move |stop| run(cfg, queue, c, stop))?;
        Ok(Ingestor { counters, handle })
    }
}

struct Cfg {
    link: Link,
    source: String,
    prefetch: u16,
    tag: String,
}

/// The ingestor's thread: connect, consume, reconnect with backoff, until stopped.
async fn run(cfg: Cfg, queue: Queue, c: Arc<Counters>, mut stop: StopRx) -> Result<()> {
    let mut side = Consume { cfg: &cfg, queue: &queue, c: &c, max_id: 0 };
    keep_connected(&cfg.link, &c.link, &mut side, &mut stop).await
}

/// State that outlives one connection.
struct Consume<'a> {
    cfg: &'a Cfg,
    queue: &'a Queue,
    c: &'a Counters,
    /// The newest id a push returned, to count duplicates.
    max_id: u64,
}

impl Side for Consume<'_> {
    type Opened = (Channel, Consumer);

    /// Connects, opens a channel, sets its prefetch and starts consuming.
    async fn open(&self, link: &Link) -> lapin::Result<(Connection, (Channel, Consumer))> {
        let conn = link.connect().await?;
        let channel = conn.create_channel().await?;
        channel.basic_qos(self.cfg.prefetch, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                self.cfg.source.as_str().into(),
                self.cfg.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((conn, (channel, consumer)))
    }

    /// Resets the backoff at once: consuming started.
    async fn run(
        &mut self,
        conn: &Connection,
        (channel, consumer): (Channel, Consumer),
        stop: &mut StopRx,
        reconnect: &mut Reconnect,
    ) -> End {
        reconnect.reset();
        let (cfg, queue, c) = (self.cfg, self.queue, self.c);
        let session = Session { cfg, queue, c, conn, channel: &channel };
        session.run(consumer, stop, &mut self.max_id).await
    }
}

/// One connection's consuming.
struct Session<'a> {
    cfg: &'a Cfg,
    queue: &'a Queue,
    c: &'a Counters,
    conn: &'a Connection,
    channel: &'a Channel,
}

impl Session<'_> {
    /// Receives, stores and acks in batches until the channel breaks or a stop comes.
    async fn run(&self, mut consumer: Consumer, stop: &mut StopRx, max_id: &mut u64) -> End {
        let c = self.c;
        let limit = usize::from(self.cfg.prefetch);
        loop {
            if stop_deadline(stop).is_some() {
                return End::Stopped;
            }
            let next = poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx));
            // Look at the connection every second: lapin may end the stream of a connection
            // the broker closed, or never wake it at all.
            let first = match unless_stopped(stop, IDLE_CHECK, next).await {
                Some(first) => first,
                None if stop_deadline(stop).is_some() => return End::Stopped,
                None if self.connected() => continue,
                None => {
                    c.link.last_error.set("the channel or connection closed");
                    return End::Broken;
                }
            };
            let mut batch = Vec::with_capacity(limit.min(256));
            match first {
                Some(Ok(d)) => batch.push(d),
                Some(Err(e)) => {
                    c.link.last_error.set(e);
                    return End::Broken;
                }
                None => {
                    c.link.last_error.set("the broker cancelled the consumer");
                    return End::Broken;
                }
            }
            // Whatever else has arrived already joins the batch: one fsync for all of them.
            let mut broken = false;
            while batch.len() < limit {
                let more = poll_fn(|cx| match Pin::new(&mut consumer).poll_next(cx) {
                    Poll::Ready(x) => Poll::Ready(Some(x)),
                    Poll::Pending => Poll::Ready(None),
                })
                .await;
                match more {
                    Some(Some(Ok(d))) => batch.push(d),
                    Some(Some(Err(e))) => {
                        c.link.last_error.set(e);
                        broken = true;
                        break;
                    }
                    Some(None) => {
                        broken = true;
                        break;
                    }
                    None => break,
                }
            }
            add(&c.received, batch.len() as u64);
            match self.store(&batch, max_id, stop).await {
                Ok(()) => {}
                // No room locally: give the batch back (closing the channel requeues it) and
                // try again after the reconnection backoff; what was stored is absorbed by
                // dedup.
                Err(Error::NoSpace | Error::Full { .. }) => return End::Broken,
                Err(e) => return End::Fatal(e),
            }
            if let Some(last) = batch.last() {
                let ack = last.acker.ack(BasicAckOptions { multiple: true });
                // Stored, not acked: the broker delivers them again and dedup absorbs it.
                let alive = || self.connected();
                match within(stop, self.cfg.link.call_timeout, alive, ack).await {
                    Some(Ok(_)) => add(&c.acked, batch.len() as u64),
                    Some(Err(e)) => {
                        c.link.last_error.set(e);
                        return End::Broken;
                    }
                    None => {
                        c.link
                            .last_error
                            .set("an ack not written out: the connection closed or hung");
                        return End::Broken;
                    }
                }
            }
            if broken {
                return End::Broken;
            }
        }
    }

    fn connected(&self) -> bool {
        self.channel.status().connected() && self.conn.status().connected()
    }

    /// Pushes a batch, the last push `Immediate` (which makes every earlier one durable too),
    /// and rejects the messages the queue refuses. Returns once everything kept is durable.
    async fn store(
        &self,
        batch: &[AmqpDelivery],
        max_id: &mut u64,
        stop: &mut StopRx,
    ) -> Result<()> {
        let (queue, c) = (self.queue, self.c);
        let n = batch.len();
        for (i, d) in batch.iter().enumerate() {
            let durability = if i + 1 == n { Durability::Immediate } else { Durability::None };
            let mut opts = PushOptions::new().durability(durability);
            let key = d.properties.message_id().as_ref().map(|k| k.as_str().as_bytes());
            let key = key.filter(|k| !k.is_empty() && k.len() <= MAX_DEDUP_KEY);
            if let Some(key) = key {
                opts = opts.dedup_key(key);
            }
            match queue.push_with(&d.data, opts) {
                Ok(id) => {
                    add(&c.stored, 1);
                    if id.get() <= *max_id {
                        add(&c.duplicates, 1);
                    }
                    *max_id = (*max_id).max(id.get());
                }
                Err(e @ (Error::PayloadTooLarge { .. } | Error::QueueFull { .. })) => {
                    c.link.last_error.set(&e);
                    add(&c.rejected, 1);
                    let reject = d.acker.reject(BasicRejectOptions { requeue: false });
                    // Unanswered: the broker delivers it again, to be refused again.
                    let alive = || self.connected();
                    let _ = within(stop, self.cfg.link.call_timeout, alive, reject).await;
                    if i + 1 == n && i > 0 {
                        sync(queue)?;
                    }
                }
                Err(e) => {
                    c.link.last_error.set(&e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Makes every push staged so far durable (the log is durable as a prefix) by writing the
/// queue's config again, which always waits until it is durable. Only needed when the last
/// message of a batch was refused.
fn sync(queue: &Queue) -> Result<()> {
    queue.set_config(&queue.config()?)
}
