//! Forwarding throughput into RabbitMQ: the `Forwarder` (window 1 and the default window)
//! against a plain lapin publisher with publisher confirms doing the same work in the same run
//! (the same 1 KiB messages, properties and `mandatory` flag, the same number of unconfirmed
//! messages in flight), interleaved over rounds so that the noise of a shared machine touches
//! all alike. Target: the forwarder at the default window ≥ 0.8 × the plain publisher.
//!
//! `cargo bench --features amqp --bench amqp` (`-- --quick` for a smoke run). The broker is
//! `WHARF_AMQP_URL` or `amqp://guest:guest@127.0.0.1:5672/%2f`; without one it says so and
//! exits 0, unless `WHARF_REQUIRE_AMQP=1`.
#![allow(clippy::unwrap_used)] // a benchmark fails loudly

use std::collections::VecDeque;
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use wharf::bridge::{Forwarder, DEFAULT_WINDOW};
use wharf::Wharf;

const SIZE: usize = 1024;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let url = match std::env::var("WHARF_AMQP_URL") {
        Ok(u) => u,
        Err(_) => {
            let addr = "127.0.0.1:5672".parse().unwrap();
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
                let why = "WHARF_AMQP_URL is unset and nothing listens on 127.0.0.1:5672";
                assert!(std::env::var("WHARF_REQUIRE_AMQP").as_deref() != Ok("1"), "{why}");
                println!("amqp bench: skipped: {why}");
                return;
            }
            "amqp://guest:guest@127.0.0.1:5672/%2f".into()
        }
    };
    let (rounds, n_big, n_one) = if quick { (1, 5_000, 300) } else { (3, 50_000, 2_000) };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
    let bq = format!("wharf-bench-{}-{nanos}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (conn, ch) = rt.block_on(async {
        let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let opts = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(bq.as_str().into(), opts, FieldTable::default()).await.unwrap();
        (conn, ch)
    });
    println!(
        "forwarding {SIZE} B persistent messages into a durable RabbitMQ queue; {rounds} round(s); \
         {n_big} messages per run at window {DEFAULT_WINDOW}, {n_one} at window 1"
    );
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("plain lapin, window 1", vec![]),
        ("forwarder, window 1", vec![]),
        ("plain lapin, default window", vec![]),
        ("forwarder, default window", vec![]),
    ];
    for _ in 0..rounds {
        for (i, row) in rows.iter_mut().enumerate() {
            let (window, n) = if i < 2 { (1, n_one) } else { (DEFAULT_WINDOW, n_big) };
            let rate = if i % 2 == 0 {
                plain(&url, &bq, window, n)
            } else {
                forwarder(&url, &bq, window, n)
            };
            row.1.push(rate);
            rt.block_on(ch.queue_purge(bq.as_str().into(), QueuePurgeOptions::default())).unwrap();
        }
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, v) in &rows {
        println!("{name:<30} {:>9.0} msgs/s (median; runs {v:.0?})", med(v));
    }
    for (w, a, b) in [("1", 0, 1), ("default", 2, 3)] {
        let ratio = med(&rows[b].1) / med(&rows[a].1);
        let verdict = if w == "1" || ratio >= 0.8 { "" } else { " (target 0.8: MISS)" };
        println!("ratio at window {w}: forwarder / plain = {ratio:.2}{verdict}");
    }
    rt.block_on(async {
        let _ = ch.queue_delete(bq.as_str().into(), QueueDeleteOptions::default()).await;
        let _ = conn.close(200, "".into()).await;
    });
}

/// The properties the forwarder sends: the same bytes on the wire.
fn props(i: usize) -> BasicProperties {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut headers = FieldTable::default();
    headers.insert("x-wharf-attempt".into(), AMQPValue::LongUInt(1));
    headers.insert("x-wharf-queue".into(), AMQPValue::LongString("outbox".into()));
    let ms = i64::try_from(now.as_millis()).unwrap();
    headers.insert("x-wharf-forwarded-at".into(), AMQPValue::LongLongInt(ms));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(format!("{i:016x}").into())
        .with_timestamp(now.as_secs())
        .with_headers(headers)
}

/// A plain publisher: `n` publishes with confirms, at most `window` unconfirmed. Like the
/// forwarder, it runs on a thread of its own with a current-thread tokio runtime and its own
/// connection, and its time includes connecting.
fn plain(url: &str, bq: &str, window: usize, n: usize) -> f64 {
    let (url, bq) = (url.to_string(), bq.to_string());
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let payload = vec![b'p'; SIZE];
            let opts = BasicPublishOptions { mandatory: true, immediate: false };
            let start = Instant::now();
            let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
            let ch: Channel = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
            let mut pending = VecDeque::with_capacity(window);
            for i in 0..n {
                if pending.len() == window {
                    let c: lapin::PublisherConfirm = pending.pop_front().unwrap();
                    assert!(c.await.unwrap().is_ack());
                }
                let c = ch
                    .basic_publish("".into(), bq.as_str().into(), opts, &payload, props(i))
                    .await
                    .unwrap();
                pending.push_back(c);
            }
            for c in pending {
                assert!(c.await.unwrap().is_ack());
            }
            let rate = n as f64 / start.elapsed().as_secs_f64();
            let _ = conn.close(200, "".into()).await;
            rate
        })
    };
    std::thread::spawn(run).join().unwrap()
}

/// The forwarder: `n` messages already in the local queue, timed from start until every one is
/// confirmed and acked locally.
fn forwarder(url: &str, bq: &str, window: usize, n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Wharf::open(dir.path()).unwrap();
    let q = store.queue("outbox").unwrap();
    let payload = vec![b'f'; SIZE];
    for _ in 0..n / 1000 {
        q.push_batch((0..1000).map(|_| payload.as_slice())).unwrap();
    }
    q.push_batch((0..n % 1000).map(|_| payload.as_slice())).unwrap();
    let start = Instant::now();
    let fwd = Forwarder::builder(&q, url).routing_key(bq).window(window).start().unwrap();
    loop {
        let s = fwd.stats();
        if s.confirmed >= n as u64 {
            break;
        }
        assert!(s.returned + s.nacked == 0, "{s:?}");
        std::thread::sleep(Duration::from_micros(500));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    fwd.stop(Duration::from_secs(5)).unwrap();
    store.close().unwrap();
    rate
}
