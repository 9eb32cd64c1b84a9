//! [`Window`]: a segment file read one chunk at a time, the image `verify` scans, and what it
//! checks with it after a seal or where the log ends.

use crate::error::Result;
use crate::log::Image;
use crate::log::{last_nonzero, record_at};
use crate::record::{self, RECORD_HEADER_LEN};
use crate::storage::StorageFile;

/// Bytes read from a segment at a time.
pub(super) const CHUNK: usize = 1 << 20;

/// After the seal of a segment (its bytes from `from` on): the offset and description of the
/// first record of one of its own positions, if any. Other bytes are no damage: a recycled
/// segment's file keeps the records of the segment it was before past what was written in it
/// (`Segment::recycle`), each carrying a position below this segment's base.
pub(super) fn after_seal(
    img: &mut Window<'_>,
    base: u64,
    from: usize,
) -> Result<Option<(usize, &'static str)>> {
    let Some(first) = img.first_nonzero_from(from)? else { return Ok(None) };
    // A record starts at or before the last non-zero byte.
    let last_nonzero = img.last_nonzero_in(first, img.len())?.map_or(first, |i| first + i);
    let last = img.len().saturating_sub(RECORD_HEADER_LEN).min(last_nonzero);
    for off in first..=last {
        let lsn = base + off as u64;
        if record::peek_lsn(img.at(off, RECORD_HEADER_LEN)?) == Some(lsn)
            && record::decode(record_at(img, off)?, lsn).is_ok()
        {
            return Ok(Some((
                off,
                "a record after the seal of its segment: nothing is written past a seal, so it \
                 was copied or misdirected here",
            )));
        }
    }
    Ok(None)
}

/// Whether the record at `at`, found invalid, is valid when read again: a store open elsewhere
/// wrote it while it was being read, and the log simply ended there when it was read.
pub(super) fn written_since(img: &mut Window<'_>, base: u64, at: u64) -> bool {
    img.forget();
    let off = usize::try_from(at - base).unwrap_or(usize::MAX);
    record_at(img, off).is_ok_and(|rec| record::decode(rec, at).is_ok())
}

/// A segment file read through `pread`, one chunk at a time: the image `scan` walks without
/// holding the file in memory.
pub(super) struct Window<'a> {
    file: &'a dyn StorageFile,
    len: usize,
    /// Bytes read at a time (`CHUNK`; smaller in tests, to cross chunk boundaries often).
    chunk: usize,
    /// The file offset of `buf[0]`.
    start: usize,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    pub(super) fn new(file: &'a dyn StorageFile, len: u64) -> Window<'a> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Window { file, len, chunk: CHUNK, start: 0, buf: Vec::new() }
    }

    /// Drops what was read, so that the next read sees the file as it is now.
    fn forget(&mut self) {
        self.buf.clear();
    }

    /// The offset of the first non-zero byte at or after `from`.
    fn first_nonzero_from(&mut self, from: usize) -> Result<Option<usize>> {
        let mut off = from;
        while off < self.len {
            let chunk = self.at(off, self.chunk)?;
            if chunk.is_empty() {
                break;
            }
            if let Some(i) = chunk.iter().position(|&b| b != 0) {
                return Ok(Some(off + i));
            }
            off += chunk.len();
        }
        Ok(None)
    }
}

