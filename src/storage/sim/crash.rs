//! Crash images: the disk as a power loss would leave it, under a [`CrashPolicy`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;

use super::disk::{Dir, Inode, Pending, Sim};
use super::fault::{CrashPolicy, Rng};
use super::fs::SimFs;

/// Sector size for torn writes and garbage.
const SECTOR: usize = 512;

impl SimFs {
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
