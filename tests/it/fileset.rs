//! The file-set sweep (`CRASH-TESTING.md` 3.8): damage to the *set* of a store's files, not to
//! their bytes. Each file missing in turn (every segment, the first and the last included,
//! `log/mark`, `state.redb`, `LOCK`), two segments swapped, a segment renamed to another base,
//! a stale copy of an older `log/mark` or `state.redb` put back, a segment of another store.
//!
//! The stores are made by a scripted workload with checkpoints, relocated stragglers, deleted
//! segments, dead letters (a `nack` under `max_attempts(1)`), delays and dedup keys, and a
//! ledger of every push and every ack. After each damage, the open must refuse it with an
//! error naming a file of the damage (and `Wharf::verify` must call the store unhealthy), or
//! succeed with every unsettled message present and payload-identical, no acked message back
//! and nothing unknown (and `Wharf::verify` must call it healthy). An open that succeeds
//! while messages are gone is the failure this sweep exists to find (issue 14, finding 1).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wharf::{Delivery, Durability, Error, PushOptions, QueueConfig, Wharf, WharfBuilder};

use crate::{payload, segments, small};

/// Length of the workload's payloads: about 70 records to a 64 KiB segment.
const LEN: usize = 900;

/// Small segments, no durability wait per call (the workload syncs before it closes), a lease
/// longer than any test, and checkpoints only when the workload takes one.
fn builder() -> WharfBuilder {
    small()
        .checkpoint_every_bytes(u64::MAX)
        .checkpoint_interval(None)
        .push_durability(Durability::None)
        .ack_durability(Durability::None)
        .visibility_timeout(Duration::from_secs(3600))
}

/// One message of the ledger.
#[derive(Debug, Clone)]
struct Msg {
    /// The queue it waits in (a dead letter moves to the dead-letter queue).
    queue: String,
    payload: Vec<u8>,
}

/// Every message pushed, and which of them were acked. The workload ends with a sync and a
/// close, so every push is durable (AD) and every ack too (DA).
#[derive(Debug, Clone, Default)]
struct Ledger {
    msgs: BTreeMap<u64, Msg>,
    acked: BTreeSet<u64>,
    /// A counter for distinct payloads.
    next: usize,
}

impl Ledger {
    fn push_with(&mut self, q: &wharf::Queue, opts: PushOptions) -> u64 {
        let p = payload(self.next, LEN);
        self.next += 1;
        let id = q.push_with(&p, opts).unwrap().get();
        let old = self.msgs.insert(id, Msg { queue: q.name().to_owned(), payload: p });
        assert!(old.is_none(), "id {id:x} given twice");
        id
    }

    fn push(&mut self, q: &wharf::Queue) -> u64 {
        self.push_with(q, PushOptions::new())
    }

    fn ack(&mut self, d: Delivery) {
        let id = d.id().get();
        assert_eq!(d.payload(), &self.msgs[&id].payload[..], "delivered payload of {id:x}");
        d.ack().unwrap();
        self.acked.insert(id);
    }

    /// A failed attempt under `max_attempts(1)`: a dead letter in `dlq`.
    fn fail(&mut self, d: Delivery, dlq: &str) {
        let id = d.id().get();
        d.nack().unwrap();
        self.msgs.get_mut(&id).unwrap().queue = dlq.to_owned();
    }

    /// Pushes to `q` and acks at once: log that ends up settled.
    fn filler(&mut self, q: &wharf::Queue, n: usize) {
        for _ in 0..n {
            let id = self.push(q);
            let d = q.try_pop().unwrap().unwrap();
            assert_eq!(d.id().get(), id);
            self.ack(d);
        }
    }

    /// The messages that must still be there: pushed and never acked.
    fn unsettled(&self) -> impl Iterator<Item = (&u64, &Msg)> {
        self.msgs.iter().filter(|(id, _)| !self.acked.contains(id))
    }
}

/// How the workload's last run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `Wharf::close`: the durable mark names the end of the log.
    Clean,
    /// Closed, then the mark removed: the store as a crash after its last sync leaves it
    /// (`crate::as_if_crashed`; dropping the last handle closes the store too).
    Crash,
}

