//! Rows as the store keeps them: integers in minor units, enums as stable strings.

use agora_engine::{SelfTradePrevention, Side, TimeInForce};
use serde::{Deserialize, Serialize};

pub use agora_core::accounts::{BalanceRow, JournalRow, VenueAccount, VenueBalanceRow};
pub use agora_core::outbox::OutboxRow;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetRow {
    pub id: u32,
    pub code: String,
    pub scale: u32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SymbolStatus {
    Trading,
    Halted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolRow {
    pub id: u32,
    pub name: String,
    pub base_asset: u32,
    pub quote_asset: u32,
    pub tick_size: i64,
    pub lot_size: i64,
    pub min_notional: i64,
    pub maker_fee_bps: u32,
    pub taker_fee_bps: u32,
    pub status: SymbolStatus,
    /// Largest quantity of one order, base minor units.
    pub max_quantity: i64,
    /// Self-trade prevention of orders that do not choose a mode.
    pub default_stp: SelfTradePrevention,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub id: u64,
    pub name: String,
    pub created_ms: i64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderType {
    Limit,
    Market,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    New,
    PartiallyFilled,
    Filled,
    Canceled,
    Rejected,
    Expired,
    /// Expired by self-trade prevention (Binance's name).
    ExpiredInMatch,
}

impl OrderStatus {
    pub fn is_open(self) -> bool {
        matches!(self, OrderStatus::New | OrderStatus::PartiallyFilled)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRow {
    pub id: u64,
    pub user: u64,
    pub symbol: u32,
    pub side: Side,
    pub order_type: OrderType,
    pub time_in_force: TimeInForce,
    pub price: Option<i64>,
    pub quantity: Option<i64>,
    pub quote_quantity: Option<i64>,
    pub client_order_id: Option<String>,
    pub stp: SelfTradePrevention,
    pub status: OrderStatus,
    pub filled_qty: i64,
    pub filled_quote: i64,
    pub fee_paid: i64,
    /// The asset the hold is in (quote for buys, base for sells).
    pub hold_asset: u32,
    /// What is still held for this order.
    pub held: i64,
    /// Sequence of the OrderAccepted outbox event: the order's place in the symbol's log.
    pub accept_seq: i64,
    pub cancel_requested: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRow {
    pub seq: i64,
    pub symbol: u32,
    pub trade_id: u64,
    pub price: i64,
    pub qty: i64,
    pub quote_qty: i64,
    pub buy_order: u64,
    pub sell_order: u64,
    pub buyer: u64,
    pub seller: u64,
    pub taker_side: Side,
    pub buyer_fee: i64,
    pub seller_fee: i64,
    pub created_ms: i64,
}

/// One side of a trade, as the user on that side sees it: a self-trade (the same user on
/// both sides) is two fills. `fill_id` orders a user's fills and pages them:
/// `2 × trade seq`, plus 1 for the sell side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillRow {
    pub fill_id: i64,
    pub side: Side,
    pub trade: TradeRow,
}

impl FillRow {
    pub fn new(trade: TradeRow, side: Side) -> FillRow {
        let fill_id = trade.seq * 2 + (side == Side::Sell) as i64;
        FillRow {
            fill_id,
            side,
            trade,
        }
    }
}

/// One candle as stored; `interval` is its text form ("1m", "5m", …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandleRow {
    pub symbol: u32,
    pub interval: &'static str,
    pub open_ms: i64,
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub close: i64,
    pub volume: i64,
    pub quote_volume: i64,
    pub trades: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CursorRow {
    pub symbol: u32,
    pub input_seq: i64,
    pub next_trade_id: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub max_order_id: u64,
    pub max_trade_seq: i64,
    pub max_user_id: u64,
    pub max_asset_id: u32,
    pub max_symbol_id: u32,
}

/// Everything one group commit changes, as typed rows (encoded into the store port's batch by
/// [`Changes::write_to`]). Rows are final values (upserts), so a batch that touched a balance
/// ten times writes it once.
#[derive(Debug, Default)]
pub struct Changes {
    pub users: Vec<UserRow>,
    pub assets: Vec<AssetRow>,
    pub symbols: Vec<SymbolRow>,
    pub orders: Vec<OrderRow>,
    pub trades: Vec<TradeRow>,
    pub cursors: Vec<CursorRow>,
    pub candles: Vec<CandleRow>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.assets.is_empty()
            && self.symbols.is_empty()
            && self.orders.is_empty()
            && self.trades.is_empty()
            && self.cursors.is_empty()
            && self.candles.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct OrderQuery {
    pub user: u64,
    pub symbol: Option<u32>,
    pub status: Option<OrderStatus>,
    /// Only orders with a smaller id (pagination cursor, newest first).
    pub before_id: Option<u64>,
    pub limit: usize,
}

/// One account as reconciliation sees it: what the store says it holds, and what the
/// journal says it must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountAudit {
    pub account: agora_ledger::Account,
    pub asset: u32,
    /// The stored balance (a bucket of a `balances` row, or a venue balance); `None` when
    /// the store has no row for the account.
    pub balance: Option<i64>,
    /// The sum of every journal posting to the account (0 when there is none). Wider than a
    /// balance: on a corrupt ledger the sum may leave the i64 range.
    pub journal: i128,
}

/// One order's fills as stored, next to the sums of the trades that name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillAudit {
    pub order: u64,
    /// `(filled_qty, filled_quote)` of the order row; `None` when a trade names an order
    /// the store does not have.
    pub stored: Option<(i64, i64)>,
    /// Sums of `qty` and `quote_qty` over the trades on either side of which it is.
    pub traded: (i128, i128),
}

/// What one audit run covered: journal entries with `journal_after < id <=
/// journal_through` and trades with `trades_after < seq <= trades_through` were folded
/// and checked in this run (a full run starts from 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditCoverage {
    pub full: bool,
    pub journal_after: i64,
    pub journal_through: i64,
    pub trades_after: i64,
    pub trades_through: i64,
    /// Orders whose fills were compared with their trades in this run.
    pub orders_fill_checked: u64,
}
