//! Crash-point enumeration and fault sweeps (see `crash_points.rs`) over scenarios that use the
//! job semantics: delayed pushes, priorities, retries with backoff, dead letters (explicit, by
//! exhausted attempts, by expiry, by overflow), requeues, config changes, TTLs and dedup keys.
//! The oracle (`wharf_check::oracle`, driven by `oracle.rs`) follows each message through its moves: after a crash it must be
//! where a prefix of them put it (its queue or its dead-letter queue, or gone), at least as
//! far as the last one known durable, a durable config must have survived, and attempts
//! never go back below the deliveries known durable (after a process crash, `KeepAll`, also
//! below those whose delivery record was only written: `count_crashed_attempts`).

use std::time::Duration;

use wharf::testing::SimFs;
use wharf::{
    Backoff, DeadReason, Durability, OnExpiry, Overflow, QueueConfig, Wharf, WharfBuilder,
};

use crate::crash_points::{enumerate, sweep, Figures, Scenario};
use crate::oracle::{Loc, Push, Then};

const SEC: Duration = Duration::from_secs(1);
const I: Durability = Durability::Immediate;
const N: Durability = Durability::None;
const IV: Durability = Durability::Interval(Duration::from_millis(10));

/// Small segments and a small index window (plain pushes past two join the queue's run).
fn small() -> WharfBuilder {
    Wharf::builder().segment_bytes(64 << 10).index_window(2)
}

fn dead(reason: DeadReason) -> Loc {
    // The error text is the message's last one; the oracle fills it in.
    Loc::Dead { reason, error: String::new() }
}

