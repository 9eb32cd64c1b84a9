//! The forwarder's thread: connects, publishes popped messages on a channel in confirm mode,
//! settles each by its confirm, and reconnects with backoff when the connection breaks.
//!
//! Invariant: `Delivery::ack` is called only for a message whose publish got `Confirmation::Ack`
//! with no returned message, on the channel it was published on. Every other outcome releases
//! the delivery (or dead-letters it after too many returns), so the message is published again
//! with the same `message_id`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::link::{add, keep_connected, End, Link, LinkStats, Reconnect, Side};
use super::wait::{after, stop_deadline, stopped, within, StopRx, IDLE_CHECK};
use crate::error::{Error, Result};
use crate::queue::Delivery;
use crate::queue::Queue;

/// The most messages a forwarder pops at once.
const POP_BATCH: usize = 256;

/// The settings the forwarder's thread runs with.
pub(super) struct Cfg {
    pub(super) link: Link,
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) window: usize,
    pub(super) max_unroutable_tries: u32,
    pub(super) confirm_timeout: Duration,
    pub(super) retry_delay: Duration,
}

/// What [`Forwarder::stop`](super::Forwarder::stop) found.
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

/// The counters behind [`ForwarderStats`](super::ForwarderStats), shared by the handle and the
/// thread.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) forwarded: AtomicU64,
    pub(super) confirmed: AtomicU64,
    pub(super) republished: AtomicU64,
    pub(super) returned: AtomicU64,
    pub(super) nacked: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) window: AtomicUsize,
    pub(super) link: LinkStats,
}

/// The forwarder's thread: connect, run a session, reconnect with backoff, until stopped.
pub(super) async fn run(
    cfg: Cfg,
    queue: Queue,
    c: Arc<Counters>,
    mut stop: StopRx,
) -> Result<ForwardStopReport> {
    let mut s = Session {
        cfg: &cfg,
        queue: &queue,
        c: &c,
        unroutable: HashMap::new(),
        report: ForwardStopReport::default(),
        stopping: None,
    };
    keep_connected(&cfg.link, &c.link, &mut s, &mut stop).await?;
    Ok(s.report)
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

impl Side for Session<'_> {
    type Opened = Channel;

    /// Connects and opens a channel in confirm mode.
    async fn open(&self, link: &Link) -> lapin::Result<(Connection, Channel)> {
        let conn = link.connect().await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok((conn, channel))
    }

    /// Resets the backoff at the first confirm.
    async fn run(
        &mut self,
        conn: &Connection,
        channel: Channel,
        stop: &mut StopRx,
        reconnect: &mut Reconnect,
    ) -> End {
        self.stream(conn, &channel, stop, reconnect).await
    }
}

