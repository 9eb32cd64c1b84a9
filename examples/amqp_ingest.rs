//! Ingesting a RabbitMQ queue into a local wharf queue with an `Ingestor`: each message is
//! acked to the broker only once it is durable locally, and a redelivered `message_id` is
//! stored once.
//!
//! `cargo run --example amqp_ingest --features amqp` (broker: `WHARF_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). An upstream publisher is simulated: it sends
//! 1,000 orders to `wharf.example.orders`, the first 100 of them twice.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use wharf::bridge::Ingestor;
use wharf::Wharf;

const BROKER_QUEUE: &str = "wharf.example.orders";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("WHARF_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    upstream(&url)?;

    let dir = std::env::temp_dir().join("wharf-example-amqp-ingest");
    let _ = std::fs::remove_dir_all(&dir); // a fresh store: the dedup keys of a last run are gone
    let store = Wharf::open(&dir)?;
    let orders = store.queue("orders")?;
    let ingestor = Ingestor::builder(&orders, &url).source_queue(BROKER_QUEUE).start()?;

    // A local consumer: every order it sees was durable here before RabbitMQ let go of it.
    let mut handled = 0;
    while let Some(order) = orders.pop_timeout(Duration::from_secs(2))? {
        handled += 1;
        if handled % 250 == 0 {
            println!("handled {handled}: {}", String::from_utf8_lossy(order.payload()));
        }
        order.ack()?;
    }
    let stats = ingestor.stats();
    ingestor.stop(Duration::from_secs(5))?;
    println!(
        "received {} deliveries, stored {} ({} of them duplicates absorbed by dedup), acked {}; \
         handled {handled} distinct orders",
        stats.received, stats.stored, stats.duplicates, stats.acked
    );
    store.close()?;
    Ok(())
}

/// Publishes 1,000 orders with confirms, each with a `message_id`; the first 100 twice, as an
/// upstream that retried after a lost confirm would.
fn upstream(url: &str) -> lapin::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        let opts = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(BROKER_QUEUE.into(), opts, FieldTable::default()).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        for i in (0..1000).chain(0..100) {
            let id = format!("order-{i}");
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.as_str().into());
            let body = format!("{{\"order\": {i}}}");
            let opts = BasicPublishOptions::default();
            // The confirm is awaited below, with all the others (`wait_for_confirms`).
            drop(
                ch.basic_publish("".into(), BROKER_QUEUE.into(), opts, body.as_bytes(), props)
                    .await?,
            );
        }
        ch.wait_for_confirms().await?;
        conn.close(200, "".into()).await
    })
}
