//! The crash oracle: what a run did, as far as the caller can know, and the check of a
//! recovered store against it (which states are allowed after a crash, not one expected state).
//!
//! A message is pushed into its queue and then moves: a retry (ready again later), a dead
//! letter (into `<queue>.dlq`), a requeue (back, attempts from zero), or gone for good (acked
//! or dropped). The log is durable as a prefix, so the moves of a message that survive a crash
//! are a prefix of its moves, at least up to the last one known durable; its attempts count at
//! least the deliveries known durable in that prefix (after a process crash, `KeepAll`, also
//! those whose record was only written) and at most all of them.
//!
//! A driver records each call here as it makes it: `tests/sim/oracle.rs` for scripted scenarios
//! (it knows each move exactly: due time, priority, error text), `fuzz/src/oracle.rs` for
//! operation sequences (it learns the moves the store makes on its own from the live store, and
//! knows only where they went). [`Oracle::check`] judges a recovered store;
//! [`Oracle::check_and_collapse`] then makes the oracle what the store holds, so that a run can
//! go on (and crash again) on the recovered store.

mod check;

use std::collections::{BTreeMap, HashMap};

use wharf::{DeadReason, QueueConfig};

/// The queue where a check may push a message to see that new ids are fresh (I5); the oracle
/// ignores it.
pub const PROBE: &str = "i5-probe";

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
    /// Whether it must survive a crash; `keep_all`: a process crash, which keeps all that was
    /// written.
    pub fn must_survive(self, keep_all: bool) -> bool {
        self == St::Durable || (keep_all && self == St::Written)
    }

    /// Whether the call returned `Ok` (or a later call covered it).
    pub fn happened(self) -> bool {
        matches!(self, St::Volatile | St::Written | St::Durable)
    }
}

/// Where a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loc {
    /// In its queue, ready from `due`, with its priority and the last error text a consumer
    /// gave.
    Queued {
        /// Unix ms; 0: at once.
        due: u64,
        /// Its priority.
        priority: u8,
        /// "" for none.
        error: String,
    },
    /// In its queue; its due time, priority and error text are not tracked.
    InQueue,
    /// In its queue's dead-letter queue `<queue>.dlq`.
    Dead {
        /// Why it was dead-lettered.
        reason: DeadReason,
        /// The error text it keeps ("" for none).
        error: String,
    },
    /// In its dead-letter queue; the reason and error text are not tracked.
    InDead,
    /// Settled for good: acked or dropped.
    Gone,
    /// Anywhere: a failed call may have moved it (or not).
    Any,
}

impl Loc {
    /// Ready at once, priority 0, no error.
    pub fn ready() -> Loc {
        Loc::Queued { due: 0, priority: 0, error: String::new() }
    }

    /// In its queue, whatever the details.
    pub fn in_queue(&self) -> bool {
        matches!(self, Loc::Queued { .. } | Loc::InQueue)
    }

    /// In its dead-letter queue, whatever the details.
    pub fn in_dead(&self) -> bool {
        matches!(self, Loc::Dead { .. } | Loc::InDead)
    }
}

/// One move of a message and what is known of its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Where it went.
    pub to: Loc,
    /// What is known of the move's record.
    pub st: St,
    /// A requeue: attempts count from zero again.
    pub resets: bool,
}

/// One message a run pushed (or tried to).
#[derive(Debug, Clone)]
pub struct Msg {
    /// The queue it was pushed into.
    pub queue: String,
    /// Its payload, unique in the run.
    pub payload: Vec<u8>,
    /// Its id, once a push returned it or a store showed it.
    pub id: Option<u64>,
    /// The push.
    pub push: St,
    /// The ack: a last move to `Gone`.
    pub ack: St,
    /// Where the push put it.
    pub first: Loc,
    /// Unix ms from which it must not be delivered from its queue (0: never). A dead letter
    /// clears it for good (a requeue does not bring it back).
    pub expires: u64,
    /// Found in its queue after a dead letter and a requeue that a crash may have undone: the
    /// TTL may or may not still hold.
    pub ttl_doubt: bool,
    /// Its moves after the push (the ack apart).
    pub moves: Vec<Move>,
    /// Its deliveries: how many moves came before each, and what is known of its record.
    pub deliveries: Vec<(usize, St)>,
    /// The index of the first message of the `push_batch` it was pushed in, if it was.
    pub batch: Option<usize>,
    /// The number of the `ack_many` call that acked it (see [`Oracle::ack_batch`]), if one
    /// did: the acks of one call survive a crash together or not at all.
    pub ack_batch: Option<u64>,
    /// Not found by a recovery: settled or lost for good; it must never be delivered again.
    pub gone: bool,
}

impl Msg {
    /// Where it is as far as this process knows.
    pub fn at(&self) -> Loc {
        if self.ack != St::No {
            return Loc::Gone;
        }
        self.moves.last().map_or(&self.first, |m| &m.to).clone()
    }

    /// Its moves, the ack included.
    pub fn all_moves(&self) -> Vec<Move> {
        let mut v = self.moves.clone();
        if self.ack != St::No {
            v.push(Move { to: Loc::Gone, st: self.ack, resets: false });
        }
        v
    }

