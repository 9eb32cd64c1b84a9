//! The checkpointer: writes what the log says into the state database up to a position `C`,
//! relocates stragglers out of old segments, and then deletes the segments the checkpoint
//! covers.
//!
//! A checkpoint is taken in three steps. (1) Under the store's mutex: `C` is the end of
//! everything staged, and the changes since the last checkpoint are gathered from the index
//! (the catalog, dedup keys, the rows of relocated messages that changed or were settled, and
//! the stragglers to relocate). (2) Without the mutex: the log is made durable up to `C`, the
//! stragglers' payloads are read from their segments, and one durable redb transaction writes
//! it all with `C`. (3) Under the mutex again: the relocated messages' index entries point at
//! the state database, and segments that are now covered and settled are deleted.
//!
//! Invariants: `C` is durable in the log before the transaction commits, so the state
//! database never covers records a crash could take back; a relocated message's row holds its
//! state as of `C`, so recovery skips its records below `C` and replays those at or after; a
//! failed transaction makes the next one reconcile the whole database with memory (it may
//! have committed anyway).

use std::sync::Arc;
use std::time::Instant;

use crate::clock::deadline_after;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::index::{Entry, RELOCATED};
use crate::record::{self, Body};
use crate::segment::Segment;
use crate::state::{self, Delta, Row, StateDb};
use crate::storage::redb_backend::QuotaRefused;
use crate::store::{Shared, State, Thread};

/// A segment with more unsettled messages than this is left in the log (it is not a few
/// stragglers but a backlog, which the log holds better than the state database).
pub(crate) const RELOCATE_MAX_LIVE: u64 = 4096;
/// Relocate a segment's stragglers only if at most this fraction of its messages is left
/// (and their payloads take at most this fraction of the segment).
pub(crate) const RELOCATE_MAX_SHARE: u64 = 8;
/// At most this many payload bytes are relocated by one checkpoint.
const RELOCATE_MAX_BYTES: u64 = 64 << 20;
/// Bytes of a new state database (redb 4.6 makes its file this long at once): under a disk
/// quota it is made only if they fit.
const NEW_STATE_BYTES: u64 = 72 << 10;
/// Growth room a checkpoint reserves under a disk quota besides twice what it writes (redb grows
/// its file by regions): one 64 KiB region.
const STATE_SLACK: u64 = 64 << 10;

/// What one checkpoint did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointReport {
    /// The log position the state database now covers.
    pub position: u64,
    /// Messages whose payloads were moved out of old segments into the state database.
    pub relocated: u64,
    /// Their payload bytes.
    pub relocated_bytes: u64,
    /// Segment files deleted after the checkpoint.
    pub segments_deleted: usize,
}

/// The checkpointer's bookkeeping, guarded by `Shared::checkpointing` (taken before the
/// store's mutex).
#[derive(Debug)]
pub(crate) struct Checkpointer {
    /// When the last checkpoint was taken (or the store opened).
    pub last: Instant,
    /// The last transaction failed: the next one rewrites the state database from memory.
    pub reconcile: bool,
}

/// A straggler chosen for relocation.
struct Move {
    id: u64,
    queue: u32,
    entry: Entry,
    row: Row,
    seg: Arc<Segment>,
}

