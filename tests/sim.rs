//! Deterministic crash tests on the simulated disk (feature `testing`): every scenario is run
//! once to count its disk operations, then again crashing at every operation index; each crash
//! image (every deterministic policy plus random torn ones) is recovered and checked against
//! an oracle that knows which states are allowed (invariants I1–I5 of CRASH-TESTING.md), and
//! recovery itself is crashed at every one of its own operations and recovered again (I8).
//!
//! Set `WHARF_SIM_SEEDS` for more random images per crash point (the long tier).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use wharf::testing::{self, CrashPolicy, Fault, OpKind, SimFs};
use wharf::{Delivery, Durability, Error, PushOptions, Wharf, WharfBuilder};

const DIR: &str = "/store";
/// The queue where checks push a message to see that new ids are fresh.
const PROBE: &str = "i5-probe";

/// What is known of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Never attempted.
    No,
    /// Returned `Ok` but not durable yet.
    Volatile,
    /// Durable: returned `Ok` durably, or a later durable call covered it.
    Durable,
    /// The call failed or was cut by the crash: it may or may not have happened.
    Unknown,
}

#[derive(Debug, Clone)]
struct Msg {
    queue: String,
    payload: Vec<u8>,
    id: Option<u64>,
    push: St,
    ack: St,
}

/// The oracle's record of a run, and the live handles.
struct Ctx {
    sim: SimFs,
    builder: WharfBuilder,
    wharf: Option<Wharf>,
    msgs: Vec<Msg>,
    held: Vec<(usize, Delivery)>,
    counter: usize,
}

/// Stops a scenario at the crash: every call after it fails anyway.
type Step = Result<(), Error>;

impl Ctx {
    fn new(sim: SimFs, builder: WharfBuilder) -> Ctx {
        Ctx { sim, builder, wharf: None, msgs: Vec::new(), held: Vec::new(), counter: 0 }
    }

    fn open(&mut self) -> Step {
        self.held.clear();
        self.wharf = None;
        self.wharf = Some(testing::open(self.builder.clone(), &self.sim, Path::new(DIR))?);
        Ok(())
    }

    fn w(&self) -> &Wharf {
        self.wharf.as_ref().unwrap()
    }

    /// Everything staged before a durable `Ok` is durable too (prefix durability).
    fn all_durable(&mut self, upto: usize) {
        for m in self.msgs.iter_mut().take(upto) {
            if m.push == St::Volatile {
                m.push = St::Durable;
            }
            if m.ack == St::Volatile {
                m.ack = St::Durable;
            }
        }
    }

    fn push(&mut self, queue: &str, len: usize, d: Durability) -> Step {
        let n = self.counter;
        self.counter += 1;
        let mut payload = format!("{queue}:{n}:").into_bytes();
        payload.resize(len.max(payload.len()), b'a' + (n % 26) as u8);
        self.msgs.push(Msg {
            queue: queue.into(),
            payload: payload.clone(),
            id: None,
            push: St::Unknown,
            ack: St::No,
        });
        let i = self.msgs.len() - 1;
        let q = self.w().queue(queue)?;
        let id = q.push_with(&payload, PushOptions::new().durability(d))?;
        self.msgs[i].id = Some(id.get());
        if d == Durability::Immediate {
            self.msgs[i].push = St::Durable;
            self.all_durable(i);
        } else {
            self.msgs[i].push = St::Volatile;
        }
        Ok(())
    }

    fn push_batch(&mut self, queue: &str, n: usize) -> Step {
        let first = self.msgs.len();
        let mut payloads = Vec::new();
        for _ in 0..n {
            let c = self.counter;
            self.counter += 1;
            let p = format!("{queue}:{c}:batch").into_bytes();
            self.msgs.push(Msg {
                queue: queue.into(),
                payload: p.clone(),
                id: None,
                push: St::Unknown,
                ack: St::No,
            });
            payloads.push(p);
        }
        let ids = self.w().queue(queue)?.push_batch(&payloads)?;
        for (k, id) in ids.iter().enumerate() {
            self.msgs[first + k].id = Some(id.get());
            self.msgs[first + k].push = St::Durable;
        }
        self.all_durable(first + n);
        Ok(())
    }

    fn pop(&mut self, queue: &str) -> Step {
        if let Some(d) = self.w().queue(queue)?.try_pop()? {
            let i = self.find(queue, d.payload());
            self.held.push((i, d));
        }
        Ok(())
    }

    fn find(&self, queue: &str, payload: &[u8]) -> usize {
        self.msgs
            .iter()
            .position(|m| m.queue == queue && m.payload == payload)
            .expect("a known payload")
    }

    /// Acks the oldest held delivery.
    fn ack(&mut self, d: Durability) -> Step {
        if self.held.is_empty() {
            return Ok(());
        }
        let (i, del) = self.held.remove(0);
        self.msgs[i].ack = St::Unknown;
        del.ack_with(d)?;
        if d == Durability::Immediate {
            self.msgs[i].ack = St::Durable;
            let upto = self.msgs.len();
            self.all_durable(upto);
        } else {
            self.msgs[i].ack = St::Volatile;
        }
        Ok(())
    }