    /// Whether it may be gone for good.
    pub fn may_be_gone(&self) -> bool {
        self.gone || self.all_moves().iter().any(|m| matches!(m.to, Loc::Gone | Loc::Any))
    }

    /// Whether it expired by `now`, as found in its queue: `Some(true)` if it has a TTL that
    /// ran out and it cannot be back from its dead-letter queue (a dead letter clears the TTL,
    /// for good); `None` if a dead letter and a requeue that may or may not have happened (or
    /// survived a crash) decide it.
    pub fn expired(&self, now: u64) -> Option<bool> {
        if self.expires == 0 || now < self.expires {
            return Some(false);
        }
        let any = self.moves.iter().any(|mv| mv.to == Loc::Any);
        let back = self.moves.iter().skip_while(|mv| !mv.to.in_dead()).any(|mv| mv.to.in_queue());
        (!any && !back && !self.ttl_doubt).then_some(true)
    }
}

/// What a run did: every message it pushed (or tried to) and what is known of each call, and
/// the configs it set.
#[derive(Debug, Default, Clone)]
pub struct Oracle {
    /// Every message the run pushed (or tried to), in push order.
    pub msgs: Vec<Msg>,
    by_payload: HashMap<Vec<u8>, usize>,
    by_id: HashMap<u64, usize>,
    /// The largest id handed out so far (I5: a new id is above it).
    pub max_id: u64,
    counter: u64,
    /// Per queue, its configs in the order they were set.
    pub configs: BTreeMap<String, Vec<(QueueConfig, St)>>,
    /// A call failed where it may have delivered a message, or deliveries were made that the
    /// oracle does not know of: attempts may be higher than the deliveries counted.
    pub uncertain: bool,
}

impl Oracle {
    /// The next number of this run's payload counter.
    pub fn next_n(&mut self) -> u64 {
        self.counter += 1;
        self.counter - 1
    }

    /// A new, unique payload of about `len` bytes for `queue`.
    pub fn payload(&mut self, queue: &str, len: usize) -> Vec<u8> {
        let n = self.next_n();
        let mut p = format!("{queue}:{n}:").into_bytes();
        p.resize(len.max(p.len()), b'a' + (n % 26) as u8);
        p
    }

    /// Registers a push about to be attempted, which puts it at `first`; returns its index.
    pub fn register(&mut self, queue: &str, payload: Vec<u8>, first: Loc) -> usize {
        let i = self.msgs.len();
        self.by_payload.insert(payload.clone(), i);
        self.msgs.push(Msg {
            queue: queue.to_owned(),
            payload,
            id: None,
            push: St::Unknown,
            ack: St::No,
            first,
            expires: 0,
            ttl_doubt: false,
            moves: Vec::new(),
            deliveries: Vec::new(),
            batch: None,
            ack_batch: None,
            gone: false,
        });
        i
    }

    /// A push returned `id` for message `i`: ids are fresh and increasing (I5).
    ///
    /// # Panics
    /// If `id` is not above every id handed out before.
    pub fn pushed(&mut self, i: usize, id: u64) {
        assert!(id > self.max_id, "I5: new id {id:x} is not above {:x}", self.max_id);
        self.max_id = id;
        self.learn_id(i, id);
    }

    /// Message `i` was seen with `id`: it keeps one id, and no other message has it (I5).
    ///
    /// # Panics
    /// If either is not so.
    pub fn learn_id(&mut self, i: usize, id: u64) {
        self.check_id(i, id, "");
        self.msgs[i].id = Some(id);
        self.by_id.insert(id, i);
        self.max_id = self.max_id.max(id);
    }

    fn check_id(&self, i: usize, id: u64, what: &str) {
        if let Some(known) = self.msgs[i].id {
            assert_eq!(known, id, "{what}I5: message {i} came back with another id");
        }
        if let Some(&other) = self.by_id.get(&id) {
            assert_eq!(other, i, "{what}I5: id {id:x} of message {other} reused for message {i}");
        }
    }

    /// Registers an `ack_many` of messages `who` about to be attempted (their acks `Unknown`
    /// until it returns): they are one batch, kept whole or not at all by a crash.
    pub fn ack_batch(&mut self, who: &[usize]) {
        self.counter += 1;
        let n = self.counter;
        for &i in who {
            let m = &mut self.msgs[i];
            m.ack = St::Unknown;
            m.ack_batch = Some(n);
        }
    }

    /// The message with this id, if the oracle knows it.
    pub fn by_id(&self, id: u64) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// The message with this payload in this queue or its dead-letter queue.
    ///
    /// # Panics
    /// On a payload no message of `queue` (or of the queue whose dead-letter queue it is) has:
    /// a phantom (I3).
    pub fn find(&self, queue: &str, payload: &[u8]) -> usize {
        let i = *self.by_payload.get(payload).unwrap_or_else(|| {
            panic!("I3: phantom payload in {queue}: {:?}", String::from_utf8_lossy(payload))
        });
        let m = &self.msgs[i];
        assert!(
            m.queue == queue || crate::dlq(&m.queue) == queue,
            "I3: message {i} of {} found in {queue}",
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

    /// [`Oracle::all_durable`] for every message.
    pub fn all_durable_now(&mut self) {
        self.all_durable(self.msgs.len());
    }

    /// Everything staged was handed to the OS (a pop wrote its delivery record).
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
}
