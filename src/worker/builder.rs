//! `WorkerBuilder` and `TypedWorkerBuilder`: a worker's options, checked as it starts its
//! threads.

use std::any::type_name;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::handle::{Worker, DEFAULT_DROP_DEADLINE};
use super::run::{keep, work, Counters, Inner, Job, Outcome, Pool};
use super::signal::ShutdownSignal;
use crate::error::{Error, Result};
use crate::queue::Delivery;
use crate::queue::Queue;
use crate::typed::{Bincode, Codec, TypedQueue};

/// How long an idle worker thread waits in [`Queue::pop_timeout`] before it looks whether
/// shutdown began, unless [`WorkerBuilder::poll_timeout`] says otherwise.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// The most threads a worker runs ([`WorkerBuilder::threads`]).
const MAX_THREADS: usize = 1024;

/// The range of [`WorkerBuilder::poll_timeout`]: shorter would spin while idle, longer would
/// hold up a shutdown.
const POLL_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(60);

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

impl Worker {
    /// A builder for a worker on `queue`.
    pub fn builder(queue: &Queue) -> WorkerBuilder {
        WorkerBuilder {
            queue: queue.clone(),
            threads: std::thread::available_parallelism().map_or(1, usize::from).min(MAX_THREADS),
            poll_timeout: DEFAULT_POLL_TIMEOUT,
            drop_deadline: DEFAULT_DROP_DEADLINE,
            signal: ShutdownSignal::new(),
        }
    }

    /// A builder for a worker on a typed queue, whose handler gets each decoded value.
    ///
    /// A payload that does not decode never reaches the handler: it is dead-lettered at once
    /// (no retry could help) with the [`Error::Codec`] text, and counted in
    /// [`WorkerStats::failed`](super::WorkerStats::failed).
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
