//! The adapter's scenarios, run against librdkafka's mock cluster (`mock_cluster.rs`) and
//! a real broker (`broker.rs`).

use agora_bus::{partition_for, Delivered, EventLog, LogConsumer, LogError, Polled, Record};
use agora_kafka::{KafkaConfig, KafkaConsumer, KafkaProducer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub const PARTITIONS: u32 = 4;
/// Bound on any one wait for the group or the records: a rebalance takes a few heartbeats.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A topic name no earlier run used (a broker may keep topics between runs).
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("agora-test-{name}-{nanos}")
}

/// A broker to run a scenario against, and how it creates a topic of [`PARTITIONS`]
/// partitions (the mock cluster has no admin API).
pub struct Cluster<'a> {
    pub config: KafkaConfig,
    pub create_topic: &'a dyn Fn(&KafkaConfig, &str),
}

impl Cluster<'_> {
    fn new_topic(&self, name: &str) -> String {
        let topic = unique(name);
        (self.create_topic)(&self.config, &topic);
        topic
    }

    /// Members notice a rebalance within a heartbeat, and a group waits for a silent
    /// member up to the session timeout: both short (6 s is a broker's minimum session),
    /// so the tests are quick.
    fn config(&self) -> KafkaConfig {
        self.config
            .clone()
            .set("heartbeat.interval.ms", "100")
            .set("session.timeout.ms", "6000")
    }
}

const SYMBOLS: [&str; 8] = [
    "BTC-USDT", "ETH-USDT", "SOL-USDT", "COIN-USD", "XRP-USDT", "ADA-USDT", "DOGE-USD", "LTC-BTC",
];

/// `count` records over the symbols, seqs 1..=count, appended as a relay does: grouped by
/// partition, in seq order, a few batches.
fn publish(log: &impl EventLog, count: i64) {
    for chunk in (1..=count).collect::<Vec<_>>().chunks(25) {
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for &seq in chunk {
            let key = SYMBOLS[seq as usize % SYMBOLS.len()];
            let payload = format!(r#"{{"seq":{seq}}}"#);
            by_partition
                .entry(partition_for(key, log.partitions()))
                .or_default()
                .push(Record::new(seq, key, "OrderAccepted", payload));
        }
        for (partition, records) in by_partition {
            log.append(partition, records).unwrap();
        }
    }
}

/// Everything a member saw, in order.
#[derive(Default)]
struct Seen {
    events: Vec<Polled>,
    records: Vec<Delivered>,
}

impl Seen {
    fn take(&mut self, polled: Polled) {
        match polled {
            Polled::Idle => {}
            Polled::Records(batch) => {
                assert!(
                    !self.events.is_empty(),
                    "records before any assignment: {batch:?}"
                );
                self.records.extend(batch)
            }
            event => self.events.push(event),
        }
    }
}

/// Polls until `done` holds for what was seen.
fn poll_until(consumer: &mut KafkaConsumer, done: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + PATIENCE;
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting; saw {:?} and {} records",
            seen.events,
            seen.records.len()
        );
        seen.take(consumer.poll(POLL).unwrap());
    }
    seen
}

/// Keyed records land on `partition_for(key)`, keep their per-key order, and bring their
/// seq, event type and payload back; log offsets count from 0 per partition.
pub fn keyed_records_keep_partition_order_and_headers(cluster: &Cluster) {
    let config = cluster.config();
    let topic = cluster.new_topic("order");
    let log = KafkaProducer::new(&config).unwrap().log(&topic).unwrap();
    assert_eq!(log.partitions(), PARTITIONS);
    publish(&log, 200);

    let mut consumer = KafkaConsumer::join(&config, &unique("g"), &topic).unwrap();
    let seen = poll_until(&mut consumer, |s| s.records.len() >= 200);
    assert_eq!(seen.records.len(), 200);
    assert_eq!(seen.events, vec![Polled::Assigned(vec![0, 1, 2, 3])]);
    assert_eq!(consumer.assignment(), vec![0, 1, 2, 3]);

    let mut last_seq: BTreeMap<&str, i64> = BTreeMap::new();
    let mut next_offset: BTreeMap<u32, i64> = BTreeMap::new();
    for d in &seen.records {
        let r = &d.record;
        assert_eq!(d.partition, partition_for(&r.key, PARTITIONS));
        let last = last_seq.entry(&r.key).or_insert(0);
        assert!(
            r.seq > *last,
            "{} out of order: {} after {last}",
            r.key,
            r.seq
        );
        *last = r.seq;
        let offset = next_offset.entry(d.partition).or_insert(0);
        assert_eq!(d.offset, *offset);
        *offset += 1;
        assert_eq!(&*r.event_type, "OrderAccepted");
        assert_eq!(*r.payload, format!(r#"{{"seq":{}}}"#, r.seq));
    }
    assert_eq!(last_seq.len(), SYMBOLS.len());
}

/// Remembers where librdkafka put each key.
#[derive(Default)]
struct Placements(Mutex<Vec<(String, u32)>>);

impl ClientContext for Placements {}

impl ProducerContext for Placements {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        use rdkafka::Message;
        let message = result.as_ref().expect("delivered");
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let partition = message.partition() as u32;
        self.0.lock().unwrap().push((key, partition));
    }
}

/// librdkafka's `murmur2_random` partitioner (Kafka's Java default) puts every key where
/// `partition_for` says, so our relay, Debezium and Java producers agree.
pub fn librdkafka_murmur2_places_keys_like_partition_for(cluster: &Cluster) {
    let topic = cluster.new_topic("murmur2");
    let producer: BaseProducer<Placements> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.config.brokers())
        .set("partitioner", "murmur2_random")
        .create_with_context(Placements::default())
        .unwrap();
    let keys: Vec<String> = (0..64)
        .map(|i| format!("SYM{i}-USDT"))
        .chain(SYMBOLS.iter().map(|s| s.to_string()))
        .chain(["", "é-ü", "a"].map(String::from))
        .collect();
    for key in &keys {
        producer
            .send(BaseRecord::<_, _, ()>::to(&topic).key(key).payload("{}"))
            .unwrap();
    }
    producer.flush(PATIENCE).unwrap();
    let placed = producer.context().0.lock().unwrap().clone();
    assert_eq!(placed.len(), keys.len());
    let mut used = BTreeSet::new();
    for (key, partition) in placed {
        assert_eq!(partition, partition_for(&key, PARTITIONS), "key {key:?}");
        used.insert(partition);
    }
    assert_eq!(used.len(), PARTITIONS as usize);
}

