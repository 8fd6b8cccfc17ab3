//! Reconciliation: recompute what must be true from independent records and compare.
//!
//! The rules, each with the stable `kind` a violation is reported under:
//! - `UNBALANCED_ENTRY`: every journal entry sums to zero per asset (`CORRUPT_ENTRY` when
//!   its postings cannot be read at all).
//! - `NEGATIVE_BALANCE`: users' available and held, and the venue's fee income, are ≥ 0.
//! - `JOURNAL_MISMATCH`: every account's stored balance equals the sum of its postings
//!   (the journal is the source).
//! - `NOT_CONSERVED`: per asset, users' available + held + fees + external = 0.
//! - `HOLD_MISMATCH`: every user's held amount equals the holds of their open orders.
//! - `ORDER_HOLD_MISMATCH`: a resting sell holds exactly its unfilled quantity, a resting
//!   buy exactly its limit price times that; `FILLED_BUT_OPEN`: an open limit order has
//!   something left to fill.
//! - `FILL_MISMATCH`: every order's filled quantity and quote equal the sums of its trades.
//! - `BOOK_MISMATCH`: each engine book equals the store's open orders at the same cut (see
//!   [`book_problem`]), and the store's cursor is the engine's position.
//!
//! The rules are pure functions over rows. The store streams the rows ([`AuditStore`]) in
//! one snapshot; [`Ledger`] is the sink that applies the rules as rows arrive, keeping only
//! per-asset totals and the holds of open orders. Books are compared by the sequencer at a
//! cut in its stream of engine outputs (`Sequencer::audit_book`).
//!
//! What an incremental run sees. Every run checks in full: balances against the running
//! journal sums, conservation, holds, open orders, and the books. It folds only the journal
//! entries and trades past the previous run's high-water marks (checking each new entry's
//! balance), and rechecks fills only for orders that are new, were open at the previous
//! run, or are named by new trades. Finished orders never change again, so for a correct
//! writer that covers every change. A change to something already folded — an old journal
//! entry edited or removed, an old trade edited or removed, a finished order's fills
//! edited — is seen only by a full run: the first after the process starts, `agora
//! reconcile`, and `GET /api/v1/admin/reconcile?full=true`.

use crate::shard::BookSnapshot;
use crate::RefData;
use agora_engine::{RestingOrder, Side};
use agora_ledger::{Account, Bucket, Posting};
use agora_store::{
    AccountAudit, AuditCoverage, AuditSink, AuditStore, CursorRow, FillAudit, OrderRow, OrderType,
    StoreResult,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What kind of rule a problem breaks; stable names for operators and alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProblemKind {
    UnbalancedEntry,
    CorruptEntry,
    NegativeBalance,
    JournalMismatch,
    NotConserved,
    HoldMismatch,
    OrderHoldMismatch,
    FilledButOpen,
    FillMismatch,
    BookMismatch,
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ReconcileProblem))]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
}

fn problem(kind: ProblemKind, detail: String) -> Problem {
    Problem { kind, detail }
}

/// What a reconciliation found.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    pub ok: bool,
    /// The first [`PROBLEMS_MAX`] problems found.
    pub problems: Vec<Problem>,
    /// How many more were found and not listed.
    pub problems_not_listed: usize,
    /// Whether the ledger audit started from nothing (every entry, trade and order checked)
    /// rather than from the previous run's high-water marks.
    pub full: bool,
    /// Journal entries with `journal_after < id <= journal_through` and trades with
    /// `trades_after < seq <= trades_through` were folded into the running sums and
    /// checked in this run; balances, holds and open orders are checked in full every run.
    pub journal_after: i64,
    pub journal_through: i64,
    pub trades_after: i64,
    pub trades_through: i64,
    pub assets_checked: usize,
    pub accounts_checked: usize,
    pub open_orders: usize,
    /// Orders whose fills were compared with their trades in this run.
    pub orders_fill_checked: u64,
    pub books_compared: usize,
    /// Books that could not be compared in time, and why (not a problem of the store).
    pub books_not_compared: Vec<String>,
}

