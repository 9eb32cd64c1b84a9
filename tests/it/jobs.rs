//! Job semantics, one option at a time, each also across a reopen: delays, priorities, TTLs,
//! dedup keys, retries with backoff, dead letters, requeue, length limits, durable config.
//! Time is a `ManualClock`: nothing here sleeps.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use wharf::{
    Backoff, DeadLetters, DeadReason, Error, ManualClock, NackOptions, OnExpiry, Overflow,
    PushOptions, QueueConfig, Wharf,
};

use crate::small;

const SEC: Duration = Duration::from_secs(1);

fn open(dir: &std::path::Path, clock: &ManualClock) -> Wharf {
    small().clock(Arc::new(clock.clone())).open(dir).unwrap()
}

/// The payloads `try_pop` returns until the queue has nothing ready, each acked.
fn drain(q: &wharf::Queue) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(d) = q.try_pop().unwrap() {
        out.push(d.payload().to_vec());
        d.ack().unwrap();
    }
    out
}

#[test]
fn a_delayed_message_is_invisible_until_due_even_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    {
        let w = open(dir.path(), &clock);
        let q = w.queue("q").unwrap();
        q.push_with(b"later", PushOptions::new().delay(60 * SEC)).unwrap();
        q.push_with(b"at", PushOptions::new().not_before(clock_wall(&clock) + 30 * SEC)).unwrap();
        q.push(b"now").unwrap();
        assert_eq!(q.depth().unwrap().delayed, 2);
        assert_eq!(drain(&q), [b"now".to_vec()]);
        w.close().unwrap();
    }
    clock.advance(29 * SEC);
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    assert!(q.try_pop().unwrap().is_none(), "still delayed after the reopen");
    assert_eq!(q.depth().unwrap().delayed, 2);
    clock.advance(SEC);
    assert_eq!(drain(&q), [b"at".to_vec()]);
    clock.advance(30 * SEC);
    assert_eq!(drain(&q), [b"later".to_vec()]);
}

fn clock_wall(clock: &ManualClock) -> SystemTime {
    use wharf::Clock;
    clock.wall()
}

#[test]
fn higher_priorities_first_and_fifo_within_one_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let order = [(b"a", 0), (b"b", 5), (b"c", 0), (b"d", 9), (b"e", 5)];
    {
        let w = open(dir.path(), &clock);
        let q = w.queue("q").unwrap();
        for (p, prio) in order {
            q.push_with(p, PushOptions::new().priority(prio)).unwrap();
        }
        let err = q.push_with(b"x", PushOptions::new().priority(10)).unwrap_err();
        assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    }
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    let want: Vec<Vec<u8>> =
        ["d", "b", "e", "a", "c"].iter().map(|s| s.as_bytes().to_vec()).collect();
    assert_eq!(drain(&q), want);
}

#[test]
fn an_expired_message_is_never_delivered_and_is_dropped_or_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    {
        let w = open(dir.path(), &clock);
        let q = w.queue("q").unwrap();
        q.push_with(b"short", PushOptions::new().ttl(10 * SEC)).unwrap();
        q.push_with(b"long", PushOptions::new().ttl(100 * SEC)).unwrap();
        let dl = w.queue("dl").unwrap();
        dl.set_config(&QueueConfig::new().ttl(5 * SEC, OnExpiry::DeadLetter)).unwrap();
        dl.push(b"queue-ttl").unwrap();
    }
    clock.advance(11 * SEC);
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    assert_eq!(drain(&q), [b"long".to_vec()]);
    assert_eq!(q.stats().unwrap().expired, 1);
    assert_eq!(w.queue("q.dlq").unwrap().depth().unwrap().ready, 0, "dropped, not dead-lettered");
    let dl = w.queue("dl").unwrap();
    assert!(dl.try_pop().unwrap().is_none());
    let dead = w.queue("dl.dlq").unwrap().peek(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"queue-ttl");
    assert_eq!(dead[0].dead_lettered_from, Some(("dl".to_string(), DeadReason::Expired)));
}

