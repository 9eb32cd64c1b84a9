//! Soak: a long run of pushes (single and batched), pops (single and batched), acks and nacks
//! on 1 MiB segments, with the store closed and reopened every 100,000 messages and synced now
//! and then. Every message must be delivered in order and acked exactly once, never delivered
//! again after an ack that returned `Ok`, with its payload, id and attempt number; and the
//! log's directory must stay bounded: segments are created and deleted all along, and at every
//! reopen and at the end only a few are left. Checkpoints are taken on their own and
//! explicitly (about every 30,000 messages), and every 50,000 messages two stragglers are left
//! in another queue (one delayed for a day, one dead letter): they are relocated into
//! `state.redb` instead of pinning segments, and are all still there at the end.
//!
//! N is 1,000,000 messages, in a debug build too (19-23 s on the project's 2-core VM; 3.6 s
//! with `--release`). `WHARF_SOAK_N` sets another (more, with `--release`, for the long tier).

use std::path::Path;
use std::time::{Duration, Instant};

use wharf::{Durability, PushOptions, Queue, Wharf};

use crate::{payload, segments, LONG};

const SEG: u64 = 1 << 20;
const REOPEN_EVERY: usize = 100_000;
const SYNC_EVERY: usize = 25_000;
/// At most this many messages wait (pushed, not yet delivered), carried over every reopen.
const BACKLOG: usize = 2_000;
/// Segment files left once the background thread caught up: the active one, two spares, and
/// those holding the backlog (measured: at most 4), with margin.
const MAX_SEGMENTS: u64 = 6;
/// Room for the state database (`state.redb`), counted in the store's disk bytes.
const STATE_ALLOWANCE: u64 = 2 << 20;
/// Every this many messages a straggler is left behind in other queues: one delayed for a day
/// and one dead letter. They would pin their segments if checkpoints did not relocate them.
const STRAGGLER_EVERY: usize = 50_000;
/// An explicit checkpoint about this often (the checkpointer thread takes others on its own).
const CHECKPOINT_EVERY: usize = 30_000;

fn soak_n() -> usize {
    std::env::var("WHARF_SOAK_N").map_or(1_000_000, |n| n.parse().expect("WHARF_SOAK_N: a number"))
}

/// The soak's time limit: 300 s per million messages, which take about 20 s on the project's
/// 2-core VM.
fn soak_limit() -> Duration {
    Duration::from_secs(300).mul_f64((soak_n() as f64 / 1e6).max(1.0))
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True once in `n` times.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The payload length of message `i`: mostly small, now and then 4 KiB.
fn len_of(i: usize) -> usize {
    if i.is_multiple_of(997) {
        4096
    } else {
        17 + (i * 7919) % 240
    }
}

/// The payload of message `i`: its number, then letters (the bytes of `crate::payload`, made
/// without a loop per byte, which a debug build would feel a million times over).
fn payload_of(i: usize) -> Vec<u8> {
    let mut p = format!("message-{i:08}-").into_bytes();
    p.extend_from_slice(&letters()[p.len()..len_of(i)]);
    p
}

/// `letters()[j]` is the byte at position `j` of every payload past its number.
fn letters() -> &'static [u8] {
    static LETTERS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LETTERS.get_or_init(|| (0..4096).map(|j| b'a' + (j % 26) as u8).collect())
}

/// What the run expects, message by message.
struct Expect {
    n: usize,
    pushed: usize,
    ids: Vec<u64>,
    acked: Vec<bool>,
    attempts: Vec<u32>,
    /// The next message whose first delivery is due (FIFO).
    next_first: usize,
    acks: usize,
    nacks: u64,
    /// Nacked messages not delivered again yet.
    retries: usize,
    deliveries: u64,
    immediate: u64,
}

impl Expect {
    /// Checks one delivery; returns its message index.
    fn delivered(&mut self, d: &wharf::Delivery) -> usize {
        let p = d.payload();
        assert!(p.len() >= 17 && p.starts_with(b"message-") && p[16] == b'-', "payload {p:?}");
        let i: usize = std::str::from_utf8(&p[8..16]).ok().and_then(|s| s.parse().ok()).unwrap();
        assert!(i < self.pushed, "message {i} delivered before it was pushed");
        assert_eq!(p.len(), len_of(i), "payload length of message {i}");
        assert!(p[17..] == letters()[17..p.len()], "payload of message {i}");
        assert_eq!(d.id().get(), self.ids[i], "id of message {i}");
        assert!(!self.acked[i], "message {i} delivered again after its ack returned Ok");
        if self.attempts[i] == 0 {
            assert_eq!(i, self.next_first, "first deliveries out of push order");
            self.next_first += 1;
        } else {
            self.retries -= 1;
        }
        self.attempts[i] += 1;
        assert_eq!(d.attempt(), self.attempts[i], "attempt of message {i}");
        self.deliveries += 1;
        i
    }
}