/// A store made by the workload, never to be changed: each case damages a copy.
struct Pristine {
    dir: tempfile::TempDir,
    ledger: Ledger,
    /// `state.redb` and `log/mark` as the first run's clean close left them: after an earlier
    /// checkpoint, before later ones relocated more stragglers and deleted more segments.
    stale_state: Option<Vec<u8>>,
    stale_mark: Option<Vec<u8>>,
    /// What the workload was, for failure messages.
    what: String,
}

impl Pristine {
    /// The store's segment files (spares included), oldest first, as names.
    fn segment_names(&self) -> Vec<String> {
        segments(self.dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// Names of the segments holding at least one record (not spares made ahead of time):
    /// their first record carries its own position (a spare made of a deleted segment's file
    /// holds that segment's records, at positions below its base).
    fn used_segment_names(&self) -> Vec<String> {
        self.segment_names()
            .into_iter()
            .filter(|n| {
                let bytes = std::fs::read(self.dir.path().join("log").join(n)).unwrap();
                let first = n.trim_end_matches(".seg").parse::<u64>().unwrap() + 64;
                bytes[72..80] == first.to_le_bytes()
            })
            .collect()
    }

    /// The unsettled messages whose payload lies in the segment `name`.
    fn unsettled_in(&self, name: &str) -> usize {
        let bytes = std::fs::read(self.dir.path().join("log").join(name)).unwrap();
        self.ledger
            .unsettled()
            .filter(|(_, m)| bytes.windows(m.payload.len()).any(|w| w == &m.payload[..]))
            .count()
    }
}

/// The workload with checkpoints, relocations and deleted segments, in two runs.
///
/// Run 1: stragglers (dead letters, delayed messages with dedup keys, a message never
/// popped) among a few segments of acked messages; two checkpoints relocate the stragglers and
/// delete their segments; a clean close (the stale `state.redb` and `log/mark` are copied
/// here). Run 2: two of the relocated dead letters are acked; more acked log with stragglers
/// and two more checkpoints, which relocate and delete again; then a burst of 24 dead letters
/// in a row and ten messages never popped (too many to relocate: they stay in the oldest
/// segment, below the last checkpoint), acked log with dedup keys, a delivery still leased,
/// a last checkpoint and a few messages after it. The run ends as `end` says.
fn workload(end: End) -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Ledger::default();
    let day = Duration::from_secs(86_400);
    // Run 1.
    {
        let w = builder().open(dir.path()).unwrap();
        let jobs = w.queue("jobs").unwrap();
        jobs.set_config(&QueueConfig::new().max_attempts(1)).unwrap();
        let mail = w.queue("mail").unwrap();
        mail.set_config(&QueueConfig::new().dedup_window(Duration::from_secs(3600))).unwrap();
        let fill = w.queue("fill").unwrap();
        let dlq = jobs.dead_letter_queue().unwrap().unwrap();
        for i in 0..240 {
            match i % 40 {
                5 => {
                    l.push(&jobs);
                    let d = jobs.try_pop().unwrap().unwrap();
                    l.fail(d, dlq.name());
                }
                17 => {
                    l.push_with(&mail, PushOptions::new().delay(day).dedup_key(format!("k{i}")));
                }
                29 if i < 80 => {
                    l.push(&mail); // never popped
                }
                _ => l.filler(&fill, 1),
            }
        }
        w.sync().unwrap();
        w.checkpoint().unwrap();
        w.checkpoint().unwrap();
        w.close().unwrap();
    }
    // (The checkpointer thread may have taken some of the checkpoints: judged by the files.)
    let first = oldest_base(dir.path());
    let relocated_1 = Wharf::verify(dir.path()).unwrap().relocated;
    assert!(first > 0 && relocated_1 > 0, "run 1: oldest segment {first}, {relocated_1} relocated");
    let stale_state = Some(std::fs::read(dir.path().join("state.redb")).unwrap());
    let stale_mark = Some(std::fs::read(dir.path().join("log").join("mark")).unwrap());
    // Run 2.
    {
        let w = builder().open(dir.path()).unwrap();
        let jobs = w.queue("jobs").unwrap();
        let mail = w.queue("mail").unwrap();
        let fill = w.queue("fill").unwrap();
        let dlq = jobs.dead_letter_queue().unwrap().unwrap();
        // Two relocated dead letters acked: their acks go with the segments deleted below.
        for _ in 0..2 {
            let d = dlq.try_pop().unwrap().unwrap();
            l.ack(d);
        }
        for i in 0..200 {
            match i % 50 {
                11 => {
                    l.push(&jobs);
                    let d = jobs.try_pop().unwrap().unwrap();
                    l.fail(d, dlq.name());
                }
                37 => {
                    l.push_with(&mail, PushOptions::new().delay(day).dedup_key(format!("r{i}")));
                }
                _ => l.filler(&fill, 1),
            }
        }
        w.sync().unwrap();
        w.checkpoint().unwrap();
        w.checkpoint().unwrap();
        let now = oldest_base(dir.path());
        let relocated = Wharf::verify(dir.path()).unwrap().relocated;
        assert!(now > first, "run 2 deleted no segment: the oldest is still at {now}");
        // Two of run 1's relocated messages were acked since.
        assert!(relocated > relocated_1 - 2, "run 2 relocated nothing ({relocated} relocated)");
        // The burst: dead letters and waiting messages, too many to relocate.
        for _ in 0..24 {
            l.push(&jobs);
            let d = jobs.try_pop().unwrap().unwrap();
            l.fail(d, dlq.name());
        }
        for _ in 0..10 {
            l.push(&jobs);
        }
        // Acked log behind it, with dedup keys.
        for i in 0..160 {
            if i % 20 == 3 {
                l.push_with(&fill, PushOptions::new().dedup_key(format!("s{i}")));
                let d = fill.try_pop().unwrap().unwrap();
                l.ack(d);
            } else {
                l.filler(&fill, 1);
            }
        }
        l.push(&fill);
        let held = fill.try_pop().unwrap().unwrap(); // leased when the run ends
        w.sync().unwrap();
        w.checkpoint().unwrap();
        for _ in 0..5 {
            l.push(&jobs);
        }
        w.sync().unwrap();
        // Closed with the delivery still leased (no release record: leased at the end).
        drop((jobs, mail, fill, dlq));
        w.close().unwrap();
        drop(held);
        if end == End::Crash {
            crate::as_if_crashed(dir.path());
        }
    }
    let p = Pristine {
        dir,
        ledger: l,
        stale_state,
        stale_mark,
        what: format!("checkpointed store ({end:?} end)"),
    };
    // The store is what the cases need: a state database, and unsettled messages that were
    // not relocated in its oldest segment.
    assert!(p.dir.path().join("state.redb").exists());
    let used = p.used_segment_names();
    assert!(used.len() >= 3, "{used:?}");
    assert!(!used[0].starts_with("00000000000000000000"), "no segment was deleted: {used:?}");
    let oldest = p.unsettled_in(&used[0]);
    assert!(oldest >= 5, "the oldest segment {} holds {oldest} unsettled messages", used[0]);
    check_pristine(&p);
    p
}

/// The base of the oldest segment file of the store in `dir`.
fn oldest_base(dir: &Path) -> u64 {
    let name = segments(dir)[0].file_name().unwrap().to_string_lossy().into_owned();
    name[..20].parse().unwrap()
}

/// A store that never took a checkpoint (no `state.redb`): pushes over several segments, some
/// acked (never all of a segment's, which would make the checkpointer take a checkpoint), a
/// few dead letters; the run ends as `end` says.
fn without_checkpoint(end: End) -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Ledger::default();
    {
        let w = builder().open(dir.path()).unwrap();
        let jobs = w.queue("jobs").unwrap();
        jobs.set_config(&QueueConfig::new().max_attempts(1)).unwrap();
        let dlq = jobs.dead_letter_queue().unwrap().unwrap();
        let work = w.queue("work").unwrap();
        let done = w.queue("done").unwrap();
        for i in 0..300 {
            if i % 10 == 1 {
                l.push(&jobs);
                let d = jobs.try_pop().unwrap().unwrap();
                l.fail(d, dlq.name());
                continue;
            }
            l.push(&work);
            if i % 3 == 0 {
                l.filler(&done, 1);
            }
        }
        w.sync().unwrap();
        w.close().unwrap();
    }
    if end == End::Crash {
        crate::as_if_crashed(dir.path());
    }
    let p = Pristine {
        dir,
        ledger: l,
        stale_state: None,
        stale_mark: None,
        what: format!("store without a checkpoint ({end:?} end)"),
    };
    assert!(!p.dir.path().join("state.redb").exists(), "a checkpoint was taken");
    assert!(p.used_segment_names().len() >= 4);
    check_pristine(&p);
    p
}

