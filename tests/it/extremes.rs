//! Extreme inputs: every duration, wall-clock time, count and size the public API takes, at 0,
//! 1 and its maximum. Each either works, with a saturating meaning (`Duration::MAX` waits for
//! ever, a lease or delay of `Duration::MAX` never ends), or is refused with
//! `Error::InvalidOption`; none panics, neither in the call nor later, when the stored value is
//! used (a pop, a nack, a background timer, a reopen). A panic fails the test: nothing catches
//! it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wharf::{
    Backoff, Durability, Error, ManualClock, NackOptions, OnExpiry, Overflow, PushOptions,
    QueueConfig, Result, TypedQueue, Wharf, WharfBuilder,
};

use crate::{small, LONG};

/// Longest dedup key, in bytes (`PushOptions::dedup_key`).
const MAX_DEDUP_KEY: usize = 1024;

/// What a row must give.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// `Ok`, and the row's own checks of the value's meaning held.
    Works,
    /// `Err(Error::InvalidOption(..))`.
    Invalid,
}
use Want::{Invalid, Works};

/// A row's run on a fresh store directory.
type Run = Box<dyn Fn(&Path) -> Result<()>>;

/// One input: a name (the API and the value), what it must give, and a run on a fresh store
/// directory that uses the value, then the stored value again (pops, reopens).
struct Row {
    name: String,
    want: Want,
    run: Run,
}

fn row(name: impl Into<String>, want: Want, run: impl Fn(&Path) -> Result<()> + 'static) -> Row {
    Row { name: name.into(), want, run: Box::new(run) }
}

/// Durations at 0, 1 and the maximum.
const DURATIONS: [(&str, Duration); 3] =
    [("0", Duration::ZERO), ("1ns", Duration::from_nanos(1)), ("MAX", Duration::MAX)];

/// Longer than any test runs: a time this far ahead never comes during the test.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The latest `SystemTime` this platform holds.
fn far_future() -> SystemTime {
    let mut d = Duration::MAX;
    loop {
        if let Some(t) = UNIX_EPOCH.checked_add(d) {
            return t;
        }
        d /= 2;
    }
}

/// The earliest `SystemTime` this platform holds (before the Unix epoch where it can).
fn far_past() -> SystemTime {
    let mut d = Duration::MAX;
    loop {
        if let Some(t) = UNIX_EPOCH.checked_sub(d) {
            return t;
        }
        d /= 2;
    }
}

