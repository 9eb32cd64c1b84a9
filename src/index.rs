//! The in-memory index of one queue: which messages are ready (by priority, then push order),
//! which are delayed until when, which are leased and until when.
//!
//! Invariant: rebuilt from the log at every open and never persisted; it holds no payloads,
//! only where each payload lives (its log position and length). Every unsettled message is in
//! `msgs` and in exactly one of `ready`, `delayed` or the leased state.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Where one unsettled message lives, and how often it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Log position of the message's push record.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Ready,
    /// Due at this Unix ms.
    Delayed(u64),
    Leased {
        attempt: u32,
        deadline: Instant,
    },
}

#[derive(Debug)]
struct Msg {
    entry: Entry,
    at: At,
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
    msgs: HashMap<u64, Msg, BuildHasherDefault<IdHasher>>,
    /// (255 − priority, id): the first is delivered next.
    ready: BTreeSet<(u8, u64)>,
    /// (due Unix ms, id).
    delayed: BTreeSet<(u64, u64)>,
    leased: usize,
    /// Lease deadlines, oldest first; entries whose lease has since been settled or renewed are
    /// skipped when they surface.
    deadlines: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    notes: HashMap<u64, Note, BuildHasherDefault<IdHasher>>,
    /// Dedup key → (message id, Unix ms until which the key holds even once it is settled).
    dedup: HashMap<Box<[u8]>, (u64, u64)>,
    dedup_pruned_at: usize,
}

impl QueueIndex {
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub(crate) fn delayed_len(&self) -> usize {
        self.delayed.len()
    }

    pub(crate) fn leased_len(&self) -> usize {
        self.leased
    }

