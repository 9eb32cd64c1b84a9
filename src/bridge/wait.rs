//! Stop requests and bounded waits: every wait of a bridge's thread has a limit and is raced
//! with the stop request, so a stop is never kept waiting past its deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often an idle bridge looks at its channel (lapin marks it closed once heartbeats are
/// missed or the broker closed it).
pub(super) const IDLE_CHECK: Duration = Duration::from_secs(1);

/// `Instant::now() + d`, saturating about 30 years ahead (`Instant + Duration::MAX` panics).
pub(super) fn after(d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    let now = Instant::now();
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// A stop request: the deadline by which the bridge must have finished. The handle sends it
/// once; every wait of the bridge's thread is raced with it.
pub(super) type StopTx = tokio::sync::watch::Sender<Option<Instant>>;
pub(super) type StopRx = tokio::sync::watch::Receiver<Option<Instant>>;

/// The deadline of the stop requested so far, if any. A handle gone without a word (it never
/// is: its drop sends a stop first) counts as a stop due now.
pub(super) fn stop_deadline(stop: &StopRx) -> Option<Instant> {
    match stop.has_changed() {
        Err(_) => Some(stop.borrow().unwrap_or_else(Instant::now)),
        Ok(_) => *stop.borrow(),
    }
}

/// Waits until a stop is requested (at once if one was).
pub(super) async fn stopped(stop: &mut StopRx) {
    // `Err`: the handle is gone, which only happens after it asked for a stop.
    let _ = stop.wait_for(Option::is_some).await;
}

/// Awaits `fut` for at most `limit`, giving up at once when a stop is requested: for the waits
/// a stop abandons (connecting, a backoff, an idle consumer). `None` if it did not finish.
pub(super) async fn unless_stopped<F: Future>(
    stop: &mut StopRx,
    limit: Duration,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = stopped(stop) => None,
        r = tokio::time::timeout(limit, fut) => r.ok(),
    }
}

/// Awaits `fut` for at most `limit`, and once a stop is requested, not past its deadline: for
/// the calls a stop lets finish in time (an ack for a stored batch, a publish under way). Gives
/// up too once `alive` (looked at every [`IDLE_CHECK`]) says the connection is gone: lapin may
/// leave a call on a closed connection pending for good. `None` if it did not finish.
pub(super) async fn within<F: Future>(
    stop: &mut StopRx,
    limit: Duration,
    alive: impl Fn() -> bool,
    fut: F,
) -> Option<F::Output> {
    let give_up = after(limit);
    let mut fut = std::pin::pin!(fut);
    loop {
        let deadline = stop_deadline(stop);
        let end = deadline.map_or(give_up, |d| d.min(give_up));
        let check = Instant::now() + IDLE_CHECK;
        tokio::select! {
            biased;
            r = &mut fut => return Some(r),
            () = tokio::time::sleep_until(end.min(check).into()) => {
                if end <= check || !alive() {
                    return None;
                }
            }
            () = stopped(stop), if deadline.is_none() => {}
        }
    }
}

/// Sleeps for `d`, or returns `false` early if a stop is requested.
pub(super) async fn sleep_or_stop(stop: &mut StopRx, d: Duration) -> bool {
    let sleep = tokio::time::sleep_until(after(d).into());
    tokio::select! {
        biased;
        () = stopped(stop) => false,
        () = sleep => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate_at_the_edges() {
        let far = after(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(365 * 86_400));
        assert!(after(Duration::ZERO) <= Instant::now());
    }
}
