//! Salvage: a store damaged file by file, and record by record in a sealed segment, opens with
//! `salvage(true)` keeping exactly its intact unsettled messages (payload-identical), names
//! exactly what it lost, and lists as "may be redelivered" the acked messages whose ack was lost;
//! a healthy store is opened as it is, and `salvage_into` of a healthy store is an exact copy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wharf::{
    Error, Fate, IdSpan, MessageId, NackOptions, PushOptions, QueueConfig, SalvageReport, Wharf,
    WharfBuilder,
};

use crate::{copy_store, payload, segments, small};

/// Small segments, checkpoints only when the workload takes them, leases that outlive a test.
fn manual() -> WharfBuilder {
    small()
        .checkpoint_every_bytes(u64::MAX)
        .checkpoint_interval(None)
        .visibility_timeout(Duration::from_secs(3600))
}

/// What the workload pushed and settled.
#[derive(Debug, Default, Clone)]
struct Ledger {
    /// Every push: its queue now (a dead letter's is the dead-letter queue) and its payload.
    pushed: BTreeMap<MessageId, (String, Vec<u8>)>,
    settled: BTreeSet<MessageId>,
    /// Moved into `state.redb` by the workload's checkpoints.
    relocated: BTreeSet<MessageId>,
}

impl Ledger {
    fn unsettled(&self) -> BTreeSet<MessageId> {
        self.pushed.keys().filter(|id| !self.settled.contains(id)).copied().collect()
    }
}

/// A store with relocated stragglers (one retried with an error, one delayed with a dedup key,
/// one dead-lettered) in `state.redb`, its first segments deleted, then a few segments of
/// mixed traffic in two queues (priorities, dedup keys, delays, retries, dead letters, acks),
/// closed cleanly.
fn workload(dir: &Path) -> Ledger {
    let mut l = Ledger::default();
    let w = manual().open(dir).unwrap();
    let jobs = w.queue("jobs").unwrap();
    jobs.set_config(&QueueConfig::new().max_attempts(5)).unwrap();
    let mail = w.queue("mail").unwrap();
    let dlq = jobs.dead_letter_queue().unwrap().unwrap();
    let push = |l: &mut Ledger, q: &wharf::Queue, i: usize, opts: PushOptions| {
        let p = payload(i, if i < 300 { 200 } else { 700 + i % 90 });
        let id = q.push_with(&p, opts).unwrap();
        l.pushed.insert(id, (q.name().to_owned(), p));
        id
    };
    let s1 = push(&mut l, &jobs, 1_000_000, PushOptions::new());
    let retry = NackOptions::new().error("smtp 421").delay(Duration::from_secs(3600));
    jobs.pop().unwrap().nack_with(retry).unwrap();
    let later = PushOptions::new().delay(Duration::from_secs(3600)).dedup_key("once");
    let s2 = push(&mut l, &jobs, 1_000_001, later);
    let s3 = push(&mut l, &jobs, 1_000_002, PushOptions::new());
    let d = jobs.pop().unwrap();
    assert_eq!(d.id(), s3, "s1 waits for its retry");
    d.dead_letter("bad input").unwrap();
    l.pushed.get_mut(&s3).unwrap().0 = dlq.name().to_owned();
    for i in 0..300 {
        push(&mut l, &mail, i, PushOptions::new());
        let d = mail.pop().unwrap();
        l.settled.insert(d.id());
        d.ack().unwrap();
    }
    let a = w.checkpoint().unwrap();
    let b = w.checkpoint().unwrap();
    assert_eq!(a.relocated + b.relocated, 3, "{a:?} {b:?}");
    l.relocated.extend([s1, s2, s3]);
    // Records about a relocated message after the checkpoint: a delivery and a release.
    let d = dlq.pop().unwrap();
    assert_eq!(d.id(), s3);
    d.nack().unwrap();
    for i in 300..700 {
        let q = if i % 3 == 0 { &mail } else { &jobs };
        if i % 100 == 50 {
            // A batch: a group of records, applied all or nothing.
            let batch: Vec<Vec<u8>> = (0..6).map(|k| payload(10_000 + i * 10 + k, 600)).collect();
            let ids = q.push_batch(batch.iter()).unwrap();
            for (id, p) in ids.into_iter().zip(batch) {
                l.pushed.insert(id, (q.name().to_owned(), p));
            }
        }
        let mut opts = PushOptions::new().priority((i % 4) as u8);
        if i % 10 == 0 {
            opts = opts.dedup_key(format!("key-{i}"));
        }
        if i % 17 == 0 {
            opts = opts.delay(Duration::from_secs(7200));
        }
        push(&mut l, q, i, opts);
        if i % 5 == 0 {
            continue; // stays unsettled
        }
        let Some(d) = q.try_pop().unwrap() else { continue };
        let id = d.id();
        match i % 13 {
            0 => d.nack_with(NackOptions::new().error(format!("failed {i}"))).unwrap(),
            1 if q.name() == "jobs" => {
                d.dead_letter("poison").unwrap();
                l.pushed.get_mut(&id).unwrap().0 = dlq.name().to_owned();
            }
            2 => d.nack().unwrap(),
            _ => {
                l.settled.insert(id);
                d.ack().unwrap();
            }
        }
    }
    w.close().unwrap();
    assert!(segments(dir).len() >= 4, "{:?}", segments(dir));
    l
}