/// The pristine store verifies healthy and opens with exactly its ledger (on a copy: an open
/// writes an epoch record).
fn check_pristine(p: &Pristine) {
    let copy = copy_all(p.dir.path());
    let report = Wharf::verify(copy.path()).unwrap();
    assert!(report.is_healthy(), "{}: {:#?}", p.what, report.problems);
    let w = builder().open(copy.path()).unwrap();
    let lost = compare(&w, &p.ledger);
    assert!(lost.is_empty(), "{} undamaged: {}", p.what, lost.join("; "));
}

/// Copies a whole store directory: `LOCK`, `state.redb` and every file of `log/`.
fn copy_all(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(to.path().join("log")).unwrap();
    for sub in ["", "log"] {
        for e in std::fs::read_dir(from.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, to.path().join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    to
}

/// What the reopened store holds against the ledger: every problem, in words (empty: no
/// loss, no resurrection, no phantom, every payload identical and in its queue).
fn compare(w: &Wharf, ledger: &Ledger) -> Vec<String> {
    let mut found: BTreeMap<u64, (String, Vec<u8>)> = BTreeMap::new();
    let mut problems = Vec::new();
    for name in w.queue_names() {
        match w.queue(&name).unwrap().peek(usize::MAX) {
            Ok(peeked) => {
                for m in peeked {
                    found.insert(m.id.get(), (name.clone(), m.payload));
                }
            }
            Err(e) => problems.push(format!("peek of queue {name:?} failed: {e}")),
        }
    }
    let mut lost = Vec::new();
    for (id, m) in ledger.unsettled() {
        match found.get(id) {
            None => lost.push(format!("{id:x} ({})", m.queue)),
            Some((q, p)) if p != &m.payload => {
                problems.push(format!("message {id:x} came back with another payload (in {q})"))
            }
            Some((q, _)) if q != &m.queue => {
                problems.push(format!("message {id:x} is in queue {q}, not {}", m.queue))
            }
            Some(_) => {}
        }
    }
    if !lost.is_empty() {
        problems.push(format!("{} unsettled messages LOST: {}", lost.len(), lost.join(", ")));
    }
    let back: Vec<String> = found
        .iter()
        .filter(|(id, _)| ledger.acked.contains(id))
        .map(|(id, (q, _))| format!("{id:x} ({q})"))
        .collect();
    if !back.is_empty() {
        problems.push(format!("{} acked messages RESURRECTED: {}", back.len(), back.join(", ")));
    }
    let phantoms: Vec<String> = found
        .keys()
        .filter(|id| !ledger.msgs.contains_key(id))
        .map(|id| format!("{id:x}"))
        .collect();
    if !phantoms.is_empty() {
        problems.push(format!("{} PHANTOM messages: {}", phantoms.len(), phantoms.join(", ")));
    }
    problems
}

/// One change to the set of files, on paths relative to the store directory.
#[derive(Debug, Clone)]
enum Edit {
    Remove(PathBuf),
    /// The two files trade names.
    Swap(PathBuf, PathBuf),
    Rename(PathBuf, PathBuf),
    /// A file written (or overwritten) with these bytes.
    Put(PathBuf, Vec<u8>),
}

impl Edit {
    fn apply(&self, dir: &Path) {
        match self {
            Edit::Remove(p) => std::fs::remove_file(dir.join(p)).unwrap(),
            Edit::Swap(a, b) => {
                let tmp = dir.join("swap.tmp");
                std::fs::rename(dir.join(a), &tmp).unwrap();
                std::fs::rename(dir.join(b), dir.join(a)).unwrap();
                std::fs::rename(&tmp, dir.join(b)).unwrap();
            }
            Edit::Rename(a, b) => std::fs::rename(dir.join(a), dir.join(b)).unwrap(),
            Edit::Put(p, bytes) => std::fs::write(dir.join(p), bytes).unwrap(),
        }
    }
}

/// One damage to a copy of a pristine store.
struct Case {
    /// What was done, in words.
    what: String,
    edits: Vec<Edit>,
    /// Files (relative to the store directory) an error refusing it may name.
    blame: Vec<PathBuf>,
}

fn log(name: &str) -> PathBuf {
    Path::new("log").join(name)
}

fn state() -> PathBuf {
    PathBuf::from("state.redb")
}

fn mark() -> PathBuf {
    log("mark")
}

/// The segment `i` of `names` and its neighbours, the mark and the state database: the files
/// an error about a change to segment `i` may name.
fn around(names: &[String], i: usize) -> Vec<PathBuf> {
    let near = names.get(i.saturating_sub(1)..(i + 2).min(names.len())).unwrap_or(&[]);
    [state(), mark()].into_iter().chain(near.iter().map(|n| log(n))).collect()
}

/// Each segment missing in turn (`which` picks them by position, oldest first).
fn missing_segments(p: &Pristine, which: impl Fn(usize, usize) -> bool) -> Vec<Case> {
    let names = p.segment_names();
    let used = p.used_segment_names();
    let n = names.len();
    (0..n)
        .filter(|&i| which(i, n))
        .map(|i| {
            let kind = match i {
                0 => "the oldest segment",
                _ if i + 1 == used.len() => "the last segment with records",
                _ if i >= used.len() => "a spare segment (no records yet)",
                _ => "a middle segment",
            };
            Case {
                what: format!("{kind} {} deleted ({} of {n})", names[i], i + 1),
                edits: vec![Edit::Remove(log(&names[i]))],
                blame: around(&names, i),
            }
        })
        .collect()
}

fn judge(p: &Pristine, case: &Case) -> (bool, String) {
    let copy = copy_all(p.dir.path());
    let dir = copy.path();
    for e in &case.edits {
        e.apply(dir);
    }
    let head = format!("{}, {}", p.what, case.what);
    let report = match Wharf::verify(dir) {
        Ok(r) => r,
        Err(e) => return (false, format!("{head}: verify failed with {e}")),
    };
    let blamed = |file: &Path| case.blame.iter().any(|b| dir.join(b) == file);
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    let refused = |file: &Path, e: &Error| {
        if !blamed(file) {
            return (false, format!("{head}: open refused it naming the wrong file: {e}"));
        }
        if report.is_healthy() {
            return (false, format!("{head}: open refused it ({e}) but verify calls it healthy"));
        }
        if !report.problems.iter().any(|c| blamed(&c.file)) {
            return (
                false,
                format!("{head}: open refused it ({e}); verify names other files: {problems:?}"),
            );
        }
        (true, format!("{head}: refused: {e}; verify: {problems:?}"))
    };
    match builder().open(dir) {
        Err(e @ Error::Corrupted(_)) => {
            let Error::Corrupted(c) = &e else { unreachable!() };
            refused(&c.file.clone(), &e)
        }
        Err(e @ (Error::ForeignSegment(_) | Error::UnsupportedVersion { .. })) => {
            let file = match &e {
                Error::ForeignSegment(f) | Error::UnsupportedVersion { file: f, .. } => f.clone(),
                _ => unreachable!(),
            };
            refused(&file, &e)
        }
        Err(e) => (false, format!("{head}: open failed with an unexpected error: {e}")),
        Ok(w) => {
            let wrong = compare(&w, &p.ledger);
            let r = w.recovery_report().clone();
            drop(w);
            if !wrong.is_empty() {
                return (
                    false,
                    format!(
                        "{head}: open SUCCEEDED (bytes_truncated {}, {} segments) but: {}; \
                         verify: {}",
                        r.bytes_truncated,
                        r.segments,
                        wrong.join("; "),
                        if report.is_healthy() { "healthy".into() } else { problems.join("; ") }
                    ),
                );
            }
            if !report.is_healthy() {
                return (
                    false,
                    format!("{head}: open took it with no loss, but verify reports {problems:?}"),
                );
            }
            (true, format!("{head}: opened with nothing lost"))
        }
    }
}

/// The outcomes of the cases of one test, over one or more stores: one line each, and whether
/// it passed.
#[derive(Default)]
struct Sweep(Vec<(bool, String)>);

impl Sweep {
    /// Applies each case to a fresh copy of `p` and judges the outcome.
    fn add(&mut self, p: &Pristine, cases: &[Case]) {
        assert!(!cases.is_empty());
        self.0.extend(cases.iter().map(|c| judge(p, c)));
    }

    /// Fails listing every case that failed, with what was done and what was lost.
    fn finish(self) {
        for (_, line) in &self.0 {
            println!("{line}");
        }
        let failed: Vec<&str> =
            self.0.iter().filter(|(ok, _)| !ok).map(|(_, line)| line.as_str()).collect();
        assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), self.0.len(), {
            failed.join("\n")
        });
    }
}

