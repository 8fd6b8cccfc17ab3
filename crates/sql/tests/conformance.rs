//! The store port's contract, written once and run against PostgreSQL and MySQL/MariaDB
//! (see `common` for the servers and how a missing one is handled).

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;

use agora_core::store::{Database, Dialect, Fence, Row, StoreError, Value};
use common::*;

/// Instantiates each conformance check as a test per server.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            $(
                #[test]
                fn $check() {
                    if let Some(db) = super::TestDb::new(super::Server::Postgres) {
                        super::$check(&db);
                    }
                }
            )*
        }
        mod mysql {
            $(
                #[test]
                fn $check() {
                    if let Some(db) = super::TestDb::new(super::Server::Mysql) {
                        super::$check(&db);
                    }
                }
            )*
        }
    };
}

conformance!(
    migrations_apply_once_and_are_recorded,
    concurrent_migrations_apply_each_version_once,
    a_failing_migration_is_not_recorded,
    a_batch_commits_all_or_nothing,
    upserts_change_only_the_update_columns,
    an_upsert_matching_another_unique_key_is_a_conflict,
    an_insert_only_duplicate_is_a_conflict_and_writes_nothing,
    exec_binds_its_parameters,
    coalesced_puts_keep_the_last_row_per_key_and_the_order_of_execs,
    large_batches_are_split_under_the_parameter_limit,
    a_stale_epoch_is_fenced_and_writes_nothing,
    a_writer_is_fenced_as_soon_as_a_new_holder_bumps_the_epoch,
    values_round_trip,
    aggregates_decode_to_integers,
    query_each_streams_many_rows_and_stops_when_asked,
    the_reader_sees_commits_from_many_threads,
    concurrent_writers_on_overlapping_rows_do_not_deadlock,
    a_broken_connection_is_replaced,
    read_connections_killed_while_idle_are_replaced_without_an_error,
    a_snapshot_does_not_see_commits_made_during_it,
    a_snapshot_always_ends_its_transaction_and_gives_its_connection_back,
    relays_share_the_partitions_and_publish_each_row_once_in_order,
    a_running_relay_records_its_position_once_idle_and_gives_its_leases_back,
    a_relay_that_lost_its_lease_cannot_move_the_position,
    the_writers_own_relay_holds_every_lease_until_it_hands_them_back,
);

fn count(db: &mut dyn Database, table: &str) -> i64 {
    int(db, &format!("SELECT COUNT(*) FROM {table}"), &[])
}

fn migrations_apply_once_and_are_recorded(t: &TestDb) {
    let mut db = t.migrated();
    let expected_dialect = match t.server {
        Server::Postgres => Dialect::Postgres,
        Server::Mysql => Dialect::Mysql,
    };
    assert_eq!(db.dialect(), expected_dialect);
    let recorded = db
        .query(
            "SELECT component, version FROM agora_migrations ORDER BY component, version",
            &[],
        )
        .unwrap();
    assert_eq!(
        recorded,
        [
            Row(vec![Value::Text("core".into()), Value::Int(1)]),
            Row(vec![Value::Text("core".into()), Value::Int(2)]),
            Row(vec![Value::Text("exchange".into()), Value::Int(1)]),
            Row(vec![Value::Text("exchange".into()), Value::Int(2)]),
            Row(vec![Value::Text("exchange".into()), Value::Int(3)]),
            Row(vec![Value::Text("exchange".into()), Value::Int(4)]),
        ]
    );
    // Applying again is a no-op: the scripts have no IF NOT EXISTS, so only the record
    // keeps them from failing.
    db.migrate("core", CORE).unwrap();
    db.migrate("exchange", EXCHANGE).unwrap();
    assert_eq!(count(&mut *db, "agora_migrations"), 6);
    // Every table is there.
    for table in [
        "users",
        "assets",
        "balances",
        "venue_balances",
        "journal",
        "outbox",
        "relay_position",
        "relay_leases",
        "agora_fences",
        "consumer_offsets",
        "processed_events",
        "symbols",
        "orders",
        "trades",
        "engine_cursors",
        "candles",
    ] {
        assert_eq!(count(&mut *db, table), 0, "{table}");
    }
}

fn concurrent_migrations_apply_each_version_once(t: &TestDb) {
    let migrators: Vec<_> = (0..3)
        .map(|_| {
            let mut db = t.writer();
            thread::spawn(move || {
                db.migrate("core", CORE)?;
                db.migrate("exchange", EXCHANGE)
            })
        })
        .collect();
    for m in migrators {
        m.join().unwrap().expect("every process starts");
    }
    let mut db = t.writer();
    let versions = (CORE.len() + EXCHANGE.len()) as i64;
    assert_eq!(count(&mut *db, "agora_migrations"), versions);
}

fn a_failing_migration_is_not_recorded(t: &TestDb) {
    let mut db = t.migrated();
    let broken = [agora_core::store::Migration {
        version: 2,
        sqlite: "",
        postgres: "CREATE TABLE extra (id BIGINT PRIMARY KEY); SELECT * FROM no_such_table;",
        mysql: "CREATE TABLE extra (id BIGINT PRIMARY KEY); SELECT * FROM no_such_table;",
    }];
    let err = db.migrate("venue", &broken).unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration(m) if m.contains("venue 2")),
        "{err:?}"
    );
    let recorded = int(
        &mut *db,
        "SELECT COUNT(*) FROM agora_migrations WHERE component = ?",
        &["venue".into()],
    );
    assert_eq!(recorded, 0);
    if t.server == Server::Postgres {
        // DDL is transactional here: the table went with the failed migration.
        assert!(db.query("SELECT * FROM extra", &[]).is_err());
    }
    let versions = [agora_core::store::Migration {
        version: 1,
        sqlite: "",
        postgres: "CREATE TABLE twice (id BIGINT PRIMARY KEY)",
        mysql: "CREATE TABLE twice (id BIGINT PRIMARY KEY)",
    }; 2];
    assert!(matches!(
        db.migrate("venue", &versions),
        Err(StoreError::Migration(_))
    ));
}

