//! A queue's run: past its index window, plain pushes are counted instead of indexed and read
//! back from the log as the queue drains. Everything a queue promises (push order within a
//! priority, priorities first, delays, redelivery, dead letters, peeks, reopen after a crash)
//! holds across the window's edge; the crash-point and model tests run with a small window
//! too.

use std::time::Duration;

use crate::copy_store;
use wharf::{Durability, NackOptions, PushOptions, Wharf, WharfBuilder};

fn windowed(window: usize) -> WharfBuilder {
    Wharf::builder()
        .segment_bytes(64 << 10)
        .min_segment_bytes(64 << 10)
        .index_window(window)
        .push_durability(Durability::None)
}

fn n(d: &wharf::Delivery) -> u32 {
    u32::from_le_bytes(d.payload()[..4].try_into().unwrap())
}

#[test]
fn a_backlog_past_the_window_drains_in_push_order() {
    let dir = tempfile::tempdir().unwrap();
    let w = windowed(8).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    for i in 0..3_000u32 {
        q.push(i.to_le_bytes()).unwrap();
    }
    assert_eq!(q.depth().unwrap().ready, 3_000);
    assert_eq!(q.payload_bytes().unwrap(), 12_000);
    // Interleave more pushes with the pops: they join the run behind what is there.
    let mut got = Vec::new();
    let mut take = || {
        let d = q.try_pop().unwrap().unwrap();
        got.push(n(&d));
        d.ack().unwrap();
    };
    for i in 3_000..4_000u32 {
        take();
        q.push(i.to_le_bytes()).unwrap();
        take();
    }
    while let Some(d) = q.try_pop().unwrap() {
        got.push(n(&d));
        d.ack().unwrap();
    }
    assert_eq!(got, (0..4_000).collect::<Vec<_>>());
    assert_eq!(q.depth().unwrap().ready, 0);
}

#[test]
fn options_and_redeliveries_keep_their_places_among_run_members() {
    let dir = tempfile::tempdir().unwrap();
    let w = windowed(4).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    for i in 0..100u32 {
        q.push(i.to_le_bytes()).unwrap();
    }
    // A higher priority goes first; a delayed message waits; both are indexed.
    q.push_with(1_000u32.to_le_bytes(), PushOptions::new().priority(5)).unwrap();
    q.push_with(2_000u32.to_le_bytes(), PushOptions::new().delay(Duration::from_secs(3_600)))
        .unwrap();
    assert_eq!(q.depth().unwrap().ready, 101);
    assert_eq!(q.depth().unwrap().delayed, 1);
    let first = q.try_pop().unwrap().unwrap();
    assert_eq!(n(&first), 1_000);
    first.ack().unwrap();
    // A released message (an early id) comes back before the later run members.
    let a = q.try_pop().unwrap().unwrap();
    let b = q.try_pop().unwrap().unwrap();
    assert_eq!((n(&a), n(&b)), (0, 1));
    b.nack_with(NackOptions::new()).unwrap();
    let again = q.try_pop().unwrap().unwrap();
    assert_eq!((n(&again), again.attempt()), (1, 2));
    // Peeks see the run members in order, without taking them.
    let peeked: Vec<u32> = q
        .peek(5)
        .unwrap()
        .iter()
        .map(|p| u32::from_le_bytes(p.payload[..4].try_into().unwrap()))
        .collect();
    assert_eq!(peeked, [2, 3, 4, 5, 6]);
    let ids = q.waiting_ids().unwrap();
    assert_eq!(ids.len(), 98 + 1, "98 ready and the delayed one");
    let deep = q.peek_id(ids[90]).unwrap().unwrap();
    assert_eq!(u32::from_le_bytes(deep.payload[..4].try_into().unwrap()), 92);
    assert_eq!(q.oldest().unwrap().unwrap().id, a.id());
    std::mem::forget((a, again));
}

#[test]
fn a_reopen_after_a_crash_restores_the_run_and_its_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let builder = || windowed(16).checkpoint_every_bytes(u64::MAX).checkpoint_interval(None);
    let crashed = {
        let w = builder().open(dir.path()).unwrap();
        let q = w.queue("q").unwrap();
        let batch: Vec<[u8; 4]> = (0..2_000u32).map(u32::to_le_bytes).collect();
        q.push_batch(&batch).unwrap();
        // Deliver 500 (one of them twice), settle 300 of them.
        for i in 0..500 {
            let d = q.try_pop().unwrap().unwrap();
            if i == 400 {
                d.nack().unwrap();
                std::mem::forget(q.try_pop().unwrap().unwrap());
            } else if i < 300 {
                d.ack().unwrap();
            } else {
                std::mem::forget(d); // its lease is held until the crash
            }
        }
        w.sync().unwrap();
        copy_store(dir.path()) // the files as a crash would leave them: nothing closed
    };
    let w = builder().open(crashed.path()).unwrap();
    let q = w.queue("q").unwrap();
    assert_eq!(q.depth().unwrap().ready, 1_700);
    let mut got = Vec::new();
    while let Some(d) = q.try_pop().unwrap() {
        let i = n(&d);
        let want_attempt = match i {
            400 => 3,
            300..500 => 2,
            _ => 1,
        };
        assert_eq!(d.attempt(), want_attempt, "message {i}");
        got.push(i);
        d.ack().unwrap();
    }
    assert_eq!(got, (300..2_000).collect::<Vec<_>>());
}

#[test]
fn a_run_spans_segments_that_are_deleted_behind_it_and_purge_empties_it() {
    let dir = tempfile::tempdir().unwrap();
    let w = windowed(2).checkpoint_every_bytes(128 << 10).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let other = w.queue("other").unwrap();
    let payload = |i: u32| {
        let mut p = i.to_le_bytes().to_vec();
        p.resize(300, 7);
        p
    };
    for i in 0..2_000u32 {
        q.push(payload(i)).unwrap();
        other.push(b"x").unwrap();
    }
    for i in 0..1_500u32 {
        let d = q.try_pop().unwrap().unwrap();
        assert_eq!(n(&d), i);
        d.ack_with(Durability::Immediate).unwrap();
        if i % 2 == 0 {
            other.try_pop().unwrap().unwrap().ack().unwrap();
        }
    }
    w.checkpoint().unwrap();
    let held = q.try_pop().unwrap().unwrap();
    assert_eq!(n(&held), 1_500);
    assert_eq!(q.purge().unwrap(), 499);
    assert_eq!(q.depth().unwrap().ready, 0);
    std::mem::forget(held);
    drop(q);
    drop(other);
    w.close().unwrap();
    let w = windowed(2).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    assert_eq!(q.depth().unwrap().ready, 1, "the one in flight at close");
    assert_eq!(w.queue("other").unwrap().depth().unwrap().ready, 1_250);
}

#[test]
fn overflow_dead_letters_the_run_head() {
    let dir = tempfile::tempdir().unwrap();
    let w = windowed(4).open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    q.set_config(&wharf::QueueConfig::default().max_len(50, wharf::Overflow::DeadLetterOldest))
        .unwrap();
    for i in 0..60u32 {
        q.push(i.to_le_bytes()).unwrap();
    }
    let dlq = w.queue("q.dlq").unwrap();
    let mut dead = Vec::new();
    while let Some(d) = dlq.try_pop().unwrap() {
        dead.push(n(&d));
        d.ack().unwrap();
    }
    assert_eq!(dead, (0..10).collect::<Vec<_>>());
    assert_eq!(n(&q.try_pop().unwrap().unwrap()), 10);
}
