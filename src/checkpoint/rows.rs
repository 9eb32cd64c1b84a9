//! The rows of the state database: what a checkpoint holds, as plain values, with their
//! encodings. Decoders never panic on any bytes.

use super::bytes::Reader;

/// The state of a relocated message as of a checkpoint (its payload is stored beside it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub(crate) struct Row {
    pub queue: u32,
    pub attempts: u32,
    pub priority: u8,
    /// Unix ms after which it must not be delivered (0: never).
    pub expires: u64,
    /// Unix ms it waits until (0: ready).
    pub due: u64,
    /// The queue it was dead-lettered from, and why (`DeadReason` code).
    pub origin: Option<u32>,
    pub reason: u8,
    pub error: Box<str>,
    /// Payload length and CRC-32C.
    pub len: u32,
    pub crc: u32,
    /// The epoch (run of the store) that delivered it last, if it was delivered and not
    /// settled since when the checkpoint was taken (0: it was not), so that recovery can tell
    /// whether it was in flight when the store last stopped.
    pub leased: u32,
    /// Unix ms it was pushed at, if its push record said (0: it did not).
    pub pushed: u64,
}

const ROW_FIXED: usize = 4 + 4 + 1 + 8 + 8 + 4 + 1 + 4 + 4 + 4;

impl Row {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ROW_FIXED + self.error.len());
        out.extend_from_slice(&self.queue.to_le_bytes());
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.push(self.priority);
        out.extend_from_slice(&self.expires.to_le_bytes());
        out.extend_from_slice(&self.due.to_le_bytes());
        out.extend_from_slice(&self.origin.unwrap_or(u32::MAX).to_le_bytes());
        out.push(self.reason);
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        let error = self.error.as_bytes();
        out.extend_from_slice(&u32::try_from(error.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(error.get(..u32::MAX as usize).unwrap_or(error));
        // Added after the first rows were written, and only when either is set: a row without
        // them was not leased and has no push time.
        if self.leased != 0 || self.pushed != 0 {
            out.extend_from_slice(&self.leased.to_le_bytes());
            out.extend_from_slice(&self.pushed.to_le_bytes());
        }
        out
    }

    /// Decodes a row; `None` if the bytes are not one.
    pub(crate) fn decode(b: &[u8]) -> Option<Row> {
        let mut r = Reader(b);
        let queue = r.u32()?;
        let attempts = r.u32()?;
        let priority = r.u8()?;
        let expires = r.u64()?;
        let due = r.u64()?;
        let origin = Some(r.u32()?).filter(|&o| o != u32::MAX);
        let reason = r.u8()?;
        let len = r.u32()?;
        let crc = r.u32()?;
        let elen = r.u32()? as usize;
        let error = std::str::from_utf8(r.take(elen)?).ok()?.into();
        let (leased, pushed) = match r.0.len() {
            0 => (0, 0),
            // Zeros are written as nothing.
            12 => Some((r.u32()?, r.u64()?)).filter(|&t| t != (0, 0))?,
            _ => return None,
        };
        Some(Row {
            queue,
            attempts,
            priority,
            expires,
            due,
            origin,
            reason,
            error,
            len,
            crc,
            leased,
            pushed,
        })
    }
}

/// A queue of the catalog: its name and encoded config (if set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueRow {
    pub name: String,
    pub config: Option<Box<[u8]>>,
}

