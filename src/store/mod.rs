//! An open store: the one mutex over the write state and the queues, the directory lock, and
//! the background threads.

mod background;
mod lock;
mod open;
mod state;

pub(crate) use self::lock::take_lock;
#[cfg(feature = "testing")]
pub(crate) use self::open::maintain;
pub(crate) use self::open::Core;
pub use self::state::Thread;
pub(crate) use self::state::{Shared, State};
