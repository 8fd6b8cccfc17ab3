//! Reference data (assets, symbols) and the pure validation of what users send: decimal
//! strings are turned into minor units exactly, checked against tick, lot, minimum notional,
//! scale and i64 range, and the hold an order needs is computed. Nothing here does IO.

use crate::error::{ExchangeError, ExchangeResult};
use agora_engine::{BookSpec, OrderKind, SelfTradePrevention, Side, TimeInForce};
use agora_ledger::units::{self, DecimalError};
use agora_store::{AssetRow, OrderType, SymbolRow, SymbolStatus};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// A unit enum's API name (`OrderStatus::Filled` → `FILLED`), for messages.
pub fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Longest accepted client order id (Binance allows 36; we allow a little more).
pub const CLIENT_ORDER_ID_LEN_MAX: usize = 64;
pub const NAME_LEN_MAX: usize = 32;
/// Fees above 10% are certainly a typo.
pub const FEE_BPS_MAX: u32 = 1_000;
/// Open orders one user may have on one symbol (Binance's MAX_NUM_ORDERS is 200); bounds
/// the books and the sequencer's open-order set by a rule users can see.
pub const OPEN_ORDERS_PER_USER_SYMBOL_MAX: u32 = 1_000;

/// The largest `max_quantity` a symbol may have for lot `lot_size`, and its default: the
/// largest multiple of the lot that fits an i64. One order is bounded by the symbol's
/// `max_quantity` and one user by `OPEN_ORDERS_PER_USER_SYMBOL_MAX` open orders per symbol;
/// what many orders rest at one price is summed wide (i128) by the engine and the depth
/// model, so no total can overflow (a buy's quantity is bounded by its quote hold, not by the
/// base asset's supply, so such totals can exceed an i64).
pub fn max_quantity_cap(lot_size: i64) -> i64 {
    i64::MAX - i64::MAX % lot_size
}

/// Assets and symbols, indexed. Replaced wholesale (copy-on-write) when one is added.
#[derive(Clone, Debug, Default)]
pub struct RefData {
    pub assets: FxHashMap<u32, AssetRow>,
    pub asset_by_code: FxHashMap<String, u32>,
    pub symbols: FxHashMap<u32, SymbolRow>,
    pub symbol_by_name: FxHashMap<String, u32>,
}

impl RefData {
    pub fn new(assets: Vec<AssetRow>, symbols: Vec<SymbolRow>) -> RefData {
        let mut r = RefData::default();
        assets.into_iter().for_each(|a| r.add_asset(a));
        symbols.into_iter().for_each(|s| r.add_symbol(s));
        r
    }

    pub fn add_asset(&mut self, a: AssetRow) {
        self.asset_by_code.insert(a.code.clone(), a.id);
        self.assets.insert(a.id, a);
    }

    pub fn add_symbol(&mut self, s: SymbolRow) {
        self.symbol_by_name.insert(s.name.clone(), s.id);
        self.symbols.insert(s.id, s);
    }

    pub fn asset(&self, id: u32) -> &AssetRow {
        &self.assets[&id]
    }

    pub fn asset_by_code(&self, code: &str) -> ExchangeResult<&AssetRow> {
        self.asset_by_code
            .get(code)
            .map(|id| &self.assets[id])
            .ok_or_else(|| ExchangeError::invalid("UNKNOWN_ASSET", format!("no asset {code:?}")))
    }

    pub fn symbol_by_name(&self, name: &str) -> ExchangeResult<&SymbolRow> {
        self.symbol_by_name
            .get(name)
            .map(|id| &self.symbols[id])
            .ok_or_else(|| ExchangeError::invalid("UNKNOWN_SYMBOL", format!("no symbol {name:?}")))
    }

    /// The engine's view of a symbol.
    pub fn book_spec(&self, symbol: &SymbolRow) -> BookSpec {
        BookSpec {
            base_unit: units::unit(self.asset(symbol.base_asset).scale),
            lot_size: symbol.lot_size,
        }
    }

    pub fn base_scale(&self, symbol: &SymbolRow) -> u32 {
        self.asset(symbol.base_asset).scale
    }

