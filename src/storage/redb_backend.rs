//! redb on wharf's storage trait: the state database runs on the same files, real or
//! simulated, as the log, so that both crash in one order in the simulated-disk tests; and a
//! read-only backend for `verify`, which keeps what redb writes in memory.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::traits::StorageFile;

/// A redb `StorageBackend` over one storage file, which redb may grow up to a limit.
pub(crate) struct RedbBackend {
    file: Arc<dyn StorageFile>,
    limit: Arc<AtomicU64>,
}

impl RedbBackend {
    /// A backend over `file`, which redb may not grow past `limit` bytes (read at each growth):
    /// a growth past it fails with [`QuotaRefused`].
    pub(crate) fn new(file: Arc<dyn StorageFile>, limit: Arc<AtomicU64>) -> RedbBackend {
        RedbBackend { file, limit }
    }

    /// A backend over `file` that redb may grow as it likes.
    pub(crate) fn unlimited(file: Arc<dyn StorageFile>) -> RedbBackend {
        RedbBackend::new(file, Arc::new(AtomicU64::new(u64::MAX)))
    }
}

/// The error of a growth of the state database past its limit (the room the disk quota
/// leaves it), as the source of an `io::ErrorKind::StorageFull` error.
#[derive(Debug)]
pub(crate) struct QuotaRefused;

impl fmt::Display for QuotaRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the disk quota (max_disk_bytes) leaves the state database no more room")
    }
}

impl std::error::Error for QuotaRefused {}

impl QuotaRefused {
    /// Whether `e` is this refusal.
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<QuotaRefused>())
    }
}

impl fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedbBackend")
    }
}

impl redb::StorageBackend for RedbBackend {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > self.limit.load(Ordering::Acquire) && len > self.file.len()? {
            return Err(io::Error::new(io::ErrorKind::StorageFull, QuotaRefused));
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_at(data, offset)
    }
}

/// Bytes of one block of [`ReadOnlyBackend`]'s overlay.
const BLOCK: u64 = 4096;

/// A redb `StorageBackend` that reads one storage file and never writes it: what redb writes
/// (the repair of a database that is open elsewhere or was not shut down cleanly, an integrity
/// check's commit, the allocator state saved when it closes) goes to blocks held in memory, and
/// later reads see them. Memory is what redb writes, not the file.
///
/// redb's own read-only open refuses a database that needs a repair, which is every database a
/// store holds open; this one lets redb repair it as an open would, in memory.
pub(crate) struct ReadOnlyBackend {
    file: Arc<dyn StorageFile>,
    overlay: Mutex<Overlay>,
}

struct Overlay {
    /// The length redb sees.
    len: u64,
    /// Bytes of the file below this are read from it; from here on the file is zeros to redb
    /// (its length when opened, lowered by every shrink since).
    file_len: u64,
    /// Blocks written by redb, by block number.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl ReadOnlyBackend {
    pub(crate) fn new(file: Arc<dyn StorageFile>) -> io::Result<ReadOnlyBackend> {
        let len = file.len()?;
        let overlay = Overlay { len, file_len: len, blocks: HashMap::new() };
        Ok(ReadOnlyBackend { file, overlay: Mutex::new(overlay) })
    }
}

impl fmt::Debug for ReadOnlyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadOnlyBackend")
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read or write past the end of the database")
}

impl Overlay {
    /// Reads `out.len()` bytes of the file at `offset` (zeros at and past `file_len`).
    fn read_file(&self, file: &dyn StorageFile, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let below = usize::try_from(self.file_len.saturating_sub(offset)).unwrap_or(usize::MAX);
        let (from_file, zeros) = out.split_at_mut(below.min(out.len()));
        if !from_file.is_empty() {
            file.read_at(from_file, offset)?;
        }
        zeros.fill(0);
        Ok(())
    }
}

