//! Reconciliation shown failing: for each way the store can be wrong, corrupt it (through a
//! second SQLite connection, while the server runs or while it is stopped) and check that
//! reconciliation reports that kind of problem — offline (`agora reconcile`), and live
//! (`GET /api/v1/admin/reconcile`) after a restart. And shown working: on a busy store every
//! run is ok and compares every book while orders flow, and incremental runs cover exactly
//! what is new.

mod common;
use common::*;
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A second connection to the server's store, as an operator (or a bug) would have.
/// These tests corrupt an SQLite store directly; on a server store the same corruptions are
/// checked at the row level by `agora-sql`'s audit tests.
fn edits_the_store() -> bool {
    if !on_sqlite() {
        eprintln!("SKIPPED: corrupts the SQLite store directly (AGORA_TEST_STORE is set)");
    }
    on_sqlite()
}

fn db(s: &Server) -> Connection {
    let c = Connection::open(s.data_dir().join("agora.db")).expect("open store");
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c
}

fn exec(s: &Server, sql: &str, p: impl rusqlite::Params) {
    let changed = db(s).execute(sql, p).expect(sql);
    assert_eq!(changed, 1, "{sql} changed {changed} rows");
}

fn one<T: rusqlite::types::FromSql>(s: &Server, sql: &str, p: impl rusqlite::Params) -> T {
    db(s).query_row(sql, p, |r| r.get(0)).expect(sql)
}

fn asset_id(s: &Server, code: &str) -> i64 {
    one(s, "SELECT id FROM assets WHERE code = ?1", params![code])
}

/// The test market after some trading, and a funded user who does nothing unless told
/// (so the server never rewrites the rows a test corrupts). Returns that user's id.
fn traded_market(s: &Server) -> u64 {
    let users = market(s, 3);
    random_flow(s, &users, 80, 11, 0.2);
    let idle = s.admin("users", json!({"name": "idle"}))["user_id"]
        .as_u64()
        .unwrap();
    for asset in ["BASE", "QUOTE"] {
        s.admin(
            "deposits",
            json!({"user_id": idle, "asset": asset, "amount": "1000"}),
        );
    }
    s.quiesce();
    assert!(
        s.json("/api/v1/admin/status", None)["trades"]
            .as_u64()
            .unwrap()
            > 5,
        "the flow should trade"
    );
    s.assert_invariants();
    idle
}

/// An order of the idle user far from where the flow trades, so it rests untouched.
fn resting(s: &Server, user: u64, side: &str, price: &str) -> u64 {
    let (code, o) = place(s, user, limit(side, price, "1", "GTC"));
    assert_eq!(code, 202, "{o}");
    let id = o["order_id"].as_u64().unwrap();
    wait_status(s, user, id, &["NEW"]);
    s.quiesce();
    id
}

fn assert_reports(report: &Value, kind: &str) {
    assert_eq!(report["ok"], false, "{kind} not reported: {report:#}");
    assert!(
        problem_kinds(report).iter().any(|k| k == kind),
        "{kind} not reported: {report:#}"
    );
}

/// Stops the server, applies `corrupt` to the stopped store, and checks that both
/// `agora reconcile` (exit code 1) and the live endpoint after a restart report `kinds`.
fn assert_stopped_corruption_reported(
    s: &mut Server,
    kinds: &[&str],
    corrupt: impl FnOnce(&Server),
) {
    assert!(s.terminate().success());
    corrupt(s);
    let (code, offline) = reconcile_offline(s);
    assert_eq!(code, 1, "{offline:#}");
    assert_eq!(offline["full"], true);
    for kind in kinds {
        assert_reports(&offline, kind);
    }
    s.restart();
    let live = s.reconcile(false);
    assert_eq!(live["full"], true, "the first run after a start is full");
    for kind in kinds {
        assert_reports(&live, kind);
    }
}

fn assert_ok(report: &Value) {
    assert_eq!(report["ok"], true, "{report:#}");
}

#[test]
fn a_balance_off_by_one_unit_is_a_journal_mismatch_and_breaks_conservation() {
    if !edits_the_store() {
        return;
    }
    let mut s = Server::start();
    let idle = traded_market(&s);
    let base = asset_id(&s, "BASE");
    let bump = |s: &Server, by: i64| {
        exec(
            s,
            "UPDATE balances SET available = available + ?1 WHERE user_id = ?2 AND asset_id = ?3",
            params![by, idle, base],
        )
    };
    // Live: balances are checked in full by every run, incremental ones included.
    bump(&s, 1);
    let report = s.reconcile(false);
    assert_eq!(report["full"], false);
    assert_reports(&report, "JOURNAL_MISMATCH");
    assert_reports(&report, "NOT_CONSERVED");
    bump(&s, -1);
    assert_ok(&s.reconcile(false));

    assert_stopped_corruption_reported(&mut s, &["JOURNAL_MISMATCH", "NOT_CONSERVED"], |s| {
        bump(s, 1)
    });
}