/// Problems listed at most; beyond that the report only counts them.
pub const PROBLEMS_MAX: usize = 100;

impl Report {
    fn add(&mut self, p: Problem) {
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(p);
        } else {
            self.problems_not_listed += 1;
        }
        self.ok = false;
    }

    /// Adds the outcome of one book's audit.
    pub fn add_book(&mut self, name: &str, verdict: BookVerdict) {
        match verdict {
            BookVerdict::Compared(p) => {
                self.books_compared += 1;
                if let Some(p) = p {
                    self.add(p);
                }
            }
            BookVerdict::NotCompared(why) => self.books_not_compared.push(format!("{name}: {why}")),
        }
    }
}

/// How one book's audit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookVerdict {
    /// Compared with the store at the cut: a problem, or none.
    Compared(Option<Problem>),
    /// Not compared (engine busy or stopping, an earlier audit still in flight, timeout).
    NotCompared(String),
}

// ---- the rules ----------------------------------------------------------------------

/// An entry must sum to zero per asset.
pub fn entry_problem(id: i64, postings: &[Posting]) -> Option<Problem> {
    let mut sums: Vec<(u32, i128)> = Vec::with_capacity(2);
    for p in postings {
        match sums.iter_mut().find(|(a, _)| *a == p.asset) {
            Some((_, s)) => *s += p.amount as i128,
            None => sums.push((p.asset, p.amount as i128)),
        }
    }
    if postings.is_empty() {
        return Some(problem(
            ProblemKind::UnbalancedEntry,
            format!("journal entry {id} has no postings"),
        ));
    }
    let (asset, sum) = sums.into_iter().find(|(_, s)| *s != 0)?;
    Some(problem(
        ProblemKind::UnbalancedEntry,
        format!("journal entry {id} sums to {sum} in asset {asset}"),
    ))
}

fn account_name(account: Account, asset: u32) -> String {
    match account {
        Account::User {
            user,
            bucket: Bucket::Available,
        } => format!("user {user} asset {asset} available"),
        Account::User {
            user,
            bucket: Bucket::Held,
        } => format!("user {user} asset {asset} held"),
        Account::Fees => format!("fees in asset {asset}"),
        Account::External => format!("external in asset {asset}"),
    }
}

/// One account's rules; `order_holds` is what open orders hold in it (held buckets only).
pub fn account_problems(a: &AccountAudit, order_holds: i128) -> Vec<Problem> {
    let mut out = Vec::new();
    let name = || account_name(a.account, a.asset);
    let balance = a.balance.unwrap_or(0);
    // The external account mirrors deposits and is negative by design.
    if balance < 0 && a.account != Account::External {
        out.push(problem(
            ProblemKind::NegativeBalance,
            format!("{} is {balance}", name()),
        ));
    }
    if balance as i128 != a.journal {
        let stored = match a.balance {
            Some(b) => b.to_string(),
            None => "no balance row".into(),
        };
        out.push(problem(
            ProblemKind::JournalMismatch,
            format!(
                "{} holds {stored} but its journal sums to {}",
                name(),
                a.journal
            ),
        ));
    }
    if matches!(
        a.account,
        Account::User {
            bucket: Bucket::Held,
            ..
        }
    ) && balance as i128 != order_holds
    {
        out.push(problem(
            ProblemKind::HoldMismatch,
            format!("{} is {balance} but open orders hold {order_holds}", name()),
        ));
    }
    out
}

/// Per asset, every account together must sum to zero.
pub fn conservation_problem(asset: u32, sum: i128) -> Option<Problem> {
    (sum != 0).then(|| {
        problem(
            ProblemKind::NotConserved,
            format!("asset {asset} does not conserve: accounts sum to {sum}"),
        )
    })
}

