//! An open store: the one mutex over the write state and the queues, the directory lock, and
//! the background threads.

mod background;
mod open;
mod state;

#[cfg(feature = "testing")]
pub(crate) use self::open::maintain;
pub(crate) use self::open::{take_lock, Core};
pub(crate) use self::state::{Shared, State};
