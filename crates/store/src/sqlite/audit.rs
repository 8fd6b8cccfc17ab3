//! Reconciliation's reads on SQLite: one dedicated read-only connection whose TEMP tables
//! hold the audit's running state, so that a run folds only what is new since the last one
//! and neither SQLite nor this code holds the ledger in memory.
//!
//! Each run is one read transaction on the main database, so every row it sees belongs to
//! one committed state of the writer. The TEMP tables (written in the same transaction,
//! which SQLite allows on a read-only connection: only `main` is read-only) keep:
//! - `audit_state`: the high-water marks of the last run (journal id, trade seq, order id);
//! - `account_sums`: per account, the sum of every journal posting folded so far;
//! - `order_fills`: per order, the sums of qty and quote of every trade folded so far;
//! - `open_at_last_run`: the orders that were open at the last run (their fills are
//!   rechecked even without new trades);
//! - `fill_candidates`: scratch, the orders to recheck in this run.
//!
//! They commit with the read transaction that produced them, so a failed run leaves the
//! state of the previous one. They live as long as the connection: the first run after the
//! process starts is a full run. `temp_store = FILE` and a small cache make SQLite spill to
//! disk rather than grow; the Rust side keeps at most `FOLD_KEYS_MAX` running sums before
//! adding them into the TEMP tables.
//!
//! `crate::audit::PortableAuditor` reads the same through the store port on any adapter,
//! with full runs only; on the same store both tell a sink the same rows (tested below).
//!
//! Sums are added in Rust as i128 and stored as decimal text: SQLite's integer arithmetic
//! turns an overflow into an error (`SUM`) or a float (`+`), and a corrupt ledger must be
//! reported, not make the audit fail or round.

use super::{db_error, open, row_of, SqliteStore};
use crate::audit::{account_key, account_of, fold_entry, AccountKey};
use crate::schema::{select_list, ORDERS};
use crate::*;
use agora_ledger::Account;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Audit internals mix rusqlite calls and row decoding; both end as the port's error.
struct Fail(StoreError);

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Fail {
        Fail(db_error(e))
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail(e)
    }
}

type AuditResult<T> = Result<T, Fail>;

/// Running sums kept in memory before they are added into the TEMP tables.
const FOLD_KEYS_MAX: usize = 65_536;
/// Page cache of the audit connection, per database (main and temp), in KiB.
const AUDIT_CACHE_KIB: i64 = 4_096;

const SCHEMA: &str = "
CREATE TEMP TABLE IF NOT EXISTS audit_state (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    journal_through  INTEGER NOT NULL,
    trades_through   INTEGER NOT NULL,
    orders_through   INTEGER NOT NULL
);
CREATE TEMP TABLE IF NOT EXISTS account_sums (
    user_id   INTEGER NOT NULL,
    asset_id  INTEGER NOT NULL,
    code      TEXT NOT NULL,
    amount    TEXT NOT NULL,
    PRIMARY KEY (user_id, asset_id, code)
) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS order_fills (
    order_id  INTEGER PRIMARY KEY,
    qty       TEXT NOT NULL,
    quote     TEXT NOT NULL
);
CREATE TEMP TABLE IF NOT EXISTS open_at_last_run (id INTEGER PRIMARY KEY);
CREATE TEMP TABLE IF NOT EXISTS fill_candidates (id INTEGER PRIMARY KEY);
";

const RESET: &str = "
DROP TABLE IF EXISTS temp.audit_state;
DROP TABLE IF EXISTS temp.account_sums;
DROP TABLE IF EXISTS temp.order_fills;
DROP TABLE IF EXISTS temp.open_at_last_run;
DROP TABLE IF EXISTS temp.fill_candidates;
";

fn code_text(code: u8) -> String {
    char::from(code).to_string()
}

fn parse_sum(text: &str) -> AuditResult<i128> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("audit sum {text:?}")).into())
}

/// The audit's connection and its state between runs (see the module docs).
pub struct SqliteAuditor {
    /// One run at a time: the TEMP tables are one running state.
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Reconciliation's own read-only connection to the database.
    pub fn auditor(&self) -> StoreResult<SqliteAuditor> {
        self.open_auditor().map_err(|f| f.0)
    }