    pub fn quote_scale(&self, symbol: &SymbolRow) -> u32 {
        self.asset(symbol.quote_asset).scale
    }
}

fn decimal(field: &'static str, text: &str, scale: u32) -> ExchangeResult<i64> {
    units::parse_non_negative(text, scale).map_err(|e| {
        let code = match e {
            DecimalError::Malformed => "INVALID_NUMBER",
            DecimalError::TooPrecise(_) => "TOO_MANY_DECIMALS",
            DecimalError::Overflow => "OUT_OF_RANGE",
            DecimalError::Negative => "NEGATIVE_NUMBER",
        };
        ExchangeError::invalid(code, format!("{field}: {e}"))
    })
}

fn positive(field: &'static str, text: &str, scale: u32) -> ExchangeResult<i64> {
    let v = decimal(field, text, scale)?;
    if v == 0 {
        return Err(ExchangeError::invalid(
            "NOT_POSITIVE",
            format!("{field} must be greater than zero"),
        ));
    }
    Ok(v)
}

fn valid_name(field: &'static str, name: &str, extra: &[u8]) -> ExchangeResult<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ExchangeError::invalid(
            "INVALID_NAME",
            format!(
                "{field} must be 1-{NAME_LEN_MAX} characters of A-Z, 0-9{}",
                extra
                    .iter()
                    .map(|&b| format!(", {}", b as char))
                    .collect::<String>()
            ),
        ))
    }
}

/// An asset to list: its code and how many decimals its amounts have.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewAsset {
    /// 1-32 characters of A-Z and 0-9.
    #[cfg_attr(feature = "openapi", schema(example = "BTC"))]
    pub code: String,
    /// Decimal places of its amounts (minor units per whole unit = 10^scale), 0-18.
    #[cfg_attr(feature = "openapi", schema(maximum = 18, example = 8))]
    pub scale: u32,
}

pub fn validate_asset(req: &NewAsset, refdata: &RefData) -> ExchangeResult<()> {
    valid_name("code", &req.code, b"")?;
    if req.scale > units::SCALE_MAX {
        return Err(ExchangeError::invalid(
            "INVALID_SCALE",
            format!("scale must be 0-{}", units::SCALE_MAX),
        ));
    }
    if refdata.asset_by_code.contains_key(&req.code) {
        return Err(ExchangeError::new(
            crate::ErrorClass::Conflict,
            "ALREADY_EXISTS",
            format!("asset {} exists", req.code),
        ));
    }
    Ok(())
}

/// A symbol to list: which asset trades against which, and its trading rules. Amounts are
/// decimal strings in the base (quantities) or quote (prices, notionals) asset.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewSymbol {
    /// 1-32 characters of A-Z, 0-9, - and _.
    #[cfg_attr(feature = "openapi", schema(example = "BTC-USDT"))]
    pub name: String,
    /// The asset traded (quantities are in it).
    pub base: String,
    /// The asset prices are in.
    pub quote: String,
    /// Every price is a multiple of it. `tick_size × lot_size` must be a whole number of
    /// quote minor units, so that every notional is exact.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$"))]
    pub tick_size: String,
    /// Every quantity is a multiple of it.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$"))]
    pub lot_size: String,
    /// Smallest order value (price × quantity) accepted; 0 when absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$"))]
    pub min_notional: Option<String>,
    /// Fee of the resting side, in basis points of what it receives (0-1000).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 1000))]
    pub maker_fee_bps: u32,
    /// Fee of the taking side, in basis points of what it receives (0-1000).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 1000))]
    pub taker_fee_bps: u32,
    /// TRADING when absent.
    #[serde(default)]
    pub status: Option<SymbolStatus>,
    /// Largest quantity of one order (a multiple of the lot); absent: the largest multiple
    /// of the lot that fits a 64-bit integer of minor units.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$"))]
    pub max_quantity: Option<String>,
    /// What orders that do not choose a self-trade prevention mode get (NONE when absent).
    #[serde(default)]
    pub default_self_trade_prevention_mode: Option<SelfTradePrevention>,
}