impl Shared {
    /// Takes a checkpoint now (see the module docs); serialised with other checkpoints.
    pub(crate) fn checkpoint(&self) -> Result<CheckpointReport> {
        let mut ck = self.checkpointing.lock();
        self.release_spares(STATE_SLACK)?;
        let db = self.state_db_locked(&ck)?;
        let mut g = self.state.lock();
        g.check()?;
        let c = g.wal.next_lsn;
        let reconcile = ck.reconcile;
        let mut delta = Delta {
            checkpoint: c,
            store_id: g.wal.log.store_id,
            epoch: g.wal.epoch,
            queues: g.wal.catalog_rows(),
            full: reconcile,
            ..Delta::default()
        };
        // Rows of relocated messages: changed ones are rewritten, settled ones deleted.
        let mut updates: Vec<(u64, Option<Row>)> = Vec::new();
        for (&id, row) in &g.wal.log.relocated {
            match current_row(&g, id, row) {
                Some(now) if now == *row && !reconcile => {}
                Some(now) => {
                    delta.put.push((id, now.clone(), None));
                    updates.push((id, Some(now)));
                }
                None => {
                    delta.delete.push(id);
                    updates.push((id, None));
                }
            }
        }
        if reconcile {
            delta.keep = g.wal.log.relocated.keys().copied().collect();
        }
        for (q, qs) in g.queues.iter_mut().enumerate() {
            let q = u32::try_from(q).unwrap_or(u32::MAX);
            let (put, gone) = if reconcile {
                qs.index.take_dedup_changes();
                (qs.index.all_dedup(), Vec::new())
            } else {
                qs.index.take_dedup_changes()
            };
            delta.dedup_put.extend(put.into_iter().map(|(k, id, until)| (q, k, id, until)));
            delta.dedup_delete.extend(gone.into_iter().map(|k| (q, k)));
        }
        // Under a disk quota the state database may grow only into the room the quota leaves,
        // which this transaction reserves while it runs (a growth past it fails the transaction
        // with `Error::Full`); stragglers take at most a quarter of that room, as redb may
        // double its file to hold them.
        let free = self.opts.max_disk_bytes.map(|max| max.saturating_sub(g.wal.log.disk_bytes()));
        let max_move = free.map_or(RELOCATE_MAX_BYTES, |f| RELOCATE_MAX_BYTES.min(f / 4));
        let moves = stragglers(&g, c, self.opts.segment_bytes, max_move);
        if let Some(free) = free {
            let rows = delta.put.len() + delta.delete.len() + moves.len();
            let keys: usize = delta.dedup_put.iter().map(|d| d.1.len() + 64).sum();
            let bytes = moves.iter().map(|m| u64::from(m.entry.len)).sum::<u64>()
                + (rows * 128 + keys) as u64;
            let now = g.wal.log.state_bytes;
            let reserve = free.min(2 * (now + bytes) + STATE_SLACK);
            g.wal.log.state_bytes = now + reserve;
            db.set_limit(now + reserve);
        }
        // Sensitive records from here on are past `c`; those before it are what this
        // checkpoint covers, until it commits.
        let log = &mut g.wal.log;
        log.inflight_sensitive = log.first_sensitive;
        log.first_sensitive = u64::MAX;
        // Nothing in the state database may cover records a crash could still take back.
        let durable = self.wait_durable(&mut g, c);
        drop(g);
        if let Err(e) = durable {
            // The gathered dedup changes were taken out of the index: write them all next time.
            ck.reconcile = true;
            self.checkpoint_failed(&db);
            return Err(e);
        }
        let mut report = CheckpointReport { position: c, ..CheckpointReport::default() };
        let mut moved = Vec::with_capacity(moves.len());
        for mut m in moves {
            // A payload that fails its checksum stays where it is (its pop reports the damage).
            if let Some((payload, pushed)) = read_payload(&m) {
                report.relocated += 1;
                report.relocated_bytes += payload.len() as u64;
                m.row.crc = crc32c::crc32c(&payload);
                m.row.pushed = pushed;
                delta.put.push((m.id, m.row.clone(), Some(payload)));
                moved.push(m);
            }
        }
        failpoint::hit("checkpoint-before-commit");
        if let Err(e) = db.apply(&delta) {
            ck.reconcile = true;
            self.checkpoint_failed(&db);
            if let (Error::Io(io), Some(max)) = (&e, self.opts.max_disk_bytes) {
                if QuotaRefused::is(io) {
                    // Refused before it could commit, with no failed write: not in doubt.
                    self.state_db_failed(&db, false);
                    return Err(Error::Full { max_disk_bytes: max });
                }
            }
            // The transaction may have failed at its fsync: the file is in doubt.
            self.state_db_failed(&db, true);
            return Err(e);
        }
        failpoint::hit("checkpoint-after-commit");
        ck.reconcile = false;
        ck.last = Instant::now();
        let state_bytes = self.state_file_len(&db);
        let mut g = self.state.lock();
        for (id, row) in updates {
            match row {
                Some(row) => g.wal.log.relocated.insert(id, row),
                None => g.wal.log.relocated.remove(&id),
            };
        }
        let relocated_any = !moved.is_empty();
        for m in moved {
            if let Some((q, entry, _)) = find(&g, (m.id, m.queue)) {
                if entry.lsn == m.entry.lsn {
                    if let Some(qs) = g.queues.get_mut(q as usize) {
                        qs.index.relocate(m.id);
                    }
                    g.wal.log.note_relocated(m.entry.lsn);
                }
            }
            // Settled meanwhile or not, it has a row now, which the next checkpoint reconciles.
            g.wal.log.relocated.insert(m.id, m.row);
        }
        db.set_limit(u64::MAX);
        if let Some(b) = state_bytes {
            g.wal.log.state_bytes = b;
        }
        g.wal.log.checkpoint = g.wal.log.checkpoint.max(c);
        g.wal.log.inflight_sensitive = u64::MAX;
        if relocated_any {
            // Records staged since `c` about the messages just relocated were not seen as
            // about relocated messages (an ack among them must not go with its segment before
            // the next checkpoint drops the row): everything from `c` on waits for one.
            g.wal.log.first_sensitive = g.wal.log.first_sensitive.min(c);
        }
        let durable = g.wal.durable;
        let dead = g.wal.log.take_deletable(durable);
        report.segments_deleted = self.delete_segments(&mut g, dead)?;
        if report.segments_deleted > 0 {
            g.wal.maybe_delete = true;
            self.bg_cv.notify_all();
        }
        if relocated_any && g.wal.log.deletable_after_checkpoint() {
            // The records past `c` wait for the next checkpoint (see above): without new log
            // none would come due, and a settled segment would stay until the log moves.
            g.checkpoint_wanted = true;
            self.ck_cv.notify_one();
        }
        Ok(report)
    }

