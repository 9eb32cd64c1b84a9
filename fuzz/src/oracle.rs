//! The allowed-states oracle of `tests/sim.rs`, extended for long runs with several crashes:
//! after each recovery it checks I1–I5 and then collapses what it knows to what was observed,
//! so that operations (and more crashes) can continue on the recovered store.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use wharf::testing::{self, SimFs};
use wharf::{Delivery, Durability, Error, PushOptions, Wharf};

use crate::ops::{self, Config, Op};

/// The store's directory on the simulated disk.
pub const DIR: &str = "/s";

/// What is known of one call that changes the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    /// Never made.
    No,
    /// Returned `Ok`, not durable yet.
    Volatile,
    /// Durable: returned `Ok` durably, or a later durable call covered it.
    Durable,
    /// The call failed or was cut by a crash: it may or may not have happened.
    Unknown,
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

    /// The message with this payload in this queue; a phantom otherwise (I3).
    pub fn find(&self, queue: &str, payload: &[u8]) -> usize {
        let i = *self.by_payload.get(payload).unwrap_or_else(|| {
            panic!("I3: phantom payload in {queue}: {:?}", String::from_utf8_lossy(payload))
        });
        assert_eq!(self.msgs[i].queue, queue, "I3: message {i} delivered from another queue");
        i
    }

    /// Everything staged before a durable `Ok` is durable too (prefix durability).
    pub fn all_durable(&mut self, upto: usize) {
        for m in self.msgs.iter_mut().take(upto) {
            if m.push == St::Volatile {
                m.push = St::Durable;
            }
            if m.ack == St::Volatile {
                m.ack = St::Durable;
            }
        }
    }

    /// The store that staged the volatile calls is gone without making them durable: later
    /// syncs of another open do not cover them, so they may or may not have happened.
    pub fn forget_volatile(&mut self) {
        for m in &mut self.msgs {
            if m.push == St::Volatile {
                m.push = St::Unknown;
            }
            if m.ack == St::Volatile {
                m.ack = St::Unknown;
            }
        }
    }

    pub fn all_durable_now(&mut self) {
        let n = self.msgs.len();
        self.all_durable(n);
    }

    /// Checks I1–I5 for the messages observed in a recovered store (queue name, id, payload, in
    /// delivery order), then collapses the model to what was observed.
    pub fn check_recovered(&mut self, seen: &BTreeMap<String, Vec<(u64, Vec<u8>)>>, what: &str) {
        let mut present = BTreeMap::new();
        for (queue, list) in seen {
            let mut last = 0;
            for (id, payload) in list {
                let i = self.find(queue, payload);
                assert!(present.insert(i, *id).is_none(), "{what}: I3 message {i} delivered twice");
                assert!(*id > last, "{what}: I4 ids out of order in {queue}");
                last = *id;
                assert!(
                    !self.msgs[i].gone,
                    "{what}: I2/I3 message {i} came back after it was gone"
                );
                assert!(self.msgs[i].push != St::No, "{what}: I3 message {i} never pushed");
                self.learn_id(i, *id);
            }
        }
        for (i, m) in self.msgs.iter().enumerate() {
            if m.gone {
                continue;
            }
            if m.push == St::Durable && m.ack == St::No {
                assert!(
                    present.contains_key(&i),
                    "{what}: I1 durable message {i} ({}) lost",
                    m.queue
                );
            }
            if m.ack == St::Durable {
                assert!(
                    !present.contains_key(&i),
                    "{what}: I2 durably acked message {i} came back"
                );
            }
        }
        // I4: a survivor implies every earlier message pushed with `Ok`, never acked and not
        // gone, survived too (the log is durable as a prefix).
        if let Some((&last, _)) = present.iter().next_back() {
            for (i, m) in self.msgs.iter().enumerate().take(last) {
                if !m.gone && m.ack == St::No && matches!(m.push, St::Volatile | St::Durable) {
                    assert!(
                        present.contains_key(&i),
                        "{what}: I4 hole: {i} lost while {last} survived"
                    );
                }
            }
        }
        for (i, m) in self.msgs.iter_mut().enumerate() {
            if present.contains_key(&i) {
                m.push = St::Durable;
                m.ack = St::No;
            } else if m.push != St::No {
                m.gone = true;
            }
        }
    }
}

