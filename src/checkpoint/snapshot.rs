//! The snapshot a checkpoint takes of the index, so that an open replays only the log past the
//! checkpoint: plain values and their encodings (state layout 2). Decoders never panic on any
//! bytes.
//!
//! A queue's snapshot is its run (the FIFO backlog, read back from the log as the queue
//! drains: four numbers, whatever its length) and the messages the run cannot stand for, each
//! explicitly: those with side state (delayed, leased, delivered before, a priority or expiry,
//! a note) and ready ones pushed before the run's start. The store's part holds what replay
//! derives from the log besides the queues: per-segment counts, the groups crashes left
//! unfinished, the epoch, where the log starts.
//!
//! Invariant: a snapshot describes the state at exactly its `position`, the checkpoint's; the
//! messages relocated into the state database are in their rows, never in the snapshot.

use super::bytes::Reader;

/// A message the snapshot holds explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SnapMessage {
    pub id: u64,
    /// Log position of its push record.
    pub lsn: u64,
    pub len: u32,
    /// Where the payload starts inside the push record.
    pub off: u32,
    pub attempts: u32,
    pub priority: u8,
    /// Unix ms after which it must not be delivered (0: never).
    pub expires: u64,
    /// Unix ms it waits until (0: ready).
    pub due: u64,
    /// The epoch that leased it, if it was leased when the snapshot was taken (0: it was not).
    pub leased: u32,
    /// Why it is where it is (dead-lettered from, reason, last error), if set.
    pub note: Option<(Option<u32>, u8, Box<str>)>,
}

/// One queue's messages as of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct QueueSnap {
    /// The run: where its first member is (or a position before it), how many members, their
    /// payload bytes, and the floor every member's id is above.
    pub run_next: u64,
    pub run_count: u64,
    pub run_bytes: u64,
    pub run_floor: u64,
    pub messages: Vec<SnapMessage>,
}

/// The whole snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Snapshot {
    /// The checkpoint position it describes the state at.
    pub position: u64,
    /// Where a record before `position` starts, in its segment, from which the records run
    /// up to `position` exactly (the last record staged before it): an open checks that the
    /// log reaches the checkpoint there.
    pub last: u64,
    /// The epoch (run of the store) that took it.
    pub epoch: u32,
    /// Where the log started (its oldest segment's base).
    pub log_start: u64,
    /// For each ended epoch, the last record that closed a group (see `log::Voids`).
    pub voids: Vec<(u32, u64)>,
    /// Each segment below `position`: base, unsettled messages, messages pushed.
    pub segments: Vec<(u64, u64, u64)>,
    /// Each queue's part, by queue number.
    pub queues: Vec<QueueSnap>,
}

/// Bytes of a message without its note's error text.
const MESSAGE_FIXED: usize = 8 + 8 + 4 + 4 + 4 + 1 + 8 + 8 + 4 + 1;

impl Snapshot {
    /// The oldest segment it needs: the oldest that held unsettled messages.
    pub(crate) fn low(&self) -> Option<u64> {
        self.segments.iter().filter(|s| s.1 > 0).map(|s| s.0).min()
    }

    /// The store's part (everything but the queues): position, epoch, log start, voids,
    /// segments, and how many queues follow.
    pub(crate) fn encode_head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 12 * self.voids.len() + 24 * self.segments.len());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.last.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.log_start.to_le_bytes());
        out.extend_from_slice(&len32(self.queues.len()).to_le_bytes());
        out.extend_from_slice(&len32(self.voids.len()).to_le_bytes());
        for &(epoch, at) in &self.voids {
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&at.to_le_bytes());
        }
        out.extend_from_slice(&len32(self.segments.len()).to_le_bytes());
        for &(base, live, pushed) in &self.segments {
            for v in [base, live, pushed] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Decodes the store's part; returns it (with no queues yet) and how many queues follow.
    pub(crate) fn decode_head(b: &[u8]) -> Option<(Snapshot, u32)> {
        let mut r = Reader(b);
        let (position, last, epoch, log_start) = (r.u64()?, r.u64()?, r.u32()?, r.u64()?);
        let queues = r.u32()?;
        let n = r.u32()? as usize;
        let mut voids = Vec::with_capacity(n.min(r.0.len() / 12));
        for _ in 0..n {
            voids.push((r.u32()?, r.u64()?));
        }
        let n = r.u32()? as usize;
        let mut segments = Vec::with_capacity(n.min(r.0.len() / 24));
        for _ in 0..n {
            segments.push((r.u64()?, r.u64()?, r.u64()?));
        }
        r.0.is_empty().then_some(())?;
        let queues_none = Vec::new();
        let snap =
            Snapshot { position, last, epoch, log_start, voids, segments, queues: queues_none };
        Some((snap, queues))
    }
}

