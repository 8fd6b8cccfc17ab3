//! The rows' tables: how each row type is written ([`agora_core::Table`] + an encoder) and
//! read back (a decoder over [`agora_core::Row`]), once for every adapter, and the
//! migrations of each component in each dialect.

use crate::model::*;
use agora_core::accounts::{ASSETS, USERS};
use agora_core::store::{Row, StoreError, StoreResult, Table, WriteBatch};
use agora_engine::{SelfTradePrevention, Side, TimeInForce};

/// Stable text names of unit enums, both ways, without allocating on the write path.
macro_rules! text_enum {
    ($ty:ty, $text:ident, $parse:ident { $($variant:path => $name:literal),+ $(,)? }) => {
        pub fn $text(v: $ty) -> &'static str {
            match v { $($variant => $name),+ }
        }
        pub fn $parse(text: &str) -> StoreResult<$ty> {
            match text {
                $($name => Ok($variant),)+
                other => Err(StoreError::Corrupt(format!(
                    "{other:?} is not a {}", stringify!($ty)
                ))),
            }
        }
    };
}

text_enum!(Side, side_text, side_parse { Side::Buy => "BUY", Side::Sell => "SELL" });
text_enum!(OrderType, order_type_text, order_type_parse {
    OrderType::Limit => "LIMIT", OrderType::Market => "MARKET",
});
text_enum!(TimeInForce, tif_text, tif_parse {
    TimeInForce::Gtc => "GTC", TimeInForce::Ioc => "IOC", TimeInForce::Fok => "FOK",
});
text_enum!(OrderStatus, status_text, status_parse {
    OrderStatus::New => "NEW",
    OrderStatus::PartiallyFilled => "PARTIALLY_FILLED",
    OrderStatus::Filled => "FILLED",
    OrderStatus::Canceled => "CANCELED",
    OrderStatus::Rejected => "REJECTED",
    OrderStatus::Expired => "EXPIRED",
    OrderStatus::ExpiredInMatch => "EXPIRED_IN_MATCH",
});
text_enum!(SelfTradePrevention, stp_text, stp_parse {
    SelfTradePrevention::None => "NONE",
    SelfTradePrevention::ExpireTaker => "EXPIRE_TAKER",
    SelfTradePrevention::ExpireMaker => "EXPIRE_MAKER",
    SelfTradePrevention::ExpireBoth => "EXPIRE_BOTH",
});
text_enum!(SymbolStatus, symbol_status_text, symbol_status_parse {
    SymbolStatus::Trading => "TRADING", SymbolStatus::Halted => "HALTED",
});

/// Stored interval texts, interned so rows can carry `&'static str`.
pub const INTERVALS: [&str; 6] = ["1m", "5m", "15m", "1h", "4h", "1d"];

pub fn interval_parse(text: &str) -> StoreResult<&'static str> {
    INTERVALS
        .iter()
        .copied()
        .find(|i| *i == text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown interval {text:?}")))
}

// ---- the exchange's tables ---------------------------------------------------------------

pub static SYMBOLS: Table = Table {
    name: "symbols",
    columns: &[
        "id",
        "name",
        "base_asset",
        "quote_asset",
        "tick_size",
        "lot_size",
        "min_notional",
        "maker_fee_bps",
        "taker_fee_bps",
        "status",
        "max_quantity",
        "default_stp",
    ],
    key_len: 1,
    update: &["status", "default_stp"],
};

pub static ORDERS: Table = Table {
    name: "orders",
    columns: &[
        "id",
        "user_id",
        "symbol_id",
        "side",
        "type",
        "time_in_force",
        "price",
        "quantity",
        "quote_quantity",
        "client_order_id",
        "status",
        "filled_qty",
        "filled_quote",
        "fee_paid",
        "hold_asset",
        "held",
        "accept_seq",
        "cancel_requested",
        "created_ms",
        "updated_ms",
        "stp",
    ],
    key_len: 1,
    update: &[
        "status",
        "filled_qty",
        "filled_quote",
        "fee_paid",
        "held",
        "cancel_requested",
        "updated_ms",
    ],
};

pub static TRADES: Table = Table {
    name: "trades",
    columns: &[
        "seq",
        "symbol_id",
        "trade_id",
        "price",
        "qty",
        "quote_qty",
        "buy_order",
        "sell_order",
        "buyer",
        "seller",
        "taker_side",
        "buyer_fee",
        "seller_fee",
        "created_ms",
    ],
    key_len: 1,
    update: &[],
};

