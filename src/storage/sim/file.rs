//! An open file of the simulated disk (`StorageFile`), and its "map" (`View`).

use std::io;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::disk::{apply_write, eio, Pending, Sim};
use super::fault::OpKind;
use crate::storage::traits::{MapView, StorageFile, View};

/// The simulated disk's "map": a snapshot of the file that knows from where it went stale.
struct SimView {
    bytes: Vec<u8>,
    current_below: Arc<AtomicU64>,
}

impl View for SimView {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn current_below(&self) -> u64 {
        self.current_below.load(Ordering::SeqCst)
    }
}

/// An open file: the machine it lives on, and its inode there.
pub(super) struct SimFile {
    pub(super) sim: Arc<Mutex<Sim>>,
    pub(super) ino: usize,
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
