//! Crash-point enumeration and fault sweeps on the simulated disk (feature `testing`): every scenario is run
//! once to count its disk operations, then again crashing at every operation index; each crash
//! image (every deterministic policy plus random torn ones) is recovered and checked against
//! an oracle that knows which states are allowed (invariants I1–I5 of CRASH-TESTING.md), and
//! recovery itself is crashed at some of its own operations (all of them over the crash points
//! of a scenario) and recovered again (I8). `state.redb` lives on the same simulated disk, so
//! its operations are crash points too, and the images hold it as a crash would leave it.
//!
//! Set `WHARF_SIM_SEEDS` for more random images per crash point and
//! `WHARF_SIM_RECOVERY_POINTS` for more crashes of each recovery (the long tier), and
//! `WHARF_SIM_SCENARIO` to enumerate only the scenarios whose names contain it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wharf::testing::{self, CrashPolicy, Fault, OpKind, SimFs};
use wharf::{Durability, Error, PushOptions, ReadMode, Wharf, WharfBuilder};

use crate::oracle::{from_snapshot_count, observe, recover_and_check, Ctx, Record, Step, DIR};

/// Every ok-or-crash outcome is fine while running: the oracle judges the recovered state.
pub type Scenario = fn(&mut Ctx) -> Step;

/// Small segments, and a queue's index holding two ready messages: past them, plain pushes
/// join the queue's run and are read back from the log (`WharfBuilder::index_window`).
pub fn small() -> WharfBuilder {
    Wharf::builder().segment_bytes(64 << 10).index_window(2)
}

/// Segments from 64 KiB up to 256 KiB, sized to the log's rate of growth (on the manual clock,
/// no time passes: a segment is sized to twice what was written since the store opened).
fn sized() -> WharfBuilder {
    Wharf::builder().segment_bytes(256 << 10).min_segment_bytes(64 << 10)
}

