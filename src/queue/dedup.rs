//! A queue's dedup keys: which message each key names and until when it holds once that
//! message is settled, and what changed since the last checkpoint took them.
//!
//! Invariant: a key is held while its message is unsettled (the index says so, through the
//! `holds` the caller passes) or its window has not passed; pruning drops only keys that hold
//! neither way, and every key dropped or added is reported to the next checkpoint.
//!
//! Layout (issue 16: a keyed backlog's heap): the keys are exact, never digests, so a lookup
//! compares real bytes and two keys can never be merged. Each entry (message id, window end,
//! key length, key) lives in one byte arena, padded to 8 bytes (32 B for a 14-byte key),
//! instead of a boxed key and a map slot of its own; the hash table holds only the entry's
//! arena position (4 B) and hashes the key in the arena with a per-process `RandomState`.
//! Entries are appended in order, so those added since the last checkpoint are the ones past
//! a mark: nothing is copied for the checkpoint. A dropped entry is flagged dead in place
//! and the arena is compacted (the table rebuilt) once dead entries fill half of it. The
//! arena is addressed in 8-byte units by a `u32`, so it holds up to 32 GiB of entries;
//! entries past that go to a plain map (`spill`).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// Bytes before an entry's key: message id, window end (both `u64`), key length (`u16`).
const HEAD: usize = 18;
/// Set in an entry's key length once it was dropped.
const DEAD: u16 = 0x8000;
/// Entries are padded to this, and the arena is addressed in units of it.
const UNIT: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct DedupKeys {
    /// Entries one after the other: id, until, key length (flagged `DEAD` once dropped), key,
    /// padding to `UNIT`.
    arena: Vec<u8>,
    /// The arena position (in `UNIT`s) of each live entry, by its key's hash.
    table: HashTable<u32>,
    /// Entries that did not fit the arena's addressing: key → (id, until).
    spill: HashMap<Box<[u8]>, (u64, u64)>,
    hasher: RandomState,
    /// Bytes of the arena in dead entries.
    dead: usize,
    /// Entries at or past this arena offset were added since the last checkpoint.
    mark: usize,
    pruned_at: usize,
    /// Keys forgotten since the last checkpoint took them.
    gone: Vec<Box<[u8]>>,
    /// Tests: every key hashes alike, so that every lookup meets the others.
    #[cfg(test)]
    collide: bool,
}

/// The arena's entry at byte offset `at`: (id, until, key, flagged dead, size in bytes).
/// Entries are written by `DedupKeys::append` only, so they are whole; a short arena reads
/// as an empty dead entry rather than panicking.
fn entry_at(arena: &[u8], at: usize) -> (u64, u64, &[u8], bool, usize) {
    let word = |i: usize| {
        let b = arena.get(at + i..at + i + 8).and_then(|b| <[u8; 8]>::try_from(b).ok());
        u64::from_le_bytes(b.unwrap_or_default())
    };
    let len = arena.get(at + 16..at + HEAD).map_or(DEAD, |b| u16::from_le_bytes([b[0], b[1]]));
    let n = usize::from(len & !DEAD);
    let key = arena.get(at + HEAD..at + HEAD + n).unwrap_or_default();
    (word(0), word(8), key, len & DEAD != 0, padded(n))
}

/// Bytes of an entry with a key of `n` bytes.
fn padded(n: usize) -> usize {
    (HEAD + n).div_ceil(UNIT) * UNIT
}

