//! The durable mark: `log/mark`, two checksummed 64-byte slots that record a log position known
//! to be durable. A clean close writes it after its last sync; recovery refuses a log whose
//! records end below it, so damage that erases the last records of a closed store (zeros copied
//! over them, a lost write) is reported instead of being taken for a torn tail.
//!
//! Invariants: the file is created whole (temporary name, synced, renamed, directory synced), so
//! it is never seen shorter than two slots; a later close writes its mark into the older slot,
//! syncs, then into the other one and syncs again, so a torn write leaves the newer mark intact
//! and, after a close, one damaged slot does not lose the newest end (the other holds it too).
//! The slots disagree only after a close that crashed between its two writes. A mark only ever
//! names a position that was durable when it was written, and the log never shrinks below a
//! durable position, so an old mark stays true.
//!
//! ```text
//! offset size field (each slot)
//!  0     8    magic "WHARFMRK"
//!  8     4    format version
//! 12     4    reserved, zero
//! 16     16   store id
//! 32     8    generation (written first into slot generation % 2, then into the other)
//! 40     8    durable end: every log position below it was durable
//! 48     12   reserved, zero
//! 60     4    CRC-32C of bytes [0, 60)
//! ```

use std::io;
use std::path::{Path, PathBuf};

use super::segment::FORMAT_VERSION;
use crate::error::{Corruption, Error, Result};
use crate::failpoint;
use crate::storage::Storage;

/// The mark's file name in the log directory.
pub(crate) const FILE: &str = "mark";
/// The temporary name it is created under.
pub(crate) const TMP_FILE: &str = "mark.tmp";
const MAGIC: [u8; 8] = *b"WHARFMRK";
const SLOT: usize = 64;

/// A valid slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub store_id: u128,
    pub generation: u64,
    /// Every log position below this one was durable.
    pub end: u64,
}