/// Times at the Unix epoch, before it, far before it, and as late as the platform allows.
fn times() -> [(&'static str, SystemTime); 4] {
    [
        ("UNIX_EPOCH", UNIX_EPOCH),
        ("1s-before-epoch", UNIX_EPOCH - Duration::from_secs(1)),
        ("far-past", far_past()),
        ("far-future", far_future()),
    ]
}

/// Opens `dir` with `b`, pushes, pops and acks one message, closes, reopens with `b` and
/// checks that exactly the unacked second message comes back: the options held through a
/// whole cycle, background threads included (`close` reports a panic in one of them).
fn cycle(dir: &Path, b: &WharfBuilder) -> Result<()> {
    let w = b.clone().open(dir)?;
    let q = w.queue("q")?;
    q.push(b"first")?;
    q.pop_timeout(LONG)?.expect("the first message").ack()?;
    q.push(b"second")?;
    w.checkpoint()?;
    w.close()?;
    let w = b.clone().open(dir)?;
    let q = w.queue("q")?;
    let d = q.pop_timeout(LONG)?.expect("the second message after a reopen");
    assert_eq!(d.payload(), b"second");
    d.ack()?;
    assert!(q.try_pop()?.is_none(), "the acked message came back");
    w.close()
}

/// A store of small segments in `dir`, its queue `q`.
fn store(dir: &Path) -> Result<(Wharf, wharf::Queue)> {
    let w = small().open(dir)?;
    let q = w.queue("q")?;
    Ok((w, q))
}

/// Reopens `dir` (after a checkpoint, which writes what the log says into the state database,
/// and a close) and returns the store and its queue `q`.
fn reopen(w: Wharf, dir: &Path) -> Result<(Wharf, wharf::Queue)> {
    w.checkpoint()?;
    w.close()?;
    store(dir)
}

/// Checks that `q`'s only message is delayed past a century, also after a reopen.
fn delayed_for_ever(w: Wharf, q: &wharf::Queue, dir: &Path) -> Result<()> {
    let far = SystemTime::now() + CENTURY;
    let check = |q: &wharf::Queue| -> Result<()> {
        assert!(q.try_pop()?.is_none(), "delivered before its time");
        assert_eq!(q.depth()?.delayed, 1);
        let due = q.peek(1)?[0].due.expect("a due time");
        assert!(due > far, "due at {due:?}");
        Ok(())
    };
    check(q)?;
    let (w, q) = reopen(w, dir)?;
    check(&q)?;
    w.close()
}

/// A store with a disk quota in `dir`, filled with 1000-byte messages in `q` until a push of
/// `last` (the next one) fails with `Error::Full`.
fn full_store(dir: &Path) -> Result<(Wharf, wharf::Queue, Vec<u8>)> {
    let seg = 64 << 10;
    let w = Wharf::builder().segment_bytes(seg).max_disk_bytes(6 * seg).open(dir)?;
    let q = w.queue("q")?;
    let fast = PushOptions::new().durability(Durability::None);
    for n in 0.. {
        let p = crate::payload(n, 1000);
        match q.push_with(&p, fast.clone()) {
            Ok(_) => {}
            Err(Error::Full { .. }) => {
                assert!(matches!(q.push(&p), Err(Error::Full { .. })), "not full");
                return Ok((w, q, p));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("never full")
}

fn builder_rows(rows: &mut Vec<Row>) {
    for (v, d) in DURATIONS {
        let want = if d.is_zero() { Invalid } else { Works };
        rows.push(row(format!("builder.visibility_timeout({v})"), want, move |dir| {
            let b = small().visibility_timeout(d);
            let w = b.clone().open(dir)?;
            let q = w.queue("q")?;
            q.push(b"job")?;
            let first = q.pop()?;
            if d == Duration::MAX {
                assert!(q.try_pop()?.is_none(), "a lease of Duration::MAX ended");
                first.extend(Duration::MAX)?;
                first.ack()?;
                w.close()?;
                cycle(dir, &b)
            } else {
                // Every lease ends at once: no ack can make it.
                let again = q.pop_timeout(LONG)?.expect("redelivered after a 1 ns lease");
                assert_eq!(again.attempt(), 2);
                assert!(matches!(first.ack(), Err(Error::LeaseExpired)));
                drop(again);
                w.close()?;
                let w = b.open(dir)?;
                let again = w.queue("q")?.pop_timeout(LONG)?.expect("still there");
                assert_eq!(again.attempt(), 3);
                drop(again);
                w.close()
            }
        }));
        rows.push(row(format!("builder.checkpoint_interval(Some({v}))"), want, move |dir| {
            cycle(dir, &small().checkpoint_interval(Some(d)))
        }));
        for (what, durability) in [("push", true), ("ack", false)] {
            let name = format!("builder.{what}_durability(Interval({v}))");
            rows.push(row(name, Works, move |dir| {
                let b = if durability {
                    small().push_durability(Durability::Interval(d))
                } else {
                    small().ack_durability(Durability::Interval(d))
                };
                cycle(dir, &b)
            }));
        }
    }
    rows.push(row("builder.checkpoint_interval(None)", Works, |dir| {
        cycle(dir, &small().checkpoint_interval(None))
    }));
    for (v, n) in [("0", 0), ("1", 1), ("u64::MAX", u64::MAX)] {
        rows.push(row(format!("builder.segment_bytes({v})"), Invalid, move |dir| {
            cycle(dir, &Wharf::builder().segment_bytes(n))
        }));
        let want = if n == u64::MAX { Works } else { Invalid };
        rows.push(row(format!("builder.max_disk_bytes({v})"), want, move |dir| {
            cycle(dir, &small().max_disk_bytes(n))
        }));
        rows.push(row(format!("builder.checkpoint_every_bytes({v})"), Works, move |dir| {
            cycle(dir, &small().checkpoint_every_bytes(n))
        }));
    }
    for (v, n) in [("0", 0), ("1", 1), ("usize::MAX", usize::MAX)] {
        let want = if n == usize::MAX { Invalid } else { Works };
        rows.push(row(format!("builder.max_payload({v})"), want, move |dir| {
            let w = small().max_payload(n).open(dir)?;
            let q = w.queue("q")?;
            let fits = vec![b'x'; n];
            q.push(&fits)?;
            let too_big = vec![b'x'; n + 1];
            assert!(matches!(q.push(&too_big), Err(Error::PayloadTooLarge { .. })));
            assert_eq!(q.pop()?.payload(), &fits[..]);
            w.close()
        }));
    }
    for (v, d) in DURATIONS {
        rows.push(row(format!("ManualClock::advance({v}) twice"), Works, move |dir| {
            let clock = ManualClock::new();
            let w = small().clock(Arc::new(clock.clone())).open(dir)?;
            let q = w.queue("q")?;
            q.push(b"held")?;
            q.push_with(b"in an hour", PushOptions::new().delay(Duration::from_secs(3600)))?;
            let held = q.try_pop()?.expect("ready");
            clock.advance(d);
            clock.advance(d);
            if d == Duration::MAX {
                // The lease ran out and the delay passed.
                let ready: Vec<_> =
                    std::iter::from_fn(|| q.try_pop().transpose()).collect::<Result<_>>()?;
                let mut got: Vec<&[u8]> = ready.iter().map(wharf::Delivery::payload).collect();
                got.sort_unstable();
                assert_eq!(got, [&b"held"[..], b"in an hour"]);
                assert!(matches!(held.ack(), Err(Error::LeaseExpired)));
            } else {
                held.ack()?;
            }
            w.close()
        }));
    }
}

fn push_rows(rows: &mut Vec<Row>) {
    for (v, d) in DURATIONS {
        rows.push(row(format!("PushOptions::delay({v})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push_with(b"later", PushOptions::new().delay(d))?;
            if d == Duration::MAX {
                delayed_for_ever(w, &q, dir)
            } else {
                assert!(q.pop_timeout(LONG)?.is_some(), "a delay of {d:?} held it");
                w.close()
            }
        }));
        rows.push(row(format!("PushOptions::ttl({v})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push_with(b"perishable", PushOptions::new().ttl(d))?;
            if d == Duration::MAX {
                let expires = q.peek(1)?[0].expires.expect("an expiry");
                assert!(expires > SystemTime::now() + CENTURY);
                let (w, q) = reopen(w, dir)?;
                assert!(q.try_pop()?.is_some(), "a TTL of Duration::MAX ran out");
                w.close()
            } else {
                // Zero (or less than a millisecond): expired at once.
                assert!(q.try_pop()?.is_none(), "delivered past its TTL of {d:?}");
                assert_eq!(q.stats()?.expired, 1);
                w.close()
            }
        }));
        rows.push(row(format!("PushOptions::wait_for_space({v})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push_with(b"room", PushOptions::new().wait_for_space(d))?;
            assert!(q.try_pop()?.is_some());
            w.close()
        }));
        rows.push(row(format!("PushOptions::durability(Interval({v}))"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push_with(b"x", PushOptions::new().durability(Durability::Interval(d)))?;
            let (w, q) = reopen(w, dir)?;
            q.try_pop()?.expect("pushed before a clean close").ack_with(Durability::Interval(d))?;
            let (w, q) = reopen(w, dir)?;
            assert!(q.try_pop()?.is_none(), "acked before a clean close");
            w.close()
        }));
    }
    rows.push(row("PushOptions::wait_for_space(MAX) on a full store", Works, |dir| {
        let (w, q, last) = full_store(dir)?;
        // Drained by another thread: the push waits (it used to give up at once) until the
        // acked segments are deleted.
        let drainer = {
            let q = q.clone();
            std::thread::spawn(move || -> Result<()> {
                std::thread::sleep(Duration::from_millis(50));
                while let Some(d) = q.try_pop()? {
                    d.ack_with(Durability::Immediate)?;
                }
                Ok(())
            })
        };
        q.push_with(&last, PushOptions::new().wait_for_space(Duration::MAX))?;
        drainer.join().expect("the drainer panicked")?;
        w.close()
    }));
    rows.push(row("PushOptions::wait_for_space(MAX) on a full store, closed", Works, |dir| {
        let (w, q, last) = full_store(dir)?;
        // Closed by another thread: the waiting push learns it at once.
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.close()
        });
        let pushed = q.push_with(&last, PushOptions::new().wait_for_space(Duration::MAX));
        assert!(matches!(pushed, Err(Error::Closed)), "{pushed:?}");
        closer.join().expect("the closer panicked")
    }));
    for (v, t) in times() {
        rows.push(row(format!("PushOptions::not_before({v})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push_with(b"x", PushOptions::new().not_before(t))?;
            if t > UNIX_EPOCH {
                delayed_for_ever(w, &q, dir)
            } else {
                assert!(q.try_pop()?.is_some(), "a time in the past delayed it");
                w.close()
            }
        }));
        rows.push(row(format!("PushOptions::expires_at({v})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push_with(b"x", PushOptions::new().expires_at(t))?;
            let (w, q) = reopen(w, dir)?;
            if t > UNIX_EPOCH {
                assert!(q.peek(1)?[0].expires.expect("an expiry") > SystemTime::now() + CENTURY);
                assert!(q.try_pop()?.is_some(), "expired long before its time");
            } else {
                assert!(q.try_pop()?.is_none(), "delivered after it expired");
                assert_eq!(q.stats()?.expired, 1);
            }
            w.close()
        }));
    }
    for p in [0, 1, wharf::MAX_PRIORITY, wharf::MAX_PRIORITY + 1, u8::MAX] {
        let want = if p > wharf::MAX_PRIORITY { Invalid } else { Works };
        rows.push(row(format!("PushOptions::priority({p})"), want, move |dir| {
            let (w, q) = store(dir)?;
            q.push_with(b"x", PushOptions::new().priority(p))?;
            assert_eq!(q.try_pop()?.expect("ready").payload(), b"x");
            w.close()
        }));
    }
    for len in [0, 1, MAX_DEDUP_KEY, MAX_DEDUP_KEY + 1] {
        let want = if len > MAX_DEDUP_KEY { Invalid } else { Works };
        rows.push(row(format!("PushOptions::dedup_key({len} bytes)"), want, move |dir| {
            let (w, q) = store(dir)?;
            let key = vec![b'k'; len];
            let a = q.push_with(b"a", PushOptions::new().dedup_key(&key))?;
            let b = q.push_with(b"b", PushOptions::new().dedup_key(&key))?;
            // An empty key is no key.
            assert_eq!(a == b, len > 0);
            w.close()
        }));
    }
    rows.push(row("Queue::push(the largest payload, and one byte more)", Works, |dir| {
        let (w, q) = store(dir)?;
        let Err(Error::PayloadTooLarge { max, .. }) = q.push(vec![0u8; 1 << 20]) else {
            panic!("1 MiB fits in a segment of 64 KiB")
        };
        assert!(matches!(q.push(vec![1u8; max + 1]), Err(Error::PayloadTooLarge { .. })));
        q.push(vec![2u8; max])?;
        let (w, q) = reopen(w, dir)?;
        assert_eq!(q.try_pop()?.expect("stored").payload(), &vec![2u8; max][..]);
        w.close()
    }));
    rows.push(row("Queue::push_batch(no messages)", Works, |dir| {
        let (w, q) = store(dir)?;
        assert!(q.push_batch(Vec::<&[u8]>::new())?.is_empty());
        assert!(q.try_pop()?.is_none());
        w.close()
    }));
    rows.push(row("Queue::push_batch_with(delay(MAX))", Works, |dir| {
        let (w, q) = store(dir)?;
        q.push_batch_with([b"a"], PushOptions::new().delay(Duration::MAX))?;
        delayed_for_ever(w, &q, dir)
    }));
}

fn config_rows(rows: &mut Vec<Row>) {
    for (v, d) in DURATIONS {
        let want = if d.is_zero() { Invalid } else { Works };
        rows.push(row(format!("QueueConfig::visibility_timeout({v})"), want, move |dir| {
            let (w, q) = store(dir)?;
            q.set_config(&QueueConfig::new().visibility_timeout(d))?;
            q.push(b"job")?;
            let first = q.pop()?;
            if d == Duration::MAX {
                assert!(q.try_pop()?.is_none(), "a lease of Duration::MAX ended");
                drop(first);
                let (w, q) = reopen(w, dir)?;
                assert!(q.config()?.get_visibility_timeout().is_some_and(|t| t > CENTURY));
                let d = q.try_pop()?.expect("released by the drop");
                assert_eq!(d.attempt(), 2);
                assert!(q.try_pop()?.is_none(), "a lease of Duration::MAX ended");
                d.ack()?;
                w.close()
            } else {
                assert_eq!(q.config()?.get_visibility_timeout(), Some(Duration::from_millis(1)));
                let again = q.pop_timeout(LONG)?.expect("redelivered after 1 ms");
                assert!(matches!(first.ack(), Err(Error::LeaseExpired)));
                assert_eq!(again.attempt(), 2);
                drop(again);
                w.close()
            }
        }));
        rows.push(row(format!("QueueConfig::ttl({v})"), want, move |dir| {
            let (w, q) = store(dir)?;
            q.set_config(&QueueConfig::new().ttl(d, OnExpiry::DeadLetter))?;
            q.push(b"perishable")?;
            let (w, q) = reopen(w, dir)?;
            if d == Duration::MAX {
                assert!(q.try_pop()?.is_some(), "a TTL of Duration::MAX ran out");
            } else {
                std::thread::sleep(Duration::from_millis(5));
                assert!(q.try_pop()?.is_none(), "delivered past its TTL of 1 ms");
                let dlq = q.dead_letter_queue()?.expect("a dead-letter queue");
                assert_eq!(dlq.depth()?.ready, 1);
            }
            w.close()
        }));
        rows.push(row(format!("QueueConfig::dedup_window({v})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.set_config(&QueueConfig::new().dedup_window(d))?;
            let key = PushOptions::new().dedup_key("k");
            let first = q.push_with(b"a", key.clone())?;
            q.pop()?.ack_with(Durability::Immediate)?;
            std::thread::sleep(Duration::from_millis(5));
            let (w, q) = reopen(w, dir)?;
            let again = q.push_with(b"a", key)?;
            // Settled: the key holds only within the window.
            assert_eq!(again == first, d == Duration::MAX);
            w.close()
        }));
        for (b, backoff) in [
            (format!("Fixed({v})"), Backoff::Fixed(d)),
            (format!("exponential(0, {v})"), Backoff::exponential(Duration::ZERO, d)),
            (format!("exponential({v}, MAX)"), Backoff::exponential(d, Duration::MAX)),
            (
                format!("Exponential({v}, MAX, no jitter)"),
                Backoff::Exponential { base: d, cap: Duration::MAX, jitter: false },
            ),
        ] {
            rows.push(row(format!("QueueConfig::backoff({b}) and nack"), Works, move |dir| {
                let (w, q) = store(dir)?;
                q.set_config(&QueueConfig::new().backoff(backoff))?;
                q.push(b"flaky")?;
                for attempt in 1..=3 {
                    let Some(d) = q.pop_timeout(Duration::from_millis(50))? else { break };
                    assert_eq!(d.attempt(), attempt);
                    d.nack()?;
                }
                let s = q.stats()?;
                assert_eq!(s.ready + s.delayed, 1, "{s:?}");
                let (w, q) = reopen(w, dir)?;
                let s = q.stats()?;
                assert_eq!(s.ready + s.delayed, 1, "after a reopen: {s:?}");
                w.close()
            }));
        }
    }
    for (v, n) in [("0", 0), ("1", 1), ("u32::MAX", u32::MAX)] {
        let want = if n == 0 { Invalid } else { Works };
        rows.push(row(format!("QueueConfig::max_attempts({v})"), want, move |dir| {
            let (w, q) = store(dir)?;
            q.set_config(&QueueConfig::new().max_attempts(n))?;
            q.push(b"job")?;
            q.pop()?.nack()?;
            let dlq_depth = q.dead_letter_queue()?.expect("a dead-letter queue").depth()?.ready;
            assert_eq!((q.depth()?.ready, dlq_depth), if n == 1 { (0, 1) } else { (1, 0) });
            w.close()
        }));
    }
    for (v, n) in [("0", 0), ("1", 1), ("u64::MAX", u64::MAX)] {
        for overflow in [Overflow::Reject, Overflow::DeadLetterOldest] {
            rows.push(row(format!("QueueConfig::max_len({v}, {overflow:?})"), Works, move |dir| {
                let (w, q) = store(dir)?;
                q.set_config(&QueueConfig::new().max_len(n, overflow))?;
                let mut stored = 0u64;
                for i in 0..3u8 {
                    match q.push([i]) {
                        Ok(_) => stored += 1,
                        Err(Error::QueueFull { max_len, .. }) => assert_eq!(max_len, n),
                        Err(e) => return Err(e),
                    }
                }
                let (w, q) = reopen(w, dir)?;
                let waiting = q.depth()?.ready as u64;
                assert_eq!(waiting, n.min(3));
                if overflow == Overflow::Reject {
                    assert_eq!(stored, n.min(3));
                }
                w.close()
            }));
        }
    }
}

fn delivery_rows(rows: &mut Vec<Row>) {
    for n in [0, 1, 1 << 20] {
        rows.push(row(
            format!("NackOptions::error({n} bytes) and dead_letter"),
            Works,
            move |dir| {
                let (w, q) = store(dir)?;
                q.set_config(&QueueConfig::new().max_attempts(2))?;
                q.push(b"failing")?;
                let text = "é".repeat(n / 2) + &"x".repeat(n % 2);
                q.pop()?.nack_with(NackOptions::new().error(text.clone()))?;
                q.pop()?.dead_letter(&text)?;
                let (w, q) = reopen(w, dir)?;
                let dlq = q.dead_letter_queue()?.expect("a dead-letter queue");
                let dead = dlq.peek(1)?;
                let kept = dead[0].last_error.clone().unwrap_or_default();
                assert!(text.starts_with(&kept) && kept.len() <= 4096, "{} bytes", kept.len());
                w.close()
            },
        ));
    }
    for (v, d) in DURATIONS {
        rows.push(row(format!("NackOptions::delay({v})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push(b"retry me")?;
            q.pop()?.nack_with(NackOptions::new().delay(d).error("e"))?;
            if d == Duration::MAX {
                delayed_for_ever(w, &q, dir)
            } else {
                assert_eq!(q.pop_timeout(LONG)?.expect("retried").attempt(), 2);
                w.close()
            }
        }));
        rows.push(row(format!("Delivery::extend({v})"), Works, move |dir| {
            let clock = ManualClock::new();
            let b = small().visibility_timeout(Duration::from_millis(20));
            let w = b.clock(Arc::new(clock.clone())).open(dir)?;
            let q = w.queue("q")?;
            q.push(b"slow")?;
            let held = q.try_pop()?.expect("ready");
            held.extend(d)?;
            clock.advance(Duration::from_millis(40));
            if d == Duration::MAX {
                assert!(q.try_pop()?.is_none(), "an extension of Duration::MAX ended");
                held.extend(Duration::MAX)?;
                held.ack()?;
            } else {
                // Extended to (almost) now: the lease ran out.
                assert!(matches!(held.extend(d), Err(Error::LeaseExpired)));
                assert_eq!(q.try_pop()?.expect("redelivered").attempt(), 2);
            }
            w.close()
        }));
        rows.push(row(format!("Queue::pop_timeout({v}), empty queue"), Works, move |dir| {
            let (w, q) = store(dir)?;
            if d == Duration::MAX {
                // Answered by a push from another thread.
                let pusher = {
                    let q = q.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(30));
                        q.push(b"late")
                    })
                };
                let got = q.pop_timeout(d)?.expect("Duration::MAX waits for the push");
                assert_eq!(got.payload(), b"late");
                got.ack()?;
                pusher.join().expect("the pusher panicked")?;
            } else {
                assert!(q.pop_timeout(d)?.is_none());
            }
            w.close()
        }));
        rows.push(row(format!("Queue::pop_timeout({v}), a message ready"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push(b"here")?;
            q.pop_timeout(d)?.expect("ready").ack()?;
            w.close()
        }));
        for (m, max) in [("0", 0), ("1", 1), ("usize::MAX", usize::MAX)] {
            let name = format!("Queue::pop_batch({m}, {v})");
            rows.push(row(name, Works, move |dir| {
                let (w, q) = store(dir)?;
                if d == Duration::MAX && max > 0 {
                    let pusher = {
                        let q = q.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(30));
                            q.push_batch([b"a", b"b"])
                        })
                    };
                    let got = q.pop_batch(max, d)?;
                    assert!(!got.is_empty() && got.len() <= max.min(2));
                    pusher.join().expect("the pusher panicked")?;
                } else {
                    assert!(q.pop_batch(max, d)?.is_empty());
                    q.push_batch([b"a", b"b", b"c"])?;
                    assert_eq!(q.pop_batch(max, d)?.len(), max.min(3));
                }
                w.close()
            }));
        }
    }
    for (m, max) in [("0", 0), ("1", 1), ("usize::MAX", usize::MAX)] {
        rows.push(row(format!("Queue::pop_batch_async({m})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push_batch([b"a", b"b", b"c"])?;
            let got = futures::executor::block_on(q.pop_batch_async(max))?;
            assert_eq!(got.len(), max.min(3));
            drop(got);
            assert_eq!(futures::executor::block_on(q.pop_async())?.payload().len(), 1);
            w.close()
        }));
        rows.push(row(format!("Queue::peek({m})"), Works, move |dir| {
            let (w, q) = store(dir)?;
            q.push_batch([b"a", b"b", b"c"])?;
            assert_eq!(q.peek(max)?.len(), max.min(3));
            w.close()
        }));
    }
    // A visibility timeout of Duration::MAX with async pops waiting: the background thread's
    // timers use the lease deadline.
    rows.push(row("pop_async with a lease of Duration::MAX pending", Works, |dir| {
        let w = small().visibility_timeout(Duration::MAX).open(dir)?;
        let q = w.queue("q")?;
        q.push(b"held")?;
        let held = q.pop()?;
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || {
                futures::executor::block_on(q.pop_async()).map(|d| d.payload().to_vec())
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        held.release()?;
        assert_eq!(waiter.join().expect("the waiter panicked")?, b"held");
        w.close()
    }));
    rows.push(row(
        "TypedQueue: pop_timeout(MAX), pop_batch(usize::MAX, MAX), extend(MAX)",
        Works,
        |dir| {
            let (w, q) = store(dir)?;
            let t: TypedQueue<u64> = TypedQueue::new(q);
            t.push(&u64::MAX)?;
            let d = t.pop_timeout(Duration::MAX)?.expect("ready");
            assert_eq!(d.value()?, u64::MAX);
            d.extend(Duration::MAX)?;
            d.ack()?;
            t.push_batch([&0, &1])?;
            assert_eq!(t.pop_batch(usize::MAX, Duration::MAX)?.len(), 2);
            w.close()
        },
    ));
}

