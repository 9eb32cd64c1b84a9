//! The jobs model: what every call on a healthy store must return, with the job semantics
//! (priorities, delays, TTLs, retries with backoff, dead letters, requeues, length limits,
//! dedup keys, per-queue config), over a few named queues and their dead-letter queues. A
//! driver makes each call on the store, tells the model, and calls [`Model::check`]: the store
//! must match the model exactly.
//!
//! Drivers: `tests/it/jobs_model.rs` (proptest, one queue, a real directory) and the
//! `ops_model` fuzz target (`fuzz/src/targets.rs`, three queues, the simulated disk).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use wharf::{
    Backoff, Clock, DeadLetters, DeadReason, Delivery, Error, ManualClock, OnExpiry, Overflow,
    QueueConfig, Wharf,
};

use crate::{clip, dlq, millis, unix_ms};

/// The options of a push.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// `None` or zero: ready at once.
    pub delay: Option<Duration>,
    /// Its priority (0 to `wharf::MAX_PRIORITY`).
    pub priority: u8,
    /// `None`: the queue's TTL.
    pub ttl: Option<Duration>,
    /// A dedup key.
    pub key: Option<String>,
}

/// One unsettled message.
#[derive(Debug, Clone)]
struct M {
    /// Its queue (index into the model's queues).
    q: usize,
    payload: Vec<u8>,
    /// In the queue's dead-letter queue.
    dead: bool,
    priority: u8,
    /// Unix ms from which it is ready (0: ready).
    due: u64,
    /// Unix ms from which it must not be delivered (0: never).
    expires: u64,
    attempts: u32,
    leased: bool,
    /// Its delivery was dropped (the lease lapsed in memory) and nothing logged about it since:
    /// the log still says delivered, so a close now finds it in flight.
    lapsed: bool,
    /// The error text kept with it ("" for none).
    error: String,
    /// Why it was dead-lettered, while it is a dead letter.
    reason: Option<DeadReason>,
}

/// A queue's counters since the store was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    processed: u64,
    failed: u64,
    dead_lettered: u64,
    expired: u64,
}

/// The model, and the deliveries the driver holds.
pub struct Model {
    /// The store's clock (the driver moves it).
    pub clock: ManualClock,
    /// The queues' names; a queue is named by its index here.
    queues: Vec<String>,
    msgs: BTreeMap<u64, M>,
    cfgs: Vec<QueueConfig>,
    /// Dedup key → (message id, Unix ms until which it holds once settled), per queue, as the
    /// store's index holds it (a key found lapsed is forgotten) ...
    dedup: Vec<HashMap<String, (u64, u64)>>,
    /// ... and as a reopen rebuilds it (the last push with each key): from the log, or from
    /// the state database once a checkpoint covered the segment of its push (a segment with a
    /// keyed push is deleted only then), so a reopen forgets no key.
    logged: Vec<HashMap<String, (u64, u64)>>,
    counters: Vec<Counters>,
    /// Queue names in creation order: the catalog.
    pub created: Vec<String>,
    max_id: u64,
    counter: u64,
    /// Held deliveries: message id, popped from a dead-letter queue, the delivery.
    pub held: Vec<(u64, bool, Delivery)>,
}

impl Model {
    /// A model of an empty store whose clock is `clock`, over the queues `queues`.
    pub fn new(clock: ManualClock, queues: &[&str]) -> Model {
        let n = queues.len();
        Model {
            clock,
            queues: queues.iter().map(|&q| q.to_owned()).collect(),
            msgs: BTreeMap::new(),
            cfgs: vec![QueueConfig::new(); n],
            dedup: vec![HashMap::new(); n],
            logged: vec![HashMap::new(); n],
            counters: vec![Counters::default(); n],
            created: Vec::new(),
            max_id: 0,
            counter: 0,
            held: Vec::new(),
        }
    }

    /// The clock's time in Unix ms.
    pub fn now(&self) -> u64 {
        unix_ms(self.clock.wall())
    }

    fn create(&mut self, name: String) {
        if !self.created.contains(&name) {
            self.created.push(name);
        }
    }

    /// The handle of queue `q` (created on first use, like the store does).
    ///
    /// # Panics
    /// If the store refuses it.
    pub fn queue(&mut self, w: &Wharf, q: usize) -> wharf::Queue {
        let name = self.queues[q].clone();
        let queue = w.queue(&name).unwrap();
        self.create(name);
        queue
    }

    /// The queue (its index) of message `id`, if the model knows it.
    pub fn queue_of(&self, id: u64) -> Option<usize> {
        self.msgs.get(&id).map(|m| m.q)
    }

    /// The dead-letter queue of queue `q`, if it exists.
    pub fn dlq(&self, w: &Wharf, q: usize) -> Option<wharf::Queue> {
        let name = dlq(&self.queues[q]);
        self.created.contains(&name).then(|| w.queue(&name).unwrap())
    }

