//! Fuzz target `verify`: `Wharf::verify` (as `wharf::testing::verify`, on the simulated disk)
//! over a directory image, the files of a small store with arbitrary changes (bits flipped,
//! bytes written or zeroed, files cut, removed, copied over each other, added under wharf's
//! names or others). The store took checkpoints that relocated stragglers into its state
//! database (`state.redb`, one of the files changed) and deleted their segments. Properties:
//! verify never panics; an image whose open fails with corruption is never reported healthy;
//! a healthy image that opens recovers what verify found (torn tail, records, unsettled
//! messages).
//!
//! Self-contained on purpose: it uses only wharf's `testing` API, not `wharf_fuzz`.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use wharf::testing::{self, SimFs};
use wharf::{Error, PushOptions, Wharf, WharfBuilder};

const DIR: &str = "/v";
const SEGMENT_BYTES: u64 = 64 << 10;

fn builder() -> WharfBuilder {
    Wharf::builder().segment_bytes(SEGMENT_BYTES)
}

/// The files of the base store (paths under its directory): stragglers (delayed, dead-lettered,
/// leased and never acked) behind a segment of settled messages, a checkpoint that relocates
/// them into `state.redb` and deletes their segment; then pushes over a few segments, some
/// settled, one retried, one dead letter, and another checkpoint; closed cleanly.
fn base() -> &'static [(String, Vec<u8>)] {
    static BASE: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    BASE.get_or_init(|| {
        let sim = SimFs::new();
        let w = testing::open(builder(), &sim, Path::new(DIR)).expect("open");
        let (a, b) = (w.queue("a").expect("queue"), w.queue("b").expect("queue"));
        let later = PushOptions::new().delay(std::time::Duration::from_secs(3600));
        a.push_with(b"delayed straggler", later).expect("push");
        b.push(b"dead straggler").expect("push");
        b.try_pop().expect("pop").expect("ready").dead_letter("poison").expect("dead letter");
        b.push(b"leased straggler").expect("push");
        let leased = b.try_pop().expect("pop").expect("ready");
        for i in 0..300u16 {
            a.push(vec![i as u8; 200]).expect("push");
            a.try_pop().expect("pop").expect("ready").ack().expect("ack");
        }
        let report = w.checkpoint().expect("checkpoint");
        assert!(report.relocated >= 3 && report.segments_deleted > 0, "{report:?}");
        drop(leased);
        for i in 0..200u16 {
            a.push(vec![i as u8; 300 + usize::from(i % 7) * 50]).expect("push");
        }
        b.push_with(b"keyed", PushOptions::new().dedup_key("k").priority(2)).expect("push");
        for _ in 0..30 {
            a.try_pop().expect("pop").expect("ready").ack().expect("ack");
        }
        a.try_pop().expect("pop").expect("ready").nack().expect("nack");
        b.try_pop().expect("pop").expect("ready").dead_letter("no").expect("dead letter");
        w.checkpoint().expect("checkpoint");
        a.push(b"after the checkpoint").expect("push");
        w.close().expect("close");
        let dir = Path::new(DIR);
        let mut files: Vec<(String, Vec<u8>)> = sim
            .names(&dir.join("log"))
            .into_iter()
            .map(|n| {
                let bytes = sim.read_file(&dir.join("log").join(&n)).expect("listed file");
                (format!("log/{n}"), bytes)
            })
            .collect();
        let state = sim.read_file(&dir.join(STATE)).expect("a checkpoint made state.redb");
        files.push((STATE.to_owned(), state));
        files
    })
}

/// The state database's name in the store directory.
const STATE: &str = "state.redb";

/// A file name in `log/`, or the state database's.
#[derive(Arbitrary, Debug)]
enum Name {
    /// The segment at `k` × the segment length.
    Segment(u8),
    /// A temporary segment name.
    Temp(u8),
    Mark,
    MarkTmp,
    /// Any name (slashes replaced).
    Other(String),
    /// `state.redb`, in the store directory.
    State,
    /// Its temporary name while it is created.
    StateTmp,
}

/// One change to the image; `file` picks a file of the image by index.
#[derive(Arbitrary, Debug)]
enum Change {
    Flip { file: u8, pos: u32, bit: u8 },
    Write { file: u8, pos: u32, bytes: Vec<u8> },
    Zero { file: u8, pos: u32, len: u16 },
    Truncate { file: u8, len: u32 },
    Remove { file: u8 },
    Copy { from: u8, to: u8 },
    Add { name: Name, bytes: Vec<u8> },
}

