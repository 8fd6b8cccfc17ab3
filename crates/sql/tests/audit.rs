//! The portable auditor (`agora_store::audit::PortableAuditor`) on PostgreSQL and
//! MySQL/MariaDB, through the exchange's reconciliation rules: a balanced store reconciles,
//! each kind of corrupt row is reported, and an audit taken while a writer commits sees one
//! committed state. Written once, run on both servers (see `common`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use agora_core::store::{Database, ReadDatabase, Value, WriteBatch};
use agora_engine::{SelfTradePrevention, Side, TimeInForce};
use agora_exchange::reconcile::{audit_ledger, ProblemKind, Report};
use agora_exchange::RefData;
use agora_store::audit::PortableAuditor;
use agora_store::{
    AssetRow, AuditStore, BalanceRow, Changes, JournalRow, OrderRow, OrderStatus, OrderType,
    SymbolRow, SymbolStatus, TradeRow, VenueAccount, VenueBalanceRow,
};
use common::*;

macro_rules! on_both_servers {
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

on_both_servers!(
    a_balanced_store_reconciles_and_each_corruption_is_reported,
    an_audit_while_a_writer_commits_sees_one_committed_state,
);

const BASE: u32 = 1;
const QUOTE: u32 = 2;
/// Deposits of one QUOTE unit each to user 3: enough rows to stream in many chunks.
const SMALL_DEPOSITS: i64 = 1_000;

fn refdata() -> RefData {
    let asset = |id, code: &str| AssetRow {
        id,
        code: code.into(),
        scale: 2,
    };
    RefData::new(
        vec![asset(BASE, "BASE"), asset(QUOTE, "QUOTE")],
        vec![SymbolRow {
            id: 1,
            name: "BASE-QUOTE".into(),
            base_asset: BASE,
            quote_asset: QUOTE,
            tick_size: 1,
            lot_size: 1,
            min_notional: 0,
            maker_fee_bps: 0,
            taker_fee_bps: 0,
            status: SymbolStatus::Trading,
            max_quantity: i64::MAX,
            default_stp: SelfTradePrevention::None,
        }],
    )
}

fn entry(id: i64, postings: String) -> JournalRow {
    JournalRow {
        id,
        kind: "DEPOSIT",
        ref_id: None,
        postings,
        created_ms: 0,
    }
}

fn limit(id: u64, user: u64, side: Side, qty: i64) -> OrderRow {
    OrderRow {
        id,
        user,
        symbol: 1,
        side,
        order_type: OrderType::Limit,
        time_in_force: TimeInForce::Gtc,
        price: Some(1_000),
        quantity: Some(qty),
        quote_quantity: None,
        client_order_id: None,
        stp: SelfTradePrevention::None,
        status: OrderStatus::New,
        filled_qty: 0,
        filled_quote: 0,
        fee_paid: 0,
        hold_asset: if side == Side::Buy { QUOTE } else { BASE },
        held: 0,
        accept_seq: id as i64,
        cancel_requested: false,
        created_ms: 0,
        updated_ms: 0,
    }
}

fn trade_1() -> TradeRow {
    TradeRow {
        seq: 1,
        symbol: 1,
        trade_id: 1,
        price: 1_000,
        qty: 100,
        quote_qty: 1_000,
        buy_order: 1,
        sell_order: 2,
        buyer: 1,
        seller: 2,
        taker_side: Side::Sell,
        buyer_fee: 0,
        seller_fee: 0,
        created_ms: 0,
    }
}

/// User 2's deposit of BASE, as the writer stores it.
const DEPOSIT_2: &str = r#"[["X",0,1,-500],["A",2,1,500]]"#;

/// A balanced exchange (prices and quantities in minor units, both assets of scale 2):
/// user 1 deposits 10,000 QUOTE and bids for 200 BASE at 1,000; user 2 deposits 500 BASE
/// and sells 100 to that bid; user 3 makes many small QUOTE deposits.
fn balanced(db: &mut dyn Database) {
    let r = refdata();
    let mut b = WriteBatch::default();
    r.assets.values().for_each(|a| a.put(&mut b));
    r.symbols.values().for_each(|s| s.put(&mut b));
    let journal = [
        r#"[["X",0,2,-10000],["A",1,2,10000]]"#,
        DEPOSIT_2,
        // The bid's hold: price × quantity / 100.
        r#"[["A",1,2,-2000],["H",1,2,2000]]"#,
        // The ask's hold.
        r#"[["A",2,1,-100],["H",2,1,100]]"#,
        // The trade: 100 BASE for 1,000 QUOTE.
        r#"[["H",1,2,-1000],["A",2,2,1000],["H",2,1,-100],["A",1,1,100]]"#,
    ];
    for (i, postings) in journal.iter().enumerate() {
        entry(i as i64 + 1, postings.to_string()).put(&mut b);
    }
    for i in 0..SMALL_DEPOSITS {
        entry(100 + i, r#"[["X",0,2,-1],["A",3,2,1]]"#.into()).put(&mut b);
    }
    let balance = |user, asset, available, held| BalanceRow {
        user,
        asset,
        available,
        held,
    };
    for row in [
        balance(1, QUOTE, 8_000, 1_000),
        balance(1, BASE, 100, 0),
        balance(2, BASE, 400, 0),
        balance(2, QUOTE, 1_000, 0),
        balance(3, QUOTE, SMALL_DEPOSITS, 0),
    ] {
        row.put(&mut b);
    }
    for (asset, amount) in [(BASE, -500), (QUOTE, -10_000 - SMALL_DEPOSITS)] {
        VenueBalanceRow {
            account: VenueAccount::External,
            asset,
            amount,
        }
        .put(&mut b);
    }
    let bid = OrderRow {
        status: OrderStatus::PartiallyFilled,
        filled_qty: 100,
        filled_quote: 1_000,
        held: 1_000,
        ..limit(1, 1, Side::Buy, 200)
    };
    let ask = OrderRow {
        status: OrderStatus::Filled,
        filled_qty: 100,
        filled_quote: 1_000,
        ..limit(2, 2, Side::Sell, 100)
    };
    Changes {
        orders: vec![bid, ask],
        trades: vec![trade_1()],
        ..Changes::default()
    }
    .write_to(&mut b);
    db.commit(&b).expect("the balanced store");
}

fn audit(auditor: &dyn AuditStore) -> Report {
    audit_as(auditor, false)
}

fn audit_as(auditor: &dyn AuditStore, full: bool) -> Report {
    let refdata = Arc::new(refdata());
    audit_ledger(auditor, &|| refdata.clone(), full).expect("the audit runs")
}

/// The kinds of problem a report lists, each once, sorted by name.
fn kinds(report: &Report) -> Vec<ProblemKind> {
    let mut kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    kinds.sort_by_key(|k| format!("{k:?}"));
    kinds.dedup();
    kinds
}

fn exec<const N: usize>(db: &mut dyn Database, sql: &'static str, params: [Value; N]) {
    let mut b = WriteBatch::default();
    b.exec(sql, params);
    db.commit(&b).expect(sql);
}

fn a_balanced_store_reconciles_and_each_corruption_is_reported(t: &TestDb) {
    use ProblemKind::*;
    let mut db = t.migrated();
    balanced(&mut *db);
    let auditor = PortableAuditor::new(t.reader());
    let clean = audit(&auditor);
    assert!(clean.ok, "{clean:#?}");
    assert!(clean.full);
    assert_eq!(
        (clean.journal_through, clean.trades_through),
        (99 + SMALL_DEPOSITS, 1)
    );
    assert_eq!(clean.open_orders, 1);
    assert_eq!(clean.orders_fill_checked, 2);
    // Users 1 and 2 have both assets, user 3 one (two buckets each); external in both.
    assert_eq!((clean.accounts_checked, clean.assets_checked), (12, 2));

    // Each corruption alone (then undone): the kinds it must be reported under.
    let mut check = |name: &str,
                     want: &[ProblemKind],
                     corrupt: &mut dyn FnMut(&mut dyn Database),
                     undo: &mut dyn FnMut(&mut dyn Database)| {
        corrupt(&mut *db);
        let report = audit(&auditor);
        assert!(!report.ok, "{name}: not reported");
        let mut want = want.to_vec();
        want.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(kinds(&report), want, "{name}: {:#?}", report.problems);
        undo(&mut *db);
        let again = audit(&auditor);
        assert!(again.ok, "{name} undone: {:#?}", again.problems);
    };
    let bump = "UPDATE balances SET available = available + ? WHERE user_id = ? AND asset_id = ?";
    check(
        "a balance off by one unit",
        &[JournalMismatch, NotConserved],
        &mut |db| exec(db, bump, [1i64.into(), 2i64.into(), 1i64.into()]),
        &mut |db| exec(db, bump, [(-1i64).into(), 2i64.into(), 1i64.into()]),
    );
    let postings = "UPDATE journal SET postings = ? WHERE id = ?";
    check(
        "an unbalanced journal entry",
        // The external account no longer matches its journal either.
        &[UnbalancedEntry, JournalMismatch],
        &mut |db| {
            let unbalanced = r#"[["X",0,1,-499],["A",2,1,500]]"#;
            exec(db, postings, [unbalanced.into(), 2i64.into()])
        },
        &mut |db| exec(db, postings, [DEPOSIT_2.into(), 2i64.into()]),
    );
    check(
        "unreadable postings",
        &[CorruptEntry, JournalMismatch],
        &mut |db| exec(db, postings, ["not json".into(), 2i64.into()]),
        &mut |db| exec(db, postings, [DEPOSIT_2.into(), 2i64.into()]),
    );
    let status = "UPDATE orders SET status = ? WHERE id = ?";
    check(
        "a hold without its order",
        &[HoldMismatch],
        &mut |db| exec(db, status, ["CANCELED".into(), 1i64.into()]),
        &mut |db| exec(db, status, ["PARTIALLY_FILLED".into(), 1i64.into()]),
    );
    let held = "UPDATE orders SET held = held + ? WHERE id = ?";
    check(
        "an order holding more than it needs",
        &[HoldMismatch, OrderHoldMismatch],
        &mut |db| exec(db, held, [1i64.into(), 1i64.into()]),
        &mut |db| exec(db, held, [(-1i64).into(), 1i64.into()]),
    );
    let filled = "UPDATE orders SET filled_qty = filled_qty + ? WHERE id = ?";
    check(
        "a fill without its trade",
        &[FillMismatch],
        &mut |db| exec(db, filled, [1i64.into(), 2i64.into()]),
        &mut |db| exec(db, filled, [(-1i64).into(), 2i64.into()]),
    );
    let restore_trade = |db: &mut dyn Database| {
        let mut b = WriteBatch::default();
        trade_1().put(&mut b);
        db.commit(&b).unwrap();
    };
    check(
        "a trade gone",
        &[FillMismatch],
        &mut |db| exec(db, "DELETE FROM trades WHERE seq = ?", [1i64.into()]),
        &mut |db| restore_trade(db),
    );
    check(
        "a trade naming an order the store does not have",
        &[FillMismatch],
        &mut |db| {
            let mut b = WriteBatch::default();
            TradeRow {
                seq: 2,
                trade_id: 2,
                buy_order: 77,
                ..trade_1()
            }
            .put(&mut b);
            db.commit(&b).unwrap();
        },
        &mut |db| exec(db, "DELETE FROM trades WHERE seq = ?", [2i64.into()]),
    );
}

/// Deposits of one BASE unit to user 9, each balanced and committed with its balances.
fn deposit(db: &mut dyn Database, n: i64) {
    let mut b = WriteBatch::default();
    entry(10_000 + n, r#"[["X",0,1,-1],["A",9,1,1]]"#.into()).put(&mut b);
    BalanceRow {
        user: 9,
        asset: BASE,
        available: n,
        held: 0,
    }
    .put(&mut b);
    VenueBalanceRow {
        account: VenueAccount::External,
        asset: BASE,
        amount: -500 - n,
    }
    .put(&mut b);
    db.commit(&b).unwrap();
}

fn an_audit_while_a_writer_commits_sees_one_committed_state(t: &TestDb) {
    let mut db = t.migrated();
    balanced(&mut *db);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut db, stop) = (t.writer(), stop.clone());
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                deposit(&mut *db, n);
            }
            n
        })
    };
    // Read at different moments, the journal and the balances would not agree.
    let auditor = PortableAuditor::new(t.reader());
    let mut through = Vec::new();
    for _ in 0..8 {
        let report = audit(&auditor);
        assert!(report.ok, "{:#?}", report.problems);
        through.push(report.journal_through);
    }
    stop.store(true, Ordering::Relaxed);
    let deposits = writer.join().unwrap();
    assert!(deposits > 0);
    assert!(
        through.windows(2).all(|w| w[0] <= w[1]),
        "snapshots move forward: {through:?}"
    );
}

