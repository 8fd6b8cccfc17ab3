//! Relays apart from the writer: processes that publish the outbox to the event log, each
//! for the partitions it holds a lease on, so that several can run and per-key order still
//! holds (one publisher per partition at a time, never a free-for-all).
//!
//! - **Leases.** `relay_leases` has one row per partition of the log's topic: its holder,
//!   an epoch bumped by every claim, when the lease ends, and how far the partition has been
//!   published. A relay renews what it holds every [`RelayLimits::renew_every`], and takes
//!   its share of the partitions (`ceil(partitions / live relays)`) from leases that have
//!   ended — a dead relay's after [`RelayLimits::lease`] — giving back any above its share
//!   so that a relay that joins gets some. Claims are conditional updates (`WHERE
//!   expires_ms <= now`), so two relays never both win one lease.
//! - **Publishing.** A relay reads the outbox after the lowest position among its
//!   partitions, appends each of its partitions' rows (waiting for the log to hold them),
//!   and then records the new positions — at its own epoch only, so a relay that lost a
//!   lease can never move the position of the one that took it.
//! - **Why it is exactly-once anyway.** A position is recorded only after the log acknowledged
//!   the rows, so a new holder starts at or before where the old one stopped and re-publishes
//!   at most what was already published: consumers drop an input at or below their cursor.
//!   A relay that lost its lease and has not noticed yet (until its next renewal) publishes
//!   rows in order from its own position, as the new holder does, so every copy of a row
//!   follows every earlier row of its key in the partition and the duplicates are dropped.
//! - **The writer's own relay.** A writer that publishes its commits itself (the fast path:
//!   no polling) holds every lease for as long as it runs ([`hold_all`]), so relay processes
//!   started beside it stay idle; a writer started without the relay role hands them back
//!   ([`release_all`]).
//!
//! Lease times are compared with each relay's own clock: skewed clocks change who publishes
//! when, never what the consumers apply.

use crate::outbox::{self, OutboxRow, RELAY_POSITION_SQL};
use crate::store::{Database, StoreError, StoreResult, Table, WriteBatch};
use crate::Clock;
use agora_bus::{partition_for, EventLog, Record};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub static RELAY_LEASES: Table = Table {
    name: "relay_leases",
    columns: &[
        "partition_no",
        "holder",
        "epoch",
        "expires_ms",
        "published_seq",
    ],
    key_len: 1,
    update: &[],
};

/// Relay processes alive (renewed with their leases), so that one holding nothing yet is
/// counted when the others work out their share.
pub static RELAY_MEMBERS: Table = Table {
    name: "relay_members",
    columns: &["holder", "expires_ms"],
    key_len: 1,
    update: &["expires_ms"],
};

/// Member rows this long past their end are deleted.
const MEMBER_FORGOTTEN_AFTER_MS: i64 = 60_000;

/// Lease end of the writer's own relay: it holds every partition until it hands them back.
const HELD_BY_WRITER_UNTIL_MS: i64 = i64::MAX / 2;

#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    /// How long a lease lasts without renewal: how soon a dead relay's partitions move.
    pub lease: Duration,
    /// How often a relay renews its leases and looks for its share.
    pub renew_every: Duration,
    /// How long a relay waits before reading the outbox again when it found nothing new.
    pub poll_idle: Duration,
    /// Outbox rows read per page.
    pub page_rows: usize,
    /// How often a busy relay records how far it has published. Each record is a
    /// transaction with a WAL flush that contends with the writer's commits (a record per
    /// page was ~60 flushes and ~350 updates a second under load); a position recorded late
    /// only means a relay taking the partition over publishes some events again, which the
    /// consumers drop as duplicates. An idle relay records at once.
    pub record_every: Duration,
}

impl Default for RelayLimits {
    fn default() -> RelayLimits {
        RelayLimits {
            lease: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
            poll_idle: Duration::from_millis(5),
            page_rows: 4_096,
            record_every: Duration::from_millis(200),
        }
    }
}

/// One row of `relay_leases`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub partition: u32,
    pub holder: String,
    pub epoch: i64,
    pub expires_ms: i64,
    pub published_seq: i64,
}

impl Lease {
    fn live(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }
}