/// The workload's store, made once and copied by each case.
fn master() -> &'static (tempfile::TempDir, Ledger) {
    static STORE: std::sync::OnceLock<(tempfile::TempDir, Ledger)> = std::sync::OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let l = workload(dir.path());
        (dir, l)
    })
}

/// A copy of the master store, its state database included.
fn copy() -> (tempfile::TempDir, Ledger) {
    let (dir, l) = master();
    let to = copy_store(dir.path());
    std::fs::copy(dir.path().join("state.redb"), to.path().join("state.redb")).unwrap();
    (to, l.clone())
}

/// One record of a segment file, as `docs/format.md` lays it out.
#[derive(Debug, Clone, Copy)]
struct Rec {
    off: usize,
    len: usize,
    kind: u8,
    /// Not the last record of its group (a batch).
    more: bool,
    /// The message it is about, if any.
    id: Option<MessageId>,
}

const PUSH: u8 = 1;
const ACK: u8 = 2;
const PUSH_EX: u8 = 8;

fn records(seg: &Path) -> Vec<Rec> {
    let b = std::fs::read(seg).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut off = 64;
    while off + 24 <= b.len() {
        let len = u32_at(off);
        if len == 0 {
            break;
        }
        let kind = b[off + 20];
        let id = matches!(kind, 1..=4 | 8..=11)
            .then(|| u64::from_le_bytes(b[off + 28..off + 36].try_into().unwrap()));
        let id = id.map(|id| {
            // The ledger's ids, by value.
            *master().1.pushed.keys().find(|m| m.get() == id).unwrap_or_else(|| any_id(id))
        });
        out.push(Rec { off, len, kind, more: b[off + 21] & 1 != 0, id });
        off += len;
        if kind == 7 {
            break;
        }
    }
    out
}

/// A `MessageId` of a value the ledger does not know (from a salvaged store's own pushes).
fn any_id(id: u64) -> &'static MessageId {
    panic!("record about unknown message {id:x}")
}

/// Every message of every queue of the store at `dir` (opened as it is), by id: queue, payload.
fn contents(w: &Wharf) -> BTreeMap<MessageId, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for name in w.queue_names() {
        for p in w.queue(&name).unwrap().peek(usize::MAX).unwrap() {
            assert!(out.insert(p.id, (name.clone(), p.payload)).is_none());
        }
    }
    out
}

/// Whether the report accounts for `id` as lost: by name, or inside a range's ids.
fn accounted(r: &SalvageReport, id: MessageId) -> bool {
    r.lost_ids().any(|l| l == id)
        || r.lost_ranges.iter().any(|range| match range.ids {
            IdSpan::Exact { first, last } => first <= id && id <= last,
            IdSpan::Within { first, last } => first <= id && last.is_none_or(|l| id <= l),
            IdSpan::Unknown => true,
            _ => false,
        })
}

