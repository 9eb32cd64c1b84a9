//! An open store: the one mutex over the write state and the queues, its condition variables,
//! the directory lock, and the background threads.

mod open;

pub(crate) use self::open::{take_lock, Core, QueueState, Shared, State};
