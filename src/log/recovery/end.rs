//! Judging where a segment's records end without a seal (a torn tail, damage, or records lost
//! below the durable mark), the words that explain it, and cutting a torn tail.

use crate::error::Result;
use crate::failpoint;
use crate::log::Segment;
use crate::record;

use super::scan::{durable_record_after, record_at, Image};

/// What the end of a segment's records (not at a seal) is, by the recovery rules of
/// `docs/format.md`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Below the durable mark of the last clean close: records were lost.
    BelowMark,
    /// Damage: valid records follow, in a later segment or staged after it was durable.
    Damaged,
    /// A torn tail, `dirty` bytes long up to its last non-zero byte (`None`: all zeros).
    Torn { dirty: Option<u64> },
}

/// Judges the position `at` of a segment image based at `base` where its records end without
/// a seal. `later_records` tells whether a later segment starts with a valid record; it is
/// asked only when the mark does not already decide.
///
/// `unsynced` is the segment's bound on how far the log was ever written past its durable end
/// (`Segment::unsynced_bound`). The records of a torn tail were all written after the durable
/// end, which lies at or before `at`, so they lie within the bound of `at`; a record written
/// after `at` was durable lies within the bound of the end of the record at `at`, which was
/// durable then. So the search stops there and its cost does not grow with the segment's size.
/// Without a bound (a segment of an older format) it searches to the segment's end.
pub(crate) fn judge_end(
    img: &mut impl Image,
    base: u64,
    at: u64,
    mark_end: u64,
    unsynced: Option<u64>,
    later_records: impl FnOnce() -> Result<bool>,
) -> Result<Ending> {
    if at < mark_end {
        return Ok(Ending::BelowMark);
    }
    if later_records()? {
        return Ok(Ending::Damaged);
    }
    let from = usize::try_from(at - base).unwrap_or(usize::MAX);
    let to = match unsynced {
        None => img.len(),
        Some(bound) => {
            // The record at `at` as its length field says, however damaged the rest of it is.
            let claimed = img
                .at(from, 4)?
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes);
            let reach = u64::from(claimed).saturating_add(bound);
            from.saturating_add(usize::try_from(reach).unwrap_or(usize::MAX)).min(img.len())
        }
    };
    // Past the last non-zero byte there can be no record, so the search for one stops there
    // (after a clean close or a process crash, right at `at`).
    let dirty = img.last_nonzero_in(from, to)?;
    if let Some(last) = dirty {
        if durable_record_after(img, base, at, from + last)?.is_some() {
            return Ok(Ending::Damaged);
        }
    }
    Ok(Ending::Torn { dirty: dirty.map(|last| last as u64 + 1) })
}

/// Why the bytes at log position `at` of a segment image based at `base` are not a record, in
/// words that name the check that failed (`record::explain`).
pub(crate) fn explain_at(img: &mut impl Image, base: u64, at: u64) -> String {
    let off = usize::try_from(at - base).unwrap_or(usize::MAX);
    let room = img.len().saturating_sub(off);
    match record_at(img, off) {
        Ok(rec) => record::explain(rec, at, room),
        Err(e) => format!("the record at log position {at} cannot be read: {e}"),
    }
}

/// Why the end of the records at `at`, before valid records that were written after it was
/// durable, is damage and not a torn write.
pub(crate) fn damaged(img: &mut impl Image, base: u64, at: u64) -> String {
    format!(
        "{}; valid records follow it that were written after it was durable, so this is damage, \
         not a torn write",
        explain_at(img, base, at)
    )
}

/// Why a log that ends at `at` is damaged when a clean close found it durable up to `mark_end`.
pub(crate) fn below_mark(at: u64, mark_end: u64) -> String {
    format!(
        "the log ends at position {at}, but it was durable up to {mark_end} when the store was \
         last closed"
    )
}

/// Zeroes `[at, at + len)` of a segment and syncs it: the torn tail is cut in place.
pub(super) fn zero(seg: &Segment, at: u64, len: u64) -> Result<()> {
    const STEP: u64 = 1 << 20;
    let zeros = vec![0u8; STEP as usize];
    let mut done = 0;
    while done < len {
        let n = STEP.min(len - done);
        seg.write(at + done, zeros.get(..n as usize).unwrap_or(&[]))?;
        done += n;
    }
    failpoint::hit("recovery-after-zero-before-sync");
    seg.sync()?;
    Ok(())
}
