//! The connection side both bridges share: the options their builders take ([`LinkOptions`]),
//! the parsed settings ([`Link`]), the connection counters ([`LinkStats`]), the reconnection
//! backoff and the loop that connects, runs a session and reconnects ([`keep_connected`]).
//!
//! Invariant: a connection is made and remade here only (lapin's automatic recovery is not
//! used), and every wait of the loop is bounded and raced with the stop request.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use parking_lot::Mutex;

use super::wait::{after, sleep_or_stop, stop_deadline, stopped, unless_stopped, StopRx};
use crate::error::{Error, Result};

/// The AMQP heartbeat the bridges ask for unless told otherwise (or the URL sets one): a broker
/// that sends nothing for two of these is taken for dead.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// How long dropping a bridge waits for it to stop, as its `stop` does.
pub const DEFAULT_STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Where a bridge's connection to the broker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting, or waiting (backoff) before the next try.
    Connecting,
    /// Connected, with a channel open.
    Connected,
    /// Stopped: by `stop`, by a drop, or by a local store error.
    Stopped,
}

/// The connection options of both bridges' builders, which their setters of the same names
/// fill in.
#[derive(Debug, Clone)]
pub(super) struct LinkOptions {
    pub(super) url: String,
    /// The reconnection backoff's `(min, max)`.
    pub(super) reconnect: (Duration, Duration),
    pub(super) heartbeat: Duration,
    pub(super) drop_deadline: Duration,
}

impl LinkOptions {
    /// The defaults: backoff from 100 ms to 30 s, [`DEFAULT_HEARTBEAT`],
    /// [`DEFAULT_STOP_DEADLINE`].
    pub(super) fn new(url: String) -> LinkOptions {
        LinkOptions {
            url,
            reconnect: (Duration::from_millis(100), Duration::from_secs(30)),
            heartbeat: DEFAULT_HEARTBEAT,
            drop_deadline: DEFAULT_STOP_DEADLINE,
        }
    }

    /// The settings of a connection named `name`, checking the URL.
    pub(super) fn link(&self, name: String) -> Result<Link> {
        let mut link = Link::new(&self.url, self.heartbeat, name)?;
        (link.reconnect_min, link.reconnect_max) = self.reconnect;
        Ok(link)
    }
}

/// Connection settings shared by both bridges.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub(super) uri: AMQPUri,
    pub(super) name: String,
    pub(super) reconnect_min: Duration,
    pub(super) reconnect_max: Duration,
    /// The longest a connection may take to open (TCP connect, AMQP handshake, channel and the
    /// ingestor's `qos` and `consume`), and the longest any later call to the broker may take
    /// (a publish written out, an ack, a close): the URL's `connection_timeout`, 10 s if unset.
    pub(super) call_timeout: Duration,
}

impl Link {
    /// Parses `url` (`amqp://user:pass@host:port/vhost?heartbeat=..`) and sets the heartbeat
    /// unless the URL has one: whole seconds, at least 1, at most `u16::MAX`.
    pub(super) fn new(url: &str, heartbeat: Duration, name: String) -> Result<Link> {
        let mut uri: AMQPUri =
            url.parse().map_err(|e| Error::InvalidOption(format!("AMQP URL {url:?}: {e}")))?;
        if uri.query.heartbeat.is_none() {
            let secs = u16::try_from(heartbeat.as_secs().max(1)).unwrap_or(u16::MAX);
            uri.query.heartbeat = Some(secs);
        }
        let ms = *uri.query.connection_timeout.get_or_insert(10_000);
        Ok(Link {
            uri,
            name,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            call_timeout: Duration::from_millis(ms.max(1)),
        })
    }

    /// Opens a connection (lapin's automatic recovery off: the bridge reconnects itself). The
    /// caller bounds the wait: lapin's own connect has no timeout.
    pub(super) async fn connect(&self) -> lapin::Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name(self.name.clone().into());
        Connection::connect_uri(self.uri.clone(), props).await
    }
}

/// The connection state, shared between a bridge's thread and its handle.
#[derive(Debug, Default)]
pub(super) struct StateCell(AtomicU8);

