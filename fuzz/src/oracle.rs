//! The allowed-states oracle of `tests/sim/oracle.rs`, extended for long runs with several
//! crashes: after each recovery it checks I1–I5 and then collapses what it knows to what was
//! observed, so that operations (and more crashes) can continue on the recovered store.
//!
//! Messages move: a dead letter takes one from its queue to `<queue>.dlq`, a requeue brings it
//! back (its attempts from zero), an ack or a drop (expiry, a queue whose dead letters are
//! dropped) settles it for good. The oracle does not predict the moves the store makes on its
//! own (expired or exhausted messages met by a pop, overflow victims of a push): it learns
//! them from the live store after each call whose queue counters say something moved. After a
//! crash, the moves of a message that survive are a prefix of its moves, at least up to the
//! last one known durable; "present" means in its queue or in its dead-letter queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use wharf::testing::{self, ManualClock, SimFs};
use wharf::{
    Clock, Delivery, Durability, Error, NackOptions, Peeked, PushOptions, QueueConfig, Wharf,
};

use crate::ops::{self, Config, Op};
use crate::stats;

/// The store's directory on the simulated disk.
pub const DIR: &str = "/s";

/// What is known of one call that changes the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    /// Never made (or refused: nothing was logged).
    No,
    /// Returned `Ok`, not durable yet.
    Volatile,
    /// Handed to the OS (a pop wrote everything staged before its delivery record): survives
    /// a process crash, not necessarily a power loss.
    Written,
    /// Durable: returned `Ok` durably, or a later durable call covered it.
    Durable,
    /// The call failed or was cut by a crash: it may or may not have happened.
    Unknown,
}

impl St {
    /// Whether it must survive a crash; `keep_all`: a process crash (all that was written).
    pub fn must_survive(self, keep_all: bool) -> bool {
        self == St::Durable || (keep_all && self == St::Written)
    }
}

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// In its queue.
    Queue,
    /// In its queue's dead-letter queue.
    Dead,
    /// Settled for good.
    Gone,
    /// Anywhere: a failed call may have moved it (or not).
    Any,
}

/// One move of a message, and what is known of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub to: Where,
    pub st: St,
    /// A requeue: its attempts count from zero again.
    pub resets: bool,
}

/// One pushed message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub queue: String,
    pub payload: Vec<u8>,
    pub id: Option<u64>,
    pub push: St,
    pub ack: St,
    /// Not found by a recovery: settled or lost for good; it must never be delivered again.
    pub gone: bool,
    pub moves: Vec<Move>,
    /// Its deliveries: how many moves came before each, and what is known of its record.
    pub deliveries: Vec<(usize, St)>,
    /// Unix ms from which it must not be delivered from its queue (0: never). A dead letter
    /// clears it for good (a requeue does not bring it back).
    pub expires: u64,
    /// Found in its queue after a dead letter and a requeue that a crash may have undone: the
    /// TTL may or may not still hold.
    pub ttl_doubt: bool,
}

impl Msg {
    /// Its moves, the ack (a move to `Gone`) included.
    fn all_moves(&self) -> Vec<Move> {
        let mut v = self.moves.clone();
        if self.ack != St::No {
            v.push(Move { to: Where::Gone, st: self.ack, resets: false });
        }
        v
    }

    /// Whether it expired by `now`: `Some(true)` if it has a TTL that ran out and was never
    /// dead-lettered (a dead letter clears the TTL, for good); `None` if a dead letter that
    /// may or may not have happened (or survived a crash) decides it.
    fn expired(&self, now: u64) -> Option<bool> {
        if self.expires == 0 || now < self.expires {
            return Some(false);
        }
        let dead = self.moves.iter().any(|mv| matches!(mv.to, Where::Dead | Where::Any));
        (!dead && !self.ttl_doubt).then_some(true)
    }

    /// Where this process last saw it.
    pub fn at(&self) -> Where {
        if self.ack != St::No {
            return Where::Gone;
        }
        self.moves.last().map_or(Where::Queue, |m| m.to)
    }
}