/// Pushes one chunk (a single message or a batch), mostly written behind, now and then durable.
fn push_chunk(q: &Queue, e: &mut Expect, rng: &mut Rng) {
    let k = if rng.one_in(4) { 1 + rng.below(64) } else { 1 };
    let k = k.min(e.n - e.pushed);
    let first = e.pushed;
    let payloads: Vec<Vec<u8>> = (first..first + k).map(payload_of).collect();
    let opts = if rng.one_in(500) {
        e.immediate += 1;
        PushOptions::new().durability(Durability::Immediate)
    } else {
        PushOptions::new()
    };
    let ids = if k == 1 && rng.one_in(2) {
        vec![q.push_with(&payloads[0], opts).unwrap()]
    } else {
        q.push_batch_with(&payloads, opts).unwrap()
    };
    assert_eq!(ids.len(), k);
    for id in ids {
        assert!(e.pushed == 0 || id.get() > e.ids[e.pushed - 1], "ids must increase");
        e.ids[e.pushed] = id.get();
        e.pushed += 1;
    }
}

/// Pops (one at a time or in batches) and settles until at most `backlog` messages wait; one
/// delivery in 100 is nacked (ready again at once) instead of acked.
fn consume(q: &Queue, e: &mut Expect, rng: &mut Rng, backlog: usize) {
    while e.pushed - e.next_first > backlog || (backlog == 0 && e.acks < e.pushed) {
        let got = if rng.one_in(2) {
            q.try_pop().unwrap().into_iter().collect()
        } else {
            q.pop_batch(1 + rng.below(32), Duration::ZERO).unwrap()
        };
        assert!(!got.is_empty(), "nothing to pop while {} messages wait", e.pushed - e.acks);
        for d in got {
            let i = e.delivered(&d);
            if e.attempts[i] < 3 && rng.one_in(100) {
                d.nack().unwrap();
                e.nacks += 1;
                e.retries += 1;
            } else {
                if rng.one_in(2000) {
                    e.immediate += 1;
                    d.ack_with(Durability::Immediate).unwrap();
                } else {
                    d.ack().unwrap();
                }
                e.acked[i] = true;
                e.acks += 1;
            }
        }
    }
}

fn open(dir: &Path) -> Wharf {
    Wharf::builder()
        .segment_bytes(SEG)
        .push_durability(Durability::None)
        .ack_durability(Durability::None)
        .open(dir)
        .unwrap()
}

