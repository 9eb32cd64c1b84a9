//! Deleting what the log no longer needs: settled segments (oldest first, behind a durable
//! anchor), whose files may be kept to be recycled as spares; the files kept, once the log is
//! quiet or closes; spares given back under a disk quota. A close waits for a deletion in
//! progress, so that it deletes what that one left behind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use super::{GroupCommit, LogHost};
use crate::error::Result;
use crate::failpoint;
use crate::log::recovery::last_nonzero;
use crate::log::segment::{recycled_path, Segment};
use crate::log::segments::SegInfo;

impl GroupCommit {
    /// Deletes the files of deleted segments kept for recycling (a quiet log, a close, or a
    /// quota that needs their room). A failure poisons the store, as a failed deletion does.
    pub(super) fn drop_recycled<H: LogHost>(&self, state: &Mutex<H>) -> Result<()> {
        loop {
            let Some((path, _)) = state.lock().wal_mut().log_mut().take_recycled() else {
                return Ok(());
            };
            self.remove_file(state, &path)?;
        }
    }

    /// Deletes the files of settled segments (already taken out of the log), oldest first,
    /// each removal made durable before the next, so that a crash never leaves a gap. Before
    /// the first, an anchor stating where the log now starts is made durable, so that a
    /// segment found missing later is never taken for one deleted (`Body::Anchor`); when the
    /// log has no room for it yet, the segments are put back, to go once a spare exists.
    /// Returns how many went. A failure poisons the store.
    pub(crate) fn delete_segments<H: LogHost>(
        &self,
        g: &mut MutexGuard<'_, H>,
        dead: Vec<SegInfo>,
    ) -> Result<usize> {
        if dead.is_empty() {
            return Ok(0);
        }
        if g.wal_mut().append_anchor().is_none() {
            g.wal_mut().log_mut().restore(dead);
            g.wal_mut().set_anchor_waits();
            return Ok(0);
        }
        // Taken under the mutex with these segments: until they are gone, nobody else takes
        // (and deletes) later ones.
        g.wal_mut().log_mut().set_deleting(true);
        let end = g.wal().next_lsn();
        if let Err(e) = self.wait_durable(g, end) {
            g.wal_mut().log_mut().set_deleting(false);
            g.wal_mut().log_mut().restore(dead);
            return Err(e);
        }
        // The oldest files go to be recycled, up to the room for them, if nothing else holds
        // their segment (a delivery's payload may be a slice of its map: its bytes must not
        // change, nor its file shrink, under it). Not under a disk quota: there a deletion
        // frees its room at once, which a full store's pushes wait for.
        let mut room = match self.max_disk_bytes {
            Some(_) => 0,
            None => g.wal().log().recycle_room(),
        };
        let count = dead.len();
        let dead: Vec<(SegInfo, bool)> = dead
            .into_iter()
            .map(|s| {
                let keep = room > 0 && Arc::strong_count(s.seg()) == 1;
                room -= usize::from(keep);
                (s, keep)
            })
            .collect();
        let mut kept = Vec::new();
        let removed = MutexGuard::unlocked(g, || -> std::io::Result<()> {
            for (s, keep) in dead {
                let (path, base, len) =
                    (s.seg().path().to_path_buf(), s.seg().base(), s.seg().len());
                // Closed (and unmapped) before its file is touched again.
                drop(s);
                if keep {
                    // Renamed out of the log, and that made durable, before anything in it is
                    // written: a crash never brings back the old segment with new bytes.
                    let to = recycled_path(&self.log_dir, base);
                    self.storage.rename(&path, &to)?;
                    kept.push((to, len));
                } else {
                    self.storage.remove(&path)?;
                }
                failpoint::hit("segment-removed-before-dir-sync");
                self.storage.sync_dir(&self.log_dir)?;
            }
            Ok(())
        });
        // A close that began meanwhile keeps none: those go as the others did.
        let mut unkept = Vec::new();
        for (path, len) in kept {
            if g.wal().log().recycle_room() > 0 {
                g.wal_mut().log_mut().keep_recycled(path, len);
            } else {
                unkept.push(path);
            }
        }
        let removed = removed.and_then(|()| {
            MutexGuard::unlocked(g, || {
                for path in &unkept {
                    self.storage.remove(path)?;
                    self.storage.sync_dir(&self.log_dir)?;
                }
                Ok(())
            })
        });
        g.wal_mut().log_mut().set_deleting(false);
        // Others may have found segments to delete meanwhile and left them: look again.
        g.wal_mut().set_maybe_delete(true);
        self.bg_cv.notify_one();
        self.space_cv.notify_all();
        if g.wal().log().snapshot_stale() {
            self.ck_cv.notify_one();
        }
        if let Err(e) = removed {
            return Err(self.poison(g, format!("deleting a settled segment failed: {e}")));
        }
        Ok(count)
    }

