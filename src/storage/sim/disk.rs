//! The simulated machine's state: inodes with their visible and durable bytes, directories
//! with their visible and durable entries, and the count of every operation, which is where a
//! crash point or an injected fault strikes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::fault::{Fault, OpKind, SiteCount};

/// A change to a file not yet synced.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    Write { off: usize, data: Vec<u8> },
    SetLen(usize),
}

/// One file: what reads see, and what a power loss would keep.
#[derive(Debug, Clone, Default)]
pub(super) struct Inode {
    pub(super) data: Vec<u8>,
    pub(super) durable: Vec<u8>,
    pub(super) pending: Vec<Pending>,
    /// Ranges whose writes a failed sync dropped: no later sync makes them durable.
    pub(super) lost: Vec<(usize, usize)>,
    /// Live views of the file: each learns the lowest offset written after it was made.
    pub(super) views: Vec<std::sync::Weak<AtomicU64>>,
}

impl Inode {
    /// Tells the live views that the file changed from `off` on.
    pub(super) fn changed_from(&mut self, off: usize) {
        self.views.retain(|v| match v.upgrade() {
            Some(v) => {
                v.fetch_min(off as u64, Ordering::SeqCst);
                true
            }
            None => false,
        });
    }
}

/// One directory: its entries as listed now, and as of its last sync.
#[derive(Debug, Clone, Default)]
pub(super) struct Dir {
    pub(super) visible: BTreeMap<String, usize>,
    pub(super) durable: BTreeMap<String, usize>,
}

/// The whole simulated machine, behind one lock.
#[derive(Debug, Default)]
pub(super) struct Sim {
    pub(super) inodes: Vec<Inode>,
    pub(super) dirs: BTreeMap<PathBuf, Dir>,
    pub(super) locks: BTreeSet<PathBuf>,
    /// `set_suspect` entries: they live as long as the simulated machine, not in its images.
    pub(super) suspect: BTreeMap<PathBuf, u64>,
    pub(super) ops: u64,
    pub(super) crash_at: Option<u64>,
    pub(super) crashed: bool,
    pub(super) fault: Option<Fault>,
    pub(super) fault_seen: u64,
    pub(super) fault_fired: bool,
    pub(super) faults_injected: u64,
    pub(super) sites: BTreeMap<String, SiteCount>,
}

/// A path's directory and file name.
pub(super) fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    Ok((parent, name))
}

/// A generic I/O error (EIO).
pub(super) fn eio(why: &str) -> io::Error {
    io::Error::other(why.to_owned())
}

impl Sim {
    /// Counts one operation; fails it if the disk crashed or a fault targets it.
    pub(super) fn op(&mut self, kind: OpKind, site: &Location<'_>) -> io::Result<()> {
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

    pub(super) fn lookup(&self, path: &Path) -> io::Result<usize> {
        let (dir, name) = split(path)?;
        self.dirs
            .get(&dir)
            .and_then(|d| d.visible.get(&name))
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    pub(super) fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs
            .get_mut(dir)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such directory"))
    }

    pub(super) fn inode(&mut self, ino: usize) -> io::Result<&mut Inode> {
        self.inodes.get_mut(ino).ok_or_else(|| eio("stale inode"))
    }
}

/// Writes `buf` at `off` into the visible bytes and records it as pending. A lost range it
/// touches is dirty again, so a later sync writes it (as the kernel writes a redirtied page).
pub(super) fn apply_write(ino: &mut Inode, off: usize, buf: &[u8]) {
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
