//! Public market data under `/api/v1/markets`: symbols with their rules, depth, recent
//! trades, the 24-hour ticker and candles. Hot reads come from memory (the read model the
//! market thread keeps); only candle ranges older than memory go to the store.

use crate::api::symbol_json;
use crate::problem::{ApiPath as Path, ApiQuery as Query, Problem};
use crate::AppState;
use agora_engine::Side;
use agora_exchange::market::{candle_of, SymbolMarket};
use agora_exchange::RefData;
use agora_ledger::units::format;
use agora_market::{ticker, Candle, CandleSeries, Interval};
use agora_store::{SymbolRow, TradeRow};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

pub const DEPTH_LIMIT_DEFAULT: usize = 100;
pub const DEPTH_LIMIT_MAX: usize = 5_000;
pub const TRADES_LIMIT_DEFAULT: usize = 100;
pub const TRADES_LIMIT_MAX: usize = 1_000;
pub const CANDLES_LIMIT_DEFAULT: usize = 500;
pub const CANDLES_LIMIT_MAX: usize = 1_000;

fn now_ms() -> i64 {
    agora_store::sqlite::now_ms()
}

fn limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, Problem> {
    match text {
        None => Ok(default),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Problem::bad_request(
                "INVALID_LIMIT",
                format!("limit must be 1-{max}"),
            )),
        },
    }
}

fn time(field: &'static str, text: Option<&str>) -> Result<Option<i64>, Problem> {
    text.map(|t| {
        t.parse::<i64>()
            .ok()
            .filter(|v| (0..=4_102_444_800_000).contains(v)) // until 2100
            .ok_or_else(|| {
                Problem::bad_request("INVALID_TIME", format!("{field} must be Unix milliseconds"))
            })
    })
    .transpose()
}

/// The scales a symbol's numbers are printed at.
#[derive(Clone, Copy)]
pub struct Scales {
    pub base: u32,
    pub quote: u32,
}

impl Scales {
    pub fn of(r: &RefData, symbol: &SymbolRow) -> Scales {
        Scales {
            base: r.base_scale(symbol),
            quote: r.quote_scale(symbol),
        }
    }
}

fn symbol_and_scales(state: &AppState, name: &str) -> Result<(SymbolRow, Scales), Problem> {
    let r = state.exchange.refdata();
    let symbol = r
        .symbol_by_name(name)
        .map_err(|e| Problem::new(axum::http::StatusCode::NOT_FOUND, e.code, e.detail))?
        .clone();
    let scales = Scales::of(&r, &symbol);
    Ok((symbol, scales))
}

/// A price level as `[price, quantity]`; the quantity is a level's total, summed wide.
pub fn level_json(price: i64, qty: i128, sc: Scales) -> [String; 2] {
    [format(price, sc.quote), format(qty, sc.base)]
}

pub async fn markets(State(state): State<AppState>) -> Json<Value> {
    let r = state.exchange.refdata();
    let mut symbols: Vec<&SymbolRow> = r.symbols.values().collect();
    symbols.sort_by_key(|s| s.id);
    Json(json!({ "markets": symbols.iter().map(|s| symbol_json(s, &r)).collect::<Vec<_>>() }))
}

#[derive(Deserialize)]
pub struct LimitParams {
    limit: Option<String>,
}

pub async fn depth(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<LimitParams>,
) -> Result<Json<Value>, Problem> {
    let (symbol, sc) = symbol_and_scales(&state, &name)?;
    let n = limit(p.limit.as_deref(), DEPTH_LIMIT_DEFAULT, DEPTH_LIMIT_MAX)?;
    let snapshot = match state.exchange.market().symbol(symbol.id) {
        Some(m) => m.read().expect("lock").depth.snapshot(n),
        None => agora_market::DepthBook::default().snapshot(n),
    };
    let level = |&(p, q): &(i64, i128)| level_json(p, q, sc);
    Ok(Json(json!({
        "symbol": symbol.name,
        "last_update_id": snapshot.last_update_id,
        "bids": snapshot.bids.iter().map(level).collect::<Vec<_>>(),
        "asks": snapshot.asks.iter().map(level).collect::<Vec<_>>(),
    })))
}

pub fn trade_json(t: &TradeRow, sc: &Scales) -> Value {
    json!({
        "trade_id": t.trade_id,
        "price": format(t.price, sc.quote),
        "quantity": format(t.qty, sc.base),
        "quote_quantity": format(t.quote_qty, sc.quote),
        "taker_side": if t.taker_side == Side::Buy { "BUY" } else { "SELL" },
        "time_ms": t.created_ms,
    })
}

pub async fn trades(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<LimitParams>,
) -> Result<Json<Value>, Problem> {
    let (symbol, sc) = symbol_and_scales(&state, &name)?;
    let n = limit(p.limit.as_deref(), TRADES_LIMIT_DEFAULT, TRADES_LIMIT_MAX)?;
    let trades: Vec<Value> = match state.exchange.market().symbol(symbol.id) {
        Some(m) => m
            .read()
            .expect("lock")
            .trades
            .iter()
            .rev()
            .take(n)
            .map(|t| trade_json(t, &sc))
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(json!({ "symbol": symbol.name, "trades": trades })))
}

