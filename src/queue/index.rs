//! The in-memory index of one queue: which messages are ready (by priority, then push order),
//! which are delayed until when, which are leased and until when.
//!
//! Invariant: rebuilt from the log at every open and never persisted; it holds no payloads,
//! only where each payload lives (its log position and length). Every unsettled message is in
//! exactly one of `ready` (at its priority's level), `delayed`, `leased` or the queue's run; a
//! plain message held here costs one 16-byte slot in an ordered map, options and leases cost
//! side entries. Past its window (`set_window`), a queue's plain pushes join its [`Run`] and
//! cost nothing per message: `log::fill` reads them back from the log in push order, and every
//! run member's id is above the run's floor, so a ready message at or below the floor is
//! delivered before any of them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::dedup::DedupKeys;
use super::delayed::Delayed;
use super::leases::{Holder, Leases};
use super::run::{IdMap, Run, RunWant};
use super::slot::Slot;
use crate::clock::deadline_after;

/// The `lsn` of a message whose payload was relocated into the state database (its push
/// record's segment may be gone).
pub(crate) const RELOCATED: u64 = u64::MAX;

/// Where one unsettled message lives, and how often it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Log position of the message's push record, or [`RELOCATED`].
    pub lsn: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// Where the payload starts inside the push record.
    pub off: u32,
    /// Deliveries so far (the next delivery is attempt `attempts + 1`).
    pub attempts: u32,
    /// Higher is delivered first.
    pub priority: u8,
    /// Unix ms after which it must not be delivered (0: never expires).
    pub expires: u64,
}

impl Entry {
    /// Bytes of the whole push record.
    pub(crate) fn record_len(&self) -> usize {
        self.off as usize + self.len as usize
    }
}

/// Why a message is where it is: set when it was dead-lettered or failed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Note {
    /// The queue it was dead-lettered from.
    pub origin: Option<u32>,
    /// Why it was dead-lettered (`record::DeadReason` codes; 0 if it was not).
    pub reason: u8,
    /// The last error text a consumer gave.
    pub error: Box<str>,
}

/// What a push with an expiry (or a `Push` of an older store) adds: where its payload starts,
/// its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extra {
    off: u32,
    pub(super) expires: u64,
}

/// Priorities, `0..=MAX_PRIORITY`.
pub(super) const LEVELS: usize = crate::limits::MAX_PRIORITY as usize + 1;

/// Why a settlement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// A waiting message as `peek` shows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiting {
    pub id: u64,
    pub entry: Entry,
    /// Unix ms it is due at, if delayed.
    pub due: Option<u64>,
}

/// One queue's messages. Ids order the queue within a priority: smaller ids were pushed
/// earlier.
#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    /// Ready messages held here before plain pushes join the run instead (0: no limit).
    window: usize,
    pub(super) run: Run,
    /// Ready messages by priority, each level in id order.
    pub(super) ready: [BTreeMap<u64, Slot>; LEVELS],
    pub(super) ready_count: usize,
    /// The ready messages of level 0 from this id on are the run's *tail* (`snap.rs`): plain
    /// pushes moved in by `push` or `run_load`, each of them, in push order, up to the run
    /// (every plain push of the queue from the first of them on is one of them or a member
    /// of the run). Any other placement at or past it, or the removal of one that is not the
    /// first, moves it past that message.
    pub(super) tail_from: u64,
    /// Delayed messages, by id and by due time (Unix ms).
    pub(super) delayed: Delayed,
    /// Leased messages, by id and by deadline.
    pub(super) leased: Leases,
    pub(super) extra: IdMap<Extra>,
    pub(super) notes: IdMap<Note>,
    dedup: DedupKeys,
}

impl QueueIndex {
    /// Ready messages held here before plain pushes join the run (0: no limit).
    pub(crate) fn set_window(&mut self, window: usize) {
        self.window = window;
    }

