//! Group commit: one leader among the waiting callers writes everything staged with one
//! `pwrite` and one `fdatasync`; the others wait for it. Also what frees and makes room: spare
//! segments made ahead of time (of a deleted segment's file when one is kept), settled segments
//! deleted (oldest first, behind a durable anchor) or kept to be recycled, spares given back
//! under a disk quota.
//!
//! The store's state is reached through [`LogHost`]: the log never names the layers above it.
//!
//! Invariants: all data `fdatasync`s of the log happen here; a failed write or sync poisons the
//! store for good (never retried, see `Error::Poisoned`); the log becomes durable strictly as a
//! prefix, because a chunk that seals a segment is synced before any later chunk is written.

mod delete;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::segment::{Plan, Segment, HEADER_LEN};
use super::wal::{Flushed, Room, Wal, GROUP_BYTES};
use crate::clock::{deadline_after, now_ms, Clock};
use crate::error::{Error, Result};
use crate::options::{Durability, Options, ReadMode};
use crate::record::TAIL_RESERVE;
use crate::storage::Storage;

/// The state the store's mutex guards, as the log sees it.
pub(crate) trait LogHost {
    /// The write state.
    fn wal(&self) -> &Wal;
    /// The write state, to change.
    fn wal_mut(&mut self) -> &mut Wal;
    /// Fails when the store is closed or poisoned.
    fn check(&self) -> Result<()>;
    /// Wakes every caller blocked on the store's queues (it was just poisoned or closed).
    fn wake_queues(&mut self);
}

/// The log's side of an open store: its files' place, its limits, and the condition variables
/// of everything that waits on the log.
pub(crate) struct GroupCommit {
    storage: Arc<dyn Storage>,
    log_dir: PathBuf,
    /// The largest segment size (`WharfBuilder::segment_bytes`).
    segment_bytes: u64,
    /// The smallest segment size (`WharfBuilder::min_segment_bytes`).
    min_segment_bytes: u64,
    clock: Arc<dyn Clock>,
    max_disk_bytes: Option<u64>,
    map: bool,
    /// Log bytes after which a checkpoint is due (`WharfBuilder::checkpoint_every_bytes`).
    checkpoint_bytes: u64,
    /// Checkpoints are also taken by time (`WharfBuilder::checkpoint_interval`).
    checkpoint_by_time: bool,
    /// Signalled when a flush ends (callers waiting for durability, or to lead the next one).
    durable_cv: Condvar,
    /// Wakes the background thread.
    bg_cv: Condvar,
    /// Signalled when segments were deleted (pushes waiting for space).
    space_cv: Condvar,
    /// Wakes the checkpointer thread.
    ck_cv: Condvar,
    /// Serialises segment creation (taken before the store's mutex), and sizes new segments.
    creating: Mutex<Sizer>,
}

/// How long the log should take to fill a segment at its recent rate of growth.
const FILL_MS: u64 = 2_000;

/// Sizes new segments to the rate the log grows at: what it grew by in about `FILL_MS`, as a
/// power of two between the smallest and the largest segment size. The rate is measured over
/// windows of at least a second of the store's clock.
#[derive(Debug, Default)]
pub(crate) struct Sizer {
    /// When (store-clock Unix ms) the current window began, and the log position then.
    window: Option<(u64, u64)>,
    /// Bytes per second over the last whole window.
    rate: u64,
    /// The log's bytes written and `fdatasync`s when the last segment was made.
    written: (u64, u64),
}

/// Below this many bytes written per `fdatasync`, new segments are written with zeros when
/// made (`Segment::create`): small syncs each pay an extent conversion otherwise. Above it the
/// zeros' extra bytes cost more than the conversions save where the disk's bandwidth is the
/// limit (batches of 100 × 4 KiB: 0.42–0.58 × the written-file floor with zeros on a loaded
/// disk, about 1.0 × without).
const ZERO_BELOW_BYTES_PER_SYNC: u64 = 64 << 10;

