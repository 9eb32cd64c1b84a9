//! Counters of the write path.

/// Counters of the write path, for benchmarks and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fdatasync` calls on log segments.
    pub fsyncs: u64,
    /// Write calls (`pwrite`) on log segments.
    pub writes: u64,
    /// Records appended to the log.
    pub records: u64,
    /// Bytes appended to the log.
    pub bytes: u64,
    /// The log's durable end (a log position).
    pub durable_lsn: u64,
    /// Segment files in use or ready.
    pub segments: usize,
    /// Bytes of those files.
    pub disk_bytes: u64,
    /// The log position the last checkpoint in the state database covers (0: none yet).
    pub checkpoint_lsn: u64,
}