    /// Adds a pushed message; a plain push (`member`, see `log::plain_push`) joins the run
    /// once the window is full, or while the run has members (so that the run stays in push
    /// order after everything held here).
    pub(crate) fn push(&mut self, id: u64, entry: Entry, due: u64, member: bool) {
        if !self.push_to_run(id, entry, member) {
            if member {
                return self.insert_member(id, entry, false);
            }
            self.insert(id, entry, due);
        }
    }

    /// `push` of a message just pushed: its id is new, so nothing is taken out of anywhere.
    pub(crate) fn push_new(&mut self, id: u64, entry: Entry, due: u64, member: bool) {
        if !self.push_to_run(id, entry, member) {
            if member {
                return self.insert_member(id, entry, true);
            }
            self.insert_new(id, entry, due);
        }
    }

    /// Counts a plain push into the run, if it joins it (see `push`).
    fn push_to_run(&mut self, id: u64, entry: Entry, member: bool) -> bool {
        let full = self.window > 0 && self.ready[0].len() >= self.window;
        if !(member && (self.run.count > 0 || full) && id > self.run.floor) {
            return false;
        }
        if self.run.count == 0 {
            self.run = Run { next: entry.lsn, count: 0, bytes: 0, floor: id - 1 };
        }
        self.run.count += 1;
        self.run.bytes += u64::from(entry.len);
        true
    }

    /// Members of the run.
    pub(crate) fn run_len(&self) -> u64 {
        self.run.count
    }

    /// Where `log::fill` reads the run from.
    pub(crate) fn run_next(&self) -> u64 {
        self.run.next
    }

    pub(crate) fn run_set_next(&mut self, next: u64) {
        if self.run.count > 0 {
            self.run.next = self.run.next.max(next);
        }
    }

    /// Whether message `id` may be a member of the run not yet in the index.
    pub(crate) fn run_may_hold(&self, id: u64) -> bool {
        self.run.count > 0 && id > self.run.floor && !self.holds_message(id)
    }

    /// Ready messages the index may still take before its window is full.
    pub(crate) fn run_room(&self) -> usize {
        if self.window == 0 {
            usize::MAX
        } else {
            self.window.saturating_sub(self.ready[0].len())
        }
    }

    /// Moves a member of the run, whose record ends at `next`, into the index: false (and
    /// nothing changes) if its id is not above the floor.
    pub(crate) fn run_load(&mut self, id: u64, entry: Entry, next: u64) -> bool {
        if self.run.count == 0 || id <= self.run.floor {
            return false;
        }
        self.run.count -= 1;
        self.run.bytes = self.run.bytes.saturating_sub(u64::from(entry.len));
        self.run.floor = id;
        self.run.next = next;
        if self.run.count == 0 {
            self.run = Run { floor: id, ..Run::default() };
        }
        self.insert_member(id, entry, false);
        true
    }

    /// Forgets the run (what `log::fill` does when the log holds fewer members than it
    /// counts).
    pub(crate) fn run_drop(&mut self) {
        self.run = Run { floor: self.run.floor, ..Run::default() };
        self.tail_from = u64::MAX;
    }

    /// Whether `want` holds without reading more of the run.
    pub(crate) fn run_satisfies(&self, want: RunWant) -> bool {
        if self.run.count == 0 {
            return true;
        }
        let floor = self.run.floor;
        let below =
            |m: &BTreeMap<u64, Slot>| m.first_key_value().is_some_and(|(&id, _)| id <= floor);
        match want {
            RunWant::Head => {
                self.ready.iter().skip(1).any(|m| !m.is_empty()) || below(&self.ready[0])
            }
            RunWant::First => below(&self.ready[0]),
            RunWant::Id(id) => id <= floor || self.holds_message(id),
            RunWant::Before(lsn) => self.run.next >= lsn,
            RunWant::Count(n) => {
                let after = self.ready[0].range(floor.saturating_add(1)..).count();
                self.ready_count - after >= n
            }
            RunWant::All => false,
        }
    }

    pub(crate) fn ready_len(&self) -> usize {
        self.ready_count + self.run_count()
    }

