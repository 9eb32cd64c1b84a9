//! The oracle: what a run did, as far as the caller can know, and the check of a recovered
//! store against it (which states are allowed after a crash, not one expected state).
//!
//! A message is pushed into its queue and then moves: a retry (ready again later), a dead
//! letter (into `<queue>.dlq`), a requeue (back, attempts from zero), or gone for good (acked
//! or dropped). The log is durable as a prefix, so the moves of a message that survive a crash
//! are a prefix of its moves, at least up to the last one known durable; its attempts count at
//! least the deliveries known durable in that prefix (after a process crash, `KeepAll`, also
//! those whose record was only written) and at most all of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use wharf::testing::{self, SimFs};
use wharf::{
    CheckpointReport, Clock, DeadReason, Delivery, Durability, Error, NackOptions, Peeked,
    PushOptions, QueueConfig, Wharf, WharfBuilder,
};

pub const DIR: &str = "/store";
/// The queue where checks push a message to see that new ids are fresh.
pub const PROBE: &str = "i5-probe";
/// Longest error text a message keeps.
const MAX_ERROR_LEN: usize = 4096;

/// What is known of one record-making call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    /// Never attempted (or refused: nothing was logged).
    No,
    /// Returned `Ok` but not durable yet.
    Volatile,
    /// Handed to the OS (a later pop wrote everything staged): survives a process crash, not
    /// necessarily a power loss.
    Written,
    /// Durable: returned `Ok` durably, or a later durable call covered it.
    Durable,
    /// The call failed or was cut by the crash: it may or may not have happened.
    Unknown,
}

impl St {
    /// Whether it must survive a crash (`keep_all`: a process crash, which keeps all that was
    /// written).
    pub fn must_survive(self, keep_all: bool) -> bool {
        self == St::Durable || (keep_all && self == St::Written)
    }
}

/// Where a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loc {
    /// In its queue: ready from `due` (Unix ms; 0 at once), with its priority and the last
    /// error text a consumer gave.
    Queued { due: u64, priority: u8, error: String },
    /// In its queue's dead-letter queue `<queue>.dlq`.
    Dead { reason: DeadReason, error: String },
    /// Settled for good: acked or dropped.
    Gone,
}

impl Loc {
    fn ready() -> Loc {
        Loc::Queued { due: 0, priority: 0, error: String::new() }
    }
}

/// One move of a message and what is known of its record.
#[derive(Debug, Clone)]
pub struct Move {
    pub to: Loc,
    pub st: St,
    /// A requeue: attempts count from zero again.
    pub resets: bool,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub queue: String,
    pub payload: Vec<u8>,
    pub id: Option<u64>,
    pub push: St,
    /// The ack: a last move to `Gone`.
    pub ack: St,
    /// Where the push put it.
    pub first: Loc,
    /// Unix ms from which it must not be delivered from its queue (0: never).
    pub expires: u64,
    pub moves: Vec<Move>,
    /// Its deliveries: how many moves came before each, and what is known of its record.
    pub deliveries: Vec<(usize, St)>,
    /// The index of the first message of the `push_batch` it was pushed in, if it was.
    pub batch: Option<usize>,
}

impl Msg {
    fn new(queue: &str, payload: Vec<u8>, first: Loc) -> Msg {
        Msg {
            queue: queue.into(),
            payload,
            id: None,
            push: St::Unknown,
            ack: St::No,
            first,
            expires: 0,
            moves: Vec::new(),
            deliveries: Vec::new(),
            batch: None,
        }
    }

    /// Where it is as far as this process knows.
    pub fn at(&self) -> &Loc {
        self.moves.last().map_or(&self.first, |m| &m.to)
    }

    /// Its moves, the ack included.
    fn all_moves(&self) -> Vec<Move> {
        let mut v = self.moves.clone();
        if self.ack != St::No {
            v.push(Move { to: Loc::Gone, st: self.ack, resets: false });
        }
        v
    }

    /// Whether it may be gone for good.
    fn may_be_gone(&self) -> bool {
        self.all_moves().iter().any(|m| m.to == Loc::Gone)
    }
}

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
    pub msgs: Vec<Msg>,
    /// Per queue, its configs in the order they were set.
    pub configs: BTreeMap<String, Vec<(QueueConfig, St)>>,
    pub clock: testing::ManualClock,
    /// A pop failed, or deliveries were made that the record does not know of: attempts may
    /// be higher than the deliveries counted.
    pub uncertain: bool,
}