fn a_batch_commits_all_or_nothing(t: &TestDb) {
    let mut db = t.migrated();
    // A CHECK fails in the middle (a balance would go negative).
    let failing = batch(|b| {
        b.put(&BALANCES, balance(1, 1, 10, 0));
        b.put(&JOURNAL, journal(1, "DEPOSIT"));
        b.exec(
            "UPDATE balances SET available = available - ? WHERE user_id = ?",
            [11i64.into(), 1i64.into()],
        );
        b.put(&JOURNAL, journal(2, "WITHDRAW"));
    });
    let err = db.commit(&failing).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(count(&mut *db, "balances"), 0);
    assert_eq!(count(&mut *db, "journal"), 0);

    // A statement the database refuses (no such column) is an error too, and nothing stays.
    let refused = batch(|b| {
        b.put(&BALANCES, balance(1, 1, 10, 0));
        b.exec(
            "UPDATE balances SET nope = ? WHERE user_id = ?",
            [1i64.into(), 1i64.into()],
        );
    });
    let err = db.commit(&refused).unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert_eq!(count(&mut *db, "balances"), 0);

    // The writer carries on after a rolled-back batch.
    db.commit(&batch(|b| b.put(&BALANCES, balance(1, 1, 10, 0))))
        .unwrap();
    assert_eq!(
        int(
            &mut *db,
            "SELECT available FROM balances WHERE user_id = ?",
            &[1i64.into()]
        ),
        10
    );
}

fn upserts_change_only_the_update_columns(t: &TestDb) {
    let mut db = t.migrated();
    db.commit(&batch(|b| b.put(&ORDERS, order(7, 1, 100, "NEW"))))
        .unwrap();
    // The same order again with another price (immutable) and status (an update column).
    db.commit(&batch(|b| b.put(&ORDERS, order(7, 1, 999, "FILLED"))))
        .unwrap();
    let row = db
        .query_one(
            "SELECT price, status, held FROM orders WHERE id = ?",
            &[7i64.into()],
        )
        .unwrap()
        .unwrap();
    assert_eq!(row.int(0).unwrap(), 100, "price is not an update column");
    assert_eq!(row.text(1).unwrap(), "FILLED");
    assert_eq!(row.int(2).unwrap(), 999, "held is");
    assert_eq!(count(&mut *db, "orders"), 1);
}

fn an_upsert_matching_another_unique_key_is_a_conflict(t: &TestDb) {
    let mut db = t.migrated();
    let with_client_id = |id: i64, status: &'static str| {
        let mut row = order(id, 1, 100, status);
        row[9] = "client-1".into();
        row
    };
    db.commit(&batch(|b| b.put(&ORDERS, with_client_id(1, "NEW"))))
        .unwrap();
    // Order 2 reuses order 1's client id: refused, as PostgreSQL's ON CONFLICT (id) does,
    // not an update of order 1 (what MySQL's ON DUPLICATE KEY UPDATE alone would do).
    let err = db
        .commit(&batch(|b| {
            b.put(&BALANCES, balance(1, 1, 1, 0));
            b.put(&ORDERS, with_client_id(2, "FILLED"));
        }))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let rows = db.query("SELECT id, status FROM orders", &[]).unwrap();
    assert_eq!(rows, [Row(vec![Value::Int(1), Value::Text("NEW".into())])]);
    assert_eq!(count(&mut *db, "balances"), 0);
    // The same order again still updates.
    db.commit(&batch(|b| b.put(&ORDERS, with_client_id(1, "FILLED"))))
        .unwrap();
    let status = db
        .query_one("SELECT status FROM orders WHERE id = ?", &[1i64.into()])
        .unwrap();
    assert_eq!(status, Some(Row(vec![Value::Text("FILLED".into())])));
}

fn an_insert_only_duplicate_is_a_conflict_and_writes_nothing(t: &TestDb) {
    let mut db = t.migrated();
    db.commit(&batch(|b| b.put(&JOURNAL, journal(1, "DEPOSIT"))))
        .unwrap();
    // Against a committed row.
    let again = batch(|b| {
        b.put(&BALANCES, balance(1, 1, 5, 0));
        b.put(&JOURNAL, journal(2, "DEPOSIT"));
        b.put(&JOURNAL, journal(1, "DEPOSIT"));
    });
    let err = db.commit(&again).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // Twice in one batch (one statement).
    let twice = batch(|b| {
        b.put(&JOURNAL, journal(3, "DEPOSIT"));
        b.put(&JOURNAL, journal(3, "DEPOSIT"));
    });
    let err = db.commit(&twice).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // A secondary unique key refuses too.
    db.commit(&batch(|b| {
        b.put(&USERS, [1i64.into(), "alice".into(), 0i64.into()])
    }))
    .unwrap();
    let err = db
        .commit(&batch(|b| {
            b.put(&USERS, [2i64.into(), "alice".into(), 0i64.into()])
        }))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    assert_eq!(count(&mut *db, "journal"), 1);
    assert_eq!(count(&mut *db, "balances"), 0);
    assert_eq!(count(&mut *db, "users"), 1);
}