    /// The dead-letter queue of queue `q`, created if it does not exist yet.
    pub fn dlq_or_create(&mut self, w: &Wharf, q: usize) -> wharf::Queue {
        let name = dlq(&self.queues[q]);
        let queue = w.queue(&name).unwrap();
        self.create(name);
        queue
    }

    /// A new payload of about `len` bytes for queue `q`.
    pub fn payload(&mut self, q: usize, len: usize) -> Vec<u8> {
        self.counter += 1;
        let mut p = format!("{q}:{}:", self.counter).into_bytes();
        p.resize(len.max(p.len()), (self.counter % 251) as u8);
        p
    }

    fn ready(m: &M, q: usize, dead: bool, now: u64) -> bool {
        m.q == q && m.dead == dead && !m.leased && m.due <= now
    }

    /// The message a pop leases next: highest priority, then oldest.
    fn head(&self, q: usize, dead: bool, now: u64) -> Option<u64> {
        self.msgs
            .iter()
            .filter(|(_, m)| Self::ready(m, q, dead, now))
            .min_by_key(|(id, m)| (u8::MAX - m.priority, **id))
            .map(|(id, _)| *id)
    }

    /// Waiting messages in the order `peek` lists them: ready ones by priority and age, then
    /// delayed ones by due time.
    fn waiting(&self, q: usize, dead: bool, now: u64) -> Vec<u64> {
        let mut ready = Vec::new();
        let mut delayed = Vec::new();
        for (&id, m) in &self.msgs {
            if m.q != q || m.dead != dead || m.leased {
                continue;
            }
            if m.due <= now {
                ready.push((u8::MAX - m.priority, id));
            } else {
                delayed.push((m.due, id));
            }
        }
        ready.sort_unstable();
        delayed.sort_unstable();
        ready.into_iter().map(|(_, id)| id).chain(delayed.into_iter().map(|(_, id)| id)).collect()
    }

    /// Moves message `id` to its queue's dead-letter queue (or drops it).
    fn dead_letter(&mut self, id: u64, reason: DeadReason, error: &str) {
        let q = self.msgs[&id].q;
        self.counters[q].dead_lettered += 1;
        if self.cfgs[q].get_dead_letters() == &DeadLetters::Drop {
            self.msgs.remove(&id);
            return;
        }
        self.create(dlq(&self.queues[q]));
        let m = self.msgs.get_mut(&id).unwrap();
        m.dead = true;
        m.priority = 0;
        m.due = 0;
        m.expires = 0;
        m.leased = false;
        m.lapsed = false;
        m.error = clip(error).to_owned();
        m.reason = Some(reason);
    }

    /// What a pop of queue `q` (or its dead-letter queue) returns: (id, attempt), after
    /// dropping or dead-lettering the expired and exhausted messages in front of it.
    pub fn pop(&mut self, q: usize, dead: bool) -> Option<(u64, u32)> {
        let now = self.now();
        loop {
            let id = self.head(q, dead, now)?;
            let m = &self.msgs[&id];
            if !dead {
                let cfg = &self.cfgs[q];
                let expired = m.expires != 0 && m.expires <= now;
                let exhausted = cfg.get_max_attempts().is_some_and(|n| m.attempts >= n);
                if expired || exhausted {
                    let error = m.error.clone();
                    if expired {
                        self.counters[q].expired += 1;
                    }
                    if !expired {
                        self.dead_letter(id, DeadReason::MaxAttempts, &error);
                    } else if cfg.get_on_expiry() == OnExpiry::DeadLetter {
                        self.dead_letter(id, DeadReason::Expired, &error);
                    } else {
                        self.msgs.remove(&id);
                    }
                    continue;
                }
            }
            let m = self.msgs.get_mut(&id).unwrap();
            m.attempts += 1;
            m.leased = true;
            m.lapsed = false;
            return Some((id, m.attempts));
        }
    }

    /// A pop of queue `q` (or its dead-letter queue) returned `got`: it must be what the model
    /// says a pop returns; the delivery is held.
    ///
    /// # Panics
    /// If it is not.
    pub fn popped(&mut self, q: usize, dead: bool, got: Option<Delivery>) {
        let want = self.pop(q, dead);
        match (got, want) {
            (None, None) => {}
            (Some(d), Some((id, attempt))) => {
                assert_eq!(d.id().get(), id, "pop of {q} (dead {dead}) returned another message");
                assert_eq!(d.attempt(), attempt, "attempt of {id:x}");
                assert_eq!(d.payload(), &self.msgs[&id].payload[..], "payload of {id:x}");
                self.held.push((id, dead, d));
            }
            (got, want) => panic!(
                "pop of {q} (dead {dead}) returned {:?}, the model says {want:?}",
                got.map(|d| d.id().get())
            ),
        }
    }

