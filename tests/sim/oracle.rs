//! The scenarios' driver of the crash oracle (`wharf_check::oracle`, shared with fuzz/): a
//! `Ctx` makes each call of a scenario on the store and records in the oracle what is known of
//! it, each move exactly (due time, priority, error text); `check` judges a recovered store
//! against that record, and pushes a probe to see that new ids are fresh (I5).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wharf::testing::{self, SimFs};
use wharf::{
    CheckpointReport, Clock, DeadReason, Delivery, Durability, Error, NackOptions, PushOptions,
    QueueConfig, Wharf, WharfBuilder,
};
pub use wharf_check::oracle::{Loc, Move, Oracle, St, PROBE};
use wharf_check::{clip, dlq, millis, unix_ms};

pub const DIR: &str = "/store";

/// Options of a push in a scenario.
#[derive(Debug, Clone, Default)]
pub struct Push {
    pub delay: Option<Duration>,
    pub priority: u8,
    pub ttl: Option<Duration>,
    pub key: Option<&'static str>,
    /// `None`: `Immediate`.
    pub durability: Option<Durability>,
}

/// What a nack must do.
#[derive(Debug, Clone, Copy)]
pub enum Then {
    /// A retry after this delay.
    Retry(Duration),
    /// The last attempt: a dead letter.
    Dead,
}

/// What a run did: everything the check needs, kept after the store is gone.
#[derive(Debug, Clone)]
pub struct Record {
    pub o: Oracle,
    pub clock: testing::ManualClock,
    /// The first disk operation worth crashing at (see [`Ctx::crash_points_from_here`]).
    pub from_op: Option<u64>,
}

impl Record {
    pub fn now_ms(&self) -> u64 {
        unix_ms(self.clock.wall())
    }
}

/// The oracle's record of a run, and the live handles.
pub struct Ctx {
    pub sim: SimFs,
    /// The clock of lease deadlines, delays and TTLs, moved by the scenario.
    pub clock: testing::ManualClock,
    /// A real directory instead of the simulated disk.
    pub real: Option<std::path::PathBuf>,
    pub builder: WharfBuilder,
    pub wharf: Option<Wharf>,
    pub o: Oracle,
    pub held: Vec<(usize, Delivery)>,
    /// Set by [`Ctx::crash_points_from_here`].
    pub from_op: Option<u64>,
}

/// Stops a scenario at the crash: every call after it fails anyway.
pub type Step = Result<(), Error>;

impl Ctx {
    pub fn new(sim: SimFs, builder: WharfBuilder) -> Ctx {
        Ctx {
            sim,
            clock: testing::ManualClock::new(),
            real: None,
            builder,
            wharf: None,
            o: Oracle::default(),
            held: Vec::new(),
            from_op: None,
        }
    }

    pub fn record(&self) -> Record {
        Record { o: self.o.clone(), clock: self.clock.clone(), from_op: self.from_op }
    }

    /// Crash enumeration may start at the next disk operation: what came before is set-up
    /// that other scenarios crash at every operation of (the crash at each operation of a
    /// scenario with a large store costs a check of every message of the store).
    pub fn crash_points_from_here(&mut self) {
        self.from_op = Some(self.sim.ops() + 1);
    }

    pub fn open(&mut self) -> Step {
        self.held.clear();
        self.wharf = None;
        let builder = self.builder.clone().clock(Arc::new(self.clock.clone()));
        self.wharf = Some(match &self.real {
            Some(dir) => builder.open(dir)?,
            None => testing::open(builder, &self.sim, Path::new(DIR))?,
        });
        Ok(())
    }

    pub fn w(&self) -> &Wharf {
        self.wharf.as_ref().unwrap()
    }

    pub fn now_ms(&self) -> u64 {
        unix_ms(self.clock.wall())
    }

    pub fn push(&mut self, queue: &str, len: usize, d: Durability) -> Step {
        self.push_with(queue, len, Push { durability: Some(d), ..Push::default() }, &[])
    }

