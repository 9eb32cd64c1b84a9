//! What an open store holds: [`Shared`] (one per store, behind every handle and thread) and
//! [`State`], everything its one mutex guards: the log's write state and each queue's
//! in-memory state.
//!
//! Invariants: the mutex guards in-memory state only and is released for every I/O call
//! (`MutexGuard::unlocked`). Lock order: `Shared::checkpointing`, then
//! `GroupCommit::creating`, then the state mutex; `Shared::db` is taken alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::checkpoint::{Checkpointer, StateDb};
use crate::clock::deadline_after;
use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::log::RecoveryReport;
use crate::log::{fill, GroupCommit, LogHost, Mark, Room, RunContext, Wal};
use crate::options::{Durability, Options};
use crate::queue::{QueueIndex, RunWant};
use crate::storage::Storage;

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
    name: Arc<str>,
    index: QueueIndex,
    config: QueueConfig,
    counters: Counters,
    /// Waiters of `pop` on this queue.
    cv: Arc<Condvar>,
    /// Wakers of `pop_async` futures waiting on this queue: one per pending future, keyed by
    /// the future's own number, so that a future re-polled by another task replaces its entry
    /// and a dropped future removes exactly its own.
    wakers: Vec<(u64, Waker)>,
    /// The store-clock time at which the background thread will next look at this queue for
    /// its wakers (a delayed message due, a lease expiring); `None` if it will not. A future
    /// that needs an earlier look sets it and wakes the background thread.
    waker_timer: Option<Instant>,
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

    /// The queue's name.
    #[inline]
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The queue's messages.
    #[inline]
    pub(crate) fn index(&self) -> &QueueIndex {
        &self.index
    }

    /// The queue's messages, to change.
    #[inline]
    pub(crate) fn index_mut(&mut self) -> &mut QueueIndex {
        &mut self.index
    }

    /// The queue's configuration.
    #[inline]
    pub(crate) fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Replaces the queue's configuration (its record was staged).
    #[inline]
    pub(crate) fn set_config(&mut self, config: QueueConfig) {
        self.config = config;
    }

    /// The queue's counters since open.
    #[inline]
    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// The queue's counters, to count.
    #[inline]
    pub(crate) fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The condition variable blocked pops of this queue wait on.
    #[inline]
    pub(crate) fn cv(&self) -> &Arc<Condvar> {
        &self.cv
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

    /// Whether async pops wait on this queue.
    #[inline]
    pub(crate) fn has_wakers(&self) -> bool {
        !self.wakers.is_empty()
    }

    /// Registers the waker of the pending future numbered `key` (replacing its earlier one).
    pub(crate) fn set_waker(&mut self, key: u64, waker: &Waker) {
        match self.wakers.iter_mut().find(|(k, _)| *k == key) {
            Some((_, w)) if w.will_wake(waker) => {}
            Some((_, w)) => w.clone_from(waker),
            None => self.wakers.push((key, waker.clone())),
        }
    }

    /// Removes the waker of the future numbered `key`, if it is still there.
    #[inline]
    pub(crate) fn remove_waker(&mut self, key: u64) {
        self.wakers.retain(|(k, _)| *k != key);
    }

    /// When the background thread will next look at this queue for its wakers.
    #[inline]
    pub(crate) fn waker_timer(&self) -> Option<Instant> {
        self.waker_timer
    }

    /// Sets when the background thread next looks at this queue for its wakers.
    #[inline]
    pub(crate) fn set_waker_timer(&mut self, t: Option<Instant>) {
        self.waker_timer = t;
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
    wal: Wal,
    queues: Vec<QueueState>,
    names: HashMap<Arc<str>, u32>,
    closed: bool,
    /// The durable mark last written (`log/mark`), if the store has one.
    mark: Option<Mark>,
    /// Tells the background threads to stop.
    shutdown: bool,
    /// Something (a push waiting for space) wants a checkpoint now.
    checkpoint_wanted: bool,
    /// Ready messages each queue's index holds before its plain pushes join its run.
    index_window: usize,
}

impl State {
    /// The state of a store just recovered: its write state, its queues (by id) and its mark.
    pub(crate) fn new(
        wal: Wal,
        mut queues: Vec<QueueState>,
        mark: Option<Mark>,
        index_window: usize,
    ) -> State {
        for q in &mut queues {
            q.index.set_window(index_window);
        }
        let names = queues.iter().enumerate();
        let names = names.map(|(i, q)| (Arc::clone(&q.name), u32::try_from(i).unwrap_or(u32::MAX)));
        State {
            wal,
            names: names.collect(),
            queues,
            closed: false,
            mark,
            shutdown: false,
            checkpoint_wanted: false,
            index_window,
        }
    }

    /// Reads queue `q`'s run from the log into its index until `want` holds (`log::fill`).
    ///
    /// # Errors
    /// `Internal` if the run counts more messages than the log holds (the run is dropped);
    /// an I/O error reading a segment that is not mapped.
    pub(crate) fn fill(&mut self, q: u32, want: RunWant) -> Result<()> {
        let Some(qs) = self.queues.get_mut(q as usize) else { return Ok(()) };
        if qs.index.run_satisfies(want) {
            return Ok(());
        }
        let log = self.wal.log();
        let cx = RunContext {
            live_epoch: self.wal.epoch(),
            voids: log.voids(),
            relocated: log.relocated(),
        };
        fill(&mut qs.index, q, &self.wal, &cx, want)
    }

    /// Fails when the store is closed or poisoned.
    pub(crate) fn check(&self) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        self.wal.check()
    }

    /// The log's write state.
    #[inline]
    pub(crate) fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The log's write state, to stage records.
    #[inline]
    pub(crate) fn wal_mut(&mut self) -> &mut Wal {
        &mut self.wal
    }

    /// Queue `q` (an id from a handle or the log: it exists).
    #[inline]
    pub(crate) fn queue(&self, q: u32) -> &QueueState {
        &self.queues[q as usize]
    }

    /// Queue `q`, to change.
    #[inline]
    pub(crate) fn queue_mut(&mut self, q: u32) -> &mut QueueState {
        &mut self.queues[q as usize]
    }

    /// Queue `q`, if it exists.
    #[inline]
    pub(crate) fn get_queue(&self, q: u32) -> Option<&QueueState> {
        self.queues.get(q as usize)
    }

    /// Queue `q`, if it exists, to change.
    #[inline]
    pub(crate) fn get_queue_mut(&mut self, q: u32) -> Option<&mut QueueState> {
        self.queues.get_mut(q as usize)
    }

    /// Every queue, by id.
    #[inline]
    pub(crate) fn queues(&self) -> &[QueueState] {
        &self.queues
    }

    /// Every queue, by id, to change.
    #[inline]
    pub(crate) fn queues_mut(&mut self) -> &mut [QueueState] {
        &mut self.queues
    }

    /// The id of the queue named `name`, if it exists.
    #[inline]
    pub(crate) fn queue_id(&self, name: &str) -> Option<u32> {
        self.names.get(name).copied()
    }

    /// Adds queue `name` (its record was staged); returns its id.
    pub(crate) fn add_queue(&mut self, name: &str) -> Result<u32> {
        let id = u32::try_from(self.queues.len())
            .map_err(|_| Error::InvalidOption("too many queues".into()))?;
        let name: Arc<str> = name.into();
        self.names.insert(Arc::clone(&name), id);
        let mut index = QueueIndex::default();
        index.set_window(self.index_window);
        self.queues.push(QueueState::new(name, index, QueueConfig::default()));
        Ok(id)
    }

    /// Whether the store was closed.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closes the store: every later call fails with `Closed`, the threads stop.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.shutdown = true;
    }

    /// Whether the background threads are to stop.
    #[inline]
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutdown
    }

    /// The durable mark last written, if any.
    #[inline]
    pub(crate) fn mark(&self) -> Option<Mark> {
        self.mark
    }

    /// Notes the durable mark just written.
    #[inline]
    pub(crate) fn set_mark(&mut self, mark: Mark) {
        self.mark = Some(mark);
    }

    /// Whether something asked for a checkpoint now.
    #[inline]
    pub(crate) fn checkpoint_wanted(&self) -> bool {
        self.checkpoint_wanted
    }

    /// Asks for a checkpoint now (true) or notes that one was taken (false).
    #[inline]
    pub(crate) fn set_checkpoint_wanted(&mut self, wanted: bool) {
        self.checkpoint_wanted = wanted;
    }
}

