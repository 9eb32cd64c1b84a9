//! The ordered set of segments: which is active, which are made ready ahead of time, what each
//! still holds unsettled, and which may be deleted.
//!
//! Invariant: segments are deleted strictly oldest-first, and only once none of their messages
//! is unsettled, every record that settled them is durable, and the next segment's preamble
//! (which restates the queue catalog and the id epoch) is durable too, and a checkpoint covers
//! the whole segment.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::segment::{Segment, HEADER_LEN};
use super::source::Voids;
use crate::checkpoint::Row;
use crate::record::Body;

/// A segment in use and its bookkeeping.
pub(crate) struct SegInfo {
    seg: Arc<Segment>,
    /// Unsettled messages whose push record lies in this segment.
    live: u64,
    /// Messages pushed in this segment (as far as this process knows: replayed or pushed).
    pushed: u64,
    /// Log position just past the latest record that settled one of its messages.
    settled: u64,
    /// Log position just past this segment's preamble.
    preamble_end: u64,
}

/// A segment with more unsettled messages than this is left in the log when a checkpoint
/// covers it (it is not a few stragglers but a backlog, which the log holds better than the
/// state database).
pub(crate) const STRAGGLERS_MAX_LIVE: u64 = 4096;
/// A segment's unsettled messages are stragglers only if at most this fraction of its
/// messages is left (and their payloads take at most this fraction of the segment).
pub(crate) const STRAGGLERS_MAX_SHARE: u64 = 8;

impl SegInfo {
    /// A segment made active or found by recovery, with `live` of its `pushed` messages
    /// unsettled.
    pub(crate) fn new(seg: Arc<Segment>, live: u64, pushed: u64, preamble_end: u64) -> SegInfo {
        SegInfo { seg, live, pushed, settled: 0, preamble_end }
    }

    /// The segment.
    #[inline]
    pub(crate) fn seg(&self) -> &Arc<Segment> {
        &self.seg
    }

    /// Unsettled messages whose push record lies in this segment.
    #[inline]
    pub(crate) fn live(&self) -> u64 {
        self.live
    }

    /// Messages pushed in this segment.
    #[inline]
    pub(crate) fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Whether the segment's unsettled messages are a few stragglers (at most
    /// `STRAGGLERS_MAX_LIVE`, and at most one in `STRAGGLERS_MAX_SHARE` of those pushed in it),
    /// which a checkpoint relocates rather than keep the whole segment for them.
    #[inline]
    pub(crate) fn few_stragglers(&self) -> bool {
        self.live <= STRAGGLERS_MAX_LIVE && self.live * STRAGGLERS_MAX_SHARE <= self.pushed
    }
}

/// All segments of the store, oldest first.
pub(crate) struct Log {
    store_id: u128,
    /// The active segment (last) and older ones that still exist, by base position.
    segments: BTreeMap<u64, SegInfo>,
    /// Empty segments created ahead of time, in log order after the active one.
    spares: VecDeque<Arc<Segment>>,
    /// The log position the last checkpoint in the state database covers: no segment ending
    /// past it is deleted.
    checkpoint: u64,
    /// Bytes of the state database file, counted against the disk quota.
    state_bytes: u64,
    /// Messages whose payloads live in the state database, with their rows as last written.
    relocated: HashMap<u64, Row>,
    /// The lowest position of a record, staged since the last checkpoint began, that the state
    /// database must see before its segment may go: one about a relocated message, or a push
    /// with a dedup key. `u64::MAX` if none.
    first_sensitive: u64,
    /// The same for records below the position of the checkpoint being taken now.
    inflight_sensitive: u64,
    /// A thread is deleting segments it took (with the store's mutex released): no other
    /// takes any until it is done, or a later segment could go before an earlier one.
    deleting: bool,
    /// When this run last sealed a segment (rolled to the next).
    last_sealed_at: Option<Instant>,
    /// Unsettled messages in all segments (relocated ones are not in any).
    live: u64,
    /// Whether the checkpointer was told about the stragglers of the segment sealed last.
    stragglers_told: bool,
    /// Where the groups that crashes left unfinished are, as recovery found them (a run's
    /// reads skip them).
    voids: Voids,
    /// The oldest segment the state database's snapshot needs (it held unsettled messages
    /// then), if it has one: once it is deleted, an open would replay the whole log until the
    /// next checkpoint takes a new snapshot.
    snapshot_low: Option<u64>,
    /// Files of deleted segments kept under a temporary name to be made into spares
    /// (`Segment::recycle`), with their lengths: at most `RECYCLED_MAX`.
    recycled: Vec<(PathBuf, u64)>,
    /// Whether deleted segments' files may be kept for recycling (not once the store closes).
    recycling: bool,
}

