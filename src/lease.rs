//! `Delivery`: one leased message, its payload, and how it is settled.
//!
//! Invariant: a delivery settles its message only while its lease is current (same attempt,
//! deadline not passed); dropping an unsettled delivery releases the message (never acks it).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::commit::Room;
use crate::error::{Error, Result};
use crate::options::Durability;
use crate::queue::MessageId;
use crate::record::Body;
use crate::segment::Segment;
use crate::store::Core;

/// Where a delivery's payload bytes are.
pub(crate) enum Payload {
    /// A slice of a segment's read-only map, kept alive by the `Arc`.
    Mapped { seg: Arc<Segment>, start: usize, len: usize },
    /// A record copied into memory; the payload starts at `start`.
    Owned { bytes: Vec<u8>, start: usize },
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Mapped { seg, start, len } => {
                seg.mapped().and_then(|m| m.get(*start..start + len)).unwrap_or(&[])
            }
            Payload::Owned { bytes, start } => bytes.get(*start..).unwrap_or(&[]),
        }
    }
}

/// A message popped from a queue, leased to its holder until it is settled or its lease (the
/// queue's visibility timeout) runs out, whichever comes first.
///
/// Settle it with [`Delivery::ack`] (done: never delivered again) or [`Delivery::nack`] (ready
/// again at once). A lease that runs out makes the message ready for another consumer, and the
/// old holder's settlement then fails with [`Error::LeaseExpired`].
///
/// **Dropping** an unsettled delivery releases it like a `nack` (ready again at once); it does
/// no I/O and never blocks.
pub struct Delivery {
    core: Arc<Core>,
    queue: u32,
    id: u64,
    attempt: u32,
    payload: Payload,
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

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Nack,
}

impl Delivery {
    pub(crate) fn new(
        core: Arc<Core>,
        queue: u32,
        id: u64,
        attempt: u32,
        payload: Payload,
    ) -> Self {
        Delivery { core, queue, id, attempt, payload, settled: false }
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

    /// Settles the message for good with the store's ack durability (by default
    /// `Interval(10 ms)`: a crash within that time may deliver it once more).
    ///
    /// # Errors
    /// [`Error::LeaseExpired`] if the lease ran out first (nothing changed); [`Error::Closed`];
    /// [`Error::Poisoned`]; [`Error::NoSpace`].
    pub fn ack(self) -> Result<()> {
        let d = self.core.shared.opts.ack_durability;
        self.ack_with(d)
    }

    /// [`Delivery::ack`] with the given durability; `Immediate` returns once the ack is durable.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn ack_with(mut self, d: Durability) -> Result<()> {
        self.settled = true;
        self.settle(Settle::Ack, Some(d))
    }

    /// Makes the message ready again at once, for this or another consumer.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn nack(mut self) -> Result<()> {
        self.settled = true;
        let d = self.core.shared.opts.ack_durability;
        self.settle(Settle::Nack, Some(d))
    }

    /// Extends the lease to `by` from now.
    ///
    /// # Errors
    /// [`Error::LeaseExpired`] if the lease already ran out; [`Error::Closed`];
    /// [`Error::Poisoned`].
    pub fn extend(&self, by: Duration) -> Result<()> {
        let mut g = self.core.shared.state.lock();
        g.check()?;
        let q = &mut g.queues[self.queue as usize];
        q.index
            .extend(self.id, self.attempt, self.core.shared.opts.clock.now(), by)
            .map_err(|_| Error::LeaseExpired)?;
        Ok(())
    }

    /// Stages the settlement record; `None` durability means "drop": no waiting at all.
    fn settle(&self, how: Settle, d: Option<Durability>) -> Result<()> {
        let shared = &self.core.shared;
        let mut g = shared.state.lock();
        g.check()?;
        let body = match how {
            Settle::Ack => Body::Ack { queue: self.queue, id: self.id },
            Settle::Nack => Body::Nack { queue: self.queue, id: self.id },
        };
        shared.ensure_room(&mut g, &[body.encoded_len()], Room::Settle)?;
        let now = shared.opts.clock.now();
        let q = self.queue as usize;
        match how {
            Settle::Ack => {
                let entry = g.queues[q]
                    .index
                    .ack(self.id, self.attempt, now)
                    .map_err(|_| Error::LeaseExpired)?;
                let lsn = g.wal.append(&body).ok_or(Error::NoSpace)?;
                let end = lsn + body.encoded_len() as u64;
                if g.wal.log.note_settled(entry.lsn, end) {
                    g.wal.maybe_delete = true;
                    shared.bg_cv.notify_one();
                }
            }
            Settle::Nack => {
                g.queues[q]
                    .index
                    .release(self.id, self.attempt, now)
                    .map_err(|_| Error::LeaseExpired)?;
                g.wal.append(&body).ok_or(Error::NoSpace)?;
                g.queues[q].cv.notify_one();
            }
        }
        let end = g.wal.next_lsn;
        match d {
            Some(d) => shared.commit(&mut g, end, d),
            None => shared.commit(&mut g, end, Durability::None),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            // Releasing is best effort: if the store is closed or poisoned the lease simply
            // lapses, and recovery makes the message ready again anyway.
            let _ = self.settle(Settle::Nack, None);
        }
    }
}
