//! The event-log port: records are appended to partitions chosen by key, so all events of one
//! key (a symbol, a product, a user) keep their order (design.md invariant 5). Every record
//! carries the sequence number its producer gave it (the outbox `seq`); consumers remember
//! the last sequence they applied, in the same transaction as the effect, and drop anything
//! at or below it. Delivery is therefore at-least-once and the effects exactly-once
//! (invariant 4). The log's own offsets (a Kafka offset) only say where to resume reading.
//!
//! Two halves, each backend-neutral:
//! - [`EventLog`]: a producer's handle on one topic. `append` returns once the log holds the
//!   records, so a relay advances its position only after that.
//! - [`LogConsumer`]: one member of a consumer group on one topic. [`LogConsumer::poll`]
//!   reports assignment changes ([`Polled::Assigned`], [`Polled::Revoked`]) and records
//!   ([`Delivered`]: the record with its partition and log offset), in the order they
//!   happened; [`LogConsumer::commit`] stores a resume position, [`LogConsumer::seek`] moves
//!   the read position (replay from a snapshot's offset).
//!
//! Partitioning is Kafka's default ([`partition_for`]: murmur2 of the key), so a key lands on
//! the same partition whoever produces it: the built-in relay, Debezium, a Java client.
//!
//! # The embedded adapter
//!
//! [`EmbeddedLog`] is one topic: a bounded in-memory channel per partition, in front of the
//! durable outbox. The outbox table *is* the log's storage: after a restart the relay
//! re-publishes from the lowest consumer cursor, so the channels keep nothing once
//! delivered and the log's offsets count records since the log was created.
//!
//! ```
//! use agora_bus::{partition_for, EmbeddedLog, EventLog, LogConsumer, Polled, Record};
//! use std::time::Duration;
//!
//! let log = EmbeddedLog::new(4, 64); // 4 partitions, each queue holds 64 appended batches
//! // One consumer per engine shard, each owning one partition (a consumer may own several).
//! let mut shards: Vec<_> = (0..4).map(|p| log.consumer([p]).unwrap()).collect();
//!
//! let p = partition_for("BTC-USDT", log.partitions());
//! log.append(p, vec![Record::new(7, "BTC-USDT", "OrderAccepted", "{}")]).unwrap();
//!
//! let shard = &mut shards[p as usize];
//! // The first poll reports what the consumer owns: rebuild those books, then match.
//! assert_eq!(shard.poll(Duration::ZERO).unwrap(), Polled::Assigned(vec![p]));
//! let Polled::Records(batch) = shard.poll(Duration::from_millis(10)).unwrap() else {
//!     panic!("expected records")
//! };
//! assert_eq!((batch[0].partition, batch[0].offset, batch[0].record.seq), (p, 0, 7));
//! // Once the batch's effects are durable (the cursor committed with them):
//! shard.commit(p, batch.last().unwrap().offset).unwrap();
//! ```
//!
//! An engine thread that also serves control messages polls with a short timeout and drains
//! its control channel between polls; records wake a waiting `poll` at once.

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Select, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Topic names shared by every producer and consumer of the distributed mode.
pub mod topics {
    /// Book inputs (orders accepted, cancels, listings), keyed by symbol.
    pub const BOOK_INPUTS: &str = "agora.book-inputs";
    /// What the engines made of them (trades, done orders), keyed by symbol.
    pub const ENGINE_OUTPUT: &str = "agora.engine-output";
    /// Settled effects (trades, order and balance updates) for the read side.
    pub const SETTLED: &str = "agora.settled";
}

/// One event as a producer appends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Producer sequence (the outbox `seq`): strictly increasing per key, the number a
    /// consumer's cursor compares against to drop what it already applied.
    pub seq: i64,
    /// Partitioning key (the Kafka message key).
    pub key: Arc<str>,
    pub event_type: Arc<str>,
    /// JSON.
    pub payload: Arc<str>,
}

impl Record {
    pub fn new(
        seq: i64,
        key: impl Into<Arc<str>>,
        event_type: impl Into<Arc<str>>,
        payload: impl Into<Arc<str>>,
    ) -> Record {
        Record {
            seq,
            key: key.into(),
            event_type: event_type.into(),
            payload: payload.into(),
        }
    }
}

/// A record as a consumer receives it: where it sits in the log, and the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub partition: u32,
    /// Position in the partition (the Kafka offset): what [`LogConsumer::commit`] and
    /// [`LogConsumer::seek`] take. Not the producer's `seq`.
    pub offset: i64,
    pub record: Record,
}