/// Runs the cases on `p` and fails listing every case that failed.
fn sweep(p: &Pristine, cases: &[Case]) {
    let mut all = Sweep::default();
    all.add(p, cases);
    all.finish();
}

// The cases. A missing oldest segment and a missing or stale state database are caught by the
// log's anchors (where it must start, the last checkpoint: in every segment preamble and made
// durable before each deletion); a missing newest segment by the seal that ends the last file.

#[test]
fn every_segment_but_the_oldest_missing_after_a_clean_close_is_refused_or_harmless() {
    let p = workload(End::Clean);
    sweep(&p, &missing_segments(&p, |i, _| i > 0));
}

#[test]
fn the_oldest_segment_missing_after_a_clean_close_is_refused() {
    let p = workload(End::Clean);
    sweep(&p, &missing_segments(&p, |i, _| i == 0));
}

#[test]
fn every_segment_but_the_oldest_missing_after_a_crash_is_refused_or_harmless() {
    let p = workload(End::Crash);
    sweep(&p, &missing_segments(&p, |i, _| i > 0));
}

#[test]
fn the_oldest_segment_missing_after_a_crash_is_refused() {
    let p = workload(End::Crash);
    sweep(&p, &missing_segments(&p, |i, _| i == 0));
}

#[test]
fn the_mark_or_the_lock_missing_is_harmless() {
    let mut all = Sweep::default();
    for end in [End::Clean, End::Crash] {
        let p = workload(end);
        let mut cases = vec![Case {
            what: "LOCK deleted".into(),
            edits: vec![Edit::Remove("LOCK".into())],
            blame: vec![],
        }];
        if end == End::Clean {
            cases.push(Case {
                what: "log/mark deleted".into(),
                edits: vec![Edit::Remove(mark())],
                blame: vec![mark()],
            });
        }
        all.add(&p, &cases);
    }
    all.finish();
}