impl Record {
    pub fn now_ms(&self) -> u64 {
        unix_ms(&self.clock)
    }
}

fn unix_ms(clock: &testing::ManualClock) -> u64 {
    millis(clock.wall().duration_since(UNIX_EPOCH).unwrap())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

fn clip(s: &str) -> String {
    s[..s.len().min(MAX_ERROR_LEN)].to_owned()
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
    pub msgs: Vec<Msg>,
    pub held: Vec<(usize, Delivery)>,
    pub counter: usize,
    pub configs: BTreeMap<String, Vec<(QueueConfig, St)>>,
    pub uncertain: bool,
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
            msgs: Vec::new(),
            held: Vec::new(),
            counter: 0,
            configs: BTreeMap::new(),
            uncertain: false,
        }
    }

    pub fn record(&self) -> Record {
        Record {
            msgs: self.msgs.clone(),
            configs: self.configs.clone(),
            clock: self.clock.clone(),
            uncertain: self.uncertain,
        }
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
        unix_ms(&self.clock)
    }

    /// Everything staged before a durable `Ok` is durable too (prefix durability).
    pub fn all_durable(&mut self, upto: usize) {
        let up = |st: &mut St| {
            if matches!(*st, St::Volatile | St::Written) {
                *st = St::Durable;
            }
        };
        for m in self.msgs.iter_mut().take(upto) {
            up(&mut m.push);
        }
        for m in &mut self.msgs {
            up(&mut m.ack);
            m.moves.iter_mut().for_each(|mv| up(&mut mv.st));
            m.deliveries.iter_mut().for_each(|(_, st)| up(st));
        }
        for list in self.configs.values_mut() {
            list.iter_mut().for_each(|(_, st)| up(st));
        }
    }

    /// Everything staged was handed to the OS (a pop wrote its delivery record).
    fn all_written(&mut self) {
        let up = |st: &mut St| {
            if *st == St::Volatile {
                *st = St::Written;
            }
        };
        for m in &mut self.msgs {
            up(&mut m.push);
            up(&mut m.ack);
            m.moves.iter_mut().for_each(|mv| up(&mut mv.st));
        }
    }

    fn payload(&mut self, queue: &str, len: usize) -> Vec<u8> {
        let n = self.counter;
        self.counter += 1;
        let mut payload = format!("{queue}:{n}:").into_bytes();
        payload.resize(len.max(payload.len()), b'a' + (n % 26) as u8);
        payload
    }

    pub fn push(&mut self, queue: &str, len: usize, d: Durability) -> Step {
        self.push_with(queue, len, Push { durability: Some(d), ..Push::default() }, &[])
    }

    /// Pushes with options; `victims` are the messages the push dead-letters to make room
    /// (`Overflow::DeadLetterOldest`).
    pub fn push_with(&mut self, queue: &str, len: usize, o: Push, victims: &[usize]) -> Step {
        let payload = self.payload(queue, len);
        let now = self.now_ms();
        let due = o.delay.map_or(0, |d| now + millis(d));
        let first = Loc::Queued { due, priority: o.priority, error: String::new() };
        self.msgs.push(Msg::new(queue, payload.clone(), first));
        let i = self.msgs.len() - 1;
        let q = self.w().queue(queue)?;
        let ttl = o.ttl.or(q.config()?.get_ttl());
        self.msgs[i].expires = ttl.map_or(0, |t| now + millis(t));
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
        self.msgs[i].id = Some(id.get());
        if durability == Durability::Immediate {
            self.msgs[i].push = St::Durable;
            self.settle_pending(&moved, St::Durable);
            self.all_durable(i);
        } else {
            self.msgs[i].push = St::Volatile;
            self.settle_pending(&moved, St::Volatile);
        }
        Ok(())
    }

    /// A push whose dedup key is still held by message `first`: nothing is stored, and the
    /// first message's id comes back.
    pub fn push_duplicate(&mut self, queue: &str, key: &'static str, first: usize) -> Step {
        let payload = self.payload(queue, 8);
        let mut m = Msg::new(queue, payload.clone(), Loc::ready());
        m.push = St::No;
        self.msgs.push(m);
        let q = self.w().queue(queue)?;
        let id = q.push_with(&payload, PushOptions::new().dedup_key(key))?;
        assert_eq!(Some(id.get()), self.msgs[first].id, "a duplicate push stored a message");
        Ok(())
    }

    /// A push into a full queue that rejects it: nothing is stored.
    pub fn push_rejected(&mut self, queue: &str) -> Step {
        let payload = self.payload(queue, 8);
        let mut m = Msg::new(queue, payload.clone(), Loc::ready());
        m.push = St::No;
        self.msgs.push(m);
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
                self.msgs.last_mut().unwrap().push = St::No;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A durable batch of `n` payloads of `len` bytes, or `Error::Full` at the disk quota,
    /// which stores none of them. Returns whether it was stored.
    pub fn push_batch_or_full(&mut self, queue: &str, n: usize, len: usize) -> Result<bool, Error> {
        let first = self.msgs.len();
        let mut payloads = Vec::new();
        for _ in 0..n {
            let p = self.payload(queue, len);
            self.msgs.push(Msg { batch: Some(first), ..Msg::new(queue, p.clone(), Loc::ready()) });
            payloads.push(p);
        }
        let ids = match self.w().queue(queue).and_then(|q| q.push_batch(&payloads)) {
            Ok(ids) => ids,
            Err(Error::Full { .. }) => {
                self.msgs[first..].iter_mut().for_each(|m| m.push = St::No);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        for (k, id) in ids.iter().enumerate() {
            self.msgs[first + k].id = Some(id.get());
            self.msgs[first + k].push = St::Durable;
        }
        self.all_durable(first + n);
        Ok(true)
    }

    pub fn push_batch(&mut self, queue: &str, n: usize) -> Step {
        let first = self.msgs.len();
        let mut payloads = Vec::new();
        for _ in 0..n {
            let c = self.counter;
            self.counter += 1;
            let p = format!("{queue}:{c}:batch").into_bytes();
            self.msgs.push(Msg { batch: Some(first), ..Msg::new(queue, p.clone(), Loc::ready()) });
            payloads.push(p);
        }
        let ids = self.w().queue(queue)?.push_batch(&payloads)?;
        for (k, id) in ids.iter().enumerate() {
            self.msgs[first + k].id = Some(id.get());
            self.msgs[first + k].push = St::Durable;
        }
        self.all_durable(first + n);
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
                        let error = match self.msgs[i].at() {
                            Loc::Queued { error, .. } => error.clone(),
                            _ => String::new(),
                        };
                        Loc::Dead { reason: *reason, error }
                    }
                    other => other.clone(),
                };
                let m = &mut self.msgs[i];
                m.moves.push(Move { to, st: St::Unknown, resets: false });
                (i, m.moves.len() - 1)
            })
            .collect()
    }

    fn settle_pending(&mut self, moved: &[(usize, usize)], st: St) {
        for &(i, k) in moved {
            self.msgs[i].moves[k].st = st;
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
                self.uncertain = true;
                return Err(e);
            }
        };
        match d {
            Some(d) => {
                let i = self.find(queue, d.payload());
                if let Some(w) = want {
                    assert_eq!(i, w, "the pop of {queue} delivered another message");
                }
                let m = &mut self.msgs[i];
                let before = m.moves.len();
                m.deliveries.push((before, St::Written));
                self.settle_pending(&moved, St::Written);
                self.all_written();
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
                self.uncertain = true;
                return Err(e);
            }
        };
        let n = got.len();
        for d in got {
            let i = self.find(queue, d.payload());
            let m = &mut self.msgs[i];
            let before = m.moves.len();
            m.deliveries.push((before, St::Written));
            self.held.push((i, d));
        }
        if n > 0 {
            self.all_written();
        }
        Ok(n)
    }

    pub fn find(&self, queue: &str, payload: &[u8]) -> usize {
        self.msgs
            .iter()
            .position(|m| (m.queue == queue || dlq(&m.queue) == queue) && m.payload == payload)
            .expect("a known payload")
    }

    /// Acks the oldest held delivery.
    pub fn ack(&mut self, d: Durability) -> Step {
        if self.held.is_empty() {
            return Ok(());
        }
        let (i, del) = self.held.remove(0);
        self.msgs[i].ack = St::Unknown;
        del.ack_with(d)?;
        if d == Durability::Immediate {
            self.msgs[i].ack = St::Durable;
            let upto = self.msgs.len();
            self.all_durable(upto);
        } else {
            self.msgs[i].ack = St::Volatile;
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
        let to = match (then, self.msgs[i].at()) {
            (Then::Dead, _) => Loc::Dead { reason: DeadReason::MaxAttempts, error: clip(error) },
            (Then::Retry(d), Loc::Queued { priority, error: last, .. }) => Loc::Queued {
                due: if d.is_zero() { 0 } else { now + millis(d) },
                priority: *priority,
                error: if error.is_empty() { last.clone() } else { clip(error) },
            },
            (Then::Retry(_), at) => panic!("a retry of message {i} from {at:?}"),
        };
        self.msgs[i].moves.push(Move { to, st: St::Unknown, resets: false });
        let k = self.msgs[i].moves.len() - 1;
        let mut opts = NackOptions::new().error(error);
        if let Some(d) = delay {
            opts = opts.delay(d);
        }
        del.nack_with(opts)?;
        self.msgs[i].moves[k].st = St::Volatile;
        Ok(())
    }

    /// Dead-letters the oldest held delivery.
    pub fn dead_letter(&mut self, reason: &str) -> Step {
        let (i, del) = self.held.remove(0);
        let to = Loc::Dead { reason: DeadReason::Explicit, error: clip(reason) };
        self.msgs[i].moves.push(Move { to, st: St::Unknown, resets: false });
        let k = self.msgs[i].moves.len() - 1;
        del.dead_letter(reason)?;
        self.msgs[i].moves[k].st = St::Volatile;
        Ok(())
    }

    /// Requeues every dead letter of `queue`'s dead-letter queue: `which` are the messages
    /// there.
    pub fn requeue_all(&mut self, queue: &str, which: &[usize]) -> Step {
        let mut moved = Vec::new();
        for &i in which {
            let m = &mut self.msgs[i];
            m.moves.push(Move { to: Loc::ready(), st: St::Unknown, resets: true });
            moved.push((i, m.moves.len() - 1));
        }
        let n = self.w().queue(&dlq(queue))?.requeue_all()?;
        assert_eq!(n, which.len(), "requeue_all moved another number of messages");
        self.settle_pending(&moved, St::Durable);
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(())
    }

    /// Requeues the dead letter `i` alone.
    pub fn requeue(&mut self, i: usize) -> Step {
        let m = &mut self.msgs[i];
        m.moves.push(Move { to: Loc::ready(), st: St::Unknown, resets: true });
        let k = m.moves.len() - 1;
        let (queue, id) = (dlq(&m.queue), m.id.unwrap());
        let q = self.w().queue(&queue)?;
        let peeked = q.peek(usize::MAX)?;
        let typed = peeked.iter().find(|p| p.id.get() == id).expect("a waiting dead letter").id;
        assert!(q.requeue(typed)?, "requeue of a waiting dead letter refused");
        self.msgs[i].moves[k].st = St::Durable;
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(())
    }

    pub fn set_config(&mut self, queue: &str, cfg: QueueConfig) -> Step {
        let list = self.configs.entry(queue.to_owned()).or_default();
        list.push((cfg.clone(), St::Unknown));
        let k = list.len() - 1;
        self.w().queue(queue)?.set_config(&cfg)?;
        self.configs.get_mut(queue).unwrap()[k].1 = St::Durable;
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(())
    }

    pub fn sync(&mut self) -> Step {
        self.w().sync()?;
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(())
    }

    /// Takes a checkpoint (`Wharf::checkpoint`). It makes the log durable up to everything
    /// staged before it writes `state.redb`, so on `Ok` every call before it is durable.
    pub fn checkpoint(&mut self) -> Result<CheckpointReport, Error> {
        let report = self.w().checkpoint()?;
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(report)
    }

    /// Whether the run so far met neither its crash point nor an injected fault: the
    /// scenario's own expectations (what a checkpoint relocated, say) hold only then.
    pub fn undisturbed(&self) -> bool {
        self.real.is_some() || (!self.sim.crashed() && !self.sim.fault_fired())
    }

    pub fn maintain(&mut self) -> Step {
        testing::maintain(self.w())?;
        let upto = self.msgs.len();
        self.all_durable(upto);
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
            let upto = self.msgs.len();
            self.all_durable(upto);
        }
        self.held.clear();
        self.open()
    }

    pub fn close(&mut self) -> Step {
        self.held.clear();
        if let Some(w) = self.wharf.take() {
            w.close()?;
            let upto = self.msgs.len();
            self.all_durable(upto);
        }
        Ok(())
    }
}

