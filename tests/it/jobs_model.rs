//! Model-based test of the job semantics: random pushes with options (delay, priority, TTL,
//! dedup key), pops, acks, nacks (backoff or an explicit delay, with error texts), releases,
//! dead letters, requeues from the dead-letter queue, config changes, clock advances and clean
//! reopens, on a real directory with small segments, against an in-memory model of what each
//! call must do. After every step the store must match the model exactly: what a pop returns
//! (priority, then FIFO; delayed messages invisible until due; expired ones never delivered),
//! attempts, depths, the counters, and every waiting message of both queues as `peek` shows it
//! (payload, attempts, priority, due time, dead-letter origin and reason, last error).
//!
//! Time is a `ManualClock`: nothing sleeps. `PROPTEST_CASES` sets the number of cases.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use wharf::{
    Backoff, Clock, DeadLetters, DeadReason, Delivery, Durability, Error, ManualClock, NackOptions,
    OnExpiry, Overflow, PushOptions, QueueConfig, Wharf,
};

const MAIN: &str = "jobs";
const DLQ: &str = "jobs.dlq";
/// Longest error text a message keeps (`jobs::MAX_ERROR_LEN`).
const MAX_ERROR_LEN: usize = 4096;

/// Error texts a nack or dead letter gives: none, short ones, and one longer than is kept.
fn error_text(k: u8) -> String {
    match k % 4 {
        0 => String::new(),
        1 => "timeout".into(),
        2 => format!("smtp {k}"),
        _ => "x".repeat(MAX_ERROR_LEN + 100),
    }
}

#[derive(Debug, Clone)]
enum BackoffSpec {
    None,
    Fixed(u32),
    Exponential { base: u32, extra: u32, jitter: bool },
}

#[derive(Debug, Clone)]
struct Cfg {
    max_attempts: Option<u32>,
    backoff: BackoffSpec,
    /// Limit and whether the oldest is dead-lettered (else the push is rejected).
    max_len: Option<(u64, bool)>,
    /// TTL in ms (at least 1) and whether expired messages are dead-lettered.
    ttl: Option<(u32, bool)>,
    on_expiry_dead_letter: bool,
    dedup_window_ms: u32,
    drop_dead_letters: bool,
}

impl Cfg {
    fn get(&self) -> QueueConfig {
        let ms = |n: u32| Duration::from_millis(u64::from(n));
        let expiry = |dl: bool| if dl { OnExpiry::DeadLetter } else { OnExpiry::Drop };
        let mut c = QueueConfig::new().on_expiry(expiry(self.on_expiry_dead_letter));
        if let Some(n) = self.max_attempts {
            c = c.max_attempts(n);
        }
        c = c.backoff(match self.backoff {
            BackoffSpec::None => Backoff::None,
            BackoffSpec::Fixed(d) => Backoff::Fixed(ms(d)),
            BackoffSpec::Exponential { base, extra, jitter } => {
                Backoff::Exponential { base: ms(base), cap: ms(base + extra), jitter }
            }
        });
        if let Some((n, dl)) = self.max_len {
            c = c.max_len(n, if dl { Overflow::DeadLetterOldest } else { Overflow::Reject });
        }
        if let Some((t, dl)) = self.ttl {
            c = c.ttl(ms(t), expiry(dl));
        }
        if self.drop_dead_letters {
            c = c.dead_letters(DeadLetters::Drop);
        }
        c.dedup_window(ms(self.dedup_window_ms))
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        len: u16,
        delay_ms: Option<u16>,
        priority: u8,
        ttl_ms: Option<u16>,
        key: Option<u8>,
        durable: bool,
    },
    Pop {
        dlq: bool,
    },
    Ack {
        pick: u8,
    },
    Nack {
        pick: u8,
        delay_ms: Option<u16>,
        error: u8,
    },
    Release {
        pick: u8,
    },
    /// Dead-letters one of the held deliveries of the main queue.
    DeadLetter {
        pick: u8,
        error: u8,
    },
    RequeueAll,
    /// Requeues one waiting dead letter, or (pick past the end) an id that is not one.
    Requeue {
        pick: u8,
    },
    SetConfig(Cfg),
    Advance {
        ms: u16,
    },
    Reopen {
        release_first: bool,
    },
}