impl DedupKeys {
    fn hash(&self, key: &[u8]) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 7;
        }
        self.hasher.hash_one(key)
    }

    /// The arena position of `key`'s live entry.
    fn find(&self, key: &[u8]) -> Option<u32> {
        let arena = &self.arena;
        let at = |s: u32| s as usize * UNIT;
        self.table.find(self.hash(key), |&s| entry_at(arena, at(s)).2 == key).copied()
    }

    /// The (id, until) `key` names, if it is remembered.
    fn get(&self, key: &[u8]) -> Option<(u64, u64)> {
        match self.find(key) {
            Some(s) => {
                let (id, until, ..) = entry_at(&self.arena, s as usize * UNIT);
                Some((id, until))
            }
            None => self.spill.get(key).copied(),
        }
    }

    /// Forgets `key`'s entry; true if there was one.
    fn remove(&mut self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let arena = &self.arena;
        let found = self.table.find_entry(hash, |&s| entry_at(arena, s as usize * UNIT).2 == key);
        match found {
            Ok(e) => {
                let (s, _) = e.remove();
                self.kill(s as usize * UNIT);
                true
            }
            Err(_) => self.spill.remove(key).is_some(),
        }
    }

    /// Flags the entry at byte offset `at` dead.
    fn kill(&mut self, at: usize) {
        if let Some(b) = self.arena.get_mut(at + 16..at + HEAD) {
            let len = u16::from_le_bytes([b[0], b[1]]);
            b.copy_from_slice(&(len | DEAD).to_le_bytes());
            self.dead += padded(usize::from(len & !DEAD));
        }
    }

    /// Appends an entry for `key` (not remembered now).
    fn append(&mut self, key: &[u8], id: u64, until: u64) {
        let at = self.arena.len();
        let slot = u32::try_from(at / UNIT).ok();
        let len = u16::try_from(key.len()).ok().filter(|&n| n & DEAD == 0);
        let (Some(slot), Some(len)) = (slot, len) else {
            self.spill.insert(key.into(), (id, until));
            return;
        };
        self.arena.extend_from_slice(&id.to_le_bytes());
        self.arena.extend_from_slice(&until.to_le_bytes());
        self.arena.extend_from_slice(&len.to_le_bytes());
        self.arena.extend_from_slice(key);
        self.arena.resize(at + padded(key.len()), 0);
        let hash = self.hash(key);
        let (arena, hasher) = (&self.arena, &self.hasher);
        #[cfg(test)]
        let collide = self.collide;
        self.table.insert_unique(hash, slot, |&s| {
            #[cfg(test)]
            if collide {
                return 7;
            }
            hasher.hash_one(entry_at(arena, s as usize * UNIT).2)
        });
    }

    /// Rewrites the arena without its dead entries and rebuilds the table, once dead entries
    /// fill at least half of it.
    fn compact(&mut self) {
        if self.dead == 0 || 2 * self.dead < self.arena.len() {
            return;
        }
        let old = std::mem::take(&mut self.arena);
        let mark = std::mem::replace(&mut self.mark, 0);
        self.table.clear();
        self.table.shrink_to_fit(|_| 0);
        self.dead = 0;
        let mut at = 0;
        let mut new_mark = None;
        while at < old.len() {
            if at >= mark && new_mark.is_none() {
                new_mark = Some(self.arena.len());
            }
            let (id, until, key, dead, size) = entry_at(&old, at);
            if !dead {
                self.append(key, id, until);
            }
            at += size;
        }
        self.mark = new_mark.unwrap_or(self.arena.len());
    }

    /// The message `key` refers to, if the key still holds at `now_ms`: its message is
    /// unsettled (`holds`), or its window has not passed. A key that no longer holds is
    /// forgotten.
    pub(crate) fn hit(
        &mut self,
        key: &[u8],
        now_ms: u64,
        holds: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let (id, until) = self.get(key)?;
        if holds(id) || now_ms < until {
            return Some(id);
        }
        if self.remove(key) {
            self.gone.push(key.into());
        }
        self.compact();
        None
    }

    /// Remembers a key; prunes keys that no longer hold once the map has doubled.
    pub(crate) fn insert(
        &mut self,
        key: &[u8],
        id: u64,
        until: u64,
        now_ms: u64,
        holds: impl Fn(u64) -> bool,
    ) {
        // A key named again replaces its entry; the new one is past the mark, so the next
        // checkpoint writes its value.
        self.remove(key);
        self.append(key, id, until);
        if self.len() >= 2 * self.pruned_at.max(512) {
            let (arena, gone) = (&self.arena, &mut self.gone);
            let mut dead = Vec::new();
            self.table.retain(|&mut s| {
                let at = s as usize * UNIT;
                let (id, until, key, ..) = entry_at(arena, at);
                let keep = now_ms < until || holds(id);
                if !keep {
                    gone.push(key.into());
                    dead.push(at);
                }
                keep
            });
            for at in dead {
                self.kill(at);
            }
            let gone = &mut self.gone;
            self.spill.retain(|k, &mut (id, until)| {
                let keep = now_ms < until || holds(id);
                if !keep {
                    gone.push(k.clone());
                }
                keep
            });
            self.compact();
            self.pruned_at = self.len();
        }
    }

    /// Gives `put` each live entry at or past byte offset `from`: key, id, until.
    fn entries_from(&self, from: usize, put: &mut impl FnMut(&[u8], u64, u64)) {
        let mut at = from;
        while at < self.arena.len() {
            let (id, until, key, dead, size) = entry_at(&self.arena, at);
            if !dead {
                put(key, id, until);
            }
            at += size;
        }
    }

    /// Checkpoint: gives `put` each key added since the last call that is still held, with its
    /// current value, and returns the keys forgotten since. The checkpoint writes these to the
    /// state database.
    pub(crate) fn take_changes(&mut self, mut put: impl FnMut(&[u8], u64, u64)) -> Vec<Box<[u8]>> {
        self.entries_from(self.mark, &mut put);
        self.mark = self.arena.len();
        // Spilled entries are few (past 32 GiB of keys): each checkpoint writes them all.
        self.spill.iter().for_each(|(k, &(id, until))| put(k, id, until));
        let mut gone = std::mem::take(&mut self.gone);
        gone.retain(|k| self.get(k).is_none());
        gone
    }

    /// Gives `put` every key held now, with its message and window end.
    pub(crate) fn all(&self, mut put: impl FnMut(&[u8], u64, u64)) {
        self.entries_from(0, &mut put);
        self.spill.iter().for_each(|(k, &(id, until))| put(k, id, until));
    }

    /// Keys remembered now.
    pub(crate) fn len(&self) -> usize {
        self.table.len() + self.spill.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(collide: bool) -> DedupKeys {
        DedupKeys { collide, ..DedupKeys::default() }
    }

    type Put = Vec<(Vec<u8>, u64, u64)>;

    /// `take_changes`, collected: (put, sorted; gone).
    fn changes(d: &mut DedupKeys) -> (Put, Vec<Box<[u8]>>) {
        let mut put = Vec::new();
        let gone = d.take_changes(|k, id, until| put.push((k.to_vec(), id, until)));
        put.sort();
        (put, gone)
    }

    fn all(d: &DedupKeys) -> Put {
        let mut all = Vec::new();
        d.all(|k, id, until| all.push((k.to_vec(), id, until)));
        all
    }

    #[test]
    fn colliding_keys_stay_apart() {
        let mut d = keys(true);
        let unsettled = |_| true;
        d.insert(b"a", 1, 0, 0, unsettled);
        d.insert(b"b", 2, 0, 0, unsettled);
        assert_eq!(d.hit(b"a", 0, unsettled), Some(1));
        assert_eq!(d.hit(b"b", 0, unsettled), Some(2));
        assert_eq!(d.hit(b"c", 0, unsettled), None, "a hash hit of another key is a miss");
        assert_eq!(d.hit(b"ab", 0, unsettled), None);
        // Settling 1 and lapsing its window forgets "a" alone.
        assert_eq!(d.hit(b"a", 5, |id| id != 1), None);
        assert_eq!(d.hit(b"b", 5, |id| id != 1), Some(2));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_settled_key_holds_within_its_window() {
        let mut d = keys(false);
        let settled = |_| false;
        d.insert(b"k", 9, 100, 0, |_| true);
        assert_eq!(d.hit(b"k", 99, settled), Some(9));
        assert_eq!(d.hit(b"k", 100, settled), None);
        assert_eq!(d.hit(b"k", 0, settled), None, "forgotten once it lapsed");
    }

    #[test]
    fn changes_are_what_was_added_and_forgotten_since_the_last_checkpoint() {
        let mut d = keys(false);
        d.insert(b"a", 1, 10, 0, |_| true);
        d.insert(b"b", 2, 10, 0, |_| true);
        let (put, gone) = changes(&mut d);
        assert_eq!(put.len(), 2);
        assert!(gone.is_empty());
        assert_eq!(d.hit(b"a", 10, |_| false), None);
        d.insert(b"c", 3, 10, 0, |_| true);
        d.insert(b"b", 4, 20, 0, |_| true); // named again: the new value is written
        let (put, gone) = changes(&mut d);
        assert_eq!(put, vec![(b"b".to_vec(), 4, 20), (b"c".to_vec(), 3, 10)]);
        assert_eq!(gone, vec![Box::from(&b"a"[..])]);
        let (put, gone) = changes(&mut d);
        assert!(put.is_empty() && gone.is_empty());
        assert_eq!(all(&d).len(), 2);
    }

    #[test]
    fn compaction_keeps_live_keys_and_the_checkpoint_mark() {
        for collide in [false, true] {
            let mut d = keys(collide);
            let n = if collide { 300 } else { 5000 };
            for i in 0..n as u64 {
                d.insert(&i.to_le_bytes(), i, 0, 0, |_| true);
            }
            let _ = changes(&mut d);
            for i in n as u64..n as u64 + 10 {
                d.insert(&i.to_le_bytes(), i, 0, 0, |_| true);
            }
            // Settle all but every tenth: the next prune drops them and compacts.
            let holds = |id: u64| id.is_multiple_of(10);
            for i in 0..n as u64 {
                if !holds(i) {
                    assert_eq!(d.hit(&i.to_le_bytes(), 1, holds), None);
                }
            }
            assert!(d.arena.len() < 2 * n * 32 / 10 + 20 * 32, "compacted");
            for i in 0..n as u64 + 10 {
                let want = (holds(i) || i >= n as u64).then_some(i);
                assert_eq!(
                    d.hit(&i.to_le_bytes(), 1, |id| id.is_multiple_of(10) || id >= n as u64),
                    want
                );
            }
            let (put, gone) = changes(&mut d);
            assert_eq!(put.len(), 10, "only what was added since the checkpoint");
            assert_eq!(gone.len(), n - n / 10);
        }
    }

    #[test]
    fn long_keys_keep_their_bytes() {
        let mut d = keys(false);
        let long = vec![0xab; crate::limits::MAX_DEDUP_KEY];
        d.insert(&long, 1, 5, 0, |_| true);
        d.insert(b"", 2, 5, 0, |_| true);
        assert_eq!(d.hit(&long, 0, |_| true), Some(1));
        assert_eq!(d.hit(b"", 0, |_| true), Some(2));
        assert_eq!(all(&d).iter().map(|e| e.0.len()).sum::<usize>(), long.len());
    }
}