/// The 24-hour ticker of a symbol at `now_ms`, with the best bid and ask.
pub fn ticker_json(name: &str, m: Option<&SymbolMarket>, sc: Scales, now_ms: i64) -> Value {
    let (t, bid, ask) = match m {
        Some(m) => (
            ticker(m.series(Interval::M1), now_ms),
            m.depth.best_bid(),
            m.depth.best_ask(),
        ),
        None => (None, None, None),
    };
    let price = |p: Option<i64>| p.map(|p| format(p, sc.quote));
    let qty = |q: Option<i128>| q.map(|q| format(q, sc.base));
    json!({
        "symbol": name,
        "window_end_ms": now_ms,
        "open": price(t.map(|t| t.open)),
        "high": price(t.map(|t| t.high)),
        "low": price(t.map(|t| t.low)),
        "last": price(t.map(|t| t.last)),
        "volume": qty(t.map(|t| t.volume as i128)),
        "quote_volume": price(t.map(|t| t.quote_volume)),
        "trades": t.map_or(0, |t| t.trades),
        "change": price(t.map(|t| t.last - t.open)),
        "change_percent": t.map(|t| format(t.change_bps, 2)),
        "best_bid": price(bid.map(|b| b.0)),
        "best_bid_quantity": qty(bid.map(|b| b.1)),
        "best_ask": price(ask.map(|a| a.0)),
        "best_ask_quantity": qty(ask.map(|a| a.1)),
    })
}

pub async fn ticker_handler(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (symbol, sc) = symbol_and_scales(&state, &name)?;
    let market = state.exchange.market().symbol(symbol.id);
    let guard = market.as_ref().map(|m| m.read().expect("lock"));
    Ok(Json(ticker_json(
        &symbol.name,
        guard.as_deref(),
        sc,
        now_ms(),
    )))
}

pub fn candle_json(c: &Candle, interval: Interval, sc: Scales) -> Value {
    json!({
        "open_ms": c.open_ms,
        "close_ms": c.open_ms + interval.ms() - 1,
        "open": format(c.open, sc.quote),
        "high": format(c.high, sc.quote),
        "low": format(c.low, sc.quote),
        "close": format(c.close, sc.quote),
        "volume": format(c.volume, sc.base),
        "quote_volume": format(c.quote_volume, sc.quote),
        "trades": c.trades,
    })
}

#[derive(Deserialize)]
pub struct CandleParams {
    interval: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
}

pub async fn candles(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<CandleParams>,
) -> Result<Json<Value>, Problem> {
    let (symbol, sc) = symbol_and_scales(&state, &name)?;
    let interval = p
        .interval
        .as_deref()
        .and_then(Interval::parse)
        .ok_or_else(|| {
            Problem::bad_request(
                "INVALID_INTERVAL",
                "interval must be 1m, 5m, 15m, 1h, 4h or 1d",
            )
        })?;
    let n = limit(p.limit.as_deref(), CANDLES_LIMIT_DEFAULT, CANDLES_LIMIT_MAX)?;
    let now = now_ms();
    let asked_end = time("end", p.end.as_deref())?;
    let asked_start = time("start", p.start.as_deref())?;
    if let (Some(start), Some(end)) = (asked_start, asked_end) {
        if start > end {
            return Err(Problem::bad_request("INVALID_TIME", "start is after end"));
        }
    }
    // No candle exists for a bucket that has not begun, and only the last `n` buckets of the
    // range are returned: the work is bounded by the limit, not by how wide the range is.
    let end = asked_end.unwrap_or(now).min(now);
    let first = agora_market::candles::first_of_last(interval.bucket(end), interval.ms(), n);
    let start = asked_start.unwrap_or(first).max(first);
    if start > end {
        // The whole range lies in the future.
        return Ok(Json(json!({
            "symbol": symbol.name,
            "interval": interval.as_str(),
            "candles": [],
        })));
    }
    let from_memory = state.exchange.market().symbol(symbol.id).and_then(|m| {
        let m = m.read().expect("lock");
        let series = m.series(interval);
        series.covers(start).then(|| series.range(start, end, n))
    });
    let list: Vec<Candle> = match from_memory {
        Some(list) => list,
        None => {
            // Older than memory: rebuild the range from the store, gaps filled the same way.
            let rows = state
                .exchange
                .stored_candles(symbol.id, interval, start, end, n)
                .await?;
            let mut series = CandleSeries::new(interval, n + 1);
            rows.iter().for_each(|r| series.upsert(candle_of(r).1));
            series.range(start, end, n)
        }
    };
    let candles: Vec<Value> = list.iter().map(|c| candle_json(c, interval, sc)).collect();
    Ok(Json(json!({
        "symbol": symbol.name,
        "interval": interval.as_str(),
        "candles": candles,
    })))
}
