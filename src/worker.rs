//! `Worker`: a pool of threads that pop a queue's messages, run a handler on each, and settle
//! each message by the handler's outcome.
//!
//! Invariant: every delivery a worker thread pops is settled by that thread exactly once (ack,
//! nack, dead letter, or release if shutdown began before its handler started), except one
//! whose handler outlives a shutdown deadline: `shutdown` ends its lease, so it is delivered
//! again, and the late outcome is discarded. While a handler runs, the pool's keeper thread
//! renews its lease; it renews a delivery only while the delivery sits in `Pool::busy`, under
//! `Inner::pool`, so never after the handler returned. Lock order: `Inner::pool` before the
//! store's lock; the only store call made while `Inner::pool` is held is the keeper's renewal,
//! which does no I/O.

use std::any::{type_name, Any};
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::queue::{Delivery, NackOptions};
use crate::typed::{Bincode, Codec, TypedQueue};

/// How long an idle worker thread waits in [`Queue::pop_timeout`] before it looks whether
/// shutdown began, unless [`WorkerBuilder::poll_timeout`] says otherwise.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// How long dropping a [`Worker`] waits for its running handlers, unless
/// [`WorkerBuilder::drop_deadline`] says otherwise.
pub const DEFAULT_DROP_DEADLINE: Duration = Duration::from_secs(10);

/// The most threads a worker runs ([`WorkerBuilder::threads`]).
const MAX_THREADS: usize = 1024;

/// The range of [`WorkerBuilder::poll_timeout`]: shorter would spin while idle, longer would
/// hold up a shutdown.
const POLL_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(60);

/// The shortest time between two renewal rounds of the keeper, whatever the visibility timeout.
const MIN_RENEW_PERIOD: Duration = Duration::from_millis(1);

/// A pool of threads processing one queue's messages with a handler, started by
/// [`WorkerBuilder::run`].
///
/// Each thread pops a message, runs the handler on it, and settles the message by the outcome:
///
/// - `Ok(())`: [ack](Delivery::ack), done;
/// - `Err(e)`: [nack](Delivery::nack_with) with `e.to_string()` as the error text, so the
///   message is retried after the queue's [`Backoff`](crate::Backoff), and after its
///   `max_attempts` goes to the dead-letter queue, where [`Queue::peek`] shows the text;
/// - a panic: caught, and treated as `Err` with the panic message (`"panicked: ..."`); the
///   thread goes on with the next message. The panic hook still runs (by default it prints).
///
/// **Long jobs keep their lease.** While a handler runs, the pool's keeper thread renews its
/// message's lease every third of the queue's visibility timeout, to the full timeout from
/// then, so a job may run longer than the timeout without being delivered again (a lease the
/// handler [extended](Delivery::extend) further is left as it is). A renewal changes only the
/// store's memory, it writes nothing to the log. Renewals stop as the handler returns, before
/// the message is settled, and when shutdown gives a handler up; if the process dies, nothing
/// renews the lease any more and the message is delivered again after a restart. A renewal
/// that fails (say, the store was closed) changes nothing about how the handler's outcome is
/// settled and counted. A change of the queue's visibility timeout reaches the keeper at its
/// next renewal.
///
/// [`Worker::shutdown`] stops the pool: see there. **Dropping** a worker shuts it down the same
/// way with [`DEFAULT_DROP_DEADLINE`] (or [`WorkerBuilder::drop_deadline`]), so the drop can
/// block that long while handlers finish.
///
/// ```
/// use std::time::Duration;
/// use wharf::{QueueConfig, Worker};
/// # let dir = tempfile::tempdir()?;
/// let wharf = wharf::Wharf::open(dir.path())?;
/// let thumbs = wharf.queue("thumbnails")?;
/// thumbs.set_config(&QueueConfig::new().max_attempts(3))?;
/// thumbs.push_batch(["a.jpg", "b.jpg", "c.jpg"])?;
///
/// let worker = Worker::builder(&thumbs).threads(2).run(|job| {
///     let name = std::str::from_utf8(job.payload()).map_err(|e| e.to_string())?;
///     println!("thumbnail for {name}");
///     Ok::<(), String>(())
/// })?;
/// # while thumbs.stats()?.processed < 3 { std::thread::sleep(Duration::from_millis(5)); }
/// let report = worker.shutdown(Duration::from_secs(5))?;
/// assert_eq!(report.stats.processed, 3);
/// # Ok::<(), wharf::Error>(())
/// ```
pub struct Worker {
    queue: Queue,
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    keeper: Option<JoinHandle<()>>,
    drop_deadline: Duration,
}