    /// When the stragglers of the segment sealed last are due for relocation
    /// (`Log::stragglers_due_at`), if checkpoints are asked for at least once a segment: the
    /// segment then goes without waiting for another segment's worth of log or the interval.
    pub(crate) fn stragglers_due_at(&self, g: &State) -> Option<Instant> {
        self.relocates_after_seals().then(|| g.wal.log.stragglers_due_at()).flatten()
    }

    /// Whether checkpoints are asked for at least once a segment, which makes a sealed
    /// segment's stragglers due soon after the seal.
    pub(crate) fn relocates_after_seals(&self) -> bool {
        self.opts.checkpoint_bytes <= self.opts.segment_bytes
    }

    /// The open state database for reading a relocated payload: opened again if an error
    /// closed it (see [`state_db_failed`](Self::state_db_failed)).
    pub(crate) fn state_db(&self) -> Result<Arc<StateDb>> {
        if let Some(db) = &*self.db.lock() {
            return Ok(Arc::clone(db));
        }
        let ck = self.checkpointing.lock();
        self.state_db_locked(&ck)
    }

    /// The open state database, opened (created if missing, rebuilt if a failed transaction
    /// left it in doubt) if none is; the caller holds `checkpointing`, which serialises this
    /// with checkpoints and the close.
    fn state_db_locked(&self, _ck: &Checkpointer) -> Result<Arc<StateDb>> {
        self.state.lock().check()?;
        let slot = self.db.lock();
        if let Some(db) = &*slot {
            return Ok(Arc::clone(db));
        }
        drop(slot);
        let exists = self.storage.list(&self.dir)?.iter().any(|n| n == state::FILE);
        if let (false, Some(max)) = (exists, self.opts.max_disk_bytes) {
            self.release_spares(NEW_STATE_BYTES + STATE_SLACK)?;
            // A new database takes `NEW_STATE_BYTES` at once (set below once it exists).
            let mut g = self.state.lock();
            if g.wal.log.disk_bytes() + NEW_STATE_BYTES > max {
                return Err(Error::Full { max_disk_bytes: max });
            }
            g.wal.log.state_bytes = NEW_STATE_BYTES;
        }
        let opened = StateDb::open_or_rebuild(&*self.storage, &self.dir);
        let len = opened.as_ref().ok().and_then(|db| self.state_file_len(db));
        let len = len.or(exists.then(|| self.state.lock().wal.log.state_bytes)).unwrap_or(0);
        self.state.lock().wal.log.state_bytes = len;
        let db = Arc::new(opened?);
        *self.db.lock() = Some(Arc::clone(&db));
        Ok(db)
    }