    fn nack(&mut self) -> Step {
        if self.held.is_empty() {
            return Ok(());
        }
        let (_, del) = self.held.remove(0);
        del.nack()?;
        Ok(())
    }

    fn sync(&mut self) -> Step {
        self.w().sync()?;
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(())
    }

    fn maintain(&mut self) -> Step {
        testing::maintain(self.w())?;
        let upto = self.msgs.len();
        self.all_durable(upto);
        Ok(())
    }

    fn close(&mut self) -> Step {
        self.held.clear();
        if let Some(w) = self.wharf.take() {
            w.close()?;
            let upto = self.msgs.len();
            self.all_durable(upto);
        }
        Ok(())
    }
}

/// Every ok-or-crash outcome is fine while running: the oracle judges the recovered state.
type Scenario = fn(&mut Ctx) -> Step;

fn small() -> WharfBuilder {
    Wharf::builder().segment_bytes(64 << 10)
}

fn scenarios() -> Vec<(&'static str, WharfBuilder, Scenario)> {
    use Durability::{Immediate as I, None as N};
    const IV: Durability = Durability::Interval(Duration::from_millis(10));
    vec![
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
        ("lease expiry", small().visibility_timeout(Duration::from_millis(2)), |c| {
            c.open()?;
            c.push("q", 20, I)?;
            c.pop("q")?;
            std::thread::sleep(Duration::from_millis(3));
            c.held.clear(); // the stale holder gives up
            c.pop("q")?;
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

/// The messages found after recovery, per queue, in delivery order.
fn observe(w: &Wharf) -> BTreeMap<String, Vec<(u64, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    for name in w.queue_names() {
        let q = w.queue(&name).unwrap();
        let mut held = Vec::new();
        while let Some(d) = q.try_pop().unwrap() {
            held.push(d);
        }
        out.insert(name, held.iter().map(|d| (d.id().get(), d.payload().to_vec())).collect());
    }
    out
}

/// Checks I1–I5 for the store recovered from an image; panics with `what` on a violation.
fn check(w: &Wharf, msgs: &[Msg], what: &str) {
    let seen = observe(w);
    let mut present = BTreeSet::new();
    for (queue, list) in &seen {
        if queue == PROBE {
            continue; // written by an earlier check of the same disk
        }
        let mut last = 0;
        for (id, payload) in list {
            let i = msgs
                .iter()
                .position(|m| &m.queue == queue && &m.payload == payload)
                .unwrap_or_else(|| panic!("{what}: I3 phantom payload in {queue}: {payload:?}"));
            assert!(present.insert(i), "{what}: I3 message {i} delivered twice");
            assert!(*id > last, "{what}: I4 ids out of order in {queue}");
            last = *id;
            if let Some(known) = msgs[i].id {
                assert_eq!(known, *id, "{what}: I5 message {i} has another id");
            }
            assert!(msgs[i].push != St::No, "{what}: I3 message {i} never pushed");
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        if m.push == St::Durable && m.ack == St::No {
            assert!(present.contains(&i), "{what}: I1 durable message {i} ({}) lost", m.queue);
        }
        if m.ack == St::Durable {
            assert!(!present.contains(&i), "{what}: I2 durably acked message {i} came back");
        }
    }
    // I4: survivors form a prefix: a surviving message implies every earlier message that was
    // pushed with `Ok` and never acked survived too.
    if let Some(&last) = present.iter().max() {
        for (i, m) in msgs.iter().enumerate().take(last) {
            if m.ack == St::No && matches!(m.push, St::Volatile | St::Durable) {
                assert!(present.contains(&i), "{what}: I4 hole: {i} lost while {last} survived");
            }
        }
    }
    // I5: a new id is above every id handed out before.
    let max_id = msgs.iter().filter_map(|m| m.id).max().unwrap_or(0);
    let q = w.queue(PROBE).unwrap();
    let id = q.push(b"probe").unwrap();
    assert!(id.get() > max_id, "{what}: I5 new id {id} not above {max_id:x}");
}

/// Runs a scenario on `sim`, crashing at `crash_at` if given; returns the oracle's record.
fn run(builder: &WharfBuilder, f: Scenario, sim: &SimFs, crash_at: Option<u64>) -> Vec<Msg> {
    if let Some(k) = crash_at {
        sim.crash_at(k);
    }
    let mut c = Ctx::new(sim.clone(), builder.clone());
    let _ = f(&mut c); // an error is the crash (or a fault): the outcome is judged after
    let msgs = c.msgs.clone();
    drop(c);
    msgs
}

/// Opens `image`, checks the invariants, and returns how many disk operations that took.
fn recover_and_check(builder: &WharfBuilder, image: &SimFs, msgs: &[Msg], what: &str) -> u64 {
    let before = image.ops();
    // Leases must outlast the check, however slow the build (leases are not persisted).
    let builder = builder.clone().visibility_timeout(Duration::from_secs(3600));
    let w = testing::open(builder, image, Path::new(DIR))
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    check(&w, msgs, what);
    drop(w);
    image.ops() - before
}

fn seeds() -> u64 {
    std::env::var("WHARF_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2)
}

#[test]
fn every_crash_point_of_every_scenario_recovers_to_an_allowed_state() {
    let mut total_points = 0u64;
    let mut recoveries = 0u64;
    let scenarios = scenarios();
    assert!(scenarios.len() >= 15);
    for (name, builder, f) in &scenarios {
        let probe = SimFs::new();
        run(builder, *f, &probe, None);
        let ops = probe.ops();
        // The scenario's own end state must pass too.
        let image = probe.crash_image(CrashPolicy::KeepAll, 0);
        let msgs = run(builder, *f, &SimFs::new(), None);
        recover_and_check(builder, &image, &msgs, &format!("{name}: no crash"));
        for k in 1..=ops {
            total_points += 1;
            let sim = SimFs::new();
            let msgs = run(builder, *f, &sim, Some(k));
            let mut images: Vec<(CrashPolicy, u64)> =
                CrashPolicy::DETERMINISTIC.iter().map(|&p| (p, 0)).collect();
            images.extend((0..seeds()).map(|s| (CrashPolicy::RandomSubset, k * 1000 + s)));
            for (policy, seed) in images {
                let what = format!("{name}: crash at op {k}/{ops}, {policy:?}, seed {seed}");
                let image = sim.crash_image(policy, seed);
                // A copy to crash during recovery, from the same image.
                let pristine = image.crash_image(CrashPolicy::KeepAll, 0);
                let rec_ops = recover_and_check(builder, &image, &msgs, &what);
                recoveries += 1;
                // I8: crash recovery itself at one of its operations (all of them for the
                // deterministic images, spread over the seeds for random ones), then recover
                // again from what a power loss would leave.
                let points: Vec<u64> = if policy == CrashPolicy::RandomSubset {
                    vec![1 + (seed % rec_ops.max(1))]
                } else {
                    (1..=rec_ops).step_by(3).collect()
                };
                for j in points {
                    let again = pristine.crash_image(CrashPolicy::KeepAll, 0);
                    again.crash_at(j);
                    let _ = testing::open(builder.clone(), &again, Path::new(DIR));
                    for p2 in [CrashPolicy::DropAllUnsynced, CrashPolicy::KeepAll] {
                        let img2 = again.crash_image(p2, j);
                        let what2 = format!("{what}; recovery crashed at op {j}, {p2:?}");
                        recover_and_check(builder, &img2, &msgs, &what2);
                        recoveries += 1;
                    }
                }
            }
        }
    }
    println!("crash points: {total_points}, recoveries checked: {recoveries}");
    assert!(recoveries >= 50_000, "only {recoveries} recoveries");
}

#[test]
fn every_storage_call_site_receives_an_injected_error_and_the_store_stays_safe() {
    let all_sites = SimFs::new();
    let mut trials = 0u64;
    for (name, builder, f) in scenarios() {
        for kind in OpKind::ALL {
            for no_space in [false, true] {
                for persistent in [false, true] {
                    for nth in 1.. {
                        let sim = SimFs::new();
                        sim.set_fault(Some(Fault { kind, nth, no_space, persistent }));
                        let msgs = run(&builder, f, &sim, None);
                        let fired = sim.fault_fired();
                        all_sites.merge_sites(&sim.sites());
                        trials += 1;
                        sim.set_fault(None);
                        // After the fault: recover from what a power loss would leave, and
                        // from what a process crash would, and check.
                        let what = format!("{name}: {kind:?} #{nth} fails (enospc {no_space}, persistent {persistent})");
                        for policy in [CrashPolicy::KeepAll, CrashPolicy::DropAllUnsynced] {
                            let image = sim.crash_image(policy, nth);
                            recover_and_check(
                                &builder,
                                &image,
                                &msgs,
                                &format!("{what}, {policy:?}"),
                            );
                        }
                        if !fired {
                            break;
                        }
                    }
                }
            }
        }
    }
    // Faults during recovery: images with torn tails, leftover temporary files and spares,
    // opened with each kind of operation failing in turn; a failed recovery must leave a disk
    // that the next, fault-free recovery still brings to an allowed state.
    for (name, builder, f) in scenarios() {
        let probe = SimFs::new();
        run(&builder, f, &probe, None);
        for k in (1..=probe.ops()).step_by(7) {
            let sim = SimFs::new();
            let msgs = run(&builder, f, &sim, Some(k));
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
                        let _ = testing::open(builder.clone(), &copy, Path::new(DIR));
                        let fired = copy.fault_fired();
                        all_sites.merge_sites(&copy.sites());
                        trials += 1;
                        copy.set_fault(None);
                        let after = copy.crash_image(CrashPolicy::KeepAll, 0);
                        recover_and_check(&builder, &after, &msgs, &format!("{what}, then again"));
                        if !fired {
                            break;
                        }
                    }
                }
            }
        }
    }
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
