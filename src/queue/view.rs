//! Read-only views of a queue's index for peeks, stats and checkpoints: the messages waiting,
//! in delivery order, what they weigh, one message's state, the messages of a segment.

use super::index::{Entry, QueueIndex, Waiting};
use super::slot::Slot;

impl QueueIndex {
    /// The unsettled message pushed first (the smallest id: ready, delayed or leased), with its
    /// due time if it is delayed.
    pub(crate) fn first_pushed(&self) -> Option<Waiting> {
        let ready =
            self.ready.iter().filter_map(|m| m.first_key_value().map(|(&id, &s)| (id, s, None)));
        let delayed = self.delayed.first_id().map(|(id, due, s)| (id, s, Some(due)));
        let leased = self.leased.iter().next().map(|(id, s)| (id, s, None));
        let (id, slot, due) = ready.chain(delayed).chain(leased).min_by_key(|&(id, ..)| id)?;
        Some(Waiting { id, entry: self.entry(id, slot), due })
    }

    /// The waiting (ready or delayed) message `id`, if it is one.
    pub(crate) fn waiting_one(&self, id: u64) -> Option<Waiting> {
        if let Some((due, slot)) = self.delayed.get(id) {
            return Some(Waiting { id, entry: self.entry(id, slot), due: Some(due) });
        }
        let slot = *self.ready.get(self.ready_level(id)?)?.get(&id)?;
        Some(Waiting { id, entry: self.entry(id, slot), due: None })
    }

    /// The ids of the waiting messages in delivery order, as [`QueueIndex::waiting`] lists them.
    pub(crate) fn waiting_ids(&self) -> Vec<u64> {
        let ready = self.ready.iter().rev().flat_map(|m| m.keys().copied());
        ready.chain(self.delayed.by_due().map(|(id, ..)| id)).collect()
    }

    /// Payload bytes of every unsettled message (ready, delayed or leased).
    pub(crate) fn payload_bytes(&self) -> u64 {
        let ready = self.ready.iter().flat_map(|m| m.values());
        let delayed = self.delayed.iter().map(|(.., s)| s);
        let leased = self.leased.iter().map(|(_, s)| s);
        let held: u64 = ready.copied().chain(delayed).chain(leased).map(|s| u64::from(s.len)).sum();
        held + self.run.bytes
    }

    /// Waiting messages in delivery order (ready by priority and age, then delayed by due
    /// time), at most `max`.
    pub(crate) fn waiting(&self, max: usize) -> Vec<Waiting> {
        let ready = self.ready.iter().rev().flat_map(|m| m.iter().map(|(&id, &s)| (id, s, None)));
        let delayed = self.delayed.by_due().map(|(id, due, s)| (id, s, Some(due)));
        ready
            .chain(delayed)
            .take(max)
            .map(|(id, slot, due)| Waiting { id, entry: self.entry(id, slot), due })
            .collect()
    }

    /// The state of unsettled message `id`: its entry and the Unix ms it is delayed until (0:
    /// ready or leased).
    pub(crate) fn get(&self, id: u64) -> Option<(Entry, u64)> {
        if let Some(slot) = self.leased.get(id) {
            return Some((self.entry(id, slot), 0));
        }
        if let Some((due, slot)) = self.delayed.get(id) {
            return Some((self.entry(id, slot), due));
        }
        let slot = self.ready.get(self.ready_level(id)?)?.get(&id)?;
        Some((self.entry(id, *slot), 0))
    }

    /// Whether message `id` was delivered in this run and not nacked, retried or moved since
    /// (its lease may have run out): what recovery would count in flight if the store stopped
    /// now.
    pub(crate) fn delivered(&self, id: u64) -> bool {
        let slot = self.leased.get(id).or_else(|| self.delayed.get(id).map(|(_, s)| s));
        let slot = slot.or_else(|| self.ready.get(self.ready_level(id)?)?.get(&id).copied());
        slot.is_some_and(Slot::delivered)
    }

    /// Calls `f(id, entry, due)` for every unsettled message whose push record lies in
    /// `[from, to)`.
    pub(crate) fn each_in(&self, from: u64, to: u64, mut f: impl FnMut(u64, Entry, u64)) {
        let inside = |s: &Slot| s.lsn >= from && s.lsn < to;
        for m in &self.ready {
            for (&id, s) in m.iter().filter(|(_, s)| inside(s)) {
                f(id, self.entry(id, *s), 0);
            }
        }
        for (id, due, s) in self.delayed.iter().filter(|(.., s)| inside(s)) {
            f(id, self.entry(id, s), due);
        }
        for (id, s) in self.leased.iter().filter(|(_, s)| inside(s)) {
            f(id, self.entry(id, s), 0);
        }
    }
}