    /// Takes out of the log the segments that may be deleted now and deletes them (see
    /// `delete_segments`); returns how many went.
    pub(crate) fn delete_settled<H: LogHost>(&self, g: &mut MutexGuard<'_, H>) -> Result<usize> {
        let durable = g.wal().durable();
        let dead = g.wal_mut().log_mut().take_deletable(durable);
        self.delete_segments(g, dead)
    }

    /// [`GroupCommit::delete_settled`] for a close: first waits until no other thread is
    /// deleting, since one that is took only the segments settled when it began and leaves the
    /// rest (the one the close's shrink just sealed, say) to whoever looks next, which after a
    /// close is nobody.
    pub(crate) fn delete_settled_at_close<H: LogHost>(
        &self,
        g: &mut MutexGuard<'_, H>,
    ) -> Result<usize> {
        while g.wal().log().deleting() {
            g.check()?;
            // Its end notifies `space_cv`; the timeout covers an end by a failure (which
            // poisons the store: `check` then fails).
            self.space_cv.wait_for(g, Duration::from_millis(10));
        }
        self.delete_settled(g)
    }

    /// At a clean close, once nothing writes the log any more (the threads joined: a
    /// background deletion may append its anchor after the close's mark), with the log
    /// durable up to `end` in the active segment `seg`: the bytes within its unsynced bound
    /// past `end` (where the reopen looks for a torn tail) are made zeros and synced if they
    /// are not, so that the reopen finds the log ending in zeros and cuts nothing. They are
    /// not zeros in a segment made from a deleted one's file (`Segment::recycle`): the old
    /// segment's records. A crash before this leaves them there: the reopen cuts them as a
    /// torn tail.
    pub(crate) fn clear_tail(&self, seg: &Segment, end: u64) -> std::io::Result<()> {
        let to = end.saturating_add(seg.unsynced_bound().unwrap_or(0)).min(seg.end());
        if end < seg.base() || to <= end {
            return Ok(());
        }
        let bytes = seg.read(end, usize::try_from(to - end).unwrap_or(0))?;
        let Some(last) = last_nonzero(&bytes) else { return Ok(()) };
        seg.write(end, &vec![0u8; last + 1])?;
        seg.sync()
    }

    /// Deletes the file of a spare segment taken out of the log (it holds no records); a
    /// failure poisons the store, as a failed deletion does.
    pub(super) fn remove_spare<H: LogHost>(
        &self,
        state: &Mutex<H>,
        spare: Arc<Segment>,
    ) -> Result<()> {
        let path = spare.path().to_path_buf();
        drop(spare);
        self.remove_file(state, &path)
    }

    /// Deletes a file that holds no records (a spare, or one kept for recycling), then syncs
    /// the directory; a failure poisons the store.
    fn remove_file<H: LogHost>(&self, state: &Mutex<H>, path: &Path) -> Result<()> {
        let removed = self.storage.remove(path).and_then(|()| self.storage.sync_dir(&self.log_dir));
        if let Err(e) = removed {
            let mut g = state.lock();
            return Err(self.poison(&mut g, format!("deleting a spare segment failed: {e}")));
        }
        Ok(())
    }

    /// Under a disk quota, when a settled segment waits for a checkpoint to go and the quota
    /// leaves less than `need` bytes, deletes spare segments (empty files made ahead of need,
    /// which the background thread makes again once there is room), the last first, until it
    /// does. The checkpoint comes first: without it those segments never go, and a full store
    /// would stay full for good. A failed removal poisons the store, as a failed deletion does.
    pub(crate) fn release_spares<H: LogHost>(&self, state: &Mutex<H>, need: u64) -> Result<()> {
        let Some(max) = self.max_disk_bytes else { return Ok(()) };
        // No spare is being made meanwhile: it would be based after the one taken away here.
        let _no_spare_made = self.creating.lock();
        loop {
            let spare = {
                let mut g = state.lock();
                g.check()?;
                let log = g.wal_mut().log_mut();
                if log.disk_bytes() + need <= max || !log.deletable_after_checkpoint() {
                    return Ok(());
                }
                match log.pop_last_spare() {
                    Some(spare) => spare,
                    None => return Ok(()),
                }
            };
            self.remove_spare(state, spare)?;
        }
    }
}