pub static ENGINE_CURSORS: Table = Table {
    name: "engine_cursors",
    columns: &["symbol_id", "input_seq", "next_trade_id"],
    key_len: 1,
    update: &["input_seq", "next_trade_id"],
};

pub static CANDLES: Table = Table {
    name: "candles",
    columns: &[
        "symbol_id",
        "interval",
        "open_ms",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "quote_volume",
        "trades",
    ],
    key_len: 3,
    update: &["high", "low", "close", "volume", "quote_volume", "trades"],
};

/// The columns of a table as a `SELECT` list (quoted: some are keywords somewhere).
pub fn select_list(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- encoders and decoders ---------------------------------------------------------------

impl UserRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &USERS,
            [
                self.id.into(),
                self.name.clone().into(),
                self.created_ms.into(),
            ],
        );
    }
    pub fn decode(r: &Row) -> StoreResult<UserRow> {
        Ok(UserRow {
            id: r.get(0)?,
            name: r.text(1)?.to_string(),
            created_ms: r.int(2)?,
        })
    }
}

impl AssetRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &ASSETS,
            [self.id.into(), self.code.clone().into(), self.scale.into()],
        );
    }
    pub fn decode(r: &Row) -> StoreResult<AssetRow> {
        Ok(AssetRow {
            id: r.get(0)?,
            code: r.text(1)?.to_string(),
            scale: r.get(2)?,
        })
    }
}

impl SymbolRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &SYMBOLS,
            [
                self.id.into(),
                self.name.clone().into(),
                self.base_asset.into(),
                self.quote_asset.into(),
                self.tick_size.into(),
                self.lot_size.into(),
                self.min_notional.into(),
                self.maker_fee_bps.into(),
                self.taker_fee_bps.into(),
                symbol_status_text(self.status).into(),
                self.max_quantity.into(),
                stp_text(self.default_stp).into(),
            ],
        );
    }
    pub fn decode(r: &Row) -> StoreResult<SymbolRow> {
        Ok(SymbolRow {
            id: r.get(0)?,
            name: r.text(1)?.to_string(),
            base_asset: r.get(2)?,
            quote_asset: r.get(3)?,
            tick_size: r.int(4)?,
            lot_size: r.int(5)?,
            min_notional: r.int(6)?,
            maker_fee_bps: r.get(7)?,
            taker_fee_bps: r.get(8)?,
            status: symbol_status_parse(r.text(9)?)?,
            max_quantity: r.int(10)?,
            default_stp: stp_parse(r.text(11)?)?,
        })
    }
}

impl OrderRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &ORDERS,
            [
                self.id.into(),
                self.user.into(),
                self.symbol.into(),
                side_text(self.side).into(),
                order_type_text(self.order_type).into(),
                tif_text(self.time_in_force).into(),
                self.price.into(),
                self.quantity.into(),
                self.quote_quantity.into(),
                self.client_order_id.clone().into(),
                status_text(self.status).into(),
                self.filled_qty.into(),
                self.filled_quote.into(),
                self.fee_paid.into(),
                self.hold_asset.into(),
                self.held.into(),
                self.accept_seq.into(),
                self.cancel_requested.into(),
                self.created_ms.into(),
                self.updated_ms.into(),
                stp_text(self.stp).into(),
            ],
        );
    }
    pub fn decode(r: &Row) -> StoreResult<OrderRow> {
        Ok(OrderRow {
            id: r.get(0)?,
            user: r.get(1)?,
            symbol: r.get(2)?,
            side: side_parse(r.text(3)?)?,
            order_type: order_type_parse(r.text(4)?)?,
            time_in_force: tif_parse(r.text(5)?)?,
            price: r.opt_int(6)?,
            quantity: r.opt_int(7)?,
            quote_quantity: r.opt_int(8)?,
            client_order_id: r.opt_text(9)?.map(str::to_string),
            status: status_parse(r.text(10)?)?,
            filled_qty: r.int(11)?,
            filled_quote: r.int(12)?,
            fee_paid: r.int(13)?,
            hold_asset: r.get(14)?,
            held: r.int(15)?,
            accept_seq: r.int(16)?,
            cancel_requested: r.bool(17)?,
            created_ms: r.int(18)?,
            updated_ms: r.int(19)?,
            stp: stp_parse(r.text(20)?)?,
        })
    }
}