impl StateCell {
    pub(super) fn set(&self, s: ConnectionState) {
        let v = match s {
            ConnectionState::Connecting => 0,
            ConnectionState::Connected => 1,
            ConnectionState::Stopped => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> ConnectionState {
        match self.0.load(Ordering::Relaxed) {
            0 => ConnectionState::Connecting,
            1 => ConnectionState::Connected,
            _ => ConnectionState::Stopped,
        }
    }
}

/// The last connection or broker error a bridge saw, for its stats.
#[derive(Debug, Default)]
pub(super) struct LastError(Mutex<Option<String>>);

impl LastError {
    pub(super) fn set(&self, e: impl std::fmt::Display) {
        *self.0.lock() = Some(e.to_string());
    }

    pub(super) fn get(&self) -> Option<String> {
        self.0.lock().clone()
    }
}

/// The counters every bridge keeps about its connection, shared by its thread and its handle.
#[derive(Debug, Default)]
pub(super) struct LinkStats {
    /// Connections made (the first one included).
    pub(super) connections: AtomicU64,
    pub(super) state: StateCell,
    /// The last connection, channel or broker (or store) error seen.
    pub(super) last_error: LastError,
}

/// Adds `n` to a statistics counter.
pub(super) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Reads a statistics counter.
pub(super) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The shortest reconnection wait: a smaller `min` (zero included) would retry in a hot loop.
pub(super) const MIN_RECONNECT_WAIT: Duration = Duration::from_millis(10);

/// Exponential reconnection backoff with full jitter: the n-th wait is uniform in
/// `[min, min(max, min * 2^n)]`, `min` at least [`MIN_RECONNECT_WAIT`].
#[derive(Debug)]
pub(super) struct Reconnect {
    min: Duration,
    max: Duration,
    tries: u32,
    rng: u64,
}

impl Reconnect {
    pub(super) fn new(min: Duration, max: Duration) -> Reconnect {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos());
        let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32) | 1;
        let min = min.max(MIN_RECONNECT_WAIT);
        Reconnect { min, max: max.max(min), tries: 0, rng: seed }
    }

    /// The wait before the next try.
    pub(super) fn next_wait(&mut self) -> Duration {
        let ceiling = self.min.saturating_mul(1u32 << self.tries.min(20)).min(self.max);
        self.tries = self.tries.saturating_add(1);
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = u64::try_from(ceiling.saturating_sub(self.min).as_millis()).unwrap_or(u64::MAX);
        let jitter = match span.checked_add(1) {
            Some(n) => self.rng % n,
            None => self.rng,
        };
        self.min.saturating_add(Duration::from_millis(jitter))
    }

    /// Back to the shortest wait, after a connection that worked.
    pub(super) fn reset(&mut self) {
        self.tries = 0;
    }
}

/// How a connection's session (a forwarder's or an ingestor's) ended.
pub(super) enum End {
    /// A stop was asked for (and its deadline reached or nothing is left in flight).
    Stopped,
    /// The connection or channel failed, or a confirm timed out: reconnect.
    Broken,
    /// The local store failed: the bridge ends with this error.
    Fatal(Error),
}

/// One side of a bridge (publishing or consuming), as [`keep_connected`] drives it.
pub(super) trait Side {
    /// What a connection opens besides itself: a channel, and the ingestor's consumer.
    type Opened;

    /// Connects and sets up a channel. On an error, dropping the connection closes it in the
    /// background. The caller bounds the wait.
    async fn open(&self, link: &Link) -> lapin::Result<(Connection, Self::Opened)>;

    /// Runs on one connection until it breaks, the store fails or a stop completes. It resets
    /// `reconnect` once the connection proves itself.
    async fn run(
        &mut self,
        conn: &Connection,
        opened: Self::Opened,
        stop: &mut StopRx,
        reconnect: &mut Reconnect,
    ) -> End;
}