    /// A call on `db` failed. redb latches an I/O error (every later call fails with
    /// "previous I/O error" until the database is opened again), so this `db` is closed (once
    /// its last reader is done: a latched database writes nothing when it closes) and the next
    /// use opens the file again; `wrote`: a write transaction failed, which leaves the file in
    /// doubt, so the next use rebuilds it.
    pub(crate) fn state_db_failed(&self, db: &Arc<StateDb>, wrote: bool) {
        if wrote {
            db.set_in_doubt(&*self.storage);
        }
        let mut slot = self.db.lock();
        if slot.as_ref().is_some_and(|open| Arc::ptr_eq(open, db)) {
            *slot = None;
        }
    }

    /// Under a disk quota, when a settled segment waits for a checkpoint to go and the quota
    /// leaves less than `need` bytes, deletes spare segments (empty files made ahead of need,
    /// which the background thread makes again once there is room), the last first, until it
    /// does. The checkpoint comes first: without it those segments never go, and a full store
    /// would stay full for good. A failed removal poisons the store, as a failed deletion does.
    fn release_spares(&self, need: u64) -> Result<()> {
        let Some(max) = self.opts.max_disk_bytes else { return Ok(()) };
        // No spare is being made meanwhile: it would be based after the one taken away here.
        let _no_spare_made = self.creating.lock();
        loop {
            let spare = {
                let mut g = self.state.lock();
                g.check()?;
                let log = &mut g.wal.log;
                if log.disk_bytes() + need <= max || !log.deletable_after_checkpoint() {
                    return Ok(());
                }
                match log.spares.pop_back() {
                    Some(spare) => spare,
                    None => return Ok(()),
                }
            };
            let path = spare.path.clone();
            drop(spare);
            let removed =
                self.storage.remove(&path).and_then(|()| self.storage.sync_dir(&self.log_dir));
            if let Err(e) = removed {
                let why = format!("deleting a spare segment failed: {e}");
                let mut g = self.state.lock();
                g.wal.poisoned = Some(why.clone());
                self.durable_cv.notify_all();
                self.space_cv.notify_all();
                return Err(Error::Poisoned(why));
            }
        }
    }

    /// The length of the state database's file now, if it can be read.
    fn state_file_len(&self, db: &StateDb) -> Option<u64> {
        self.storage.open(db.path(), false).and_then(|f| f.len()).ok()
    }

    /// A checkpoint did not commit: what it would have covered waits for the next one, and the
    /// room it reserved for the state database is given back.
    fn checkpoint_failed(&self, db: &StateDb) {
        db.set_limit(u64::MAX);
        let len = self.state_file_len(db);
        let mut g = self.state.lock();
        let log = &mut g.wal.log;
        if let Some(len) = len {
            log.state_bytes = len;
        }
        log.first_sensitive = log.first_sensitive.min(log.inflight_sensitive);
        log.inflight_sensitive = u64::MAX;
    }

    /// Whether the checkpointer should run now: asked to, enough log since the last one, its
    /// interval passed with something new, or a settled segment waits only for it.
    pub(crate) fn checkpoint_due(&self, g: &State, last: Instant, now: Instant) -> bool {
        self.checkpoint_due_by_log(g)
            || self.stragglers_due_at(g).is_some_and(|t| now >= t)
            || (g.wal.next_lsn > g.wal.log.checkpoint
                && self.opts.checkpoint_interval.is_some_and(|i| now >= deadline_after(last, i)))
    }

