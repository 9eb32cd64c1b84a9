//! The value types of the queue API: message ids, push options, depths, counters and peeked
//! messages.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::options::Durability;

/// The id of a message: unique within its store for ever (never reused, not even after a crash
/// cut the log), and increasing in push order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub(crate) u64);

impl MessageId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Options of one push: durability, delay, priority, time-to-live, dedup key.
///
/// ```
/// use std::time::Duration;
/// use wharf::PushOptions;
/// # let dir = tempfile::tempdir()?;
/// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
/// let opts = PushOptions::new()
///     .delay(Duration::from_secs(30)) // invisible for 30 s, across restarts too
///     .priority(7)                    // delivered before lower priorities
///     .ttl(Duration::from_secs(600))  // never delivered after 10 minutes
///     .dedup_key("invoice-2291");     // a second push with this key stores nothing
/// let first = q.push_with(b"send invoice 2291", opts.clone())?;
/// assert_eq!(q.push_with(b"send invoice 2291", opts)?, first);
/// # Ok::<(), wharf::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct PushOptions {
    pub(crate) durability: Option<Durability>,
    pub(crate) delay: Option<Duration>,
    pub(crate) not_before: Option<SystemTime>,
    pub(crate) priority: u8,
    pub(crate) ttl: Option<Duration>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) dedup_key: Option<Box<[u8]>>,
    pub(crate) wait_for_space: Option<Duration>,
}

impl PushOptions {
    /// The store's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the store's push durability for this call.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = Some(d);
        self
    }

    /// Invisible until this long from now (by the store's wall clock; the due time is stored,
    /// so it holds across restarts). `Duration::MAX` is never: the stored due time saturates,
    /// some 584 million years away.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self.not_before = None;
        self
    }

    /// Invisible until this wall-clock time (a time before the Unix epoch is now).
    pub fn not_before(mut self, t: SystemTime) -> Self {
        self.not_before = Some(t);
        self.delay = None;
        self
    }

    /// Delivered before every message of a lower priority (`0..=9`, default 0); first in,
    /// first out within one priority.
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = p;
        self
    }

    /// Never delivered once this long has passed since the push: it is dropped or
    /// dead-lettered instead, as the queue's [`OnExpiry`] says. Overrides the queue's TTL. A
    /// TTL under a millisecond has run out at once; `Duration::MAX` never does.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self.expires_at = None;
        self
    }

    /// Never delivered after this wall-clock time: [`PushOptions::ttl`] as a point in time
    /// (kept to the millisecond), for a message moved from another store with its expiry. A
    /// time at or before the Unix epoch has passed already.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use wharf::PushOptions;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// let at = SystemTime::UNIX_EPOCH + Duration::from_millis(4_102_444_800_000); // 2100
    /// q.push_with(b"report", PushOptions::new().expires_at(at))?;
    /// assert_eq!(q.peek(1)?[0].expires, Some(at));
    /// # Ok::<(), wharf::Error>(())
    /// ```
    pub fn expires_at(mut self, t: SystemTime) -> Self {
        self.expires_at = Some(t);
        self.ttl = None;
        self
    }

    /// When the store is full ([`Error::Full`] past its quota, or [`Error::NoSpace`] from the
    /// disk), wait up to `timeout` for room (acked segments being deleted) instead of failing
    /// at once; `Duration::MAX` waits as long as it takes.
    pub fn wait_for_space(mut self, timeout: Duration) -> Self {
        self.wait_for_space = Some(timeout);
        self
    }

    /// A second push with the same key, while the first message is unsettled in this queue
    /// (or within the queue's [`dedup_window`](QueueConfig::dedup_window) of its push), stores
    /// nothing and returns the first message's id. A message that was acked, dropped or
    /// dead-lettered no longer holds its key past the window. At most 1024 bytes; single
    /// pushes only.
    pub fn dedup_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.dedup_key = Some(key.as_ref().into());
        self
    }
}

/// How many messages a queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Depth {
    /// Messages that can be popped now.
    pub ready: usize,
    /// Messages popped and not yet settled, whose lease has not run out.
    pub in_flight: usize,
    /// Messages waiting for their delay or retry backoff to pass.
    pub delayed: usize,
}

