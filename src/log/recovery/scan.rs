//! Reading a segment image: [`Image`] (the bytes of one segment file, by offset), [`scan`], which
//! walks its records and hands them over a whole [`Group`] at a time, and where they end.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::log::Segment;
use crate::record::{self, Body, DecodeError, RECORD_HEADER_LEN};

/// Where the records of one segment end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// A seal record: the segment is complete.
    Sealed,
    /// The first position holding no valid record, and why.
    Open { at: u64, why: DecodeError },
}

/// The bytes of one segment file, read by offset: the whole image at once (a map or a `pread`
/// copy) in recovery; a window read on demand in `verify`, which keeps its memory small.
pub(crate) trait Image {
    /// The image's length in bytes.
    fn len(&self) -> usize;
    /// The image from `off` on: at least `want` bytes when the image has them. When it ends
    /// first, all that is left or any shorter slice (a record cut by the end is truncated
    /// either way).
    fn at(&mut self, off: usize, want: usize) -> Result<&[u8]>;
    /// The index, counted from `from`, of the last non-zero byte in `[from, to)`.
    fn last_nonzero_in(&mut self, from: usize, to: usize) -> Result<Option<usize>>;
}

impl Image for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn at(&mut self, off: usize, _want: usize) -> Result<&[u8]> {
        Ok(self.get(off..).unwrap_or(&[]))
    }

    fn last_nonzero_in(&mut self, from: usize, to: usize) -> Result<Option<usize>> {
        Ok(self.get(from..to.min(<[u8]>::len(self))).and_then(last_nonzero))
    }
}

/// The bytes of the record that would start at `off`: as many as its length field says (fewer
/// where the image ends first), never more.
pub(crate) fn record_at(img: &mut impl Image, off: usize) -> Result<&[u8]> {
    let len =
        img.at(off, 4)?.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
    let want = (len as usize).max(RECORD_HEADER_LEN);
    let bytes = img.at(off, want)?;
    Ok(bytes.get(..want).unwrap_or(bytes))
}

/// A group of records being read (`record::Record::more`): its records are handed over only
/// when its last one is read, so a crash keeps a group whole or not at all. A group whose last
/// record never came is void once a new epoch begins (the next open writes one before anything
/// else) and is never handed over.
#[derive(Default)]
pub(crate) struct Group {
    /// Records of the group in earlier segments (it spans a roll), copied: (base of their
    /// segment, position, bytes).
    carried: Vec<(u64, u64, Vec<u8>)>,
    /// Records of the group in the segment being read: (position, offset in its image).
    here: Vec<(u64, usize)>,
    /// The epoch of the records being read.
    epoch: u32,
}

impl Group {
    /// A group reader that starts inside epoch `epoch` (replay from a snapshot): a preamble
    /// restating it does not end a group.
    pub(crate) fn at_epoch(epoch: u32) -> Group {
        Group { epoch, ..Group::default() }
    }

    /// Whether the log read so far ends inside a group.
    pub(crate) fn unfinished(&self) -> bool {
        !self.carried.is_empty() || !self.here.is_empty()
    }
}

