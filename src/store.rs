//! The core of an open store: one mutex over the write state and the queue indexes, the
//! condition variables, the directory lock and the background thread.
//!
//! Invariants: the mutex guards in-memory state only and is released for every I/O call
//! (`MutexGuard::unlocked`); the directory lock is held for the whole life of the store.
//! Lock order: `Shared::creating` before `Shared::state`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
#[cfg(feature = "testing")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::checkpoint::{self, Checkpointer};
use crate::clock::deadline_after;
use crate::commit::{self, CatalogEntry, Room, Wal, MAX_EPOCH};
use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::index::QueueIndex;
use crate::log::{first_record, SegInfo};
use crate::mark::{self, Mark};
use crate::options::{Options, ReadMode};
use crate::record::Body;
use crate::recovery::{self, RecoveryReport};
use crate::salvage;
use crate::segment::Segment;
use crate::state::{self, StateDb};
use crate::storage::{LockGuard, Storage};

/// Counters of one queue since the store was opened.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub processed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    /// Wake-ups of blocked pops on this queue (for the no-polling test and operators).
    pub wakeups: u64,
}

/// One queue's in-memory state.
pub(crate) struct QueueState {
    pub name: Arc<str>,
    pub index: QueueIndex,
    pub config: QueueConfig,
    pub counters: Counters,
    /// Waiters of `pop` on this queue.
    pub cv: Arc<Condvar>,
    /// Wakers of `pop_async` futures waiting on this queue: one per pending future, keyed by
    /// the future's own number, so that a future re-polled by another task replaces its entry
    /// and a dropped future removes exactly its own.
    pub wakers: Vec<(u64, Waker)>,
    /// The store-clock time at which the background thread will next look at this queue for
    /// its wakers (a delayed message due, a lease expiring); `None` if it will not. A future
    /// that needs an earlier look sets it and wakes the background thread.
    pub waker_timer: Option<Instant>,
}

impl QueueState {
    pub(crate) fn new(name: Arc<str>, index: QueueIndex, config: QueueConfig) -> QueueState {
        QueueState {
            name,
            index,
            config,
            counters: Counters::default(),
            cv: Arc::new(Condvar::new()),
            wakers: Vec::new(),
            waker_timer: None,
        }
    }

    /// Wakes one blocked pop and every async one (a woken future that finds nothing re-arms).
    pub(crate) fn notify_one(&mut self) {
        self.cv.notify_one();
        self.wake_async();
    }

    /// Wakes every blocked and async pop (their wait times must be recomputed).
    pub(crate) fn notify_all(&mut self) {
        self.cv.notify_all();
        self.wake_async();
    }

    /// Wakes every async pop of this queue. All of them, not one: a woken future may be
    /// dropped before it is polled again, and the message must not wait for it.
    pub(crate) fn wake_async(&mut self) {
        for (_, w) in self.wakers.drain(..) {
            w.wake();
        }
    }

    /// When, on the store clock, a message of this queue may next become ready without a log
    /// record saying so: the earliest lease deadline or delayed message's due time (`now` and
    /// `now_ms` are the same moment on the store's two clocks).
    pub(crate) fn next_timer(&mut self, now: Instant, now_ms: u64) -> Option<Instant> {
        let due = self.index.next_due().map(|due| {
            deadline_after(now, Duration::from_millis(due.saturating_sub(now_ms).max(1)))
        });
        [self.index.next_deadline(), due].into_iter().flatten().min()
    }
}

/// Everything guarded by the store's mutex.
pub(crate) struct State {
    pub wal: Wal,
    pub queues: Vec<QueueState>,
    pub names: HashMap<Arc<str>, u32>,
    pub closed: bool,
    /// The durable mark last written (`log/mark`), if the store has one.
    pub mark: Option<Mark>,
    /// Tells the background thread to stop.
    pub shutdown: bool,
    /// Something (a push waiting for space) wants a checkpoint now.
    pub checkpoint_wanted: bool,
}

impl State {
    /// Fails when the store is closed or poisoned.
    pub(crate) fn check(&self) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        if let Some(why) = &self.wal.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        Ok(())
    }
}