/// A queue's depth and its counters since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Messages that can be popped now.
    pub ready: usize,
    /// Messages waiting for their delay or retry backoff.
    pub delayed: usize,
    /// Messages leased to consumers.
    pub in_flight: usize,
    /// Messages acked.
    pub processed: u64,
    /// Failed attempts (nacks and retries, including those that ended in a dead letter).
    pub failed: u64,
    /// Messages moved to the dead-letter queue (or dropped, if the queue has none).
    pub dead_lettered: u64,
    /// Messages whose time-to-live ran out before delivery.
    pub expired: u64,
    /// Times a blocked `pop` on this queue woke up: by a push, a due message, an expiring
    /// lease or its own timeout. Never by a periodic tick: an idle wait does not wake.
    pub wakeups: u64,
}

/// A waiting message as [`Queue::peek`] shows it, without leasing it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peeked {
    /// The message's id.
    pub id: MessageId,
    /// A copy of its payload.
    pub payload: Vec<u8>,
    /// Deliveries so far.
    pub attempts: u32,
    /// Its priority.
    pub priority: u8,
    /// When it becomes ready, if it is delayed.
    pub due: Option<SystemTime>,
    /// The queue it was dead-lettered from, and why, if it was.
    pub dead_lettered_from: Option<(String, DeadReason)>,
    /// The last error text a consumer gave, if any.
    pub last_error: Option<String>,
    /// When it was pushed (the store's wall clock), if its push record says: every push
    /// records it (a relocated message keeps it); `None` only for a plain `Push` record of an
    /// older store.
    pub pushed_at: Option<SystemTime>,
    /// When its time-to-live runs out, if it has one.
    pub expires: Option<SystemTime>,
    /// Its dedup key, if it was pushed with one (`None` for a relocated message).
    pub dedup_key: Option<Vec<u8>>,
}

/// Why a message was dead-lettered (stored in its `DeadLetter` record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadReason {
    /// A consumer called [`Delivery::dead_letter`](crate::Delivery::dead_letter).
    Explicit,
    /// It failed (or its consumer crashed) on each of the queue's `max_attempts` deliveries.
    MaxAttempts,
    /// Its time-to-live ran out before it was delivered.
    Expired,
    /// It was the oldest message of a full queue whose overflow policy dead-letters.
    Overflow,
}

impl DeadReason {
    pub(crate) fn code(self) -> u8 {
        match self {
            DeadReason::Explicit => 1,
            DeadReason::MaxAttempts => 2,
            DeadReason::Expired => 3,
            DeadReason::Overflow => 4,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<DeadReason> {
        Some(match c {
            1 => DeadReason::Explicit,
            2 => DeadReason::MaxAttempts,
            3 => DeadReason::Expired,
            4 => DeadReason::Overflow,
            _ => return None,
        })
    }
}

/// What [`Queue::ack_many`](crate::Queue::ack_many) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AckReport {
    /// Deliveries acked: their messages are settled for good.
    pub acked: usize,
    /// The ids of deliveries whose lease had already ended (it ran out, or the message was
    /// released or delivered again), in the order given: not acked, as [`Delivery::ack`] would
    /// have failed with [`Error::LeaseExpired`](crate::Error::LeaseExpired) for each.
    ///
    /// [`Delivery::ack`]: crate::Delivery::ack
    pub lapsed: Vec<MessageId>,
}

/// How a failed delivery is retried: see [`Delivery::nack_with`](crate::Delivery::nack_with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct NackOptions {
    pub(crate) delay: Option<Duration>,
    pub(crate) error: Option<String>,
}

impl NackOptions {
    /// The queue's backoff, no error text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retry after this delay instead of the queue's backoff (`Duration::MAX`: never; the
    /// message stays delayed, across restarts too).
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Why it failed: kept with the message (up to 4 KiB), shown by
    /// [`Queue::peek`](crate::Queue::peek) once it is dead-lettered.
    pub fn error(mut self, text: impl Into<String>) -> Self {
        self.error = Some(text.into());
        self
    }
}
