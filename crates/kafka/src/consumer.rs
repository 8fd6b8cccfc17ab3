use crate::{broker_error, KafkaConfig, EVENT_TYPE_HEADER, REQUEST_TIMEOUT, SEQ_HEADER};
use agora_bus::{Delivered, LogConsumer, LogError, Polled, Record};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most this many records per `poll`: bounds the work between two looks at rebalances.
const MAX_BATCH: usize = 1024;

/// A consumer-group member on one topic.
///
/// Offsets: [`LogConsumer::commit`]`(p, o)` means "the effects of every record up to and
/// including offset `o` are durable", so it commits `o + 1`, which is what Kafka stores: the
/// offset of the next record to read. Commits are asynchronous (a failed one is logged): the
/// committed offset is only where the next owner starts reading, and the store's cursor drops
/// what it re-reads. Dropping the consumer leaves the group cleanly, after its pending
/// commits.
///
/// The group uses librdkafka's default assignors (eager `range,roundrobin`): on a
/// rebalance every member is first told `Revoked` for all it had, then `Assigned` for its new
/// share, and no member gets a partition before its previous owner gave it up in `poll`.
/// A member that stops polling for `max.poll.interval.ms` (default 5 minutes) is expelled
/// and its partitions move without it: the store must fence such a stale writer.
pub struct KafkaConsumer {
    consumer: BaseConsumer<GroupContext>,
    topic: String,
    /// Partitions as of the last assignment event returned.
    owned: BTreeSet<u32>,
    /// An undecodable record met while filling a batch, reported by the next poll.
    deferred: Option<LogError>,
    /// Seeks librdkafka has not taken yet: right after an assignment a partition's fetcher
    /// waits for the committed offset, and until it has started librdkafka refuses a seek.
    /// Retried on every poll; meanwhile the partition's records (read from the committed
    /// offset) are dropped, so the first ones delivered start at the offset asked for.
    pending_seeks: BTreeMap<u32, i64>,
}

