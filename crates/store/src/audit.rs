//! Reconciliation's reads for every adapter, in portable SQL: [`PortableAuditor`] streams
//! the store to an [`AuditSink`] from one read snapshot ([`ReadDatabase::snapshot`]).
//!
//! Every run is a full run: it reads the whole journal and every trade. Sums are folded in
//! Rust as i128 (the journal keeps its postings as JSON text, and a corrupt ledger must be
//! reported, not overflow a database's `SUM`), in maps that grow with the number of
//! accounts and of traded orders, never with the number of entries or trades: those are
//! streamed. Reads, in the order the sink requires:
//! 1. the journal by id: each entry to the sink, its postings added per account;
//! 2. the open orders in arrival order;
//! 3. the stored balances (users' by key, streamed; the venue's, a few per asset) merged
//!    with the journal sums in key order, each account once;
//! 4. the trades, summed per order; then every order by id with its sums, and last the
//!    orders that trades name but the store does not have.
//!
//! The SQLite adapter has its own auditor (`sqlite::SqliteAuditor`) that keeps its running
//! sums between runs so that a run folds only what is new; both tell a sink the same rows
//! of a full run in the same order. The postings decoding and the account keys below are
//! shared by both.

use crate::queries::OPEN;
use crate::schema::{select_list, ORDERS};
use crate::*;
use agora_core::store::{ReadDatabase, SnapshotReads};
use agora_ledger::{Account, Bucket, Posting};
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::sync::Arc;

/// An account's place in the merge of balances with journal sums: (user, asset, code),
/// the order of the `balances` primary key with the bucket last. Venue accounts have user
/// 0, which no user has.
pub(crate) type AccountKey = (u64, u32, u8);

pub(crate) fn account_key(account: Account, asset: u32) -> AccountKey {
    let (code, user) = account.code();
    (user, asset, code.as_bytes()[0])
}

pub(crate) fn account_of(key: AccountKey) -> Option<Account> {
    Some(match key.2 {
        b'A' => Account::User {
            user: key.0,
            bucket: Bucket::Available,
        },
        b'H' => Account::User {
            user: key.0,
            bucket: Bucket::Held,
        },
        b'F' => Account::Fees,
        b'X' => Account::External,
        _ => return None,
    })
}

/// Decodes stored postings (`Entry::postings_json`: `[["A",user,asset,amount],…]`).
pub(crate) fn decode_postings(text: &str, out: &mut Vec<Posting>) -> Result<(), String> {
    out.clear();
    let raw: Vec<(&str, u64, u32, i64)> =
        serde_json::from_str(text).map_err(|e| format!("postings do not parse: {e}"))?;
    for (code, user, asset, amount) in raw {
        let key = (user, asset, *code.as_bytes().first().unwrap_or(&0));
        let account = match account_of(key) {
            Some(a) if code.len() == 1 && (user == 0) == matches!(code, "F" | "X") => a,
            _ => return Err(format!("unknown account {code:?} of user {user}")),
        };
        out.push(Posting {
            account,
            asset,
            amount,
        });
    }
    Ok(())
}

/// One journal entry read: told to the sink (as an entry, or as a corrupt one when its
/// postings cannot be read, `postings` being the text or why there is none) and its
/// postings added into `sums`. `scratch` is reused between entries.
pub(crate) fn fold_entry(
    id: i64,
    postings: Result<&str, String>,
    scratch: &mut Vec<Posting>,
    sums: &mut BTreeMap<AccountKey, i128>,
    sink: &mut dyn AuditSink,
) {
    match postings.and_then(|text| decode_postings(text, scratch)) {
        Ok(()) => {
            sink.entry(id, scratch);
            for p in scratch.iter() {
                *sums.entry(account_key(p.account, p.asset)).or_default() += p.amount as i128;
            }
        }
        Err(detail) => sink.corrupt_entry(id, &detail),
    }
}

/// Reconciliation's reads over any [`ReadDatabase`]: one snapshot per run, every run full
/// (see the module docs). Runs may overlap; each holds one pooled connection for its
/// duration.
pub struct PortableAuditor {
    db: Arc<dyn ReadDatabase>,
}

impl PortableAuditor {
    pub fn new(db: Arc<dyn ReadDatabase>) -> PortableAuditor {
        PortableAuditor { db }
    }
}

impl AuditStore for PortableAuditor {
    /// Always a full run, whatever `full` asks.
    fn audit(&self, _full: bool, sink: &mut dyn AuditSink) -> StoreResult<AuditCoverage> {
        let mut coverage = AuditCoverage::default();
        self.db.snapshot(&mut |reads| {
            coverage = full_run(reads, sink)?;
            Ok(())
        })?;
        Ok(coverage)
    }
}

