//! The scenarios against a real Kafka-protocol broker at `AGORA_TEST_KAFKA` (default
//! 127.0.0.1:9092; `scripts/services` starts tansu there). Under `CI=true` a missing broker
//! fails these tests; by hand they print how to start one and pass as skipped.
//!
//! The producers write one record per record batch (`batch.num.messages=1`): tansu 0.6.0's
//! memory engine answers a fetch only with batches that *start* at or after the fetch offset
//! (`offsets.split_off(&offset)` in tansu-storage's `dynostore.rs`), so a consumer resuming
//! or seeking into the middle of a batch gets nothing of that batch: it waits forever if the
//! batch was the last, and silently skips the batch's tail if more followed. Kafka (and
//! librdkafka's mock cluster, where these scenarios run with normal batching) return the
//! whole batch and the client skips the records below the offset.

mod scenarios;

use agora_kafka::{ensure_topic, KafkaConfig, TopicState};
use scenarios::{Cluster, PARTITIONS};

const HOW_TO_START: &str = "scripts/services   (starts every test service), or just the broker:
    cargo install tansu --version 0.6.0 --locked --features dynostore
    tansu broker --listener-url tcp://127.0.0.1:9092 \\
        --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/";

fn with_broker(scenario: fn(&Cluster)) {
    let brokers = agora_testsvc::service_addr("AGORA_TEST_KAFKA", "127.0.0.1:9092");
    if !agora_testsvc::require_service("Kafka-protocol broker", &brokers, HOW_TO_START) {
        return;
    }
    scenario(&Cluster {
        config: KafkaConfig::new(brokers).set("batch.num.messages", "1"), // see above
        create_topic: &create_topic_with_admin,
    });
}

/// Creates the topic through the admin API, and checks that doing it again is harmless.
pub fn create_topic_with_admin(config: &KafkaConfig, topic: &str) {
    assert_eq!(
        ensure_topic(config, topic, PARTITIONS, 1),
        Ok(TopicState::Created)
    );
    assert_eq!(
        ensure_topic(config, topic, PARTITIONS, 1),
        Ok(TopicState::Existed {
            partitions: PARTITIONS
        })
    );
}

#[test]
fn keyed_records_keep_partition_order_and_headers() {
    with_broker(scenarios::keyed_records_keep_partition_order_and_headers);
}

#[test]
fn librdkafka_murmur2_places_keys_like_partition_for() {
    with_broker(scenarios::librdkafka_murmur2_places_keys_like_partition_for);
}

#[test]
fn group_resumes_after_committed_offsets() {
    with_broker(scenarios::group_resumes_after_committed_offsets);
}

#[test]
fn seek_rereads_from_an_offset() {
    with_broker(scenarios::seek_rereads_from_an_offset);
}

#[test]
fn two_members_split_partitions_and_one_takes_over() {
    with_broker(scenarios::two_members_split_partitions_and_one_takes_over);
}

#[test]
fn an_undecodable_record_is_reported_and_passed() {
    with_broker(scenarios::an_undecodable_record_is_reported_and_passed);
}

#[test]
fn seek_right_after_assignment_starts_there() {
    with_broker(scenarios::seek_right_after_assignment_starts_there);
}

#[test]
fn missing_topics_and_partitions_are_refused() {
    with_broker(scenarios::missing_topics_and_partitions_are_refused);
}
