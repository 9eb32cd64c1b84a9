//! `Forwarder`: drains a local queue into a RabbitMQ exchange, acking each local message only
//! once the broker confirmed it.
//!
//! Invariant: `Delivery::ack` is called only for a message whose publish got `Confirmation::Ack`
//! with no returned message, on the channel it was published on. Every other outcome releases
//! the delivery (or dead-letters it after too many returns), so the message is published again
//! with the same `message_id`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{
    sleep_or_stop, spawn, ConnectionState, LastError, Link, Reconnect, StateCell, StopRx, StopTx,
    DEFAULT_HEARTBEAT, DEFAULT_STOP_DEADLINE,
};
use crate::error::{Error, Result};
use crate::lease::Delivery;
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

/// How often an idle forwarder looks at its channel (lapin marks it closed once heartbeats
/// are missed or the broker closed it).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The most messages a forwarder pops at once.
const POP_BATCH: usize = 256;

/// Drains a local queue into a RabbitMQ exchange with publisher confirms, on a thread of its
/// own (started by [`ForwarderBuilder::start`]).
///
/// Each message is published with `mandatory`, persistent delivery mode (2), its wharf id as
/// the AMQP `message_id` (16 hex digits, [`MessageId`](crate::MessageId)'s `Display`), and the
/// headers `x-wharf-attempt` (its delivery count, [`Delivery::attempt`]), `x-wharf-queue` (the
/// local queue), `x-wharf-forwarded-at` (Unix milliseconds of this publish; the AMQP
/// `timestamp` holds the same in seconds) and, when the push recorded its time
/// ([`Delivery::pushed_at`]: pushes with options do, plain pushes do not), `x-wharf-pushed-at`
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
    thread: Mutex<Option<JoinHandle<Result<ForwardStopReport>>>>,
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

