//! redb runs on the same simulated disk as the log (through wharf's storage trait), so both
//! crash in one order. Here redb alone: every transaction it committed survives a crash at any
//! disk operation, under every crash policy.

use std::path::Path;

use redb::{ReadableDatabase, TableDefinition};
use wharf::testing::{redb_on_sim, CrashPolicy, SimFs};

const TABLE: TableDefinition<u64, u64> = TableDefinition::new("counter");
const FILE: &str = "/store/state.redb";

/// Commits 1, 2, 3, … into one key until an error; returns the last committed value.
fn workload(sim: &SimFs) -> u64 {
    let Ok(db) = redb_on_sim(sim, Path::new(FILE)) else { return 0 };
    let mut committed = 0;
    for i in 1..=6u64 {
        let Ok(tx) = db.begin_write() else { break };
        {
            let Ok(mut t) = tx.open_table(TABLE) else { break };
            if t.insert(0, i).is_err() {
                break;
            }
        }
        if tx.commit().is_err() {
            break;
        }
        committed = i;
    }
    committed
}

fn read(sim: &SimFs) -> Result<u64, String> {
    let db = redb_on_sim(sim, Path::new(FILE))?;
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = match tx.open_table(TABLE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    Ok(t.get(0).map_err(|e| e.to_string())?.map_or(0, |v| v.value()))
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