/// Pops every message of every queue (holding them, so each is seen once), then releases
/// them all; returns (id, payload) per queue in delivery order.
pub fn observe(w: &Wharf) -> BTreeMap<String, Vec<(u64, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    let mut held: Vec<Delivery> = Vec::new();
    for name in w.queue_names() {
        let q = w.queue(&name).expect("queue of a recovered store");
        let mut list = Vec::new();
        loop {
            match q.try_pop() {
                Ok(Some(d)) => {
                    list.push((d.id().get(), d.payload().to_vec()));
                    held.push(d);
                }
                Ok(None) => break,
                Err(e) => panic!("pop from a recovered store failed: {e}"),
            }
            assert!(list.len() <= 100_000, "draining {name} does not end");
        }
        out.insert(name, list);
    }
    drop(held);
    out
}

/// A store on the simulated disk, the oracle's record of it, and the deliveries held.
pub struct Ctx {
    pub sim: SimFs,
    pub cfg: Config,
    pub wharf: Option<Wharf>,
    pub o: Oracle,
    pub held: Vec<(usize, Delivery)>,
    /// A call returned `Poisoned` and the store was not reopened since.
    pub poisoned: bool,
}

/// What an operation did: `Ok(true)` when it changed (or tried to change) the store.
pub type Outcome = Result<bool, Error>;

impl Ctx {
    pub fn new(sim: SimFs, cfg: Config) -> Ctx {
        Ctx { sim, cfg, wharf: None, o: Oracle::default(), held: Vec::new(), poisoned: false }
    }

