//! `Wharf`: the handle to an open store, and `WharfBuilder`, which opens one.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::admin;
use super::handle::Queue;
use crate::checkpoint::{self, CheckpointReport};
use crate::clock::Clock;
use crate::error::Result;
use crate::log::RecoveryReport;
use crate::log::Stats;
use crate::options::{Durability, Options, ReadMode};
use crate::salvage::{self, SalvageReport};
use crate::storage::{RealFs, Storage};
use crate::store::Core;
#[cfg(feature = "testing")]
use crate::store::Shared;
use crate::verify::{self, VerifyReport};

/// An open store: a directory holding any number of named queues.
///
/// Cheap to clone (`Clone + Send + Sync`); every clone, [`Queue`] and [`Delivery`] shares the
/// one open store, which closes when the last of them is dropped. Dropping makes everything
/// staged durable on a best-effort basis; call [`Wharf::close`] to see errors.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let wharf = wharf::Wharf::open(dir.path())?;
/// let emails = wharf.queue("emails")?;
/// emails.push(b"to: ada@example.com")?;
/// let job = emails.pop()?;
/// assert_eq!(job.payload(), b"to: ada@example.com");
/// job.ack()?;
/// wharf.close()?;
/// # Ok::<(), wharf::Error>(())
/// ```
#[derive(Clone)]
pub struct Wharf {
    core: Arc<Core>,
}

impl fmt::Debug for Wharf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wharf").field("dir", &self.core.shared().dir()).finish_non_exhaustive()
    }
}

impl Wharf {
    /// Opens (or creates) the store in `dir` with the default options, recovering it from its
    /// log: a torn write at the end of the log is cut off, every message that was in flight is
    /// ready again.
    ///
    /// # Errors
    /// [`Error::Locked`] if another handle has `dir` open; [`Error::Corrupted`] (naming the file
    /// and offset) for damage below the durable end of the log, a missing segment or a missing
    /// or stale `state.redb`, or (naming `state.redb`, offset 0) for a state database that
    /// fails redb's page checksums; [`Error::UnsupportedVersion`], [`Error::ForeignSegment`];
    /// [`Error::Io`], of kind `NotADirectory` if `dir` or one of its parents is a file.
    ///
    /// # Panics
    /// Not on damaged files, also with `panic = "abort"`: redb panics on some damage to
    /// `state.redb` when it opens it plainly, so wharf first checks every page checksum of the
    /// file through redb's integrity-checking open (its writes kept in memory) and gives redb
    /// the file for use only if that passes. redb's panics are still caught (`catch_unwind`) and
    /// returned as [`Error::Corrupted`], a second line for what the check cannot see (bytes
    /// changed after it, a bug in redb); under `panic = "abort"` such a panic aborts the
    /// process, and the default panic hook prints its message (README, "Limits").
    pub fn open(dir: impl AsRef<Path>) -> Result<Wharf> {
        Wharf::builder().open(dir)
    }

    /// A builder for options other than the defaults.
    pub fn builder() -> WharfBuilder {
        WharfBuilder::default()
    }

    pub(crate) fn open_with(dir: &Path, opts: Options) -> Result<Wharf> {
        Wharf::open_on(Arc::new(RealFs), dir, opts)
    }

    /// Opens the store on any storage (the fault-injecting one in tests).
    pub(crate) fn open_on(storage: Arc<dyn Storage>, dir: &Path, opts: Options) -> Result<Wharf> {
        let core = Core::open(storage, dir, opts)?;
        Ok(Wharf { core: Arc::new(core) })
    }

