//! What the index keeps of a queue's run (the plain pushes past its window, counted instead of
//! held: see `log::fill`), what a caller asks of it, and the hashing of message ids.
//!
//! Invariant: every member of a run has an id above its floor and a push record at or past
//! `next`; `count` and `bytes` are exactly its members' number and payload bytes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The plain pushes of a queue that the index counts instead of holding (see `log::fill`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Run {
    /// Where in the log its first member not yet loaded is, or a position before it.
    pub(super) next: u64,
    /// Members, and their payload bytes.
    pub(super) count: u64,
    pub(super) bytes: u64,
    /// Every member's id is above it: the last member loaded (or the first member's id less
    /// one when the run began).
    pub(super) floor: u64,
}

/// What a caller needs of a queue's run before it reads the index (`log::fill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunWant {
    /// The next delivery is decided: a higher priority is ready, or a ready message at or
    /// below the floor.
    Head,
    /// Message `id` is in the index, if it is unsettled in this queue.
    Id(u64),
    /// No member's push record lies below this log position.
    Before(u64),
    /// The first `n` waiting messages in delivery order are in the index.
    Count(usize),
    /// The message pushed first is in the index (a ready one at or below the floor).
    First,
    /// The whole run is in the index.
    All,
}

/// Hashes message ids, which are unique and mostly sequential: one multiplication spreads
/// them, where the default SipHash would spend most of a lease's bookkeeping time.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

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

pub(super) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
