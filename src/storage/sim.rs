//! A simulated disk: deterministic, in memory, with the failure modes of a real one.
//!
//! Invariant: every file keeps what reads see (`data`) apart from what a power loss would keep
//! (`durable`, as of its last successful sync), and every directory keeps its visible entries
//! apart from its durable ones (as of its last directory sync). A crash image is built from the
//! durable state plus a policy's choice of what was not yet synced; nothing else survives.
//!
//! Every call counts as one operation with a global index and the caller's source location
//! (`#[track_caller]` through the storage traits), which is what lets tests crash at every
//! operation index and prove that every call site received an injected error.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{LockGuard, MapView, Storage, StorageFile};

/// Sector size for torn writes and garbage.
const SECTOR: usize = 512;

/// The kind of a storage operation, for fault targeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `create_dir_all`
    Mkdir,
    /// `list`
    List,
    /// `open` of an existing file
    Open,
    /// `open` creating a file
    Create,
    /// `rename`
    Rename,
    /// `remove`
    Remove,
    /// directory sync
    DirSync,
    /// `lock`
    Lock,
    /// `len`
    Len,
    /// `read_at`
    Read,
    /// `write_at`
    Write,
    /// `sync_data`
    Sync,
    /// `allocate`
    Allocate,
    /// `set_len`
    SetLen,
}

impl OpKind {
    /// Every kind.
    pub const ALL: [OpKind; 14] = [
        OpKind::Mkdir,
        OpKind::List,
        OpKind::Open,
        OpKind::Create,
        OpKind::Rename,
        OpKind::Remove,
        OpKind::DirSync,
        OpKind::Lock,
        OpKind::Len,
        OpKind::Read,
        OpKind::Write,
        OpKind::Sync,
        OpKind::Allocate,
        OpKind::SetLen,
    ];
}

/// What a crash keeps of the writes and directory changes that were not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Everything written survives (a process kill: the page cache stays).
    KeepAll,
    /// Nothing unsynced survives.
    DropAllUnsynced,
    /// File contents survive, directory changes not covered by a directory sync do not.
    DropUnsyncedDirOps,
    /// Each unsynced write independently survives, vanishes, is torn at a sector boundary or
    /// has some sectors replaced by garbage (where the disk held only zeros) or left as they
    /// were; each unsynced directory entry change survives or not. Later writes may survive
    /// where earlier ones did not.
    RandomSubset,
    /// Size changes survive but unsynced data does not: files grow with garbage.
    GrowWithGarbage,
}

impl CrashPolicy {
    /// The deterministic policies (one image each).
    pub const DETERMINISTIC: [CrashPolicy; 4] = [
        CrashPolicy::KeepAll,
        CrashPolicy::DropAllUnsynced,
        CrashPolicy::DropUnsyncedDirOps,
        CrashPolicy::GrowWithGarbage,
    ];
}

/// An injected fault: the `nth` (from 1) operation of `kind` fails, once or from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The kind of operation to fail.
    pub kind: OpKind,
    /// Which one, counting from 1, among the operations of that kind after the fault was set.
    pub nth: u64,
    /// `StorageFull` (ENOSPC) rather than a generic I/O error (EIO).
    pub no_space: bool,
    /// Every later operation of the kind fails too.
    pub persistent: bool,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { off: usize, data: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Ranges whose writes a failed sync dropped: no later sync makes them durable.
    lost: Vec<(usize, usize)>,
    /// Live views of the file: each learns the lowest offset written after it was made.
    views: Vec<std::sync::Weak<AtomicU64>>,
}

impl Inode {
    /// Tells the live views that the file changed from `off` on.
    fn changed_from(&mut self, off: usize) {
        self.views.retain(|v| match v.upgrade() {
            Some(v) => {
                v.fetch_min(off as u64, Ordering::SeqCst);
                true
            }
            None => false,
        });
    }
}

/// The simulated disk's "map": a snapshot of the file that knows from where it went stale.
struct SimView {
    bytes: Vec<u8>,
    current_below: Arc<AtomicU64>,
}

impl super::View for SimView {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn current_below(&self) -> u64 {
        self.current_below.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Default)]
struct Dir {
    visible: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
}

/// Counts of one call site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiteCount {
    /// Operations issued from the site.
    pub calls: u64,
    /// Of those, operations that failed by injection.
    pub injected: u64,
}

#[derive(Debug, Default)]
struct Sim {
    inodes: Vec<Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    locks: BTreeSet<PathBuf>,
    /// `set_suspect` entries: they live as long as the simulated machine, not in its images.
    suspect: BTreeMap<PathBuf, u64>,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    fault: Option<Fault>,
    fault_seen: u64,
    fault_fired: bool,
    faults_injected: u64,
    sites: BTreeMap<String, SiteCount>,
}

