//! Checkpoints through the three stateful targets, as typed inputs, whatever the seeds hold:
//! stragglers of every kind (delayed, dead-lettered, leased and never acked, a settled message
//! whose dedup key holds) behind segments of settled messages, checkpoints that relocate them
//! into `state.redb` and delete their segments, then deliveries, acks, nacks and requeues of
//! the relocated messages, more checkpoints and reopens. A crash at every disk operation of
//! each checkpoint, and an injected fault at each of its calls, state database included.

use wharf_fuzz::ops::{Config, Dur, FaultSpec, Op, Policy};
use wharf_fuzz::oracle::Ctx;
use wharf_fuzz::stats;
use wharf_fuzz::targets::{
    run_ops_crash, run_ops_faults, run_ops_model, CrashInput, CrashPoint, End, FaultInput,
    ModelInput,
};
use wharf_fuzz::workload::relocation_script;

/// The scenario (`workload::relocation_script`); its checkpoints relocate stragglers.
fn script() -> Vec<Op> {
    relocation_script()
}

fn cfg() -> Config {
    Config::new(Dur::Default, Dur::Default)
}

/// The step (0: the first open, k + 1: operation k) and disk operations of each checkpoint.
fn checkpoint_steps() -> Vec<(u8, u64)> {
    let sim = wharf::testing::SimFs::new();
    let mut ctx = Ctx::new(sim.clone(), cfg());
    ctx.open().expect("open");
    let mut out = Vec::new();
    for (k, op) in script().into_iter().enumerate() {
        let before = sim.ops();
        ctx.apply(op).expect("the script on a healthy disk");
        if matches!(op, Op::Checkpoint) {
            out.push((u8::try_from(k + 1).unwrap(), sim.ops() - before));
        }
    }
    out
}

#[test]
fn checkpoints_relocate_stragglers_and_change_no_message() {
    let before = stats::counts();
    for cfg in [cfg(), Config::new(Dur::None, Dur::Immediate)] {
        run_ops_model(&ModelInput { cfg, ops: script() });
    }
    let after = stats::counts();
    assert!(after.relocated >= before.relocated + 2, "{before:?} → {after:?}");
    assert!(after.segments_deleted > before.segments_deleted, "{before:?} → {after:?}");
}

#[test]
fn a_crash_anywhere_in_a_checkpoint_recovers_to_an_allowed_state() {
    let steps = checkpoint_steps();
    assert_eq!(steps.len(), 3);
    for (step, disk_ops) in steps {
        for after in 0..=u8::try_from(disk_ops).unwrap_or(u8::MAX) {
            for policy in [Policy::KeepAll, Policy::DropAllUnsynced, Policy::RandomSubset] {
                let crash = CrashPoint { wait: step, after, policy, seed: after, recovery: None };
                run_ops_crash(&CrashInput { cfg: cfg(), crashes: vec![crash], ops: script() });
            }
        }
    }
}

#[test]
fn a_crash_in_a_checkpoint_then_in_recovery_recovers_to_an_allowed_state() {
    let (step, disk_ops) = checkpoint_steps()[0];
    for after in (0..=u8::try_from(disk_ops).unwrap_or(u8::MAX)).step_by(3) {
        for j in [0, 5, 20, 60] {
            let crash = CrashPoint {
                wait: step,
                after,
                policy: Policy::DropAllUnsynced,
                seed: after,
                recovery: Some((j, Policy::RandomSubset)),
            };
            run_ops_crash(&CrashInput { cfg: cfg(), crashes: vec![crash], ops: script() });
        }
    }
}

#[test]
fn a_fault_anywhere_in_a_checkpoint_leaves_the_store_safe() {
    use wharf::testing::OpKind;
    // Some of these faults reach known open findings 2 and 3 (README; `tests/known.rs`
    // reproduces them).
    wharf_fuzz::targets::set_skip_known(true);
    // The kinds of call a checkpoint makes (the log's sync, redb's file, the state database's
    // creation, segment deletion), each failing at its n-th call from the checkpoint on.
    let kinds = [
        OpKind::List,
        OpKind::Open,
        OpKind::Create,
        OpKind::Rename,
        OpKind::Remove,
        OpKind::DirSync,
        OpKind::Len,
        OpKind::Read,
        OpKind::Write,
        OpKind::Sync,
        OpKind::SetLen,
    ];
    let ends = [
        (false, false, End::SameDisk),
        (false, false, End::Image(Policy::DropAllUnsynced, 1)),
        (true, true, End::Image(Policy::RandomSubset, 2)),
    ];
    for (step, disk_ops) in checkpoint_steps() {
        for kind in kinds {
            let kind = OpKind::ALL.iter().position(|k| *k == kind).unwrap() as u8;
            for nth in
                [0, 1, 2, 3, 5, 8, 13, 21, 31].into_iter().filter(|&n| u64::from(n) < disk_ops)
            {
                for (no_space, persistent, end) in ends {
                    let input = FaultInput {
                        cfg: cfg(),
                        fault: FaultSpec { kind, nth, no_space, persistent },
                        arm_at: step,
                        end,
                        ops: script(),
                    };
                    run_ops_faults(&input);
                }
            }
        }
    }
}
