//! Segment files: naming, the header, creation (preallocated, then renamed into place) and
//! reads of records by log position.
//!
//! Invariant: a file named `<base>.seg` always has a complete, fsynced header and its final,
//! preallocated length: it is written under a temporary name and renamed only after its data
//! was synced, and the directory is synced after the rename.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Corruption, Error, Result};
use crate::failpoint;
use crate::record::RECORD_HEADER_LEN;
use crate::storage::{MapView, Storage, StorageFile};

/// Magic bytes at the start of every segment.
pub(crate) const MAGIC: [u8; 8] = *b"WHARFLOG";
/// The on-disk format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 5;
/// Bytes of the segment header; the first record starts here.
/// Smallest allowed segment size: 64 KiB.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;

pub(crate) const HEADER_LEN: u64 = 64;
const SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".seg.tmp";

/// The file name of the segment whose first byte is at log position `base`.
pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}{SUFFIX}")
}

/// What a file name in the log directory is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Name {
    Segment(u64),
    Temporary,
    Foreign,
}

pub(crate) fn parse_name(name: &str) -> Name {
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(stem) = name.strip_suffix(TMP_SUFFIX) {
        if digits(stem) {
            return Name::Temporary;
        }
    }
    match name.strip_suffix(SUFFIX) {
        Some(stem) if digits(stem) => stem.parse().map_or(Name::Foreign, Name::Segment),
        _ => Name::Foreign,
    }
}

/// The temporary name the file of the deleted segment `base` is kept under until it is
/// recycled (`Segment::recycle`): a name an open removes, like a segment being created.
pub(crate) fn recycled_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{TMP_SUFFIX}"))
}

/// What a new segment is: its store, where it starts, its length, whether it is written with
/// zeros when made (`write_zeros`), and whether it is mapped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub store_id: u128,
    pub base: u64,
    pub len: u64,
    pub zero: bool,
    pub map: bool,
}

/// The fields of a segment header.
///
/// ```text
/// offset size field
///  0     8    magic "WHARFLOG"
///  8     4    format version
/// 12     4    header length (64)
/// 16     16   store id (random, fixed when the store is created)
/// 32     8    base lsn: log position of the file's first byte
/// 40     8    segment length in bytes (the file's preallocated size)
/// 48     4    unsynced bound: the log is never written more than this many bytes past its
///             durable end while this segment is active (format 4; 0 in older formats: no bound)
/// 52     8    reserved, zero
/// 60     4    CRC-32C of bytes [0, 60)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub store_id: u128,
    pub base: u64,
    pub len: u64,
    /// See [`unsynced_bound`]; `None` for segments of format 3 and older.
    pub unsynced: Option<u32>,
}

