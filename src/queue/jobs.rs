//! Job semantics on top of the log: dead-lettering, dropping, queue creation, and the clock
//! readings they need. Every function here runs under the store's mutex and stages the one
//! log record that makes its change durable, in the same step as the index change.
//!
//! Invariant: a message leaves a queue only by a record naming it (`Ack`, `DeadLetter`,
//! `Requeue`); a move between queues is one record, so a crash never leaves it in both or
//! neither.

use std::sync::Arc;

use parking_lot::MutexGuard;

use super::index::{Entry, Note};
use crate::config::DeadLetters;
use crate::error::{Error, Result};
use crate::limits::{clip, default_dlq_name};
use crate::log::Room;
use crate::record::{Body, RECORD_HEADER_LEN};
use crate::store::{QueueState, Shared, State};

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

/// Where queue `q`'s dead letters go: `Some((name, existing id))`, or `None` to drop them.
pub(crate) fn dlq_target(g: &State, q: u32) -> Option<(String, Option<u32>)> {
    let qs = g.queues.get(q as usize)?;
    let name = match &qs.config.dead_letters {
        DeadLetters::Default => default_dlq_name(&qs.name),
        DeadLetters::To(n) => n.clone(),
        DeadLetters::Drop => return None,
    };
    if *name == *qs.name {
        return None;
    }
    let id = g.names.get(name.as_str()).copied();
    Some((name, id))
}

/// Record lengths a dead-lettering of queue `q` with `error` needs: the `DeadLetter` (or the
/// `Ack` that drops it) and, if the dead-letter queue does not exist yet, its catalog record
/// (twice: once in the log, once more in each later preamble).
pub(crate) fn dead_letter_lens(g: &State, q: u32, error: &str) -> Vec<usize> {
    match dlq_target(g, q) {
        None => vec![Body::Ack { queue: q, id: 0 }.encoded_len()],
        Some((name, existing)) => {
            let mut v = vec![RECORD_HEADER_LEN + 20 + clip(error).len()];
            if existing.is_none() {
                let len = Body::Queue { queue: 0, name: name.as_bytes() }.encoded_len();
                v.extend([len, len]);
            }
            v
        }
    }
}

/// Ensures room for records of `lens`; `Ok(false)` when the lock had to be released to make
/// it, so that the caller must look at the state again.
pub(crate) fn room(
    shared: &Shared,
    g: &mut MutexGuard<'_, State>,
    lens: &[usize],
    room: Room,
) -> Result<bool> {
    if g.wal.fits(lens, room) {
        return Ok(true);
    }
    shared.ensure_room(g, lens, room)?;
    Ok(false)
}

/// Creates queue `name` (room for its record was made); returns its id.
pub(crate) fn create_queue(g: &mut MutexGuard<'_, State>, name: &str) -> Result<u32> {
    if let Some(&id) = g.names.get(name) {
        return Ok(id);
    }
    let id = u32::try_from(g.queues.len())
        .map_err(|_| Error::InvalidOption("too many queues".into()))?;
    g.wal.append(&Body::Queue { queue: id, name: name.as_bytes() }).ok_or(Error::NoSpace)?;
    g.wal.add_to_catalog(name);
    let name: Arc<str> = name.into();
    g.names.insert(Arc::clone(&name), id);
    g.queues.push(QueueState::new(name, Default::default(), Default::default()));
    Ok(id)
}

/// Settles message `id` of queue `q` for good with an `Ack` record: it was already taken out
/// of the index (`entry`).
pub(crate) fn drop_message(
    shared: &Shared,
    g: &mut MutexGuard<'_, State>,
    q: u32,
    id: u64,
    entry: Entry,
) -> Result<()> {
    let body = Body::Ack { queue: q, id };
    let lsn = g.wal.append(&body).ok_or(Error::NoSpace)?;
    let end = lsn + body.encoded_len() as u64;
    if let Some(qs) = g.queues.get_mut(q as usize) {
        qs.index.forget(id);
    }
    if g.wal.log.note_settled(entry.lsn, end) {
        g.wal.maybe_delete = true;
        shared.bg_cv.notify_one();
    }
    Ok(())
}

/// Moves message `id` (already taken out of queue `q`'s index as `entry`) to the queue's
/// dead-letter queue with one `DeadLetter` record, or drops it if the queue has none. Room
/// for [`dead_letter_lens`] was made.
pub(crate) fn dead_letter(
    shared: &Shared,
    g: &mut MutexGuard<'_, State>,
    q: u32,
    id: u64,
    entry: Entry,
    reason: DeadReason,
    error: &str,
) -> Result<()> {
    let error = clip(error);
    if let Some(qs) = g.queues.get_mut(q as usize) {
        qs.counters.dead_lettered += 1;
    }
    let Some((name, existing)) = dlq_target(g, q) else {
        return drop_message(shared, g, q, id, entry);
    };
    let to = match existing {
        Some(to) => to,
        None => create_queue(g, &name)?,
    };
    let body =
        Body::DeadLetter { queue: q, id, to, reason: reason.code(), error: error.as_bytes() };
    g.wal.append(&body).ok_or(Error::NoSpace)?;
    if let Some(qs) = g.queues.get_mut(q as usize) {
        qs.index.forget(id);
    }
    if let Some(dst) = g.queues.get_mut(to as usize) {
        dst.index.insert(id, Entry { expires: 0, priority: 0, ..entry }, 0);
        let note = Note { origin: Some(q), reason: reason.code(), error: error.into() };
        dst.index.set_note(id, note);
        dst.notify_one();
    }
    Ok(())
}
