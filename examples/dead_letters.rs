//! Inspecting the dead-letter queue: what failed, why and how often; then sending one dead
//! letter back to its queue, and the rest after the bug is fixed.
//!
//! Run it with `cargo run --example dead_letters`.
use wharf::{NackOptions, QueueConfig, Wharf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let wharf = Wharf::open(dir.path())?;
    let invoices = wharf.queue("invoices")?;
    invoices.set_config(&QueueConfig::new().max_attempts(2))?;
    invoices.push_batch(["invoice 1", "invoice 2", "invoice 3", "invoice 4"])?;

    // A buggy consumer: everything fails until the dead-letter queue holds it all.
    let dlq = invoices.dead_letter_queue()?.ok_or("no dead-letter queue")?;
    while let Some(job) = invoices.try_pop()? {
        if job.payload() == b"invoice 4" {
            job.dead_letter("customer deleted")?; // hopeless: no retry
        } else {
            let error = format!("pdf renderer crashed (attempt {})", job.attempt());
            job.nack_with(NackOptions::new().error(error))?; // retried once, then dead
        }
    }
    println!("{:?} holds {} dead letters:", dlq.name(), dlq.depth()?.ready);
    let dead = dlq.peek(10)?;
    for d in &dead {
        let origin = match &d.dead_lettered_from {
            Some((queue, why)) => format!("from {queue:?} ({why:?})"),
            None => "pushed here".to_owned(),
        };
        println!(
            "  {} {:?}: {origin}, {} attempts, last error {:?}",
            d.id,
            String::from_utf8_lossy(&d.payload),
            d.attempts,
            d.last_error.as_deref().unwrap_or(""),
        );
    }

    // Send the first one back by id: it is ready again with its attempts counted from zero.
    let first = dead.first().ok_or("nothing dead")?;
    assert!(dlq.requeue(first.id)?);
    let job = invoices.pop()?;
    println!("requeued {}: attempt {} now, done", first.id, job.attempt());
    job.ack()?;

    // The renderer is fixed: send back all the rest.
    let n = dlq.requeue_all()?;
    println!("requeued the other {n}; dead letters left: {}", dlq.depth()?.ready);
    while let Some(job) = invoices.try_pop()? {
        println!("  done {:?}", String::from_utf8_lossy(job.payload()));
        job.ack()?;
    }
    wharf.close()?;
    Ok(())
}
