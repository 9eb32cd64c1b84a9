//! Time, injectable: lease deadlines read a monotonic `Instant`, delays, retries and TTLs a
//! wall-clock `SystemTime` (they are stored in the log as Unix milliseconds, so they survive a
//! restart). Tests use [`ManualClock`] and never sleep.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time for a store: pass one to [`WharfBuilder::clock`](crate::WharfBuilder::clock).
///
/// Both readings must advance together: a store converts between them to sleep until a delayed
/// message is due.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The monotonic time, for lease deadlines and waits.
    fn now(&self) -> Instant;
    /// The wall-clock time, for delays, retries and time-to-live.
    fn wall(&self) -> SystemTime;
}

/// The system's clocks (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told, for tests of delays, retries, TTLs and leases that must
/// not sleep. Clones share the same time.
///
/// A blocking `pop` on a store with this clock still waits in real time: use `try_pop` and
/// [`ManualClock::advance`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use wharf::{ManualClock, PushOptions, Wharf};
/// # let dir = tempfile::tempdir()?;
/// let clock = ManualClock::new();
/// let wharf = Wharf::builder().clock(Arc::new(clock.clone())).open(dir.path())?;
/// let q = wharf.queue("later")?;
/// q.push_with(b"in an hour", PushOptions::new().delay(Duration::from_secs(3600)))?;
/// assert!(q.try_pop()?.is_none());
/// clock.advance(Duration::from_secs(3600));
/// assert_eq!(q.try_pop()?.unwrap().payload(), b"in an hour");
/// # Ok::<(), wharf::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    base: Instant,
    wall_base: SystemTime,
    offset: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock { base: Instant::now(), wall_base: SystemTime::now(), offset: Arc::default() }
    }
}

impl ManualClock {
    /// A clock standing still at the moment of its making.
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves the clock forward. It saturates: past about 584 years in all it stands still.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let add = |n: u64| Some(n.saturating_add(nanos));
        // `fetch_update` with a closure that always returns `Some` cannot fail.
        let _ = self.offset.fetch_update(Ordering::SeqCst, Ordering::SeqCst, add);
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        saturating_add(self.base, self.elapsed(), Instant::checked_add)
    }

    fn wall(&self) -> SystemTime {
        saturating_add(self.wall_base, self.elapsed(), SystemTime::checked_add)
    }
}

/// The wall-clock time of `clock`, in Unix ms.
pub(crate) fn now_ms(clock: &dyn Clock) -> u64 {
    unix_ms(clock.wall())
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time a Unix-milliseconds reading stands for (the latest time the platform can hold, if
/// it cannot hold that one).
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    saturating_add(UNIX_EPOCH, Duration::from_millis(ms), SystemTime::checked_add)
}

/// The longest span a deadline is set ahead: about a century, which is "never" for a lease, a
/// wait or a timer, and which every platform's `Instant` holds beside its current reading.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d` for a deadline (a lease, a wait, a timer): a `d` past [`FOREVER`] (up to
/// `Duration::MAX`) is cut to it, so the deadline never comes and the sum never overflows.
/// Every deadline the store computes from a duration goes through here.
pub(crate) fn deadline_after(now: Instant, d: Duration) -> Instant {
    saturating_add(now, d.min(FOREVER), Instant::checked_add)
}

/// `t + d`, or the latest time the platform can hold on the way (found by halving `d`), never
/// a panic.
fn saturating_add<T: Copy>(t: T, d: Duration, add: impl Fn(&T, Duration) -> Option<T>) -> T {
    let mut d = d;
    loop {
        if let Some(sum) = add(&t, d) {
            return sum;
        }
        // Ends: `t + 0` is always `Some`.
        d /= 2;
    }
}

/// Milliseconds in `d`, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arithmetic_saturates_instead_of_panicking() {
        let now = Instant::now();
        for d in [Duration::ZERO, Duration::from_nanos(1), FOREVER, Duration::MAX] {
            let t = deadline_after(now, d);
            assert_eq!(t - now, d.min(FOREVER));
        }
        assert!(from_unix_ms(u64::MAX) > from_unix_ms(u64::MAX / 2));
        assert_eq!(from_unix_ms(0), UNIX_EPOCH);
        assert_eq!(unix_ms(from_unix_ms(1_700_000_000_123)), 1_700_000_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(millis(Duration::MAX), u64::MAX);

        let clock = ManualClock::new();
        let (t0, w0) = (clock.now(), clock.wall());
        clock.advance(Duration::MAX);
        clock.advance(Duration::MAX);
        assert!(clock.now() >= t0 && clock.wall() > w0, "the clock went back");
        assert_eq!(clock.elapsed(), Duration::from_nanos(u64::MAX));
    }
}
