//! Delayed and prioritized jobs: a delay holds a job back (across restarts too), a priority
//! moves it ahead of the line, and a blocked pop wakes up when a delayed job becomes due.
//!
//! Run it with `cargo run --example delayed`.
use std::time::{Duration, Instant, SystemTime};

use wharf::{PushOptions, Wharf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let wharf = Wharf::open(dir.path())?;
    let q = wharf.queue("notifications")?;

    q.push("newsletter")?; // priority 0
    q.push("weekly digest")?;
    q.push_with("password reset", PushOptions::new().priority(9))?;
    q.push_with("order shipped", PushOptions::new().priority(5))?;
    q.push_with("reminder in 300 ms", PushOptions::new().delay(Duration::from_millis(300)))?;
    let at = SystemTime::now() + Duration::from_millis(600);
    q.push_with("reminder at a set time", PushOptions::new().not_before(at).priority(9))?;

    let depth = q.depth()?;
    println!("ready: {}, delayed: {}", depth.ready, depth.delayed);
    for p in q.peek(10)? {
        let when = p.due.map_or("now".to_owned(), |due| {
            format!("in {:.0?}", due.duration_since(SystemTime::now()).unwrap_or_default())
        });
        println!("  waiting: {:<24} priority {} due {when}", text(&p.payload), p.priority);
    }

    // Highest priority first, then oldest first; the delayed ones when they are due.
    let start = Instant::now();
    while let Some(job) = q.pop_timeout(Duration::from_secs(2))? {
        println!("{:>6.0?}  {}", start.elapsed(), text(job.payload()));
        job.ack()?;
    }
    wharf.close()?;
    Ok(())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