    /// Pushes with options; `victims` are the messages the push dead-letters to make room
    /// (`Overflow::DeadLetterOldest`).
    pub fn push_with(&mut self, queue: &str, len: usize, o: Push, victims: &[usize]) -> Step {
        let payload = self.o.payload(queue, len);
        let now = self.now_ms();
        let due = o.delay.map_or(0, |d| now + millis(d));
        let first = Loc::Queued { due, priority: o.priority, error: String::new() };
        let i = self.o.register(queue, payload.clone(), first);
        let q = self.w().queue(queue)?;
        let ttl = o.ttl.or(q.config()?.get_ttl());
        self.o.msgs[i].expires = ttl.map_or(0, |t| now + millis(t));
        let moved =
            self.pending(victims, Loc::Dead { reason: DeadReason::Overflow, error: "".into() });
        let mut opts = PushOptions::new().priority(o.priority);
        if let Some(d) = o.delay {
            opts = opts.delay(d);
        }
        if let Some(t) = o.ttl {
            opts = opts.ttl(t);
        }
        if let Some(k) = o.key {
            opts = opts.dedup_key(k);
        }
        let durability = o.durability.unwrap_or(Durability::Immediate);
        let id = q.push_with(&payload, opts.durability(durability))?;
        self.o.pushed(i, id.get());
        if durability == Durability::Immediate {
            self.o.msgs[i].push = St::Durable;
            self.settle_pending(&moved, St::Durable);
            self.o.all_durable(i);
        } else {
            self.o.msgs[i].push = St::Volatile;
            self.settle_pending(&moved, St::Volatile);
        }
        Ok(())
    }

    /// A push whose dedup key is still held by message `first`: nothing is stored, and the
    /// first message's id comes back.
    pub fn push_duplicate(&mut self, queue: &str, key: &'static str, first: usize) -> Step {
        let payload = self.o.payload(queue, 8);
        let i = self.o.register(queue, payload.clone(), Loc::ready());
        self.o.msgs[i].push = St::No;
        let q = self.w().queue(queue)?;
        let id = q.push_with(&payload, PushOptions::new().dedup_key(key))?;
        assert_eq!(Some(id.get()), self.o.msgs[first].id, "a duplicate push stored a message");
        Ok(())
    }

    /// A push into a full queue that rejects it: nothing is stored.
    pub fn push_rejected(&mut self, queue: &str) -> Step {
        let payload = self.o.payload(queue, 8);
        let i = self.o.register(queue, payload.clone(), Loc::ready());
        self.o.msgs[i].push = St::No;
        match self.w().queue(queue)?.push(&payload) {
            Err(Error::QueueFull { .. }) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => panic!("a push into a full queue was accepted"),
        }
    }

