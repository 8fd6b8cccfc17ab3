//! Public market data under `/api/v1/markets`: symbols with their rules, depth, recent
//! trades, the 24-hour ticker and candles. Hot reads come from memory (the read model the
//! market thread keeps); only candle ranges older than memory go to the store.

use crate::api::{market_view, MarketView};
use crate::openapi::PUBLIC;
use crate::problem::{
    limit_param as limit, path_symbol, ApiPath as Path, ApiQuery as Query, Problem,
};
use crate::AppState;
use agora_engine::Side;
use agora_exchange::market::{candle_of, SymbolMarket};
use agora_exchange::RefData;
use agora_ledger::units::format;
use agora_market::{ticker, Candle, CandleSeries, Interval};
use agora_store::{SymbolRow, TradeRow};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const DEPTH_LIMIT_DEFAULT: usize = 100;
pub const DEPTH_LIMIT_MAX: usize = 5_000;
pub const TRADES_LIMIT_DEFAULT: usize = 100;
pub const TRADES_LIMIT_MAX: usize = 1_000;
pub const CANDLES_LIMIT_DEFAULT: usize = 500;
pub const CANDLES_LIMIT_MAX: usize = 1_000;

/// Whether a market process serves `path`: market data and the assets it is quoted in.
fn served_by_market_process(path: &str) -> bool {
    path == "/api/v1/markets" || path.starts_with("/api/v1/markets/") || path == "/api/v1/assets"
}

/// A market process's middleware: market data is served here; anything else belongs to an
/// API process.
pub async fn market_process_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if served_by_market_process(request.uri().path()) {
        return next.run(request).await;
    }
    Problem::new(
        axum::http::StatusCode::MISDIRECTED_REQUEST,
        "NOT_AN_API_PROCESS",
        "this is a market process: it serves market data (/api/v1/markets…) and WebSockets; \
         send everything else to an API process",
    )
    .into_response()
}

/// Latest time a candle request may name: 2100-01-01T00:00:00Z.
const TIME_MS_MAX: i64 = 4_102_444_800_000;

fn time(field: &'static str, text: Option<&str>) -> Result<Option<i64>, Problem> {
    text.map(|t| {
        t.parse::<i64>()
            .ok()
            .filter(|v| (0..=TIME_MS_MAX).contains(v))
            .ok_or_else(|| {
                Problem::bad_request(
                    "INVALID_TIME",
                    format!(
                        "{field} must be Unix milliseconds from 0 to {TIME_MS_MAX} (2100-01-01)"
                    ),
                )
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
    let symbol = path_symbol(&r, name)?.clone();
    let scales = Scales::of(&r, &symbol);
    Ok((symbol, scales))
}

/// A price level as `[price, quantity]`; the quantity is a level's total, summed wide.
pub fn level_json(price: i64, qty: i128, sc: Scales) -> [String; 2] {
    [format(price, sc.quote), format(qty, sc.base)]
}

#[derive(Serialize, ToSchema)]
pub struct MarketList<'a> {
    markets: Vec<MarketView<'a>>,
}

/// Every symbol and its trading rules.
#[utoipa::path(
    get, path = "/api/v1/markets", tag = PUBLIC,
    responses((status = 200, description = "The symbols", body = MarketList))
)]
pub async fn markets(State(state): State<AppState>) -> Response {
    let r = state.exchange.refdata();
    let mut symbols: Vec<&SymbolRow> = r.symbols.values().collect();
    symbols.sort_by_key(|s| s.id);
    Json(MarketList {
        markets: symbols.iter().map(|s| market_view(s, &r)).collect(),
    })
    .into_response()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DepthParams {
    /// Levels per side, 1-5000 (default 100).
    #[param(value_type = Option<u16>, minimum = 1, maximum = 5000)]
    limit: Option<String>,
}

/// Aggregated depth: `[price, quantity]` levels, best first.
#[derive(Serialize, ToSchema)]
pub struct DepthView<'a> {
    symbol: &'a str,
    /// The update id this snapshot reflects; apply WebSocket `@depth` diffs after it.
    last_update_id: u64,
    #[schema(value_type = Vec<[String; 2]>)]
    bids: Vec<[String; 2]>,
    #[schema(value_type = Vec<[String; 2]>)]
    asks: Vec<[String; 2]>,
}

/// The order book's aggregated levels, with the update id to sync a local book from.
#[utoipa::path(
    get, path = "/api/v1/markets/{symbol}/depth", tag = PUBLIC,
    params(("symbol" = String, Path, description = "Symbol name"), DepthParams),
    responses(
        (status = 200, description = "Depth snapshot", body = DepthView),
        (status = 400, response = Problem), (status = 404, response = Problem),
    )
)]
pub async fn depth(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<DepthParams>,
) -> Result<Response, Problem> {
    let (symbol, sc) = symbol_and_scales(&state, &name)?;
    let n = limit(p.limit.as_deref(), DEPTH_LIMIT_DEFAULT, DEPTH_LIMIT_MAX)?;
    let snapshot = match state.exchange.market().symbol(symbol.id) {
        Some(m) => m.read().expect("lock").depth.snapshot(n),
        None => agora_market::DepthBook::default().snapshot(n),
    };
    let level = |&(p, q): &(i64, i128)| level_json(p, q, sc);
    Ok(Json(DepthView {
        symbol: &symbol.name,
        last_update_id: snapshot.last_update_id,
        bids: snapshot.bids.iter().map(level).collect(),
        asks: snapshot.asks.iter().map(level).collect(),
    })
    .into_response())
}

