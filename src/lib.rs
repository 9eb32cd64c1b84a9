//! wharf: an embedded, crash-safe, persistent message and job queue.
//!
//! A [`Wharf`] is a directory holding named queues. Producers [`push`](Queue::push) bytes;
//! consumers [`pop`](Queue::pop) a [`Delivery`], which is leased to them until they
//! [`ack`](Delivery::ack) it (done) or [`nack`](Delivery::nack) it (again, at once), or until
//! its lease runs out. Every change is a checksummed record in one write-ahead log; concurrent
//! callers share one `fdatasync` (group commit); payloads are read back through a read-only
//! memory map, never copied.
//!
//! ```
//! use wharf::Wharf;
//! # let dir = tempfile::tempdir()?;
//! let wharf = Wharf::open(dir.path())?;
//! let jobs = wharf.queue("jobs")?;
//! let id = jobs.push(b"resize photo 17")?; // durable when this returns
//!
//! let job = jobs.pop()?;
//! assert_eq!((job.id(), job.payload()), (id, &b"resize photo 17"[..]));
//! job.ack()?;
//! # Ok::<(), wharf::Error>(())
//! ```
//!
//! # Guarantees
//!
//! - A push that returned `Ok` with [`Durability::Immediate`] (the default) survives a crash,
//!   a `kill -9` and a power cut, until it is acked.
//! - An acked message is never delivered again once its ack is durable (acks default to
//!   `Durability::Interval(10 ms)`: a crash within that window may redeliver it, once).
//! - Delivery is at least once: messages in flight at a crash are ready again after reopen,
//!   and [`Delivery::attempt`] counts deliveries across restarts.
//! - FIFO within a queue. Message ids are never reused, not even after a crash.
//! - The log becomes durable strictly as a prefix: nothing survives a crash unless all that
//!   was logged before it survives too.
//! - A torn write at the end of the log is cut off on open (and reported in the
//!   [`RecoveryReport`]); damage anywhere else fails the open with [`Error::Corrupted`],
//!   naming the file and offset, unless the store is opened with
//!   [`WharfBuilder::salvage`]: then every intact message is kept, the damaged files are moved
//!   aside, and [`SalvageReport`] lists what was lost. Every payload is checked against its
//!   CRC-32C before use.
//! - A failed write or `fdatasync` poisons the store: every later call fails until reopen.
//!
//! # It is not
//!
//! - a server or a distributed broker: one process opens a directory at a time (with the
//!   `amqp` feature, `wharf::bridge` hands messages to RabbitMQ and takes them from it, at
//!   least once);
//! - exactly-once: handlers must tolerate a redelivery;
//! - an ordered log for replay: acked messages are gone.

#[cfg(feature = "amqp")]
pub mod bridge;
mod checkpoint;
mod clock;
mod config;
mod crc;
mod error;
mod failpoint;
mod limits;
mod log;
mod options;
mod queue;
mod record;
mod salvage;
mod storage;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod typed;
mod verify;
mod worker;

pub use checkpoint::CheckpointReport;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Backoff, DeadLetters, OnExpiry, Overflow, QueueConfig};
pub use error::{Corruption, Error, Result};
pub use limits::{MAX_NAME_LEN, MAX_PRIORITY};
pub use log::RecoveryReport;
pub use log::Stats;
pub use log::{FORMAT_VERSION, MIN_SEGMENT_BYTES};
pub use options::{
    Durability, ReadMode, DEFAULT_INDEX_WINDOW, DEFAULT_MAX_PAYLOAD, DEFAULT_MIN_SEGMENT_BYTES,
    DEFAULT_SEGMENT_BYTES,
};
pub use queue::{
    AckReport, DeadReason, Delivery, Depth, MessageId, NackOptions, Peeked, PopBatchFuture,
    PopFuture, PushOptions, Queue, QueueStats, Wharf, WharfBuilder,
};
pub use salvage::{Fate, IdSpan, LostMessage, LostRange, SalvageReport};
pub use typed::{Bincode, Codec, TypedDelivery, TypedQueue};
#[allow(deprecated)] // the former name of `StateDbCheck`, kept for compatibility
pub use verify::StateDb;
pub use verify::{QueueSummary, RecordCounts, StateDbCheck, VerifyReport};
pub use worker::{
    ShutdownReport, ShutdownSignal, TypedWorkerBuilder, Worker, WorkerBuilder, WorkerStats,
    DEFAULT_DROP_DEADLINE, DEFAULT_POLL_TIMEOUT,
};

/// The README's code blocks, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
