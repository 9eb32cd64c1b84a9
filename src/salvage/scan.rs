//! Salvage's reading of a damaged log: every segment file in log order, every valid record
//! (resynchronising past damage on the next position that holds a valid record carrying that
//! very position), and every range of the log that held no valid record.
//!
//! Invariant: reads only; never panics on any bytes (decoding is `record::decode`'s, which
//! never panics); memory is one segment file at a time.

use std::path::{Path, PathBuf};

use crate::error::{Corruption, Error, Result};
use crate::log::last_nonzero;
use crate::log::{parse_segment_name, read_segment_header, segment_file_name};
use crate::log::{SegmentName, HEADER_LEN};
use crate::record::{self, Body, Record, RECORD_HEADER_LEN};
use crate::storage::Storage;
use crate::verify::corruption;

/// Log positions salvage reads and writes stay below this (2^62), so that no sum overflows.
pub(crate) const MAX_POSITION: u64 = 1 << 62;

/// One segment file the scan read records from.
#[derive(Debug, Clone)]
pub(crate) struct SegFile {
    pub path: PathBuf,
    pub base: u64,
    /// The file's length.
    pub len: u64,
    /// Where its valid records end (at its seal, or before bytes that hold none).
    pub records_end: u64,
    pub sealed: bool,
    /// It holds at least one valid record.
    pub has_records: bool,
    /// Bytes after `records_end` that are not zero (up to the last non-zero one).
    pub dirty_tail: u64,
    /// Its first bytes after the header are a valid record of a position below its base: the
    /// file was recycled (`Segment::recycle`) and its old records are not its own.
    pub recycled: bool,
}

impl SegFile {
    pub(crate) fn end(&self) -> u64 {
        self.base + self.len
    }
}

/// A range of the log that held no valid record where records were expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gap {
    /// The file (a segment, or the name a missing segment would have had).
    pub file: PathBuf,
    /// Offsets in `file`: `to` is `None` when nothing says where the range ends.
    pub from: u64,
    pub to: Option<u64>,
    /// The same range as log positions.
    pub lsn_from: u64,
    pub lsn_to: Option<u64>,
    pub why: String,
    /// What the damaged bytes still claim to be, when their header reads as exactly one record
    /// of this very range (its position field is the range's start, its length the range's
    /// length) with a body length that fits its kind: (kind, the message id it names).
    pub claimed: Option<(u8, Option<u64>)>,
}

/// One valid record as the scan hands it over.
pub(crate) struct Seen<'a> {
    /// The segment file and its base.
    pub path: &'a Path,
    pub base: u64,
    pub lsn: u64,
    pub rec: &'a Record<'a>,
    /// The record's bytes.
    pub raw: &'a [u8],
    /// The first valid record after a damaged range (or a hole between files).
    pub after_gap: bool,
}

/// What the scan found.
#[derive(Debug, Default)]
pub(crate) struct LogScan {
    /// Segments that passed (or were read despite) their header check, in log order.
    pub segs: Vec<SegFile>,
    pub gaps: Vec<Gap>,
    pub problems: Vec<Corruption>,
    pub store_id: Option<u128>,
    /// The length of the segments (the newest valid header's).
    pub seg_len: Option<u64>,
    /// One past the highest log position any segment file's name and length claim.
    pub max_end: u64,
    /// Where the valid records of the log end (`None`: no valid record).
    pub log_end: Option<u64>,
}

/// A visitor of valid records.
pub(crate) type Visit<'v> = dyn FnMut(Seen<'_>) + 'v;

/// Reads every segment of `log_dir` in order and hands each valid record to `visit`.
/// `store_id` is the state database's, if it was read: segments of another store are left out
/// (and listed as problems).
pub(crate) fn scan_log(
    storage: &dyn Storage,
    log_dir: &Path,
    store_id: Option<u128>,
    visit: &mut Visit<'_>,
) -> Result<LogScan> {
    let mut out = LogScan { store_id, ..LogScan::default() };
    let names = match storage.list(log_dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.problems.push(problem(log_dir, 0, "no log directory"));
            return Ok(out);
        }
        Err(e) => return Err(e.into()),
    };
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| match parse_segment_name(n) {
            SegmentName::Segment(b) => Some(b),
            _ => None,
        })
        .collect();
    bases.sort_unstable();
    for base in bases {
        let path = log_dir.join(segment_file_name(base));
        if base > MAX_POSITION {
            out.problems.push(problem(&path, 0, "segment name beyond any log position: left out"));
            continue;
        }
        out.max_end = out.max_end.max(base + 1);
        // Records of this segment follow lost ones: a hole between files, or an earlier
        // segment whose records end without its seal.
        let hole = out
            .segs
            .last()
            .is_some_and(|prev| prev.end() != base || (prev.has_records && !prev.sealed));
        if let Some(seg) = read_segment(storage, &path, base, hole, &mut out, visit)? {
            out.max_end = out.max_end.max(seg.end());
            out.segs.push(seg);
        }
    }
    judge(log_dir, &mut out);
    Ok(out)
}