/// What a damage is expected to cost.
#[derive(Debug, Default)]
struct Expect {
    /// Unsettled messages whose push was damaged: not kept, accounted for in the report.
    gone: BTreeSet<MessageId>,
    /// Acked messages whose ack was damaged: kept, "may be redelivered".
    back: BTreeSet<MessageId>,
    /// Messages whose move to a dead-letter queue (or back) was damaged: kept where they were.
    moved: BTreeSet<MessageId>,
}

impl Expect {
    /// What damage to the records `recs` costs.
    fn of(recs: &[Rec], l: &Ledger) -> Expect {
        Expect {
            gone: pushes_unsettled(recs, l),
            back: acks_without_push(recs, l),
            moved: recs.iter().filter(|r| matches!(r.kind, 10 | 11)).filter_map(|r| r.id).collect(),
        }
    }
}

/// Opens `dir` with salvage and checks the result against the ledger: the messages kept are
/// exactly the unsettled ones but `gone` (damaged pushes) plus `back` (acked, their ack
/// damaged), payload-identical and in their queues; every one of `gone` is accounted for in the
/// report and every one of `back` is "may be redelivered"; nothing kept is listed lost.
/// `thorough`: also verify the salvaged store and reopen it strictly.
fn check_salvage(
    dir: &Path,
    l: &Ledger,
    e: &Expect,
    thorough: bool,
    what: &str,
) -> Option<SalvageReport> {
    let (gone, back) = (&e.gone, &e.back);
    let w = manual().salvage(true).open(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    let report = w.recovery_report().salvage.clone();
    let kept = contents(&w);
    w.close().unwrap();
    let unsettled = l.unsettled();
    let want: BTreeSet<MessageId> = unsettled.difference(gone).chain(back).copied().collect();
    let got: BTreeSet<MessageId> = kept.keys().copied().collect();
    assert_eq!(
        got,
        want,
        "{what}: kept {:?}, wanted {:?}\n{report:#?}",
        got.symmetric_difference(&want),
        ()
    );
    for (id, (queue, payload)) in &kept {
        let (q, p) = &l.pushed[id];
        assert!(p == payload, "{what}: {id}'s payload");
        assert!(q == queue || e.moved.contains(id), "{what}: {id} in {queue}, not {q}");
    }
    if let Some(r) = &report {
        assert_eq!(r.kept, kept.len() as u64, "{what}");
        for id in gone {
            assert!(accounted(r, *id), "{what}: lost {id} not in the report\n{r}");
        }
        for id in r.lost_ids() {
            assert!(!kept.contains_key(&id), "{what}: {id} listed lost but kept");
        }
        let maybe: BTreeSet<MessageId> = r.may_be_redelivered().collect();
        assert!(back.is_subset(&maybe), "{what}: {back:?} not all in {maybe:?}");
        assert!(maybe.iter().all(|id| kept.contains_key(id)), "{what}");
        let damaged = r.damaged_dir.as_ref().expect("moved aside");
        assert!(damaged.join("salvage-report.txt").exists(), "{what}");
        assert!(damaged.join("log").is_dir(), "{what}");
        if !thorough {
            return report;
        }
        // The salvaged store is healthy and opens strictly.
        let v = Wharf::verify(dir).unwrap();
        assert!(v.is_healthy(), "{what}: {:#?}", v.problems);
        let again = manual().open(dir).unwrap();
        assert_eq!(contents(&again), kept, "{what}: reopened");
        assert!(again.recovery_report().salvage.is_none());
        // It goes on: a new message gets an id no message ever had.
        let id = again.queue("mail").unwrap().push(b"after salvage").unwrap();
        assert!(!l.pushed.contains_key(&id) && l.pushed.keys().all(|old| *old < id), "{what}");
        again.close().unwrap();
    } else {
        assert!(
            gone.is_empty() && back.is_empty(),
            "{what}: nothing salvaged, yet {gone:?} {back:?}"
        );
    }
    report
}

/// Whether a strict open refuses the store at `dir` with a corruption error.
fn strict_refuses(dir: &Path) -> bool {
    match manual().open(dir) {
        Err(Error::Corrupted(_)) => true,
        Err(e) => panic!("strict open: {e}"),
        Ok(w) => {
            w.close().unwrap();
            false
        }
    }
}

#[test]
fn a_healthy_store_opens_as_it_is_and_nothing_moves() {
    let (dir, l) = copy();
    let before: Vec<PathBuf> = segments(dir.path());
    check_salvage(dir.path(), &l, &Expect::default(), true, "healthy");
    let after = segments(dir.path());
    assert_eq!(before, after);
    assert!(!std::fs::read_dir(dir.path())
        .unwrap()
        .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with("damaged-") }));
}