/// How far past its durable end the log may be written while a segment of `len` bytes is
/// active: an eighth of the segment, between 4 KiB and 4 MiB. Recovery looks for records
/// written after the log's end only this far (plus the length of the record at the end), so
/// its cost does not grow with the segment's size.
pub(crate) fn unsynced_bound(len: u64) -> u32 {
    (len / 8).clamp(4 << 10, 4 << 20) as u32
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..32].copy_from_slice(&self.store_id.to_le_bytes());
        h[32..40].copy_from_slice(&self.base.to_le_bytes());
        h[40..48].copy_from_slice(&self.len.to_le_bytes());
        h[48..52].copy_from_slice(&self.unsynced.unwrap_or(0).to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes a header read from `path`, which must not be newer than this build.
    pub(crate) fn decode(h: &[u8; HEADER_LEN as usize], path: &Path) -> Result<Header> {
        let corrupt = |reason: &str| {
            Error::Corrupted(Corruption { file: path.to_owned(), offset: 0, reason: reason.into() })
        };
        let u32_at =
            |at: usize| h.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
        let u64_at =
            |at: usize| h.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        if h.get(..8) != Some(&MAGIC[..]) {
            return Err(corrupt(
                "not a wharf segment: it does not start with the magic \"WHARFLOG\"",
            ));
        }
        if u32_at(60) != Some(crc32c::crc32c(h.get(..60).unwrap_or(&[]))) {
            return Err(corrupt(
                "segment header checksum mismatch: its first 64 bytes were damaged",
            ));
        }
        let version = u32_at(8).unwrap_or(0);
        if version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                file: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version == 0 || u32_at(12) != Some(HEADER_LEN as u32) {
            let why = format!(
                "segment header fields are invalid although its checksum matches: format version \
                 {version}, header length {} (not {HEADER_LEN})",
                u32_at(12).unwrap_or(0)
            );
            return Err(corrupt(&why));
        }
        let store_id = h
            .get(16..32)
            .and_then(|s| s.try_into().ok())
            .map(u128::from_le_bytes)
            .ok_or_else(|| corrupt("bad segment header fields"))?;
        let base = u64_at(32).ok_or_else(|| corrupt("bad segment header fields"))?;
        let len = u64_at(40).ok_or_else(|| corrupt("bad segment header fields"))?;
        // wharf never makes a smaller segment, and a smaller one might not hold a preamble and
        // a seal: appending to it would overrun its end.
        if len < MIN_SEGMENT_BYTES || len > u64::from(u32::MAX) {
            return Err(corrupt(&format!(
                "segment header gives a length of {len} bytes, outside 64 KiB..=4 GiB"
            )));
        }
        let unsynced = u32_at(48).filter(|&w| w != 0);
        Ok(Header { store_id, base, len, unsynced })
    }
}

/// Reads and checks the header of the segment `file` at `path`, named for `base`: its own
/// fields, the file's length and, when it is known, the store id.
pub(crate) fn read_header(
    file: &dyn StorageFile,
    path: &Path,
    base: u64,
    store_id: Option<u128>,
) -> Result<Header> {
    let mut h = [0u8; HEADER_LEN as usize];
    let file_len = file.len()?;
    if file_len < HEADER_LEN {
        return Err(Error::Corrupted(Corruption {
            file: path.to_owned(),
            offset: 0,
            reason: format!(
                "segment of {file_len} bytes is shorter than its header ({HEADER_LEN}): the file \
                 was truncated"
            ),
        }));
    }
    file.read_at(&mut h, 0)?;
    let header = Header::decode(&h, path)?;
    if store_id.is_some_and(|id| id != header.store_id) {
        return Err(Error::ForeignSegment(path.to_owned()));
    }
    let mut wrong = Vec::new();
    if header.base != base {
        wrong.push(format!(
            "its header says it starts at log position {}, but the file is named for {base}: it \
             was renamed, or swapped with another segment",
            header.base
        ));
    }
    if header.len != file_len {
        wrong.push(format!(
            "its header says it has {} bytes, but the file has {file_len} bytes: it was truncated \
             or extended",
            header.len
        ));
    }
    if !wrong.is_empty() {
        return Err(Error::Corrupted(Corruption {
            file: path.to_owned(),
            offset: 0,
            reason: wrong.join("; "),
        }));
    }
    Ok(header)
}

/// Why a segment based at `base` cannot follow one that ends at `end`: a segment file is
/// missing between them (or they overlap).
pub(crate) fn gap(end: u64, base: u64) -> String {
    if base > end {
        format!(
            "gap in the log: segment file {} is missing (the previous segment ends at log position \
             {end}, this one starts at {base})",
            file_name(end)
        )
    } else {
        format!(
            "segments overlap: the previous segment ends at log position {end}, past the start of \
             this one at {base}"
        )
    }
}

/// Writes zeros over `[from, to)` of a new segment file. Preallocated blocks are unwritten
/// extents: the first `fdatasync` after a write into one also commits the extent's conversion
/// through the file system's journal, which costs an append as much again. A segment written
/// once ahead of need (by the background thread, before anything waits for it) is then
/// appended to at the cost of an overwrite. It pays where syncs are small (durable pushes one
/// by one); where they are large the conversions are few and the zeros would double the
/// bytes the disk writes, so the log decides per segment (`commit.rs`, `Sizer`).
fn write_zeros(file: &dyn StorageFile, from: u64, to: u64) -> io::Result<()> {
    const STEP: u64 = 1 << 20;
    let zeros = vec![0u8; STEP.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = STEP.min(to - at) as usize;
        file.write_at(zeros.get(..n).unwrap_or(&[]), at)?;
        at += n as u64;
    }
    Ok(())
}

