//! Options of a store: plain data and the builder that opens a store with them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::log::HEADER_LEN;
use crate::record::{PUSH_EX_OVERHEAD, TAIL_RESERVE};
use crate::Wharf;

/// When a write is durable: what survives a power loss once the call returned `Ok`.
///
/// Whatever the mode, the log becomes durable strictly as a prefix: a record is never durable
/// while an earlier one is not, so a durable ack always implies a durable push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The call returns once its record was written and `fdatasync`ed (shared with every
    /// concurrent call through group commit). Survives a power loss. The default for pushes.
    Immediate,
    /// The call returns at once; a background thread writes and `fdatasync`s at most this long
    /// after. A power loss or a crash loses at most the last interval's records. The default
    /// for acks, nacks and delivery records (10 ms): a lost ack only means a redelivery, which
    /// at-least-once delivery allows. An interval of a century or more (`Duration::MAX`) never
    /// comes: the records are synced by a later `Immediate` call, [`Wharf::sync`] or the close.
    Interval(Duration),
    /// The call returns at once; the record is handed to the OS within a few milliseconds (or
    /// when 1 MiB is staged) and never `fdatasync`ed by this call. Survives a process crash once
    /// handed to the OS, not a power loss.
    None,
}

/// How payloads are read back from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadMode {
    /// Segments are memory-mapped read-only and a payload is handed out as a slice of the map,
    /// never copied. A disk read error under a map raises `SIGBUS`: the limit of this mode.
    Map,
    /// Payloads are read with `pread` into a buffer: one copy, but a read error is an `Err`.
    Pread,
}

/// The options a store is opened with; see [`WharfBuilder`] for each one and its default.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub segment_bytes: u64,
    pub push_durability: Durability,
    pub ack_durability: Durability,
    pub max_payload: usize,
    max_payload_set: bool,
    pub visibility_timeout: Duration,
    pub read_mode: ReadMode,
    /// Run the background thread (tests on the simulated disk turn it off and call
    /// `Shared::maintain` instead, so that every run issues the same operations).
    pub background: bool,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Write each delivery record to the OS before its payload is handed out.
    pub count_crashed_attempts: bool,
    /// The most bytes the store's files may take.
    pub max_disk_bytes: Option<u64>,
    /// Take a checkpoint once this many log bytes were written since the last one (0: the
    /// segment size).
    pub checkpoint_bytes: u64,
    /// Take a checkpoint at least this often while the log moves.
    pub checkpoint_interval: Option<Duration>,
    /// Open past damage by salvaging the store (`salvage/`).
    pub salvage: bool,
}

/// Default size of a log segment file: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Default largest payload: 8 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 8 << 20;
/// Smallest allowed segment size: 64 KiB.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            push_durability: Durability::Immediate,
            ack_durability: Durability::Interval(Duration::from_millis(10)),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_payload_set: false,
            visibility_timeout: Duration::from_secs(30),
            read_mode: ReadMode::Map,
            background: true,
            clock: Arc::new(SystemClock),
            count_crashed_attempts: true,
            max_disk_bytes: None,
            checkpoint_bytes: 0,
            checkpoint_interval: Some(DEFAULT_CHECKPOINT_INTERVAL),
            salvage: false,
        }
    }
}

/// Default time between checkpoints while the log moves: 30 s.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);

