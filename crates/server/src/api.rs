//! REST handlers under `/api/v1`: decimal strings in and out, problem+json on every error.

use crate::problem::{ApiJson, ApiPath as Path, ApiQuery as Query, Problem};
use crate::AppState;
use agora_engine::{Side, TimeInForce};
use agora_exchange::{NewAsset, NewSymbol, OrderRequest, RefData};
use agora_ledger::units::format;
use agora_store::{BalanceRow, OrderQuery, OrderRow, OrderStatus, OrderType, SymbolRow, TradeRow};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const PAGE_LIMIT_DEFAULT: usize = 100;
pub const PAGE_LIMIT_MAX: usize = 1_000;

/// The acting user. Until identity lands this is the `X-User-Id` header, and this is the
/// only place that reads it.
pub struct ActingUser(pub u64);

impl ActingUser {
    /// Reads the acting user from request headers (the only reader of `X-User-Id`).
    pub fn from_headers(
        headers: &axum::http::HeaderMap,
        state: &AppState,
    ) -> Result<ActingUser, Problem> {
        let unauthenticated =
            |detail: &str| Problem::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", detail);
        let value = headers
            .get("x-user-id")
            .ok_or_else(|| unauthenticated("send X-User-Id"))?;
        let id = value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| unauthenticated("X-User-Id must be a user id"))?;
        if !state.exchange.user_exists(id) {
            return Err(unauthenticated("unknown user"));
        }
        Ok(ActingUser(id))
    }
}

impl FromRequestParts<AppState> for ActingUser {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        ActingUser::from_headers(&parts.headers, state)
    }
}

/// Admin endpoints need `X-Admin-Token` when a token is configured.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        match &state.admin_token {
            None => Ok(Admin),
            Some(token) => {
                let sent = parts.headers.get("x-admin-token").map(|v| v.as_bytes());
                if sent == Some(token.as_bytes()) {
                    Ok(Admin)
                } else {
                    Err(Problem::new(
                        StatusCode::UNAUTHORIZED,
                        "ADMIN_TOKEN_REQUIRED",
                        "send a valid X-Admin-Token",
                    ))
                }
            }
        }
    }
}

fn side_text(side: Side) -> &'static str {
    match side {
        Side::Buy => "BUY",
        Side::Sell => "SELL",
    }
}

fn text<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// An order as the API shows it: decimal strings at the assets' scales.
#[derive(Serialize)]
pub struct OrderView<'a> {
    order_id: u64,
    client_order_id: Option<&'a str>,
    symbol: &'a str,
    side: Side,
    #[serde(rename = "type")]
    order_type: OrderType,
    time_in_force: TimeInForce,
    price: Option<String>,
    quantity: Option<String>,
    quote_quantity: Option<String>,
    status: OrderStatus,
    filled_quantity: String,
    filled_quote: String,
    fee: String,
    fee_asset: &'a str,
    held: String,
    hold_asset: &'a str,
    cancel_requested: bool,
    created_at_ms: i64,
    updated_at_ms: i64,
}

pub fn order_view<'a>(o: &'a OrderRow, r: &'a RefData) -> OrderView<'a> {
    let symbol = &r.symbols[&o.symbol];
    let (bs, qs) = (r.base_scale(symbol), r.quote_scale(symbol));
    // Fees are charged on what the order receives: base for a buy, quote for a sell.
    let (fee_asset, fee_scale) = match o.side {
        Side::Buy => (symbol.base_asset, bs),
        Side::Sell => (symbol.quote_asset, qs),
    };
    let hold_asset = r.asset(o.hold_asset);
    OrderView {
        order_id: o.id,
        client_order_id: o.client_order_id.as_deref(),
        symbol: &symbol.name,
        side: o.side,
        order_type: o.order_type,
        time_in_force: o.time_in_force,
        price: o.price.map(|p| format(p, qs)),
        quantity: o.quantity.map(|q| format(q, bs)),
        quote_quantity: o.quote_quantity.map(|q| format(q, qs)),
        status: o.status,
        filled_quantity: format(o.filled_qty, bs),
        filled_quote: format(o.filled_quote, qs),
        fee: format(o.fee_paid, fee_scale),
        fee_asset: &r.asset(fee_asset).code,
        held: format(o.held, hold_asset.scale),
        hold_asset: &hold_asset.code,
        cancel_requested: o.cancel_requested,
        created_at_ms: o.created_ms,
        updated_at_ms: o.updated_ms,
    }
}

