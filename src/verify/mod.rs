//! `Wharf::verify`: a read-only check of a store directory. It reads the state database's
//! checkpoint and every segment, checks every header and record against its checksum, the chain
//! of segments, the durable mark, every relocated payload and the index that the checkpoint and
//! the log rebuild, and lists every problem it finds instead of failing on the first.
//!
//! Invariants: never writes, creates, removes or locks a file, so it may run beside an open
//! store; never panics on any bytes (redb runs under `catch_unwind`); holds one read window (or
//! one record or relocated payload, when larger), what redb writes while it opens the state
//! database (kept in memory, never in the file) and the rebuilt index, never all the payloads.
//! It starts the replay from the checkpoint as recovery does (`Replay::from_checkpoint`) and
//! judges the end of the log by the same code (`crate::log::judge_end`), so a torn tail it reports
//! is one an open would cut, damage it reports is damage an open would refuse, and the
//! unsettled messages it counts are those an open finds.

mod report;
mod state_check;
mod verifier;
mod window;

#[allow(deprecated)]
pub use self::report::StateDb;
pub use self::report::{QueueSummary, RecordCounts, StateDbCheck, VerifyReport};
pub(crate) use self::state_check::{corruption, read_state};
pub(crate) use self::verifier::{verify_on, verify_with};
