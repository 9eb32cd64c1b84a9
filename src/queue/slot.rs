//! What every unsettled message held in a queue's index costs: a [`Slot`] of 16 bytes, its
//! payload's place, its deliveries and its priority.
//!
//! Invariant: a slot's attempts saturate at [`MAX_ATTEMPTS`] and its priority is at most
//! `limits::MAX_PRIORITY`; beside them it holds one flag, whether the message was delivered in
//! this run (see [`Slot::delivered`]).

/// What every unsettled message costs in the index: 16 bytes (its priority included), plus
/// the cost of the structure holding it. Rarer properties live in side maps (`index::Extra`
/// for an expiry or a payload that starts elsewhere), due times beside delayed messages'
/// slots, deadlines beside leased ones'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) lsn: u64,
    pub(super) len: u32,
    /// Deliveries so far (the low 27 bits, saturating), [`DELIVERED`] and the priority (the
    /// top 4 bits).
    meta: u32,
}

/// Deliveries a slot counts before it saturates.
const MAX_ATTEMPTS: u32 = (1 << 27) - 1;

/// The flag of [`Slot::delivered`].
const DELIVERED: u32 = 1 << 27;

impl Slot {
    pub(super) fn new(lsn: u64, len: u32, attempts: u32, priority: u8) -> Slot {
        let priority = u32::from(priority.min(crate::limits::MAX_PRIORITY));
        Slot { lsn, len, meta: attempts.min(MAX_ATTEMPTS) | priority << 28 }
    }

    pub(super) fn attempts(self) -> u32 {
        self.meta & MAX_ATTEMPTS
    }

    pub(super) fn priority(self) -> u8 {
        (self.meta >> 28) as u8
    }

    pub(super) fn set_attempts(&mut self, attempts: u32) {
        self.meta = (self.meta & !MAX_ATTEMPTS) | attempts.min(MAX_ATTEMPTS);
    }

    /// Whether the message was delivered in this run (leased, by a `Deliver` record) and not
    /// nacked, retried or moved since, whether its lease ran out or not: what recovery would
    /// count in flight if the store stopped now. A new slot (a push, a replayed or moved
    /// message) is not.
    pub(super) fn delivered(self) -> bool {
        self.meta & DELIVERED != 0
    }

    pub(super) fn set_delivered(&mut self, delivered: bool) {
        self.meta = if delivered { self.meta | DELIVERED } else { self.meta & !DELIVERED };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_saturate_and_keep_the_priority() {
        let mut s = Slot::new(7, 3, u32::MAX, 200);
        assert_eq!((s.attempts(), s.priority()), (MAX_ATTEMPTS, crate::limits::MAX_PRIORITY));
        s.set_delivered(true);
        s.set_attempts(5);
        assert!(s.delivered());
        assert_eq!(
            (s.lsn, s.len, s.attempts(), s.priority()),
            (7, 3, 5, crate::limits::MAX_PRIORITY)
        );
        s.set_attempts(u32::MAX);
        assert_eq!((s.attempts(), s.priority(), s.delivered()), (MAX_ATTEMPTS, 9, true));
        s.set_delivered(false);
        assert_eq!((s.attempts(), s.priority(), s.delivered()), (MAX_ATTEMPTS, 9, false));
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }
}