#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    confirmed: AtomicU64,
    republished: AtomicU64,
    returned: AtomicU64,
    nacked: AtomicU64,
    dead_lettered: AtomicU64,
    timeouts: AtomicU64,
    connections: AtomicU64,
    window: AtomicUsize,
    state: StateCell,
    last_error: LastError,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Forwarder {
    /// A forwarder draining `queue` into the broker at `url`
    /// (`amqp://user:password@host:port/vhost`, the vhost URL-encoded: `%2f` for `/`). By
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
    /// closes the connection and ends its thread.
    ///
    /// # Errors
    /// The local store error that stopped the forwarder earlier, if one did
    /// ([`Error::Closed`], [`Error::Poisoned`], ...).
    pub fn stop(self, deadline: Duration) -> Result<ForwardStopReport> {
        self.stop_now(deadline)
    }

    fn stop_now(&self, deadline: Duration) -> Result<ForwardStopReport> {
        let Some(thread) = self.thread.lock().take() else {
            return Ok(ForwardStopReport::default());
        };
        let until = Instant::now().checked_add(deadline).unwrap_or_else(Instant::now);
        self.stop.send_replace(Some(until));
        thread
            .join()
            .map_err(|_| Error::Io(std::io::Error::other("the forwarder thread panicked")))?
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Best effort: a store error already stopped the thread; `stop` shows it.
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
    /// doubles the ceiling up to `max` (defaults 100 ms and 30 s), each wait is jittered.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect = (min, max);
        self
    }

    /// The AMQP heartbeat to ask for (default [`DEFAULT_HEARTBEAT`]; a `heartbeat=` in the URL
    /// wins). The broker and the forwarder each take the other for dead after two silent
    /// intervals.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// How long to wait for a confirm before the connection is taken for broken (default
    /// [`DEFAULT_CONFIRM_TIMEOUT`]). Keep it below the local queue's visibility timeout.
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
    /// [`DEFAULT_STOP_DEADLINE`]).
    pub fn drop_deadline(mut self, d: Duration) -> Self {
        self.drop_deadline = d;
        self
    }

    /// Starts the forwarder on a thread of its own. It connects in the background: a broker
    /// that cannot be reached is retried with backoff, never an error here.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a bad URL or a window of 0; [`Error::Io`] if the thread
    /// or its runtime cannot be created.
    pub fn start(self) -> Result<Forwarder> {
        if self.window == 0 {
            return Err(Error::InvalidOption("a forwarder's window must be at least 1".into()));
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

/// The settings the forwarder's thread runs with.
struct Cfg {
    link: Link,
    exchange: String,
    routing_key: String,
    window: usize,
    max_unroutable_tries: u32,
    confirm_timeout: Duration,
    retry_delay: Duration,
}

/// How a connection's session ended.
enum End {
    /// A stop was asked for (and its deadline reached or nothing is left in flight).
    Stopped,
    /// The connection or channel failed, or a confirm timed out: reconnect.
    Broken,
    /// The local store failed: the forwarder ends with this error.
    Fatal(Error),
}

/// The forwarder's thread: connect, run a session, reconnect with backoff, until stopped.
async fn run(
    cfg: Cfg,
    queue: Queue,
    c: Arc<Counters>,
    mut stop: StopRx,
) -> Result<ForwardStopReport> {
    let mut reconnect = Reconnect::new(cfg.link.reconnect_min, cfg.link.reconnect_max);
    let mut s = Session {
        cfg: &cfg,
        queue: &queue,
        c: &c,
        unroutable: HashMap::new(),
        report: ForwardStopReport::default(),
        stopping: None,
    };
    let result = loop {
        if stop.borrow().is_some() {
            break Ok(());
        }
        c.state.set(ConnectionState::Connecting);
        let connect = async {
            let conn = cfg.link.connect().await?;
            match open_channel(&conn).await {
                Ok(ch) => Ok((conn, ch)),
                Err(e) => {
                    close(&conn, None).await;
                    Err(e)
                }
            }
        };
        // A stop is not kept waiting by a broker that does not answer.
        let opened = tokio::select! {
            opened = connect => opened,
            _ = stop.changed() => break Ok(()),
        };
        let (conn, channel) = match opened {
            Ok(x) => x,
            Err(e) => {
                c.last_error.set(e);
                if !sleep_or_stop(&mut stop, reconnect.next_wait()).await {
                    break Ok(());
                }
                continue;
            }
        };
        bump(&c.connections);
        c.state.set(ConnectionState::Connected);
        let end = s.run(&channel, &mut stop, &mut reconnect).await;
        close(&conn, s.stopping).await;
        match end {
            End::Stopped => break Ok(()),
            End::Fatal(e) => break Err(e),
            End::Broken => {
                c.state.set(ConnectionState::Connecting);
                if !sleep_or_stop(&mut stop, reconnect.next_wait()).await {
                    break Ok(());
                }
            }
        }
    };
    c.state.set(ConnectionState::Stopped);
    result.map(|()| s.report)
}

async fn open_channel(conn: &Connection) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Closes a connection, waiting at most 2 s (a dead broker answers nothing), and not much past
/// `deadline` (100 ms at least, for the close to go out).
async fn close(conn: &Connection, deadline: Option<Instant>) {
    let mut limit = Duration::from_secs(2);
    if let Some(t) = deadline {
        let left = t.saturating_duration_since(Instant::now());
        limit = limit.min(left.max(Duration::from_millis(100)));
    }
    let _ = tokio::time::timeout(limit, conn.close(200, "wharf: bye".into())).await;
}

/// State that outlives one connection.
struct Session<'a> {
    cfg: &'a Cfg,
    queue: &'a Queue,
    c: &'a Counters,
    /// Returns per message id since this forwarder started.
    unroutable: HashMap<u64, u32>,
    report: ForwardStopReport,
    /// The stop deadline, once a stop was asked for.
    stopping: Option<Instant>,
}

type ConfirmResult = (u64, lapin::Result<Confirmation>);

impl Session<'_> {
    /// Publishes and settles on one channel until it breaks or a stop completes; whatever is
    /// still in flight then is released.
    async fn run(
        &mut self,
        channel: &Channel,
        stop: &mut StopRx,
        reconnect: &mut Reconnect,
    ) -> End {
        let (tx, mut rx) = mpsc::unbounded_channel::<ConfirmResult>();
        let mut inflight: HashMap<u64, Delivery> = HashMap::new();
        let mut order: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut next_seq = 0u64;
        let mut paused_until: Option<Instant> = None;
        let min_room = (self.cfg.window / 8).clamp(1, 64);
        let end = loop {
            self.c.window.store(inflight.len(), Ordering::Relaxed);
            while order.front().is_some_and(|(s, _)| !inflight.contains_key(s)) {
                order.pop_front();
            }
            let now = Instant::now();
            if let Some(t) = self.stopping {
                if inflight.is_empty() || now >= t {
                    break End::Stopped;
                }
            }
            let confirm_deadline = order.front().map(|&(_, t)| t);
            let paused = paused_until.filter(|t| *t > now);
            let room = self.cfg.window.saturating_sub(inflight.len());
            // Pop in batches: wait until a few slots are free (or nothing is in flight).
            let enough = room >= min_room || (inflight.is_empty() && room > 0);
            let can_pop = self.stopping.is_none() && enough && paused.is_none();
            // Wake at least every second to notice a connection lost while idle (heartbeats).
            let tick = [confirm_deadline, paused, self.stopping, Some(now + IDLE_CHECK)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + IDLE_CHECK);
            tokio::select! {
                biased;
                changed = stop.changed(), if self.stopping.is_none() => {
                    let until = if changed.is_ok() { *stop.borrow() } else { None };
                    self.stopping = Some(until.unwrap_or(now));
                    self.report.unconfirmed_at_stop = inflight.len();
                }
                Some(first) = rx.recv() => {
                    // Settle every confirm that has arrived, not just the first.
                    let mut next = Some(first);
                    let mut end = None;
                    while let Some((seq, res)) = next.take() {
                        if let Some(d) = inflight.remove(&seq) {
                            match self.settle(d, res) {
                                Ok(Outcome::Confirmed) => reconnect.reset(),
                                Ok(Outcome::Retry) => {
                                    paused_until = Some(Instant::now() + self.cfg.retry_delay);
                                }
                                Ok(Outcome::Broken) => {
                                    end = Some(End::Broken);
                                    break;
                                }
                                Err(e) => {
                                    end = Some(End::Fatal(e));
                                    break;
                                }
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    if let Some(end) = end {
                        break end;
                    }
                }
                () = tokio::time::sleep_until(tick.into()) => {
                    if confirm_deadline.is_some_and(|t| t <= Instant::now()) {
                        self.c.timeouts.fetch_add(1, Ordering::Relaxed);
                        self.c.last_error.set(format_args!(
                            "no confirm within {:?}", self.cfg.confirm_timeout
                        ));
                        break End::Broken;
                    }
                    if !channel.status().connected() {
                        self.c.last_error.set("the channel or connection closed");
                        break End::Broken;
                    }
                }
                popped = self.queue.pop_batch_async(room.min(POP_BATCH)), if can_pop => {
                    let batch = match popped {
                        Ok(b) => b,
                        Err(e @ (Error::Closed | Error::Poisoned(_))) => break End::Fatal(e),
                        Err(e) => {
                            // One unreadable message (say, a failed checksum): it stays leased
                            // until its lease lapses; keep going after a pause.
                            self.c.last_error.set(e);
                            paused_until = Some(Instant::now() + self.cfg.retry_delay);
                            continue;
                        }
                    };
                    let mut broken = false;
                    for d in batch {
                        if broken {
                            self.give_back(d, false);
                            continue;
                        }
                        match self.publish(channel, &d).await {
                            Ok(confirm) => {
                                let seq = next_seq;
                                next_seq += 1;
                                let deadline = Instant::now() + self.cfg.confirm_timeout;
                                inflight.insert(seq, d);
                                order.push_back((seq, deadline));
                                let tx = tx.clone();
                                tokio::spawn(async move {
                                    let _ = tx.send((seq, confirm.await));
                                });
                            }
                            Err(e) => {
                                self.c.last_error.set(e);
                                self.give_back(d, false);
                                broken = true;
                            }
                        }
                    }
                    if broken {
                        break End::Broken;
                    }
                }
            }
        };
        let stopping = self.stopping.is_some();
        for (_, d) in inflight.drain() {
            self.give_back(d, stopping);
        }
        self.c.window.store(0, Ordering::Relaxed);
        end
    }

    /// Sends one message; the returned future resolves with the broker's confirm.
    async fn publish(
        &self,
        channel: &Channel,
        d: &Delivery,
    ) -> lapin::Result<lapin::PublisherConfirm> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut headers = FieldTable::default();
        headers.insert("x-wharf-attempt".into(), AMQPValue::LongUInt(d.attempt()));
        headers.insert("x-wharf-queue".into(), AMQPValue::LongString(self.queue.name().into()));
        let ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        headers.insert("x-wharf-forwarded-at".into(), AMQPValue::LongLongInt(ms));
        if let Some(pushed) = d.pushed_at() {
            let ms = pushed.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
            let ms = i64::try_from(ms).unwrap_or(i64::MAX);
            headers.insert("x-wharf-pushed-at".into(), AMQPValue::LongLongInt(ms));
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(d.id().to_string().into())
            .with_timestamp(now.as_secs())
            .with_headers(headers);
        let opts = BasicPublishOptions { mandatory: true, immediate: false };
        let confirm = channel
            .basic_publish(
                self.cfg.exchange.as_str().into(),
                self.cfg.routing_key.as_str().into(),
                opts,
                d.payload(),
                props,
            )
            .await?;
        bump(&self.c.forwarded);
        Ok(confirm)
    }

    /// Settles one message by its confirm.
    fn settle(&mut self, d: Delivery, res: lapin::Result<Confirmation>) -> Result<Outcome> {
        let id = d.id().get();
        match res {
            Ok(Confirmation::Ack(None)) => {
                self.unroutable.remove(&id);
                self.local(d.ack())?;
                bump(&self.c.confirmed);
                if self.stopping.is_some() {
                    self.report.confirmed_while_stopping += 1;
                }
                Ok(Outcome::Confirmed)
            }
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                bump(&self.c.returned);
                let why = format!(
                    "returned by the broker: {} {} (exchange {:?}, routing key {:?})",
                    returned.reply_code,
                    returned.reply_text.as_str(),
                    self.cfg.exchange,
                    self.cfg.routing_key
                );
                self.c.last_error.set(&why);
                let tries = self.unroutable.entry(id).or_insert(0);
                *tries += 1;
                if *tries >= self.cfg.max_unroutable_tries {
                    self.unroutable.remove(&id);
                    self.local(d.dead_letter(&why))?;
                    bump(&self.c.dead_lettered);
                } else {
                    self.give_back(d, false);
                }
                Ok(Outcome::Retry)
            }
            Ok(Confirmation::Nack(None)) => {
                bump(&self.c.nacked);
                self.c.last_error.set("nacked by the broker");
                self.give_back(d, false);
                Ok(Outcome::Retry)
            }
            Ok(Confirmation::NotRequested) => {
                // Cannot happen on a channel in confirm mode; never ack without a confirm.
                self.give_back(d, false);
                Ok(Outcome::Broken)
            }
            Err(e) => {
                self.c.last_error.set(e);
                self.give_back(d, false);
                Ok(Outcome::Broken)
            }
        }
    }

    /// Releases a message to the local queue (ready again at once, in its place).
    fn give_back(&mut self, d: Delivery, stopping: bool) {
        // A lapsed lease already made it ready again; a closed store releases it at reopen.
        let _ = d.release();
        if stopping {
            self.report.released += 1;
        } else {
            bump(&self.c.republished);
        }
    }

    /// A local settlement's result: a lapsed lease means the message is delivered again (a
    /// duplicate at worst); a closed or poisoned store ends the forwarder.
    fn local(&self, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) | Err(Error::LeaseExpired) => Ok(()),
            Err(e @ (Error::Closed | Error::Poisoned(_))) => Err(e),
            Err(e) => {
                self.c.last_error.set(e);
                Ok(())
            }
        }
    }
}

/// What a confirm means for the stream.
enum Outcome {
    Confirmed,
    /// A nack or a return: pause, then publish again.
    Retry,
    /// The channel failed: reconnect.
    Broken,
}
