//! The exchange's rows over the core's store port, and the SQLite adapter of that port.
//!
//! - [`model`]: rows as stored (integers in minor units, enums as stable strings) and the
//!   typed [`Changes`] one group commit makes.
//! - [`schema`]: each row's table, encoder and decoder — written once, run by every adapter.
//! - [`queries`]: the typed reads the writer, the API and recovery make, in portable SQL.
//! - [`sqlite`]: the embedded adapter (rusqlite). PostgreSQL and MySQL adapters live in
//!   `agora-sql`.
//!
//! Reconciliation reads through [`AuditStore`], which streams rows to an [`AuditSink`] so
//! that its memory does not grow with the ledger: [`audit::PortableAuditor`] on any adapter
//! (one read snapshot, full runs), `sqlite::SqliteAuditor` on SQLite (incremental runs).

pub mod audit;
pub mod model;
pub mod queries;
pub mod schema;
pub mod sqlite;

pub use agora_core::store::{StoreError, StoreResult};
pub use model::*;

/// The rows reconciliation checks, told one at a time by [`AuditStore::audit`]. The rules
/// (what must hold) live with the implementor (`agora_exchange::reconcile`); the store
/// only reads and sums.
pub trait AuditSink {
    /// A journal entry new to this run, with its postings.
    fn entry(&mut self, id: i64, postings: &[agora_ledger::Posting]);
    /// A journal entry new to this run whose postings cannot be read.
    fn corrupt_entry(&mut self, id: i64, detail: &str);
    /// Every open (NEW or PARTIALLY_FILLED) order, in arrival order, all of them before
    /// the first [`AuditSink::account`].
    fn open_order(&mut self, order: &OrderRow);
    /// Every account with a stored balance or journal postings, once, in key order.
    fn account(&mut self, account: &AccountAudit);
    /// The orders whose fills may have changed since the last run (every order in a full
    /// run), with the sums of their trades.
    fn fills(&mut self, fills: &FillAudit);
}

/// Reconciliation's reads: one consistent snapshot per run, streamed, in bounded memory.
///
/// An implementation may keep state between runs so that a run folds only what is new
/// (journal entries and trades past the previous run's high-water marks). Runs are
/// serialized. With `full`, or when it has no state yet, a run starts from nothing and
/// rechecks everything.
pub trait AuditStore: Send + Sync {
    fn audit(&self, full: bool, sink: &mut dyn AuditSink) -> StoreResult<AuditCoverage>;
}
