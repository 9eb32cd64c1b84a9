//! Administration and inspection: counters, configuration, peeking without leasing, purging,
//! moving dead letters back, and creating queues.

use std::sync::Arc;

use super::payload::{load_with, source_of, PushMeta, Taken};
use super::run::RunWant;
use super::settle::{create_queue, dlq_target, drop_message};
use super::target::QueueRef;
use super::types::{DeadReason, MessageId, Peeked, QueueStats};
use super::{Entry, Waiting};
use crate::clock::from_unix_ms;
use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::limits::valid_name;
use crate::log::Room;
use crate::record::Body;
use crate::store::{Core, State};

/// A waiting message `peek` found under the lock, before its payload is read.
struct Unloaded {
    taken: Taken,
    due: Option<u64>,
    from: Option<(String, DeadReason)>,
    last_error: Option<String>,
}

/// The queue's depth and its counters since the store was opened.
///
/// # Errors
/// [`Error::Closed`].
pub(crate) fn stats(queue: &QueueRef) -> Result<QueueStats> {
    let shared = queue.shared();
    let mut g = shared.lock();
    if g.is_closed() {
        return Err(Error::Closed);
    }
    let now_ms = shared.now_ms();
    let qs = g.queue_mut(queue.id());
    qs.index_mut().expire(shared.opts().clock.now());
    qs.index_mut().promote(now_ms);
    let c = qs.counters();
    Ok(QueueStats {
        ready: qs.index_mut().ready_len(),
        delayed: qs.index_mut().delayed_len(),
        in_flight: qs.index_mut().leased_len(),
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
pub(crate) fn config(queue: &QueueRef) -> Result<QueueConfig> {
    let g = queue.shared().lock();
    if g.is_closed() {
        return Err(Error::Closed);
    }
    Ok(g.queue(queue.id()).config().clone())
}

/// Replaces the queue's configuration, durably (a log record, synced before this returns).
/// It applies to messages already in the queue too, except TTLs, which are fixed at push.
/// Durations are kept to the millisecond, rounded up; [`Queue::config`] returns them so.
///
/// # Errors
/// [`Error::InvalidOption`], [`Error::InvalidName`] for a bad dead-letter queue name;
/// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`].
pub(crate) fn set_config(queue: &QueueRef, config: &QueueConfig) -> Result<()> {
    let config = &config.stored()?;
    let shared = queue.shared();
    let bytes = config.encode();
    let body = Body::Config { queue: queue.id(), config: &bytes };
    let len = body.encoded_len();
    let mut g = shared.lock();
    g.check()?;
    shared.reserve(&mut g, &[len, len], Room::Push)?;
    g.wal_mut().append(&body).ok_or_else(Error::no_space)?;
    g.wal_mut().set_catalog_config(queue.id(), Some(bytes.into()));
    g.queue_mut(queue.id()).set_config(config.clone());
    g.queue_mut(queue.id()).notify_all();
    shared.sync(&mut g)
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
pub(crate) fn dead_letter_queue_name(queue: &QueueRef) -> Result<Option<String>> {
    let g = queue.shared().lock();
    g.check()?;
    Ok(dlq_target(&g, queue.id()).map(|(name, _)| name))
}

/// Up to `max` waiting messages (ready, then delayed) in the order they would be
/// delivered, with copies of their payloads, without leasing them. Leased messages are not
/// listed.
///
/// # Errors
/// [`Error::Corrupted`] if a payload fails its checksum; [`Error::Closed`]; [`Error::Io`].
pub(crate) fn peek(queue: &QueueRef, max: usize) -> Result<Vec<Peeked>> {
    let shared = queue.shared();
    let mut found = Vec::new();
    {
        let mut g = shared.lock();
        g.check()?;
        let now_ms = shared.now_ms();
        g.queue_mut(queue.id()).index_mut().promote(now_ms);
        g.fill(queue.id(), RunWant::Count(max))?;
        let waiting = g.queue_mut(queue.id()).index_mut().waiting(max);
        for w in waiting {
            found.push(unloaded(queue, &g, w)?);
        }
    }
    found.into_iter().map(|u| load_peeked(queue, u)).collect()
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
pub(crate) fn waiting_ids(queue: &QueueRef) -> Result<Vec<MessageId>> {
    let shared = queue.shared();
    let mut g = shared.lock();
    g.check()?;
    let now_ms = shared.now_ms();
    g.queue_mut(queue.id()).index_mut().promote(now_ms);
    g.fill(queue.id(), RunWant::All)?;
    Ok(g.queue(queue.id()).index().waiting_ids().into_iter().map(MessageId).collect())
}

/// The waiting message `id` as [`Queue::peek`] shows it, without leasing it; `None` if it
/// is not waiting in this queue (settled, in flight, or in another queue).
///
/// # Errors
/// As [`Queue::peek`].
pub(crate) fn peek_id(queue: &QueueRef, id: MessageId) -> Result<Option<Peeked>> {
    let shared = queue.shared();
    let found = {
        let mut g = shared.lock();
        g.check()?;
        let now_ms = shared.now_ms();
        g.queue_mut(queue.id()).index_mut().promote(now_ms);
        g.fill(queue.id(), RunWant::Id(id.0))?;
        match g.queue_mut(queue.id()).index_mut().waiting_one(id.0) {
            Some(w) => Some(unloaded(queue, &g, w)?),
            None => None,
        }
    };
    found.map(|u| load_peeked(queue, u)).transpose()
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
pub(crate) fn oldest(queue: &QueueRef) -> Result<Option<Peeked>> {
    let found = {
        let mut g = queue.shared().lock();
        g.check()?;
        g.fill(queue.id(), RunWant::First)?;
        match g.queue(queue.id()).index().first_pushed() {
            Some(w) => Some(unloaded(queue, &g, w)?),
            None => None,
        }
    };
    found.map(|u| load_peeked(queue, u)).transpose()
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
pub(crate) fn payload_bytes(queue: &QueueRef) -> Result<u64> {
    let g = queue.shared().lock();
    g.check()?;
    Ok(g.queue(queue.id()).index().payload_bytes())
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
pub(crate) fn purge(queue: &QueueRef) -> Result<usize> {
    let shared = queue.shared();
    let q = queue.id();
    let ack_len = Body::Ack { queue: 0, id: 0 }.encoded_len();
    let mut g = shared.lock();
    let purged = loop {
        g.check()?;
        g.fill(q, RunWant::All)?;
        let ids: Vec<u64> =
            g.queue_mut(q).index_mut().waiting(usize::MAX).iter().map(|w| w.id).collect();
        if !shared.reserve(&mut g, &vec![ack_len; ids.len()], Room::Settle)? {
            continue;
        }
        // One group: a crash keeps the whole purge or none of it.
        if ids.len() > 1 {
            g.wal_mut().begin_group();
        }
        let staged = (|| {
            for (i, &id) in ids.iter().enumerate() {
                if i + 1 == ids.len() {
                    g.wal_mut().end_group();
                }
                if let Some(entry) = g.queue_mut(q).index_mut().remove(id) {
                    drop_message(shared, &mut g, queue.id(), id, entry)?;
                }
            }
            Ok::<_, Error>(())
        })();
        g.wal_mut().end_group();
        staged?;
        break ids.len();
    };
    if purged > 0 {
        shared.sync(&mut g)?;
    }
    Ok(purged)
}

/// What `peek` needs of a waiting message under the lock: where its bytes are and its
/// notes.
fn unloaded(queue: &QueueRef, g: &State, w: Waiting) -> Result<Unloaded> {
    let source = source_of(g, w.id, &w.entry)?;
    let index = g.queue(queue.id()).index();
    let note = index.note(w.id).cloned().unwrap_or_default();
    let from = note.origin.and_then(|o| {
        let name = g.get_queue(o)?.name().to_string();
        Some((name, DeadReason::from_code(note.reason)?))
    });
    let last_error = (!note.error.is_empty()).then(|| note.error.to_string());
    Ok(Unloaded { taken: Taken { id: w.id, entry: w.entry, source }, due: w.due, from, last_error })
}

/// Reads and checks a waiting message's push record, outside the lock.
fn load_peeked(queue: &QueueRef, u: Unloaded) -> Result<Peeked> {
    let (id, entry) = (u.taken.id, u.taken.entry);
    let mut meta = PushMeta::default();
    let payload = load_with(u.taken, queue.shared(), Some(&mut meta))?;
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

pub(crate) fn requeue_where(
    queue: &QueueRef,
    want: impl Fn(u64) -> bool,
    max: usize,
) -> Result<usize> {
    let shared = queue.shared();
    let q = queue.id();
    let mut g = shared.lock();
    let mut moved = 0;
    loop {
        g.check()?;
        let candidates: Vec<(u64, u32)> = g
            .queue_mut(q)
            .index_mut()
            .waiting(usize::MAX)
            .iter()
            .filter(|w| want(w.id))
            .filter_map(|w| Some((w.id, g.queue_mut(q).index_mut().note(w.id)?.origin?)))
            .take(max - moved)
            .collect();
        if candidates.is_empty() {
            break;
        }
        let len = Body::Requeue { queue: 0, id: 0, to: 0 }.encoded_len();
        if !shared.reserve(&mut g, &vec![len; candidates.len()], Room::Settle)? {
            continue;
        }
        let candidates: Vec<(u64, u32)> =
            candidates.into_iter().filter(|&(_, to)| g.get_queue(to).is_some()).collect();
        // One group: a crash keeps the whole requeue or none of it.
        if candidates.len() > 1 {
            g.wal_mut().begin_group();
        }
        let staged = (|| {
            for (i, &(id, to)) in candidates.iter().enumerate() {
                if i + 1 == candidates.len() {
                    g.wal_mut().end_group();
                }
                let Some(entry) = g.queue_mut(q).index_mut().remove(id) else { continue };
                let body = Body::Requeue { queue: queue.id(), id, to };
                g.wal_mut().append(&body).ok_or_else(Error::no_space)?;
                g.queue_mut(q).index_mut().take_note(id);
                let dst = &mut g.queue_mut(to);
                dst.index_mut().insert(id, Entry { attempts: 0, ..entry }, 0);
                dst.notify_one();
                moved += 1;
            }
            Ok::<_, Error>(())
        })();
        g.wal_mut().end_group();
        staged?;
        if moved >= max {
            break;
        }
    }
    if moved > 0 {
        shared.sync(&mut g)?;
    }
    Ok(moved)
}

/// The queue named `name` of the store `core`, created (durably) if it does not exist yet.
pub(crate) fn open_queue(core: &Arc<Core>, name: &str) -> Result<QueueRef> {
    if !valid_name(name) {
        return Err(Error::InvalidName(name.to_owned()));
    }
    let shared = core.shared();
    let mut g = shared.lock();
    g.check()?;
    if let Some(id) = g.queue_id(name) {
        return Ok(target(core, &g, id));
    }
    let len = Body::Queue { queue: 0, name: name.as_bytes() }.encoded_len();
    if (g.wal().preamble_len() + len) as u64 > shared.opts().segment_bytes / 4 {
        return Err(Error::InvalidOption(format!(
            "too many queues for segments of {} bytes",
            shared.opts().segment_bytes
        )));
    }
    // Its record, and the same again in every later segment's preamble.
    shared.reserve(&mut g, &[len, len], Room::Push)?;
    let id = create_queue(&mut g, name)?;
    shared.sync(&mut g)?;
    Ok(target(core, &g, id))
}

fn target(core: &Arc<Core>, g: &State, id: u32) -> QueueRef {
    let q = g.queue(id);
    QueueRef::new(Arc::clone(core), id, Arc::clone(q.name()), Arc::clone(q.cv()))
}
