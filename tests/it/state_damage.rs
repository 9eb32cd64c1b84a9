//! A damaged `state.redb` on the real file system: a flipped byte across the file either opens
//! as before or fails the open with `Error::Corrupted`, and never makes redb panic (which
//! would abort a program built with `panic = "abort"`). `tests/sim/state_damage.rs` damages
//! every byte, and checks `verify` too.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Once;

use std::time::Duration;

use wharf::{Error, PushOptions, WharfBuilder};

use crate::{copy_store, payload, small};

/// Small segments, and checkpoints only when a test takes one.
fn manual() -> WharfBuilder {
    small().checkpoint_every_bytes(u64::MAX).checkpoint_interval(None)
}

thread_local! {
    /// The panics raised on this thread while [`panics_during`] counts them.
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `f`, returning what it returned and the panics raised on this thread meanwhile (caught
/// or not), each as "location: message". Other threads' panics go to the previous hook.
fn panics_during<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let counted = PANICS.with_borrow_mut(|p| match p {
                Some(p) => {
                    let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
                    let msg = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    p.push(format!("{}: {msg}", at.unwrap_or_default()));
                    true
                }
                None => false,
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

/// A closed store with a checkpoint in `state.redb`: a catalog with a config, a dedup key and
/// a relocated straggler delayed for an hour (its segment deleted), behind a few hundred
/// settled messages.
fn checkpointed_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = manual().open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    let later = PushOptions::new().delay(Duration::from_secs(3600)).dedup_key("once");
    q.push_with(payload(1_000_000, 900), later).unwrap();
    for i in 0..300 {
        q.push(payload(i, 900)).unwrap();
        q.pop().unwrap().ack().unwrap();
    }
    let first = w.checkpoint().unwrap();
    let second = w.checkpoint().unwrap();
    assert_eq!(first.relocated + second.relocated, 1, "{first:?} {second:?}");
    w.close().unwrap();
    dir
}

/// Opens a copy of `pristine` whose `state.redb` is `bytes`: `Ok` if it opened with the
/// checkpoint's straggler, the open's error otherwise.
fn open_with_state(pristine: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = copy_store(pristine);
    std::fs::write(dir.path().join("state.redb"), bytes).unwrap();
    let w = manual().open(dir.path())?;
    assert_eq!(w.queue("q")?.depth()?.delayed, 1, "the straggler");
    w.close()
}

#[test]
fn a_flipped_byte_anywhere_in_the_state_database_is_corruption_or_harmless_and_never_a_panic() {
    let pristine = checkpointed_store();
    let original = std::fs::read(pristine.path().join("state.redb")).unwrap();
    let used = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    let step = std::env::var("WHARF_STATE_SWEEP_STEP").ok().and_then(|s| s.parse().ok());
    let step = step.unwrap_or(used / 400 + 1);
    let (mut corrupted, mut harmless, mut panicked) = (0, 0, Vec::new());
    for off in (0..used).step_by(step) {
        let mut bytes = original.clone();
        bytes[off] ^= 0x10;
        let (got, panics) = panics_during(|| open_with_state(pristine.path(), &bytes));
        if !panics.is_empty() {
            panicked.push((off, panics));
        }
        match got {
            Ok(()) => harmless += 1,
            Err(Error::Corrupted(c)) => {
                assert!(c.file.ends_with("state.redb"), "flip at {off}: {c}");
                corrupted += 1;
            }
            Err(e) => panic!("flip at {off}: the open failed with {e}"),
        }
    }
    eprintln!(
        "{} bytes used of {}, step {step}: {corrupted} corrupted, {harmless} harmless, {} panicked",
        used,
        original.len(),
        panicked.len()
    );
    for (off, p) in &panicked {
        eprintln!("flip at {off}: {p:?}");
    }
    assert!(corrupted > 0);
    assert!(panicked.is_empty(), "{} flips made redb panic", panicked.len());
}