fn exec_binds_its_parameters(t: &TestDb) {
    let mut db = t.migrated();
    db.commit(&batch(|b| {
        b.put(&BALANCES, balance(1, 1, 10, 0));
        b.put(&BALANCES, balance(1, 2, 10, 0));
        b.exec(
            "UPDATE balances SET available = available - ?, held = held + ? \
             WHERE user_id = ? AND asset_id = ?",
            [4i64.into(), 4i64.into(), 1i64.into(), 2i64.into()],
        );
        b.exec(
            "INSERT INTO venue_balances (account, asset_id, amount) VALUES (?, ?, ?)",
            ["FEES".into(), 2i64.into(), 7i64.into()],
        );
    }))
    .unwrap();
    let rows = db
        .query(
            "SELECT asset_id, available, held FROM balances WHERE user_id = ? ORDER BY asset_id",
            &[1i64.into()],
        )
        .unwrap();
    assert_eq!(
        rows,
        [
            Row(vec![Value::Int(1), Value::Int(10), Value::Int(0)]),
            Row(vec![Value::Int(2), Value::Int(6), Value::Int(4)]),
        ]
    );
    let fees = db
        .query_one(
            "SELECT amount FROM venue_balances WHERE account = ? AND asset_id = ?",
            &["FEES".into(), 2i64.into()],
        )
        .unwrap();
    assert_eq!(fees.map(|r| r.int(0).unwrap()), Some(7));
}

fn coalesced_puts_keep_the_last_row_per_key_and_the_order_of_execs(t: &TestDb) {
    let mut db = t.migrated();
    db.commit(&batch(|b| {
        b.put(&BALANCES, balance(1, 1, 10, 0));
        b.put(&JOURNAL, journal(1, "A"));
        b.put(&BALANCES, balance(2, 1, 1, 0));
        b.put(&BALANCES, balance(1, 1, 20, 5)); // last for (1, 1) before the Exec
                                                // Sees (1, 1) as 20/5: no Put moves across an Exec.
        b.exec(
            "UPDATE balances SET held = held * 10 WHERE user_id = ? AND asset_id = ?",
            [1i64.into(), 1i64.into()],
        );
        b.put(&BALANCES, balance(2, 1, 3, 0)); // overwrites (2, 1) after the Exec
    }))
    .unwrap();
    let rows = db
        .query(
            "SELECT user_id, available, held FROM balances ORDER BY user_id",
            &[],
        )
        .unwrap();
    assert_eq!(
        rows,
        [
            Row(vec![Value::Int(1), Value::Int(20), Value::Int(50)]),
            Row(vec![Value::Int(2), Value::Int(3), Value::Int(0)]),
        ]
    );
}

fn large_batches_are_split_under_the_parameter_limit(t: &TestDb) {
    let mut db = t.migrated();
    // 5,000 orders of 21 columns: 105,000 parameters, above the 65,535 of one statement;
    // every third put repeats an earlier key with a new status.
    let big = batch(|b| {
        for id in 0..5_000 {
            b.put(&ORDERS, order(id, id % 10, 100, "NEW"));
            b.put(&TRADES, trade(id));
            if id % 3 == 0 {
                b.put(&ORDERS, order(id / 2, id % 10, 100, "FILLED"));
            }
        }
    });
    db.commit(&big).unwrap();
    assert_eq!(count(&mut *db, "orders"), 5_000);
    assert_eq!(count(&mut *db, "trades"), 5_000);
    let filled = int(
        &mut *db,
        "SELECT COUNT(*) FROM orders WHERE status = ?",
        &["FILLED".into()],
    );
    // The ids id/2 for id = 0, 3, 6, … < 5,000 whose FILLED put came after their NEW one.
    let expected = (0..5_000)
        .step_by(3)
        .map(|id: i64| id / 2)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as i64;
    assert_eq!(filled, expected);
}

fn claim(db: &mut dyn Database, role: &str, epoch: i64) {
    db.commit(&batch(|b| {
        b.put(
            &FENCES,
            [
                Value::Text(role.into()),
                epoch.into(),
                Value::Text(format!("holder-{epoch}")),
                0i64.into(),
            ],
        )
    }))
    .unwrap();
}

fn fenced(
    role: &str,
    epoch: i64,
    fill: impl FnOnce(&mut agora_core::store::WriteBatch),
) -> agora_core::store::WriteBatch {
    let mut b = batch(fill);
    b.fence = Some(Fence {
        role: role.into(),
        epoch,
    });
    b
}

fn a_stale_epoch_is_fenced_and_writes_nothing(t: &TestDb) {
    let mut db = t.migrated();
    // A role nobody holds.
    let err = db
        .commit(&fenced("sequencer", 1, |b| {
            b.put(&JOURNAL, journal(1, "A"))
        }))
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err:?}");

    claim(&mut *db, "sequencer", 1);
    db.commit(&fenced("sequencer", 1, |b| {
        b.put(&JOURNAL, journal(1, "A"))
    }))
    .unwrap();
    // Another process takes the role.
    let mut other = t.writer();
    claim(&mut *other, "sequencer", 2);
    let err = db
        .commit(&fenced("sequencer", 1, |b| {
            b.put(&JOURNAL, journal(2, "B"));
            b.put(&BALANCES, balance(1, 1, 1, 0));
        }))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Fenced(m) if m.contains("epoch 2")),
        "{err:?}"
    );
    assert_eq!(count(&mut *db, "journal"), 1);
    assert_eq!(count(&mut *db, "balances"), 0);
    // The new holder commits.
    other
        .commit(&fenced("sequencer", 2, |b| {
            b.put(&JOURNAL, journal(2, "B"))
        }))
        .unwrap();
    assert_eq!(count(&mut *db, "journal"), 2);
}