#[test]
fn salvage_into_of_a_healthy_store_is_an_exact_copy_and_leaves_it_untouched() {
    let (dir, l) = copy();
    let image = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        for e in walk(d) {
            m.insert(e.strip_prefix(d).unwrap().display().to_string(), std::fs::read(&e).unwrap());
        }
        m
    };
    let before = image(dir.path());
    let new = tempfile::tempdir().unwrap();
    let into = new.path().join("copy");
    let report = Wharf::salvage_into(dir.path(), &into).unwrap();
    assert!(report.is_lossless(), "{report}");
    assert_eq!(report.kept, l.unsettled().len() as u64);
    assert_eq!(image(dir.path()), before, "the damaged store is left as it was");
    // Every property an open shows is the same (a relocated message keeps its dedup key now).
    let a = manual().open(dir.path()).unwrap();
    let b = manual().open(&into).unwrap();
    assert_eq!(a.queue_names(), b.queue_names());
    for name in a.queue_names() {
        let pa = a.queue(&name).unwrap().peek(usize::MAX).unwrap();
        let pb = b.queue(&name).unwrap().peek(usize::MAX).unwrap();
        assert_eq!(pa.len(), pb.len(), "{name}");
        for (x, y) in pa.iter().zip(&pb) {
            let strip = |p: &wharf::Peeked| {
                (p.id, p.payload.clone(), p.attempts, p.priority, p.due, p.last_error.clone())
            };
            assert_eq!(strip(x), strip(y), "{name}");
            assert_eq!(x.dead_lettered_from, y.dead_lettered_from);
            assert_eq!((x.pushed_at, x.expires), (y.pushed_at, y.expires));
            if !l.relocated.contains(&x.id) {
                assert_eq!(x.dedup_key, y.dedup_key);
            }
        }
        assert_eq!(
            a.queue(&name).unwrap().depth().unwrap(),
            b.queue(&name).unwrap().depth().unwrap()
        );
    }
    // Dedup keys hold in the copy: a second push with a live key stores nothing.
    let jobs = b.queue("jobs").unwrap();
    let again = jobs.push_with(b"dup", PushOptions::new().dedup_key("once")).unwrap();
    assert!(l.relocated.contains(&again), "the relocated message's key holds");
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.file_name().unwrap() != "LOCK" {
            out.push(p);
        }
    }
    out
}

/// Acked messages whose ack is among `recs` but whose push is not: they come back.
fn acks_without_push(recs: &[Rec], l: &Ledger) -> BTreeSet<MessageId> {
    let pushed: BTreeSet<MessageId> =
        recs.iter().filter(|r| matches!(r.kind, PUSH | PUSH_EX)).filter_map(|r| r.id).collect();
    recs.iter()
        .filter(|r| r.kind == ACK)
        .filter_map(|r| r.id)
        .filter(|id| !pushed.contains(id) && l.settled.contains(id))
        .collect()
}

/// Unsettled messages whose push is among `recs`.
fn pushes_unsettled(recs: &[Rec], l: &Ledger) -> BTreeSet<MessageId> {
    recs.iter()
        .filter(|r| matches!(r.kind, PUSH | PUSH_EX))
        .filter_map(|r| r.id)
        .filter(|id| !l.settled.contains(id))
        .collect()
}

