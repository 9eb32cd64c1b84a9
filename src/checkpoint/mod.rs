//! Checkpoints: the state database (`state.redb`) that holds what the log no longer needs to,
//! the policy of when to take one, and the relocation of a few unsettled messages out of old
//! segments so that those can be deleted.

mod run;
mod state;

pub use self::run::CheckpointReport;
pub(crate) use self::run::{
    run as run_checkpointer, Checkpointer, RELOCATE_MAX_LIVE, RELOCATE_MAX_SHARE,
};
pub(crate) use self::state::{
    Loaded, QueueRow, Row, StateDb, FILE as STATE_FILE, TMP_FILE as STATE_TMP_FILE,
};
