//! What `Wharf::verify` reports: [`VerifyReport`], its record counts, queue summaries and what
//! became of the state database.

use std::path::PathBuf;

use crate::error::Corruption;
use crate::record::Body;

/// What [`Wharf::verify`](crate::Wharf::verify) found in a store directory.
///
/// The store is healthy when [`problems`](Self::problems) is empty (see
/// [`is_healthy`](Self::is_healthy)); a torn tail is not a problem: the next open cuts it.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Segment files read, spares made ahead of time included.
    pub segments: usize,
    /// The valid records of the log, by kind.
    pub records: RecordCounts,
    /// The queues of the catalog in creation order, with their unsettled messages when the log
    /// ends.
    pub queues: Vec<QueueSummary>,
    /// Bytes of a torn write at the end of the log, up to its last non-zero byte: what the next
    /// open cuts off (see [`RecoveryReport::bytes_truncated`](crate::RecoveryReport)).
    pub torn_tail_bytes: u64,
    /// The segment file and the offset in it where the torn tail starts, if there is one.
    pub torn_tail_at: Option<(PathBuf, u64)>,
    /// The durable end recorded by the last clean close (`log/mark`), if there is a valid mark.
    pub mark_end: Option<u64>,
    /// What became of the state database, `state.redb`.
    pub state: StateDbCheck,
    /// The log position the state database's checkpoint covers, if it was read (0: it holds no
    /// checkpoint yet). The replay skips records below it about relocated messages, as an open
    /// does.
    pub checkpoint: Option<u64>,
    /// Relocated messages in the state database: stragglers whose payloads were moved out of
    /// old segments so that those could be deleted.
    pub relocated: u64,
    /// Their payload bytes.
    pub relocated_bytes: u64,
    /// Dedup keys in the state database.
    pub dedup_keys: u64,
    /// Files in `log/` that are not wharf's; an open leaves them alone.
    pub ignored_files: Vec<String>,
    /// Temporary files of an interrupted segment, mark or state database creation (names in
    /// `log/`, and `state.redb.tmp` in the store directory); the next open removes them.
    pub temporary_files: Vec<String>,
    /// Everything wrong, each with its file and the offset in it; empty when the store is
    /// healthy. At most the first 1000 are listed.
    pub problems: Vec<Corruption>,
    /// Problems found past the first 1000: counted, not listed.
    pub more_problems: u64,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty() && self.more_problems == 0
    }
}

/// Valid records of the log, by kind (see `docs/format.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordCounts {
    /// Plain pushes.
    pub push: u64,
    /// Pushes with options (priority, delay, TTL, dedup key).
    pub push_ex: u64,
    /// Deliveries (a pop's lease).
    pub deliver: u64,
    /// Acks, including messages dropped on expiry.
    pub ack: u64,
    /// Batch acks (`Queue::ack_many`): each settles 1 to 1,024 messages of one queue.
    pub acks: u64,
    /// Releases: ready again at once.
    pub nack: u64,
    /// Failed attempts, waiting for a retry.
    pub retry: u64,
    /// Moves to a dead-letter queue.
    pub dead_letter: u64,
    /// Moves back from a dead-letter queue.
    pub requeue: u64,
    /// Queue catalog records (each segment repeats the catalog).
    pub queue: u64,
    /// Queue configurations.
    pub config: u64,
    /// Epoch records, one per open and per segment.
    pub epoch: u64,
    /// Seals, one per complete segment.
    pub seal: u64,
    /// Anchors (where the log starts, the last checkpoint): one per segment and per deletion.
    pub anchor: u64,
}

impl RecordCounts {
    /// All records.
    pub fn total(&self) -> u64 {
        self.push
            + self.push_ex
            + self.deliver
            + self.ack
            + self.acks
            + self.nack
            + self.retry
            + self.dead_letter
            + self.requeue
            + self.queue
            + self.config
            + self.epoch
            + self.seal
            + self.anchor
    }

    pub(super) fn add(&mut self, body: &Body<'_>) {
        let n = match body {
            Body::Push { .. } => &mut self.push,
            Body::PushEx { .. } => &mut self.push_ex,
            Body::Deliver { .. } => &mut self.deliver,
            Body::Ack { .. } => &mut self.ack,
            Body::Acks { .. } => &mut self.acks,
            Body::Nack { .. } => &mut self.nack,
            Body::Retry { .. } => &mut self.retry,
            Body::DeadLetter { .. } => &mut self.dead_letter,
            Body::Requeue { .. } => &mut self.requeue,
            Body::Queue { .. } => &mut self.queue,
            Body::Config { .. } => &mut self.config,
            Body::Epoch { .. } => &mut self.epoch,
            Body::Seal => &mut self.seal,
            Body::Anchor { .. } => &mut self.anchor,
        };
        *n += 1;
    }
}

/// One queue's unsettled messages where the log ends, as the next open would find them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSummary {
    /// The queue's name.
    pub name: String,
    /// Messages ready for delivery now.
    pub ready: u64,
    /// Messages waiting for a due time (a delay or a retry backoff) still ahead.
    pub delayed: u64,
    /// Of the ready and delayed ones, messages delivered and not settled since (in flight, or
    /// leased when the store last stopped).
    pub in_flight: u64,
}

impl QueueSummary {
    /// Unsettled messages: ready or delayed.
    pub fn unsettled(&self) -> u64 {
        self.ready + self.delayed
    }
}

/// What became of the state database, `state.redb`, which the first checkpoint creates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateDbCheck {
    /// There is none: no checkpoint was taken yet.
    #[default]
    Absent,
    /// It was read: its checkpoint, relocated messages and dedup keys are in the report, every
    /// relocated payload was checked against its length and checksum and every page against
    /// redb's checksums. What it holds wrong is listed among the problems.
    Opened,
    /// It could not be read, for this reason. When the reason is damage it is listed among the
    /// problems too (and the log is replayed without the checkpoint); a database that changed
    /// each time it was read (a store open elsewhere kept committing checkpoints) is not a
    /// problem.
    NotOpened(String),
}

/// The former name of [`StateDbCheck`].
#[deprecated(note = "renamed to StateDbCheck")]
pub type StateDb = StateDbCheck;