/// What an operator may change on a listed symbol (at least one of the two).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(min_properties = 1)
)]
#[serde(deny_unknown_fields)]
pub struct SymbolUpdate {
    /// HALTED refuses new orders; cancels still work.
    #[serde(default)]
    pub status: Option<SymbolStatus>,
    #[serde(default)]
    pub default_self_trade_prevention_mode: Option<SelfTradePrevention>,
}

/// Checks a symbol definition; `id` is filled in by the sequencer.
pub fn validate_symbol(req: &NewSymbol, refdata: &RefData) -> ExchangeResult<SymbolRow> {
    valid_name("name", &req.name, b"-_")?;
    if refdata.symbol_by_name.contains_key(&req.name) {
        return Err(ExchangeError::new(
            crate::ErrorClass::Conflict,
            "ALREADY_EXISTS",
            format!("symbol {} exists", req.name),
        ));
    }
    let base = refdata.asset_by_code(&req.base)?.clone();
    let quote = refdata.asset_by_code(&req.quote)?.clone();
    if base.id == quote.id {
        return Err(ExchangeError::invalid(
            "SAME_ASSET",
            "base and quote must differ",
        ));
    }
    let tick_size = positive("tick_size", &req.tick_size, quote.scale)?;
    let lot_size = positive("lot_size", &req.lot_size, base.scale)?;
    let min_notional = match &req.min_notional {
        Some(t) => decimal("min_notional", t, quote.scale)?,
        None => 0,
    };
    if req.maker_fee_bps > FEE_BPS_MAX || req.taker_fee_bps > FEE_BPS_MAX {
        return Err(ExchangeError::invalid(
            "INVALID_FEE",
            format!("fees must be 0-{FEE_BPS_MAX} basis points"),
        ));
    }
    // Every price is a multiple of the tick and every quantity of the lot, so requiring
    // tick * lot to be a whole number of quote minor units makes every notional exact.
    if (tick_size as i128 * lot_size as i128) % units::unit(base.scale) as i128 != 0 {
        return Err(ExchangeError::invalid(
            "INEXACT_NOTIONAL",
            "tick_size * lot_size must be a whole number of quote minor units \
             (raise the quote asset's scale, the tick or the lot)",
        ));
    }
    // Any multiple of the lot that parses (fits an i64) is at most the cap.
    let max_quantity = match &req.max_quantity {
        None => max_quantity_cap(lot_size),
        Some(text) => {
            let q = positive("max_quantity", text, base.scale)?;
            if q % lot_size != 0 {
                return Err(ExchangeError::invalid(
                    "INVALID_MAX_QUANTITY",
                    "max_quantity must be a multiple of the lot size",
                ));
            }
            q
        }
    };
    Ok(SymbolRow {
        id: 0,
        name: req.name.clone(),
        base_asset: base.id,
        quote_asset: quote.id,
        tick_size,
        lot_size,
        min_notional,
        maker_fee_bps: req.maker_fee_bps,
        taker_fee_bps: req.taker_fee_bps,
        status: req.status.unwrap_or(SymbolStatus::Trading),
        max_quantity,
        default_stp: req.default_self_trade_prevention_mode.unwrap_or_default(),
    })
}

/// An order as the API receives it. LIMIT: `price` and `quantity`. MARKET BUY:
/// `quote_quantity` (the amount of quote to spend). MARKET SELL: `quantity`. Numbers are
/// decimal strings, exact at the assets' scales.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    #[cfg_attr(feature = "openapi", schema(example = "BTC-USDT"))]
    pub symbol: String,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    /// Limit price in the quote asset, a multiple of the tick (LIMIT only).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$"))]
    pub price: Option<String>,
    /// Base quantity, a multiple of the lot, at most the symbol's `max_quantity` (LIMIT,
    /// MARKET SELL).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$"))]
    pub quantity: Option<String>,
    /// Quote amount to spend (MARKET BUY only); held in full until the order is done.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$"))]
    pub quote_quantity: Option<String>,
    /// GTC (default for LIMIT), IOC or FOK; a MARKET order is always IOC.
    #[serde(default)]
    pub time_in_force: Option<TimeInForce>,
    /// Your id for the order, unique per user: sending it again returns the first order
    /// (200) instead of placing a second one. 1-64 characters of A-Z, a-z, 0-9, - _ . :
    #[serde(default)]
    pub client_order_id: Option<String>,
    /// What happens if the order would trade with one of your own resting orders
    /// (Binance's `selfTradePreventionMode`); the symbol's
    /// `default_self_trade_prevention_mode` when absent.
    #[serde(default)]
    pub self_trade_prevention_mode: Option<SelfTradePrevention>,
}