fn problem(file: &Path, offset: u64, why: impl Into<String>) -> Corruption {
    Corruption { file: file.to_owned(), offset, reason: why.into() }
}

/// Reads one segment file; `None` when it is left out (unreadable, of another store, of a
/// newer format).
fn read_segment(
    storage: &dyn Storage,
    path: &Path,
    base: u64,
    mut after_gap: bool,
    out: &mut LogScan,
    visit: &mut Visit<'_>,
) -> Result<Option<SegFile>> {
    let file = match storage.open_read(path) {
        Ok(f) => f,
        Err(e) => {
            out.problems.push(corruption(path, e.into()));
            return Ok(None);
        }
    };
    let len = file.len()?.min(MAX_POSITION);
    out.max_end = out.max_end.max(base + len);
    match read_segment_header(&*file, path, base, out.store_id) {
        Ok(h) => {
            out.store_id.get_or_insert(h.store_id);
            out.seg_len = Some(h.len);
        }
        Err(Error::ForeignSegment(p)) => {
            out.problems.push(problem(&p, 0, "segment of another store: left out"));
            return Ok(None);
        }
        Err(e @ Error::UnsupportedVersion { .. }) => {
            out.problems.push(corruption(path, e));
            return Ok(None);
        }
        Err(Error::Io(e)) => return Err(Error::Io(e)),
        // A damaged header: its records still carry their own positions, read them by name.
        Err(e) => out.problems.push(corruption(path, e)),
    }
    if len > u64::from(u32::MAX) {
        out.problems.push(problem(path, 0, "segment file longer than 4 GiB: left out"));
        return Ok(None);
    }
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
    if let Err(e) = file.read_at(&mut bytes, 0) {
        out.problems.push(corruption(path, e.into()));
        return Ok(None);
    }
    let mut seg = SegFile {
        path: path.to_owned(),
        base,
        len,
        records_end: base + HEADER_LEN,
        sealed: false,
        has_records: false,
        dirty_tail: 0,
        recycled: false,
    };
    let first = bytes.get(HEADER_LEN as usize..).unwrap_or(&[]);
    seg.recycled =
        record::peek_lsn(first).is_some_and(|lsn| lsn < base && record::decode(first, lsn).is_ok());
    let last_nz = last_nonzero(&bytes);
    let mut off = HEADER_LEN as usize;
    while off < bytes.len() {
        let lsn = base + off as u64;
        let rest = bytes.get(off..).unwrap_or(&[]);
        match record::decode(rest, lsn) {
            Ok(rec) => {
                seg.has_records = true;
                let raw = rest.get(..rec.len).unwrap_or(rest);
                visit(Seen { path, base, lsn, rec: &rec, raw, after_gap });
                after_gap = false;
                off += rec.len;
                seg.records_end = base + off as u64;
                if rec.body == Body::Seal {
                    seg.sealed = true;
                    break;
                }
            }
            Err(_) => match next_record(&bytes, base, off + 1, last_nz) {
                Some(next) => {
                    let why = record::explain(rest, lsn, rest.len());
                    out.gaps.push(Gap {
                        file: path.to_owned(),
                        from: off as u64,
                        to: Some(next as u64),
                        lsn_from: lsn,
                        lsn_to: Some(base + next as u64),
                        why: why.clone(),
                        claimed: claimed(rest, lsn, next - off),
                    });
                    out.problems.push(problem(path, off as u64, why));
                    after_gap = true;
                    off = next;
                }
                None => {
                    let dirty = last_nz.filter(|&l| l >= off).map_or(0, |l| l + 1 - off);
                    seg.dirty_tail = dirty as u64;
                    break;
                }
            },
        }
    }
    Ok(Some(seg))
}

