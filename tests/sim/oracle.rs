//! The oracle: what a run did, as far as the caller can know, and the check of a recovered
//! store against it (which states are allowed after a crash, not one expected state).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use wharf::testing::{self, SimFs};
use wharf::{Delivery, Durability, Error, PushOptions, Wharf, WharfBuilder};

pub const DIR: &str = "/store";
/// The queue where checks push a message to see that new ids are fresh.
pub const PROBE: &str = "i5-probe";

/// What is known of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    /// Never attempted.
    No,
    /// Returned `Ok` but not durable yet.
    Volatile,
    /// Durable: returned `Ok` durably, or a later durable call covered it.
    Durable,
    /// The call failed or was cut by the crash: it may or may not have happened.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub queue: String,
    pub payload: Vec<u8>,
    pub id: Option<u64>,
    pub push: St,
    pub ack: St,
}

/// The oracle's record of a run, and the live handles.
pub struct Ctx {
    pub sim: SimFs,
    /// The clock of lease deadlines, moved by the scenario.
    pub clock: testing::ManualClock,
    /// A real directory instead of the simulated disk.
    pub real: Option<std::path::PathBuf>,
    pub builder: WharfBuilder,
    pub wharf: Option<Wharf>,
    pub msgs: Vec<Msg>,
    pub held: Vec<(usize, Delivery)>,
    pub counter: usize,
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
        }
    }

    pub fn open(&mut self) -> Step {
        self.held.clear();
        self.wharf = None;
        self.wharf = Some(match &self.real {
            Some(dir) => self.builder.clone().open(dir)?,
            None => testing::open(
                self.builder.clone().clock(std::sync::Arc::new(self.clock.clone())),
                &self.sim,
                Path::new(DIR),
            )?,
        });
        Ok(())
    }

    pub fn w(&self) -> &Wharf {
        self.wharf.as_ref().unwrap()
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

    pub fn push(&mut self, queue: &str, len: usize, d: Durability) -> Step {
        let n = self.counter;
        self.counter += 1;
        let mut payload = format!("{queue}:{n}:").into_bytes();
        payload.resize(len.max(payload.len()), b'a' + (n % 26) as u8);
        self.msgs.push(Msg {
            queue: queue.into(),
            payload: payload.clone(),
            id: None,
            push: St::Unknown,
            ack: St::No,
        });
        let i = self.msgs.len() - 1;
        let q = self.w().queue(queue)?;
        let id = q.push_with(&payload, PushOptions::new().durability(d))?;
        self.msgs[i].id = Some(id.get());
        if d == Durability::Immediate {
            self.msgs[i].push = St::Durable;
            self.all_durable(i);
        } else {
            self.msgs[i].push = St::Volatile;
        }
        Ok(())
    }

    pub fn push_batch(&mut self, queue: &str, n: usize) -> Step {
        let first = self.msgs.len();
        let mut payloads = Vec::new();
        for _ in 0..n {
            let c = self.counter;
            self.counter += 1;
            let p = format!("{queue}:{c}:batch").into_bytes();
            self.msgs.push(Msg {
                queue: queue.into(),
                payload: p.clone(),
                id: None,
                push: St::Unknown,
                ack: St::No,
            });
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

    pub fn pop(&mut self, queue: &str) -> Step {
        if let Some(d) = self.w().queue(queue)?.try_pop()? {
            let i = self.find(queue, d.payload());
            self.held.push((i, d));
        }
        Ok(())
    }

    pub fn find(&self, queue: &str, payload: &[u8]) -> usize {
        self.msgs
            .iter()
            .position(|m| m.queue == queue && m.payload == payload)
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

    pub fn nack(&mut self) -> Step {
        if self.held.is_empty() {
            return Ok(());
        }
        let (_, del) = self.held.remove(0);
        del.nack()?;
        Ok(())
    }

    pub fn sync(&mut self) -> Step {
        self.w().sync()?;
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(())
    }

    pub fn maintain(&mut self) -> Step {
        testing::maintain(self.w())?;
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(())
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

/// Checks I1–I5 for the store recovered from an image; panics with `what` on a violation.
pub fn check(w: &Wharf, msgs: &[Msg], what: &str) {
    let seen = observe(w);
    let mut present = BTreeSet::new();
    for (queue, list) in &seen {
        if queue == PROBE {
            continue; // written by an earlier check of the same disk
        }
        let mut last = 0;
        for (id, payload) in list {
            let i = msgs
                .iter()
                .position(|m| &m.queue == queue && &m.payload == payload)
                .unwrap_or_else(|| panic!("{what}: I3 phantom payload in {queue}: {payload:?}"));
            assert!(present.insert(i), "{what}: I3 message {i} delivered twice");
            assert!(*id > last, "{what}: I4 ids out of order in {queue}");
            last = *id;
            if let Some(known) = msgs[i].id {
                assert_eq!(known, *id, "{what}: I5 message {i} has another id");
            }
            assert!(msgs[i].push != St::No, "{what}: I3 message {i} never pushed");
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        if m.push == St::Durable && m.ack == St::No {
            assert!(present.contains(&i), "{what}: I1 durable message {i} ({}) lost", m.queue);
        }
        if m.ack == St::Durable {
            assert!(!present.contains(&i), "{what}: I2 durably acked message {i} came back");
        }
    }
    // I4: survivors form a prefix: a surviving message implies every earlier message that was
    // pushed with `Ok` and never acked survived too.
    if let Some(&last) = present.iter().max() {
        for (i, m) in msgs.iter().enumerate().take(last) {
            if m.ack == St::No && matches!(m.push, St::Volatile | St::Durable) {
                assert!(present.contains(&i), "{what}: I4 hole: {i} lost while {last} survived");
            }
        }
    }
    // I5: a new id is above every id handed out before.
    let max_id = msgs.iter().filter_map(|m| m.id).max().unwrap_or(0);
    let q = w.queue(PROBE).unwrap();
    let id = q.push(b"probe").unwrap();
    assert!(id.get() > max_id, "{what}: I5 new id {id} not above {max_id:x}");
}

/// Opens `image`, checks the invariants, and returns how many disk operations that took.
pub fn recover_and_check(builder: &WharfBuilder, image: &SimFs, msgs: &[Msg], what: &str) -> u64 {
    let before = image.ops();
    // Leases must outlast the check, however slow the build (leases are not persisted).
    let builder = builder.clone().visibility_timeout(Duration::from_secs(3600));
    let w = testing::open(builder, image, Path::new(DIR))
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    check(&w, msgs, what);
    drop(w);
    image.ops() - before
}