fn scenarios() -> Vec<(&'static str, WharfBuilder, Scenario)> {
    use Durability::{Immediate as I, None as N};
    const IV: Durability = Durability::Interval(Duration::from_millis(10));
    vec![
        ("segments grow with the log, then shrink once it is settled", sized(), |c| {
            c.open()?;
            assert!(c.push_batch_or_full("q", 60, 2000)?);
            let n = c.pop_batch("q", 60)?;
            for _ in 0..n {
                c.ack(N)?;
            }
            // Settled: the active segment is sealed early and the log goes on in a small one.
            c.maintain()?;
            c.push("q", 100, I)?;
            c.close()
        }),
        ("a record larger than the spares made ahead", sized(), |c| {
            c.open()?;
            c.push("q", 100, I)?;
            c.maintain()?;
            c.push("q", 100_000, I)?;
            c.push("q", 100, I)?;
            c.pop("q")?;
            c.ack(I)
        }),
        ("ack_many", small(), |c| {
            c.open()?;
            c.push_batch("q", 6)?;
            for _ in 0..5 {
                c.pop("q")?;
            }
            c.ack_many(3, I)?;
            c.ack_many(2, IV)?;
            c.push("q", 20, N)?;
            c.maintain()
        }),
        ("first push", small(), |c| {
            c.open()?;
            c.push("q", 10, I)
        }),
        ("several durable pushes", small(), |c| {
            c.open()?;
            for _ in 0..5 {
                c.push("q", 100, I)?;
            }
            Ok(())
        }),
        ("push pop ack", small(), |c| {
            c.open()?;
            for _ in 0..3 {
                c.push("q", 50, I)?;
            }
            c.pop("q")?;
            c.pop("q")?;
            c.ack(I)?;
            c.ack(IV)?;
            c.maintain()
        }),
        ("batch", small(), |c| {
            c.open()?;
            c.push_batch("q", 10)?;
            c.pop("q")?;
            c.ack(I)
        }),
        ("batch across segment rolls", small(), |c| {
            c.open()?;
            c.push("q", 50, I)?;
            // About 150 KiB in one call: the group spans two seals and is kept whole or not
            // at all.
            assert!(c.push_batch_or_full("q", 100, 1500)?);
            c.push("q", 50, N)
        }),
        ("group of three", small(), |c| {
            c.open()?;
            for _ in 0..3 {
                c.push("q", 30, N)?;
            }
            c.sync()?;
            c.push("q", 30, N)
        }),
        ("segment roll", small(), |c| {
            c.open()?;
            for _ in 0..70 {
                c.push("q", 1000, I)?;
            }
            Ok(())
        }),
        ("segment deletion", small(), |c| {
            c.open()?;
            for _ in 0..3 {
                c.push_batch("q", 40)?;
                for _ in 0..40 {
                    c.pop("q")?;
                }
                for _ in 0..40 {
                    c.ack(N)?;
                }
                c.push("big", 30_000, I)?;
                c.pop("big")?;
                c.ack(I)?;
                c.maintain()?;
            }
            Ok(())
        }),
        ("clean reopen", small(), |c| {
            c.open()?;
            c.push("q", 20, I)?;
            c.close()?;
            c.open()?;
            c.push("q", 20, I)?;
            c.pop("q")?;
            c.ack(I)
        }),
        ("lease expiry", small(), |c| {
            c.open()?;
            c.push("q", 20, I)?;
            c.pop("q")?;
            c.clock.advance(Duration::from_secs(31)); // past the 30 s visibility timeout
            let (_, stale) = c.held.remove(0);
            c.pop("q")?; // the same message, second attempt
            assert!(matches!(
                stale.ack(),
                Err(Error::LeaseExpired) | Err(Error::Io(_)) | Err(Error::Poisoned(_))
            ));
            c.ack(I)
        }),
        ("nack and redeliver", small(), |c| {
            c.open()?;
            c.push("q", 20, I)?;
            c.pop("q")?;
            c.nack()?;
            c.pop("q")?;
            c.ack(I)
        }),
        ("several queues", small(), |c| {
            c.open()?;
            for round in 0..3 {
                for q in ["a", "b", "c"] {
                    c.push(q, 40 + round, I)?;
                }
            }
            c.pop("b")?;
            c.ack(I)
        }),
        ("write-behind", small(), |c| {
            c.open()?;
            for _ in 0..6 {
                c.push("q", 60, N)?;
            }
            c.maintain()?;
            c.push("q", 60, N)
        }),
        ("interval", small().push_durability(IV).ack_durability(IV), |c| {
            c.open()?;
            for _ in 0..4 {
                c.push("q", 60, IV)?;
            }
            c.pop("q")?;
            c.ack(IV)?;
            c.maintain()
        }),
        ("large payload", small(), |c| {
            c.open()?;
            c.push("q", 20_000, I)?;
            c.push("q", 5, I)
        }),
        ("dropped delivery then close", small(), |c| {
            c.open()?;
            c.push("q", 20, I)?;
            c.pop("q")?;
            c.held.clear();
            c.close()
        }),
        ("recycled segments", small(), crate::recycle::recycled_segments),
        ("queue created after a roll", small(), |c| {
            c.open()?;
            for _ in 0..40 {
                c.push("first", 2000, N)?;
            }
            c.sync()?;
            c.push("second", 10, I)?;
            c.close()?;
            c.open()?;
            c.push("second", 10, I)
        }),
    ]
}

/// Messages acked by one `ack_many` in `ack_many_across_a_roll`: two `Acks` records (1,024
/// ids, then 16).
const ACKED_ACROSS_A_ROLL: usize = 1_040;

/// Pushes and pops `ACKED_ACROSS_A_ROLL` messages, fills the 64 KiB active segment up to
/// where the first `Acks` record of their `ack_many` fits and the second does not, and acks
/// them all: one group whose records lie on both sides of a seal. Crashed at every disk
/// operation from the `ack_many` on.
fn ack_many_across_a_roll(c: &mut Ctx) -> Step {
    const SEG: u64 = 64 << 10;
    // The first record (24 + 8 + 8 × 1,024 bytes) and the 64 bytes each segment keeps free
    // fit; the second (24 + 8 + 8 × 16) does not.
    const ROOM: u64 = 8_224 + 64 + 100;
    assert!(c.push_batch_or_full("q", ACKED_ACROSS_A_ROLL, 8)?);
    assert_eq!(c.pop_batch("q", ACKED_ACROSS_A_ROLL)?, ACKED_ACROSS_A_ROLL);
    let room = |c: &mut Ctx| -> Result<(u64, u64), wharf::Error> {
        c.sync()?;
        let lsn = c.w().stats().durable_lsn;
        let end = (lsn / SEG + 1) * SEG;
        Ok((end - lsn, end))
    };
    c.push("fill", 20, Durability::Immediate)?; // creates the queue: its catalog record
    let (mut left, mut end) = room(c)?;
    // A push record is 64 bytes and its payload (at least 20: its unique prefix).
    while left < ROOM + 64 + 64 + 20 {
        c.push("fill", 1000, Durability::Immediate)?;
        (left, end) = room(c)?;
    }
    let fill = usize::try_from(left - ROOM - 64).unwrap();
    c.push("fill", fill, Durability::Immediate)?;
    assert_eq!(room(c)?.0, ROOM, "the filler left the room planned");
    // Pushing and popping many messages is crashed at in other scenarios.
    c.crash_points_from_here();
    c.ack_many(ACKED_ACROSS_A_ROLL, Durability::Immediate)?;
    assert!(c.w().stats().durable_lsn > end, "the acks went on in the next segment");
    c.push("q", 10, Durability::None)
}