pub fn balance_json(b: &BalanceRow, r: &RefData) -> Value {
    let asset = r.asset(b.asset);
    json!({
        "asset": asset.code,
        "available": format(b.available, asset.scale),
        "held": format(b.held, asset.scale),
    })
}

fn fill_json(t: &TradeRow, user: u64, r: &RefData) -> Value {
    let symbol = &r.symbols[&t.symbol];
    let (bs, qs) = (r.base_scale(symbol), r.quote_scale(symbol));
    // A self-trade is reported from the buyer's side.
    let side = if t.buyer == user {
        Side::Buy
    } else {
        Side::Sell
    };
    let (order, fee, fee_asset, fee_scale) = match side {
        Side::Buy => (t.buy_order, t.buyer_fee, symbol.base_asset, bs),
        Side::Sell => (t.sell_order, t.seller_fee, symbol.quote_asset, qs),
    };
    json!({
        "trade_id": t.trade_id,
        "symbol": symbol.name,
        "order_id": order,
        "side": side_text(side),
        "role": if t.taker_side == side { "TAKER" } else { "MAKER" },
        "price": format(t.price, qs),
        "quantity": format(t.qty, bs),
        "quote_quantity": format(t.quote_qty, qs),
        "fee": format(fee, fee_scale),
        "fee_asset": r.asset(fee_asset).code,
        "time_ms": t.created_ms,
        "cursor": t.seq,
    })
}

pub fn symbol_json(s: &SymbolRow, r: &RefData) -> Value {
    let (bs, qs) = (r.base_scale(s), r.quote_scale(s));
    json!({
        "symbol": s.name,
        "base": r.asset(s.base_asset).code,
        "quote": r.asset(s.quote_asset).code,
        "tick_size": format(s.tick_size, qs),
        "lot_size": format(s.lot_size, bs),
        "min_notional": format(s.min_notional, qs),
        "maker_fee_bps": s.maker_fee_bps,
        "taker_fee_bps": s.taker_fee_bps,
        "status": text(&s.status),
    })
}

fn parse_id(what: &'static str, text: &str) -> Result<u64, Problem> {
    text.parse::<u64>().map_err(|_| {
        Problem::bad_request("INVALID_ID", format!("{what} must be a positive integer"))
    })
}

fn parse_limit(limit: Option<&str>) -> Result<usize, Problem> {
    match limit {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => Ok(n),
            _ => Err(Problem::bad_request(
                "INVALID_LIMIT",
                format!("limit must be 1-{PAGE_LIMIT_MAX}"),
            )),
        },
    }
}

fn symbol_filter(name: Option<&str>, r: &RefData) -> Result<Option<u32>, Problem> {
    name.map(|n| r.symbol_by_name(n).map(|s| s.id).map_err(Problem::from))
        .transpose()
}

pub async fn place_order(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    ApiJson(request): ApiJson<OrderRequest>,
) -> Result<impl IntoResponse, Problem> {
    let placed = state.exchange.place_order(user, &request).await?;
    let status = if placed.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK // a repeated client order id: the original order
    };
    Ok((
        status,
        Json(order_view(&placed.order, &state.exchange.refdata())).into_response(),
    ))
}

pub async fn get_order(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    Path(id): Path<String>,
) -> Result<axum::response::Response, Problem> {
    let order = state
        .exchange
        .order(user, parse_id("order id", &id)?)
        .await?;
    let r = state.exchange.refdata();
    Ok(Json(order_view(&order, &r)).into_response())
}

pub async fn cancel_order(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    let order = state
        .exchange
        .cancel_order(user, parse_id("order id", &id)?)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(order_view(&order, &state.exchange.refdata())).into_response(),
    ))
}