/// An open limit order has something left to fill and holds exactly what its unfilled
/// part needs: a sell its quantity, a buy its limit price times that (price improvement is
/// released at each fill).
pub fn open_order_problems(o: &OrderRow, refdata: &RefData) -> Vec<Problem> {
    let mut out = Vec::new();
    let (OrderType::Limit, Some(price), Some(quantity)) = (o.order_type, o.price, o.quantity)
    else {
        return out;
    };
    let remaining = quantity as i128 - o.filled_qty as i128;
    if remaining <= 0 {
        out.push(problem(
            ProblemKind::FilledButOpen,
            format!(
                "open order {} has filled {} of {quantity}",
                o.id, o.filled_qty
            ),
        ));
    }
    let want = match (o.side, refdata.symbols.get(&o.symbol)) {
        (Side::Sell, _) => remaining,
        (Side::Buy, Some(symbol)) => {
            // As `BookSpec::notional`, in i128: a corrupt row must not overflow here.
            price as i128 * remaining / refdata.book_spec(symbol).base_unit as i128
        }
        (Side::Buy, None) => {
            out.push(problem(
                ProblemKind::OrderHoldMismatch,
                format!("order {} is on unknown symbol {}", o.id, o.symbol),
            ));
            return out;
        }
    };
    if want != o.held as i128 {
        out.push(problem(
            ProblemKind::OrderHoldMismatch,
            format!(
                "{:?} order {} holds {} but its unfilled part needs {want}",
                o.side, o.id, o.held
            ),
        ));
    }
    out
}

/// An order's fills equal the sums of its trades.
pub fn fill_problem(f: &FillAudit) -> Option<Problem> {
    let detail = match f.stored {
        None => format!(
            "trades fill order {} with {}/{}, but there is no such order",
            f.order, f.traded.0, f.traded.1
        ),
        Some((qty, quote)) if (qty as i128, quote as i128) != f.traded => format!(
            "order {} says filled {qty}/{quote}, its trades sum to {}/{}",
            f.order, f.traded.0, f.traded.1
        ),
        Some(_) => return None,
    };
    Some(problem(ProblemKind::FillMismatch, detail))
}

/// The store's view of a book at a cut: its resting orders in priority order (bids
/// high→low, asks low→high, arrival within a level), from the open orders accepted at or
/// before the cut, given in arrival order.
pub fn resting_in_priority(open_in_arrival_order: &[OrderRow]) -> Vec<RestingOrder> {
    let mut want: Vec<RestingOrder> = open_in_arrival_order
        .iter()
        .map(|o| RestingOrder {
            id: o.id,
            user: o.user,
            side: o.side,
            price: o.price.unwrap_or(0),
            remaining: o.quantity.unwrap_or(0).saturating_sub(o.filled_qty),
        })
        .collect();
    // A stable sort keeps arrival order within a level.
    want.sort_by_key(|o| match o.side {
        Side::Buy => (0, o.price.saturating_neg()),
        Side::Sell => (1, o.price),
    });
    want
}

/// The engine's book equals the store's open orders accepted at or before the engine's
/// last input, and the store's cursor is that input and the book's next trade id.
///
/// Called at the cut where every engine output up to `engine.input_seq` has been
/// committed and nothing after it. The cursor then equals the engine's position exactly:
/// it is written only from engine outputs, each carrying the offset of its last input,
/// and a run of only duplicates (inputs re-published after a restart) reports the
/// position the engine was restored to, which is the committed cursor.
pub fn book_problem(
    name: &str,
    engine: &BookSnapshot,
    store_open: &[OrderRow],
    cursor: Option<CursorRow>,
) -> Option<Problem> {
    let mismatch = |detail: String| Some(problem(ProblemKind::BookMismatch, detail));
    // No cursor: the engine has consumed nothing of this book yet (a new book).
    let (input_seq, next_trade_id) = cursor.map_or((0, 1), |c| (c.input_seq, c.next_trade_id));
    if (input_seq, next_trade_id) != (engine.input_seq, engine.next_trade_id) {
        return mismatch(format!(
            "{name}: the engine is at input {} with next trade id {}, the store's cursor at \
             input {input_seq} with next trade id {next_trade_id}",
            engine.input_seq, engine.next_trade_id
        ));
    }
    let want = resting_in_priority(store_open);
    if engine.resting == want {
        return None;
    }
    let at = engine
        .resting
        .iter()
        .zip(&want)
        .position(|(e, s)| e != s)
        .unwrap_or(engine.resting.len().min(want.len()));
    let show = |o: Option<&RestingOrder>| match o {
        Some(o) => format!(
            "order {} of user {} {:?} {} at {}",
            o.id, o.user, o.side, o.remaining, o.price
        ),
        None => "nothing".into(),
    };
    mismatch(format!(
        "{name} at input {}: the engine has {} resting orders, the store {} open; first \
         difference at position {at}: engine {}, store {}",
        engine.input_seq,
        engine.resting.len(),
        want.len(),
        show(engine.resting.get(at)),
        show(want.get(at))
    ))
}

