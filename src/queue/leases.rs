//! [`Leases`]: a queue's messages in flight, each one's deadline and slot by id, and the same
//! leases in deadline order.
//!
//! Invariant: `by_deadline` holds `(deadline, id)` exactly for each `id → (deadline, _)` of
//! `by_id`, so a lease costs a 32-byte entry by id and a 16-byte one by deadline. A deadline is
//! kept as nanoseconds after `base`, the first instant the leases were given: the clock is
//! monotonic, so no later reading is before it (one that were would count as `base`). A
//! deadline past what a `u64` holds (some 584 years, which only a `ManualClock` run to its
//! end reaches) is `u64::MAX`, and a reading is at most `u64::MAX - 1`: such a lease never
//! runs out. A lease's attempt is its slot's attempts: the delivery that leased it counted
//! itself in.

use std::time::{Duration, Instant};

use super::chunks::Chunks;
use super::slot::Slot;
use crate::clock::deadline_after;

/// Whether a delivery still holds its lease (see [`Leases::holder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holder {
    /// It does: the message's slot.
    Current(Slot),
    /// Its lease is there but its deadline has passed.
    Lapsed,
    /// The message is not leased by that attempt.
    Not,
}

/// Leased messages: by id (what settlements look up) and by deadline (what expiry walks).
#[derive(Debug, Default)]
pub(super) struct Leases {
    by_id: Chunks<u64, (u64, Slot)>,
    by_deadline: Chunks<(u64, u64), ()>,
    base: Option<Instant>,
}