/// How many files of deleted segments are kept for recycling at most: as many as the spares
/// the background thread keeps ready, which a steady log makes from them one roll later.
pub(crate) const RECYCLED_MAX: usize = 2;

impl Log {
    #[inline]
    pub(crate) fn active(&self) -> Option<&Arc<Segment>> {
        self.segments.last_key_value().map(|(_, s)| &s.seg)
    }

    /// An empty set of segments of store `store_id`, whose state database covers the log up
    /// to `checkpoint`; `first_sensitive` as recovery found it (see the field).
    pub(crate) fn new(store_id: u128, checkpoint: u64, first_sensitive: u64) -> Log {
        Log {
            store_id,
            segments: BTreeMap::new(),
            spares: VecDeque::new(),
            checkpoint,
            state_bytes: 0,
            relocated: HashMap::new(),
            first_sensitive,
            inflight_sensitive: u64::MAX,
            deleting: false,
            last_sealed_at: None,
            live: 0,
            stragglers_told: false,
            voids: Voids::default(),
            snapshot_low: None,
            recycled: Vec::new(),
            recycling: true,
        }
    }

    /// How many deleted segments' files kept now (`recycled`) may be kept besides: none once
    /// recycling stopped.
    pub(crate) fn recycle_room(&self) -> usize {
        if self.recycling {
            RECYCLED_MAX.saturating_sub(self.recycled.len())
        } else {
            0
        }
    }

    /// Keeps the file at `path` (`len` bytes, a deleted segment's, renamed durably out of the
    /// log) to make a spare of.
    pub(crate) fn keep_recycled(&mut self, path: PathBuf, len: u64) {
        self.recycled.push((path, len));
    }

    /// Takes a kept file to make a spare of (or to delete).
    pub(crate) fn take_recycled(&mut self) -> Option<(PathBuf, u64)> {
        self.recycled.pop()
    }

    /// Whether files of deleted segments are kept for recycling.
    pub(crate) fn has_recycled(&self) -> bool {
        !self.recycled.is_empty()
    }

    /// No more deleted segments' files are kept for recycling (the store closes).
    pub(crate) fn stop_recycling(&mut self) {
        self.recycling = false;
    }

    /// Where the groups that crashes left unfinished are.
    #[inline]
    pub(crate) fn set_snapshot_low(&mut self, low: Option<u64>) {
        self.snapshot_low = low;
    }

    /// Whether a segment the snapshot needs was deleted: a checkpoint is due.
    pub(crate) fn snapshot_stale(&self) -> bool {
        self.snapshot_low.is_some_and(|low| self.first_base().is_none_or(|first| first > low))
    }

    pub(crate) fn voids(&self) -> &Voids {
        &self.voids
    }

    /// Sets them (recovery).
    pub(crate) fn set_voids(&mut self, voids: Voids) {
        self.voids = voids;
    }

    /// Adds a segment in use (recovery), in log order.
    #[inline]
    pub(crate) fn insert(&mut self, info: SegInfo) {
        self.live += info.live;
        self.segments.insert(info.seg.base(), info);
    }

    /// Whether no segment holds an unsettled message.
    #[inline]
    pub(crate) fn all_settled(&self) -> bool {
        self.live == 0
    }

    /// The length of the largest segment that holds unsettled messages (0: none does).
    pub(crate) fn largest_unsettled(&self) -> u64 {
        if self.live == 0 {
            return 0;
        }
        self.segments.values().filter(|s| s.live > 0).map(|s| s.seg.len()).max().unwrap_or(0)
    }

    /// Adds a spare segment, after the others.
    #[inline]
    pub(crate) fn push_spare(&mut self, seg: Arc<Segment>) {
        self.spares.push_back(seg);
    }

