//! Salvage is crash-safe: a crash at every disk operation of a salvage (its reads, the new
//! log's writes, the commit marker, every rename of the swap), under every deterministic crash
//! policy, then another salvage open, gives the same store and the same report as a salvage
//! that was never interrupted. The store has a relocated message, so `state.redb` is read too.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use wharf::testing::{self, CrashPolicy, SimFs};
use wharf::{NackOptions, SalvageReport, Wharf, WharfBuilder};

const DIR: &str = "/salvaged";

fn builder() -> WharfBuilder {
    Wharf::builder()
        .segment_bytes(64 << 10)
        .checkpoint_every_bytes(u64::MAX)
        .checkpoint_interval(None)
        .visibility_timeout(Duration::from_secs(3600))
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut p = format!("m{i:06}-").into_bytes();
    p.resize(len, b'a' + (i % 26) as u8);
    p
}

/// A store on a fresh disk: a message retried with an error, delayed messages, dead letters,
/// two queues over a few segments, closed; then a byte flipped in the push record of an
/// unsettled message in a sealed segment.
fn damaged() -> SimFs {
    let sim = SimFs::new();
    let dir = Path::new(DIR);
    let w = testing::open(builder(), &sim, dir).unwrap();
    let jobs = w.queue("jobs").unwrap();
    let mail = w.queue("mail").unwrap();
    let relocated = jobs.push(payload(0, 900)).unwrap();
    let retry = NackOptions::new().error("smtp 421").delay(Duration::from_secs(3600));
    jobs.pop().unwrap().nack_with(retry).unwrap();
    for i in 1..250 {
        mail.push(payload(i, 300)).unwrap();
        mail.pop().unwrap().ack().unwrap();
    }
    // The first message is relocated into `state.redb` and its segment deleted: the salvage
    // copies its payload out of the state database.
    let a = w.checkpoint().unwrap();
    let b = w.checkpoint().unwrap();
    assert_eq!(a.relocated + b.relocated, 1, "{a:?} {b:?}");
    testing::maintain(&w).unwrap();
    for i in 250..390 {
        let q = if i % 3 == 0 { &mail } else { &jobs };
        if i % 4 == 0 {
            // Stays unsettled where it is: nothing pops it before its time.
            let later = wharf::PushOptions::new().delay(Duration::from_secs(3600));
            q.push_with(payload(i, 500), later).unwrap();
            continue;
        }
        q.push(payload(i, 500)).unwrap();
        let d = q.try_pop().unwrap().unwrap();
        if i % 11 == 0 {
            d.dead_letter("poison").unwrap();
        } else {
            d.ack().unwrap();
        }
    }
    // The oldest unsettled message of the second phase: its push is in a sealed segment.
    let victim =
        jobs.peek(usize::MAX).unwrap().into_iter().find(|p| p.payload.starts_with(b"m0002"));
    let needle = victim.expect("an unsettled message").payload[..8].to_vec();
    w.close().unwrap();
    assert_eq!(relocated.get(), RELOCATED_ID);
    let log = dir.join("log");
    let mut names: Vec<String> =
        sim.names(&log).into_iter().filter(|n| n.ends_with(".seg")).collect();
    names.sort();
    let hit = names.iter().find_map(|n| {
        let bytes = sim.read_file(&log.join(n)).unwrap();
        bytes.windows(needle.len()).position(|w| *w == needle[..]).map(|at| (n.clone(), bytes, at))
    });
    let (name, mut bytes, at) = hit.expect("the victim's push");
    assert_ne!(Some(&name), names.last(), "in a sealed segment");
    bytes[at + 20] ^= 0x08;
    sim.write_file(&log.join(&name), &bytes).unwrap();
    sim
}

/// The id of the relocated message: the first of the first epoch.
const RELOCATED_ID: u64 = 1 << 40 | 1;

type Contents = BTreeMap<u64, (String, Vec<u8>, u32)>;

/// Opens with salvage; returns every message (queue, payload, attempts) and the report.
fn salvage(sim: &SimFs) -> wharf::Result<(Contents, Option<SalvageReport>)> {
    let w = testing::open(builder().salvage(true), sim, Path::new(DIR))?;
    let report = w.recovery_report().salvage.clone();
    let mut out = Contents::new();
    for name in w.queue_names() {
        for p in w.queue(&name)?.peek(usize::MAX)? {
            out.insert(p.id.get(), (name.clone(), p.payload, p.attempts));
        }
    }
    w.close()?;
    Ok((out, report))
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The report without the name of the damaged directory (it holds the time of the salvage).
fn comparable(mut r: SalvageReport) -> SalvageReport {
    r.damaged_dir = None;
    r
}

#[test]
fn a_crash_at_every_disk_operation_of_salvage_then_salvage_again_gives_the_same_result() {
    let base = damaged();
    let reference = base.crash_image(CrashPolicy::KeepAll, 0);
    let (want, report) = salvage(&reference).unwrap();
    let want_report = comparable(report.expect("the store is damaged: salvaged"));
    assert!(want_report.lost_ids().count() == 1, "{want_report}");
    assert!(want.len() > 20);
    let kept = &want[&RELOCATED_ID];
    assert_eq!((kept.0.as_str(), &kept.1, kept.2), ("jobs", &payload(0, 900), 1), "relocated");
    let ops = reference.ops();
    let mut images = 0;
    let mut finished_before_crash = 0;
    for k in 1..=ops {
        let disk = base.crash_image(CrashPolicy::KeepAll, 0);
        disk.crash_at(k);
        let before = unix_secs();
        assert!(salvage(&disk).is_err(), "crash at {k}/{ops}");
        let after = unix_secs();
        for policy in CrashPolicy::DETERMINISTIC {
            let image = disk.crash_image(policy, k);
            let what = format!("crash at {k}/{ops}, {policy:?}");
            let (got, report) = salvage(&image).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got, want, "{what}");
            match report {
                Some(r) => assert_eq!(comparable(r), want_report, "{what}"),
                None => {
                    // The salvage had finished before the crash: its report is beside the
                    // damaged files.
                    finished_before_crash += 1;
                    let found = (before..=after).any(|s| {
                        let report = format!("{DIR}/damaged-{s}/salvage-report.txt");
                        image.read_file(Path::new(&report)).is_ok_and(|b| !b.is_empty())
                    });
                    assert!(found, "{what}: no report beside the damaged files");
                }
            }
            // And the store stays as it is from then on.
            let (again, report) = salvage(&image).unwrap();
            assert_eq!((again, report), (want.clone(), None), "{what}: reopened");
            images += 1;
        }
    }
    assert!(finished_before_crash < images, "some crashes interrupt the salvage itself");
    println!("salvage crash images checked: {images} over {ops} crash points");
}
