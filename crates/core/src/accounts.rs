//! The accounts working set and ledger posting with holds: every movement of value, in any
//! venue, is a balanced [`Entry`] posted here, which checks it against the balances (an
//! available or held bucket can never go negative), updates the working set, and queues the
//! journal row and the changed balances for the writer's next commit.
//!
//! The working set is authoritative because one writer owns these rows: a balance check is
//! a map lookup, and a miss loads the row once. Rows are written as final values.

use crate::store::{Database, Row, StoreError, StoreResult, Table, WriteBatch};
use agora_ledger::{Account, Balance, Bucket, Entry, LedgerError};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceRow {
    pub user: u64,
    pub asset: u32,
    pub available: i64,
    pub held: i64,
}

/// The venue's own accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VenueAccount {
    /// Income from fees; never negative.
    Fees,
    /// The world outside (deposits come from it, withdrawals go to it); negative by design.
    External,
}

impl VenueAccount {
    pub fn as_str(self) -> &'static str {
        match self {
            VenueAccount::Fees => "FEES",
            VenueAccount::External => "EXTERNAL",
        }
    }

    pub fn parse(text: &str) -> StoreResult<VenueAccount> {
        match text {
            "FEES" => Ok(VenueAccount::Fees),
            "EXTERNAL" => Ok(VenueAccount::External),
            other => Err(StoreError::Corrupt(format!(
                "{other:?} is not a venue account"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VenueBalanceRow {
    pub account: VenueAccount,
    pub asset: u32,
    pub amount: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRow {
    pub id: i64,
    pub kind: &'static str,
    pub ref_id: Option<i64>,
    /// JSON array of postings.
    pub postings: String,
    pub created_ms: i64,
}

pub static USERS: Table = Table {
    name: "users",
    columns: &["id", "name", "created_ms"],
    key_len: 1,
    update: &[],
};

pub static ASSETS: Table = Table {
    name: "assets",
    columns: &["id", "code", "scale"],
    key_len: 1,
    update: &[],
};

pub static BALANCES: Table = Table {
    name: "balances",
    columns: &["user_id", "asset_id", "available", "held"],
    key_len: 2,
    update: &["available", "held"],
};

pub static VENUE_BALANCES: Table = Table {
    name: "venue_balances",
    columns: &["account", "asset_id", "amount"],
    key_len: 2,
    update: &["amount"],
};

pub static JOURNAL: Table = Table {
    name: "journal",
    columns: &["id", "kind", "ref_id", "postings", "created_ms"],
    key_len: 1,
    update: &[],
};

impl BalanceRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &BALANCES,
            [
                self.user.into(),
                self.asset.into(),
                self.available.into(),
                self.held.into(),
            ],
        );
    }

    pub fn decode(r: &Row) -> StoreResult<BalanceRow> {
        Ok(BalanceRow {
            user: r.get(0)?,
            asset: r.get(1)?,
            available: r.int(2)?,
            held: r.int(3)?,
        })
    }
}

impl VenueBalanceRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &VENUE_BALANCES,
            [
                self.account.as_str().into(),
                self.asset.into(),
                self.amount.into(),
            ],
        );
    }

    pub fn decode(r: &Row) -> StoreResult<VenueBalanceRow> {
        Ok(VenueBalanceRow {
            account: VenueAccount::parse(r.text(0)?)?,
            asset: r.get(1)?,
            amount: r.int(2)?,
        })
    }
}

impl JournalRow {
    pub fn put(self, b: &mut WriteBatch) {
        b.put(
            &JOURNAL,
            [
                self.id.into(),
                self.kind.into(),
                self.ref_id.into(),
                self.postings.into(),
                self.created_ms.into(),
            ],
        );
    }
}

/// Why a posting was refused.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The entry would break a balance rule (insufficient funds, overflow); nothing changed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A balance could not be loaded; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The writer's accounts: balances (cached), the venue's accounts (all in memory), and the
/// journal rows and balance changes waiting for the next commit.
pub struct Accounts {
    balances: FxHashMap<(u64, u32), Balance>,
    venue: FxHashMap<(VenueAccount, u32), i64>,
    dirty_balances: FxHashSet<(u64, u32)>,
    dirty_venue: FxHashSet<(VenueAccount, u32)>,
    journal: Vec<JournalRow>,
    last_journal_id: i64,
    /// Balances kept in memory before the cache is dropped and refilled lazily.
    cache_max: usize,
}