/// How long full audits take on a store of `entries` journal entries (one deposit each,
/// spread over 10,000 users), a finished order per 5 entries and a trade per 10. Run by
/// hand (`AGORA_AUDIT_ENTRIES` changes the size):
/// `cargo test --release -p agora-sql --test audit -- --ignored --nocapture`.
#[test]
#[ignore]
fn full_audit_timings() {
    let entries: i64 = std::env::var("AGORA_AUDIT_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sqlite_dir = tempfile::tempdir().unwrap();
    let mut sqlite = agora_store::sqlite::SqliteStore::open(
        &sqlite_dir.path().join("a.db"),
        agora_store::sqlite::Durability::Normal,
    )
    .unwrap();
    agora_store::schema::migrate(&mut sqlite).unwrap();
    big_store(&mut sqlite, entries);
    let reader: Arc<dyn ReadDatabase> = Arc::new(sqlite.reader(2).unwrap());
    timed("SQLite, portable auditor", &PortableAuditor::new(reader));
    timed(
        "SQLite, SQLite auditor (full run)",
        &sqlite.auditor().unwrap(),
    );
    for server in [Server::Postgres, Server::Mysql] {
        let Some(t) = TestDb::new(server) else {
            continue;
        };
        let mut db = t.migrated();
        big_store(&mut *db, entries);
        timed(
            &format!("{server:?}, portable auditor"),
            &PortableAuditor::new(t.reader()),
        );
    }
}

fn timed(name: &str, auditor: &dyn AuditStore) {
    for run in 1..=2 {
        let started = Instant::now();
        let report = audit_as(auditor, true);
        let took = started.elapsed();
        assert!(report.ok, "{name}: {:#?}", report.problems);
        eprintln!(
            "{name}, run {run}: {} entries, {} accounts, {} orders' fills in {took:.2?}",
            report.journal_through, report.accounts_checked, report.orders_fill_checked
        );
    }
}

/// A balanced store of `entries` deposits (BASE to 10,000 users in turn) in batches of
/// 5,000, and pairs of filled orders, each pair with its trade.
fn big_store(db: &mut dyn Database, entries: i64) {
    let r = refdata();
    let mut b = WriteBatch::default();
    r.assets.values().for_each(|a| a.put(&mut b));
    r.symbols.values().for_each(|s| s.put(&mut b));
    db.commit(&b).unwrap();
    const USERS: i64 = 10_000;
    let mut balances = vec![0i64; USERS as usize];
    for chunk in (1..=entries).collect::<Vec<_>>().chunks(5_000) {
        let mut b = WriteBatch::default();
        for &id in chunk {
            let user = 1 + id % USERS;
            entry(id, format!(r#"[["X",0,1,-100],["A",{user},1,100]]"#)).put(&mut b);
            balances[(user - 1) as usize] += 100;
        }
        db.commit(&b).unwrap();
    }
    let mut b = WriteBatch::default();
    for (i, &available) in balances.iter().enumerate() {
        BalanceRow {
            user: i as u64 + 1,
            asset: BASE,
            available,
            held: 0,
        }
        .put(&mut b);
    }
    VenueBalanceRow {
        account: VenueAccount::External,
        asset: BASE,
        amount: -100 * entries,
    }
    .put(&mut b);
    db.commit(&b).unwrap();
    // Finished orders with their trades (fills only; they move no money here).
    let orders = entries / 10 * 2;
    for chunk in (1..=orders).collect::<Vec<_>>().chunks(2_000) {
        let mut changes = Changes::default();
        for &id in chunk {
            let id = id as u64;
            let buy = id.is_multiple_of(2);
            changes.orders.push(OrderRow {
                status: OrderStatus::Filled,
                filled_qty: 100,
                filled_quote: 1_000,
                ..limit(
                    id,
                    1 + id % USERS as u64,
                    if buy { Side::Buy } else { Side::Sell },
                    100,
                )
            });
            if buy {
                changes.trades.push(TradeRow {
                    seq: id as i64 / 2,
                    trade_id: id / 2,
                    buy_order: id,
                    sell_order: id - 1,
                    ..trade_1()
                });
            }
        }
        let mut b = WriteBatch::default();
        changes.write_to(&mut b);
        db.commit(&b).unwrap();
    }
}
