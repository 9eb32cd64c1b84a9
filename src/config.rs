//! Per-queue configuration, stored in the log with the queue (a `Config` record, restated in
//! every segment's preamble) and changeable at any time.
//!
//! Invariant: `encode` and `decode` are exact inverses for every valid config, and `decode`
//! never panics on any bytes.

use std::time::Duration;

use crate::clock::millis;

/// Milliseconds in `d`, rounded up: configs keep whole milliseconds, and a nonzero duration
/// must not become zero ("not set").
fn ceil_ms(d: Duration) -> u64 {
    millis(d).saturating_add(u64::from(!d.subsec_nanos().is_multiple_of(1_000_000)))
}

/// How long a failed message waits before it is delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backoff {
    /// Ready again at once (the default).
    #[default]
    None,
    /// The same delay after every failure.
    Fixed(Duration),
    /// `base × 2^(attempt − 1)`, at most `cap`; with `jitter`, a random delay between half of
    /// that and all of it ("equal jitter"), so that failures of many messages spread out.
    Exponential {
        /// The delay after the first failure.
        base: Duration,
        /// The longest delay.
        cap: Duration,
        /// Randomise each delay between half and all of it.
        jitter: bool,
    },
}

impl Backoff {
    /// Exponential backoff from `base`, capped at `cap`, with jitter.
    pub fn exponential(base: Duration, cap: Duration) -> Backoff {
        Backoff::Exponential { base, cap, jitter: true }
    }

    /// The delay after the failure of delivery `attempt` (from 1) of message `id`. The jitter
    /// is a hash of both, so it is random across messages and attempts but reproducible.
    pub fn delay(&self, attempt: u32, id: u64) -> Duration {
        match *self {
            Backoff::None => Duration::ZERO,
            Backoff::Fixed(d) => d,
            Backoff::Exponential { base, cap, jitter } => {
                let shift = attempt.saturating_sub(1).min(62);
                let d = base.checked_mul(1u32 << shift.min(31)).unwrap_or(cap);
                let d = if shift > 31 { cap } else { d.min(cap) };
                if jitter {
                    let mut x = id ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    x ^= x >> 33;
                    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
                    x ^= x >> 33;
                    let half = d / 2;
                    let spread = millis(d - half);
                    // `spread` saturates at `u64::MAX` ms for a delay near `Duration::MAX`.
                    let extra = x % spread.saturating_add(1);
                    half.saturating_add(Duration::from_millis(extra)).min(d)
                } else {
                    d
                }
            }
        }
    }
}

/// What a push into a full queue (see [`QueueConfig::max_len`]) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// The push fails with [`Error::QueueFull`](crate::error::Error::QueueFull) and stores nothing
    /// (the default).
    #[default]
    Reject,
    /// The push succeeds; the oldest waiting message (the next one that would be delivered, or
    /// the earliest-due delayed one) moves to the dead-letter queue, or is dropped if the
    /// queue has none.
    DeadLetterOldest,
}

/// What happens to a message whose time-to-live ran out before it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnExpiry {
    /// Dropped (the default). It is counted in [`QueueStats::expired`](crate::QueueStats).
    #[default]
    Drop,
    /// Moved to the dead-letter queue (dropped if the queue has none).
    DeadLetter,
}

/// Where a queue's failed messages go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeadLetters {
    /// The queue named `<name>.dlq`, created when the first message goes there (the default).
    #[default]
    Default,
    /// The named queue.
    To(String),
    /// Nowhere: a message past its last attempt, or dead-lettered explicitly, is dropped.
    Drop,
}

/// The configuration of one queue: set with [`Queue::set_config`](crate::Queue::set_config),
/// stored durably with the queue. Durations are kept to the millisecond (rounded up).
///
/// ```
/// use std::time::Duration;
/// use wharf::{Backoff, QueueConfig};
/// # let dir = tempfile::tempdir()?;
/// # let wharf = wharf::Wharf::open(dir.path())?;
/// let emails = wharf.queue("emails")?;
/// emails.set_config(
///     &QueueConfig::new()
///         .max_attempts(5)
///         .backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)))
///         .visibility_timeout(Duration::from_secs(120)),
/// )?;
/// assert_eq!(emails.config()?.get_max_attempts(), Some(5));
/// # Ok::<(), wharf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use]
pub struct QueueConfig {
    pub(crate) visibility_timeout: Option<Duration>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) backoff: Backoff,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) max_len: Option<u64>,
    pub(crate) overflow: Overflow,
    pub(crate) ttl: Option<Duration>,
    pub(crate) on_expiry: OnExpiry,
    pub(crate) dedup_window: Duration,
}