/// A member that joins after another committed resumes after the committed offset.
pub fn group_resumes_after_committed_offsets(cluster: &Cluster) {
    let config = cluster.config();
    let topic = cluster.new_topic("resume");
    let log = KafkaProducer::new(&config).unwrap().log(&topic).unwrap();
    let partition = partition_for("BTC-USDT", PARTITIONS);
    let records = (1..=10)
        .map(|seq| Record::new(seq, "BTC-USDT", "T", "{}"))
        .collect();
    log.append(partition, records).unwrap();

    let group = unique("g");
    let mut first = KafkaConsumer::join(&config, &group, &topic).unwrap();
    let seen = poll_until(&mut first, |s| s.records.len() >= 10);
    // The effects of the first six (offsets 0..=5) are durable.
    first.commit(partition, seen.records[5].offset).unwrap();
    assert_eq!(
        first.commit(PARTITIONS + 1, 0),
        Err(LogError::NotAssigned(PARTITIONS + 1))
    );
    drop(first); // leaves the group once its commits are done

    let mut second = KafkaConsumer::join(&config, &group, &topic).unwrap();
    let seen = poll_until(&mut second, |s| s.records.len() >= 4);
    let seqs: Vec<i64> = seen.records.iter().map(|d| d.record.seq).collect();
    assert_eq!(seqs, vec![7, 8, 9, 10]);
    assert_eq!(seen.records[0].offset, 6);
}

/// `seek` rereads a partition from an offset (replay from a snapshot's offset).
pub fn seek_rereads_from_an_offset(cluster: &Cluster) {
    let config = cluster.config();
    let topic = cluster.new_topic("seek");
    let log = KafkaProducer::new(&config).unwrap().log(&topic).unwrap();
    let partition = partition_for("ETH-USDT", PARTITIONS);
    let records = (1..=5)
        .map(|seq| Record::new(seq, "ETH-USDT", "T", "{}"))
        .collect();
    log.append(partition, records).unwrap();

    let mut consumer = KafkaConsumer::join(&config, &unique("g"), &topic).unwrap();
    poll_until(&mut consumer, |s| s.records.len() >= 5);
    consumer.seek(partition, 2).unwrap();
    let mut again = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while again.len() < 3 {
        assert!(Instant::now() < deadline, "no records after seek");
        if let Polled::Records(batch) = consumer.poll(POLL).unwrap() {
            again.extend(batch.into_iter().map(|d| (d.offset, d.record.seq)));
        }
    }
    assert_eq!(again, vec![(2, 3), (3, 4), (4, 5)]);
    assert_eq!(
        consumer.seek(PARTITIONS, 0),
        Err(LogError::NotAssigned(PARTITIONS))
    );
}

/// A new owner rebuilds a partition from a snapshot and seeks to the snapshot's offset
/// before reading anything: the first records it gets start there.
pub fn seek_right_after_assignment_starts_there(cluster: &Cluster) {
    let config = cluster.config();
    let topic = cluster.new_topic("seek-assigned");
    let log = KafkaProducer::new(&config).unwrap().log(&topic).unwrap();
    let partition = partition_for("XRP-USDT", PARTITIONS);
    let records = (1..=5)
        .map(|seq| Record::new(seq, "XRP-USDT", "T", "{}"))
        .collect();
    log.append(partition, records).unwrap();

    let mut consumer = KafkaConsumer::join(&config, &unique("g"), &topic).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no assignment");
        match consumer.poll(POLL).unwrap() {
            Polled::Assigned(_) => break,
            Polled::Idle => {}
            other => panic!("{other:?} before the assignment"),
        }
    }
    consumer.seek(partition, 3).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        assert!(Instant::now() < deadline, "no records after the seek");
        if let Polled::Records(batch) = consumer.poll(POLL).unwrap() {
            got.extend(batch.into_iter().map(|d| (d.offset, d.record.seq)));
        }
    }
    assert_eq!(got, vec![(3, 4), (4, 5)]);
}

