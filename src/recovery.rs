//! Recovery: list the segments, check their headers and order, replay every record into a
//! fresh index, and cut a torn tail off the end of the log.
//!
//! Invariants: runs before the store accepts any call; repairs only by writing zeros over a torn
//! tail (never by shrinking a file), so a crash during recovery leaves a state the next recovery
//! handles the same way; damage below the durable end is an error naming the file and offset,
//! never a silent cut.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{Loaded, Row};
use crate::config::QueueConfig;
use crate::error::{Corruption, Error, Result};
use crate::failpoint;
use crate::limits::valid_name;
use crate::log::Mark;
use crate::log::{
    parse_segment_name, read_mark, segment_file_name, segment_gap, MARK_FILE, MARK_TMP_FILE,
};
use crate::log::{Log, SegInfo};
use crate::log::{Segment, SegmentName, HEADER_LEN};
use crate::queue::{Entry, Note, QueueIndex, RELOCATED};
use crate::record::{self, Body, DecodeError, RECORD_HEADER_LEN};
use crate::storage::Storage;

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
    /// Messages whose payloads live in the state database (relocated out of old segments).
    pub relocated: u64,
    /// How long recovery took.
    pub duration: Duration,
    /// What salvage kept and lost, when the store was salvaged (see
    /// [`WharfBuilder::salvage`](crate::WharfBuilder::salvage)) by this open, or by an earlier
    /// one that a crash interrupted and this open finished. `None`: opened as it was.
    pub salvage: Option<crate::SalvageReport>,
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

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupted(Corruption { file: file.to_owned(), offset, reason: reason.into() })
}

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
    /// The index, counted from `from`, of the last non-zero byte at or after `from`.
    fn last_nonzero_from(&mut self, from: usize) -> Result<Option<usize>>;
}

impl Image for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn at(&mut self, off: usize, _want: usize) -> Result<&[u8]> {
        Ok(self.get(off..).unwrap_or(&[]))
    }

    fn last_nonzero_from(&mut self, from: usize) -> Result<Option<usize>> {
        Ok(self.get(from..).and_then(last_nonzero))
    }
}

/// The bytes of the record that would start at `off`: as many as its length field says.
pub(crate) fn record_at(img: &mut impl Image, off: usize) -> Result<&[u8]> {
    let len =
        img.at(off, 4)?.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
    img.at(off, (len as usize).max(RECORD_HEADER_LEN))
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
    /// Whether the log read so far ends inside a group.
    pub(crate) fn unfinished(&self) -> bool {
        !self.carried.is_empty() || !self.here.is_empty()
    }
}