impl Accounts {
    /// Loads the venue's accounts and the journal's last id.
    pub fn load(db: &mut dyn Database, cache_max: usize) -> StoreResult<Accounts> {
        let venue = db
            .query("SELECT account, asset_id, amount FROM venue_balances", &[])?
            .iter()
            .map(|r| VenueBalanceRow::decode(r).map(|v| ((v.account, v.asset), v.amount)))
            .collect::<StoreResult<_>>()?;
        let last_journal_id = db
            .query_one("SELECT COALESCE(MAX(id), 0) FROM journal", &[])?
            .map_or(Ok(0), |r| r.int(0))?;
        Ok(Accounts {
            balances: FxHashMap::default(),
            venue,
            dirty_balances: FxHashSet::default(),
            dirty_venue: FxHashSet::default(),
            journal: Vec::new(),
            last_journal_id,
            cache_max,
        })
    }

    /// A user's balance of one asset (zero when the user never held it).
    pub fn balance(
        &mut self,
        db: &mut dyn Database,
        user: u64,
        asset: u32,
    ) -> StoreResult<Balance> {
        if let Some(b) = self.balances.get(&(user, asset)) {
            return Ok(*b);
        }
        let b = db
            .query_one(
                "SELECT user_id, asset_id, available, held FROM balances \
                 WHERE user_id = ? AND asset_id = ?",
                &[user.into(), asset.into()],
            )?
            .map_or(Ok(Balance::default()), |r| {
                BalanceRow::decode(&r).map(|b| Balance {
                    available: b.available,
                    held: b.held,
                })
            })?;
        self.balances.insert((user, asset), b);
        Ok(b)
    }

    /// A venue account's balance.
    pub fn venue_balance(&self, account: VenueAccount, asset: u32) -> i64 {
        self.venue.get(&(account, asset)).copied().unwrap_or(0)
    }

    /// Applies a balanced entry: all postings or none. Returns the journal id it got.
    pub fn post(
        &mut self,
        db: &mut dyn Database,
        entry: Entry,
        ref_id: Option<i64>,
        now_ms: i64,
    ) -> Result<i64, PostError> {
        let mut users: Vec<((u64, u32), Balance)> = Vec::with_capacity(entry.postings.len());
        let mut venue: Vec<((VenueAccount, u32), i64)> = Vec::new();
        for p in &entry.postings {
            match p.account {
                Account::User { user, bucket } => {
                    let key = (user, p.asset);
                    let i = match users.iter().position(|(k, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            users.push((key, self.balance(db, user, p.asset)?));
                            users.len() - 1
                        }
                    };
                    users[i].1.apply(bucket, p.amount)?;
                }
                Account::Fees | Account::External => {
                    let key = match p.account {
                        Account::Fees => (VenueAccount::Fees, p.asset),
                        _ => (VenueAccount::External, p.asset),
                    };
                    let i = match venue.iter().position(|(k, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            venue.push((key, self.venue_balance(key.0, key.1)));
                            venue.len() - 1
                        }
                    };
                    let v = venue[i].1 as i128 + p.amount as i128;
                    // Fee income never goes negative; the external account mirrors deposits
                    // and is negative by design.
                    if (key.0 == VenueAccount::Fees && v < 0) || v.abs() > i64::MAX as i128 {
                        return Err(LedgerError::Insufficient {
                            bucket: Bucket::Available,
                            would_be: v,
                        }
                        .into());
                    }
                    venue[i].1 = v as i64;
                }
            }
        }
        for (key, b) in users {
            self.balances.insert(key, b);
            self.dirty_balances.insert(key);
        }
        for (key, v) in venue {
            self.venue.insert(key, v);
            self.dirty_venue.insert(key);
        }
        self.last_journal_id += 1;
        self.journal.push(JournalRow {
            id: self.last_journal_id,
            kind: entry.kind.as_str(),
            ref_id,
            postings: entry.postings_json(),
            created_ms: now_ms,
        });
        Ok(self.last_journal_id)
    }

    /// Whether anything waits to be written.
    pub fn is_dirty(&self) -> bool {
        !self.journal.is_empty() || !self.dirty_balances.is_empty() || !self.dirty_venue.is_empty()
    }

    /// Writes what changed since the last flush into `batch`; returns the balance rows
    /// written (for read models that follow commits).
    pub fn flush(&mut self, batch: &mut WriteBatch) -> Vec<BalanceRow> {
        let balances: Vec<BalanceRow> = self
            .dirty_balances
            .drain()
            .map(|key| {
                let b = self.balances[&key];
                BalanceRow {
                    user: key.0,
                    asset: key.1,
                    available: b.available,
                    held: b.held,
                }
            })
            .collect();
        balances.iter().for_each(|b| b.put(batch));
        for key in self.dirty_venue.drain() {
            VenueBalanceRow {
                account: key.0,
                asset: key.1,
                amount: self.venue[&key],
            }
            .put(batch);
        }
        for row in self.journal.drain(..) {
            row.put(batch);
        }
        balances
    }

    /// After a commit: bounds the cache (it refills lazily from the store).
    pub fn committed(&mut self) {
        if self.balances.len() > self.cache_max && self.dirty_balances.is_empty() {
            self.balances.clear();
        }
    }
}