    fn open_auditor(&self) -> AuditResult<SqliteAuditor> {
        let conn = open(&self.path, true)?;
        conn.pragma_update(None, "temp_store", "FILE")?;
        conn.execute_batch(&format!(
            "PRAGMA main.cache_size = -{AUDIT_CACHE_KIB}; PRAGMA temp.cache_size = -{AUDIT_CACHE_KIB};"
        ))?;
        Ok(SqliteAuditor {
            conn: Mutex::new(conn),
        })
    }
}

/// High-water marks: how far the last run folded.
#[derive(Clone, Copy, Default)]
struct Marks {
    journal: i64,
    trades: i64,
    orders: i64,
}

impl AuditStore for SqliteAuditor {
    fn audit(&self, full: bool, sink: &mut dyn AuditSink) -> StoreResult<AuditCoverage> {
        self.run(full, sink).map_err(|f| f.0)
    }
}

impl SqliteAuditor {
    fn run(&self, full: bool, sink: &mut dyn AuditSink) -> AuditResult<AuditCoverage> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        if full {
            tx.execute_batch(RESET)?;
        }
        tx.execute_batch(SCHEMA)?;
        let prev: Option<Marks> = tx
            .query_row(
                "SELECT journal_through, trades_through, orders_through FROM temp.audit_state",
                [],
                |r| {
                    Ok(Marks {
                        journal: r.get(0)?,
                        trades: r.get(1)?,
                        orders: r.get(2)?,
                    })
                },
            )
            .optional()?;
        // The first read of `main` fixes the snapshot every later read sees.
        let now = tx.query_row(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM main.journal), \
                    (SELECT COALESCE(MAX(seq), 0) FROM main.trades), \
                    (SELECT COALESCE(MAX(id), 0) FROM main.orders)",
            [],
            |r| {
                Ok(Marks {
                    journal: r.get(0)?,
                    trades: r.get(1)?,
                    orders: r.get(2)?,
                })
            },
        )?;
        let prev_marks = prev.unwrap_or_default();
        fold_journal(&tx, prev_marks.journal, now.journal, sink)?;
        stream_open_orders(&tx, sink)?;
        stream_accounts(&tx, sink)?;
        fold_trades(&tx, prev_marks, now)?;
        let orders_fill_checked = check_fills(&tx, prev_marks, now, sink)?;
        tx.execute_batch(
            "DELETE FROM temp.fill_candidates; \
             DELETE FROM temp.open_at_last_run; \
             INSERT INTO temp.open_at_last_run SELECT id FROM main.orders \
               WHERE status IN ('NEW', 'PARTIALLY_FILLED');",
        )?;
        tx.execute(
            "INSERT INTO temp.audit_state (id, journal_through, trades_through, orders_through) \
             VALUES (1, ?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET \
             journal_through = excluded.journal_through, trades_through = excluded.trades_through, \
             orders_through = excluded.orders_through",
            params![now.journal, now.trades, now.orders],
        )?;
        tx.commit()?;
        Ok(AuditCoverage {
            full: prev.is_none(),
            journal_after: prev_marks.journal,
            journal_through: now.journal,
            trades_after: prev_marks.trades,
            trades_through: now.trades,
            orders_fill_checked,
        })
    }
}

/// Tells the sink about every entry in `(after, through]` and adds its postings into
/// `temp.account_sums`.
fn fold_journal(
    tx: &Transaction,
    after: i64,
    through: i64,
    sink: &mut dyn AuditSink,
) -> AuditResult<()> {
    let mut sums: BTreeMap<AccountKey, i128> = BTreeMap::new();
    let mut postings = Vec::new();
    let mut s =
        tx.prepare("SELECT id, postings FROM main.journal WHERE id > ?1 AND id <= ?2 ORDER BY id")?;
    let mut rows = s.query(params![after, through])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let text = r
            .get_ref(1)?
            .as_str()
            .map_err(|e| format!("postings are not text: {e}"));
        fold_entry(id, text, &mut postings, &mut sums, sink);
        if sums.len() >= FOLD_KEYS_MAX {
            add_account_sums(tx, &mut sums)?;
        }
    }
    add_account_sums(tx, &mut sums)
}

