//! Popping: waiting for a ready message (never polling), leasing it with its delivery record,
//! expiring and exhausting messages met on the way, and reading the payload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::delivery::Delivery;
use super::payload::{load_with, source_of, PushMeta, Taken};
use super::run::RunWant;
use super::settle::{dead_letter, dead_letter_lens, drop_message};
use super::target::QueueRef;
use super::types::DeadReason;
use crate::clock::deadline_after;
use crate::config::OnExpiry;
use crate::error::{Error, Result};
use crate::log::Room;
use crate::options::Durability;
use crate::record::Body;
use crate::store::State;

/// The shortest sleep of a blocked pop, so that a wake time that is due now cannot spin.
const MIN_WAIT: Duration = Duration::from_micros(100);

/// Waits until a message is ready or `deadline` passes (forever if `None`); returns the
/// time it looked, or `None` when the deadline passed first. Sleeps until the earliest of
/// the deadline, the next lease expiry and the next due time: never on a fixed tick.
pub(crate) fn wait_ready(
    queue: &QueueRef,
    g: &mut MutexGuard<'_, State>,
    deadline: Option<Instant>,
) -> Result<Option<Instant>> {
    let shared = queue.shared();
    loop {
        g.check()?;
        let now = shared.opts().clock.now();
        let now_ms = shared.now_ms();
        let index = g.queue_mut(queue.id()).index_mut();
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
                queue.cv().wait_for(g, t.saturating_duration_since(now).max(MIN_WAIT));
            }
            None => queue.cv().wait(g),
        }
        g.queue_mut(queue.id()).counters_mut().wakeups += 1;
    }
}

/// Pops one message, waiting until `deadline` (forever if `None`).
pub(crate) fn pop_one_until(
    queue: &QueueRef,
    deadline: Option<Instant>,
) -> Result<Option<Delivery>> {
    let shared = queue.shared();
    let mut g = shared.lock();
    let taken = loop {
        let Some(now) = wait_ready(queue, &mut g, deadline)? else { return Ok(None) };
        let now_ms = shared.now_ms();
        if let Some(t) = lease_one(queue, &mut g, now, now_ms)? {
            break t;
        }
    };
    record_deliveries(queue, &mut g)?;
    drop(g);
    deliver(queue, taken).map(Some)
}

/// Pops up to `max` messages, waiting until `deadline` for the first.
pub(crate) fn pop_many_until(
    queue: &QueueRef,
    deadline: Option<Instant>,
    max: usize,
) -> Result<Vec<Delivery>> {
    let shared = queue.shared();
    let mut g = shared.lock();
    let mut taken = Vec::new();
    while taken.is_empty() {
        let Some(now) = wait_ready(queue, &mut g, deadline)? else { return Ok(Vec::new()) };
        let ready = g.queue_mut(queue.id()).index_mut().ready_len();
        taken.reserve(max.min(ready));
        if max > 1 {
            // May release the mutex: `lease_one` looks at the index again.
            write_pushes_first(queue, &mut g)?;
        }
        // One reading of the wall clock for the batch, as `now` is one for its leases.
        let now_ms = shared.now_ms();
        while taken.len() < max {
            match lease_one(queue, &mut g, now, now_ms)? {
                Some(t) => taken.push(t),
                None => break,
            }
        }
    }
    record_deliveries(queue, &mut g)?;
    drop(g);
    let mut out = Vec::with_capacity(taken.len());
    for t in taken {
        out.push(deliver(queue, t)?);
    }
    Ok(out)
}

/// Applies the durability of the delivery records just staged: with
/// `count_crashed_attempts`, they reach the OS before any payload is handed out.
pub(crate) fn record_deliveries(queue: &QueueRef, g: &mut MutexGuard<'_, State>) -> Result<()> {
    let shared = queue.shared();
    let end = g.wal().next_lsn();
    let d = shared.opts().ack_durability;
    if shared.opts().count_crashed_attempts && d != Durability::Immediate {
        shared.log().wait_written(g, end)?;
    }
    shared.commit(g, d)
}

