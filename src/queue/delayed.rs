//! [`Delayed`]: a queue's delayed messages, each one's due time and slot by id, and the same
//! messages in due order.
//!
//! Invariant: `by_due` holds `(due, id)` exactly for each `id → (due, _)` of `by_id`. Both are
//! [`Chunks`], so a delayed message costs its 32-byte entry by id and its 16-byte entry by due
//! time, and little more when they come in order.

use super::chunks::Chunks;
use super::slot::Slot;

/// Delayed messages: by id (what replay and settlements look up) and by (due Unix ms, id)
/// (what promotion and peeks walk).
#[derive(Debug, Default)]
pub(super) struct Delayed {
    by_id: Chunks<u64, (u64, Slot)>,
    by_due: Chunks<(u64, u64), ()>,
}

impl Delayed {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Delays message `id` until `due`, in place of whatever due time it had.
    pub(super) fn insert(&mut self, id: u64, due: u64, slot: Slot) {
        if let Some((was, _)) = self.by_id.insert(id, (due, slot)) {
            self.by_due.remove((was, id));
        }
        self.by_due.insert((due, id), ());
    }

    /// Takes message `id` out; returns its due time and slot.
    pub(super) fn remove(&mut self, id: u64) -> Option<(u64, Slot)> {
        let (due, slot) = self.by_id.remove(id)?;
        self.by_due.remove((due, id));
        Some((due, slot))
    }

    /// Message `id`'s due time and slot.
    pub(super) fn get(&self, id: u64) -> Option<(u64, Slot)> {
        self.by_id.get(id).copied()
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(id)
    }

    /// Message `id`'s slot, to change (not its due time).
    pub(super) fn slot_mut(&mut self, id: u64) -> Option<&mut Slot> {
        self.by_id.get_mut(id).map(|(_, slot)| slot)
    }

    /// The message due first (the smallest id among those due at once): (due, id).
    pub(super) fn first_due(&self) -> Option<(u64, u64)> {
        self.by_due.first().map(|(key, ())| key)
    }

    /// Takes out the message due first if it is due at or before `now_ms`: its id and slot.
    pub(super) fn pop_due(&mut self, now_ms: u64) -> Option<(u64, Slot)> {
        let (_, id) = self.first_due().filter(|&(due, _)| due <= now_ms)?;
        let (_, slot) = self.remove(id)?;
        Some((id, slot))
    }

    /// The message with the smallest id: (id, due, slot).
    pub(super) fn first_id(&self) -> Option<(u64, u64, Slot)> {
        self.by_id.first().map(|(id, (due, slot))| (id, due, slot))
    }

    /// Every delayed message in id order: (id, due, slot).
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u64, Slot)> + '_ {
        self.by_id.iter().map(|(id, (due, slot))| (id, due, slot))
    }

    /// Every delayed message in due order, then id order: (id, due, slot).
    pub(super) fn by_due(&self) -> impl Iterator<Item = (u64, u64, Slot)> + '_ {
        self.by_due.iter().filter_map(|((due, id), ())| Some((id, due, self.by_id.get(id)?.1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(lsn: u64) -> Slot {
        Slot::new(lsn, 1, 0, 0)
    }

    #[test]
    fn a_message_delayed_again_keeps_only_its_last_due_time() {
        let mut d = Delayed::default();
        d.insert(1, 500, slot(1));
        d.insert(2, 100, slot(2));
        d.insert(1, 50, slot(1));
        assert_eq!(d.len(), 2);
        assert_eq!(d.first_due(), Some((50, 1)));
        assert_eq!(
            d.by_due().map(|(id, due, _)| (id, due)).collect::<Vec<_>>(),
            [(1, 50), (2, 100)]
        );
        // Taken out, then delayed again until later: the old due time is gone with it.
        assert_eq!(d.remove(1), Some((50, slot(1))));
        assert_eq!(d.pop_due(1000), Some((2, slot(2))));
        d.insert(1, 700, slot(1));
        assert_eq!(d.pop_due(699), None);
        assert_eq!(d.get(1), Some((700, slot(1))));
        assert_eq!(d.pop_due(700), Some((1, slot(1))));
        assert_eq!((d.len(), d.pop_due(u64::MAX), d.first_id()), (0, None, None));
        assert!(d.by_due.is_empty());
    }

    #[test]
    fn equal_due_times_come_out_in_id_order_and_slots_change_in_place() {
        let mut d = Delayed::default();
        for id in (0..200).rev() {
            d.insert(id, 10 + id % 3, slot(id));
        }
        d.slot_mut(7).unwrap().lsn = 99;
        let mut moved = slot(7);
        moved.lsn = 99;
        assert_eq!(d.get(7), Some((11, moved)));
        assert_eq!(d.first_id().map(|(id, due, _)| (id, due)), Some((0, 10)));
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| d.pop_due(11).map(|(id, _)| (id, 0)))
            .map(|(id, _)| (id % 3, id))
            .collect();
        assert_eq!(order.len(), 134);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "not in (due, id) order");
        assert!(d.iter().all(|(id, due, _)| id % 3 == 2 && due == 12) && d.contains(2));
    }
}