    /// Messages waiting for a delivery: ready or delayed.
    pub(crate) fn waiting_len(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// Drops deadline entries of leases that were settled or renewed since, once they
    /// outnumber the live leases, so the heap stays proportional to what is in flight.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.leased + 64 {
            let live = self.msgs.iter().filter_map(|(&id, m)| match m.at {
                At::Leased { attempt, deadline } => Some(Reverse((deadline, id, attempt))),
                _ => None,
            });
            self.deadlines = live.collect();
        }
    }

    fn place(&mut self, id: u64, entry: Entry, due: u64) {
        // Replay may restate a message; never leave it in two places.
        if let Some(old) = self.msgs.remove(&id) {
            self.unplace(id, old.at, old.entry.priority);
        }
        let at = if due == 0 { At::Ready } else { At::Delayed(due) };
        self.place_only(id, at, entry.priority);
        self.msgs.insert(id, Msg { entry, at });
    }

    fn place_only(&mut self, id: u64, at: At, priority: u8) {
        match at {
            At::Ready => {
                self.ready.insert((u8::MAX - priority, id));
            }
            At::Delayed(due) => {
                self.delayed.insert((due, id));
            }
            At::Leased { .. } => self.leased += 1,
        }
    }

    fn unplace(&mut self, id: u64, at: At, priority: u8) {
        match at {
            At::Ready => {
                self.ready.remove(&(u8::MAX - priority, id));
            }
            At::Delayed(due) => {
                self.delayed.remove(&(due, id));
            }
            At::Leased { .. } => self.leased = self.leased.saturating_sub(1),
        }
    }

    /// Adds a message: ready if `due` is 0, else delayed until `due` (Unix ms).
    pub(crate) fn insert(&mut self, id: u64, entry: Entry, due: u64) {
        self.place(id, entry, due);
    }

    /// Takes a message out of the queue, wherever it is; returns its entry.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Entry> {
        let m = self.msgs.remove(&id)?;
        self.unplace(id, m.at, m.entry.priority);
        if matches!(m.at, At::Leased { .. }) {
            self.compact_deadlines();
        }
        Some(m.entry)
    }

    /// Makes every delayed message due at or before `now_ms` ready; returns how many.
    pub(crate) fn promote(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while let Some(&(due, id)) = self.delayed.first() {
            if due > now_ms {
                break;
            }
            self.delayed.pop_first();
            if let Some(m) = self.msgs.get_mut(&id) {
                m.at = At::Ready;
                self.ready.insert((u8::MAX - m.entry.priority, id));
                n += 1;
            }
        }
        n
    }

    /// When the earliest delayed message is due (Unix ms).
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.delayed.first().map(|&(due, _)| due)
    }

    /// The message that would be delivered next, if one is ready.
    pub(crate) fn head(&self) -> Option<(u64, Entry)> {
        let &(_, id) = self.ready.first()?;
        self.msgs.get(&id).map(|m| (id, m.entry))
    }

    /// The oldest waiting message: the next ready one, else the earliest-due delayed one.
    pub(crate) fn oldest_waiting(&self) -> Option<u64> {
        self.ready.first().map(|&(_, id)| id).or(self.delayed.first().map(|&(_, id)| id))
    }

    /// Leases the ready message `id` until `now + visibility`; returns its entry with the
    /// attempt count of this delivery.
    pub(crate) fn lease(&mut self, id: u64, now: Instant, visibility: Duration) -> Option<Entry> {
        let m = self.msgs.get_mut(&id)?;
        if m.at != At::Ready {
            return None;
        }
        self.ready.remove(&(u8::MAX - m.entry.priority, id));
        m.entry.attempts = m.entry.attempts.saturating_add(1);
        let deadline = now + visibility;
        m.at = At::Leased { attempt: m.entry.attempts, deadline };
        self.leased += 1;
        self.deadlines.push(Reverse((deadline, id, m.entry.attempts)));
        Some(m.entry)
    }

    /// Makes every lease whose deadline is at or before `now` ready again; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(Reverse((deadline, id, attempt))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if let Some(m) = self.msgs.get_mut(&id) {
                if m.at == (At::Leased { attempt, deadline }) {
                    m.at = At::Ready;
                    self.ready.insert((u8::MAX - m.entry.priority, id));
                    self.leased -= 1;
                    n += 1;
                }
            }
        }
        n
    }

    /// The earliest deadline of a live lease, if any.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id, attempt))) = self.deadlines.peek().copied() {
            if self.msgs.get(&id).is_some_and(|m| m.at == At::Leased { attempt, deadline }) {
                return Some(deadline);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Checks that `attempt` still holds the lease of `id` at `now`. An expired lease is
    /// released on the spot.
    fn check(&mut self, id: u64, attempt: u32, now: Instant) -> Result<Entry, Expired> {
        match self.msgs.get(&id) {
            Some(Msg { entry, at: At::Leased { attempt: a, deadline } }) if *a == attempt => {
                if *deadline > now {
                    Ok(*entry)
                } else {
                    self.expire(now);
                    Err(Expired)
                }
            }
            _ => Err(Expired),
        }
    }

    /// Takes a leased message out for good (ack, or a move to another queue); returns its
    /// entry.
    pub(crate) fn take(&mut self, id: u64, attempt: u32, now: Instant) -> Result<Entry, Expired> {
        self.check(id, attempt, now)?;
        self.remove(id).ok_or(Expired)
    }

    /// Puts a leased message back: ready at once (`due` 0) or delayed until `due` (Unix ms).
    pub(crate) fn put_back(
        &mut self,
        id: u64,
        attempt: u32,
        now: Instant,
        due: u64,
    ) -> Result<Entry, Expired> {
        let entry = self.take(id, attempt, now)?;
        self.place(id, entry, due);
        Ok(entry)
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
        self.check(id, attempt, now)?;
        let m = self.msgs.get_mut(&id).ok_or(Expired)?;
        let deadline = now + by;
        m.at = At::Leased { attempt, deadline };
        self.deadlines.push(Reverse((deadline, id, attempt)));
        self.compact_deadlines();
        Ok(())
    }

    /// Waiting messages in delivery order (ready by priority and age, then delayed by due
    /// time), at most `max`.
    pub(crate) fn waiting(&self, max: usize) -> Vec<Waiting> {
        let ready = self.ready.iter().map(|&(_, id)| (id, None));
        let delayed = self.delayed.iter().map(|&(due, id)| (id, Some(due)));
        ready
            .chain(delayed)
            .take(max)
            .filter_map(|(id, due)| self.msgs.get(&id).map(|m| Waiting { id, entry: m.entry, due }))
            .collect()
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

    /// The message a dedup key refers to, if the key still holds at `now_ms`: its message is
    /// unsettled, or its window has not passed.
    pub(crate) fn dedup_hit(&mut self, key: &[u8], now_ms: u64) -> Option<u64> {
        let &(id, until) = self.dedup.get(key)?;
        if self.msgs.contains_key(&id) || now_ms < until {
            return Some(id);
        }
        self.dedup.remove(key);
        None
    }

    /// Remembers a dedup key; prunes keys that no longer hold once the map has doubled.
    pub(crate) fn dedup_insert(&mut self, key: &[u8], id: u64, until: u64, now_ms: u64) {
        self.dedup.insert(key.into(), (id, until));
        if self.dedup.len() >= 2 * self.dedup_pruned_at.max(512) {
            let msgs = &self.msgs;
            self.dedup.retain(|_, &mut (id, until)| msgs.contains_key(&id) || now_ms < until);
            self.dedup_pruned_at = self.dedup.len();
        }
    }

    /// Forgets notes of settled messages (called when a message leaves the queue for good).
    pub(crate) fn forget(&mut self, id: u64) {
        self.notes.remove(&id);
    }

    /// Recovery: a delivery record was replayed for `id`; false if the message is unknown
    /// (settled in a segment deleted since).
    pub(crate) fn replay_delivered(&mut self, id: u64, attempt: u32) -> bool {
        match self.msgs.get_mut(&id) {
            Some(m) => {
                m.entry.attempts = m.entry.attempts.max(attempt);
                true
            }
            None => false,
        }
    }

    /// Recovery: a retry was replayed: the message waits until `due` again.
    pub(crate) fn replay_retry(&mut self, id: u64, due: u64) -> bool {
        match self.remove(id) {
            Some(entry) => {
                self.place(id, entry, due);
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
        assert!(q.deadlines.len() <= 64, "{} stale deadlines kept", q.deadlines.len());
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
    fn ack_after_deadline_fails_even_before_expiry_ran() {
        let mut q = QueueIndex::default();
        let t0 = Instant::now();
        q.insert(1, entry(0), 0);
        lease_next(&mut q, t0, Duration::from_millis(10)).unwrap();
        assert_eq!(q.take(1, 1, t0 + Duration::from_millis(10)), Err(Expired));
        assert_eq!(q.ready_len(), 1);
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