impl Image for Window<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn at(&mut self, off: usize, want: usize) -> Result<&[u8]> {
        let rest = self.len.saturating_sub(off);
        let end = off.saturating_add(want.min(rest));
        let held = off >= self.start && end <= self.start + self.buf.len();
        if !held {
            // A record that runs past the end is truncated whatever its bytes: one chunk of it
            // is enough to say so, however long its length field claims it is.
            let chunk = self.chunk;
            let n = if want > rest { rest.min(chunk) } else { want.max(chunk).min(rest) };
            self.buf.clear();
            self.buf.shrink_to(n.max(chunk));
            self.buf.resize(n, 0);
            self.start = off;
            self.file.read_at(&mut self.buf, off as u64)?;
        }
        Ok(self.buf.get(off - self.start..).unwrap_or(&[]))
    }

    fn last_nonzero_in(&mut self, from: usize, to: usize) -> Result<Option<usize>> {
        let mut end = to.min(self.len);
        while end > from {
            let start = end.saturating_sub(self.chunk).max(from);
            let chunk = self.at(start, end - start)?;
            if let Some(i) = last_nonzero(chunk.get(..end - start).unwrap_or(chunk)) {
                return Ok(Some(start + i - from));
            }
            end = start;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::HEADER_LEN;
    use crate::log::{judge_end, scan};
    use crate::log::{End, Ending};
    use crate::record::Body;
    use crate::storage::MapView;
    use std::io;

    /// A file in memory: reads only.
    struct MemFile(Vec<u8>);

    impl StorageFile for MemFile {
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let at = usize::try_from(offset).map_err(io::Error::other)?;
            let src = self.0.get(at..at + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn allocate(&self, _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn set_len(&self, _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn map(&self) -> io::Result<Option<MapView>> {
            Ok(None)
        }
    }

    /// A segment image based at 0: records of many sizes (each staged after the previous one
    /// was durable), then zeros; `seed` picks sizes and, when odd, damages one record.
    fn image(seed: u64) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN as usize];
        let mut x = seed | 1;
        for i in 0..40u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let payload = vec![i as u8 | 1; (x % 700) as usize];
            let lsn = buf.len() as u64;
            record::encode(
                &mut buf,
                lsn,
                lsn,
                &Body::Push { queue: 0, id: u64::from(i), payload: &payload },
            );
        }
        if !seed.is_multiple_of(2) {
            let at = HEADER_LEN as usize + (x % (buf.len() as u64 - HEADER_LEN)) as usize;
            buf[at] ^= 0x20;
        }
        buf.resize(buf.len() + 3000, 0);
        if seed.is_multiple_of(3) {
            let n = buf.len();
            buf[n - 100] = 7; // stray bytes far past the records
        }
        buf
    }

    /// What scanning and judging an image finds: each record's position, the end, its judgement.
    fn walk(img: &mut impl Image) -> (Vec<u64>, End, Option<Ending>) {
        let mut seen = Vec::new();
        let end =
            scan(img, 0, crate::log::HEADER_LEN, u64::MAX, &mut Default::default(), |_, lsn, _| {
                seen.push(lsn);
                Ok(())
            })
            .unwrap();
        let ending = match end {
            End::Open { at, .. } => Some(judge_end(img, 0, at, 0, None, || Ok(false)).unwrap()),
            End::Sealed => None,
        };
        (seen, end, ending)
    }

    #[test]
    fn a_window_reads_like_the_whole_image_at_any_chunk_size() {
        for seed in 0..12 {
            let bytes = image(seed);
            let want = walk(&mut &bytes[..]);
            assert!(want.0.len() > 3, "seed {seed}");
            let file = MemFile(bytes.clone());
            for chunk in [1, 24, 100, 1000, 4096, CHUNK] {
                let mut w = Window::new(&file, bytes.len() as u64);
                w.chunk = chunk;
                assert_eq!(walk(&mut w), want, "seed {seed} chunk {chunk}");
                for from in [0, 64, 1000, bytes.len() - 101, bytes.len() - 1, bytes.len()] {
                    let want = bytes.get(from..).and_then(last_nonzero);
                    assert_eq!(w.last_nonzero_in(from, usize::MAX).unwrap(), want, "from {from}");
                    let want = bytes[from..].iter().position(|&b| b != 0).map(|i| from + i);
                    assert_eq!(w.first_nonzero_from(from).unwrap(), want, "from {from}");
                }
            }
        }
    }

    #[test]
    fn a_length_field_past_the_end_reads_one_chunk_not_the_claimed_length() {
        let mut bytes = vec![0u8; 10_000];
        bytes[64..68].copy_from_slice(&u32::MAX.to_le_bytes());
        let file = MemFile(bytes);
        let mut w = Window::new(&file, 10_000);
        w.chunk = 256;
        let rec = record_at(&mut w, 64).unwrap();
        assert!(rec.len() <= 256);
        assert_eq!(record::decode(rec, 64).unwrap_err(), record::DecodeError::Truncated);
        assert!(w.buf.capacity() < 10_000);
    }
}