    /// The queue named `name`, created (durably) if it does not exist yet.
    ///
    /// # Errors
    /// [`Error::InvalidName`] unless `name` has 1 to 128 characters from `A-Z a-z 0-9 . _ -`;
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::NoSpace`], [`Error::Io`].
    pub fn queue(&self, name: &str) -> Result<Queue> {
        admin::open_queue(&self.core, name).map(Queue::new)
    }

    #[cfg(feature = "testing")]
    pub(crate) fn shared(&self) -> &Shared {
        self.core.shared()
    }

    /// The names of all queues, in creation order.
    pub fn queue_names(&self) -> Vec<String> {
        let g = self.core.shared().lock();
        g.queues().iter().map(|q| q.name().to_string()).collect()
    }

    /// What recovery found and did when this store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.core.shared().report()
    }

    /// Counters of the write path since open.
    pub fn stats(&self) -> Stats {
        self.core.shared().lock().wal().stats()
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        self.core.shared().dir()
    }

    /// Makes every record staged so far durable (written and `fdatasync`ed).
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`] (also when this sync fails).
    pub fn sync(&self) -> Result<()> {
        let shared = self.core.shared();
        let mut g = shared.lock();
        g.check()?;
        shared.sync(&mut g)
    }

    /// Takes a checkpoint now: makes the log durable, writes what it says into the state
    /// database (`state.redb`) up to its end, moves the payloads of stragglers out of old
    /// segments (a few unsettled messages that would otherwise keep a whole segment), and
    /// deletes the segments the checkpoint covers whose messages are all settled. Reopening
    /// then replays only the log after the checkpoint (and the backlog still in the log).
    ///
    /// A background thread does this on its own (see
    /// [`WharfBuilder::checkpoint_every_bytes`] and [`WharfBuilder::checkpoint_interval`]);
    /// calling it is never needed for correctness.
    ///
    /// ```
    /// # fn main() -> wharf::Result<()> {
    /// let dir = tempfile::tempdir()?;
    /// let store = wharf::Wharf::open(dir.path())?;
    /// store.queue("jobs")?.push(b"one")?;
    /// let report = store.checkpoint()?;
    /// assert!(report.position > 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::Io`] if the state database cannot be
    /// written (the log is unharmed; the next checkpoint tries again).
    pub fn checkpoint(&self) -> Result<CheckpointReport> {
        checkpoint::take(self.core.shared())
    }

    /// Makes everything durable and closes the store for every handle: later calls on any of
    /// them return [`Error::Closed`], and the directory can be opened again at once.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the final sync fails.
    pub fn close(self) -> Result<()> {
        self.core.close()
    }

    /// Checks the store in `dir` without changing it, and reports what it holds and every
    /// problem found.
    ///
    /// It reads the state database (`state.redb`, if a checkpoint made one) and checks its
    /// pages against redb's checksums, every relocated payload against its length and CRC, and
    /// that it belongs to this store, that its checkpoint is not past the end of the log, that
    /// its messages and dedup keys name queues of its catalog and that no relocated message is
    /// also unsettled in the log. It reads every segment and checks every header and record
    /// checksum, the chain of segments (contiguous, one store, a known format version), the
    /// durable mark, and the index the checkpoint and the log rebuild, replayed as an open
    /// replays them (every delivery, ack, retry, dead letter and requeue names a queue of the
    /// catalog, message ids are unique, no record follows a seal). A torn tail is reported as
    /// such, in [`VerifyReport::torn_tail_bytes`], not as a problem: the next open cuts it.
    ///
    /// It never writes, creates, removes or locks a file, so it may run while the store is
    /// open, here or in another process; records written while it runs may or may not be
    /// counted, and a state database that changes while it is read is read again. Memory stays
    /// at one read buffer (1 MiB, or one record or relocated payload if larger), the pages redb
    /// writes while it opens the state database (kept in memory: the file is never written)
    /// and the index, never all the payloads.
    ///
    /// ```
    /// use wharf::Wharf;
    /// # let dir = tempfile::tempdir()?;
    /// let wharf = Wharf::open(dir.path())?;
    /// wharf.queue("jobs")?.push(b"resize photo 17")?;
    ///
    /// // While it is open, and after it is closed.
    /// let report = Wharf::verify(dir.path())?;
    /// assert!(report.is_healthy(), "{:?}", report.problems);
    /// assert_eq!(report.queues[0].name, "jobs");
    /// assert_eq!(report.queues[0].unsettled(), 1);
    /// wharf.close()?;
    /// assert!(Wharf::verify(dir.path())?.is_healthy());
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if `dir` cannot be listed. Everything found inside it, a missing or
    /// unreadable file included, is reported in [`VerifyReport::problems`].
    pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport> {
        verify::verify_on(&RealFs, dir.as_ref())
    }

    /// [`Wharf::verify`], calling `progress(done, total)` as it reads the log: `total` is the
    /// bytes of the segment files it found, `done` how many of them it has read (or skipped,
    /// for spares past the end of the log). It is called with `done == 0` once the segments
    /// are listed, after each segment and about every MiB within one, and with
    /// `done == total` at the end.
    ///
    /// ```
    /// use wharf::Wharf;
    /// # let dir = tempfile::tempdir()?;
    /// # Wharf::open(dir.path())?.queue("jobs")?.push(b"resize photo 17")?;
    /// let mut last = (0, 0);
    /// let report = Wharf::verify_with_progress(dir.path(), |done, total| last = (done, total))?;
    /// assert!(report.is_healthy());
    /// assert!(last.1 > 0 && last.0 == last.1);
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Wharf::verify`].
    pub fn verify_with_progress(
        dir: impl AsRef<Path>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<VerifyReport> {
        verify::verify_with(&RealFs, dir.as_ref(), Some(&mut progress))
    }

    /// Salvages the damaged store in `dir` into a new store in `into` (which must be empty or
    /// not exist), leaving `dir` exactly as it is: every message whose records are intact is
    /// written to `into` with its id, queue, payload, attempts, priority, due time, expiry,
    /// dedup key and dead-letter note; the report lists what could not be kept. To salvage a
    /// store in place, open it with [`WharfBuilder::salvage`](crate::WharfBuilder::salvage).
    ///
    /// It works on a healthy store too (a compacted copy, nothing lost):
    ///
    /// ```
    /// use wharf::Wharf;
    /// # let dir = tempfile::tempdir()?;
    /// # let new = tempfile::tempdir()?;
    /// let wharf = Wharf::open(dir.path())?;
    /// let id = wharf.queue("jobs")?.push(b"resize photo 17")?;
    /// wharf.close()?;
    ///
    /// let report = Wharf::salvage_into(dir.path(), new.path().join("copy"))?;
    /// assert_eq!(report.kept, 1);
    /// assert!(report.is_lossless(), "{report}");
    ///
    /// let copy = Wharf::open(new.path().join("copy"))?;
    /// let job = copy.queue("jobs")?.pop()?;
    /// assert_eq!((job.id(), job.payload()), (id, &b"resize photo 17"[..]));
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Locked`] if either directory is open elsewhere; [`Error::InvalidOption`] if
    /// `into` is not empty or `dir` holds an interrupted in-place salvage (open it to finish
    /// that); [`Error::Io`]. Damage in `dir` is never an error: it is what the report lists.
    pub fn salvage_into(dir: impl AsRef<Path>, into: impl AsRef<Path>) -> Result<SalvageReport> {
        salvage::into_dir(dir.as_ref(), into.as_ref())
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
    /// The largest size of a log segment file (default 64 MiB, at least 64 KiB). Segments are
    /// sized to the rate the log grows at: from [`min_segment_bytes`](Self::min_segment_bytes)
    /// up to this, in powers of two. A store keeps one segment ready ahead of the active one
    /// and one in reserve for acks (as large as the largest segment with unsettled messages).
    /// Changing it between opens is allowed: it applies to new segments.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.opts.segment_bytes = bytes;
        self
    }

    /// The smallest size of a log segment file (default 1 MiB, or the segment size if that is
    /// smaller; at least 64 KiB). A new or quiet store uses segments of this size, so its
    /// files take a few of them; once everything in the log is settled and it has been quiet
    /// for a second, a store with larger segments goes back to this size.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let wharf = wharf::Wharf::builder()
    ///     .segment_bytes(256 << 20)
    ///     .min_segment_bytes(4 << 20)
    ///     .open(dir.path())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn min_segment_bytes(mut self, bytes: u64) -> Self {
        self.opts.min_segment_set = Some(bytes);
        self
    }

    /// How many ready messages each queue's in-memory index holds (default 65,536; at least
    /// 1). Past that, a queue's plain pushes (no priority, delay, expiry or dedup key) are
    /// counted, not indexed: they cost no memory per message, and are read back from the log
    /// in push order as the queue drains, up to 1,024 at a time. A backlog of any length
    /// then takes the same memory; messages with options, leases and dead letters are always
    /// indexed (tens of bytes each).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let wharf = wharf::Wharf::builder().index_window(1024).open(dir.path())?;
    /// let q = wharf.queue("backlog")?;
    /// for i in 0..5_000u32 {
    ///     q.push(&i.to_le_bytes())?;
    /// }
    /// assert_eq!(q.depth()?.ready, 5_000);
    /// assert_eq!(q.pop()?.payload(), 0u32.to_le_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn index_window(mut self, messages: usize) -> Self {
        self.opts.index_window = messages.max(1);
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