    /// Takes the last spare segment away (to delete it), if there is one.
    #[inline]
    pub(crate) fn pop_last_spare(&mut self) -> Option<Arc<Segment>> {
        self.spares.pop_back()
    }

    /// Takes the first spare segment, to roll into it.
    #[inline]
    pub(crate) fn pop_first_spare(&mut self) -> Option<Arc<Segment>> {
        self.spares.pop_front()
    }

    /// The spare segments, in log order.
    #[inline]
    pub(crate) fn spares(&self) -> impl Iterator<Item = &Arc<Segment>> {
        self.spares.iter()
    }

    /// How many spare segments there are.
    #[inline]
    pub(crate) fn spare_count(&self) -> usize {
        self.spares.len()
    }

    /// How many segments are in use (the active one and older ones still there).
    #[inline]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segments in use, oldest first.
    #[inline]
    pub(crate) fn segments(&self) -> impl DoubleEndedIterator<Item = &SegInfo> {
        self.segments.values()
    }

    /// Where the log starts: the base of its oldest segment, if any.
    #[inline]
    pub(crate) fn first_base(&self) -> Option<u64> {
        self.segments.first_key_value().map(|(&b, _)| b)
    }

    /// Whether the oldest segment has nothing unsettled and is not the only one.
    #[inline]
    pub(crate) fn oldest_settled(&self) -> bool {
        self.segments.len() > 1 && self.segments.first_key_value().is_some_and(|(_, s)| s.live == 0)
    }

    /// Notes where the preamble of the segment based at `base` ends.
    pub(crate) fn set_preamble_end(&mut self, base: u64, end: u64) {
        if let Some(info) = self.segments.get_mut(&base) {
            info.preamble_end = end;
        }
    }

    /// The store's id (in every segment header).
    #[inline]
    pub(crate) fn store_id(&self) -> u128 {
        self.store_id
    }

    /// The log position the last checkpoint covers.
    #[inline]
    pub(crate) fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Bytes of the state database file, counted against the disk quota.
    #[inline]
    pub(crate) fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// Sets the bytes of the state database file (or reserved for it).
    #[inline]
    pub(crate) fn set_state_bytes(&mut self, bytes: u64) {
        self.state_bytes = bytes;
    }

    /// Messages whose payloads live in the state database, with their rows as last written.
    #[inline]
    pub(crate) fn relocated(&self) -> &HashMap<u64, Row> {
        &self.relocated
    }

    /// The same, to change.
    #[inline]
    pub(crate) fn relocated_mut(&mut self) -> &mut HashMap<u64, Row> {
        &mut self.relocated
    }

    /// A checkpoint begins: the records it covers (below its position) that the state
    /// database must see are now its own; those staged from here on wait for the next.
    pub(crate) fn begin_checkpoint(&mut self) {
        self.inflight_sensitive = self.first_sensitive;
        self.first_sensitive = u64::MAX;
    }

    /// The checkpoint begun last committed at `c`. With `relocated_any`, records staged since
    /// `c` about the messages it just relocated were not seen as sensitive: everything from
    /// `c` on waits for the next checkpoint.
    pub(crate) fn checkpoint_committed(&mut self, c: u64, relocated_any: bool) {
        self.checkpoint = self.checkpoint.max(c);
        self.inflight_sensitive = u64::MAX;
        if relocated_any {
            self.first_sensitive = self.first_sensitive.min(c);
        }
    }

    /// The checkpoint begun last did not commit: what it covered waits for the next.
    pub(crate) fn checkpoint_failed(&mut self) {
        self.first_sensitive = self.first_sensitive.min(self.inflight_sensitive);
        self.inflight_sensitive = u64::MAX;
    }

    /// Whether a thread is deleting segments it took (see the field).
    #[inline]
    pub(crate) fn deleting(&self) -> bool {
        self.deleting
    }

    /// Sets whether a thread is deleting segments it took (see the field).
    #[inline]
    pub(crate) fn set_deleting(&mut self, deleting: bool) {
        self.deleting = deleting;
    }