#[test]
fn an_unbalanced_journal_entry_is_reported() {
    if !edits_the_store() {
        return;
    }
    let mut s = Server::start();
    let idle = traded_market(&s);
    // The idle user's BASE deposit: [["X",0,asset,-N],["A",idle,asset,N]].
    let (id, original): (i64, String) = db(&s)
        .query_row(
            "SELECT id, postings FROM journal WHERE kind = 'DEPOSIT' AND postings LIKE ?1 \
             ORDER BY id LIMIT 1",
            params![format!("%[\"A\",{idle},%")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut postings: Value = serde_json::from_str(&original).unwrap();
    let amount = postings[0][3].as_i64().unwrap();
    postings[0][3] = json!(amount - 1); // one unit more leaves the world than arrives
    let unbalanced = postings.to_string();
    let set = |s: &Server, text: &str| {
        exec(
            s,
            "UPDATE journal SET postings = ?1 WHERE id = ?2",
            params![text, id],
        )
    };
    // Live: the entry was folded by an earlier run, so only a full run sees the change.
    set(&s, &unbalanced);
    let report = s.reconcile(true);
    assert_eq!(report["full"], true);
    assert_reports(&report, "UNBALANCED_ENTRY");
    set(&s, &original);
    assert_ok(&s.reconcile(true));

    assert_stopped_corruption_reported(&mut s, &["UNBALANCED_ENTRY"], |s| set(s, &unbalanced));
}

#[test]
fn a_hold_without_its_order_is_a_hold_mismatch() {
    if !edits_the_store() {
        return;
    }
    let mut s = Server::start();
    let idle = traded_market(&s);
    let order = resting(&s, idle, "BUY", "1.00");
    let status = |s: &Server, status: &str| {
        exec(
            s,
            "UPDATE orders SET status = ?1 WHERE id = ?2",
            params![status, order],
        )
    };
    // Live: the order's hold stays, its order is no longer open. (The engine still has
    // the order, so its book differs from the store too.)
    status(&s, "CANCELED");
    let report = s.reconcile(false);
    assert_reports(&report, "HOLD_MISMATCH");
    status(&s, "NEW");
    assert_ok(&s.reconcile(false));

    assert_stopped_corruption_reported(&mut s, &["HOLD_MISMATCH"], |s| status(s, "CANCELED"));
    // Rebuilt from the store, the book agrees with it: only the hold is wrong.
    let report = s.reconcile(false);
    assert!(
        !problem_kinds(&report).iter().any(|k| k == "BOOK_MISMATCH"),
        "{report:#}"
    );
}

#[test]
fn a_fill_without_its_trade_is_a_fill_mismatch() {
    if !edits_the_store() {
        return;
    }
    let mut s = Server::start();
    traded_market(&s);
    // Live: raise a finished order's filled quantity. Finished orders never change, so an
    // incremental run does not look at them again; a full run does.
    let filled: i64 = one(
        &s,
        "SELECT id FROM orders WHERE status = 'FILLED' ORDER BY id LIMIT 1",
        [],
    );
    let raise = |s: &Server, by: i64| {
        exec(
            s,
            "UPDATE orders SET filled_qty = filled_qty + ?1 WHERE id = ?2",
            params![by, filled],
        )
    };
    raise(&s, 1);
    let report = s.reconcile(true);
    assert_reports(&report, "FILL_MISMATCH");
    raise(&s, -1);
    assert_ok(&s.reconcile(true));

    // Stopped: a trade row disappears (not the last one: its seq continues the count).
    assert_stopped_corruption_reported(&mut s, &["FILL_MISMATCH"], |s| {
        exec(
            s,
            "DELETE FROM trades WHERE seq = (SELECT MIN(seq) FROM trades)",
            [],
        )
    });
}

#[test]
fn a_book_that_differs_from_the_store_is_a_book_mismatch() {
    if !edits_the_store() {
        return;
    }
    let s = Server::start();
    let idle = traded_market(&s);
    let order = resting(&s, idle, "SELL", "50.00");
    // A sell's hold is its quantity, so a new price changes nothing but the book.
    exec(
        &s,
        "UPDATE orders SET price = price + 1 WHERE id = ?1",
        params![order],
    );
    let report = s.reconcile(false);
    assert_eq!(problem_kinds(&report), vec!["BOOK_MISMATCH"], "{report:#}");
    assert!(
        report["problems"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("order {order}")),
        "{report:#}"
    );
    exec(
        &s,
        "UPDATE orders SET price = price - 1 WHERE id = ?1",
        params![order],
    );
    s.assert_invariants();
}

#[test]
fn a_busy_store_reconciles_and_compares_every_book_while_orders_flow() {
    let s = Server::start_with(&["--demo", "--bot-rate", "500"]);
    let trades = || {
        s.json("/api/v1/admin/status", None)["trades"]
            .as_u64()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while trades() < 200 || s.symbols().len() < 3 {
        assert!(Instant::now() < deadline, "bots did not trade");
        std::thread::sleep(Duration::from_millis(50));
    }
    let symbols = s.symbols().len() as u64;
    let before = trades();
    let mut in_flight_seen = 0;
    let mut last_trades_through = 0;
    for _ in 0..30 {
        in_flight_seen += (s.json("/api/v1/admin/status", None)["pending_inputs"]
            .as_u64()
            .unwrap()
            > 0) as u32;
        let report = s.reconcile(false);
        assert_eq!(report["ok"], true, "{report:#}");
        assert_eq!(report["books_compared"], symbols, "{report:#}");
        assert_eq!(report["books_not_compared"], json!([]), "{report:#}");
        let through = report["trades_through"].as_i64().unwrap();
        assert!(through >= last_trades_through, "{report:#}");
        last_trades_through = through;
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(trades() > before + 100, "the bots kept trading meanwhile");
    assert!(
        in_flight_seen > 0,
        "orders should have been in flight around the reconciliations"
    );
}

#[test]
fn an_incremental_run_covers_new_activity_and_catches_corruption_in_it() {
    if !edits_the_store() {
        return;
    }
    let s = Server::start();
    let users = market(&s, 3);
    random_flow(&s, &users, 60, 5, 0.2);
    s.quiesce();
    let n = |v: &Value, k: &str| v[k].as_i64().unwrap();
    let first = s.reconcile(false);
    assert_ok(&first);
    assert_eq!(first["full"], true, "the first run after a start is full");
    assert_eq!(
        (n(&first, "journal_after"), n(&first, "trades_after")),
        (0, 0)
    );
    let (j1, t1) = (n(&first, "journal_through"), n(&first, "trades_through"));
    assert!(j1 > 0 && t1 > 0, "{first:#}");

    // Nothing new: the next run starts and ends where the first ended.
    let idle = s.reconcile(false);
    assert_ok(&idle);
    assert_eq!(idle["full"], false);
    assert_eq!(
        (n(&idle, "journal_after"), n(&idle, "journal_through")),
        (j1, j1)
    );

    // New activity: the next run covers exactly the new entries and trades.
    random_flow(&s, &users, 60, 6, 0.2);
    s.quiesce();
    let second = s.assert_invariants();
    assert_eq!(second["full"], false);
    assert_eq!(n(&second, "journal_after"), j1);
    assert_eq!(n(&second, "trades_after"), t1);
    let (j2, t2) = (n(&second, "journal_through"), n(&second, "trades_through"));
    assert!(j2 > j1 && t2 > t1, "{second:#}");
    assert_eq!(
        j2,
        one::<i64>(&s, "SELECT MAX(id) FROM journal", []),
        "through the last entry"
    );

    // More activity, then corruption in the range the next run has not folded yet.
    random_flow(&s, &users, 60, 7, 0.2);
    s.quiesce();
    let (entry, postings): (i64, String) = db(&s)
        .query_row(
            "SELECT id, postings FROM journal ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(entry > j2);
    let mut p: Value = serde_json::from_str(&postings).unwrap();
    p[0][3] = json!(p[0][3].as_i64().unwrap() + 1);
    exec(
        &s,
        "UPDATE journal SET postings = ?1 WHERE id = ?2",
        params![p.to_string(), entry],
    );
    assert!(
        one::<i64>(&s, "SELECT MAX(seq) FROM trades", []) > t2,
        "the flow should trade"
    );
    exec(
        &s,
        "DELETE FROM trades WHERE seq = (SELECT MAX(seq) FROM trades)",
        [],
    );
    let third = s.reconcile(false);
    assert_eq!(third["full"], false);
    assert_eq!(n(&third, "journal_after"), j2);
    assert_eq!(n(&third, "trades_after"), t2);
    assert_reports(&third, "UNBALANCED_ENTRY");
    assert_reports(&third, "FILL_MISMATCH");
}

/// A reconciliation asks for more book audits than a shard's control queue holds at once
/// (64): it waits for room instead of reporting the rest as not compared.
#[test]
fn every_book_is_compared_however_many_symbols_there_are() {
    let s = Server::start();
    market(&s, 1);
    for i in 0..80 {
        s.admin(
            "symbols",
            json!({"name": format!("S{i}-QUOTE"), "base": "BASE", "quote": "QUOTE",
                   "tick_size": "0.01", "lot_size": "1"}),
        );
    }
    let report = s.reconcile(false);
    assert_eq!(report["books_not_compared"], json!([]), "{report:#}");
    assert_eq!(report["books_compared"], 81);
    assert_ok(&report);
}