/// Walks the records of a segment image whose first byte is log position `base`, from offset
/// `from` (the first record's, `HEADER_LEN`, unless replay starts later), handing each
/// to `apply` with the base of its segment and its position; the records of a group only once
/// it is whole (see [`Group`], which carries a group from one segment to the next, so the base
/// may be an earlier segment's).
pub(crate) fn scan(
    img: &mut impl Image,
    base: u64,
    from: u64,
    until: u64,
    group: &mut Group,
    mut apply: impl FnMut(u64, u64, &record::Record<'_>) -> Result<()>,
) -> Result<End> {
    let mut off = usize::try_from(from).unwrap_or(usize::MAX);
    let end = loop {
        let lsn = base + off as u64;
        if lsn >= until {
            // Past what this process knows to be durable after a failed sync: cut as torn.
            break End::Open { at: lsn, why: DecodeError::Zero };
        }
        let rest = record_at(img, off)?;
        let rec = match record::decode(rest, lsn) {
            Ok(rec) => rec,
            Err(why) => break End::Open { at: lsn, why },
        };
        let len = rec.len;
        if let Body::Epoch { epoch } = rec.body {
            if epoch > group.epoch {
                // A new run: a group the last one left unfinished is void.
                group.epoch = epoch;
                group.carried.clear();
                group.here.clear();
            }
        }
        let closes = rec.body.about_messages();
        if rec.more || (closes && group.unfinished()) {
            group.here.push((lsn, off));
            off += len;
            if !rec.more {
                // The group is whole: hand it over, each record read again.
                for (from, at, bytes) in std::mem::take(&mut group.carried) {
                    apply(from, at, &decode_again(&bytes, at)?)?;
                }
                for (at, from) in std::mem::take(&mut group.here) {
                    apply(base, at, &decode_again(record_at(img, from)?, at)?)?;
                }
            }
            continue;
        }
        // Not part of a group (a seal or a preamble may come between a group's records).
        apply(base, lsn, &rec)?;
        if rec.body == Body::Seal {
            break End::Sealed;
        }
        off += len;
    };
    // The group goes on in the next segment (or the log ends inside it): keep its records.
    for (at, from) in std::mem::take(&mut group.here) {
        let bytes = record_at(img, from)?.to_vec();
        group.carried.push((base, at, bytes));
    }
    Ok(end)
}

/// The file of the segment based at `base` (one of `segs`).
pub(super) fn path_of(segs: &[Arc<Segment>], base: u64) -> &Path {
    segs.iter().find(|s| s.base() == base).map_or(Path::new("log"), |s| s.path())
}

/// Decodes a record that decoded before (a group's, read again when it is whole).
fn decode_again(bytes: &[u8], lsn: u64) -> Result<record::Record<'_>> {
    record::decode(bytes, lsn).map_err(|why| {
        Error::Io(std::io::Error::other(format!(
            "the record at log position {lsn} changed while it was read: {}",
            why.describe()
        )))
    })
}

/// A valid record past `at` that was staged after `at` was already durable: proof that the
/// bytes at `at` were damaged after they were synced, not torn by a crash.
/// Records can only start up to `last_start` (an offset into the image).
pub(super) fn durable_record_after(
    img: &mut impl Image,
    base: u64,
    at: u64,
    last_start: usize,
) -> Result<Option<u64>> {
    let Some(start) = usize::try_from(at - base).ok() else { return Ok(None) };
    let Some(last) = img.len().checked_sub(RECORD_HEADER_LEN) else { return Ok(None) };
    for off in start + 1..=last.min(last_start) {
        let lsn = base + off as u64;
        if record::peek_lsn(img.at(off, RECORD_HEADER_LEN)?) != Some(lsn) {
            continue;
        }
        if record::decode(record_at(img, off)?, lsn).is_ok_and(|r| r.synced > at) {
            return Ok(Some(lsn));
        }
    }
    Ok(None)
}

