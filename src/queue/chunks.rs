//! [`Chunks`]: an ordered map of small `Copy` entries held in sorted runs of at most [`CHUNK`]
//! entries, for the index's side state (delayed messages, leases). Filled in key order (as
//! ids and due times mostly come), an entry costs its own bytes and about 1 % more, where a
//! `BTreeMap` leaves its nodes about half empty and a `HashMap` may double its table.
//!
//! Invariant: every chunk is non-empty, sorted and holds at most [`CHUNK`] entries; its key
//! is at or below its first entry's key and above every key of the chunk before it (so the
//! chunk that would hold a key is the one with the greatest key at or below it).

use std::collections::BTreeMap;

/// Entries per chunk at most: a chunk filled in key order ends with exactly this capacity (a
/// power of two, as a `Vec` grows), and an insertion or removal moves at most this many
/// entries.
const CHUNK: usize = 64;

/// Which chunk would hold a key.
enum Place {
    Last,
    First,
    Within,
}

/// An ordered map held in sorted chunks (see the module).
#[derive(Debug, Clone)]
pub(super) struct Chunks<K, V> {
    chunks: BTreeMap<K, Vec<(K, V)>>,
    len: usize,
}

impl<K, V> Default for Chunks<K, V> {
    fn default() -> Self {
        Chunks { chunks: BTreeMap::new(), len: 0 }
    }
}