/// The path of a file under the store directory.
fn name(n: &Name) -> Option<String> {
    Some(match n {
        Name::Segment(k) => format!("log/{:020}.seg", u64::from(*k % 16) * SEGMENT_BYTES),
        Name::Temp(k) => format!("log/{:020}.seg.tmp", u64::from(*k % 16) * SEGMENT_BYTES),
        Name::Mark => "log/mark".into(),
        Name::MarkTmp => "log/mark.tmp".into(),
        Name::Other(s) => {
            let s: String =
                s.chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
            if s.is_empty() || s == "." || s == ".." {
                return None;
            }
            format!("log/{s}")
        }
        Name::State => STATE.into(),
        Name::StateTmp => format!("{STATE}.tmp"),
    })
}

fn apply(files: &mut Vec<(String, Vec<u8>)>, c: &Change) {
    let pick = |k: u8, files: &Vec<(String, Vec<u8>)>| {
        (!files.is_empty()).then(|| usize::from(k) % files.len())
    };
    match c {
        Change::Flip { file, pos, bit } => {
            if let Some(k) = pick(*file, files) {
                let f = &mut files[k].1;
                if !f.is_empty() {
                    let at = *pos as usize % f.len();
                    f[at] ^= 1 << (bit % 8);
                }
            }
        }
        Change::Write { file, pos, bytes } => {
            if let Some(k) = pick(*file, files) {
                let f = &mut files[k].1;
                let at = (*pos as usize).min(f.len());
                let end = (at + bytes.len()).min(f.len());
                f[at..end].copy_from_slice(&bytes[..end - at]);
            }
        }
        Change::Zero { file, pos, len } => {
            if let Some(k) = pick(*file, files) {
                let f = &mut files[k].1;
                let at = (*pos as usize).min(f.len());
                let end = (at + usize::from(*len)).min(f.len());
                f[at..end].fill(0);
            }
        }
        Change::Truncate { file, len } => {
            if let Some(k) = pick(*file, files) {
                let f = &mut files[k].1;
                f.truncate(*len as usize % (f.len() + 1));
            }
        }
        Change::Remove { file } => {
            if let Some(k) = pick(*file, files) {
                files.remove(k);
            }
        }
        Change::Copy { from, to } => {
            if let (Some(from), Some(to)) = (pick(*from, files), pick(*to, files)) {
                files[to].1 = files[from].1.clone();
            }
        }
        Change::Add { name: n, bytes } => {
            if let Some(n) = name(n) {
                files.retain(|(m, _)| *m != n);
                files.push((n, bytes.iter().copied().take(1 << 17).collect()));
            }
        }
    }
}

/// redb panics on some damaged files; wharf runs it under `catch_unwind` and reports the
/// damage. libFuzzer's panic hook aborts on every panic, caught or not: this one lets a panic
/// raised in redb's code unwind to wharf's `catch_unwind` and hands every other panic to the
/// hook it replaces (as `wharf_fuzz::targets::tolerate_redb_panics`).
fn tolerate_redb_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|l| l.file().contains("/redb-")) {
                previous(info);
            }
        }));
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tolerate_redb_panics();
    let Ok(changes) = Vec::<Change>::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let mut files = base().to_vec();
    for c in changes.iter().take(8) {
        apply(&mut files, c);
    }
    let sim = SimFs::new();
    let dir = Path::new(DIR);
    sim.create_file(&dir.join("LOCK"), b"").expect("lock file");
    for (n, bytes) in &files {
        let _ = sim.create_file(&dir.join(n), bytes);
    }
    let report = match testing::verify(&sim, dir) {
        Ok(r) => r,
        Err(e) => panic!("verify of an existing directory failed: {e}"),
    };
    match testing::open(builder(), &sim, dir) {
        Ok(w) => {
            if report.is_healthy() {
                let r = w.recovery_report();
                let waiting: u64 = report.queues.iter().map(|q| q.unsettled()).sum();
                assert_eq!(r.bytes_truncated, report.torn_tail_bytes, "torn tail");
                assert_eq!(r.truncated_at, report.torn_tail_at, "torn tail position");
                // An open replays the log from the checkpoint's snapshot on, verify all of it.
                assert!(r.records <= report.records.total(), "records");
                assert_eq!(r.messages, waiting, "unsettled messages");
            }
        }
        Err(
            e @ (Error::Corrupted(_) | Error::ForeignSegment(_) | Error::UnsupportedVersion { .. }),
        ) => {
            assert!(!report.is_healthy(), "open failed ({e}) where verify found nothing wrong");
        }
        Err(_) => {}
    }
});