/// Walks the records of a segment image whose first byte is log position `base`, handing each
/// to `apply` with the base of its segment and its position; the records of a group only once
/// it is whole (see [`Group`], which carries a group from one segment to the next, so the base
/// may be an earlier segment's).
pub(crate) fn scan(
    img: &mut impl Image,
    base: u64,
    until: u64,
    group: &mut Group,
    mut apply: impl FnMut(u64, u64, &record::Record<'_>) -> Result<()>,
) -> Result<End> {
    let mut off = HEADER_LEN as usize;
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
        let closes = rec.body.message_id().is_some();
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
fn path_of(segs: &[Arc<Segment>], base: u64) -> &Path {
    segs.iter().find(|s| s.base == base).map_or(Path::new("log"), |s| &s.path)
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
fn durable_record_after(
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
pub(crate) fn judge_end(
    img: &mut impl Image,
    base: u64,
    at: u64,
    mark_end: u64,
    later_records: impl FnOnce() -> Result<bool>,
) -> Result<Ending> {
    if at < mark_end {
        return Ok(Ending::BelowMark);
    }
    if later_records()? {
        return Ok(Ending::Damaged);
    }
    let from = usize::try_from(at - base).unwrap_or(usize::MAX);
    // Past the last non-zero byte there can be no record, so the search for one stops there
    // (after a clean close or a process crash, right at `at`).
    let dirty = img.last_nonzero_from(from)?;
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

/// Replay state: the index rebuilt from the log, record by record.
#[derive(Default)]
pub(crate) struct Replay {
    /// The position the checkpoint covers: records below it about a relocated message are
    /// already in its row.
    floor: u64,
    /// Relocated messages (rows of the state database) by id.
    pub relocated: HashMap<u64, Row>,
    pub queues: Vec<(String, QueueIndex)>,
    configs: Vec<Option<QueueConfig>>,
    /// Messages delivered and not settled since, with the epoch (run) that delivered them:
    /// those of the last run were in flight when the log ends.
    pub leased: HashMap<(u32, u64), u32>,
    /// The highest epoch seen in the log so far: the run whose records are being replayed (a
    /// preamble restates it at the start of every segment).
    max_epoch: u32,
    /// The checkpoint's epoch: epochs up to it were used, whatever the log still holds.
    checkpoint_epoch: u32,
    /// Unsettled messages per segment base.
    live: BTreeMap<u64, u64>,
    /// Messages pushed per segment base.
    pushed: BTreeMap<u64, u64>,
    records: u64,
    /// The first record at or past the checkpoint that the state database must see before
    /// its segment may go (as `Log::note_record` finds them): a push with a dedup key, or a
    /// record about a relocated message. `u64::MAX` if none.
    first_sensitive: u64,
    /// The latest anchor of the log (`Body::Anchor`): where it must start, and the checkpoint
    /// the state database must hold at least; `None` in a log written before anchors.
    pub anchor: Option<Anchor>,
}

/// What the anchors of a log say (the highest of each field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Anchor {
    pub start: u64,
    pub checkpoint: u64,
}

impl Anchor {
    /// The damage, if the log's segments (the oldest based at `first`, if any) and the state
    /// database (its checkpoint `checkpoint`) do not match what the log's anchors say: a
    /// missing oldest segment, or a state database older than the log's last checkpoint.
    pub(crate) fn check(
        &self,
        log_dir: &Path,
        first: Option<u64>,
        state_file: &Path,
        checkpoint: u64,
    ) -> Option<Corruption> {
        if let Some(first) = first.filter(|&f| f > self.start) {
            return Some(Corruption {
                file: log_dir.join(segment_file_name(self.start)),
                offset: 0,
                reason: format!(
                    "segment file missing: the log must start at position {}, but its oldest \
                     segment starts at {first}",
                    self.start
                ),
            });
        }
        (checkpoint < self.checkpoint).then(|| Corruption {
            file: state_file.to_owned(),
            offset: 0,
            reason: format!(
                "the state database is missing or older than the log: it covers the log up to \
                 position {checkpoint}, but the log recorded a checkpoint up to {} (a lost file \
                 or a stale copy)",
                self.checkpoint
            ),
        })
    }
}

impl Replay {
    /// Applies the record at `lsn` of the segment `file` based at `base`. A record the index
    /// cannot take (an unknown queue, a bad name or config) is corruption and changes nothing.
    pub(crate) fn apply(
        &mut self,
        file: &Path,
        base: u64,
        lsn: u64,
        rec: &record::Record<'_>,
    ) -> Result<()> {
        self.records += 1;
        // A map lookup per record only while it can matter: below the checkpoint, and past it
        // until the first sensitive record (records come in log order).
        let relocated = |body: &Body<'_>, map: &HashMap<u64, Row>| {
            !map.is_empty() && body.message_id().is_some_and(|id| map.contains_key(&id))
        };
        if lsn < self.floor {
            if relocated(&rec.body, &self.relocated) {
                return Ok(());
            }
        } else if self.first_sensitive == u64::MAX {
            let keyed = matches!(rec.body, Body::PushEx { key, .. } if !key.is_empty());
            if keyed || relocated(&rec.body, &self.relocated) {
                self.first_sensitive = lsn;
            }
        }
        let bad = |why: &str| corrupt(file, lsn - base, why);
        let known = |q: u32, queues: &Vec<(String, QueueIndex)>| (q as usize) < queues.len();
        match rec.body {
            Body::Epoch { epoch } => {
                // A new epoch is a new run of the store: the leases of earlier runs ended with
                // them (see `in_flight`); a preamble restates the current epoch.
                self.max_epoch = self.max_epoch.max(epoch);
            }
            Body::Queue { queue, name } => {
                let name = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| valid_name(n))
                    .ok_or_else(|| bad("invalid queue name in catalog record"))?;
                match self.queues.get(queue as usize) {
                    Some((existing, _)) if existing == name => {}
                    None if queue as usize == self.queues.len() => {
                        self.queues.push((name.to_owned(), QueueIndex::default()));
                        self.configs.push(None);
                    }
                    _ => return Err(bad("queue catalog record out of order")),
                }
            }
            Body::Push { queue, id, payload } => {
                let len = u32::try_from(payload.len()).map_err(|_| bad("payload too long"))?;
                let off = record::PUSH_OVERHEAD as u32;
                let entry = Entry { lsn, len, off, attempts: 0, priority: 0, expires: 0 };
                let (_, q) = self
                    .queues
                    .get_mut(queue as usize)
                    .ok_or_else(|| bad("push to an unknown queue"))?;
                q.insert(id, entry, 0);
                *self.live.entry(base).or_default() += 1;
                *self.pushed.entry(base).or_default() += 1;
            }
            Body::PushEx { queue, id, priority, not_before, expires, pushed, key, payload } => {
                let len = u32::try_from(payload.len()).map_err(|_| bad("payload too long"))?;
                let off = u32::try_from(rec.body.payload_offset()).unwrap_or(u32::MAX);
                let entry = Entry { lsn, len, off, attempts: 0, priority, expires };
                let window = self.window(queue);
                let (_, q) = self
                    .queues
                    .get_mut(queue as usize)
                    .ok_or_else(|| bad("push to an unknown queue"))?;
                q.insert(id, entry, not_before);
                if !key.is_empty() {
                    q.dedup_insert(key, id, pushed.saturating_add(window), 0);
                }
                *self.live.entry(base).or_default() += 1;
                *self.pushed.entry(base).or_default() += 1;
            }
            Body::Deliver { queue, id, attempt } => {
                if !known(queue, &self.queues) {
                    return Err(bad("delivery in an unknown queue"));
                }
                if let Some((_, q)) = self.queues.get_mut(queue as usize) {
                    if q.replay_delivered(id, attempt) {
                        self.leased.insert((queue, id), self.max_epoch);
                    }
                }
            }
            Body::Ack { queue, id } => {
                let (_, q) = self
                    .queues
                    .get_mut(queue as usize)
                    .ok_or_else(|| bad("ack in an unknown queue"))?;
                if let Some(e) = q.remove(id) {
                    q.forget(id);
                    // A relocated message holds no segment.
                    let live =
                        self.live.range_mut(..=e.lsn).next_back().filter(|_| e.lsn != RELOCATED);
                    if let Some((_, n)) = live {
                        *n = n.saturating_sub(1);
                    }
                }
                self.leased.remove(&(queue, id));
            }
            Body::Nack { queue, id } => {
                if !known(queue, &self.queues) {
                    return Err(bad("nack in an unknown queue"));
                }
                self.leased.remove(&(queue, id));
            }
            Body::Retry { queue, id, due, error } => {
                let (_, q) = self
                    .queues
                    .get_mut(queue as usize)
                    .ok_or_else(|| bad("retry in an unknown queue"))?;
                if q.replay_retry(id, due) {
                    q.set_error(id, &String::from_utf8_lossy(error));
                }
                self.leased.remove(&(queue, id));
            }
            Body::DeadLetter { queue, id, to, reason, error } => {
                if !known(queue, &self.queues) || !known(to, &self.queues) || queue == to {
                    return Err(bad("dead letter between unknown queues"));
                }
                if let (Some(e), Some((_, dst))) = self.take_for_move(queue, id, to) {
                    dst.insert(id, Entry { expires: 0, priority: 0, ..e }, 0);
                    let error = String::from_utf8_lossy(error).into();
                    dst.set_note(id, Note { origin: Some(queue), reason, error });
                }
            }
            Body::Requeue { queue, id, to } => {
                if !known(queue, &self.queues) || !known(to, &self.queues) || queue == to {
                    return Err(bad("requeue between unknown queues"));
                }
                if let (Some(e), Some((_, dst))) = self.take_for_move(queue, id, to) {
                    dst.insert(id, Entry { attempts: 0, ..e }, 0);
                }
            }
            Body::Config { queue, config } => {
                if !known(queue, &self.queues) {
                    return Err(bad("config of an unknown queue"));
                }
                let config =
                    QueueConfig::decode(config).ok_or_else(|| bad("invalid queue config"))?;
                if let Some(c) = self.configs.get_mut(queue as usize) {
                    *c = Some(config);
                }
            }
            Body::Anchor { start, checkpoint } => {
                let a = self.anchor.get_or_insert_default();
                a.start = a.start.max(start);
                a.checkpoint = a.checkpoint.max(checkpoint);
            }
            Body::Seal => {}
        }
        Ok(())
    }
}

impl Replay {
    /// Starts from a checkpoint of the state database: its catalog, configs, dedup keys and
    /// relocated messages. The log's own records then restate (and extend) the catalog.
    pub(crate) fn from_checkpoint(loaded: &Loaded, file: &Path) -> Result<Replay> {
        let bad = |why: String| corrupt(file, 0, why);
        let mut r = Replay {
            floor: loaded.checkpoint,
            checkpoint_epoch: loaded.epoch,
            first_sensitive: u64::MAX,
            ..Replay::default()
        };
        for q in &loaded.queues {
            if !valid_name(&q.name) {
                return Err(bad(format!("invalid queue name {:?} in the catalog", q.name)));
            }
            let config = match &q.config {
                Some(c) => Some(
                    QueueConfig::decode(c)
                        .ok_or_else(|| bad(format!("invalid config of queue {:?}", q.name)))?,
                ),
                None => None,
            };
            r.queues.push((q.name.clone(), QueueIndex::default()));
            r.configs.push(config);
        }
        for (id, row) in &loaded.rows {
            let Some((_, q)) = r.queues.get_mut(row.queue as usize) else {
                return Err(bad(format!("message {id:x} is in an unknown queue")));
            };
            let entry = Entry {
                lsn: RELOCATED,
                len: row.len,
                off: 0,
                attempts: row.attempts,
                priority: row.priority,
                expires: row.expires,
            };
            q.insert(*id, entry, row.due);
            if row.origin.is_some() || !row.error.is_empty() {
                q.set_note(
                    *id,
                    Note { origin: row.origin, reason: row.reason, error: row.error.clone() },
                );
            }
            if row.leased != 0 {
                r.leased.insert((row.queue, *id), row.leased);
            }
            r.relocated.insert(*id, row.clone());
        }
        for (queue, key, id, until) in &loaded.dedup {
            let Some((_, q)) = r.queues.get_mut(*queue as usize) else {
                return Err(bad(format!("a dedup key of an unknown queue {queue}")));
            };
            q.dedup_insert(key, *id, *until, 0);
        }
        Ok(r)
    }

    /// Adds queue `name` to the catalog before any record is replayed (salvage names every
    /// queue it found anywhere in the log first, so that a lost catalog record costs nothing).
    pub(crate) fn seed_queue(&mut self, name: String) {
        self.queues.push((name, QueueIndex::default()));
        self.configs.push(None);
    }

    /// Each queue's configuration as replayed so far.
    pub(crate) fn configs(&self) -> &[Option<QueueConfig>] {
        &self.configs
    }

    /// The last epoch used: by the log's records or by the checkpoint.
    pub(crate) fn epoch(&self) -> u32 {
        self.max_epoch.max(self.checkpoint_epoch)
    }

    /// Messages in flight when the log ends: delivered by the last run and not settled since
    /// (the leases of earlier runs ended when the run after them began).
    pub(crate) fn in_flight(&self) -> u64 {
        let last = self.epoch();
        self.leased.values().filter(|&&e| e == last).count() as u64
    }

    /// A move of message `id` from queue `from` to queue `to`: takes it out of `from` (if it
    /// is still there) and returns it with the destination.
    fn take_for_move(
        &mut self,
        from: u32,
        id: u64,
        to: u32,
    ) -> (Option<Entry>, Option<&mut (String, QueueIndex)>) {
        self.leased.remove(&(from, id));
        let moved = self.queues.get_mut(from as usize).and_then(|(_, q)| {
            let e = q.remove(id)?;
            q.forget(id);
            Some(e)
        });
        (moved, self.queues.get_mut(to as usize))
    }

    /// The dedup window of queue `q` as configured so far.
    fn window(&self, q: u32) -> u64 {
        let cfg = self.configs.get(q as usize).and_then(Option::as_ref);
        cfg.map_or(0, |c| crate::clock::millis(c.dedup_window))
    }
}

/// Reads the whole image of a segment: its map, or a `pread` copy.
fn image(seg: &Segment) -> Result<std::borrow::Cow<'_, [u8]>> {
    match seg.mapped() {
        Some(b) => Ok(std::borrow::Cow::Borrowed(b)),
        None => Ok(std::borrow::Cow::Owned(
            seg.read(seg.base, usize::try_from(seg.len).unwrap_or(usize::MAX))?,
        )),
    }
}

/// Whether a segment's first record is valid (spares made ahead of time have none).
fn starts_with_record(seg: &Segment) -> Result<bool> {
    let first = seg.base + HEADER_LEN;
    if let Some(bytes) = seg.mapped() {
        let rest = bytes.get(HEADER_LEN as usize..).unwrap_or(&[]);
        return Ok(record::decode(rest, first).is_ok());
    }
    let room = seg.len.saturating_sub(HEADER_LEN);
    let len_field = seg.read(first, 4.min(room as usize))?;
    let len = len_field.try_into().map_or(0, u32::from_le_bytes);
    let len = u64::from(len).min(room);
    let rec = seg.read(first, usize::try_from(len).unwrap_or(0))?;
    Ok(record::decode(&rec, first).is_ok())
}

/// Recovers the log in `log_dir`, starting from the checkpoint `loaded` of the state database
/// (`state_file` names it in errors).
pub(crate) fn recover(
    storage: &dyn Storage,
    log_dir: &Path,
    map: bool,
    loaded: &Loaded,
    state_file: &Path,
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
                return Err(corrupt(&seg.path, 0, segment_gap(prev.end(), base)));
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

    let mut replay = Replay::from_checkpoint(loaded, state_file)?;
    let mut active = None;
    let mut tail_index = segs.len();
    let mut group = Group::default();
    for (i, seg) in segs.iter().enumerate() {
        failpoint::hit("recovery-replay");
        let bytes = image(seg)?;
        let mut img: &[u8] = &bytes;
        let end = scan(&mut img, seg.base, until, &mut group, |base, lsn, rec| {
            let path = if base == seg.base { &seg.path } else { path_of(&segs, base) };
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
        let dirty = match judge_end(&mut img, seg.base, at, mark_end, later)? {
            Ending::BelowMark => {
                let why =
                    format!("{}; {}", explain_at(&mut img, seg.base, at), below_mark(at, mark_end));
                return Err(corrupt(&seg.path, at - seg.base, why));
            }
            Ending::Damaged => {
                return Err(corrupt(&seg.path, at - seg.base, damaged(&mut img, seg.base, at)))
            }
            Ending::Torn { dirty } => dirty,
        };
        drop(bytes);
        if let Some(len) = dirty {
            zero(seg, at, len)?;
            report.bytes_truncated = len;
            report.truncated_at = Some((seg.path.clone(), at - seg.base));
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
    if let Some(anchor) = &replay.anchor {
        let first = segs.first().map(|s| s.base);
        if let Some(c) = anchor.check(log_dir, first, state_file, loaded.checkpoint) {
            return Err(Error::Corrupted(c));
        }
    }
    let log_end = active.as_ref().map(|(_, at)| *at).or_else(|| segs.last().map(|s| s.end()));
    if log_end.unwrap_or(0) < mark_end {
        let file = segs.last().map_or_else(|| log_dir.join(MARK_FILE), |s| s.path.clone());
        return Err(below(&file, 0, log_end.unwrap_or(0)));
    }
    if log_end.unwrap_or(0) < loaded.checkpoint {
        let file = segs.last().map_or_else(|| state_file.to_owned(), |s| s.path.clone());
        let at = log_end.unwrap_or(0);
        let why = format!(
            "the log ends at position {at}, but the state database's checkpoint covers it up \
             to {}",
            loaded.checkpoint
        );
        return Err(corrupt(&file, 0, why));
    }
    report.records = replay.records;
    report.checkpoint = (loaded.checkpoint > 0).then_some(loaded.checkpoint);
    report.relocated = replay.relocated.len() as u64;
    report.in_flight_at_crash = replay.in_flight();
    report.messages = replay.queues.iter().map(|(_, q)| q.waiting_len() as u64).sum();

    let store_id = store_id.unwrap_or_else(new_store_id);
    // Records past the checkpoint that the state database must see before their segment
    // goes, as replay found them.
    let mut log = Log::new(store_id, loaded.checkpoint, replay.first_sensitive);
    for (i, seg) in segs.into_iter().enumerate() {
        if i <= tail_index {
            let live = replay.live.get(&seg.base).copied().unwrap_or(0);
            let first = seg.base + HEADER_LEN;
            let pushed = replay.pushed.get(&seg.base).copied().unwrap_or(0);
            log.insert(SegInfo::new(seg, live, pushed, first));
        } else {
            log.push_spare(seg);
        }
    }
    report.duration = started.elapsed();
    Ok(Recovered {
        log,
        active,
        max_epoch: replay.epoch(),
        queues: replay.queues,
        configs: replay.configs,
        relocated: replay.relocated,
        mark,
        report,
    })
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

/// Zeroes `[at, at + len)` of a segment and syncs it: the torn tail is cut in place.
fn zero(seg: &Segment, at: u64, len: u64) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn image_of(records: &[Body<'_>], synced_at: &[u64]) -> (Vec<u8>, Vec<u64>) {
        let mut buf = vec![0u8; HEADER_LEN as usize];
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
        let end = scan(&mut &img[..], 0, u64::MAX, &mut Group::default(), |_, lsn, _| {
            seen.push(lsn);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, lsns);
        assert!(matches!(end, End::Open { why: DecodeError::Zero, .. }));
        let (img, _) =
            image_of(&[Body::Epoch { epoch: 1 }, Body::Seal, Body::Epoch { epoch: 2 }], &[]);
        let mut group = Group::default();
        let end = scan(&mut &img[..], 0, u64::MAX, &mut group, |_, _, _| Ok(())).unwrap();
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
}