#[test]
fn every_extreme_input_works_or_is_refused_never_panics() {
    let mut rows = Vec::new();
    builder_rows(&mut rows);
    push_rows(&mut rows);
    config_rows(&mut rows);
    delivery_rows(&mut rows);
    for r in &rows {
        // Shown with the failure, so a panic names its row.
        eprintln!("row: {}", r.name);
        let dir = tempfile::tempdir().unwrap();
        match (r.want, (r.run)(dir.path())) {
            (Works, Ok(())) => {}
            (Invalid, Err(Error::InvalidOption(why))) => {
                assert!(!why.is_empty(), "{}: no reason given", r.name);
            }
            (want, got) => panic!("{}: wanted {want:?}, got {got:?}", r.name),
        }
        // Whatever the row left opens again and verifies clean.
        if dir.path().join("log").exists() {
            let w = small().open(dir.path()).unwrap_or_else(|e| panic!("{}: reopen: {e}", r.name));
            w.close().unwrap();
            let report = Wharf::verify(dir.path()).unwrap();
            assert!(report.is_healthy(), "{}: {report:?}", r.name);
        }
    }
}

#[test]
fn opening_a_regular_file_says_it_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"hello").unwrap();
    for path in [file.clone(), file.join("below")] {
        let e = Wharf::open(&path).unwrap_err();
        let Error::Io(io) = &e else { panic!("{path:?}: {e:?}") };
        assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory, "{e}");
        let text = e.to_string();
        assert!(text.contains("is not a directory"), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"hello", "the file was changed");
}
