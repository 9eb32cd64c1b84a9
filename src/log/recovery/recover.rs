//! [`recover`]: opening a store's log, from listing its segments to the [`Recovered`] state, and
//! the [`RecoveryReport`] of what it found and did.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{Loaded, Row, Snapshot};
use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::log::Mark;
use crate::log::{
    parse_segment_name, read_mark, segment_file_name, segment_gap, MARK_FILE, MARK_TMP_FILE,
};
use crate::log::{Log, SegInfo};
use crate::log::{Segment, SegmentName, HEADER_LEN};
use crate::queue::QueueIndex;
use crate::record;
use crate::storage::Storage;

use super::end::{below_mark, damaged, explain_at, judge_end, zero, Ending};
use super::replay::{corrupt, Replay};
use super::scan::{path_of, scan, End, Group};

/// What opening a store found and did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments: usize,
    /// Records replayed from the log.
    pub records: u64,
    /// Unsettled messages found, all of them waiting now (ready, or delayed by a push option
    /// or a retry backoff).
    pub messages: u64,
    /// Of those, messages that were leased (in flight) when the store was last closed or
    /// crashed; they are ready again.
    pub in_flight_at_crash: u64,
    /// Bytes of a torn or partial write cut off the end of the log (zeroed in place).
    pub bytes_truncated: u64,
    /// The file and offset where the log was cut, if it was.
    pub truncated_at: Option<(PathBuf, u64)>,
    /// Files in the log directory that are not wharf's and were left alone.
    pub ignored_files: Vec<String>,
    /// Temporary files of an interrupted segment creation, removed.
    pub removed_files: Vec<String>,
    /// The log position of the checkpoint recovery started from (`state.redb`), if any.
    pub checkpoint: Option<u64>,
    /// Whether recovery started from that checkpoint's snapshot of the queues and replayed
    /// only the log after it (false: it replayed the whole log, as it does for a store
    /// without a usable snapshot).
    pub from_snapshot: bool,
    /// Messages whose payloads live in the state database (relocated out of old segments).
    pub relocated: u64,
    /// How long recovery took.
    pub duration: Duration,
    /// What salvage kept and lost, when the store was salvaged (see
    /// [`WharfBuilder::salvage`](crate::WharfBuilder::salvage)) by this open, or by an earlier
    /// one that a crash interrupted and this open finished. `None`: opened as it was.
    pub salvage: Option<crate::salvage::SalvageReport>,
}

/// The state rebuilt from the log.
pub(crate) struct Recovered {
    pub log: Log,
    /// The segment to continue writing in and where, or `None` when a new one is needed.
    pub active: Option<(Arc<Segment>, u64)>,
    pub max_epoch: u32,
    pub queues: Vec<(String, QueueIndex)>,
    /// Each queue's configuration, if it was ever set.
    pub configs: Vec<Option<QueueConfig>>,
    /// Relocated messages (payloads in the state database), by id.
    pub relocated: HashMap<u64, Row>,
    /// The durable mark of the last clean close, if any.
    pub mark: Option<Mark>,
    pub report: RecoveryReport,
}

/// Reads the whole image of a segment: its map, or a `pread` copy.
fn image(seg: &Segment) -> Result<std::borrow::Cow<'_, [u8]>> {
    match seg.mapped() {
        Some(b) => Ok(std::borrow::Cow::Borrowed(b)),
        None => Ok(std::borrow::Cow::Owned(
            seg.read(seg.base(), usize::try_from(seg.len()).unwrap_or(usize::MAX))?,
        )),
    }
}

/// Whether a segment's first record is valid (spares made ahead of time have none).
fn starts_with_record(seg: &Segment) -> Result<bool> {
    let first = seg.base() + HEADER_LEN;
    if let Some(bytes) = seg.mapped() {
        let rest = bytes.get(HEADER_LEN as usize..).unwrap_or(&[]);
        return Ok(record::decode(rest, first).is_ok());
    }
    let room = seg.len().saturating_sub(HEADER_LEN);
    let len_field = seg.read(first, 4.min(room as usize))?;
    let len = len_field.try_into().map_or(0, u32::from_le_bytes);
    let len = u64::from(len).min(room);
    let rec = seg.read(first, usize::try_from(len).unwrap_or(0))?;
    Ok(record::decode(&rec, first).is_ok())
}

