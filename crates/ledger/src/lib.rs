//! The ledger's pure rules: amounts as integers in minor units, exact decimal-string
//! conversion, and balanced double-entry journal entries over accounts that hold
//! `available` and `held` funds.
//!
//! Conservation (design.md invariant 1) follows from two rules enforced here: every entry
//! sums to zero per asset ([`Entry::new`] refuses otherwise), and no balance bucket ever goes
//! below zero ([`Balance::apply`] refuses otherwise). Deposits come from, and withdrawals go
//! to, a per-asset `External` account that is the only account allowed to go negative, so
//! `sum(users) + fees + external == 0` for every asset at every commit.

pub mod units;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub type UserId = u64;
pub type AssetId = u32;

/// Which half of a user's balance a posting touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Bucket {
    Available,
    Held,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Account {
    User {
        user: UserId,
        bucket: Bucket,
    },
    /// Fee income of the venue.
    Fees,
    /// The world outside: deposits debit it, withdrawals credit it.
    External,
}

impl Account {
    /// One-letter code used in stored postings: `A`/`H` user available/held, `F` fees,
    /// `X` external. Reconciliation sums stored postings by this code.
    pub fn code(self) -> (&'static str, UserId) {
        match self {
            Account::User {
                user,
                bucket: Bucket::Available,
            } => ("A", user),
            Account::User {
                user,
                bucket: Bucket::Held,
            } => ("H", user),
            Account::Fees => ("F", 0),
            Account::External => ("X", 0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: Account,
    pub asset: AssetId,
    /// Positive credits the account, negative debits it.
    pub amount: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryKind {
    Deposit,
    Withdrawal,
    Hold,
    Release,
    Trade,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Deposit => "DEPOSIT",
            EntryKind::Withdrawal => "WITHDRAWAL",
            EntryKind::Hold => "HOLD",
            EntryKind::Release => "RELEASE",
            EntryKind::Trade => "TRADE",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LedgerError {
    #[error("entry does not balance for asset {asset}: sum is {sum}")]
    Unbalanced { asset: AssetId, sum: i128 },
    #[error("entry has no postings")]
    Empty,
    #[error("insufficient funds: {bucket:?} would become {would_be}")]
    Insufficient { bucket: Bucket, would_be: i128 },
}

/// An immutable, balanced set of postings. Corrections are new entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    pub postings: Vec<Posting>,
}

impl Entry {
    /// Builds an entry, dropping zero postings; refuses one that does not sum to zero per asset.
    pub fn new(kind: EntryKind, mut postings: Vec<Posting>) -> Result<Entry, LedgerError> {
        postings.retain(|p| p.amount != 0);
        if postings.is_empty() {
            return Err(LedgerError::Empty);
        }
        let mut assets: Vec<AssetId> = postings.iter().map(|p| p.asset).collect();
        assets.sort_unstable();
        assets.dedup();
        for asset in assets {
            let sum: i128 = postings
                .iter()
                .filter(|p| p.asset == asset)
                .map(|p| p.amount as i128)
                .sum();
            if sum != 0 {
                return Err(LedgerError::Unbalanced { asset, sum });
            }
        }
        Ok(Entry { kind, postings })
    }

    /// Compact stored form: `[["A",user,asset,amount],...]`, summable with SQL JSON functions.
    pub fn postings_json(&self) -> String {
        let mut out = String::with_capacity(24 * self.postings.len() + 2);
        out.push('[');
        for (i, p) in self.postings.iter().enumerate() {
            let (code, user) = p.account.code();
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("[\"{code}\",{user},{},{}]", p.asset, p.amount));
        }
        out.push(']');
        out
    }

    /// Moves `amount` of `asset` between two of a user's buckets (hold or release).
    pub fn transfer(
        kind: EntryKind,
        user: UserId,
        asset: AssetId,
        from: Bucket,
        to: Bucket,
        amount: i64,
    ) -> Result<Entry, LedgerError> {
        Entry::new(
            kind,
            vec![
                Posting {
                    account: Account::User { user, bucket: from },
                    asset,
                    amount: -amount,
                },
                Posting {
                    account: Account::User { user, bucket: to },
                    asset,
                    amount,
                },
            ],
        )
    }
}

/// One user's holding of one asset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub available: i64,
    pub held: i64,
}

impl Balance {
    /// Applies a posting to this balance; refuses (and changes nothing) if a bucket would go
    /// negative or overflow.
    pub fn apply(&mut self, bucket: Bucket, amount: i64) -> Result<(), LedgerError> {
        let slot = match bucket {
            Bucket::Available => &mut self.available,
            Bucket::Held => &mut self.held,
        };
        let would_be = *slot as i128 + amount as i128;
        if would_be < 0 || would_be > i64::MAX as i128 {
            return Err(LedgerError::Insufficient { bucket, would_be });
        }
        *slot = would_be as i64;
        Ok(())
    }

    pub fn total(&self) -> i128 {
        self.available as i128 + self.held as i128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbalanced_entry_is_refused() {
        let p = |amount| Posting {
            account: Account::Fees,
            asset: 1,
            amount,
        };
        assert_eq!(
            Entry::new(EntryKind::Trade, vec![p(5), p(-4)]),
            Err(LedgerError::Unbalanced { asset: 1, sum: 1 })
        );
        assert!(Entry::new(EntryKind::Trade, vec![p(5), p(-5)]).is_ok());
        assert_eq!(
            Entry::new(EntryKind::Trade, vec![p(0)]),
            Err(LedgerError::Empty)
        );
    }

    #[test]
    fn balance_never_goes_negative() {
        let mut b = Balance {
            available: 10,
            held: 0,
        };
        assert!(b.apply(Bucket::Available, -11).is_err());
        assert_eq!(b.available, 10);
        b.apply(Bucket::Available, -10).unwrap();
        assert!(b.apply(Bucket::Held, i64::MIN).is_err());
        assert_eq!(b, Balance::default());
    }
}