// ---- the sink -----------------------------------------------------------------------

/// Applies the rules to the rows an [`AuditStore`] streams, keeping only per-asset totals
/// and the holds of open orders (bounded by the books).
pub struct Ledger<'a> {
    refdata: Arc<RefData>,
    /// The reference data as it is now: asked for when an order names a symbol `refdata`
    /// does not know (listed after it was taken, before the store's snapshot began).
    latest: &'a dyn Fn() -> Arc<RefData>,
    report: Report,
    per_asset: FxHashMap<u32, i128>,
    /// What open orders hold, per (user, asset); entries are removed as their held
    /// accounts are met, so what is left at the end has no balance row.
    holds: FxHashMap<(u64, u32), i128>,
}

impl<'a> Ledger<'a> {
    pub fn new(latest: &'a dyn Fn() -> Arc<RefData>) -> Ledger<'a> {
        Ledger {
            refdata: latest(),
            latest,
            report: Report {
                ok: true,
                ..Report::default()
            },
            per_asset: FxHashMap::default(),
            holds: FxHashMap::default(),
        }
    }

    pub fn finish(mut self, coverage: AuditCoverage) -> Report {
        let mut assets: Vec<(u32, i128)> = self.per_asset.iter().map(|(&a, &s)| (a, s)).collect();
        assets.sort_unstable();
        for (asset, sum) in assets {
            if let Some(p) = conservation_problem(asset, sum) {
                self.report.add(p);
            }
        }
        let mut orphans: Vec<((u64, u32), i128)> =
            self.holds.into_iter().filter(|(_, h)| *h != 0).collect();
        orphans.sort_unstable();
        for ((user, asset), held) in orphans {
            self.report.add(problem(
                ProblemKind::HoldMismatch,
                format!("open orders hold {held} of asset {asset} for user {user}, who has no balance of it"),
            ));
        }
        let r = &mut self.report;
        r.assets_checked = self.per_asset.len();
        r.full = coverage.full;
        r.journal_after = coverage.journal_after;
        r.journal_through = coverage.journal_through;
        r.trades_after = coverage.trades_after;
        r.trades_through = coverage.trades_through;
        r.orders_fill_checked = coverage.orders_fill_checked;
        self.report
    }
}

impl AuditSink for Ledger<'_> {
    fn entry(&mut self, id: i64, postings: &[Posting]) {
        if let Some(p) = entry_problem(id, postings) {
            self.report.add(p);
        }
    }

    fn corrupt_entry(&mut self, id: i64, detail: &str) {
        self.report.add(problem(
            ProblemKind::CorruptEntry,
            format!("journal entry {id}: {detail}"),
        ));
    }

    fn open_order(&mut self, o: &OrderRow) {
        self.report.open_orders += 1;
        *self.holds.entry((o.user, o.hold_asset)).or_default() += o.held as i128;
        if !self.refdata.symbols.contains_key(&o.symbol) {
            self.refdata = (self.latest)();
        }
        for p in open_order_problems(o, &self.refdata) {
            self.report.add(p);
        }
    }

