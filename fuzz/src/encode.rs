//! The inverse of the `arbitrary` decoding of the stateful targets' inputs: the bytes that
//! decode into a given typed input, so that a scripted scenario (`tests/checkpoints.rs`,
//! `workload::checkpoint_ops`) can be a seed the fuzzer starts from (`examples/make_seeds.rs`).
//!
//! It follows `arbitrary` 1.x as derived: a struct is its fields in order; an enum is a `u32`
//! (little-endian) `t` with variant `(t × count) >> 32`, then that variant's fields; an integer
//! is its little-endian bytes; a `bool` a byte (bit 0); an `Option` a `bool` then the value; a
//! `Vec` each element after a `true`, then a `false` (the last field, taken with the rest of
//! the data, needs no end marker). The round trip is tested below: a new variant or field
//! must be added here too.

use crate::ops::{
    BackoffSpec, Config, Dur, FaultSpec, JobOpts, Len, Op, Policy, QueueCfg, MAX_OPS,
};
use crate::targets::{CrashInput, CrashPoint, End, FaultInput, ModelInput};

/// Appends the bytes `arbitrary` decodes into `self`.
pub trait Encode {
    fn encode(&self, out: &mut Vec<u8>);
}

/// The bytes of a whole input.
pub fn to_bytes(input: &impl Encode) -> Vec<u8> {
    let mut out = Vec::new();
    input.encode(&mut out);
    out
}

/// Variant `i` of an enum of `n`.
fn variant(out: &mut Vec<u8>, i: u32, n: u32) {
    let t = (u64::from(i) << 32).div_ceil(u64::from(n));
    out.extend_from_slice(
        &u32::try_from(t).expect("a variant index below the count").to_le_bytes(),
    );
}

impl Encode for u8 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.is_some().encode(out);
        if let Some(v) = self {
            v.encode(out);
        }
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
}

/// A `Vec` that is not the last field: its elements, then the end marker.
fn list<T: Encode>(out: &mut Vec<u8>, items: &[T]) {
    rest(out, items);
    false.encode(out);
}

/// The `Vec` of the last field, taken with the rest of the data.
fn rest<T: Encode>(out: &mut Vec<u8>, items: &[T]) {
    for item in items {
        true.encode(out);
        item.encode(out);
    }
}

impl Encode for Dur {
    fn encode(&self, out: &mut Vec<u8>) {
        let i = match self {
            Dur::Default => 0,
            Dur::Immediate => 1,
            Dur::Interval => 2,
            Dur::None => 3,
        };
        variant(out, i, 4);
    }
}

impl Encode for Len {
    fn encode(&self, out: &mut Vec<u8>) {
        let (i, n) = match self {
            Len::Small(n) => (0, n),
            Len::Large(n) => (1, n),
        };
        variant(out, i, 2);
        n.encode(out);
    }
}

impl Encode for JobOpts {
    fn encode(&self, out: &mut Vec<u8>) {
        self.delay.encode(out);
        self.priority.encode(out);
        self.ttl.encode(out);
        self.key.encode(out);
    }
}

impl Encode for BackoffSpec {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            BackoffSpec::None => variant(out, 0, 3),
            BackoffSpec::Fixed(n) => {
                variant(out, 1, 3);
                n.encode(out);
            }
            BackoffSpec::Exponential { base, extra, jitter } => {
                variant(out, 2, 3);
                base.encode(out);
                extra.encode(out);
                jitter.encode(out);
            }
        }
    }
}

impl Encode for QueueCfg {
    fn encode(&self, out: &mut Vec<u8>) {
        self.max_attempts.encode(out);
        self.backoff.encode(out);
        self.max_len.encode(out);
        self.ttl.encode(out);
        self.expiry_dead_letter.encode(out);
        self.dedup_window.encode(out);
        self.drop_dead_letters.encode(out);
    }
}

/// The number of `Op` variants.
const OPS: u32 = 22;