/// Options of a [`Worker`]: [`Worker::builder`] makes one, [`WorkerBuilder::run`] starts the
/// pool.
#[derive(Debug)]
#[must_use]
pub struct WorkerBuilder {
    queue: Queue,
    threads: usize,
    poll_timeout: Duration,
    drop_deadline: Duration,
    signal: ShutdownSignal,
}

/// A [`WorkerBuilder`] for a [`TypedQueue`]: its handler gets the decoded value. Made by
/// [`Worker::typed`].
#[must_use]
pub struct TypedWorkerBuilder<T, C = Bincode> {
    builder: WorkerBuilder,
    codec: Arc<C>,
    _type: PhantomData<fn(T)>,
}

/// Tells handlers that their [`Worker`] is shutting down, so that a long job can stop at a
/// good point (and, say, nack itself or save its progress) instead of being given up at the
/// deadline. Get it from [`WorkerBuilder::shutdown_signal`]; clones share the same signal.
#[derive(Clone)]
pub struct ShutdownSignal {
    inner: Arc<SignalInner>,
}

#[derive(Default)]
struct SignalInner {
    requested: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

/// Counters of a [`Worker`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Messages whose handler returned `Ok` and whose ack went through.
    pub processed: u64,
    /// Messages whose handler returned `Err` or panicked (or, for a typed worker, whose
    /// payload did not decode); each was nacked or dead-lettered.
    pub failed: u64,
    /// Of `failed`, the handler calls that panicked.
    pub panicked: u64,
    /// Settlements refused because the handler took longer than the message's lease.
    pub lease_expired: u64,
    /// Other errors from the store on pop or settle. On [`Error::Closed`] or
    /// [`Error::Poisoned`] a thread stops, and [`Worker::shutdown`] returns that error.
    pub errors: u64,
    /// Handlers running now.
    pub in_flight: usize,
    /// Worker threads still running.
    pub threads: usize,
}

/// What [`Worker::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Handlers running when shutdown began that returned before the deadline; their messages
    /// were settled by their outcome.
    pub finished: usize,
    /// Handlers still running at the deadline: their messages were given up on, and are ready
    /// again at once for another consumer (or after a reopen).
    pub released: usize,
    /// The worker's counters when it stopped.
    pub stats: WorkerStats,
}

/// What the thread does with a message after its handler ran.
enum Outcome {
    Ack,
    Nack(String),
    DeadLetter(String),
}

type Job = dyn Fn(&Delivery) -> Outcome + Send + Sync;

struct Inner {
    signal: ShutdownSignal,
    pool: Mutex<Pool>,
    /// Notified when a thread exits.
    exited: Condvar,
    /// Wakes the keeper: a handler started while it had nothing to renew, or the pool stopped.
    keep: Condvar,
    counters: Counters,
}

