//! The operation language of the stateful targets, decoded from fuzz bytes by `arbitrary`.

use std::time::Duration;

use arbitrary::Arbitrary;
use wharf::testing::{CrashPolicy, Fault, OpKind};
use wharf::{Durability, Wharf, WharfBuilder};

/// Most operations run per input (each is a handful of disk operations).
pub const MAX_OPS: usize = 48;
/// The queues operations pick from.
pub const QUEUES: [&str; 3] = ["q0", "q1", "q2"];
/// Names `Wharf::queue` must refuse.
pub const BAD_NAMES: [&str; 5] = ["", "has space", "slash/name", "caf\u{e9}", "nul\0"];

/// A durability, or the store's default for the call.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dur {
    Default,
    Immediate,
    Interval,
    None,
}

impl Dur {
    /// The durability the call runs with, given the store's default.
    pub fn resolve(self, default: Durability) -> Durability {
        match self {
            Dur::Default => default,
            Dur::Immediate => Durability::Immediate,
            Dur::Interval => Durability::Interval(Duration::from_millis(10)),
            Dur::None => Durability::None,
        }
    }
}

/// A payload length: mostly small, sometimes large enough to roll 64 KiB segments quickly.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    Small(u8),
    Large(u8),
}

impl Len {
    pub fn bytes(self) -> usize {
        match self {
            Len::Small(n) => usize::from(n),
            Len::Large(n) => 1024 + usize::from(n) * 64,
        }
    }
}

/// One call on the store.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Op {
    Push {
        queue: u8,
        len: Len,
        durability: Dur,
    },
    PushBatch {
        queue: u8,
        n: u8,
        len: Len,
        durability: Dur,
    },
    Pop {
        queue: u8,
    },
    PopBatch {
        queue: u8,
        max: u8,
    },
    /// Acks one of the held deliveries.
    Ack {
        pick: u8,
        durability: Dur,
    },
    /// Nacks one of the held deliveries.
    Nack {
        pick: u8,
    },
    /// Drops one of the held deliveries (released like a nack, with no I/O).
    Release {
        pick: u8,
    },
    /// Extends the lease of one held delivery.
    Extend {
        pick: u8,
    },
    Sync,
    Maintain,
    /// Closes the store and opens it again; `release_first` drops the held deliveries before
    /// the close (else after it, so they are in flight at the close).
    Reopen {
        release_first: bool,
    },
    /// Asks for a queue with an invalid name.
    BadQueue {
        pick: u8,
    },
}

/// The queue an operation names.
pub fn queue_name(q: u8) -> &'static str {
    QUEUES[usize::from(q) % QUEUES.len()]
}

/// At most `n` payloads in a batch.
pub fn batch_len(n: u8) -> usize {
    1 + usize::from(n) % 4
}

/// Store options chosen by the input.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Config {
    pub push: Dur,
    pub ack: Dur,
}

impl Config {
    pub fn push_default(&self) -> Durability {
        self.push.resolve(Durability::Immediate)
    }

    pub fn ack_default(&self) -> Durability {
        self.ack.resolve(Durability::Interval(Duration::from_millis(10)))
    }

    /// Small segments, and leases that never run out during a run (they are wall-clock).
    pub fn builder(&self) -> WharfBuilder {
        Wharf::builder()
            .segment_bytes(64 << 10)
            .visibility_timeout(Duration::from_secs(3600))
            .push_durability(self.push_default())
            .ack_durability(self.ack_default())
    }
}

/// A crash policy chosen by the input.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    KeepAll,
    DropAllUnsynced,
    DropUnsyncedDirOps,
    RandomSubset,
    GrowWithGarbage,
}

impl Policy {
    pub fn get(self) -> CrashPolicy {
        match self {
            Policy::KeepAll => CrashPolicy::KeepAll,
            Policy::DropAllUnsynced => CrashPolicy::DropAllUnsynced,
            Policy::DropUnsyncedDirOps => CrashPolicy::DropUnsyncedDirOps,
            Policy::RandomSubset => CrashPolicy::RandomSubset,
            Policy::GrowWithGarbage => CrashPolicy::GrowWithGarbage,
        }
    }
}

/// An injected fault chosen by the input.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct FaultSpec {
    pub kind: u8,
    pub nth: u8,
    pub no_space: bool,
    pub persistent: bool,
}

impl FaultSpec {
    pub fn get(self) -> Fault {
        Fault {
            kind: OpKind::ALL[usize::from(self.kind) % OpKind::ALL.len()],
            nth: 1 + u64::from(self.nth % 32),
            no_space: self.no_space,
            persistent: self.persistent,
        }
    }
}