    /// Whether a checkpoint is due for what the log holds, `next_lsn` being its end: enough
    /// log since the last (`every` bytes), or a settled segment waits only for one. The one
    /// rule for the checkpointer and the flush that wakes it.
    pub(crate) fn checkpoint_due(&self, next_lsn: u64, every: u64) -> bool {
        let since = next_lsn.saturating_sub(self.checkpoint);
        since > 0 && (since >= every || self.deletable_after_checkpoint())
    }

    /// The segment holding log position `lsn`.
    #[inline]
    pub(crate) fn segment_of(&self, lsn: u64) -> Option<&Arc<Segment>> {
        let info = match self.segments.last_key_value() {
            Some((&base, info)) if base <= lsn => Some(info),
            _ => self.segments.range(..=lsn).next_back().map(|(_, s)| s),
        };
        info.map(|s| &s.seg).filter(|s| lsn < s.end())
    }

    /// The segment starting at or before `lsn`, with its base: the active one (where most
    /// records are) found without a range search, which costs about as much as the rest of a
    /// push's bookkeeping.
    #[inline]
    fn info_mut(segments: &mut BTreeMap<u64, SegInfo>, lsn: u64) -> Option<(u64, &mut SegInfo)> {
        let active = segments.last_key_value().map(|(&base, _)| base);
        match active {
            Some(base) if base <= lsn => segments.last_entry().map(|e| (base, e.into_mut())),
            _ => segments.range_mut(..=lsn).next_back().map(|(&base, s)| (base, s)),
        }
    }

    /// Counts a pushed message against the segment its record is in.
    pub(crate) fn note_push(&mut self, lsn: u64) {
        if let Some((_, s)) = Self::info_mut(&mut self.segments, lsn) {
            s.live += 1;
            s.pushed += 1;
            self.live += 1;
        }
    }

    /// A message whose push record is at `push_lsn` was settled by a record ending at `end`.
    /// Returns true when that left an older (not active) segment with nothing unsettled.
    pub(crate) fn note_settled(&mut self, push_lsn: u64, end: u64) -> bool {
        if push_lsn == crate::queue::RELOCATED {
            return false;
        }
        let active = self.segments.last_key_value().map(|(&base, _)| base);
        match Self::info_mut(&mut self.segments, push_lsn) {
            Some((base, s)) => {
                self.live -= u64::from(s.live > 0);
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
        if let Some((_, s)) = Self::info_mut(&mut self.segments, push_lsn) {
            self.live -= u64::from(s.live > 0);
            s.live = s.live.saturating_sub(1);
        }
    }

    /// Makes `seg` the active segment, its preamble ending at `preamble_end`.
    pub(crate) fn activate(&mut self, seg: Arc<Segment>, preamble_end: u64) {
        if !self.segments.is_empty() {
            self.last_sealed_at = Some(Instant::now());
            self.stragglers_told = false;
        }
        self.segments.insert(seg.base(), SegInfo::new(seg, 0, 0, preamble_end));
    }

    /// Where the next spare segment starts.
    #[inline]
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
            self.segments.insert(s.seg.base(), s);
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
    #[inline]
    pub(crate) fn covered(&self, end: u64) -> bool {
        end <= self.checkpoint || end <= self.first_sensitive.min(self.inflight_sensitive)
    }

    /// Notes a record staged at `lsn`, before its segment may go without a checkpoint.
    pub(crate) fn note_record(&mut self, lsn: u64, body: &Body<'_>) {
        let sensitive = match *body {
            Body::PushEx { key, .. } if !key.is_empty() => true,
            _ => {
                !self.relocated.is_empty()
                    && body.message_ids().any(|id| self.relocated.contains_key(&id))
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
        let few = sealed.seg.end() > self.checkpoint && sealed.live > 0 && sealed.few_stragglers();
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

    /// Bytes of segment files in use, ready or kept for recycling, headers and preallocated
    /// space included.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.seg.len()).sum::<u64>()
            + self.spares.iter().map(|s| s.len()).sum::<u64>()
            + self.recycled.iter().map(|&(_, len)| len).sum::<u64>()
            + self.state_bytes
    }
}

/// How long after a segment is sealed its few unsettled messages count as stragglers.
const STRAGGLER_GRACE: Duration = Duration::from_millis(250);

/// Where records of a fresh segment start.
pub(crate) fn first_record(seg: &Segment) -> u64 {
    seg.base() + HEADER_LEN
}