/// Runs a scenario on `sim`, crashing at `crash_at` if given; returns the oracle's record.
fn run(builder: &WharfBuilder, f: Scenario, sim: &SimFs, crash_at: Option<u64>) -> Record {
    if let Some(k) = crash_at {
        sim.crash_at(k);
    }
    let mut c = Ctx::new(sim.clone(), builder.clone());
    let _ = f(&mut c); // an error is the crash (or a fault): the outcome is judged after
    let record = c.record();
    drop(c);
    record
}

fn seeds() -> u64 {
    std::env::var("WHARF_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2)
}

/// How many of its own disk operations the recovery of one deterministic crash image is
/// crashed at (I8), at most: `WHARF_SIM_RECOVERY_POINTS` (default 5; the long tier sets more).
/// Every other operation, as it was before the state database, made the enumeration
/// quadratic once recovery opened `state.redb` (redb reads, checks and repairs it, and writes
/// it at the close: some 80 operations instead of 21). Every recovery operation is still
/// crashed at by some crash point of the scenario (see `recovery_points`).
fn recovery_points_cap() -> u64 {
    std::env::var("WHARF_SIM_RECOVERY_POINTS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

/// The operations of a recovery of `rec_ops` operations to crash at, for the image of crash
/// point `k`: every `stride`-th one, starting at `k % stride`, so that consecutive crash points
/// of a scenario together cover every operation of recoveries that look alike.
fn recovery_points(k: u64, rec_ops: u64) -> Vec<u64> {
    let stride = rec_ops.div_ceil(recovery_points_cap().max(1)).max(1);
    (1 + k % stride..=rec_ops).step_by(stride as usize).collect()
}

/// What an enumeration did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    /// Crash points (disk operations crashed at).
    pub points: u64,
    /// Crash images recovered and checked (recoveries of crashed recoveries included).
    pub recoveries: u64,
    /// Crash images (of the scenarios, not of their recoveries) holding `state.redb`.
    pub with_state: u64,
    /// Crash images holding a `state.redb.tmp` of an interrupted creation.
    pub with_state_tmp: u64,
    /// Recoveries that started from a checkpoint's snapshot (the rest replayed the whole log).
    pub from_snapshot: u64,
}

/// Crashes every scenario at every disk operation and checks every crash image (and crashes
/// of its recovery).
pub fn enumerate(scenarios: &[(&'static str, WharfBuilder, Scenario)]) -> Figures {
    let mut all = Figures::default();
    for (name, builder, f) in scenarios {
        let started = std::time::Instant::now();
        let before = all;
        let snapshots_before = from_snapshot_count();
        let probe = SimFs::new();
        let record = run(builder, *f, &probe, None);
        let ops = probe.ops();
        let first = record.from_op.unwrap_or(1);
        // The scenario's own end state must pass too.
        let image = probe.crash_image(CrashPolicy::KeepAll, 0);
        recover_and_check(builder, &image, &record, true, &format!("{name}: no crash"));
        for k in first..=ops {
            all.points += 1;
            let sim = SimFs::new();
            let record = run(builder, *f, &sim, Some(k));
            let clocked = builder.clone().clock(Arc::new(record.clock.clone()));
            let mut images: Vec<(CrashPolicy, u64)> =
                CrashPolicy::DETERMINISTIC.iter().map(|&p| (p, 0)).collect();
            images.extend((0..seeds()).map(|s| (CrashPolicy::RandomSubset, k * 1000 + s)));
            for (policy, seed) in images {
                let what = format!("{name}: crash at op {k}/{ops}, {policy:?}, seed {seed}");
                let keep_all = policy == CrashPolicy::KeepAll;
                let image = sim.crash_image(policy, seed);
                // The state database is on the same simulated disk: it is in the image as a
                // power loss at this point would leave it.
                let names = image.names(Path::new(DIR));
                all.with_state += u64::from(names.iter().any(|n| n == "state.redb"));
                all.with_state_tmp += u64::from(names.iter().any(|n| n == "state.redb.tmp"));
                // A copy to crash during recovery, from the same image.
                let pristine = image.crash_image(CrashPolicy::KeepAll, 0);
                recover_and_check(builder, &image, &record, keep_all, &what);
                all.recoveries += 1;
                // The disk operations of recovery and of closing the recovered store (without
                // the checks, which `again` below does not run).
                let count = pristine.crash_image(CrashPolicy::KeepAll, 0);
                drop(testing::open(clocked.clone(), &count, Path::new(DIR)));
                let rec_ops = count.ops();
                // I8: crash recovery (or the close of the recovered store) itself at some of
                // its operations (`recovery_points` for the deterministic images, which
                // together cover them all; spread over the seeds for random ones), then
                // recover again from what a power loss would leave.
                let points: Vec<u64> = if policy == CrashPolicy::RandomSubset {
                    vec![1 + (seed % rec_ops.max(1))]
                } else {
                    recovery_points(k, rec_ops)
                };
                for j in points {
                    let again = pristine.crash_image(CrashPolicy::KeepAll, 0);
                    again.crash_at(j);
                    let _ = testing::open(clocked.clone(), &again, Path::new(DIR));
                    for p2 in [CrashPolicy::DropAllUnsynced, CrashPolicy::KeepAll] {
                        let img2 = again.crash_image(p2, j);
                        let what2 = format!("{what}; recovery crashed at op {j}, {p2:?}");
                        recover_and_check(builder, &img2, &record, keep_all, &what2);
                        all.recoveries += 1;
                    }
                }
            }
        }
        all.from_snapshot += from_snapshot_count() - snapshots_before;
        println!(
            "  {name}: {} crash points, {} recoveries ({} from a snapshot), {} images with \
             state.redb, {:.1} s",
            all.points - before.points,
            all.recoveries - before.recoveries,
            all.from_snapshot - before.from_snapshot,
            all.with_state - before.with_state,
            started.elapsed().as_secs_f64()
        );
    }
    all
}

#[test]
fn every_crash_point_of_every_scenario_recovers_to_an_allowed_state() {
    let mut scenarios = scenarios();
    let only = std::env::var("WHARF_SIM_SCENARIO").ok();
    if let Some(only) = &only {
        scenarios.retain(|(name, _, _)| name.contains(only.as_str()));
        assert!(!scenarios.is_empty(), "no scenario's name contains {only:?}");
    }
    let all = only.is_none();
    assert!(scenarios.len() >= 15 || !all);
    let Figures { points, recoveries, .. } = enumerate(&scenarios);
    println!("crash points: {points}, recoveries checked: {recoveries}");
    assert!(recoveries >= 50_000 || !all, "only {recoveries} recoveries");
}

/// An `ack_many` of more than 1,024 deliveries is several `Acks` records in one group, here
/// across a segment roll: every crash keeps all of its acks or none (the oracle's batch check),
/// and recovery crashed too recovers to the same.
#[test]
fn an_ack_many_across_a_segment_roll_is_kept_whole_at_every_crash_point() {
    let scenario: Scenario = |c| {
        c.open()?;
        ack_many_across_a_roll(c)
    };
    let Figures { points, recoveries, .. } =
        enumerate(&[("ack_many of more than one record across a segment roll", small(), scenario)]);
    assert!(points >= 5 && recoveries >= 100, "{points} crash points, {recoveries} recoveries");
}

/// Runs every scenario with each kind of disk operation failing in turn (once or for good,
/// EIO or ENOSPC), then recovers and checks; then crashes each scenario (at every 7th disk
/// operation) and fails each kind of operation of its recovery in turn. Adds the call sites
/// reached to `all_sites`; returns the number of trials.
pub fn sweep(scenarios: &[(&'static str, WharfBuilder, Scenario)], all_sites: &SimFs) -> u64 {
    sweep_with(scenarios, all_sites, 7)
}

/// [`sweep`], crashing each scenario at every `recovery_step`-th disk operation for the faults
/// in recovery.
pub fn sweep_with(
    scenarios: &[(&'static str, WharfBuilder, Scenario)],
    all_sites: &SimFs,
    recovery_step: usize,
) -> u64 {
    let mut trials = 0u64;
    for (name, builder, f) in scenarios {
        let started = std::time::Instant::now();
        let before = trials;
        let (name, builder, f) = (*name, builder.clone(), *f);
        for kind in OpKind::ALL {
            for no_space in [false, true] {
                for persistent in [false, true] {
                    for nth in 1.. {
                        let sim = SimFs::new();
                        sim.set_fault(Some(Fault { kind, nth, no_space, persistent }));
                        let record = run(&builder, f, &sim, None);
                        let fired = sim.fault_fired();
                        all_sites.merge_sites(&sim.sites());
                        trials += 1;
                        sim.set_fault(None);
                        // After the fault: recover from what a power loss would leave, and
                        // from what a process crash would, and check.
                        let what = format!("{name}: {kind:?} #{nth} fails (enospc {no_space}, persistent {persistent})");
                        for policy in [CrashPolicy::KeepAll, CrashPolicy::DropAllUnsynced] {
                            let image = sim.crash_image(policy, nth);
                            let keep_all = policy == CrashPolicy::KeepAll;
                            let what = format!("{what}, {policy:?}");
                            recover_and_check(&builder, &image, &record, keep_all, &what);
                        }
                        if !fired {
                            break;
                        }
                    }
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!("  {name}: {} fault trials, {secs:.1} s", trials - before);
    }
    // Faults during recovery: images with torn tails, leftover temporary files and spares,
    // opened with each kind of operation failing in turn; a failed recovery must leave a disk
    // that the next, fault-free recovery still brings to an allowed state.
    for (name, builder, f) in scenarios {
        let started = std::time::Instant::now();
        let before = trials;
        let (name, builder, f) = (*name, builder.clone(), *f);
        let probe = SimFs::new();
        run(&builder, f, &probe, None);
        for k in (1..=probe.ops()).step_by(recovery_step) {
            let sim = SimFs::new();
            let record = run(&builder, f, &sim, Some(k));
            for (policy, seed) in
                [(CrashPolicy::RandomSubset, k), (CrashPolicy::GrowWithGarbage, 0)]
            {
                let image = sim.crash_image(policy, seed);
                for kind in OpKind::ALL {
                    for nth in 1.. {
                        let copy = image.crash_image(CrashPolicy::KeepAll, 0);
                        copy.set_fault(Some(Fault {
                            kind,
                            nth,
                            no_space: false,
                            persistent: false,
                        }));
                        let what = format!(
                            "{name}: crash at {k}, {policy:?}; recovery {kind:?} #{nth} fails"
                        );
                        // Under the fault the open may fail (cleanly); the fault-free open
                        // below judges what it left on the disk.
                        // Both read modes: the map, and `pread` (its own call sites).
                        let mode = match policy {
                            CrashPolicy::GrowWithGarbage => ReadMode::Pread,
                            _ => ReadMode::Map,
                        };
                        let _ =
                            testing::open(builder.clone().read_mode(mode), &copy, Path::new(DIR));
                        let fired = copy.fault_fired();
                        all_sites.merge_sites(&copy.sites());
                        trials += 1;
                        copy.set_fault(None);
                        let after = copy.crash_image(CrashPolicy::KeepAll, 0);
                        let what = format!("{what}, then again");
                        recover_and_check(&builder, &after, &record, false, &what);
                        if !fired {
                            break;
                        }
                    }
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!("  {name}: {} fault trials in recovery, {secs:.1} s", trials - before);
    }
    trials
}

#[test]
fn every_storage_call_site_receives_an_injected_error_and_the_store_stays_safe() {
    let all_sites = SimFs::new();
    let trials = sweep(&scenarios(), &all_sites);
    let sites = all_sites.sites();
    let missed: Vec<_> =
        sites.iter().filter(|(_, c)| c.injected == 0).map(|(s, _)| s.clone()).collect();
    let lib_sites = sites.keys().filter(|s| s.starts_with("src/")).count();
    let lib_missed: Vec<_> = missed.iter().filter(|s| s.starts_with("src/")).collect();
    println!(
        "fault trials: {trials}; library call sites with an injected error: {}/{}",
        lib_sites - lib_missed.len(),
        lib_sites
    );
    for (site, c) in &sites {
        println!("  {site}: {} calls, {} injected", c.calls, c.injected);
    }
    assert!(lib_missed.is_empty(), "call sites never failed: {lib_missed:?}");
}

#[test]
fn a_failed_sync_poisons_and_no_waiter_of_its_group_gets_ok() {
    let sim = SimFs::new();
    let w = testing::open(small(), &sim, Path::new(DIR)).unwrap();
    let q = w.queue("q").unwrap();
    q.push(b"before").unwrap();
    sim.set_fault(Some(Fault { kind: OpKind::Sync, nth: 1, no_space: false, persistent: false }));
    // Three records in one group: the group's sync fails, so none of them may be acknowledged.
    for p in [b"g1", b"g2", b"g3"] {
        q.push_with(p, PushOptions::new().durability(Durability::None)).unwrap();
    }
    assert!(matches!(w.sync(), Err(Error::Poisoned(_))));
    // The fault was transient, but a failed fsync is never retried: still poisoned.
    assert!(matches!(w.sync(), Err(Error::Poisoned(_))));
    assert!(matches!(q.push(b"after"), Err(Error::Poisoned(_))));
    drop((q, w));
    // fsyncgate: the failed sync's pages were marked clean; a power loss drops them.
    let image = sim.crash_image(CrashPolicy::DropAllUnsynced, 0);
    let w = testing::open(small(), &image, Path::new(DIR)).unwrap();
    let got: Vec<_> = observe(&w).remove("q").unwrap().into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, vec![b"before".to_vec()]);
}

/// Found by the `ops_faults` fuzz target: after a failed sync, a reopen in the same process
/// read the records the failed sync left in the page cache (never to reach the disk), wrote a
/// durable epoch after them, and a later power loss left a hole below durable records, which
/// failed the next open as corruption. The reopen now cuts the log where it was last durable.
#[test]
fn a_reopen_in_the_same_process_after_a_failed_sync_survives_a_later_power_loss() {
    let sim = SimFs::new();
    let w = testing::open(small(), &sim, Path::new(DIR)).unwrap();
    let q = w.queue("q").unwrap();
    q.push(b"before").unwrap();
    sim.set_fault(Some(Fault { kind: OpKind::Sync, nth: 1, no_space: false, persistent: false }));
    assert!(matches!(q.push(b"in doubt"), Err(Error::Poisoned(_))));
    sim.set_fault(None);
    drop((q, w));
    // Same process, same (simulated) page cache: reopen as the error advises, push more.
    let w = testing::open(small(), &sim, Path::new(DIR)).unwrap();
    let q = w.queue("q").unwrap();
    q.push(b"after").unwrap();
    drop((q, w));
    // Now the power goes: what the failed sync left is gone, and nothing may depend on it.
    for policy in CrashPolicy::DETERMINISTIC {
        let image = sim.crash_image(policy, 0);
        let w = testing::open(small(), &image, Path::new(DIR))
            .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        let got: Vec<_> = observe(&w).remove("q").unwrap().into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()], "{policy:?}");
    }
}

/// Found by reading the code while writing the fuzz targets: a store reopened with segments too
/// small for its queue catalog made `ensure_room` create segments for ever. Now the push fails
/// with a clear error and nothing else changes.
#[test]
fn a_catalog_too_large_for_new_segments_fails_pushes_instead_of_looping() {
    let sim = SimFs::new();
    let dir = Path::new(DIR);
    let w = testing::open(Wharf::builder().segment_bytes(1 << 20), &sim, dir).unwrap();
    let mut n = 0;
    while w.queue(&format!("{n:0>120}")).is_ok() {
        n += 1;
    }
    w.close().unwrap();
    let w = testing::open(small(), &sim, dir).unwrap(); // 64 KiB segments from now on
    let q = w.queue(&format!("{:0>120}", 0)).unwrap();
    let err = (0..100).find_map(|_| q.push(vec![7u8; 20_000]).err()).expect("pushes must fail");
    assert!(matches!(&err, Error::InvalidOption(m) if m.contains("larger segments")), "{err}");
    assert!(sim.names(&dir.join("log")).len() < 10, "segments were created in a loop");
    // What is stored is intact and still served.
    assert!(q.try_pop().unwrap().is_some());
}
