//! The public handles: `Wharf` (an open store) and `Queue` (one named queue in it).
//!
//! Invariant: holds no file handles itself; every state change goes through one log record
//! staged under the store's mutex, in the same order as the index changes it makes.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, MutexGuard};

use crate::checkpoint::CheckpointReport;
use crate::clock::{deadline_after, from_unix_ms, millis, unix_ms};
use crate::commit::{Room, Stats};
use crate::config::{OnExpiry, Overflow, QueueConfig};
use crate::error::{Error, Result};
use crate::index::{Entry, Waiting, RELOCATED};
use crate::jobs::{self, DeadReason};
use crate::lease::{Delivery, Payload};
use crate::options::{Durability, Options, WharfBuilder};
use crate::record::{self, Body, PUSH_EX_OVERHEAD};
use crate::recovery::RecoveryReport;
use crate::segment::Segment;
use crate::storage::RealFs;
use crate::store::{Core, Shared, State};

/// Longest queue name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Whether `name` is a valid queue name: 1 to 128 characters from `A-Z a-z 0-9 . _ -`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

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

/// The highest priority; [`PushOptions::priority`] takes `0..=MAX_PRIORITY`.
pub const MAX_PRIORITY: u8 = 9;

/// Longest dedup key, in bytes.
pub const MAX_DEDUP_KEY: usize = 1024;

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
    durability: Option<Durability>,
    delay: Option<Duration>,
    not_before: Option<SystemTime>,
    priority: u8,
    ttl: Option<Duration>,
    expires_at: Option<SystemTime>,
    dedup_key: Option<Box<[u8]>>,
    wait_for_space: Option<Duration>,
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

/// One push, resolved against the clock and the queue's config.
struct Planned {
    priority: u8,
    not_before: u64,
    expires: u64,
    pushed: u64,
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

/// An open store: a directory holding any number of named queues.
///
/// Cheap to clone (`Clone + Send + Sync`); every clone, [`Queue`] and [`Delivery`] shares the
/// one open store, which closes when the last of them is dropped. Dropping makes everything
/// staged durable on a best-effort basis; call [`Wharf::close`] to see errors.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let wharf = wharf::Wharf::open(dir.path())?;
/// let emails = wharf.queue("emails")?;
/// emails.push(b"to: ada@example.com")?;
/// let job = emails.pop()?;
/// assert_eq!(job.payload(), b"to: ada@example.com");
/// job.ack()?;
/// wharf.close()?;
/// # Ok::<(), wharf::Error>(())
/// ```
#[derive(Clone)]
pub struct Wharf {
    core: Arc<Core>,
}

impl fmt::Debug for Wharf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wharf").field("dir", &self.core.shared.dir).finish_non_exhaustive()
    }
}

impl Wharf {
    /// Opens (or creates) the store in `dir` with the default options, recovering it from its
    /// log: a torn write at the end of the log is cut off, every message that was in flight is
    /// ready again.
    ///
    /// # Errors
    /// [`Error::Locked`] if another handle has `dir` open; [`Error::Corrupted`] (naming the file
    /// and offset) for damage below the durable end of the log, a missing segment or a missing
    /// or stale `state.redb`, or (naming `state.redb`, offset 0) for a state database that
    /// fails redb's page checksums; [`Error::UnsupportedVersion`], [`Error::ForeignSegment`];
    /// [`Error::Io`], of kind `NotADirectory` if `dir` or one of its parents is a file.
    ///
    /// # Panics
    /// Not on damaged files, also with `panic = "abort"`: redb panics on some damage to
    /// `state.redb` when it opens it plainly, so wharf first checks every page checksum of the
    /// file through redb's integrity-checking open (its writes kept in memory) and gives redb
    /// the file for use only if that passes. redb's panics are still caught (`catch_unwind`) and
    /// returned as [`Error::Corrupted`], a second line for what the check cannot see (bytes
    /// changed after it, a bug in redb); under `panic = "abort"` such a panic aborts the
    /// process, and the default panic hook prints its message (README, "Limits").
    pub fn open(dir: impl AsRef<Path>) -> Result<Wharf> {
        Wharf::builder().open(dir)
    }

    /// A builder for options other than the defaults.
    pub fn builder() -> WharfBuilder {
        WharfBuilder::default()
    }

    pub(crate) fn open_with(dir: &Path, opts: Options) -> Result<Wharf> {
        Wharf::open_on(Arc::new(RealFs), dir, opts)
    }

    /// Opens the store on any storage (the fault-injecting one in tests).
    pub(crate) fn open_on(
        storage: Arc<dyn crate::storage::Storage>,
        dir: &Path,
        opts: Options,
    ) -> Result<Wharf> {
        let core = Core::open(storage, dir, opts)?;
        Ok(Wharf { core: Arc::new(core) })
    }

