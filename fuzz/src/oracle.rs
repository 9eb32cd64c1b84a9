//! The operation sequences' driver of the crash oracle (`wharf_check::oracle`, shared with
//! tests/sim), for long runs with several crashes: after each recovery it checks I1–I5 and
//! then collapses what it knows to what was observed, so that operations (and more crashes) can
//! continue on the recovered store.
//!
//! Messages move: a dead letter takes one from its queue to `<queue>.dlq`, a requeue brings it
//! back (its attempts from zero), an ack or a drop (expiry, a queue whose dead letters are
//! dropped) settles it for good. The driver does not predict the moves the store makes on its
//! own (expired or exhausted messages met by a pop, overflow victims of a push): it learns
//! them from the live store after each call whose queue counters say something moved, and
//! knows only where they went (`Loc::InQueue`, `Loc::InDead`), not their details.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wharf::testing::{self, ManualClock, SimFs};
use wharf::{Clock, Delivery, Durability, Error, NackOptions, PushOptions, Wharf};
pub use wharf_check::oracle::{Loc, Move, Msg, Oracle, St};
use wharf_check::{dlq, millis, unix_ms};

use crate::ops::{self, Config, Op};
use crate::stats;

/// The store's directory on the simulated disk.
pub const DIR: &str = "/s";

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
        unix_ms(self.clock.wall())
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
                    | Op::AckMany { .. }
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
                m.moves.push(Move { to: Loc::Any, st: St::Unknown, resets: true });
            }
        }
    }

    /// Learns where the messages of `queue` are now, from the live store: a message found
    /// elsewhere than the oracle thought has moved (the move is staged, not yet durable).
    fn learn_moves(&mut self, queue: &str) {
        let Ok(w) = self.w() else { return self.unknown_moves(queue) };
        let mut at: HashMap<u64, Loc> = HashMap::new();
        for (name, place) in [(queue.to_owned(), Loc::InQueue), (dlq(queue), Loc::InDead)] {
            if !w.queue_names().contains(&name) {
                continue;
            }
            match w.queue(&name).and_then(|q| q.peek(usize::MAX)) {
                Ok(list) => at.extend(list.iter().map(|p| (p.id.get(), place.clone()))),
                Err(_) => return self.unknown_moves(queue),
            }
        }
        for (i, dead, _) in &self.held {
            if let Some(id) = self.o.msgs[*i].id {
                at.insert(id, if *dead { Loc::InDead } else { Loc::InQueue });
            }
        }
        for m in &mut self.o.msgs {
            if m.queue != queue || m.gone || m.push == St::No {
                continue;
            }
            let Some(id) = m.id else { continue };
            let now = at.get(&id).cloned().unwrap_or(Loc::Gone);
            let was = m.at();
            // After a failed call it may be leased without a holder here: not seen, it stays
            // unknown until it shows up again.
            if now != was && !(was == Loc::Any && now == Loc::Gone) {
                let resets = now == Loc::InQueue && was != Loc::InQueue;
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
                    let i = self.o.register(name, p.clone(), Loc::InQueue);
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
            Op::AckMany { pick, n, durability } => {
                let Some(first) = self.pick(pick) else {
                    return Ok((false, Promote::Nothing));
                };
                let (queue, dead) = (self.o.msgs[first.0].queue.clone(), first.1);
                let mut batch = vec![first];
                let mut k = 0;
                while k < self.held.len() && batch.len() < ops::ack_many_len(n) {
                    let (i, d, _) = &self.held[k];
                    if *d == dead && self.o.msgs[*i].queue == queue {
                        batch.push(self.held.remove(k));
                    } else {
                        k += 1;
                    }
                }
                let name = if dead { dlq(&queue) } else { queue };
                let d = durability.resolve(self.cfg.ack_default());
                let who: Vec<usize> = batch.iter().map(|b| b.0).collect();
                self.o.ack_batch(&who);
                let q = self.queue(&name)?;
                let report = q.ack_many_with(batch.into_iter().map(|b| b.2), d)?;
                assert_eq!((report.acked, report.lapsed.len()), (who.len(), 0), "{report:?}");
                for i in who {
                    self.o.msgs[i].ack = St::Volatile;
                }
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
        let i = self.o.register(name, payload.clone(), Loc::InQueue);
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
        self.o.check_and_collapse(&w, now, keep_all, what);
    }
}
