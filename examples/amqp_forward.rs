//! An application that buffers its jobs in a local wharf queue (durable at once, whatever the
//! network does) and drains them into RabbitMQ with a `Forwarder`.
//!
//! `cargo run --example amqp_forward --features amqp` (broker: `WHARF_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Each job reaches the broker queue
//! `wharf.example.jobs` at least once, with its wharf id as the AMQP `message_id`.

use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use wharf::bridge::Forwarder;
use wharf::Wharf;

const BROKER_QUEUE: &str = "wharf.example.jobs";
const JOBS: usize = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("WHARF_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    declare(&url)?; // the forwarder publishes into existing queues and exchanges only

    let dir = std::env::temp_dir().join("wharf-example-amqp-forward");
    let store = Wharf::open(&dir)?;
    let jobs = store.queue("jobs")?;
    let forwarder = Forwarder::builder(&jobs, &url).routing_key(BROKER_QUEUE).start()?;

    // The application pushes jobs as they come; each push is durable when it returns, so the
    // jobs survive a crash or a broker outage and are forwarded when the broker is back.
    let start = Instant::now();
    for chunk in 0..JOBS / 500 {
        let batch: Vec<String> = (0..500)
            .map(|i| format!("{{\"job\": {}, \"kind\": \"thumbnail\"}}", chunk * 500 + i))
            .collect();
        jobs.push_batch(&batch)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("pushed {JOBS} jobs locally in {:?}", start.elapsed());

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = forwarder.stats();
        let depth = jobs.depth()?;
        println!(
            "{:?}: {} confirmed by RabbitMQ, {} in the window, {} waiting locally",
            s.state,
            s.confirmed,
            s.window,
            depth.ready + depth.in_flight + depth.delayed
        );
        if depth.ready + depth.in_flight + depth.delayed == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let report = forwarder.stop(Duration::from_secs(5))?;
    println!("stopped: {report:?}; {} now in {BROKER_QUEUE}", queued(&url)?);
    store.close()?;
    Ok(())
}

/// Declares the broker queue (durable) the jobs go to, through the default exchange, and
/// empties it.
fn declare(url: &str) -> lapin::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        let opts = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(BROKER_QUEUE.into(), opts, FieldTable::default()).await?;
        ch.queue_purge(BROKER_QUEUE.into(), QueuePurgeOptions::default()).await?; // a fresh demo
        conn.close(200, "".into()).await
    })
}

/// Messages ready in the broker queue.
fn queued(url: &str) -> lapin::Result<u32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        let opts = QueueDeclareOptions { passive: true, ..Default::default() };
        let q = ch.queue_declare(BROKER_QUEUE.into(), opts, FieldTable::default()).await?;
        conn.close(200, "".into()).await?;
        Ok(q.message_count())
    })
}
