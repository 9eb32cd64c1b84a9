//! Format compatibility: stores written by older versions of wharf, checked in under
//! `tests/fixtures/v<N>/` by the code of that version, open with today's code and read exactly
//! as their writer left them.
//!
//! Each fixture holds `store/` (the directory, closed cleanly) and `expected.txt`, what its
//! writer's version reads of it: for version 2 and later the dump of every queue (see [`dump`]),
//! for version 1 (which had no `peek`) what a drain of a copy popped. The writer is
//! [`write_fixture`], an ignored test: `WHARF_WRITE_FIXTURE=1 cargo test --all-features --test it
//! write_fixture -- --ignored` writes the fixture of the current `FORMAT_VERSION` (do it once,
//! when a version is new, and never again for that version).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wharf::{DeadLetters, Durability, PushOptions, QueueConfig, Wharf, WharfBuilder};

/// The format versions whose fixtures are checked in (besides version 1, read by its own test):
/// version 3 was written by the code of 93b8178, version 4 by that of 31791f9.
const VERSIONS: &[u32] = &[2, 3, 4];

fn fixture_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}"))
}

/// Small segments so that the store rolls, checkpoints relocate and segments are deleted.
fn builder() -> WharfBuilder {
    Wharf::builder()
        .segment_bytes(64 << 10)
        .checkpoint_every_bytes(u64::MAX)
        .checkpoint_interval(None)
        .visibility_timeout(Duration::from_secs(3600))
}

fn ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// Every queue, in name order, with every waiting message (ready, delayed or dead) as
/// `peek` shows it: id, payload, attempts, priority, due, dead-letter origin, last error, push
/// time, expiry.
fn dump(w: &Wharf) -> String {
    let mut out = String::new();
    let mut names = w.queue_names();
    names.sort();
    for name in names {
        let q = w.queue(&name).unwrap();
        writeln!(out, "queue {name} config {:?}", q.config().unwrap()).unwrap();
        for id in q.waiting_ids().unwrap() {
            let p = q.peek_id(id).unwrap().unwrap();
            writeln!(
                out,
                "  {} payload={:?} attempts={} priority={} due={:?} from={:?} error={:?} \
                 pushed={:?} expires={:?}",
                id.get(),
                String::from_utf8_lossy(&p.payload),
                p.attempts,
                p.priority,
                p.due.map(ms),
                p.dead_lettered_from,
                p.last_error,
                p.pushed_at.map(ms),
                p.expires.map(ms),
            )
            .unwrap();
        }
    }
    out
}

