//! The scenarios against librdkafka's in-process mock cluster: no broker needed.

mod scenarios;

use agora_kafka::KafkaConfig;
use rdkafka::mocking::MockCluster;
use scenarios::Cluster;

fn with_mock_cluster(scenario: fn(&Cluster)) {
    let mock = MockCluster::new(1).expect("librdkafka mock cluster");
    let create_topic = |_: &KafkaConfig, topic: &str| {
        mock.create_topic(topic, scenarios::PARTITIONS as i32, 1)
            .unwrap()
    };
    scenario(&Cluster {
        config: KafkaConfig::new(mock.bootstrap_servers()),
        create_topic: &create_topic,
    });
}

#[test]
fn keyed_records_keep_partition_order_and_headers() {
    with_mock_cluster(scenarios::keyed_records_keep_partition_order_and_headers);
}

#[test]
fn librdkafka_murmur2_places_keys_like_partition_for() {
    with_mock_cluster(scenarios::librdkafka_murmur2_places_keys_like_partition_for);
}

#[test]
fn group_resumes_after_committed_offsets() {
    with_mock_cluster(scenarios::group_resumes_after_committed_offsets);
}

#[test]
fn seek_rereads_from_an_offset() {
    with_mock_cluster(scenarios::seek_rereads_from_an_offset);
}

#[test]
fn two_members_split_partitions_and_one_takes_over() {
    with_mock_cluster(scenarios::two_members_split_partitions_and_one_takes_over);
}

#[test]
fn an_undecodable_record_is_reported_and_passed() {
    with_mock_cluster(scenarios::an_undecodable_record_is_reported_and_passed);
}

#[test]
fn seek_right_after_assignment_starts_there() {
    with_mock_cluster(scenarios::seek_right_after_assignment_starts_there);
}

#[test]
fn missing_topics_and_partitions_are_refused() {
    with_mock_cluster(scenarios::missing_topics_and_partitions_are_refused);
}
