//! `SimFs`: the handle of a simulated disk, its test-facing controls and its directory-level
//! operations (`Storage`).

use std::collections::BTreeMap;
use std::io;
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::disk::{split, Inode, Sim};
use super::fault::{Fault, OpKind, SiteCount};
use super::file::SimFile;
use crate::storage::traits::{LockGuard, Storage, StorageFile};

/// The simulated disk. Clones share one disk.
#[derive(Clone, Default)]
pub struct SimFs {
    pub(super) sim: Arc<Mutex<Sim>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.sim.lock();
        f.debug_struct("SimFs").field("ops", &s.ops).field("files", &s.inodes.len()).finish()
    }
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Operations issued so far.
    pub fn ops(&self) -> u64 {
        self.sim.lock().ops
    }

    /// Makes operation number `op` (counting from 1 since the disk was made) and every later
    /// one fail, as if the machine died there.
    pub fn crash_at(&self, op: u64) {
        self.sim.lock().crash_at = Some(op);
    }

    /// Whether the crash point was reached.
    pub fn crashed(&self) -> bool {
        self.sim.lock().crashed
    }

    /// Sets the one fault to inject (replacing any earlier one); counting starts now.
    pub fn set_fault(&self, fault: Option<Fault>) {
        let mut s = self.sim.lock();
        s.fault = fault;
        s.fault_seen = 0;
        s.fault_fired = false;
    }

    /// Whether the current fault fired at least once.
    pub fn fault_fired(&self) -> bool {
        self.sim.lock().fault_fired
    }

    /// Per call site (`file:line` of the library code that issued the operation): calls and
    /// injected failures, over the life of this disk and its images.
    pub fn sites(&self) -> BTreeMap<String, SiteCount> {
        self.sim.lock().sites.clone()
    }

    /// Adds another disk's call-site counts into this one's.
    pub fn merge_sites(&self, other: &BTreeMap<String, SiteCount>) {
        let mut s = self.sim.lock();
        for (site, c) in other {
            let e = s.sites.entry(site.clone()).or_default();
            e.calls += c.calls;
            e.injected += c.injected;
        }
    }

    /// The visible bytes of a file, for tests that inspect or damage the disk.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.sim.lock();
        let ino = s.lookup(path)?;
        Ok(s.inodes.get(ino).map(|i| i.data.clone()).unwrap_or_default())
    }

    /// Replaces a file's bytes, visible and durable alike (damage that is already on disk).
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.sim.lock();
        let ino = s.lookup(path)?;
        let i = s.inode(ino)?;
        i.data = bytes.to_vec();
        i.durable = bytes.to_vec();
        i.pending.clear();
        Ok(())
    }

    /// Creates (or replaces) a file with these bytes, durably, creating its directory too:
    /// for tests that build a directory by hand.
    pub fn create_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let (dir, name) = split(path)?;
        let mut s = self.sim.lock();
        let mut p = PathBuf::new();
        for c in dir.components() {
            p.push(c);
            s.dirs.entry(p.clone()).or_default();
        }
        let ino = s.inodes.len();
        s.inodes.push(Inode { data: bytes.to_vec(), durable: bytes.to_vec(), ..Inode::default() });
        let d = s.dir_mut(&dir)?;
        d.visible.insert(name.clone(), ino);
        d.durable.insert(name, ino);
        Ok(())
    }

    /// The names in a directory.
    pub fn names(&self, dir: &Path) -> Vec<String> {
        self.sim
            .lock()
            .dirs
            .get(dir)
            .map(|d| d.visible.keys().cloned().collect())
            .unwrap_or_default()
    }
}

struct SimLock {
    sim: Arc<Mutex<Sim>>,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.sim.lock().locks.remove(&self.path);
    }
}

impl Storage for SimFs {
    fn set_suspect(&self, dir: &Path, lsn: Option<u64>) {
        let mut s = self.sim.lock();
        match lsn {
            Some(lsn) => s.suspect.insert(dir.to_path_buf(), lsn),
            None => s.suspect.remove(dir),
        };
    }

    fn suspect(&self, dir: &Path) -> Option<u64> {
        self.sim.lock().suspect.get(dir).copied()
    }

    #[track_caller]
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are made durably at once: the store creates them only on first open.
        let mut s = self.sim.lock();
        s.op(OpKind::Mkdir, Location::caller())?;
        let mut p = PathBuf::new();
        for c in dir.components() {
            p.push(c);
            s.dirs.entry(p.clone()).or_default();
        }
        Ok(())
    }

    #[track_caller]
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.sim.lock();
        s.op(OpKind::List, Location::caller())?;
        Ok(s.dir_mut(dir)?.visible.keys().cloned().collect())
    }

    #[track_caller]
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.sim.lock();
        let kind = if create { OpKind::Create } else { OpKind::Open };
        s.op(kind, Location::caller())?;
        let ino = if create {
            let (dir, name) = split(path)?;
            let ino = s.inodes.len();
            let d = s.dir_mut(&dir)?;
            if d.visible.contains_key(&name) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
            }
            d.visible.insert(name, ino);
            s.inodes.push(Inode::default());
            ino
        } else {
            s.lookup(path)?
        };
        Ok(Arc::new(SimFile { sim: Arc::clone(&self.sim), ino }))
    }

    #[track_caller]
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.op(OpKind::Rename, Location::caller())?;
        let ino = s.lookup(from)?;
        let (fdir, fname) = split(from)?;
        let (tdir, tname) = split(to)?;
        s.dir_mut(&fdir)?.visible.remove(&fname);
        s.dir_mut(&tdir)?.visible.insert(tname, ino);
        Ok(())
    }

    #[track_caller]
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.op(OpKind::Remove, Location::caller())?;
        let (dir, name) = split(path)?;
        s.dir_mut(&dir)?
            .visible
            .remove(&name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    #[track_caller]
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.op(OpKind::DirSync, Location::caller())?;
        let d = s.dir_mut(dir)?;
        d.durable = d.visible.clone();
        Ok(())
    }

    #[track_caller]
    fn lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let mut s = self.sim.lock();
        s.op(OpKind::Lock, Location::caller())?;
        if s.lookup(path).is_err() {
            let (dir, name) = split(path)?;
            let ino = s.inodes.len();
            s.dir_mut(&dir)?.visible.insert(name, ino);
            s.inodes.push(Inode::default());
        }
        if !s.locks.insert(path.to_owned()) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock { sim: Arc::clone(&self.sim), path: path.to_owned() })))
    }
}