/// The index of the last non-zero byte of `bytes`. Reads whole blocks with an OR-fold, which
/// vectorises, so a 64 MiB preallocated tail takes milliseconds.
pub(crate) fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = bytes.get(start..end)?;
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return block.iter().rposition(|&b| b != 0).map(|i| start + i);
        }
        end = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_of(records: &[Body<'_>], synced_at: &[u64]) -> (Vec<u8>, Vec<u64>) {
        let mut buf = vec![0u8; crate::log::HEADER_LEN as usize];
        let mut lsns = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let lsn = buf.len() as u64;
            lsns.push(lsn);
            record::encode(&mut buf, lsn, synced_at.get(i).copied().unwrap_or(0), r);
        }
        buf.resize(buf.len() + 256, 0);
        (buf, lsns)
    }

    #[test]
    fn scan_stops_at_zeros_and_at_seal() {
        let (img, lsns) = image_of(&[Body::Epoch { epoch: 1 }, Body::Ack { queue: 0, id: 1 }], &[]);
        let mut seen = Vec::new();
        let end = scan(
            &mut &img[..],
            0,
            crate::log::HEADER_LEN,
            u64::MAX,
            &mut Group::default(),
            |_, lsn, _| {
                seen.push(lsn);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, lsns);
        assert!(matches!(end, End::Open { why: DecodeError::Zero, .. }));
        let (img, _) =
            image_of(&[Body::Epoch { epoch: 1 }, Body::Seal, Body::Epoch { epoch: 2 }], &[]);
        let mut group = Group::default();
        let end =
            scan(&mut &img[..], 0, crate::log::HEADER_LEN, u64::MAX, &mut group, |_, _, _| Ok(()))
                .unwrap();
        assert_eq!(end, End::Sealed);
    }

    #[test]
    fn a_later_record_staged_after_the_damage_was_durable_proves_corruption() {
        let bodies = [Body::Epoch { epoch: 1 }, Body::Epoch { epoch: 2 }, Body::Epoch { epoch: 3 }];
        // Third record was staged when everything up to its own start was durable.
        let (mut img, lsns) = image_of(&bodies, &[0, 0, 64 + 28 * 2]);
        img[lsns[1] as usize + 10] ^= 1;
        let found = durable_record_after(&mut &img[..], 0, lsns[1], usize::MAX).unwrap();
        assert_eq!(found, Some(lsns[2]));
        // Same damage, but the later record was staged before the damaged one was synced:
        // a torn write, which recovery may cut.
        let (mut img, lsns) = image_of(&bodies, &[0, 0, 64]);
        img[lsns[1] as usize + 10] ^= 1;
        let found = durable_record_after(&mut &img[..], 0, lsns[1], usize::MAX).unwrap();
        assert_eq!(found, None);
    }

    #[test]
    fn with_an_unsynced_bound_the_end_is_judged_within_it() {
        use crate::log::recovery::end::{judge_end, Ending};
        // The log ends at `at` (zeros); a valid record staged after `at` was durable lies
        // `gap` bytes further on. With a bound, only a record within it is looked at: the
        // writer never got further than that past its durable end.
        let judge = |gap: usize, bound: Option<u64>| {
            let (mut img, _) = image_of(&[Body::Epoch { epoch: 1 }], &[]);
            let at = img.len() - 256;
            img.resize(at + gap, 0);
            let lsn = img.len() as u64;
            record::encode(&mut img, lsn, lsn - at as u64, &Body::Epoch { epoch: 2 });
            img.resize(img.len() + 64, 0);
            judge_end(&mut &img[..], 0, at as u64, 0, bound, || Ok(false)).unwrap()
        };
        assert_eq!(judge(100, None), Ending::Damaged);
        assert_eq!(judge(100, Some(4096)), Ending::Damaged);
        assert_eq!(judge(10_000, None), Ending::Damaged);
        // Beyond the bound: not a record this log wrote after its end (nothing is cut either:
        // the search for non-zero bytes stops at the bound too).
        assert_eq!(judge(10_000, Some(4096)), Ending::Torn { dirty: None });
        // A length field at the end reaches further: the record there may be a damaged
        // durable one, and the next record starts after it.
        let (mut img, _) = image_of(&[Body::Epoch { epoch: 1 }], &[]);
        let at = img.len() - 256;
        img.resize(at + 10_000, 0);
        img[at..at + 4].copy_from_slice(&9_000u32.to_le_bytes());
        let lsn = img.len() as u64;
        record::encode(&mut img, lsn, lsn - at as u64, &Body::Epoch { epoch: 2 });
        img.resize(img.len() + 64, 0);
        let ending = judge_end(&mut &img[..], 0, at as u64, 0, Some(4096), || Ok(false)).unwrap();
        assert_eq!(ending, Ending::Damaged);
    }
}
