//! The adapters are synchronous and must work from wherever the port is called: plain
//! threads, the writer thread's loop under a current-thread runtime's `block_on`, and code
//! running inside a tokio runtime (tests, `spawn_blocking` callers). Against both servers.

mod common;

use agora_core::store::{Database, ReadDatabase};
use common::*;

const SERVERS: [Server; 2] = [Server::Postgres, Server::Mysql];

/// Migrates, commits, reads through the writer and a reader, and drops them all, here.
fn round_trip(t: &TestDb) {
    let mut db = t.migrated();
    db.commit(&batch(|b| {
        b.put(&BALANCES, balance(1, 1, 10, 0));
        b.put(&JOURNAL, journal(1, "DEPOSIT"));
    }))
    .unwrap();
    assert_eq!(int(&mut *db, "SELECT COUNT(*) FROM journal", &[]), 1);
    let reader = t.reader();
    let row = reader
        .query_one(
            "SELECT available FROM balances WHERE user_id = ?",
            &[1i64.into()],
        )
        .unwrap()
        .unwrap();
    assert_eq!(row.int(0).unwrap(), 10);
    drop(reader);
    drop(db);
}

#[tokio::test]
async fn inside_a_current_thread_tokio_test() {
    for server in SERVERS {
        if let Some(t) = TestDb::new(server) {
            round_trip(&t);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_multi_thread_tokio_test() {
    for server in SERVERS {
        if let Some(t) = TestDb::new(server) {
            round_trip(&t);
        }
    }
}

#[test]
fn inside_block_on_of_a_current_thread_runtime() {
    for server in SERVERS {
        if let Some(t) = TestDb::new(server) {
            // As the writer thread runs its loop.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async { round_trip(&t) });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_spawn_blocking_with_a_reader_made_by_the_writer() {
    for server in SERVERS {
        let Some(t) = TestDb::new(server) else {
            continue;
        };
        let url = t.url.clone();
        let (mut db, reader): (Box<dyn Database>, std::sync::Arc<dyn ReadDatabase>) =
            agora_sql::connect(&url, 2).unwrap();
        db.migrate("core", CORE).unwrap();
        db.commit(&batch(|b| b.put(&BALANCES, balance(7, 1, 3, 0))))
            .unwrap();
        let answers: Vec<_> = (0..4)
            .map(|_| {
                let reader = reader.clone();
                tokio::task::spawn_blocking(move || {
                    reader
                        .query_one(
                            "SELECT held FROM balances WHERE user_id = ?",
                            &[7i64.into()],
                        )
                        .unwrap()
                        .unwrap()
                        .int(0)
                        .unwrap()
                })
            })
            .collect();
        for answer in answers {
            assert_eq!(answer.await.unwrap(), 0);
        }
    }
}

#[test]
fn urls_of_other_stores_are_refused_without_echoing_them() {
    let err = agora_sql::connect("sqlite://secret:hunter2@x/db", 1)
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(message.contains("\"sqlite\""), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}
