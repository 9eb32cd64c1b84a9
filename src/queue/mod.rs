//! Queues and the life of a message in them: the handles, push, pop and its lease, settling
//! (ack, nack, dead-letter), administration, async pops, and the in-memory index.

mod async_pop;
mod delivery;
mod handle;
mod index;
mod jobs;

pub use self::async_pop::{PopBatchFuture, PopFuture};
pub use self::delivery::{Delivery, NackOptions};
pub use self::handle::{Depth, MessageId, Peeked, PushOptions, Queue, QueueStats, Wharf};
pub(crate) use self::index::{Entry, Note, QueueIndex, RELOCATED};
pub use self::jobs::DeadReason;