/// The dead-letter queue of `queue`.
pub fn dlq(queue: &str) -> String {
    format!("{queue}.dlq")
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

/// One message as found after recovery.
struct Found {
    queue: String,
    p: Peeked,
}

/// Whether message `m` found as `found` is where its first `k` moves put it.
fn matches(m: &Msg, loc: &Loc, found: Option<&Found>, now: u64) -> bool {
    match (loc, found) {
        (Loc::Gone, None) => true,
        (Loc::Queued { due, priority, error }, Some(f)) => {
            f.queue == m.queue
                && f.p.dead_lettered_from.is_none()
                && f.p.priority == *priority
                && due_ms(&f.p) == (*due > now).then_some(*due)
                && f.p.last_error.as_deref().unwrap_or("") == error
        }
        (Loc::Dead { reason, error }, Some(f)) => {
            f.queue == dlq(&m.queue)
                && f.p.dead_lettered_from == Some((m.queue.clone(), *reason))
                && f.p.priority == 0
                && f.p.due.is_none()
                && f.p.last_error.as_deref().unwrap_or("") == error
        }
        _ => false,
    }
}

fn due_ms(p: &Peeked) -> Option<u64> {
    p.due.map(|t| millis(t.duration_since(UNIX_EPOCH).unwrap()))
}

/// Checks that message `i`, found as `found`, is in a state its known history allows.
fn check_msg(i: usize, m: &Msg, found: Option<&Found>, r: &Record, keep_all: bool, what: &str) {
    let now = r.now_ms();
    let moves = m.all_moves();
    if m.push == St::No {
        assert!(found.is_none(), "{what}: I3 message {i} was never stored but is there");
        return;
    }
    // The moves that must have survived: up to the last one known durable (and the moves
    // before a delivery known durable).
    let mut least = 0;
    for (k, mv) in moves.iter().enumerate() {
        if mv.st.must_survive(keep_all) {
            least = k + 1;
        }
    }
    for &(before, st) in &m.deliveries {
        if st.must_survive(keep_all) {
            least = least.max(before);
        }
    }
    let pushed = least > 0 || m.push.must_survive(keep_all);
    if found.is_none() && !pushed {
        return; // the push itself may be lost
    }
    let mut tried = Vec::new();
    for k in least..=moves.len() {
        let loc = if k == 0 { &m.first } else { &moves[k - 1].to };
        let attempts = found.map(|f| f.p.attempts);
        // Attempts: the deliveries since the last requeue among the first k moves.
        let reset = moves[..k].iter().rposition(|mv| mv.resets).map_or(0, |j| j + 1);
        let counted = m.deliveries.iter().filter(|(b, _)| (reset..=k).contains(b));
        let lo = counted.clone().filter(|(_, st)| st.must_survive(keep_all)).count() as u32;
        let hi = counted.count() as u32;
        let attempts_ok = attempts.is_none_or(|a| a >= lo && (r.uncertain || a <= hi));
        if matches(m, loc, found, now) && attempts_ok {
            return;
        }
        tried.push((k, loc.clone(), lo, hi));
    }
    panic!(
        "{what}: message {i} ({}) found as {:?} (attempts {:?}); allowed after its moves {:?} \
         (deliveries {:?}): one of {tried:?}",
        m.queue,
        found.map(|f| (&f.queue, &f.p.dead_lettered_from, f.p.due, f.p.priority, &f.p.last_error)),
        found.map(|f| f.p.attempts),
        moves,
        m.deliveries,
    );
}

/// Checks I1–I5 for the store recovered from an image, and that a durable config survived,
/// delayed messages are not delivered before they are due, expired ones never, and attempts
/// did not go backwards; panics with `what` on a violation. `keep_all`: the image is what a
/// process crash leaves (everything written survives).
pub fn check(w: &Wharf, r: &Record, keep_all: bool, what: &str) {
    let now = r.now_ms();
    let msgs = &r.msgs;
    let names: Vec<String> = w.queue_names().into_iter().filter(|n| n != PROBE).collect();
    let mut found: BTreeMap<usize, Found> = BTreeMap::new();
    for name in &names {
        let list = w.queue(name).unwrap().peek(usize::MAX).unwrap();
        // I4: ready messages by priority, then push order; delayed ones by due time.
        let ready: Vec<(u8, u64)> = list
            .iter()
            .filter(|p| p.due.is_none())
            .map(|p| (u8::MAX - p.priority, p.id.get()))
            .collect();
        let delayed: Vec<(u64, u64)> =
            list.iter().filter_map(|p| Some((due_ms(p)?, p.id.get()))).collect();
        assert!(ready.windows(2).all(|p| p[0] < p[1]), "{what}: I4 {name} out of order: {ready:?}");
        assert!(delayed.windows(2).all(|p| p[0] < p[1]), "{what}: I4 {name} delayed out of order");
        assert!(
            list.iter().take(ready.len()).all(|p| p.due.is_none()),
            "{what}: {name}: a delayed message listed before a ready one"
        );
        for p in list {
            let i = msgs
                .iter()
                .position(|m| m.payload == p.payload)
                .unwrap_or_else(|| panic!("{what}: I3 phantom payload in {name}: {:?}", p.payload));
            let m = &msgs[i];
            assert!(
                m.queue == *name || dlq(&m.queue) == *name,
                "{what}: I3 message {i} of {} found in {name}",
                m.queue
            );
            if let Some(known) = m.id {
                assert_eq!(known, p.id.get(), "{what}: I5 message {i} has another id");
            }
            let f = Found { queue: name.clone(), p };
            assert!(found.insert(i, f).is_none(), "{what}: I3 message {i} found twice");
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        check_msg(i, m, found.get(&i), r, keep_all, what);
    }
    // I4: survivors form a prefix: a surviving message implies every earlier message that was
    // pushed with `Ok` and never settled for good survived too (in its queue or dead-letter
    // queue).
    if let Some((&last, _)) = found.iter().next_back() {
        for (i, m) in msgs.iter().enumerate().take(last) {
            if matches!(m.push, St::Volatile | St::Written | St::Durable) && !m.may_be_gone() {
                assert!(found.contains_key(&i), "{what}: I4 hole: {i} lost while {last} survived");
            }
        }
    }
    // A batch is kept whole or not at all: if any of its messages survived, so did each of
    // the others that was not settled for good since.
    let kept: BTreeMap<usize, usize> =
        found.keys().filter_map(|&j| Some((msgs[j].batch?, j))).collect();
    for (i, m) in msgs.iter().enumerate() {
        if let Some(&j) = m.batch.and_then(|first| kept.get(&first)) {
            assert!(
                found.contains_key(&i) || m.may_be_gone(),
                "{what}: a batch cut by the crash: message {i} lost while {j} of its batch survived"
            );
        }
    }
    // A durable config survives; a later one may too.
    for (queue, list) in &r.configs {
        let least = list.iter().rposition(|(_, st)| st.must_survive(keep_all));
        if !names.contains(queue) {
            assert!(least.is_none(), "{what}: {queue} with a durable config is gone");
            continue;
        }
        let got = w.queue(queue).unwrap().config().unwrap();
        let mut allowed: Vec<&QueueConfig> =
            list[least.unwrap_or(0)..].iter().map(|(c, _)| c).collect();
        let default = QueueConfig::new();
        if least.is_none() {
            allowed.push(&default);
        }
        assert!(
            allowed.contains(&&got),
            "{what}: config of {queue} is {got:?}, allowed {allowed:?}"
        );
    }
    // Deliveries: only ready messages, never an expired one, each with the next attempt
    // number; every ready, unexpired message with attempts left is delivered.
    for name in &names {
        let q = w.queue(name).unwrap();
        let max = q.config().unwrap().get_max_attempts();
        let mut held = Vec::new();
        while let Some(d) = q.try_pop().unwrap() {
            held.push(d);
        }
        let mut delivered = BTreeSet::new();
        for d in &held {
            let Some((&i, f)) = found.iter().find(|(_, f)| f.p.payload == d.payload()) else {
                panic!("{what}: I3 phantom delivery from {name}: {:?}", d.payload());
            };
            if f.queue != *name {
                continue; // moved here by this very drain (expired or out of attempts)
            }
            delivered.insert(i);
            let m = &msgs[i];
            assert!(f.p.due.is_none(), "{what}: message {i} delivered before it is due");
            let expired = *name == m.queue && m.expires != 0 && m.expires <= now;
            assert!(!expired, "{what}: expired message {i} delivered");
            assert_eq!(d.attempt(), f.p.attempts + 1, "{what}: attempt of message {i}");
        }
        for (i, f) in &found {
            let m = &msgs[*i];
            let expired = *name == m.queue && m.expires != 0 && m.expires <= now;
            let exhausted = max.is_some_and(|n| f.p.attempts >= n);
            if f.queue == *name && f.p.due.is_none() && !expired && !exhausted {
                assert!(delivered.contains(i), "{what}: ready message {i} in {name} not delivered");
            }
        }
    }
    // I5: a new id is above every id handed out before.
    let max_id = msgs.iter().filter_map(|m| m.id).max().unwrap_or(0);
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
    check(&w, r, keep_all, what);
    drop(w);
    recovery_ops
}