    /// Whether a checkpoint is due for what the log holds (not for the time since the last
    /// one): asked for, enough log since the last, or a settled segment waits for one. The
    /// deterministic tests' `maintain` goes by this alone.
    pub(crate) fn checkpoint_due_by_log(&self, g: &State) -> bool {
        let since = g.wal.next_lsn.saturating_sub(g.wal.log.checkpoint);
        g.checkpoint_wanted
            || (since > 0
                && (since >= self.opts.checkpoint_bytes || g.wal.log.deletable_after_checkpoint()))
    }
}

/// What the checkpointer thread does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Checkpoint,
    /// Sleep until signalled, or until this time (always in the future).
    Sleep(Option<Instant>),
}

impl Shared {
    /// What the checkpointer thread does next at `now`, `last` being the time of the last
    /// checkpoint and `retry_at` the end of the back-off after a failed one. It sleeps until
    /// the next trigger it can act on: a poisoned store takes no checkpoint (only the close
    /// wakes it), and a back-off is not cut short by triggers that came due meanwhile. A
    /// trigger it cannot act on never sets its deadline: one in the past would make it spin.
    fn checkpointer_next(
        &self,
        g: &State,
        last: Instant,
        retry_at: Option<Instant>,
        now: Instant,
    ) -> Next {
        if g.wal.poisoned.is_some() {
            return Next::Sleep(None);
        }
        if let Some(t) = retry_at.filter(|&t| now < t) {
            return Next::Sleep(Some(t));
        }
        if self.checkpoint_due(g, last, now) {
            return Next::Checkpoint;
        }
        // Not due, so the time triggers lie ahead. The interval counts only once the log holds
        // something new (the flush that first writes past the checkpoint wakes this thread).
        let something_new = g.wal.next_lsn > g.wal.log.checkpoint;
        let interval = self
            .opts
            .checkpoint_interval
            .filter(|_| something_new)
            .map(|i| deadline_after(last, i));
        let wake = [interval, self.stragglers_due_at(g)].into_iter().flatten().min();
        debug_assert!(wake.is_none_or(|t| t > now), "the checkpointer would spin");
        Next::Sleep(wake)
    }
}

/// The checkpointer thread: takes a checkpoint whenever one is due, until shutdown, and
/// otherwise sleeps (see [`Shared::checkpointer_next`]).
pub(crate) fn run(shared: &Shared) {
    let mut retry_at: Option<Instant> = None;
    loop {
        // Read after every wake: `Wharf::checkpoint` moves it too.
        let last = shared.checkpointing.lock().last;
        let mut g = shared.state.lock();
        if g.shutdown {
            return;
        }
        shared.panic_point(Thread::Checkpointer);
        match shared.checkpointer_next(&g, last, retry_at, Instant::now()) {
            Next::Checkpoint => {
                g.checkpoint_wanted = false;
                drop(g);
                retry_at = match shared.checkpoint() {
                    Ok(_) => None,
                    // Retried later; a poisoned or closed store stops asking.
                    Err(_) => Some(Instant::now() + std::time::Duration::from_secs(1)),
                };
            }
            Next::Sleep(Some(t)) => {
                shared.ck_cv.wait_until(&mut g, t);
            }
            Next::Sleep(None) => shared.ck_cv.wait(&mut g),
        }
    }
}

/// The queue holding message `id` (trying queue `hint` first), its entry and due time.
fn find(g: &State, (id, hint): (u64, u32)) -> Option<(u32, Entry, u64)> {
    if let Some((e, due)) = g.queues.get(hint as usize).and_then(|q| q.index.get(id)) {
        return Some((hint, e, due));
    }
    g.queues.iter().enumerate().find_map(|(q, qs)| {
        let (e, due) = qs.index.get(id)?;
        Some((u32::try_from(q).ok()?, e, due))
    })
}

/// The row of a message as the index holds it now (`old` gives its payload's length and CRC),
/// or `None` if it was settled.
fn current_row(g: &State, id: u64, old: &Row) -> Option<Row> {
    let (q, entry, due) = find(g, (id, old.queue))?;
    Some(Row { pushed: old.pushed, ..row_of(g, q, id, &entry, due, old.len, old.crc) })
}