struct Pool {
    /// The delivery each thread's handler is running on. Taken back by the thread when the
    /// handler returns, or by `shutdown` at the deadline to give it up; the keeper renews
    /// the leases of those here.
    busy: Vec<Option<Arc<Delivery>>>,
    live: usize,
    fatal: Option<Error>,
    /// The keeper waits without a timeout, for a handler to start.
    keeper_idle: bool,
    /// No lease needs keeping any more: the keeper exits.
    keeper_done: bool,
}

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    lease_expired: AtomicU64,
    errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Worker {
    /// A builder for a worker on `queue`.
    pub fn builder(queue: &Queue) -> WorkerBuilder {
        WorkerBuilder {
            queue: queue.clone(),
            threads: std::thread::available_parallelism().map_or(1, usize::from).min(MAX_THREADS),
            poll_timeout: DEFAULT_POLL_TIMEOUT,
            drop_deadline: DEFAULT_DROP_DEADLINE,
            signal: ShutdownSignal { inner: Arc::default() },
        }
    }

    /// A builder for a worker on a typed queue, whose handler gets each decoded value.
    ///
    /// A payload that does not decode never reaches the handler: it is dead-lettered at once
    /// (no retry could help) with the [`Error::Codec`] text, and counted in
    /// [`WorkerStats::failed`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde::{Deserialize, Serialize};
    /// use wharf::{TypedQueue, Worker};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Email { to: String, subject: String }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let wharf = wharf::Wharf::open(dir.path())?;
    /// let emails: TypedQueue<Email> = TypedQueue::new(wharf.queue("emails")?);
    /// emails.push(&Email { to: "ada@example.com".into(), subject: "hi".into() })?;
    ///
    /// let worker = Worker::typed(&emails).threads(1).run(|email: Email, job| {
    ///     println!("attempt {}: mail {:?} to {}", job.attempt(), email.subject, email.to);
    ///     Ok::<(), std::io::Error>(())
    /// })?;
    /// # while emails.queue().stats()?.processed < 1 { std::thread::sleep(Duration::from_millis(5)); }
    /// worker.shutdown(Duration::from_secs(5))?;
    /// # Ok::<(), wharf::Error>(())
    /// ```
    pub fn typed<T, C: Codec<T>>(queue: &TypedQueue<T, C>) -> TypedWorkerBuilder<T, C> {
        TypedWorkerBuilder {
            builder: Worker::builder(queue.queue()),
            codec: queue.shared_codec(),
            _type: PhantomData,
        }
    }

    /// The worker's counters so far.
    pub fn stats(&self) -> WorkerStats {
        self.inner.stats()
    }

    /// Stops the worker: no thread starts a new handler from now on, and shutdown waits up to
    /// `deadline` for the running handlers to return (their messages are settled as usual).
    /// Handlers still running then are given up on: their leases end at once, so their
    /// messages are ready again for another consumer (or after a reopen); their threads are
    /// left to finish on their own, and their outcome is discarded (each such thread keeps
    /// its [`Delivery`], and so the store, alive until its handler returns; use
    /// [`Wharf::close`](crate::Wharf::close) to close the store regardless).
    ///
    /// Until then, the leases of the running handlers are renewed as usual. All other threads
    /// (the keeper too) are joined before this returns, which can take up to one
    /// [`poll_timeout`](WorkerBuilder::poll_timeout) after the deadline. A `deadline` too
    /// large for the clock (say [`Duration::MAX`]) waits for every handler, however long.
    ///
    /// # Errors
    /// [`Error::Closed`] or [`Error::Poisoned`] if a worker thread stopped early because the
    /// store was closed or poisoned under it. The worker is stopped either way.
    pub fn shutdown(mut self, deadline: Duration) -> Result<ShutdownReport> {
        self.stop(deadline)
    }

    fn stop(&mut self, deadline: Duration) -> Result<ShutdownReport> {
        let until = Instant::now().checked_add(deadline);
        let inner = &*self.inner;
        let mut pool = inner.pool.lock();
        // Under the pool lock, so that no thread registers a handler after the count below.
        inner.signal.request();
        let in_flight = pool.busy.iter().flatten().count();
        while pool.live > 0 {
            match until {
                Some(t) => {
                    if inner.exited.wait_until(&mut pool, t).timed_out() {
                        break;
                    }
                }
                None => inner.exited.wait(&mut pool),
            }
        }
        let given_up: Vec<(usize, Arc<Delivery>)> = pool
            .busy
            .iter_mut()
            .enumerate()
            .filter_map(|(i, slot)| slot.take().map(|d| (i, d)))
            .collect();
        // Every slot is empty now, so the keeper's next round would renew nothing.
        pool.keeper_done = true;
        inner.keep.notify_all();
        drop(pool);
        for (_, d) in &given_up {
            // Ends the lease now: the message is ready again, and the handler's late
            // settlement (or its drop) fails with `LeaseExpired`, changing nothing. It fails
            // here only if the lease had already run out, which is as good.
            let _ = d.extend(Duration::ZERO);
        }
        for (i, thread) in self.threads.drain(..).enumerate() {
            if !given_up.iter().any(|&(j, _)| j == i) {
                // A thread only panics outside the handler on a bug here; its exit guard
                // has already accounted for it.
                let _ = thread.join();
            }
        }
        if let Some(keeper) = self.keeper.take() {
            // It holds the pool lock only for a round of renewals, and exits when it next
            // looks at `keeper_done`.
            let _ = keeper.join();
        }
        let fatal = inner.pool.lock().fatal.take();
        if let Some(e) = fatal {
            return Err(e);
        }
        Ok(ShutdownReport {
            finished: in_flight.saturating_sub(given_up.len()),
            released: given_up.len(),
            stats: inner.stats(),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.keeper.is_some() {
            // Best effort: a store error already stopped the threads it reached.
            let _ = self.stop(self.drop_deadline);
        }
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue.name())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The number of threads, each running one handler at a time (default: the number of
    /// CPUs, at most 1024), from 1 to 1024. The pool has one more thread, its keeper, which renews the
    /// leases of running handlers.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// How long an idle thread waits for a message before it looks whether shutdown began
    /// (default [`DEFAULT_POLL_TIMEOUT`]), from 1 ms to 60 s. The wait itself is woken by a
    /// push; this bounds how long [`Worker::shutdown`] can take beyond its deadline.
    pub fn poll_timeout(mut self, d: Duration) -> Self {
        self.poll_timeout = d;
        self
    }

    /// How long dropping the [`Worker`] waits for running handlers, as
    /// [`Worker::shutdown`] does (default [`DEFAULT_DROP_DEADLINE`]); [`Duration::MAX`] waits
    /// for them however long they take.
    pub fn drop_deadline(mut self, d: Duration) -> Self {
        self.drop_deadline = d;
        self
    }

    /// The signal the worker raises when it begins to shut down, for handlers to watch.
    ///
    /// ```
    /// use std::time::Duration;
    /// use wharf::Worker;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = wharf::Wharf::open(dir.path())?.queue("crawl")?;
    /// let builder = Worker::builder(&q).threads(1);
    /// let stopping = builder.shutdown_signal();
    /// let worker = builder.run(move |_page| {
    ///     for _link in 0..1_000 {
    ///         if stopping.is_requested() {
    ///             return Err("interrupted by shutdown"); // nacked: retried later
    ///         }
    ///         // crawl one link
    ///     }
    ///     Ok(())
    /// })?;
    /// worker.shutdown(Duration::from_secs(5))?;
    /// # Ok::<(), wharf::Error>(())
    /// ```
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.signal.clone()
    }

    /// Starts the threads, each running `handler` on one message at a time.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a thread count or poll timeout out of its range (0 or more
    /// than 1024 threads; a poll timeout under 1 ms or over 60 s); [`Error::Io`] if a thread
    /// cannot be spawned (the threads already started are stopped).
    pub fn run<F, E>(self, handler: F) -> Result<Worker>
    where
        F: Fn(&Delivery) -> std::result::Result<(), E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        self.spawn(Arc::new(move |d: &Delivery| match handler(d) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Nack(e.to_string()),
        }))
    }

    fn spawn(self, job: Arc<Job>) -> Result<Worker> {
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(Error::InvalidOption(format!(
                "a worker runs 1 to {MAX_THREADS} threads, not {}",
                self.threads
            )));
        }
        if !POLL_TIMEOUT_RANGE.contains(&self.poll_timeout) {
            return Err(Error::InvalidOption(format!(
                "a worker's poll timeout is 1 ms to 60 s, not {:?}",
                self.poll_timeout
            )));
        }
        let inner = Arc::new(Inner {
            signal: self.signal,
            pool: Mutex::new(Pool {
                busy: vec![None; self.threads],
                live: 0,
                fatal: None,
                keeper_idle: false,
                keeper_done: false,
            }),
            exited: Condvar::new(),
            keep: Condvar::new(),
            counters: Counters::default(),
        });
        let mut worker = Worker {
            queue: self.queue,
            inner,
            threads: Vec::with_capacity(self.threads),
            keeper: None,
            drop_deadline: self.drop_deadline,
        };
        let inner = Arc::clone(&worker.inner);
        let spawned = std::thread::Builder::new()
            .name(format!("wharf-{}-keeper", worker.queue.name()))
            .spawn(move || keep(&inner));
        match spawned {
            Ok(t) => worker.keeper = Some(t),
            // Nothing else started yet: dropping `worker` joins nothing.
            Err(e) => return Err(Error::Io(e)),
        }
        for i in 0..self.threads {
            let (queue, inner, job) =
                (worker.queue.clone(), Arc::clone(&worker.inner), Arc::clone(&job));
            let poll = self.poll_timeout;
            worker.inner.pool.lock().live += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("wharf-{}-{i}", worker.queue.name()))
                .spawn(move || work(i, &queue, &*job, &inner, poll));
            match spawned {
                Ok(t) => worker.threads.push(t),
                Err(e) => {
                    worker.inner.pool.lock().live -= 1;
                    // Stops (and joins) the threads started so far.
                    drop(worker);
                    return Err(Error::Io(e));
                }
            }
        }
        Ok(worker)
    }
}