/// What a relay does at a renewal: the leases to claim and to give back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeasePlan {
    pub claim: Vec<u32>,
    pub release: Vec<u32>,
}

/// Pure: `me`'s share of `leases` at `now_ms` is `ceil(partitions / publishers)`, counting
/// the holders of live leases, the live `members` and itself. Above it, give back the
/// highest partitions; below it, claim ended leases, lowest first.
pub fn plan(leases: &[Lease], members: &[&str], me: &str, now_ms: i64) -> LeasePlan {
    let mut holders: BTreeSet<&str> = leases
        .iter()
        .filter(|l| l.live(now_ms))
        .map(|l| l.holder.as_str())
        .collect();
    holders.extend(members);
    holders.insert(me);
    let share = leases.len().div_ceil(holders.len());
    let mine: Vec<u32> = leases
        .iter()
        .filter(|l| l.holder == me && l.live(now_ms))
        .map(|l| l.partition)
        .collect();
    if mine.len() > share {
        let mut release = mine;
        release.sort_unstable();
        return LeasePlan {
            claim: Vec::new(),
            release: release.split_off(share),
        };
    }
    let mut ended: Vec<u32> = leases
        .iter()
        .filter(|l| !l.live(now_ms))
        .map(|l| l.partition)
        .collect();
    ended.sort_unstable();
    ended.truncate(share - mine.len());
    LeasePlan {
        claim: ended,
        release: Vec::new(),
    }
}

/// Every lease row.
pub fn leases(db: &mut dyn Database) -> StoreResult<Vec<Lease>> {
    db.query(
        "SELECT partition_no, holder, epoch, expires_ms, published_seq FROM relay_leases \
         ORDER BY partition_no",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(Lease {
            partition: r.get(0)?,
            holder: r.text(1)?.to_string(),
            epoch: r.int(2)?,
            expires_ms: r.int(3)?,
            published_seq: r.int(4)?,
        })
    })
    .collect()
}