impl Sizer {
    /// Starts a new window at `now_ms` and position `lsn`, forgetting the rate so far.
    fn restart(&mut self, now_ms: u64, lsn: u64) {
        self.window = Some((now_ms, lsn));
        self.rate = 0;
    }

    /// Whether the next segment is written with zeros: the log's syncs since the last segment
    /// was made were small (or there were none and nothing was written: durable pushes are
    /// the default). `bytes` and `syncs` are the log's totals now.
    fn zero(&mut self, bytes: u64, syncs: u64) -> bool {
        let (b, s) = (bytes.saturating_sub(self.written.0), syncs.saturating_sub(self.written.1));
        self.written = (bytes, syncs);
        match s {
            0 => b == 0,
            s => b / s < ZERO_BELOW_BYTES_PER_SYNC,
        }
    }

    /// Bytes the log grows by in `FILL_MS` at its recent rate, now (`now_ms`) that it is at
    /// position `lsn`.
    fn fill_bytes(&mut self, now_ms: u64, lsn: u64) -> u64 {
        let Some((start, from)) = self.window else {
            self.window = Some((now_ms, lsn));
            return 0;
        };
        let elapsed = now_ms.saturating_sub(start);
        let rate = lsn.saturating_sub(from).saturating_mul(1000) / elapsed.max(1000);
        if elapsed >= 1000 {
            self.rate = rate;
            self.window = Some((now_ms, lsn));
        }
        self.rate.max(rate).saturating_mul(FILL_MS) / 1000
    }
}

/// The length of a new segment: `fill` (what the log grows by in `FILL_MS`) rounded up to a
/// power of two, and at least `need`; between `min` and `max` (`need` never exceeds `max`).
pub(crate) fn segment_len(fill: u64, need: u64, min: u64, max: u64) -> u64 {
    let want = fill.max(need).checked_next_power_of_two().unwrap_or(u64::MAX);
    want.clamp(min, max).max(need.min(max))
}

impl GroupCommit {
    /// The log of a store in `log_dir` on `storage`, opened with `opts`.
    pub(crate) fn new(storage: Arc<dyn Storage>, log_dir: PathBuf, opts: &Options) -> Self {
        GroupCommit {
            storage,
            log_dir,
            segment_bytes: opts.segment_bytes,
            min_segment_bytes: opts.min_segment_bytes,
            clock: Arc::clone(&opts.clock),
            max_disk_bytes: opts.max_disk_bytes,
            map: opts.read_mode == ReadMode::Map,
            checkpoint_bytes: opts.checkpoint_bytes,
            checkpoint_by_time: opts.checkpoint_interval.is_some(),
            durable_cv: Condvar::new(),
            bg_cv: Condvar::new(),
            space_cv: Condvar::new(),
            ck_cv: Condvar::new(),
            creating: Mutex::new(Sizer::default()),
        }
    }

