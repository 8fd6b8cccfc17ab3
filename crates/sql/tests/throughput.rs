//! Commit throughput: batches of 1,000 rows of the exchange's write mix, on each server; and
//! for scale, the latency of a commit of one order (4 rows), which bounds a quiet writer.
//! Ignored by default (it measures, it does not check); run it with
//!
//!     cargo test -p agora-sql --release --test throughput -- --ignored --nocapture

mod common;

use std::time::Instant;

use agora_core::store::{Database, WriteBatch};
use common::*;

const BATCH_ROWS: usize = 1_000;
const WARM_UP: usize = 5;
const BATCHES: usize = 60;

/// An accepted order: the order, its hold's journal entry and balance, its outbox event.
fn orders_mix(b: &mut WriteBatch, batch_no: i64) {
    for i in 0..(BATCH_ROWS / 4) as i64 {
        let id = batch_no * 1_000 + i;
        b.put(&ORDERS, order(id, id % 997, 100, "NEW"));
        b.put(&JOURNAL, journal(id, "HOLD"));
        b.put(
            &BALANCES,
            balance(id % 997, 2, 1_000_000 - batch_no, 100 + batch_no),
        );
        b.put(&OUTBOX, outbox(id));
    }
}

/// A settled trade: the trade, both orders, both sides' balances, its journal entry.
fn trades_mix(b: &mut WriteBatch, batch_no: i64) {
    for i in 0..(BATCH_ROWS / 6) as i64 {
        let id = batch_no * 1_000 + i;
        b.put(&TRADES, trade(id));
        b.put(&ORDERS, order(2 * i, 1, 100, "PARTIALLY_FILLED"));
        b.put(&ORDERS, order(2 * i + 1, 2, 100, "FILLED"));
        b.put(&BALANCES, balance(id % 991, 1, 500 + batch_no, 0));
        b.put(&BALANCES, balance(id % 983 + 1_000, 2, 500 + batch_no, 0));
        b.put(&JOURNAL, journal(id, "TRADE"));
    }
}

fn measure(db: &mut dyn Database, name: &str, mix: fn(&mut WriteBatch, i64), first: i64) {
    let mut rows = 0;
    let mut elapsed = std::time::Duration::ZERO;
    for n in 0..(WARM_UP + BATCHES) {
        let mut b = WriteBatch::default();
        mix(&mut b, first + n as i64);
        let started = Instant::now();
        db.commit(&b).unwrap();
        if n >= WARM_UP {
            elapsed += started.elapsed();
            rows += b.len();
        }
    }
    let per_batch = elapsed / BATCHES as u32;
    println!(
        "{name:>7}: {:>7.0} rows/s ({per_batch:.1?} per batch of {} rows)",
        rows as f64 / elapsed.as_secs_f64(),
        rows / BATCHES
    );
}

/// Commits of one order each, one after the other.
fn one_order_commits(db: &mut dyn Database) {
    const COMMITS: u32 = 200;
    let started = Instant::now();
    for n in 0..COMMITS {
        let mut b = WriteBatch::default();
        let id = 10_000_000 + i64::from(n);
        b.put(&ORDERS, order(id, id % 997, 100, "NEW"));
        b.put(&JOURNAL, journal(id, "HOLD"));
        b.put(&BALANCES, balance(id % 997, 2, 1_000, 100));
        b.put(&OUTBOX, outbox(id));
        db.commit(&b).unwrap();
    }
    let per_commit = started.elapsed() / COMMITS;
    println!(
        "{:>7}: {:>7.0} commits/s ({per_commit:.2?} per commit of 4 rows)",
        "single",
        1.0 / per_commit.as_secs_f64()
    );
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture (and --release)"]
fn commit_throughput() {
    for server in [Server::Postgres, Server::Mysql] {
        let Some(t) = TestDb::new(server) else {
            continue;
        };
        let mut db = t.migrated();
        println!("{server:?}");
        measure(&mut *db, "orders", orders_mix, 0);
        measure(&mut *db, "trades", trades_mix, 1_000);
        one_order_commits(&mut *db);
    }
}