/// Whether the records of `seg` from `from` on run up to `to` exactly, each valid: the log
/// reaches a snapshot's checkpoint (else the state database is newer than the log, which the
/// replay of the whole log reports).
fn reaches(seg: &Segment, from: u64, to: u64) -> bool {
    let mut lsn = from;
    if from < seg.base() + HEADER_LEN {
        return false;
    }
    while lsn < to {
        let Ok(bytes) = seg.record(lsn) else { return false };
        match record::decode(&bytes, lsn) {
            Ok(rec) if rec.body != record::Body::Seal => lsn += rec.len as u64,
            _ => return false,
        }
    }
    lsn == to
}

/// Recovers the log in `log_dir`, starting from the checkpoint `loaded` of the state database
/// (`state_file` names it in errors).
pub(crate) fn recover(
    storage: &dyn Storage,
    log_dir: &Path,
    map: bool,
    loaded: &Loaded,
    state_file: &Path,
    window: usize,
) -> Result<Recovered> {
    let until = storage.suspect(log_dir).unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let mut bases = Vec::new();
    for name in storage.list(log_dir)? {
        if name == MARK_FILE {
            continue;
        }
        if name == MARK_TMP_FILE {
            storage.remove(&log_dir.join(&name))?;
            report.removed_files.push(name);
            continue;
        }
        match parse_segment_name(&name) {
            SegmentName::Segment(base) => bases.push(base),
            SegmentName::Temporary => {
                storage.remove(&log_dir.join(&name))?;
                report.removed_files.push(name);
            }
            SegmentName::Foreign => report.ignored_files.push(name),
        }
    }
    if !report.removed_files.is_empty() {
        storage.sync_dir(log_dir)?;
    }
    bases.sort_unstable();

    let mut segs: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
    let mut store_id = None;
    for &base in &bases {
        let path = log_dir.join(segment_file_name(base));
        let (seg, header) = Segment::open(storage, path, base, store_id, map)?;
        store_id = Some(header.store_id);
        if let Some(prev) = segs.last() {
            if prev.end() != base {
                return Err(corrupt(seg.path(), 0, segment_gap(prev.end(), base)));
            }
        }
        segs.push(Arc::new(seg));
    }
    report.segments = segs.len();
    if let (Some(log_id), Some(db_id)) = (store_id, loaded.store_id) {
        if log_id != db_id {
            return Err(corrupt(state_file, 0, "the state database belongs to another store"));
        }
    }
    let store_id = store_id.or(loaded.store_id);
    let mark = read_mark(storage, log_dir, store_id)?;
    let mark_end = mark.map_or(0, |m| m.end);
    let below = |file: &Path, offset: u64, at: u64| corrupt(file, offset, below_mark(at, mark_end));

    // The snapshot holds the state at its checkpoint only with the log it was taken over: the
    // segment the checkpoint lies in (the records after it are replayed) and every segment
    // that held unsettled messages then. A segment of those deleted since (settled after the
    // checkpoint) takes with it what its run members were: the whole log is replayed then.
    let whole = |s: &Snapshot| {
        let present = |base: u64| bases.binary_search(&base).is_ok();
        let holding = segs.iter().find(|seg| seg.base() <= s.position && s.position < seg.end());
        s.segments.iter().all(|&(base, live, _)| live == 0 || present(base))
            && holding.is_some_and(|seg| reaches(seg, s.last, s.position))
    };
    let from_snapshot = loaded.snapshot.as_ref().is_some_and(whole);
    let mut replay = if from_snapshot {
        Replay::resume(loaded, state_file)?
    } else {
        Replay::from_checkpoint(loaded, state_file)?
    };
    let start = replay.start();
    replay.set_runs(window, segs.clone());
    let mut active = None;
    let mut tail_index = segs.len();
    let mut group = Group::at_epoch(replay.epoch());
    for (i, seg) in segs.iter().enumerate() {
        failpoint::hit("recovery-replay");
        if seg.end() <= start {
            // Below the snapshot the replay starts from: neither read nor replayed.
            continue;
        }
        let bytes = image(seg)?;
        let mut img: &[u8] = &bytes;
        let from = start.saturating_sub(seg.base()).max(HEADER_LEN);
        let end = scan(&mut img, seg.base(), from, until, &mut group, |base, lsn, rec| {
            let path = if base == seg.base() { seg.path() } else { path_of(&segs, base) };
            replay.apply(path, base, lsn, rec)
        })?;
        let End::Open { at, .. } = end else { continue };
        // The log ends here. Anything valid after it means the damage is not a torn tail.
        let later = || {
            for later in segs.get(i + 1..).unwrap_or(&[]) {
                if starts_with_record(later)? {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let dirty =
            match judge_end(&mut img, seg.base(), at, mark_end, seg.unsynced_bound(), later)? {
                Ending::BelowMark => {
                    let why = format!(
                        "{}; {}",
                        explain_at(&mut img, seg.base(), at),
                        below_mark(at, mark_end)
                    );
                    return Err(corrupt(seg.path(), at - seg.base(), why));
                }
                Ending::Damaged => {
                    return Err(corrupt(
                        seg.path(),
                        at - seg.base(),
                        damaged(&mut img, seg.base(), at),
                    ))
                }
                Ending::Torn { dirty } => dirty,
            };
        drop(bytes);
        if let Some(len) = dirty {
            zero(seg, at, len)?;
            report.bytes_truncated = len;
            report.truncated_at = Some((seg.path().to_path_buf(), at - seg.base()));
        }
        active = Some((Arc::clone(seg), at));
        tail_index = i;
        break;
    }
    if let (None, Some(last)) = (&active, segs.last()) {
        // Every segment is sealed: the log went on in a segment after the last one, which
        // existed before the seal was written (a roll takes a spare made ahead of time).
        let why = format!(
            "segment file missing: the log continues at position {} after the seal of the last \
             segment",
            last.end()
        );
        return Err(corrupt(&log_dir.join(segment_file_name(last.end())), 0, why));
    }
    if let Some(anchor) = &replay.anchor() {
        let first = segs.first().map(|s| s.base());
        if let Some(c) = anchor.check(log_dir, first, state_file, loaded.checkpoint) {
            return Err(Error::Corrupted(c));
        }
    }
    let log_end = active.as_ref().map(|(_, at)| *at).or_else(|| segs.last().map(|s| s.end()));
    if log_end.unwrap_or(0) < mark_end {
        let file = segs.last().map_or_else(|| log_dir.join(MARK_FILE), |s| s.path().to_path_buf());
        return Err(below(&file, 0, log_end.unwrap_or(0)));
    }
    if log_end.unwrap_or(0) < loaded.checkpoint {
        let file = segs.last().map_or_else(|| state_file.to_owned(), |s| s.path().to_path_buf());
        let at = log_end.unwrap_or(0);
        let why = format!(
            "the log ends at position {at}, but the state database's checkpoint covers it up \
             to {}",
            loaded.checkpoint
        );
        return Err(corrupt(&file, 0, why));
    }
    report.records = replay.records();
    report.checkpoint = (loaded.checkpoint > 0).then_some(loaded.checkpoint);
    report.from_snapshot = from_snapshot;
    report.relocated = replay.relocated().len() as u64;
    report.in_flight_at_crash = replay.in_flight();
    report.messages = replay.queues().iter().map(|(_, q)| q.waiting_len() as u64).sum();

    let store_id = store_id.unwrap_or_else(new_store_id);
    // Records past the checkpoint that the state database must see before their segment
    // goes, as replay found them.
    let mut log = Log::new(store_id, loaded.checkpoint, replay.first_sensitive());
    log.set_voids(replay.voids().clone());
    if start > 0 {
        log.set_snapshot_low(loaded.snapshot.as_ref().and_then(Snapshot::low));
    }
    for (i, seg) in segs.into_iter().enumerate() {
        if i <= tail_index {
            let (live, pushed) = replay.segment_counts(seg.base());
            let first = seg.base() + HEADER_LEN;
            log.insert(SegInfo::new(seg, live, pushed, first));
        } else {
            log.push_spare(seg);
        }
    }
    report.duration = started.elapsed();
    let max_epoch = replay.epoch();
    let (queues, configs, relocated) = replay.into_parts();
    Ok(Recovered { log, active, max_epoch, queues, configs, relocated, mark, report })
}

/// A random store id, from the standard library's randomly keyed hasher, the clock and the pid.
pub(crate) fn new_store_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut id = 0u128;
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        id = id << 64 | u128::from(h.finish());
    }
    id
}