/// Message indices below are in push order (`Ctx::msgs`), duplicates and refused pushes
/// included.
pub fn job_scenarios() -> Vec<(&'static str, WharfBuilder, Scenario)> {
    vec![
        ("delays and priorities", small(), |c| {
            c.open()?;
            c.push_with("q", 30, Push { delay: Some(10 * SEC), ..Push::default() }, &[])?;
            c.push_with("q", 30, Push { priority: 5, ..Push::default() }, &[])?;
            c.push_with("q", 30, Push { durability: Some(N), ..Push::default() }, &[])?;
            let urgent = Push { delay: Some(5 * SEC), priority: 9, ..Push::default() };
            c.push_with("q", 30, urgent, &[])?;
            c.pop_expect("q", &[], Some(1))?; // priority 5 before 0; 0 and 3 are not due
            c.ack(I)?;
            c.clock.advance(6 * SEC);
            c.pop_expect("q", &[], Some(3))?; // due now, priority 9
            c.nack_with(Some(30 * SEC), "later", Then::Retry(30 * SEC))?;
            c.pop_expect("q", &[], Some(2))?;
            c.release()?;
            c.clock.advance(5 * SEC);
            c.pop_expect("q", &[], Some(0))?; // due now; 2 is younger
            c.ack(IV)?;
            c.sync()
        }),
        ("retries with backoff until dead-lettered", small(), |c| {
            c.open()?;
            let cfg = QueueConfig::new().max_attempts(3).backoff(Backoff::Fixed(SEC));
            c.set_config("q", cfg)?;
            c.push("q", 40, I)?;
            c.push("q", 40, N)?;
            for error in ["failure 1", "failure 2"] {
                c.pop_expect("q", &[], Some(0))?;
                c.nack_with(None, error, Then::Retry(SEC))?;
                c.clock.advance(SEC);
            }
            c.pop_expect("q", &[], Some(0))?;
            c.nack_with(None, "failure 3", Then::Dead)?; // the last attempt failed
            c.pop_expect("q", &[], Some(1))?;
            c.ack(IV)?;
            c.maintain()
        }),
        ("attempts of deliveries in flight at a crash count", small(), |c| {
            c.open()?;
            c.set_config("q", QueueConfig::new().max_attempts(2))?;
            c.push("q", 20, I)?;
            c.push("q", 20, N)?;
            // Each delivery record is written (not synced) before the payload is handed out;
            // the consumer then dies with it.
            c.pop_expect("q", &[], Some(0))?;
            c.reopen_holding()?;
            c.pop_expect("q", &[], Some(0))?;
            c.reopen_holding()?;
            // Out of attempts: dead-lettered on the way to the next message.
            c.pop_expect("q", &[(0, dead(DeadReason::MaxAttempts))], Some(1))?;
            c.ack(I)
        }),
        ("explicit dead letters and requeues", small(), |c| {
            c.open()?;
            for _ in 0..3 {
                c.push("q", 30, I)?;
            }
            c.pop_expect("q", &[], Some(0))?;
            c.dead_letter("bad input")?;
            c.pop_expect("q", &[], Some(1))?;
            c.dead_letter("")?;
            c.sync()?;
            c.requeue(0)?; // back first, attempts from zero
            c.pop_expect("q", &[], Some(0))?;
            c.ack(IV)?;
            c.requeue_all("q", &[1])?;
            c.pop_expect("q", &[], Some(1))?;
            c.ack(I)?;
            c.pop_expect("q", &[], Some(2))?;
            c.nack_with(None, "", Then::Retry(Duration::ZERO))?;
            c.maintain()
        }),
        ("expiry", small(), |c| {
            c.open()?;
            c.set_config("t", QueueConfig::new().ttl(10 * SEC, OnExpiry::DeadLetter))?;
            c.push("t", 20, I)?; // the queue's TTL
            c.push_with("t", 20, Push { ttl: Some(60 * SEC), ..Push::default() }, &[])?;
            c.push_with("t", 20, Push { ttl: Some(5 * SEC), ..Push::default() }, &[])?;
            c.push_with("d", 20, Push { ttl: Some(SEC), ..Push::default() }, &[])?;
            c.push("d", 20, N)?;
            c.clock.advance(11 * SEC);
            c.pop_expect("t", &[(0, dead(DeadReason::Expired))], Some(1))?;
            c.ack(IV)?;
            c.pop_expect("t", &[(2, dead(DeadReason::Expired))], Some(usize::MAX))?;
            c.pop_expect("d", &[(3, Loc::Gone)], Some(4))?; // dropped: `d` has no expiry DLQ
            c.ack(I)
        }),
        ("overflow", small(), |c| {
            c.open()?;
            c.set_config("q", QueueConfig::new().max_len(2, Overflow::DeadLetterOldest))?;
            c.push("q", 20, I)?;
            c.push("q", 20, N)?;
            c.push_with("q", 20, Push::default(), &[0])?; // makes room: 0 is dead-lettered
            c.set_config("q", QueueConfig::new().max_len(2, Overflow::Reject))?;
            c.push_rejected("q")?;
            c.pop_expect("q", &[], Some(1))?;
            c.ack(I)?;
            c.push("q", 20, N)?; // room again
            c.sync()
        }),
        ("dedup keys", small(), |c| {
            c.open()?;
            c.set_config("q", QueueConfig::new().dedup_window(60 * SEC))?;
            let keyed = Push { key: Some("order-1"), ..Push::default() };
            c.push_with("q", 20, keyed.clone(), &[])?;
            c.push_duplicate("q", "order-1", 0)?; // unsettled: the first id, nothing stored
            c.pop_expect("q", &[], Some(0))?;
            c.ack(I)?;
            c.push_duplicate("q", "order-1", 0)?; // settled, inside the window
            c.clock.advance(61 * SEC);
            c.push_with("q", 20, keyed, &[])?; // the window has passed: a new message
            c.sync()
        }),
        ("a config outlives its segment", small(), |c| {
            c.open()?;
            let cfg = QueueConfig::new().max_attempts(4).backoff(Backoff::Fixed(SEC));
            c.set_config("q", cfg)?;
            for _ in 0..3 {
                c.push("big", 20_000, I)?;
                c.pop("big")?;
                c.ack(I)?;
            }
            c.maintain()?; // deletes the first segment, which held the config record
            c.push("q", 10, I)?;
            c.set_config("q", QueueConfig::new().max_attempts(2))?;
            c.close()?;
            c.open()?;
            c.pop_expect("q", &[], Some(3))?;
            c.nack_with(None, "again", Then::Retry(Duration::ZERO))
        }),
    ]
}

#[test]
fn every_crash_point_of_every_job_scenario_recovers_to_an_allowed_state() {
    let scenarios = job_scenarios();
    let Figures { points, recoveries, .. } = enumerate(&scenarios);
    println!("job scenarios: crash points: {points}, recoveries checked: {recoveries}");
    assert!(recoveries >= 20_000, "only {recoveries} recoveries");
}

#[test]
fn injected_errors_in_job_scenarios_leave_the_store_safe() {
    let sites = SimFs::new();
    let trials = sweep(&job_scenarios(), &sites);
    let injected: u64 = sites.sites().values().map(|c| c.injected).sum();
    println!("job scenarios: fault trials: {trials}, errors injected: {injected}");
    assert!(injected > 1000, "only {injected} errors injected");
}