    /// The queue named `name`, created (durably) if it does not exist yet.
    ///
    /// # Errors
    /// [`Error::InvalidName`] unless `name` has 1 to 128 characters from `A-Z a-z 0-9 . _ -`;
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`], [`Error::Io`].
    pub fn queue(&self, name: &str) -> Result<Queue> {
        if !valid_name(name) {
            return Err(Error::InvalidName(name.to_owned()));
        }
        let shared = &self.core.shared;
        let mut g = shared.state.lock();
        g.check()?;
        if let Some(&id) = g.names.get(name) {
            return Ok(self.handle(&g, id));
        }
        let len = Body::Queue { queue: 0, name: name.as_bytes() }.encoded_len();
        if (g.wal.preamble_len() + len) as u64 > shared.opts.segment_bytes / 4 {
            return Err(Error::InvalidOption(format!(
                "too many queues for segments of {} bytes",
                shared.opts.segment_bytes
            )));
        }
        shared.ensure_room(&mut g, &[len, len], Room::Push)?;
        let id = jobs::create_queue(&mut g, name)?;
        let end = g.wal.next_lsn;
        shared.wait_durable(&mut g, end)?;
        Ok(self.handle(&g, id))
    }

    #[cfg(feature = "testing")]
    pub(crate) fn shared(&self) -> &Shared {
        &self.core.shared
    }

    fn handle(&self, g: &State, id: u32) -> Queue {
        let q = &g.queues[id as usize];
        Queue { core: Arc::clone(&self.core), id, name: Arc::clone(&q.name), cv: Arc::clone(&q.cv) }
    }

    /// The names of all queues, in creation order.
    pub fn queue_names(&self) -> Vec<String> {
        let g = self.core.shared.state.lock();
        g.queues.iter().map(|q| q.name.to_string()).collect()
    }

    /// What recovery found and did when this store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.core.shared.report
    }

    /// Counters of the write path since open.
    pub fn stats(&self) -> Stats {
        let g = self.core.shared.state.lock();
        let mut s = g.wal.stats;
        s.durable_lsn = g.wal.durable;
        s.segments = g.wal.log.segments.len() + g.wal.log.spares.len();
        s.disk_bytes = g.wal.log.disk_bytes();
        s.checkpoint_lsn = g.wal.log.checkpoint;
        s
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.core.shared.dir
    }

    /// Makes every record staged so far durable (written and `fdatasync`ed).
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`] (also when this sync fails).
    pub fn sync(&self) -> Result<()> {
        let shared = &self.core.shared;
        let mut g = shared.state.lock();
        g.check()?;
        let end = g.wal.next_lsn;
        shared.wait_durable(&mut g, end)
    }

    /// Takes a checkpoint now: makes the log durable, writes what it says into the state
    /// database (`state.redb`) up to its end, moves the payloads of stragglers out of old
    /// segments (a few unsettled messages that would otherwise keep a whole segment), and
    /// deletes the segments the checkpoint covers whose messages are all settled. Reopening
    /// then replays only the log after the checkpoint (and the backlog still in the log).
    ///
    /// A background thread does this on its own (see
    /// [`WharfBuilder::checkpoint_every_bytes`] and [`WharfBuilder::checkpoint_interval`]);
    /// calling it is never needed for correctness.
    ///
    /// ```
    /// # fn main() -> wharf::Result<()> {
    /// let dir = tempfile::tempdir()?;
    /// let store = wharf::Wharf::open(dir.path())?;
    /// store.queue("jobs")?.push(b"one")?;
    /// let report = store.checkpoint()?;
    /// assert!(report.position > 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::Io`] if the state database cannot be
    /// written (the log is unharmed; the next checkpoint tries again).
    pub fn checkpoint(&self) -> Result<CheckpointReport> {
        self.core.shared.checkpoint()
    }

    /// Makes everything durable and closes the store for every handle: later calls on any of
    /// them return [`Error::Closed`], and the directory can be opened again at once.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the final sync fails.
    pub fn close(self) -> Result<()> {
        self.core.close()
    }
}

/// A handle to one named queue. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Queue {
    pub(crate) core: Arc<Core>,
    pub(crate) id: u32,
    name: Arc<str>,
    cv: Arc<Condvar>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A waiting message `peek` found under the lock, before its payload is read.
struct Unloaded {
    taken: Taken,
    due: Option<u64>,
    from: Option<(String, DeadReason)>,
    last_error: Option<String>,
}

/// A leased message taken under the lock, before its payload is read.
pub(crate) struct Taken {
    id: u64,
    entry: Entry,
    source: Source,
}

pub(crate) enum Source {
    Segment(Arc<Segment>),
    Copied(Vec<u8>),
    /// Relocated into the state database: read from there, checked against this CRC; pushed
    /// at this Unix ms (0: not recorded).
    Relocated {
        crc: u32,
        pushed: u64,
    },
}

