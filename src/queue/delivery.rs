//! `Delivery`: one leased message, its payload, and how it is settled.
//!
//! Invariant: a delivery settles its message only while its lease is current (same attempt,
//! deadline not passed); dropping an unsettled delivery lets its lease lapse in memory (no
//! record, no I/O; never an ack).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::payload::Payload;
use super::settle::{settle, Settle};
use super::types::{MessageId, NackOptions};
use crate::clock::from_unix_ms;
use crate::error::{Error, Result};
use crate::options::Durability;
use crate::store::Core;

/// A message popped from a queue, leased to its holder until it is settled or its lease (the
/// queue's visibility timeout) runs out, whichever comes first.
///
/// Settle it with [`Delivery::ack`] (done: never delivered again), [`Delivery::nack`] (failed:
/// retried after the queue's backoff, or dead-lettered after its last attempt),
/// [`Delivery::dead_letter`] or [`Delivery::release`] (ready again at once). A lease that runs
/// out makes the message ready for another consumer, and the old holder's settlement then
/// fails with [`Error::LeaseExpired`].
///
/// **Dropping** an unsettled delivery lets its lease lapse now: the message is ready again at
/// once, as if its visibility timeout had run out (its delivery still counts as an attempt, and
/// it is not counted as failed). Only the in-memory index changes: no record is logged and no
/// I/O is done, so a drop never waits for the disk (it takes the store's mutex briefly). A
/// crash or close before the message is delivered again finds it in flight, and recovery makes
/// it ready, as for any lease that ran out. Call [`Delivery::release`] to log the release.
pub struct Delivery {
    core: Arc<Core>,
    queue: u32,
    id: u64,
    attempt: u32,
    payload: Payload,
    /// Unix ms of the push, if its record carries it (0: not recorded).
    pushed: u64,
    settled: bool,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id())
            .field("attempt", &self.attempt)
            .field("len", &self.payload().len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(
        core: Arc<Core>,
        queue: u32,
        id: u64,
        attempt: u32,
        payload: Payload,
        pushed: u64,
    ) -> Self {
        Delivery { core, queue, id, attempt, payload, pushed, settled: false }
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        MessageId(self.id)
    }

    /// The payload. Read through the memory map, it is a slice of the log segment itself (no
    /// copy), checked against its CRC-32C before it was handed out.
    pub fn payload(&self) -> &[u8] {
        self.payload.bytes()
    }

    /// Which delivery of this message this is: 1 the first time, counted across restarts.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the message was pushed (the store's wall clock), if its push record carries the
    /// time: every push records it (a relocated message keeps it); a plain `Push` record of an
    /// older store does not.
    pub fn pushed_at(&self) -> Option<SystemTime> {
        (self.pushed != 0).then(|| from_unix_ms(self.pushed))
    }

    /// Settles the message for good with the store's ack durability (by default
    /// `Interval(10 ms)`: a crash within that time may deliver it once more).
    ///
    /// # Errors
    /// [`Error::LeaseExpired`] if the lease ran out first (nothing changed); [`Error::Closed`];
    /// [`Error::Poisoned`]; [`Error::NoSpace`].
    pub fn ack(self) -> Result<()> {
        let d = self.core.shared().opts().ack_durability;
        self.ack_with(d)
    }

    /// [`Delivery::ack`] with the given durability; `Immediate` returns once the ack is durable.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn ack_with(mut self, d: Durability) -> Result<()> {
        self.settled = true;
        self.settle(Settle::Ack, d)
    }

    /// Marks this attempt failed: the message is delivered again after the queue's
    /// [`Backoff`](crate::Backoff) for this attempt number, or, if this was its last allowed
    /// attempt (the queue's `max_attempts`), moves to the dead-letter queue.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn nack(self) -> Result<()> {
        self.nack_with(NackOptions::new())
    }

    /// [`Delivery::nack`] with an explicit delay and/or an error text.
    ///
    /// ```
    /// use std::time::Duration;
    /// use wharf::NackOptions;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("mail")?;
    /// # q.push(b"to: ada")?;
    /// let job = q.pop()?;
    /// job.nack_with(NackOptions::new().delay(Duration::from_secs(5)).error("smtp: 421"))?;
    /// assert_eq!(q.depth()?.delayed, 1);
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn nack_with(mut self, opts: NackOptions) -> Result<()> {
        self.settled = true;
        let d = self.core.shared().opts().ack_durability;
        self.settle(Settle::Nack(&opts), d)
    }

    /// Moves the message to the queue's dead-letter queue now, with `reason` as its error
    /// text (dropped if the queue has no dead-letter queue).
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn dead_letter(mut self, reason: &str) -> Result<()> {
        self.settled = true;
        let d = self.core.shared().opts().ack_durability;
        self.settle(Settle::DeadLetter(reason), d)
    }

    /// Gives the message back, ready again at once, for this or another consumer; not counted
    /// as a failure (its delivery still counts as an attempt). Unlike a drop, which only lets
    /// the lease lapse in memory, this logs the release.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn release(mut self) -> Result<()> {
        self.settled = true;
        let d = self.core.shared().opts().ack_durability;
        self.settle(Settle::Release, d)
    }

    /// Extends the lease to `by` from now: `Duration::ZERO` ends it now (the message is ready
    /// again), a century or more (`Duration::MAX`) never ends while the store is open.
    ///
    /// # Errors
    /// [`Error::LeaseExpired`] if the lease already ran out; [`Error::Closed`];
    /// [`Error::Poisoned`].
    pub fn extend(&self, by: Duration) -> Result<()> {
        let mut g = self.core.shared().lock();
        g.check()?;
        let q = g.queue_mut(self.queue);
        q.index_mut()
            .extend(self.id, self.attempt, self.core.shared().opts().clock.now(), by)
            .map_err(|_| Error::LeaseExpired)?;
        // A shorter lease may end before the wake time of blocked pops: let them look again.
        q.notify_all();
        Ok(())
    }

    /// Renews the lease for the queue's visibility timeout from now, unless it already runs
    /// longer, and returns that timeout: the [`Worker`](crate::Worker)'s keep-alive. Like
    /// `extend` it changes only the in-memory index, no log record.
    pub(crate) fn renew(&self) -> Result<Duration> {
        let shared = self.core.shared();
        let mut g = shared.lock();
        g.check()?;
        let q = g.queue_mut(self.queue);
        let visibility = q.config().visibility_timeout.unwrap_or(shared.opts().visibility_timeout);
        q.index_mut()
            .renew(self.id, self.attempt, shared.opts().clock.now(), visibility)
            .map_err(|_| Error::LeaseExpired)?;
        Ok(visibility)
    }

    /// Whether this is a delivery of queue `q` of the open store `core`.
    pub(crate) fn is_of(&self, core: &Arc<Core>, q: u32) -> bool {
        Arc::ptr_eq(&self.core, core) && self.queue == q
    }

    /// The lease (message id, attempt), for a caller that settles it (`Queue::ack_many`): the
    /// delivery counts as settled, so its drop does nothing.
    pub(crate) fn into_lease(mut self) -> (u64, u32) {
        self.settled = true;
        (self.id, self.attempt)
    }

    /// Settles this delivery as `how` says, with durability `d`.
    fn settle(&self, how: Settle<'_>, d: Durability) -> Result<()> {
        settle(self.core.shared(), (self.queue, self.id, self.attempt), how, d)
    }
}

impl Drop for Delivery {
    /// Lets an unsettled delivery's lease lapse now, in memory only: the message is ready
    /// again at once, exactly as if its lease had run out (no record, no I/O; the mutex is
    /// taken only for the index change). The log still says delivered, so recovery makes it
    /// ready too (counted in flight at the crash or close).
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let shared = self.core.shared();
        let mut g = shared.lock();
        if g.check().is_err() {
            return;
        }
        let now = shared.opts().clock.now();
        let qs = g.queue_mut(self.queue);
        if qs.index_mut().lapse(self.id, self.attempt, now).is_ok() {
            qs.notify_one();
        }
    }
}