#[test]
fn a_dedup_key_returns_the_first_id_while_unsettled_or_within_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let key = PushOptions::new().dedup_key("order-1");
    let first = {
        let w = open(dir.path(), &clock);
        let q = w.queue("q").unwrap();
        let first = q.push_with(b"one", key.clone()).unwrap();
        assert_eq!(q.push_with(b"two", key.clone()).unwrap(), first);
        assert_eq!(q.depth().unwrap().ready, 1, "the duplicate stored nothing");
        let err = q.push_batch_with([b"a", b"b"], key.clone()).unwrap_err();
        assert!(matches!(err, Error::InvalidOption(_)));
        first
    };
    // The key holds across a reopen while its message is unsettled.
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    assert_eq!(q.push_with(b"three", key.clone()).unwrap(), first);
    // Settled and no window: the key is free again.
    assert_eq!(drain(&q), [b"one".to_vec()]);
    let second = q.push_with(b"four", key.clone()).unwrap();
    assert_ne!(second, first);
    drain(&q);
    // With a window, a settled key still holds until the window has passed, across a reopen.
    q.set_config(&QueueConfig::new().dedup_window(60 * SEC)).unwrap();
    let w2 = w.queue("w").unwrap();
    w2.set_config(&QueueConfig::new().dedup_window(60 * SEC)).unwrap();
    let id = w2.push_with(b"x", key.clone()).unwrap();
    drain(&w2);
    w.close().unwrap();
    clock.advance(30 * SEC);
    let w = open(dir.path(), &clock);
    let w2 = w.queue("w").unwrap();
    assert_eq!(w2.push_with(b"y", key.clone()).unwrap(), id, "inside the window");
    clock.advance(31 * SEC);
    assert_ne!(w2.push_with(b"z", key).unwrap(), id, "after the window");
}

#[test]
fn a_nack_retries_after_the_queues_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    let backoff = Backoff::Exponential { base: SEC, cap: 4 * SEC, jitter: false };
    q.set_config(&QueueConfig::new().backoff(backoff)).unwrap();
    q.push(b"job").unwrap();
    let mut waited = Vec::new();
    for attempt in 1..=5 {
        let d = q.try_pop().unwrap().unwrap();
        assert_eq!(d.attempt(), attempt);
        d.nack().unwrap();
        assert_eq!(q.depth().unwrap().delayed, 1);
        let mut secs = 0;
        while q.depth().unwrap().ready == 0 {
            clock.advance(SEC);
            secs += 1;
        }
        waited.push(secs);
        assert_eq!(q.stats().unwrap().failed, u64::from(attempt));
    }
    assert_eq!(waited, [1, 2, 4, 4, 4]);
    // An explicit delay overrides the backoff, and survives a reopen.
    let d = q.try_pop().unwrap().unwrap();
    d.nack_with(NackOptions::new().delay(100 * SEC).error("smtp 421")).unwrap();
    w.close().unwrap();
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    assert_eq!(q.depth().unwrap().delayed, 1);
    let peeked = q.peek(1).unwrap();
    assert_eq!(peeked[0].last_error.as_deref(), Some("smtp 421"));
    clock.advance(99 * SEC);
    assert!(q.try_pop().unwrap().is_none());
    clock.advance(SEC);
    assert!(q.try_pop().unwrap().is_some());
}

