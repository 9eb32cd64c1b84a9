//! The check of a recovered store against the oracle (I1–I5 of CRASH-TESTING.md, configs,
//! due times, expiry, attempts), and the collapse of the oracle to what was found.

use std::collections::{BTreeMap, BTreeSet};

use wharf::{Delivery, Peeked, QueueConfig, Wharf};

use super::{Loc, Move, Msg, Oracle, St, PROBE};
use crate::{dlq, unix_ms};

/// One message as a recovered store shows it.
struct Found {
    queue: String,
    p: Peeked,
}

/// What [`Oracle::check`] found, by message index.
type Seen = BTreeMap<usize, Found>;

fn due_ms(p: &Peeked) -> Option<u64> {
    p.due.map(unix_ms)
}

/// Whether message `m`, found as `found`, is where a move to `loc` put it.
fn matches(m: &Msg, loc: &Loc, found: Option<&Found>, now: u64) -> bool {
    let Some(f) = found else { return matches!(loc, Loc::Gone | Loc::Any) };
    let error = f.p.last_error.as_deref().unwrap_or("");
    let in_queue = f.queue == m.queue;
    let in_dead = f.queue == dlq(&m.queue);
    match loc {
        Loc::Any => true,
        Loc::Gone => false,
        Loc::InQueue => in_queue,
        Loc::InDead => in_dead,
        Loc::Queued { due, priority, error: e } => {
            in_queue
                && f.p.dead_lettered_from.is_none()
                && f.p.priority == *priority
                && due_ms(&f.p) == (*due > now).then_some(*due)
                && error == e
        }
        Loc::Dead { reason, error: e } => {
            in_dead
                && f.p.dead_lettered_from == Some((m.queue.clone(), *reason))
                && f.p.priority == 0
                && f.p.due.is_none()
                && error == e
        }
    }
}

impl Oracle {
    /// Checks that message `i`, found as `found`, is where a prefix of its moves put it, at
    /// least up to the last one known durable, with attempts between the deliveries of that
    /// prefix known durable and all of them.
    fn check_msg(&self, i: usize, found: Option<&Found>, now: u64, keep_all: bool, what: &str) {
        let m = &self.msgs[i];
        if m.gone || m.push == St::No {
            assert!(found.is_none(), "{what}: I2/I3 message {i} is there, never stored or gone");
            return;
        }
        let moves = m.all_moves();
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
        if found.is_none() && least == 0 && !m.push.must_survive(keep_all) {
            return; // the push itself may be lost
        }
        let anywhere = moves.iter().any(|mv| mv.to == Loc::Any);
        let mut tried = Vec::new();
        for k in least..=moves.len() {
            let loc = if k == 0 { &m.first } else { &moves[k - 1].to };
            // Attempts: the deliveries since the last requeue among the first k moves.
            let reset = moves[..k].iter().rposition(|mv| mv.resets).map_or(0, |j| j + 1);
            let counted = m.deliveries.iter().filter(|(b, _)| (reset..=k).contains(b));
            let lo = counted.clone().filter(|(_, st)| st.must_survive(keep_all)).count() as u32;
            let hi = counted.count() as u32;
            let attempts_ok = found.is_none_or(|f| {
                f.p.attempts >= lo && (self.uncertain || anywhere || f.p.attempts <= hi)
            });
            if matches(m, loc, found, now) && attempts_ok {
                return;
            }
            tried.push((k, loc.clone(), lo, hi));
        }
        panic!(
            "{what}: message {i} ({}) found as {:?} (attempts {:?}); allowed after its moves \
             {moves:?} (deliveries {:?}, keep_all {keep_all}): one of {tried:?}",
            m.queue,
            found.map(|f| (
                &f.queue,
                &f.p.dead_lettered_from,
                f.p.due,
                f.p.priority,
                &f.p.last_error
            )),
            found.map(|f| f.p.attempts),
            m.deliveries,
        );
    }