impl Mark {
    fn encode(&self) -> [u8; SLOT] {
        let mut s = [0u8; SLOT];
        s[0..8].copy_from_slice(&MAGIC);
        s[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        s[16..32].copy_from_slice(&self.store_id.to_le_bytes());
        s[32..40].copy_from_slice(&self.generation.to_le_bytes());
        s[40..48].copy_from_slice(&self.end.to_le_bytes());
        let crc = crc32c::crc32c(&s[..60]);
        s[60..64].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// The slot's mark, `Ok(None)` when it is not a valid slot (torn or damaged).
    fn decode(s: &[u8], path: &Path) -> Result<Option<Mark>> {
        let u32_at = |at: usize| s.get(at..at + 4).and_then(|b| b.try_into().ok());
        let u64_at = |at: usize| s.get(at..at + 8).and_then(|b| b.try_into().ok());
        let crc = u32_at(60).map(u32::from_le_bytes);
        if s.get(..8) != Some(&MAGIC[..]) || crc != Some(crc32c::crc32c(s.get(..60).unwrap_or(&[])))
        {
            return Ok(None);
        }
        let version = u32_at(8).map_or(0, u32::from_le_bytes);
        if version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                file: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let store_id = s.get(16..32).and_then(|b| b.try_into().ok()).map(u128::from_le_bytes);
        match (version, store_id, u64_at(32), u64_at(40)) {
            (1.., Some(store_id), Some(generation), Some(end)) => Ok(Some(Mark {
                store_id,
                generation: u64::from_le_bytes(generation),
                end: u64::from_le_bytes(end),
            })),
            _ => Ok(None),
        }
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupted(Corruption { file: path.to_owned(), offset, reason: reason.into() })
}

/// Reads the mark of the store in `log_dir`: `None` when there is none (a store never closed
/// cleanly). A mark file with no valid slot, or of another store, is corruption.
pub(crate) fn read(
    storage: &dyn Storage,
    log_dir: &Path,
    store_id: Option<u128>,
) -> Result<Option<Mark>> {
    let path = log_dir.join(FILE);
    if !storage.list(log_dir)?.iter().any(|n| n == FILE) {
        return Ok(None);
    }
    let file = storage.open(&path, false)?;
    let len = file.len()?;
    if len != LEN {
        return Err(wrong_len(&path, len));
    }
    let mut bytes = [0u8; 2 * SLOT];
    file.read_at(&mut bytes, 0)?;
    parse(&bytes, &path, store_id).map(Some)
}

/// The length of a mark file: two slots.
pub(crate) const LEN: u64 = 2 * SLOT as u64;

pub(crate) fn wrong_len(path: &Path, len: u64) -> Error {
    corrupt(path, 0, format!("mark file of {len} bytes, not {LEN}: it was truncated or replaced"))
}

/// The newest valid slot of the mark file `bytes` read from `path`, which must belong to
/// `store_id` when it is known.
pub(crate) fn parse(bytes: &[u8], path: &Path, store_id: Option<u128>) -> Result<Mark> {
    if bytes.len() as u64 != LEN {
        return Err(wrong_len(path, bytes.len() as u64));
    }
    let (a, b) = bytes.split_at(SLOT);
    let newest = match (Mark::decode(a, path)?, Mark::decode(b, path)?) {
        (Some(a), Some(b)) => {
            if a.generation >= b.generation {
                a
            } else {
                b
            }
        }
        (Some(m), None) | (None, Some(m)) => m,
        (None, None) => {
            let why =
                "both slots of the mark fail their checksum: the file was damaged or replaced";
            return Err(corrupt(path, 0, why));
        }
    };
    if store_id.is_some_and(|id| id != newest.store_id) {
        return Err(corrupt(
            path,
            0,
            "the mark belongs to another store: its store id is not the one in the segments",
        ));
    }
    Ok(newest)
}

/// Records that the log was durable up to `end`, after `prev` (the store's current mark, if it
/// has one), and returns the new mark.
pub(crate) fn write(
    storage: &dyn Storage,
    log_dir: &Path,
    store_id: u128,
    prev: Option<Mark>,
    end: u64,
) -> io::Result<Mark> {
    let path: PathBuf = log_dir.join(FILE);
    match prev {
        Some(prev) => {
            // The new mark goes into both slots, each write synced before the next: the older
            // slot first, so that a torn write leaves the newer one intact; then the other, so
            // that once the close is done each slot holds the newest end. With one slot only, a
            // damaged newest slot would fall back silently to an older, lower end, and records
            // erased above it would pass for a torn tail.
            let next = Mark { store_id, generation: prev.generation + 1, end };
            let file = storage.open(&path, false)?;
            let first = next.generation % 2;
            for slot in [first, 1 - first] {
                file.write_at(&next.encode(), slot * SLOT as u64)?;
                failpoint::hit("mark-written-before-sync");
                file.sync_data()?;
            }
            Ok(next)
        }
        None => {
            // Both slots valid from the start: the file never holds fewer than one good slot.
            let tmp = log_dir.join(TMP_FILE);
            let _ = storage.remove(&tmp);
            let file = storage.open(&tmp, true)?;
            let first = Mark { store_id, generation: 0, end };
            let next = Mark { generation: 1, ..first };
            let mut bytes = [0u8; 2 * SLOT];
            bytes[..SLOT].copy_from_slice(&first.encode());
            bytes[SLOT..].copy_from_slice(&next.encode());
            file.write_at(&bytes, 0)?;
            file.sync_data()?;
            storage.rename(&tmp, &path)?;
            failpoint::hit("mark-created-before-dir-sync");
            storage.sync_dir(log_dir)?;
            Ok(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_detect_flips() {
        let m = Mark { store_id: 7 << 70, generation: 9, end: 123_456 };
        let p = Path::new("mark");
        let s = m.encode();
        assert_eq!(Mark::decode(&s, p).unwrap(), Some(m));
        for bit in 0..SLOT * 8 {
            let mut bad = s;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Mark::decode(&bad, p).unwrap(), None, "bit {bit}");
        }
        assert_eq!(Mark::decode(&[0u8; SLOT], p).unwrap(), None);
    }

    #[test]
    fn after_each_close_either_slot_alone_holds_the_newest_mark() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::storage::RealFs;
        let mut prev = None;
        for end in [100, 2_000, 30_000, 400_000] {
            let m = write(&fs, dir.path(), 7, prev, end).unwrap();
            assert_eq!(m.end, end);
            let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
            assert_eq!(bytes.len() as u64, LEN);
            for damaged in 0..2 {
                let mut bad = bytes.clone();
                bad[damaged * SLOT + 40] ^= 1;
                let got = parse(&bad, Path::new("mark"), Some(7)).unwrap();
                assert_eq!(got.end, end, "slot {damaged} damaged after the close at {end}");
            }
            prev = Some(m);
        }
    }
}
