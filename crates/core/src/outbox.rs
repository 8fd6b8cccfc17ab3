//! The transactional outbox and its relay: an event is a row written in the same commit as
//! the state change it announces, so it exists exactly when the change does; after the
//! commit the relay publishes it to the event log, partitioned by its key. Consumers apply
//! events exactly once by keeping their position per key in the transaction of the effect,
//! so the relay may publish a row more than once (after a restart it re-publishes everything
//! past the relay position) but never loses one.
//!
//! The table keeps Debezium's outbox-router columns (`id`, `aggregatetype`, `aggregateid`,
//! `type`, `payload`) so change-data capture can stand in for the built-in relay.

use crate::store::{Database, Row, StoreResult, Table, Value, WriteBatch};
use agora_bus::{partition_for, EventLog, LogError, Record};
use rustc_hash::FxHashMap;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub id: String,
    pub aggregate_type: String,
    /// The partition key: all events of one aggregate keep their order.
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
    pub created_ms: i64,
}

pub static OUTBOX: Table = Table {
    name: "outbox",
    columns: &[
        "seq",
        "id",
        "aggregatetype",
        "aggregateid",
        "type",
        "payload",
        "created_ms",
    ],
    key_len: 1,
    update: &[],
};

pub static RELAY_POSITION: Table = Table {
    name: "relay_position",
    columns: &["id", "seq"],
    key_len: 1,
    update: &["seq"],
};

/// Each consumer's position per partition (or key), written in the transaction of the
/// effects it applied: where it resumes reading after a restart.
pub static CONSUMER_OFFSETS: Table = Table {
    name: "consumer_offsets",
    columns: &["consumer", "partition_key", "position"],
    key_len: 2,
    update: &["position"],
};

/// Stages `consumer`'s `position` in `partition_key`.
pub fn put_consumer_offset(b: &mut WriteBatch, consumer: &str, partition_key: &str, position: i64) {
    b.put(
        &CONSUMER_OFFSETS,
        [
            consumer.to_string().into(),
            partition_key.to_string().into(),
            position.into(),
        ],
    );
}

/// Every position `consumer` has committed, by partition key: on the writer's connection
/// or in a snapshot (see [`crate::store::Queries`]).
pub fn consumer_offsets(
    q: &mut (impl crate::store::Queries + ?Sized),
    consumer: &str,
) -> StoreResult<Vec<(String, i64)>> {
    q.query_rows(
        "SELECT partition_key, position FROM consumer_offsets WHERE consumer = ?",
        &[consumer.to_string().into()],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?.to_string(), r.int(1)?)))
    .collect()
}

/// The relay position: every event at or below it has been applied by its consumer.
pub const RELAY_POSITION_SQL: &str = "SELECT COALESCE(MAX(seq), 0) FROM relay_position";

const OUTBOX_PRUNE: &str = "DELETE FROM outbox WHERE seq <= ?";

/// Prune the outbox every this many commits (nothing at or below the relay position is ever
/// read again).
const PRUNE_EVERY_COMMITS: u64 = 1024;

impl OutboxRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &OUTBOX,
            [
                self.seq.into(),
                self.id.clone().into(),
                self.aggregate_type.clone().into(),
                self.aggregate_id.clone().into(),
                self.event_type.clone().into(),
                self.payload.clone().into(),
                self.created_ms.into(),
            ],
        );
    }

    pub fn decode(r: &Row) -> StoreResult<OutboxRow> {
        Ok(OutboxRow {
            seq: r.int(0)?,
            id: r.text(1)?.to_string(),
            aggregate_type: r.text(2)?.to_string(),
            aggregate_id: r.text(3)?.to_string(),
            event_type: r.text(4)?.to_string(),
            payload: r.text(5)?.to_string(),
            created_ms: r.int(6)?,
        })
    }
}

/// Outbox rows with `seq > after`, oldest first, at most `limit` (the relay's catch-up).
pub fn rows_after(db: &mut dyn Database, after: i64, limit: usize) -> StoreResult<Vec<OutboxRow>> {
    db.query(
        "SELECT seq, id, aggregatetype, aggregateid, \"type\", payload, created_ms FROM outbox \
         WHERE seq > ? ORDER BY seq LIMIT ?",
        &[after.into(), (limit as i64).into()],
    )?
    .iter()
    .map(OutboxRow::decode)
    .collect()
}

/// The writer's outbox: sequence numbers, rows waiting for the commit, and how far the relay
/// may restart from.
pub struct Outbox {
    last_seq: i64,
    pending: Vec<OutboxRow>,
    /// Persisted: every event at or below it has been applied by its consumer.
    relay_position: i64,
    /// Highest seq published, per key and overall.
    published_max: FxHashMap<Arc<str>, i64>,
    published_max_all: i64,
    commits: u64,
}