impl QueueRow {
    /// The row of a catalog entry: its name and encoded config (see `Wal::catalog`).
    pub(crate) fn of((name, config): (&[u8], Option<&[u8]>)) -> QueueRow {
        QueueRow {
            name: String::from_utf8_lossy(name).into_owned(),
            config: config.map(Into::into),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let name = self.name.as_bytes();
        out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(name);
        if let Some(c) = &self.config {
            out.push(1);
            out.extend_from_slice(c);
        } else {
            out.push(0);
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<QueueRow> {
        let mut r = Reader(b);
        let n = r.u32()? as usize;
        let name = std::str::from_utf8(r.take(n)?).ok()?.to_owned();
        let config = match r.u8()? {
            0 if r.0.is_empty() => None,
            1 => Some(r.0.into()),
            _ => return None,
        };
        Some(QueueRow { name, config })
    }
}

/// Dedup keys as the state database holds them (read at open, or written by a checkpoint):
/// queue, key, message id, window end. The keys sit in one buffer, not a box each: an open or
/// a checkpoint may take a key per keyed message, and a million small boxes freed after it
/// would stay in the process's heap (issue 16).
#[derive(Debug, Default)]
pub(crate) struct DedupRows {
    keys: Vec<u8>,
    /// Queue, message id, Unix ms until which the key holds once settled, and where the key starts in `keys` and its length.
    rows: Vec<(u32, u64, u64, usize, usize)>,
}

impl DedupRows {
    pub(crate) fn push(&mut self, queue: u32, key: &[u8], id: u64, until: u64) {
        self.rows.push((queue, id, until, self.keys.len(), key.len()));
        self.keys.extend_from_slice(key);
    }

    /// Each key: (queue, key, message id, window end).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &[u8], u64, u64)> + '_ {
        self.rows.iter().map(|&(q, id, until, at, len)| {
            (q, self.keys.get(at..at + len).unwrap_or_default(), id, until)
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Keeps the keys of queues below `queues` (the catalog's).
    pub(crate) fn retain_queues(&mut self, queues: usize) {
        self.rows.retain(|&(q, ..)| (q as usize) < queues);
    }
}

/// Everything a checkpoint holds, as read at open.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The log position the checkpoint covers (0: none was taken).
    pub checkpoint: u64,
    pub store_id: Option<u128>,
    pub epoch: u32,
    pub queues: Vec<QueueRow>,
    pub rows: Vec<(u64, Row)>,
    pub dedup: DedupRows,
    /// The index as of the checkpoint, if the checkpoint took one (state layout 2).
    pub snapshot: Option<super::snapshot::Snapshot>,
}

/// What one checkpoint changes.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub checkpoint: u64,
    pub store_id: u128,
    pub epoch: u32,
    /// The whole catalog, by queue number.
    pub queues: Vec<QueueRow>,
    /// Rows written (new or changed); a payload is given for newly relocated messages.
    pub put: Vec<(u64, Row, Option<Vec<u8>>)>,
    /// Relocated messages settled since: their rows and payloads go.
    pub delete: Vec<u64>,
    pub dedup_put: DedupRows,
    pub dedup_delete: Vec<(u32, Box<[u8]>)>,
    /// Rewrite from memory: rows of messages neither in `keep` nor in `put` are deleted, and
    /// the dedup table is replaced by `dedup_put` (after a transaction that may or may not have
    /// committed).
    pub full: bool,
    pub keep: std::collections::HashSet<u64>,
    /// The index as of `checkpoint` (`None`: the database keeps none, and an open replays
    /// the log from its anchors).
    pub snapshot: Option<super::snapshot::Snapshot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_bad_bytes_are_refused() {
        let row = Row {
            queue: 3,
            attempts: 2,
            priority: 7,
            expires: 11,
            due: 12,
            origin: Some(1),
            reason: 2,
            error: "boom".into(),
            len: 5,
            crc: 9,
            leased: 0,
            pushed: 0,
        };
        let b = row.encode();
        assert_eq!(Row::decode(&b), Some(row.clone()));
        for cut in 0..b.len() {
            assert_eq!(Row::decode(&b[..cut]), None, "cut at {cut}");
        }
        for later in [Row { leased: 4, ..row.clone() }, Row { pushed: 1_700_000_000_000, ..row }] {
            let b = later.encode();
            assert_eq!(Row::decode(&b), Some(later.clone()));
            for cut in 1..12 {
                assert_eq!(Row::decode(&b[..b.len() - cut]), None, "cut {cut} from the end");
            }
            let mut zero = b.clone();
            let n = zero.len();
            zero[n - 12..].fill(0);
            assert_eq!(Row::decode(&zero), None, "zeros are written as nothing");
        }
        let q = QueueRow { name: "jobs".into(), config: Some(vec![1, 2, 3].into()) };
        assert_eq!(QueueRow::decode(&q.encode()), Some(q));
        let q = QueueRow { name: "jobs".into(), config: None };
        assert_eq!(QueueRow::decode(&q.encode()), Some(q));
        assert_eq!(QueueRow::decode(&[9, 9, 9]), None);
    }
}