fn full_run(reads: &mut dyn SnapshotReads, sink: &mut dyn AuditSink) -> StoreResult<AuditCoverage> {
    // 1. The journal.
    let mut sums: BTreeMap<AccountKey, i128> = BTreeMap::new();
    let mut scratch = Vec::new();
    let mut journal_through = 0;
    reads.query_each(
        "SELECT id, postings FROM journal ORDER BY id",
        &[],
        &mut |r| {
            let id = r.int(0)?;
            journal_through = id;
            let postings = r.text(1).map_err(|_| "postings are not text".to_string());
            fold_entry(id, postings, &mut scratch, &mut sums, sink);
            Ok(())
        },
    )?;

    // 2. Open orders, before any account.
    reads.query_each(
        &format!(
            "SELECT {} FROM orders WHERE {OPEN} ORDER BY accept_seq, id",
            select_list(&ORDERS)
        ),
        &[],
        &mut |r| {
            sink.open_order(&OrderRow::decode(&r)?);
            Ok(())
        },
    )?;

    // 3. Accounts: the venue's (two per asset: few enough to hold), users' streamed.
    let mut venue: Vec<(AccountKey, i64)> = Vec::new();
    reads.query_each(
        "SELECT account, asset_id, amount FROM venue_balances",
        &[],
        &mut |r| {
            let account = match VenueAccount::parse(r.text(0)?)? {
                VenueAccount::Fees => Account::Fees,
                VenueAccount::External => Account::External,
            };
            venue.push((account_key(account, r.get(1)?), r.int(2)?));
            Ok(())
        },
    )?;
    venue.sort_unstable();
    let mut accounts = AccountMerge {
        venue: venue.into_iter().peekable(),
        sums: sums.into_iter().peekable(),
        sink: &mut *sink,
    };
    reads.query_each(
        "SELECT user_id, asset_id, available, held FROM balances ORDER BY user_id, asset_id",
        &[],
        &mut |r| {
            let (user, asset): (u64, u32) = (r.get(0)?, r.get(1)?);
            accounts.stored((user, asset, b'A'), r.int(2)?)?;
            accounts.stored((user, asset, b'H'), r.int(3)?)
        },
    )?;
    accounts.rest_before(None)?;

    // 4. Fills: the trades summed per order, then every order.
    let mut traded: BTreeMap<u64, (i128, i128)> = BTreeMap::new();
    let mut trades_through = 0;
    reads.query_each(
        "SELECT seq, buy_order, sell_order, qty, quote_qty FROM trades",
        &[],
        &mut |r| {
            trades_through = trades_through.max(r.int(0)?);
            let (qty, quote) = (r.int(3)? as i128, r.int(4)? as i128);
            for order in [r.get::<u64>(1)?, r.get::<u64>(2)?] {
                let sum = traded.entry(order).or_default();
                sum.0 += qty;
                sum.1 += quote;
            }
            Ok(())
        },
    )?;
    let mut orders_fill_checked = 0;
    reads.query_each(
        "SELECT id, filled_qty, filled_quote FROM orders ORDER BY id",
        &[],
        &mut |r| {
            let order = r.get::<u64>(0)?;
            sink.fills(&FillAudit {
                order,
                stored: Some((r.int(1)?, r.int(2)?)),
                traded: traded.remove(&order).unwrap_or_default(),
            });
            orders_fill_checked += 1;
            Ok(())
        },
    )?;
    // What is left is named by trades and is not in the store.
    for (order, sums) in traded {
        sink.fills(&FillAudit {
            order,
            stored: None,
            traded: sums,
        });
        orders_fill_checked += 1;
    }

    Ok(AuditCoverage {
        full: true,
        journal_after: 0,
        journal_through,
        trades_after: 0,
        trades_through,
        orders_fill_checked,
    })
}

/// Tells the sink about each account once, in key order: users' stored balances as they
/// are streamed (in key order), merged with the venue's balances and the journal sums.
struct AccountMerge<
    'a,
    V: Iterator<Item = (AccountKey, i64)>,
    S: Iterator<Item = (AccountKey, i128)>,
> {
    venue: Peekable<V>,
    sums: Peekable<S>,
    sink: &'a mut dyn AuditSink,
}

impl<V, S> AccountMerge<'_, V, S>
where
    V: Iterator<Item = (AccountKey, i64)>,
    S: Iterator<Item = (AccountKey, i128)>,
{
    /// A user's stored balance; keys come in increasing order.
    fn stored(&mut self, key: AccountKey, balance: i64) -> StoreResult<()> {
        self.rest_before(Some(key))?;
        let journal = match self.sums.next_if(|s| s.0 == key) {
            Some((_, sum)) => sum,
            None => 0,
        };
        self.tell(key, Some(balance), journal)
    }

    /// Every venue balance and journal sum with a key below `until` (all of them: `None`).
    fn rest_before(&mut self, until: Option<AccountKey>) -> StoreResult<()> {
        let below = |k: &AccountKey| until.is_none_or(|u| *k < u);
        loop {
            let venue = self.venue.peek().map(|v| v.0).filter(below);
            let sum = self.sums.peek().map(|s| s.0).filter(below);
            match (venue, sum) {
                (Some(v), s) if s.is_none_or(|s| v <= s) => {
                    let balance = self.venue.next().map(|v| v.1);
                    let journal = match self.sums.next_if(|s| s.0 == v) {
                        Some((_, sum)) => sum,
                        None => 0,
                    };
                    self.tell(v, balance, journal)?;
                }
                (_, Some(s)) => {
                    let journal = self.sums.next().map_or(0, |s| s.1);
                    self.tell(s, None, journal)?;
                }
                _ => return Ok(()),
            }
        }
    }

    fn tell(&mut self, key: AccountKey, balance: Option<i64>, journal: i128) -> StoreResult<()> {
        let account = account_of(key)
            .ok_or_else(|| StoreError::Corrupt(format!("audit account code {}", key.2)))?;
        self.sink.account(&AccountAudit {
            account,
            asset: key.1,
            balance,
            journal,
        });
        Ok(())
    }
}
