//! The public handles: `Wharf` (an open store) and `Queue` (one named queue in it).
//!
//! Invariant: holds no file handles itself; every state change goes through one log record
//! staged under the store's mutex, in the same order as the index changes it makes.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, MutexGuard};

use crate::commit::{Room, Stats};
use crate::error::{Error, Result};
use crate::index::Entry;
use crate::lease::{Delivery, Payload};
use crate::options::{Durability, Options, WharfBuilder};
use crate::record::{self, Body, PUSH_OVERHEAD};
use crate::recovery::RecoveryReport;
use crate::segment::Segment;
use crate::storage::RealFs;
#[cfg(feature = "testing")]
use crate::store::Shared;
use crate::store::{Core, QueueState, State};

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

/// Options of one push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct PushOptions {
    durability: Option<Durability>,
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
}

/// How many messages a queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Depth {
    /// Messages that can be popped now.
    pub ready: usize,
    /// Messages popped and not yet settled, whose lease has not run out.
    pub in_flight: usize,
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
    /// and offset) for damage below the durable end of the log; [`Error::UnsupportedVersion`],
    /// [`Error::ForeignSegment`]; [`Error::Io`].
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
        shared.ensure_room(&mut g, &[len], Room::Push)?;
        if let Some(&id) = g.names.get(name) {
            return Ok(self.handle(&g, id));
        }
        let id = u32::try_from(g.queues.len())
            .map_err(|_| Error::InvalidOption("too many queues".into()))?;
        g.wal.append(&Body::Queue { queue: id, name: name.as_bytes() }).ok_or(Error::NoSpace)?;
        g.wal.add_to_catalog(name);
        let name: Arc<str> = name.into();
        g.names.insert(Arc::clone(&name), id);
        g.queues.push(QueueState { name, index: Default::default(), cv: Arc::new(Condvar::new()) });
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
    core: Arc<Core>,
    id: u32,
    name: Arc<str>,
    cv: Arc<Condvar>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A leased message taken under the lock, before its payload is read.
struct Taken {
    id: u64,
    entry: Entry,
    source: Source,
}

enum Source {
    Segment(Arc<Segment>),
    Copied(Vec<u8>),
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
    /// [`Error::PayloadTooLarge`]; [`Error::NoSpace`] (nothing was stored); [`Error::Closed`];
    /// [`Error::Poisoned`] (the message may or may not be stored).
    pub fn push(&self, payload: impl AsRef<[u8]>) -> Result<MessageId> {
        self.push_with(payload, PushOptions::new())
    }

    /// Pushes one message with options.
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
    /// As [`Queue::push`].
    pub fn push_with(&self, payload: impl AsRef<[u8]>, opts: PushOptions) -> Result<MessageId> {
        let payload = payload.as_ref();
        let shared = &self.core.shared;
        let len = self.record_len(payload)?;
        let mut g = shared.state.lock();
        shared.ensure_room(&mut g, &[len], Room::Push)?;
        let id = self.stage_push(&mut g, payload)?;
        self.cv.notify_one();
        let end = g.wal.next_lsn;
        shared.commit(&mut g, end, opts.durability.unwrap_or(shared.opts.push_durability))?;
        Ok(MessageId(id))
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

    /// [`Queue::push_batch`] with options.
    ///
    /// # Errors
    /// As [`Queue::push`].
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
        let lens =
            payloads.iter().map(|p| self.record_len(p.as_ref())).collect::<Result<Vec<_>>>()?;
        let mut g = shared.state.lock();
        shared.ensure_room(&mut g, &lens, Room::Push)?;
        let mut ids = Vec::with_capacity(payloads.len());
        for p in &payloads {
            ids.push(MessageId(self.stage_push(&mut g, p.as_ref())?));
        }
        self.cv.notify_all();
        let end = g.wal.next_lsn;
        shared.commit(&mut g, end, opts.durability.unwrap_or(shared.opts.push_durability))?;
        Ok(ids)
    }

    /// The length of the push record for `payload`, if the payload is not too large.
    fn record_len(&self, payload: &[u8]) -> Result<usize> {
        let max = self.core.shared.opts.max_payload;
        if payload.len() > max {
            return Err(Error::PayloadTooLarge { len: payload.len(), max });
        }
        Ok(PUSH_OVERHEAD + payload.len())
    }

    /// Stages one push record (room was made) and makes the message ready; returns its id.
    fn stage_push(&self, g: &mut MutexGuard<'_, State>, payload: &[u8]) -> Result<u64> {
        let id = g.wal.next_id()?;
        let body = Body::Push { queue: self.id, id, payload };
        let lsn = g.wal.append(&body).ok_or(Error::NoSpace)?;
        g.wal.log.note_push(lsn);
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let entry = Entry { lsn, len, attempts: 0 };
        g.queues[self.id as usize].index.insert(id, entry);
        Ok(id)
    }

    /// Pops the oldest ready message if there is one, without waiting.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the message's bytes on disk fail their checksum (it stays leased
    /// and comes back after the visibility timeout); [`Error::Closed`]; [`Error::Poisoned`];
    /// [`Error::NoSpace`]; [`Error::Io`].
    pub fn try_pop(&self) -> Result<Option<Delivery>> {
        self.pop_one_until(Some(self.core.shared.opts.clock.now()))
    }