    /// Whether a push of `n` into queue `q` is accepted; dead-letters the messages it makes
    /// room for.
    fn make_room(&mut self, q: usize, n: usize) -> bool {
        let Some((limit, overflow)) = self.cfgs[q].get_max_len() else { return true };
        let now = self.now();
        let waiting = self.msgs.values().filter(|m| m.q == q && !m.dead && !m.leased).count();
        let excess = (waiting as u64 + n as u64).saturating_sub(limit);
        if excess == 0 {
            return true;
        }
        if overflow == Overflow::Reject || n as u64 > limit {
            return false;
        }
        for _ in 0..excess {
            // The next message a pop would take, else the earliest-due delayed one.
            let victim =
                self.head(q, false, now).or_else(|| self.waiting(q, false, now).first().copied());
            self.dead_letter(victim.expect("a waiting message"), DeadReason::Overflow, "");
        }
        true
    }

    /// A push of `payloads` into queue `q` with `job` returned `got`: checks it against the
    /// model and records the new messages.
    ///
    /// # Panics
    /// If it is not what the model says.
    pub fn pushed(
        &mut self,
        q: usize,
        payloads: Vec<Vec<u8>>,
        job: Job,
        got: Result<Vec<u64>, Error>,
    ) {
        let now = self.now();
        if let Some(key) = &job.key {
            if let Some(&(id, until)) = self.dedup[q].get(key) {
                let unsettled = self.msgs.get(&id).is_some_and(|m| !m.dead && m.q == q);
                if unsettled || now < until {
                    let hit = matches!(&got, Ok(ids) if ids == &[id]);
                    assert!(hit, "a duplicate push of {key} returned {got:?}, not [{id:x}]");
                    return;
                }
                self.dedup[q].remove(key);
            }
        }
        if !self.make_room(q, payloads.len()) {
            let err = got.expect_err("a push into a full queue");
            assert!(matches!(err, Error::QueueFull { .. }), "{err}");
            return;
        }
        let ids = got.expect("push");
        assert_eq!(ids.len(), payloads.len(), "push returned the wrong id count");
        let ttl = job.ttl.or(self.cfgs[q].get_ttl());
        let delay = job.delay.unwrap_or_default();
        for (id, payload) in ids.iter().zip(payloads) {
            assert!(*id > self.max_id, "id {id:x} is not above {:x}", self.max_id);
            self.max_id = *id;
            let m = M {
                q,
                payload,
                dead: false,
                priority: job.priority,
                due: if delay.is_zero() { 0 } else { now + millis(delay) },
                expires: ttl.map_or(0, |t| now + millis(t)),
                attempts: 0,
                leased: false,
                lapsed: false,
                error: String::new(),
                reason: None,
            };
            self.msgs.insert(*id, m);
        }
        if let (Some(key), Some(&id)) = (job.key, ids.first()) {
            let until = now + millis(self.cfgs[q].get_dedup_window());
            self.dedup[q].insert(key.clone(), (id, until));
            self.logged[q].insert(key, (id, until));
        }
    }

    /// The delay before the retry of a failed delivery `attempt` of `id` of queue `q`.
    fn backoff(&self, q: usize, attempt: u32, id: u64) -> Duration {
        match self.cfgs[q].get_backoff() {
            Backoff::Fixed(d) => d,
            Backoff::Exponential { base, cap, jitter: false } => {
                let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
                base.checked_mul(factor).unwrap_or(cap).min(cap)
            }
            // The jitter is a hash of id and attempt: the library's own function.
            b => b.delay(attempt, id),
        }
    }

    /// A held delivery was acked.
    pub fn acked(&mut self, id: u64, dead: bool) {
        let m = self.msgs.remove(&id).expect("known id");
        if !dead {
            self.counters[m.q].processed += 1;
        }
    }

    /// A held delivery of attempt `attempt` was nacked, with `delay` (else the backoff) and
    /// `error` ("" for none).
    pub fn nacked(
        &mut self,
        id: u64,
        dead: bool,
        attempt: u32,
        delay: Option<Duration>,
        error: &str,
    ) {
        let now = self.now();
        let q = self.msgs[&id].q;
        if !dead {
            self.counters[q].failed += 1;
            if self.cfgs[q].get_max_attempts().is_some_and(|n| attempt >= n) {
                return self.dead_letter(id, DeadReason::MaxAttempts, error);
            }
        }
        let delay = match delay {
            Some(d) => d,
            None if dead => Duration::ZERO, // a dead-letter queue has the default config
            None => self.backoff(q, attempt, id),
        };
        let m = self.msgs.get_mut(&id).expect("known id");
        m.leased = false;
        m.due = if delay.is_zero() { 0 } else { now + millis(delay) };
        if !error.is_empty() {
            m.error = clip(error).to_owned();
        }
    }

