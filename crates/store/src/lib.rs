//! The store port: what the exchange needs from durable state, and nothing about how.
//!
//! All writes go through [`Store::commit`], which applies one [`WriteBatch`] atomically: the
//! sequencer gathers many requests and engine outputs into a batch and commits them in one
//! transaction (group commit). That single entry point is why holds, orders and their outbox
//! events can never be half-written, and why a consumer's cursor always commits with the
//! effects it covers (design.md invariant 4).
//!
//! Reads for the API go through [`ReadStore`], which may run on other threads and
//! connections; it sees only committed state. Reconciliation reads through [`AuditStore`],
//! which streams rows to an [`AuditSink`] so that its memory does not grow with the ledger.

pub mod model;
pub mod sqlite;

pub use model::*;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("migration: {0}")]
    Migration(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// State the single writer loads and commits. Implementations are used from one thread.
pub trait Store: Send {
    /// Applies every row of `batch` in one transaction, or none of them.
    fn commit(&mut self, batch: &WriteBatch) -> StoreResult<()>;

    fn load_assets(&mut self) -> StoreResult<Vec<AssetRow>>;
    fn load_symbols(&mut self) -> StoreResult<Vec<SymbolRow>>;
    fn load_users(&mut self) -> StoreResult<Vec<UserRow>>;
    /// NEW and PARTIALLY_FILLED orders, in `accept_seq` (arrival) order.
    fn load_open_orders(&mut self) -> StoreResult<Vec<OrderRow>>;
    /// NEW and PARTIALLY_FILLED orders of one symbol with `accept_seq <= accept_seq_max`,
    /// in arrival order: the book the engine had after consuming that input.
    fn load_book_orders(&mut self, symbol: u32, accept_seq_max: i64) -> StoreResult<Vec<OrderRow>>;
    fn load_cursors(&mut self) -> StoreResult<Vec<CursorRow>>;
    /// Every book input at or below this outbox seq is settled (0 when none is).
    fn load_relay_position(&mut self) -> StoreResult<i64>;
    fn load_venue_balances(&mut self) -> StoreResult<Vec<VenueBalanceRow>>;
    fn load_balance(&mut self, user: u64, asset: u32) -> StoreResult<Option<BalanceRow>>;
    fn find_order_by_client_id(
        &mut self,
        user: u64,
        client_id: &str,
    ) -> StoreResult<Option<OrderRow>>;
    fn find_order(&mut self, id: u64) -> StoreResult<Option<OrderRow>>;
    /// The largest ids in use, so the writer continues the sequences after a restart.
    fn load_counters(&mut self) -> StoreResult<Counters>;
    /// The most recent candles per (symbol, interval), at most `per_series` each, oldest first.
    fn load_recent_candles(&mut self, per_series: usize) -> StoreResult<Vec<CandleRow>>;
    /// The most recent trades per symbol, at most `per_symbol` each, oldest first.
    fn load_recent_trades(&mut self, per_symbol: usize) -> StoreResult<Vec<TradeRow>>;
    /// Outbox rows with `seq > after`, oldest first, at most `limit`.
    fn outbox_after(&mut self, after: i64, limit: usize) -> StoreResult<Vec<OutboxRow>>;
}

/// Queries for the API and for reconciliation; committed state only.
pub trait ReadStore: Send + Sync {
    fn order(&self, id: u64) -> StoreResult<Option<OrderRow>>;
    fn orders(&self, query: &OrderQuery) -> StoreResult<Vec<OrderRow>>;
    fn balances(&self, user: u64) -> StoreResult<Vec<BalanceRow>>;
    /// The user's fills, newest first: both sides of a self-trade. `before_fill_id` pages
    /// (only fills with a smaller `fill_id`).
    fn fills(
        &self,
        user: u64,
        symbol: Option<u32>,
        before_fill_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<FillRow>>;
    fn user_by_name(&self, name: &str) -> StoreResult<Option<UserRow>>;
    /// Stored candles of one series with `start_ms <= open_ms <= end_ms`, oldest first, at
    /// most `limit` (the most recent ones), plus the last candle before `start_ms` (first in
    /// the list, if any) so gaps at the start can be filled.
    fn candles(
        &self,
        symbol: u32,
        interval: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<CandleRow>>;
}

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
