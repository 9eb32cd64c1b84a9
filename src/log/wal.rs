//! Staging: records are encoded into per-segment chunks in memory, in log order, until a
//! group commit (`commit.rs`) writes them. Also the id sequence, the queue catalog that every
//! segment's preamble restates, groups (records replay applies all or none of), and the room
//! check that keeps settlements able to run on a full disk.
//!
//! Invariant: lives inside the store's one mutex; `next_lsn >= written >= durable`, and bytes
//! below `written` are in their files (below `durable`, synced).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flush::{record_len_at, Chunk};
pub(crate) use super::flush::{Flush, Flushed};
use super::segment::Segment;
use super::segments::{first_record, Log, SegInfo};
use super::source::Records;
use super::stats::Stats;
use crate::error::{Error, Result};
use crate::record::{self, Body, SEAL_LEN, TAIL_RESERVE};

/// Staged bytes past which a non-waiting write hands them to the OS at once.
pub(crate) const GROUP_BYTES: usize = 1 << 20;
/// Buffers of written chunks kept for staging (see `Wal::spare_buffers`).
const SPARE_BUFFERS: usize = 2;
/// How soon bytes staged with `Durability::None` are handed to the OS.
pub(crate) const WRITE_BEHIND: Duration = Duration::from_millis(5);
/// Spare segments that only settlements (deliveries, acks, nacks) and the epoch record of an
/// open may fill: when the disk is full, pushes fail with `NoSpace` while pops and acks go on,
/// so a full store can still be drained and reopened.
pub(crate) const RESERVE_SPARES: usize = 1;
/// Spare segments the background thread keeps ready: one to roll into, plus the reserve.
pub(crate) const READY_SPARES: usize = 1 + RESERVE_SPARES;

/// Who asks for room in the log: pushes may not use the reserve, settlements may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    Push,
    Settle,
}

/// Bits of a message id that count messages within one epoch (one open of the store).
pub(crate) const SEQ_BITS: u32 = 40;
/// The largest epoch: an id is `epoch << SEQ_BITS | seq` and fits in a u64.
pub(crate) const MAX_EPOCH: u32 = (1 << (64 - SEQ_BITS)) - 1;

/// One queue as every segment's preamble restates it.
pub(crate) struct CatalogEntry {
    pub name: Box<[u8]>,
    pub config: Option<Box<[u8]>>,
}

/// The log's write state; lives inside the store's one mutex.
pub(crate) struct Wal {
    log: Log,
    /// The segment new records go to (also the last of `log.segments`).
    active: Arc<Segment>,
    /// Position of the next record, and where the last one staged starts.
    next_lsn: u64,
    last_lsn: u64,
    /// Everything below is written to its file (not necessarily synced).
    written: u64,
    /// Everything below is durable.
    durable: u64,
    staged: Vec<Chunk>,
    staged_bytes: usize,
    /// A new chunk's capacity: an eighth more than the longest the last flush took (no regrowth).
    chunk_capacity: usize,
    /// What the current leader is writing, readable by others until it is written.
    writing: Option<Arc<Vec<Chunk>>>,
    /// Buffers of chunks written, kept to stage into again: a fresh buffer of a megabyte
    /// costs a page fault every 4 KiB as it fills, more than copying the records into it.
    spare_buffers: Vec<Vec<u8>>,
    /// A leader is writing or syncing now.
    flushing: bool,
    /// The segment holding written but unsynced bytes.
    unsynced: Option<Arc<Segment>>,
    poisoned: Option<String>,
    /// A `Durability::Interval` record wants a sync by then.
    sync_due: Option<Instant>,
    /// Staged bytes want to be written by then.
    write_due: Option<Instant>,
    /// The background thread was asked to write a full group now.
    write_kicked: bool,
    /// A segment may have become deletable.
    maybe_delete: bool,
    /// A deletion waits for a spare segment to hold its anchor (`Wal::append_anchor`).
    anchor_waits: bool,
    epoch: u32,
    seq: u64,
    /// Cached `preamble().encoded_len()` sum.
    preamble_bytes: usize,
    /// A group is being staged: appended records carry `MORE` (see `begin_group`).
    grouping: bool,
    /// Queue names and encoded configs by id, restated in every segment's preamble.
    catalog: Vec<CatalogEntry>,
    stats: Stats,
}

