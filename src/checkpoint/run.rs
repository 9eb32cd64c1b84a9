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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::db::{StateDb, FILE as STATE_FILE};
use super::policy::{Checkpointer, Next, Policy};
use super::relocate::{current_row, find, read_payload, stragglers};
use super::rows::{Delta, QueueRow, Row};
use super::snapshot::Snapshot;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::options::DEFAULT_INDEX_WINDOW;
use crate::storage::redb_backend::QuotaRefused;
use crate::store::{Shared, State, Thread};

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

/// Takes a checkpoint now (see the module docs); serialised with other checkpoints.
pub(crate) fn take(shared: &Shared) -> Result<CheckpointReport> {
    let mut ck = shared.checkpointing().lock();
    shared.release_spares(STATE_SLACK)?;
    let db = state_db_locked(shared, &ck)?;
    let mut g = shared.lock();
    g.check()?;
    let c = g.wal().next_lsn();
    let reconcile = ck.reconcile();
    let mut delta = Delta {
        checkpoint: c,
        store_id: g.wal().log().store_id(),
        epoch: g.wal().epoch(),
        queues: g.wal().catalog().map(QueueRow::of).collect(),
        full: reconcile,
        ..Delta::default()
    };
    // Rows of relocated messages: changed ones are rewritten, settled ones deleted.
    let mut updates: Vec<(u64, Option<Row>)> = Vec::new();
    for (&id, row) in g.wal().log().relocated() {
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
        delta.keep = g.wal().log().relocated().keys().copied().collect();
    }
    for (q, qs) in g.queues_mut().iter_mut().enumerate() {
        let q = u32::try_from(q).unwrap_or(u32::MAX);
        let index = qs.index_mut();
        let put = &mut delta.dedup_put;
        let gone = if reconcile {
            index.take_dedup_changes(|_, _, _| {});
            index.all_dedup(|k, id, until| put.push(q, k, id, until));
            Vec::new()
        } else {
            index.take_dedup_changes(|k, id, until| put.push(q, k, id, until))
        };
        delta.dedup_delete.extend(gone.into_iter().map(|k| (q, k)));
    }
    // Under a disk quota the state database may grow only into the room the quota leaves,
    // which this transaction reserves while it runs (a growth past it fails the transaction
    // with `Error::Full`); stragglers take at most a quarter of that room, as redb may
    // double its file to hold them.
    let free =
        shared.opts().max_disk_bytes.map(|max| max.saturating_sub(g.wal().log().disk_bytes()));
    let max_move = free.map_or(RELOCATE_MAX_BYTES, |f| RELOCATE_MAX_BYTES.min(f / 4));
    let moves = stragglers(&mut g, c, shared.opts().segment_bytes, max_move);
    let moving: HashSet<u64> = moves.iter().map(|m| m.id).collect();
    let mut snap = snapshot(&g, c, &moving, shared.opts().index_window);
    if let Some(free) = free {
        let rows = delta.put.len() + delta.delete.len() + moves.len();
        let keys: usize = delta.dedup_put.iter().map(|d| d.1.len() + 64).sum();
        let bytes =
            moves.iter().map(|m| u64::from(m.entry.len)).sum::<u64>() + (rows * 128 + keys) as u64;
        let now = g.wal().log().state_bytes();
        let reserve = free.min(2 * (now + bytes) + STATE_SLACK);
        g.wal_mut().log_mut().set_state_bytes(now + reserve);
        db.set_limit(now + reserve);
    }
    // Sensitive records from here on are past `c`; those before it are what this
    // checkpoint covers, until it commits.
    g.wal_mut().log_mut().begin_checkpoint();
    // Nothing in the state database may cover records a crash could still take back.
    let durable = shared.log().wait_durable(&mut g, c);
    drop(g);
    if let Err(e) = durable {
        // The gathered dedup changes were taken out of the index: write them all next time.
        ck.failed();
        checkpoint_failed(shared, &db);
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
    if let Some(s) = &mut snap {
        // The messages moved are in rows now: not listed, and not live in their segments.
        for m in &moved {
            if let Some(q) = s.queues.get_mut(m.queue as usize) {
                q.messages.retain(|x| x.id != m.id);
            }
            let seg = s.segments.iter_mut().rev().find(|(base, ..)| *base <= m.entry.lsn);
            if let Some((_, live, _)) = seg {
                *live = live.saturating_sub(1);
            }
        }
    }
    let snapshot_low = snap.as_ref().and_then(Snapshot::low);
    delta.snapshot = snap;
    failpoint::hit("checkpoint-before-commit");
    if let Err(e) = db.apply(&delta) {
        ck.failed();
        checkpoint_failed(shared, &db);
        if let (Error::Io(io), Some(max)) = (&e, shared.opts().max_disk_bytes) {
            if QuotaRefused::is(io) {
                // Refused before it could commit, with no failed write: not in doubt.
                state_db_failed(shared, &db, false);
                return Err(Error::Full { max_disk_bytes: max });
            }
        }
        // The transaction may have failed at its fsync: the file is in doubt.
        state_db_failed(shared, &db, true);
        return Err(e);
    }
    failpoint::hit("checkpoint-after-commit");
    ck.committed();
    let state_bytes = state_file_len(shared, &db);
    let mut g = shared.lock();
    let relocated = g.wal_mut().log_mut().relocated_mut();
    for (id, row) in updates {
        match row {
            Some(row) => relocated.insert(id, row),
            None => relocated.remove(&id),
        };
    }
    let relocated_any = !moved.is_empty();
    for m in moved {
        if let Some((q, entry, _)) = find(&g, (m.id, m.queue)) {
            if entry.lsn == m.entry.lsn {
                if let Some(qs) = g.get_queue_mut(q) {
                    qs.index_mut().relocate(m.id);
                }
                g.wal_mut().log_mut().note_relocated(m.entry.lsn);
            }
        }
        // Settled meanwhile or not, it has a row now, which the next checkpoint reconciles.
        g.wal_mut().log_mut().relocated_mut().insert(m.id, m.row);
    }
    db.set_limit(u64::MAX);
    if let Some(b) = state_bytes {
        g.wal_mut().log_mut().set_state_bytes(b);
    }
    // Records staged since `c` about the messages just relocated were not seen as about
    // relocated messages (an ack among them must not go with its segment before the next
    // checkpoint drops the row): with any relocated, everything from `c` on waits for one.
    g.wal_mut().log_mut().checkpoint_committed(c, relocated_any);
    g.wal_mut().log_mut().set_snapshot_low(snapshot_low);
    report.segments_deleted = shared.log().delete_settled(&mut g)?;
    if report.segments_deleted > 0 {
        g.wal_mut().set_maybe_delete(true);
        shared.log().background().notify_all();
    }
    if relocated_any && g.wal().log().deletable_after_checkpoint() {
        // The records past `c` wait for the next checkpoint (see above): without new log
        // none would come due, and a settled segment would stay until the log moves.
        g.set_checkpoint_wanted(true);
        shared.log().checkpointer().notify_one();
    }
    Ok(report)
}

/// Messages a snapshot may list for each message of an index window, and at least (beyond
/// that, a checkpoint keeps no snapshot, and an open replays the log from its anchors).
const SNAPSHOT_PER_WINDOW: usize = 2;
const SNAPSHOT_MIN: usize = 4096;

/// The snapshot of the index at `c`, the end of what is staged (under the store's mutex), or
/// `None` if it would list more messages than the limit (see [`SNAPSHOT_PER_WINDOW`]).
/// `moving`: the messages this checkpoint relocates (listed, so that one whose payload turns
/// out unreadable stays where it is).
fn snapshot(g: &State, c: u64, moving: &HashSet<u64>, window: usize) -> Option<Snapshot> {
    let log = g.wal().log();
    let epoch = g.wal().epoch();
    let window = if window == 0 { DEFAULT_INDEX_WINDOW } else { window };
    let limit = SNAPSHOT_PER_WINDOW.saturating_mul(window).max(SNAPSHOT_MIN);
    let held = |id: u64| moving.contains(&id);
    let mut queues = Vec::with_capacity(g.queues().len());
    let mut listed = 0usize;
    for qs in g.queues() {
        let q = qs.index().snapshot(epoch, &held, limit.saturating_sub(listed))?;
        listed += q.messages.len();
        queues.push(q);
    }
    // Every group of this epoch below `c` is whole (staged under the mutex).
    let mut voids: Vec<(u32, u64)> = log.voids().epochs().filter(|&(e, _)| e != epoch).collect();
    voids.push((epoch, c));
    Some(Snapshot {
        position: c,
        last: g.wal().last_lsn(),
        epoch,
        log_start: log.first_base().unwrap_or(c),
        voids,
        segments: log.segments().map(|s| (s.seg().base(), s.live(), s.pushed())).collect(),
        queues,
    })
}

/// The open state database for reading a relocated payload: opened again if an error
/// closed it (see [`state_db_failed`](Self::state_db_failed)).
pub(crate) fn state_db(shared: &Shared) -> Result<Arc<StateDb>> {
    if let Some(db) = &*shared.db().lock() {
        return Ok(Arc::clone(db));
    }
    let ck = shared.checkpointing().lock();
    state_db_locked(shared, &ck)
}

/// The open state database, opened (created if missing, rebuilt if a failed transaction
/// left it in doubt) if none is; the caller holds `checkpointing`, which serialises this
/// with checkpoints and the close.
fn state_db_locked(shared: &Shared, _ck: &Checkpointer) -> Result<Arc<StateDb>> {
    shared.lock().check()?;
    let slot = shared.db().lock();
    if let Some(db) = &*slot {
        return Ok(Arc::clone(db));
    }
    drop(slot);
    let exists = shared.storage().list(shared.dir())?.iter().any(|n| n == STATE_FILE);
    if let (false, Some(max)) = (exists, shared.opts().max_disk_bytes) {
        shared.release_spares(NEW_STATE_BYTES + STATE_SLACK)?;
        // A new database takes `NEW_STATE_BYTES` at once (set below once it exists).
        let mut g = shared.lock();
        if g.wal().log().disk_bytes() + NEW_STATE_BYTES > max {
            return Err(Error::Full { max_disk_bytes: max });
        }
        g.wal_mut().log_mut().set_state_bytes(NEW_STATE_BYTES);
    }
    let opened = StateDb::open_or_rebuild(shared.storage(), shared.dir());
    let len = opened.as_ref().ok().and_then(|db| state_file_len(shared, db));
    let len = len.or(exists.then(|| shared.lock().wal().log().state_bytes())).unwrap_or(0);
    shared.lock().wal_mut().log_mut().set_state_bytes(len);
    let db = Arc::new(opened?);
    *shared.db().lock() = Some(Arc::clone(&db));
    Ok(db)
}

/// A call on `db` failed. redb latches an I/O error (every later call fails with
/// "previous I/O error" until the database is opened again), so this `db` is closed (once
/// its last reader is done: a latched database writes nothing when it closes) and the next
/// use opens the file again; `wrote`: a write transaction failed, which leaves the file in
/// doubt, so the next use rebuilds it.
pub(crate) fn state_db_failed(shared: &Shared, db: &Arc<StateDb>, wrote: bool) {
    if wrote {
        db.set_in_doubt(shared.storage());
    }
    let mut slot = shared.db().lock();
    if slot.as_ref().is_some_and(|open| Arc::ptr_eq(open, db)) {
        *slot = None;
    }
}

/// The length of the state database's file now, if it can be read.
fn state_file_len(shared: &Shared, db: &StateDb) -> Option<u64> {
    shared.storage().open(db.path(), false).and_then(|f| f.len()).ok()
}

/// A checkpoint did not commit: what it would have covered waits for the next one, and the
/// room it reserved for the state database is given back.
fn checkpoint_failed(shared: &Shared, db: &StateDb) {
    db.set_limit(u64::MAX);
    let len = state_file_len(shared, db);
    let mut g = shared.lock();
    let log = g.wal_mut().log_mut();
    if let Some(len) = len {
        log.set_state_bytes(len);
    }
    log.checkpoint_failed();
}

/// Whether a checkpoint is due for what the log holds (see `Policy::due_by_log`).
#[cfg(feature = "testing")]
pub(crate) fn due_by_log(shared: &Shared, g: &State) -> bool {
    Policy { wal: g.wal(), wanted: g.checkpoint_wanted(), opts: shared.opts() }.due_by_log()
}

/// The checkpointer thread: takes a checkpoint whenever one is due, until shutdown, and
/// otherwise sleeps (see [`Policy::next`]).
pub(crate) fn run(shared: &Shared) {
    let mut retry_at: Option<Instant> = None;
    let wake = shared.log().checkpointer();
    loop {
        // Read after every wake: `Wharf::checkpoint` moves it too.
        let last = shared.checkpointing().lock().last();
        let mut g = shared.lock();
        if g.shutting_down() {
            return;
        }
        shared.panic_point(Thread::Checkpointer);
        let view = Policy { wal: g.wal(), wanted: g.checkpoint_wanted(), opts: shared.opts() };
        match view.next(last, retry_at, Instant::now()) {
            Next::Checkpoint => {
                g.set_checkpoint_wanted(false);
                drop(g);
                retry_at = match take(shared) {
                    Ok(_) => None,
                    // Retried later; a poisoned or closed store stops asking.
                    Err(_) => Some(Instant::now() + Duration::from_secs(1)),
                };
            }
            Next::Sleep(Some(t)) => {
                wake.wait_until(&mut g, t);
            }
            Next::Sleep(None) => wake.wait(&mut g),
        }
    }
}
