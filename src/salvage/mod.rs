//! Salvage: open a damaged store anyway. Every intact message is kept, the store is rewritten as
//! a fresh, healthy log, the damaged files are moved aside untouched, and what could not be kept
//! is listed, by id where the surviving records allow it.
//!
//! `scan.rs` reads the log past damage; `plan.rs` replays what it read and names the losses;
//! `write.rs` writes the new log; `swap.rs` puts it in place crash-safely; `report.rs` is the
//! report and its file format.
//!
//! Memory: one segment file at a time, plus a few words per message id the log names.
//!
//! Invariants: nothing in the store directory changes before the new log is durable and the
//! commit marker (`salvage.swap`) names it; from then on every open finishes the swap the same
//! way, so a crash at any point followed by another open or salvage gives the same store and the
//! same report. Damaged files are renamed, never written.

mod plan;
mod report;
mod scan;
mod swap;
mod write;

use std::path::Path;

pub use report::{Fate, IdSpan, LostMessage, LostRange, SalvageReport};

use crate::error::{Error, Result};
use crate::storage::{RealFs, Storage};
use crate::store::take_lock;

pub(crate) use swap::finish_interrupted;

/// Whether an open that failed with `e` is one salvage can help: damage, not a lock, an I/O
/// error or a newer format.
pub(crate) fn salvageable(e: &Error) -> bool {
    matches!(e, Error::Corrupted(_) | Error::ForeignSegment(_))
}

/// Salvages the store in `dir` in place (the caller holds its lock): the new log replaces the
/// old one, whose files go to `dir/damaged-<unix time>/`. `segment_bytes`: the new segments'
/// length (at least what the largest message needs).
pub(crate) fn in_place(
    storage: &dyn Storage,
    dir: &Path,
    segment_bytes: Option<u64>,
) -> Result<SalvageReport> {
    swap::remove_leftovers(storage, dir)?;
    let plan = plan::plan(storage, dir, segment_bytes)?;
    let damaged = swap::damaged_dir_name(storage, dir)?;
    let bases = write::write_log(storage, &dir.join("log"), &plan)?;
    let mut report = plan.report;
    report.damaged_dir = Some(dir.join(&damaged));
    swap::commit(storage, dir, Some(&damaged), &bases, &report)?;
    swap::finish(storage, dir)
}

/// Salvages the store in `from` into the new store `into` (created; it must be empty or not
/// exist), leaving `from` unchanged.
pub(crate) fn into_new(
    storage: &dyn Storage,
    from: &Path,
    into: &Path,
    segment_bytes: Option<u64>,
) -> Result<SalvageReport> {
    if storage.list(from)?.iter().any(|n| n == swap::MARKER) {
        return Err(Error::InvalidOption(format!(
            "{} holds an interrupted salvage: open it (or run `wharf salvage` on it) to finish \
             that first",
            from.display()
        )));
    }
    storage.create_dir_all(into)?;
    let _into_lock = take_lock(storage, into)?;
    if let Some(report) = finish_interrupted(storage, into)? {
        return Ok(report);
    }
    let busy = storage.list(into)?.into_iter().any(|n| n != "LOCK" && n != "log");
    let log = into.join("log");
    storage.create_dir_all(&log)?;
    if busy || !storage.list(&log)?.is_empty() {
        return Err(Error::InvalidOption(format!(
            "{} is not empty: salvage writes a new store into an empty directory",
            into.display()
        )));
    }
    let plan = plan::plan(storage, from, segment_bytes)?;
    let bases = write::write_log(storage, &log, &plan)?;
    swap::commit(storage, into, None, &bases, &plan.report)?;
    swap::finish(storage, into)
}

/// Salvages the damaged store in `dir` into a new store in `into` (see `Wharf::salvage_into`).
pub(crate) fn into_dir(dir: &Path, into: &Path) -> Result<SalvageReport> {
    if !RealFs.list(dir).is_ok_and(|n| !n.is_empty()) {
        return Err(Error::InvalidOption(format!("{} holds no store", dir.display())));
    }
    let _lock = take_lock(&RealFs, dir)?;
    into_new(&RealFs, dir, into, None)
}