impl Session<'_> {
    /// Publishes and settles on one channel until it breaks or a stop completes; whatever is
    /// still in flight then is released.
    async fn stream(
        &mut self,
        conn: &Connection,
        channel: &Channel,
        stop: &mut StopRx,
        reconnect: &mut Reconnect,
    ) -> End {
        let (tx, mut rx) = mpsc::unbounded_channel::<ConfirmResult>();
        // The confirm waits of this channel, aborted with it: lapin may never resolve the
        // confirms of a connection that died.
        let mut confirms = JoinSet::new();
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
            // Reap the confirm waits that finished, so that the set holds only pending ones.
            while confirms.try_join_next().is_some() {}
            if self.stopping.is_none() {
                if let Some(t) = stop_deadline(stop) {
                    self.stopping = Some(t);
                    self.report.unconfirmed_at_stop = inflight.len();
                }
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
            let idle_check = now + IDLE_CHECK;
            let tick = [confirm_deadline, paused, self.stopping, Some(idle_check)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(idle_check);
            tokio::select! {
                biased;
                () = stopped(stop), if self.stopping.is_none() => {}
                Some(first) = rx.recv() => {
                    // Settle every confirm that has arrived, not just the first.
                    let mut next = Some(first);
                    let mut end = None;
                    while let Some((seq, res)) = next.take() {
                        if let Some(d) = inflight.remove(&seq) {
                            match self.settle(d, res) {
                                Ok(Outcome::Confirmed) => reconnect.reset(),
                                Ok(Outcome::Retry) => {
                                    paused_until = Some(after(self.cfg.retry_delay));
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
                        add(&self.c.timeouts, 1);
                        self.c.link.last_error.set(format_args!(
                            "no confirm within {:?}", self.cfg.confirm_timeout
                        ));
                        break End::Broken;
                    }
                    if !channel.status().connected() || !conn.status().connected() {
                        self.c.link.last_error.set("the channel or connection closed");
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
                            self.c.link.last_error.set(e);
                            paused_until = Some(after(self.cfg.retry_delay));
                            continue;
                        }
                    };
                    let mut broken = false;
                    for d in batch {
                        if broken {
                            self.give_back(d, false);
                            continue;
                        }
                        if stop_deadline(stop).is_some() {
                            // A stop ends the batch: what was never sent goes back, uncounted.
                            let _ = d.release();
                            continue;
                        }
                        let limit = self.cfg.link.call_timeout;
                        let alive = || channel.status().connected() && conn.status().connected();
                        match within(stop, limit, alive, self.publish(channel, &d)).await {
                            Some(Ok(confirm)) => {
                                let seq = next_seq;
                                next_seq += 1;
                                inflight.insert(seq, d);
                                order.push_back((seq, after(self.cfg.confirm_timeout)));
                                let tx = tx.clone();
                                confirms.spawn(async move {
                                    let _ = tx.send((seq, confirm.await));
                                });
                            }
                            Some(Err(e)) => {
                                self.c.link.last_error.set(e);
                                self.give_back(d, false);
                                broken = true;
                            }
                            None => {
                                // Perhaps sent: released, it goes out again (a duplicate at
                                // worst).
                                self.c.link.last_error.set(
                                    "a publish not written out: the connection closed or hung",
                                );
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
        add(&self.c.forwarded, 1);
        Ok(confirm)
    }

    /// Settles one message by its confirm.
    fn settle(&mut self, d: Delivery, res: lapin::Result<Confirmation>) -> Result<Outcome> {
        let id = d.id().get();
        match res {
            Ok(Confirmation::Ack(None)) => {
                self.unroutable.remove(&id);
                self.local(d.ack())?;
                add(&self.c.confirmed, 1);
                if self.stopping.is_some() {
                    self.report.confirmed_while_stopping += 1;
                }
                Ok(Outcome::Confirmed)
            }
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                add(&self.c.returned, 1);
                let why = format!(
                    "returned by the broker: {} {} (exchange {:?}, routing key {:?})",
                    returned.reply_code,
                    returned.reply_text.as_str(),
                    self.cfg.exchange,
                    self.cfg.routing_key
                );
                self.c.link.last_error.set(&why);
                let tries = self.unroutable.entry(id).or_insert(0);
                *tries += 1;
                if *tries >= self.cfg.max_unroutable_tries {
                    self.unroutable.remove(&id);
                    self.local(d.dead_letter(&why))?;
                    add(&self.c.dead_lettered, 1);
                } else {
                    self.give_back(d, false);
                }
                Ok(Outcome::Retry)
            }
            Ok(Confirmation::Nack(None)) => {
                add(&self.c.nacked, 1);
                self.c.link.last_error.set("nacked by the broker");
                self.give_back(d, false);
                Ok(Outcome::Retry)
            }
            Ok(Confirmation::NotRequested) => {
                // Cannot happen on a channel in confirm mode; never ack without a confirm.
                self.give_back(d, false);
                Ok(Outcome::Broken)
            }
            Err(e) => {
                self.c.link.last_error.set(e);
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
            add(&self.c.republished, 1);
        }
    }

    /// A local settlement's result: a lapsed lease means the message is delivered again (a
    /// duplicate at worst); a closed or poisoned store ends the forwarder.
    fn local(&self, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) | Err(Error::LeaseExpired) => Ok(()),
            Err(e @ (Error::Closed | Error::Poisoned(_))) => Err(e),
            Err(e) => {
                self.c.link.last_error.set(e);
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
