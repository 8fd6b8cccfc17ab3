use crate::consumer::decode;
use crate::{broker_error, KafkaConfig, REQUEST_TIMEOUT};
use agora_bus::{Delivered, LogError};
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// At most this many records per `poll`.
const MAX_BATCH: usize = 1024;

/// A reader of every partition of one topic, outside any consumer group: each process keeps
/// its own place (a market process rebuilds its read model from the store and reads on
/// from the log's ends as they were before that snapshot). Nothing is committed to Kafka.
pub struct KafkaReader {
    consumer: BaseConsumer<DefaultConsumerContext>,
    topic: String,
    partitions: u32,
}

impl KafkaReader {
    /// Opens a reader of `topic`, which must exist. It reads nothing before
    /// [`KafkaReader::start_at`].
    pub fn open(config: &KafkaConfig, topic: &str) -> Result<KafkaReader, LogError> {
        // librdkafka wants a group id even for assigned partitions; this one is never
        // joined (no subscribe) and nothing is committed under it.
        let group = format!("{topic}-reader");
        let consumer: BaseConsumer = config
            .config_for(
                &[
                    ("group.id", &group),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                    ("auto.offset.reset", "earliest"),
                    ("allow.auto.create.topics", "false"),
                ],
                crate::PRODUCER_PROPERTIES,
            )
            .create()
            .map_err(|e| broker_error("creating the Kafka reader", e))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| broker_error(&format!("reading the metadata of topic {topic}"), e))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as u32)
            .filter(|&n| n > 0)
            .ok_or_else(|| LogError::Broker(format!("topic {topic} does not exist")))?;
        Ok(KafkaReader {
            consumer,
            topic: topic.to_string(),
            partitions,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Each partition's end: the offset the next record appended to it will get.
    pub fn ends(&self) -> Result<Vec<i64>, LogError> {
        (0..self.partitions)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p as i32, REQUEST_TIMEOUT)
                    .map(|(_low, high)| high)
                    .map_err(|e| broker_error(&format!("reading the end of {}/{p}", self.topic), e))
            })
            .collect()
    }

    /// Reads every partition from `offsets[p]` on (replacing any earlier start).
    pub fn start_at(&mut self, offsets: &[i64]) -> Result<(), LogError> {
        let mut list = TopicPartitionList::new();
        for (p, &offset) in offsets.iter().enumerate() {
            list.add_partition_offset(&self.topic, p as i32, Offset::Offset(offset))
                .map_err(|e| broker_error("assigning", e))?;
        }
        self.consumer
            .assign(&list)
            .map_err(|e| broker_error(&format!("assigning {}", self.topic), e))
    }

    /// Waits up to `timeout` for records; returns those fetched (in log order per
    /// partition), possibly none.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<Delivered>, LogError> {
        let deadline = Instant::now() + timeout;
        let mut batch = Vec::new();
        loop {
            let wait = if batch.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None => break,
                Some(Ok(message)) => match decode(&message) {
                    Ok(delivered) => {
                        batch.push(delivered);
                        if batch.len() == MAX_BATCH {
                            break;
                        }
                    }
                    // Skipped: the reader's caller keeps a read model, which notices what it
                    // missed by its own sequence numbers and rebuilds from the store.
                    Err(error) => tracing::warn!(%error, "Kafka reader skipped a record"),
                },
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    return Err(broker_error("consuming", code))
                }
                // Transport errors and the like: librdkafka reconnects and retries by itself.
                Some(Err(error)) => tracing::warn!(topic = %self.topic, %error, "Kafka reader"),
            }
            if Instant::now() >= deadline && batch.is_empty() {
                break;
            }
        }
        Ok(batch)
    }
}
