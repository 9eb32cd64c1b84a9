//! Opening and closing a store: the directory lock, recovery, the new id epoch, and the
//! background threads.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, MutexGuard};

use super::background;
use super::lock::take_lock;
use super::state::{QueueState, Shared, State, Thread};
use crate::checkpoint::{self, StateDb, STATE_FILE};
use crate::error::{Error, Result};
use crate::log::recover;
use crate::log::{
    first_record, write_mark, CatalogEntry, LogHost, Plan, Room, Segment, Wal, MAX_EPOCH,
};
use crate::options::{Options, ReadMode};
use crate::record::Body;
use crate::salvage;
use crate::storage::{LockGuard, Storage};

/// An open store: owns the directory lock and the background thread. Dropping the last
/// reference closes it (flushing and syncing whatever is staged, best effort).
pub(crate) struct Core {
    shared: Arc<Shared>,
    bg: Mutex<Option<JoinHandle<()>>>,
    ck: Mutex<Option<JoinHandle<()>>>,
    /// The directory lock, released by `close`.
    lock: Mutex<Option<LockGuard>>,
}

impl Core {
    /// The state every handle and thread of the store shares.
    #[inline]
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

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
        let state_path = dir.join(STATE_FILE);
        let recover = || -> Result<_> {
            let (db, loaded) = StateDb::load_existing(&*storage, dir)?;
            let rec = recover(&*storage, &log_dir, map, &loaded, &state_path, opts.index_window)?;
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
                let base = log.segments().next_back().map_or(0, |s| s.seg().end());
                // A new store starts small; a store whose last segment was sealed (its catalog
                // may be large) starts at the largest size.
                let len =
                    if rec.queues.is_empty() { opts.min_segment_bytes } else { opts.segment_bytes };
                let plan = Plan { store_id: log.store_id(), base, len, zero: true, map };
                let seg = Segment::create(&*storage, &log_dir, plan)?;
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
        let queues = rec.queues.into_iter().zip(rec.configs);
        let queues = queues
            .map(|((name, index), config)| {
                QueueState::new(name.into(), index, config.unwrap_or_default())
            })
            .collect();
        *log.relocated_mut() = rec.relocated;
        log.set_state_bytes(storage.open(&state_path, false).and_then(|f| f.len()).unwrap_or(0));
        let wal = Wal::new(log, active, next_lsn, epoch, catalog);
        let state = State::new(wal, queues, rec.mark, opts.index_window);
        let shared = Arc::new(Shared::new(state, storage, db, opts, dir, rec.report));
        {
            // The new epoch is durable before any id of it is handed out, so ids are never
            // reused, even when a crash cut the log's tail (recovered bytes are synced too).
            let mut g = shared.lock();
            if fresh {
                g.wal_mut().stage_preamble();
            } else {
                // With the anchor as it stands: a store written before anchors has one from now
                // on.
                let bodies = [Body::Epoch { epoch }, g.wal().anchor()];
                let lens = bodies.each_ref().map(Body::encoded_len);
                shared.reserve(&mut g, &lens, Room::Settle)?;
                for body in &bodies {
                    g.wal_mut().append(body).ok_or_else(Error::no_space)?;
                }
            }
            shared.sync(&mut g)?;
        }
        // Recovery cut whatever an earlier failed sync left in doubt, and the cut is durable.
        shared.storage().set_suspect(shared.log().dir(), None);
        let bg = if shared.opts().background {
            let bg_shared = Arc::clone(&shared);
            let thread =
                std::thread::Builder::new().name("wharf-background".into()).spawn(move || {
                    guarded(&bg_shared, Thread::Background, || background::run(&bg_shared))
                })?;
            Some(thread)
        } else {
            None
        };
        let ck = if shared.opts().background {
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
        // A settled log is left with small segments, as the background thread leaves it once
        // the store is quiet, and its settled segments deleted.
        // No deleted segment's file is kept for recycling from here on, and the shrink deletes
        // those kept: a closed store leaves none behind.
        let open = {
            let mut g = shared.lock();
            g.wal_mut().log_mut().stop_recycling();
            g.check().is_ok()
        };
        let shrunk = if open {
            shared.shrink_log(true).and_then(|_| delete_settled_at_close(shared))
        } else {
            Ok(())
        };
        let result = {
            let mut g = shared.lock();
            let was_open = !g.is_closed();
            let mut result = if !was_open {
                Ok(())
            } else if let Some(why) = g.wal().poisoned() {
                // Nothing more can be made durable: say so rather than pretend.
                Err(Error::Poisoned(why.to_owned()))
            } else {
                shrunk.and_then(|()| shared.log().flush_now(&mut g, true))
            };
            g.close();
            // Blocked pops, waits for durability, the threads, and pushes waiting for room (for
            // ever, with `wait_for_space(Duration::MAX)`).
            g.wake_queues();
            shared.log().wake_all();
            if was_open && result.is_ok() {
                // Everything is durable and nothing more is logged: record where the log ends,
                // so that damage erasing its last records is not taken for a torn tail.
                let (id, prev, end) = (g.wal().log().store_id(), g.mark(), g.wal().durable());
                let log = shared.log();
                let written = MutexGuard::unlocked(&mut g, || {
                    write_mark(log.storage(), log.dir(), id, prev, end)
                });
                match written {
                    Ok(m) => g.set_mark(m),
                    Err(e) => result = Err(e.into()),
                }
            }
            let clear = was_open && result.is_ok();
            (result, clear)
        };
        let (result, clear) = result;
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
            let _no_checkpoint = shared.checkpointing().lock();
            shared.db().lock().take();
        }
        // Nothing writes the log any more (the threads may have, after the mark: a deletion's
        // anchor, which leaves the mark below the log's end, as it may be).
        let result = if clear {
            let (active, end) = {
                let g = shared.lock();
                (g.wal().log().active().cloned(), g.wal().durable())
            };
            let cleared = active.map_or(Ok(()), |seg| shared.log().clear_tail(&seg, end));
            result.and(cleared.map_err(Error::from))
        } else {
            result
        };
        // Nothing writes any more: the directory may be opened again, even while old handles
        // (which now fail with `Closed`) are still around.
        self.lock.lock().take();
        result.and(joined)
    }
}