#[test]
fn each_file_missing_or_garbled_in_turn() {
    let n = segments(master().0.path()).len();
    for i in 0..n {
        let (dir, l) = copy();
        let seg = segments(dir.path())[i].clone();
        let recs = records(&seg);
        std::fs::remove_file(&seg).unwrap();
        let what = format!("segment {} missing", seg.display());
        let refused = strict_refuses(dir.path());
        // A spare made ahead of time holds no record: nothing is lost without it.
        assert!(refused || recs.is_empty(), "{what}");
        check_salvage(dir.path(), &l, &Expect::of(&recs, &l), true, &what);
    }

    // No mark: the store was simply not closed cleanly; nothing is lost.
    let (dir, l) = copy();
    std::fs::remove_file(dir.path().join("log/mark")).unwrap();
    assert!(!strict_refuses(dir.path()));
    let r = check_salvage(dir.path(), &l, &Expect::default(), true, "mark missing");
    assert!(r.is_none());

    // A garbled mark: it only ever said where durable data ended; nothing is lost.
    let (dir, l) = copy();
    let mark = dir.path().join("log/mark");
    let mut bytes = std::fs::read(&mark).unwrap();
    bytes[20] ^= 1;
    bytes[84] ^= 1;
    std::fs::write(&mark, bytes).unwrap();
    assert!(strict_refuses(dir.path()));
    let r = check_salvage(dir.path(), &l, &Expect::default(), true, "mark garbled").unwrap();
    assert!(r.is_lossless(), "{r}");

    // A damaged segment header: its records still carry their positions; nothing is lost.
    let (dir, l) = copy();
    let seg = segments(dir.path())[1].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    assert!(strict_refuses(dir.path()));
    let r = check_salvage(dir.path(), &l, &Expect::default(), true, "header damaged").unwrap();
    assert!(r.is_lossless(), "{r}");
    assert!(r.problems.iter().any(|p| p.file == seg && p.offset == 0), "{r}");

    // A garbled state database: the relocated messages are lost, named where a later record
    // names them, else within the state database's range.
    let (dir, l) = copy();
    let state = dir.path().join("state.redb");
    let mut bytes = std::fs::read(&state).unwrap();
    for b in bytes.iter_mut().take(8192) {
        *b ^= 0x5a;
    }
    std::fs::write(&state, bytes).unwrap();
    assert!(strict_refuses(dir.path()));
    let e = Expect { gone: l.relocated.clone(), ..Expect::default() };
    let r = check_salvage(dir.path(), &l, &e, true, "state.redb garbled").unwrap();
    // Named by the records about it after the checkpoint, with its queue.
    let s3 = *l.pushed.keys().nth(2).unwrap(); // the third push: the relocated dead letter
    let named = r.lost.iter().find(|m| m.id == s3).expect("named");
    assert_eq!((named.fate, named.queue.as_deref()), (Fate::Lost, Some("jobs.dlq")), "{r}");
    assert!(r
        .lost_ranges
        .iter()
        .any(|x| x.file.ends_with("state.redb") && x.ids == IdSpan::Unknown));

    // A missing state database: the log's anchors say a checkpoint existed.
    let (dir, l) = copy();
    std::fs::remove_file(dir.path().join("state.redb")).unwrap();
    assert!(strict_refuses(dir.path()));
    let e = Expect { gone: l.relocated.clone(), ..Expect::default() };
    let r = check_salvage(dir.path(), &l, &e, true, "state.redb missing").unwrap();
    assert!(r
        .lost_ranges
        .iter()
        .any(|x| x.file.ends_with("state.redb") && x.ids == IdSpan::Unknown));
}

