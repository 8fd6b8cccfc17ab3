//! The SQLite adapter through the store port: schema per component, upgrades of stores made
//! before the core had its own schema, batches, fences.

use agora_core::accounts::BALANCES;
use agora_core::store::{Database, Fence, StoreError, WriteBatch};
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
    let expected: Vec<(String, i64)> = [("core", 1), ("exchange", 1), ("exchange", 2)]
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