/// The workload of a fixture: pushes with every option, acks, retries with an error,
/// dead letters (explicit and by max attempts), a checkpoint that relocates stragglers and
/// deletes segments, and a message still leased at the close.
#[test]
#[ignore = "writes a fixture; run once per format version with WHARF_WRITE_FIXTURE=1"]
fn write_fixture() {
    if std::env::var_os("WHARF_WRITE_FIXTURE").is_none() {
        return;
    }
    let out = fixture_dir(wharf::FORMAT_VERSION);
    assert!(!out.exists(), "{} exists: a version's fixture is written once", out.display());
    let store = out.join("store");
    let w = builder().open(&store).unwrap();
    let far = UNIX_EPOCH + Duration::from_secs(4_102_444_800); // 2100-01-01
    let jobs = w.queue("jobs").unwrap();
    jobs.set_config(&QueueConfig::new().max_attempts(1)).unwrap();
    let mail = w.queue("mail").unwrap();
    mail.set_config(
        &QueueConfig::new()
            .max_attempts(5)
            .dead_letters(DeadLetters::To("mail.failed".into()))
            .dedup_window(Duration::from_secs(600)),
    )
    .unwrap();
    // Many small messages, most acked, across several segments.
    for i in 0..300 {
        jobs.push(format!("job {i:04} {}", "x".repeat(400))).unwrap();
    }
    for i in 0..300 {
        let d = jobs.pop().unwrap();
        match i % 50 {
            // Stragglers: failed once under max_attempts(1), so dead letters.
            7 => d.nack().unwrap(),
            13 => d.dead_letter("bad input").unwrap(),
            _ => d.ack().unwrap(),
        }
    }
    w.checkpoint().unwrap();
    let opts = PushOptions::new().priority(3).not_before(far).expires_at(far);
    mail.push_with("to: ada, later", opts).unwrap();
    mail.push_with("to: bob, keyed", PushOptions::new().dedup_key("bob-1")).unwrap();
    mail.push_batch(["to: cy", "to: di", "to: ed"]).unwrap();
    let d = mail.pop().unwrap();
    d.nack_with(wharf::NackOptions::new().delay(Duration::from_secs(0)).error("smtp 451")).unwrap();
    for i in 0..40 {
        jobs.push_with(format!("late {i:02}"), PushOptions::new().durability(Durability::None))
            .unwrap();
    }
    w.checkpoint().unwrap();
    // Leased at the close: ready again after the reopen, one attempt counted.
    let leased = jobs.pop().unwrap();
    std::mem::forget(leased);
    w.close().unwrap();
    // The dump is taken by a reopen (it changes the store as every open does: a new epoch),
    // so that it shows what an open of this version reads, the lease gone included.
    let w = builder().open(&store).unwrap();
    let expected = dump(&w);
    w.close().unwrap();
    std::fs::write(out.join("expected.txt"), expected).unwrap();
    std::fs::remove_file(store.join("LOCK")).ok();
}

/// The format-1 store of `tests/fixtures/v1/`, written by the code of 764151e (format version
/// 1; `writer.rs.txt` beside it is the program, an example of that version), opens with
/// today's code, verifies healthy, and a drain pops exactly what a drain by its writer's
/// version popped (`expected.txt`: queue, id, attempt, payload per message, in pop order).
#[test]
fn a_format_1_store_drains_as_its_writer_drained_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    copy_dir(&fixture_dir(1).join("store"), &store);
    let report = Wharf::verify(&store).unwrap();
    assert!(report.is_healthy(), "v1 fixture: {:?}", report.problems);
    let w = builder().open(&store).unwrap();
    let mut names = w.queue_names();
    names.sort();
    let mut got = String::new();
    for name in names {
        let q = w.queue(&name).unwrap();
        let mut held = Vec::new();
        while let Some(d) = q.try_pop().unwrap() {
            let payload = String::from_utf8_lossy(d.payload()).into_owned();
            writeln!(got, "{name} {} {} {payload}", d.id().get(), d.attempt()).unwrap();
            held.push(d);
        }
    }
    let expected = std::fs::read_to_string(fixture_dir(1).join("expected.txt")).unwrap();
    assert_eq!(got, expected, "the v1 fixture drains otherwise");
}

/// Each checked-in fixture opens with today's code, reads exactly as its writer dumped it,
/// verifies healthy, and takes new pushes and pops after the reopen.
#[test]
fn older_stores_open_and_read_exactly() {
    for &version in VERSIONS {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        copy_dir(&fixture_dir(version).join("store"), &store);
        let report = Wharf::verify(&store).unwrap();
        assert!(report.is_healthy(), "v{version} fixture: {:?}", report.problems);
        let expected = std::fs::read_to_string(fixture_dir(version).join("expected.txt")).unwrap();
        let w = builder().open(&store).unwrap();
        let got = dump(&w);
        assert_eq!(got, expected, "v{version} fixture reads otherwise");
        let q = w.queue("jobs").unwrap();
        let id = q.push("after the upgrade").unwrap();
        assert!(id.get() > 0);
        w.close().unwrap();
        let w = builder().open(&store).unwrap();
        assert!(dump(&w).contains("after the upgrade"), "v{version}: a new push was lost");
        w.close().unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
