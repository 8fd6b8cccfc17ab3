use crate::{broker_error, KafkaConfig, EVENT_TYPE_HEADER, REQUEST_TIMEOUT, SEQ_HEADER};
use agora_bus::{EventLog, LogError, Record};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long `append` waits before retrying a record librdkafka's full queue refused.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

/// Records handed over by `append_queued` and not yet acknowledged, per producer, before the
/// next `append_queued` waits. This is the pipelined producer's backpressure: without it a
/// writer that commits faster than the broker takes records queues them in librdkafka
/// (100,000 by default) and the consumers fall seconds behind while every request is
/// accepted. A thousand is several commits' worth of book inputs at a few milliseconds each.
const QUEUED_UNACKED_MAX: usize = 1_024;

/// The process's idempotent producer, shared by every topic it writes (librdkafka wants one
/// producer per process: one connection per broker, batching across topics). Cheap to clone.
#[derive(Clone)]
pub struct KafkaProducer {
    producer: ThreadedProducer<AckContext>,
    unacked: Arc<Unacked>,
}

impl KafkaProducer {
    pub fn new(config: &KafkaConfig) -> Result<KafkaProducer, LogError> {
        let producer = config
            .config_for(
                &[
                    // Retries keep per-partition order and write nothing twice; implies acks=all,
                    // which is also set so that reading the configuration says it.
                    ("enable.idempotence", "true"),
                    // A record that cannot be delivered fails the producer instead of leaving a
                    // gap that later records of the same partition would close over.
                    ("enable.gapless.guarantee", "true"),
                    ("acks", "all"),
                    // Appends go out at once (pipelined or waited for), so a long linger is pure
                    // latency; 1 ms still gathers one append's records into one request.
                    ("linger.ms", "1"),
                    // A topic that does not exist is a deployment error, not something to create
                    // with the broker's default partition count.
                    ("allow.auto.create.topics", "false"),
                ],
                crate::CONSUMER_PROPERTIES,
            )
            .create_with_context(AckContext)
            .map_err(|e| broker_error("creating the Kafka producer", e))?;
        Ok(KafkaProducer {
            producer,
            unacked: Arc::new(Unacked::default()),
        })
    }

    /// The producer's handle on `topic`, which must exist (see [`crate::ensure_topic`]).
    /// The partition count is read once: adding partitions moves keys to other partitions,
    /// which is a planned operation with the producers and consumers restarted.
    pub fn log(&self, topic: &str) -> Result<KafkaLog, LogError> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| broker_error(&format!("reading the metadata of topic {topic}"), e))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as u32)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                LogError::Broker(format!(
                    "topic {topic} does not exist (create it with its partition count first)"
                ))
            })?;
        Ok(KafkaLog {
            producer: self.clone(),
            topic: topic.to_string(),
            partitions,
        })
    }
}

/// One topic of a [`KafkaProducer`].
pub struct KafkaLog {
    producer: KafkaProducer,
    topic: String,
    partitions: u32,
}

impl KafkaLog {
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Enqueues the records in order on `partition` and waits until the broker has
    /// acknowledged all of them (or one failed: then the error, and the caller appends the
    /// batch again; records already written come twice and consumers drop them by `seq`).
    fn append(&self, partition: u32, records: Vec<Record>) -> Result<(), LogError> {
        let Some(acks) = self.enqueue(partition, &records, Delivery::Awaited)? else {
            return Ok(());
        };
        acks.wait().map_err(|e| {
            LogError::Broker(format!(
                "delivering to {} partition {partition}: {e}",
                self.topic
            ))
        })
    }

    /// Enqueues the records and returns: the delivery reports arrive on librdkafka's thread,
    /// and a failed one ends the process (see [`EventLog::append_queued`]). The producer is
    /// idempotent with the gapless guarantee, so records queued later on the partition are
    /// never written past a failed one.
    fn append_queued(&self, partition: u32, records: Vec<Record>) -> Result<(), LogError> {
        self.enqueue(partition, &records, Delivery::Queued)
            .map(drop)
    }
}

