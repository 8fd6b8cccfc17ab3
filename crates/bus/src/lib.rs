//! The event-log port: records are appended to partitions chosen by key, so all events of one
//! key (a symbol, a product, a user) keep their order (design.md invariant 5). Every record
//! carries the offset its producer gave it; consumers remember the last offset they applied,
//! in the same transaction as the effect, and drop anything at or below it. Delivery is
//! therefore at-least-once and the effects exactly-once (invariant 4).
//!
//! The embedded adapter is a set of bounded in-memory channels in front of the durable
//! outbox: the outbox table *is* the log's storage, and after a restart the relay re-reads
//! it from the lowest consumer cursor. A Kafka adapter implements the same trait.

use crossbeam_channel::{bounded, Receiver, Sender};
use std::sync::Arc;
use thiserror::Error;

/// One event as it travels the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Producer sequence (the outbox `seq`); strictly increasing within a partition.
    pub offset: i64,
    /// Partitioning key.
    pub key: Arc<str>,
    pub event_type: Arc<str>,
    /// JSON.
    pub payload: Arc<str>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LogError {
    #[error("the log is closed")]
    Closed,
}

pub trait EventLog: Send + Sync {
    fn partitions(&self) -> u32;
    /// Appends records (already in offset order) to one partition. Blocks while the
    /// partition is full: backpressure reaches the producer instead of memory growing.
    fn append(&self, partition: u32, records: Vec<Record>) -> Result<(), LogError>;
}

/// Stable key → partition mapping (FNV-1a), identical in every process and release.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0);
    let mut hash: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions
}

/// In-process log: one bounded channel per partition, one consumer per partition.
pub struct EmbeddedLog {
    senders: Vec<Sender<Vec<Record>>>,
}

impl EmbeddedLog {
    /// `capacity_batches` bounds each partition's queue (in appended batches).
    pub fn new(
        partitions: u32,
        capacity_batches: usize,
    ) -> (EmbeddedLog, Vec<Receiver<Vec<Record>>>) {
        assert!(partitions > 0 && capacity_batches > 0);
        let (senders, receivers) = (0..partitions).map(|_| bounded(capacity_batches)).unzip();
        (EmbeddedLog { senders }, receivers)
    }
}

impl EventLog for EmbeddedLog {
    fn partitions(&self) -> u32 {
        self.senders.len() as u32
    }

    fn append(&self, partition: u32, records: Vec<Record>) -> Result<(), LogError> {
        debug_assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
        if records.is_empty() {
            return Ok(());
        }
        self.senders[partition as usize]
            .send(records)
            .map_err(|_| LogError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, key: &str) -> Record {
        Record {
            offset,
            key: key.into(),
            event_type: "T".into(),
            payload: "{}".into(),
        }
    }

    #[test]
    fn same_key_same_partition_in_order() {
        let (log, rx) = EmbeddedLog::new(4, 8);
        let p = partition_for("BTC-USDT", 4);
        assert_eq!(p, partition_for("BTC-USDT", 4));
        log.append(p, vec![record(1, "BTC-USDT"), record(5, "BTC-USDT")])
            .unwrap();
        log.append(p, vec![record(9, "BTC-USDT")]).unwrap();
        let got: Vec<i64> = rx[p as usize]
            .try_iter()
            .flatten()
            .map(|r| r.offset)
            .collect();
        assert_eq!(got, vec![1, 5, 9]);
    }

    #[test]
    fn keys_spread_over_partitions() {
        let used: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition_for(&format!("SYM{i}"), 8))
            .collect();
        assert!(used.len() >= 6, "poor spread: {used:?}");
    }
}
