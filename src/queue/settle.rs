//! Settling: a message leaves its queue only by a record naming it. Acks, nacks and retries,
//! dead-lettering (to the queue's dead-letter queue, created on first use) and dropping, each
//! staged under the store's mutex in the same step as the index change.
//!
//! Invariant: a message leaves a queue only by a record naming it (`Ack`, `DeadLetter`,
//! `Requeue`); a move between queues is one record, so a crash never leaves it in both or
//! neither.

use parking_lot::MutexGuard;

use super::index::{Entry, Note};
use crate::clock::millis;
use crate::config::DeadLetters;
use crate::error::{Error, Result};
use crate::limits::{clip, default_dlq_name};
use crate::log::Room;
use crate::options::Durability;
use crate::record::{Body, Ids, MAX_ACKS};
use crate::store::{Shared, State};

use super::types::{AckReport, DeadReason, MessageId, NackOptions};

/// Where queue `q`'s dead letters go: `Some((name, existing id))`, or `None` to drop them.
pub(crate) fn dlq_target(g: &State, q: u32) -> Option<(String, Option<u32>)> {
    let qs = g.get_queue(q)?;
    let name = match &qs.config().dead_letters {
        DeadLetters::Default => default_dlq_name(qs.name()),
        DeadLetters::To(n) => n.clone(),
        DeadLetters::Drop => return None,
    };
    if *name == **qs.name() {
        return None;
    }
    let id = g.queue_id(&name);
    Some((name, id))
}

/// Record lengths a dead-lettering of queue `q` with `error` needs: the `DeadLetter` (or the
/// `Ack` that drops it) and, if the dead-letter queue does not exist yet, its catalog record
/// (twice: once in the log, once more in each later preamble).
pub(crate) fn dead_letter_lens(g: &State, q: u32, error: &str) -> Vec<usize> {
    match dlq_target(g, q) {
        None => vec![Body::Ack { queue: q, id: 0 }.encoded_len()],
        Some((name, existing)) => {
            let error = clip(error).as_bytes();
            let mut v =
                vec![Body::DeadLetter { queue: q, id: 0, to: 0, reason: 0, error }.encoded_len()];
            if existing.is_none() {
                let len = Body::Queue { queue: 0, name: name.as_bytes() }.encoded_len();
                v.extend([len, len]);
            }
            v
        }
    }
}

