//! wharf's main demonstration: push jobs, process them on worker threads, crash the process
//! for real (`abort()`, no close, mid-flight), reopen and show that nothing was lost.
//!
//! Run it with `cargo run --release --example quickstart`.
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf::Wharf;

const JOBS: u64 = 20_000;

/// The crashing process: pushes every job durably, then three workers ack jobs until abort.
fn child(dir: &str) -> wharf::Result<()> {
    let wharf = Wharf::open(dir)?;
    let jobs = wharf.queue("jobs")?;
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(1000) {
        jobs.push_batch(chunk.iter().map(|i| format!("job {i}")))?; // durable on return
    }
    println!("pushed {JOBS}");
    let finished = Arc::new(AtomicU64::new(0));
    for _ in 0..3 {
        let (jobs, finished) = (jobs.clone(), finished.clone());
        std::thread::spawn(move || -> wharf::Result<()> {
            while let Some(job) = jobs.pop_timeout(Duration::from_secs(1))? {
                std::thread::sleep(Duration::from_micros(100)); // the work
                let n = String::from_utf8_lossy(job.payload())[4..].to_string();
                // Told before the ack: a job acked just before the crash, whose ack reached the
                // log, must not go unreported (it would look lost). One told but whose ack did
                // not reach the log comes back, and counts as done twice.
                writeln!(std::io::stdout(), "done {n}").ok();
                job.ack()?;
                finished.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        });
    }
    while finished.load(Ordering::SeqCst) < JOBS / 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // A crash, not a shutdown: no close, no flush, no destructors. In-flight jobs stay leased.
    std::process::abort();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(dir) = std::env::var("WHARF_QUICKSTART_CHILD") {
        return Ok(child(&dir)?);
    }
    let dir = tempfile::tempdir()?;
    println!(
        "1. A worker process pushes {JOBS} jobs into {} and starts 3 workers...",
        dir.path().display()
    );
    let mut proc = Command::new(std::env::current_exe()?)
        .env("WHARF_QUICKSTART_CHILD", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (mut pushed, mut done) = (0u64, BTreeSet::new());
    for line in BufReader::new(proc.stdout.take().ok_or("no stdout")?).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("pushed ") {
            pushed = n.parse()?;
        } else if let Some(n) = line.strip_prefix("done ") {
            done.insert(n.parse::<u64>()?);
        }
    }
    let status = proc.wait()?;
    println!("2. ...which crashed ({status}) after finishing {} jobs.", done.len());

    let started = Instant::now();
    let wharf = Wharf::open(dir.path())?;
    let report = wharf.recovery_report();
    println!(
        "3. Reopened in {:?}: {} jobs waiting, {} of them were in flight at the crash.",
        started.elapsed(),
        report.messages,
        report.in_flight_at_crash
    );
    let jobs = wharf.queue("jobs")?;
    let mut left = BTreeSet::new();
    while let Some(job) = jobs.try_pop()? {
        left.insert(std::str::from_utf8(job.payload())?[4..].parse::<u64>()?);
        job.ack()?;
    }
    let lost = (0..pushed).filter(|i| !left.contains(i) && !done.contains(i)).count();
    let again = left.intersection(&done).count();
    println!("4. Finished the remaining {} jobs after the restart.", left.len());
    println!("   lost: {lost}   done twice (acked less than 10 ms before the crash): {again}");
    wharf.close()?;
    if lost > 0 || pushed != JOBS {
        return Err("a job was lost".into());
    }
    println!("Nothing was lost.");
    Ok(())
}