    /// A held delivery was released.
    pub fn released(&mut self, id: u64) {
        let m = self.msgs.get_mut(&id).expect("known id");
        m.leased = false;
        m.due = 0;
    }

    /// A held delivery was dropped: ready again at once, like a release, but nothing is logged,
    /// so the message stays in flight for a close until a record names it.
    pub fn dropped(&mut self, id: u64) {
        self.released(id);
        self.msgs.get_mut(&id).expect("known id").lapsed = true;
    }

    /// Messages whose dropped delivery a close finds in flight.
    pub fn lapsed(&self) -> u64 {
        self.msgs.values().filter(|m| m.lapsed).count() as u64
    }

    /// A held delivery of a queue was dead-lettered explicitly.
    pub fn dead_lettered(&mut self, id: u64, reason: &str) {
        self.dead_letter(id, DeadReason::Explicit, reason);
    }

    /// The waiting dead letters of queue `q`, in the order `peek` lists them.
    pub fn dead_waiting(&self, q: usize) -> Vec<u64> {
        self.waiting(q, true, self.now())
    }

    /// Dead letter `id` was requeued.
    pub fn requeued(&mut self, id: u64) {
        let m = self.msgs.get_mut(&id).expect("known id");
        m.dead = false;
        m.attempts = 0;
        m.lapsed = false;
        m.error.clear();
        m.reason = None;
        m.due = 0;
    }

    /// Queue `q`'s config was set.
    pub fn set_config(&mut self, q: usize, cfg: QueueConfig) {
        self.cfgs[q] = cfg;
    }

    /// The store was closed (with every held delivery in flight or released) and reopened.
    pub fn reopened(&mut self) {
        for m in self.msgs.values_mut() {
            m.leased = false;
            m.lapsed = false;
        }
        self.counters = vec![Counters::default(); self.queues.len()];
        self.dedup.clone_from(&self.logged);
    }

    /// Checks that the store matches the model: catalog, configs, counters, depths, every
    /// waiting message of every queue and dead-letter queue (payload, attempts, priority, due
    /// time, dead-letter origin and reason, last error).
    ///
    /// # Panics
    /// Where it does not, naming `what`.
    pub fn check(&self, w: &Wharf, what: &str) {
        assert_eq!(w.queue_names(), self.created, "{what}: catalog");
        let now = self.now();
        for (q, queue) in self.queues.iter().enumerate() {
            for dead in [false, true] {
                let name = if dead { dlq(queue) } else { queue.clone() };
                if !self.created.contains(&name) {
                    continue;
                }
                let h = w.queue(&name).unwrap();
                if !dead {
                    assert_eq!(h.config().unwrap(), self.cfgs[q], "{what}: config of {name}");
                    let s = h.stats().unwrap();
                    let c = Counters {
                        processed: s.processed,
                        failed: s.failed,
                        dead_lettered: s.dead_lettered,
                        expired: s.expired,
                    };
                    assert_eq!(c, self.counters[q], "{what}: counters of {name}");
                }
                let of = |f: &dyn Fn(&M) -> bool| {
                    self.msgs.values().filter(|m| m.q == q && m.dead == dead && f(m)).count()
                };
                let want = (
                    of(&|m| !m.leased && m.due <= now),
                    of(&|m| !m.leased && m.due > now),
                    of(&|m| m.leased),
                );
                let d = h.depth().unwrap();
                assert_eq!((d.ready, d.delayed, d.in_flight), want, "{what}: depth of {name}");
                let peeked = h.peek(usize::MAX).unwrap();
                let got: Vec<u64> = peeked.iter().map(|p| p.id.get()).collect();
                assert_eq!(got, self.waiting(q, dead, now), "{what}: waiting in {name}");
                for p in &peeked {
                    let m = &self.msgs[&p.id.get()];
                    let id = p.id;
                    assert_eq!(p.payload, m.payload, "{what}: payload of {id}");
                    assert_eq!(p.attempts, m.attempts, "{what}: attempts of {id}");
                    assert_eq!(p.priority, m.priority, "{what}: priority of {id}");
                    let due = p.due.map(unix_ms);
                    assert_eq!(due, (m.due > now).then_some(m.due), "{what}: due time of {id}");
                    let from = m.reason.map(|r| (queue.clone(), r));
                    assert_eq!(p.dead_lettered_from, from, "{what}: dead-letter origin of {id}");
                    let error = (!m.error.is_empty()).then(|| m.error.clone());
                    assert_eq!(p.last_error, error, "{what}: last error of {id}");
                }
            }
        }
    }

    /// Unsettled messages (for the recovery report after a reopen).
    pub fn unsettled(&self) -> usize {
        self.msgs.len()
    }
}