    /// Run members, as a count of messages.
    fn run_count(&self) -> usize {
        usize::try_from(self.run.count).unwrap_or(usize::MAX)
    }

    pub(crate) fn delayed_len(&self) -> usize {
        self.delayed.len()
    }

    pub(crate) fn leased_len(&self) -> usize {
        self.leased.len()
    }

    /// Messages waiting for a delivery: ready (held here or in the run) or delayed.
    pub(crate) fn waiting_len(&self) -> usize {
        self.ready_count + self.run_count() + self.delayed.len()
    }

    /// The level of the ready message `id`, if it is ready (level 0 is looked at first).
    pub(super) fn ready_level(&self, id: u64) -> Option<usize> {
        let at = |level: &usize| self.ready.get(*level).is_some_and(|m| m.contains_key(&id));
        std::iter::once(0).chain((1..LEVELS).rev()).find(at)
    }

    /// The full entry of message `id` from its slot and its extra.
    pub(super) fn entry(&self, id: u64, slot: Slot) -> Entry {
        let x = self.extra.get(&id);
        Entry {
            lsn: slot.lsn,
            len: slot.len,
            off: x.map_or(crate::record::PUSH_EX_OVERHEAD as u32, |x| x.off),
            attempts: slot.attempts(),
            priority: slot.priority(),
            expires: x.map_or(0, |x| x.expires),
        }
    }

    /// Takes message `id` out of wherever it is; returns its slot (its extra stays).
    fn unplace(&mut self, id: u64) -> Option<Slot> {
        if let Some(slot) = self.leased.remove(id) {
            return Some(slot);
        }
        if let Some((_, slot)) = self.delayed.remove(id) {
            return Some(slot);
        }
        let level = self.ready_level(id)?;
        let slot = self.ready.get_mut(level)?.remove(&id)?;
        self.ready_count -= 1;
        self.left_ready(level, id);
        Some(slot)
    }

    /// Message `id` left ready level `level`: the tail starts past it unless it was its
    /// first.
    fn left_ready(&mut self, level: usize, id: u64) {
        if level == 0
            && id >= self.tail_from
            && self.ready[0].range(self.tail_from..id).next().is_some()
        {
            self.tail_from = id + 1;
        }
    }

    /// Puts a slot that is nowhere: ready if `due` is 0, else delayed until `due`.
    fn place(&mut self, id: u64, slot: Slot, due: u64) {
        if due == 0 {
            let level = usize::from(slot.priority()).min(LEVELS - 1);
            if level == 0 {
                self.tail_from = self.tail_from.max(id.saturating_add(1));
            }
            if let Some(m) = self.ready.get_mut(level) {
                if m.insert(id, slot).is_none() {
                    self.ready_count += 1;
                }
            }
        } else {
            self.delayed.insert(id, due, slot);
        }
    }

    /// Adds a message: ready if `due` is 0, else delayed until `due` (Unix ms). Replay may
    /// restate a message; it is never in two places.
    pub(crate) fn insert(&mut self, id: u64, entry: Entry, due: u64) {
        self.unplace(id);
        self.extra.remove(&id);
        self.insert_new(id, entry, due);
    }

    /// [`QueueIndex::insert`] of a message that is nowhere in the index and has no extra.
    fn insert_new(&mut self, id: u64, entry: Entry, due: u64) {
        // No side entry for a push without options (nor for a priority, kept in the slot); one
        // for an expiry or an older store's `Push`.
        let plain = entry.off == crate::record::PUSH_EX_OVERHEAD as u32 && entry.expires == 0;
        if !plain {
            self.extra.insert(id, Extra { off: entry.off, expires: entry.expires });
        }
        let slot = Slot::new(entry.lsn, entry.len, entry.attempts, entry.priority);
        self.place(id, slot, due);
    }