/// At a close, once the log is shrunk: deletes every settled segment that may go, after any
/// deletion in progress (which leaves what settled after it began), and takes a checkpoint
/// first if a settled segment waits for one (records about messages an earlier checkpoint
/// moved into the state database): a closed settled store keeps only small files.
fn delete_settled_at_close(shared: &Shared) -> Result<()> {
    let waits = {
        let mut g = shared.lock();
        shared.log().delete_settled_at_close(&mut g)?;
        g.wal().log().deletable_after_checkpoint()
    };
    if waits {
        match checkpoint::take(shared) {
            // No room for the state database under the quota: the segment stays.
            Ok(_) | Err(Error::Full { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut g = shared.lock();
        shared.log().delete_settled_at_close(&mut g)?;
    }
    Ok(())
}

/// Does at once, on the calling thread, what the background threads do over time: makes a
/// spare segment, writes and syncs whatever is staged, takes a checkpoint if one is due by the
/// log, and deletes settled segments. For deterministic tests on the simulated disk, where the
/// background threads are off.
#[cfg(feature = "testing")]
pub(crate) fn maintain(shared: &Shared) -> Result<()> {
    use crate::log::READY_SPARES;
    while shared.lock().wal().log().spare_count() < READY_SPARES {
        match shared.create_spare(READY_SPARES) {
            Ok(()) => {}
            // As the background thread: no room for a spare now; deleting settled segments
            // below is what makes room.
            Err(Error::Full { .. } | Error::NoSpace) => break,
            Err(e) => return Err(e),
        }
    }
    let mut g = shared.lock();
    g.check()?;
    shared.log().flush_now(&mut g, true)?;
    let due = checkpoint::due_by_log(shared, &g);
    drop(g);
    if due {
        match checkpoint::take(shared) {
            // As the checkpointer thread: no room for the state database now; segments that
            // need no checkpoint go below, and make room for the next one.
            Ok(_) | Err(Error::Full { .. }) => {}
            Err(e) => return Err(e),
        }
        shared.lock().set_checkpoint_wanted(false);
    }
    // As the background thread once the store is quiet: a settled log gets smaller segments
    // (the files kept for recycling stay, for the spares of the next calls).
    shared.shrink_log(false)?;
    let mut g = shared.lock();
    shared.log().delete_settled(&mut g).map(drop)
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
    let mut g = shared.lock();
    shared.log().poison(&mut g, format!("the {} thread panicked: {what}", thread.name()));
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
        let mut opts = crate::options::Options { segment_bytes: 64 << 10, ..Default::default() };
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