impl Wal {
    /// A write state continuing at `next_lsn` in the last segment of `log`, all durable.
    pub(crate) fn new(
        log: Log,
        active: Arc<Segment>,
        next_lsn: u64,
        epoch: u32,
        catalog: Vec<CatalogEntry>,
    ) -> Wal {
        let mut wal = Wal {
            log,
            active,
            next_lsn,
            last_lsn: 0,
            written: next_lsn,
            durable: next_lsn,
            staged: Vec::new(),
            staged_bytes: 0,
            chunk_capacity: GROUP_BYTES / 16,
            writing: None,
            spare_buffers: Vec::new(),
            flushing: false,
            unsynced: None,
            poisoned: None,
            sync_due: None,
            write_due: None,
            write_kicked: false,
            maybe_delete: true,
            anchor_waits: false,
            preamble_bytes: 0,
            grouping: false,
            epoch,
            seq: 0,
            catalog,
            stats: Stats::default(),
        };
        wal.preamble_bytes = wal.preamble().iter().map(Body::encoded_len).sum();
        wal
    }

    /// The next message id of this epoch.
    pub(crate) fn next_id(&mut self) -> Result<u64> {
        if self.seq >= (1 << SEQ_BITS) - 1 {
            return Err(Error::Internal(
                "message ids of this open are exhausted; reopen the store".into(),
            ));
        }
        self.seq += 1;
        Ok(u64::from(self.epoch) << SEQ_BITS | self.seq)
    }

