//! Queues and the life of a message in them: the handles, push, pop and its lease, settling
//! (ack, nack, dead-letter), administration, async pops, and the in-memory index.

mod admin;
mod async_pop;
mod chunks;
mod dedup;
mod delayed;
mod delivery;
mod handle;
mod index;
mod leases;
mod payload;
mod pop;
mod push;
mod run;
mod settle;
mod slot;
mod snap;
mod target;
mod types;
mod view;
mod wharf;

pub use self::async_pop::{PopBatchFuture, PopFuture};
pub use self::delivery::Delivery;
pub use self::handle::Queue;
pub(crate) use self::index::{Entry, Note, QueueIndex, Waiting, RELOCATED};
pub(crate) use self::run::RunWant;
pub use self::types::{
    AckReport, DeadReason, Depth, MessageId, NackOptions, Peeked, PushOptions, QueueStats,
};
pub use self::wharf::{Wharf, WharfBuilder};
