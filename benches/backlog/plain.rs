//! `Plain`: the least a persistent FIFO queue can do, the baseline of the reopen and CPU rows.
//!
//! Two append-only files in one directory:
//!
//! - `data`: records `len: u32 LE | crc: u32 LE | payload`, the CRC-32C over `len` and the
//!   payload. A push appends to an in-memory buffer, written to the file (one `pwrite`) once
//!   1 MiB is buffered or on `flush`, as wharf stages its records.
//! - `acks`: the read cursor. An ack appends the data offset it acknowledges up to (8 bytes
//!   LE), buffered the same way; the last one is where a reopen starts reading.
//!
//! A pop reads the next record (from the buffer if it is not yet written, else from the file
//! through a 64 KiB read window filled by `pread`, so from the page cache) and checks its CRC.
//! Acks are a cursor, so they must come in pop order; there are no leases, priorities, delays,
//! torn-tail repair or space reclaim: what is left is framing, checksums and buffered I/O.
//! Nothing is synced unless `sync` is called.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::BoxResult;

/// Bytes of a record's header (`len`, `crc`).
const HEADER: usize = 8;
/// Bytes buffered before a push or an ack writes them.
const WRITE_BUFFER: usize = 1 << 20;
/// Bytes of the read window.
const READ_WINDOW: usize = 64 << 10;

pub struct Plain {
    data: File,
    acks: File,
    /// Data bytes handed to the OS; records after them are in `staged`.
    written: u64,
    staged: Vec<u8>,
    /// Ack records not yet written, and the size of the `acks` file.
    acks_staged: Vec<u8>,
    acks_len: u64,
    /// The read window: file bytes from `window_at`.
    window: Vec<u8>,
    window_at: u64,
    /// Offset of the next record to pop.
    read: u64,
}

impl Plain {
    /// Opens (or creates) the queue in `dir`: the read cursor is the last ack record's.
    pub fn open(dir: &Path) -> BoxResult<Plain> {
        let open = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(name))
        };
        let (data, acks) = (open("data")?, open("acks")?);
        let written = data.metadata()?.len();
        let acks_len = acks.metadata()?.len();
        let mut read = 0;
        if acks_len >= 8 {
            let mut last = [0u8; 8];
            acks.read_exact_at(&mut last, acks_len - 8)?;
            read = u64::from_le_bytes(last);
        }
        Ok(Plain {
            data,
            acks,
            written,
            staged: Vec::with_capacity(WRITE_BUFFER),
            acks_staged: Vec::new(),
            acks_len,
            window: Vec::new(),
            window_at: 0,
            read,
        })
    }

    /// Appends one record.
    pub fn push(&mut self, payload: &[u8]) -> BoxResult<()> {
        let len = u32::try_from(payload.len())?.to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
        self.staged.extend_from_slice(&len);
        self.staged.extend_from_slice(&crc.to_le_bytes());
        self.staged.extend_from_slice(payload);
        if self.staged.len() >= WRITE_BUFFER {
            self.write_data()?;
        }
        Ok(())
    }

    /// Appends one record per payload, in order.
    pub fn push_batch<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> BoxResult<()> {
        for p in payloads {
            self.push(p.as_ref())?;
        }
        Ok(())
    }

    /// Pops up to `max` records in order, handing each payload to `f` with the offset to ack
    /// it by; returns how many.
    pub fn pop_batch(&mut self, max: usize, mut f: impl FnMut(&[u8], u64)) -> BoxResult<usize> {
        let mut n = 0;
        while n < max {
            let end = self.written + self.staged.len() as u64;
            if self.read + HEADER as u64 > end {
                break;
            }
            let next = if self.read >= self.written {
                let at = usize::try_from(self.read - self.written)?;
                let (payload, len) = record(&self.staged[at..])?;
                f(payload, self.read + len as u64);
                len
            } else {
                let at = self.fill_window()?;
                let (payload, len) = record(&self.window[at..])?;
                f(payload, self.read + len as u64);
                len
            };
            self.read += next as u64;
            n += 1;
        }
        Ok(n)
    }

    /// Makes the window hold the whole record at `read`; returns its start in the window.
    fn fill_window(&mut self) -> BoxResult<usize> {
        let in_window = |w: &Vec<u8>, at: u64, from: u64, len: usize| {
            from >= at && from + len as u64 <= at + w.len() as u64
        };
        if !in_window(&self.window, self.window_at, self.read, HEADER) {
            self.read_window(READ_WINDOW)?;
        }
        let at = usize::try_from(self.read - self.window_at)?;
        let len = HEADER + u32_at(&self.window, at)? as usize;
        if !in_window(&self.window, self.window_at, self.read, len) {
            self.read_window(len.max(READ_WINDOW))?;
            return Ok(0);
        }
        Ok(at)
    }

    fn read_window(&mut self, len: usize) -> BoxResult<()> {
        let len = len.min(usize::try_from(self.written - self.read)?);
        self.window.resize(len, 0);
        self.data.read_exact_at(&mut self.window, self.read)?;
        self.window_at = self.read;
        Ok(())
    }

    /// Acknowledges every record up to `upto` (an offset `pop_batch` handed out).
    pub fn ack(&mut self, upto: u64) -> BoxResult<()> {
        self.acks_staged.extend_from_slice(&upto.to_le_bytes());
        if self.acks_staged.len() >= WRITE_BUFFER {
            self.write_acks()?;
        }
        Ok(())
    }

    fn write_data(&mut self) -> BoxResult<()> {
        self.data.write_all_at(&self.staged, self.written)?;
        self.written += self.staged.len() as u64;
        self.staged.clear();
        Ok(())
    }

    fn write_acks(&mut self) -> BoxResult<()> {
        self.acks.write_all_at(&self.acks_staged, self.acks_len)?;
        self.acks_len += self.acks_staged.len() as u64;
        self.acks_staged.clear();
        Ok(())
    }

    /// Hands everything buffered to the OS.
    pub fn flush(&mut self) -> BoxResult<()> {
        self.write_data()?;
        self.write_acks()
    }

    /// `flush`, then `fdatasync` both files.
    pub fn sync(&mut self) -> BoxResult<()> {
        self.flush()?;
        self.data.sync_data()?;
        self.acks.sync_data()?;
        Ok(())
    }
}

fn u32_at(buf: &[u8], at: usize) -> BoxResult<u32> {
    let b = buf.get(at..at + 4).ok_or("record header cut short")?;
    Ok(u32::from_le_bytes(b.try_into()?))
}

/// The payload of the record at the start of `buf` and the record's length, its CRC checked.
fn record(buf: &[u8]) -> BoxResult<(&[u8], usize)> {
    let len = u32_at(buf, 0)? as usize;
    let crc = u32_at(buf, 4)?;
    let payload = buf.get(HEADER..HEADER + len).ok_or("record cut short")?;
    let want = crc32c::crc32c_append(crc32c::crc32c(&buf[..4]), payload);
    if want != crc {
        return Err("record fails its CRC".into());
    }
    Ok((payload, HEADER + len))
}
