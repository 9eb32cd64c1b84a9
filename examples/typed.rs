//! Typed jobs: a serde struct in and out of a `TypedQueue`, across a restart, worked off by a
//! typed `Worker`; a payload that is not a `Thumbnail` goes to the dead-letter queue.
//!
//! Run it with `cargo run --example typed`.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf::{TypedQueue, Wharf, Worker};

#[derive(Debug, Serialize, Deserialize)]
struct Thumbnail {
    photo: u64,
    widths: Vec<u32>,
    watermark: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    {
        let wharf = Wharf::open(dir.path())?;
        let thumbs: TypedQueue<Thumbnail> = TypedQueue::new(wharf.queue("thumbnails")?);
        thumbs.push(&Thumbnail { photo: 17, widths: vec![64, 256], watermark: None })?;
        thumbs.push_batch(&[
            Thumbnail { photo: 18, widths: vec![1024], watermark: Some("© ada".into()) },
            Thumbnail { photo: 19, widths: vec![64], watermark: None },
        ])?;
        thumbs.queue().push(b"{\"photo\": 20}")?; // an untyped producer got it wrong
        println!("pushed 4 jobs, closing");
        wharf.close()?;
    }

    let wharf = Wharf::open(dir.path())?;
    println!("reopened: {} jobs waiting", wharf.recovery_report().messages);
    let thumbs: TypedQueue<Thumbnail> = TypedQueue::new(wharf.queue("thumbnails")?);

    // One by hand first: `value()` decodes, a wrong payload is an `Error::Codec`.
    let first = thumbs.pop()?;
    println!("by hand: {:?}", first.value()?);
    first.ack()?;

    let worker = Worker::typed(&thumbs).threads(2).run(|t: Thumbnail, job| {
        println!("worker: photo {} at widths {:?} (attempt {})", t.photo, t.widths, job.attempt());
        Ok::<(), String>(())
    })?;
    while thumbs.queue().depth()? != Default::default() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = worker.shutdown(Duration::from_secs(5))?;
    println!("worker: {} processed, {} undecodable", report.stats.processed, report.stats.failed);

    let dlq = thumbs.queue().dead_letter_queue()?.ok_or("no dead-letter queue")?;
    for dead in dlq.peek(10)? {
        let text = String::from_utf8_lossy(&dead.payload);
        println!("dead letter {text}: {}", dead.last_error.unwrap_or_default());
    }
    wharf.close()?;
    Ok(())
}