#[test]
fn past_max_attempts_a_message_is_dead_lettered_with_its_history_and_can_be_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    {
        let w = open(dir.path(), &clock);
        let q = w.queue("jobs").unwrap();
        q.set_config(&QueueConfig::new().max_attempts(3)).unwrap();
        let id = q.push(b"flaky").unwrap();
        q.push(b"fine").unwrap();
        for attempt in 1..=3 {
            let d = q.try_pop().unwrap().unwrap();
            assert_eq!((d.id(), d.attempt()), (id, attempt));
            d.nack_with(NackOptions::new().error(format!("failure {attempt}"))).unwrap();
        }
        assert_eq!(drain(&q), [b"fine".to_vec()]);
        let s = q.stats().unwrap();
        assert_eq!((s.failed, s.dead_lettered, s.processed), (3, 1, 1));
    }
    let w = open(dir.path(), &clock);
    let q = w.queue("jobs").unwrap();
    assert!(q.try_pop().unwrap().is_none(), "the dead letter stays dead after a reopen");
    let dlq = q.dead_letter_queue().unwrap().unwrap();
    assert_eq!(dlq.name(), "jobs.dlq");
    let dead = dlq.peek(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"flaky");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("failure 3"));
    assert_eq!(dead[0].dead_lettered_from, Some(("jobs".to_string(), DeadReason::MaxAttempts)));
    // Requeue: back in its origin, attempts from zero, durable. An id that is not a dead
    // letter here is refused.
    let not_dead = q.push(b"not dead").unwrap();
    assert!(!dlq.requeue(not_dead).unwrap());
    assert!(dlq.requeue(dead[0].id).unwrap());
    assert!(dlq.peek(10).unwrap().is_empty());
    w.close().unwrap();
    let w = open(dir.path(), &clock);
    let q = w.queue("jobs").unwrap();
    let d = q.try_pop().unwrap().unwrap();
    assert_eq!((d.payload(), d.attempt()), (&b"flaky"[..], 1));
    d.dead_letter("gave up").unwrap();
    let dlq = w.queue("jobs.dlq").unwrap();
    let dead = dlq.peek(10).unwrap();
    assert_eq!(dead[0].dead_lettered_from, Some(("jobs".to_string(), DeadReason::Explicit)));
    assert_eq!(dead[0].last_error.as_deref(), Some("gave up"));
    // `not_dead` (pushed above) is the next in `jobs`; dead-letter it too, then requeue all.
    let d = q.try_pop().unwrap().unwrap();
    assert_eq!(d.payload(), b"not dead");
    d.dead_letter("also").unwrap();
    assert_eq!(dlq.requeue_all().unwrap(), 2);
    assert_eq!(drain(&q), [b"flaky".to_vec(), b"not dead".to_vec()]);
    // A DLQ is an ordinary queue: it can be popped and acked.
    q.push(b"last").unwrap();
    q.try_pop().unwrap().unwrap().dead_letter("bye").unwrap();
    let d = dlq.try_pop().unwrap().unwrap();
    assert_eq!(d.payload(), b"last");
    d.ack().unwrap();
    assert!(dlq.peek(10).unwrap().is_empty());
}

#[test]
fn leases_that_run_out_count_as_attempts_and_end_in_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    q.set_config(&QueueConfig::new().max_attempts(2).visibility_timeout(10 * SEC)).unwrap();
    q.push(b"slow").unwrap();
    for attempt in 1..=2 {
        let d = q.try_pop().unwrap().unwrap();
        assert_eq!(d.attempt(), attempt);
        std::mem::forget(d); // the consumer vanished without settling
        clock.advance(11 * SEC);
    }
    assert!(q.try_pop().unwrap().is_none(), "out of attempts: dead-lettered, not delivered");
    let dead = w.queue("q.dlq").unwrap().peek(10).unwrap();
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].dead_lettered_from, Some(("q".to_string(), DeadReason::MaxAttempts)));
}

#[test]
fn attempts_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    for attempt in 1..=3 {
        let w = open(dir.path(), &clock);
        let q = w.queue("q").unwrap();
        if attempt == 1 {
            q.push(b"job").unwrap();
        }
        let d = q.try_pop().unwrap().unwrap();
        assert_eq!(d.attempt(), attempt);
        std::mem::forget(d);
        w.close().unwrap();
    }
}