/// One public trade.
#[derive(Serialize, ToSchema)]
pub struct TradeView {
    /// Per symbol, from 1, without gaps.
    trade_id: u64,
    price: String,
    quantity: String,
    quote_quantity: String,
    taker_side: Side,
    time_ms: i64,
}

pub fn trade_view(t: &TradeRow, sc: &Scales) -> TradeView {
    TradeView {
        trade_id: t.trade_id,
        price: format(t.price, sc.quote),
        quantity: format(t.qty, sc.base),
        quote_quantity: format(t.quote_qty, sc.quote),
        taker_side: t.taker_side,
        time_ms: t.created_ms,
    }
}

#[derive(Serialize, ToSchema)]
pub struct TradeList<'a> {
    symbol: &'a str,
    /// Newest first.
    trades: Vec<TradeView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TradesParams {
    /// Trades, 1-1000 (default 100).
    #[param(value_type = Option<u16>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// The most recent trades (up to 1,000 are kept in memory per symbol).
#[utoipa::path(
    get, path = "/api/v1/markets/{symbol}/trades", tag = PUBLIC,
    params(("symbol" = String, Path, description = "Symbol name"), TradesParams),
    responses(
        (status = 200, description = "Recent trades", body = TradeList),
        (status = 400, response = Problem), (status = 404, response = Problem),
    )
)]
pub async fn trades(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<TradesParams>,
) -> Result<Response, Problem> {
    let (symbol, sc) = symbol_and_scales(&state, &name)?;
    let n = limit(p.limit.as_deref(), TRADES_LIMIT_DEFAULT, TRADES_LIMIT_MAX)?;
    let trades: Vec<TradeView> = match state.exchange.market().symbol(symbol.id) {
        Some(m) => m
            .read()
            .expect("lock")
            .trades
            .iter()
            .rev()
            .take(n)
            .map(|t| trade_view(t, &sc))
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(TradeList {
        symbol: &symbol.name,
        trades,
    })
    .into_response())
}

/// 24-hour rolling statistics (one-minute resolution) and the best bid and ask. Prices are
/// null until the symbol has traded (the best bid and ask, until there is one).
#[derive(Serialize, ToSchema)]
pub struct TickerView<'a> {
    symbol: &'a str,
    window_end_ms: i64,
    open: Option<String>,
    high: Option<String>,
    low: Option<String>,
    last: Option<String>,
    volume: Option<String>,
    quote_volume: Option<String>,
    trades: u64,
    change: Option<String>,
    /// Percent, two decimals, rounded toward zero.
    change_percent: Option<String>,
    best_bid: Option<String>,
    best_bid_quantity: Option<String>,
    best_ask: Option<String>,
    best_ask_quantity: Option<String>,
}

/// The 24-hour ticker of a symbol at `now_ms`, with the best bid and ask.
pub fn ticker_view<'a>(
    name: &'a str,
    m: Option<&SymbolMarket>,
    sc: Scales,
    now_ms: i64,
) -> TickerView<'a> {
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
    TickerView {
        symbol: name,
        window_end_ms: now_ms,
        open: price(t.map(|t| t.open)),
        high: price(t.map(|t| t.high)),
        low: price(t.map(|t| t.low)),
        last: price(t.map(|t| t.last)),
        volume: qty(t.map(|t| t.volume as i128)),
        quote_volume: price(t.map(|t| t.quote_volume)),
        trades: t.map_or(0, |t| t.trades),
        change: price(t.map(|t| t.last - t.open)),
        change_percent: t.map(|t| format(t.change_bps, 2)),
        best_bid: price(bid.map(|b| b.0)),
        best_bid_quantity: qty(bid.map(|b| b.1)),
        best_ask: price(ask.map(|a| a.0)),
        best_ask_quantity: qty(ask.map(|a| a.1)),
    }
}

