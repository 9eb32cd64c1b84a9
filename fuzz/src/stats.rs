//! Counts of what the targets reached in this process (checkpoints taken, messages relocated
//! into `state.redb`, panics of redb that wharf caught), for tests and the seed generator to
//! check that the operation mix reaches relocation, and for a run to be inspected.

use std::sync::atomic::{AtomicU64, Ordering};

use wharf::CheckpointReport;

static CHECKPOINTS: AtomicU64 = AtomicU64::new(0);
static RELOCATED: AtomicU64 = AtomicU64::new(0);
static SEGMENTS_DELETED: AtomicU64 = AtomicU64::new(0);
static REDB_PANICS: AtomicU64 = AtomicU64::new(0);

/// A successful `Wharf::checkpoint`.
pub fn note_checkpoint(r: &CheckpointReport) {
    CHECKPOINTS.fetch_add(1, Ordering::Relaxed);
    RELOCATED.fetch_add(r.relocated, Ordering::Relaxed);
    SEGMENTS_DELETED.fetch_add(r.segments_deleted as u64, Ordering::Relaxed);
}

/// A panic raised in redb's code (wharf catches it: see `targets::tolerate_redb_panics`).
pub fn note_redb_panic() {
    REDB_PANICS.fetch_add(1, Ordering::Relaxed);
}

/// What the explicit checkpoints of this process did so far, and how often redb panicked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub checkpoints: u64,
    pub relocated: u64,
    pub segments_deleted: u64,
    pub redb_panics: u64,
}

/// The counts so far.
pub fn counts() -> Counts {
    Counts {
        checkpoints: CHECKPOINTS.load(Ordering::Relaxed),
        relocated: RELOCATED.load(Ordering::Relaxed),
        segments_deleted: SEGMENTS_DELETED.load(Ordering::Relaxed),
        redb_panics: REDB_PANICS.load(Ordering::Relaxed),
    }
}
