//! Rows for unit tests: a symbol (base asset 1, quote asset 2) and a resting GTC limit
//! order on it; tests change the fields they are about with struct update syntax.

use agora_engine::{SelfTradePrevention, Side, TimeInForce};
use agora_store::{OrderRow, OrderStatus, OrderType, SymbolRow, SymbolStatus};

/// Symbol 1, trading, tick 1, no fees, no minimum, every quantity allowed.
pub fn symbol(name: &str, lot_size: i64) -> SymbolRow {
    SymbolRow {
        id: 1,
        name: name.into(),
        base_asset: 1,
        quote_asset: 2,
        tick_size: 1,
        lot_size,
        min_notional: 0,
        maker_fee_bps: 0,
        taker_fee_bps: 0,
        status: SymbolStatus::Trading,
        max_quantity: i64::MAX,
        default_stp: SelfTradePrevention::None,
    }
}

/// A new GTC limit order on symbol 1, holding nothing yet; the hold asset is the quote for
/// a buy and the base for a sell.
pub fn limit_order(id: u64, user: u64, side: Side, price: i64, qty: i64) -> OrderRow {
    OrderRow {
        id,
        user,
        symbol: 1,
        side,
        order_type: OrderType::Limit,
        time_in_force: TimeInForce::Gtc,
        price: Some(price),
        quantity: Some(qty),
        quote_quantity: None,
        client_order_id: None,
        stp: SelfTradePrevention::None,
        status: OrderStatus::New,
        filled_qty: 0,
        filled_quote: 0,
        fee_paid: 0,
        hold_asset: if side == Side::Buy { 2 } else { 1 },
        held: 0,
        accept_seq: id as i64,
        cancel_requested: false,
        created_ms: 0,
        updated_ms: 0,
    }
}