/// One segment file, open for reads and (while it is active) appends.
pub(crate) struct Segment {
    /// Log position of the file's first byte (its header).
    base: u64,
    /// The file's length in bytes.
    len: u64,
    /// The header's unsynced bound (`None`: a segment of an older format, no bound).
    unsynced: Option<u32>,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    map: Option<MapView>,
}

impl Segment {
    /// Log position of the file's first byte (its header).
    #[inline]
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// The file's length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// How far past the durable end the log may be written while this segment is active
    /// (`None`: no bound, a segment written by an older format).
    #[inline]
    pub(crate) fn unsynced_bound(&self) -> Option<u64> {
        self.unsynced.map(u64::from)
    }

    /// The file's path.
    #[inline]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// One past the last log position this segment covers.
    #[inline]
    pub(crate) fn end(&self) -> u64 {
        self.base + self.len
    }

    /// Creates the segment `plan.base` of `plan.len` bytes in `dir`: written as a temporary
    /// file, preallocated, written with zeros if `plan.zero` (see `write_zeros`), synced,
    /// renamed into place, and the directory synced.
    pub(crate) fn create(storage: &dyn Storage, dir: &Path, plan: Plan) -> io::Result<Segment> {
        let tmp = dir.join(format!("{:020}{TMP_SUFFIX}", plan.base));
        // A leftover temporary file from a crash or a failed creation is ours to replace.
        let _ = storage.remove(&tmp);
        let file = storage.open(&tmp, true)?;
        // On failure the temporary file stays; the next creation or open removes it.
        file.allocate(plan.len)?;
        Segment::finish(storage, dir, &tmp, file, HEADER_LEN, plan)
    }

    /// Makes the segment `plan.base` out of the file of a deleted segment kept at `old`
    /// (`recycled_path`, a temporary name: its removal was made durable before this, so no
    /// crash can bring the old segment back with new bytes in it). Its blocks were written
    /// once, so appends to it overwrite written blocks as in a segment written with zeros,
    /// without the zeros. Cut or extended to `plan.len` (only an extension is written with
    /// zeros if `plan.zero`), its header written, synced, renamed into place, the directory
    /// synced. Its old records stay past the header until overwritten: each carries its own
    /// log position, below this segment's base, so none is ever read as one of this segment.
    pub(crate) fn recycle(
        storage: &dyn Storage,
        dir: &Path,
        old: &Path,
        plan: Plan,
    ) -> io::Result<Segment> {
        let file = storage.open(old, false)?;
        let was = file.len()?;
        if was > plan.len {
            file.set_len(plan.len)?;
        } else if was < plan.len {
            file.allocate(plan.len)?;
        }
        Segment::finish(storage, dir, old, file, was.max(HEADER_LEN), plan)
    }

    /// The rest of `create` and `recycle`: the header, zeros over `[zero_from, len)` if
    /// `plan.zero`, the sync, the rename from `tmp` and the directory sync.
    fn finish(
        storage: &dyn Storage,
        dir: &Path,
        tmp: &Path,
        file: Arc<dyn StorageFile>,
        zero_from: u64,
        plan: Plan,
    ) -> io::Result<Segment> {
        let Plan { store_id, base, len, zero, map } = plan;
        let path = dir.join(file_name(base));
        let unsynced = Some(unsynced_bound(len));
        file.write_at(&Header { store_id, base, len, unsynced }.encode(), 0)?;
        if zero {
            write_zeros(&*file, zero_from, len)?;
        }
        file.sync_data()?;
        storage.rename(tmp, &path)?;
        failpoint::hit("segment-created-before-dir-sync");
        storage.sync_dir(dir)?;
        let map = if map { file.map()? } else { None };
        Ok(Segment { base, len, unsynced, path, file, map })
    }