#[test]
fn the_state_database_missing_is_refused() {
    let mut all = Sweep::default();
    for end in [End::Clean, End::Crash] {
        let p = workload(end);
        let cases = vec![Case {
            what: "state.redb deleted (it held relocated stragglers whose segments are gone)"
                .into(),
            edits: vec![Edit::Remove(state())],
            blame: vec![state(), mark(), log(&p.segment_names()[0])],
        }];
        all.add(&p, &cases);
    }
    all.finish();
}

/// The newest segments missing together, so that no gap shows: the spares made ahead of time
/// (harmless), and the last segment with records with the spares after it.
fn missing_tails(p: &Pristine) -> Vec<Case> {
    let names = p.segment_names();
    let used = p.used_segment_names().len();
    let gone = |from: usize| names[from..].iter().map(|n| Edit::Remove(log(n))).collect();
    let mut cases = vec![Case {
        what: format!(
            "the last segment with records {} and the {} spares after it deleted",
            names[used - 1],
            names.len() - used
        ),
        edits: gone(used - 1),
        blame: [around(&names, used - 2), vec![log(&names[used - 1])]].concat(),
    }];
    if used < names.len() {
        cases.push(Case {
            what: format!(
                "the {} spares after the last segment with records deleted",
                names.len() - used
            ),
            edits: gone(used),
            blame: vec![],
        });
    }
    cases
}

