//! Pushing: options checked and resolved against the clock, dedup, overflow, room in the log,
//! and the push records staged as one group.

use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::run::RunWant;
use super::settle::{dead_letter, dead_letter_lens};
use super::target::QueueRef;
use super::types::{DeadReason, MessageId, PushOptions};
use super::Entry;
use crate::clock::{deadline_after, millis, unix_ms};
use crate::config::Overflow;
use crate::error::{Error, Result};
use crate::limits::{MAX_DEDUP_KEY, MAX_PRIORITY};
use crate::log::{plain_push, Room};
use crate::record::Body;
use crate::store::State;

/// One push, resolved against the clock and the queue's config.
struct Planned {
    priority: u8,
    not_before: u64,
    expires: u64,
    pushed: u64,
}

pub(crate) fn push_many<I>(
    queue: &QueueRef,
    payloads: I,
    opts: PushOptions,
) -> Result<Vec<MessageId>>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let shared = queue.shared();
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
        return Err(Error::InvalidOption("a dedup key names one message: push it alone".into()));
    }
    let max = shared.opts().max_payload;
    if let Some(p) = payloads.iter().find(|p| p.as_ref().len() > max) {
        return Err(Error::PayloadTooLarge { len: p.as_ref().len(), max });
    }
    let durability = opts.durability.unwrap_or(shared.opts().push_durability);
    let space_deadline = opts.wait_for_space.map(|d| deadline_after(Instant::now(), d));
    let q = queue.id();
    let mut g = shared.lock();
    let ids = loop {
        g.check()?;
        let now_ms = shared.now_ms();
        let cfg = g.queue(q).config();
        let (ttl, dedup_window) = (cfg.ttl, cfg.dedup_window);
        let plan = Planned {
            priority: opts.priority,
            not_before: match (opts.not_before, opts.delay) {
                (Some(t), _) => unix_ms(t),
                (None, Some(d)) if !d.is_zero() => now_ms.saturating_add(millis(d)),
                _ => 0,
            },
            expires: match opts.expires_at {
                Some(t) => unix_ms(t).max(1),
                None => opts.ttl.or(ttl).map_or(0, |t| now_ms.saturating_add(millis(t))),
            },
            pushed: now_ms,
        };
        let plan =
            Planned { not_before: plan.not_before * u64::from(plan.not_before > now_ms), ..plan };
        let window = millis(dedup_window);
        if !key.is_empty() {
            if let Some(id) = g.queue_mut(q).index_mut().dedup_hit(key, now_ms) {
                // Nothing is stored; the caller still gets the durability it asked for.
                shared.commit(&mut g, durability)?;
                return Ok(vec![MessageId(id)]);
            }
        }
        // Overflow: reject, or make room by dead-lettering the oldest waiting messages (due
        // ones made ready first, so the victim is the message a pop would take next).
        g.queue_mut(q).index_mut().promote(now_ms);
        let (max_len, overflow) = (g.queue(q).config().max_len, g.queue(q).config().overflow);
        let mut victims = 0;
        if let Some(limit) = max_len {
            let waiting = g.queue_mut(q).index_mut().waiting_len() as u64;
            let excess = (waiting + payloads.len() as u64).saturating_sub(limit);
            if excess > 0 {
                if overflow == Overflow::Reject || payloads.len() as u64 > limit {
                    return Err(Error::QueueFull {
                        queue: queue.name().to_string(),
                        max_len: limit,
                    });
                }
                victims = excess as usize;
            }
        }
        let mut lens: Vec<usize> = payloads
            .iter()
            .map(|p| {
                let payload = p.as_ref();
                let (queue, id) = (queue.id(), 0);
                let Planned { priority, not_before, expires, pushed } = plan;
                Body::PushEx { queue, id, priority, not_before, expires, pushed, key, payload }
                    .encoded_len()
            })
            .collect();
        for _ in 0..victims {
            lens.extend(dead_letter_lens(&g, queue.id(), ""));
        }
        // Several records are one group, all kept by a crash or none.
        let grouped = payloads.len() > 1 || (victims > 0 && !payloads.is_empty());
        match shared.reserve(&mut g, &lens, Room::Push) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e @ (Error::Full { .. } | Error::NoSpace)) => {
                // Settled segments that wait for a checkpoint make room once it is taken.
                if g.wal().log().deletable_after_checkpoint() && !g.checkpoint_wanted() {
                    g.set_checkpoint_wanted(true);
                    shared.log().checkpointer().notify_one();
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
                        shared.log().space().wait_until(&mut g, t);
                        continue;
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        if grouped {
            g.wal_mut().begin_group();
        }
        let staged = stage_group(queue, &mut g, &payloads, &plan, key, victims);
        g.wal_mut().end_group();
        let ids = staged?;
        if !key.is_empty() {
            if let Some(id) = ids.first() {
                let until = now_ms.saturating_add(window);
                g.queue_mut(q).index_mut().dedup_insert(key, id.0, until, now_ms);
            }
        }
        if plan.not_before == 0 && ids.len() == 1 {
            g.queue_mut(q).notify_one();
        } else {
            // Delayed: blocked pops must look at the new earliest due time.
            g.queue_mut(q).notify_all();
        }
        break ids;
    };
    shared.commit(&mut g, durability)?;
    Ok(ids)
}