/// A bridge's thread: connect, run a session, reconnect with backoff, until stopped (`Ok`) or
/// the store fails (its error). `stats` follows along.
pub(super) async fn keep_connected<S: Side>(
    link: &Link,
    stats: &LinkStats,
    side: &mut S,
    stop: &mut StopRx,
) -> Result<()> {
    let mut reconnect = Reconnect::new(link.reconnect_min, link.reconnect_max);
    let result = loop {
        if stop_deadline(stop).is_some() {
            break Ok(());
        }
        stats.state.set(ConnectionState::Connecting);
        // A stop is not kept waiting by a broker that does not answer, nor is the next try.
        let limit = link.call_timeout;
        let opened = match unless_stopped(stop, limit, side.open(link)).await {
            Some(Ok(x)) => Some(x),
            Some(Err(e)) => {
                stats.last_error.set(e);
                None
            }
            None if stop_deadline(stop).is_some() => break Ok(()),
            None => {
                stats.last_error.set(format_args!("no connection within {limit:?}"));
                None
            }
        };
        let Some((conn, opened)) = opened else {
            if !sleep_or_stop(stop, reconnect.next_wait()).await {
                break Ok(());
            }
            continue;
        };
        add(&stats.connections, 1);
        stats.state.set(ConnectionState::Connected);
        let end = side.run(&conn, opened, stop, &mut reconnect).await;
        stats.state.set(ConnectionState::Connecting);
        close(&conn, stop, limit).await;
        match end {
            End::Stopped => break Ok(()),
            End::Fatal(e) => break Err(e),
            End::Broken => {
                if !sleep_or_stop(stop, reconnect.next_wait()).await {
                    break Ok(());
                }
            }
        }
    };
    stats.state.set(ConnectionState::Stopped);
    result
}

/// How long past a stop's deadline a bridge still waits for its connection's close.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// Closes a connection, waiting at most `limit` (a dead broker answers nothing), and not much
/// past a stop's deadline, even one requested meanwhile ([`CLOSE_GRACE`] past it at least, for
/// the close to go out).
async fn close(conn: &Connection, stop: &mut StopRx, limit: Duration) {
    if !conn.status().connected() {
        return;
    }
    let give_up = after(limit);
    let mut closing = std::pin::pin!(conn.close(200, "wharf: bye".into()));
    loop {
        let deadline = stop_deadline(stop);
        let end = deadline.map_or(give_up, |t| give_up.min(t.max(Instant::now() + CLOSE_GRACE)));
        tokio::select! {
            biased;
            _ = &mut closing => return,
            () = tokio::time::sleep_until(end.into()) => return,
            () = stopped(stop), if deadline.is_none() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_with_jitter_up_to_the_cap_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(3));
        let mut r = Reconnect::new(min, max);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..12u32 {
            let ceiling = (min * 2u32.pow(n)).min(max);
            let w = r.next_wait();
            assert!(min <= w && w <= ceiling, "try {n}: {w:?} outside [{min:?}, {ceiling:?}]");
            seen.insert(w);
        }
        assert!(seen.len() > 6, "jittered: {seen:?}");
        r.reset();
        assert!(r.next_wait() <= min * 2);
        let mut fixed = Reconnect::new(min, min);
        assert_eq!(fixed.next_wait(), min);
    }

    #[test]
    fn reconnect_waits_saturate_at_the_edges() {
        for (min, max) in [
            (Duration::ZERO, Duration::ZERO),
            (Duration::ZERO, Duration::MAX),
            (Duration::MAX, Duration::ZERO),
            (Duration::MAX, Duration::MAX),
            (Duration::from_nanos(1), Duration::from_secs(1)),
        ] {
            let mut r = Reconnect::new(min, max);
            for _ in 0..40 {
                let w = r.next_wait();
                assert!(w >= min.max(MIN_RECONNECT_WAIT), "{min:?} {max:?}: {w:?}");
            }
        }
    }

    #[test]
    fn a_url_gets_a_heartbeat_unless_it_has_one() {
        let l = Link::new("amqp://guest:guest@127.0.0.1:5672/%2f", DEFAULT_HEARTBEAT, "t".into());
        assert_eq!(l.unwrap().uri.query.heartbeat, Some(10));
        let l = Link::new("amqp://127.0.0.1/%2f?heartbeat=3", DEFAULT_HEARTBEAT, "t".into());
        assert_eq!(l.unwrap().uri.query.heartbeat, Some(3));
        assert!(matches!(
            Link::new("not a url", DEFAULT_HEARTBEAT, "t".into()),
            Err(Error::InvalidOption(_))
        ));
    }

    #[test]
    fn link_options_carry_the_backoff_into_the_link() {
        let mut o = LinkOptions::new("amqp://127.0.0.1/%2f".into());
        o.reconnect = (Duration::from_millis(7), Duration::from_secs(9));
        let l = o.link("t".into()).unwrap();
        assert_eq!((l.reconnect_min, l.reconnect_max), o.reconnect);
        assert_eq!(l.name, "t");
    }
}
