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

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset.fetch_add(nanos, Ordering::SeqCst);
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.elapsed()
    }

    fn wall(&self) -> SystemTime {
        self.wall_base + self.elapsed()
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time a Unix-milliseconds reading stands for.
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds in `d`, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