/// What a damaged record of `len` bytes at `lsn` still claims to be (see [`Gap::claimed`]).
fn claimed(bytes: &[u8], lsn: u64, len: usize) -> Option<(u8, Option<u64>)> {
    let u32_at =
        |o: usize| bytes.get(o..o + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if record::peek_lsn(bytes) != Some(lsn) || u32_at(0).map(|l| l as usize) != Some(len) {
        return None;
    }
    let kind = *bytes.get(20)?;
    let body = len.checked_sub(RECORD_HEADER_LEN)?;
    // Body lengths by kind (`record.rs`): fixed, or at least.
    let fits = match kind {
        2 | 4 => body == 12,
        3 | 11 => body == 16,
        6 => body == 4,
        7 => body == 0,
        13 => body == 16,
        // An `Acks`: queue, count, count ids (it names several messages: no one id).
        14 => body >= 16 && body % 8 == 0,
        1 => body >= 12,
        8 => body >= 40,
        9 | 10 => body >= 20,
        5 | 12 => body >= 4,
        _ => false,
    };
    let id = bytes.get(28..36).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    fits.then_some((kind, if matches!(kind, 1..=4 | 8..=11) { id } else { None }))
}

/// The first offset at or after `from` holding a valid record that carries its own position.
fn next_record(bytes: &[u8], base: u64, from: usize, last_nz: Option<usize>) -> Option<usize> {
    let last = last_nz?.min(bytes.len().checked_sub(RECORD_HEADER_LEN)?);
    (from..=last).find(|&off| {
        let lsn = base + off as u64;
        let rest = bytes.get(off..).unwrap_or(&[]);
        record::peek_lsn(rest) == Some(lsn) && record::decode(rest, lsn).is_ok()
    })
}

/// Finds the ranges between segments and at their ends that lost records: a missing segment,
/// a segment that ends without a seal before the end of the log, a missing segment after a
/// seal, bytes after the end of the log's records that are not a torn write's.
fn judge(log_dir: &Path, out: &mut LogScan) {
    let last = out.segs.iter().rposition(|s| s.has_records);
    let mut gaps = Vec::new();
    for (i, seg) in out.segs.iter().enumerate() {
        // Records go to the next segment only after a seal: past the end of the log, a hole
        // can have held records only right after a sealed last segment.
        let may_hold = last.is_some_and(|l| i < l || (i == l && seg.sealed));
        if let Some(next) = out.segs.get(i + 1) {
            if seg.end() < next.base && !may_hold {
                let why =
                    format!("missing spare segment(s) after the end of the log at {}", seg.end());
                out.problems.push(problem(&log_dir.join(segment_file_name(seg.end())), 0, why));
            } else if seg.end() < next.base {
                let missing = log_dir.join(segment_file_name(seg.end()));
                let why = format!(
                    "missing segment(s): no file holds positions {}..{}",
                    seg.end(),
                    next.base
                );
                out.problems.push(problem(&missing, 0, why.clone()));
                gaps.push(Gap {
                    file: missing,
                    from: 0,
                    to: Some(next.base - seg.end()),
                    lsn_from: seg.end(),
                    lsn_to: Some(next.base),
                    why,
                    claimed: None,
                });
            }
        }
        let Some(last) = last else { continue };
        if i < last && !seg.sealed {
            let why = "the segment ends without a seal before the end of the log";
            out.problems.push(problem(&seg.path, seg.records_end - seg.base, why));
            gaps.push(Gap {
                file: seg.path.clone(),
                from: seg.records_end - seg.base,
                to: Some(seg.len),
                lsn_from: seg.records_end,
                lsn_to: Some(seg.end()),
                why: why.into(),
                claimed: None,
            });
        } else if i == last && seg.sealed && out.segs.get(i + 1).is_none() {
            let missing = log_dir.join(segment_file_name(seg.end()));
            let why = "the last segment is sealed but the next one is missing";
            out.problems.push(problem(&missing, 0, why));
            gaps.push(Gap {
                file: missing,
                from: 0,
                to: None,
                lsn_from: seg.end(),
                lsn_to: None,
                why: why.into(),
                claimed: None,
            });
        } else if i > last && seg.dirty_tail > 0 && !seg.has_records && !seg.recycled {
            // A spare made ahead of time holds only zeros after its header, or the old records
            // of the segment whose file it was made of.
            let why = "a segment after the end of the log holds bytes that are not records";
            out.problems.push(problem(&seg.path, HEADER_LEN, why));
            gaps.push(unreadable(seg, why));
        }
    }
    if let (None, Some(first)) = (last, out.segs.first()) {
        // Segment files, and not one valid record: every open writes records (its preamble)
        // before anything else, so they were all lost, whatever held them.
        let why = "no segment holds a valid record: every record of the log is damaged or gone";
        out.problems.push(problem(&first.path, 0, why));
        gaps.push(Gap {
            file: first.path.clone(),
            from: 0,
            to: None,
            lsn_from: first.base,
            lsn_to: None,
            why: why.into(),
            claimed: None,
        });
    }
    out.log_end = last.and_then(|i| out.segs.get(i)).map(|s| s.records_end);
    out.gaps.extend(gaps);
    out.gaps.sort_by_key(|g| g.lsn_from);
}

/// The gap of a whole segment's records (all of them past its header).
fn unreadable(seg: &SegFile, why: &str) -> Gap {
    Gap {
        file: seg.path.clone(),
        from: HEADER_LEN,
        to: Some(seg.len),
        lsn_from: seg.base + HEADER_LEN,
        lsn_to: Some(seg.end()),
        why: why.into(),
        claimed: None,
    }
}

/// A gap for the end of the log when something durable (the mark of the last clean close, or
/// the state database's checkpoint) says the log went on to `durable_end`.
pub(crate) fn lost_end(out: &mut LogScan, log_dir: &Path, durable_end: u64, why: String) {
    let end = out.log_end.unwrap_or(0);
    if end >= durable_end {
        return;
    }
    let (file, from) = match out.segs.iter().rev().find(|s| s.base <= end && end < s.end()) {
        Some(s) => (s.path.clone(), end - s.base),
        None => (log_dir.join(segment_file_name(end)), 0),
    };
    out.problems.push(problem(&file, from, why.clone()));
    out.gaps.push(Gap {
        file,
        from,
        to: Some(from.saturating_add(durable_end - end)),
        lsn_from: end,
        lsn_to: Some(durable_end),
        why,
        claimed: None,
    });
    out.gaps.sort_by_key(|g| g.lsn_from);
}

/// A gap of unknown length at the end of the log, when nothing can tell whether the log went
/// on (the durable mark of the last clean close is damaged): records a clean close made durable
/// after the end may have been lost with it, and a torn tail cannot be told from them.
pub(crate) fn unknown_end(out: &mut LogScan, log_dir: &Path, why: String) {
    let end = out.log_end.unwrap_or(0);
    if out.gaps.iter().any(|g| g.lsn_from >= end && g.lsn_to.is_none()) {
        return;
    }
    // A gap up to the end some other file names (`lost_end`) now has no known end.
    if let Some(g) = out.gaps.iter_mut().find(|g| g.lsn_from == end) {
        (g.to, g.lsn_to) = (None, None);
        g.why = format!("{}; {why}", g.why);
        out.problems.push(problem(&g.file.clone(), g.from, why));
        return;
    }
    let (file, from) = match out.segs.iter().rev().find(|s| s.base <= end && end < s.end()) {
        Some(s) => (s.path.clone(), end - s.base),
        None => (log_dir.join(segment_file_name(end)), 0),
    };
    out.problems.push(problem(&file, from, why.clone()));
    out.gaps.push(Gap { file, from, to: None, lsn_from: end, lsn_to: None, why, claimed: None });
    out.gaps.sort_by_key(|g| g.lsn_from);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bodies: &[Body<'_>]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = vec![0u8; HEADER_LEN as usize];
        let mut at = Vec::new();
        for b in bodies {
            at.push(buf.len());
            let lsn = buf.len() as u64;
            record::encode(&mut buf, lsn, lsn, b);
        }
        buf.resize(buf.len() + 100, 0);
        (buf, at)
    }

    #[test]
    fn damaged_bytes_claim_a_record_only_when_position_length_and_kind_agree() {
        let push = Body::PushEx {
            queue: 0,
            id: 7,
            priority: 0,
            not_before: 0,
            expires: 0,
            pushed: 0,
            key: b"",
            payload: b"some payload bytes",
        };
        let (img, at) = image(&[push, Body::Ack { queue: 0, id: 7 }]);
        let (p, a) = (at[0], at[1]);
        let (plen, alen) = (a - p, at[1] + 36 - a);
        let mut bad = img.clone();
        bad[p + plen - 3] ^= 1; // in the payload
        assert_eq!(claimed(&bad[p..], p as u64, plen), Some((8, Some(7))));
        let mut bad = img.clone();
        bad[p + 1] ^= 1; // in the length field
        assert_eq!(claimed(&bad[p..], p as u64, plen), None);
        let mut bad = img.clone();
        bad[p + 9] ^= 1; // in the position field
        assert_eq!(claimed(&bad[p..], p as u64, plen), None);
        let mut bad = img.clone();
        bad[a + 20] = 3; // an ack whose kind now says delivery: the length does not fit
        assert_eq!(claimed(&bad[a..], a as u64, alen), None);
        let mut bad = img;
        bad[a + 30] ^= 1; // an ack whose id changed is still an ack
        assert!(matches!(claimed(&bad[a..], a as u64, alen), Some((2, Some(id))) if id != 7));
    }

    #[test]
    fn next_record_skips_damage_and_finds_the_next_valid_record() {
        let bodies = [
            Body::Epoch { epoch: 1 },
            Body::Ack { queue: 0, id: 7 },
            Body::Ack { queue: 0, id: 8 },
        ];
        let (mut img, at) = image(&bodies);
        img[at[1] + 13] ^= 0x40;
        let last = last_nonzero(&img);
        assert_eq!(next_record(&img, 0, at[1] + 1, last), Some(at[2]));
        assert_eq!(next_record(&img, 0, at[2] + 1, last), None);
        // Garbage never panics and finds nothing.
        let junk: Vec<u8> = (0..500u32).map(|i| (i * 37 % 251) as u8).collect();
        assert_eq!(next_record(&junk, 0, 0, last_nonzero(&junk)), None);
    }
}