    fn account(&mut self, a: &AccountAudit) {
        self.report.accounts_checked += 1;
        *self.per_asset.entry(a.asset).or_default() += a.balance.unwrap_or(0) as i128;
        let holds = match a.account {
            Account::User {
                user,
                bucket: Bucket::Held,
            } => self.holds.remove(&(user, a.asset)).unwrap_or(0),
            _ => 0,
        };
        for p in account_problems(a, holds) {
            self.report.add(p);
        }
    }

    fn fills(&mut self, f: &FillAudit) {
        if let Some(p) = fill_problem(f) {
            self.report.add(p);
        }
    }
}

/// Runs the ledger audit (incremental unless `full`; see [`AuditStore`]).
/// One ledger audit; `refdata` gives the reference data as it is now (see [`Ledger`]).
pub fn audit_ledger(
    store: &dyn AuditStore,
    refdata: &dyn Fn() -> Arc<RefData>,
    full: bool,
) -> StoreResult<Report> {
    let mut ledger = Ledger::new(refdata);
    let coverage = store.audit(full, &mut ledger)?;
    Ok(ledger.finish(coverage))
}

/// Reconciles a store that no process is serving: a full ledger audit (engine books are
/// not compared: there is no engine).
pub fn offline(config: &crate::Config) -> Result<Report, crate::StartError> {
    let mut open = crate::open_store(config)?;
    agora_store::schema::migrate(&mut *open.store)?;
    let mut loads = agora_store::queries::Loads(&mut *open.store);
    let refdata = Arc::new(RefData::new(loads.assets()?, loads.symbols()?));
    Ok(audit_ledger(&*open.auditor, &|| refdata.clone(), true)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_store::AssetRow;

    fn refdata() -> RefData {
        let asset = |id, code: &str| AssetRow {
            id,
            code: code.into(),
            scale: 2,
        };
        RefData::new(
            vec![asset(1, "BASE"), asset(2, "QUOTE")],
            vec![crate::test_rows::symbol("BASE-QUOTE", 100)],
        )
    }

    /// A resting limit order holding exactly what it needs (prices and quantities in
    /// minor units; base scale 2, so 100 is one unit).
    fn open(id: u64, side: Side, price: i64, qty: i64, filled: i64) -> OrderRow {
        let remaining = qty - filled;
        OrderRow {
            filled_qty: filled,
            held: if side == Side::Buy {
                price * remaining / 100
            } else {
                remaining
            },
            ..crate::test_rows::limit_order(id, 1, side, price, qty)
        }
    }

    fn kinds(problems: &[Problem]) -> Vec<ProblemKind> {
        problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn an_entry_must_balance_per_asset() {
        let p = |account, asset, amount| Posting {
            account,
            asset,
            amount,
        };
        let balanced = [p(Account::External, 1, -5), p(Account::Fees, 1, 5)];
        assert_eq!(entry_problem(1, &balanced), None);
        // Balanced in total, not per asset.
        let crossed = [p(Account::External, 1, -5), p(Account::Fees, 2, 5)];
        assert_eq!(
            entry_problem(1, &crossed).map(|p| p.kind),
            Some(ProblemKind::UnbalancedEntry)
        );
        assert!(entry_problem(1, &[]).is_some());
    }

    #[test]
    fn an_account_must_match_its_journal_sign_and_holds() {
        let held = Account::User {
            user: 1,
            bucket: Bucket::Held,
        };
        let a = |balance, journal| AccountAudit {
            account: held,
            asset: 1,
            balance,
            journal,
        };
        assert!(account_problems(&a(Some(5), 5), 5).is_empty());
        assert_eq!(
            kinds(&account_problems(&a(Some(5), 4), 5)),
            vec![ProblemKind::JournalMismatch]
        );
        assert_eq!(
            kinds(&account_problems(&a(Some(5), 5), 4)),
            vec![ProblemKind::HoldMismatch]
        );
        assert_eq!(
            kinds(&account_problems(&a(None, 3), 3)),
            vec![ProblemKind::JournalMismatch, ProblemKind::HoldMismatch]
        );
        assert_eq!(
            kinds(&account_problems(&a(Some(-1), -1), -1)),
            vec![ProblemKind::NegativeBalance]
        );
        let external = AccountAudit {
            account: Account::External,
            asset: 1,
            balance: Some(-9),
            journal: -9,
        };
        assert!(account_problems(&external, 0).is_empty());
    }

    #[test]
    fn an_open_order_holds_exactly_its_unfilled_part() {
        let r = refdata();
        assert!(open_order_problems(&open(1, Side::Buy, 1_000, 500, 200), &r).is_empty());
        assert!(open_order_problems(&open(2, Side::Sell, 1_000, 500, 200), &r).is_empty());
        let mut buy = open(3, Side::Buy, 1_000, 500, 0);
        buy.held += 1;
        assert_eq!(
            kinds(&open_order_problems(&buy, &r)),
            vec![ProblemKind::OrderHoldMismatch]
        );
        let mut done = open(4, Side::Sell, 1_000, 500, 500);
        done.held = 0;
        assert_eq!(
            kinds(&open_order_problems(&done, &r)),
            vec![ProblemKind::FilledButOpen]
        );
    }

    #[test]
    fn fills_must_equal_trades_and_name_real_orders() {
        let f = |stored, traded| FillAudit {
            order: 1,
            stored,
            traded,
        };
        assert_eq!(fill_problem(&f(Some((3, 30)), (3, 30))), None);
        assert!(fill_problem(&f(Some((3, 30)), (3, 31))).is_some());
        assert!(fill_problem(&f(Some((3, 30)), (0, 0))).is_some());
        assert!(fill_problem(&f(None, (3, 30))).is_some());
    }

    #[test]
    fn a_book_is_compared_in_priority_order_at_the_cursor() {
        // Arrival order: a low bid, two asks, a high bid, a second ask at the best price.
        let store = vec![
            open(1, Side::Buy, 990, 100, 0),
            open(2, Side::Sell, 1_020, 100, 0),
            open(3, Side::Sell, 1_010, 100, 0),
            open(4, Side::Buy, 1_000, 100, 0),
            open(5, Side::Sell, 1_010, 300, 100),
        ];
        let engine_order = [4, 1, 3, 5, 2];
        let resting: Vec<RestingOrder> = engine_order
            .iter()
            .map(|&id| {
                let o = store.iter().find(|o| o.id == id).unwrap();
                RestingOrder {
                    id,
                    user: 1,
                    side: o.side,
                    price: o.price.unwrap(),
                    remaining: o.quantity.unwrap() - o.filled_qty,
                }
            })
            .collect();
        let engine = BookSnapshot {
            resting,
            next_trade_id: 8,
            input_seq: 40,
        };
        let at_cut = CursorRow {
            symbol: 1,
            input_seq: 40,
            next_trade_id: 8,
        };
        let cursor = Some(at_cut);
        assert_eq!(book_problem("S", &engine, &store, cursor), None);

        let mut moved = store.clone();
        moved[1].price = Some(1_030);
        let p = book_problem("S", &engine, &moved, cursor).unwrap();
        assert_eq!(p.kind, ProblemKind::BookMismatch);
        assert!(p.detail.contains("order 2"), "{}", p.detail);

        let behind = Some(CursorRow {
            input_seq: 39,
            ..at_cut
        });
        assert!(book_problem("S", &engine, &store, behind).is_some());
        let without_2: Vec<OrderRow> = store.iter().filter(|o| o.id != 2).cloned().collect();
        let fewer = book_problem("S", &engine, &without_2, cursor).unwrap();
        assert!(fewer.detail.contains("store nothing"), "{}", fewer.detail);
    }

    #[test]
    fn a_report_lists_at_most_the_first_problems_and_counts_the_rest() {
        let mut r = Report {
            ok: true,
            ..Report::default()
        };
        for i in 0..PROBLEMS_MAX + 7 {
            r.add(problem(ProblemKind::FillMismatch, i.to_string()));
        }
        assert!(!r.ok);
        assert_eq!((r.problems.len(), r.problems_not_listed), (PROBLEMS_MAX, 7));
    }
}
