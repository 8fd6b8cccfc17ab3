//! The SQLite adapter through the store port: schema per component, upgrades of stores made
//! before the core had its own schema, batches, fences, read snapshots.

use agora_core::accounts::BALANCES;
use agora_core::accounts::JOURNAL;
use agora_core::store::{Database, Fence, ReadDatabase, StoreError, Value, WriteBatch};
use agora_store::schema::migrate;
use agora_store::sqlite::{Durability, SqliteStore};

/// (available, held) as stored, if the row exists.
fn stored_balance(store: &mut SqliteStore, user: i64, asset: i64) -> Option<(i64, i64)> {
    store
        .query_one(
            "SELECT available, held FROM balances WHERE user_id = ? AND asset_id = ?",
            &[user.into(), asset.into()],
        )
        .unwrap()
        .map(|r| (r.int(0).unwrap(), r.int(1).unwrap()))
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("agora.db"), Durability::Normal).unwrap()
}

#[test]
fn a_store_from_before_the_core_schema_upgrades_in_place_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("agora.db")).unwrap();
        conn.execute_batch(include_str!("fixtures/legacy_schema.sql"))
            .unwrap();
    }
    let mut store = open(&dir);
    migrate(&mut store).unwrap();
    let applied = store
        .query(
            "SELECT component, version FROM agora_migrations ORDER BY component, version",
            &[],
        )
        .unwrap();
    let applied: Vec<(String, i64)> = applied
        .iter()
        .map(|r| (r.text(0).unwrap().to_string(), r.int(1).unwrap()))
        .collect();
    let expected: Vec<(String, i64)> = [("core", 1), ("core", 2), ("exchange", 1), ("exchange", 2)]
        .into_iter()
        .chain([("exchange", 3), ("exchange", 4)])
        .map(|(c, v)| (c.to_string(), v))
        .collect();
    assert_eq!(applied, expected);
    assert_eq!(stored_balance(&mut store, 1, 1), Some((100, 0)));
    // The core's new tables exist.
    store.query("SELECT role FROM agora_fences", &[]).unwrap();
    // Opening again applies nothing twice.
    drop(store);
    let mut again = open(&dir);
    migrate(&mut again).unwrap();
}

#[test]
fn a_batch_is_all_or_nothing_and_a_stale_epoch_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    migrate(&mut store).unwrap();
    let mut b = WriteBatch::default();
    b.put(
        &BALANCES,
        [1i64.into(), 1i64.into(), 5i64.into(), 0i64.into()],
    );
    // available < 0 breaks the CHECK: the whole batch, the first row included, is refused.
    b.put(
        &BALANCES,
        [2i64.into(), 1i64.into(), (-1i64).into(), 0i64.into()],
    );
    assert!(matches!(store.commit(&b), Err(StoreError::Conflict(_))));
    assert_eq!(stored_balance(&mut store, 1, 1), None);

    let mut fence = WriteBatch::default();
    fence.exec(
        "INSERT INTO agora_fences (role, epoch, holder, updated_ms) VALUES (?, ?, ?, ?)",
        ["writer".into(), 2i64.into(), "b".into(), 0i64.into()],
    );
    store.commit(&fence).unwrap();
    let mut stale = WriteBatch::default();
    stale.put(
        &BALANCES,
        [1i64.into(), 1i64.into(), 5i64.into(), 0i64.into()],
    );
    stale.fence = Some(Fence {
        role: "writer".into(),
        epoch: 1,
    });
    assert!(matches!(store.commit(&stale), Err(StoreError::Fenced(_))));
    assert_eq!(stored_balance(&mut store, 1, 1), None);
    stale.fence = Some(Fence {
        role: "writer".into(),
        epoch: 2,
    });
    store.commit(&stale).unwrap();
    assert_eq!(stored_balance(&mut store, 1, 1), Some((5, 0)));
}

fn deposit(id: i64, available: i64) -> WriteBatch {
    let mut b = WriteBatch::default();
    b.put(
        &BALANCES,
        [1i64.into(), 1i64.into(), available.into(), 0i64.into()],
    );
    b.put(
        &JOURNAL,
        [
            id.into(),
            "DEPOSIT".into(),
            Value::Null,
            "[]".into(),
            0i64.into(),
        ],
    );
    b
}

/// (journal rows, user 1's available balance) as one snapshot's queries see them.
fn seen(reads: &mut dyn agora_core::SnapshotReads) -> Result<(i64, i64), StoreError> {
    let count = reads
        .query_one("SELECT COUNT(*) FROM journal", &[])?
        .unwrap()
        .int(0)?;
    let available = reads
        .query_one(
            "SELECT available FROM balances WHERE user_id = ?",
            &[1i64.into()],
        )?
        .unwrap()
        .int(0)?;
    Ok((count, available))
}