/// Before a batch is leased: when its delivery records will be written to the OS before
/// hand-out anyway (see `record_deliveries`) and push records are still staged, writes them
/// now, so that the batch's payloads are read from the map instead of each copied out of the
/// staging buffer. Writing releases the mutex meanwhile.
pub(crate) fn write_pushes_first(queue: &QueueRef, g: &mut MutexGuard<'_, State>) -> Result<()> {
    let shared = queue.shared();
    let end = g.wal().next_lsn();
    let written_anyway = shared.opts().count_crashed_attempts
        || shared.opts().ack_durability == Durability::Immediate;
    if written_anyway && g.wal().written() < end {
        shared.log().wait_written(g, end)?;
    }
    Ok(())
}

/// Leases the next ready message, if any, and stages its delivery record. Expired messages
/// and messages out of attempts met on the way are dropped or dead-lettered (each with its
/// record) instead. `now` and `now_ms` are the time of the pop (the same for a batch).
pub(crate) fn lease_one(
    queue: &QueueRef,
    g: &mut MutexGuard<'_, State>,
    now: Instant,
    mut now_ms: u64,
) -> Result<Option<Taken>> {
    let shared = queue.shared();
    let q = queue.id();
    loop {
        g.check()?;
        g.queue_mut(q).index_mut().promote(now_ms);
        g.fill(q, RunWant::Head)?;
        let Some((id, entry)) = g.queue_mut(q).index_mut().head() else { return Ok(None) };
        let cfg = &g.queue_mut(q).config();
        let expired = entry.expires != 0 && entry.expires <= now_ms;
        let exhausted = cfg.max_attempts.is_some_and(|m| entry.attempts >= m);
        if expired || exhausted {
            let to_dlq = !expired || cfg.on_expiry == OnExpiry::DeadLetter;
            let error = g
                .queue_mut(q)
                .index_mut()
                .note(id)
                .map(|n| n.error.to_string())
                .unwrap_or_default();
            let lens = if to_dlq {
                dead_letter_lens(g, queue.id(), &error)
            } else {
                vec![Body::Ack { queue: 0, id: 0 }.encoded_len()]
            };
            if !shared.reserve(g, &lens, Room::Settle)? {
                // The mutex was released to make room: time went on.
                now_ms = shared.now_ms();
                continue;
            }
            let Some(entry) = g.queue_mut(q).index_mut().remove(id) else { continue };
            if expired {
                g.queue_mut(q).counters_mut().expired += 1;
            }
            if to_dlq {
                let why = if expired { DeadReason::Expired } else { DeadReason::MaxAttempts };
                dead_letter(shared, g, queue.id(), id, entry, why, &error)?;
            } else {
                drop_message(shared, g, queue.id(), id, entry)?;
            }
            continue;
        }
        let visibility = cfg.visibility_timeout.unwrap_or(shared.opts().visibility_timeout);
        let len =
            Body::Deliver { queue: queue.id(), id, attempt: entry.attempts + 1 }.encoded_len();
        if !shared.reserve(g, &[len], Room::Settle)? {
            now_ms = shared.now_ms();
            continue;
        }
        let Some(entry) = g.queue_mut(q).index_mut().lease(id, now, visibility) else { continue };
        let body = Body::Deliver { queue: queue.id(), id, attempt: entry.attempts };
        g.wal_mut().append(&body).ok_or_else(Error::no_space)?;
        let source = source_of(g, id, &entry)?;
        return Ok(Some(Taken { id, entry, source }));
    }
}

/// Reads and checks a leased message's payload and wraps it in a `Delivery`.
pub(crate) fn deliver(queue: &QueueRef, t: Taken) -> Result<Delivery> {
    let (id, entry) = (t.id, t.entry);
    let mut meta = PushMeta::default();
    let payload = load_with(t, queue.shared(), Some(&mut meta))?;
    let core = Arc::clone(queue.core());
    Ok(Delivery::new(core, queue.id(), id, entry.attempts, payload, meta.pushed))
}