impl LogHost for State {
    #[inline]
    fn wal(&self) -> &Wal {
        &self.wal
    }

    #[inline]
    fn wal_mut(&mut self) -> &mut Wal {
        &mut self.wal
    }

    fn check(&self) -> Result<()> {
        State::check(self)
    }

    fn wake_queues(&mut self) {
        for q in &mut self.queues {
            q.notify_all();
        }
    }
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
    /// The thread's name in errors.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Thread::Background => "background",
            Thread::Checkpointer => "checkpointer",
        }
    }
}

/// State shared by every handle of one open store and by its background threads.
pub(crate) struct Shared {
    state: Mutex<State>,
    log: GroupCommit,
    /// The state database (`state.redb`), made by the first checkpoint; closed with the store.
    db: Mutex<Option<Arc<StateDb>>>,
    /// Serialises checkpoints; taken before `state`.
    checkpointing: Mutex<Checkpointer>,
    opts: Options,
    dir: PathBuf,
    report: RecoveryReport,
    /// Panics armed by `testing::panic_in`, one per [`Thread`].
    #[cfg(feature = "testing")]
    panic_armed: [std::sync::atomic::AtomicBool; 2],
}

impl Shared {
    /// The shared state of a store in `dir`, recovered as `report` says.
    pub(crate) fn new(
        state: State,
        storage: Arc<dyn Storage>,
        db: Option<StateDb>,
        opts: Options,
        dir: &Path,
        report: RecoveryReport,
    ) -> Shared {
        Shared {
            state: Mutex::new(state),
            log: GroupCommit::new(storage, dir.join("log"), &opts),
            db: Mutex::new(db.map(Arc::new)),
            checkpointing: Mutex::new(Checkpointer::new()),
            opts,
            dir: dir.to_owned(),
            report,
            #[cfg(feature = "testing")]
            panic_armed: Default::default(),
        }
    }