    /// Every waiting message of every queue (but [`PROBE`]), by message index; checks the
    /// order of each queue (ready by priority, then id; delayed by due time, after the ready
    /// ones), ids (I5) and that each is found once, in its queue or dead-letter queue (I3).
    fn peek_all(&self, w: &Wharf, what: &str) -> Seen {
        let mut found = BTreeMap::new();
        for name in w.queue_names().into_iter().filter(|n| n != PROBE) {
            let list = w
                .queue(&name)
                .and_then(|q| q.peek(usize::MAX))
                .unwrap_or_else(|e| panic!("{what}: peek of {name} failed: {e}"));
            let ready: Vec<(u8, u64)> = list
                .iter()
                .filter(|p| p.due.is_none())
                .map(|p| (u8::MAX - p.priority, p.id.get()))
                .collect();
            let delayed: Vec<(Option<u64>, u64)> =
                list.iter().skip(ready.len()).map(|p| (due_ms(p), p.id.get())).collect();
            assert!(ready.windows(2).all(|p| p[0] < p[1]), "{what}: I4 {name} out of order");
            assert!(
                delayed.windows(2).all(|p| p[0] < p[1]),
                "{what}: I4 {name} delayed out of order"
            );
            assert!(
                delayed.iter().all(|(due, _)| due.is_some()),
                "{what}: {name}: a delayed message listed before a ready one"
            );
            for p in list {
                let i = self.find(&name, &p.payload);
                self.check_id(i, p.id.get(), &format!("{what}: "));
                let f = Found { queue: name.clone(), p };
                assert!(found.insert(i, f).is_none(), "{what}: I3 message {i} found twice");
            }
        }
        found
    }

    /// Checks I1–I5 for the store recovered from an image at time `now` (Unix ms), and that a
    /// durable config survived, a batch survived whole or not at all, delayed messages are not
    /// delivered before they are due, expired ones never, and attempts did not go backwards;
    /// panics with `what` on a violation. `keep_all`: the image is what a process crash leaves
    /// (everything written survives).
    ///
    /// It pops every ready message (and drops the deliveries when done): the attempts the
    /// store shows afterwards are higher than the oracle's.
    ///
    /// # Panics
    /// On a violation, and if a call on the store fails.
    pub fn check(&self, w: &Wharf, now: u64, keep_all: bool, what: &str) {
        self.check_found(w, now, keep_all, what);
    }

    /// [`Oracle::check`], then makes the oracle what the store holds, so that a run can go on
    /// with the recovered store: what the check's pops changed is synced, the messages found
    /// become durable where they are (with the attempts found), those not found are gone for
    /// good, and each config is the one found.
    ///
    /// # Panics
    /// As [`Oracle::check`], and if the sync fails.
    pub fn check_and_collapse(&mut self, w: &Wharf, now: u64, keep_all: bool, what: &str) {
        let seen = self.check_found(w, now, keep_all, what);
        for (&i, f) in &seen {
            self.learn_id(i, f.p.id.get());
        }
        w.sync().unwrap_or_else(|e| panic!("{what}: sync of a recovered store failed: {e}"));
        let seen = self.peek_all(w, what);
        for (i, m) in self.msgs.iter_mut().enumerate() {
            match seen.get(&i) {
                Some(f) => {
                    m.push = St::Durable;
                    m.ack = St::No;
                    m.ack_batch = None;
                    let dead = f.queue != m.queue;
                    let was_dead = m.moves.iter().any(|mv| mv.to.in_dead() || mv.to == Loc::Any);
                    if dead {
                        m.expires = 0; // a dead letter's TTL is gone
                    } else if was_dead {
                        m.ttl_doubt = true; // back in its queue: with its TTL or not
                    }
                    let to = if dead { Loc::InDead } else { Loc::InQueue };
                    m.moves = vec![Move { to, st: St::Durable, resets: false }];
                    m.deliveries = vec![(1, St::Durable); f.p.attempts as usize];
                }
                None if m.push != St::No => m.gone = true,
                None => {}
            }
        }
        for (&i, f) in &seen {
            self.learn_id(i, f.p.id.get());
        }
        let names = w.queue_names();
        for (queue, list) in &mut self.configs {
            if names.contains(queue) {
                let got = w.queue(queue).unwrap().config().unwrap();
                *list = vec![(got, St::Durable)];
            } else {
                list.clear();
            }
        }
        self.uncertain = false;
    }