    /// Pops the oldest ready message, waiting as long as it takes. The wait is woken by a
    /// push, a nack or an expiring lease; it never polls.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop(&self) -> Result<Delivery> {
        self.pop_one_until(None)?.ok_or(Error::Closed)
    }

    /// Pops the oldest ready message, waiting at most `timeout`; `Ok(None)` if none came.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        self.pop_one_until(Some(self.core.shared.opts.clock.now() + timeout))
    }

    /// Pops up to `max` messages: waits at most `timeout` for the first, then takes whatever
    /// else is ready at that moment. An empty vector means none came in time.
    ///
    /// # Errors
    /// As [`Queue::try_pop`].
    pub fn pop_batch(&self, max: usize, timeout: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.pop_many_until(Some(self.core.shared.opts.clock.now() + timeout), max)
    }

    /// How many messages are ready and in flight.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn depth(&self) -> Result<Depth> {
        let mut g = self.core.shared.state.lock();
        if g.closed {
            return Err(Error::Closed);
        }
        let q = &mut g.queues[self.id as usize].index;
        q.expire(self.core.shared.opts.clock.now());
        Ok(Depth { ready: q.ready_len(), in_flight: q.leased_len() })
    }

    /// Waits until a message is ready or `deadline` passes (forever if `None`); returns the
    /// time it looked, or `None` when the deadline passed first.
    fn wait_ready(
        &self,
        g: &mut MutexGuard<'_, State>,
        deadline: Option<Instant>,
    ) -> Result<Option<Instant>> {
        loop {
            g.check()?;
            let now = self.core.shared.opts.clock.now();
            let index = &mut g.queues[self.id as usize].index;
            index.expire(now);
            if index.ready_len() > 0 {
                return Ok(Some(now));
            }
            if deadline.is_some_and(|d| d <= now) {
                return Ok(None);
            }
            let wake = match (deadline, index.next_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wake {
                Some(t) => {
                    self.cv.wait_until(g, t);
                }
                None => self.cv.wait(g),
            }
        }
    }

    /// Pops one message, waiting until `deadline` (forever if `None`).
    fn pop_one_until(&self, deadline: Option<Instant>) -> Result<Option<Delivery>> {
        let shared = &self.core.shared;
        let mut g = shared.state.lock();
        let taken = loop {
            let Some(now) = self.wait_ready(&mut g, deadline)? else { return Ok(None) };
            shared.ensure_room(&mut g, &[DELIVER_LEN], Room::Settle)?;
            if let Some(t) = self.lease_one(&mut g, now)? {
                break t;
            }
        };
        let end = g.wal.next_lsn;
        shared.commit(&mut g, end, shared.opts.ack_durability)?;
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
            let n = max.min(g.queues[self.id as usize].index.ready_len());
            shared.ensure_room(&mut g, &vec![DELIVER_LEN; n], Room::Settle)?;
            while taken.len() < n {
                match self.lease_one(&mut g, now)? {
                    Some(t) => taken.push(t),
                    None => break,
                }
            }
        }
        let end = g.wal.next_lsn;
        shared.commit(&mut g, end, shared.opts.ack_durability)?;
        drop(g);
        taken.into_iter().map(|t| self.deliver(t)).collect()
    }

    /// Leases the oldest ready message, if any, and stages its delivery record (room for it
    /// was made).
    fn lease_one(&self, g: &mut MutexGuard<'_, State>, now: Instant) -> Result<Option<Taken>> {
        let visibility = self.core.shared.opts.visibility_timeout;
        let Some((id, entry)) = g.queues[self.id as usize].index.lease_next(now, visibility) else {
            return Ok(None);
        };
        let body = Body::Deliver { queue: self.id, id, attempt: entry.attempts };
        g.wal.append(&body).ok_or(Error::NoSpace)?;
        let rec_len = PUSH_OVERHEAD + entry.len as usize;
        let source = if entry.lsn + rec_len as u64 <= g.wal.written {
            g.wal.log.segment_of(entry.lsn).map(|s| Source::Segment(Arc::clone(s)))
        } else {
            g.wal.copy_unwritten(entry.lsn, rec_len).map(Source::Copied)
        };
        let source = source.ok_or_else(|| {
            Error::Io(std::io::Error::other(format!("message {id:x} has no bytes in the log")))
        })?;
        Ok(Some(Taken { id, entry, source }))
    }

    /// Reads and checks a leased message's payload and wraps it in a `Delivery`.
    fn deliver(&self, t: Taken) -> Result<Delivery> {
        let (id, attempt) = (t.id, t.entry.attempts);
        let payload = load(t, self.id)?;
        Ok(Delivery::new(Arc::clone(&self.core), self.id, id, attempt, payload))
    }
}

/// Length of a `Deliver` record.
const DELIVER_LEN: usize = crate::record::RECORD_HEADER_LEN + 16;

/// Reads and checks the push record of a taken message, and returns its payload.
fn load(t: Taken, queue: u32) -> Result<Payload> {
    let rec_len = PUSH_OVERHEAD + t.entry.len as usize;
    let lsn = t.entry.lsn;
    let check = |bytes: &[u8], seg: Option<&Segment>| -> Result<()> {
        let fail = |why: &str| {
            let (file, offset) =
                seg.map_or_else(Default::default, |s| (s.path.clone(), lsn - s.base));
            Error::Corrupted(crate::error::Corruption { file, offset, reason: why.into() })
        };
        match record::decode(bytes, lsn) {
            Ok(r) if matches!(r.body, Body::Push { queue: q, id, .. } if q == queue && id == t.id) => {
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
                    start: start + PUSH_OVERHEAD,
                    len: t.entry.len as usize,
                })
            } else {
                let bytes = seg.read(lsn, rec_len)?;
                check(&bytes, Some(&seg))?;
                Ok(Payload::Owned { bytes, start: PUSH_OVERHEAD })
            }
        }
        Source::Copied(bytes) => {
            check(&bytes, None)?;
            Ok(Payload::Owned { bytes, start: PUSH_OVERHEAD })
        }
    }
}