/// The symbol's 24-hour rolling ticker.
#[utoipa::path(
    get, path = "/api/v1/markets/{symbol}/ticker", tag = PUBLIC,
    params(("symbol" = String, Path, description = "Symbol name")),
    responses(
        (status = 200, description = "The ticker", body = TickerView),
        (status = 400, response = Problem), (status = 404, response = Problem),
    )
)]
pub async fn ticker_handler(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let (symbol, sc) = symbol_and_scales(&state, &name)?;
    let market = state.exchange.market().symbol(symbol.id);
    let guard = market.as_ref().map(|m| m.read().expect("lock"));
    Ok(Json(ticker_view(
        &symbol.name,
        guard.as_deref(),
        sc,
        state.exchange.now_ms(),
    ))
    .into_response())
}

/// One OHLCV bucket `[open_ms, close_ms]`.
#[derive(Serialize, ToSchema)]
pub struct CandleView {
    open_ms: i64,
    close_ms: i64,
    open: String,
    high: String,
    low: String,
    close: String,
    volume: String,
    quote_volume: String,
    trades: u64,
}

pub fn candle_view(c: &Candle, interval: Interval, sc: Scales) -> CandleView {
    CandleView {
        open_ms: c.open_ms,
        close_ms: c.open_ms + interval.ms() - 1,
        open: format(c.open, sc.quote),
        high: format(c.high, sc.quote),
        low: format(c.low, sc.quote),
        close: format(c.close, sc.quote),
        volume: format(c.volume, sc.base),
        quote_volume: format(c.quote_volume, sc.quote),
        trades: c.trades,
    }
}

#[derive(Serialize, ToSchema)]
pub struct CandleList<'a> {
    symbol: &'a str,
    interval: &'static str,
    /// Oldest first.
    candles: Vec<CandleView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CandleParams {
    /// Bucket width.
    #[param(value_type = String, pattern = "^(1m|5m|15m|1h|4h|1d)$")]
    interval: Option<String>,
    /// Unix ms; the first bucket is the one holding it (default: `limit` buckets before
    /// `end`).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4102444800000i64)]
    start: Option<String>,
    /// Unix ms; the last bucket is the one holding it, never later than now (default now).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4102444800000i64)]
    end: Option<String>,
    /// Buckets, 1-1000 (default 500): the most recent ones of the range.
    #[param(value_type = Option<u16>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// Candles of one interval: buckets without trades are flat at the previous close; nothing
/// before the first trade, nothing after now. The work is bounded by `limit`.
#[utoipa::path(
    get, path = "/api/v1/markets/{symbol}/candles", tag = PUBLIC,
    params(("symbol" = String, Path, description = "Symbol name"), CandleParams),
    responses(
        (status = 200, description = "Candles, oldest first", body = CandleList),
        (status = 400, response = Problem), (status = 404, response = Problem),
    )
)]
pub async fn candles(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<CandleParams>,
) -> Result<Response, Problem> {
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
    let now = state.exchange.now_ms();
    let asked_end = time("end", p.end.as_deref())?;
    let asked_start = time("start", p.start.as_deref())?;
    if let (Some(start), Some(end)) = (asked_start, asked_end) {
        if start > end {
            return Err(Problem::bad_request("INVALID_TIME", "start is after end"));
        }
    }
    let list = |candles: Vec<CandleView>| {
        Json(CandleList {
            symbol: &symbol.name,
            interval: interval.as_str(),
            candles,
        })
        .into_response()
    };
    // No candle exists for a bucket that has not begun, and only the last `n` buckets of the
    // range are returned: the work is bounded by the limit, not by how wide the range is.
    let end = asked_end.unwrap_or(now).min(now);
    let first = agora_market::candles::first_of_last(interval.bucket(end), interval.ms(), n);
    let start = asked_start.unwrap_or(first).max(first);
    if start > end {
        return Ok(list(Vec::new())); // the whole range lies in the future
    }
    let from_memory = state.exchange.market().symbol(symbol.id).and_then(|m| {
        let m = m.read().expect("lock");
        let series = m.series(interval);
        series.covers(start).then(|| series.range(start, end, n))
    });
    let found: Vec<Candle> = match from_memory {
        Some(found) => found,
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
    Ok(list(
        found.iter().map(|c| candle_view(c, interval, sc)).collect(),
    ))
}
