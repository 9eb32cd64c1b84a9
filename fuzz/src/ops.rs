//! The operation language of the stateful targets, decoded from fuzz bytes by `arbitrary`.

use std::time::Duration;

use arbitrary::Arbitrary;
use wharf::testing::{CrashPolicy, Fault, OpKind};
use wharf::{
    Backoff, DeadLetters, Durability, OnExpiry, Overflow, PushOptions, QueueConfig, Wharf,
    WharfBuilder,
};
use wharf_check::jobs::Job;

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
    /// Drops one of the held deliveries: its lease lapses in memory (ready again at once, no
    /// record, no I/O).
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
    /// A push with job options.
    PushJob {
        queue: u8,
        len: Len,
        durability: Dur,
        opts: JobOpts,
    },
    /// Nacks one of the held deliveries with an explicit delay (× 100 ms) and/or an error text.
    NackWith {
        pick: u8,
        delay: Option<u8>,
        error: bool,
    },
    /// Dead-letters one of the held deliveries (one popped from a queue, not from a DLQ).
    DeadLetter {
        pick: u8,
    },
    /// Moves dead letters of a queue back: all of them, or the `pick`-th waiting one.
    Requeue {
        queue: u8,
        all: bool,
        pick: u8,
    },
    /// Pops from a queue's dead-letter queue.
    PopDead {
        queue: u8,
    },
    /// Moves the store's clock forward by `by` × 100 ms.
    Advance {
        by: u8,
    },
    /// Sets a queue's config.
    SetConfig {
        queue: u8,
        cfg: QueueCfg,
    },
    /// `Wharf::checkpoint`: the log made durable and written into `state.redb`, stragglers
    /// relocated out of old segments, covered settled segments deleted. No message changes
    /// state, only where its payload lives.
    Checkpoint,
    /// [`churn_rounds`]`(n)` rounds of a push of a [`churn_len`]`(len)` payload into a queue,
    /// a pop of that queue and an ack of what the pop leased (its head, which may be an older
    /// message): whole segments of settled messages, behind which the few unsettled ones left
    /// in them (delayed, dead-lettered, leased and never acked) are the stragglers a
    /// checkpoint relocates.
    Churn {
        queue: u8,
        n: u8,
        len: Len,
        durability: Dur,
    },
    /// Acks, with one `ack_many`, the held delivery `pick` and up to [`ack_many_len`]`(n)` - 1
    /// more held deliveries of its queue (of a queue, or of a dead-letter queue).
    AckMany {
        pick: u8,
        n: u8,
        durability: Dur,
    },
}

/// At most how many deliveries an `AckMany` acks: 1 to 8.
pub fn ack_many_len(n: u8) -> usize {
    1 + usize::from(n) % 8
}

/// Rounds of a `Churn`: 4 to 64.
pub fn churn_rounds(n: u8) -> usize {
    4 + usize::from(n) % 61
}

/// The payload length of a `Churn`'s pushes: small ones as given, large ones at most ~4 KiB,
/// so that a 64 KiB segment holds enough of them for its stragglers to be relocated (at most
/// one unsettled message in eight).
pub fn churn_len(len: Len) -> Len {
    match len {
        Len::Small(n) => Len::Small(n),
        Len::Large(n) => Len::Large(n % 48),
    }
}

/// The operations one `Churn` round is made of, on a store holding `held` deliveries after its
/// pop: the push and the pop, then (if the pop leased something) the ack of the last delivery.
pub fn churn_push(queue: u8, len: Len, durability: Dur) -> Op {
    Op::Push { queue, len: churn_len(len), durability }
}

/// The ack of a `Churn` round: the delivery its pop just added, the last of `held`.
pub fn churn_ack(held: usize) -> Op {
    Op::Ack {
        pick: u8::try_from(held.saturating_sub(1)).unwrap_or(u8::MAX),
        durability: Dur::Default,
    }
}

/// One step of the clock and of the durations below: 100 ms.
pub const TICK: Duration = Duration::from_millis(100);

/// `n` ticks.
pub fn ticks(n: u8) -> Duration {
    TICK * u32::from(n)
}

/// The options of a `PushJob`, in ticks; 0 means none.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct JobOpts {
    pub delay: u8,
    /// Taken modulo 10.
    pub priority: u8,
    pub ttl: u8,
    /// One of four keys.
    pub key: Option<u8>,
}

impl JobOpts {
    pub fn priority(&self) -> u8 {
        self.priority % (wharf::MAX_PRIORITY + 1)
    }

    pub fn key(&self) -> Option<String> {
        self.key.map(|k| format!("key-{}", k % 4))
    }

