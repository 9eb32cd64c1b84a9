//! A group commit's I/O: the chunks staged records are written from, and the write of a
//! flush (with the store's mutex released), which never leaves the log more than a segment's
//! unsynced bound past its durable end.
//!
//! Invariant: a flush writes whole records in log order and syncs only between records, so
//! the durable end is always the start of a record.

use std::sync::Arc;

use super::segment::Segment;

/// Bytes staged for one segment, to be written at `lsn` in one call.
pub(super) struct Chunk {
    pub(super) seg: Arc<Segment>,
    pub(super) lsn: u64,
    pub(super) bytes: Vec<u8>,
    /// Ends with a seal record: synced before anything later is written.
    pub(super) seal: bool,
}

impl Chunk {
    pub(super) fn copy(&self, lsn: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(lsn.checked_sub(self.lsn)?).ok()?;
        self.bytes.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

/// The length of the record at the start of `bytes` (staged records, so whole and valid).
pub(super) fn record_len_at(bytes: &[u8]) -> usize {
    bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(bytes.len(), |b| u32::from_le_bytes(b) as usize)
}

/// How many bytes of whole records at the start of `bytes` end within `room` bytes.
fn whole_records_within(bytes: &[u8], room: u64) -> usize {
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if bytes.len() <= room {
        return bytes.len();
    }
    let mut end = 0;
    loop {
        let len = record_len_at(bytes.get(end..).unwrap_or(&[]));
        if len == 0 || end + len > room {
            return end;
        }
        end += len;
    }
}

/// What one leader writes: taken by `Wal::begin_flush` under the mutex, written by
/// `Flush::write` without it.
pub(crate) struct Flush {
    pub(super) chunks: Arc<Vec<Chunk>>,
    pub(super) to_sync: Option<Arc<Segment>>,
    pub(super) end: u64,
    pub(super) sync: bool,
    /// The log's durable end when the flush began.
    pub(super) durable: u64,
}

/// What a flush achieved, also when it failed part way.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    pub(super) writes: u64,
    pub(super) syncs: u64,
    /// Where a sync during the flush (after a seal, or to keep within the unsynced bound) made
    /// the log durable: every earlier segment was sealed and synced before it, so this holds
    /// even if the flush fails later or does not sync at its end.
    pub(super) synced_to: u64,
}

impl Flush {
    /// The log position this flush writes up to.
    #[inline]
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Writes every chunk, syncing each one that ends with a seal, then syncs the last
    /// segment if asked: the I/O of a group commit, run with the store's mutex released.
    pub(crate) fn write(&self, done: &mut Flushed) -> std::io::Result<()> {
        let mut durable = self.durable;
        for c in self.chunks.iter() {
            let mut off = 0;
            while off < c.bytes.len() {
                let at = c.lsn + off as u64;
                let rest = c.bytes.get(off..).unwrap_or(&[]);
                // The log is never written more than the segment's bound past its durable end
                // (but for one record longer than the bound, written alone right after a
                // sync), so that recovery need not look further for records written after
                // it. Syncs fall between records: the durable end is always a record's start.
                let n = match c.seg.unsynced_bound() {
                    Some(bound) => {
                        let room = (durable + bound).saturating_sub(at);
                        let n = whole_records_within(rest, room);
                        if n == 0 && at > durable {
                            c.seg.sync()?;
                            done.syncs += 1;
                            durable = at;
                            done.synced_to = at;
                            continue;
                        }
                        // Right after a sync, a record longer than the bound goes alone.
                        if n == 0 {
                            record_len_at(rest).max(1).min(rest.len())
                        } else {
                            n
                        }
                    }
                    None => rest.len(),
                };
                c.seg.write(at, rest.get(..n).unwrap_or(rest))?;
                done.writes += 1;
                off += n;
            }
            if c.seal {
                c.seg.sync()?;
                done.syncs += 1;
                durable = c.lsn + c.bytes.len() as u64;
                done.synced_to = durable;
            }
        }
        if let Some(seg) = &self.to_sync {
            crate::failpoint::hit("after-write-before-sync");
            seg.sync()?;
            done.syncs += 1;
            crate::failpoint::hit("after-sync-before-wake");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{self, Body};

    #[test]
    fn a_bounded_write_ends_between_records() {
        let mut bytes = Vec::new();
        for (lsn, len) in [(0u64, 10usize), (1, 300), (2, 20)] {
            record::encode(
                &mut bytes,
                lsn,
                0,
                &Body::Push { queue: 0, id: lsn, payload: &vec![1; len] },
            );
        }
        let first = record_len_at(&bytes);
        let second = record_len_at(&bytes[first..]);
        assert_eq!(whole_records_within(&bytes, u64::MAX), bytes.len());
        assert_eq!(whole_records_within(&bytes, bytes.len() as u64), bytes.len());
        assert_eq!(whole_records_within(&bytes, first as u64 - 1), 0);
        assert_eq!(whole_records_within(&bytes, first as u64), first);
        assert_eq!(whole_records_within(&bytes, (first + second) as u64 - 1), first);
        assert_eq!(whole_records_within(&bytes, (first + second) as u64), first + second);
    }
}