impl redb::StorageBackend for ReadOnlyBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.overlay.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let o = self.overlay.lock();
        let end = offset.checked_add(out.len() as u64).ok_or_else(out_of_range)?;
        if end > o.len {
            return Err(out_of_range());
        }
        // Runs of blocks redb never wrote are read from the file in one call.
        let mut done = 0usize;
        let mut run_start = 0usize;
        while done < out.len() {
            let pos = offset + done as u64;
            let in_block = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - in_block).min(out.len() - done);
            if let Some(block) = o.blocks.get(&(pos / BLOCK)) {
                if run_start < done {
                    let run = out.get_mut(run_start..done).ok_or_else(out_of_range)?;
                    o.read_file(&*self.file, offset + run_start as u64, run)?;
                }
                let src = block.get(in_block..in_block + n).ok_or_else(out_of_range)?;
                out.get_mut(done..done + n).ok_or_else(out_of_range)?.copy_from_slice(src);
                run_start = done + n;
            }
            done += n;
        }
        if run_start < done {
            let run = out.get_mut(run_start..done).ok_or_else(out_of_range)?;
            o.read_file(&*self.file, offset + run_start as u64, run)?;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut o = self.overlay.lock();
        o.file_len = o.file_len.min(len);
        if len < o.len {
            o.blocks.retain(|&b, _| b * BLOCK < len);
            if let Some(block) = o.blocks.get_mut(&(len / BLOCK)) {
                let from = (len % BLOCK) as usize;
                block.get_mut(from..).unwrap_or_default().fill(0);
            }
        }
        o.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut o = self.overlay.lock();
        let end = offset.checked_add(data.len() as u64).ok_or_else(out_of_range)?;
        if end > o.len {
            return Err(out_of_range());
        }
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let (b, in_block) = (pos / BLOCK, (pos % BLOCK) as usize);
            let n = (BLOCK as usize - in_block).min(data.len() - done);
            if !o.blocks.contains_key(&b) {
                let mut block = vec![0u8; BLOCK as usize].into_boxed_slice();
                let have = usize::try_from(o.len.saturating_sub(b * BLOCK)).unwrap_or(usize::MAX);
                let part = block.get_mut(..have.min(BLOCK as usize)).unwrap_or_default();
                o.read_file(&*self.file, b * BLOCK, part)?;
                o.blocks.insert(b, block);
            }
            let src = data.get(done..done + n).ok_or_else(out_of_range)?;
            let block = o.blocks.get_mut(&b).ok_or_else(out_of_range)?;
            block.get_mut(in_block..in_block + n).ok_or_else(out_of_range)?.copy_from_slice(src);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    /// A file in memory that refuses every write.
    struct Bytes(Mutex<Vec<u8>>);

    impl StorageFile for Bytes {
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.lock().len() as u64)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let b = self.0.lock();
            let at = usize::try_from(offset).map_err(io::Error::other)?;
            buf.copy_from_slice(b.get(at..at + buf.len()).ok_or_else(out_of_range)?);
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn sync_data(&self) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn allocate(&self, _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn set_len(&self, _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn map(&self) -> io::Result<Option<super::super::traits::MapView>> {
            Ok(None)
        }
    }

    /// The overlay reads like a plain buffer given the same writes and length changes, and
    /// leaves the file as it was.
    #[test]
    fn the_overlay_reads_like_a_buffer_and_never_writes_the_file() {
        let original: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let file = Arc::new(Bytes(Mutex::new(original.clone())));
        let b = ReadOnlyBackend::new(file.clone()).unwrap();
        let mut model = original.clone();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..2000 {
            let len = model.len() as u64;
            match next(4) {
                0 | 1 if len > 0 => {
                    let at = next(len);
                    let n = next((len - at).min(9000) + 1) as usize;
                    let data: Vec<u8> = (0..n).map(|_| next(256) as u8).collect();
                    b.write(at, &data).unwrap();
                    model[at as usize..at as usize + n].copy_from_slice(&data);
                }
                2 => {
                    let new = next(30_000);
                    b.set_len(new).unwrap();
                    model.resize(new as usize, 0);
                }
                _ => {}
            }
            let len = model.len() as u64;
            assert_eq!(b.len().unwrap(), len);
            let at = next(len + 1);
            let n = next(len - at + 1) as usize;
            let mut out = vec![0xAAu8; n];
            b.read(at, &mut out).unwrap();
            assert_eq!(out, model[at as usize..at as usize + n]);
            assert!(b.read(len, &mut [0u8; 1]).is_err());
        }
        assert_eq!(*file.0.lock(), original);
    }
}
