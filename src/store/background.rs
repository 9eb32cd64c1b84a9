//! The background thread: spare segments, interval syncs, write-behind, segment deletion, and
//! the timers of async pops. It sleeps until the earliest thing it has to do, or until
//! signalled; never on a fixed tick.

use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::state::{Shared, State, Thread};
use crate::clock::deadline_after;
use crate::error::Error;
use crate::log::READY_SPARES;

/// How long a settled log stays quiet before its segments shrink (`GroupCommit::shrink`).
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// The background thread's loop, until the store shuts down.
pub(crate) fn run(shared: &Shared) {
    let log = shared.log();
    let mut g = shared.lock();
    let mut retry_spare_at: Option<Instant> = None;
    let mut checked_delete_at: Option<(u64, u64)> = None;
    // A store-clock reading that stood still through a real sleep (a manual clock): async-pop
    // timers are not armed again until the clock reads otherwise.
    let mut stalled_clock: Option<Instant> = None;
    // Since when the log has not moved, and the log's record count then; and the count at the
    // last attempt to shrink its segments, which is not made again until the log moves.
    let mut quiet = (u64::MAX, Instant::now());
    let mut shrunk_at: Option<u64> = None;
    loop {
        if g.shutting_down() {
            return;
        }
        shared.panic_point(Thread::Background);
        let now = Instant::now();
        if g.wal().poisoned().is_some() {
            log.background().wait(&mut g);
            continue;
        }
        let spares = g.wal().log().spare_count();
        if spares < READY_SPARES && retry_spare_at.is_none_or(|t| now >= t) {
            let made = MutexGuard::unlocked(&mut g, || shared.create_spare(READY_SPARES));
            // A full disk is reported to pushes that need the segment; retry later.
            // Past the quota, only a deletion can make room: it clears this (below).
            retry_spare_at = match made {
                Ok(()) => {
                    if g.wal_mut().take_anchor_waits() {
                        // The deletion put back for want of room for its anchor can go now.
                        g.wal_mut().set_maybe_delete(true);
                        checked_delete_at = None;
                    }
                    None
                }
                Err(Error::Full { .. }) => Some(now + Duration::from_secs(3600)),
                Err(_) => Some(now + Duration::from_secs(1)),
            };
            continue;
        }
        // Re-checked whenever the durable end or the log moved since the last look.
        let moment = (g.wal().durable(), g.wal().records());
        if g.wal().maybe_delete() && checked_delete_at != Some(moment) {
            checked_delete_at = Some(moment);
            let durable = g.wal().durable();
            let dead = g.wal_mut().log_mut().take_deletable(durable);
            if dead.is_empty()
                && g.wal().log().deletable_after_sync(durable)
                && g.wal().due().0.is_none()
            {
                // Settled segments must not wait for a sync that `None` durability never asks
                // for: one sync per segment reclaims them.
                g.wal_mut().want_sync_by(now);
            }
            let oldest_settled = g.wal().log().oldest_settled();
            g.wal_mut().set_maybe_delete(oldest_settled);
            if !dead.is_empty() {
                // A failure poisons the store and is reported to every later call.
                let _ = log.delete_segments(&mut g, dead);
                retry_spare_at = None;
                // The next oldest may be deletable now, or after one more sync: look again.
                checked_delete_at = None;
                continue;
            }
        }
        let due = match g.wal().due() {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = due {
            if t <= now {
                if g.wal().flushing() {
                    log.flushed().wait(&mut g);
                } else {
                    let sync = g.wal().due().0.is_some_and(|s| s <= now);
                    // A failure poisons the store and is reported to every later call.
                    let _ = log.flush(&mut g, sync);
                }
                continue;
            }
        }
        let records = g.wal().records();
        if quiet.0 != records {
            quiet = (records, now);
        }
        let shrink_at = (shrunk_at != Some(records) && log.shrinkable(&*g))
            .then(|| deadline_after(quiet.1, SHRINK_AFTER));
        if shrink_at.is_some_and(|t| t <= now) {
            shrunk_at = Some(records);
            // A failure poisons the store and is reported to every later call.
            let _ = MutexGuard::unlocked(&mut g, || shared.shrink_log(true));
            continue;
        }
        let clock_now = shared.opts().clock.now();
        let timers = wake_async_pops(shared, &mut g, clock_now)
            .filter(|_| stalled_clock != Some(clock_now))
            // At least 1 ms of real time, so that a system clock has always moved on after it.
            .map(|d| deadline_after(Instant::now(), d.max(Duration::from_millis(1))));
        let spare = retry_spare_at.filter(|_| g.wal().log().spare_count() < READY_SPARES);
        let wake = [due, spare, timers, shrink_at].into_iter().flatten().min();
        debug_assert!(wake.is_none_or(|t| t > now), "the background thread would spin");
        match wake {
            Some(t) => {
                let timed_out = log.background().wait_until(&mut g, t).timed_out();
                // A store clock that stood still through a real sleep is a manual one: leave
                // its timers until it moves (or something else wakes this thread) instead of
                // sleeping the same interval over and over.
                if timed_out && Some(t) == timers && shared.opts().clock.now() == clock_now {
                    stalled_clock = Some(clock_now);
                }
            }
            None => log.background().wait(&mut g),
        }
    }
}

/// The timers of async pops: a delayed message becoming due or a lease running out makes a
/// message ready without any call that would wake the futures waiting for it, so the background
/// thread does. For every queue with pending futures: promote due messages, expire leases, wake
/// the futures if something is ready now, else note when to look again (`waker_timer`). Returns
/// how long (on the store clock, from `now`) until the earliest such look, if any future waits.
///
/// Only queues with wakers count: an idle store, or one whose waiters are all blocking pops
/// (which keep their own timers), never wakes this thread for them.
fn wake_async_pops(shared: &Shared, g: &mut State, now: Instant) -> Option<Duration> {
    let now_ms = shared.now_ms();
    let mut next: Option<Instant> = None;
    for qs in g.queues_mut() {
        if !qs.has_wakers() {
            qs.set_waker_timer(None);
            continue;
        }
        qs.index_mut().expire(now);
        qs.index_mut().promote(now_ms);
        if qs.index().ready_len() > 0 {
            qs.set_waker_timer(None);
            qs.wake_async();
            continue;
        }
        let t = qs.next_timer(now, now_ms);
        qs.set_waker_timer(t);
        next = [next, t].into_iter().flatten().min();
    }
    next.map(|t| t.saturating_duration_since(now))
}