impl Queue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pushes one message with the store's push durability (by default `Immediate`: durable
    /// when this returns).
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`]; [`Error::QueueFull`]; [`Error::Full`] and [`Error::NoSpace`]
    /// (nothing was stored); [`Error::Closed`]; [`Error::Poisoned`] (the message may or may not be stored).
    pub fn push(&self, payload: impl AsRef<[u8]>) -> Result<MessageId> {
        self.push_with(payload, PushOptions::new())
    }

    /// Pushes one message with options (see [`PushOptions`]).
    ///
    /// ```
    /// use wharf::{Durability, PushOptions};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("logs")?;
    /// q.push_with(b"fast, not yet durable", PushOptions::new().durability(Durability::None))?;
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::push`], plus [`Error::InvalidOption`] for a priority above
    /// [`MAX_PRIORITY`] or a dedup key over 1024 bytes.
    pub fn push_with(&self, payload: impl AsRef<[u8]>, opts: PushOptions) -> Result<MessageId> {
        let ids = self.push_many([payload], opts)?;
        ids.into_iter().next().ok_or(Error::Closed)
    }

    /// Pushes several messages with one group commit. On `Err` none of them was pushed, except
    /// after [`Error::Poisoned`], where any prefix of them may have been stored.
    ///
    /// # Errors
    /// As [`Queue::push`].
    pub fn push_batch<I>(&self, payloads: I) -> Result<Vec<MessageId>>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        self.push_many(payloads, PushOptions::new())
    }

    /// [`Queue::push_batch`] with options, the same for every message (a dedup key is refused:
    /// it names one message).
    ///
    /// # Errors
    /// As [`Queue::push_with`].
    pub fn push_batch_with<I>(&self, payloads: I, opts: PushOptions) -> Result<Vec<MessageId>>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        self.push_many(payloads, opts)
    }

    fn push_many<I>(&self, payloads: I, opts: PushOptions) -> Result<Vec<MessageId>>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let shared = &self.core.shared;
        let payloads: Vec<I::Item> = payloads.into_iter().collect();
        if opts.priority > MAX_PRIORITY {
            return Err(Error::InvalidOption(format!(
                "priority {} is above the maximum of {MAX_PRIORITY}",
                opts.priority
            )));
        }
        let key: &[u8] = opts.dedup_key.as_deref().unwrap_or(&[]);
        if key.len() > MAX_DEDUP_KEY {
            return Err(Error::InvalidOption(format!(
                "dedup key of {} bytes is longer than {MAX_DEDUP_KEY}",
                key.len()
            )));
        }
        if opts.dedup_key.is_some() && payloads.len() != 1 {
            return Err(Error::InvalidOption(
                "a dedup key names one message: push it alone".into(),
            ));
        }
        let max = shared.opts.max_payload;
        if let Some(p) = payloads.iter().find(|p| p.as_ref().len() > max) {
            return Err(Error::PayloadTooLarge { len: p.as_ref().len(), max });
        }
        let durability = opts.durability.unwrap_or(shared.opts.push_durability);
        let space_deadline = opts.wait_for_space.map(|d| deadline_after(Instant::now(), d));
        let q = self.id as usize;
        let mut g = shared.state.lock();
        let ids = loop {
            g.check()?;
            let now_ms = jobs::now_ms(shared);
            let cfg = &g.queues[q].config;
            let plan = Planned {
                priority: opts.priority,
                not_before: match (opts.not_before, opts.delay) {
                    (Some(t), _) => unix_ms(t),
                    (None, Some(d)) if !d.is_zero() => now_ms.saturating_add(millis(d)),
                    _ => 0,
                },
                expires: match opts.expires_at {
                    Some(t) => unix_ms(t).max(1),
                    None => opts.ttl.or(cfg.ttl).map_or(0, |t| now_ms.saturating_add(millis(t))),
                },
                pushed: now_ms,
            };
            let plan = Planned {
                not_before: plan.not_before * u64::from(plan.not_before > now_ms),
                ..plan
            };
            let window = millis(cfg.dedup_window);
            if !key.is_empty() {
                if let Some(id) = g.queues[q].index.dedup_hit(key, now_ms) {
                    // Nothing is stored; the caller still gets the durability it asked for.
                    let end = g.wal.next_lsn;
                    shared.commit(&mut g, end, durability)?;
                    return Ok(vec![MessageId(id)]);
                }
            }
            // Overflow: reject, or make room by dead-lettering the oldest waiting messages (due
            // ones made ready first, so the victim is the message a pop would take next).
            g.queues[q].index.promote(now_ms);
            let cfg = &g.queues[q].config;
            let mut victims = 0;
            if let Some(limit) = cfg.max_len {
                let waiting = g.queues[q].index.waiting_len() as u64;
                let excess = (waiting + payloads.len() as u64).saturating_sub(limit);
                if excess > 0 {
                    if cfg.overflow == Overflow::Reject || payloads.len() as u64 > limit {
                        return Err(Error::QueueFull {
                            queue: self.name.to_string(),
                            max_len: limit,
                        });
                    }
                    victims = excess as usize;
                }
            }
            let mut lens: Vec<usize> =
                payloads.iter().map(|p| PUSH_EX_OVERHEAD + key.len() + p.as_ref().len()).collect();
            for _ in 0..victims {
                lens.extend(jobs::dead_letter_lens(&g, self.id, ""));
            }
            // Several records are one group, all kept by a crash or none.
            let grouped = payloads.len() > 1 || (victims > 0 && !payloads.is_empty());
            match jobs::room(shared, &mut g, &lens, Room::Push) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e @ (Error::Full { .. } | Error::NoSpace)) => {
                    // Settled segments that wait for a checkpoint make room once it is taken.
                    if g.wal.log.deletable_after_checkpoint() && !g.checkpoint_wanted {
                        g.checkpoint_wanted = true;
                        shared.ck_cv.notify_one();
                    }
                    let now = Instant::now();
                    match space_deadline.filter(|t| *t > now) {
                        // A deletion wakes the wait; the disk's own ENOSPC is looked at again
                        // every 100 ms, as nothing here learns when it clears.
                        Some(t) => {
                            let t = if matches!(e, Error::NoSpace) {
                                t.min(now + Duration::from_millis(100))
                            } else {
                                t
                            };
                            shared.space_cv.wait_until(&mut g, t);
                            continue;
                        }
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            if grouped {
                g.wal.begin_group();
            }
            let staged = self.stage_group(&mut g, &payloads, &plan, key, victims);
            g.wal.end_group();
            let ids = staged?;
            if !key.is_empty() {
                if let Some(id) = ids.first() {
                    let until = now_ms.saturating_add(window);
                    g.queues[q].index.dedup_insert(key, id.0, until, now_ms);
                }
            }
            if plan.not_before == 0 && ids.len() == 1 {
                g.queues[q].notify_one();
            } else {
                // Delayed: blocked pops must look at the new earliest due time.
                g.queues[q].notify_all();
            }
            break ids;
        };
        let end = g.wal.next_lsn;
        shared.commit(&mut g, end, durability)?;
        Ok(ids)
    }

    /// Stages what one push call writes (room was made): the dead-lettering of `victims`
    /// oldest waiting messages, then a push record per payload; returns their ids. In a group
    /// (`Wal::begin_group`), the last push closes it.
    fn stage_group<P: AsRef<[u8]>>(
        &self,
        g: &mut MutexGuard<'_, State>,
        payloads: &[P],
        plan: &Planned,
        key: &[u8],
        victims: usize,
    ) -> Result<Vec<MessageId>> {
        let (shared, q) = (&self.core.shared, self.id as usize);
        for _ in 0..victims {
            let Some(victim) = g.queues[q].index.oldest_waiting() else { break };
            if let Some(entry) = g.queues[q].index.remove(victim) {
                jobs::dead_letter(shared, g, self.id, victim, entry, DeadReason::Overflow, "")?;
            }
        }
        let mut ids = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            if i + 1 == payloads.len() {
                g.wal.end_group();
            }
            ids.push(MessageId(self.stage_push(g, p.as_ref(), plan, key)?));
        }
        Ok(ids)
    }

    /// Stages one push record (room was made) and indexes the message; returns its id.
    fn stage_push(
        &self,
        g: &mut MutexGuard<'_, State>,
        payload: &[u8],
        plan: &Planned,
        key: &[u8],
    ) -> Result<u64> {
        let id = g.wal.next_id()?;
        // Always the record with options, for its push time (28 bytes more than a plain
        // `Push`, which older stores hold and recovery still reads): `oldest`, `pushed_at`
        // and the bridge's `x-wharf-pushed-at` know it for every message.
        let body = Body::PushEx {
            queue: self.id,
            id,
            priority: plan.priority,
            not_before: plan.not_before,
            expires: plan.expires,
            pushed: plan.pushed,
            key,
            payload,
        };
        let lsn = g.wal.append(&body).ok_or(Error::NoSpace)?;
        g.wal.log.note_push(lsn);
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let off = u32::try_from(body.payload_offset()).unwrap_or(u32::MAX);
        let entry =
            Entry { lsn, len, off, attempts: 0, priority: plan.priority, expires: plan.expires };
        g.queues[self.id as usize].index.insert(id, entry, plan.not_before);
        Ok(id)
    }

    /// Pops the next ready message if there is one, without waiting: the highest priority
    /// first, the oldest first within a priority.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the message's bytes on disk fail their checksum (it stays leased
    /// and comes back after the visibility timeout); [`Error::Closed`]; [`Error::Poisoned`];
    /// [`Error::NoSpace`]; [`Error::Io`].
    pub fn try_pop(&self) -> Result<Option<Delivery>> {
        self.pop_one_until(Some(self.core.shared.opts.clock.now()))
    }

    /// Pops the next ready message, waiting as long as it takes. The wait is woken by a push,
    /// a nack, a delayed message becoming due or an expiring lease; it never polls.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop(&self) -> Result<Delivery> {
        self.pop_one_until(None)?.ok_or(Error::Closed)
    }

    /// Pops the next ready message, waiting at most `timeout`; `Ok(None)` if none came. A
    /// timeout too long to add to the clock (such as `Duration::MAX`) waits as long as it takes.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        self.pop_one_until(Some(deadline_after(self.core.shared.opts.clock.now(), timeout)))
    }

    /// Pops up to `max` messages: waits at most `timeout` for the first, then takes whatever
    /// else is ready at that moment. An empty vector means none came in time. As for
    /// [`Queue::pop_timeout`], `Duration::MAX` waits as long as it takes.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop_batch(&self, max: usize, timeout: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.pop_many_until(Some(deadline_after(self.core.shared.opts.clock.now(), timeout)), max)
    }

    /// How many messages are ready, delayed and in flight.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn depth(&self) -> Result<Depth> {
        let s = self.stats()?;
        Ok(Depth { ready: s.ready, in_flight: s.in_flight, delayed: s.delayed })
    }

    /// The queue's depth and its counters since the store was opened.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn stats(&self) -> Result<QueueStats> {
        let shared = &self.core.shared;
        let mut g = shared.state.lock();
        if g.closed {
            return Err(Error::Closed);
        }
        let now_ms = jobs::now_ms(shared);
        let qs = &mut g.queues[self.id as usize];
        qs.index.expire(shared.opts.clock.now());
        qs.index.promote(now_ms);
        let c = qs.counters;
        Ok(QueueStats {
            ready: qs.index.ready_len(),
            delayed: qs.index.delayed_len(),
            in_flight: qs.index.leased_len(),
            processed: c.processed,
            failed: c.failed,
            dead_lettered: c.dead_lettered,
            expired: c.expired,
            wakeups: c.wakeups,
        })
    }

    /// The queue's configuration.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn config(&self) -> Result<QueueConfig> {
        let g = self.core.shared.state.lock();
        if g.closed {
            return Err(Error::Closed);
        }
        Ok(g.queues[self.id as usize].config.clone())
    }

    /// Replaces the queue's configuration, durably (a log record, synced before this returns).
    /// It applies to messages already in the queue too, except TTLs, which are fixed at push.
    /// Durations are kept to the millisecond, rounded up; [`Queue::config`] returns them so.
    ///
    /// # Errors
    /// [`Error::InvalidOption`], [`Error::InvalidName`] for a bad dead-letter queue name;
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`].
    pub fn set_config(&self, config: &QueueConfig) -> Result<()> {
        let config = &config.stored()?;
        let shared = &self.core.shared;
        let bytes = config.encode();
        let body = Body::Config { queue: self.id, config: &bytes };
        let len = body.encoded_len();
        let mut g = shared.state.lock();
        g.check()?;
        shared.ensure_room(&mut g, &[len, len], Room::Push)?;
        g.wal.append(&body).ok_or(Error::NoSpace)?;
        g.wal.set_catalog_config(self.id, Some(bytes.into()));
        g.queues[self.id as usize].config = config.clone();
        g.queues[self.id as usize].notify_all();
        let end = g.wal.next_lsn;
        shared.wait_durable(&mut g, end)
    }

    /// The queue this queue's dead letters go to (created if it does not exist yet), or `None`
    /// if its config drops them.
    ///
    /// # Errors
    /// As [`Wharf::queue`].
    pub fn dead_letter_queue(&self) -> Result<Option<Queue>> {
        let name = {
            let g = self.core.shared.state.lock();
            g.check()?;
            jobs::dlq_target(&g, self.id).map(|(name, _)| name)
        };
        match name {
            Some(name) => Wharf { core: Arc::clone(&self.core) }.queue(&name).map(Some),
            None => Ok(None),
        }
    }

    /// The name of the queue this queue's dead letters go to, or `None` if its config drops
    /// them. Unlike [`Queue::dead_letter_queue`] it creates nothing: the queue may not exist yet
    /// (it is created when the first message goes there).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = wharf::Wharf::open(dir.path())?;
    /// let mail = store.queue("mail")?;
    /// assert_eq!(mail.dead_letter_queue_name()?.as_deref(), Some("mail.dlq"));
    /// assert_eq!(store.queue_names(), ["mail"]); // not created
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`].
    pub fn dead_letter_queue_name(&self) -> Result<Option<String>> {
        let g = self.core.shared.state.lock();
        g.check()?;
        Ok(jobs::dlq_target(&g, self.id).map(|(name, _)| name))
    }

    /// Up to `max` waiting messages (ready, then delayed) in the order they would be
    /// delivered, with copies of their payloads, without leasing them. Leased messages are not
    /// listed.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if a payload fails its checksum; [`Error::Closed`]; [`Error::Io`].
    pub fn peek(&self, max: usize) -> Result<Vec<Peeked>> {
        let shared = &self.core.shared;
        let mut found = Vec::new();
        {
            let mut g = shared.state.lock();
            g.check()?;
            let now_ms = jobs::now_ms(shared);
            g.queues[self.id as usize].index.promote(now_ms);
            let waiting = g.queues[self.id as usize].index.waiting(max);
            for w in waiting {
                found.push(self.unloaded(&g, w)?);
            }
        }
        found.into_iter().map(|u| self.load_peeked(u)).collect()
    }

    /// The ids of the waiting messages (ready, then delayed) in the order they would be
    /// delivered: what `peek(usize::MAX)` lists, at 8 bytes a message instead of a copy of each
    /// payload. With [`Queue::peek_id`], a way to walk a long queue a message at a time.
    ///
    /// ```
    /// use wharf::PushOptions;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// let a = q.push(b"a")?;
    /// let b = q.push_with(b"b", PushOptions::new().priority(5))?;
    /// assert_eq!(q.waiting_ids()?, [b, a]);
    /// let m = q.peek_id(a)?.expect("a is waiting");
    /// assert_eq!(m.payload, b"a");
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`].
    pub fn waiting_ids(&self) -> Result<Vec<MessageId>> {
        let shared = &self.core.shared;
        let mut g = shared.state.lock();
        g.check()?;
        let now_ms = jobs::now_ms(shared);
        let index = &mut g.queues[self.id as usize].index;
        index.promote(now_ms);
        Ok(index.waiting_ids().into_iter().map(MessageId).collect())
    }

    /// The waiting message `id` as [`Queue::peek`] shows it, without leasing it; `None` if it
    /// is not waiting in this queue (settled, in flight, or in another queue).
    ///
    /// # Errors
    /// As [`Queue::peek`].
    pub fn peek_id(&self, id: MessageId) -> Result<Option<Peeked>> {
        let shared = &self.core.shared;
        let found = {
            let mut g = shared.state.lock();
            g.check()?;
            let now_ms = jobs::now_ms(shared);
            g.queues[self.id as usize].index.promote(now_ms);
            match g.queues[self.id as usize].index.waiting_one(id.0) {
                Some(w) => Some(self.unloaded(&g, w)?),
                None => None,
            }
        };
        found.map(|u| self.load_peeked(u)).transpose()
    }

    /// The unsettled message pushed first (the smallest id: ready, delayed or in flight), as
    /// [`Queue::peek`] shows it, without leasing it; `None` if the queue is empty. Its
    /// [`pushed_at`](Peeked::pushed_at) gives the age of the queue's oldest message (every push
    /// records its time; only a plain push of an older version did not).
    ///
    /// ```
    /// use wharf::PushOptions;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// let first = q.push_with(b"urgent later", PushOptions::new().priority(1))?;
    /// q.push_with(b"urgent", PushOptions::new().priority(9))?;
    /// let oldest = q.oldest()?.expect("two messages");
    /// assert_eq!(oldest.id, first);
    /// assert!(oldest.pushed_at.is_some()); // every push records its time
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::peek`].
    pub fn oldest(&self) -> Result<Option<Peeked>> {
        let found = {
            let g = self.core.shared.state.lock();
            g.check()?;
            match g.queues[self.id as usize].index.first_pushed() {
                Some(w) => Some(self.unloaded(&g, w)?),
                None => None,
            }
        };
        found.map(|u| self.load_peeked(u)).transpose()
    }

    /// Payload bytes of the queue's unsettled messages (ready, delayed and in flight), record
    /// headers not included. Walks the queue's index: it takes time in proportion to the
    /// messages.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// q.push_batch(["abc", "de"])?;
    /// assert_eq!(q.payload_bytes()?, 5);
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`].
    pub fn payload_bytes(&self) -> Result<u64> {
        let g = self.core.shared.state.lock();
        g.check()?;
        Ok(g.queues[self.id as usize].index.payload_bytes())
    }

    /// Settles every waiting message of the queue (ready or delayed) for good, as an ack
    /// does: one `Ack` record each, written as one group (a crash keeps the whole purge or none
    /// of it), durable when this returns; returns how many. Messages in flight are left to
    /// their consumers.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("jobs")?;
    /// q.push_batch(["a", "b", "c"])?;
    /// let held = q.pop()?;
    /// assert_eq!(q.purge()?, 2);
    /// assert_eq!(q.try_pop()?.map(|d| d.id()), None);
    /// held.ack()?;
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`] (nothing is settled).
    pub fn purge(&self) -> Result<usize> {
        let shared = &self.core.shared;
        let q = self.id as usize;
        let ack_len = Body::Ack { queue: 0, id: 0 }.encoded_len();
        let mut g = shared.state.lock();
        let purged = loop {
            g.check()?;
            let ids: Vec<u64> =
                g.queues[q].index.waiting(usize::MAX).iter().map(|w| w.id).collect();
            if !jobs::room(shared, &mut g, &vec![ack_len; ids.len()], Room::Settle)? {
                continue;
            }
            // One group: a crash keeps the whole purge or none of it.
            if ids.len() > 1 {
                g.wal.begin_group();
            }
            let staged = (|| {
                for (i, &id) in ids.iter().enumerate() {
                    if i + 1 == ids.len() {
                        g.wal.end_group();
                    }
                    if let Some(entry) = g.queues[q].index.remove(id) {
                        jobs::drop_message(shared, &mut g, self.id, id, entry)?;
                    }
                }
                Ok::<_, Error>(())
            })();
            g.wal.end_group();
            staged?;
            break ids.len();
        };
        if purged > 0 {
            let end = g.wal.next_lsn;
            shared.wait_durable(&mut g, end)?;
        }
        Ok(purged)
    }

    /// What `peek` needs of a waiting message under the lock: where its bytes are and its
    /// notes.
    fn unloaded(&self, g: &State, w: Waiting) -> Result<Unloaded> {
        let source = source_of(g, w.id, &w.entry)?;
        let index = &g.queues[self.id as usize].index;
        let note = index.note(w.id).cloned().unwrap_or_default();
        let from = note.origin.and_then(|o| {
            let name = g.queues.get(o as usize)?.name.to_string();
            Some((name, DeadReason::from_code(note.reason)?))
        });
        let last_error = (!note.error.is_empty()).then(|| note.error.to_string());
        Ok(Unloaded {
            taken: Taken { id: w.id, entry: w.entry, source },
            due: w.due,
            from,
            last_error,
        })
    }

    /// Reads and checks a waiting message's push record, outside the lock.
    fn load_peeked(&self, u: Unloaded) -> Result<Peeked> {
        let (id, entry) = (u.taken.id, u.taken.entry);
        let mut meta = PushMeta::default();
        let payload = load_with(u.taken, &self.core.shared, Some(&mut meta))?;
        Ok(Peeked {
            id: MessageId(id),
            payload: payload.bytes().to_vec(),
            attempts: entry.attempts,
            priority: entry.priority,
            due: u.due.map(from_unix_ms),
            dead_lettered_from: u.from,
            last_error: u.last_error,
            pushed_at: (meta.pushed != 0).then(|| from_unix_ms(meta.pushed)),
            expires: (entry.expires != 0).then(|| from_unix_ms(entry.expires)),
            dedup_key: meta.key,
        })
    }

    /// Moves a dead letter of this queue back to the queue it came from, ready at once with
    /// its attempts counted from zero, priority 0 and no TTL (its error text stays behind).
    /// `Ok(false)` if `id` is not a waiting dead letter here.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`].
    pub fn requeue(&self, id: MessageId) -> Result<bool> {
        Ok(self.requeue_where(|m| m == id.0, 1)? == 1)
    }

    /// Moves every waiting dead letter of this queue back to where it came from, as one group
    /// of records (a crash keeps all of the moves or none); returns how many.
    ///
    /// # Errors
    /// As [`Queue::requeue`].
    pub fn requeue_all(&self) -> Result<usize> {
        self.requeue_where(|_| true, usize::MAX)
    }

    fn requeue_where(&self, want: impl Fn(u64) -> bool, max: usize) -> Result<usize> {
        let shared = &self.core.shared;
        let q = self.id as usize;
        let mut g = shared.state.lock();
        let mut moved = 0;
        loop {
            g.check()?;
            let candidates: Vec<(u64, u32)> = g.queues[q]
                .index
                .waiting(usize::MAX)
                .iter()
                .filter(|w| want(w.id))
                .filter_map(|w| Some((w.id, g.queues[q].index.note(w.id)?.origin?)))
                .take(max - moved)
                .collect();
            if candidates.is_empty() {
                break;
            }
            let len = Body::Requeue { queue: 0, id: 0, to: 0 }.encoded_len();
            if !jobs::room(shared, &mut g, &vec![len; candidates.len()], Room::Settle)? {
                continue;
            }
            let candidates: Vec<(u64, u32)> = candidates
                .into_iter()
                .filter(|&(_, to)| g.queues.get(to as usize).is_some())
                .collect();
            // One group: a crash keeps the whole requeue or none of it.
            if candidates.len() > 1 {
                g.wal.begin_group();
            }
            let staged = (|| {
                for (i, &(id, to)) in candidates.iter().enumerate() {
                    if i + 1 == candidates.len() {
                        g.wal.end_group();
                    }
                    let Some(entry) = g.queues[q].index.remove(id) else { continue };
                    let body = Body::Requeue { queue: self.id, id, to };
                    g.wal.append(&body).ok_or(Error::NoSpace)?;
                    g.queues[q].index.take_note(id);
                    let dst = &mut g.queues[to as usize];
                    dst.index.insert(id, Entry { attempts: 0, ..entry }, 0);
                    dst.notify_one();
                    moved += 1;
                }
                Ok::<_, Error>(())
            })();
            g.wal.end_group();
            staged?;
            if moved >= max {
                break;
            }
        }
        if moved > 0 {
            let end = g.wal.next_lsn;
            shared.wait_durable(&mut g, end)?;
        }
        Ok(moved)
    }

    /// Waits until a message is ready or `deadline` passes (forever if `None`); returns the
    /// time it looked, or `None` when the deadline passed first. Sleeps until the earliest of
    /// the deadline, the next lease expiry and the next due time: never on a fixed tick.
    fn wait_ready(
        &self,
        g: &mut MutexGuard<'_, State>,
        deadline: Option<Instant>,
    ) -> Result<Option<Instant>> {
        let shared = &self.core.shared;
        loop {
            g.check()?;
            let now = shared.opts.clock.now();
            let now_ms = jobs::now_ms(shared);
            let index = &mut g.queues[self.id as usize].index;
            index.expire(now);
            index.promote(now_ms);
            if index.ready_len() > 0 {
                return Ok(Some(now));
            }
            if deadline.is_some_and(|d| d <= now) {
                return Ok(None);
            }
            let due = index.next_due().map(|due| {
                deadline_after(now, Duration::from_millis(due.saturating_sub(now_ms).max(1)))
            });
            let wake = [deadline, index.next_deadline(), due].into_iter().flatten().min();
            match wake {
                // A duration on the store's clock, slept in real time: a manual clock that
                // stands still makes the wait last, never spin.
                Some(t) => {
                    self.cv.wait_for(g, t.saturating_duration_since(now).max(MIN_WAIT));
                }
                None => self.cv.wait(g),
            }
            g.queues[self.id as usize].counters.wakeups += 1;
        }
    }

    /// Pops one message, waiting until `deadline` (forever if `None`).
    fn pop_one_until(&self, deadline: Option<Instant>) -> Result<Option<Delivery>> {
        let shared = &self.core.shared;
        let mut g = shared.state.lock();
        let taken = loop {
            let Some(now) = self.wait_ready(&mut g, deadline)? else { return Ok(None) };
            if let Some(t) = self.lease_one(&mut g, now)? {
                break t;
            }
        };
        self.record_deliveries(&mut g)?;
        drop(g);
        self.deliver(taken).map(Some)
    }

    /// Pops up to `max` messages, waiting until `deadline` for the first.
    fn pop_many_until(&self, deadline: Option<Instant>, max: usize) -> Result<Vec<Delivery>> {
        let shared = &self.core.shared;
        let mut g = shared.state.lock();
        let mut taken = Vec::new();
        while taken.is_empty() {
            let Some(now) = self.wait_ready(&mut g, deadline)? else { return Ok(Vec::new()) };
            while taken.len() < max {
                match self.lease_one(&mut g, now)? {
                    Some(t) => taken.push(t),
                    None => break,
                }
            }
        }
        self.record_deliveries(&mut g)?;
        drop(g);
        taken.into_iter().map(|t| self.deliver(t)).collect()
    }

    /// Applies the durability of the delivery records just staged: with
    /// `count_crashed_attempts`, they reach the OS before any payload is handed out.
    pub(crate) fn record_deliveries(&self, g: &mut MutexGuard<'_, State>) -> Result<()> {
        let shared = &self.core.shared;
        let end = g.wal.next_lsn;
        let d = shared.opts.ack_durability;
        if shared.opts.count_crashed_attempts && d != Durability::Immediate {
            shared.wait_written(g, end)?;
        }
        shared.commit(g, end, d)
    }

    /// Leases the next ready message, if any, and stages its delivery record. Expired messages
    /// and messages out of attempts met on the way are dropped or dead-lettered (each with its
    /// record) instead.
    pub(crate) fn lease_one(
        &self,
        g: &mut MutexGuard<'_, State>,
        now: Instant,
    ) -> Result<Option<Taken>> {
        let shared = &self.core.shared;
        let q = self.id as usize;
        loop {
            g.check()?;
            let now_ms = jobs::now_ms(shared);
            g.queues[q].index.promote(now_ms);
            let Some((id, entry)) = g.queues[q].index.head() else { return Ok(None) };
            let cfg = &g.queues[q].config;
            let expired = entry.expires != 0 && entry.expires <= now_ms;
            let exhausted = cfg.max_attempts.is_some_and(|m| entry.attempts >= m);
            if expired || exhausted {
                let to_dlq = !expired || cfg.on_expiry == OnExpiry::DeadLetter;
                let error =
                    g.queues[q].index.note(id).map(|n| n.error.to_string()).unwrap_or_default();
                let lens = if to_dlq {
                    jobs::dead_letter_lens(g, self.id, &error)
                } else {
                    vec![Body::Ack { queue: 0, id: 0 }.encoded_len()]
                };
                if !jobs::room(shared, g, &lens, Room::Settle)? {
                    continue;
                }
                let Some(entry) = g.queues[q].index.remove(id) else { continue };
                if expired {
                    g.queues[q].counters.expired += 1;
                }
                if to_dlq {
                    let why = if expired { DeadReason::Expired } else { DeadReason::MaxAttempts };
                    jobs::dead_letter(shared, g, self.id, id, entry, why, &error)?;
                } else {
                    jobs::drop_message(shared, g, self.id, id, entry)?;
                }
                continue;
            }
            let visibility = cfg.visibility_timeout.unwrap_or(shared.opts.visibility_timeout);
            if !jobs::room(shared, g, &[DELIVER_LEN], Room::Settle)? {
                continue;
            }
            let Some(entry) = g.queues[q].index.lease(id, now, visibility) else { continue };
            let body = Body::Deliver { queue: self.id, id, attempt: entry.attempts };
            g.wal.append(&body).ok_or(Error::NoSpace)?;
            let source = source_of(g, id, &entry)?;
            return Ok(Some(Taken { id, entry, source }));
        }
    }

    /// Reads and checks a leased message's payload and wraps it in a `Delivery`.
    pub(crate) fn deliver(&self, t: Taken) -> Result<Delivery> {
        let (id, entry) = (t.id, t.entry);
        let mut meta = PushMeta::default();
        let payload = load_with(t, &self.core.shared, Some(&mut meta))?;
        let core = Arc::clone(&self.core);
        Ok(Delivery::new(core, self.id, id, entry.attempts, payload, meta.pushed))
    }
}