impl QueueSnap {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(36 + MESSAGE_FIXED * self.messages.len());
        for v in [self.run_next, self.run_count, self.run_bytes, self.run_floor] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&len32(self.messages.len()).to_le_bytes());
        for m in &self.messages {
            out.extend_from_slice(&m.id.to_le_bytes());
            out.extend_from_slice(&m.lsn.to_le_bytes());
            out.extend_from_slice(&m.len.to_le_bytes());
            out.extend_from_slice(&m.off.to_le_bytes());
            out.extend_from_slice(&m.attempts.to_le_bytes());
            out.push(m.priority);
            out.extend_from_slice(&m.expires.to_le_bytes());
            out.extend_from_slice(&m.due.to_le_bytes());
            out.extend_from_slice(&m.leased.to_le_bytes());
            match &m.note {
                None => out.push(0),
                Some((origin, reason, error)) => {
                    out.push(1);
                    out.extend_from_slice(&origin.unwrap_or(u32::MAX).to_le_bytes());
                    out.push(*reason);
                    let error = error.as_bytes();
                    let error = error.get(..u32::MAX as usize).unwrap_or(error);
                    out.extend_from_slice(&len32(error.len()).to_le_bytes());
                    out.extend_from_slice(error);
                }
            }
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<QueueSnap> {
        let mut r = Reader(b);
        let (run_next, run_count, run_bytes, run_floor) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let n = r.u32()? as usize;
        let mut messages = Vec::with_capacity(n.min(r.0.len() / MESSAGE_FIXED));
        for _ in 0..n {
            let mut m = SnapMessage {
                id: r.u64()?,
                lsn: r.u64()?,
                len: r.u32()?,
                off: r.u32()?,
                attempts: r.u32()?,
                priority: r.u8()?,
                expires: r.u64()?,
                due: r.u64()?,
                leased: r.u32()?,
                note: None,
            };
            m.note = match r.u8()? {
                0 => None,
                1 => {
                    let origin = Some(r.u32()?).filter(|&o| o != u32::MAX);
                    let reason = r.u8()?;
                    let n = r.u32()? as usize;
                    let error = std::str::from_utf8(r.take(n)?).ok()?.into();
                    Some((origin, reason, error))
                }
                _ => return None,
            };
            messages.push(m);
        }
        r.0.is_empty().then_some(())?;
        Some(QueueSnap { run_next, run_count, run_bytes, run_floor, messages })
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_bad_bytes_are_refused() {
        let snap = Snapshot {
            position: 1 << 30,
            last: (1 << 30) - 40,
            epoch: 3,
            log_start: 4096,
            voids: vec![(1, 500), (2, 9000)],
            segments: vec![(4096, 10, 12), (1 << 20, 0, 3)],
            queues: Vec::new(),
        };
        let head = snap.encode_head();
        assert_eq!(Snapshot::decode_head(&head), Some((snap, 0)));
        for cut in 0..head.len() {
            assert_eq!(Snapshot::decode_head(&head[..cut]), None, "cut at {cut}");
        }
        let q = QueueSnap {
            run_next: 77,
            run_count: 1_000_000,
            run_bytes: 128_000_000,
            run_floor: 41,
            messages: vec![
                SnapMessage { id: 5, lsn: 100, len: 3, off: 64, attempts: 2, ..Default::default() },
                SnapMessage {
                    id: 9,
                    lsn: 200,
                    due: 1_700_000_000_000,
                    leased: 3,
                    note: Some((Some(1), 2, "boom".into())),
                    ..Default::default()
                },
            ],
        };
        let b = q.encode();
        assert_eq!(QueueSnap::decode(&b), Some(q));
        for cut in 0..b.len() {
            assert_eq!(QueueSnap::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(QueueSnap::decode(&longer), None, "trailing bytes");
        let mut bad_flag = b;
        let flag_at = 36 + MESSAGE_FIXED - 1;
        bad_flag[flag_at] = 7;
        assert_eq!(QueueSnap::decode(&bad_flag), None, "unknown note flag");
    }
}