#[test]
fn a_flipped_byte_in_each_record_of_a_sealed_segment() {
    let (dir0, l) = copy();
    let segs = segments(dir0.path());
    // The sealed segment of the mixed traffic (pushes, deliveries, retries, dead letters,
    // acks) with the fewest records.
    let pick = (0..segs.len())
        .filter(|&i| {
            let r = records(&segs[i]);
            r.last().is_some_and(|x| x.kind == 7)
                && [ACK, 3, 9, 10].iter().all(|k| r.iter().any(|x| x.kind == *k))
                && r.iter().any(|x| x.more)
                && !pushes_unsettled(&r, &l).is_empty()
        })
        .min_by_key(|&i| records(&segs[i]).len())
        .expect("a sealed segment with traffic");
    let recs = records(&segs[pick]);
    let mut cases = 0;
    for (k, rec) in recs.iter().enumerate() {
        let (dir, l) = copy();
        let seg = segments(dir.path())[pick].clone();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[rec.off + rec.len / 2] ^= 0x10;
        std::fs::write(&seg, bytes).unwrap();
        let what = format!("record {k} ({rec:?}) of {}", seg.display());
        let thorough = k % 16 == 0;
        if thorough {
            assert!(strict_refuses(dir.path()), "{what}");
        }
        let e = Expect::of(std::slice::from_ref(rec), &l);
        // Salvage runs only because the strict open inside it refuses the store.
        let r = check_salvage(dir.path(), &l, &e, thorough, &what).expect("salvaged");
        // Bytes that still read as one record of a kind that settles nothing (only the
        // checksum fails: the flip missed its length, position and kind) cannot have held an
        // ack: nothing "may be redelivered" because of them.
        let header_field = matches!(rec.len / 2, 0..4 | 8..16 | 20);
        if !matches!(rec.kind, ACK | 4) && !header_field {
            assert_eq!(r.may_be_redelivered().count(), 0, "{what}\n{r}");
        }
        // A damaged push between two intact pushes of one epoch is named exactly.
        if let Some(id) = e.gone.first() {
            assert!(r.lost.iter().any(|m| m.id == *id && m.fate == Fate::Lost), "{what}\n{r}");
        }
        cases += 1;
    }
    assert!(cases > 40, "{cases}");
}

#[test]
fn salvage_into_needs_an_empty_target_and_refuses_a_locked_store() {
    let (dir, _) = copy();
    let new = tempfile::tempdir().unwrap();
    std::fs::write(new.path().join("junk"), b"x").unwrap();
    assert!(matches!(Wharf::salvage_into(dir.path(), new.path()), Err(Error::InvalidOption(_))));
    let w = manual().open(dir.path()).unwrap();
    let other = tempfile::tempdir().unwrap();
    assert!(matches!(
        Wharf::salvage_into(dir.path(), other.path().join("x")),
        Err(Error::Locked(_))
    ));
    w.close().unwrap();
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to three random changes to the files of the store in `dir`.
fn damage(dir: &Path, rng: &mut Rng) -> String {
    let mut files: Vec<PathBuf> = walk(dir);
    files.sort();
    let mut done = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let f = files[rng.below(files.len())].clone();
        let Ok(mut bytes) = std::fs::read(&f) else { continue };
        let name = f.strip_prefix(dir).unwrap().display().to_string();
        match rng.below(6) {
            0 | 1 if !bytes.is_empty() => {
                let at = rng.below(bytes.len().min(1 << 16));
                bytes[at] ^= 1 << rng.below(8);
                done.push(format!("flip {name}@{at}"));
            }
            2 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                let len = (1 + rng.below(300)).min(bytes.len() - at);
                for b in &mut bytes[at..at + len] {
                    *b = rng.next() as u8;
                }
                done.push(format!("junk {name}@{at}+{len}"));
            }
            3 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                let len = rng.below(8192).min(bytes.len() - at);
                bytes[at..at + len].fill(0);
                done.push(format!("zero {name}@{at}+{len}"));
            }
            4 => {
                let len = rng.below(bytes.len() + 1);
                bytes.truncate(len);
                done.push(format!("truncate {name} to {len}"));
            }
            _ => {
                std::fs::remove_file(&f).unwrap();
                done.push(format!("remove {name}"));
                continue;
            }
        }
        std::fs::write(&f, bytes).unwrap();
    }
    done.join(", ")
}