    /// Opens the store (dropping any handle first).
    pub fn open(&mut self) -> Result<(), Error> {
        self.held.clear();
        self.wharf = None;
        self.poisoned = false;
        self.wharf = Some(testing::open(self.cfg.builder(), &self.sim, Path::new(DIR))?);
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

    /// Applies one operation; errors are returned for the caller to judge.
    pub fn apply(&mut self, op: Op) -> Outcome {
        let r = self.apply_inner(op);
        self.note(r)
    }

    fn apply_inner(&mut self, op: Op) -> Outcome {
        match op {
            Op::Push { queue, len, durability } => {
                let name = ops::queue_name(queue);
                let q = self.queue(name)?;
                let d = durability.resolve(self.cfg.push_default());
                let payload = self.o.payload(name, len.bytes());
                let i = self.o.register(name, payload.clone());
                let id = q.push_with(&payload, PushOptions::new().durability(d))?;
                self.o.pushed(i, id.get());
                self.o.msgs[i].push = St::Volatile;
                if d == Durability::Immediate {
                    self.o.all_durable(i + 1);
                }
                Ok(true)
            }
            Op::PushBatch { queue, n, len, durability } => {
                let name = ops::queue_name(queue);
                let q = self.queue(name)?;
                let d = durability.resolve(self.cfg.push_default());
                let mut idx = Vec::new();
                let mut payloads = Vec::new();
                for k in 0..ops::batch_len(n) {
                    let p = self.o.payload(name, len.bytes() / (k + 1));
                    idx.push(self.o.register(name, p.clone()));
                    payloads.push(p);
                }
                let ids = q.push_batch_with(&payloads, PushOptions::new().durability(d))?;
                assert_eq!(ids.len(), payloads.len(), "push_batch returned the wrong id count");
                for (&i, id) in idx.iter().zip(&ids) {
                    self.o.pushed(i, id.get());
                    self.o.msgs[i].push = St::Volatile;
                }
                if d == Durability::Immediate {
                    self.o.all_durable_now();
                }
                Ok(true)
            }
            Op::Pop { queue } => {
                let name = ops::queue_name(queue);
                let q = self.queue(name)?;
                // Only a pop that leased something logged (and, with `Immediate`, synced) it.
                if let Some(d) = q.try_pop()? {
                    self.take(name, d);
                    self.after_lease_record();
                }
                Ok(true)
            }
            Op::PopBatch { queue, max } => {
                let name = ops::queue_name(queue);
                let q = self.queue(name)?;
                let max = usize::from(max % 5);
                let got = q.pop_batch(max, Duration::ZERO)?;
                assert!(got.len() <= max, "pop_batch returned more than asked");
                let leased = !got.is_empty();
                for d in got {
                    self.take(name, d);
                }
                if leased {
                    self.after_lease_record();
                }
                Ok(max > 0)
            }
            Op::Ack { pick, durability } => {
                if self.held.is_empty() {
                    return Ok(false);
                }
                let (i, del) = self.held.remove(usize::from(pick) % self.held.len());
                let d = durability.resolve(self.cfg.ack_default());
                self.o.msgs[i].ack = St::Unknown;
                del.ack_with(d)?;
                self.o.msgs[i].ack = St::Volatile;
                if d == Durability::Immediate {
                    self.o.all_durable_now();
                }
                Ok(true)
            }
            Op::Nack { pick } => {
                if self.held.is_empty() {
                    return Ok(false);
                }
                let (_, del) = self.held.remove(usize::from(pick) % self.held.len());
                del.nack()?;
                self.after_lease_record();
                Ok(true)
            }
            Op::Release { pick } => {
                if !self.held.is_empty() {
                    let n = self.held.len();
                    drop(self.held.remove(usize::from(pick) % n));
                }
                Ok(false)
            }
            Op::Extend { pick } => {
                if self.held.is_empty() {
                    return Ok(false);
                }
                let n = self.held.len();
                self.held[usize::from(pick) % n].1.extend(Duration::from_secs(3600))?;
                Ok(true)
            }
            Op::Sync => {
                self.w()?.sync()?;
                self.o.all_durable_now();
                Ok(true)
            }
            Op::Maintain => {
                testing::maintain(self.w()?)?;
                self.o.all_durable_now();
                Ok(true)
            }
            Op::Reopen { release_first } => {
                if release_first {
                    self.held.clear();
                }
                self.close()?;
                self.held.clear();
                self.open()?;
                Ok(true)
            }
            Op::BadQueue { pick } => {
                let name = ops::BAD_NAMES[usize::from(pick) % ops::BAD_NAMES.len()];
                match self.w()?.queue(name) {
                    Err(Error::InvalidName(_)) => Ok(false),
                    Err(e) => Err(e),
                    Ok(_) => panic!("queue name {name:?} was accepted"),
                }
            }
        }
    }

    /// A popped delivery: a known message of this queue, not settled (live checks of I2, I3).
    fn take(&mut self, queue: &str, d: Delivery) {
        let i = self.o.find(queue, d.payload());
        let m = &self.o.msgs[i];
        assert!(!m.gone, "message {i} delivered after it was gone");
        assert!(
            matches!(m.ack, St::No | St::Unknown),
            "message {i} delivered again after an ack that returned Ok"
        );
        assert!(self.held.iter().all(|(j, _)| *j != i), "message {i} leased twice");
        self.o.learn_id(i, d.id().get());
        self.held.push((i, d));
    }

    /// Pops that lease something and nacks stage records with the ack durability: `Immediate`
    /// syncs everything.
    fn after_lease_record(&mut self) {
        if self.cfg.ack_default() == Durability::Immediate {
            self.o.all_durable_now();
        }
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
    pub fn recover_and_check(&mut self, image: SimFs, what: &str) {
        self.abandon();
        self.sim = image;
        if let Err(e) = self.open() {
            panic!("{what}: open of the recovered image failed: {e}");
        }
        let seen = observe(self.wharf.as_ref().expect("open"));
        self.o.check_recovered(&seen, what);
    }
}