/// Creates the lease rows of partitions `0..partitions` that do not exist yet, unheld and
/// published through the relay position (everything at or below it is applied).
pub fn ensure_leases(db: &mut dyn Database, partitions: u32) -> StoreResult<()> {
    let existing: BTreeSet<u32> = leases(db)?.iter().map(|l| l.partition).collect();
    let relay_position = db
        .query_one(RELAY_POSITION_SQL, &[])?
        .map_or(Ok(0), |r| r.int(0))?;
    for partition in (0..partitions).filter(|p| !existing.contains(p)) {
        let mut b = WriteBatch::default();
        b.put(
            &RELAY_LEASES,
            [
                partition.into(),
                String::new().into(),
                0i64.into(),
                0i64.into(),
                relay_position.into(),
            ],
        );
        match db.commit(&b) {
            // Another relay created it meanwhile.
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The writer's own relay takes every partition's lease (bumping each epoch, so a relay
/// process holding one can no longer record a position) until [`release_all`].
pub fn hold_all(db: &mut dyn Database, partitions: u32, holder: &str) -> StoreResult<()> {
    ensure_leases(db, partitions)?;
    let mut b = WriteBatch::default();
    b.exec(
        "UPDATE relay_leases SET holder = ?, epoch = epoch + 1, expires_ms = ?",
        [holder.to_string().into(), HELD_BY_WRITER_UNTIL_MS.into()],
    );
    db.commit(&b)
}

/// Hands back every lease `holder` holds, published through the relay position (the
/// writer's own relay does not record positions per partition; everything at or below the
/// relay position has been applied, so published).
pub fn release_all(db: &mut dyn Database, holder: &str) -> StoreResult<()> {
    let relay_position = db
        .query_one(RELAY_POSITION_SQL, &[])?
        .map_or(Ok(0), |r| r.int(0))?;
    let mut b = WriteBatch::default();
    b.exec(
        "UPDATE relay_leases SET expires_ms = 0, published_seq = \
         CASE WHEN published_seq < ? THEN ? ELSE published_seq END WHERE holder = ?",
        [
            relay_position.into(),
            relay_position.into(),
            holder.to_string().into(),
        ],
    );
    db.commit(&b)
}

/// A lease this relay holds.
#[derive(Clone, Copy, Debug)]
struct Held {
    epoch: i64,
    published_seq: i64,
    /// How far the store's row says (see [`RelayLimits::record_every`]).
    recorded_seq: i64,
}

/// A relay process's publisher (see the module docs). Runs on a thread of its own.
pub struct Relay {
    db: Box<dyn Database>,
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    /// Unique to this run of this process, so leases are never mistaken across restarts.
    holder: String,
    publishes: Box<dyn Fn(&OutboxRow) -> bool + Send>,
    limits: RelayLimits,
    held: BTreeMap<u32, Held>,
}

impl Relay {
    pub fn new(
        db: Box<dyn Database>,
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
        name: &str,
        publishes: Box<dyn Fn(&OutboxRow) -> bool + Send>,
        limits: RelayLimits,
    ) -> Relay {
        assert!(limits.page_rows > 0 && limits.renew_every < limits.lease);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Relay {
            db,
            log,
            clock,
            holder: format!("{name} pid {} #{nanos}", std::process::id()),
            publishes,
            limits,
            held: BTreeMap::new(),
        }
    }

    /// The partitions this relay holds now.
    pub fn held(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    /// Publishes until `stop`, then gives its leases back. Store and log faults are logged
    /// and retried (nothing is recorded as published that the log did not acknowledge);
    /// a lease that could not be renewed is dropped at once.
    pub fn run(mut self, stop: &AtomicBool) {
        const BACKOFF_FIRST: Duration = Duration::from_millis(100);
        const BACKOFF_MAX: Duration = Duration::from_secs(5);
        let mut next_renewal = Instant::now();
        let mut next_record = Instant::now();
        let (mut backoff, mut renew_backoff) = (BACKOFF_FIRST, BACKOFF_FIRST);
        while !stop.load(Ordering::Acquire) {
            if Instant::now() >= next_renewal {
                match self.renew() {
                    Ok(()) => {
                        next_renewal = Instant::now() + self.limits.renew_every;
                        renew_backoff = BACKOFF_FIRST;
                    }
                    Err(e) => {
                        // E.g. the store is down, or the writer has not created the tables
                        // yet. Not known to be ours any more: stop publishing until renewed.
                        tracing::warn!(error = %e, "relay: renewing leases failed");
                        self.held.clear();
                        next_renewal = Instant::now() + renew_backoff;
                        renew_backoff = (renew_backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            let published = if self.held.is_empty() {
                Ok(0)
            } else {
                self.publish().and_then(|n| {
                    if n < self.limits.page_rows || Instant::now() >= next_record {
                        next_record = Instant::now() + self.limits.record_every;
                        self.record()?;
                    }
                    Ok(n)
                })
            };
            match published {
                Ok(n) if n >= self.limits.page_rows => {}
                Ok(_) => std::thread::sleep(self.limits.poll_idle),
                Err(e) => {
                    tracing::warn!(error = %e, "relay: publishing failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            backoff = BACKOFF_FIRST;
        }
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "relay: giving the leases back failed; they expire");
        }
    }

    /// Renews what it holds, then claims or gives back to reach its share.
    pub fn renew(&mut self) -> StoreResult<()> {
        let partitions = self.log.partitions();
        ensure_leases(&mut *self.db, partitions)?;
        let now = self.clock.now_ms();
        let until = now + self.limits.lease.as_millis() as i64;
        let mut b = WriteBatch::default();
        for (&partition, held) in &self.held {
            b.exec(
                "UPDATE relay_leases SET expires_ms = ? WHERE partition_no = ? AND holder = ? \
                 AND epoch = ?",
                [
                    until.into(),
                    partition.into(),
                    self.holder.clone().into(),
                    held.epoch.into(),
                ],
            );
        }
        if !b.is_empty() {
            self.db.commit(&b)?;
        }
        b.put(&RELAY_MEMBERS, [self.holder.clone().into(), until.into()]);
        b.exec(
            "DELETE FROM relay_members WHERE expires_ms < ?",
            [(now - MEMBER_FORGOTTEN_AFTER_MS).into()],
        );
        self.db.commit(&b)?;
        let members: Vec<String> = self
            .db
            .query(
                "SELECT holder FROM relay_members WHERE expires_ms > ?",
                &[now.into()],
            )?
            .iter()
            .map(|r| r.text(0).map(str::to_string))
            .collect::<StoreResult<_>>()?;
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        let rows: Vec<Lease> = leases(&mut *self.db)?
            .into_iter()
            .filter(|l| l.partition < partitions)
            .collect();
        let plan = plan(&rows, &members, &self.holder, now);
        let mut b = WriteBatch::default();
        for partition in &plan.release {
            let held = self.held.get(partition).map_or(0, |h| h.epoch);
            b.exec(
                "UPDATE relay_leases SET expires_ms = 0 WHERE partition_no = ? AND holder = ? \
                 AND epoch = ?",
                [(*partition).into(), self.holder.clone().into(), held.into()],
            );
        }
        for partition in &plan.claim {
            b.exec(
                "UPDATE relay_leases SET holder = ?, epoch = epoch + 1, expires_ms = ? \
                 WHERE partition_no = ? AND expires_ms <= ?",
                [
                    self.holder.clone().into(),
                    until.into(),
                    (*partition).into(),
                    now.into(),
                ],
            );
        }
        let rows = if b.is_empty() {
            rows
        } else {
            self.db.commit(&b)?;
            leases(&mut *self.db)?
        };
        // What is ours now: kept leases keep the position this relay has got to (the row may
        // lag it by `record_every`), new ones start at the row's.
        let before = std::mem::take(&mut self.held);
        for l in rows
            .iter()
            .filter(|l| l.holder == self.holder && l.live(now) && l.partition < partitions)
        {
            let (published_seq, recorded_seq) = match before.get(&l.partition) {
                Some(h) if h.epoch == l.epoch => (
                    h.published_seq.max(l.published_seq),
                    h.recorded_seq.max(l.published_seq),
                ),
                _ => (l.published_seq, l.published_seq),
            };
            self.held.insert(
                l.partition,
                Held {
                    epoch: l.epoch,
                    published_seq,
                    recorded_seq,
                },
            );
        }
        let (gained, lost): (Vec<u32>, Vec<u32>) = (
            self.held
                .keys()
                .filter(|p| !before.contains_key(p))
                .copied()
                .collect(),
            before
                .keys()
                .filter(|p| !self.held.contains_key(p))
                .copied()
                .collect(),
        );
        if !gained.is_empty() || !lost.is_empty() {
            tracing::info!(?gained, ?lost, held = ?self.held(), "relay: leases changed");
        }
        Ok(())
    }

    /// Publishes one page of the outbox for the partitions it holds and records how far;
    /// returns how many rows the page had.
    pub fn publish_page(&mut self) -> StoreResult<usize> {
        let count = self.publish()?;
        self.record()?;
        Ok(count)
    }

    /// Publishes one page of the outbox for the partitions it holds (remembering how far,
    /// for [`OutboxRelay::record`]); returns how many rows the page had.
    fn publish(&mut self) -> StoreResult<usize> {
        let from = self
            .held
            .values()
            .map(|h| h.published_seq)
            .min()
            .unwrap_or(0);
        let rows = outbox::rows_after(&mut *self.db, from, self.limits.page_rows)?;
        let Some(through) = rows.last().map(|r| r.seq) else {
            return Ok(0);
        };
        let count = rows.len();
        let partitions = self.log.partitions();
        let mut by_partition: FxHashMap<u32, Vec<Record>> = FxHashMap::default();
        for row in rows {
            let partition = partition_for(&row.aggregate_id, partitions);
            let Some(held) = self.held.get(&partition) else {
                continue;
            };
            if row.seq <= held.published_seq || !(self.publishes)(&row) {
                continue;
            }
            by_partition.entry(partition).or_default().push(Record {
                seq: row.seq,
                key: row.aggregate_id.into(),
                event_type: row.event_type.into(),
                payload: row.payload.into(),
            });
        }
        let mut pages: Vec<_> = by_partition.into_iter().collect();
        pages.sort_by_key(|(p, _)| *p);
        for (partition, records) in pages {
            self.log
                .append(partition, records)
                .map_err(|e| StoreError::Database(format!("publishing: {e}")))?;
        }
        // Every held partition is published through `through` now (rows of it up to there
        // were in this page or before it).
        for held in self.held.values_mut() {
            held.published_seq = held.published_seq.max(through);
        }
        Ok(count)
    }

    /// Records in the store how far each held partition is published (where its next
    /// holder starts), for those that moved since the last record.
    fn record(&mut self) -> StoreResult<()> {
        let mut b = WriteBatch::default();
        for (&partition, held) in self.held.iter_mut() {
            let through = held.published_seq;
            if held.recorded_seq >= through {
                continue;
            }
            held.recorded_seq = through;
            b.exec(
                "UPDATE relay_leases SET published_seq = ? WHERE partition_no = ? \
                 AND holder = ? AND epoch = ? AND published_seq < ?",
                [
                    through.into(),
                    partition.into(),
                    self.holder.clone().into(),
                    held.epoch.into(),
                    through.into(),
                ],
            );
        }
        if !b.is_empty() {
            self.db.commit(&b)?;
        }
        Ok(())
    }

    /// Gives back every lease it holds, so another relay takes them at once.
    pub fn release(&mut self) -> StoreResult<()> {
        // Its successors start where it got to, not where it last recorded.
        self.record()?;
        let mut b = WriteBatch::default();
        b.exec(
            "DELETE FROM relay_members WHERE holder = ?",
            [self.holder.clone().into()],
        );
        for (&partition, held) in &self.held {
            b.exec(
                "UPDATE relay_leases SET expires_ms = 0 WHERE partition_no = ? AND holder = ? \
                 AND epoch = ?",
                [
                    partition.into(),
                    self.holder.clone().into(),
                    held.epoch.into(),
                ],
            );
        }
        self.held.clear();
        self.db.commit(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(partition: u32, holder: &str, expires_ms: i64) -> Lease {
        Lease {
            partition,
            holder: holder.into(),
            epoch: 1,
            expires_ms,
            published_seq: 0,
        }
    }

    #[test]
    fn a_lone_relay_claims_every_ended_lease() {
        let leases: Vec<_> = (0..4).map(|p| lease(p, "", 0)).collect();
        assert_eq!(
            plan(&leases, &[], "a", 100),
            LeasePlan {
                claim: vec![0, 1, 2, 3],
                release: vec![]
            }
        );
    }

    #[test]
    fn a_relay_that_joins_gets_its_share_as_the_other_gives_back() {
        let leases: Vec<_> = (0..4).map(|p| lease(p, "a", 1_000)).collect();
        // b sees a holding all four, live: nothing to claim yet.
        assert_eq!(plan(&leases, &["a", "b"], "b", 100), LeasePlan::default());
        // Alone, a keeps all four.
        assert_eq!(plan(&leases, &["a"], "a", 100), LeasePlan::default());
        // With b a member, a gives back down to its share of two.
        assert_eq!(
            plan(&leases, &["a", "b"], "a", 100),
            LeasePlan {
                claim: vec![],
                release: vec![2, 3]
            }
        );
        // Three relays over four partitions: shares of two, so a gives back two.
        assert_eq!(
            plan(&leases, &["a", "b", "c"], "a", 100).release,
            vec![2, 3]
        );
    }

    #[test]
    fn an_idle_relay_claims_a_released_lease_up_to_its_share() {
        let mut leases: Vec<_> = (0..4).map(|p| lease(p, "a", 1_000)).collect();
        leases[3] = lease(3, "a", 0); // given back
        assert_eq!(
            plan(&leases, &["a", "b"], "b", 100),
            LeasePlan {
                claim: vec![3],
                release: vec![]
            }
        );
    }

    #[test]
    fn a_dead_relays_leases_go_to_the_survivors_once_they_end() {
        let leases = vec![
            lease(0, "a", 1_000),
            lease(1, "a", 1_000),
            lease(2, "dead", 500),
            lease(3, "dead", 500),
        ];
        assert_eq!(plan(&leases, &["a"], "a", 400), LeasePlan::default());
        assert_eq!(
            plan(&leases, &["a"], "a", 600),
            LeasePlan {
                claim: vec![2, 3],
                release: vec![]
            }
        );
    }

    #[test]
    fn the_writers_own_relay_leaves_nothing_to_claim() {
        let leases: Vec<_> = (0..4)
            .map(|p| lease(p, "exchange-writer", HELD_BY_WRITER_UNTIL_MS))
            .collect();
        assert_eq!(plan(&leases, &["a"], "a", 100), LeasePlan::default());
    }
}