/// Where the bytes of a message's push record are: its segment, or a copy of bytes not yet
/// written.
fn source_of(g: &State, id: u64, entry: &Entry) -> Result<Source> {
    let rec_len = entry.record_len();
    let source = if entry.lsn == RELOCATED {
        g.wal
            .log
            .relocated
            .get(&id)
            .map(|row| Source::Relocated { crc: row.crc, pushed: row.pushed })
    } else if entry.lsn + rec_len as u64 <= g.wal.written {
        g.wal.log.segment_of(entry.lsn).map(|s| Source::Segment(Arc::clone(s)))
    } else {
        g.wal.copy_unwritten(entry.lsn, rec_len).map(Source::Copied)
    };
    source.ok_or_else(|| Error::Internal(format!("message {id:x} has no bytes in the log")))
}

/// The shortest sleep of a blocked pop, so that a wake time that is due now cannot spin.
const MIN_WAIT: Duration = Duration::from_micros(100);

/// Length of a `Deliver` record.
const DELIVER_LEN: usize = crate::record::RECORD_HEADER_LEN + 16;

/// What a push record says besides the payload: its wall-clock time (0: not recorded) and
/// dedup key.
#[derive(Default)]
struct PushMeta {
    pushed: u64,
    key: Option<Vec<u8>>,
}