impl<T, C: Codec<T> + 'static> TypedWorkerBuilder<T, C> {
    /// As [`WorkerBuilder::threads`].
    pub fn threads(mut self, n: usize) -> Self {
        self.builder = self.builder.threads(n);
        self
    }

    /// As [`WorkerBuilder::poll_timeout`].
    pub fn poll_timeout(mut self, d: Duration) -> Self {
        self.builder = self.builder.poll_timeout(d);
        self
    }

    /// As [`WorkerBuilder::drop_deadline`].
    pub fn drop_deadline(mut self, d: Duration) -> Self {
        self.builder = self.builder.drop_deadline(d);
        self
    }

    /// As [`WorkerBuilder::shutdown_signal`].
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.builder.shutdown_signal()
    }

    /// Starts the threads, each decoding one message at a time and running `handler` on its
    /// value and delivery.
    ///
    /// # Errors
    /// As [`WorkerBuilder::run`].
    pub fn run<F, E>(self, handler: F) -> Result<Worker>
    where
        F: Fn(T, &Delivery) -> std::result::Result<(), E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        let codec = self.codec;
        self.builder.spawn(Arc::new(move |d: &Delivery| match codec.decode(d.payload()) {
            Ok(value) => match handler(value, d) {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::Nack(e.to_string()),
            },
            Err(e) => Outcome::DeadLetter(e.to_string()),
        }))
    }
}

