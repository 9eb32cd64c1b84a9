//! A job buffer worked off by a 4-thread `Worker`: failed jobs are retried with exponential
//! backoff, and a job that fails every time ends up in the dead-letter queue.
//!
//! Run it with `cargo run --example jobs`.
use std::time::Duration;

use wharf::{Backoff, QueueConfig, Wharf, Worker};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let wharf = Wharf::open(dir.path())?;
    let jobs = wharf.queue("jobs")?;
    // Four tries per job, 20 ms, 40 ms, 80 ms apart (with jitter), then the dead-letter queue.
    let backoff = Backoff::exponential(Duration::from_millis(20), Duration::from_millis(500));
    jobs.set_config(&QueueConfig::new().max_attempts(4).backoff(backoff))?;

    jobs.push_batch((1..=12).map(|i| format!("resize photo {i}")))?;
    jobs.push("resize photo <corrupt>")?;
    println!("queued {} jobs", jobs.depth()?.ready);

    let worker = Worker::builder(&jobs).threads(4).run(|job| {
        let name = String::from_utf8_lossy(job.payload());
        if name.contains("<corrupt>") {
            println!("  {name}: attempt {} failed", job.attempt());
            return Err(format!("{name}: not an image"));
        }
        if name.ends_with('3') && job.attempt() == 1 {
            println!("  {name}: attempt 1 failed, will retry");
            return Err("connection reset".to_owned());
        }
        std::thread::sleep(Duration::from_millis(10)); // the work
        println!("  {name}: done on attempt {}", job.attempt());
        Ok(())
    })?;

    // Until every job is either done or dead (a service would just keep running).
    loop {
        let s = jobs.stats()?;
        if s.processed + s.dead_lettered == 13 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = worker.shutdown(Duration::from_secs(5))?;
    let s = report.stats;
    println!("worker: {} processed, {} failed attempts", s.processed, s.failed);

    let dlq = jobs.dead_letter_queue()?.ok_or("the queue drops its dead letters")?;
    for dead in dlq.peek(10)? {
        println!(
            "dead letter in {:?}: {:?} after {} attempts, last error {:?}",
            dlq.name(),
            String::from_utf8_lossy(&dead.payload),
            dead.attempts,
            dead.last_error.unwrap_or_default(),
        );
    }
    wharf.close()?;
    Ok(())
}