#[test]
fn random_damage_is_salvaged_into_a_healthy_store_that_delivers_no_phantom() {
    let seed: u64 =
        std::env::var("WHARF_SALVAGE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut salvaged = 0;
    for case in 0..40 {
        let (dir, l) = copy();
        let what = format!("case {case} (seed {seed}): {}", damage(dir.path(), &mut rng));
        let w = match manual().salvage(true).open(dir.path()) {
            Ok(w) => w,
            Err(e) => panic!("{what}: {e}"),
        };
        salvaged += usize::from(w.recovery_report().salvage.is_some());
        let kept = contents(&w);
        let report = w.recovery_report().salvage.clone();
        w.close().unwrap();
        for (id, (_, payload)) in &kept {
            let known = l.pushed.get(id).map(|(_, p)| p);
            assert_eq!(known, Some(payload), "{what}: a phantom {id}");
        }
        if let Some(r) = &report {
            for id in r.lost_ids() {
                assert!(!kept.contains_key(&id), "{what}: {id} lost and kept");
            }
            // Every unsettled message is kept or accounted for.
            for id in l.unsettled() {
                assert!(kept.contains_key(&id) || accounted(r, id), "{what}: {id} vanished\n{r}");
            }
        }
        let v = Wharf::verify(dir.path()).unwrap();
        assert!(v.is_healthy(), "{what}: {:#?}", v.problems);
    }
    assert!(salvaged > 10, "{salvaged}");
}

/// A damaged `Acks` record (format 5) may have held the acks of every message it named:
/// salvage keeps them (their pushes are intact) and lists each as "may be redelivered" (as it
/// does every message whose last record precedes the damage), while messages acked by intact
/// records stay gone and unsettled ones are kept.
#[test]
fn a_damaged_batch_ack_brings_its_messages_back_as_may_be_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let w = manual().open(dir.path()).unwrap();
    let q = w.queue("jobs").unwrap();
    let ids = q.push_batch((0..20).map(|i| payload(i, 100))).unwrap();
    let mut got = q.pop_batch(12, Duration::ZERO).unwrap();
    let singly = got.split_off(10);
    let batch: Vec<MessageId> = got.iter().map(wharf::Delivery::id).collect();
    assert_eq!(q.ack_many_with(got, wharf::Durability::Immediate).unwrap().acked, 10);
    for d in singly {
        d.ack_with(wharf::Durability::Immediate).unwrap();
    }
    q.push(payload(99, 100)).unwrap(); // durable records after the batch ack
    drop(q);
    w.close().unwrap();
    // Intact, the batch ack holds in a salvaged copy: only the never-acked messages are kept.
    let copy = tempfile::tempdir().unwrap();
    let report = Wharf::salvage_into(dir.path(), copy.path().join("s")).unwrap();
    assert!(report.is_lossless(), "{report}");
    let w = manual().open(copy.path().join("s")).unwrap();
    let kept: BTreeSet<MessageId> = contents(&w).keys().copied().collect();
    assert_eq!(kept.len(), 9, "ids 12..20 and the last push");
    assert!(ids[..12].iter().all(|id| !kept.contains(id)), "acked messages stay acked");
    w.close().unwrap();
    // The one `Acks` record (kind 14) of the first segment, by walking its records.
    let seg = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut off = 64;
    let at = loop {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        assert!(len > 0, "no batch ack in the first segment");
        if bytes[off + 20] == 14 {
            break off + len / 2;
        }
        off += len;
    };
    bytes[at] ^= 0x10; // inside its ids
    std::fs::write(&seg, bytes).unwrap();
    assert!(strict_refuses(dir.path()), "mid-log damage is refused by a strict open");
    let w = manual().salvage(true).open(dir.path()).unwrap();
    let report = w.recovery_report().salvage.clone().expect("salvaged");
    let kept: BTreeSet<MessageId> = contents(&w).keys().copied().collect();
    let maybe: BTreeSet<MessageId> = report.may_be_redelivered().collect();
    for id in &batch {
        assert!(kept.contains(id) && maybe.contains(id), "{id}: its ack was damaged\n{report}");
    }
    for id in &ids[10..12] {
        assert!(!kept.contains(id), "{id} was acked by an intact record");
    }
    for id in &ids[12..] {
        assert!(kept.contains(id), "{id} was never acked");
    }
    assert_eq!(kept.len(), 10 + 8 + 1, "{report}");
    w.close().unwrap();
}