impl Encode for Op {
    fn encode(&self, out: &mut Vec<u8>) {
        let (i, fields): (u32, Vec<&dyn Encode>) = match self {
            Op::Push { queue, len, durability } => (0, vec![queue, len, durability]),
            Op::PushBatch { queue, n, len, durability } => (1, vec![queue, n, len, durability]),
            Op::Pop { queue } => (2, vec![queue]),
            Op::PopBatch { queue, max } => (3, vec![queue, max]),
            Op::Ack { pick, durability } => (4, vec![pick, durability]),
            Op::Nack { pick } => (5, vec![pick]),
            Op::Release { pick } => (6, vec![pick]),
            Op::Extend { pick } => (7, vec![pick]),
            Op::Sync => (8, vec![]),
            Op::Maintain => (9, vec![]),
            Op::Reopen { release_first } => (10, vec![release_first]),
            Op::BadQueue { pick } => (11, vec![pick]),
            Op::PushJob { queue, len, durability, opts } => {
                (12, vec![queue, len, durability, opts])
            }
            Op::NackWith { pick, delay, error } => (13, vec![pick, delay, error]),
            Op::DeadLetter { pick } => (14, vec![pick]),
            Op::Requeue { queue, all, pick } => (15, vec![queue, all, pick]),
            Op::PopDead { queue } => (16, vec![queue]),
            Op::Advance { by } => (17, vec![by]),
            Op::SetConfig { queue, cfg } => (18, vec![queue, cfg]),
            Op::Checkpoint => (19, vec![]),
            Op::Churn { queue, n, len, durability } => (20, vec![queue, n, len, durability]),
            Op::AckMany { pick, n, durability } => (21, vec![pick, n, durability]),
        };
        variant(out, i, OPS);
        for f in fields {
            f.encode(out);
        }
    }
}

impl Encode for Config {
    fn encode(&self, out: &mut Vec<u8>) {
        self.push.encode(out);
        self.ack.encode(out);
        self.checkpoint_kib.encode(out);
    }
}

impl Encode for Policy {
    fn encode(&self, out: &mut Vec<u8>) {
        let i = match self {
            Policy::KeepAll => 0,
            Policy::DropAllUnsynced => 1,
            Policy::DropUnsyncedDirOps => 2,
            Policy::RandomSubset => 3,
            Policy::GrowWithGarbage => 4,
        };
        variant(out, i, 5);
    }
}

impl Encode for FaultSpec {
    fn encode(&self, out: &mut Vec<u8>) {
        self.kind.encode(out);
        self.nth.encode(out);
        self.no_space.encode(out);
        self.persistent.encode(out);
    }
}

impl Encode for CrashPoint {
    fn encode(&self, out: &mut Vec<u8>) {
        self.wait.encode(out);
        self.after.encode(out);
        self.policy.encode(out);
        self.seed.encode(out);
        self.recovery.encode(out);
    }
}

impl Encode for End {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            End::SameDisk => variant(out, 0, 2),
            End::Image(p, seed) => {
                variant(out, 1, 2);
                p.encode(out);
                seed.encode(out);
            }
        }
    }
}

impl Encode for ModelInput {
    fn encode(&self, out: &mut Vec<u8>) {
        self.cfg.encode(out);
        rest(out, &self.ops[..self.ops.len().min(MAX_OPS)]);
    }
}

impl Encode for CrashInput {
    fn encode(&self, out: &mut Vec<u8>) {
        self.cfg.encode(out);
        list(out, &self.crashes);
        rest(out, &self.ops[..self.ops.len().min(MAX_OPS)]);
    }
}

impl Encode for FaultInput {
    fn encode(&self, out: &mut Vec<u8>) {
        self.cfg.encode(out);
        self.fault.encode(out);
        self.arm_at.encode(out);
        self.end.encode(out);
        rest(out, &self.ops[..self.ops.len().min(MAX_OPS)]);
    }
}

#[cfg(test)]
mod tests {
    use arbitrary::{Arbitrary, Unstructured};

