//! The write path: records are staged in memory, and one leader among the waiting callers
//! writes everything staged with one `pwrite` and one `fdatasync` (group commit). A background
//! thread serves `Durability::Interval` and `None`, prepares the next segment ahead of time and
//! deletes settled segments.
//!
//! Invariants: all data `fdatasync`s of the log happen here; a failed write or sync poisons the
//! store for good (never retried, see `Error::Poisoned`); the log becomes durable strictly as a
//! prefix, because a chunk that seals a segment is synced before any later chunk is written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use crate::clock::deadline_after;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::log::{first_record, Log};
use crate::options::Durability;
use crate::record::{self, Body, SEAL_LEN, TAIL_RESERVE};
use crate::segment::{Segment, HEADER_LEN};
use crate::store::{Shared, State, Thread};

/// Staged bytes past which a non-waiting write hands them to the OS at once.
pub(crate) const GROUP_BYTES: usize = 1 << 20;
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

/// Bytes staged for one segment, to be written at `lsn` in one call.
pub(crate) struct Chunk {
    pub seg: Arc<Segment>,
    pub lsn: u64,
    pub bytes: Vec<u8>,
    /// Ends with a seal record: synced before anything later is written.
    pub seal: bool,
}

impl Chunk {
    fn copy(&self, lsn: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(lsn.checked_sub(self.lsn)?).ok()?;
        self.bytes.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

/// Counters of the write path, for benchmarks and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fdatasync` calls on log segments.
    pub fsyncs: u64,
    /// Write calls (`pwrite`) on log segments.
    pub writes: u64,
    /// Records appended to the log.
    pub records: u64,
    /// Bytes appended to the log.
    pub bytes: u64,
    /// The log's durable end (a log position).
    pub durable_lsn: u64,
    /// Segment files in use or ready.
    pub segments: usize,
    /// Bytes of those files.
    pub disk_bytes: u64,
    /// The log position the last checkpoint in the state database covers (0: none yet).
    pub checkpoint_lsn: u64,
}

/// One queue as every segment's preamble restates it.
pub(crate) struct CatalogEntry {
    pub name: Box<[u8]>,
    pub config: Option<Box<[u8]>>,
}

/// The log's write state; lives inside the store's one mutex.
pub(crate) struct Wal {
    pub log: Log,
    /// The segment new records go to (also the last of `log.segments`).
    pub active: Arc<Segment>,
    /// Position of the next record.
    pub next_lsn: u64,
    /// Everything below is written to its file (not necessarily synced).
    pub written: u64,
    /// Everything below is durable.
    pub durable: u64,
    staged: Vec<Chunk>,
    staged_bytes: usize,
    /// What the current leader is writing, readable by others until it is written.
    writing: Option<Arc<Vec<Chunk>>>,
    /// A leader is writing or syncing now.
    pub flushing: bool,
    /// The segment holding written but unsynced bytes.
    unsynced: Option<Arc<Segment>>,
    pub poisoned: Option<String>,
    /// A `Durability::Interval` record wants a sync by then.
    pub sync_due: Option<Instant>,
    /// Staged bytes want to be written by then.
    pub write_due: Option<Instant>,
    /// The background thread was asked to write a full group now.
    write_kicked: bool,
    /// A segment may have become deletable.
    pub maybe_delete: bool,
    /// A deletion waits for a spare segment to hold its anchor (`Wal::append_anchor`).
    pub anchor_waits: bool,
    pub epoch: u32,
    seq: u64,
    /// Cached `preamble().encoded_len()` sum.
    preamble_bytes: usize,
    /// A group is being staged: appended records carry `MORE` (see `begin_group`).
    grouping: bool,
    /// Queue names and encoded configs (if not the default) by id, restated in every
    /// segment's preamble.
    catalog: Vec<CatalogEntry>,
    pub stats: Stats,
}

impl Wal {
    /// A write state continuing at `next_lsn` in the last segment of `log`, everything below
    /// it durable.
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
            written: next_lsn,
            durable: next_lsn,
            staged: Vec::new(),
            staged_bytes: 0,
            writing: None,
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
        let start = self.log.segments.first_key_value().map_or(self.active.base, |(&b, _)| b);
        Body::Anchor { start, checkpoint: self.log.checkpoint }
    }