fn cfg_strategy() -> impl Strategy<Value = Cfg> {
    let backoff = prop_oneof![
        Just(BackoffSpec::None),
        (0u32..1500).prop_map(BackoffSpec::Fixed),
        (1u32..500, 0u32..3000, any::<bool>())
            .prop_map(|(base, extra, jitter)| BackoffSpec::Exponential { base, extra, jitter }),
    ];
    (
        prop::option::of(1u32..4),
        backoff,
        prop::option::weighted(0.4, (0u64..4, any::<bool>())),
        prop::option::weighted(0.4, (1u32..3000, any::<bool>())),
        any::<bool>(),
        prop_oneof![Just(0u32), 1u32..3000],
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(max_attempts, backoff, max_len, ttl, on_expiry_dead_letter, window, drop)| Cfg {
                max_attempts,
                backoff,
                max_len,
                ttl,
                on_expiry_dead_letter,
                dedup_window_ms: window,
                drop_dead_letters: drop,
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let push = (
        prop_oneof![8 => 0u16..64, 1 => 0u16..3000],
        prop::option::weighted(0.3, 1u16..2000),
        prop_oneof![2 => Just(0u8), 1 => 0u8..=9],
        prop::option::weighted(0.25, 1u16..3000),
        prop::option::weighted(0.3, 0u8..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(len, delay_ms, priority, ttl_ms, key, durable)| Op::Push {
            len,
            delay_ms,
            priority,
            ttl_ms,
            key,
            durable,
        });
    prop_oneof![
        8 => push,
        6 => prop::bool::weighted(0.2).prop_map(|dlq| Op::Pop { dlq }),
        3 => any::<u8>().prop_map(|pick| Op::Ack { pick }),
        4 => (any::<u8>(), prop::option::weighted(0.4, 0u16..2000), any::<u8>())
            .prop_map(|(pick, delay_ms, error)| Op::Nack { pick, delay_ms, error }),
        1 => any::<u8>().prop_map(|pick| Op::Release { pick }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(pick, error)| Op::DeadLetter { pick, error }),
        1 => Just(Op::RequeueAll),
        1 => any::<u8>().prop_map(|pick| Op::Requeue { pick }),
        2 => cfg_strategy().prop_map(Op::SetConfig),
        4 => prop_oneof![1u16..100, 100u16..2500].prop_map(|ms| Op::Advance { ms }),
        1 => any::<bool>().prop_map(|release_first| Op::Reopen { release_first }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Main,
    Dlq,
}

/// One unsettled message, as the model knows it.
#[derive(Debug, Clone)]
struct M {
    payload: Vec<u8>,
    at: Loc,
    priority: u8,
    /// Unix ms from which it is ready (0: ready).
    due: u64,
    /// Unix ms from which it must not be delivered (0: never).
    expires: u64,
    attempts: u32,
    leased: bool,
    /// The error text kept with it ("" for none).
    error: String,
    /// Why it was dead-lettered, while it is in the dead-letter queue.
    reason: Option<DeadReason>,
}

/// The main queue's counters since the store was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    processed: u64,
    failed: u64,
    dead_lettered: u64,
    expired: u64,
}

struct Model {
    clock: ManualClock,
    msgs: BTreeMap<u64, M>,
    cfg: QueueConfig,
    /// Dedup key → (message id, Unix ms until which it holds once settled), as the store's
    /// index holds it (a key found lapsed is forgotten) ...
    dedup: HashMap<u8, (u64, u64)>,
    /// ... and as replaying the log restores it (the last push with each key).
    dedup_logged: HashMap<u8, (u64, u64)>,
    counters: Counters,
    dlq_exists: bool,
    max_id: u64,
    next_payload: u64,
}

impl Model {
    fn now(&self) -> u64 {
        let since = self.clock.wall().duration_since(UNIX_EPOCH).unwrap();
        u64::try_from(since.as_millis()).unwrap()
    }

    fn ready(&self, m: &M, at: Loc, now: u64) -> bool {
        m.at == at && !m.leased && m.due <= now
    }

    /// The message a pop of `at` leases next: highest priority, then oldest.
    fn head(&self, at: Loc, now: u64) -> Option<u64> {
        self.msgs
            .iter()
            .filter(|(_, m)| self.ready(m, at, now))
            .min_by_key(|(id, m)| (u8::MAX - m.priority, **id))
            .map(|(id, _)| *id)
    }

    /// Waiting messages of `at` in the order `peek` lists them: ready ones by priority and
    /// age, then delayed ones by due time.
    fn waiting(&self, at: Loc, now: u64) -> Vec<u64> {
        let mut ready: Vec<(u8, u64)> = Vec::new();
        let mut delayed: Vec<(u64, u64)> = Vec::new();
        for (&id, m) in &self.msgs {
            if m.at != at || m.leased {
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

    /// Moves main-queue message `id` to the dead-letter queue (or drops it).
    fn dead_letter(&mut self, id: u64, reason: DeadReason, error: &str) {
        self.counters.dead_lettered += 1;
        if self.cfg.get_dead_letters() == &DeadLetters::Drop {
            self.msgs.remove(&id);
            return;
        }
        self.dlq_exists = true;
        let m = self.msgs.get_mut(&id).unwrap();
        m.at = Loc::Dlq;
        m.priority = 0;
        m.due = 0;
        m.expires = 0;
        m.leased = false;
        m.error = clip(error).to_owned();
        m.reason = Some(reason);
    }

    /// What a pop of `at` returns: (id, attempt), after dropping or dead-lettering the expired
    /// and exhausted messages in front of it.
    fn pop(&mut self, at: Loc) -> Option<(u64, u32)> {
        let now = self.now();
        loop {
            let id = self.head(at, now)?;
            let m = &self.msgs[&id];
            if at == Loc::Main {
                let expired = m.expires != 0 && m.expires <= now;
                let exhausted = self.cfg.get_max_attempts().is_some_and(|n| m.attempts >= n);
                if expired || exhausted {
                    let error = m.error.clone();
                    if expired {
                        self.counters.expired += 1;
                    }
                    if !expired {
                        self.dead_letter(id, DeadReason::MaxAttempts, &error);
                    } else if self.cfg.get_on_expiry() == OnExpiry::DeadLetter {
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
            return Some((id, m.attempts));
        }
    }

    /// The delay before the retry of a failed delivery `attempt` of `id`.
    fn backoff(&self, attempt: u32, id: u64) -> Duration {
        match self.cfg.get_backoff() {
            Backoff::Fixed(d) => d,
            Backoff::Exponential { base, cap, jitter: false } => {
                let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
                base.checked_mul(factor).unwrap_or(cap).min(cap)
            }
            // Jitter is a hash of id and attempt: the library's own function.
            b => b.delay(attempt, id),
        }
    }
}

fn clip(s: &str) -> &str {
    &s[..s.len().min(MAX_ERROR_LEN)]
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

/// The store under test and the deliveries the test holds: (id, from the DLQ, delivery).
struct Sut {
    dir: tempfile::TempDir,
    clock: ManualClock,
    w: Option<Wharf>,
    held: Vec<(u64, bool, Delivery)>,
    /// Every id the store handed out.
    ids: BTreeMap<u64, wharf::MessageId>,
}

impl Sut {
    fn open(&mut self) {
        let builder = crate::small()
            .visibility_timeout(Duration::from_secs(10 * 24 * 3600)) // leases never run out
            .push_durability(Durability::None)
            .clock(Arc::new(self.clock.clone()));
        self.w = Some(builder.open(self.dir.path()).unwrap());
    }

    fn w(&self) -> &Wharf {
        self.w.as_ref().unwrap()
    }

    fn main(&self) -> wharf::Queue {
        self.w().queue(MAIN).unwrap()
    }

    fn dlq(&self) -> wharf::Queue {
        self.w().queue(DLQ).unwrap()
    }
}

fn payload(n: u64, len: u16) -> Vec<u8> {
    let mut p = format!("m{n}:").into_bytes();
    p.resize(usize::from(len).max(p.len()), b'a' + (n % 26) as u8);
    p
}

fn apply(s: &mut Sut, m: &mut Model, op: &Op) {
    match *op {
        Op::Push { len, delay_ms, priority, ttl_ms, key, durable } => {
            let now = m.now();
            m.next_payload += 1;
            let p = payload(m.next_payload, len);
            let mut opts = PushOptions::new().priority(priority);
            if durable {
                opts = opts.durability(Durability::Immediate);
            }
            if let Some(d) = delay_ms {
                opts = opts.delay(Duration::from_millis(u64::from(d)));
            }
            if let Some(t) = ttl_ms {
                opts = opts.ttl(Duration::from_millis(u64::from(t)));
            }
            if let Some(k) = key {
                opts = opts.dedup_key(format!("key-{k}"));
            }
            let got = s.main().push_with(&p, opts);
            // A live dedup key: nothing is stored, the first id comes back.
            if let Some(k) = key {
                if let Some(&(id, until)) = m.dedup.get(&k) {
                    let unsettled = m.msgs.get(&id).is_some_and(|x| x.at == Loc::Main);
                    if unsettled || now < until {
                        assert_eq!(got.unwrap().get(), id, "a duplicate push of key {k}");
                        return;
                    }
                    m.dedup.remove(&k);
                }
            }
            if let Some((limit, overflow)) = m.cfg.get_max_len() {
                let waiting = m.msgs.values().filter(|x| x.at == Loc::Main && !x.leased).count();
                let excess = (waiting as u64 + 1).saturating_sub(limit);
                if excess > 0 {
                    if overflow == Overflow::Reject || limit == 0 {
                        let err = got.unwrap_err();
                        assert!(matches!(err, Error::QueueFull { .. }), "{err}");
                        return;
                    }
                    for _ in 0..excess {
                        // The oldest waiting message: the next one a pop would take, else
                        // the earliest-due delayed one.
                        let victim = m.head(Loc::Main, now).or_else(|| {
                            m.waiting(Loc::Main, now).into_iter().find(|id| m.msgs[id].due > now)
                        });
                        let victim = victim.expect("a waiting message to make room");
                        m.dead_letter(victim, DeadReason::Overflow, "");
                    }
                }
            }
            let typed = got.unwrap();
            let id = typed.get();
            s.ids.insert(id, typed);
            assert!(id > m.max_id, "id {id:x} is not above {:x}", m.max_id);
            m.max_id = id;
            let delay = delay_ms.map_or(0, u64::from);
            let ttl = ttl_ms.map(u64::from).or(m.cfg.get_ttl().map(millis));
            m.msgs.insert(
                id,
                M {
                    payload: p,
                    at: Loc::Main,
                    priority,
                    due: if delay > 0 { now + delay } else { 0 },
                    expires: ttl.map_or(0, |t| now + t),
                    attempts: 0,
                    leased: false,
                    error: String::new(),
                    reason: None,
                },
            );
            if let Some(k) = key {
                let until = now + millis(m.cfg.get_dedup_window());
                m.dedup.insert(k, (id, until));
                m.dedup_logged.insert(k, (id, until));
            }
        }
        Op::Pop { dlq } => {
            let (q, at) = if dlq { (s.dlq(), Loc::Dlq) } else { (s.main(), Loc::Main) };
            m.dlq_exists |= dlq;
            let got = q.try_pop().unwrap();
            let want = m.pop(at);
            match (got, want) {
                (None, None) => {}
                (Some(d), Some((id, attempt))) => {
                    assert_eq!(d.id().get(), id, "pop of {at:?} returned another message");
                    assert_eq!(d.attempt(), attempt, "attempt of {id:x}");
                    assert_eq!(d.payload(), &m.msgs[&id].payload[..], "payload of {id:x}");
                    s.held.push((id, dlq, d));
                }
                (got, want) => panic!(
                    "pop of {at:?} returned {:?}, the model says {want:?}",
                    got.map(|d| d.id().get())
                ),
            }
        }
        Op::Ack { pick } => {
            if !s.held.is_empty() {
                let (id, dlq, d) = s.held.remove(usize::from(pick) % s.held.len());
                d.ack().unwrap();
                m.msgs.remove(&id);
                if !dlq {
                    m.counters.processed += 1;
                }
            }
        }
        Op::Nack { pick, delay_ms, error } => {
            if s.held.is_empty() {
                return;
            }
            let (id, dlq, d) = s.held.remove(usize::from(pick) % s.held.len());
            let attempt = d.attempt();
            let text = error_text(error);
            let mut opts = NackOptions::new();
            if let Some(ms) = delay_ms {
                opts = opts.delay(Duration::from_millis(u64::from(ms)));
            }
            if !text.is_empty() {
                opts = opts.error(text.clone());
            }
            d.nack_with(opts).unwrap();
            let now = m.now();
            if !dlq {
                m.counters.failed += 1;
                if m.cfg.get_max_attempts().is_some_and(|n| attempt >= n) {
                    m.dead_letter(id, DeadReason::MaxAttempts, &text);
                    return;
                }
            }
            let delay = match delay_ms {
                Some(ms) => Duration::from_millis(u64::from(ms)),
                None if dlq => Duration::ZERO, // the DLQ has the default config
                None => m.backoff(attempt, id),
            };
            let x = m.msgs.get_mut(&id).unwrap();
            x.leased = false;
            x.due = if delay.is_zero() { 0 } else { now + millis(delay) };
            if !text.is_empty() {
                x.error = clip(&text).to_owned();
            }
        }
        Op::Release { pick } => {
            if !s.held.is_empty() {
                let (id, _, d) = s.held.remove(usize::from(pick) % s.held.len());
                d.release().unwrap();
                let x = m.msgs.get_mut(&id).unwrap();
                x.leased = false;
                x.due = 0;
            }
        }
        Op::DeadLetter { pick, error } => {
            let mains: Vec<usize> = (0..s.held.len()).filter(|&i| !s.held[i].1).collect();
            if mains.is_empty() {
                return;
            }
            let (id, _, d) = s.held.remove(mains[usize::from(pick) % mains.len()]);
            let text = error_text(error);
            d.dead_letter(&text).unwrap();
            m.dead_letter(id, DeadReason::Explicit, &text);
        }
        Op::RequeueAll => {
            m.dlq_exists = true;
            let n = s.dlq().requeue_all().unwrap();
            let now = m.now();
            let moved = m.waiting(Loc::Dlq, now);
            assert_eq!(n, moved.len(), "requeue_all count");
            for id in moved {
                requeued(m, id);
            }
        }
        Op::Requeue { pick } => {
            m.dlq_exists = true;
            let now = m.now();
            let waiting = m.waiting(Loc::Dlq, now);
            let k = usize::from(pick) % (waiting.len() + 1);
            // Past the end: an id that is not a waiting dead letter (in the main queue, in
            // flight, or settled).
            let id = match waiting.get(k) {
                Some(&id) => Some(id),
                None => s.ids.keys().copied().find(|id| !waiting.contains(id)),
            };
            let Some(id) = id else { return };
            let moved = s.dlq().requeue(s.ids[&id]).unwrap();
            assert_eq!(moved, k < waiting.len(), "requeue of {id:x}");
            if moved {
                requeued(m, id);
            }
        }
        Op::SetConfig(ref c) => {
            let cfg = c.get();
            s.main().set_config(&cfg).unwrap();
            m.cfg = cfg;
        }
        Op::Advance { ms } => s.clock.advance(Duration::from_millis(u64::from(ms))),
        Op::Reopen { release_first } => {
            let held: Vec<_> = s.held.drain(..).collect();
            if release_first {
                drop(held);
                s.w.take().unwrap().close().unwrap();
            } else {
                s.w.take().unwrap().close().unwrap();
                drop(held); // in flight at the close: ready again after the reopen
            }
            s.open();
            for x in m.msgs.values_mut() {
                x.leased = false;
            }
            m.counters = Counters::default();
            m.dedup = m.dedup_logged.clone();
            let mut names = vec![MAIN.to_owned()];
            if m.dlq_exists {
                names.push(DLQ.to_owned());
            }
            assert_eq!(s.w().queue_names(), names, "catalog after the reopen");
        }
    }
}

fn requeued(m: &mut Model, id: u64) {
    let x = m.msgs.get_mut(&id).unwrap();
    x.at = Loc::Main;
    x.attempts = 0;
    x.error.clear();
    x.reason = None;
    x.due = 0;
}

/// The store matches the model: config, depths, counters, and every waiting message.
fn check(s: &Sut, m: &Model, what: &str) {
    let now = m.now();
    let main = s.main();
    assert_eq!(main.config().unwrap(), m.cfg, "{what}: config");
    let stats = main.stats().unwrap();
    let counters = Counters {
        processed: stats.processed,
        failed: stats.failed,
        dead_lettered: stats.dead_lettered,
        expired: stats.expired,
    };
    assert_eq!(counters, m.counters, "{what}: counters of {MAIN}");
    let mut queues = vec![(MAIN, Loc::Main, main)];
    if m.dlq_exists {
        queues.push((DLQ, Loc::Dlq, s.dlq()));
    }
    for (name, at, q) in queues {
        let depth = q.depth().unwrap();
        let of = |f: &dyn Fn(&M) -> bool| m.msgs.values().filter(|x| x.at == at && f(x)).count();
        let want = (
            of(&|x| !x.leased && x.due <= now),
            of(&|x| !x.leased && x.due > now),
            of(&|x| x.leased),
        );
        assert_eq!((depth.ready, depth.delayed, depth.in_flight), want, "{what}: depth of {name}");
        let peeked = q.peek(usize::MAX).unwrap();
        let got: Vec<u64> = peeked.iter().map(|p| p.id.get()).collect();
        assert_eq!(got, m.waiting(at, now), "{what}: waiting messages of {name}");
        for p in &peeked {
            let x = &m.msgs[&p.id.get()];
            let id = p.id;
            assert_eq!(p.payload, x.payload, "{what}: payload of {id}");
            assert_eq!(p.attempts, x.attempts, "{what}: attempts of {id}");
            assert_eq!(p.priority, x.priority, "{what}: priority of {id}");
            let due = p.due.map(|t| millis(t.duration_since(UNIX_EPOCH).unwrap()));
            assert_eq!(due, (x.due > now).then_some(x.due), "{what}: due time of {id}");
            let from = x.reason.map(|r| (MAIN.to_owned(), r));
            assert_eq!(p.dead_lettered_from, from, "{what}: dead-letter origin of {id}");
            let error = (!x.error.is_empty()).then(|| x.error.clone());
            assert_eq!(p.last_error, error, "{what}: last error of {id}");
        }
    }
}

fn run(ops: &[Op]) {
    let clock = ManualClock::new();
    let mut s = Sut {
        dir: tempfile::tempdir().unwrap(),
        clock: clock.clone(),
        w: None,
        held: vec![],
        ids: BTreeMap::new(),
    };
    s.open();
    let mut m = Model {
        clock,
        msgs: BTreeMap::new(),
        cfg: QueueConfig::new(),
        dedup: HashMap::new(),
        dedup_logged: HashMap::new(),
        counters: Counters::default(),
        dlq_exists: false,
        max_id: 0,
        next_payload: 0,
    };
    check(&s, &m, "start");
    for (k, op) in ops.iter().enumerate() {
        apply(&mut s, &mut m, op);
        // Not after a clock advance: the checks read the store (which makes due messages
        // ready), and the next call must find them as the clock left them.
        if !matches!(op, Op::Advance { .. }) {
            check(&s, &m, &format!("after op {k} {op:?}"));
        }
    }
    apply(&mut s, &mut m, &Op::Reopen { release_first: false });
    check(&s, &m, "after the final reopen");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn job_semantics_match_the_model(ops in prop::collection::vec(op_strategy(), 1..80)) {
        run(&ops);
    }
}

/// An overflowing push with `Overflow::DeadLetterOldest` dead-letters the next message a pop
/// would take, also a delayed one that became due since the last pop, peek or stats call (found
/// by `job_semantics_match_the_model`: the victim used to be picked before due messages were
/// made ready, so a younger ready message was dead-lettered instead).
#[test]
fn overflow_victim_is_the_next_message_a_pop_would_take() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let w = crate::small().clock(Arc::new(clock.clone())).open(dir.path()).unwrap();
    let q = w.queue(MAIN).unwrap();
    q.set_config(&QueueConfig::new().max_len(2, Overflow::DeadLetterOldest)).unwrap();
    q.push_with(b"due soon", PushOptions::new().delay(Duration::from_secs(1))).unwrap();
    q.push(b"ready").unwrap();
    clock.advance(Duration::from_secs(1));
    // "due soon" is now the oldest ready message: a pop would take it first, so a push over
    // the limit must dead-letter it.
    q.push(b"new").unwrap();
    let dead: Vec<Vec<u8>> =
        w.queue(DLQ).unwrap().peek(10).unwrap().into_iter().map(|p| p.payload).collect();
    assert_eq!(dead, [b"due soon".to_vec()]);
}

/// A dedup key outlives the segment that held its push: the segment goes only once a
/// checkpoint wrote the key into the state database (found as a bug before checkpoints: a
/// reopen forgot the key once that segment was deleted).
#[test]
fn a_dedup_window_outlives_the_segment_that_held_its_push() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let open = || crate::small().clock(Arc::new(clock.clone())).open(dir.path()).unwrap();
    let w = open();
    let q = w.queue(MAIN).unwrap();
    q.set_config(&QueueConfig::new().dedup_window(Duration::from_secs(3600))).unwrap();
    let key = PushOptions::new().dedup_key("once");
    let first = q.push_with(b"first", key.clone()).unwrap();
    q.try_pop().unwrap().unwrap().ack_with(Durability::Immediate).unwrap();
    let first_segment = crate::segments(dir.path())[0].clone();
    let churn = w.queue("churn").unwrap();
    let deadline = std::time::Instant::now() + crate::LONG;
    while first_segment.exists() {
        assert!(std::time::Instant::now() < deadline, "the first segment is never deleted");
        churn.push_batch((0..100).map(|i| vec![i as u8; 400])).unwrap();
        while let Some(d) = churn.try_pop().unwrap() {
            d.ack_with(Durability::Immediate).unwrap();
        }
        w.sync().unwrap();
    }
    assert_eq!(q.push_with(b"again", key.clone()).unwrap(), first, "inside the window");
    w.close().unwrap();
    let w = open();
    let q = w.queue(MAIN).unwrap();
    assert_eq!(q.push_with(b"after reopen", key).unwrap(), first, "inside the window");
}

/// Durations are stored in whole milliseconds (0 meaning "not set"): a duration under a
/// millisecond is rounded up, what `config()` returns is what a reopen finds, and a zero TTL
/// is refused. (Found by this model: they used to be lost at reopen.)
#[test]
fn a_config_with_durations_under_a_millisecond_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig::new()
        .ttl(Duration::from_micros(1), OnExpiry::DeadLetter)
        .visibility_timeout(Duration::from_micros(500))
        .dedup_window(Duration::from_micros(1500));
    let rounded = QueueConfig::new()
        .ttl(Duration::from_millis(1), OnExpiry::DeadLetter)
        .visibility_timeout(Duration::from_millis(1))
        .dedup_window(Duration::from_millis(2));
    {
        let w = crate::small().open(dir.path()).unwrap();
        let q = w.queue(MAIN).unwrap();
        q.set_config(&cfg).unwrap();
        assert_eq!(q.config().unwrap(), rounded);
        let zero_ttl = QueueConfig::new().ttl(Duration::ZERO, OnExpiry::Drop);
        assert!(matches!(q.set_config(&zero_ttl), Err(wharf::Error::InvalidOption(_))));
        w.close().unwrap();
    }
    let w = crate::small().open(dir.path()).unwrap();
    assert_eq!(w.queue(MAIN).unwrap().config().unwrap(), rounded);
}

/// Bug (src/recovery.rs, `Replay::leased`): `RecoveryReport::in_flight_at_crash` counts every
/// message whose last delivery record is not followed by a settlement record, so a message
/// that was in flight at one close (ready again after the reopen, and never delivered since)
/// is reported as in flight at every later open too. Its doc says: leased when the store was
/// last closed or crashed. Found by the `ops_model` fuzz target (fuzz/tests/known.rs).
#[test]
fn in_flight_at_crash_counts_only_the_last_run() {
    let dir = tempfile::tempdir().unwrap();
    {
        let w = crate::small().open(dir.path()).unwrap();
        let q = w.queue(MAIN).unwrap();
        q.push(b"job").unwrap();
        let d = q.try_pop().unwrap().unwrap();
        w.close().unwrap(); // in flight at the close
        drop(d);
    }
    {
        let w = crate::small().open(dir.path()).unwrap();
        assert_eq!(w.recovery_report().in_flight_at_crash, 1);
        assert_eq!(w.queue(MAIN).unwrap().depth().unwrap().ready, 1, "ready again");
        w.close().unwrap(); // nothing in flight this time
    }
    let w = crate::small().open(dir.path()).unwrap();
    assert_eq!(w.recovery_report().in_flight_at_crash, 0, "nothing was in flight at the close");
}
