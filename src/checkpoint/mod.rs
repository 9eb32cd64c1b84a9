//! Checkpoints: the state database (`state.redb`) that holds what the log no longer needs to,
//! the policy of when to take one, and the relocation of a few unsettled messages out of old
//! segments so that those can be deleted.

mod bytes;
mod db;
mod policy;
mod relocate;
mod rows;
mod run;
mod snapshot;

pub(crate) use self::db::{StateDb, FILE as STATE_FILE, TMP_FILE as STATE_TMP_FILE};
pub(crate) use self::policy::Checkpointer;
#[cfg(test)]
pub(crate) use self::rows::QueueRow;
pub(crate) use self::rows::{Loaded, Row};
#[cfg(feature = "testing")]
pub(crate) use self::run::due_by_log;
pub use self::run::CheckpointReport;
pub(crate) use self::run::{run, state_db, state_db_failed, take};
pub(crate) use self::snapshot::{QueueSnap, SnapMessage, Snapshot};