fn add_account_sums(tx: &Transaction, sums: &mut BTreeMap<AccountKey, i128>) -> AuditResult<()> {
    let mut get = tx.prepare_cached(
        "SELECT amount FROM temp.account_sums WHERE user_id = ?1 AND asset_id = ?2 AND code = ?3",
    )?;
    let mut put = tx.prepare_cached(
        "INSERT INTO temp.account_sums (user_id, asset_id, code, amount) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (user_id, asset_id, code) DO UPDATE SET amount = excluded.amount",
    )?;
    for ((user, asset, code), delta) in std::mem::take(sums) {
        let code = code_text(code);
        let old: Option<String> = get
            .query_row(params![user, asset, code], |r| r.get(0))
            .optional()?;
        let old = old.as_deref().map(parse_sum).transpose()?.unwrap_or(0);
        put.execute(params![
            user,
            asset,
            code,
            old.saturating_add(delta).to_string()
        ])?;
    }
    Ok(())
}

fn stream_open_orders(tx: &Transaction, sink: &mut dyn AuditSink) -> AuditResult<()> {
    let mut s = tx.prepare(&format!(
        "SELECT {} FROM main.orders \
         WHERE status IN ('NEW', 'PARTIALLY_FILLED') ORDER BY accept_seq",
        select_list(&ORDERS)
    ))?;
    let mut rows = s.query([])?;
    while let Some(r) = rows.next()? {
        sink.open_order(&OrderRow::decode(&row_of(r, ORDERS.columns.len())?)?);
    }
    Ok(())
}

/// Merges stored balances (users' and the venue's) with the journal sums, in key order,
/// and tells the sink about each account once.
fn stream_accounts(tx: &Transaction, sink: &mut dyn AuditSink) -> AuditResult<()> {
    // The venue has two accounts per asset: few enough to hold.
    let mut venue: Vec<(AccountKey, i64)> = Vec::new();
    {
        let mut s = tx.prepare("SELECT account, asset_id, amount FROM main.venue_balances")?;
        let mut rows = s.query([])?;
        while let Some(r) = rows.next()? {
            let account = VenueAccount::parse(&r.get::<_, String>(0)?)?;
            let account = match account {
                VenueAccount::Fees => Account::Fees,
                VenueAccount::External => Account::External,
            };
            venue.push((account_key(account, r.get(1)?), r.get(2)?));
        }
    }
    venue.sort_unstable();
    let mut venue = venue.into_iter().peekable();

    let mut b = tx.prepare(
        "SELECT user_id, asset_id, available, held FROM main.balances \
         ORDER BY user_id, asset_id",
    )?;
    let mut balances = b.query([])?;
    // A balances row holds two accounts (A and H, in key order); the second waits here.
    let mut held_next: Option<(AccountKey, i64)> = None;
    let mut next_balance = |held_next: &mut Option<(AccountKey, i64)>| -> AuditResult<_> {
        if let Some(h) = held_next.take() {
            return Ok(Some(h));
        }
        Ok(match balances.next()? {
            Some(r) => {
                let (user, asset): (u64, u32) = (r.get(0)?, r.get(1)?);
                *held_next = Some(((user, asset, b'H'), r.get(3)?));
                Some(((user, asset, b'A'), r.get(2)?))
            }
            None => None,
        })
    };

    let mut j = tx.prepare(
        "SELECT user_id, asset_id, code, amount FROM temp.account_sums \
         ORDER BY user_id, asset_id, code",
    )?;
    let mut sum_rows = j.query([])?;
    let mut next_sum = || -> AuditResult<Option<(AccountKey, i128)>> {
        Ok(match sum_rows.next()? {
            Some(r) => {
                let code: String = r.get(2)?;
                let amount: String = r.get(3)?;
                let key = (r.get(0)?, r.get(1)?, *code.as_bytes().first().unwrap_or(&0));
                Some((key, parse_sum(&amount)?))
            }
            None => None,
        })
    };

    let mut stored_user = next_balance(&mut held_next)?;
    let mut sum = next_sum()?;
    loop {
        // The smallest key among the three sorted streams.
        let stored = match (stored_user, venue.peek()) {
            (Some(u), Some(v)) if v.0 < u.0 => Some(*v),
            (Some(u), _) => Some(u),
            (None, v) => v.copied(),
        };
        let key = match (stored, sum) {
            (Some(s), Some(j)) => s.0.min(j.0),
            (Some(s), None) => s.0,
            (None, Some(j)) => j.0,
            (None, None) => break,
        };
        let mut balance = None;
        if stored.is_some_and(|s| s.0 == key) {
            if venue.peek().is_some_and(|v| v.0 == key) {
                balance = venue.next().map(|v| v.1);
            } else {
                balance = stored_user.map(|u| u.1);
                stored_user = next_balance(&mut held_next)?;
            }
        }
        let mut journal = 0;
        if sum.is_some_and(|j| j.0 == key) {
            journal = sum.map_or(0, |j| j.1);
            sum = next_sum()?;
        }
        let Some(account) = account_of(key) else {
            return Err(StoreError::Corrupt(format!("audit account code {}", key.2)).into());
        };
        sink.account(&AccountAudit {
            account,
            asset: key.1,
            balance,
            journal,
        });
    }
    Ok(())
}