    /// A push that may find the store at its disk quota: `Error::Full` stores nothing, so the
    /// message counts as never pushed. Returns whether it was stored.
    pub fn push_or_full(&mut self, queue: &str, len: usize, d: Durability) -> Result<bool, Error> {
        match self.push(queue, len, d) {
            Ok(()) => Ok(true),
            Err(Error::Full { .. }) => {
                self.o.msgs.last_mut().unwrap().push = St::No;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A durable batch of `n` payloads of `len` bytes, or `Error::Full` at the disk quota,
    /// which stores none of them. Returns whether it was stored.
    pub fn push_batch_or_full(&mut self, queue: &str, n: usize, len: usize) -> Result<bool, Error> {
        let first = self.o.msgs.len();
        let mut payloads = Vec::new();
        for _ in 0..n {
            let p = self.o.payload(queue, len);
            let i = self.o.register(queue, p.clone(), Loc::ready());
            self.o.msgs[i].batch = Some(first);
            payloads.push(p);
        }
        let ids = match self.w().queue(queue).and_then(|q| q.push_batch(&payloads)) {
            Ok(ids) => ids,
            Err(Error::Full { .. }) => {
                self.o.msgs[first..].iter_mut().for_each(|m| m.push = St::No);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        for (k, id) in ids.iter().enumerate() {
            self.o.pushed(first + k, id.get());
            self.o.msgs[first + k].push = St::Durable;
        }
        self.o.all_durable(first + n);
        Ok(true)
    }

    pub fn push_batch(&mut self, queue: &str, n: usize) -> Step {
        let first = self.o.msgs.len();
        let mut payloads = Vec::new();
        for _ in 0..n {
            let c = self.o.next_n();
            let p = format!("{queue}:{c}:batch").into_bytes();
            let i = self.o.register(queue, p.clone(), Loc::ready());
            self.o.msgs[i].batch = Some(first);
            payloads.push(p);
        }
        let ids = self.w().queue(queue)?.push_batch(&payloads)?;
        for (k, id) in ids.iter().enumerate() {
            self.o.pushed(first + k, id.get());
            self.o.msgs[first + k].push = St::Durable;
        }
        self.o.all_durable(first + n);
        Ok(())
    }

    /// Registers moves the store makes on its own during the next call (expiry, exhausted
    /// attempts, overflow); returns where they are.
    fn pending(&mut self, who: &[usize], to: Loc) -> Vec<(usize, usize)> {
        who.iter()
            .map(|&i| {
                let to = match &to {
                    // A dead letter for expiry or exhausted attempts keeps the last error of
                    // the message (an overflow gives none).
                    Loc::Dead { reason, error }
                        if error.is_empty() && *reason != DeadReason::Overflow =>
                    {
                        let error = match self.o.msgs[i].at() {
                            Loc::Queued { error, .. } => error,
                            _ => String::new(),
                        };
                        Loc::Dead { reason: *reason, error }
                    }
                    other => other.clone(),
                };
                let m = &mut self.o.msgs[i];
                m.moves.push(Move { to, st: St::Unknown, resets: false });
                (i, m.moves.len() - 1)
            })
            .collect()
    }

    fn settle_pending(&mut self, moved: &[(usize, usize)], st: St) {
        for &(i, k) in moved {
            self.o.msgs[i].moves[k].st = st;
        }
    }

    pub fn pop(&mut self, queue: &str) -> Step {
        self.pop_expect(queue, &[], None)
    }

    /// Pops; the store first moves the messages of `implicit` (expired or out of attempts)
    /// there. With `want`, the pop must deliver that message (or nothing, with `usize::MAX`).
    pub fn pop_expect(
        &mut self,
        queue: &str,
        implicit: &[(usize, Loc)],
        want: Option<usize>,
    ) -> Step {
        let mut moved = Vec::new();
        for (i, to) in implicit {
            moved.extend(self.pending(&[*i], to.clone()));
        }
        let r = self.w().queue(queue).and_then(|q| q.try_pop());
        let d = match r {
            Ok(d) => d,
            Err(e) => {
                self.o.uncertain = true;
                return Err(e);
            }
        };
        match d {
            Some(d) => {
                let i = self.o.find(queue, d.payload());
                if let Some(w) = want {
                    assert_eq!(i, w, "the pop of {queue} delivered another message");
                }
                let m = &mut self.o.msgs[i];
                let before = m.moves.len();
                m.deliveries.push((before, St::Written));
                self.settle_pending(&moved, St::Written);
                self.o.all_written();
                self.held.push((i, d));
            }
            None => {
                assert!(want.is_none_or(|w| w == usize::MAX), "the pop of {queue} found nothing");
                self.settle_pending(&moved, St::Volatile);
            }
        }
        Ok(())
    }

    /// Pops up to `max` ready messages of `queue` at once (one delivery write for them all);
    /// returns how many.
    pub fn pop_batch(&mut self, queue: &str, max: usize) -> Result<usize, Error> {
        let r = self.w().queue(queue).and_then(|q| q.pop_batch(max, Duration::ZERO));
        let got = match r {
            Ok(got) => got,
            Err(e) => {
                self.o.uncertain = true;
                return Err(e);
            }
        };
        let n = got.len();
        for d in got {
            let i = self.o.find(queue, d.payload());
            let m = &mut self.o.msgs[i];
            let before = m.moves.len();
            m.deliveries.push((before, St::Written));
            self.held.push((i, d));
        }
        if n > 0 {
            self.o.all_written();
        }
        Ok(n)
    }

    /// Acks the oldest held delivery.
    pub fn ack(&mut self, d: Durability) -> Step {
        if self.held.is_empty() {
            return Ok(());
        }
        let (i, del) = self.held.remove(0);
        self.o.msgs[i].ack = St::Unknown;
        del.ack_with(d)?;
        if d == Durability::Immediate {
            self.o.msgs[i].ack = St::Durable;
            self.o.all_durable_now();
        } else {
            self.o.msgs[i].ack = St::Volatile;
        }
        Ok(())
    }

    /// Acks the oldest `n` held deliveries of the queue of the oldest one with one
    /// `ack_many_with(.., d)`: one batch, whose acks a crash keeps all or none of.
    pub fn ack_many(&mut self, n: usize, d: Durability) -> Step {
        let Some(queue) = self.held.first().map(|(i, _)| self.o.msgs[*i].queue.clone()) else {
            return Ok(());
        };
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for (i, del) in std::mem::take(&mut self.held) {
            if batch.len() < n && self.o.msgs[i].queue == queue {
                batch.push((i, del));
            } else {
                rest.push((i, del));
            }
        }
        self.held = rest;
        let who: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
        self.o.ack_batch(&who);
        let q = self.w().queue(&queue)?;
        let report = q.ack_many_with(batch.into_iter().map(|(_, del)| del), d)?;
        assert_eq!(report.acked, who.len(), "no lease of a scenario runs out: {report:?}");
        for &i in &who {
            self.o.msgs[i].ack = St::Volatile;
        }
        if d == Durability::Immediate {
            self.o.all_durable_now();
        }
        Ok(())
    }

    /// Acks the newest held delivery.
    pub fn ack_newest(&mut self, d: Durability) -> Step {
        if let Some(last) = self.held.pop() {
            self.held.insert(0, last);
        }
        self.ack(d)
    }

    pub fn nack(&mut self) -> Step {
        if self.held.is_empty() {
            return Ok(());
        }
        let (_, del) = self.held.remove(0);
        del.nack()?;
        Ok(())
    }

    /// Nacks the oldest held delivery (with an explicit delay if given, and an error text),
    /// which must then do `then`.
    pub fn nack_with(&mut self, delay: Option<Duration>, error: &str, then: Then) -> Step {
        let (i, del) = self.held.remove(0);
        let now = self.now_ms();
        let to = match (then, self.o.msgs[i].at()) {
            (Then::Dead, _) => {
                Loc::Dead { reason: DeadReason::MaxAttempts, error: clip(error).to_owned() }
            }
            (Then::Retry(d), Loc::Queued { priority, error: last, .. }) => Loc::Queued {
                due: if d.is_zero() { 0 } else { now + millis(d) },
                priority,
                error: if error.is_empty() { last } else { clip(error).to_owned() },
            },
            (Then::Retry(_), at) => panic!("a retry of message {i} from {at:?}"),
        };
        self.o.msgs[i].moves.push(Move { to, st: St::Unknown, resets: false });
        let k = self.o.msgs[i].moves.len() - 1;
        let mut opts = NackOptions::new().error(error);
        if let Some(d) = delay {
            opts = opts.delay(d);
        }
        del.nack_with(opts)?;
        self.o.msgs[i].moves[k].st = St::Volatile;
        Ok(())
    }

    /// Dead-letters the oldest held delivery.
    pub fn dead_letter(&mut self, reason: &str) -> Step {
        let (i, del) = self.held.remove(0);
        let to = Loc::Dead { reason: DeadReason::Explicit, error: clip(reason).to_owned() };
        self.o.msgs[i].moves.push(Move { to, st: St::Unknown, resets: false });
        let k = self.o.msgs[i].moves.len() - 1;
        del.dead_letter(reason)?;
        self.o.msgs[i].moves[k].st = St::Volatile;
        Ok(())
    }

    /// Requeues every dead letter of `queue`'s dead-letter queue: `which` are the messages
    /// there.
    pub fn requeue_all(&mut self, queue: &str, which: &[usize]) -> Step {
        let mut moved = Vec::new();
        for &i in which {
            let m = &mut self.o.msgs[i];
            m.moves.push(Move { to: Loc::ready(), st: St::Unknown, resets: true });
            moved.push((i, m.moves.len() - 1));
        }
        let n = self.w().queue(&dlq(queue))?.requeue_all()?;
        assert_eq!(n, which.len(), "requeue_all moved another number of messages");
        self.settle_pending(&moved, St::Durable);
        self.o.all_durable_now();
        Ok(())
    }

    /// Requeues the dead letter `i` alone.
    pub fn requeue(&mut self, i: usize) -> Step {
        let m = &mut self.o.msgs[i];
        m.moves.push(Move { to: Loc::ready(), st: St::Unknown, resets: true });
        let k = m.moves.len() - 1;
        let (queue, id) = (dlq(&m.queue), m.id.unwrap());
        let q = self.w().queue(&queue)?;
        let peeked = q.peek(usize::MAX)?;
        let typed = peeked.iter().find(|p| p.id.get() == id).expect("a waiting dead letter").id;
        assert!(q.requeue(typed)?, "requeue of a waiting dead letter refused");
        self.o.msgs[i].moves[k].st = St::Durable;
        self.o.all_durable_now();
        Ok(())
    }

    pub fn set_config(&mut self, queue: &str, cfg: QueueConfig) -> Step {
        let list = self.o.configs.entry(queue.to_owned()).or_default();
        list.push((cfg.clone(), St::Unknown));
        let k = list.len() - 1;
        self.w().queue(queue)?.set_config(&cfg)?;
        self.o.configs.get_mut(queue).unwrap()[k].1 = St::Durable;
        self.o.all_durable_now();
        Ok(())
    }

    pub fn sync(&mut self) -> Step {
        self.w().sync()?;
        self.o.all_durable_now();
        Ok(())
    }

    /// Takes a checkpoint (`Wharf::checkpoint`). It makes the log durable up to everything
    /// staged before it writes `state.redb`, so on `Ok` every call before it is durable.
    pub fn checkpoint(&mut self) -> Result<CheckpointReport, Error> {
        let report = self.w().checkpoint()?;
        self.o.all_durable_now();
        Ok(report)
    }

    /// Whether the run so far met neither its crash point nor an injected fault: the
    /// scenario's own expectations (what a checkpoint relocated, say) hold only then.
    pub fn undisturbed(&self) -> bool {
        self.real.is_some() || (!self.sim.crashed() && !self.sim.fault_fired())
    }

    pub fn maintain(&mut self) -> Step {
        testing::maintain(self.w())?;
        self.o.all_durable_now();
        Ok(())
    }

    /// Gives the oldest held delivery back (ready again, its attempt counted).
    pub fn release(&mut self) -> Step {
        let (_, del) = self.held.remove(0);
        del.release()
    }

    /// Closes the store while the deliveries are still held (in flight at the close, as if
    /// their consumer died), then opens it again.
    pub fn reopen_holding(&mut self) -> Step {
        if let Some(w) = self.wharf.take() {
            w.close()?;
            self.o.all_durable_now();
        }
        self.held.clear();
        self.open()
    }

    pub fn close(&mut self) -> Step {
        self.held.clear();
        if let Some(w) = self.wharf.take() {
            w.close()?;
            self.o.all_durable_now();
        }
        Ok(())
    }
}

/// The messages found after recovery, per queue, in delivery order.
pub fn observe(w: &Wharf) -> BTreeMap<String, Vec<(u64, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    for name in w.queue_names() {
        let q = w.queue(&name).unwrap();
        let mut held = Vec::new();
        while let Some(d) = q.try_pop().unwrap() {
            held.push(d);
        }
        out.insert(name, held.iter().map(|d| (d.id().get(), d.payload().to_vec())).collect());
    }
    out
}

/// Checks the store recovered from an image against the record (`Oracle::check`: I1–I5,
/// configs, due times, expiry, attempts), then that a new id is above every id handed out
/// before (I5); panics with `what` on a violation. `keep_all`: the image is what a process
/// crash leaves (everything written survives).
pub fn check(w: &Wharf, r: &Record, keep_all: bool, what: &str) {
    r.o.check(w, r.now_ms(), keep_all, what);
    probe_fresh_id(w, r.o.max_id, what);
}

/// I5: a push into `PROBE` gets an id above `max_id`.
pub fn probe_fresh_id(w: &Wharf, max_id: u64, what: &str) {
    // A store at its disk quota refuses the probe until settled segments are deleted (what
    // the background thread would do); one that is still full has no new id to show.
    let probe = || w.queue(PROBE).and_then(|q| q.push(b"probe"));
    let id = match probe() {
        Err(wharf::Error::Full { .. }) => {
            testing::maintain(w).unwrap();
            probe()
        }
        r => r,
    };
    match id {
        Ok(id) => assert!(id.get() > max_id, "{what}: I5 new id {id} not above {max_id:x}"),
        Err(wharf::Error::Full { .. }) => {}
        Err(e) => panic!("{what}: probe push failed: {e}"),
    }
}

thread_local! {
    /// Recoveries `recover_and_check` saw start from a checkpoint's snapshot, on this thread
    /// (a test's own count: tests run on threads of their own).
    static FROM_SNAPSHOT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many recoveries checked on this thread so far started from a checkpoint's snapshot.
pub fn from_snapshot_count() -> u64 {
    FROM_SNAPSHOT.with(std::cell::Cell::get)
}

/// Opens `image`, checks the invariants, and returns how many disk operations the open took.
pub fn recover_and_check(
    builder: &WharfBuilder,
    image: &SimFs,
    r: &Record,
    keep_all: bool,
    what: &str,
) -> u64 {
    let before = image.ops();
    // Leases must outlast the check, however slow the build (leases are not persisted).
    let builder = builder
        .clone()
        .visibility_timeout(Duration::from_secs(3600))
        .clock(Arc::new(r.clock.clone()));
    let w = testing::open(builder, image, Path::new(DIR))
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let recovery_ops = image.ops() - before;
    if w.recovery_report().from_snapshot {
        FROM_SNAPSHOT.with(|c| c.set(c.get() + 1));
    }
    check(&w, r, keep_all, what);
    drop(w);
    recovery_ops
}