    use super::*;

    fn round_trip<T: Encode + std::fmt::Debug + for<'a> Arbitrary<'a>>(v: &T) {
        let bytes = to_bytes(v);
        let back = T::arbitrary_take_rest(Unstructured::new(&bytes)).expect("decodes");
        assert_eq!(format!("{back:?}"), format!("{v:?}"));
    }

    /// Every variant of every type, through the three inputs.
    #[test]
    fn encoded_inputs_decode_into_themselves() {
        let cfg = QueueCfg {
            max_attempts: 3,
            backoff: BackoffSpec::Exponential { base: 2, extra: 9, jitter: true },
            max_len: Some((4, true)),
            ttl: None,
            expiry_dead_letter: true,
            dedup_window: 7,
            drop_dead_letters: false,
        };
        let opts = JobOpts { delay: 1, priority: 2, ttl: 3, key: Some(4) };
        let ops = vec![
            Op::Push { queue: 1, len: Len::Small(5), durability: Dur::Default },
            Op::PushBatch { queue: 2, n: 3, len: Len::Large(9), durability: Dur::Immediate },
            Op::Pop { queue: 7 },
            Op::PopBatch { queue: 1, max: 4 },
            Op::Ack { pick: 3, durability: Dur::Interval },
            Op::AckMany { pick: 2, n: 5, durability: Dur::Immediate },
            Op::Nack { pick: 1 },
            Op::Release { pick: 2 },
            Op::Extend { pick: 3 },
            Op::Sync,
            Op::Maintain,
            Op::Reopen { release_first: true },
            Op::BadQueue { pick: 9 },
            Op::PushJob { queue: 0, len: Len::Small(0), durability: Dur::None, opts },
            Op::NackWith { pick: 1, delay: Some(3), error: true },
            Op::NackWith { pick: 1, delay: None, error: false },
            Op::DeadLetter { pick: 4 },
            Op::Requeue { queue: 2, all: false, pick: 8 },
            Op::PopDead { queue: 1 },
            Op::Advance { by: 200 },
            Op::SetConfig { queue: 0, cfg },
            Op::SetConfig {
                queue: 1,
                cfg: QueueCfg { backoff: BackoffSpec::Fixed(3), ttl: Some((2, false)), ..cfg },
            },
            Op::SetConfig { queue: 1, cfg: QueueCfg { backoff: BackoffSpec::None, ..cfg } },
            Op::Checkpoint,
            Op::Churn { queue: 2, n: 60, len: Len::Large(47), durability: Dur::None },
        ];
        let config = Config { push: Dur::None, ack: Dur::Immediate, checkpoint_kib: Some(3) };
        round_trip(&ModelInput { cfg: config, ops: ops.clone() });
        round_trip(&ModelInput { cfg: Config::new(Dur::Default, Dur::Interval), ops: vec![] });
        let crashes = vec![
            CrashPoint { wait: 3, after: 9, policy: Policy::KeepAll, seed: 1, recovery: None },
            CrashPoint {
                wait: 0,
                after: 200,
                policy: Policy::GrowWithGarbage,
                seed: 2,
                recovery: Some((7, Policy::DropUnsyncedDirOps)),
            },
        ];
        round_trip(&CrashInput { cfg: config, crashes, ops: ops.clone() });
        round_trip(&CrashInput { cfg: config, crashes: vec![], ops: ops.clone() });
        for end in [End::SameDisk, End::Image(Policy::RandomSubset, 5)] {
            let fault = FaultSpec { kind: 10, nth: 2, no_space: true, persistent: false };
            round_trip(&FaultInput { cfg: config, fault, arm_at: 4, end, ops: ops.clone() });
        }
        let fault = FaultSpec { kind: 1, nth: 0, no_space: false, persistent: true };
        let end = End::Image(Policy::DropAllUnsynced, 0);
        round_trip(&FaultInput { cfg: config, fault, arm_at: 0, end, ops });
    }
}