/// Two members split the partitions (each told `Revoked` before its new `Assigned`), each
/// gets only its own partitions' records, and when one leaves the other takes all.
pub fn two_members_split_partitions_and_one_takes_over(cluster: &Cluster) {
    let config = cluster.config();
    let topic = cluster.new_topic("split");
    let log = KafkaProducer::new(&config).unwrap().log(&topic).unwrap();
    let group = unique("g");
    let all: Vec<u32> = (0..PARTITIONS).collect();

    let mut first = KafkaConsumer::join(&config, &group, &topic).unwrap();
    poll_until(&mut first, |s| !s.events.is_empty());
    assert_eq!(first.assignment(), all);

    let mut second = KafkaConsumer::join(&config, &group, &topic).unwrap();
    let (mut first_seen, mut second_seen) = (Seen::default(), Seen::default());
    let deadline = Instant::now() + PATIENCE;
    while first.assignment().is_empty()
        || second.assignment().is_empty()
        || first.assignment().len() + second.assignment().len() != all.len()
    {
        assert!(Instant::now() < deadline, "the partitions were not split");
        first_seen.take(first.poll(POLL).unwrap());
        second_seen.take(second.poll(POLL).unwrap());
    }
    let mut union = first.assignment();
    union.extend(second.assignment());
    union.sort_unstable();
    assert_eq!(union, all, "each partition has exactly one owner");
    assert_eq!(first_seen.events[0], Polled::Revoked(all.clone()));
    assert!(matches!(first_seen.events[1], Polled::Assigned(_)));

    publish(&log, 80);
    let mut received = 0;
    let deadline = Instant::now() + PATIENCE;
    while received < 80 {
        assert!(Instant::now() < deadline, "only {received} of 80 records");
        for member in [&mut first, &mut second] {
            if let Polled::Records(batch) = member.poll(POLL).unwrap() {
                let owned = member.assignment();
                assert!(batch.iter().all(|d| owned.contains(&d.partition)));
                received += batch.len();
            }
        }
    }

    drop(second); // leaves the group: its partitions move to the first member
    let deadline = Instant::now() + PATIENCE;
    while first.assignment() != all {
        assert!(Instant::now() < deadline, "the survivor did not take over");
        first.poll(POLL).unwrap();
    }
}

/// Appending to a partition the topic does not have, and using a topic that does not
/// exist, are refused instead of creating anything.
pub fn missing_topics_and_partitions_are_refused(cluster: &Cluster) {
    let config = cluster.config();
    let topic = cluster.new_topic("refused");
    let producer = KafkaProducer::new(&config).unwrap();
    let log = producer.log(&topic).unwrap();
    assert_eq!(
        log.append(PARTITIONS, vec![Record::new(1, "k", "T", "{}")]),
        Err(LogError::NoSuchPartition {
            partition: PARTITIONS,
            partitions: PARTITIONS
        })
    );
    let missing = unique("missing");
    assert!(matches!(producer.log(&missing), Err(LogError::Broker(_))));
    assert!(matches!(
        KafkaConsumer::join(&config, &unique("g"), &missing),
        Err(LogError::Broker(_))
    ));
}

/// A record without our headers (another producer's) is reported with its position, and
/// the records after it still come.
pub fn an_undecodable_record_is_reported_and_passed(cluster: &Cluster) {
    let config = cluster.config();
    let topic = cluster.new_topic("malformed");
    let partition = partition_for("SOL-USDT", PARTITIONS);
    let raw: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .create()
        .unwrap();
    raw.send(
        BaseRecord::to(&topic)
            .partition(partition as i32)
            .key("SOL-USDT")
            .payload("{}"),
    )
    .unwrap();
    raw.flush(PATIENCE).unwrap();
    let log = KafkaProducer::new(&config).unwrap().log(&topic).unwrap();
    log.append(partition, vec![Record::new(1, "SOL-USDT", "T", "{}")])
        .unwrap();

    let mut consumer = KafkaConsumer::join(&config, &unique("g"), &topic).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut outcomes = Vec::new();
    while outcomes.len() < 2 {
        assert!(Instant::now() < deadline, "saw only {outcomes:?}");
        match consumer.poll(POLL) {
            Ok(Polled::Records(batch)) => {
                outcomes.extend(batch.into_iter().map(|d| Ok((d.offset, d.record.seq))))
            }
            Ok(_) => {}
            Err(error) => outcomes.push(Err(error)),
        }
    }
    assert_eq!(
        outcomes,
        vec![
            Err(LogError::Malformed {
                partition,
                offset: 0,
                reason: "no agora-seq header".into()
            }),
            Ok((1, 1))
        ]
    );
}