    /// The push options, with `d` as durability.
    pub fn get(&self, d: Durability) -> PushOptions {
        let mut o = PushOptions::new().durability(d).priority(self.priority());
        if self.delay > 0 {
            o = o.delay(ticks(self.delay));
        }
        if self.ttl > 0 {
            o = o.ttl(ticks(self.ttl));
        }
        if let Some(k) = self.key() {
            o = o.dedup_key(k);
        }
        o
    }

    /// The options as the jobs model takes them.
    pub fn job(&self) -> Job {
        let some = |t: u8| (t > 0).then(|| ticks(t));
        Job {
            delay: some(self.delay),
            priority: self.priority(),
            ttl: some(self.ttl),
            key: self.key(),
        }
    }
}

/// A backoff, in ticks.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum BackoffSpec {
    None,
    Fixed(u8),
    Exponential { base: u8, extra: u8, jitter: bool },
}

/// A queue config chosen by the input (durations in ticks, at least one where 0 means none).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct QueueCfg {
    /// Modulo 5; 0: unlimited.
    pub max_attempts: u8,
    pub backoff: BackoffSpec,
    /// Limit (modulo 5) and whether the oldest is dead-lettered (else the push is refused).
    pub max_len: Option<(u8, bool)>,
    /// TTL (at least one tick) and whether expired messages are dead-lettered.
    pub ttl: Option<(u8, bool)>,
    pub expiry_dead_letter: bool,
    pub dedup_window: u8,
    pub drop_dead_letters: bool,
}

impl QueueCfg {
    pub fn get(&self) -> QueueConfig {
        let expiry = |dl: bool| if dl { OnExpiry::DeadLetter } else { OnExpiry::Drop };
        let mut c = QueueConfig::new().on_expiry(expiry(self.expiry_dead_letter));
        if !self.max_attempts.is_multiple_of(5) {
            c = c.max_attempts(u32::from(self.max_attempts % 5));
        }
        c = c.backoff(match self.backoff {
            BackoffSpec::None => Backoff::None,
            BackoffSpec::Fixed(n) => Backoff::Fixed(ticks(n)),
            BackoffSpec::Exponential { base, extra, jitter } => {
                let base = ticks(base.max(1));
                Backoff::Exponential { base, cap: base + ticks(extra), jitter }
            }
        });
        if let Some((n, dl)) = self.max_len {
            let overflow = if dl { Overflow::DeadLetterOldest } else { Overflow::Reject };
            c = c.max_len(u64::from(n % 5), overflow);
        }
        if let Some((t, dl)) = self.ttl {
            c = c.ttl(ticks(t.max(1)), expiry(dl));
        }
        if self.drop_dead_letters {
            c = c.dead_letters(DeadLetters::Drop);
        }
        c.dedup_window(ticks(self.dedup_window))
    }
}

/// The queue an operation names.
pub fn queue_name(q: u8) -> &'static str {
    QUEUES[queue_index(q)]
}

/// The index in `QUEUES` of the queue an operation names.
pub fn queue_index(q: u8) -> usize {
    usize::from(q) % QUEUES.len()
}

/// The dead-letter queue of a queue an operation names.
pub fn dlq_name(q: u8) -> String {
    format!("{}.dlq", queue_name(q))
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
    /// `checkpoint_every_bytes` in KiB (1 to 128; `None`: the default, one segment), which
    /// decides when `testing::maintain` takes a checkpoint.
    pub checkpoint_kib: Option<u8>,
}

impl Config {
    pub fn push_default(&self) -> Durability {
        self.push.resolve(Durability::Immediate)
    }

    pub fn ack_default(&self) -> Durability {
        self.ack.resolve(Durability::Interval(Duration::from_millis(10)))
    }

    /// A configuration with the default checkpoint size.
    pub fn new(push: Dur, ack: Dur) -> Config {
        Config { push, ack, checkpoint_kib: None }
    }

    /// Small segments, and leases that never run out during a run (at most `MAX_OPS` clock
    /// advances of at most 25.5 s each). Checkpoints by log bytes only (not by the real time
    /// that passed, so that a run is deterministic).
    pub fn builder(&self) -> WharfBuilder {
        let b = Wharf::builder()
            .segment_bytes(64 << 10)
            .visibility_timeout(Duration::from_secs(24 * 3600))
            .push_durability(self.push_default())
            .ack_durability(self.ack_default())
            .checkpoint_interval(None)
            // Past three ready messages, a queue's plain pushes join its run (read back from
            // the log), so that every input exercises both.
            .index_window(3);
        match self.checkpoint_kib {
            Some(k) => b.checkpoint_every_bytes((1 + u64::from(k % 128)) << 10),
            None => b,
        }
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