    /// Records that must open every segment: the epoch, the anchor (where the log starts and
    /// the checkpoint the state database holds), and the whole queue catalog, with each
    /// queue's configuration.
    fn preamble(&self) -> Vec<Body<'_>> {
        let mut out = vec![Body::Epoch { epoch: self.epoch }, self.anchor()];
        for (q, c) in self.catalog.iter().enumerate() {
            let queue = u32::try_from(q).unwrap_or(u32::MAX);
            out.push(Body::Queue { queue, name: &c.name });
            if let Some(config) = &c.config {
                out.push(Body::Config { queue, config });
            }
        }
        out
    }

    /// The anchor as the log stands: its oldest segment, and the last checkpoint.
    pub(crate) fn anchor(&self) -> Body<'static> {
        let start = self.log.first_base().unwrap_or(self.active.base());
        Body::Anchor { start, checkpoint: self.log.checkpoint() }
    }

    /// The catalog: each queue's name and encoded configuration (if not the default), by id.
    pub(crate) fn catalog(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.catalog.iter().map(|c| (&*c.name, c.config.as_deref()))
    }

    /// Bytes of a segment preamble as the catalog stands.
    pub(crate) fn preamble_len(&self) -> usize {
        self.preamble_bytes
    }

    /// Adds a queue to the catalog that preambles restate.
    pub(crate) fn add_to_catalog(&mut self, name: &str) {
        self.catalog.push(CatalogEntry { name: name.as_bytes().into(), config: None });
        self.preamble_bytes = self.preamble().iter().map(Body::encoded_len).sum();
    }

    /// Sets the configuration later preambles restate for queue `q`.
    pub(crate) fn set_catalog_config(&mut self, q: u32, config: Option<Box<[u8]>>) {
        if let Some(c) = self.catalog.get_mut(q as usize) {
            c.config = config;
        }
        self.preamble_bytes = self.preamble().iter().map(Body::encoded_len).sum();
    }

    /// Whether records of these lengths fit in the active segment and the spares `room` uses.
    pub(crate) fn fits(&self, lens: &[usize], room: Room) -> bool {
        // Once a settlement rolled into the reserve segment, pushes wait for a new reserve:
        // filling the segment that settlements now write into would leave them no room, and a
        // full store could never be drained.
        if room == Room::Push && self.log.spare_count() < RESERVE_SPARES {
            return false;
        }
        let active = &self.active;
        let pre = self.preamble_len() as u64;
        let (mut pos, mut end) = (self.next_lsn, active.end());
        let usable = match room {
            Room::Push => self.log.spare_count().saturating_sub(RESERVE_SPARES),
            Room::Settle => self.log.spare_count(),
        };
        let mut spares = self.log.spares().take(usable);
        for &len in lens {
            let len = len as u64 + TAIL_RESERVE as u64;
            // A spare too small for the record is rolled through (`append`): sealed right
            // after its preamble.
            while pos + len > end {
                let Some(s) = spares.next() else { return false };
                (pos, end) = (first_record(s) + pre, s.end());
            }
            pos += len - TAIL_RESERVE as u64;
        }
        true
    }

    /// Stages `body` and returns its log position; `None` when it needs a spare segment that
    /// does not exist (callers check `fits` first).
    pub(crate) fn append(&mut self, body: &Body<'_>) -> Option<u64> {
        // Segments have different sizes: one too small for this record is sealed as it is.
        while self.next_lsn + (body.encoded_len() + TAIL_RESERVE) as u64 > self.active.end() {
            self.roll()?;
        }
        let (lsn, durable, more) = (self.next_lsn, self.durable, self.grouping);
        self.stage_with(|buf| record::encode_in_group(buf, lsn, durable, body, more));
        self.log.note_record(lsn, body);
        Some(lsn)
    }

    /// Stages an anchor stating where the log starts now (see `Body::Anchor`), into the room
    /// each segment keeps for it (`TAIL_RESERVE`) or after a roll, whose preamble states it
    /// then. `None` when neither is possible: the active segment's reserve was used and no
    /// spare exists yet.
    pub(crate) fn append_anchor(&mut self) -> Option<()> {
        let anchor = self.anchor();
        if self.next_lsn + (anchor.encoded_len() + SEAL_LEN) as u64 > self.active.end() {
            return self.roll();
        }
        self.stage(&anchor);
        Some(())
    }

    /// Starts a group: the records appended until `end_group` carry `MORE`, and the record
    /// appended right after it closes the group, so that replay applies all of them or none
    /// (a group may span a roll: the seal and the next preamble are not part of it).
    pub(crate) fn begin_group(&mut self) {
        self.grouping = true;
    }

    /// The next record appended is the last of the group (or no group is open).
    pub(crate) fn end_group(&mut self) {
        self.grouping = false;
    }

    /// The active segment's length in bytes.
    pub(crate) fn active_len(&self) -> u64 {
        self.active.len()
    }

    /// Seals the active segment early and goes on in the first spare (`None`: there is none);
    /// see `GroupCommit::shrink`.
    pub(crate) fn roll_now(&mut self) -> Option<()> {
        self.roll()
    }

    /// Seals the active segment and makes the first spare active, starting with the preamble.
    fn roll(&mut self) -> Option<()> {
        let next = self.log.pop_first_spare()?;
        self.stage(&Body::Seal);
        if let Some(c) = self.staged.last_mut() {
            c.seal = true;
        }
        self.next_lsn = first_record(&next);
        self.log.activate(Arc::clone(&next), 0);
        // The segment just sealed may already be settled; the next flush tells the background.
        self.maybe_delete = true;
        self.active = next;
        self.stage_preamble();
        Some(())
    }

    /// Stages the preamble of the active segment, which must have no records yet.
    pub(crate) fn stage_preamble(&mut self) {
        let preamble: Vec<Vec<u8>> = {
            // Encoded first: staging needs `&mut self` while the bodies borrow the catalog.
            let mut lsn = self.next_lsn;
            self.preamble()
                .iter()
                .map(|b| {
                    let mut v = Vec::new();
                    record::encode(&mut v, lsn, self.durable, b);
                    lsn += v.len() as u64;
                    v
                })
                .collect()
        };
        for rec in preamble {
            self.stage_encoded(&rec);
        }
        let end = self.next_lsn;
        self.log.set_preamble_end(self.active.base(), end);
    }

    /// Appends bytes written by `write` to the staged chunk of the active segment, starting a
    /// new chunk when there is none (or the last one is sealed).
    fn stage_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let active = self.active.base();
        let len = match self.staged.last_mut() {
            Some(c) if c.seg.base() == active && !c.seal => {
                let before = c.bytes.len();
                write(&mut c.bytes);
                c.bytes.len() - before
            }
            _ => {
                let mut bytes = self.spare_buffers.pop().unwrap_or_default();
                bytes.reserve(self.chunk_capacity);
                write(&mut bytes);
                let len = bytes.len();
                let seg = Arc::clone(&self.active);
                self.staged.push(Chunk { seg, lsn: self.next_lsn, bytes, seal: false });
                len
            }
        };
        self.advance(len);
    }

    fn stage(&mut self, body: &Body<'_>) {
        let (lsn, durable) = (self.next_lsn, self.durable);
        self.stage_with(|buf| record::encode(buf, lsn, durable, body));
    }

    fn stage_encoded(&mut self, rec: &[u8]) {
        self.stage_with(|buf| buf.extend_from_slice(rec));
    }

    fn advance(&mut self, len: usize) {
        self.last_lsn = self.next_lsn;
        self.next_lsn += len as u64;
        self.staged_bytes += len;
        self.stats.records += 1;
        self.stats.bytes += len as u64;
    }

    /// Position of the next record: the end of everything staged.
    #[inline]
    pub(crate) fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Where the last record staged starts, or a record before it (0 before any).
    pub(crate) fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// Everything below is in its file (not necessarily synced).
    #[inline]
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Everything below is durable.
    #[inline]
    pub(crate) fn durable(&self) -> u64 {
        self.durable
    }

    /// The id epoch of this open.
    #[inline]
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The segment set.
    #[inline]
    pub(crate) fn log(&self) -> &Log {
        &self.log
    }

    /// The segment set, to change its bookkeeping.
    #[inline]
    pub(crate) fn log_mut(&mut self) -> &mut Log {
        &mut self.log
    }

    /// Why the store is poisoned, if it is.
    #[inline]
    pub(crate) fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Poisons the store for good (see `Error::Poisoned`); the first reason stays.
    #[inline]
    pub(crate) fn poison(&mut self, why: String) {
        self.poisoned.get_or_insert(why);
    }

    /// Fails with `Poisoned` once the store is.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// The write path's counters, with the log's state as it stands.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            durable_lsn: self.durable,
            segments: self.log.segment_count() + self.log.spare_count(),
            disk_bytes: self.log.disk_bytes(),
            checkpoint_lsn: self.log.checkpoint(),
            ..self.stats
        }
    }

    /// Records appended so far (it moves with every record).
    #[inline]
    pub(crate) fn records(&self) -> u64 {
        self.stats.records
    }

    /// A leader is writing or syncing now.
    #[inline]
    pub(crate) fn flushing(&self) -> bool {
        self.flushing
    }

    /// Bytes staged and not yet handed to a leader.
    #[inline]
    pub(crate) fn staged_bytes(&self) -> usize {
        self.staged_bytes
    }

    /// When a `Durability::Interval` record wants a sync, and staged bytes a write.
    #[inline]
    pub(crate) fn due(&self) -> (Option<Instant>, Option<Instant>) {
        (self.sync_due, self.write_due)
    }

    /// Asks for a sync by `due` at the latest; true if that moved the deadline earlier.
    pub(crate) fn want_sync_by(&mut self, due: Instant) -> bool {
        let earlier = self.sync_due.is_none_or(|t| due < t);
        if earlier {
            self.sync_due = Some(due);
        }
        earlier
    }

    /// Asks for staged bytes to be written by `WRITE_BEHIND` from now, unless already asked;
    /// true if this asked.
    pub(crate) fn want_write_behind(&mut self) -> bool {
        let first = self.write_due.is_none();
        if first {
            self.write_due = Some(Instant::now() + WRITE_BEHIND);
        }
        first
    }

    /// A full group is staged and nobody was asked to write it yet: asks the background
    /// thread (true) now.
    pub(crate) fn kick_full_group(&mut self) -> bool {
        let kick = self.staged_bytes >= GROUP_BYTES && !self.write_kicked;
        if kick {
            self.write_kicked = true;
            self.write_due = Some(Instant::now());
        }
        kick
    }

    /// Whether a segment may have become deletable since the background thread last looked.
    #[inline]
    pub(crate) fn maybe_delete(&self) -> bool {
        self.maybe_delete
    }

    /// Notes whether a segment may have become deletable.
    #[inline]
    pub(crate) fn set_maybe_delete(&mut self, maybe: bool) {
        self.maybe_delete = maybe;
    }

    /// A deletion was put back for want of room for its anchor; `take_anchor_waits` tells the
    /// background thread, once a spare exists, to try again.
    #[inline]
    pub(crate) fn set_anchor_waits(&mut self) {
        self.anchor_waits = true;
    }

    /// Whether a deletion waits for room for its anchor, clearing it.
    #[inline]
    pub(crate) fn take_anchor_waits(&mut self) -> bool {
        std::mem::take(&mut self.anchor_waits)
    }

    /// A leader's first step: takes everything staged to be written (with `sync`, also the
    /// segment to sync), marking a flush as running. `None` if there is nothing to do (with
    /// `sync`, the log is then durable to its end already).
    pub(crate) fn begin_flush(&mut self, sync: bool) -> Option<Flush> {
        let chunks = std::mem::take(&mut self.staged);
        if let Some(longest) = chunks.iter().map(|c| c.bytes.len()).max() {
            self.chunk_capacity = (longest + longest / 8).clamp(GROUP_BYTES / 16, 2 * GROUP_BYTES);
        }
        self.staged_bytes = 0;
        self.write_due = None;
        self.write_kicked = false;
        let end = self.next_lsn;
        let to_sync = if sync {
            chunks.last().map(|c| Arc::clone(&c.seg)).or_else(|| self.unsynced.clone())
        } else {
            None
        };
        if sync {
            self.sync_due = None;
        }
        if chunks.is_empty() && to_sync.is_none() {
            if sync {
                self.durable = self.durable.max(end);
            }
            return None;
        }
        let chunks = Arc::new(chunks);
        self.writing = Some(Arc::clone(&chunks));
        self.flushing = true;
        Some(Flush { chunks, to_sync, end, sync, durable: self.durable })
    }

    /// A leader's last step: publishes what `flush` (run with the mutex released) achieved.
    /// On success the log is written (and with `sync`, durable) up to the flush's end.
    /// Returns whether this was the first write past the checkpoint at `checkpoint`.
    pub(crate) fn end_flush(&mut self, flush: &mut Flush, done: &Flushed, ok: bool) -> bool {
        self.flushing = false;
        self.writing = None;
        self.stats.writes += done.writes;
        self.stats.fsyncs += done.syncs;
        self.durable = self.durable.max(done.synced_to);
        let checkpoint = self.log.checkpoint();
        let first_new = self.written <= checkpoint && flush.end > checkpoint;
        if ok {
            self.written = flush.end;
            if flush.sync {
                self.durable = flush.end;
                self.unsynced = None;
            } else if let Some(c) = flush.chunks.last() {
                self.unsynced = Some(Arc::clone(&c.seg));
            }
        }
        // Last: the chunks are not looked at again (the segment to sync was taken above).
        let chunks = Arc::try_unwrap(std::mem::take(&mut flush.chunks)).unwrap_or_default();
        for c in chunks {
            if self.spare_buffers.len() < SPARE_BUFFERS && c.bytes.capacity() <= 4 * GROUP_BYTES {
                let mut bytes = c.bytes;
                bytes.clear();
                self.spare_buffers.push(bytes);
            }
        }
        first_new
    }

    /// A copy of the record bytes at `lsn` that are staged or being written, if they are.
    pub(crate) fn copy_unwritten(&self, lsn: u64, len: usize) -> Option<Vec<u8>> {
        let writing = self.writing.iter().flat_map(|w| w.iter());
        writing.chain(self.staged.iter()).find_map(|c| c.copy(lsn, len))
    }
}

impl Records for Wal {
    fn record(&self, lsn: u64) -> Result<Option<Cow<'_, [u8]>>> {
        if lsn >= self.next_lsn {
            return Ok(None);
        }
        if lsn < self.written {
            let Some(seg) = self.log.segment_of(lsn) else { return Ok(None) };
            let bytes = seg.record(lsn)?;
            if lsn + bytes.len() as u64 <= self.written {
                return Ok(Some(bytes));
            }
        }
        let Some(head) = self.copy_unwritten(lsn, 4) else { return Ok(None) };
        Ok(self.copy_unwritten(lsn, record_len_at(&head)).map(Cow::Owned))
    }

    fn file_of(&self, lsn: u64) -> (std::path::PathBuf, u64) {
        self.log.segment_of(lsn).map_or_else(
            || (std::path::PathBuf::new(), lsn),
            |s| (s.path().to_path_buf(), lsn - s.base()),
        )
    }

    fn next_segment(&self, lsn: u64) -> Option<u64> {
        let after = lsn.checked_add(1)?;
        self.log.segments().map(SegInfo::seg).find(|s| s.base() >= after).map(|s| first_record(s))
    }
}
