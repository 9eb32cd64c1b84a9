//! Every byte of a `state.redb`, damaged three ways, on the simulated disk: the open either
//! finds the checkpoint as it was or fails with `Error::Corrupted`, `verify` reports a problem
//! wherever the open fails, and redb never panics on the way (wharf checks the file's pages
//! before redb trusts them; catching redb's panic is only the second line, and a program
//! built with `panic = "abort"` has no unwinding to catch it with).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use wharf::testing::SimFs;
use wharf::{Error, PushOptions, Wharf, WharfBuilder};

const DIR: &str = "/store";
const STATE: &str = "/store/state.redb";

thread_local! {
    /// The panics raised on this thread while [`panics_during`] counts them.
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `f`, returning what it returned and the panics raised on this thread meanwhile (caught
/// or not), each as "file:line: message". Other threads' panics go to the previous hook.
fn panics_during<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let counted = PANICS.with_borrow_mut(|p| {
                let Some(p) = p else { return false };
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
                let payload = info.payload();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                p.push(format!("{}: {msg}", at.unwrap_or_default()));
                true
            });
            if !counted {
                previous(info);
            }
        }));
    });
    PANICS.with_borrow_mut(|p| *p = Some(Vec::new()));
    let out = f();
    let panics = PANICS.with_borrow_mut(Option::take).unwrap_or_default();
    (out, panics)
}

fn builder() -> WharfBuilder {
    Wharf::builder().segment_bytes(64 << 10).checkpoint_every_bytes(u64::MAX)
}

/// The files of a closed store on the simulated disk whose `state.redb` holds a catalog, a
/// dedup key and a relocated straggler delayed for an hour (its segment deleted), behind a few
/// hundred settled messages.
fn checkpointed_store() -> Vec<(PathBuf, Vec<u8>)> {
    let sim = SimFs::new();
    let w = wharf::testing::open(builder(), &sim, Path::new(DIR)).unwrap();
    let q = w.queue("q").unwrap();
    let later = PushOptions::new().delay(Duration::from_secs(3600)).dedup_key("once");
    q.push_with(vec![7; 900], later).unwrap();
    for i in 0..300u32 {
        q.push(i.to_le_bytes().repeat(200)).unwrap();
        q.pop().unwrap().ack().unwrap();
        if i % 50 == 0 {
            wharf::testing::maintain(&w).unwrap();
        }
    }
    let first = w.checkpoint().unwrap();
    let second = w.checkpoint().unwrap();
    assert_eq!(first.relocated + second.relocated, 1, "{first:?} {second:?}");
    w.close().unwrap();
    let mut files = Vec::new();
    for dir in [PathBuf::from(DIR), Path::new(DIR).join("log")] {
        for name in sim.names(&dir) {
            let path = dir.join(&name);
            if let Ok(bytes) = sim.read_file(&path) {
                files.push((path, bytes));
            }
        }
    }
    assert!(files.iter().any(|(p, _)| p == Path::new(STATE)));
    files
}

/// What opening a store whose `state.redb` was damaged came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// It opened with the checkpoint's straggler.
    Intact,
    /// The open failed with `Corrupted`, naming `state.redb`, and verify reported a problem.
    Corrupted,
}

/// Verifies and opens the store of `files` with `state` for its `state.redb`; adds the panics
/// raised in each to `panics` (prefixed "verify: " or "open: ").
fn open_with_state(
    files: &[(PathBuf, Vec<u8>)],
    state: &[u8],
    panics: &mut Vec<String>,
) -> Result<Outcome, String> {
    let sim = SimFs::new();
    for (path, bytes) in files {
        let bytes = if path == Path::new(STATE) { state } else { bytes };
        sim.create_file(path, bytes).unwrap();
    }
    let (report, p) = panics_during(|| wharf::testing::verify(&sim, Path::new(DIR)));
    panics.extend(p.into_iter().map(|p| format!("verify: {p}")));
    let report = report.map_err(|e| e.to_string())?;
    let (opened, p) = panics_during(|| wharf::testing::open(builder(), &sim, Path::new(DIR)));
    panics.extend(p.into_iter().map(|p| format!("open: {p}")));
    match opened {
        Ok(w) => {
            let depth = w.queue("q").map_err(|e| e.to_string())?.depth();
            let delayed = depth.map_err(|e| e.to_string())?.delayed;
            w.close().map_err(|e| e.to_string())?;
            if delayed == 1 {
                Ok(Outcome::Intact)
            } else {
                Err(format!("opened with {delayed} delayed messages"))
            }
        }
        Err(Error::Corrupted(c)) if c.file == Path::new(STATE) => {
            if report.is_healthy() {
                Err(format!("the open failed ({c}) and verify found nothing"))
            } else {
                Ok(Outcome::Corrupted)
            }
        }
        Err(e) => Err(format!("the open failed with {e}")),
    }
}

/// Damages `state.redb` at offsets `0, step, 2 step, …` of its used part (its last non-zero
/// byte), three ways each; returns the outcomes and every panic with its offset.
fn sweep(step: usize) -> (usize, usize, Vec<(usize, Vec<String>)>) {
    let files = checkpointed_store();
    let original = &files.iter().find(|(p, _)| p == Path::new(STATE)).unwrap().1;
    let used = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    let (mut intact, mut corrupted, mut panicked) = (0, 0, Vec::new());
    for off in (0..used).step_by(step) {
        for damage in [|b: u8| b ^ 0x10, |b: u8| !b, |_| 0] {
            let mut bytes = original.clone();
            bytes[off] = damage(bytes[off]);
            if bytes[off] == original[off] {
                continue;
            }
            let mut panics = Vec::new();
            let got = open_with_state(&files, &bytes, &mut panics);
            if !panics.is_empty() {
                panicked.push((off, panics));
            }
            match got {
                Ok(Outcome::Intact) => intact += 1,
                Ok(Outcome::Corrupted) => corrupted += 1,
                Err(e) => panic!("damage at {off}: {e}"),
            }
        }
    }
    (intact, corrupted, panicked)
}

#[test]
fn damage_anywhere_in_the_state_database_is_corruption_or_harmless_and_never_a_redb_panic() {
    // Every byte with WHARF_STATE_SWEEP_STEP=1: 197,577 damaged files, about 15 CPU minutes.
    let step = std::env::var("WHARF_STATE_SWEEP_STEP").ok().and_then(|s| s.parse().ok());
    let (intact, corrupted, panicked) = sweep(step.unwrap_or(97));
    for (off, p) in &panicked {
        eprintln!("damage at {off}: {p:?}");
    }
    eprintln!("{intact} intact, {corrupted} corrupted, {} panicked", panicked.len());
    assert!(corrupted > 0 && intact > 0, "{intact} intact, {corrupted} corrupted");
    assert!(panicked.is_empty(), "{} damaged files made redb panic", panicked.len());
}
