//! The Kafka adapter of the event-log port ([`agora_bus::EventLog`],
//! [`agora_bus::LogConsumer`]), on rdkafka with the librdkafka it bundles.
//!
//! - [`KafkaProducer`]: one idempotent producer per process (`enable.idempotence=true`,
//!   `acks=all`: per-partition order survives retries, nothing is written twice by a
//!   retry). [`KafkaProducer::log`] gives a topic's [`KafkaLog`], whose `append` returns only
//!   once the broker has acknowledged every record, so a relay advances its position only
//!   after that.
//! - [`KafkaConsumer`]: a consumer-group member on one topic. Offsets are committed only
//!   when the caller says its effect is durable (`enable.auto.commit=false`); a rebalance
//!   reaches the caller as [`agora_bus::Polled::Revoked`] / [`agora_bus::Polled::Assigned`].
//! - [`ensure_topic`]: creates a topic with a partition count, or reports the existing one.
//!
//! # On the wire
//!
//! A [`agora_bus::Record`] is one Kafka message: the key is the record's key (the symbol,
//! the outbox `aggregateid`), the value its JSON payload, and two headers carry the rest as
//! UTF-8 text: [`SEQ_HEADER`] (the outbox `seq`, decimal) and [`EVENT_TYPE_HEADER`]. Text
//! headers are what Debezium's outbox router writes with its default header converter, so
//! records from Debezium read the same.
//!
//! The partition is chosen by the producer with [`agora_bus::partition_for`] (Kafka's
//! murmur2), the same one Kafka's Java client and librdkafka's `murmur2_random`
//! partitioner pick for the key's bytes.
//!
//! # Correctness without Kafka transactions
//!
//! Delivery is at-least-once: a consumer resumes after the last committed offset, and
//! anything after it may be delivered again (a crash between the effect's commit and the
//! offset commit, a rebalance). Exactly-once effects come from the consumer's cursor in the
//! store, committed with the effect, against the record's `seq`.

mod admin;
mod consumer;
mod producer;
mod reader;

pub use admin::{ensure_topic, TopicState};
pub use consumer::KafkaConsumer;
pub use producer::{KafkaLog, KafkaProducer};
pub use reader::KafkaReader;

use agora_bus::LogError;
use rdkafka::ClientConfig;
use std::time::Duration;

/// Header carrying the producer sequence (the outbox `seq`) as decimal text.
pub const SEQ_HEADER: &str = "agora-seq";
/// Header carrying the event type as text.
pub const EVENT_TYPE_HEADER: &str = "event-type";

/// How long a metadata or admin request may take before it counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the brokers are, and any librdkafka settings to apply on top of ours.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    brokers: String,
    settings: Vec<(String, String)>,
}

impl KafkaConfig {
    /// `brokers`: `host:port,host:port,…`.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            settings: Vec::new(),
        }
    }

    /// From the log URL of the configuration: `kafka://host:port,host:port,…`, optionally
    /// with librdkafka properties as a query: `kafka://k1:9092?batch.num.messages=1&linger.ms=0`.
    pub fn from_url(url: &str) -> Result<KafkaConfig, LogError> {
        let invalid = || {
            LogError::Broker(format!(
                "not a Kafka log URL: {url:?} (expected kafka://host:port,…[?property=value&…])"
            ))
        };
        let rest = url.strip_prefix("kafka://").ok_or_else(invalid)?;
        let (brokers, query) = rest.split_once('?').unwrap_or((rest, ""));
        let brokers = brokers.trim_end_matches('/');
        if brokers.is_empty() {
            return Err(invalid());
        }
        let mut config = KafkaConfig::new(brokers);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(invalid)?;
            config = config.set(key, value);
        }
        Ok(config)
    }

    /// Sets a librdkafka property (see librdkafka's CONFIGURATION.md), applied after ours:
    /// e.g. `heartbeat.interval.ms`, `linger.ms`, security settings.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> KafkaConfig {
        self.settings.push((key.into(), value.into()));
        self
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// A client configuration: the brokers, then `ours`, then the caller's settings.
    fn client_config(&self, ours: &[(&str, &str)]) -> ClientConfig {
        self.config_for(ours, &[])
    }

    /// Like [`KafkaConfig::client_config`], leaving out the caller's settings that belong
    /// to the other kind of client (one URL configures producers and consumers; librdkafka
    /// would warn about each misplaced property).
    fn config_for(&self, ours: &[(&str, &str)], not_for_this_client: &[&str]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in ours {
            config.set(*key, *value);
        }
        for (key, value) in &self.settings {
            if !not_for_this_client.contains(&key.as_str()) {
                config.set(key, value);
            }
        }
        config
    }
}

/// Consumer-only librdkafka properties a log URL may carry.
const CONSUMER_PROPERTIES: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "partition.assignment.strategy",
    "group.instance.id",
];

/// Producer-only librdkafka properties a log URL may carry.
const PRODUCER_PROPERTIES: &[&str] = &[
    "batch.num.messages",
    "batch.size",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "compression.type",
    "message.timeout.ms",
];

fn broker_error(context: &str, error: impl std::fmt::Display) -> LogError {
    LogError::Broker(format!("{context}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_come_from_the_log_url() {
        let config = KafkaConfig::from_url("kafka://k1:9092,k2:9092/").unwrap();
        assert_eq!(config.brokers(), "k1:9092,k2:9092");
        let config = KafkaConfig::from_url("kafka://k:1?batch.num.messages=1&linger.ms=0")
            .unwrap()
            .client_config(&[]);
        assert_eq!(config.get("bootstrap.servers"), Some("k:1"));
        assert_eq!(config.get("batch.num.messages"), Some("1"));
        assert_eq!(config.get("linger.ms"), Some("0"));
        for bad in [
            "kafka://",
            "kafka://?a=b",
            "kafka://k:1?flag",
            "embedded",
            "redis://x:1",
        ] {
            assert!(KafkaConfig::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_callers_settings_come_last() {
        let config = KafkaConfig::new("k:1")
            .set("linger.ms", "0")
            .client_config(&[("linger.ms", "1"), ("acks", "all")]);
        assert_eq!(config.get("linger.ms"), Some("0"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("bootstrap.servers"), Some("k:1"));
    }
}