impl TradeRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &TRADES,
            [
                self.seq.into(),
                self.symbol.into(),
                self.trade_id.into(),
                self.price.into(),
                self.qty.into(),
                self.quote_qty.into(),
                self.buy_order.into(),
                self.sell_order.into(),
                self.buyer.into(),
                self.seller.into(),
                side_text(self.taker_side).into(),
                self.buyer_fee.into(),
                self.seller_fee.into(),
                self.created_ms.into(),
            ],
        );
    }
    pub fn decode(r: &Row) -> StoreResult<TradeRow> {
        Ok(TradeRow {
            seq: r.int(0)?,
            symbol: r.get(1)?,
            trade_id: r.get(2)?,
            price: r.int(3)?,
            qty: r.int(4)?,
            quote_qty: r.int(5)?,
            buy_order: r.get(6)?,
            sell_order: r.get(7)?,
            buyer: r.get(8)?,
            seller: r.get(9)?,
            taker_side: side_parse(r.text(10)?)?,
            buyer_fee: r.int(11)?,
            seller_fee: r.int(12)?,
            created_ms: r.int(13)?,
        })
    }
}

impl CursorRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &ENGINE_CURSORS,
            [
                self.symbol.into(),
                self.input_seq.into(),
                self.next_trade_id.into(),
            ],
        );
    }
    pub fn decode(r: &Row) -> StoreResult<CursorRow> {
        Ok(CursorRow {
            symbol: r.get(0)?,
            input_seq: r.int(1)?,
            next_trade_id: r.get(2)?,
        })
    }
}

impl CandleRow {
    pub fn put(&self, b: &mut WriteBatch) {
        b.put(
            &CANDLES,
            [
                self.symbol.into(),
                self.interval.into(),
                self.open_ms.into(),
                self.open.into(),
                self.high.into(),
                self.low.into(),
                self.close.into(),
                self.volume.into(),
                self.quote_volume.into(),
                self.trades.into(),
            ],
        );
    }
    pub fn decode(r: &Row) -> StoreResult<CandleRow> {
        Ok(CandleRow {
            symbol: r.get(0)?,
            interval: interval_parse(r.text(1)?)?,
            open_ms: r.int(2)?,
            open: r.int(3)?,
            high: r.int(4)?,
            low: r.int(5)?,
            close: r.int(6)?,
            volume: r.int(7)?,
            quote_volume: r.int(8)?,
            trades: r.get(9)?,
        })
    }
}

impl Changes {
    /// Encodes every change into `b`, in an order that satisfies the schema's references
    /// (assets before the symbols that trade them).
    pub fn write_to(&self, b: &mut WriteBatch) {
        self.users.iter().for_each(|r| r.put(b));
        self.assets.iter().for_each(|r| r.put(b));
        self.symbols.iter().for_each(|r| r.put(b));
        self.orders.iter().for_each(|r| r.put(b));
        self.trades.iter().for_each(|r| r.put(b));
        self.cursors.iter().for_each(|r| r.put(b));
        self.candles.iter().for_each(|r| r.put(b));
    }
}

// ---- migrations --------------------------------------------------------------------------

/// The exchange's schema: symbols, orders, trades, engine cursors, candles. Applied as
/// component `exchange`, after the core's (`agora_core::MIGRATIONS`).
pub const EXCHANGE_MIGRATIONS: &[agora_core::Migration] = &[
    agora_core::Migration {
        version: 1,
        sqlite: include_str!("../migrations/sqlite/0001_exchange.sql"),
        // The server dialects start from the exchange's schema as it is after version 4.
        postgres: include_str!("../migrations/postgres/0001_exchange.sql"),
        mysql: include_str!("../migrations/mysql/0001_exchange.sql"),
    },
    agora_core::Migration {
        version: 2,
        sqlite: include_str!("../migrations/sqlite/0002_relay_position.sql"),
        postgres: "SELECT 1",
        mysql: "SELECT 1",
    },
    agora_core::Migration {
        version: 3,
        sqlite: include_str!("../migrations/sqlite/0003_candles.sql"),
        postgres: "SELECT 1",
        mysql: "SELECT 1",
    },
    agora_core::Migration {
        version: 4,
        sqlite: include_str!("../migrations/sqlite/0004_order_limits_and_stp.sql"),
        postgres: "SELECT 1",
        mysql: "SELECT 1",
    },
];

/// Applies the core's and the exchange's migrations, in that order.
pub fn migrate(db: &mut dyn agora_core::Database) -> StoreResult<()> {
    db.migrate("core", agora_core::MIGRATIONS)?;
    db.migrate("exchange", EXCHANGE_MIGRATIONS)
}