#[test]
fn a_snapshot_does_not_see_a_commit_made_between_its_queries() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    migrate(&mut store).unwrap();
    store.commit(&deposit(1, 10)).unwrap();
    // One connection: the snapshots below reuse it, so each must have ended.
    let reader = store.reader(1).unwrap();
    let mut views = Vec::new();
    reader
        .snapshot(&mut |reads| {
            views.push(seen(reads)?);
            store.commit(&deposit(2, 20))?;
            views.push(seen(reads)?);
            Ok(())
        })
        .unwrap();
    assert_eq!(views, [(1, 10), (1, 10)]);
    // Outside the snapshot the commit is there.
    let count = reader
        .query_one("SELECT COUNT(*) FROM journal", &[])
        .unwrap()
        .unwrap();
    assert_eq!(count.int(0).unwrap(), 2);

    // A failing snapshot ends too, with its error, and the next one sees the latest commit.
    store.commit(&deposit(3, 30)).unwrap();
    let err = reader
        .snapshot(&mut |reads| {
            seen(reads)?;
            Err(StoreError::Corrupt("stop".into()))
        })
        .unwrap_err();
    assert_eq!(err, StoreError::Corrupt("stop".into()));
    store.commit(&deposit(4, 40)).unwrap();
    let mut last = None;
    reader
        .snapshot(&mut |reads| {
            last = Some(seen(reads)?);
            Ok(())
        })
        .unwrap();
    assert_eq!(last, Some((4, 40)));
}

#[test]
fn a_writer_that_lost_its_role_cannot_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = open(&dir);
    migrate(&mut first).unwrap();
    let old = agora_core::store::acquire_role(&mut first, "writer", "a", 0).unwrap();
    let mut second = open(&dir);
    let new = agora_core::store::acquire_role(&mut second, "writer", "b", 1).unwrap();
    assert_eq!(new.epoch, old.epoch + 1);
    let mut b = WriteBatch::default();
    b.put(
        &BALANCES,
        [1i64.into(), 1i64.into(), 5i64.into(), 0i64.into()],
    );
    b.fence = Some(old);
    assert!(matches!(first.commit(&b), Err(StoreError::Fenced(_))));
    b.fence = Some(new);
    second.commit(&b).unwrap();
    assert_eq!(stored_balance(&mut second, 1, 1), Some((5, 0)));
}

#[test]
fn the_outbox_sequence_continues_after_the_relay_position_when_pruning_emptied_it() {
    // Pruning deletes every row up to the relay position; an idle store ends with an empty
    // outbox. New events must still be numbered above what consumers have applied, or they
    // are dropped as already applied (orders acknowledged and never matched).
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    migrate(&mut store).unwrap();
    let mut b = WriteBatch::default();
    b.put(
        &agora_core::outbox::RELAY_POSITION,
        [1i64.into(), 1_100i64.into()],
    );
    store.commit(&b).unwrap();
    let mut outbox = agora_core::outbox::Outbox::load(&mut store).unwrap();
    assert_eq!(outbox.append("book", "S", "T", "{}".into(), 0), 1_101);
}

/// A store whose first `SELECT` of the fences runs another writer's whole `acquire_role`
/// just before it: the interleaving in which two writers bump, then both read.
struct RaceAtRead {
    inner: SqliteStore,
    rival: Option<SqliteStore>,
}

impl Database for RaceAtRead {
    fn dialect(&self) -> agora_core::Dialect {
        self.inner.dialect()
    }
    fn migrate(&mut self, c: &str, m: &[agora_core::Migration]) -> agora_core::StoreResult<()> {
        self.inner.migrate(c, m)
    }
    fn commit(&mut self, batch: &WriteBatch) -> agora_core::StoreResult<()> {
        self.inner.commit(batch)
    }
    fn query_each(
        &mut self,
        sql: &str,
        params: &[agora_core::Value],
        each: &mut dyn FnMut(agora_core::Row) -> agora_core::StoreResult<()>,
    ) -> agora_core::StoreResult<()> {
        if sql.contains("FROM agora_fences") {
            if let Some(mut rival) = self.rival.take() {
                agora_core::store::acquire_role(&mut rival, "writer", "b", 1).unwrap();
            }
        }
        self.inner.query_each(sql, params, each)
    }
}

#[test]
fn two_writers_taking_a_role_at_once_never_share_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir);
    migrate(&mut a).unwrap();
    let mut racing = RaceAtRead {
        inner: a,
        rival: Some(open(&dir)),
    };
    // The rival bumped after this writer did: this one must not get the role.
    let lost = agora_core::store::acquire_role(&mut racing, "writer", "a", 0);
    assert!(matches!(lost, Err(StoreError::Fenced(_))), "{lost:?}");
    // And the rival's epoch is the current one: a new writer gets the next.
    let mut c = open(&dir);
    let next = agora_core::store::acquire_role(&mut c, "writer", "c", 2).unwrap();
    assert_eq!(next.epoch, 3);
}