impl Outbox {
    pub fn load(db: &mut dyn Database) -> StoreResult<Outbox> {
        let one = |db: &mut dyn Database, sql: &str| -> StoreResult<i64> {
            db.query_one(sql, &[])?.map_or(Ok(0), |r| r.int(0))
        };
        let relay_position = one(db, RELAY_POSITION_SQL)?;
        // Pruning deletes rows up to the relay position, so an idle outbox may be empty: the
        // sequence continues after the larger of the two, never restarts below consumers'
        // positions (their inputs at or below them are dropped as already applied).
        let last_seq = one(db, "SELECT COALESCE(MAX(seq), 0) FROM outbox")?.max(relay_position);
        Ok(Outbox {
            last_seq,
            pending: Vec::new(),
            relay_position,
            published_max: FxHashMap::default(),
            published_max_all: 0,
            commits: 0,
        })
    }

    /// Where the relay restarts: every event at or below it is applied.
    pub fn relay_position(&self) -> i64 {
        self.relay_position
    }

    /// Queues an event for the next commit; returns its seq.
    pub fn append(
        &mut self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        payload: String,
        now_ms: i64,
    ) -> i64 {
        self.last_seq += 1;
        let seq = self.last_seq;
        self.pending.push(OutboxRow {
            seq,
            id: format!("evt-{seq}"),
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            event_type: event_type.to_string(),
            payload,
            created_ms: now_ms,
        });
        seq
    }

    /// How many keys have events published and not yet consumed (`consumed(key)`, as in
    /// [`Outbox::flush`]): none means every consumer has applied everything published.
    pub fn keys_in_flight(&self, consumed: impl Fn(&str) -> i64) -> usize {
        self.published_max
            .iter()
            .filter(|(key, &published)| published > consumed(key))
            .count()
    }

    /// Events queued for the next commit.
    pub fn pending(&self) -> &[OutboxRow] {
        &self.pending
    }

    /// Writes the queued events, the relay position and (now and then) the pruning into
    /// `batch`. `consumed(key)` is how far the consumer of `key`'s events has applied them
    /// (committed, or in this batch): the relay can restart after the lowest position among
    /// keys with events in flight, or after everything published when none is.
    pub fn flush(&mut self, batch: &mut WriteBatch, consumed: impl Fn(&str) -> i64) {
        self.pending.iter().for_each(|r| r.put(batch));
        // Keys whose events are all applied hold nothing back: forget them, so the map stays
        // as small as what is in flight.
        self.published_max
            .retain(|key, published| *published > consumed(key));
        let settled_through = self
            .published_max
            .keys()
            .map(|key| consumed(key))
            .min()
            .unwrap_or(self.published_max_all);
        if settled_through > self.relay_position {
            self.relay_position = settled_through;
            batch.put(&RELAY_POSITION, [Value::Int(1), settled_through.into()]);
        }
        self.commits += 1;
        if self.commits.is_multiple_of(PRUNE_EVERY_COMMITS) {
            batch.exec(OUTBOX_PRUNE, [self.relay_position.into()]);
        }
    }

    /// After the commit: the events it made durable, to publish.
    pub fn take_committed(&mut self) -> Vec<OutboxRow> {
        std::mem::take(&mut self.pending)
    }

    /// Counts committed rows (oldest first) as in flight until their consumer has applied
    /// them, without publishing them: a relay process publishes them (see
    /// [`crate::relay`]). Rows for which `publish` says no go to no consumer.
    pub fn track(&mut self, rows: &[OutboxRow], publish: impl Fn(&OutboxRow) -> bool) {
        for row in rows.iter().filter(|r| publish(r)) {
            self.track_row(row);
        }
    }

    fn track_row(&mut self, row: &OutboxRow) {
        match self.published_max.get_mut(row.aggregate_id.as_str()) {
            Some(max) => *max = row.seq,
            None => {
                self.published_max
                    .insert(row.aggregate_id.as_str().into(), row.seq);
            }
        }
        self.published_max_all = self.published_max_all.max(row.seq);
    }

    /// Publishes rows (oldest first) to their key's partition. Rows for which `publish`
    /// says no stay in the outbox only (events no consumer reads from the log).
    pub fn publish(
        &mut self,
        log: &dyn EventLog,
        rows: Vec<OutboxRow>,
        publish: impl Fn(&OutboxRow) -> bool,
    ) -> Result<(), LogError> {
        let partitions = log.partitions();
        let mut by_partition: FxHashMap<u32, Vec<Record>> = FxHashMap::default();
        for row in rows {
            if !publish(&row) {
                continue;
            }
            self.track_row(&row);
            let key: Arc<str> = row.aggregate_id.into();
            by_partition
                .entry(partition_for(&key, partitions))
                .or_default()
                .push(Record {
                    seq: row.seq,
                    key,
                    event_type: row.event_type.into(),
                    payload: row.payload.into(),
                });
        }
        let mut partitions: Vec<_> = by_partition.into_iter().collect();
        partitions.sort_by_key(|(p, _)| *p);
        // Queued, not waited for: the commit already made the rows durable, so the writer
        // goes on with its next batch while these are on the wire (a failed delivery ends
        // the process and the restart re-publishes from the relay position).
        for (partition, records) in partitions {
            log.append_queued(partition, records)?;
        }
        Ok(())
    }
}
