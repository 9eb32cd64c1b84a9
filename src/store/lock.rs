//! The directory lock: one open store per directory, across processes.

use std::path::Path;

use crate::error::{Error, Result};
use crate::storage::{LockGuard, Storage};

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