    /// Makes `thread` panic the next time it looks at its work, and wakes it (see
    /// `testing::panic_in`).
    #[cfg(feature = "testing")]
    pub(crate) fn arm_panic(&self, thread: Thread) {
        self.panic_armed[thread as usize].store(true, std::sync::atomic::Ordering::SeqCst);
        // Taken so that the thread either saw the flag or sleeps, and wakes now.
        let _g = self.state.lock();
        self.log.background().notify_all();
        self.log.checkpointer().notify_all();
    }

    /// Panics here if a test armed a panic in `thread` (`testing::panic_in`).
    pub(crate) fn panic_point(&self, thread: Thread) {
        #[cfg(feature = "testing")]
        if self.panic_armed[thread as usize].swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected by wharf::testing::panic_in");
        }
        #[cfg(not(feature = "testing"))]
        let _ = thread;
    }

    /// Takes the store's mutex.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The log: group commit, room, deletions and the log's condition variables.
    #[inline]
    pub(crate) fn log(&self) -> &GroupCommit {
        &self.log
    }

    /// The open state database, if one is open.
    #[inline]
    pub(crate) fn db(&self) -> &Mutex<Option<Arc<StateDb>>> {
        &self.db
    }

    /// The checkpointer's bookkeeping; taken before the store's mutex.
    #[inline]
    pub(crate) fn checkpointing(&self) -> &Mutex<Checkpointer> {
        &self.checkpointing
    }

    /// The options the store was opened with.
    #[inline]
    pub(crate) fn opts(&self) -> &Options {
        &self.opts
    }

    /// The store's directory.
    #[inline]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery found when the store was opened.
    #[inline]
    pub(crate) fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The storage the store's files are on.
    #[inline]
    pub(crate) fn storage(&self) -> &dyn Storage {
        self.log.storage()
    }

    /// The store clock's wall-clock time, in Unix ms.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        crate::clock::now_ms(&*self.opts.clock)
    }

    /// Makes room for records of these lengths (see `GroupCommit::reserve`): `Ok(false)`
    /// when the lock was released meanwhile and the caller must look again.
    #[inline]
    pub(crate) fn reserve(
        &self,
        g: &mut MutexGuard<'_, State>,
        lens: &[usize],
        room: Room,
    ) -> Result<bool> {
        self.log.reserve(&self.state, g, lens, room)
    }

    /// Creates one spare segment unless there already are `want` of them.
    #[inline]
    pub(crate) fn create_spare(&self, want: usize) -> Result<()> {
        self.log.create_spare(&self.state, want)
    }

    /// Gives a settled, quiet log smaller segments (see `GroupCommit::shrink`).
    #[inline]
    pub(crate) fn shrink_log(&self, drop_kept: bool) -> Result<bool> {
        self.log.shrink(&self.state, drop_kept)
    }

    /// Gives spare segments back under a disk quota until `need` bytes are free (see
    /// `GroupCommit::release_spares`).
    #[inline]
    pub(crate) fn release_spares(&self, need: u64) -> Result<()> {
        self.log.release_spares(&self.state, need)
    }

    /// Applies durability `d` to the records staged up to now.
    #[inline]
    pub(crate) fn commit(&self, g: &mut MutexGuard<'_, State>, d: Durability) -> Result<()> {
        let end = g.wal.next_lsn();
        self.log.commit(g, end, d)
    }

    /// Makes the records staged up to now durable.
    #[inline]
    pub(crate) fn sync(&self, g: &mut MutexGuard<'_, State>) -> Result<()> {
        let end = g.wal.next_lsn();
        self.log.wait_durable(g, end)
    }
}
