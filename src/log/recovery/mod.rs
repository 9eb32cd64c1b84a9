//! Recovery: list the segments, check their headers and order, replay every record into a
//! fresh index, and cut a torn tail off the end of the log.
//!
//! Invariants: runs before the store accepts any call; repairs only by writing zeros over a torn
//! tail (never by shrinking a file), so a crash during recovery leaves a state the next recovery
//! handles the same way; damage below the durable end is an error naming the file and offset,
//! never a silent cut.

mod anchor;
mod end;
mod recover;
mod replay;
mod scan;

pub(crate) use self::end::{below_mark, damaged, explain_at, judge_end, Ending};
pub use self::recover::RecoveryReport;
pub(crate) use self::recover::{new_store_id, recover};
pub(crate) use self::replay::Replay;
pub(crate) use self::scan::{last_nonzero, record_at, scan, End, Group, Image};