#[test]
fn a_full_queue_rejects_or_dead_letters_its_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    q.set_config(&QueueConfig::new().max_len(2, Overflow::Reject)).unwrap();
    q.push(b"1").unwrap();
    q.push(b"2").unwrap();
    let err = q.push(b"3").unwrap_err();
    assert!(matches!(err, Error::QueueFull { max_len: 2, .. }), "{err}");
    assert_eq!(q.depth().unwrap().ready, 2, "the rejected push stored nothing");
    // Leased messages do not count.
    let d = q.try_pop().unwrap().unwrap();
    q.push(b"3").unwrap();
    d.ack().unwrap();
    q.set_config(&QueueConfig::new().max_len(2, Overflow::DeadLetterOldest)).unwrap();
    q.push(b"4").unwrap();
    q.push(b"5").unwrap();
    assert_eq!(drain(&q), [b"4".to_vec(), b"5".to_vec()]);
    let dead: Vec<_> = w.queue("q.dlq").unwrap().peek(10).unwrap();
    let payloads: Vec<&[u8]> = dead.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"2"[..], b"3"]);
    assert!(dead.iter().all(|p| p.dead_lettered_from == Some(("q".into(), DeadReason::Overflow))));
}

#[test]
fn config_is_durable_changeable_and_outlives_the_segments_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let cfg = QueueConfig::new()
        .max_attempts(7)
        .backoff(Backoff::exponential(SEC, 60 * SEC))
        .dead_letters(DeadLetters::To("graveyard".into()))
        .max_len(1000, Overflow::DeadLetterOldest)
        .ttl(3600 * SEC, OnExpiry::DeadLetter)
        .dedup_window(5 * SEC)
        .visibility_timeout(90 * SEC);
    {
        let w = open(dir.path(), &clock);
        let q = w.queue("q").unwrap();
        assert_eq!(q.config().unwrap(), QueueConfig::new());
        q.set_config(&cfg).unwrap();
        // Fill and settle several segments, so the one with the config record is deleted.
        let other = w.queue("churn").unwrap();
        for _ in 0..8 {
            other.push_batch((0..100).map(|i| vec![i as u8; 400])).unwrap();
            while let Some(d) = other.try_pop().unwrap() {
                d.ack_with(wharf::Durability::Immediate).unwrap();
            }
            wharf::Wharf::sync(&w).unwrap();
        }
        w.close().unwrap();
    }
    let w = open(dir.path(), &clock);
    assert_eq!(w.queue("q").unwrap().config().unwrap(), cfg);
    let bad = QueueConfig::new().max_attempts(0);
    assert!(matches!(w.queue("q").unwrap().set_config(&bad), Err(Error::InvalidOption(_))));
    let bad = QueueConfig::new().dead_letters(DeadLetters::To("no spaces".into()));
    assert!(matches!(w.queue("q").unwrap().set_config(&bad), Err(Error::InvalidName(_))));
    w.queue("q").unwrap().set_config(&QueueConfig::new()).unwrap();
    w.close().unwrap();
    let w = open(dir.path(), &clock);
    assert_eq!(w.queue("q").unwrap().config().unwrap(), QueueConfig::new());
}

#[test]
fn dead_letters_to_nowhere_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let w = open(dir.path(), &clock);
    let q = w.queue("q").unwrap();
    q.set_config(&QueueConfig::new().dead_letters(DeadLetters::Drop)).unwrap();
    assert!(q.dead_letter_queue().unwrap().is_none());
    q.push(b"x").unwrap();
    q.try_pop().unwrap().unwrap().dead_letter("bad input").unwrap();
    assert_eq!(q.stats().unwrap().dead_lettered, 1);
    assert_eq!(w.queue_names(), ["q"]);
    w.close().unwrap();
    let w = open(dir.path(), &clock);
    assert!(w.queue("q").unwrap().try_pop().unwrap().is_none());
}