impl QueueConfig {
    /// The defaults: the store's visibility timeout, unlimited attempts, no backoff, dead
    /// letters to `<name>.dlq`, no length limit, no TTL, dedup keys held while their message
    /// is unsettled.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a popped message stays leased (default: the store's
    /// [`visibility_timeout`](crate::WharfBuilder::visibility_timeout)). Not zero;
    /// `Duration::MAX` is a lease that never runs out while the store is open.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = Some(d);
        self
    }

    /// Deliveries after which a failed message is dead-lettered instead of retried (default:
    /// unlimited). Every delivery counts, including one whose process crashed: a message that
    /// kills its consumer is dead-lettered after this many tries instead of looping for ever.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// The delay before a failed message is delivered again (default [`Backoff::None`]).
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// Where dead letters go (default `<name>.dlq`).
    pub fn dead_letters(mut self, d: DeadLetters) -> Self {
        self.dead_letters = d;
        self
    }

    /// The most messages the queue holds waiting (ready or delayed; leased ones do not count),
    /// and what a push beyond that does (default: no limit).
    pub fn max_len(mut self, n: u64, overflow: Overflow) -> Self {
        self.max_len = Some(n);
        self.overflow = overflow;
        self
    }

    /// Time-to-live of every message pushed from now on without its own (default: none), and
    /// what happens when it runs out before delivery.
    pub fn ttl(mut self, ttl: Duration, on_expiry: OnExpiry) -> Self {
        self.ttl = Some(ttl);
        self.on_expiry = on_expiry;
        self
    }

    /// What happens to a message whose own TTL (see `PushOptions::ttl`) runs out.
    pub fn on_expiry(mut self, on_expiry: OnExpiry) -> Self {
        self.on_expiry = on_expiry;
        self
    }

    /// How long after its push a dedup key keeps refusing duplicates even once its message is
    /// settled (default zero: only while the message is unsettled; `Duration::MAX`: for ever).
    pub fn dedup_window(mut self, d: Duration) -> Self {
        self.dedup_window = d;
        self
    }

    /// The visibility timeout, if set for this queue.
    pub fn get_visibility_timeout(&self) -> Option<Duration> {
        self.visibility_timeout
    }

    /// The attempt limit, if any.
    pub fn get_max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The backoff policy.
    pub fn get_backoff(&self) -> Backoff {
        self.backoff
    }

    /// Where dead letters go.
    pub fn get_dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// The length limit and overflow policy, if any.
    pub fn get_max_len(&self) -> Option<(u64, Overflow)> {
        self.max_len.map(|n| (n, self.overflow))
    }

    /// The default TTL, if any.
    pub fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// What happens to expired messages.
    pub fn get_on_expiry(&self) -> OnExpiry {
        self.on_expiry
    }

    /// The dedup window.
    pub fn get_dedup_window(&self) -> Duration {
        self.dedup_window
    }

    /// The config as it is stored: durations rounded up to whole milliseconds.
    pub(crate) fn stored(&self) -> crate::error::Result<QueueConfig> {
        self.validate()?;
        QueueConfig::decode(&self.encode())
            .ok_or_else(|| crate::error::Error::InvalidOption("config does not round-trip".into()))
    }

    pub(crate) fn validate(&self) -> crate::error::Result<()> {
        let bad = |what: &str| Err(crate::error::Error::InvalidOption(what.into()));
        if self.visibility_timeout.is_some_and(|d| d.is_zero()) {
            return bad("visibility timeout must not be zero");
        }
        if self.ttl.is_some_and(|d| d.is_zero()) {
            return bad("a TTL must not be zero");
        }
        if self.max_attempts == Some(0) {
            return bad("max_attempts must be at least 1");
        }
        if let DeadLetters::To(name) = &self.dead_letters {
            if !crate::limits::valid_name(name) {
                return Err(crate::error::Error::InvalidName(name.clone()));
            }
        }
        if let Backoff::Exponential { base, cap, .. } = self.backoff {
            if base > cap {
                return bad("exponential backoff: base must not exceed cap");
            }
        }
        Ok(())
    }

    /// The bytes of a `Config` record body after the queue id.
    ///
    /// ```text
    /// 0  1  version (1)
    /// 1  8  visibility timeout ms (0: the store's)
    /// 9  4  max attempts (0: unlimited)
    /// 13 1  backoff kind (0 none, 1 fixed, 2 exponential, 3 exponential with jitter)
    /// 14 8  backoff base ms (fixed: the delay)
    /// 22 8  backoff cap ms
    /// 30 8  max len (u64::MAX: none)
    /// 38 1  overflow (0 reject, 1 dead-letter oldest)
    /// 39 8  ttl ms (0: none)
    /// 47 1  on expiry (0 drop, 1 dead-letter)
    /// 48 8  dedup window ms
    /// 56 1  dead letters (0 default, 1 named, 2 drop)
    /// 57 .. dead-letter queue name (kind 1)
    /// ```
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        v.push(1u8);
        v.extend_from_slice(&self.visibility_timeout.map_or(0, ceil_ms).to_le_bytes());
        v.extend_from_slice(&self.max_attempts.unwrap_or(0).to_le_bytes());
        let (kind, base, cap) = match self.backoff {
            Backoff::None => (0u8, 0, 0),
            Backoff::Fixed(d) => (1, ceil_ms(d), 0),
            Backoff::Exponential { base, cap, jitter } => {
                (if jitter { 3 } else { 2 }, ceil_ms(base), ceil_ms(cap))
            }
        };
        v.push(kind);
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&cap.to_le_bytes());
        v.extend_from_slice(&self.max_len.unwrap_or(u64::MAX).to_le_bytes());
        v.push(match self.overflow {
            Overflow::Reject => 0,
            Overflow::DeadLetterOldest => 1,
        });
        v.extend_from_slice(&self.ttl.map_or(0, ceil_ms).to_le_bytes());
        v.push(match self.on_expiry {
            OnExpiry::Drop => 0,
            OnExpiry::DeadLetter => 1,
        });
        v.extend_from_slice(&ceil_ms(self.dedup_window).to_le_bytes());
        match &self.dead_letters {
            DeadLetters::Default => v.push(0),
            DeadLetters::To(name) => {
                v.push(1);
                v.extend_from_slice(name.as_bytes());
            }
            DeadLetters::Drop => v.push(2),
        }
        v
    }

    /// Decodes [`QueueConfig::encode`]'s bytes; `None` if they are not a valid config.
    pub(crate) fn decode(b: &[u8]) -> Option<QueueConfig> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let ms = |at: usize| u64_at(at).map(Duration::from_millis);
        if b.first() != Some(&1) {
            return None;
        }
        let vis = ms(1)?;
        let attempts = u32::from_le_bytes(b.get(9..13)?.try_into().ok()?);
        let (base, cap) = (ms(14)?, ms(22)?);
        let backoff = match b.get(13)? {
            0 => Backoff::None,
            1 => Backoff::Fixed(base),
            2 => Backoff::Exponential { base, cap, jitter: false },
            3 => Backoff::Exponential { base, cap, jitter: true },
            _ => return None,
        };
        let max_len = u64_at(30)?;
        let overflow = match b.get(38)? {
            0 => Overflow::Reject,
            1 => Overflow::DeadLetterOldest,
            _ => return None,
        };
        let ttl = ms(39)?;
        let on_expiry = match b.get(47)? {
            0 => OnExpiry::Drop,
            1 => OnExpiry::DeadLetter,
            _ => return None,
        };
        let dedup_window = ms(48)?;
        let rest = b.get(57..)?;
        let dead_letters = match b.get(56)? {
            0 if rest.is_empty() => DeadLetters::Default,
            1 => {
                let name = std::str::from_utf8(rest).ok()?;
                if !crate::limits::valid_name(name) {
                    return None;
                }
                DeadLetters::To(name.to_owned())
            }
            2 if rest.is_empty() => DeadLetters::Drop,
            _ => return None,
        };
        let cfg = QueueConfig {
            visibility_timeout: (!vis.is_zero()).then_some(vis),
            max_attempts: (attempts != 0).then_some(attempts),
            backoff,
            dead_letters,
            max_len: (max_len != u64::MAX).then_some(max_len),
            overflow,
            ttl: (!ttl.is_zero()).then_some(ttl),
            on_expiry,
            dedup_window,
        };
        cfg.validate().ok()?;
        Some(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_and_garbage_is_refused() {
        let configs = [
            QueueConfig::new(),
            QueueConfig::new()
                .max_attempts(3)
                .backoff(Backoff::exponential(Duration::from_millis(10), Duration::from_secs(5)))
                .dead_letters(DeadLetters::To("failed".into()))
                .max_len(100, Overflow::DeadLetterOldest)
                .ttl(Duration::from_secs(60), OnExpiry::DeadLetter)
                .dedup_window(Duration::from_secs(300))
                .visibility_timeout(Duration::from_secs(9)),
            QueueConfig::new()
                .backoff(Backoff::Fixed(Duration::from_secs(2)))
                .dead_letters(DeadLetters::Drop),
        ];
        for c in configs {
            let b = c.encode();
            assert_eq!(QueueConfig::decode(&b), Some(c.clone()));
            for cut in 0..b.len() {
                let _ = QueueConfig::decode(&b[..cut]);
            }
        }
        assert_eq!(QueueConfig::decode(&[]), None);
        assert_eq!(QueueConfig::decode(&[2; 60]), None);
    }

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap_and_jitter_stays_within_half() {
        let b = Backoff::Exponential {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            jitter: false,
        };
        let got: Vec<u64> = (1..=6).map(|a| millis(b.delay(a, 7))).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX, 7), Duration::from_secs(1));
        for (base, cap) in
            [(Duration::MAX, Duration::MAX), (Duration::from_nanos(1), Duration::MAX)]
        {
            for jitter in [false, true] {
                let b = Backoff::Exponential { base, cap, jitter };
                for attempt in [0, 1, 2, 31, 32, 33, 63, 64, u32::MAX] {
                    for id in [0, 1, u64::MAX] {
                        assert!(b.delay(attempt, id) <= cap);
                    }
                }
            }
        }
        assert_eq!(Backoff::Fixed(Duration::MAX).delay(u32::MAX, u64::MAX), Duration::MAX);
        let j = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        for a in 1..=8 {
            for id in 0..50 {
                let full = b.delay(a, id);
                let d = j.delay(a, id);
                assert!(d >= full / 2 && d <= full, "attempt {a}: {d:?} vs {full:?}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|id| j.delay(4, id)).collect();
        assert!(spread.len() > 10, "jitter does not spread: {spread:?}");
    }
}