#[test]
fn the_newest_segments_missing_are_refused_or_harmless() {
    // After a crash the checkpointed store is refused only because its last checkpoint lies
    // in the missing segment; the store without a checkpoint is the case below.
    let mut all = Sweep::default();
    for p in [workload(End::Clean), workload(End::Crash), without_checkpoint(End::Clean)] {
        all.add(&p, &missing_tails(&p));
    }
    all.finish();
}

/// Without a mark and a checkpoint past it, nothing says the log went on after the seal of
/// what is now the last segment, but the seal itself: a segment is sealed only once the next
/// one exists (created, synced and its directory synced), and segments are deleted oldest
/// first, so a log that ends at a seal has lost its newest segment.
#[test]
fn the_newest_segments_missing_after_a_crash_without_checkpoint_are_refused() {
    let p = without_checkpoint(End::Crash);
    sweep(&p, &missing_tails(&p));
}

#[test]
fn swapped_and_renamed_segments_are_refused() {
    let mut all = Sweep::default();
    for end in [End::Clean, End::Crash] {
        let p = workload(end);
        let names = p.segment_names();
        let used = p.used_segment_names().len();
        let n = names.len();
        let mut cases = Vec::new();
        for (a, b) in [(0, 1), (1, 2), (used - 2, used - 1), (0, used - 1), (used - 1, n - 1)] {
            if a == b {
                continue;
            }
            cases.push(Case {
                what: format!("segments {} and {} swapped", names[a], names[b]),
                edits: vec![Edit::Swap(log(&names[a]), log(&names[b]))],
                blame: [around(&names, a), around(&names, b)].concat(),
            });
        }
        let base = |name: &str| name[..20].parse::<u64>().unwrap();
        let seg_len = base(&names[1]) - base(&names[0]);
        let renamed = |from: usize, to: u64| {
            let to = format!("{to:020}.seg");
            Case {
                what: format!("segment {} renamed to {to}", names[from]),
                edits: vec![Edit::Rename(log(&names[from]), log(&to))],
                blame: [around(&names, from), vec![log(&to)]].concat(),
            }
        };
        // The oldest to the base before it, or far past the end; the last with records past
        // the end (a gap), or onto the base of the oldest's predecessor.
        cases.push(renamed(0, base(&names[0]) - seg_len));
        cases.push(renamed(0, base(&names[n - 1]) + 5 * seg_len));
        cases.push(renamed(used - 1, base(&names[n - 1]) + seg_len));
        cases.push(renamed(used - 1, base(&names[0]) - seg_len));
        // A middle segment renamed to a base that is not a multiple of the segment length.
        cases.push(renamed(1, base(&names[1]) + 64));
        all.add(&p, &cases);
    }
    all.finish();
}