/// An order that passed every static rule, in minor units, with its hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidOrder {
    pub symbol: u32,
    pub side: Side,
    pub order_type: OrderType,
    pub time_in_force: TimeInForce,
    pub price: Option<i64>,
    pub quantity: Option<i64>,
    pub quote_quantity: Option<i64>,
    pub client_order_id: Option<String>,
    pub kind: OrderKind,
    pub stp: SelfTradePrevention,
    pub hold_asset: u32,
    pub hold_amount: i64,
}

fn absent(field: &'static str, value: &Option<String>, why: &str) -> ExchangeResult<()> {
    match value {
        Some(_) => Err(ExchangeError::invalid(
            "UNEXPECTED_FIELD",
            format!("{field} is not allowed {why}"),
        )),
        None => Ok(()),
    }
}

fn required<'a>(
    field: &'static str,
    value: &'a Option<String>,
    why: &str,
) -> ExchangeResult<&'a str> {
    value.as_deref().ok_or_else(|| {
        ExchangeError::invalid("MISSING_FIELD", format!("{field} is required {why}"))
    })
}

/// Checks an order against its symbol's rules. `reference_price` is the symbol's current
/// reference price (see `MarketData::reference_price`), used for the minimum notional of a
/// MARKET SELL, whose price is not known until it matches.
pub fn validate_order(
    req: &OrderRequest,
    refdata: &RefData,
    reference_price: Option<i64>,
) -> ExchangeResult<ValidOrder> {
    let symbol = refdata.symbol_by_name(&req.symbol)?;
    if symbol.status != SymbolStatus::Trading {
        return Err(ExchangeError::new(
            crate::ErrorClass::Conflict,
            "SYMBOL_NOT_TRADING",
            format!("{} is not trading", symbol.name),
        ));
    }
    if let Some(id) = &req.client_order_id {
        let ok = !id.is_empty()
            && id.len() <= CLIENT_ORDER_ID_LEN_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !ok {
            return Err(ExchangeError::invalid(
                "INVALID_CLIENT_ORDER_ID",
                format!(
                    "client_order_id must be 1-{CLIENT_ORDER_ID_LEN_MAX} characters of \
                     A-Z, a-z, 0-9, -, _, ., :"
                ),
            ));
        }
    }
    let spec = refdata.book_spec(symbol);
    let (base_scale, quote_scale) = (refdata.base_scale(symbol), refdata.quote_scale(symbol));
    let quantity = |text: &str| -> ExchangeResult<i64> {
        let q = positive("quantity", text, base_scale)?;
        if q % symbol.lot_size != 0 {
            return Err(ExchangeError::invalid(
                "QUANTITY_OFF_LOT",
                format!(
                    "quantity must be a multiple of the lot size {}",
                    units::format(symbol.lot_size, base_scale)
                ),
            ));
        }
        if q > symbol.max_quantity {
            return Err(ExchangeError::invalid(
                "QUANTITY_TOO_LARGE",
                format!(
                    "quantity must be at most {}",
                    units::format(symbol.max_quantity, base_scale)
                ),
            ));
        }
        Ok(q)
    };
    let min_notional = |notional: i128| -> ExchangeResult<()> {
        if notional > i64::MAX as i128 {
            return Err(ExchangeError::invalid(
                "OUT_OF_RANGE",
                "order value is too large",
            ));
        }
        if notional < symbol.min_notional as i128 {
            return Err(ExchangeError::invalid(
                "NOTIONAL_TOO_SMALL",
                format!(
                    "order value must be at least {}",
                    units::format(symbol.min_notional, quote_scale)
                ),
            ));
        }
        Ok(())
    };
    let mut order = ValidOrder {
        symbol: symbol.id,
        side: req.side,
        order_type: req.order_type,
        time_in_force: TimeInForce::Gtc,
        price: None,
        quantity: None,
        quote_quantity: None,
        client_order_id: req.client_order_id.clone(),
        kind: OrderKind::Market { qty: 0 },
        stp: req.self_trade_prevention_mode.unwrap_or(symbol.default_stp),
        hold_asset: 0,
        hold_amount: 0,
    };
    match req.order_type {
        OrderType::Limit => {
            absent("quote_quantity", &req.quote_quantity, "on a LIMIT order")?;
            let price = positive(
                "price",
                required("price", &req.price, "on a LIMIT order")?,
                quote_scale,
            )?;
            if price % symbol.tick_size != 0 {
                return Err(ExchangeError::invalid(
                    "PRICE_OFF_TICK",
                    format!(
                        "price must be a multiple of the tick size {}",
                        units::format(symbol.tick_size, quote_scale)
                    ),
                ));
            }
            let qty = quantity(required("quantity", &req.quantity, "on a LIMIT order")?)?;
            let notional = price as i128 * qty as i128 / spec.base_unit as i128;
            min_notional(notional)?;
            let tif = req.time_in_force.unwrap_or(TimeInForce::Gtc);
            order.time_in_force = tif;
            order.price = Some(price);
            order.quantity = Some(qty);
            order.kind = OrderKind::Limit { price, qty, tif };
            (order.hold_asset, order.hold_amount) = match req.side {
                Side::Buy => (symbol.quote_asset, notional as i64),
                Side::Sell => (symbol.base_asset, qty),
            };
        }
        OrderType::Market => {
            absent("price", &req.price, "on a MARKET order")?;
            if !matches!(req.time_in_force, None | Some(TimeInForce::Ioc)) {
                return Err(ExchangeError::invalid(
                    "INVALID_TIME_IN_FORCE",
                    "a MARKET order is always IOC",
                ));
            }
            order.time_in_force = TimeInForce::Ioc;
            match req.side {
                Side::Buy => {
                    absent(
                        "quantity",
                        &req.quantity,
                        "on a MARKET BUY: give quote_quantity, the amount to spend",
                    )?;
                    let budget = positive(
                        "quote_quantity",
                        required("quote_quantity", &req.quote_quantity, "on a MARKET BUY")?,
                        quote_scale,
                    )?;
                    min_notional(budget as i128)?;
                    order.quote_quantity = Some(budget);
                    order.kind = OrderKind::MarketQuote { budget };
                    (order.hold_asset, order.hold_amount) = (symbol.quote_asset, budget);
                }
                Side::Sell => {
                    absent("quote_quantity", &req.quote_quantity, "on a MARKET SELL")?;
                    let qty = quantity(required("quantity", &req.quantity, "on a MARKET SELL")?)?;
                    // Binance's rule: a market order's notional is estimated at the symbol's
                    // reference price. Without one (never traded, no bid) there is nothing
                    // it could trade with, so there is nothing to estimate.
                    if let Some(price) = reference_price {
                        let estimate = price as i128 * qty as i128 / spec.base_unit as i128;
                        if estimate < symbol.min_notional as i128 {
                            return Err(ExchangeError::invalid(
                                "NOTIONAL_TOO_SMALL",
                                format!(
                                    "order value must be at least {}; a MARKET SELL is valued \
                                     at the reference price {}",
                                    units::format(symbol.min_notional, quote_scale),
                                    units::format(price, quote_scale)
                                ),
                            ));
                        }
                    }
                    order.quantity = Some(qty);
                    order.kind = OrderKind::Market { qty };
                    (order.hold_asset, order.hold_amount) = (symbol.base_asset, qty);
                }
            }
        }
    }
    debug_assert!(order.hold_amount > 0);
    Ok(order)
}