impl Options {
    /// Checks every option; a `max_payload` left at its default shrinks to fit the segment.
    pub(crate) fn validate(&mut self) -> Result<()> {
        if self.segment_bytes < MIN_SEGMENT_BYTES || self.segment_bytes > u64::from(u32::MAX) {
            return Err(Error::InvalidOption(format!(
                "segment size {} is outside {MIN_SEGMENT_BYTES}..=4 GiB",
                self.segment_bytes
            )));
        }
        if !self.max_payload_set {
            self.max_payload = self.max_payload.min(self.largest_payload_that_fits());
        }
        if self.max_payload > self.largest_payload_that_fits() {
            return Err(Error::InvalidOption(format!(
                "max payload {} does not fit in half a segment of {} bytes",
                self.max_payload, self.segment_bytes
            )));
        }
        if let Some(max) = self.max_disk_bytes {
            // The active segment, one ready ahead and one in reserve for acks.
            let least = 3 * self.segment_bytes;
            if max < least {
                return Err(Error::InvalidOption(format!(
                    "max disk size {max} is below the {least} bytes of three segments"
                )));
            }
        }
        if self.checkpoint_bytes == 0 {
            self.checkpoint_bytes = self.segment_bytes;
        }
        if self.checkpoint_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidOption("checkpoint interval must not be zero".into()));
        }
        if self.visibility_timeout.is_zero() {
            return Err(Error::InvalidOption("visibility timeout must not be zero".into()));
        }
        Ok(())
    }

    /// A payload may take at most half a segment, so a segment's preamble always fits beside it.
    fn largest_payload_that_fits(&self) -> usize {
        let usable =
            self.segment_bytes / 2 - HEADER_LEN - TAIL_RESERVE as u64 - PUSH_EX_OVERHEAD as u64;
        usize::try_from(usable).unwrap_or(usize::MAX)
    }
}

/// Opens a [`Wharf`] with options other than the defaults.
///
/// ```
/// use std::time::{Duration, Instant};
/// use wharf::{Durability, Wharf};
/// # let dir = tempfile::tempdir()?;
/// let wharf = Wharf::builder()
///     .segment_bytes(8 << 20)
///     .push_durability(Durability::Immediate)
///     .visibility_timeout(Duration::from_secs(60))
///     .open(dir.path())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct WharfBuilder {
    opts: Options,
}