/// Adds the trades in `(prev.trades, now.trades]` into `temp.order_fills`, and makes the
/// orders they touch candidates for the fill check (unless the check covers them anyway).
fn fold_trades(tx: &Transaction, prev: Marks, now: Marks) -> AuditResult<()> {
    let mut sums: BTreeMap<u64, (i128, i128)> = BTreeMap::new();
    let mut s = tx.prepare(
        "SELECT buy_order, sell_order, qty, quote_qty FROM main.trades \
         WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
    )?;
    let mut rows = s.query(params![prev.trades, now.trades])?;
    while let Some(r) = rows.next()? {
        let (qty, quote): (i64, i64) = (r.get(2)?, r.get(3)?);
        for order in [r.get::<_, u64>(0)?, r.get::<_, u64>(1)?] {
            let e = sums.entry(order).or_default();
            e.0 += qty as i128;
            e.1 += quote as i128;
        }
        if sums.len() >= FOLD_KEYS_MAX {
            add_order_fills(tx, &mut sums, prev, now)?;
        }
    }
    add_order_fills(tx, &mut sums, prev, now)
}

fn add_order_fills(
    tx: &Transaction,
    sums: &mut BTreeMap<u64, (i128, i128)>,
    prev: Marks,
    now: Marks,
) -> AuditResult<()> {
    let mut get =
        tx.prepare_cached("SELECT qty, quote FROM temp.order_fills WHERE order_id = ?1")?;
    let mut put = tx.prepare_cached(
        "INSERT INTO temp.order_fills (order_id, qty, quote) VALUES (?1, ?2, ?3) \
         ON CONFLICT (order_id) DO UPDATE SET qty = excluded.qty, quote = excluded.quote",
    )?;
    let mut candidate =
        tx.prepare_cached("INSERT OR IGNORE INTO temp.fill_candidates (id) VALUES (?1)")?;
    for (order, (qty, quote)) in std::mem::take(sums) {
        let old: Option<(String, String)> = get
            .query_row(params![order], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (old_qty, old_quote) = match old {
            Some((q, n)) => (parse_sum(&q)?, parse_sum(&n)?),
            None => (0, 0),
        };
        put.execute(params![
            order,
            old_qty.saturating_add(qty).to_string(),
            old_quote.saturating_add(quote).to_string()
        ])?;
        // Orders in (prev.orders, now.orders] are all checked anyway (see `check_fills`).
        if order as i64 <= prev.orders || order as i64 > now.orders {
            candidate.execute(params![order])?;
        }
    }
    Ok(())
}

/// Compares stored fills with trade sums for every order that may have changed: the
/// orders new since the last run, and the candidates (touched by new trades, or open at
/// the last run). Finished orders never change again, so for a correct writer this covers
/// every change; a full run covers every order, and every order that trades name but the
/// store does not have. Returns how many orders it compared.
fn check_fills(
    tx: &Transaction,
    prev: Marks,
    now: Marks,
    sink: &mut dyn AuditSink,
) -> AuditResult<u64> {
    tx.execute(
        "INSERT OR IGNORE INTO temp.fill_candidates (id) \
         SELECT id FROM temp.open_at_last_run WHERE id <= ?1",
        params![prev.orders],
    )?;
    let mut checked = 0;
    for sql in [
        // New orders.
        "SELECT o.id, o.id, o.filled_qty, o.filled_quote, f.qty, f.quote FROM main.orders o \
         LEFT JOIN temp.order_fills f ON f.order_id = o.id \
         WHERE o.id > ?1 AND o.id <= ?2 ORDER BY o.id",
        // Candidates the first query does not cover (o.id is NULL: no such order), and
        // orders in its range that trades name but the store does not have.
        "SELECT c.id, o.id, o.filled_qty, o.filled_quote, f.qty, f.quote \
         FROM temp.fill_candidates c LEFT JOIN main.orders o ON o.id = c.id \
         LEFT JOIN temp.order_fills f ON f.order_id = c.id \
         WHERE c.id <= ?1 OR c.id > ?2 \
         UNION ALL \
         SELECT f.order_id, NULL, NULL, NULL, f.qty, f.quote FROM temp.order_fills f \
         WHERE f.order_id > ?1 AND f.order_id <= ?2 \
           AND NOT EXISTS (SELECT 1 FROM main.orders o WHERE o.id = f.order_id) \
         ORDER BY 1",
    ] {
        let mut s = tx.prepare(sql)?;
        let mut rows = s.query(params![prev.orders, now.orders])?;
        while let Some(r) = rows.next()? {
            let exists: Option<u64> = r.get(1)?;
            let stored = match exists {
                Some(_) => Some((r.get(2)?, r.get(3)?)),
                None => None,
            };
            let qty: Option<String> = r.get(4)?;
            let quote: Option<String> = r.get(5)?;
            let traded = (
                qty.as_deref().map(parse_sum).transpose()?.unwrap_or(0),
                quote.as_deref().map(parse_sum).transpose()?.unwrap_or(0),
            );
            sink.fills(&FillAudit {
                order: r.get(0)?,
                stored,
                traded,
            });
            checked += 1;
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::PortableAuditor;
    use crate::sqlite::Durability;
    use agora_core::{Database, ReadDatabase};
    use agora_ledger::{Bucket, Posting};
    use std::sync::Arc;

    /// Rows to store as they are, however unbalanced (the audit must find what is wrong).
    #[derive(Default)]
    struct Rows {
        balances: Vec<BalanceRow>,
        venue_balances: Vec<VenueBalanceRow>,
        journal: Vec<JournalRow>,
        orders: Vec<OrderRow>,
        trades: Vec<TradeRow>,
    }

    trait CommitRows {
        fn commit_rows(&mut self, rows: Rows) -> StoreResult<()>;
    }

    impl CommitRows for SqliteStore {
        fn commit_rows(&mut self, rows: Rows) -> StoreResult<()> {
            let mut batch = agora_core::WriteBatch::default();
            rows.balances.iter().for_each(|r| r.put(&mut batch));
            rows.venue_balances.iter().for_each(|r| r.put(&mut batch));
            rows.journal.into_iter().for_each(|r| r.put(&mut batch));
            let changes = Changes {
                orders: rows.orders,
                trades: rows.trades,
                ..Changes::default()
            };
            changes.write_to(&mut batch);
            self.commit(&batch)
        }
    }

    fn open_store(path: &std::path::Path) -> SqliteStore {
        let mut store = SqliteStore::open(path, Durability::Normal).unwrap();
        crate::schema::migrate(&mut store).unwrap();
        store
    }
    use agora_engine::{SelfTradePrevention, Side, TimeInForce};

    /// What a sink is told, in order.
    #[derive(Clone, Debug, PartialEq)]
    enum Told {
        Entry(i64, Vec<Posting>),
        Corrupt(i64, String),
        Open(Box<OrderRow>),
        Account(AccountAudit),
        Fills(FillAudit),
    }

    #[derive(Default)]
    struct Recorder {
        entries: Vec<i64>,
        corrupt: Vec<i64>,
        open: Vec<u64>,
        accounts: Vec<AccountAudit>,
        fills: Vec<FillAudit>,
        told: Vec<Told>,
    }

    impl AuditSink for Recorder {
        fn entry(&mut self, id: i64, postings: &[Posting]) {
            self.entries.push(id);
            self.told.push(Told::Entry(id, postings.to_vec()));
        }
        fn corrupt_entry(&mut self, id: i64, detail: &str) {
            self.corrupt.push(id);
            self.told.push(Told::Corrupt(id, detail.into()));
        }
        fn open_order(&mut self, o: &OrderRow) {
            assert!(self.accounts.is_empty(), "open orders come before accounts");
            self.open.push(o.id);
            self.told.push(Told::Open(Box::new(o.clone())));
        }
        fn account(&mut self, a: &AccountAudit) {
            self.accounts.push(*a);
            self.told.push(Told::Account(*a));
        }
        fn fills(&mut self, f: &FillAudit) {
            self.fills.push(*f);
            self.told.push(Told::Fills(*f));
        }
    }

    /// A full run of the portable auditor over a read pool of the same store.
    fn portable(store: &SqliteStore) -> (Recorder, AuditCoverage) {
        let reader: Arc<dyn ReadDatabase> = Arc::new(store.reader(1).unwrap());
        let mut r = Recorder::default();
        let coverage = PortableAuditor::new(reader).audit(true, &mut r).unwrap();
        (r, coverage)
    }

    /// Full runs of both auditors on the store tell a sink the same rows in the same order
    /// (so every rule gives the same verdicts). The portable run, for more checks.
    fn both_agree(store: &SqliteStore) -> (Recorder, AuditCoverage) {
        let (sqlite, sqlite_coverage) = run(&store.auditor().unwrap(), true);
        let (portable, portable_coverage) = portable(store);
        assert_eq!(portable.told, sqlite.told, "the auditors disagree");
        assert_eq!(portable_coverage, sqlite_coverage);
        (portable, portable_coverage)
    }

    fn journal(id: i64, postings: &str) -> JournalRow {
        JournalRow {
            id,
            kind: "DEPOSIT",
            ref_id: None,
            postings: postings.into(),
            created_ms: 0,
        }
    }

    fn order(id: u64, status: OrderStatus, filled: i64) -> OrderRow {
        OrderRow {
            id,
            user: 1,
            symbol: 1,
            side: Side::Sell,
            order_type: OrderType::Limit,
            time_in_force: TimeInForce::Gtc,
            price: Some(100),
            quantity: Some(10),
            quote_quantity: None,
            client_order_id: None,
            stp: SelfTradePrevention::None,
            status,
            filled_qty: filled,
            filled_quote: filled * 100,
            fee_paid: 0,
            hold_asset: 1,
            held: 10 - filled,
            accept_seq: id as i64,
            cancel_requested: false,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn trade(seq: i64, buy: u64, sell: u64, qty: i64) -> TradeRow {
        TradeRow {
            seq,
            symbol: 1,
            trade_id: seq as u64,
            price: 100,
            qty,
            quote_qty: qty.saturating_mul(100),
            buy_order: buy,
            sell_order: sell,
            buyer: 1,
            seller: 1,
            taker_side: Side::Buy,
            buyer_fee: 0,
            seller_fee: 0,
            created_ms: 0,
        }
    }

    fn run(auditor: &SqliteAuditor, full: bool) -> (Recorder, AuditCoverage) {
        let mut r = Recorder::default();
        let coverage = auditor.audit(full, &mut r).unwrap();
        (r, coverage)
    }

    fn account(accounts: &[AccountAudit], account: Account, asset: u32) -> AccountAudit {
        *accounts
            .iter()
            .find(|a| a.account == account && a.asset == asset)
            .unwrap_or_else(|| panic!("no {account:?} {asset}"))
    }

    const A1: Account = Account::User {
        user: 1,
        bucket: Bucket::Available,
    };

    #[test]
    fn an_incremental_run_folds_only_what_is_new_and_ends_where_a_full_run_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(&dir.path().join("a.db"));
        let auditor = store.auditor().unwrap();
        store
            .commit_rows(Rows {
                balances: vec![BalanceRow {
                    user: 1,
                    asset: 1,
                    available: 90,
                    held: 10,
                }],
                venue_balances: vec![VenueBalanceRow {
                    account: VenueAccount::External,
                    asset: 1,
                    amount: -100,
                }],
                journal: vec![
                    journal(1, r#"[["X",0,1,-100],["A",1,1,100]]"#),
                    journal(2, r#"[["A",1,1,-10],["H",1,1,10]]"#),
                ],
                orders: vec![order(1, OrderStatus::New, 0)],
                ..Rows::default()
            })
            .unwrap();
        both_agree(&store);
        let (first, c1) = run(&auditor, false);
        assert!(c1.full, "the first run of a connection is full");
        assert_eq!((c1.journal_after, c1.journal_through), (0, 2));
        assert_eq!(first.entries, vec![1, 2]);
        assert_eq!(first.open, vec![1]);
        assert_eq!(account(&first.accounts, A1, 1).journal, 90);
        assert_eq!(
            first.accounts.len(),
            3,
            "A, H and external: {:?}",
            first.accounts
        );

        // More activity: a new entry, a new order, and trades on the old and new orders.
        store
            .commit_rows(Rows {
                balances: vec![BalanceRow {
                    user: 1,
                    asset: 1,
                    available: 95,
                    held: 5,
                }],
                journal: vec![journal(3, r#"[["H",1,1,-5],["A",1,1,5]]"#)],
                orders: vec![
                    order(1, OrderStatus::Filled, 10),
                    order(2, OrderStatus::New, 3),
                ],
                trades: vec![trade(1, 2, 1, 3), trade(2, 2, 1, 7)],
                ..Rows::default()
            })
            .unwrap();
        let (second, c2) = run(&auditor, false);
        let (portable, _) = both_agree(&store);
        assert_eq!(portable.accounts, second.accounts);
        assert!(!c2.full);
        assert_eq!((c2.journal_after, c2.journal_through), (2, 3));
        assert_eq!((c2.trades_after, c2.trades_through), (0, 2));
        assert_eq!(second.entries, vec![3], "only the new entry is told");
        assert_eq!(account(&second.accounts, A1, 1).journal, 95);
        let fill = |order, stored, traded| FillAudit {
            order,
            stored: Some(stored),
            traded,
        };
        let fills = &second.fills;
        // Order 2 is new; order 1 is old but touched by the trades (and was open).
        assert!(fills.contains(&fill(2, (3, 300), (10, 1000))), "{fills:?}");
        assert!(
            fills.contains(&fill(1, (10, 1000), (10, 1000))),
            "{fills:?}"
        );

        // Nothing new: nothing folded, nothing but live orders rechecked.
        let (third, c3) = run(&auditor, false);
        assert_eq!((c3.journal_after, c3.journal_through), (3, 3));
        assert!(third.entries.is_empty());
        assert_eq!(
            third.fills.iter().map(|f| f.order).collect::<Vec<_>>(),
            vec![2]
        );

        let (full, c4) = run(&auditor, true);
        assert!(c4.full);
        assert_eq!(full.entries, vec![1, 2, 3]);
        assert_eq!(
            full.accounts, third.accounts,
            "a full run ends where increments did"
        );
        assert_eq!(full.fills.len(), 2);
        assert_eq!(both_agree(&store).0.told, full.told);
    }

    #[test]
    fn accounts_come_once_each_in_key_order_with_or_without_a_balance_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(&dir.path().join("a.db"));
        store
            .commit_rows(Rows {
                balances: vec![
                    BalanceRow {
                        user: 2,
                        asset: 1,
                        available: 7,
                        held: 0,
                    },
                    BalanceRow {
                        user: 1,
                        asset: 2,
                        available: 0,
                        held: 0,
                    },
                ],
                venue_balances: vec![VenueBalanceRow {
                    account: VenueAccount::Fees,
                    asset: 2,
                    amount: 1,
                }],
                // User 3 has postings but no balance row.
                journal: vec![journal(1, r#"[["X",0,1,-4],["A",3,1,4]]"#)],
                ..Rows::default()
            })
            .unwrap();
        let (r, _) = both_agree(&store);
        let keys: Vec<AccountKey> = r
            .accounts
            .iter()
            .map(|a| account_key(a.account, a.asset))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(keys, sorted, "in key order, once each");
        assert_eq!(keys.len(), 7, "{keys:?}");
        let user3 = Account::User {
            user: 3,
            bucket: Bucket::Available,
        };
        assert_eq!(account(&r.accounts, user3, 1).balance, None);
        assert_eq!(account(&r.accounts, user3, 1).journal, 4);
        assert_eq!(account(&r.accounts, Account::External, 1).balance, None);
        assert_eq!(account(&r.accounts, Account::Fees, 2).balance, Some(1));
        assert_eq!(account(&r.accounts, Account::Fees, 2).journal, 0);
    }

    #[test]
    fn sums_beyond_i64_and_unreadable_postings_are_told_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(&dir.path().join("a.db"));
        let max = i64::MAX;
        store
            .commit_rows(Rows {
                journal: vec![
                    journal(1, &format!(r#"[["A",1,1,{max}]]"#)),
                    journal(2, &format!(r#"[["A",1,1,{max}]]"#)),
                    journal(3, "not json"),
                    journal(4, r#"[["Q",1,1,5]]"#),
                ],
                orders: vec![
                    order(1, OrderStatus::Filled, 10),
                    order(2, OrderStatus::Filled, 10),
                ],
                trades: vec![trade(1, 2, 1, max), trade(2, 2, 1, max)],
                ..Rows::default()
            })
            .unwrap();
        let (r, _) = both_agree(&store);
        assert_eq!(r.corrupt, vec![3, 4]);
        assert_eq!(account(&r.accounts, A1, 1).journal, 2 * max as i128);
        assert!(
            r.fills.iter().all(|f| f.traded.0 == 2 * max as i128),
            "{:?}",
            r.fills
        );
    }

    #[test]
    fn corrupt_rows_of_every_kind_are_told_alike_by_both_auditors() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(&dir.path().join("a.db"));
        let mut late = order(3, OrderStatus::New, 0);
        late.accept_seq = 1; // arrived before order 2
        let mut early = order(2, OrderStatus::PartiallyFilled, 4);
        early.accept_seq = 9;
        store
            .commit_rows(Rows {
                balances: vec![
                    // Off by one from its journal.
                    BalanceRow {
                        user: 1,
                        asset: 1,
                        available: 91,
                        held: 9,
                    },
                    // Held with no open order.
                    BalanceRow {
                        user: 2,
                        asset: 1,
                        available: 0,
                        held: 5,
                    },
                ],
                venue_balances: vec![
                    VenueBalanceRow {
                        account: VenueAccount::External,
                        asset: 1,
                        amount: -105,
                    },
                    // No postings at all.
                    VenueBalanceRow {
                        account: VenueAccount::Fees,
                        asset: 2,
                        amount: 3,
                    },
                ],
                journal: vec![
                    journal(1, r#"[["X",0,1,-100],["A",1,1,100]]"#),
                    journal(2, r#"[["A",1,1,-10],["H",1,1,10]]"#),
                    // Unbalanced.
                    journal(3, r#"[["X",0,1,-5],["H",2,1,4]]"#),
                    journal(4, "[]"),
                    // A user with postings and no balance row.
                    journal(5, r#"[["X",0,2,-1],["A",7,2,1]]"#),
                ],
                orders: vec![
                    order(1, OrderStatus::Filled, 10),
                    early,
                    late,
                    // Filled without trades.
                    order(6, OrderStatus::Filled, 10),
                ],
                trades: vec![
                    trade(1, 2, 1, 4),
                    trade(2, 4, 1, 6), // order 4 is missing, below the last order id
                    trade(3, 99, 6, 1), // order 99 is missing, above it
                ],
            })
            .unwrap();
        let (r, coverage) = both_agree(&store);
        assert_eq!(r.open, vec![3, 2], "in arrival order");
        assert_eq!(r.entries, vec![1, 2, 3, 4, 5]);
        assert_eq!(coverage.orders_fill_checked, 6);
        let fills: Vec<(u64, bool)> = r
            .fills
            .iter()
            .map(|f| (f.order, f.stored.is_some()))
            .collect();
        assert_eq!(
            fills,
            [
                (1, true),
                (2, true),
                (3, true),
                (6, true),
                (4, false),
                (99, false)
            ],
            "the store's orders by id, then the missing ones"
        );
        let user7 = Account::User {
            user: 7,
            bucket: Bucket::Available,
        };
        assert_eq!(account(&r.accounts, user7, 2).balance, None);
        assert_eq!(account(&r.accounts, Account::Fees, 2).journal, 0);
        assert_eq!(account(&r.accounts, Account::External, 1).journal, -105);
    }
}