/// Reads and checks the push record of a taken message, and returns its payload, also filling
/// in `meta` from the push record when asked.
fn load_with(t: Taken, shared: &Shared, mut meta: Option<&mut PushMeta>) -> Result<Payload> {
    let rec_len = t.entry.record_len();
    let off = t.entry.off as usize;
    let lsn = t.entry.lsn;
    let mut check = |bytes: &[u8], seg: Option<&Segment>| -> Result<()> {
        let fail = |why: &str| {
            let (file, offset) =
                seg.map_or_else(Default::default, |s| (s.path.clone(), lsn - s.base));
            Error::Corrupted(crate::error::Corruption { file, offset, reason: why.into() })
        };
        match record::decode(bytes, lsn) {
            // Ids are unique in the store; a dead letter's record names the queue it was pushed to.
            Ok(r) if matches!(r.body, Body::Push { id, .. } | Body::PushEx { id, .. } if id == t.id) =>
            {
                if let (Some(m), Body::PushEx { pushed, key, .. }) = (meta.as_deref_mut(), r.body) {
                    m.pushed = pushed;
                    m.key = (!key.is_empty()).then(|| key.to_vec());
                }
                Ok(())
            }
            Ok(_) => Err(fail("a different record where a message was expected")),
            Err(e) => Err(fail(e.describe())),
        }
    };
    match t.source {
        Source::Segment(seg) => {
            let start = usize::try_from(lsn - seg.base).unwrap_or(usize::MAX);
            let in_map = seg.mapped().and_then(|m| m.get(start..start.saturating_add(rec_len)));
            if let Some(bytes) = in_map {
                check(bytes, Some(&seg))?;
                Ok(Payload::Mapped {
                    seg: Arc::clone(&seg),
                    start: start + off,
                    len: t.entry.len as usize,
                })
            } else {
                let bytes = seg.read(lsn, rec_len)?;
                check(&bytes, Some(&seg))?;
                Ok(Payload::Owned { bytes, start: off })
            }
        }
        Source::Copied(bytes) => {
            check(&bytes, None)?;
            Ok(Payload::Owned { bytes, start: off })
        }
        Source::Relocated { crc, pushed } => {
            if let Some(m) = meta {
                m.pushed = pushed;
            }
            let db = shared.state_db()?;
            let bytes = db.payload(t.id, crc, t.entry.len).inspect_err(|e| {
                if matches!(e, Error::Io(_)) {
                    shared.state_db_failed(&db, false);
                }
            })?;
            Ok(Payload::Owned { bytes, start: 0 })
        }
    }
}