impl KafkaLog {
    /// Hands the records to librdkafka in order; `None` when there were none.
    fn enqueue(
        &self,
        partition: u32,
        records: &[Record],
        delivery: Delivery,
    ) -> Result<Option<Arc<Acks>>, LogError> {
        if partition >= self.partitions {
            return Err(LogError::NoSuchPartition {
                partition,
                partitions: self.partitions,
            });
        }
        if records.is_empty() {
            return Ok(None);
        }
        let unacked = match delivery {
            Delivery::Awaited => None,
            Delivery::Queued => {
                self.producer.unacked.take(records.len());
                Some(self.producer.unacked.clone())
            }
        };
        let acks = Arc::new(Acks::expecting(records.len(), unacked));
        for (sent, record) in records.iter().enumerate() {
            let seq = record.seq.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: SEQ_HEADER,
                    value: Some(seq.as_bytes()),
                })
                .insert(Header {
                    key: EVENT_TYPE_HEADER,
                    value: Some(record.event_type.as_bytes()),
                });
            let mut message = BaseRecord::with_opaque_to(&self.topic, acks.clone())
                .partition(partition as i32)
                .key(record.key.as_bytes())
                .payload(record.payload.as_bytes())
                .headers(headers);
            loop {
                match self.producer.producer.send(message) {
                    Ok(()) => break,
                    // librdkafka's local queue is full: it drains as the broker acknowledges.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        message = back;
                        std::thread::sleep(QUEUE_FULL_BACKOFF);
                    }
                    Err((e, _)) => {
                        if let Some(unacked) = &acks.queued {
                            // These records were counted and will never be reported.
                            unacked.give_back(records.len() - sent);
                        }
                        return Err(broker_error(
                            &format!("producing to {} partition {partition}", self.topic),
                            e,
                        ));
                    }
                }
            }
        }
        Ok(Some(acks))
    }
}

/// Routes each delivery report to the `append` waiting for it.
struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        acks.report(result.as_ref().err().map(|(e, _)| e.to_string()));
    }
}

/// Who learns of a delivery's outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// `append`, waiting on [`Acks::wait`].
    Awaited,
    /// `append_queued`: nobody waits, so a failure stops the process.
    Queued,
}

/// The acknowledgements of one append.
struct Acks {
    state: Mutex<AckState>,
    done: Condvar,
    /// Queued (nobody waits): the producer's count that each report gives back to.
    queued: Option<Arc<Unacked>>,
}

/// How many queued records await their acknowledgement (see [`QUEUED_UNACKED_MAX`]).
#[derive(Default)]
struct Unacked {
    count: Mutex<usize>,
    freed: Condvar,
}

impl Unacked {
    /// Counts `n` more records, first waiting until the count is below the bound (one
    /// append larger than the bound passes alone, so that it cannot wait forever).
    fn take(&self, n: usize) {
        let count = self.count.lock().expect("unacked lock");
        let mut count = self
            .freed
            .wait_while(count, |c| *c > 0 && *c + n > QUEUED_UNACKED_MAX)
            .expect("unacked lock");
        *count += n;
    }

    fn give_back(&self, n: usize) {
        let mut count = self.count.lock().expect("unacked lock");
        *count -= n;
        self.freed.notify_all();
    }
}

struct AckState {
    pending: usize,
    first_error: Option<String>,
}

impl Acks {
    fn expecting(pending: usize, queued: Option<Arc<Unacked>>) -> Acks {
        Acks {
            queued,
            state: Mutex::new(AckState {
                pending,
                first_error: None,
            }),
            done: Condvar::new(),
        }
    }

    fn report(&self, error: Option<String>) {
        if let Some(unacked) = &self.queued {
            if let Some(e) = &error {
                // The producer moved on past this record; a restart re-publishes it in order.
                tracing::error!(error = %e, "a queued record was not delivered; stopping");
                eprintln!("fatal: a queued record was not delivered: {e}");
                std::process::abort();
            }
            unacked.give_back(1);
            return;
        }
        let mut state = self.state.lock().expect("acks lock");
        state.pending -= 1;
        if state.first_error.is_none() {
            state.first_error = error;
        }
        if state.pending == 0 || state.first_error.is_some() {
            self.done.notify_all();
        }
    }

    /// Returns when every record is acknowledged, or at the first failure.
    fn wait(&self) -> Result<(), String> {
        let state = self.state.lock().expect("acks lock");
        let state = self
            .done
            .wait_while(state, |s| s.pending > 0 && s.first_error.is_none())
            .expect("acks lock");
        match &state.first_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_appends_wait_while_the_unacknowledged_bound_is_reached() {
        let unacked = Arc::new(Unacked::default());
        unacked.take(QUEUED_UNACKED_MAX - 1);
        let waiter = {
            let unacked = unacked.clone();
            std::thread::spawn(move || unacked.take(2))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "two more would pass the bound");
        unacked.give_back(1);
        waiter.join().unwrap();
        assert_eq!(*unacked.count.lock().unwrap(), QUEUED_UNACKED_MAX);
    }

    #[test]
    fn an_append_larger_than_the_bound_passes_alone() {
        let unacked = Unacked::default();
        unacked.take(QUEUED_UNACKED_MAX * 3);
        unacked.give_back(QUEUED_UNACKED_MAX * 3);
        assert_eq!(*unacked.count.lock().unwrap(), 0);
    }
}