    /// The log directory.
    #[inline]
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.log_dir
    }

    /// The storage the log's files are on.
    #[inline]
    pub(crate) fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    /// Wakes the background thread, which waits on this.
    #[inline]
    pub(crate) fn background(&self) -> &Condvar {
        &self.bg_cv
    }

    /// Wakes the checkpointer thread, which waits on this.
    #[inline]
    pub(crate) fn checkpointer(&self) -> &Condvar {
        &self.ck_cv
    }

    /// Pushes waiting for room wait on this; a deletion wakes them.
    #[inline]
    pub(crate) fn space(&self) -> &Condvar {
        &self.space_cv
    }

    /// Signalled whenever a flush ends.
    #[inline]
    pub(crate) fn flushed(&self) -> &Condvar {
        &self.durable_cv
    }

    /// Whether checkpoints are asked for at least once a segment, which makes a sealed
    /// segment's stragglers due soon after the seal.
    #[inline]
    pub(crate) fn relocates_after_seals(&self) -> bool {
        self.checkpoint_bytes <= self.segment_bytes
    }

    /// Poisons the store for good with `why` and wakes everyone who waits on it, so that each
    /// sees the error; returns it.
    pub(crate) fn poison<H: LogHost>(&self, g: &mut MutexGuard<'_, H>, why: String) -> Error {
        g.wal_mut().poison(why);
        g.wake_queues();
        self.wake_all();
        Error::Poisoned(g.wal().poisoned().unwrap_or_default().to_owned())
    }

    /// Wakes every thread waiting on the log (a poison or the close).
    pub(crate) fn wake_all(&self) {
        self.bg_cv.notify_all();
        self.ck_cv.notify_all();
        self.durable_cv.notify_all();
        self.space_cv.notify_all();
    }

    /// Makes room for records of these lengths (each a `Body::encoded_len`), creating spare
    /// segments as needed. `Ok(true)`: there was room, the lock was held throughout; `Ok(false)`:
    /// the lock was released to make room, so the caller must look at the state again. Fails
    /// with `NoSpace` or `Full` when the disk or the quota has no room: nothing is staged then.
    #[inline]
    pub(crate) fn reserve<H: LogHost>(
        &self,
        state: &Mutex<H>,
        g: &mut MutexGuard<'_, H>,
        lens: &[usize],
        room: Room,
    ) -> Result<bool> {
        if g.wal().fits(lens, room) {
            return Ok(true);
        }
        self.make_room(state, g, lens, room).map(|()| false)
    }

    /// The slow path of `reserve`: spare segments are created (the lock released meanwhile)
    /// until the records fit.
    fn make_room<H: LogHost>(
        &self,
        state: &Mutex<H>,
        g: &mut MutexGuard<'_, H>,
        lens: &[usize],
        room: Room,
    ) -> Result<()> {
        loop {
            g.check()?;
            if g.wal().fits(lens, room) {
                return Ok(());
            }
            // A new segment must be able to hold its preamble and each record, or no number
            // of new segments would ever make room.
            let preamble = g.wal().preamble_len();
            let empty = HEADER_LEN + (preamble + TAIL_RESERVE) as u64;
            let largest = lens.iter().copied().max().unwrap_or(0) as u64;
            if empty + largest > self.segment_bytes {
                return Err(Error::InvalidOption(format!(
                    "a segment of {} bytes cannot hold the queue catalog ({preamble} bytes) and a \
                     record of {largest} bytes: open the store with larger segments",
                    self.segment_bytes,
                )));
            }
            let have = g.wal().log().spare_count();
            let need = empty + largest;
            MutexGuard::unlocked(g, || self.create_spare_for(state, have + 1, need))?;
        }
    }

    /// Creates one spare segment unless there already are `want` of them.
    pub(crate) fn create_spare<H: LogHost>(&self, state: &Mutex<H>, want: usize) -> Result<()> {
        self.create_spare_for(state, want, 0)
    }

    /// Creates one spare segment of at least `need` bytes unless there already are `want`.
    fn create_spare_for<H: LogHost>(&self, state: &Mutex<H>, want: usize, need: u64) -> Result<()> {
        let mut sizer = self.creating.lock();
        self.create_spare_locked(&mut sizer, state, want, need)
    }

    /// The size of the next segment: sized to the log's rate of growth; big enough for twice
    /// the preamble and for `need`; and, as the ack reserve must be, as big as the largest
    /// segment with unsettled messages, so that settling them never runs out of room.
    fn next_len<H: LogHost>(&self, sizer: &mut Sizer, g: &H, need: u64) -> u64 {
        let wal = g.wal();
        let empty = HEADER_LEN + (wal.preamble_len() + TAIL_RESERVE) as u64;
        let fill = sizer.fill_bytes(now_ms(&*self.clock), wal.next_lsn());
        let need = need.max(2 * empty).max(wal.log().largest_unsettled());
        segment_len(fill, need, self.min_segment_bytes, self.segment_bytes)
    }

    fn create_spare_locked<H: LogHost>(
        &self,
        sizer: &mut Sizer,
        state: &Mutex<H>,
        want: usize,
        need: u64,
    ) -> Result<()> {
        let (plan, old) = {
            let mut g = state.lock();
            let log = g.wal().log();
            if log.spare_count() >= want {
                return Ok(());
            }
            let len = self.next_len(sizer, &*g, need);
            let log = g.wal().log();
            if let Some(max) = self.max_disk_bytes {
                // (No file is kept for recycling under a quota: see `delete_segments`.)
                if log.disk_bytes() + len > max {
                    return Err(Error::Full { max_disk_bytes: max });
                }
            }
            let stats = g.wal().stats();
            let zero = sizer.zero(stats.bytes, stats.fsyncs);
            let (base, store_id) = (log.next_spare_base(), log.store_id());
            let old = g.wal_mut().log_mut().take_recycled();
            (Plan { store_id, base, len, zero, map: self.map }, old)
        };
        // On failure the file stays under its temporary name, as a failed creation's does,
        // uncounted until the next open removes it.
        let seg = match old {
            Some((old, _)) => Segment::recycle(&*self.storage, &self.log_dir, &old, plan),
            None => Segment::create(&*self.storage, &self.log_dir, plan),
        }?;
        state.lock().wal_mut().log_mut().push_spare(Arc::new(seg));
        Ok(())
    }

    /// Whether the log would shrink its segments now: files of deleted segments are kept for
    /// recycling (a quiet log needs none), or nothing in it is unsettled and the active
    /// segment is larger than the smallest size.
    pub(crate) fn shrinkable<H: LogHost>(&self, g: &H) -> bool {
        g.wal().log().has_recycled() || self.shrinks_active(g)
    }

    /// Whether the active segment would be made smaller (see `shrink`).
    fn shrinks_active<H: LogHost>(&self, g: &H) -> bool {
        let wal = g.wal();
        wal.active_len() > self.min_segment_bytes && wal.log().all_settled()
    }

    /// Gives a quiet log its smallest footprint: the files kept for recycling are deleted;
    /// and once everything in it is settled, spares larger than the rate of growth asks for
    /// are deleted (they are empty), and the active segment is sealed early so the log goes on
    /// in a new one of that size; the sealed one is deleted as any settled segment is.
    /// Returns whether it rolled. A failure poisons the store. Without `drop_kept` the files
    /// kept for recycling stay (`testing::maintain`, which shrinks as if the store were quiet
    /// at every call, and would otherwise never let a spare be made of one).
    pub(crate) fn shrink<H: LogHost>(&self, state: &Mutex<H>, drop_kept: bool) -> Result<bool> {
        let mut sizer = self.creating.lock();
        state.lock().check()?;
        if drop_kept {
            self.drop_recycled(state)?;
        }
        let len = {
            let mut g = state.lock();
            g.check()?;
            if !self.shrinks_active(&*g) {
                return Ok(false);
            }
            // Settlements written with `None` durability become durable first.
            self.flush_now(&mut g, true)?;
            if !self.shrinks_active(&*g) {
                return Ok(false);
            }
            // The log is quiet: its rate of growth is measured again from now on.
            sizer.restart(now_ms(&*self.clock), g.wal().next_lsn());
            let len = self.next_len(&mut sizer, &*g, 0);
            if len >= g.wal().active_len() {
                return Ok(false);
            }
            len
        };
        loop {
            let spare = {
                let mut g = state.lock();
                let log = g.wal_mut().log_mut();
                if log.spares().all(|s| s.len() <= len) {
                    break;
                }
                match log.pop_last_spare() {
                    Some(spare) => spare,
                    None => break,
                }
            };
            self.remove_spare(state, spare)?;
        }
        self.create_spare_locked(&mut sizer, state, 1, 0)?;
        let mut g = state.lock();
        if !self.shrinks_active(&*g) || g.wal_mut().roll_now().is_none() {
            return Ok(false);
        }
        // The roll skipped the rest of the sealed segment, which the log did not grow by.
        sizer.restart(now_ms(&*self.clock), g.wal().next_lsn());
        self.flush_now(&mut g, true)?;
        Ok(true)
    }

    /// Applies the durability of a call whose records end at `end`.
    pub(crate) fn commit<H: LogHost>(
        &self,
        g: &mut MutexGuard<'_, H>,
        end: u64,
        d: Durability,
    ) -> Result<()> {
        match d {
            Durability::Immediate => return self.wait_durable(g, end),
            Durability::Interval(every) => {
                if g.wal_mut().want_sync_by(deadline_after(Instant::now(), every)) {
                    self.bg_cv.notify_one();
                }
            }
            // `Durability` is non-exhaustive only for users; every mode is handled here.
            _ => {
                if g.wal_mut().want_write_behind() {
                    self.bg_cv.notify_one();
                }
            }
        }
        // A full group is handed to the background thread; a caller writes it itself only when
        // the background falls behind, and waits while a leader writes (or syncs, for the
        // unsynced bound): the staged bytes stay bounded however slow the disk.
        if g.wal_mut().kick_full_group() {
            self.bg_cv.notify_one();
        }
        while g.wal().staged_bytes() >= 4 * GROUP_BYTES {
            g.wal().check()?;
            if g.wal().flushing() {
                self.durable_cv.wait(g);
            } else {
                self.flush(g, false)?;
            }
        }
        Ok(())
    }

    /// Waits until the log is durable up to `target`, leading a group commit when no other
    /// caller is.
    pub(crate) fn wait_durable<H: LogHost>(
        &self,
        g: &mut MutexGuard<'_, H>,
        target: u64,
    ) -> Result<()> {
        self.wait_for(g, target, true)
    }

    /// Waits until the log is written to the OS (not necessarily synced) up to `target`,
    /// leading a write when no other caller is: what a process crash cannot take back.
    pub(crate) fn wait_written<H: LogHost>(
        &self,
        g: &mut MutexGuard<'_, H>,
        target: u64,
    ) -> Result<()> {
        self.wait_for(g, target, false)
    }

    /// Waits until the log is durable (`sync`) or written up to `target`, leading the flush
    /// that gets it there when no other caller is.
    fn wait_for<H: LogHost>(
        &self,
        g: &mut MutexGuard<'_, H>,
        target: u64,
        sync: bool,
    ) -> Result<()> {
        loop {
            g.wal().check()?;
            let reached = if sync { g.wal().durable() } else { g.wal().written() };
            if reached >= target {
                return Ok(());
            }
            if g.wal().flushing() {
                self.durable_cv.wait(g);
            } else {
                self.flush(g, sync)?;
            }
        }
    }

    /// Waits until no leader is writing and then writes (and with `sync`, syncs) everything staged.
    pub(crate) fn flush_now<H: LogHost>(
        &self,
        g: &mut MutexGuard<'_, H>,
        sync: bool,
    ) -> Result<()> {
        // A thread that panicked while flushing never ends its flush; it poisoned the store.
        while g.wal().flushing() && g.wal().poisoned().is_none() {
            self.durable_cv.wait(g);
        }
        g.wal().check()?;
        self.flush(g, sync)
    }

    /// The leader's work: write every staged chunk, sync if asked, publish the new ends.
    /// Must not be called while another flush runs.
    pub(crate) fn flush<H: LogHost>(&self, g: &mut MutexGuard<'_, H>, sync: bool) -> Result<()> {
        let Some(mut flush) = g.wal_mut().begin_flush(sync) else { return Ok(()) };
        let mut done = Flushed::default();
        let written = MutexGuard::unlocked(g, || flush.write(&mut done));
        let first_new = g.wal_mut().end_flush(&mut flush, &done, written.is_ok());
        let result = match written {
            Ok(()) => {
                let wal = g.wal_mut();
                if wal.maybe_delete() {
                    self.bg_cv.notify_one();
                }
                // Enough log since the last checkpoint, or a settled segment waits for one: the
                // checkpointer takes the next. A segment sealed with a few stragglers: the
                // checkpointer wakes once to learn when to relocate them.
                let log_due = wal.log().checkpoint_due(flush.end(), self.checkpoint_bytes);
                let stragglers = self.relocates_after_seals() && wal.log_mut().stragglers_news();
                if log_due || stragglers || (first_new && self.checkpoint_by_time) {
                    self.ck_cv.notify_one();
                }
                Ok(())
            }
            Err(e) => {
                // What this process wrote past the durable end may sit in the page cache without
                // ever reaching the disk: a reopen in this process must cut it, not trust it.
                let durable = g.wal().durable();
                self.storage.set_suspect(&self.log_dir, Some(durable));
                Err(self.poison(g, format!("log write or fdatasync failed: {e}")))
            }
        };
        self.durable_cv.notify_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn segments_are_powers_of_two_between_the_bounds_and_hold_what_needs_them() {
        assert_eq!(segment_len(0, 0, MIB, 64 * MIB), MIB);
        assert_eq!(segment_len(3 * MIB, 0, MIB, 64 * MIB), 4 * MIB);
        assert_eq!(segment_len(u64::MAX, 0, MIB, 64 * MIB), 64 * MIB);
        assert_eq!(segment_len(0, 5 * MIB, MIB, 64 * MIB), 8 * MIB);
        // Bounds that are not powers of two are kept, and a need is met up to the largest.
        assert_eq!(segment_len(0, 0, 3 * MIB, 100 * MIB), 3 * MIB);
        assert_eq!(segment_len(0, 90 * MIB, 3 * MIB, 100 * MIB), 100 * MIB);
        assert_eq!(segment_len(0, 100 * MIB, MIB, 100 * MIB), 100 * MIB);
    }

    #[test]
    fn the_rate_is_measured_over_windows_of_a_second_at_least() {
        let mut s = Sizer::default();
        assert_eq!(s.fill_bytes(1_000, 0), 0, "no rate before a window");
        // Half a second in, 3 MiB written: counted as 3 MiB a second so far.
        assert_eq!(s.fill_bytes(1_500, 3 * MIB), 6 * MIB);
        // The window closes at 2 s with 8 MiB a second; that rate holds for the next window.
        assert_eq!(s.fill_bytes(2_000, 8 * MIB), 16 * MIB);
        assert_eq!(s.fill_bytes(2_100, 8 * MIB), 16 * MIB);
        // A quiet window brings it down.
        assert_eq!(s.fill_bytes(60_000, 8 * MIB + 10), 0);
        s.restart(60_000, 9 * MIB);
        assert_eq!(s.fill_bytes(60_001, 9 * MIB), 0);
    }

    #[test]
    fn segments_are_written_with_zeros_only_where_syncs_are_small() {
        let mut s = Sizer::default();
        assert!(s.zero(0, 0), "nothing known yet: durable pushes are the default");
        assert!(s.zero(4096 * 100, 100), "4 KiB per sync");
        assert!(!s.zero(4096 * 100 + 400 * 1024 * 10, 110), "400 KiB per sync");
        let b = 4096 * 100 + 400 * 1024 * 10;
        assert!(!s.zero(b + 64 * MIB, 111), "64 MiB in one sync");
        assert!(!s.zero(b + 128 * MIB, 111), "written and never synced");
        assert!(s.zero(b + 128 * MIB, 111), "nothing since");
    }
}