impl WharfBuilder {
    /// Size of each preallocated log segment file (default 64 MiB, at least 64 KiB). A store
    /// keeps one segment ready ahead of the active one and one in reserve for acks, so an empty
    /// store takes three segments of disk. Changing it between opens is allowed: it applies to new segments.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.opts.segment_bytes = bytes;
        self
    }

    /// Durability of `push` and `push_batch` unless a call overrides it (default
    /// [`Durability::Immediate`]).
    pub fn push_durability(mut self, d: Durability) -> Self {
        self.opts.push_durability = d;
        self
    }

    /// Durability of acks, nacks and delivery records unless a call overrides it (default
    /// `Durability::Interval(10 ms)`).
    pub fn ack_durability(mut self, d: Durability) -> Self {
        self.opts.ack_durability = d;
        self
    }

    /// Largest accepted payload in bytes (default 8 MiB, or less with segments under 16 MiB;
    /// at most about half a segment).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.opts.max_payload = bytes;
        self.opts.max_payload_set = true;
        self
    }

    /// How long a popped message stays hidden from other consumers before it is delivered
    /// again if not settled (default 30 s). Not zero; a century or more (`Duration::MAX`) is a
    /// lease that never runs out while the store is open.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.opts.visibility_timeout = d;
        self
    }

    /// How payloads are read (default [`ReadMode::Map`]).
    pub fn read_mode(mut self, mode: ReadMode) -> Self {
        self.opts.read_mode = mode;
        self
    }

    /// Where the store reads the time (default [`SystemClock`]): lease deadlines, delays,
    /// retries and TTLs. Tests pass a [`ManualClock`](crate::ManualClock) and never sleep.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.opts.clock = clock;
        self
    }

    /// The most bytes the store's segment files may take (default: no limit but the disk's).
    /// A push that would need a new segment past it fails with
    /// [`Error::Full`](crate::Error::Full) (or waits, see
    /// [`PushOptions::wait_for_space`](crate::PushOptions::wait_for_space)) and stores
    /// nothing; pops and acks go on in the segment kept in reserve, and acked segments are
    /// deleted, which makes room again. At least three segments.
    pub fn max_disk_bytes(mut self, bytes: u64) -> Self {
        self.opts.max_disk_bytes = Some(bytes);
        self
    }

    /// Whether a delivery is counted even if the process dies while handling it (default
    /// `true`): its delivery record reaches the OS (one `pwrite`, shared by concurrent pops, no
    /// `fdatasync`) before the payload is handed out, so a message that crashes its consumer
    /// every time reaches its queue's `max_attempts` and is dead-lettered instead of
    /// crash-looping for ever. `false` stages the record like an ack: cheaper, but attempts of
    /// deliveries lost in a crash are not counted.
    pub fn count_crashed_attempts(mut self, on: bool) -> Self {
        self.opts.count_crashed_attempts = on;
        self
    }

    /// Take a checkpoint (see [`Wharf::checkpoint`]) once this many bytes were appended to the
    /// log since the last one (default: the segment size). Smaller means shorter reopen times
    /// and settled segments deleted sooner, for a small redb transaction each time.
    pub fn checkpoint_every_bytes(mut self, bytes: u64) -> Self {
        self.opts.checkpoint_bytes = bytes.max(1);
        self
    }

    /// Take a checkpoint at least this often while the log moves (default 30 s); `None` only
    /// by bytes and on demand. Not zero; `Some(Duration::MAX)` is as `None`.
    pub fn checkpoint_interval(mut self, every: Option<Duration>) -> Self {
        self.opts.checkpoint_interval = every;
        self
    }

    /// Whether to open past damage (default `false`: damage below the durable end of the log
    /// fails the open with [`Error::Corrupted`](crate::Error::Corrupted)).
    ///
    /// With `true`, an open that finds damage — bad checksums, torn or missing segments, a
    /// damaged or missing `state.redb`, a damaged `mark` — salvages the store instead of
    /// failing: every message whose records are intact is kept (with its id, payload,
    /// attempts, priority, due time, expiry, dedup key and dead-letter note), the store is
    /// rewritten as a fresh, healthy log, the damaged files are moved untouched into
    /// `DIR/damaged-<unix time>/` with a `salvage-report.txt`, and
    /// [`RecoveryReport::salvage`](crate::RecoveryReport::salvage) lists what could not be
    /// kept: lost messages by id (and queue, where a surviving record names it), messages that
    /// may be redelivered because a damaged range may have held their ack, and the ranges lost
    /// where ids cannot be named one by one. A crash during salvage is finished (or redone) by
    /// the next open, with the same result. A healthy store is simply opened: nothing is moved
    /// and `salvage` is `None`. (The strict recovery tried first may, like any open, cut a torn
    /// tail or let redb finish an unclean shutdown before it finds the damage.)
    ///
    /// ```
    /// use wharf::Wharf;
    /// # let dir = tempfile::tempdir()?;
    /// let wharf = Wharf::builder().salvage(true).open(dir.path())?;
    /// wharf.queue("jobs")?.push(b"resize photo 17")?;
    /// // A healthy store: opened as it is.
    /// assert!(wharf.recovery_report().salvage.is_none());
    /// # Ok::<(), wharf::Error>(())
    /// ```
    pub fn salvage(mut self, on: bool) -> Self {
        self.opts.salvage = on;
        self
    }

    /// The options, checked.
    #[cfg(feature = "testing")]
    pub(crate) fn into_options(mut self) -> Result<Options> {
        self.opts.validate()?;
        Ok(self.opts)
    }

    /// Opens (or creates) the store in `dir`, recovering it from its log.
    ///
    /// # Errors
    /// As [`Wharf::open`], plus [`Error::InvalidOption`] for an option out of range.
    pub fn open(mut self, dir: impl AsRef<Path>) -> Result<Wharf> {
        self.opts.validate()?;
        Wharf::open_with(dir.as_ref(), self.opts)
    }
}