    /// The catalog as the state database keeps it.
    pub(crate) fn catalog_rows(&self) -> Vec<crate::state::QueueRow> {
        let rows = self.catalog.iter().map(|c| crate::state::QueueRow {
            name: String::from_utf8_lossy(&c.name).into_owned(),
            config: c.config.clone(),
        });
        rows.collect()
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

    /// Whether records of these lengths fit in the active segment and the spares `room` may
    /// use.
    pub(crate) fn fits(&self, lens: &[usize], room: Room) -> bool {
        // Once a settlement rolled into the reserve segment, pushes wait for a new reserve:
        // filling the segment that settlements now write into would leave them no room, and a
        // full store could never be drained.
        if room == Room::Push && self.log.spares.len() < RESERVE_SPARES {
            return false;
        }
        let active = &self.active;
        let pre = self.preamble_len() as u64;
        let (mut pos, mut end) = (self.next_lsn, active.end());
        let usable = match room {
            Room::Push => self.log.spares.len().saturating_sub(RESERVE_SPARES),
            Room::Settle => self.log.spares.len(),
        };
        let mut spares = self.log.spares.iter().take(usable);
        for &len in lens {
            let len = len as u64 + TAIL_RESERVE as u64;
            if pos + len > end {
                let Some(s) = spares.next() else { return false };
                (pos, end) = (first_record(s) + pre, s.end());
                if pos + len > end {
                    return false;
                }
            }
            pos += len - TAIL_RESERVE as u64;
        }
        true
    }

    /// Stages `body` and returns its log position; `None` when it needs a spare segment that
    /// does not exist (callers check `fits` first).
    pub(crate) fn append(&mut self, body: &Body<'_>) -> Option<u64> {
        let active_end = self.active.end();
        if self.next_lsn + (body.encoded_len() + TAIL_RESERVE) as u64 > active_end {
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

    /// Seals the active segment and makes the first spare active, starting with the preamble.
    fn roll(&mut self) -> Option<()> {
        let next = self.log.spares.pop_front()?;
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
        if let Some(info) = self.log.segments.get_mut(&self.active.base) {
            info.preamble_end = end;
        }
    }

    /// Appends bytes written by `write` to the staged chunk of the active segment, starting a
    /// new chunk when there is none (or the last one is sealed).
    fn stage_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let active = self.active.base;
        let len = match self.staged.last_mut() {
            Some(c) if c.seg.base == active && !c.seal => {
                let before = c.bytes.len();
                write(&mut c.bytes);
                c.bytes.len() - before
            }
            _ => {
                let mut bytes = Vec::with_capacity(GROUP_BYTES / 16);
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
        self.next_lsn += len as u64;
        self.staged_bytes += len;
        self.stats.records += 1;
        self.stats.bytes += len as u64;
    }

    /// A copy of the record bytes at `lsn` that are staged or being written, if they are.
    pub(crate) fn copy_unwritten(&self, lsn: u64, len: usize) -> Option<Vec<u8>> {
        let writing = self.writing.iter().flat_map(|w| w.iter());
        writing.chain(self.staged.iter()).find_map(|c| c.copy(lsn, len))
    }
}

impl Shared {
    /// Makes room for records of these lengths, creating spare segments as needed (the lock
    /// is released meanwhile). Fails with `NoSpace` when the disk has no room: nothing is
    /// staged then.
    pub(crate) fn ensure_room(
        &self,
        g: &mut MutexGuard<'_, State>,
        lens: &[usize],
        room: Room,
    ) -> Result<()> {
        loop {
            g.check()?;
            if g.wal.fits(lens, room) {
                return Ok(());
            }
            // A new segment must be able to hold its preamble and each record, or no number
            // of new segments would ever make room.
            let empty = HEADER_LEN + (g.wal.preamble_len() + TAIL_RESERVE) as u64;
            let largest = lens.iter().copied().max().unwrap_or(0) as u64;
            if empty + largest > self.opts.segment_bytes {
                return Err(Error::InvalidOption(format!(
                    "a segment of {} bytes cannot hold the queue catalog ({} bytes) and a record \
                     of {largest} bytes: open the store with larger segments",
                    self.opts.segment_bytes,
                    g.wal.preamble_len()
                )));
            }
            let have = g.wal.log.spares.len();
            MutexGuard::unlocked(g, || self.create_spare(have + 1))?;
        }
    }

    /// Creates one spare segment unless there already are `want` of them.
    pub(crate) fn create_spare(&self, want: usize) -> Result<()> {
        let _one_creator = self.creating.lock();
        let (base, store_id) = {
            let g = self.state.lock();
            if g.wal.log.spares.len() >= want {
                return Ok(());
            }
            if let Some(max) = self.opts.max_disk_bytes {
                if g.wal.log.disk_bytes() + self.opts.segment_bytes > max {
                    return Err(Error::Full { max_disk_bytes: max });
                }
            }
            (g.wal.log.next_spare_base(), g.wal.log.store_id)
        };
        let map = self.map_reads();
        let seg = Segment::create(
            &*self.storage,
            &self.log_dir,
            store_id,
            base,
            self.opts.segment_bytes,
            map,
        )?;
        self.state.lock().wal.log.spares.push_back(Arc::new(seg));
        Ok(())
    }

    /// Applies the durability of a call whose records end at `end`.
    pub(crate) fn commit(
        &self,
        g: &mut MutexGuard<'_, State>,
        end: u64,
        d: Durability,
    ) -> Result<()> {
        match d {
            Durability::Immediate => return self.wait_durable(g, end),
            Durability::Interval(every) => {
                let due = deadline_after(Instant::now(), every);
                if g.wal.sync_due.is_none_or(|t| due < t) {
                    g.wal.sync_due = Some(due);
                    self.bg_cv.notify_one();
                }
            }
            // `Durability` is non-exhaustive only for users; every mode is handled here.
            _ => {
                if g.wal.write_due.is_none() {
                    g.wal.write_due = Some(Instant::now() + WRITE_BEHIND);
                    self.bg_cv.notify_one();
                }
            }
        }
        // A full group is handed to the background thread; a caller writes it itself only when
        // the background falls behind, which bounds the staged bytes.
        if g.wal.staged_bytes >= GROUP_BYTES && !g.wal.write_kicked {
            g.wal.write_kicked = true;
            g.wal.write_due = Some(Instant::now());
            self.bg_cv.notify_one();
        }
        if g.wal.staged_bytes >= 4 * GROUP_BYTES && !g.wal.flushing {
            self.flush(g, false)?;
        }
        Ok(())
    }

    /// Waits until the log is durable up to `target`, leading a group commit when no other
    /// caller is.
    pub(crate) fn wait_durable(&self, g: &mut MutexGuard<'_, State>, target: u64) -> Result<()> {
        loop {
            if let Some(why) = &g.wal.poisoned {
                return Err(Error::Poisoned(why.clone()));
            }
            if g.wal.durable >= target {
                return Ok(());
            }
            if g.wal.flushing {
                self.durable_cv.wait(g);
            } else {
                self.flush(g, true)?;
            }
        }
    }

    /// Waits until the log is written to the OS (not necessarily synced) up to `target`,
    /// leading a write when no other caller is: what a process crash cannot take back.
    pub(crate) fn wait_written(&self, g: &mut MutexGuard<'_, State>, target: u64) -> Result<()> {
        loop {
            if let Some(why) = &g.wal.poisoned {
                return Err(Error::Poisoned(why.clone()));
            }
            if g.wal.written >= target {
                return Ok(());
            }
            if g.wal.flushing {
                self.durable_cv.wait(g);
            } else {
                self.flush(g, false)?;
            }
        }
    }

    /// Waits until no leader is writing and then writes (and with `sync`, syncs) everything
    /// staged.
    pub(crate) fn flush_now(&self, g: &mut MutexGuard<'_, State>, sync: bool) -> Result<()> {
        // A thread that panicked while flushing never ends its flush; it poisoned the store.
        while g.wal.flushing && g.wal.poisoned.is_none() {
            self.durable_cv.wait(g);
        }
        if let Some(why) = &g.wal.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        self.flush(g, sync)
    }

    /// The leader's work: write every staged chunk, sync if asked, publish the new ends.
    /// Must not be called while another flush runs.
    fn flush(&self, g: &mut MutexGuard<'_, State>, sync: bool) -> Result<()> {
        let wal = &mut g.wal;
        let chunks = std::mem::take(&mut wal.staged);
        wal.staged_bytes = 0;
        wal.write_due = None;
        wal.write_kicked = false;
        let end = wal.next_lsn;
        let to_sync = if sync {
            chunks.last().map(|c| Arc::clone(&c.seg)).or_else(|| wal.unsynced.clone())
        } else {
            None
        };
        if sync {
            wal.sync_due = None;
        }
        if chunks.is_empty() && to_sync.is_none() {
            if sync {
                wal.durable = wal.durable.max(end);
            }
            return Ok(());
        }
        let last_seg = chunks.last().map(|c| Arc::clone(&c.seg));
        let chunks = Arc::new(chunks);
        wal.writing = Some(Arc::clone(&chunks));
        wal.flushing = true;
        let mut counts = (0u64, 0u64);
        // A synced seal makes the log durable up to its end (every earlier segment was sealed
        // and synced before it), even if this flush fails later or does not sync at its end.
        let mut sealed_to = 0;
        let done = MutexGuard::unlocked(g, || -> std::io::Result<()> {
            for c in chunks.iter() {
                c.seg.write(c.lsn, &c.bytes)?;
                counts.0 += 1;
                if c.seal {
                    c.seg.sync()?;
                    counts.1 += 1;
                    sealed_to = c.lsn + c.bytes.len() as u64;
                }
            }
            if let Some(seg) = &to_sync {
                failpoint::hit("after-write-before-sync");
                seg.sync()?;
                counts.1 += 1;
                failpoint::hit("after-sync-before-wake");
            }
            Ok(())
        });
        let wal = &mut g.wal;
        wal.flushing = false;
        wal.writing = None;
        wal.stats.writes += counts.0;
        wal.stats.fsyncs += counts.1;
        wal.durable = wal.durable.max(sealed_to);
        // The first write past the last checkpoint: an idle checkpointer starts counting its
        // interval (it sleeps without a deadline while there is nothing new to checkpoint).
        let first_new = wal.written <= wal.log.checkpoint && end > wal.log.checkpoint;
        let result = match done {
            Ok(()) => {
                wal.written = end;
                if sync {
                    wal.durable = end;
                    wal.unsynced = None;
                    if wal.maybe_delete {
                        self.bg_cv.notify_one();
                    }
                } else if last_seg.is_some() {
                    wal.unsynced = last_seg;
                }
                if wal.maybe_delete && !sync {
                    self.bg_cv.notify_one();
                }
                // Enough log since the last checkpoint: the checkpointer takes the next.
                // A segment sealed with a few stragglers: the checkpointer wakes once to learn
                // when to relocate them.
                let stragglers = self.relocates_after_seals() && wal.log.stragglers_news();
                if end.saturating_sub(wal.log.checkpoint) >= self.opts.checkpoint_bytes
                    || (wal.maybe_delete && wal.log.deletable_after_checkpoint())
                    || stragglers
                    || (first_new && self.opts.checkpoint_interval.is_some())
                {
                    self.ck_cv.notify_one();
                }
                Ok(())
            }
            Err(e) => {
                let why = format!("log write or fdatasync failed: {e}");
                wal.poisoned = Some(why.clone());
                // What this process wrote past the durable end may sit in the page cache without
                // ever reaching the disk: a reopen in this process must cut it, not trust it.
                self.storage.set_suspect(&self.log_dir, Some(wal.durable));
                for q in &mut g.queues {
                    q.notify_all();
                }
                self.bg_cv.notify_one();
                self.space_cv.notify_all();
                Err(Error::Poisoned(why))
            }
        };
        self.durable_cv.notify_all();
        result
    }
}

/// The background thread: spare segments, interval syncs, write-behind, segment deletion, and
/// the timers of async pops (see [`wake_async_pops`]). It sleeps until the earliest thing it
/// has to do, or until signalled; never on a fixed tick.
pub(crate) fn background(shared: &Shared) {
    let mut g = shared.state.lock();
    let mut retry_spare_at: Option<Instant> = None;
    let mut checked_delete_at: Option<(u64, u64)> = None;
    // A store-clock reading that stood still through a real sleep (a manual clock): async-pop
    // timers are not armed again until the clock reads otherwise.
    let mut stalled_clock: Option<Instant> = None;
    loop {
        if g.shutdown {
            return;
        }
        shared.panic_point(Thread::Background);
        let now = Instant::now();
        if g.wal.poisoned.is_some() {
            shared.bg_cv.wait(&mut g);
            continue;
        }
        if g.wal.log.spares.len() < READY_SPARES && retry_spare_at.is_none_or(|t| now >= t) {
            let made = MutexGuard::unlocked(&mut g, || shared.create_spare(READY_SPARES));
            // A full disk is reported to pushes that need the segment; retry later.
            // Past the quota, only a deletion can make room: it clears this (below).
            retry_spare_at = match made {
                Ok(()) => {
                    if std::mem::take(&mut g.wal.anchor_waits) {
                        // The deletion put back for want of room for its anchor can go now.
                        g.wal.maybe_delete = true;
                        checked_delete_at = None;
                    }
                    None
                }
                Err(Error::Full { .. }) => Some(now + Duration::from_secs(3600)),
                Err(_) => Some(now + Duration::from_secs(1)),
            };
            continue;
        }
        // Re-checked whenever the durable end or the log moved since the last look.
        let moment = (g.wal.durable, g.wal.stats.records);
        if g.wal.maybe_delete && checked_delete_at != Some(moment) {
            checked_delete_at = Some(moment);
            let durable = g.wal.durable;
            let dead = g.wal.log.take_deletable(durable);
            if dead.is_empty()
                && g.wal.log.deletable_after_sync(durable)
                && g.wal.sync_due.is_none()
            {
                // Settled segments must not wait for a sync that `None` durability never asks
                // for: one sync per segment reclaims them.
                g.wal.sync_due = Some(now);
            }
            let oldest_empty =
                g.wal.log.segments.first_key_value().is_some_and(|(_, s)| s.live == 0);
            g.wal.maybe_delete = oldest_empty && g.wal.log.segments.len() > 1;
            if !dead.is_empty() {
                // A failure poisons the store and is reported to every later call.
                let _ = shared.delete_segments(&mut g, dead);
                retry_spare_at = None;
                // The next oldest may be deletable now, or after one more sync: look again.
                checked_delete_at = None;
                continue;
            }
        }
        let due = match (g.wal.sync_due, g.wal.write_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = due {
            if t <= now {
                if g.wal.flushing {
                    shared.durable_cv.wait(&mut g);
                } else {
                    let sync = g.wal.sync_due.is_some_and(|s| s <= now);
                    // A failure poisons the store and is reported to every later call.
                    let _ = shared.flush(&mut g, sync);
                }
                continue;
            }
        }
        let clock_now = shared.opts.clock.now();
        let timers = wake_async_pops(shared, &mut g, clock_now)
            .filter(|_| stalled_clock != Some(clock_now))
            // At least 1 ms of real time, so that a system clock has always moved on after it.
            .map(|d| deadline_after(Instant::now(), d.max(Duration::from_millis(1))));
        let spare = retry_spare_at.filter(|_| g.wal.log.spares.len() < READY_SPARES);
        let wake = [due, spare, timers].into_iter().flatten().min();
        debug_assert!(wake.is_none_or(|t| t > now), "the background thread would spin");
        match wake {
            Some(t) => {
                let timed_out = shared.bg_cv.wait_until(&mut g, t).timed_out();
                // A store clock that stood still through a real sleep is a manual one: leave
                // its timers until it moves (or something else wakes this thread) instead of
                // sleeping the same interval over and over.
                if timed_out && Some(t) == timers && shared.opts.clock.now() == clock_now {
                    stalled_clock = Some(clock_now);
                }
            }
            None => shared.bg_cv.wait(&mut g),
        }
    }
}

/// The timers of async pops: a delayed message becoming due or a lease running out makes a
/// message ready without any call that would wake the futures waiting for it, so the background
/// thread does. For every queue with pending futures: promote due messages, expire leases, wake
/// the futures if something is ready now, else note when to look again (`waker_timer`). Returns
/// how long (on the store clock, from `now`) until the earliest such look, if any future waits.
///
/// Only queues with wakers count: an idle store, or one whose waiters are all blocking pops
/// (which keep their own timers), never wakes this thread for them.
fn wake_async_pops(shared: &Shared, g: &mut State, now: Instant) -> Option<Duration> {
    let now_ms = crate::jobs::now_ms(shared);
    let mut next: Option<Instant> = None;
    for qs in &mut g.queues {
        if qs.wakers.is_empty() {
            qs.waker_timer = None;
            continue;
        }
        qs.index.expire(now);
        qs.index.promote(now_ms);
        if qs.index.ready_len() > 0 {
            qs.waker_timer = None;
            qs.wake_async();
            continue;
        }
        qs.waker_timer = qs.next_timer(now, now_ms);
        next = [next, qs.waker_timer].into_iter().flatten().min();
    }
    next.map(|t| t.saturating_duration_since(now))
}
