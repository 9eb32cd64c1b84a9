//! The in-memory index of one queue: which messages are ready, which are leased and until when.
//!
//! Invariant: rebuilt from the log at every open and never persisted; it holds no payloads,
//! only where each payload lives (its log position and length).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Where one unsettled message lives, and how often it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Log position of the message's push record.
    pub lsn: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// Deliveries so far (the next delivery is attempt `attempts + 1`).
    pub attempts: u32,
}

#[derive(Debug)]
struct Lease {
    entry: Entry,
    attempt: u32,
    deadline: Instant,
}

/// Hashes message ids, which are unique and mostly sequential: one multiplication spreads
/// them, where the default SipHash would spend most of a lease's bookkeeping time.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Why a settlement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// One queue's messages. Ids order the queue: smaller ids were pushed earlier.
#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    ready: BTreeMap<u64, Entry>,
    leased: HashMap<u64, Lease, BuildHasherDefault<IdHasher>>,
    /// Lease deadlines, oldest first; entries whose lease has since been settled or renewed are
    /// skipped when they surface.
    deadlines: BinaryHeap<Reverse<(Instant, u64, u32)>>,
}

impl QueueIndex {
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub(crate) fn leased_len(&self) -> usize {
        self.leased.len()
    }

    /// Drops deadline entries of leases that were settled or renewed since, once they
    /// outnumber the live leases, so the heap stays proportional to what is in flight.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.leased.len() + 64 {
            let live = self.leased.iter().map(|(&id, l)| Reverse((l.deadline, id, l.attempt)));
            self.deadlines = live.collect();
        }
    }

    /// Adds a newly pushed (or recovered) message as ready.
    pub(crate) fn insert(&mut self, id: u64, entry: Entry) {
        self.ready.insert(id, entry);
    }

    /// Leases the oldest ready message until `now + visibility`; returns it with its attempt.
    pub(crate) fn lease_next(
        &mut self,
        now: Instant,
        visibility: Duration,
    ) -> Option<(u64, Entry)> {
        let (id, mut entry) = self.ready.pop_first()?;
        entry.attempts = entry.attempts.saturating_add(1);
        let deadline = now + visibility;
        self.leased.insert(id, Lease { entry, attempt: entry.attempts, deadline });
        self.deadlines.push(Reverse((deadline, id, entry.attempts)));
        Some((id, entry))
    }

    /// Makes every lease whose deadline is at or before `now` ready again; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(Reverse((deadline, id, attempt))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let current = self
                .leased
                .get(&id)
                .is_some_and(|l| l.attempt == attempt && l.deadline == deadline);
            if current {
                if let Some(lease) = self.leased.remove(&id) {
                    self.ready.insert(id, lease.entry);
                    n += 1;
                }
            }
        }
        n
    }

    /// The earliest deadline of a live lease, if any.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id, attempt))) = self.deadlines.peek().copied() {
            if self.leased.get(&id).is_some_and(|l| l.attempt == attempt && l.deadline == deadline)
            {
                return Some(deadline);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Checks that `attempt` still holds the lease of `id` at `now`. An expired lease is
    /// released on the spot.
    fn check(&mut self, id: u64, attempt: u32, now: Instant) -> Result<(), Expired> {
        match self.leased.get(&id) {
            Some(l) if l.attempt == attempt && l.deadline > now => Ok(()),
            Some(l) if l.attempt == attempt => {
                self.expire(now);
                Err(Expired)
            }
            _ => Err(Expired),
        }
    }

    /// Settles a leased message for good (ack); returns its entry.
    pub(crate) fn ack(&mut self, id: u64, attempt: u32, now: Instant) -> Result<Entry, Expired> {
        self.check(id, attempt, now)?;
        let entry = self.leased.remove(&id).map(|l| l.entry).ok_or(Expired)?;
        self.compact_deadlines();
        Ok(entry)
    }

    /// Makes a leased message ready again at once (nack, or a dropped delivery).
    pub(crate) fn release(&mut self, id: u64, attempt: u32, now: Instant) -> Result<(), Expired> {
        self.check(id, attempt, now)?;
        let lease = self.leased.remove(&id).ok_or(Expired)?;
        self.ready.insert(id, lease.entry);
        self.compact_deadlines();
        Ok(())
    }

    /// Moves the deadline of a lease to `now + by`.
    pub(crate) fn extend(
        &mut self,
        id: u64,
        attempt: u32,
        now: Instant,
        by: Duration,
    ) -> Result<(), Expired> {
        self.check(id, attempt, now)?;
        let lease = self.leased.get_mut(&id).ok_or(Expired)?;
        lease.deadline = now + by;
        self.deadlines.push(Reverse((lease.deadline, id, attempt)));
        self.compact_deadlines();
        Ok(())
    }

    /// Recovery: a delivery record was replayed for `id`; false if the message is unknown
    /// (settled in a segment deleted since).
    pub(crate) fn replay_delivered(&mut self, id: u64, attempt: u32) -> bool {
        match self.ready.get_mut(&id) {
            Some(e) => {
                e.attempts = e.attempts.max(attempt);
                true
            }
            None => false,
        }
    }

    /// Recovery: an ack was replayed; returns the settled entry if the message was known.
    pub(crate) fn replay_ack(&mut self, id: u64) -> Option<Entry> {
        self.ready.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lsn: u64) -> Entry {
        Entry { lsn, len: 1, attempts: 0 }
    }

    #[test]
    fn fifo_and_redelivery_keeps_order() {
        let mut q = QueueIndex::default();
        let now = Instant::now();
        for id in 1..=3 {
            q.insert(id, entry(id * 10));
        }
        let (a, ea) = q.lease_next(now, Duration::from_secs(1)).unwrap();
        assert_eq!((a, ea.attempts), (1, 1));
        let (b, _) = q.lease_next(now, Duration::from_secs(1)).unwrap();
        assert_eq!(b, 2);
        q.release(1, 1, now).unwrap();
        // The released message is older than 3, so it comes first again.
        let (c, ec) = q.lease_next(now, Duration::from_secs(1)).unwrap();
        assert_eq!((c, ec.attempts), (1, 2));
    }

    #[test]
    fn stale_holder_cannot_settle() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        q.insert(7, entry(0));
        q.lease_next(t0, Duration::from_millis(10)).unwrap();
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(q.expire(t1), 1);
        let (_, e) = q.lease_next(t1, Duration::from_secs(5)).unwrap();
        assert_eq!(e.attempts, 2);
        assert_eq!(q.ack(7, 1, t1), Err(Expired));
        assert_eq!(q.extend(7, 1, t1, Duration::from_secs(1)), Err(Expired));
        assert!(q.ack(7, 2, t1).is_ok());
        assert_eq!(q.ready_len() + q.leased_len(), 0);
    }

    #[test]
    fn settled_leases_do_not_pile_up_in_the_deadline_heap() {
        let mut q = QueueIndex::default();
        let now = Instant::now();
        for id in 0..10_000 {
            q.insert(id, entry(id));
            q.lease_next(now, Duration::from_secs(30)).unwrap();
            q.ack(id, 1, now).unwrap();
        }
        assert!(q.deadlines.len() <= 64, "{} stale deadlines kept", q.deadlines.len());
        // Live leases keep their deadlines through a compaction.
        for id in 10_000..10_200 {
            q.insert(id, entry(id));
            q.lease_next(now, Duration::from_millis(5)).unwrap();
        }
        for id in 10_000..10_100 {
            q.ack(id, 1, now).unwrap();
        }
        assert_eq!(q.expire(now + Duration::from_millis(6)), 100);
    }

    #[test]
    fn extend_moves_the_deadline() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        q.insert(1, entry(0));
        q.lease_next(t0, Duration::from_millis(10)).unwrap();
        q.extend(1, 1, t0 + Duration::from_millis(5), Duration::from_millis(100)).unwrap();
        assert_eq!(q.expire(t0 + Duration::from_millis(50)), 0);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(105)));
        assert_eq!(q.expire(t0 + Duration::from_millis(106)), 1);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn ack_after_deadline_fails_even_before_expiry_ran() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        q.insert(1, entry(0));
        q.lease_next(t0, Duration::from_millis(10)).unwrap();
        assert_eq!(q.ack(1, 1, t0 + Duration::from_millis(10)), Err(Expired));
        assert_eq!(q.ready_len(), 1);
    }
}
