//! Reconciliation: recompute what must be true from independent records and compare.
//!
//! - Conservation per asset: users' available + held + fees + external = 0.
//! - Balances equal the sum of their journal postings (the journal is the source).
//! - Every user's held amount equals the holds of their open orders.
//! - Every order's filled quantity and quote equal the sum of its trades.
//! - With nothing in flight, each engine book equals the store's open orders, in priority.

use crate::shard::BookSnapshot;
use agora_engine::{RestingOrder, Side};
use agora_store::{AuditSnapshot, OrderType, VenueAccount};
use rustc_hash::FxHashMap;
use serde::Serialize;

/// What a reconciliation found.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    pub ok: bool,
    pub problems: Vec<String>,
    pub assets_checked: usize,
    pub accounts_checked: usize,
    pub open_orders: usize,
    pub books_compared: usize,
}

/// Problems reported at most; beyond that the report says how many were cut.
const PROBLEMS_MAX: usize = 100;

pub fn check(
    audit: &AuditSnapshot,
    refdata: &crate::RefData,
    books: Option<&[(u32, BookSnapshot)]>,
) -> Report {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);

    // Conservation and journal agreement.
    let mut per_asset: FxHashMap<u32, i128> = FxHashMap::default();
    let mut expected: FxHashMap<(String, u64, u32), i64> = FxHashMap::default();
    for b in &audit.balances {
        if b.available < 0 || b.held < 0 {
            problem(format!("negative balance {b:?}"));
        }
        *per_asset.entry(b.asset).or_default() += b.available as i128 + b.held as i128;
        expected.insert(("A".into(), b.user, b.asset), b.available);
        expected.insert(("H".into(), b.user, b.asset), b.held);
    }
    for v in &audit.venue_balances {
        *per_asset.entry(v.asset).or_default() += v.amount as i128;
        let code = match v.account {
            VenueAccount::Fees => "F",
            VenueAccount::External => "X",
        };
        expected.insert((code.into(), 0, v.asset), v.amount);
    }
    for (asset, sum) in &per_asset {
        if *sum != 0 {
            problem(format!(
                "asset {asset} does not conserve: accounts sum to {sum}"
            ));
        }
    }
    let mut journal: FxHashMap<(String, u64, u32), i64> = FxHashMap::default();
    for s in &audit.journal_sums {
        journal.insert((s.account_code.clone(), s.user, s.asset), s.amount);
    }
    for (key, balance) in &expected {
        let posted = journal.get(key).copied().unwrap_or(0);
        if posted != *balance {
            problem(format!(
                "account {key:?} holds {balance} but its journal sums to {posted}"
            ));
        }
    }
    for (key, posted) in &journal {
        if *posted != 0 && !expected.contains_key(key) {
            problem(format!(
                "journal posts {posted} to {key:?}, which has no balance row"
            ));
        }
    }

    // Holds are backed by open orders, and nothing else.
    let mut holds: FxHashMap<(u64, u32), i64> = FxHashMap::default();
    for o in &audit.open_orders {
        *holds.entry((o.user, o.hold_asset)).or_default() += o.held;
        if let (OrderType::Limit, Some(price), Some(quantity)) = (o.order_type, o.price, o.quantity)
        {
            let remaining = quantity - o.filled_qty;
            if remaining <= 0 {
                problem(format!("open order {} is fully filled", o.id));
            }
            // A resting sell holds its unfilled quantity; a resting buy exactly its limit
            // price times that (price improvement is released at each fill).
            let want = match (o.side, refdata.symbols.get(&o.symbol)) {
                (Side::Sell, _) => Some(remaining),
                (Side::Buy, Some(symbol)) => {
                    Some(refdata.book_spec(symbol).notional(price, remaining))
                }
                (Side::Buy, None) => {
                    problem(format!("order {} is on unknown symbol {}", o.id, o.symbol));
                    None
                }
            };
            if let Some(want) = want.filter(|w| *w != o.held) {
                problem(format!(
                    "{:?} order {} holds {} but its unfilled part needs {}",
                    o.side, o.id, o.held, want
                ));
            }
        }
    }
    for b in &audit.balances {
        let want = holds.get(&(b.user, b.asset)).copied().unwrap_or(0);
        if b.held != want {
            problem(format!(
                "user {} asset {} has {} held but open orders hold {}",
                b.user, b.asset, b.held, want
            ));
        }
    }

    // Fills agree with trades.
    let trades: FxHashMap<u64, (i64, i64)> = audit
        .trade_totals
        .iter()
        .map(|&(o, q, n)| (o, (q, n)))
        .collect();
    for &(order, qty, quote) in &audit.order_fills {
        if trades.get(&order) != Some(&(qty, quote)) {
            problem(format!(
                "order {order} says filled {qty}/{quote}, trades say {:?}",
                trades.get(&order)
            ));
        }
    }
    if trades.len() != audit.order_fills.len() {
        problem(format!(
            "{} orders have trades but {} orders report fills",
            trades.len(),
            audit.order_fills.len()
        ));
    }

    // The engine's books equal the store's open orders.
    let mut books_compared = 0;
    if let Some(books) = books {
        for (symbol, snapshot) in books {
            books_compared += 1;
            let mut want: Vec<RestingOrder> = audit
                .open_orders
                .iter()
                .filter(|o| o.symbol == *symbol)
                .map(|o| RestingOrder {
                    id: o.id,
                    user: o.user,
                    side: o.side,
                    price: o.price.unwrap_or(0),
                    remaining: o.quantity.unwrap_or(0) - o.filled_qty,
                })
                .collect();
            // Priority order: bids high→low, asks low→high, arrival within a level
            // (open orders come sorted by arrival).
            want.sort_by_key(|o| match o.side {
                Side::Buy => (0, -o.price),
                Side::Sell => (1, o.price),
            });
            if snapshot.resting != want {
                problem(format!(
                    "book of symbol {symbol} differs from the store: engine has {} orders, \
                     store has {} open",
                    snapshot.resting.len(),
                    want.len()
                ));
            }
        }
    }

    let total = problems.len();
    problems.truncate(PROBLEMS_MAX);
    if total > PROBLEMS_MAX {
        problems.push(format!("… and {} more", total - PROBLEMS_MAX));
    }
    Report {
        ok: problems.is_empty(),
        problems,
        assets_checked: per_asset.len(),
        accounts_checked: expected.len(),
        open_orders: audit.open_orders.len(),
        books_compared,
    }
}

/// Reconciles a store that no process is serving (engine books are not compared).
pub fn offline(data_dir: &std::path::Path) -> Result<Report, agora_store::StoreError> {
    use agora_store::ReadStore;
    let store = agora_store::sqlite::SqliteStore::open(
        &data_dir.join("agora.db"),
        agora_store::sqlite::Durability::Full,
    )?;
    let mut store = store;
    let refdata = crate::RefData::new(
        agora_store::Store::load_assets(&mut store)?,
        agora_store::Store::load_symbols(&mut store)?,
    );
    let audit = store.reader(1)?.audit()?;
    Ok(check(&audit, &refdata, None))
}