/// The simulated disk. Clones share one disk.
#[derive(Clone, Default)]
pub struct SimFs {
    sim: Arc<Mutex<Sim>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.sim.lock();
        f.debug_struct("SimFs").field("ops", &s.ops).field("files", &s.inodes.len()).finish()
    }
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    Ok((parent, name))
}

fn eio(why: &str) -> io::Error {
    io::Error::other(why.to_owned())
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

impl Sim {
    /// Counts one operation; fails it if the disk crashed or a fault targets it.
    fn op(&mut self, kind: OpKind, site: &Location<'_>) -> io::Result<()> {
        self.ops += 1;
        let entry = self.sites.entry(format!("{}:{}", site.file(), site.line())).or_default();
        entry.calls += 1;
        if self.crashed || self.crash_at.is_some_and(|at| self.ops >= at) {
            self.crashed = true;
            return Err(eio("simulated crash: the disk is gone"));
        }
        if let Some(f) = self.fault {
            if f.kind == kind {
                self.fault_seen += 1;
                let fire = self.fault_seen == f.nth || (f.persistent && self.fault_seen > f.nth);
                if fire {
                    self.fault_fired = true;
                    self.faults_injected += 1;
                    entry.injected += 1;
                    return Err(if f.no_space {
                        io::Error::new(io::ErrorKind::StorageFull, "injected ENOSPC")
                    } else {
                        eio("injected EIO")
                    });
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, path: &Path) -> io::Result<usize> {
        let (dir, name) = split(path)?;
        self.dirs
            .get(&dir)
            .and_then(|d| d.visible.get(&name))
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs
            .get_mut(dir)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such directory"))
    }

    fn inode(&mut self, ino: usize) -> io::Result<&mut Inode> {
        self.inodes.get_mut(ino).ok_or_else(|| eio("stale inode"))
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

    /// The disk as it would be found after a power loss now, under `policy`; `seed` drives
    /// the random choices. The image is a new disk: no locks, no crash point, no faults.
    pub fn crash_image(&self, policy: CrashPolicy, seed: u64) -> SimFs {
        let s = self.sim.lock();
        let mut rng = Rng::new(seed);
        let mut inodes = Vec::with_capacity(s.inodes.len());
        for ino in &s.inodes {
            let data = match policy {
                CrashPolicy::KeepAll | CrashPolicy::DropUnsyncedDirOps => ino.data.clone(),
                CrashPolicy::DropAllUnsynced => ino.durable.clone(),
                CrashPolicy::GrowWithGarbage => {
                    let mut d = ino.durable.clone();
                    let old = d.len();
                    if ino.data.len() > old {
                        d.resize(ino.data.len(), 0);
                        for b in d.get_mut(old..).unwrap_or(&mut []) {
                            *b = rng.next_u64() as u8;
                        }
                    }
                    d
                }
                CrashPolicy::RandomSubset => random_subset(ino, &mut rng),
            };
            inodes.push(Inode { durable: data.clone(), data, ..Inode::default() });
        }
        let mut dirs = BTreeMap::new();
        for (path, d) in &s.dirs {
            let entries = match policy {
                CrashPolicy::KeepAll => d.visible.clone(),
                CrashPolicy::RandomSubset => {
                    let names: BTreeSet<&String> =
                        d.visible.keys().chain(d.durable.keys()).collect();
                    let mut e = BTreeMap::new();
                    for name in names {
                        let pick = if rng.below(2) == 0 { &d.visible } else { &d.durable };
                        if let Some(&ino) = pick.get(name) {
                            e.insert(name.clone(), ino);
                        }
                    }
                    e
                }
                _ => d.durable.clone(),
            };
            dirs.insert(path.clone(), Dir { visible: entries.clone(), durable: entries });
        }
        let sim = Sim { inodes, dirs, sites: s.sites.clone(), ..Sim::default() };
        SimFs { sim: Arc::new(Mutex::new(sim)) }
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

/// Applies each pending write of `ino` to its durable bytes, or not, or torn, or as garbage.
fn random_subset(ino: &Inode, rng: &mut Rng) -> Vec<u8> {
    let mut d = ino.durable.clone();
    for p in &ino.pending {
        match p {
            Pending::SetLen(len) => {
                if rng.below(4) != 0 {
                    d.resize(*len, 0);
                }
            }
            Pending::Write { off, data } => {
                let mut data = data.clone();
                match rng.below(4) {
                    0 => continue, // dropped
                    1 => {
                        // Torn at a sector boundary inside the write: a prefix survives.
                        let sectors = data.len().div_ceil(SECTOR) as u64;
                        let keep = (rng.below(sectors) as usize) * SECTOR;
                        data.truncate(keep.min(data.len()));
                    }
                    2 => {
                        // Some sectors hold garbage where nothing was ever written (all zeros
                        // on disk); a sector that held data keeps its old bytes or gets the new
                        // ones, never garbage (powersafe overwrite, as SQLite assumes).
                        for (k, chunk) in data.chunks_mut(SECTOR).enumerate() {
                            if rng.below(3) != 0 {
                                continue;
                            }
                            let at = off + k * SECTOR;
                            let old = d.get(at..(at + chunk.len()).min(d.len())).unwrap_or(&[]);
                            if old.iter().all(|&b| b == 0) {
                                for b in chunk.iter_mut() {
                                    *b = rng.next_u64() as u8;
                                }
                            } else {
                                let n = old.len();
                                chunk[..n].copy_from_slice(old);
                            }
                        }
                    }
                    _ => {}
                }
                let end = off + data.len();
                if d.len() < end {
                    d.resize(end, 0);
                }
                if let Some(dst) = d.get_mut(*off..end) {
                    dst.copy_from_slice(&data);
                }
            }
        }
    }
    d
}

struct SimFile {
    sim: Arc<Mutex<Sim>>,
    ino: usize,
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

impl StorageFile for SimFile {
    #[track_caller]
    fn len(&self) -> io::Result<u64> {
        let mut s = self.sim.lock();
        s.op(OpKind::Len, Location::caller())?;
        Ok(s.inode(self.ino)?.data.len() as u64)
    }

    #[track_caller]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.op(OpKind::Read, Location::caller())?;
        let data = &s.inode(self.ino)?.data;
        let start = usize::try_from(offset).map_err(|_| eio("offset"))?;
        let src = data
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    #[track_caller]
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.sim.lock();
        let result = s.op(OpKind::Write, Location::caller());
        let crashed = s.crashed;
        let off = usize::try_from(offset).map_err(|_| eio("offset"))?;
        // An injected write failure is a short write: the first half of the bytes land in the
        // page cache (and may or may not reach the disk) before the error.
        let buf = match result {
            Ok(()) => buf,
            Err(e) if crashed => return Err(e),
            Err(e) => {
                let half = buf.get(..buf.len() / 2).unwrap_or(&[]);
                let ino = s.inode(self.ino)?;
                apply_write(ino, off, half);
                return Err(e);
            }
        };
        let ino = s.inode(self.ino)?;
        apply_write(ino, off, buf);
        Ok(())
    }

    #[track_caller]
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.sim.lock();
        let result = s.op(OpKind::Sync, Location::caller());
        let crashed = s.crashed;
        let ino = s.inode(self.ino)?;
        match result {
            Ok(()) => {
                let mut durable = ino.data.clone();
                for &(off, len) in &ino.lost {
                    for (i, b) in durable.iter_mut().enumerate().skip(off).take(len) {
                        *b = ino.durable.get(i).copied().unwrap_or(0);
                    }
                }
                ino.durable = durable;
                ino.pending.clear();
                Ok(())
            }
            Err(e) => {
                // fsyncgate: after a failed sync the kernel may mark the dirty pages clean, so a
                // later sync "succeeds" without ever making them durable.
                if !crashed {
                    for p in ino.pending.drain(..) {
                        if let Pending::Write { off, data } = p {
                            ino.lost.push((off, data.len()));
                        }
                    }
                }
                Err(e)
            }
        }
    }

    #[track_caller]
    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.op(OpKind::Allocate, Location::caller())?;
        let len = usize::try_from(len).map_err(|_| eio("length"))?;
        let ino = s.inode(self.ino)?;
        if ino.data.len() < len {
            ino.changed_from(ino.data.len());
            ino.data.resize(len, 0);
            ino.pending.push(Pending::SetLen(len));
        }
        Ok(())
    }

    #[track_caller]
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.op(OpKind::SetLen, Location::caller())?;
        let len = usize::try_from(len).map_err(|_| eio("length"))?;
        let ino = s.inode(self.ino)?;
        ino.changed_from(len.min(ino.data.len()));
        ino.data.resize(len, 0);
        ino.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn map(&self) -> io::Result<Option<MapView>> {
        let mut s = self.sim.lock();
        let ino = s.inode(self.ino)?;
        let current_below = Arc::new(AtomicU64::new(u64::MAX));
        ino.views.push(Arc::downgrade(&current_below));
        Ok(Some(Box::new(SimView { bytes: ino.data.clone(), current_below })))
    }
}

/// Writes `buf` at `off` into the visible bytes and records it as pending. A lost range it
/// touches is dirty again, so a later sync writes it (as the kernel writes a redirtied page).
fn apply_write(ino: &mut Inode, off: usize, buf: &[u8]) {
    let end = off + buf.len();
    ino.changed_from(off);
    ino.lost.retain(|&(lo, len)| lo + len <= off || end <= lo);
    if ino.data.len() < end {
        ino.data.resize(end, 0);
    }
    if let Some(dst) = ino.data.get_mut(off..end) {
        dst.copy_from_slice(buf);
    }
    ino.pending.push(Pending::Write { off, data: buf.to_vec() });
}