impl<T, C> fmt::Debug for TypedWorkerBuilder<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedWorkerBuilder")
            .field("type", &type_name::<T>())
            .field("builder", &self.builder)
            .finish_non_exhaustive()
    }
}

impl ShutdownSignal {
    /// Whether the worker began to shut down.
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Waits until the worker begins to shut down, at most `timeout`; returns
    /// [`ShutdownSignal::is_requested`]. Use it instead of `sleep` in a handler that waits. A
    /// `timeout` too large for the clock (say [`Duration::MAX`]) waits until shutdown begins.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        let mut g = self.inner.lock.lock();
        while !self.is_requested() {
            match until {
                Some(t) => {
                    if self.inner.cv.wait_until(&mut g, t).timed_out() {
                        return self.is_requested();
                    }
                }
                None => self.inner.cv.wait(&mut g),
            }
        }
        true
    }

    fn request(&self) {
        let _g = self.inner.lock.lock();
        self.inner.requested.store(true, Ordering::SeqCst);
        self.inner.cv.notify_all();
    }
}

impl fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownSignal").field("requested", &self.is_requested()).finish()
    }
}

impl Inner {
    fn stats(&self) -> WorkerStats {
        let c = &self.counters;
        let (in_flight, threads) = {
            let pool = self.pool.lock();
            (pool.busy.iter().flatten().count(), pool.live)
        };
        WorkerStats {
            processed: c.processed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
            lease_expired: c.lease_expired.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            in_flight,
            threads,
        }
    }
}

