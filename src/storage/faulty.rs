//! A test storage: the real file system with switchable failures of `fdatasync`, writes and
//! preallocation, to check that the store poisons itself or reports `NoSpace` as it must.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::real::RealFs;
use super::traits::{LockGuard, MapView, Storage, StorageFile};

/// Which operations fail from now on.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub sync: AtomicBool,
    pub write: AtomicBool,
    pub allocate: AtomicBool,
}

pub(crate) struct FaultyFs {
    pub faults: Arc<Faults>,
}

struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    faults: Arc<Faults>,
}

fn fail(on: &AtomicBool, kind: io::ErrorKind) -> io::Result<()> {
    if on.load(Ordering::SeqCst) {
        return Err(io::Error::new(kind, "injected fault"));
    }
    Ok(())
}

impl Storage for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let inner = RealFs.open(path, create)?;
        Ok(Arc::new(FaultyFile { inner, faults: Arc::clone(&self.faults) }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        RealFs.lock(path)
    }
    fn set_suspect(&self, dir: &Path, lsn: Option<u64>) {
        RealFs.set_suspect(dir, lsn);
    }
    fn suspect(&self, dir: &Path) -> Option<u64> {
        RealFs.suspect(dir)
    }
}

impl StorageFile for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        fail(&self.faults.write, io::ErrorKind::Other)?;
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        fail(&self.faults.sync, io::ErrorKind::Other)?;
        self.inner.sync_data()
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        fail(&self.faults.allocate, io::ErrorKind::StorageFull)?;
        self.inner.allocate(len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn map(&self) -> io::Result<Option<MapView>> {
        self.inner.map()
    }
}
