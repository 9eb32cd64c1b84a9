//! The storage seam: the `Storage` (directory) and `StorageFile` (one file) traits every file
//! operation of wharf goes through, and the read-only `View` a file can be mapped as.

use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A read-only view of a whole file, made once.
pub(crate) trait View: Send + Sync {
    /// The file's bytes. A shared mapping reflects later writes made through the file's handle;
    /// a snapshot (the simulated disk's) does not, see `current_below`.
    fn bytes(&self) -> &[u8];
    /// Bytes below this offset are what the file holds now; above it the file may have been
    /// written since the view was made. A real mapping is always current.
    fn current_below(&self) -> u64 {
        u64::MAX
    }
}

impl View for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A view of a file, as `StorageFile::map` makes it.
pub(crate) type MapView = Box<dyn View>;

/// A held directory lock; dropping it releases the lock.
pub(crate) type LockGuard = Box<dyn Any + Send + Sync>;

/// The directory-level operations.
pub(crate) trait Storage: Send + Sync + 'static {
    /// Creates `dir` and its parents if missing.
    #[track_caller]
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries in `dir`.
    #[track_caller]
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing, or creates a new one (`create`: fail if
    /// it exists).
    #[track_caller]
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens an existing file for reading only: its writes fail. `verify` reads a store that
    /// may be open elsewhere through it. The default opens it as `open` does (a simulated
    /// disk's file is only read by a caller that does not write).
    #[track_caller]
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.open(path, false)
    }
    /// Renames `from` to `to`, replacing `to`.
    #[track_caller]
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    #[track_caller]
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    #[track_caller]
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the file at `path` (created if missing). `Ok(None)` when some
    /// other handle holds it.
    #[track_caller]
    fn lock(&self, path: &Path) -> io::Result<Option<LockGuard>>;
    /// Remembers for as long as this process (or simulated machine) lives that the log in
    /// `dir` is durable only below `lsn` (`None` forgets it). After a failed `fdatasync` the
    /// page cache may hold records that never reach the disk and that no later sync will write
    /// (fsyncgate); a reopen in the same process must not build on them.
    fn set_suspect(&self, dir: &Path, lsn: Option<u64>);
    /// What `set_suspect` remembered for `dir`.
    fn suspect(&self, dir: &Path) -> Option<u64>;
}

/// One open file.
pub(crate) trait StorageFile: Send + Sync {
    /// The file's length in bytes.
    #[track_caller]
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; fails if the file ends first.
    #[track_caller]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    #[track_caller]
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: makes the written bytes (and the size) durable.
    #[track_caller]
    fn sync_data(&self) -> io::Result<()>;
    /// Reserves disk space for `[0, len)` and sets the length to `len`; fails with
    /// `StorageFull` when the disk has no room.
    #[track_caller]
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Sets the length to `len`, cutting or extending with zeros (redb's files grow and shrink).
    #[track_caller]
    #[cfg_attr(not(feature = "testing"), allow(dead_code))] // the redb backend's
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// A read-only view of the whole file, or `None` where this storage cannot map.
    fn map(&self) -> io::Result<Option<MapView>>;
}
