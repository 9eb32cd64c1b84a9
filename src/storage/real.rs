//! The real storage: `std::fs` files, `fdatasync`, `fallocate`, `flock` and `memmap2`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::mmap;
use super::traits::{LockGuard, MapView, Storage, StorageFile};

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RealFs;

struct RealFile {
    file: File,
}

/// `set_suspect` for the real file system: one table for the process, by canonical directory.
static SUSPECT: parking_lot::Mutex<std::collections::BTreeMap<std::path::PathBuf, u64>> =
    parking_lot::Mutex::new(std::collections::BTreeMap::new());

fn canonical(dir: &Path) -> std::path::PathBuf {
    fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

impl Storage for RealFs {
    fn set_suspect(&self, dir: &Path, lsn: Option<u64>) {
        let mut table = SUSPECT.lock();
        match lsn {
            Some(lsn) => table.insert(canonical(dir), lsn),
            None => table.remove(&canonical(dir)),
        };
    }

    fn suspect(&self, dir: &Path) -> Option<u64> {
        SUSPECT.lock().get(&canonical(dir)).copied()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir).map_err(|e| {
            // A file where the directory (or one of its parents) should be: `create_dir_all`
            // says only "File exists" or "Not a directory", without naming it.
            let file = dir.ancestors().find(|p| p.exists() && !p.is_dir());
            match file {
                Some(f) => io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", f.display()),
                ),
                None => e,
            }
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).create_new(create).open(path)?;
        Ok(Arc::new(RealFile { file }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).open(path)?;
        Ok(Arc::new(RealFile { file }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl StorageFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate (tmpfs of old kernels, some FUSE): a plain size
            // change; space errors then surface at write time, which poisons the store.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => self.file.set_len(len),
            Err(e) => Err(e.into()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn map(&self) -> io::Result<Option<MapView>> {
        if self.len()? == 0 {
            return Ok(None);
        }
        Ok(Some(Box::new(mmap::map_read_only(&self.file)?)))
    }
}
