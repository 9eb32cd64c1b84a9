//! redb runs on the same simulated disk as the log (through wharf's storage trait), so both
//! crash in one order. Here redb alone: every transaction it committed survives a crash at any
//! disk operation, under every crash policy.

use std::path::Path;

use wharf::testing::{CrashPolicy, RedbCounter, SimFs};

const FILE: &str = "/store/state.redb";

/// Commits 1, 2, 3, … into the counter until an error; returns the last committed value.
fn workload(sim: &SimFs) -> u64 {
    let Ok(db) = RedbCounter::open(sim, Path::new(FILE)) else { return 0 };
    let mut committed = 0;
    for i in 1..=6u64 {
        if db.set(i).is_err() {
            break;
        }
        committed = i;
    }
    committed
}

fn read(sim: &SimFs) -> Result<u64, String> {
    RedbCounter::open(sim, Path::new(FILE))?.get()
}

#[test]
fn redb_on_the_simulated_disk_keeps_every_committed_transaction_through_any_crash() {
    let probe = SimFs::new();
    assert_eq!(workload(&probe), 6);
    let ops = probe.ops();
    let mut images = 0;
    for k in 1..=ops {
        let sim = SimFs::new();
        sim.crash_at(k);
        let committed = workload(&sim);
        let mut policies: Vec<(CrashPolicy, u64)> =
            CrashPolicy::DETERMINISTIC.iter().map(|&p| (p, 0)).collect();
        policies.extend((0..4).map(|s| (CrashPolicy::RandomSubset, k * 10 + s)));
        for (policy, seed) in policies {
            let image = sim.crash_image(policy, seed);
            let got =
                read(&image).unwrap_or_else(|e| panic!("crash at {k}/{ops}, {policy:?}: {e}"));
            assert!(
                (committed..=6).contains(&got),
                "crash at {k}/{ops}, {policy:?} seed {seed}: committed {committed}, found {got}"
            );
            images += 1;
        }
    }
    println!("redb crash images checked: {images} over {ops} crash points");
}
