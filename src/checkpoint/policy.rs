//! When to take a checkpoint: the one place that decides it, for the checkpointer thread, the
//! deterministic tests' `maintain`, and (through `Log::checkpoint_due`, the log's half of the
//! rule) the flush that wakes the checkpointer.

use std::time::Instant;

use crate::clock::deadline_after;
use crate::log::Wal;
use crate::options::Options;

/// The checkpointer's bookkeeping, guarded by `Shared::checkpointing` (taken before the
/// store's mutex).
#[derive(Debug)]
pub(crate) struct Checkpointer {
    /// When the last checkpoint was taken (or the store opened).
    last: Instant,
    /// The last transaction failed: the next one rewrites the state database from memory.
    reconcile: bool,
}

impl Checkpointer {
    /// The bookkeeping of a store just opened.
    pub(crate) fn new() -> Checkpointer {
        Checkpointer { last: Instant::now(), reconcile: false }
    }

    /// When the last checkpoint was taken (or the store opened).
    pub(crate) fn last(&self) -> Instant {
        self.last
    }

    /// Whether the next checkpoint must rewrite the state database from memory.
    pub(crate) fn reconcile(&self) -> bool {
        self.reconcile
    }

    /// A checkpoint failed: the next one rewrites the state database from memory (the failed
    /// transaction may have committed anyway).
    pub(crate) fn failed(&mut self) {
        self.reconcile = true;
    }

    /// A checkpoint committed now.
    pub(crate) fn committed(&mut self) {
        self.reconcile = false;
        self.last = Instant::now();
    }
}

/// The store's state as the policy reads it: the write state, whether something asked for a
/// checkpoint now, and the options.
pub(crate) struct Policy<'a> {
    pub wal: &'a Wal,
    pub wanted: bool,
    pub opts: &'a Options,
}

impl Policy<'_> {
    /// Whether a checkpoint is due for what the log holds (not for the time since the last
    /// one): asked for, enough log since the last, or a settled segment waits for one. The
    /// deterministic tests' `maintain` goes by this alone.
    pub(crate) fn due_by_log(&self) -> bool {
        self.wanted
            || self.wal.log().checkpoint_due(self.wal.next_lsn(), self.opts.checkpoint_bytes)
    }

    /// When the stragglers of the segment sealed last are due for relocation
    /// (`Log::stragglers_due_at`), if checkpoints are asked for at least once a segment: the
    /// segment then goes without waiting for another segment's worth of log or the interval.
    fn stragglers_due_at(&self) -> Option<Instant> {
        let every_segment = self.opts.checkpoint_bytes <= self.opts.segment_bytes;
        every_segment.then(|| self.wal.log().stragglers_due_at()).flatten()
    }

    /// Whether the log holds anything the last checkpoint does not cover.
    fn something_new(&self) -> bool {
        self.wal.next_lsn() > self.wal.log().checkpoint()
    }

    /// Whether the checkpointer should run now: asked to, enough log since the last one, its
    /// interval passed with something new, a settled segment waits only for it, or a segment
    /// the snapshot needs is gone (an open would replay the whole log).
    fn due(&self, last: Instant, now: Instant) -> bool {
        self.due_by_log()
            || self.wal.log().snapshot_stale()
            || self.stragglers_due_at().is_some_and(|t| now >= t)
            || (self.something_new()
                && self.opts.checkpoint_interval.is_some_and(|i| now >= deadline_after(last, i)))
    }

    /// What the checkpointer thread does next at `now`, `last` being the time of the last
    /// checkpoint and `retry_at` the end of the back-off after a failed one. It sleeps until
    /// the next trigger it can act on: a poisoned store takes no checkpoint (only the close
    /// wakes it), and a back-off is not cut short by triggers that came due meanwhile. A
    /// trigger it cannot act on never sets its deadline: one in the past would make it spin.
    pub(crate) fn next(&self, last: Instant, retry_at: Option<Instant>, now: Instant) -> Next {
        if self.wal.poisoned().is_some() {
            return Next::Sleep(None);
        }
        if let Some(t) = retry_at.filter(|&t| now < t) {
            return Next::Sleep(Some(t));
        }
        if self.due(last, now) {
            return Next::Checkpoint;
        }
        // Not due, so the time triggers lie ahead. The interval counts only once the log holds
        // something new (the flush that first writes past the checkpoint wakes this thread).
        let interval = self
            .opts
            .checkpoint_interval
            .filter(|_| self.something_new())
            .map(|i| deadline_after(last, i));
        let wake = [interval, self.stragglers_due_at()].into_iter().flatten().min();
        debug_assert!(wake.is_none_or(|t| t > now), "the checkpointer would spin");
        Next::Sleep(wake)
    }
}

/// What the checkpointer thread does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Checkpoint,
    /// Sleep until signalled, or until this time (always in the future).
    Sleep(Option<Instant>),
}
