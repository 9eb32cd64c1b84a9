//! Poison-message safety: a message whose handler aborts the whole process on every attempt
//! is dead-lettered after exactly `max_attempts` deliveries, instead of crash-looping for ever.
//! Each delivery record reaches the OS before the payload is handed out, so an `abort()` in the
//! handler still counts the attempt.

use std::process::Command;

use wharf::{DeadReason, QueueConfig, Wharf};

const MAX_ATTEMPTS: u32 = 3;

/// The consumer process: pops one message; aborts on "poison", acks anything else and prints
/// what it did.
#[test]
#[ignore = "run as a child process by a_message_that_kills_its_consumer_is_dead_lettered"]
fn poison_child() {
    let Ok(dir) = std::env::var("WHARF_POISON_DIR") else {
        return;
    };
    let w = Wharf::open(&dir).unwrap();
    let q = w.queue("jobs").unwrap();
    let Some(d) = q.try_pop().unwrap() else {
        println!("empty");
        return;
    };
    if d.payload() == b"poison" {
        eprintln!("poison, attempt {}: aborting", d.attempt());
        std::process::abort();
    }
    println!("handled {} attempt {}", String::from_utf8_lossy(d.payload()), d.attempt());
    d.ack_with(wharf::Durability::Immediate).unwrap();
}

#[test]
fn a_message_that_kills_its_consumer_is_dead_lettered_after_max_attempts() {
    crate::with_deadline(
        crate::TEST_LIMIT,
        "a_message_that_kills_its_consumer_is_dead_lettered_after_max_attempts",
        || {
            let dir = tempfile::tempdir().unwrap();
            {
                let w = Wharf::open(dir.path()).unwrap();
                let q = w.queue("jobs").unwrap();
                q.set_config(&QueueConfig::new().max_attempts(MAX_ATTEMPTS)).unwrap();
                q.push(b"poison").unwrap();
                q.push(b"good").unwrap();
                w.close().unwrap();
            }
            let mut aborts = 0;
            let mut handled = Vec::new();
            for _run in 0..10 {
                let out = Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "poison::poison_child", "--ignored", "--nocapture"])
                    .args(["--test-threads=1"])
                    .env("WHARF_POISON_DIR", dir.path())
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() {
                    assert!(
                        String::from_utf8_lossy(&out.stderr).contains("poison, attempt"),
                        "the child failed for another reason: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    aborts += 1;
                    continue;
                }
                if stdout.contains("empty") {
                    break;
                }
                // The test harness prints its "test ... " prefix on the same line.
                let at = stdout.find("handled ").unwrap();
                handled.push(stdout[at..].lines().next().unwrap().to_string());
            }
            assert_eq!(aborts, MAX_ATTEMPTS, "one crash per allowed attempt, then no more");
            assert_eq!(handled, ["handled good attempt 1"]);
            let w = Wharf::open(dir.path()).unwrap();
            let dead = w.queue("jobs.dlq").unwrap().peek(10).unwrap();
            assert_eq!(dead.len(), 1);
            assert_eq!(dead[0].payload, b"poison");
            assert_eq!(dead[0].attempts, MAX_ATTEMPTS);
            assert_eq!(
                dead[0].dead_lettered_from,
                Some(("jobs".to_string(), DeadReason::MaxAttempts))
            );
        },
    );
}