/// Parses a positive amount of `asset` (deposits, withdrawals).
pub fn parse_amount(text: &str, asset: &AssetRow) -> ExchangeResult<i64> {
    positive("amount", text, asset.scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refdata() -> RefData {
        let mut r = RefData::new(
            vec![
                AssetRow {
                    id: 1,
                    code: "BTC".into(),
                    scale: 8,
                },
                AssetRow {
                    id: 2,
                    code: "USDT".into(),
                    scale: 6,
                },
            ],
            vec![],
        );
        let s = validate_symbol(
            &NewSymbol {
                name: "BTC-USDT".into(),
                base: "BTC".into(),
                quote: "USDT".into(),
                tick_size: "0.01".into(),
                lot_size: "0.0001".into(),
                min_notional: Some("5".into()),
                maker_fee_bps: 10,
                taker_fee_bps: 20,
                status: None,
                max_quantity: None,
                default_self_trade_prevention_mode: None,
            },
            &r,
        )
        .unwrap();
        r.add_symbol(SymbolRow { id: 1, ..s });
        r
    }

    fn limit(side: Side, price: &str, qty: &str) -> OrderRequest {
        OrderRequest {
            symbol: "BTC-USDT".into(),
            side,
            order_type: OrderType::Limit,
            price: Some(price.into()),
            quantity: Some(qty.into()),
            quote_quantity: None,
            time_in_force: None,
            client_order_id: None,
            self_trade_prevention_mode: None,
        }
    }

    fn code(r: ExchangeResult<ValidOrder>) -> &'static str {
        r.unwrap_err().code
    }

    #[test]
    fn limit_buy_holds_exact_notional() {
        let o = validate_order(&limit(Side::Buy, "50000.01", "0.0003"), &refdata(), None).unwrap();
        assert_eq!(o.hold_asset, 2);
        assert_eq!(o.hold_amount, 15_000_003); // 15.000003 USDT at scale 6
        let o = validate_order(&limit(Side::Sell, "50000", "0.0003"), &refdata(), None).unwrap();
        assert_eq!((o.hold_asset, o.hold_amount), (1, 30_000));
    }

    #[test]
    fn rejects_what_does_not_fit_the_rules() {
        let r = refdata();
        assert_eq!(
            code(validate_order(
                &limit(Side::Buy, "50000.0000001", "1"),
                &r,
                None
            )),
            "TOO_MANY_DECIMALS"
        );
        assert_eq!(
            code(validate_order(
                &limit(Side::Buy, "50000.001", "1"),
                &r,
                None
            )),
            "PRICE_OFF_TICK"
        );
        assert_eq!(
            code(validate_order(
                &limit(Side::Buy, "50000", "0.000000001"),
                &r,
                None
            )),
            "TOO_MANY_DECIMALS"
        );
        assert_eq!(
            code(validate_order(&limit(Side::Buy, "0", "1"), &r, None)),
            "NOT_POSITIVE"
        );
        assert_eq!(
            code(validate_order(&limit(Side::Buy, "-1", "1"), &r, None)),
            "NEGATIVE_NUMBER"
        );
        assert_eq!(
            code(validate_order(&limit(Side::Buy, "1e3", "1"), &r, None)),
            "INVALID_NUMBER"
        );
        assert_eq!(
            code(validate_order(
                &limit(Side::Buy, "100", "0.00015"),
                &r,
                None
            )),
            "QUANTITY_OFF_LOT"
        );
        assert_eq!(
            code(validate_order(&limit(Side::Buy, "1", "0.0001"), &r, None)),
            "NOTIONAL_TOO_SMALL"
        );
        assert_eq!(
            code(validate_order(
                &limit(Side::Buy, "92233720368547", "92233720368"),
                &r,
                None
            )),
            "OUT_OF_RANGE"
        );
        let mut unknown = limit(Side::Buy, "1", "1");
        unknown.symbol = "NOPE".into();
        assert_eq!(code(validate_order(&unknown, &r, None)), "UNKNOWN_SYMBOL");
        let mut market = limit(Side::Buy, "1", "1");
        market.order_type = OrderType::Market;
        assert_eq!(code(validate_order(&market, &r, None)), "UNEXPECTED_FIELD");
        market.price = None;
        assert_eq!(code(validate_order(&market, &r, None)), "UNEXPECTED_FIELD");
        market.quantity = None;
        assert_eq!(code(validate_order(&market, &r, None)), "MISSING_FIELD");
        market.quote_quantity = Some("100".into());
        assert_eq!(
            validate_order(&market, &r, None).unwrap().hold_amount,
            100_000_000
        );
    }

    #[test]
    fn one_order_is_bounded_by_the_symbols_max_quantity() {
        let r = refdata();
        // BTC-USDT's lot is 0.0001 BTC = 10,000 minor units; the default is the cap.
        assert_eq!(r.symbols[&1].max_quantity, max_quantity_cap(10_000));
        assert_eq!(max_quantity_cap(10_000) % 10_000, 0);
        assert_eq!(max_quantity_cap(10_000), 9_223_372_036_854_770_000);
        let mut small = r.clone();
        let mut symbol = small.symbols[&1].clone();
        symbol.max_quantity = 1_000_000; // 0.01 BTC
        small.add_symbol(symbol);
        let too_big = "0.0101";
        let r = small;
        assert_eq!(
            code(validate_order(&limit(Side::Sell, "1", too_big), &r, None)),
            "QUANTITY_TOO_LARGE"
        );
        let mut market = limit(Side::Sell, "1", too_big);
        (market.order_type, market.price) = (OrderType::Market, None);
        assert_eq!(
            code(validate_order(&market, &r, None)),
            "QUANTITY_TOO_LARGE"
        );
        // A symbol may set a smaller maximum, a multiple of the lot and within the cap.
        let mut s = NewSymbol {
            name: "SMALL".into(),
            base: "BTC".into(),
            quote: "USDT".into(),
            tick_size: "0.01".into(),
            lot_size: "0.0001".into(),
            min_notional: None,
            maker_fee_bps: 0,
            taker_fee_bps: 0,
            status: None,
            max_quantity: Some("2.5".into()),
            default_self_trade_prevention_mode: None,
        };
        assert_eq!(validate_symbol(&s, &r).unwrap().max_quantity, 250_000_000);
        s.max_quantity = Some("2.00005".into());
        assert_eq!(
            validate_symbol(&s, &r).unwrap_err().code,
            "INVALID_MAX_QUANTITY"
        );
    }

    #[test]
    fn a_market_sell_is_valued_at_the_reference_price() {
        let r = refdata(); // minimum notional 5 USDT
        let mut sell = limit(Side::Sell, "1", "0.0001");
        (sell.order_type, sell.price) = (OrderType::Market, None);
        // 0.0001 BTC at 40,000 is 4 USDT: too small; at 60,000 it is 6.
        let at = |price: i64| validate_order(&sell, &r, Some(price * 1_000_000));
        assert_eq!(at(40_000).unwrap_err().code, "NOTIONAL_TOO_SMALL");
        assert!(at(40_000)
            .unwrap_err()
            .detail
            .contains("reference price 40000.000000"));
        assert!(at(60_000).is_ok());
        // No reference price: nothing to trade against, nothing to estimate.
        assert!(validate_order(&sell, &r, None).is_ok());
    }

    #[test]
    fn self_trade_prevention_defaults_to_the_symbols_mode() {
        let mut r = refdata();
        let mut symbol = r.symbols[&1].clone();
        let order = limit(Side::Buy, "50000", "0.0003");
        assert_eq!(
            validate_order(&order, &r, None).unwrap().stp,
            SelfTradePrevention::None
        );
        symbol.default_stp = SelfTradePrevention::ExpireMaker;
        r.add_symbol(symbol);
        assert_eq!(
            validate_order(&order, &r, None).unwrap().stp,
            SelfTradePrevention::ExpireMaker
        );
        let mut own = order.clone();
        own.self_trade_prevention_mode = Some(SelfTradePrevention::ExpireBoth);
        assert_eq!(
            validate_order(&own, &r, None).unwrap().stp,
            SelfTradePrevention::ExpireBoth
        );
    }

    #[test]
    fn symbol_rules_must_make_notionals_exact() {
        let r = refdata();
        let mut s = NewSymbol {
            name: "X".into(),
            base: "BTC".into(),
            quote: "USDT".into(),
            tick_size: "0.01".into(),
            lot_size: "0.00001".into(),
            min_notional: None,
            maker_fee_bps: 0,
            taker_fee_bps: 0,
            status: None,
            max_quantity: None,
            default_self_trade_prevention_mode: None,
        };
        assert_eq!(
            validate_symbol(&s, &r).unwrap_err().code,
            "INEXACT_NOTIONAL"
        );
        s.lot_size = "0.0001".into();
        assert!(validate_symbol(&s, &r).is_ok());
    }
}