fn row_of(g: &State, q: u32, id: u64, entry: &Entry, due: u64, len: u32, crc: u32) -> Row {
    let note = g.queues.get(q as usize).and_then(|qs| qs.index.note(id));
    Row {
        queue: q,
        attempts: entry.attempts,
        priority: entry.priority,
        expires: entry.expires,
        due,
        origin: note.and_then(|n| n.origin),
        reason: note.map_or(0, |n| n.reason),
        error: note.map_or_else(Default::default, |n| n.error.clone()),
        len,
        crc,
        leased: if g.wal.log.delivered.contains(&id) { g.wal.epoch } else { 0 },
        // Filled in from the push record when it is read.
        pushed: 0,
    }
}

/// The stragglers to relocate so that old segments covered by a checkpoint at `c` can go:
/// walking from the oldest segment, those of each segment with only a few unsettled messages,
/// until one holds a backlog.
fn stragglers(g: &State, c: u64, segment_bytes: u64, max_bytes: u64) -> Vec<Move> {
    let log = &g.wal.log;
    let mut segs: Vec<(u64, Arc<Segment>)> = Vec::new();
    let count = log.segments.len();
    for (i, info) in log.segments.values().enumerate() {
        if i + 1 == count || info.seg.end() > c {
            break;
        }
        if info.live == 0 {
            continue;
        }
        if info.live > RELOCATE_MAX_LIVE || info.live * RELOCATE_MAX_SHARE > info.pushed {
            break;
        }
        segs.push((info.seg.base, Arc::clone(&info.seg)));
    }
    let (Some((from, _)), Some((_, last))) = (segs.first(), segs.last()) else {
        return Vec::new();
    };
    let (from, to) = (*from, last.end());
    let mut found: Vec<(u64, u32, Entry, u64)> = Vec::new();
    for (q, qs) in g.queues.iter().enumerate() {
        let q = u32::try_from(q).unwrap_or(u32::MAX);
        qs.index.each_in(from, to, |id, e, due| found.push((id, q, e, due)));
    }
    found.sort_unstable_by_key(|&(_, _, e, _)| e.lsn);
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut it = found.into_iter().peekable();
    for (base, seg) in segs {
        let mut these = Vec::new();
        let mut bytes = 0u64;
        while let Some((id, q, e, due)) = it.next_if(|&(_, _, e, _)| e.lsn < seg.end()) {
            if e.lsn < base {
                continue;
            }
            bytes += u64::from(e.len);
            these.push((id, q, e, due));
        }
        if bytes > segment_bytes / RELOCATE_MAX_SHARE || total + bytes > max_bytes {
            break;
        }
        total += bytes;
        for (id, q, e, due) in these {
            // The CRC is filled in once the payload is read.
            let row = row_of(g, q, id, &e, due, e.len, 0);
            out.push(Move { id, queue: q, entry: e, row, seg: Arc::clone(&seg) });
        }
    }
    out
}

/// Reads and checks a straggler's push record; returns its payload and push time.
fn read_payload(m: &Move) -> Option<(Vec<u8>, u64)> {
    if m.entry.lsn == RELOCATED {
        return None;
    }
    let len = m.entry.record_len();
    let start = usize::try_from(m.entry.lsn.checked_sub(m.seg.base)?).ok()?;
    let owned;
    let bytes = match m.seg.mapped().and_then(|b| b.get(start..start.checked_add(len)?)) {
        Some(b) => b,
        None => {
            owned = m.seg.read(m.entry.lsn, len).ok()?;
            &owned[..]
        }
    };
    let rec = record::decode(bytes, m.entry.lsn).ok()?;
    match rec.body {
        Body::Push { id, payload, .. } if id == m.id => Some((payload.to_vec(), 0)),
        Body::PushEx { id, payload, pushed, .. } if id == m.id => Some((payload.to_vec(), pushed)),
        _ => None,
    }
}