impl<K: Ord + Copy, V: Copy> Chunks<K, V> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the chunk that would hold `key` is: the last or the first (where keys in order
    /// are added and taken, found without a range search), or elsewhere.
    fn place(&self, key: K) -> Place {
        if self.chunks.last_key_value().is_some_and(|(&last, _)| last <= key) {
            return Place::Last;
        }
        let mut keys = self.chunks.keys();
        match (keys.next(), keys.next()) {
            (Some(&first), next) if first <= key && next.is_none_or(|&n| key < n) => Place::First,
            _ => Place::Within,
        }
    }

    /// The chunk that would hold `key`, and its key.
    #[allow(clippy::type_complexity)]
    fn chunk_mut(
        chunks: &mut BTreeMap<K, Vec<(K, V)>>,
        place: Place,
        key: K,
    ) -> Option<(K, &mut Vec<(K, V)>)> {
        match place {
            Place::Last => chunks.last_entry().map(|e| (*e.key(), e.into_mut())),
            Place::First => chunks.first_entry().map(|e| (*e.key(), e.into_mut())),
            Place::Within => chunks.range_mut(..=key).next_back().map(|(&k, c)| (k, c)),
        }
    }

    pub(super) fn get(&self, key: K) -> Option<&V> {
        let (_, c) = match self.place(key) {
            Place::Last => self.chunks.last_key_value(),
            Place::First => self.chunks.first_key_value(),
            Place::Within => self.chunks.range(..=key).next_back(),
        }?;
        let i = c.binary_search_by(|e| e.0.cmp(&key)).ok()?;
        c.get(i).map(|e| &e.1)
    }

    pub(super) fn get_mut(&mut self, key: K) -> Option<&mut V> {
        let place = self.place(key);
        let (_, c) = Self::chunk_mut(&mut self.chunks, place, key)?;
        let i = c.binary_search_by(|e| e.0.cmp(&key)).ok()?;
        c.get_mut(i).map(|e| &mut e.1)
    }

    pub(super) fn contains_key(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `key`; returns the value it had.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let found = match self.place(key) {
            Place::Last => self.chunks.last_key_value(),
            Place::First => self.chunks.first_key_value(),
            Place::Within => self.chunks.range(..=key).next_back(),
        };
        let at = match found {
            Some((&at, _)) => at,
            None => {
                // Below every chunk's key: the first chunk takes it, under its new key.
                let first = self.chunks.pop_first().map_or_else(Vec::new, |(_, c)| c);
                self.chunks.insert(key, first);
                key
            }
        };
        // `at` is a chunk's key: found or inserted above.
        let c = self.chunks.get_mut(&at)?;
        let i = match c.binary_search_by(|e| e.0.cmp(&key)) {
            Ok(i) => return c.get_mut(i).map(|e| std::mem::replace(&mut e.1, value)),
            Err(i) => i,
        };
        self.len += 1;
        if c.len() < CHUNK {
            c.insert(i, (key, value));
        } else if i == c.len() {
            // Past a full chunk (keys coming in order): a new chunk, which fills up in turn.
            self.chunks.insert(key, vec![(key, value)]);
        } else {
            let mut right = c.split_off(CHUNK / 2);
            if i <= CHUNK / 2 {
                c.insert(i, (key, value));
            } else {
                right.insert(i - CHUNK / 2, (key, value));
            }
            if let Some(&(first, _)) = right.first() {
                self.chunks.insert(first, right);
            }
        }
        None
    }

    /// Removes `key`; returns its value. A chunk left a quarter full gives back half its room.
    pub(super) fn remove(&mut self, key: K) -> Option<V> {
        let place = self.place(key);
        let (at, c) = Self::chunk_mut(&mut self.chunks, place, key)?;
        let i = c.binary_search_by(|e| e.0.cmp(&key)).ok()?;
        let (_, value) = c.remove(i);
        self.len -= 1;
        if c.is_empty() {
            self.chunks.remove(&at);
        } else if c.capacity() > 8 && c.len() * 4 <= c.capacity() {
            c.shrink_to(c.len() * 2);
        }
        Some(value)
    }

    /// The entry with the smallest key.
    pub(super) fn first(&self) -> Option<(K, V)> {
        self.chunks.first_key_value().and_then(|(_, c)| c.first().copied())
    }

    /// Every entry, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.chunks.values().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Checks the module's invariant and that `c` holds what `model` holds.
    fn check(c: &Chunks<u64, u32>, model: &BTreeMap<u64, u32>) {
        let mut below = None;
        for (&key, chunk) in &c.chunks {
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK);
            assert!(chunk.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(key <= chunk[0].0);
            assert!(below.is_none_or(|b| b < key), "chunk {key} overlaps the one before");
            below = chunk.last().map(|e| e.0);
        }
        assert_eq!(c.len(), model.len());
        assert!(c.iter().eq(model.iter().map(|(&k, &v)| (k, v))));
        for (&k, &v) in model {
            assert_eq!(c.get(k), Some(&v));
        }
    }

    #[test]
    fn keys_in_order_fill_every_chunk() {
        let mut c = Chunks::default();
        for k in 0..10_000u64 {
            assert_eq!(c.insert(k, k as u32), None);
        }
        let room: usize = c.chunks.values().map(Vec::capacity).sum();
        assert_eq!(room, 10_000, "no room left over");
        assert_eq!(c.first(), Some((0, 0)));
    }

    #[test]
    fn matches_a_btreemap_under_random_operations() {
        let mut c = Chunks::default();
        let mut model = BTreeMap::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..40_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly increasing keys, some below, some repeated.
            let key = match x % 8 {
                0..=3 => u64::from(step) * 3,
                4 | 5 => x % (u64::from(step) * 3 + 1),
                _ => x % 64,
            };
            if x % 5 < 3 {
                assert_eq!(c.insert(key, step), model.insert(key, step), "insert {key}");
            } else {
                assert_eq!(c.remove(key), model.remove(&key), "remove {key}");
            }
            if step % 997 == 0 {
                check(&c, &model);
            }
        }
        check(&c, &model);
        while let Some((k, _)) = c.first() {
            assert_eq!(c.remove(k), model.remove(&k));
        }
        assert!(c.is_empty() && c.chunks.is_empty() && model.is_empty());
    }

    #[test]
    fn a_key_below_every_chunk_rekeys_the_first() {
        let mut c = Chunks::default();
        for k in (0..300u64).rev() {
            c.insert(k * 2 + 1, 1);
        }
        let model: BTreeMap<u64, u32> = (0..300).map(|k| (k * 2 + 1, 1)).collect();
        check(&c, &model);
        assert_eq!(c.get(0), None);
        assert_eq!(c.get(2), None);
        assert_eq!(c.remove(4), None);
        *c.get_mut(599).unwrap() = 7;
        assert_eq!(c.remove(599), Some(7));
    }

    #[test]
    fn emptied_chunks_give_their_room_back() {
        let mut c = Chunks::default();
        for k in 0..6_400u64 {
            c.insert(k, 0u32);
        }
        // Keep one entry in 64.
        for k in (0..6_400u64).filter(|k| k % 64 != 0) {
            c.remove(k);
        }
        let room: usize = c.chunks.values().map(Vec::capacity).sum();
        assert!(room <= 100 * 8, "{room} entries of room for 100");
    }
}