impl Leases {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Deadline `t` as nanoseconds after the base (0 at or before it, `u64::MAX` past what a
    /// `u64` holds).
    fn nanos(&self, t: Instant) -> u64 {
        let since = self.base.and_then(|base| t.checked_duration_since(base));
        since.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Reading `now` as nanoseconds after the base: below every deadline past the range, so
    /// that a lease taken at the end of a clock's range does not lapse at once.
    fn reading(&self, now: Instant) -> u64 {
        self.nanos(now).min(u64::MAX - 1)
    }

    /// The instant `nanos` after the base.
    fn instant(&self, nanos: u64) -> Option<Instant> {
        let (base, d) = (self.base?, Duration::from_nanos(nanos));
        Some(base.checked_add(d).unwrap_or_else(|| deadline_after(base, d)))
    }

    /// Leases message `id` (its slot counting this delivery) at `now` until `deadline`.
    pub(super) fn insert(&mut self, id: u64, slot: Slot, now: Instant, deadline: Instant) {
        self.base.get_or_insert(now);
        let at = self.nanos(deadline);
        if let Some((was, _)) = self.by_id.insert(id, (at, slot)) {
            self.by_deadline.remove((was, id));
        }
        self.by_deadline.insert((at, id), ());
    }

    /// Takes the lease of message `id` away; returns its slot.
    pub(super) fn remove(&mut self, id: u64) -> Option<Slot> {
        let (at, slot) = self.by_id.remove(id)?;
        self.by_deadline.remove((at, id));
        Some(slot)
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(id)
    }

    /// The slot of leased message `id`.
    pub(super) fn get(&self, id: u64) -> Option<Slot> {
        self.by_id.get(id).map(|&(_, slot)| slot)
    }

    /// The slot of leased message `id`, to change (its attempts stay those of its lease).
    pub(super) fn slot_mut(&mut self, id: u64) -> Option<&mut Slot> {
        self.by_id.get_mut(id).map(|(_, slot)| slot)
    }

    /// Whether delivery `attempt` of message `id` holds its lease at `now`.
    pub(super) fn holder(&self, id: u64, attempt: u32, now: Instant) -> Holder {
        match self.by_id.get(id) {
            Some(&(at, slot)) if slot.attempts() == attempt => {
                if at > self.reading(now) {
                    Holder::Current(slot)
                } else {
                    Holder::Lapsed
                }
            }
            _ => Holder::Not,
        }
    }

    /// Moves the deadline of the lease of `id` to `to` (with `only_later`, only if that is
    /// later than the one it has).
    pub(super) fn move_deadline(&mut self, id: u64, to: Instant, only_later: bool) {
        let to = self.nanos(to);
        let Some(&(was, slot)) = self.by_id.get(id) else { return };
        if only_later && to <= was {
            return;
        }
        self.by_id.insert(id, (to, slot));
        self.by_deadline.remove((was, id));
        self.by_deadline.insert((to, id), ());
    }

    /// The earliest deadline (none past the range: those never come).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let first = self.by_deadline.first().filter(|&((at, _), ())| at < u64::MAX);
        first.and_then(|((at, _), ())| self.instant(at))
    }

    /// Takes out the lease whose deadline comes first if it is at or before `now`: its id and
    /// slot.
    pub(super) fn pop_lapsed(&mut self, now: Instant) -> Option<(u64, Slot)> {
        let now = self.reading(now);
        let ((_, id), ()) = self.by_deadline.first().filter(|&((at, _), ())| at <= now)?;
        Some((id, self.remove(id)?))
    }

    /// Every lease in id order: (id, slot).
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, Slot)> + '_ {
        self.by_id.iter().map(|(id, (_, slot))| (id, slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(attempts: u32) -> Slot {
        Slot::new(1, 1, attempts, 0)
    }

    #[test]
    fn deadlines_order_expiry_and_moves_replace_them() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Leases::default();
        l.insert(1, slot(1), t0, t0 + ms(30));
        l.insert(2, slot(1), t0, t0 + ms(10));
        l.insert(3, slot(2), t0 + ms(1), t0 + ms(20));
        assert_eq!(l.next_deadline(), Some(t0 + ms(10)));
        l.move_deadline(2, t0 + ms(40), false);
        l.move_deadline(3, t0 + ms(5), true); // not later: kept
        assert_eq!(l.next_deadline(), Some(t0 + ms(20)));
        assert_eq!(l.holder(3, 2, t0 + ms(19)), Holder::Current(slot(2)));
        assert_eq!(l.holder(3, 2, t0 + ms(20)), Holder::Lapsed);
        assert_eq!(l.holder(3, 1, t0), Holder::Not);
        assert_eq!(l.pop_lapsed(t0 + ms(19)), None);
        assert_eq!(l.pop_lapsed(t0 + ms(35)), Some((3, slot(2))));
        assert_eq!(l.pop_lapsed(t0 + ms(35)), Some((1, slot(1))));
        assert_eq!(l.pop_lapsed(t0 + ms(35)), None);
        // Taken away, then leased again by a later delivery: only the new deadline counts.
        assert_eq!(l.remove(2), Some(slot(1)));
        l.insert(2, slot(2), t0 + ms(50), t0 + ms(60));
        assert_eq!(l.holder(2, 1, t0 + ms(50)), Holder::Not);
        assert_eq!((l.len(), l.by_deadline.len()), (1, 1));
        assert_eq!(l.next_deadline(), Some(t0 + ms(60)));
        assert_eq!(l.pop_lapsed(t0 + ms(60)), Some((2, slot(2))));
        assert_eq!((l.len(), l.next_deadline()), (0, None));
    }

    #[test]
    fn far_deadlines_and_early_readings_neither_panic_nor_wrap() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        let far = deadline_after(t0, Duration::MAX);
        l.insert(1, slot(1), t0, far);
        assert_eq!(l.next_deadline(), Some(far));
        assert_eq!(l.holder(1, 1, far - Duration::from_nanos(1)), Holder::Current(slot(1)));
        assert_eq!(l.pop_lapsed(far - Duration::from_nanos(1)), None);
        // A reading before the base counts as the base.
        assert_eq!(l.nanos(t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0)), 0);
        assert_eq!(l.pop_lapsed(far), Some((1, slot(1))));
    }

    #[test]
    fn a_lease_taken_at_the_end_of_the_range_does_not_lapse_at_once() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        l.insert(1, slot(1), t0, t0 + Duration::from_secs(1));
        // A manual clock run to its end: nanoseconds after the base no longer fit a `u64`.
        let Some(end) = t0.checked_add(Duration::from_nanos(u64::MAX)) else { return };
        assert_eq!(l.pop_lapsed(end), Some((1, slot(1))));
        let late = end.checked_add(Duration::from_secs(30)).unwrap_or(end);
        l.insert(1, slot(2), end, late);
        assert_eq!(l.holder(1, 2, end), Holder::Current(slot(2)));
        assert_eq!(l.pop_lapsed(end), None);
        assert_eq!(l.next_deadline(), None, "it never comes");
    }
}