/// Waits (up to `LONG`, which only a bug reaches) until the background thread has deleted the
/// settled segments: at most `MAX_SEGMENTS` segment files, and the store counts no more.
fn bounded(w: &Wharf, dir: &Path, when: &str) -> (usize, u64) {
    let deadline = Instant::now() + LONG;
    loop {
        let files = segments(dir).len();
        let bytes = w.stats().disk_bytes;
        if files as u64 <= MAX_SEGMENTS && bytes <= MAX_SEGMENTS * SEG + STATE_ALLOWANCE {
            return (files, bytes);
        }
        assert!(
            Instant::now() < deadline,
            "{when}: {files} segment files, {bytes} bytes: past {MAX_SEGMENTS} segments"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn soak_every_message_is_acked_exactly_once_and_the_directory_stays_bounded() {
    crate::with_deadline(
        soak_limit(),
        "soak_every_message_is_acked_exactly_once_and_the_directory_stays_bounded",
        || {
            let n = soak_n();
            assert!(n < 100_000_000, "payloads number messages with 8 digits");
            for i in [0, 1, 996, 997, 12_345] {
                assert_eq!(payload_of(i), payload(i, len_of(i)));
            }
            let start = Instant::now();
            let dir = tempfile::tempdir().unwrap();
            let mut e = Expect {
                n,
                pushed: 0,
                ids: vec![0; n],
                acked: vec![false; n],
                attempts: vec![0; n],
                next_first: 0,
                acks: 0,
                nacks: 0,
                retries: 0,
                deliveries: 0,
                immediate: 0,
            };
            let mut rng = Rng(0x50a4);
            let mut w = open(dir.path());
            let mut q = w.queue("soak").unwrap();
            let (mut stragglers, mut next_straggler, mut next_checkpoint) =
                (0, 0, CHECKPOINT_EVERY);
            let (mut checkpoints, mut relocated) = (0, 0);
            let (mut max_bytes, mut max_files) = (0u64, 0usize);
            let mut at_reopen = Vec::new();
            let (mut reopens, mut next_reopen, mut next_sync) = (0, REOPEN_EVERY, SYNC_EVERY);
            while e.pushed < n {
                push_chunk(&q, &mut e, &mut rng);
                consume(&q, &mut e, &mut rng, BACKLOG);
                max_bytes = max_bytes.max(w.stats().disk_bytes);
                if e.pushed >= next_straggler {
                    next_straggler += STRAGGLER_EVERY;
                    let later = w.queue("later").unwrap();
                    let day = PushOptions::new().delay(Duration::from_secs(86_400));
                    later.push_with(format!("delayed-{stragglers}"), day).unwrap();
                    later.push(format!("dead-{stragglers}")).unwrap();
                    let d = later.try_pop().unwrap().expect("the dead letter to be");
                    assert_eq!(d.payload(), format!("dead-{stragglers}").as_bytes());
                    d.dead_letter("straggler").unwrap();
                    stragglers += 1;
                }
                if e.pushed >= next_checkpoint {
                    next_checkpoint += CHECKPOINT_EVERY - 5_000 + rng.below(10_000);
                    let r = w.checkpoint().unwrap();
                    checkpoints += 1;
                    relocated += r.relocated;
                }
                if e.pushed >= next_sync {
                    next_sync += SYNC_EVERY;
                    w.sync().unwrap();
                    max_files = max_files.max(segments(dir.path()).len());
                }
                if e.pushed >= next_reopen && e.pushed < n {
                    next_reopen += REOPEN_EVERY;
                    // Every delivery is settled; the backlog waits through the reopen.
                    drop(q);
                    w.close().unwrap();
                    w = open(dir.path());
                    q = w.queue("soak").unwrap();
                    reopens += 1;
                    let depth = q.depth().unwrap();
                    let waiting = e.pushed - e.next_first + e.retries;
                    assert_eq!(
                        (depth.ready, depth.in_flight),
                        (waiting, 0),
                        "backlog after the reopen"
                    );
                    at_reopen.push(bounded(&w, dir.path(), &format!("reopen {reopens}")));
                }
            }
            consume(&q, &mut e, &mut rng, 0);
            assert!(q.try_pop().unwrap().is_none(), "a message left after all were acked");
            w.sync().unwrap();
            let lsn = w.stats().durable_lsn;
            let end = bounded(&w, dir.path(), "the end");
            drop(q);
            w.close().unwrap();
            // Nothing comes back after a last reopen either.
            let w = open(dir.path());
            assert!(w.queue("soak").unwrap().try_pop().unwrap().is_none(), "a message came back");
            let reopened = bounded(&w, dir.path(), "the last reopen");
            // Every straggler is still there, in order, with its payload.
            let payloads = |name: &str| -> Vec<Vec<u8>> {
                let q = w.queue(name).unwrap();
                q.peek(usize::MAX).unwrap().into_iter().map(|p| p.payload).collect()
            };
            let (later, dead) = (payloads("later"), payloads("later.dlq"));
            let want = |kind: &str| -> Vec<Vec<u8>> {
                (0..stragglers).map(|i| format!("{kind}-{i}").into_bytes()).collect()
            };
            assert_eq!(later, want("delayed"), "delayed stragglers");
            assert_eq!(dead, want("dead"), "dead-lettered stragglers");
            w.close().unwrap();

            assert_eq!(e.acks, n, "acked messages");
            assert!(e.acked.iter().all(|&a| a), "a message was never acked");
            assert_eq!(
                e.deliveries,
                n as u64 + e.nacks,
                "deliveries: one per message and per nack"
            );
            assert!(e.nacks > 0 && e.immediate > 0);
            // Every segment position the log passed through was a segment file; all but the last few
            // were deleted.
            let created = lsn.div_ceil(SEG);
            assert!(stragglers > 0 && checkpoints > 0);
            println!(
            "soak: {stragglers} × 2 stragglers, {checkpoints} explicit checkpoints ({relocated} \
             messages relocated by them, more by the checkpointer thread)"
        );
            println!(
            "soak: N = {n} in {:.1} s; {} nacks, {} durable calls, {reopens} reopens; segments: \
             about {created} created, {} deleted; max disk bytes seen {max_bytes} ({:.1} segments), \
             max files at a sync {max_files}; (files, bytes) at each reopen {at_reopen:?}, at the \
             end {end:?}, after the last reopen {reopened:?}",
            start.elapsed().as_secs_f64(),
            e.nacks,
            e.immediate,
            created.saturating_sub(end.0 as u64),
            max_bytes as f64 / SEG as f64,
        );
        },
    );
}