/// Stages what one push call writes (room was made): the dead-lettering of `victims`
/// oldest waiting messages, then a push record per payload; returns their ids. In a group
/// (`Wal::begin_group`), the last push closes it.
fn stage_group<P: AsRef<[u8]>>(
    queue: &QueueRef,
    g: &mut MutexGuard<'_, State>,
    payloads: &[P],
    plan: &Planned,
    key: &[u8],
    victims: usize,
) -> Result<Vec<MessageId>> {
    let (shared, q) = (queue.shared(), queue.id());
    for _ in 0..victims {
        g.fill(q, RunWant::Head)?;
        let Some(victim) = g.queue_mut(q).index_mut().oldest_waiting() else { break };
        if let Some(entry) = g.queue_mut(q).index_mut().remove(victim) {
            dead_letter(shared, g, queue.id(), victim, entry, DeadReason::Overflow, "")?;
        }
    }
    let mut ids = Vec::with_capacity(payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        if i + 1 == payloads.len() {
            g.wal_mut().end_group();
        }
        ids.push(MessageId(stage_push(queue, g, p.as_ref(), plan, key)?));
    }
    Ok(ids)
}

/// Stages one push record (room was made) and indexes the message; returns its id.
fn stage_push(
    queue: &QueueRef,
    g: &mut MutexGuard<'_, State>,
    payload: &[u8],
    plan: &Planned,
    key: &[u8],
) -> Result<u64> {
    let id = g.wal_mut().next_id()?;
    // Always the record with options, for its push time (28 bytes more than a plain
    // `Push`, which older stores hold and recovery still reads): `oldest`, `pushed_at`
    // and the bridge's `x-wharf-pushed-at` know it for every message.
    let body = Body::PushEx {
        queue: queue.id(),
        id,
        priority: plan.priority,
        not_before: plan.not_before,
        expires: plan.expires,
        pushed: plan.pushed,
        key,
        payload,
    };
    let lsn = g.wal_mut().append(&body).ok_or_else(Error::no_space)?;
    g.wal_mut().log_mut().note_push(lsn);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let off = u32::try_from(body.payload_offset()).unwrap_or(u32::MAX);
    let entry =
        Entry { lsn, len, off, attempts: 0, priority: plan.priority, expires: plan.expires };
    let member = plain_push(lsn, &body).is_some();
    g.queue_mut(queue.id()).index_mut().push_new(id, entry, plan.not_before, member);
    Ok(id)
}