/// State shared by every handle of one open store and by its background thread.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Signalled when a flush ends (callers waiting for durability, or to lead the next one).
    pub durable_cv: Condvar,
    /// Wakes the background thread.
    pub bg_cv: Condvar,
    /// Serialises segment creation.
    pub creating: Mutex<()>,
    /// Signalled when segments were deleted (pushes waiting for space).
    pub space_cv: Condvar,
    pub storage: Arc<dyn Storage>,
    /// The state database (`state.redb`), made by the first checkpoint; closed with the store.
    pub db: Mutex<Option<Arc<StateDb>>>,
    /// Serialises checkpoints; taken before `state`.
    pub checkpointing: Mutex<Checkpointer>,
    /// Wakes the checkpointer thread.
    pub ck_cv: Condvar,
    pub opts: Options,
    pub dir: PathBuf,
    pub log_dir: PathBuf,
    pub report: RecoveryReport,
    /// Panics armed by `testing::panic_in`, one per [`Thread`].
    #[cfg(feature = "testing")]
    pub panic_armed: [AtomicBool; 2],
}

/// A thread of an open store, as the error its panic leaves names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Thread {
    /// The background thread: write-behind, interval syncs, spare segments, segment deletion,
    /// the timers of async pops.
    Background,
    /// The checkpointer thread: writes `state.redb` and relocates stragglers.
    Checkpointer,
}

impl Thread {
    fn name(self) -> &'static str {
        match self {
            Thread::Background => "background",
            Thread::Checkpointer => "checkpointer",
        }
    }
}

/// Runs the body of the store's `thread`: a panic in it poisons the store at once, naming the
/// thread, and wakes every waiter, instead of going unnoticed until the close.
fn guarded(shared: &Shared, thread: Thread, body: impl FnOnce()) {
    let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(body)) else { return };
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    // Unwinding dropped every guard the thread held: the mutex is free to take.
    let mut g = shared.state.lock();
    shared.poison(&mut g, format!("the {} thread panicked: {what}", thread.name()));
}

impl Shared {
    /// Poisons the store (the first cause stands) and wakes every waiter, so that each fails
    /// with [`Error::Poisoned`] instead of waiting for what will never come.
    pub(crate) fn poison(&self, g: &mut State, why: String) {
        g.wal.poisoned.get_or_insert(why);
        for q in &mut g.queues {
            q.notify_all();
        }
        self.durable_cv.notify_all();
        self.space_cv.notify_all();
        self.bg_cv.notify_all();
        self.ck_cv.notify_all();
    }

    /// Panics here if a test armed a panic in `thread` (`testing::panic_in`).
    pub(crate) fn panic_point(&self, thread: Thread) {
        #[cfg(feature = "testing")]
        if self.panic_armed[thread as usize].swap(false, Ordering::SeqCst) {
            panic!("injected by wharf::testing::panic_in");
        }
        #[cfg(not(feature = "testing"))]
        let _ = thread;
    }

    pub(crate) fn map_reads(&self) -> bool {
        self.opts.read_mode == ReadMode::Map
    }
}

/// An open store: owns the directory lock and the background thread. Dropping the last
/// reference closes it (flushing and syncing whatever is staged, best effort).
pub(crate) struct Core {
    pub shared: Arc<Shared>,
    bg: Mutex<Option<JoinHandle<()>>>,
    ck: Mutex<Option<JoinHandle<()>>>,
    /// The directory lock, released by `close`.
    lock: Mutex<Option<LockGuard>>,
}

