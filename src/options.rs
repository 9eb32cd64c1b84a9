//! Options of a store, as plain data (`WharfBuilder` in `queue/wharf.rs` sets them).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::log::{HEADER_LEN, MIN_SEGMENT_BYTES};
use crate::record::{PUSH_EX_OVERHEAD, TAIL_RESERVE};

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

/// Default size of a log segment file: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Default smallest size of a log segment file: 1 MiB. Segments start at this size and grow
/// (in powers of two, up to the segment size) with the rate the log grows at.
pub const DEFAULT_MIN_SEGMENT_BYTES: u64 = 1 << 20;
/// Default number of ready messages a queue's in-memory index holds before its plain pushes
/// are counted instead of indexed (see `WharfBuilder::index_window`): 65,536.
pub const DEFAULT_INDEX_WINDOW: usize = 1 << 16;
/// Default largest payload: 8 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 8 << 20;

/// The options a store is opened with; see [`WharfBuilder`] for each one and its default.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub segment_bytes: u64,
    /// The smallest segment size; `None`: the default, or the segment size if that is smaller.
    pub min_segment_set: Option<u64>,
    /// The smallest segment size, as validated.
    pub min_segment_bytes: u64,
    pub push_durability: Durability,
    pub ack_durability: Durability,
    pub max_payload: usize,
    pub(crate) max_payload_set: bool,
    pub visibility_timeout: Duration,
    pub read_mode: ReadMode,
    /// Run the background thread (tests on the simulated disk turn it off and call
    /// `store::maintain` instead, so that every run issues the same operations).
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
    /// Ready messages a queue's index holds before its plain pushes join its run (0: all).
    pub index_window: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            min_segment_set: None,
            min_segment_bytes: DEFAULT_MIN_SEGMENT_BYTES,
            index_window: DEFAULT_INDEX_WINDOW,
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
        self.min_segment_bytes = match self.min_segment_set {
            None => DEFAULT_MIN_SEGMENT_BYTES.min(self.segment_bytes),
            Some(min) if (MIN_SEGMENT_BYTES..=self.segment_bytes).contains(&min) => min,
            Some(min) => {
                return Err(Error::InvalidOption(format!(
                    "smallest segment size {min} is outside {MIN_SEGMENT_BYTES}..={} (the \
                     segment size)",
                    self.segment_bytes
                )))
            }
        };
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