#[test]
fn a_stale_mark_put_back_is_refused_or_harmless() {
    let mut all = Sweep::default();
    for end in [End::Clean, End::Crash] {
        let p = workload(end);
        let cases = vec![Case {
            what: "log/mark replaced by its copy from the first run's close".into(),
            edits: vec![Edit::Put(mark(), p.stale_mark.clone().unwrap())],
            blame: vec![mark(), log(p.used_segment_names().last().unwrap())],
        }];
        all.add(&p, &cases);
    }
    all.finish();
}

#[test]
fn a_stale_state_database_put_back_is_refused() {
    let mut all = Sweep::default();
    for end in [End::Clean, End::Crash] {
        let p = workload(end);
        let mut cases = vec![Case {
            what: "state.redb replaced by its copy from the first run's close (an older \
                   checkpoint; later ones relocated stragglers and deleted segments)"
                .into(),
            edits: vec![Edit::Put(state(), p.stale_state.clone().unwrap())],
            blame: vec![state(), log(&p.segment_names()[0])],
        }];
        if end == End::Clean {
            cases.push(Case {
                what: "state.redb and log/mark both replaced by their copies from the first \
                       run's close"
                    .into(),
                edits: vec![
                    Edit::Put(state(), p.stale_state.clone().unwrap()),
                    Edit::Put(mark(), p.stale_mark.clone().unwrap()),
                ],
                blame: vec![state(), mark(), log(&p.segment_names()[0])],
            });
        }
        all.add(&p, &cases);
    }
    all.finish();
}