impl KafkaConsumer {
    /// Joins consumer group `group` on `topic`, which must exist. A group with no committed
    /// offset for a partition starts at its earliest record. The first assignment comes
    /// from a later `poll`.
    pub fn join(config: &KafkaConfig, group: &str, topic: &str) -> Result<KafkaConsumer, LogError> {
        let consumer: BaseConsumer<GroupContext> = config
            .config_for(
                &[
                    ("group.id", group),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                    ("auto.offset.reset", "earliest"),
                    ("allow.auto.create.topics", "false"),
                ],
                crate::PRODUCER_PROPERTIES,
            )
            .create_with_context(GroupContext {
                topic: topic.to_string(),
                events: Mutex::new(VecDeque::new()),
            })
            .map_err(|e| broker_error("creating the Kafka consumer", e))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| broker_error(&format!("reading the metadata of topic {topic}"), e))?;
        if !metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        {
            return Err(LogError::Broker(format!("topic {topic} does not exist")));
        }
        consumer
            .subscribe(&[topic])
            .map_err(|e| broker_error(&format!("subscribing to {topic}"), e))?;
        Ok(KafkaConsumer {
            consumer,
            topic: topic.to_string(),
            owned: BTreeSet::new(),
            deferred: None,
            pending_seeks: BTreeMap::new(),
        })
    }

    /// The next assignment change the rebalance callbacks queued, applied to `owned`.
    fn next_event(&mut self) -> Option<Polled> {
        let event = self
            .consumer
            .context()
            .events
            .lock()
            .expect("events lock")
            .pop_front()?;
        match &event {
            Polled::Assigned(partitions) => self.owned.extend(partitions),
            Polled::Revoked(partitions) => partitions.iter().for_each(|p| {
                self.owned.remove(p);
                self.pending_seeks.remove(p);
            }),
            Polled::Idle | Polled::Records(_) => unreachable!("only assignment changes are queued"),
        }
        Some(event)
    }

    fn revoked_but_not_yet_reported(&self) -> BTreeSet<u32> {
        let events = self.consumer.context().events.lock().expect("events lock");
        events
            .iter()
            .filter_map(|e| match e {
                Polled::Revoked(partitions) => Some(partitions.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn has_events(&self) -> bool {
        !self
            .consumer
            .context()
            .events
            .lock()
            .expect("events lock")
            .is_empty()
    }

    /// Asks librdkafka for the pending seeks; keeps those it cannot take yet.
    fn start_pending_seeks(&mut self) -> Result<(), LogError> {
        if self.pending_seeks.is_empty() {
            return Ok(());
        }
        let mut seeks = TopicPartitionList::new();
        for (&partition, &offset) in &self.pending_seeks {
            seeks
                .add_partition_offset(&self.topic, partition as i32, Offset::Offset(offset))
                .map_err(|e| broker_error("seeking", e))?;
        }
        let results = self
            .consumer
            .seek_partitions(seeks, REQUEST_TIMEOUT)
            .map_err(|e| broker_error(&format!("seeking in {}", self.topic), e))?;
        for result in results.elements() {
            let partition = result.partition() as u32;
            match result.error() {
                Ok(()) => {}
                // Not started yet, or the assignment's start at the committed offset came
                // after the seek and overrode it: again later.
                Err(KafkaError::OffsetFetch(
                    RDKafkaErrorCode::State | RDKafkaErrorCode::Outdated,
                )) => continue,
                Err(e) => {
                    self.pending_seeks.remove(&partition);
                    return Err(broker_error(
                        &format!("seeking {}/{partition}", self.topic),
                        e,
                    ));
                }
            }
            self.pending_seeks.remove(&partition);
        }
        Ok(())
    }

    fn owned(&self, partition: u32) -> Result<(), LogError> {
        if self.owned.contains(&partition) {
            Ok(())
        } else {
            Err(LogError::NotAssigned(partition))
        }
    }
}

impl LogConsumer for KafkaConsumer {
    fn poll(&mut self, timeout: Duration) -> Result<Polled, LogError> {
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        if let Some(event) = self.next_event() {
            return Ok(event);
        }
        self.start_pending_seeks()?;
        let deadline = Instant::now() + timeout;
        let mut batch = Vec::new();
        loop {
            // Wait for the first record only; then take what is already fetched.
            let wait = if batch.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                // The wait ran out, or a rebalance callback ran (rdkafka returns at once).
                None => {
                    if !batch.is_empty() || self.has_events() || Instant::now() >= deadline {
                        break;
                    }
                }
                // Read from where the partition was before a seek librdkafka has not taken;
                // a record means the fetcher runs, so now it will.
                Some(Ok(message))
                    if self
                        .pending_seeks
                        .contains_key(&(message.partition() as u32)) =>
                {
                    drop(message);
                    self.start_pending_seeks()?;
                }
                Some(Ok(message)) => match decode(&message) {
                    Ok(delivered) => {
                        batch.push(delivered);
                        if batch.len() == MAX_BATCH {
                            break;
                        }
                    }
                    Err(error) if batch.is_empty() => return Err(error),
                    Err(error) => {
                        self.deferred = Some(error);
                        break;
                    }
                },
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    return Err(broker_error("consuming", code))
                }
                // Transport errors and the like: librdkafka reconnects and retries by itself.
                Some(Err(error)) => tracing::warn!(topic = %self.topic, %error, "Kafka consumer"),
            }
        }
        // Records fetched before a revocation that happened while the batch was filling are
        // no longer this member's to apply: the next owner reads them again.
        let revoked = self.revoked_but_not_yet_reported();
        batch.retain(|d: &Delivered| !revoked.contains(&d.partition));
        if !batch.is_empty() {
            return Ok(Polled::Records(batch));
        }
        Ok(self.next_event().unwrap_or(Polled::Idle))
    }

    fn assignment(&self) -> Vec<u32> {
        self.owned.iter().copied().collect()
    }

    fn commit(&mut self, partition: u32, offset: i64) -> Result<(), LogError> {
        self.owned(partition)?;
        let mut next = TopicPartitionList::new();
        next.add_partition_offset(&self.topic, partition as i32, Offset::Offset(offset + 1))
            .map_err(|e| broker_error("committing", e))?;
        self.consumer
            .commit(&next, CommitMode::Async)
            .map_err(|e| broker_error(&format!("committing {}/{partition}", self.topic), e))
    }

    /// Takes effect at once, or (right after an assignment) before the partition's next
    /// record is delivered.
    fn seek(&mut self, partition: u32, offset: i64) -> Result<(), LogError> {
        self.owned(partition)?;
        self.pending_seeks.insert(partition, offset);
        self.start_pending_seeks()
    }
}

/// Turns rebalance callbacks (run by librdkafka inside `poll`, on the polling thread) into
/// assignment events for [`KafkaConsumer::poll`] to return in order.
struct GroupContext {
    topic: String,
    events: Mutex<VecDeque<Polled>>,
}

impl GroupContext {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<u32> {
        let mut partitions: Vec<u32> = list
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition() as u32)
            .collect();
        partitions.sort_unstable();
        partitions
    }

    fn push(&self, event: Polled) {
        self.events.lock().expect("events lock").push_back(event);
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    /// Runs before librdkafka gives the partitions up: the member learns of the loss before
    /// anything else it polls.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let lost = match rebalance {
            Rebalance::Revoke(list) => self.partitions(list),
            // librdkafka drops the whole assignment after a failed rebalance.
            Rebalance::Error(error) => {
                tracing::warn!(topic = %self.topic, %error, "Kafka rebalance failed");
                consumer
                    .assignment()
                    .map(|list| self.partitions(&list))
                    .unwrap_or_default()
            }
            Rebalance::Assign(_) => return,
        };
        if !lost.is_empty() {
            self.push(Polled::Revoked(lost));
        }
    }

    /// Runs once librdkafka has taken the partitions: reading resumes at the committed offsets.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let gained = self.partitions(list);
            if !gained.is_empty() {
                self.push(Polled::Assigned(gained));
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(topic = %self.topic, %error, ?offsets, "Kafka offset commit failed");
        }
    }
}

pub(crate) fn decode(message: &BorrowedMessage<'_>) -> Result<Delivered, LogError> {
    let partition = message.partition() as u32;
    let offset = message.offset();
    let malformed = |reason: &str| LogError::Malformed {
        partition,
        offset,
        reason: reason.to_string(),
    };
    let text = |bytes: Option<&[u8]>, what: &str| -> Result<Arc<str>, LogError> {
        let bytes = bytes.ok_or_else(|| malformed(&format!("no {what}")))?;
        let text =
            std::str::from_utf8(bytes).map_err(|_| malformed(&format!("{what} is not UTF-8")))?;
        Ok(text.into())
    };
    let header = |name: &str| {
        message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
    };
    let seq = text(header(SEQ_HEADER), &format!("{SEQ_HEADER} header"))?;
    let seq = seq
        .trim()
        .parse::<i64>()
        .map_err(|_| malformed(&format!("{SEQ_HEADER} header {seq:?} is not an integer")))?;
    Ok(Delivered {
        partition,
        offset,
        record: Record::new(
            seq,
            text(message.key(), "key")?,
            text(
                header(EVENT_TYPE_HEADER),
                &format!("{EVENT_TYPE_HEADER} header"),
            )?,
            text(message.payload(), "payload")?,
        ),
    })
}
