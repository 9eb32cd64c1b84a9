//! The ordered set of segments: which is active, which are made ready ahead of time, what each
//! still holds unsettled, and which may be deleted.
//!
//! Invariant: segments are deleted strictly oldest-first, and only once none of their messages
//! is unsettled, every record that settled them is durable, and the next segment's preamble
//! (which restates the queue catalog and the id epoch) is durable too.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::segment::{Segment, HEADER_LEN};

/// A segment in use and its bookkeeping.
pub(crate) struct SegInfo {
    pub seg: Arc<Segment>,
    /// Unsettled messages whose push record lies in this segment.
    pub live: u64,
    /// Log position just past the latest record that settled one of its messages.
    pub settled: u64,
    /// Log position just past this segment's preamble.
    pub preamble_end: u64,
}

/// All segments of the store, oldest first.
pub(crate) struct Log {
    pub store_id: u128,
    /// The active segment (last) and older ones that still exist, by base position.
    pub segments: BTreeMap<u64, SegInfo>,
    /// Empty segments created ahead of time, in log order after the active one.
    pub spares: VecDeque<Arc<Segment>>,
}

impl Log {
    pub(crate) fn active(&self) -> Option<&Arc<Segment>> {
        self.segments.last_key_value().map(|(_, s)| &s.seg)
    }

    /// The segment holding log position `lsn`.
    pub(crate) fn segment_of(&self, lsn: u64) -> Option<&Arc<Segment>> {
        self.segments.range(..=lsn).next_back().map(|(_, s)| &s.seg).filter(|s| lsn < s.end())
    }

    /// Counts a pushed message against the segment its record is in.
    pub(crate) fn note_push(&mut self, lsn: u64) {
        if let Some((_, s)) = self.segments.range_mut(..=lsn).next_back() {
            s.live += 1;
        }
    }

    /// A message whose push record is at `push_lsn` was settled by a record ending at `end`.
    /// Returns true when that left an older (not active) segment with nothing unsettled.
    pub(crate) fn note_settled(&mut self, push_lsn: u64, end: u64) -> bool {
        let active = self.segments.last_key_value().map(|(&base, _)| base);
        match self.segments.range_mut(..=push_lsn).next_back() {
            Some((&base, s)) => {
                s.live = s.live.saturating_sub(1);
                s.settled = s.settled.max(end);
                s.live == 0 && Some(base) != active
            }
            None => false,
        }
    }

    /// Makes `seg` the active segment, its preamble ending at `preamble_end`.
    pub(crate) fn activate(&mut self, seg: Arc<Segment>, preamble_end: u64) {
        self.segments.insert(seg.base, SegInfo { seg, live: 0, settled: 0, preamble_end });
    }

    /// Where the next spare segment starts.
    pub(crate) fn next_spare_base(&self) -> u64 {
        self.spares.back().or_else(|| self.active()).map_or(0, |s| s.end())
    }

    /// Removes from the set, oldest first, the segments that may be deleted now that the log is
    /// durable up to `durable`; the caller deletes their files.
    pub(crate) fn take_deletable(&mut self, durable: u64) -> Vec<Arc<Segment>> {
        let mut out = Vec::new();
        loop {
            let mut it = self.segments.values();
            let (Some(oldest), Some(next)) = (it.next(), it.next()) else {
                break;
            };
            let ok = oldest.live == 0 && oldest.settled <= durable && next.preamble_end <= durable;
            if !ok {
                break;
            }
            if let Some((_, s)) = self.segments.pop_first() {
                out.push(s.seg);
            }
        }
        out
    }

    /// Whether the oldest segment is settled and waits only for the log to become durable
    /// past `durable` before it may be deleted.
    pub(crate) fn deletable_after_sync(&self, durable: u64) -> bool {
        let mut it = self.segments.values();
        let (Some(oldest), Some(next)) = (it.next(), it.next()) else {
            return false;
        };
        oldest.live == 0 && (oldest.settled > durable || next.preamble_end > durable)
    }

    /// Bytes of segment files in use or ready, headers and preallocated space included.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.seg.len).sum::<u64>()
            + self.spares.iter().map(|s| s.len).sum::<u64>()
    }
}

/// Where records of a fresh segment start.
pub(crate) fn first_record(seg: &Segment) -> u64 {
    seg.base + HEADER_LEN
}