    fn check_found(&self, w: &Wharf, now: u64, keep_all: bool, what: &str) -> Seen {
        let msgs = &self.msgs;
        let names: Vec<String> = w.queue_names().into_iter().filter(|n| n != PROBE).collect();
        let found = self.peek_all(w, what);
        for i in 0..msgs.len() {
            self.check_msg(i, found.get(&i), now, keep_all, what);
        }
        // I4: survivors form a prefix: a surviving message implies every earlier message that
        // was pushed with `Ok` and never settled for good survived too (in its queue or its
        // dead-letter queue).
        if let Some((&last, _)) = found.iter().next_back() {
            for (i, m) in msgs.iter().enumerate().take(last) {
                if m.push.happened() && !m.may_be_gone() {
                    assert!(
                        found.contains_key(&i),
                        "{what}: I4 hole: {i} lost while {last} survived"
                    );
                }
            }
        }
        // A batch is kept whole or not at all: if any of its messages survived, so did each
        // of the others that was not settled for good since.
        let kept: BTreeMap<usize, usize> =
            found.keys().filter_map(|&j| Some((msgs[j].batch?, j))).collect();
        for (i, m) in msgs.iter().enumerate() {
            if let Some(&j) = m.batch.and_then(|first| kept.get(&first)) {
                assert!(
                    found.contains_key(&i) || m.may_be_gone(),
                    "{what}: a batch cut by the crash: message {i} lost while {j} of its batch \
                     survived"
                );
            }
        }
        // An `ack_many` is kept whole or not at all: if any of its messages is found (its ack
        // lost), so is every other one of the batch whose push had to survive and that nothing
        // else may have settled (the batch's ack aside).
        let unacked: BTreeMap<u64, usize> =
            found.keys().filter_map(|&j| Some((msgs[j].ack_batch?, j))).collect();
        for (i, m) in msgs.iter().enumerate() {
            let Some(&j) = m.ack_batch.and_then(|b| unacked.get(&b)) else { continue };
            let other_exit = m.gone
                || !m.push.must_survive(keep_all)
                || m.moves.iter().any(|mv| matches!(mv.to, Loc::Gone | Loc::Any));
            assert!(
                found.contains_key(&i) || other_exit,
                "{what}: an ack_many cut by the crash: message {i} acked while the ack of {j} \
                 of the same batch was lost"
            );
        }
        // A durable config survives; a later one may too.
        for (queue, list) in &self.configs {
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
        // Deliveries: only due messages, never an expired one, each with the next attempt
        // number; every due, unexpired message with attempts left is delivered.
        let mut held: Vec<Delivery> = Vec::new();
        for name in &names {
            let q = w.queue(name).unwrap();
            let max = q.config().unwrap().get_max_attempts();
            let mut delivered = BTreeSet::new();
            loop {
                let d = match q.try_pop() {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(e) => panic!("{what}: pop from a recovered store failed: {e}"),
                };
                assert!(held.len() <= 100_000, "{what}: draining {name} does not end");
                let i = self.find(name, d.payload());
                let Some(f) = found.get(&i) else {
                    panic!("{what}: I3 message {i} delivered from {name} but not listed");
                };
                if f.queue == *name {
                    let m = &msgs[i];
                    assert!(f.p.due.is_none(), "{what}: message {i} delivered before it is due");
                    let expired = *name == m.queue && m.expired(now) == Some(true);
                    assert!(!expired, "{what}: expired message {i} delivered");
                    assert_eq!(d.attempt(), f.p.attempts + 1, "{what}: attempt of message {i}");
                    delivered.insert(i);
                } // else: moved here by this very drain (expired or out of attempts)
                held.push(d);
            }
            for (i, f) in &found {
                let m = &msgs[*i];
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
        found
    }
}