/// Errors after which a worker thread cannot go on.
fn is_fatal(e: &Error) -> bool {
    matches!(e, Error::Closed | Error::Poisoned(_))
}

/// Accounts for a thread's exit however it ends, so that `shutdown` never waits for a thread
/// that is gone.
struct Exit<'a> {
    inner: &'a Inner,
    fatal: Option<Error>,
}

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let mut pool = self.inner.pool.lock();
        pool.live -= 1;
        if pool.fatal.is_none() {
            pool.fatal = self.fatal.take();
        }
        self.inner.exited.notify_all();
    }
}

/// One worker thread.
fn work(i: usize, queue: &Queue, job: &Job, inner: &Inner, poll: Duration) {
    let mut exit = Exit { inner, fatal: None };
    while !inner.signal.is_requested() {
        let d = match queue.pop_timeout(poll) {
            Ok(Some(d)) => Arc::new(d),
            Ok(None) => continue,
            Err(e) if is_fatal(&e) => {
                exit.fatal = Some(e);
                return;
            }
            Err(_) => {
                // Say, a payload failing its checksum (it stays leased) or a full disk: go on,
                // without spinning on a persistent error.
                bump(&inner.counters.errors);
                inner.signal.wait_timeout(poll);
                continue;
            }
        };
        {
            let mut pool = inner.pool.lock();
            if inner.signal.is_requested() {
                drop(pool);
                // Popped as shutdown began: not started, so give it back at once.
                if let Some(d) = Arc::into_inner(d) {
                    let _ = d.release();
                }
                return;
            }
            pool.busy[i] = Some(Arc::clone(&d));
            if pool.keeper_idle {
                inner.keep.notify_one();
            }
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| job(&d))).unwrap_or_else(|panic| {
            bump(&inner.counters.panicked);
            Outcome::Nack(format!("panicked: {}", panic_text(&*panic)))
        });
        let ours = inner.pool.lock().busy[i].take();
        let Some(ours) = ours else {
            // Given up on by `shutdown`: the lease is over and the message may be with
            // another consumer already. Dropping `d` changes nothing.
            return;
        };
        drop(ours);
        let Some(d) = Arc::into_inner(d) else { return };
        if let Err(e) = settle(d, outcome, &inner.counters) {
            if is_fatal(&e) {
                exit.fatal = Some(e);
                return;
            }
        }
    }
}

/// The keeper thread: renews the lease of every running handler's delivery, a round every
/// third of the shortest visibility timeout among them, and waits without a timeout while no
/// handler runs. A renewal that fails is left at that: the lease lapses (or the store is gone)
/// and the handler's thread settles and counts its outcome as usual.
fn keep(inner: &Inner) {
    let mut pool = inner.pool.lock();
    while !pool.keeper_done {
        // Under the pool lock: a thread takes its delivery out of `busy` (to settle it), and
        // `stop` gives one up, only between two rounds.
        let period = pool
            .busy
            .iter()
            .flatten()
            .filter_map(|d| d.renew().ok())
            .map(|visibility| (visibility / 3).max(MIN_RENEW_PERIOD))
            .min();
        match period {
            // Woken early only by `stop` (or spuriously: one more round does no harm).
            Some(p) => {
                inner.keep.wait_for(&mut pool, p);
            }
            None => {
                pool.keeper_idle = true;
                inner.keep.wait(&mut pool);
                pool.keeper_idle = false;
            }
        }
    }
}

/// Settles `d` by its handler's outcome, counting it.
fn settle(d: Delivery, outcome: Outcome, c: &Counters) -> Result<()> {
    let settled = match outcome {
        Outcome::Ack => d.ack().map(|()| bump(&c.processed)),
        Outcome::Nack(text) => {
            bump(&c.failed);
            d.nack_with(NackOptions::new().error(text))
        }
        Outcome::DeadLetter(text) => {
            bump(&c.failed);
            d.dead_letter(&text)
        }
    };
    match settled {
        Err(Error::LeaseExpired) => bump(&c.lease_expired),
        Err(_) => bump(&c.errors),
        Ok(()) => {}
    }
    settled
}

/// The message of a panic, if it has one.
fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}