    /// Adds a plain push (`log::plain_push`) ready at level 0 in push order, as a member of
    /// the tail (`fresh`: its id is new, in no map yet).
    fn insert_member(&mut self, id: u64, entry: Entry, fresh: bool) {
        if !fresh {
            self.unplace(id);
            self.extra.remove(&id);
        }
        if entry.off != crate::record::PUSH_EX_OVERHEAD as u32 {
            // A `Push` of an older store: its payload starts elsewhere.
            self.extra.insert(id, Extra { off: entry.off, expires: 0 });
        }
        let slot = Slot::new(entry.lsn, entry.len, entry.attempts, 0);
        if self.ready[0].insert(id, slot).is_none() {
            self.ready_count += 1;
        }
    }

    /// Takes a message out of the queue, wherever it is; returns its entry.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Entry> {
        let slot = self.unplace(id)?;
        let entry = self.entry(id, slot);
        self.extra.remove(&id);
        Some(entry)
    }

    /// Makes every delayed message due at or before `now_ms` ready; returns how many.
    pub(crate) fn promote(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while let Some((id, slot)) = self.delayed.pop_due(now_ms) {
            self.place(id, slot, 0);
            n += 1;
        }
        n
    }

    /// When the earliest delayed message is due (Unix ms).
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.delayed.first_due().map(|(due, _)| due)
    }

    /// The ready message that would be delivered next: the highest priority, the oldest.
    fn head_slot(&self) -> Option<(u64, Slot)> {
        self.ready.iter().rev().find_map(|m| m.first_key_value().map(|(&id, &s)| (id, s)))
    }

    /// The message that would be delivered next, if one is ready.
    pub(crate) fn head(&self) -> Option<(u64, Entry)> {
        self.head_slot().map(|(id, slot)| (id, self.entry(id, slot)))
    }

    /// The oldest waiting message: the next ready one, else the earliest-due delayed one.
    pub(crate) fn oldest_waiting(&self) -> Option<u64> {
        self.head_slot().map(|(id, _)| id).or_else(|| self.delayed.first_due().map(|(_, id)| id))
    }

    /// Leases the ready message `id` until `now + visibility`; returns its entry with the
    /// attempt count of this delivery.
    pub(crate) fn lease(&mut self, id: u64, now: Instant, visibility: Duration) -> Option<Entry> {
        let level = self.ready_level(id)?;
        let m = self.ready.get_mut(level)?;
        let mut slot = match m.first_entry() {
            Some(first) if *first.key() == id => first.remove(),
            _ => m.remove(&id)?,
        };
        self.ready_count -= 1;
        self.left_ready(level, id);
        slot.set_attempts(slot.attempts().saturating_add(1));
        slot.set_delivered(true);
        self.leased.insert(id, slot, now, deadline_after(now, visibility));
        Some(self.entry(id, slot))
    }

    /// Makes every lease whose deadline is at or before `now` ready again; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some((id, slot)) = self.leased.pop_lapsed(now) {
            self.place(id, slot, 0);
            n += 1;
        }
        n
    }

    /// The earliest deadline of a lease, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.leased.next_deadline()
    }

    /// Checks that `attempt` still holds the lease of `id` at `now`. An expired lease is
    /// released on the spot.
    fn check(&mut self, id: u64, attempt: u32, now: Instant) -> Result<Entry, Expired> {
        match self.leased.holder(id, attempt, now) {
            Holder::Current(slot) => Ok(self.entry(id, slot)),
            Holder::Lapsed => {
                self.expire(now);
                Err(Expired)
            }
            Holder::Not => Err(Expired),
        }
    }

    /// Takes a leased message out for good (ack, or a move to another queue); returns its
    /// entry.
    pub(crate) fn take(&mut self, id: u64, attempt: u32, now: Instant) -> Result<Entry, Expired> {
        self.check(id, attempt, now)?;
        self.remove(id).ok_or(Expired)
    }

    /// Puts a leased message back (a nack or retry, which its record logs): ready at once
    /// (`due` 0) or delayed until `due` (Unix ms).
    pub(crate) fn put_back(
        &mut self,
        id: u64,
        attempt: u32,
        now: Instant,
        due: u64,
    ) -> Result<Entry, Expired> {
        let entry = self.check(id, attempt, now)?;
        let mut slot = self.unplace(id).ok_or(Expired)?;
        slot.set_delivered(false);
        self.place(id, slot, due);
        Ok(entry)
    }

    /// Lets the lease of `id` by `attempt` lapse at once (a dropped delivery, no record):
    /// ready again, and still delivered in this run, exactly as if its deadline had passed.
    pub(crate) fn lapse(&mut self, id: u64, attempt: u32, now: Instant) -> Result<(), Expired> {
        self.check(id, attempt, now)?;
        let slot = self.unplace(id).ok_or(Expired)?;
        self.place(id, slot, 0);
        Ok(())
    }

    /// Whether `id` is leased by `attempt` at `now`.
    pub(crate) fn holds(&mut self, id: u64, attempt: u32, now: Instant) -> Result<Entry, Expired> {
        self.check(id, attempt, now)
    }

    /// Moves the deadline of a lease to `now + by`.
    pub(crate) fn extend(
        &mut self,
        id: u64,
        attempt: u32,
        now: Instant,
        by: Duration,
    ) -> Result<(), Expired> {
        self.move_deadline(id, attempt, now, Some(deadline_after(now, by)), false)
    }

    /// Moves the deadline of a lease to `now + by` unless it is already later: a keep-alive
    /// never shortens a lease its holder extended. A deadline past what an `Instant` holds
    /// leaves the lease as it is.
    pub(crate) fn renew(
        &mut self,
        id: u64,
        attempt: u32,
        now: Instant,
        by: Duration,
    ) -> Result<(), Expired> {
        self.move_deadline(id, attempt, now, now.checked_add(by), true)
    }

    /// Sets the deadline of a current lease to `to` (if any, and, with `only_later`, if it is
    /// later than the one it has).
    fn move_deadline(
        &mut self,
        id: u64,
        attempt: u32,
        now: Instant,
        to: Option<Instant>,
        only_later: bool,
    ) -> Result<(), Expired> {
        self.check(id, attempt, now)?;
        if let Some(to) = to {
            self.leased.move_deadline(id, to, only_later);
        }
        Ok(())
    }

    pub(crate) fn note(&self, id: u64) -> Option<&Note> {
        self.notes.get(&id)
    }

    pub(crate) fn set_note(&mut self, id: u64, note: Note) {
        self.notes.insert(id, note);
    }

    pub(crate) fn take_note(&mut self, id: u64) -> Option<Note> {
        self.notes.remove(&id)
    }

    /// Records the last error text of a message.
    pub(crate) fn set_error(&mut self, id: u64, error: &str) {
        if !error.is_empty() {
            self.notes.entry(id).or_default().error = error.into();
        }
    }

    /// Whether message `id` is unsettled in this queue.
    fn holds_message(&self, id: u64) -> bool {
        self.leased.contains(id) || self.delayed.contains(id) || self.ready_level(id).is_some()
    }

    /// The message a dedup key refers to, if the key still holds at `now_ms`: its message is
    /// unsettled, or its window has not passed.
    pub(crate) fn dedup_hit(&mut self, key: &[u8], now_ms: u64) -> Option<u64> {
        let mut dedup = std::mem::take(&mut self.dedup);
        let hit = dedup.hit(key, now_ms, |id| self.holds_message(id));
        self.dedup = dedup;
        hit
    }

    /// Remembers a dedup key; prunes keys that no longer hold once the map has doubled.
    pub(crate) fn dedup_insert(&mut self, key: &[u8], id: u64, until: u64, now_ms: u64) {
        let mut dedup = std::mem::take(&mut self.dedup);
        dedup.insert(key, id, until, now_ms, |id| self.holds_message(id));
        self.dedup = dedup;
    }

    /// Forgets notes of settled messages (called when a message leaves the queue for good).
    pub(crate) fn forget(&mut self, id: u64) {
        self.notes.remove(&id);
    }

    /// Checkpoint: the dedup keys added (given to `put`: key, id, window end) and forgotten
    /// (returned) since the last call (`DedupKeys`).
    pub(crate) fn take_dedup_changes(
        &mut self,
        put: impl FnMut(&[u8], u64, u64),
    ) -> Vec<Box<[u8]>> {
        self.dedup.take_changes(put)
    }

    /// Gives `put` every dedup key held now, with its message and window end.
    pub(crate) fn all_dedup(&self, put: impl FnMut(&[u8], u64, u64)) {
        self.dedup.all(put)
    }

    /// Marks message `id`'s payload as relocated into the state database; returns the entry it
    /// had.
    pub(crate) fn relocate(&mut self, id: u64) -> Option<Entry> {
        let level = self.ready_level(id);
        let slot = if let Some(slot) = self.leased.slot_mut(id) {
            slot
        } else if let Some(slot) = self.delayed.slot_mut(id) {
            slot
        } else {
            self.ready.get_mut(level?)?.get_mut(&id)?
        };
        let before = *slot;
        slot.lsn = RELOCATED;
        Some(self.entry(id, before))
    }

    /// Recovery: a delivery record was replayed for `id`; false if the message is unknown
    /// (settled in a segment deleted since).
    pub(crate) fn replay_delivered(&mut self, id: u64, attempt: u32) -> bool {
        let level = self.ready_level(id);
        let slot = match self.delayed.slot_mut(id) {
            Some(slot) => Some(slot),
            None => level.and_then(|l| self.ready.get_mut(l)?.get_mut(&id)),
        };
        match slot {
            Some(s) => {
                s.set_attempts(s.attempts().max(attempt));
                true
            }
            None => false,
        }
    }

    /// Recovery: a retry was replayed: the message waits until `due` again.
    pub(crate) fn replay_retry(&mut self, id: u64, due: u64) -> bool {
        match self.unplace(id) {
            Some(slot) => {
                self.place(id, slot, due);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lsn: u64) -> Entry {
        Entry { lsn, len: 1, off: 36, attempts: 0, priority: 0, expires: 0 }
    }

    fn lease_next(q: &mut QueueIndex, now: Instant, vis: Duration) -> Option<(u64, Entry)> {
        let (id, _) = q.head()?;
        q.lease(id, now, vis).map(|e| (id, e))
    }

    #[test]
    fn fifo_and_redelivery_keeps_order() {
        let mut q = QueueIndex::default();
        let now = Instant::now();
        for id in 1..=3 {
            q.insert(id, entry(id * 10), 0);
        }
        let (a, ea) = lease_next(&mut q, now, Duration::from_secs(1)).unwrap();
        assert_eq!((a, ea.attempts), (1, 1));
        let (b, _) = lease_next(&mut q, now, Duration::from_secs(1)).unwrap();
        assert_eq!(b, 2);
        q.put_back(1, 1, now, 0).unwrap();
        // The released message is older than 3, so it comes first again.
        let (c, ec) = lease_next(&mut q, now, Duration::from_secs(1)).unwrap();
        assert_eq!((c, ec.attempts), (1, 2));
    }

    #[test]
    fn higher_priority_first_fifo_within_a_level() {
        let mut q = QueueIndex::default();
        for (id, p) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 9)] {
            q.insert(id, Entry { priority: p, ..entry(id) }, 0);
        }
        let now = Instant::now();
        let order: Vec<u64> = std::iter::from_fn(|| {
            lease_next(&mut q, now, Duration::from_secs(1)).map(|(id, _)| id)
        })
        .collect();
        assert_eq!(order, [5, 2, 4, 1, 3]);
    }

    #[test]
    fn a_priority_costs_no_side_entry_and_survives_delay_and_lease() {
        let mut q = QueueIndex::default();
        let now = Instant::now();
        let off = crate::record::PUSH_EX_OVERHEAD as u32;
        q.insert(1, Entry { off, ..entry(1) }, 0);
        q.insert(2, Entry { off, priority: 7, ..entry(2) }, 500);
        assert!(q.extra.is_empty());
        assert_eq!(q.get(2).map(|(e, due)| (e.priority, due)), Some((7, 500)));
        q.promote(500);
        let (id, e) = lease_next(&mut q, now, Duration::from_secs(1)).unwrap();
        assert_eq!((id, e.priority, e.attempts), (2, 7, 1));
        q.put_back(2, 1, now, 0).unwrap();
        assert_eq!(q.head().map(|(id, e)| (id, e.priority, e.attempts)), Some((2, 7, 1)));
        assert!(q.replay_delivered(2, 5));
        assert_eq!(q.remove(2).map(|e| (e.priority, e.attempts)), Some((7, 5)));
        assert!(q.extra.is_empty());
    }

    #[test]
    fn delayed_messages_become_ready_when_due() {
        let mut q = QueueIndex::default();
        q.insert(1, entry(1), 1000);
        q.insert(2, entry(2), 500);
        q.insert(3, entry(3), 0);
        assert_eq!((q.ready_len(), q.delayed_len(), q.next_due()), (1, 2, Some(500)));
        assert_eq!(q.promote(499), 0);
        assert_eq!(q.promote(500), 1);
        assert_eq!(q.promote(10_000), 1);
        assert_eq!(q.waiting(10).iter().map(|w| w.id).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn stale_holder_cannot_settle() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        q.insert(7, entry(0), 0);
        lease_next(&mut q, t0, Duration::from_millis(10)).unwrap();
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(q.expire(t1), 1);
        let (_, e) = lease_next(&mut q, t1, Duration::from_secs(5)).unwrap();
        assert_eq!(e.attempts, 2);
        assert_eq!(q.take(7, 1, t1), Err(Expired));
        assert_eq!(q.extend(7, 1, t1, Duration::from_secs(1)), Err(Expired));
        assert!(q.take(7, 2, t1).is_ok());
        assert_eq!(q.ready_len() + q.leased_len(), 0);
    }

    #[test]
    fn settled_leases_do_not_pile_up_in_the_deadline_heap() {
        let mut q = QueueIndex::default();
        let now = Instant::now();
        for id in 0..10_000 {
            q.insert(id, entry(id), 0);
            lease_next(&mut q, now, Duration::from_secs(30)).unwrap();
            q.take(id, 1, now).unwrap();
        }
        assert_eq!(q.leased_len(), 0);
        for id in 10_000..10_200 {
            q.insert(id, entry(id), 0);
            lease_next(&mut q, now, Duration::from_millis(5)).unwrap();
        }
        for id in 10_000..10_100 {
            q.take(id, 1, now).unwrap();
        }
        assert_eq!(q.expire(now + Duration::from_millis(6)), 100);
    }

    #[test]
    fn extend_moves_the_deadline() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        q.insert(1, entry(0), 0);
        lease_next(&mut q, t0, Duration::from_millis(10)).unwrap();
        q.extend(1, 1, t0 + Duration::from_millis(5), Duration::from_millis(100)).unwrap();
        assert_eq!(q.expire(t0 + Duration::from_millis(50)), 0);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(105)));
        assert_eq!(q.expire(t0 + Duration::from_millis(106)), 1);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn renew_moves_the_deadline_later_never_earlier() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        q.insert(1, entry(0), 0);
        lease_next(&mut q, t0, ms(10)).unwrap();
        q.renew(1, 1, t0 + ms(5), ms(10)).unwrap();
        assert_eq!(q.next_deadline(), Some(t0 + ms(15)));
        // The holder extended it further: a renewal for less leaves it.
        q.extend(1, 1, t0 + ms(6), ms(100)).unwrap();
        q.renew(1, 1, t0 + ms(7), ms(10)).unwrap();
        assert_eq!(q.next_deadline(), Some(t0 + ms(106)));
        // Past what an `Instant` holds: unchanged, no panic.
        q.renew(1, 1, t0 + ms(8), Duration::MAX).unwrap();
        assert_eq!(q.next_deadline(), Some(t0 + ms(106)));
        // A lapsed lease is not brought back.
        assert_eq!(q.renew(1, 1, t0 + ms(106), ms(10)), Err(Expired));
        assert_eq!(q.renew(1, 2, t0, ms(10)), Err(Expired));
        assert_eq!(q.ready_len(), 1);
    }

    #[test]
    fn delivered_holds_until_a_nack_retry_or_move_not_past_a_lapse() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        for id in 1..=4 {
            q.insert(id, entry(id), 0);
        }
        assert!(!q.delivered(1));
        for _ in 1..=4 {
            lease_next(&mut q, t0, ms(10)).unwrap();
        }
        assert!((1..=4).all(|id| q.delivered(id)));
        q.put_back(1, 1, t0, 0).unwrap(); // a nack
        q.put_back(2, 1, t0, 500).unwrap(); // a retry
        q.lapse(3, 1, t0).unwrap(); // a dropped delivery
        assert_eq!(q.expire(t0 + ms(10)), 1); // 4's lease ran out
        assert_eq!(
            (q.delivered(1), q.delivered(2), q.delivered(3), q.delivered(4)),
            (false, false, true, true)
        );
        // Delivered again, then moved (taken and inserted elsewhere): a new slot.
        let (id, e) = lease_next(&mut q, t0 + ms(10), ms(10)).unwrap();
        assert_eq!((id, e.attempts, q.delivered(1)), (1, 2, true));
        let e = q.take(1, 2, t0 + ms(10)).unwrap();
        let mut dlq = QueueIndex::default();
        dlq.insert(1, e, 0);
        assert!(!dlq.delivered(1) && !q.delivered(1));
        assert_eq!(dlq.get(1).map(|(e, _)| e.attempts), Some(2));
        // A replayed delivery counts attempts, not this run's deliveries.
        assert!(q.replay_delivered(2, 3) && !q.delivered(2));
    }

    #[test]
    fn ack_after_deadline_fails_even_before_expiry_ran() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        q.insert(1, entry(0), 0);
        lease_next(&mut q, t0, Duration::from_millis(10)).unwrap();
        assert_eq!(q.take(1, 1, t0 + Duration::from_millis(10)), Err(Expired));
        assert_eq!(q.ready_len(), 1);
    }

    #[test]
    fn pruning_dedup_keys_keeps_exactly_those_that_still_hold() {
        let mut q = QueueIndex::default();
        for id in 0..600u64 {
            q.insert(id, entry(id), 0);
            // Even ids are settled at once; ids below 300 have a window until 1000.
            let until = if id < 300 { 1000 } else { 0 };
            q.dedup_insert(&id.to_le_bytes(), id, until, 10);
            if id % 2 == 0 {
                q.remove(id);
            }
        }
        for id in 600..1100u64 {
            q.dedup_insert(&id.to_le_bytes(), id, 0, 10); // settled-looking, lapsed: pruned
        }
        for id in 0..600u64 {
            let held = id % 2 == 1 || id < 300;
            assert_eq!(q.dedup_hit(&id.to_le_bytes(), 10).is_some(), held, "key {id}");
        }
        assert!(q.dedup.len() < 1100, "nothing was pruned");
    }

    #[test]
    fn dedup_keys_hold_while_unsettled_or_within_the_window() {
        let mut q = QueueIndex::default();
        q.insert(1, entry(1), 0);
        q.dedup_insert(b"k", 1, 100, 0);
        assert_eq!(q.dedup_hit(b"k", 50), Some(1));
        assert_eq!(q.dedup_hit(b"k", 500), Some(1), "unsettled: still held");
        q.remove(1);
        assert_eq!(q.dedup_hit(b"k", 99), Some(1), "settled, inside the window");
        assert_eq!(q.dedup_hit(b"k", 100), None);
        assert_eq!(q.dedup_hit(b"k", 0), None, "forgotten once it lapsed");
    }
}