/// The dead-letter queue of `queue`.
pub fn dlq(queue: &str) -> String {
    format!("{queue}.dlq")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the oracle knows of every message ever pushed.
#[derive(Debug, Default, Clone)]
pub struct Oracle {
    pub msgs: Vec<Msg>,
    by_payload: HashMap<Vec<u8>, usize>,
    by_id: HashMap<u64, usize>,
    /// The largest id handed out so far (I5: a new id is above it).
    pub max_id: u64,
    counter: u64,
    /// Per queue, the configs set, in order.
    pub configs: BTreeMap<String, Vec<(QueueConfig, St)>>,
    /// A call failed where it may have delivered a message: attempts may exceed the
    /// deliveries counted.
    pub uncertain: bool,
}

/// One message as a recovered store shows it.
struct Found {
    queue: String,
    p: Peeked,
}

impl Oracle {
    /// A new, globally unique payload of about `len` bytes for `queue`.
    pub fn payload(&mut self, queue: &str, len: usize) -> Vec<u8> {
        let n = self.counter;
        self.counter += 1;
        let mut p = format!("{queue}:{n}:").into_bytes();
        let fill = b'a' + (n % 26) as u8;
        p.resize(len.max(p.len()), fill);
        p
    }

    /// Registers a push about to be attempted; returns its index.
    pub fn register(&mut self, queue: &str, payload: Vec<u8>) -> usize {
        let i = self.msgs.len();
        self.by_payload.insert(payload.clone(), i);
        self.msgs.push(Msg {
            queue: queue.to_owned(),
            payload,
            id: None,
            push: St::Unknown,
            ack: St::No,
            gone: false,
            moves: Vec::new(),
            deliveries: Vec::new(),
            expires: 0,
            ttl_doubt: false,
        });
        i
    }

    /// A push returned `id` for message `i`: ids are fresh and increasing (I5).
    pub fn pushed(&mut self, i: usize, id: u64) {
        assert!(id > self.max_id, "I5: new id {id:x} is not above {:x}", self.max_id);
        self.max_id = id;
        self.learn_id(i, id);
    }

    /// Message `i` was seen with `id`: it keeps one id, and no other message has it (I5).
    pub fn learn_id(&mut self, i: usize, id: u64) {
        if let Some(known) = self.msgs[i].id {
            assert_eq!(known, id, "I5: message {i} came back with another id");
        }
        if let Some(&other) = self.by_id.get(&id) {
            assert_eq!(other, i, "I5: id {id:x} of message {other} reused for message {i}");
        }
        self.msgs[i].id = Some(id);
        self.by_id.insert(id, i);
        self.max_id = self.max_id.max(id);
    }

    /// The message with this id, if the oracle knows it.
    pub fn by_id(&self, id: u64) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// The message with this payload in this queue or its dead-letter queue; a phantom
    /// otherwise (I3).
    pub fn find(&self, queue: &str, payload: &[u8]) -> usize {
        let i = *self.by_payload.get(payload).unwrap_or_else(|| {
            panic!("I3: phantom payload in {queue}: {:?}", String::from_utf8_lossy(payload))
        });
        let m = &self.msgs[i];
        assert!(
            m.queue == queue || dlq(&m.queue) == queue,
            "I3: message {i} of {} delivered from {queue}",
            m.queue
        );
        i
    }

    /// Everything staged before a durable `Ok` is durable too (prefix durability): the pushes
    /// of messages below `upto`, and every settlement, move, delivery and config.
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

    /// Everything staged was handed to the OS.
    pub fn all_written(&mut self) {
        let up = |st: &mut St| {
            if *st == St::Volatile {
                *st = St::Written;
            }
        };
        for m in &mut self.msgs {
            up(&mut m.push);
            up(&mut m.ack);
            m.moves.iter_mut().for_each(|mv| up(&mut mv.st));
            m.deliveries.iter_mut().for_each(|(_, st)| up(st));
        }
    }

    /// The store that staged the volatile calls is gone without making them durable: later
    /// syncs of another open do not cover them, so they may or may not have happened. (A
    /// reopen in the same process after a failed sync cuts what was only written, too.)
    pub fn forget_volatile(&mut self) {
        let down = |st: &mut St| {
            if matches!(*st, St::Volatile | St::Written) {
                *st = St::Unknown;
            }
        };
        for m in &mut self.msgs {
            down(&mut m.push);
            down(&mut m.ack);
            m.moves.iter_mut().for_each(|mv| down(&mut mv.st));
            m.deliveries.iter_mut().for_each(|(_, st)| down(st));
        }
    }

    pub fn all_durable_now(&mut self) {
        let n = self.msgs.len();
        self.all_durable(n);
    }

    /// Checks that message `i`, found as `found`, is where a prefix of its moves put it, at
    /// least up to the last one known durable, with attempts between the deliveries of that
    /// prefix known durable and all of them.
    fn check_msg(&self, i: usize, found: Option<&Found>, keep_all: bool, what: &str) {
        let m = &self.msgs[i];
        if m.gone || m.push == St::No {
            assert!(found.is_none(), "{what}: I2/I3 message {i} is there after it was gone");
            return;
        }
        let moves = m.all_moves();
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
        if found.is_none() && least == 0 && !m.push.must_survive(keep_all) {
            return; // the push itself may be lost
        }
        let at = found.map(|f| if f.queue == m.queue { Where::Queue } else { Where::Dead });
        let at = at.unwrap_or(Where::Gone);
        for k in least..=moves.len() {
            let loc = if k == 0 { Where::Queue } else { moves[k - 1].to };
            let reset = moves[..k].iter().rposition(|mv| mv.resets).map_or(0, |j| j + 1);
            let counted = m.deliveries.iter().filter(|(b, _)| (reset..=k).contains(b));
            let lo = counted.clone().filter(|(_, st)| st.must_survive(keep_all)).count() as u32;
            let hi = counted.count() as u32;
            let attempts_ok = found.is_none_or(|f| {
                f.p.attempts >= lo
                    && (self.uncertain
                        || moves.iter().any(|mv| mv.to == Where::Any)
                        || f.p.attempts <= hi)
            });
            if (loc == at || loc == Where::Any) && attempts_ok {
                return;
            }
        }
        panic!(
            "{what}: message {i} ({}) found {at:?} with attempts {:?}; its moves {moves:?}, \
             deliveries {:?}, keep_all {keep_all}",
            m.queue,
            found.map(|f| f.p.attempts),
            m.deliveries
        );
    }

    /// Checks I1–I5 for the store recovered from an image, that a durable config survived,
    /// that delayed messages are not delivered before they are due and expired ones never;
    /// then collapses the model to what was observed. `keep_all`: the image is what a process
    /// crash leaves.
    pub fn check_recovered(&mut self, w: &Wharf, now: u64, keep_all: bool, what: &str) {
        let names = w.queue_names();
        let mut found = peek_all(self, w, what);
        for i in 0..self.msgs.len() {
            self.check_msg(i, found.get(&i), keep_all, what);
        }
        // I4: a survivor implies every earlier message pushed with `Ok`, never settled and not
        // gone, survived too (the log is durable as a prefix).
        if let Some((&last, _)) = found.iter().next_back() {
            for (i, m) in self.msgs.iter().enumerate().take(last) {
                let may_go =
                    m.all_moves().iter().any(|mv| matches!(mv.to, Where::Gone | Where::Any));
                if !m.gone && !may_go && matches!(m.push, St::Volatile | St::Written | St::Durable)
                {
                    assert!(
                        found.contains_key(&i),
                        "{what}: I4 hole: {i} lost while {last} survived"
                    );
                }
            }
        }
        // A durable config survives; a later one may have too.
        for (queue, list) in &self.configs {
            let least = list.iter().rposition(|(_, st)| st.must_survive(keep_all));
            if !names.contains(queue) {
                assert!(least.is_none(), "{what}: {queue} with a durable config is gone");
                continue;
            }
            let got = w.queue(queue).expect("queue").config().expect("config");
            let default = QueueConfig::new();
            let mut allowed: Vec<&QueueConfig> =
                list[least.unwrap_or(0)..].iter().map(|(c, _)| c).collect();
            if least.is_none() {
                allowed.push(&default);
            }
            assert!(
                allowed.contains(&&got),
                "{what}: config of {queue}: {got:?} not in {allowed:?}"
            );
        }
        // Deliveries: only due messages, never an expired one, each with the next attempt
        // number; every due, unexpired message with attempts left is delivered.
        let mut held: Vec<Delivery> = Vec::new();
        for name in &names {
            let q = w.queue(name).expect("queue of a recovered store");
            let max = q.config().expect("config").get_max_attempts();
            let mut delivered = BTreeSet::new();
            loop {
                let d = match q.try_pop() {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(e) => panic!("{what}: pop from a recovered store failed: {e}"),
                };
                assert!(held.len() <= 100_000, "draining {name} does not end");
                let i = self.find(name, d.payload());
                if let Some(f) = found.get(&i).filter(|f| f.queue == *name) {
                    let m = &self.msgs[i];
                    assert!(f.p.due.is_none(), "{what}: message {i} delivered before it is due");
                    let expired = *name == m.queue && m.expired(now) == Some(true);
                    assert!(!expired, "{what}: expired message {i} delivered");
                    assert_eq!(d.attempt(), f.p.attempts + 1, "{what}: attempt of message {i}");
                    delivered.insert(i);
                }
                held.push(d);
            }
            for (i, f) in &found {
                let m = &self.msgs[*i];
                let expired = *name == m.queue && m.expired(now) != Some(false);
                let exhausted = max.is_some_and(|n| f.p.attempts >= n);
                if f.queue == *name && f.p.due.is_none() && !expired && !exhausted {
                    assert!(
                        delivered.contains(i),
                        "{what}: due message {i} in {name} not delivered"
                    );
                }
            }
        }
        drop(held);
        // What the drain changed (deliveries, dead letters) is made durable, and the model
        // becomes what the store now holds.
        w.sync().unwrap_or_else(|e| panic!("{what}: sync of a recovered store failed: {e}"));
        found = peek_all(self, w, what);
        for (i, m) in self.msgs.iter_mut().enumerate() {
            match found.get(&i) {
                Some(f) => {
                    m.push = St::Durable;
                    m.ack = St::No;
                    let to = if f.queue == m.queue { Where::Queue } else { Where::Dead };
                    let was_dead =
                        m.moves.iter().any(|mv| matches!(mv.to, Where::Dead | Where::Any));
                    if to == Where::Dead {
                        m.expires = 0; // a dead letter's TTL is gone
                    } else if was_dead {
                        m.ttl_doubt = true; // back in its queue: with its TTL or not
                    }
                    m.moves = vec![Move { to, st: St::Durable, resets: false }];
                    m.deliveries = vec![(1, St::Durable); f.p.attempts as usize];
                }
                None if m.push != St::No => m.gone = true,
                None => {}
            }
        }
        for (queue, list) in &mut self.configs {
            if names.contains(queue) {
                let got = w.queue(queue).expect("queue").config().expect("config");
                *list = vec![(got, St::Durable)];
            } else {
                list.clear();
            }
        }
        self.uncertain = false;
    }
}

/// Every waiting message of every queue, by message index; checks the order of each queue
/// (ready by priority, then id; delayed by due time), ids (I5) and that each is found once in
/// its queue or dead-letter queue (I3).
fn peek_all(o: &mut Oracle, w: &Wharf, what: &str) -> BTreeMap<usize, Found> {
    let mut found = BTreeMap::new();
    for name in w.queue_names() {
        let list = w
            .queue(&name)
            .and_then(|q| q.peek(usize::MAX))
            .unwrap_or_else(|e| panic!("{what}: peek of {name} failed: {e}"));
        let ready: Vec<(u8, u64)> = list
            .iter()
            .filter(|p| p.due.is_none())
            .map(|p| (u8::MAX - p.priority, p.id.get()))
            .collect();
        let delayed: Vec<(Option<std::time::SystemTime>, u64)> =
            list.iter().skip(ready.len()).map(|p| (p.due, p.id.get())).collect();
        assert!(ready.windows(2).all(|p| p[0] < p[1]), "{what}: I4 {name} out of order");
        assert!(delayed.windows(2).all(|p| p[0] < p[1]), "{what}: I4 {name} delayed out of order");
        assert!(
            delayed.iter().all(|(due, _)| due.is_some()),
            "{what}: I4 {name} ready after delayed"
        );
        for p in list {
            let i = o.find(&name, &p.payload);
            let m = &o.msgs[i];
            assert!(!m.gone, "{what}: I2/I3 message {i} came back after it was gone");
            assert!(m.push != St::No, "{what}: I3 message {i} never pushed");
            o.learn_id(i, p.id.get());
            assert!(
                found.insert(i, Found { queue: name.clone(), p }).is_none(),
                "{what}: I3 message {i} found twice"
            );
        }
    }
    found
}

/// How an operation's records became known to be durable.
enum Promote {
    Nothing,
    /// A pop wrote everything staged (and with `Immediate` acks, synced it).
    Delivered,
    /// Everything staged is durable.
    All,
}

/// A store on the simulated disk, the oracle's record of it, and the deliveries held.
pub struct Ctx {
    pub sim: SimFs,
    pub cfg: Config,
    pub clock: ManualClock,
    pub wharf: Option<Wharf>,
    pub o: Oracle,
    /// Held deliveries: the message, whether it was popped from a dead-letter queue, and the
    /// delivery.
    pub held: Vec<(usize, bool, Delivery)>,
    /// A call returned `Poisoned` and the store was not reopened since.
    pub poisoned: bool,
}

/// What an operation did: `Ok(true)` when it changed (or tried to change) the store.
pub type Outcome = Result<bool, Error>;

impl Ctx {
    pub fn new(sim: SimFs, cfg: Config) -> Ctx {
        Ctx {
            sim,
            cfg,
            clock: ManualClock::new(),
            wharf: None,
            o: Oracle::default(),
            held: Vec::new(),
            poisoned: false,
        }
    }

    /// The options the store is opened with, on this run's clock.
    pub fn builder(&self) -> wharf::WharfBuilder {
        self.cfg.builder().clock(Arc::new(self.clock.clone()))
    }

    /// The clock's time in Unix ms.
    pub fn now(&self) -> u64 {
        millis(self.clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    /// Opens the store (dropping any handle first).
    pub fn open(&mut self) -> Result<(), Error> {
        self.held.clear();
        self.wharf = None;
        self.poisoned = false;
        self.wharf = Some(testing::open(self.builder(), &self.sim, Path::new(DIR))?);
        Ok(())
    }

    fn w(&self) -> Result<&Wharf, Error> {
        self.wharf.as_ref().ok_or(Error::Closed)
    }

    /// Notes a `Poisoned` error.
    fn note<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::Poisoned(_)) = &r {
            self.poisoned = true;
        }
        r
    }

    /// The queue handle; a newly created queue was made durable with everything before it.
    fn queue(&mut self, name: &str) -> Result<wharf::Queue, Error> {
        let w = self.w()?;
        let existed = w.queue_names().iter().any(|n| n == name);
        let q = w.queue(name);
        let q = self.note(q)?;
        if !existed {
            self.o.all_durable_now();
        }
        Ok(q)
    }

    /// The dead-letter and expiry counters of queue `name` (no disk operation; `None` if it
    /// does not exist).
    fn counters(&self, name: &str) -> Option<(u64, u64)> {
        let w = self.wharf.as_ref()?;
        if !w.queue_names().iter().any(|n| n == name) {
            return None;
        }
        let s = w.queue(name).ok()?.stats().ok()?;
        Some((s.dead_lettered, s.expired))
    }

    /// Applies one operation; errors are returned for the caller to judge. Moves the store
    /// made on its own are learned from it afterwards.
    pub fn apply(&mut self, op: Op) -> Outcome {
        if let Op::Churn { queue, n, len, durability } = op {
            // Its rounds one by one, each judged like the operation it is; the first error
            // ends it (the caller judges that error, as a crash or a fault).
            for _ in 0..ops::churn_rounds(n) {
                self.apply(ops::churn_push(queue, len, durability))?;
                let before = self.held.len();
                self.apply(Op::Pop { queue })?;
                if self.held.len() > before {
                    self.apply(ops::churn_ack(self.held.len()))?;
                }
            }
            return Ok(true);
        }
        let was_poisoned = self.poisoned;
        let before: Vec<_> = ops::QUEUES.iter().map(|q| self.counters(q)).collect();
        let r = self.apply_inner(op);
        let r = self.note(r);
        let changed: Vec<&str> = ops::QUEUES
            .iter()
            .zip(&before)
            .filter(|(q, b)| self.counters(q) != **b)
            .map(|(q, _)| *q)
            .collect();
        match &r {
            Ok((_, promote)) => {
                let mut learn = changed;
                if let Op::Requeue { queue, .. } = op {
                    learn.push(ops::queue_name(queue));
                }
                for q in learn {
                    self.learn_moves(q);
                }
                self.promote(promote);
            }
            // A failed write or read midway: the call may have moved messages (or delivered
            // one, whose attempt then counts) that this process does not know of. ENOSPC is
            // one too (the simulated disk returns it from any call, a read included: a pop
            // whose payload read fails has logged its delivery).
            Err(Error::Poisoned(_) | Error::Io(_) | Error::Corrupted(_) | Error::NoSpace)
                if !was_poisoned =>
            {
                let touched: Vec<&str> = match op {
                    Op::Push { queue, .. }
                    | Op::PushBatch { queue, .. }
                    | Op::PushJob { queue, .. }
                    | Op::Pop { queue }
                    | Op::PopDead { queue }
                    | Op::PopBatch { queue, .. }
                    | Op::Requeue { queue, .. } => vec![ops::queue_name(queue)],
                    Op::Ack { .. }
                    | Op::Nack { .. }
                    | Op::NackWith { .. }
                    | Op::DeadLetter { .. } => ops::QUEUES.to_vec(),
                    _ => Vec::new(),
                };
                for q in touched {
                    self.unknown_moves(q);
                }
            }
            // Refused or cut short cleanly: whatever it moved, the live store shows.
            Err(_) => {
                for q in changed {
                    self.learn_moves(q);
                }
            }
        }
        r.map(|(changed, _)| changed)
    }

    fn promote(&mut self, p: &Promote) {
        match p {
            Promote::Nothing => {}
            Promote::Delivered if self.cfg.ack_default() == Durability::Immediate => {
                self.o.all_durable_now();
            }
            Promote::Delivered => self.o.all_written(),
            Promote::All => self.o.all_durable_now(),
        }
    }

    /// The messages of `queue` may have moved anywhere (a call on it failed midway).
    fn unknown_moves(&mut self, queue: &str) {
        self.o.uncertain = true;
        for m in &mut self.o.msgs {
            if m.queue == queue && !m.gone && m.push != St::No {
                m.moves.push(Move { to: Where::Any, st: St::Unknown, resets: true });
            }
        }
    }

    /// Learns where the messages of `queue` are now, from the live store: a message found
    /// elsewhere than the oracle thought has moved (the move is staged, not yet durable).
    fn learn_moves(&mut self, queue: &str) {
        let Ok(w) = self.w() else { return self.unknown_moves(queue) };
        let mut at: HashMap<u64, Where> = HashMap::new();
        for (name, place) in [(queue.to_owned(), Where::Queue), (dlq(queue), Where::Dead)] {
            if !w.queue_names().contains(&name) {
                continue;
            }
            match w.queue(&name).and_then(|q| q.peek(usize::MAX)) {
                Ok(list) => at.extend(list.iter().map(|p| (p.id.get(), place))),
                Err(_) => return self.unknown_moves(queue),
            }
        }
        for (i, dead, _) in &self.held {
            if let Some(id) = self.o.msgs[*i].id {
                at.insert(id, if *dead { Where::Dead } else { Where::Queue });
            }
        }
        for m in &mut self.o.msgs {
            if m.queue != queue || m.gone || m.push == St::No {
                continue;
            }
            let Some(id) = m.id else { continue };
            let now = at.get(&id).copied().unwrap_or(Where::Gone);
            let was = m.at();
            // After a failed call it may be leased without a holder here: not seen, it stays
            // unknown until it shows up again.
            if now != was && !(was == Where::Any && now == Where::Gone) {
                let resets = now == Where::Queue && was != Where::Queue;
                m.moves.push(Move { to: now, st: St::Volatile, resets });
            }
        }
    }

    /// A popped delivery: a known message of this queue, not settled (live checks of I2, I3).
    fn take(&mut self, queue: &str, dead: bool, d: Delivery) {
        let i = self.o.find(queue, d.payload());
        let m = &self.o.msgs[i];
        assert!(!m.gone, "message {i} delivered after it was gone");
        assert!(
            matches!(m.ack, St::No | St::Unknown),
            "message {i} delivered again after an ack that returned Ok"
        );
        assert!(self.held.iter().all(|(j, _, _)| *j != i), "message {i} leased twice");
        self.o.learn_id(i, d.id().get());
        let m = &mut self.o.msgs[i];
        m.deliveries.push((m.moves.len(), St::Volatile));
        self.held.push((i, dead, d));
    }

    fn pick(&mut self, pick: u8) -> Option<(usize, bool, Delivery)> {
        if self.held.is_empty() {
            return None;
        }
        let n = self.held.len();
        Some(self.held.remove(usize::from(pick) % n))
    }

    fn apply_inner(&mut self, op: Op) -> Result<(bool, Promote), Error> {
        let ack_durable = self.cfg.ack_default() == Durability::Immediate;
        let settled = if ack_durable { Promote::All } else { Promote::Nothing };
        match op {
            Op::Push { queue, len, durability } => {
                let opts = ops::JobOpts { delay: 0, priority: 0, ttl: 0, key: None };
                self.push(queue, len.bytes(), durability, opts)
            }
            Op::PushJob { queue, len, durability, opts } => {
                self.push(queue, len.bytes(), durability, opts)
            }
            Op::PushBatch { queue, n, len, durability } => {
                let name = ops::queue_name(queue);
                let q = self.queue(name)?;
                let d = durability.resolve(self.cfg.push_default());
                let ttl = q.config()?.get_ttl().map_or(0, millis);
                let now = self.now();
                let mut idx = Vec::new();
                let mut payloads = Vec::new();
                for k in 0..ops::batch_len(n) {
                    let p = self.o.payload(name, len.bytes() / (k + 1));
                    let i = self.o.register(name, p.clone());
                    self.o.msgs[i].expires = if ttl > 0 { now + ttl } else { 0 };
                    idx.push(i);
                    payloads.push(p);
                }
                let ids = match q.push_batch_with(&payloads, PushOptions::new().durability(d)) {
                    Ok(ids) => ids,
                    Err(Error::QueueFull { .. }) => {
                        for &i in &idx {
                            self.o.msgs[i].push = St::No;
                        }
                        return Ok((false, Promote::Nothing));
                    }
                    Err(e) => return Err(e),
                };
                assert_eq!(ids.len(), payloads.len(), "push_batch returned the wrong id count");
                for (&i, id) in idx.iter().zip(&ids) {
                    self.o.pushed(i, id.get());
                    self.o.msgs[i].push = St::Volatile;
                }
                let p = if d == Durability::Immediate { Promote::All } else { Promote::Nothing };
                Ok((true, p))
            }
            Op::Pop { queue } => {
                let name = ops::queue_name(queue);
                let q = self.queue(name)?;
                // Only a pop that leased something logged (and wrote, or synced) it.
                match q.try_pop()? {
                    Some(d) => {
                        self.take(name, false, d);
                        Ok((true, Promote::Delivered))
                    }
                    None => Ok((true, Promote::Nothing)),
                }
            }
            Op::PopDead { queue } => {
                let name = ops::dlq_name(queue);
                if !self.w()?.queue_names().contains(&name) {
                    return Ok((false, Promote::Nothing));
                }
                let q = self.queue(&name)?;
                match q.try_pop()? {
                    Some(d) => {
                        self.take(&name, true, d);
                        Ok((true, Promote::Delivered))
                    }
                    None => Ok((true, Promote::Nothing)),
                }
            }
            Op::PopBatch { queue, max } => {
                let name = ops::queue_name(queue);
                let q = self.queue(name)?;
                let max = usize::from(max % 5);
                let got = q.pop_batch(max, Duration::ZERO)?;
                assert!(got.len() <= max, "pop_batch returned more than asked");
                let leased = !got.is_empty();
                for d in got {
                    self.take(name, false, d);
                }
                Ok((max > 0, if leased { Promote::Delivered } else { Promote::Nothing }))
            }
            Op::Ack { pick, durability } => {
                let Some((i, _, del)) = self.pick(pick) else {
                    return Ok((false, Promote::Nothing));
                };
                let d = durability.resolve(self.cfg.ack_default());
                self.o.msgs[i].ack = St::Unknown;
                del.ack_with(d)?;
                self.o.msgs[i].ack = St::Volatile;
                Ok((true, if d == Durability::Immediate { Promote::All } else { Promote::Nothing }))
            }
            Op::Nack { pick } => {
                let Some((_, _, del)) = self.pick(pick) else {
                    return Ok((false, Promote::Nothing));
                };
                del.nack()?;
                Ok((true, settled))
            }
            Op::NackWith { pick, delay, error } => {
                let Some((_, _, del)) = self.pick(pick) else {
                    return Ok((false, Promote::Nothing));
                };
                let mut opts = NackOptions::new();
                if let Some(t) = delay {
                    opts = opts.delay(ops::ticks(t));
                }
                if error {
                    opts = opts.error("nacked by the fuzzer");
                }
                del.nack_with(opts)?;
                Ok((true, settled))
            }
            Op::DeadLetter { pick } => {
                let mains: Vec<usize> = (0..self.held.len()).filter(|&k| !self.held[k].1).collect();
                if mains.is_empty() {
                    return Ok((false, Promote::Nothing));
                }
                let k = mains[usize::from(pick) % mains.len()];
                let (_, _, del) = self.held.remove(k);
                del.dead_letter("dead-lettered by the fuzzer")?;
                Ok((true, settled))
            }
            Op::Release { pick } => {
                drop(self.pick(pick));
                Ok((false, Promote::Nothing))
            }
            Op::Extend { pick } => {
                if self.held.is_empty() {
                    return Ok((false, Promote::Nothing));
                }
                let n = self.held.len();
                self.held[usize::from(pick) % n].2.extend(Duration::from_secs(3600))?;
                Ok((true, Promote::Nothing))
            }
            Op::Requeue { queue, all, pick } => {
                let name = ops::dlq_name(queue);
                if !self.w()?.queue_names().contains(&name) {
                    return Ok((false, Promote::Nothing));
                }
                let q = self.queue(&name)?;
                let moved = if all {
                    q.requeue_all()?
                } else {
                    let waiting = q.peek(usize::MAX)?;
                    match waiting.get(usize::from(pick) % (waiting.len() + 1)) {
                        Some(p) => usize::from(q.requeue(p.id)?),
                        None => 0,
                    }
                };
                Ok((true, if moved > 0 { Promote::All } else { Promote::Nothing }))
            }
            Op::Advance { by } => {
                self.clock.advance(ops::ticks(by));
                Ok((false, Promote::Nothing))
            }
            Op::SetConfig { queue, cfg } => {
                let name = ops::queue_name(queue);
                let q = self.queue(name)?;
                let cfg = cfg.get();
                let list = self.o.configs.entry(name.to_owned()).or_default();
                list.push((cfg.clone(), St::Unknown));
                let k = list.len() - 1;
                q.set_config(&cfg)?;
                self.o.configs.get_mut(name).expect("listed")[k].1 = St::Durable;
                Ok((true, Promote::All))
            }
            Op::Sync => {
                self.w()?.sync()?;
                Ok((true, Promote::All))
            }
            Op::Maintain => {
                testing::maintain(self.w()?)?;
                Ok((true, Promote::All))
            }
            Op::Checkpoint => {
                // It makes the log durable up to its end before it writes the state database.
                let report = self.w()?.checkpoint()?;
                stats::note_checkpoint(&report);
                Ok((true, Promote::All))
            }
            Op::Churn { .. } => unreachable!("apply runs a churn's rounds"),
            Op::Reopen { release_first } => {
                // Without `release_first`, the deliveries (in flight at the close) and a clone
                // of the closed handle live on until the store is open again, as a program may
                // keep them: the old store's state database is dropped then.
                let mut kept = (Vec::new(), None);
                if release_first {
                    self.held.clear();
                } else {
                    kept = (std::mem::take(&mut self.held), self.wharf.clone());
                }
                self.close()?;
                self.open()?;
                drop(kept);
                Ok((true, Promote::Nothing))
            }
            Op::BadQueue { pick } => {
                let name = ops::BAD_NAMES[usize::from(pick) % ops::BAD_NAMES.len()];
                match self.w()?.queue(name) {
                    Err(Error::InvalidName(_)) => Ok((false, Promote::Nothing)),
                    Err(e) => Err(e),
                    Ok(_) => panic!("queue name {name:?} was accepted"),
                }
            }
        }
    }

    /// One push with options. A dedup key still held returns the id of an earlier message
    /// and stores nothing; a full queue that rejects refuses it.
    fn push(
        &mut self,
        queue: u8,
        len: usize,
        dur: ops::Dur,
        o: ops::JobOpts,
    ) -> Result<(bool, Promote), Error> {
        let name = ops::queue_name(queue);
        let q = self.queue(name)?;
        let d = dur.resolve(self.cfg.push_default());
        let ttl = if o.ttl > 0 { Some(ops::ticks(o.ttl)) } else { q.config()?.get_ttl() };
        let now = self.now();
        let payload = self.o.payload(name, len);
        let i = self.o.register(name, payload.clone());
        self.o.msgs[i].expires = ttl.map_or(0, |t| now + millis(t));
        let id = match q.push_with(&payload, o.get(d)) {
            Ok(id) => id.get(),
            Err(Error::QueueFull { .. }) => {
                self.o.msgs[i].push = St::No;
                return Ok((false, Promote::Nothing));
            }
            Err(e) => return Err(e),
        };
        if o.key().is_some() && id <= self.o.max_id {
            // A duplicate: the id of the message that holds the key; nothing was stored.
            self.o.msgs[i].push = St::No;
            if let Some(j) = self.o.by_id(id) {
                assert_eq!(self.o.msgs[j].queue, name, "a dedup key answered from another queue");
            }
        } else {
            self.o.pushed(i, id);
            self.o.msgs[i].push = St::Volatile;
        }
        Ok((true, if d == Durability::Immediate { Promote::All } else { Promote::Nothing }))
    }

    /// Closes the store; a successful close of a healthy store made everything durable. A
    /// poisoned store's close makes nothing durable: what was staged may or may not be on disk.
    pub fn close(&mut self) -> Result<(), Error> {
        self.held.clear();
        if let Some(w) = self.wharf.take() {
            let r = w.close();
            let r = self.note(r);
            if r.is_ok() && !self.poisoned {
                self.o.all_durable_now();
            } else {
                self.o.forget_volatile();
            }
            r?;
        }
        Ok(())
    }

    /// Forgets the store without closing it cleanly (the disk is crashed or about to be
    /// replaced by an image).
    pub fn abandon(&mut self) {
        self.held.clear();
        self.wharf = None;
    }

    /// Opens the store on `image` (which must succeed), checks I1–I5 and collapses the model.
    pub fn recover_and_check(&mut self, image: SimFs, keep_all: bool, what: &str) {
        self.abandon();
        self.sim = image;
        if let Err(e) = self.open() {
            panic!("{what}: open of the recovered image failed: {e}");
        }
        let now = self.now();
        let w = self.wharf.clone().expect("open");
        self.o.check_recovered(&w, now, keep_all, what);
    }
}
