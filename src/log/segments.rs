//! The ordered set of segments: which is active, which are made ready ahead of time, what each
//! still holds unsettled, and which may be deleted.
//!
//! Invariant: segments are deleted strictly oldest-first, and only once none of their messages
//! is unsettled, every record that settled them is durable, and the next segment's preamble
//! (which restates the queue catalog and the id epoch) is durable too, and a checkpoint covers
//! the whole segment.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::segment::{Segment, HEADER_LEN};
use crate::checkpoint::Row;
use crate::checkpoint::{RELOCATE_MAX_LIVE, RELOCATE_MAX_SHARE};
use crate::record::Body;

/// A segment in use and its bookkeeping.
pub(crate) struct SegInfo {
    pub seg: Arc<Segment>,
    /// Unsettled messages whose push record lies in this segment.
    pub live: u64,
    /// Messages pushed in this segment (as far as this process knows: replayed or pushed).
    pub pushed: u64,
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
    /// The log position the last checkpoint in the state database covers: no segment ending
    /// past it is deleted.
    pub checkpoint: u64,
    /// Bytes of the state database file, counted against the disk quota.
    pub state_bytes: u64,
    /// Messages whose payloads live in the state database, with their rows as last written.
    pub relocated: HashMap<u64, Row>,
    /// The lowest position of a record, staged since the last checkpoint began, that the state
    /// database must see before its segment may go: one about a relocated message, or a push
    /// with a dedup key. `u64::MAX` if none.
    pub first_sensitive: u64,
    /// The same for records below the position of the checkpoint being taken now.
    pub inflight_sensitive: u64,
    /// A thread is deleting segments it took (with the store's mutex released): no other
    /// takes any until it is done, or a later segment could go before an earlier one.
    pub deleting: bool,
    /// Messages delivered in this run and not settled, nacked or moved since (whether their
    /// lease ran out or not): those recovery would count as in flight if the store stopped
    /// now. A checkpoint writes it into the rows of relocated messages, whose delivery records
    /// recovery skips.
    pub delivered: HashSet<u64>,
    /// When this run last sealed a segment (rolled to the next).
    pub last_sealed_at: Option<Instant>,
    /// Whether the checkpointer was told about the stragglers of the segment sealed last.
    pub stragglers_told: bool,
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
            s.pushed += 1;
        }
    }

    /// A message whose push record is at `push_lsn` was settled by a record ending at `end`.
    /// Returns true when that left an older (not active) segment with nothing unsettled.
    pub(crate) fn note_settled(&mut self, push_lsn: u64, end: u64) -> bool {
        if push_lsn == crate::queue::RELOCATED {
            return false;
        }
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

    /// A message whose push record is at `push_lsn` was relocated into the state database by a
    /// committed checkpoint: it no longer holds its segment.
    pub(crate) fn note_relocated(&mut self, push_lsn: u64) {
        if let Some((_, s)) = self.segments.range_mut(..=push_lsn).next_back() {
            s.live = s.live.saturating_sub(1);
        }
    }

    /// Makes `seg` the active segment, its preamble ending at `preamble_end`.
    pub(crate) fn activate(&mut self, seg: Arc<Segment>, preamble_end: u64) {
        if !self.segments.is_empty() {
            self.last_sealed_at = Some(Instant::now());
            self.stragglers_told = false;
        }
        self.segments
            .insert(seg.base, SegInfo { seg, live: 0, pushed: 0, settled: 0, preamble_end });
    }

    /// Where the next spare segment starts.
    pub(crate) fn next_spare_base(&self) -> u64 {
        self.spares.back().or_else(|| self.active()).map_or(0, |s| s.end())
    }

    /// Removes from the set, oldest first, the segments that may be deleted now that the log is
    /// durable up to `durable`; the caller deletes their files (or puts them back with
    /// `restore`).
    pub(crate) fn take_deletable(&mut self, durable: u64) -> Vec<SegInfo> {
        let mut out = Vec::new();
        if self.deleting {
            return out;
        }
        loop {
            let mut it = self.segments.values();
            let (Some(oldest), Some(next)) = (it.next(), it.next()) else {
                break;
            };
            let ok = oldest.live == 0
                && oldest.settled <= durable
                && next.preamble_end <= durable
                && self.covered(oldest.seg.end());
            if !ok {
                break;
            }
            if let Some((_, s)) = self.segments.pop_first() {
                out.push(s);
            }
        }
        out
    }

    /// Puts back segments taken by `take_deletable` that could not be deleted now.
    pub(crate) fn restore(&mut self, taken: Vec<SegInfo>) {
        for s in taken {
            self.segments.insert(s.seg.base, s);
        }
    }

    /// Whether the oldest segment is settled and waits only for the log to become durable
    /// past `durable` before it may be deleted.
    pub(crate) fn deletable_after_sync(&self, durable: u64) -> bool {
        let mut it = self.segments.values();
        let (Some(oldest), Some(next)) = (it.next(), it.next()) else {
            return false;
        };
        oldest.live == 0
            && self.covered(oldest.seg.end())
            && (oldest.settled > durable || next.preamble_end > durable)
    }

    /// Whether every record below `end` that the state database must see is covered by the
    /// last checkpoint (records it need not see may go without one).
    pub(crate) fn covered(&self, end: u64) -> bool {
        end <= self.checkpoint || end <= self.first_sensitive.min(self.inflight_sensitive)
    }

    /// Notes a record staged at `lsn`, before its segment may go without a checkpoint.
    pub(crate) fn note_record(&mut self, lsn: u64, body: &Body<'_>) {
        match *body {
            Body::Deliver { id, .. } => {
                self.delivered.insert(id);
            }
            Body::Ack { id, .. }
            | Body::Nack { id, .. }
            | Body::Retry { id, .. }
            | Body::DeadLetter { id, .. }
            | Body::Requeue { id, .. } => {
                self.delivered.remove(&id);
            }
            _ => {}
        }
        let sensitive = match *body {
            Body::PushEx { key, .. } if !key.is_empty() => true,
            _ => {
                !self.relocated.is_empty()
                    && body.message_id().is_some_and(|id| self.relocated.contains_key(&id))
            }
        };
        if sensitive {
            self.first_sensitive = self.first_sensitive.min(lsn);
        }
    }

    /// Whether the oldest segment is settled and waits only for a checkpoint to cover it.
    pub(crate) fn deletable_after_checkpoint(&self) -> bool {
        let mut it = self.segments.values();
        let (Some(oldest), Some(_)) = (it.next(), it.next()) else {
            return false;
        };
        oldest.live == 0 && !self.covered(oldest.seg.end())
    }

    /// When a checkpoint should relocate the stragglers of the segment this run sealed last:
    /// `STRAGGLER_GRACE` after it was sealed (messages still in flight then are acked by their
    /// consumers rather than copied), if it holds a few unsettled messages that a checkpoint
    /// covering it would relocate (see `checkpoint::stragglers`) and none covers it yet. Taken
    /// then, the checkpoint lets the segment go soon after it is sealed, rather than once
    /// another segment's worth of log was written.
    pub(crate) fn stragglers_due_at(&self) -> Option<Instant> {
        let sealed = self.segments.values().rev().nth(1)?;
        let few = sealed.seg.end() > self.checkpoint
            && sealed.live > 0
            && sealed.live <= RELOCATE_MAX_LIVE
            && sealed.live * RELOCATE_MAX_SHARE <= sealed.pushed;
        few.then_some(self.last_sealed_at?.checked_add(STRAGGLER_GRACE)?)
    }

    /// Whether the segment sealed last has stragglers due for relocation (`stragglers_due_at`)
    /// that nobody was told about yet: `true` once per sealed segment.
    pub(crate) fn stragglers_news(&mut self) -> bool {
        if self.stragglers_told || self.stragglers_due_at().is_none() {
            return false;
        }
        self.stragglers_told = true;
        true
    }

    /// Bytes of segment files in use or ready, headers and preallocated space included.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.seg.len).sum::<u64>()
            + self.spares.iter().map(|s| s.len).sum::<u64>()
            + self.state_bytes
    }
}

/// How long after a segment is sealed its few unsettled messages count as stragglers.
const STRAGGLER_GRACE: Duration = Duration::from_millis(250);

/// Where records of a fresh segment start.
pub(crate) fn first_record(seg: &Segment) -> u64 {
    seg.base + HEADER_LEN
}