#[derive(Deserialize)]
pub struct ListParams {
    symbol: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

pub async fn list_orders(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, Problem> {
    let r = state.exchange.refdata();
    let status = p
        .status
        .as_deref()
        .map(|s| {
            serde_json::from_value::<OrderStatus>(Value::String(s.to_string())).map_err(|_| {
                Problem::bad_request(
                    "INVALID_STATUS",
                    "status must be NEW, PARTIALLY_FILLED, FILLED, CANCELED, REJECTED or EXPIRED",
                )
            })
        })
        .transpose()?;
    let limit = parse_limit(p.limit.as_deref())?;
    let query = OrderQuery {
        user,
        symbol: symbol_filter(p.symbol.as_deref(), &r)?,
        status,
        before_id: p
            .before
            .as_deref()
            .map(|b| parse_id("before", b))
            .transpose()?,
        limit,
    };
    let orders = state.exchange.orders(query).await?;
    let next = (orders.len() == limit)
        .then(|| orders.last().map(|o| o.id))
        .flatten();
    Ok(Json(json!({
        "orders": orders.iter().map(|o| order_view(o, &r)).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

pub async fn balances(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
) -> Result<Json<Value>, Problem> {
    let r = state.exchange.refdata();
    let rows = state.exchange.balances(user).await?;
    Ok(Json(json!({
        "balances": rows.iter().map(|b| balance_json(b, &r)).collect::<Vec<_>>(),
    })))
}

pub async fn fills(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, Problem> {
    let r = state.exchange.refdata();
    if p.status.is_some() {
        return Err(Problem::bad_request(
            "UNEXPECTED_FIELD",
            "fills have no status",
        ));
    }
    let limit = parse_limit(p.limit.as_deref())?;
    let before = p
        .before
        .as_deref()
        .map(|b| parse_id("before", b).map(|v| v.min(i64::MAX as u64) as i64))
        .transpose()?;
    let rows = state
        .exchange
        .fills(user, symbol_filter(p.symbol.as_deref(), &r)?, before, limit)
        .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|t| t.seq))
        .flatten();
    Ok(Json(json!({
        "fills": rows.iter().map(|t| fill_json(t, user, &r)).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

pub async fn list_assets(State(state): State<AppState>) -> Json<Value> {
    let r = state.exchange.refdata();
    let mut assets: Vec<_> = r.assets.values().collect();
    assets.sort_by_key(|a| a.id);
    Json(json!({
        "assets": assets.iter().map(|a| json!({"code": a.code, "scale": a.scale})).collect::<Vec<_>>()
    }))
}

// ---- admin ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
}

pub async fn create_user(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<impl IntoResponse, Problem> {
    let user = state.exchange.create_user(&body.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"user_id": user.id, "name": user.name})),
    ))
}

pub async fn create_asset(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<NewAsset>,
) -> Result<impl IntoResponse, Problem> {
    let asset = state.exchange.create_asset(body).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"code": asset.code, "scale": asset.scale})),
    ))
}

pub async fn create_symbol(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<NewSymbol>,
) -> Result<impl IntoResponse, Problem> {
    let symbol = state.exchange.create_symbol(&body).await?;
    Ok((
        StatusCode::CREATED,
        Json(symbol_json(&symbol, &state.exchange.refdata())),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolUpdate {
    status: agora_store::SymbolStatus,
}

pub async fn update_symbol(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SymbolUpdate>,
) -> Result<Json<Value>, Problem> {
    let symbol = state.exchange.set_symbol_status(&name, body.status).await?;
    Ok(Json(symbol_json(&symbol, &state.exchange.refdata())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeposit {
    user_id: u64,
    asset: String,
    amount: String,
}

pub async fn deposit(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<NewDeposit>,
) -> Result<Json<Value>, Problem> {
    let balance = state
        .exchange
        .deposit(body.user_id, &body.asset, &body.amount)
        .await?;
    Ok(Json(balance_json(&balance, &state.exchange.refdata())))
}

pub async fn book(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let r = state.exchange.refdata();
    let symbol = r.symbol_by_name(&name)?;
    let snapshot = state
        .exchange
        .book(symbol.id)
        .await?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "UNKNOWN_SYMBOL", "no book"))?;
    let (bs, qs) = (r.base_scale(symbol), r.quote_scale(symbol));
    Ok(Json(json!({
        "symbol": symbol.name,
        "input_seq": snapshot.input_seq,
        "next_trade_id": snapshot.next_trade_id,
        "orders": snapshot.resting.iter().map(|o| json!({
            "order_id": o.id,
            "user_id": o.user,
            "side": side_text(o.side),
            "price": format(o.price, qs),
            "remaining": format(o.remaining, bs),
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
pub struct ReconcileParams {
    full: Option<String>,
}

/// `?full=true` drops the incremental audit state first and rechecks the whole ledger.
pub async fn reconcile(
    State(state): State<AppState>,
    _: Admin,
    Query(p): Query<ReconcileParams>,
) -> Result<Json<Value>, Problem> {
    let full = match p.full.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(Problem::bad_request(
                "INVALID_FULL",
                "full must be true or false",
            ))
        }
    };
    let report = state.exchange.reconcile(full).await?;
    Ok(Json(json!(report)))
}

pub async fn status(State(state): State<AppState>, _: Admin) -> Json<Value> {
    Json(json!(state.exchange.status()))
}

pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    if state.exchange.status().ready {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        )
    }
}