fn a_writer_is_fenced_as_soon_as_a_new_holder_bumps_the_epoch(t: &TestDb) {
    let mut setup = t.migrated();
    claim(&mut *setup, "sequencer", 1);
    let bumped = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicI64::new(0));
    let old = {
        let mut db = t.writer();
        let (bumped, committed) = (bumped.clone(), committed.clone());
        thread::spawn(move || {
            for id in 0.. {
                let bumped_before = bumped.load(Ordering::SeqCst);
                match db.commit(&fenced("sequencer", 1, |b| {
                    b.put(&JOURNAL, journal(id, "A"))
                })) {
                    Ok(()) => {
                        assert!(!bumped_before, "committed after the epoch was bumped");
                        committed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(StoreError::Fenced(_)) => return,
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    while committed.load(Ordering::SeqCst) < 20 {
        thread::yield_now();
    }
    claim(&mut *setup, "sequencer", 2);
    bumped.store(true, Ordering::SeqCst);
    old.join().unwrap();
    // Every commit that returned Ok is there, and nothing of the fenced one.
    assert_eq!(
        count(&mut *setup, "journal"),
        committed.load(Ordering::SeqCst)
    );
}

fn values_round_trip(t: &TestDb) {
    let mut db = t.migrated();
    let texts = [
        "plain",
        "it's \"quoted\" \\ back`tick`",
        "ünïcødé — 日本語 — 🦀",
        "",
        "  padded  ",
    ];
    db.commit(&batch(|b| {
        for (i, text) in texts.iter().enumerate() {
            b.put(
                &JOURNAL,
                [
                    (i as i64).into(),
                    Value::Text(text.to_string()),
                    Value::Null,
                    Value::Text(text.to_string()),
                    0i64.into(),
                ],
            );
        }
        b.put(
            &JOURNAL,
            [
                100i64.into(),
                "MAX".into(),
                i64::MAX.into(),
                "[]".into(),
                i64::MIN.into(),
            ],
        );
        b.put(
            &CANDLES,
            [
                1i64.into(),
                "1m".into(),
                60_000i64.into(),
                1i64.into(),
                2i64.into(),
                0i64.into(),
                1i64.into(),
                i64::MAX.into(),
                i64::MIN.into(),
                3i64.into(),
            ],
        );
    }))
    .unwrap();
    for (i, text) in texts.iter().enumerate() {
        let row = db
            .query_one(
                "SELECT kind, ref_id, postings FROM journal WHERE id = ?",
                &[(i as i64).into()],
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            row,
            Row(vec![
                Value::Text(text.to_string()),
                Value::Null,
                Value::Text(text.to_string())
            ])
        );
    }
    // Text compares exactly (a case-insensitive collation would find "PLAIN").
    assert_eq!(
        db.query("SELECT id FROM journal WHERE kind = ?", &["PLAIN".into()])
            .unwrap()
            .len(),
        0
    );
    let row = db
        .query_one(
            "SELECT ref_id, created_ms FROM journal WHERE id = ?",
            &[100i64.into()],
        )
        .unwrap()
        .unwrap();
    assert_eq!(row, Row(vec![Value::Int(i64::MAX), Value::Int(i64::MIN)]));
    // NULL as a parameter takes the type of the column it is written to (PostgreSQL
    // infers it), and the statement then takes integers too, and NULL again.
    for ref_id in [Value::Null, Value::Int(5), Value::Null] {
        db.commit(&batch(|b| {
            b.exec(
                "UPDATE journal SET ref_id = ?, kind = ? WHERE id = ?",
                [ref_id.clone(), "plain".into(), 0i64.into()],
            )
        }))
        .unwrap();
        let row = db
            .query_one("SELECT ref_id FROM journal WHERE id = ?", &[0i64.into()])
            .unwrap();
        assert_eq!(row, Some(Row(vec![ref_id])));
    }
    let nulls = int(
        &mut *db,
        "SELECT COUNT(*) FROM journal WHERE ref_id IS NULL",
        &[],
    );
    assert_eq!(nulls, texts.len() as i64);
    // A keyword column, quoted the portable way.
    let row = db
        .query_one(
            "SELECT \"interval\", volume, quote_volume FROM candles WHERE symbol_id = ? AND \"interval\" = ?",
            &[1i64.into(), "1m".into()],
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        row,
        Row(vec![
            Value::Text("1m".into()),
            Value::Int(i64::MAX),
            Value::Int(i64::MIN)
        ])
    );
    // An upsert of a table whose key holds "interval".
    db.commit(&batch(|b| {
        b.put(
            &CANDLES,
            [
                1i64.into(),
                "1m".into(),
                60_000i64.into(),
                1i64.into(),
                9i64.into(),
                0i64.into(),
                9i64.into(),
                1i64.into(),
                1i64.into(),
                4i64.into(),
            ],
        )
    }))
    .unwrap();
    assert_eq!(
        int(
            &mut *db,
            "SELECT high FROM candles WHERE \"interval\" = ?",
            &["1m".into()]
        ),
        9
    );
}

fn aggregates_decode_to_integers(t: &TestDb) {
    let mut db = t.migrated();
    // SUM over nothing is NULL; COALESCE makes it a NUMERIC/DECIMAL 0.
    assert_eq!(
        db.query_one("SELECT SUM(available) FROM balances", &[])
            .unwrap(),
        Some(Row(vec![Value::Null]))
    );
    assert_eq!(
        int(
            &mut *db,
            "SELECT COALESCE(SUM(available), 0) FROM balances",
            &[]
        ),
        0
    );
    db.commit(&batch(|b| {
        b.put(&BALANCES, balance(1, 1, i64::MAX - 5, 0));
        b.put(&BALANCES, balance(2, 1, 5, 0));
        b.put(&BALANCES, balance(3, 1, 0, 1));
        b.put(&BALANCES, balance(3, 2, 123_456_789_012_345, 0));
    }))
    .unwrap();
    assert_eq!(
        int(
            &mut *db,
            "SELECT SUM(available) FROM balances WHERE asset_id = ?",
            &[1i64.into()]
        ),
        i64::MAX
    );
    assert_eq!(
        int(
            &mut *db,
            "SELECT SUM(available - held) FROM balances WHERE user_id = ?",
            &[3i64.into()]
        ),
        123_456_789_012_344
    );
    assert_eq!(
        int(
            &mut *db,
            "SELECT -SUM(available) FROM balances WHERE asset_id = ?",
            &[2i64.into()]
        ),
        -123_456_789_012_345
    );
    assert_eq!(int(&mut *db, "SELECT COUNT(*) FROM balances", &[]), 4);
    assert_eq!(int(&mut *db, "SELECT MAX(user_id) FROM balances", &[]), 3);
    // A sum past 64 bits is reported, not wrapped.
    let err = db
        .query("SELECT SUM(available) FROM balances", &[])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("64-bit")),
        "{err:?}"
    );
    // So is a fraction.
    let err = db
        .query(
            "SELECT SUM(available) / 2 FROM balances WHERE user_id = 2",
            &[],
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

fn query_each_streams_many_rows_and_stops_when_asked(t: &TestDb) {
    let mut db = t.migrated();
    const N: i64 = 20_000;
    for chunk in 0..(N / 5_000) {
        db.commit(&batch(|b| {
            for seq in chunk * 5_000..(chunk + 1) * 5_000 {
                b.put(&OUTBOX, outbox(seq));
            }
        }))
        .unwrap();
    }
    let mut next = 0;
    db.query_each("SELECT seq, id FROM outbox ORDER BY seq", &[], &mut |row| {
        assert_eq!(row.int(0)?, next);
        assert_eq!(row.text(1)?, format!("evt-{next}"));
        next += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(next, N);

    // A callback that fails stops the query with its error...
    let mut seen = 0;
    let err = db
        .query_each("SELECT seq FROM outbox ORDER BY seq", &[], &mut |_| {
            seen += 1;
            if seen == 1_000 {
                return Err(StoreError::Corrupt("enough".into()));
            }
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err, StoreError::Corrupt("enough".into()));
    assert_eq!(seen, 1_000);
    // ... and the connection is fine afterwards.
    assert_eq!(count(&mut *db, "outbox"), N);
    db.commit(&batch(|b| b.put(&OUTBOX, outbox(N)))).unwrap();

    // The same through a reader.
    let reader = t.reader();
    let mut total = 0;
    reader
        .query_each(
            "SELECT seq FROM outbox WHERE seq >= ?",
            &[10i64.into()],
            &mut |_| {
                total += 1;
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(total, N + 1 - 10);
}

fn the_reader_sees_commits_from_many_threads(t: &TestDb) {
    let mut db = t.migrated();
    let reader = t.reader();
    db.commit(&batch(|b| {
        for user in 0..100 {
            b.put(&BALANCES, balance(user, 1, user, 0));
        }
    }))
    .unwrap();
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let reader = reader.clone();
            thread::spawn(move || {
                for user in (i..100).step_by(8) {
                    let row = reader
                        .query_one(
                            "SELECT available FROM balances WHERE user_id = ? AND asset_id = ?",
                            &[user.into(), 1i64.into()],
                        )
                        .unwrap()
                        .unwrap();
                    assert_eq!(row.int(0).unwrap(), user);
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    // A reader made from the writer shares its runtime.
    let total = reader
        .query_one("SELECT COUNT(*) FROM balances", &[])
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(total, 100);
}

fn concurrent_writers_on_overlapping_rows_do_not_deadlock(t: &TestDb) {
    let mut setup = t.migrated();
    setup
        .commit(&batch(|b| {
            for user in 0..50 {
                b.put(&BALANCES, balance(user, 1, 0, 0));
            }
        }))
        .unwrap();
    // Two writers put the same 50 balances (and the orders of the same users) in opposite
    // orders, 40 times each: rows are locked in key order, so neither waits on the other
    // in a cycle.
    let writers: Vec<_> = [false, true]
        .into_iter()
        .enumerate()
        .map(|(w, reversed)| {
            let mut db = t.writer();
            thread::spawn(move || {
                for round in 0..40i64 {
                    let mut users: Vec<i64> = (0..50).collect();
                    if reversed {
                        users.reverse();
                    }
                    db.commit(&batch(|b| {
                        for &user in &users {
                            b.put(&BALANCES, balance(user, 1, round, w as i64));
                            b.put(&ORDERS, order(user, user, 100 + round, "NEW"));
                        }
                        b.exec(
                            "UPDATE balances SET held = held + 0 WHERE user_id BETWEEN ? AND ?",
                            [10i64.into(), 20i64.into()],
                        );
                    }))
                    .unwrap_or_else(|e| panic!("writer {w}, round {round}: {e}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(count(&mut *setup, "balances"), 50);
    assert_eq!(
        int(&mut *setup, "SELECT MIN(available) FROM balances", &[]),
        39
    );
}

fn a_broken_connection_is_replaced(t: &TestDb) {
    let mut db = t.migrated();
    let (whoami, kill) = match t.server {
        Server::Postgres => (
            "SELECT pg_backend_pid()",
            "SELECT pg_terminate_backend(CAST(? AS INTEGER))",
        ),
        Server::Mysql => ("SELECT CONNECTION_ID()", "KILL ?"),
    };
    let id = int(&mut *db, whoami, &[]);
    let mut admin = t.writer();
    admin.query(kill, &[id.into()]).unwrap();
    // The first operation finds the connection gone: a retryable error, not a panic.
    let first = db.commit(&batch(|b| b.put(&JOURNAL, journal(1, "A"))));
    if let Err(e) = &first {
        assert!(matches!(e, StoreError::Database(_)), "{e:?}");
    }
    // The next opens a new connection.
    db.commit(&batch(|b| b.put(&JOURNAL, journal(2, "B"))))
        .unwrap();
    assert_ne!(int(&mut *db, whoami, &[]), id);
}

fn read_connections_killed_while_idle_are_replaced_without_an_error(t: &TestDb) {
    let mut db = t.migrated();
    db.commit(&batch(|b| b.put(&JOURNAL, journal(1, "A"))))
        .unwrap();
    let reader = t.reader_of(3);
    let whoami = match t.server {
        Server::Postgres => "SELECT pg_backend_pid()",
        Server::Mysql => "SELECT CONNECTION_ID()",
    };
    // Three snapshots at once: the pool opens its three connections, then keeps them idle.
    let barrier = std::sync::Barrier::new(3);
    let ids: Vec<i64> = thread::scope(|scope| {
        let reads: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let mut id = 0;
                    reader
                        .snapshot(&mut |s| {
                            barrier.wait();
                            id = s.query_one(whoami, &[])?.unwrap().int(0)?;
                            Ok(())
                        })
                        .unwrap();
                    id
                })
            })
            .collect();
        reads.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut admin = t.writer();
    let kill = match t.server {
        Server::Postgres => {
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE datname = current_database() AND pid <> pg_backend_pid()"
        }
        Server::Mysql => "",
    };
    if kill.is_empty() {
        let others = admin
            .query(
                "SELECT id FROM information_schema.processlist \
                 WHERE db = DATABASE() AND id <> CONNECTION_ID()",
                &[],
            )
            .unwrap();
        for row in others {
            let _ = admin.query("KILL ?", &[row.int(0).unwrap().into()]);
        }
    } else {
        admin.query(kill, &[]).unwrap();
    }
    // Every idle connection of the pool is dead now; reads go on as if nothing happened.
    for _ in 0..4 {
        let row = reader
            .query_one("SELECT COUNT(*) FROM journal", &[])
            .unwrap();
        assert_eq!(row.unwrap().int(0).unwrap(), 1);
        reader
            .snapshot(&mut |s| s.query_each("SELECT id FROM journal", &[], &mut |_| Ok(())))
            .unwrap();
    }
    let now = reader
        .query_one(whoami, &[])
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert!(!ids.contains(&now), "{now} was killed ({ids:?})");
}

/// One row of a query, read some way (a snapshot's, the pool's).
type ReadOne<'a> = dyn FnMut(&str, &[Value]) -> Result<Option<Row>, StoreError> + 'a;

/// (rows in journal, user 1's available balance of asset 1) as `read` sees them.
fn journal_and_balance(read: &mut ReadOne) -> (i64, i64) {
    let count = read("SELECT COUNT(*) FROM journal", &[]).unwrap().unwrap();
    let available = read(
        "SELECT available FROM balances WHERE user_id = ? AND asset_id = ?",
        &[1i64.into(), 1i64.into()],
    )
    .unwrap()
    .unwrap();
    (count.int(0).unwrap(), available.int(0).unwrap())
}

fn a_snapshot_does_not_see_commits_made_during_it(t: &TestDb) {
    let mut db = t.migrated();
    db.commit(&batch(|b| {
        b.put(&BALANCES, balance(1, 1, 10, 0));
        for id in 1..=3 {
            b.put(&JOURNAL, journal(id, "DEPOSIT"));
        }
    }))
    .unwrap();
    let reader = t.reader();
    let mut seen = Vec::new();
    reader
        .snapshot(&mut |reads| {
            seen.push(journal_and_balance(&mut |sql, p| reads.query_one(sql, p)));
            // Another process commits an insert and an update between two queries.
            db.commit(&batch(|b| {
                b.put(&BALANCES, balance(1, 1, 99, 0));
                b.put(&JOURNAL, journal(4, "DEPOSIT"));
            }))?;
            seen.push(journal_and_balance(&mut |sql, p| reads.query_one(sql, p)));
            // Plain reads on the pool's other connections see the commit meanwhile.
            seen.push(journal_and_balance(&mut |sql, p| reader.query_one(sql, p)));
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, [(3, 10), (3, 10), (4, 99)]);
    // The next snapshot sees it.
    let mut after = None;
    reader
        .snapshot(&mut |reads| {
            after = Some(journal_and_balance(&mut |sql, p| reads.query_one(sql, p)));
            Ok(())
        })
        .unwrap();
    assert_eq!(after, Some((4, 99)));
}

fn a_snapshot_always_ends_its_transaction_and_gives_its_connection_back(t: &TestDb) {
    let mut db = t.migrated();
    const N: i64 = 3_000;
    db.commit(&batch(|b| {
        for seq in 0..N {
            b.put(&OUTBOX, outbox(seq));
        }
    }))
    .unwrap();
    // One connection: every snapshot below reuses the one before it.
    let reader = t.reader_of(1);
    let stop = || StoreError::Corrupt("stop".into());
    // `reads` fails after a query.
    let err = reader
        .snapshot(&mut |reads| {
            assert_eq!(
                reads.query("SELECT seq FROM outbox", &[])?.len(),
                N as usize
            );
            Err(stop())
        })
        .unwrap_err();
    assert_eq!(err, stop());
    // A query's callback stops it halfway through its rows.
    let mut taken = 0;
    let err = reader
        .snapshot(&mut |reads| {
            reads.query_each("SELECT seq FROM outbox ORDER BY seq", &[], &mut |_| {
                taken += 1;
                if taken == 700 {
                    return Err(stop());
                }
                Ok(())
            })
        })
        .unwrap_err();
    assert_eq!((err, taken), (stop(), 700));
    // The database refuses a statement (PostgreSQL then aborts the whole transaction).
    let err = reader
        .snapshot(&mut |reads| reads.query("SELECT nope FROM outbox", &[]).map(drop))
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    // `reads` panics.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reader.snapshot(&mut |reads| {
            reads.query("SELECT seq FROM outbox", &[])?;
            panic!("a bug in the reader")
        })
    }));
    assert!(panicked.is_err());
    // The connection is back, out of any transaction: it sees a commit made now, in a
    // plain read and in a new snapshot, which succeeds.
    db.commit(&batch(|b| b.put(&OUTBOX, outbox(N)))).unwrap();
    let count = "SELECT COUNT(*) FROM outbox";
    let plain = reader.query_one(count, &[]).unwrap().unwrap();
    assert_eq!(plain.int(0).unwrap(), N + 1);
    let mut in_snapshot = 0;
    reader
        .snapshot(&mut |reads| {
            in_snapshot = reads.query_one(count, &[])?.unwrap().int(0)?;
            Ok(())
        })
        .unwrap();
    assert_eq!(in_snapshot, N + 1);
}

// Relays apart from the writer (`agora_core::relay`): leases and positions on each server.

const RELAY_PARTITIONS: u32 = 4;
const LEASE_MS: i64 = 5_000;

fn book_row(seq: i64, key: &str, aggregate_type: &str) -> agora_core::outbox::OutboxRow {
    agora_core::outbox::OutboxRow {
        seq,
        id: format!("evt-{seq}"),
        aggregate_type: aggregate_type.into(),
        aggregate_id: key.into(),
        event_type: "OrderAccepted".into(),
        payload: format!("{{\"seq\":{seq}}}"),
        created_ms: 0,
    }
}

/// Commits outbox rows `from..=to` over ten keys; every seventh is not for the log.
fn outbox_rows(db: &mut dyn Database, from: i64, to: i64) {
    let mut b = agora_core::WriteBatch::default();
    for seq in from..=to {
        let kind = if seq % 7 == 0 { "other" } else { "book" };
        book_row(seq, &format!("KEY-{}", seq % 10), kind).put(&mut b);
    }
    db.commit(&b).unwrap();
}

fn relay_on(
    t: &TestDb,
    log: &Arc<agora_bus::EmbeddedLog>,
    clock: &agora_core::ManualClock,
    name: &str,
) -> agora_core::relay::Relay {
    agora_core::relay::Relay::new(
        t.writer(),
        log.clone(),
        Arc::new(clock.clone()),
        name,
        Box::new(|row| row.aggregate_type == "book"),
        agora_core::relay::RelayLimits {
            lease: std::time::Duration::from_millis(LEASE_MS as u64),
            page_rows: 64,
            ..agora_core::relay::RelayLimits::default()
        },
    )
}

/// Everything delivered so far, per partition, as (key, seq).
fn delivered(consumers: &mut [agora_bus::EmbeddedConsumer]) -> Vec<Vec<(String, i64)>> {
    use agora_bus::{LogConsumer, Polled};
    consumers
        .iter_mut()
        .map(|c| {
            let mut got = Vec::new();
            loop {
                match c.poll(std::time::Duration::from_millis(20)).unwrap() {
                    Polled::Records(batch) => got.extend(
                        batch
                            .into_iter()
                            .map(|d| (d.record.key.to_string(), d.record.seq)),
                    ),
                    Polled::Assigned(_) => {}
                    _ => break,
                }
            }
            got
        })
        .collect()
}

fn publish_all(relay: &mut agora_core::relay::Relay) {
    while relay.publish_page().unwrap() > 0 {}
}

fn relays_share_the_partitions_and_publish_each_row_once_in_order(t: &TestDb) {
    let mut db = t.migrated();
    let log = Arc::new(agora_bus::EmbeddedLog::new(RELAY_PARTITIONS, 1024));
    let mut consumers: Vec<_> = (0..RELAY_PARTITIONS)
        .map(|p| log.consumer([p]).unwrap())
        .collect();
    let clock = agora_core::ManualClock::new(1_000_000);
    outbox_rows(&mut *db, 1, 100);
    let mut a = relay_on(t, &log, &clock, "a");
    a.renew().unwrap();
    assert_eq!(
        a.held(),
        vec![0, 1, 2, 3],
        "alone, a relay takes every partition"
    );
    publish_all(&mut a);
    // A second relay joins: it is counted, the first gives back its share, the second
    // claims it.
    let mut b = relay_on(t, &log, &clock, "b");
    b.renew().unwrap();
    assert!(b.held().is_empty(), "nothing has ended yet");
    a.renew().unwrap();
    assert_eq!(a.held(), vec![0, 1]);
    b.renew().unwrap();
    assert_eq!(b.held(), vec![2, 3]);
    outbox_rows(&mut *db, 101, 300);
    for _ in 0..10 {
        a.publish_page().unwrap();
        b.publish_page().unwrap();
    }
    // Every log row exactly once, each partition in seq order, each key on its own
    // partition.
    let got = delivered(&mut consumers);
    let mut all: Vec<i64> = Vec::new();
    for (partition, records) in got.iter().enumerate() {
        assert!(
            records.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {partition} in order"
        );
        for (key, _) in records {
            assert_eq!(
                agora_bus::partition_for(key, RELAY_PARTITIONS),
                partition as u32
            );
        }
        all.extend(records.iter().map(|r| r.1));
    }
    all.sort_unstable();
    let expected: Vec<i64> = (1..=300).filter(|s| s % 7 != 0).collect();
    assert_eq!(all, expected);
    // Positions are recorded: every partition published through 300.
    let leases = agora_core::relay::leases(&mut *db).unwrap();
    assert!(leases.iter().all(|l| l.published_seq == 300), "{leases:?}");
    // A stopped relay gives its leases back at once; the other takes them.
    a.release().unwrap();
    b.renew().unwrap();
    assert_eq!(b.held(), vec![0, 1, 2, 3]);
}

fn a_running_relay_records_its_position_once_idle_and_gives_its_leases_back(t: &TestDb) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut db = t.migrated();
    let log = Arc::new(agora_bus::EmbeddedLog::new(RELAY_PARTITIONS, 1024));
    let clock = agora_core::ManualClock::new(1_000_000);
    outbox_rows(&mut *db, 1, 300);
    // Busy (pages of 64 rows) with positions due only every hour: the pages in between
    // record nothing, and going idle records where it got to.
    let relay = agora_core::relay::Relay::new(
        t.writer(),
        log.clone(),
        Arc::new(clock.clone()),
        "r",
        Box::new(|row| row.aggregate_type == "book"),
        agora_core::relay::RelayLimits {
            lease: std::time::Duration::from_millis(LEASE_MS as u64),
            page_rows: 64,
            record_every: std::time::Duration::from_secs(3600),
            ..agora_core::relay::RelayLimits::default()
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let stop = stop.clone();
        thread::spawn(move || relay.run(&stop))
    };
    let recorded = |db: &mut dyn Database| {
        agora_core::relay::leases(db)
            .unwrap()
            .iter()
            .map(|l| l.published_seq)
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while recorded(&mut *db) != vec![300; RELAY_PARTITIONS as usize] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            recorded(&mut *db)
        );
        thread::sleep(std::time::Duration::from_millis(10));
    }
    // More rows, published, then a stop: the position is where it got to and the leases
    // are given back.
    outbox_rows(&mut *db, 301, 340);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut consumers: Vec<_> = (0..RELAY_PARTITIONS)
        .map(|p| log.consumer([p]).unwrap())
        .collect();
    let mut last = 0;
    while last < 340 {
        assert!(
            std::time::Instant::now() < deadline,
            "published through {last}"
        );
        let got = delivered(&mut consumers);
        last = last.max(got.iter().flatten().map(|r| r.1).max().unwrap_or(0));
    }
    stop.store(true, Ordering::Release);
    running.join().unwrap();
    assert_eq!(recorded(&mut *db), vec![340; RELAY_PARTITIONS as usize]);
    assert!(agora_core::relay::leases(&mut *db)
        .unwrap()
        .iter()
        .all(|l| l.expires_ms == 0));
}

fn a_relay_that_lost_its_lease_cannot_move_the_position(t: &TestDb) {
    let mut db = t.migrated();
    let log = Arc::new(agora_bus::EmbeddedLog::new(RELAY_PARTITIONS, 1024));
    let mut consumers: Vec<_> = (0..RELAY_PARTITIONS)
        .map(|p| log.consumer([p]).unwrap())
        .collect();
    let clock = agora_core::ManualClock::new(1_000_000);
    outbox_rows(&mut *db, 1, 50);
    let mut a = relay_on(t, &log, &clock, "a");
    a.renew().unwrap();
    publish_all(&mut a);
    // a stalls past its lease; b takes every partition.
    clock.advance(LEASE_MS + 1);
    let mut b = relay_on(t, &log, &clock, "b");
    b.renew().unwrap();
    assert_eq!(b.held(), vec![0, 1, 2, 3]);
    let taken = agora_core::relay::leases(&mut *db).unwrap();
    assert!(taken.iter().all(|l| l.published_seq == 50));
    outbox_rows(&mut *db, 51, 80);
    // The stale relay publishes once more before it notices: duplicates at worst, and its
    // position update is refused at the old epoch.
    publish_all(&mut a);
    let after_zombie = agora_core::relay::leases(&mut *db).unwrap();
    assert!(
        after_zombie.iter().all(|l| l.published_seq == 50),
        "{after_zombie:?}"
    );
    publish_all(&mut b);
    a.renew().unwrap();
    assert!(a.held().is_empty(), "a notices at its renewal");
    // Every key's first copies arrive in order, whatever the duplicates: what a consumer
    // applies (each key's rows above its cursor) is every row once, in order.
    let mut applied: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for records in delivered(&mut consumers) {
        for (key, seq) in records {
            let rows = applied.entry(key).or_default();
            if rows.last().is_none_or(|&last| seq > last) {
                rows.push(seq);
            }
        }
    }
    let mut all: Vec<i64> = applied.into_values().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=80).filter(|s| s % 7 != 0).collect::<Vec<_>>());
    let leases = agora_core::relay::leases(&mut *db).unwrap();
    assert!(leases
        .iter()
        .all(|l| l.published_seq == 80 && l.holder.starts_with("b ")));
}

fn the_writers_own_relay_holds_every_lease_until_it_hands_them_back(t: &TestDb) {
    let mut db = t.migrated();
    let log = Arc::new(agora_bus::EmbeddedLog::new(RELAY_PARTITIONS, 1024));
    let clock = agora_core::ManualClock::new(1_000_000);
    let mut a = relay_on(t, &log, &clock, "a");
    a.renew().unwrap();
    assert_eq!(a.held().len(), 4);
    // The writer starts with the relay role: it takes every lease at a new epoch.
    agora_core::relay::hold_all(&mut *db, RELAY_PARTITIONS, "writer").unwrap();
    a.renew().unwrap();
    assert!(a.held().is_empty(), "the writer's relay holds everything");
    clock.advance(3_600_000);
    a.renew().unwrap();
    assert!(a.held().is_empty(), "for as long as it runs");
    // The writer restarts without it: it hands them back, published through the relay
    // position (everything at or below it is applied).
    let mut b = agora_core::WriteBatch::default();
    b.put(
        &agora_core::outbox::RELAY_POSITION,
        [Value::Int(1), Value::Int(42)],
    );
    db.commit(&b).unwrap();
    agora_core::relay::release_all(&mut *db, "writer").unwrap();
    a.renew().unwrap();
    assert_eq!(a.held(), vec![0, 1, 2, 3]);
    let leases = agora_core::relay::leases(&mut *db).unwrap();
    assert!(leases.iter().all(|l| l.published_seq == 42), "{leases:?}");
}