/// What one [`LogConsumer::poll`] brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Polled {
    /// Nothing within the timeout.
    Idle,
    /// This member now also owns these partitions. Rebuild their state (from the store,
    /// or a snapshot and [`LogConsumer::seek`] to its offset) before applying their records;
    /// reading resumes after the group's committed position.
    Assigned(Vec<u32>),
    /// This member no longer owns these partitions: stop applying their records at once
    /// (another member may already be rebuilding them). Their records are not delivered
    /// after this.
    Revoked(Vec<u32>),
    /// Records in log order per partition (a batch may mix partitions).
    Records(Vec<Delivered>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LogError {
    #[error("the log is closed")]
    Closed,
    #[error("partition {partition} does not exist (the topic has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("partition {0} is not assigned to this consumer")]
    NotAssigned(u32),
    #[error("partition {0} is already owned by another consumer")]
    AlreadyOwned(u32),
    #[error("{0}")]
    Unsupported(&'static str),
    /// A record the consumer cannot decode (e.g. a missing header). The consumer's position
    /// is past it: the caller decides whether to skip it or stop.
    #[error("undecodable record at partition {partition} offset {offset}: {reason}")]
    Malformed {
        partition: u32,
        offset: i64,
        reason: String,
    },
    /// The broker or its client refused or failed (the message names which).
    #[error("{0}")]
    Broker(String),
}

/// A producer's handle on one topic.
pub trait EventLog: Send + Sync {
    fn partitions(&self) -> u32;
    /// Appends records (already in `seq` order) to one partition, and returns once the log
    /// holds them (the broker has acknowledged them). Blocks while the partition is full:
    /// backpressure reaches the producer instead of memory growing.
    fn append(&self, partition: u32, records: Vec<Record>) -> Result<(), LogError>;

    /// Queues records (already in `seq` order) behind everything appended to `partition`
    /// before, and returns without waiting for the log to acknowledge them: a pipelined
    /// producer (the writer's relay, an engine's output) goes on with its next batch while
    /// this one is on the wire. Order per partition holds as with [`EventLog::append`].
    ///
    /// An error returned here means nothing of `records` was queued. A record that was
    /// queued and then fails to be delivered ends the process: its producer has moved on,
    /// and only a restart from the store (the relay re-publishes everything past its
    /// position; an engine resumes from the positions settlement committed) can put the
    /// records back in order. Blocks while the producer's queue is full.
    fn append_queued(&self, partition: u32, records: Vec<Record>) -> Result<(), LogError> {
        self.append(partition, records)
    }
}

/// One member of a consumer group on one topic.
pub trait LogConsumer: Send {
    /// Waits up to `timeout` for the next thing to act on. Assignment changes come in the
    /// order they happened relative to records: after `Revoked(p)` no record of `p` is
    /// returned, and a partition's records come only after its `Assigned`.
    fn poll(&mut self, timeout: Duration) -> Result<Polled, LogError>;
    /// The partitions this member owns, as of the last `Assigned`/`Revoked` returned.
    fn assignment(&self) -> Vec<u32>;
    /// Records that everything up to and including log `offset` of `partition` has taken
    /// effect durably; the next owner of the partition resumes after it. Call it only after
    /// the effect (and its dedup cursor) is committed: it is a resume hint, exactly-once
    /// comes from the cursor.
    fn commit(&mut self, partition: u32, offset: i64) -> Result<(), LogError>;
    /// Makes the next records of an owned `partition` start at log `offset`.
    fn seek(&mut self, partition: u32, offset: i64) -> Result<(), LogError>;
}

/// Kafka's default partitioner: `toPositive(murmur2(key)) % partitions`, as the Java
/// client's `BuiltInPartitioner.partitionForKey` and librdkafka's `murmur2_random`
/// partitioner compute it over the key's bytes. Identical in every process and release,
/// and the same partition a Java producer or Debezium picks for the key.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0);
    // toPositive: clear the sign bit (not abs(), which maps i32::MIN to itself).
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// MurmurHash2 as Kafka's `Utils.murmur2`: seed 0x9747b28c, little-endian 4-byte words.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= (b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// In-process log for one topic: one bounded channel per partition; each partition is read
/// by at most one [`EmbeddedConsumer`] at a time.
pub struct EmbeddedLog {
    senders: Vec<Sender<Vec<Record>>>,
    /// Readers of the partitions no consumer owns; a consumer takes its own and gives them
    /// back when dropped.
    unowned: Arc<Mutex<Vec<Option<PartitionReader>>>>,
}

struct PartitionReader {
    receiver: Receiver<Vec<Record>>,
    /// Log offset of the next record to deliver.
    next_offset: i64,
}

impl EmbeddedLog {
    /// `capacity_batches` bounds each partition's queue (in appended batches).
    pub fn new(partitions: u32, capacity_batches: usize) -> EmbeddedLog {
        assert!(partitions > 0 && capacity_batches > 0);
        let (senders, readers) = (0..partitions)
            .map(|_| {
                let (sender, receiver) = bounded(capacity_batches);
                let reader = PartitionReader {
                    receiver,
                    next_offset: 0,
                };
                (sender, Some(reader))
            })
            .unzip();
        EmbeddedLog {
            senders,
            unowned: Arc::new(Mutex::new(readers)),
        }
    }

    /// A consumer that owns `partitions` until it is dropped. Its first poll reports them
    /// as [`Polled::Assigned`]; the assignment never changes after that (one process).
    pub fn consumer(
        &self,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<EmbeddedConsumer, LogError> {
        let mut partitions: Vec<u32> = partitions.into_iter().collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut unowned = self.unowned.lock().expect("embedded log lock");
        for &partition in &partitions {
            match unowned.get(partition as usize) {
                None => {
                    return Err(LogError::NoSuchPartition {
                        partition,
                        partitions: self.partitions(),
                    })
                }
                Some(None) => return Err(LogError::AlreadyOwned(partition)),
                Some(Some(_)) => {}
            }
        }
        let readers = partitions
            .iter()
            .map(|&p| {
                let reader = unowned[p as usize].take().expect("checked above");
                (p, reader)
            })
            .collect();
        Ok(EmbeddedConsumer {
            readers,
            announced: false,
            unowned: self.unowned.clone(),
        })
    }
}

impl EventLog for EmbeddedLog {
    fn partitions(&self) -> u32 {
        self.senders.len() as u32
    }

    fn append(&self, partition: u32, records: Vec<Record>) -> Result<(), LogError> {
        debug_assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
        let sender = self
            .senders
            .get(partition as usize)
            .ok_or(LogError::NoSuchPartition {
                partition,
                partitions: self.partitions(),
            })?;
        if records.is_empty() {
            return Ok(());
        }
        sender.send(records).map_err(|_| LogError::Closed)
    }
}

/// The [`LogConsumer`] of an [`EmbeddedLog`]: owns a fixed set of partitions.
///
/// `commit` only checks ownership: in embedded mode the resume position is the consumer's
/// cursor in the store, and the relay re-publishes from it after a restart. `seek` accepts
/// only the current position: the channels keep nothing once delivered.
pub struct EmbeddedConsumer {
    /// Sorted by partition.
    readers: Vec<(u32, PartitionReader)>,
    /// Whether the first poll has reported the assignment.
    announced: bool,
    unowned: Arc<Mutex<Vec<Option<PartitionReader>>>>,
}

impl EmbeddedConsumer {
    fn reader(&mut self, partition: u32) -> Result<&mut PartitionReader, LogError> {
        self.readers
            .iter_mut()
            .find(|(p, _)| *p == partition)
            .map(|(_, reader)| reader)
            .ok_or(LogError::NotAssigned(partition))
    }

    fn deliver(&mut self, index: usize, batch: Vec<Record>) -> Polled {
        let (partition, reader) = &mut self.readers[index];
        let first = reader.next_offset;
        reader.next_offset += batch.len() as i64;
        Polled::Records(
            batch
                .into_iter()
                .zip(first..)
                .map(|(record, offset)| Delivered {
                    partition: *partition,
                    offset,
                    record,
                })
                .collect(),
        )
    }
}

impl LogConsumer for EmbeddedConsumer {
    fn poll(&mut self, timeout: Duration) -> Result<Polled, LogError> {
        if !self.announced {
            self.announced = true;
            return Ok(Polled::Assigned(self.assignment()));
        }
        // The common case (one shard, one partition) without building a selection.
        if let [(_, reader)] = &self.readers[..] {
            return match reader.receiver.recv_timeout(timeout) {
                Ok(batch) => Ok(self.deliver(0, batch)),
                Err(RecvTimeoutError::Timeout) => Ok(Polled::Idle),
                Err(RecvTimeoutError::Disconnected) => Err(LogError::Closed),
            };
        }
        if self.readers.is_empty() {
            std::thread::sleep(timeout);
            return Ok(Polled::Idle);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut select = Select::new();
            for (_, reader) in &self.readers {
                select.recv(&reader.receiver);
            }
            // `ready` does not receive, so the receivers are free again for `deliver`.
            let Ok(index) = select.ready_deadline(deadline) else {
                return Ok(Polled::Idle);
            };
            match self.readers[index].1.receiver.try_recv() {
                Ok(batch) => return Ok(self.deliver(index, batch)),
                Err(TryRecvError::Empty) => continue, // `ready` may wake spuriously
                // All partitions close together (the log owns every sender), so a closed
                // and drained one means the log is gone; the others' leftovers come first.
                Err(TryRecvError::Disconnected) => {
                    for index in 0..self.readers.len() {
                        if let Ok(batch) = self.readers[index].1.receiver.try_recv() {
                            return Ok(self.deliver(index, batch));
                        }
                    }
                    return Err(LogError::Closed);
                }
            }
        }
    }

    fn assignment(&self) -> Vec<u32> {
        self.readers.iter().map(|(p, _)| *p).collect()
    }

    fn commit(&mut self, partition: u32, _offset: i64) -> Result<(), LogError> {
        self.reader(partition).map(|_| ())
    }

    fn seek(&mut self, partition: u32, offset: i64) -> Result<(), LogError> {
        let reader = self.reader(partition)?;
        if offset == reader.next_offset {
            Ok(())
        } else {
            Err(LogError::Unsupported(
                "the embedded log keeps no history: replay comes from the outbox",
            ))
        }
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        // A poisoned lock means a panic elsewhere already; nothing left to hand back to.
        if let Ok(mut unowned) = self.unowned.lock() {
            for (partition, reader) in self.readers.drain(..) {
                unowned[partition as usize] = Some(reader);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, key: &str) -> Record {
        Record::new(seq, key, "T", "{}")
    }

    fn records(polled: Polled) -> Vec<(u32, i64, i64)> {
        match polled {
            Polled::Records(batch) => batch
                .into_iter()
                .map(|d| (d.partition, d.offset, d.record.seq))
                .collect(),
            other => panic!("expected records, got {other:?}"),
        }
    }

    const WAIT: Duration = Duration::from_millis(200);

    /// Java `Utils.murmur2`, as signed ints. Vectors from Apache Kafka's
    /// `clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java` (`testMurmur2`)
    /// and librdkafka's `src/rdmurmur2.c` (`unittest_murmur2`, "java_murmur2_results",
    /// which also covers lengths 0–4 and every tail length).
    #[test]
    fn murmur2_matches_kafka_and_librdkafka() {
        let kafka_utils_test: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        let librdkafka_unittest: [(&[u8], u32); 11] = [
            (b"kafka", 0xd067cf64),
            (b"giberish123456789", 0x8f552b0c),
            (b"1234", 0x9fc97b14),
            (b"234", 0xe7c009ca),
            (b"34", 0x873930da),
            (b"4", 0x5a4b5ca1),
            (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x78424f1c),
            (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62b377),
            (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4e09e),
            (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8b43f),
            (b"", 0x106e08d9),
        ];
        for (key, java) in kafka_utils_test {
            assert_eq!(
                murmur2(key) as i32,
                java,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
        for (key, expected) in librdkafka_unittest {
            assert_eq!(murmur2(key), expected, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_is_the_positive_hash_modulo_the_count() {
        // "21" hashes negative (-973932308): toPositive clears the sign bit, no abs().
        let positive = (-973932308i32 & 0x7fff_ffff) as u32;
        for n in [1, 3, 4, 7, 12, 64] {
            assert_eq!(partition_for("21", n), positive % n);
        }
        // "kafka" = 0xd067cf64 → 0x5067cf64 = 1348980580, librdkafka's older vector.
        assert_eq!(partition_for("kafka", 1 << 31), 1348980580);
    }

    #[test]
    fn keys_spread_over_partitions() {
        let used: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition_for(&format!("SYM{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8, "poor spread: {used:?}");
    }

    #[test]
    fn same_key_same_partition_in_order_with_log_offsets() {
        let log = EmbeddedLog::new(4, 8);
        let p = partition_for("BTC-USDT", 4);
        let mut consumer = log.consumer([p]).unwrap();
        log.append(p, vec![record(1, "BTC-USDT"), record(5, "BTC-USDT")])
            .unwrap();
        log.append(p, vec![record(9, "BTC-USDT")]).unwrap();
        assert_eq!(consumer.poll(WAIT), Ok(Polled::Assigned(vec![p])));
        assert_eq!(
            records(consumer.poll(WAIT).unwrap()),
            vec![(p, 0, 1), (p, 1, 5)]
        );
        assert_eq!(records(consumer.poll(WAIT).unwrap()), vec![(p, 2, 9)]);
        assert_eq!(consumer.poll(Duration::from_millis(5)), Ok(Polled::Idle));
    }

    #[test]
    fn a_consumer_of_several_partitions_gets_each_in_order() {
        let log = EmbeddedLog::new(3, 8);
        let mut consumer = log.consumer([2, 0]).unwrap();
        assert_eq!(consumer.poll(WAIT), Ok(Polled::Assigned(vec![0, 2])));
        for seq in 1..=3 {
            log.append(0, vec![record(seq, "a")]).unwrap();
            log.append(2, vec![record(10 + seq, "b")]).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 6 {
            got.extend(records(consumer.poll(WAIT).unwrap()));
        }
        for partition in [0, 2] {
            let mine: Vec<_> = got.iter().filter(|r| r.0 == partition).collect();
            let offsets: Vec<i64> = mine.iter().map(|r| r.1).collect();
            assert_eq!(offsets, vec![0, 1, 2]);
            assert!(mine.windows(2).all(|w| w[0].2 < w[1].2));
        }
    }

    #[test]
    fn a_partition_has_one_owner_and_goes_back_when_it_is_dropped() {
        let log = EmbeddedLog::new(2, 8);
        let mut first = log.consumer([1]).unwrap();
        assert_eq!(log.consumer([0, 1]).err(), Some(LogError::AlreadyOwned(1)));
        assert_eq!(
            log.consumer([2]).err(),
            Some(LogError::NoSuchPartition {
                partition: 2,
                partitions: 2
            })
        );
        log.append(1, vec![record(1, "k"), record(2, "k")]).unwrap();
        first.poll(WAIT).unwrap();
        assert_eq!(records(first.poll(WAIT).unwrap()).len(), 2);
        log.append(1, vec![record(3, "k")]).unwrap();
        drop(first);
        // The next owner continues where the first stopped, offsets included.
        let mut second = log.consumer([1]).unwrap();
        assert_eq!(second.poll(WAIT), Ok(Polled::Assigned(vec![1])));
        assert_eq!(records(second.poll(WAIT).unwrap()), vec![(1, 2, 3)]);
    }

    #[test]
    fn commit_and_seek_need_ownership_and_seek_cannot_rewind() {
        let log = EmbeddedLog::new(2, 8);
        let mut consumer = log.consumer([0]).unwrap();
        log.append(0, vec![record(1, "k")]).unwrap();
        consumer.poll(WAIT).unwrap();
        consumer.poll(WAIT).unwrap();
        assert_eq!(consumer.commit(0, 0), Ok(()));
        assert_eq!(consumer.commit(1, 0), Err(LogError::NotAssigned(1)));
        assert_eq!(consumer.seek(0, 1), Ok(()));
        assert!(matches!(consumer.seek(0, 0), Err(LogError::Unsupported(_))));
    }

    #[test]
    fn closing_the_log_drains_then_reports_closed() {
        for partitions in [vec![0], vec![0, 1]] {
            let log = EmbeddedLog::new(2, 8);
            let mut consumer = log.consumer(partitions.clone()).unwrap();
            consumer.poll(WAIT).unwrap();
            log.append(0, vec![record(1, "k")]).unwrap();
            drop(log);
            assert_eq!(records(consumer.poll(WAIT).unwrap()), vec![(0, 0, 1)]);
            assert_eq!(consumer.poll(WAIT), Err(LogError::Closed), "{partitions:?}");
        }
    }

    #[test]
    fn append_to_a_missing_partition_is_refused() {
        let log = EmbeddedLog::new(2, 8);
        assert_eq!(
            log.append(5, vec![record(1, "k")]),
            Err(LogError::NoSuchPartition {
                partition: 5,
                partitions: 2
            })
        );
    }
}