    /// Opens an existing segment and checks its header against the name and the store.
    pub(crate) fn open(
        storage: &dyn Storage,
        path: PathBuf,
        base: u64,
        store_id: Option<u128>,
        map: bool,
    ) -> Result<(Segment, Header)> {
        let file = storage.open(&path, false)?;
        let header = read_header(&*file, &path, base, store_id)?;
        let map = if map { file.map()? } else { None };
        let unsynced = header.unsynced;
        Ok((Segment { base, len: header.len, unsynced, path, file, map }, header))
    }

    /// The mapped bytes of the file that are current, when the segment is mapped (all of it
    /// with a real mapping; a simulated disk's snapshot only up to its first later write).
    pub(crate) fn mapped(&self) -> Option<&[u8]> {
        self.map.as_ref().map(|m| {
            let bytes = m.bytes();
            let current = usize::try_from(m.current_below()).unwrap_or(usize::MAX);
            bytes.get(..current.min(bytes.len())).unwrap_or(bytes)
        })
    }

    /// The bytes of the record at log position `lsn` (as many as its length field says, cut
    /// at the end of the file): a slice of the map where it covers them, else a copy.
    pub(crate) fn record(&self, lsn: u64) -> io::Result<Cow<'_, [u8]>> {
        let start = usize::try_from(lsn.saturating_sub(self.base)).unwrap_or(usize::MAX);
        let room = usize::try_from(self.end().saturating_sub(lsn)).unwrap_or(usize::MAX);
        let len_of = |b: &[u8]| {
            let len = b.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
            (len as usize).max(RECORD_HEADER_LEN).min(room)
        };
        if let Some(map) = self.mapped() {
            let len = len_of(map.get(start..).unwrap_or(&[]));
            if let Some(bytes) = map.get(start..start.saturating_add(len)) {
                return Ok(Cow::Borrowed(bytes));
            }
        }
        let head = self.read(lsn, 4.min(room))?;
        Ok(Cow::Owned(self.read(lsn, len_of(&head))?))
    }

    /// Reads `len` bytes at log position `lsn` into a new buffer.
    #[track_caller]
    pub(crate) fn read(&self, lsn: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_at(&mut buf, lsn - self.base)?;
        Ok(buf)
    }

    /// Writes `bytes` at log position `lsn`.
    #[track_caller]
    #[inline]
    pub(crate) fn write(&self, lsn: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_at(bytes, lsn - self.base)
    }

    #[track_caller]
    #[inline]
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_recognised() {
        assert_eq!(parse_name(&file_name(0)), Name::Segment(0));
        assert_eq!(parse_name(&file_name(u64::MAX)), Name::Segment(u64::MAX));
        assert_eq!(parse_name("00000000000000000064.seg.tmp"), Name::Temporary);
        assert_eq!(parse_name("notes.txt"), Name::Foreign);
        assert_eq!(parse_name("64.seg"), Name::Foreign);
        assert_eq!(parse_name("99999999999999999999.seg"), Name::Foreign);
    }

    #[test]
    fn header_round_trips_and_detects_flips() {
        let tiny = Header { store_id: 1, base: 0, len: 65, unsynced: None }.encode();
        assert!(Header::decode(&tiny, Path::new("x")).is_err(), "a segment too small to append to");
        let h =
            Header { store_id: 0xABCD_u128 << 64 | 7, base: 4096, len: 1 << 20, unsynced: Some(9) };
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes, Path::new("x")).unwrap(), h);
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Header::decode(&bad, Path::new("x")).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn newer_version_is_a_clear_error() {
        let mut bytes = Header { store_id: 1, base: 0, len: 1 << 20, unsynced: None }.encode();
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        let found = match Header::decode(&bytes, Path::new("x")) {
            Err(Error::UnsupportedVersion { found, .. }) => found,
            other => panic!("{other:?}"),
        };
        assert_eq!(found, FORMAT_VERSION + 1);
    }
}