/// Creates queue `name` (room for its record was made); returns its id.
pub(crate) fn create_queue(g: &mut MutexGuard<'_, State>, name: &str) -> Result<u32> {
    if let Some(id) = g.queue_id(name) {
        return Ok(id);
    }
    let id = u32::try_from(g.queues().len())
        .map_err(|_| Error::InvalidOption("too many queues".into()))?;
    g.wal_mut()
        .append(&Body::Queue { queue: id, name: name.as_bytes() })
        .ok_or_else(Error::no_space)?;
    g.wal_mut().add_to_catalog(name);
    g.add_queue(name)
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
    let lsn = g.wal_mut().append(&body).ok_or_else(Error::no_space)?;
    let end = lsn + body.encoded_len() as u64;
    if let Some(qs) = g.get_queue_mut(q) {
        qs.index_mut().forget(id);
    }
    if g.wal_mut().log_mut().note_settled(entry.lsn, end) {
        g.wal_mut().set_maybe_delete(true);
        shared.log().background().notify_one();
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
    if let Some(qs) = g.get_queue_mut(q) {
        qs.counters_mut().dead_lettered += 1;
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
    g.wal_mut().append(&body).ok_or_else(Error::no_space)?;
    if let Some(qs) = g.get_queue_mut(q) {
        qs.index_mut().forget(id);
    }
    if let Some(dst) = g.get_queue_mut(to) {
        dst.index_mut().insert(id, Entry { expires: 0, priority: 0, ..entry }, 0);
        let note = Note { origin: Some(q), reason: reason.code(), error: error.into() };
        dst.index_mut().set_note(id, note);
        dst.notify_one();
    }
    Ok(())
}

/// Acks the leases `(id, attempt)` of queue `q` that are current, with one `Acks` record per
/// [`MAX_ACKS`] of them (several records are one group: a crash keeps all or none), staged
/// under one hold of the mutex; applies durability `d`. A lease that is not current is reported
/// lapsed and changes nothing; if none is current nothing is written.
pub(crate) fn ack_many(
    shared: &Shared,
    q: u32,
    leases: &[(u64, u32)],
    d: Durability,
) -> Result<AckReport> {
    let mut g = shared.lock();
    let mut lapsed = Vec::new();
    let taken = loop {
        g.check()?;
        let now = shared.opts().clock.now();
        lapsed.clear();
        let mut live: Vec<(u64, u32)> = Vec::with_capacity(leases.len());
        for &(id, attempt) in leases {
            match g.queue_mut(q).index_mut().holds(id, attempt, now) {
                Ok(_) => live.push((id, attempt)),
                Err(_) => lapsed.push(MessageId(id)),
            }
        }
        if live.is_empty() {
            return Ok(AckReport { acked: 0, lapsed });
        }
        let ids: Vec<u64> = live.iter().map(|&(id, _)| id).collect();
        let lens: Vec<usize> = ids
            .chunks(MAX_ACKS)
            .map(|c| Body::Acks { queue: q, ids: Ids::Values(c) }.encoded_len())
            .collect();
        // `false`: the mutex was released to make room; leases may have lapsed meanwhile.
        if !shared.reserve(&mut g, &lens, Room::Settle)? {
            continue;
        }
        // The mutex was held since `holds`: every lease in `live` is still current.
        let mut taken = Vec::with_capacity(live.len());
        for (id, _) in live {
            match g.queue_mut(q).index_mut().remove(id) {
                Some(entry) => taken.push((id, entry)),
                None => lapsed.push(MessageId(id)),
            }
        }
        break taken;
    };
    let ids: Vec<u64> = taken.iter().map(|&(id, _)| id).collect();
    let chunks = ids.len().div_ceil(MAX_ACKS);
    if chunks > 1 {
        g.wal_mut().begin_group();
    }
    let mut wake = false;
    for (i, (chunk, entries)) in ids.chunks(MAX_ACKS).zip(taken.chunks(MAX_ACKS)).enumerate() {
        if i + 1 == chunks {
            g.wal_mut().end_group();
        }
        let body = Body::Acks { queue: q, ids: Ids::Values(chunk) };
        let staged = g.wal_mut().append(&body);
        let Some(lsn) = staged else {
            // Room was reserved: this is a broken invariant, and a group left open.
            g.wal_mut().end_group();
            return Err(Error::NoSpace);
        };
        let end = lsn + body.encoded_len() as u64;
        for &(id, entry) in entries {
            let qs = g.queue_mut(q);
            qs.index_mut().forget(id);
            qs.counters_mut().processed += 1;
            wake |= g.wal_mut().log_mut().note_settled(entry.lsn, end);
        }
    }
    if wake {
        g.wal_mut().set_maybe_delete(true);
        shared.log().background().notify_one();
    }
    shared.commit(&mut g, d)?;
    Ok(AckReport { acked: taken.len(), lapsed })
}

/// How a delivery is settled.
pub(crate) enum Settle<'a> {
    Ack,
    /// Ready again at once, not a failure.
    Release,
    /// A failed attempt.
    Nack(&'a NackOptions),
    DeadLetter(&'a str),
}

/// Settles the delivery `attempt` of message `id` of queue `q` as `how` says, staging its one
/// record, and applies durability `d`. Fails with `LeaseExpired` unless the lease is current.
pub(crate) fn settle(
    shared: &Shared,
    (q, id, attempt): (u32, u64, u32),
    how: Settle<'_>,
    d: Durability,
) -> Result<()> {
    let mut g = shared.lock();
    loop {
        g.check()?;
        let now = shared.opts().clock.now();
        g.queue_mut(q).index_mut().holds(id, attempt, now).map_err(|_| Error::LeaseExpired)?;
        let cfg = &g.queue_mut(q).config();
        // A failed last attempt is a dead letter.
        let last = cfg.max_attempts.is_some_and(|m| attempt >= m);
        let error = match &how {
            Settle::Nack(o) => crate::limits::clip(o.error.as_deref().unwrap_or("")),
            Settle::DeadLetter(r) => crate::limits::clip(r),
            _ => "",
        };
        let dead = match &how {
            Settle::DeadLetter(_) => Some(DeadReason::Explicit),
            Settle::Nack(_) if last => Some(DeadReason::MaxAttempts),
            _ => None,
        };
        let due = match &how {
            Settle::Nack(o) => {
                let delay = o.delay.unwrap_or_else(|| cfg.backoff.delay(attempt, id));
                if delay.is_zero() {
                    0
                } else {
                    shared.now_ms().saturating_add(millis(delay)).max(1)
                }
            }
            _ => 0,
        };
        let lens = match (&how, dead) {
            (_, Some(_)) => dead_letter_lens(&g, q, error),
            (Settle::Ack, _) => vec![Body::Ack { queue: q, id }.encoded_len()],
            (Settle::Release, _) => vec![Body::Nack { queue: q, id }.encoded_len()],
            _ => vec![Body::Retry { queue: q, id, due, error: error.as_bytes() }.encoded_len()],
        };
        if !shared.reserve(&mut g, &lens, Room::Settle)? {
            continue;
        }
        match (&how, dead) {
            (_, Some(why)) => {
                let entry = g
                    .queue_mut(q)
                    .index_mut()
                    .take(id, attempt, now)
                    .map_err(|_| Error::LeaseExpired)?;
                if matches!(how, Settle::Nack(_)) {
                    g.queue_mut(q).counters_mut().failed += 1;
                }
                dead_letter(shared, &mut g, q, id, entry, why, error)?;
            }
            (Settle::Ack, _) => {
                let entry = g
                    .queue_mut(q)
                    .index_mut()
                    .take(id, attempt, now)
                    .map_err(|_| Error::LeaseExpired)?;
                g.queue_mut(q).counters_mut().processed += 1;
                drop_message(shared, &mut g, q, id, entry)?;
            }
            (Settle::Release, _) => {
                g.queue_mut(q)
                    .index_mut()
                    .put_back(id, attempt, now, 0)
                    .map_err(|_| Error::LeaseExpired)?;
                g.wal_mut().append(&Body::Nack { queue: q, id }).ok_or_else(Error::no_space)?;
                g.queue_mut(q).notify_one();
            }
            (_, None) => {
                g.queue_mut(q)
                    .index_mut()
                    .put_back(id, attempt, now, due)
                    .map_err(|_| Error::LeaseExpired)?;
                let body = Body::Retry { queue: q, id, due, error: error.as_bytes() };
                g.wal_mut().append(&body).ok_or_else(Error::no_space)?;
                let qs = &mut g.queue_mut(q);
                qs.counters_mut().failed += 1;
                qs.index_mut().set_error(id, error);
                if due == 0 {
                    qs.notify_one();
                } else {
                    qs.notify_all();
                }
            }
        }
        break;
    }
    shared.commit(&mut g, d)
}
