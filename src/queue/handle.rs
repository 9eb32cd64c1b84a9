//! `Queue`: the handle to one named queue. Its methods are the public face of the operations
//! in `push.rs`, `pop.rs`, `admin.rs` and `async_pop.rs`.

use std::fmt;
use std::time::Duration;

use super::admin;
use super::async_pop::{PopBatchFuture, PopFuture};
use super::delivery::Delivery;
use super::pop;
use super::push;
use super::settle;
use super::target::QueueRef;
use super::types::{AckReport, Depth, MessageId, Peeked, PushOptions, QueueStats};
use crate::clock::deadline_after;
use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::options::Durability;

/// A handle to one named queue. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Queue {
    target: QueueRef,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("name", self.target.name()).finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn new(target: QueueRef) -> Queue {
        Queue { target }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        self.target.name()
    }

    /// Pushes one message with the store's push durability (by default `Immediate`: durable
    /// when this returns).
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`]; [`Error::QueueFull`]; [`Error::Full`] and [`Error::NoSpace`]
    /// (nothing was stored); [`Error::Closed`]; [`Error::Poisoned`] (the message may or may not be stored).
    pub fn push(&self, payload: impl AsRef<[u8]>) -> Result<MessageId> {
        self.push_with(payload, PushOptions::new())
    }

    /// Pushes one message with options (see [`PushOptions`]).
    ///
    /// ```
    /// use wharf::{Durability, PushOptions};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("logs")?;
    /// q.push_with(b"fast, not yet durable", PushOptions::new().durability(Durability::None))?;
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::push`], plus [`Error::InvalidOption`] for a priority above
    /// [`MAX_PRIORITY`](crate::MAX_PRIORITY) or a dedup key over 1024 bytes.
    pub fn push_with(&self, payload: impl AsRef<[u8]>, opts: PushOptions) -> Result<MessageId> {
        let ids = push::push_many(&self.target, [payload], opts)?;
        ids.into_iter().next().ok_or(Error::Closed)
    }

    /// Pushes several messages with one group commit. On `Err` none of them was pushed, except
    /// after [`Error::Poisoned`], where any prefix of them may have been stored.
    ///
    /// # Errors
    /// As [`Queue::push`].
    pub fn push_batch<I>(&self, payloads: I) -> Result<Vec<MessageId>>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        push::push_many(&self.target, payloads, PushOptions::new())
    }

    /// [`Queue::push_batch`] with options, the same for every message (a dedup key is refused:
    /// it names one message).
    ///
    /// # Errors
    /// As [`Queue::push_with`].
    pub fn push_batch_with<I>(&self, payloads: I, opts: PushOptions) -> Result<Vec<MessageId>>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        push::push_many(&self.target, payloads, opts)
    }

    /// Pops the next ready message if there is one, without waiting: the highest priority
    /// first, the oldest first within a priority.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the message's bytes on disk fail their checksum (it stays leased
    /// and comes back after the visibility timeout); [`Error::Closed`]; [`Error::Poisoned`];
    /// [`Error::NoSpace`]; [`Error::Io`].
    pub fn try_pop(&self) -> Result<Option<Delivery>> {
        let now = self.target.shared().opts().clock.now();
        pop::pop_one_until(&self.target, Some(now))
    }

    /// Pops the next ready message, waiting as long as it takes. The wait is woken by a push,
    /// a nack, a delayed message becoming due or an expiring lease; it never polls.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop(&self) -> Result<Delivery> {
        pop::pop_one_until(&self.target, None)?.ok_or(Error::Closed)
    }

    /// Pops the next ready message, waiting at most `timeout`; `Ok(None)` if none came. A
    /// timeout too long to add to the clock (such as `Duration::MAX`) waits as long as it takes.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        let now = self.target.shared().opts().clock.now();
        pop::pop_one_until(&self.target, Some(deadline_after(now, timeout)))
    }

    /// Pops up to `max` messages: waits at most `timeout` for the first, then takes whatever
    /// else is ready at that moment. An empty vector means none came in time. As for
    /// [`Queue::pop_timeout`], `Duration::MAX` waits as long as it takes.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop_batch(&self, max: usize, timeout: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = self.target.shared().opts().clock.now();
        pop::pop_many_until(&self.target, Some(deadline_after(now, timeout)), max)
    }

    /// Acks a batch of this queue's deliveries with one hold of the store's lock and one
    /// group commit, with the store's ack durability (by default `Interval(10 ms)`: a crash
    /// within that time may deliver them once more). The acks are written as one step: a crash
    /// keeps all of them or none.
    ///
    /// A delivery whose lease already ended (it ran out, or the message was released or
    /// delivered again), for which [`Delivery::ack`] would fail with
    /// [`Error::LeaseExpired`], is not an error here: it is listed in
    /// [`AckReport::lapsed`] and left as it is. An empty batch does nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let jobs = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// jobs.push_batch(["a", "b", "c"])?;
    /// let batch = jobs.pop_batch(10, Duration::ZERO)?;
    /// // ... handle each one ...
    /// let report = jobs.ack_many(batch)?;
    /// assert_eq!(report.acked, 3);
    /// assert!(report.lapsed.is_empty());
    /// assert_eq!(jobs.depth()?.in_flight, 0);
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidOption`] if a delivery is of another queue or another store (or an
    /// earlier open of this one): nothing is acked, and every delivery of the batch is dropped
    /// as it is (its lease lapses, as for any dropped delivery). [`Error::Closed`];
    /// [`Error::Poisoned`] (the acks may or may not be stored); [`Error::NoSpace`].
    pub fn ack_many(&self, deliveries: impl IntoIterator<Item = Delivery>) -> Result<AckReport> {
        let d = self.target.shared().opts().ack_durability;
        self.ack_many_with(deliveries, d)
    }

    /// [`Queue::ack_many`] with the given durability; `Immediate` returns once the acks are
    /// durable.
    ///
    /// # Errors
    /// As [`Queue::ack_many`].
    pub fn ack_many_with(
        &self,
        deliveries: impl IntoIterator<Item = Delivery>,
        d: Durability,
    ) -> Result<AckReport> {
        let batch: Vec<Delivery> = deliveries.into_iter().collect();
        if batch.is_empty() {
            return Ok(AckReport::default());
        }
        let (core, q) = (self.target.core(), self.target.id());
        if let Some(other) = batch.iter().find(|del| !del.is_of(core, q)) {
            return Err(Error::InvalidOption(format!(
                "ack_many on queue {:?} was given delivery {} of another queue or store: a \
                 batch holds deliveries of the queue it is acked on; nothing was acked",
                self.name(),
                other.id().get(),
            )));
        }
        let leases: Vec<(u64, u32)> = batch.into_iter().map(Delivery::into_lease).collect();
        settle::ack_many(self.target.shared(), q, &leases, d)
    }

    /// How many messages are ready, delayed and in flight.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn depth(&self) -> Result<Depth> {
        let s = self.stats()?;
        Ok(Depth { ready: s.ready, in_flight: s.in_flight, delayed: s.delayed })
    }

    /// The queue's depth and its counters since the store was opened.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn stats(&self) -> Result<QueueStats> {
        admin::stats(&self.target)
    }

    /// The queue's configuration.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn config(&self) -> Result<QueueConfig> {
        admin::config(&self.target)
    }

    /// Replaces the queue's configuration, durably (a log record, synced before this returns).
    /// It applies to messages already in the queue too, except TTLs, which are fixed at push.
    /// Durations are kept to the millisecond, rounded up; [`Queue::config`] returns them so.
    ///
    /// # Errors
    /// [`Error::InvalidOption`], [`Error::InvalidName`] for a bad dead-letter queue name;
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`].
    pub fn set_config(&self, config: &QueueConfig) -> Result<()> {
        admin::set_config(&self.target, config)
    }

    /// The queue this queue's dead letters go to (created if it does not exist yet), or `None`
    /// if its config drops them.
    ///
    /// # Errors
    /// As [`Wharf::queue`].
    pub fn dead_letter_queue(&self) -> Result<Option<Queue>> {
        match admin::dead_letter_queue_name(&self.target)? {
            Some(name) => admin::open_queue(self.target.core(), &name).map(|q| Some(Queue::new(q))),
            None => Ok(None),
        }
    }

    /// The name of the queue this queue's dead letters go to, or `None` if its config drops
    /// them. Unlike [`Queue::dead_letter_queue`] it creates nothing: the queue may not exist yet
    /// (it is created when the first message goes there).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = wharf::Wharf::open(dir.path())?;
    /// let mail = store.queue("mail")?;
    /// assert_eq!(mail.dead_letter_queue_name()?.as_deref(), Some("mail.dlq"));
    /// assert_eq!(store.queue_names(), ["mail"]); // not created
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`].
    pub fn dead_letter_queue_name(&self) -> Result<Option<String>> {
        admin::dead_letter_queue_name(&self.target)
    }

    /// Up to `max` waiting messages (ready, then delayed) in the order they would be
    /// delivered, with copies of their payloads, without leasing them. Leased messages are not
    /// listed.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if a payload fails its checksum; [`Error::Closed`]; [`Error::Io`].
    pub fn peek(&self, max: usize) -> Result<Vec<Peeked>> {
        admin::peek(&self.target, max)
    }

    /// The ids of the waiting messages (ready, then delayed) in the order they would be
    /// delivered: what `peek(usize::MAX)` lists, at 8 bytes a message instead of a copy of each
    /// payload. With [`Queue::peek_id`], a way to walk a long queue a message at a time.
    ///
    /// ```
    /// use wharf::PushOptions;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// let a = q.push(b"a")?;
    /// let b = q.push_with(b"b", PushOptions::new().priority(5))?;
    /// assert_eq!(q.waiting_ids()?, [b, a]);
    /// let m = q.peek_id(a)?.expect("a is waiting");
    /// assert_eq!(m.payload, b"a");
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`].
    pub fn waiting_ids(&self) -> Result<Vec<MessageId>> {
        admin::waiting_ids(&self.target)
    }

    /// The waiting message `id` as [`Queue::peek`] shows it, without leasing it; `None` if it
    /// is not waiting in this queue (settled, in flight, or in another queue).
    ///
    /// # Errors
    /// As [`Queue::peek`].
    pub fn peek_id(&self, id: MessageId) -> Result<Option<Peeked>> {
        admin::peek_id(&self.target, id)
    }

    /// The unsettled message pushed first (the smallest id: ready, delayed or in flight), as
    /// [`Queue::peek`] shows it, without leasing it; `None` if the queue is empty. Its
    /// [`pushed_at`](Peeked::pushed_at) gives the age of the queue's oldest message (every push
    /// records its time; only a plain push of an older version did not).
    ///
    /// ```
    /// use wharf::PushOptions;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// let first = q.push_with(b"urgent later", PushOptions::new().priority(1))?;
    /// q.push_with(b"urgent", PushOptions::new().priority(9))?;
    /// let oldest = q.oldest()?.expect("two messages");
    /// assert_eq!(oldest.id, first);
    /// assert!(oldest.pushed_at.is_some()); // every push records its time
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::peek`].
    pub fn oldest(&self) -> Result<Option<Peeked>> {
        admin::oldest(&self.target)
    }

    /// Payload bytes of the queue's unsettled messages (ready, delayed and in flight), record
    /// headers not included. Walks the queue's index: it takes time in proportion to the
    /// messages.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// q.push_batch(["abc", "de"])?;
    /// assert_eq!(q.payload_bytes()?, 5);
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`].
    pub fn payload_bytes(&self) -> Result<u64> {
        admin::payload_bytes(&self.target)
    }

    /// Settles every waiting message of the queue (ready or delayed) for good, as an ack
    /// does: one `Ack` record each, written as one group (a crash keeps the whole purge or none
    /// of it), durable when this returns; returns how many. Messages in flight are left to
    /// their consumers.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// q.push_batch(["a", "b", "c"])?;
    /// let held = q.pop()?;
    /// assert_eq!(q.purge()?, 2);
    /// assert_eq!(q.try_pop()?.map(|d| d.id()), None);
    /// held.ack()?;
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`] (nothing is settled).
    pub fn purge(&self) -> Result<usize> {
        admin::purge(&self.target)
    }

    /// Moves a dead letter of this queue back to the queue it came from, ready at once with
    /// its attempts counted from zero, priority 0 and no TTL (its error text stays behind).
    /// `Ok(false)` if `id` is not a waiting dead letter here.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`].
    pub fn requeue(&self, id: MessageId) -> Result<bool> {
        Ok(admin::requeue_where(&self.target, |m| m == id.0, 1)? == 1)
    }

    /// Moves every waiting dead letter of this queue back to where it came from, as one group
    /// of records (a crash keeps all of the moves or none); returns how many.
    ///
    /// # Errors
    /// As [`Queue::requeue`].
    pub fn requeue_all(&self) -> Result<usize> {
        admin::requeue_where(&self.target, |_| true, usize::MAX)
    }

    /// Pops the next ready message, as a future: it resolves when a message is ready (the
    /// highest priority first, the oldest first within a priority), like [`Queue::pop`] but
    /// without blocking a thread. It works on any executor; the library runs none.
    ///
    /// A pending future is woken by a push, a nack, a release or a close, and, through the
    /// store's background thread, by a delayed message becoming due or a lease running out. It
    /// is never woken on a fixed tick. (Stores opened without the background thread, such as
    /// the simulated-disk ones of `wharf::testing`, wake it only by pushes and settlements.)
    ///
    /// The future takes its message only in the poll that returns it: dropping it while it is
    /// pending (say, when a `select!` picks another branch) loses nothing. A poll may do the
    /// same short I/O as [`Queue::try_pop`]: write the delivery record (when the store counts
    /// crashed attempts or acks are `Immediate`) and read the payload.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let wharf = wharf::Wharf::open(dir.path())?;
    /// let jobs = wharf.queue("jobs")?;
    /// jobs.push(b"resize photo 17")?;
    ///
    /// let job = futures::executor::block_on(jobs.pop_async())?;
    /// assert_eq!(job.payload(), b"resize photo 17");
    /// job.ack()?;
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) when the store is closed, also while the future
    /// is pending; otherwise as [`Queue::try_pop`].
    pub fn pop_async(&self) -> PopFuture<'_> {
        PopFuture::new(&self.target)
    }

    /// Pops up to `max` messages, as a future: it resolves once at least one is ready, with
    /// every message ready at that moment, up to `max`. `max == 0` resolves at once, empty.
    /// Wake-ups and dropping are as for [`Queue::pop_async`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let jobs = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// jobs.push_batch([b"a", b"b", b"c"])?;
    /// let batch = futures::executor::block_on(jobs.pop_batch_async(2))?;
    /// assert_eq!(batch.len(), 2);
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::pop_async`].
    pub fn pop_batch_async(&self, max: usize) -> PopBatchFuture<'_> {
        PopBatchFuture::new(&self.target, max)
    }
}