impl Core {
    /// Opens the store in `dir` on `storage`: lock, recover, start a new id epoch durably.
    pub(crate) fn open(storage: Arc<dyn Storage>, dir: &Path, opts: Options) -> Result<Core> {
        storage.create_dir_all(dir)?;
        let lock = take_lock(&*storage, dir)?;
        // A salvage interrupted after its commit point is finished before anything reads.
        let mut salvaged = salvage::finish_interrupted(&*storage, dir)?;
        let log_dir = dir.join("log");
        storage.create_dir_all(&log_dir)?;
        storage.sync_dir(dir)?;
        let map = opts.read_mode == ReadMode::Map;
        // The state database is opened if it exists; the first checkpoint makes it.
        let state_path = dir.join(state::FILE);
        let recover = || -> Result<_> {
            let db = StateDb::open_existing(&*storage, dir)?;
            let loaded = db.as_ref().map(StateDb::load).transpose()?.unwrap_or_default();
            let rec = recovery::recover(&*storage, &log_dir, map, &loaded, &state_path)?;
            Ok((db, rec))
        };
        let (db, mut rec) = match recover() {
            Err(e) if opts.salvage && salvage::salvageable(&e) => {
                salvaged = Some(salvage::in_place(&*storage, dir, Some(opts.segment_bytes))?);
                recover()?
            }
            r => r?,
        };
        rec.report.salvage = salvaged;
        let epoch = rec
            .max_epoch
            .checked_add(1)
            .filter(|e| *e <= MAX_EPOCH)
            .ok_or_else(|| Error::Internal("the store has used up its id epochs".into()))?;
        let mut log = rec.log;
        let (active, next_lsn) = match rec.active {
            Some((seg, at)) => (seg, at),
            None => {
                let base = log.segments.last_key_value().map_or(0, |(_, s)| s.seg.end());
                let seg = Segment::create(
                    &*storage,
                    &log_dir,
                    log.store_id,
                    base,
                    opts.segment_bytes,
                    map,
                )?;
                let seg = Arc::new(seg);
                log.activate(Arc::clone(&seg), 0);
                let first = first_record(&seg);
                (seg, first)
            }
        };
        let fresh = next_lsn == first_record(&active);
        let catalog = rec
            .queues
            .iter()
            .zip(&rec.configs)
            .map(|((n, _), c)| CatalogEntry {
                name: n.as_bytes().into(),
                config: c.as_ref().map(|c| c.encode().into()),
            })
            .collect();
        let mut names = HashMap::new();
        let mut queues = Vec::new();
        for (i, ((name, index), config)) in rec.queues.into_iter().zip(rec.configs).enumerate() {
            let name: Arc<str> = name.into();
            names.insert(Arc::clone(&name), u32::try_from(i).unwrap_or(u32::MAX));
            queues.push(QueueState::new(name, index, config.unwrap_or_default()));
        }
        let mark = rec.mark;
        log.relocated = rec.relocated;
        log.state_bytes = match &db {
            Some(db) => storage.open(db.path(), false).and_then(|f| f.len()).unwrap_or(0),
            None => 0,
        };
        let wal = Wal::new(log, active, next_lsn, epoch, catalog);
        let state = State {
            wal,
            queues,
            names,
            closed: false,
            mark,
            shutdown: false,
            checkpoint_wanted: false,
        };
        let checkpointer = Checkpointer { last: Instant::now(), reconcile: false };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            durable_cv: Condvar::new(),
            bg_cv: Condvar::new(),
            creating: Mutex::new(()),
            space_cv: Condvar::new(),
            storage,
            db: Mutex::new(db.map(Arc::new)),
            checkpointing: Mutex::new(checkpointer),
            ck_cv: Condvar::new(),
            opts,
            dir: dir.to_owned(),
            log_dir,
            report: rec.report,
            #[cfg(feature = "testing")]
            panic_armed: Default::default(),
        });
        {
            // The new epoch is durable before any id of it is handed out, so ids are never
            // reused, even when a crash cut the log's tail (recovered bytes are synced too).
            let mut g = shared.state.lock();
            if fresh {
                g.wal.stage_preamble();
            } else {
                // With the anchor as it stands: a store written before anchors has one from now
                // on.
                let anchor = g.wal.anchor();
                let lens = [Body::Epoch { epoch }.encoded_len(), anchor.encoded_len()];
                shared.ensure_room(&mut g, &lens, Room::Settle)?;
                g.wal.append(&Body::Epoch { epoch }).ok_or(Error::NoSpace)?;
                g.wal.append(&anchor).ok_or(Error::NoSpace)?;
            }
            let end = g.wal.next_lsn;
            shared.wait_durable(&mut g, end)?;
        }
        // Recovery cut whatever an earlier failed sync left in doubt, and the cut is durable.
        shared.storage.set_suspect(&shared.log_dir, None);
        let bg = if shared.opts.background {
            let bg_shared = Arc::clone(&shared);
            let thread =
                std::thread::Builder::new().name("wharf-background".into()).spawn(move || {
                    guarded(&bg_shared, Thread::Background, || commit::background(&bg_shared))
                })?;
            Some(thread)
        } else {
            None
        };
        let ck = if shared.opts.background {
            let ck_shared = Arc::clone(&shared);
            let thread =
                std::thread::Builder::new().name("wharf-checkpoint".into()).spawn(move || {
                    guarded(&ck_shared, Thread::Checkpointer, || checkpoint::run(&ck_shared))
                });
            match thread {
                Ok(t) => Some(t),
                Err(e) => {
                    let core = Core {
                        shared,
                        bg: Mutex::new(bg),
                        ck: Mutex::new(None),
                        lock: Mutex::new(Some(lock)),
                    };
                    let _ = core.close();
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        Ok(Core { shared, bg: Mutex::new(bg), ck: Mutex::new(ck), lock: Mutex::new(Some(lock)) })
    }

    /// Flushes and syncs everything staged, stops the background thread, refuses every later
    /// call with `Closed` and releases the directory lock. Idempotent.
    pub(crate) fn close(&self) -> Result<()> {
        let shared = &self.shared;
        let result = {
            let mut g = shared.state.lock();
            let was_open = !g.closed;
            let mut result = if g.closed {
                Ok(())
            } else if let Some(why) = &g.wal.poisoned {
                // Nothing more can be made durable: say so rather than pretend.
                Err(Error::Poisoned(why.clone()))
            } else {
                shared.flush_now(&mut g, true)
            };
            g.closed = true;
            g.shutdown = true;
            for q in &mut g.queues {
                q.notify_all();
            }
            shared.bg_cv.notify_all();
            shared.ck_cv.notify_all();
            shared.durable_cv.notify_all();
            // Pushes waiting for room (for ever, with `wait_for_space(Duration::MAX)`).
            shared.space_cv.notify_all();
            if was_open && result.is_ok() {
                // Everything is durable and nothing more is logged: record where the log ends,
                // so that damage erasing its last records is not taken for a torn tail.
                let (id, prev, end) = (g.wal.log.store_id, g.mark, g.wal.durable);
                let written = MutexGuard::unlocked(&mut g, || {
                    mark::write(&*shared.storage, &shared.log_dir, id, prev, end)
                });
                match written {
                    Ok(m) => g.mark = Some(m),
                    Err(e) => result = Err(e.into()),
                }
            }
            result
        };
        let mut joined = Ok(());
        for thread in [self.bg.lock().take(), self.ck.lock().take()].into_iter().flatten() {
            // The threads only return; a panic in one would be a bug, reported as an error.
            if thread.join().is_err() {
                joined = Err(Error::Internal("a background thread panicked".into()));
            }
        }
        {
            // A checkpoint in progress ends first; later ones see the store closed. The state
            // database is closed now, not when the last handle goes: a handle kept past a
            // reopen must not write its stale view over the file.
            let _no_checkpoint = shared.checkpointing.lock();
            shared.db.lock().take();
        }
        // Nothing writes any more: the directory may be opened again, even while old handles
        // (which now fail with `Closed`) are still around.
        self.lock.lock().take();
        result.and(joined)
    }
}

impl Shared {
    /// Does at once, on the calling thread, what the background thread does over time: makes
    /// a spare segment, writes and syncs whatever is staged, and deletes settled segments. For
    /// deterministic tests on the simulated disk, where the background thread is off.
    #[cfg(feature = "testing")]
    pub(crate) fn maintain(&self) -> Result<()> {
        use crate::commit::READY_SPARES;
        while self.state.lock().wal.log.spares.len() < READY_SPARES {
            match self.create_spare(READY_SPARES) {
                Ok(()) => {}
                // As the background thread: no room for a spare now; deleting settled
                // segments below is what makes room.
                Err(Error::Full { .. } | Error::NoSpace) => break,
                Err(e) => return Err(e),
            }
        }
        let mut g = self.state.lock();
        g.check()?;
        self.flush_now(&mut g, true)?;
        let due = self.checkpoint_due_by_log(&g);
        drop(g);
        if due {
            match self.checkpoint() {
                // As the checkpointer thread: no room for the state database now; segments
                // that need no checkpoint go below, and make room for the next one.
                Ok(_) | Err(Error::Full { .. }) => {}
                Err(e) => return Err(e),
            }
            self.state.lock().checkpoint_wanted = false;
        }
        let mut g = self.state.lock();
        let durable = g.wal.durable;
        let dead = g.wal.log.take_deletable(durable);
        self.delete_segments(&mut g, dead).map(drop)
    }

    /// Deletes the files of settled segments (already taken out of the log), oldest first,
    /// each removal made durable before the next, so that a crash never leaves a gap. Before
    /// the first, an anchor stating where the log now starts is made durable, so that a
    /// segment found missing later is never taken for one deleted (`Body::Anchor`); when the
    /// log has no room for it yet, the segments are put back, to go once a spare exists.
    /// Returns how many went. A failure poisons the store.
    pub(crate) fn delete_segments(
        &self,
        g: &mut MutexGuard<'_, State>,
        dead: Vec<SegInfo>,
    ) -> Result<usize> {
        if dead.is_empty() {
            return Ok(0);
        }
        if g.wal.append_anchor().is_none() {
            g.wal.log.restore(dead);
            g.wal.anchor_waits = true;
            return Ok(0);
        }
        // Taken under the mutex with these segments: until they are gone, nobody else takes
        // (and deletes) later ones.
        g.wal.log.deleting = true;
        let end = g.wal.next_lsn;
        if let Err(e) = self.wait_durable(g, end) {
            g.wal.log.deleting = false;
            g.wal.log.restore(dead);
            return Err(e);
        }
        let removed = MutexGuard::unlocked(g, || -> std::io::Result<()> {
            for s in &dead {
                self.storage.remove(&s.seg.path)?;
                failpoint::hit("segment-removed-before-dir-sync");
                self.storage.sync_dir(&self.log_dir)?;
            }
            Ok(())
        });
        g.wal.log.deleting = false;
        // Others may have found segments to delete meanwhile and left them: look again.
        g.wal.maybe_delete = true;
        self.bg_cv.notify_one();
        self.space_cv.notify_all();
        if let Err(e) = removed {
            let why = format!("deleting a settled segment failed: {e}");
            g.wal.poisoned = Some(why.clone());
            self.durable_cv.notify_all();
            return Err(Error::Poisoned(why));
        }
        Ok(dead.len())
    }
}

/// Takes the directory lock. A lock that a handle of this process just released can still be
/// held for a moment by a child process forked meanwhile (it keeps the descriptor until it
/// execs), so a busy lock is tried again for up to 50 ms before the open fails with `Locked`.
pub(crate) fn take_lock(storage: &dyn Storage, dir: &Path) -> Result<LockGuard> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
    loop {
        if let Some(guard) = storage.lock(&dir.join("LOCK"))? {
            return Ok(guard);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Locked(dir.to_owned()));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Best effort: an error here was already, or will be, reported to the calls it affects.
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use crate::storage::faulty::{Faults, FaultyFs};
    use crate::{Durability, Error, Wharf};

    fn open(dir: &std::path::Path, faults: &Arc<Faults>) -> Wharf {
        let fs = Arc::new(FaultyFs { faults: Arc::clone(faults) });
        let mut opts = crate::options::Options::default();
        opts.segment_bytes = 64 << 10;
        opts.validate().unwrap();
        Wharf::open_on(fs, dir, opts).unwrap()
    }

    #[test]
    fn a_failed_fdatasync_poisons_the_store_until_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let w = open(dir.path(), &faults);
        let q = w.queue("q").unwrap();
        q.push(b"durable").unwrap();
        faults.sync.store(true, Ordering::SeqCst);
        assert!(matches!(q.push(b"lost?"), Err(Error::Poisoned(_))));
        // The fault is gone, but the store never retries a failed sync: it stays poisoned.
        faults.sync.store(false, Ordering::SeqCst);
        assert!(matches!(q.push(b"after"), Err(Error::Poisoned(_))));
        assert!(matches!(q.try_pop(), Err(Error::Poisoned(_))));
        assert!(matches!(w.sync(), Err(Error::Poisoned(_))));
        assert!(matches!(w.queue("new"), Err(Error::Poisoned(_))));
        drop(q);
        drop(w);
        let w = open(dir.path(), &faults);
        let q = w.queue("q").unwrap();
        let first = q.try_pop().unwrap().unwrap();
        assert_eq!(first.payload(), b"durable");
        // The push whose sync failed is indeterminate: present or not, never garbled.
        let second = q.try_pop().unwrap();
        if let Some(d) = &second {
            assert_eq!(d.payload(), b"lost?");
        }
        assert!(q.try_pop().unwrap().is_none(), "nothing after the poisoning was stored");
    }

    #[test]
    fn a_failed_background_write_poisons_every_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let w = open(dir.path(), &faults);
        let q = w.queue("q").unwrap();
        faults.write.store(true, Ordering::SeqCst);
        let opts = crate::PushOptions::new().durability(Durability::None);
        q.push_with(b"staged", opts).unwrap();
        // The write-behind fails in the background; the next caller learns of it.
        let err = w.sync().unwrap_err();
        assert!(matches!(err, Error::Poisoned(_)), "{err}");
        assert!(matches!(q.push(b"x"), Err(Error::Poisoned(_))));
    }

    #[test]
    fn no_space_for_a_new_segment_fails_the_push_and_keeps_the_store_usable() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let w = open(dir.path(), &faults);
        let q = w.queue("q").unwrap();
        faults.allocate.store(true, Ordering::SeqCst);
        let big = vec![7u8; 20_000];
        let mut pushed = 0;
        let err = loop {
            match q.push(&big) {
                Ok(_) => pushed += 1,
                Err(e) => break e,
            }
            assert!(pushed < 100, "segments must run out");
        };
        assert!(matches!(err, Error::NoSpace), "{err}");
        // Nothing was harmed: everything pushed is there, and pops and acks still work.
        for _ in 0..pushed {
            q.try_pop().unwrap().unwrap().ack().unwrap();
        }
        faults.allocate.store(false, Ordering::SeqCst);
        q.push(&big).unwrap();
        drop(q);
        drop(w);
        let w = open(dir.path(), &faults);
        assert_eq!(w.queue("q").unwrap().depth().unwrap().ready, 1);
    }
}
