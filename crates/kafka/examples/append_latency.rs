//! How long one `append` (a produce acknowledged with acks=all) takes against a broker:
//! `cargo run --release -p agora-kafka --example append_latency -- kafka://127.0.0.1:9092 [records-per-append]`.

use agora_bus::{EventLog, Record};
use agora_kafka::{ensure_topic, KafkaConfig, KafkaProducer};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "kafka://127.0.0.1:9092".into());
    let per_append: usize = args.next().map_or(10, |n| n.parse().expect("a number"));
    let config = KafkaConfig::from_url(&url).expect("log URL");
    let topic = format!("append-latency-{}", std::process::id());
    ensure_topic(&config, &topic, 1, 1).expect("topic");
    let log = KafkaProducer::new(&config)
        .expect("producer")
        .log(&topic)
        .expect("log");
    let mut took_us = Vec::new();
    for i in 0..200i64 {
        let records = (0..per_append as i64)
            .map(|j| {
                Record::new(
                    i * 1_000 + j,
                    "k",
                    "Latency",
                    "{\"padding\":\"0123456789\"}",
                )
            })
            .collect();
        let started = Instant::now();
        log.append(0, records).expect("append");
        took_us.push(started.elapsed().as_micros() as u64);
    }
    took_us.sort_unstable();
    let at = |q: f64| took_us[((took_us.len() - 1) as f64 * q) as usize] as f64 / 1_000.0;
    println!(
        "{per_append} records per append: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