/// Another store whose segments have the bases of `p`'s: a plain store of the same segment
/// size filled far enough, with a checkpoint (its `state.redb`) and a clean close (its mark).
fn foreign_store(p: &Pristine) -> tempfile::TempDir {
    let last = p.segment_names().last().unwrap()[..20].parse::<u64>().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = builder().open(dir.path()).unwrap();
    let q = w.queue("other").unwrap();
    while segments(dir.path())
        .last()
        .map(|s| s.file_name().unwrap().to_string_lossy()[..20].parse::<u64>().unwrap())
        .unwrap_or(0)
        <= last
    {
        q.push_batch((0..60).map(|i| payload(i, LEN))).unwrap();
    }
    w.checkpoint().unwrap();
    w.close().unwrap();
    dir
}

#[test]
fn a_segment_mark_or_state_database_of_another_store_is_refused() {
    let mut all = Sweep::default();
    for end in [End::Clean, End::Crash] {
        let p = workload(end);
        let other = foreign_store(&p);
        let names = p.segment_names();
        let used = p.used_segment_names().len();
        let theirs = |name: &str| std::fs::read(other.path().join("log").join(name)).unwrap();
        let mut cases = Vec::new();
        for i in [0, 1, used - 1, names.len() - 1] {
            cases.push(Case {
                what: format!(
                    "segment {} replaced by the same-based segment of another store",
                    names[i]
                ),
                edits: vec![Edit::Put(log(&names[i]), theirs(&names[i]))],
                blame: around(&names, i),
            });
        }
        // Another store's segment just before the oldest, and just after the last.
        let base = |name: &str| name[..20].parse::<u64>().unwrap();
        let seg_len = base(&names[1]) - base(&names[0]);
        for b in [base(&names[0]) - seg_len, base(&names[names.len() - 1]) + seg_len] {
            let name = format!("{b:020}.seg");
            cases.push(Case {
                what: format!("segment {name} of another store added"),
                edits: vec![Edit::Put(log(&name), theirs(&name))],
                blame: [
                    vec![log(&name), log(&names[0]), log(&names[names.len() - 1])],
                    vec![state(), mark()],
                ]
                .concat(),
            });
        }
        // Its state database and its mark, in place of this store's (or where it has none).
        let file = |rel: &Path| std::fs::read(other.path().join(rel)).unwrap();
        cases.push(Case {
            what: "state.redb replaced by the state database of another store".into(),
            edits: vec![Edit::Put(state(), file(&state()))],
            blame: vec![state()],
        });
        cases.push(Case {
            what: format!(
                "log/mark {} by the mark of another store",
                if end == End::Clean { "replaced" } else { "put back" }
            ),
            edits: vec![Edit::Put(mark(), file(&mark()))],
            blame: vec![mark()],
        });
        all.add(&p, &cases);
    }
    all.finish();
}

#[test]
fn a_middle_or_last_segment_missing_from_a_store_without_checkpoint_is_refused_or_harmless() {
    let mut all = Sweep::default();
    for end in [End::Clean, End::Crash] {
        let p = without_checkpoint(end);
        all.add(&p, &missing_segments(&p, |i, _| i > 0));
    }
    all.finish();
}

#[test]
fn the_oldest_segment_missing_from_a_store_without_checkpoint_is_refused() {
    let mut all = Sweep::default();
    for end in [End::Clean, End::Crash] {
        let p = without_checkpoint(end);
        all.add(&p, &missing_segments(&p, |i, _| i == 0));
    }
    all.finish();
}
