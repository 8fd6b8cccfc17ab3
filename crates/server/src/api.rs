//! REST handlers under `/api/v1`: decimal strings in and out, problem+json on every error.
//! Each handler carries its OpenAPI description (`#[utoipa::path]`), and every body it
//! answers with is a typed view deriving its schema, so `/api/v1/openapi.json` is generated
//! from this code and cannot drift from it.

use crate::idempotency::IdempotencyKeyHeader;
use crate::openapi::{ADMIN, PUBLIC, TRADING};
use crate::problem::{
    limit_param, path_symbol, ApiJson, ApiPath as Path, ApiQuery as Query, Problem,
};
use crate::AppState;
use agora_engine::{SelfTradePrevention, Side, TimeInForce};
use agora_exchange::{NewAsset, NewSymbol, OrderRequest, RefData, SymbolUpdate};
use agora_ledger::units::format;
use agora_store::{
    BalanceRow, FillRow, OrderQuery, OrderRow, OrderStatus, OrderType, SymbolRow, SymbolStatus,
};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const PAGE_LIMIT_DEFAULT: usize = 100;
pub const PAGE_LIMIT_MAX: usize = 1_000;

/// The acting user. Until identity lands this is the `X-User-Id` header, and this is the
/// only place that reads it.
pub struct ActingUser(pub u64);

impl ActingUser {
    /// Reads the acting user from request headers (the only reader of `X-User-Id`).
    pub async fn from_headers(
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
        if !state.exchange.user_exists(id).await? {
            return Err(unauthenticated("unknown user"));
        }
        Ok(ActingUser(id))
    }
}

impl FromRequestParts<AppState> for ActingUser {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        ActingUser::from_headers(&parts.headers, state).await
    }
}

/// Admin endpoints need `X-Admin-Token` when a token is configured (always, when agora
/// listens beyond loopback: see `settings`).
pub struct Admin;

impl Admin {
    /// Checks `X-Admin-Token` in request headers (the only reader of it).
    pub fn from_headers(
        headers: &axum::http::HeaderMap,
        state: &AppState,
    ) -> Result<Admin, Problem> {
        match &state.admin_token {
            None => Ok(Admin),
            Some(token) => {
                let sent = headers
                    .get("x-admin-token")
                    .map_or(&b""[..], |v| v.as_bytes());
                if tokens_match(sent, token.as_bytes()) {
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

impl FromRequestParts<AppState> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        Admin::from_headers(&parts.headers, state)
    }
}

/// Who a request comes from, for per-client limits (rate limits, WebSocket connections):
/// the acting user when there is one, else the peer's IP address.
pub fn client_key(user: Option<u64>, peer: std::net::IpAddr) -> String {
    match user {
        Some(u) => format!("user:{u}"),
        None => format!("ip:{peer}"),
    }
}

/// Whether `sent` is `token`, in time that depends only on the token's length: how long a
/// wrong guess takes says nothing about the token, not even how long it is.
fn tokens_match(sent: &[u8], token: &[u8]) -> bool {
    use subtle::{Choice, ConstantTimeEq};
    let mut same: Choice = (sent.len() as u64).ct_eq(&(token.len() as u64));
    for (i, t) in token.iter().enumerate() {
        same &= sent.get(i).copied().unwrap_or(0).ct_eq(t);
    }
    same.into()
}

/// An order as the API shows it: decimal strings at the assets' scales.
#[derive(Serialize, ToSchema)]
pub struct OrderView<'a> {
    order_id: u64,
    client_order_id: Option<&'a str>,
    symbol: &'a str,
    side: Side,
    #[serde(rename = "type")]
    order_type: OrderType,
    time_in_force: TimeInForce,
    /// Limit price (LIMIT orders).
    price: Option<String>,
    /// Base quantity (LIMIT orders and MARKET SELLs).
    quantity: Option<String>,
    /// Quote budget (MARKET BUYs).
    quote_quantity: Option<String>,
    /// NEW and PARTIALLY_FILLED are open; FILLED, CANCELED, EXPIRED (IOC/FOK/market rest,
    /// or a market buy whose book ran dry), EXPIRED_IN_MATCH (self-trade prevention) and
    /// REJECTED are final. A quote-budget MARKET BUY is FILLED when what is left of its
    /// budget cannot buy one more lot at the price where matching stopped.
    status: OrderStatus,
    filled_quantity: String,
    filled_quote: String,
    /// Fees paid so far, in `fee_asset` (what the order receives).
    fee: String,
    fee_asset: &'a str,
    /// What is still held for the order, in `hold_asset`.
    held: String,
    hold_asset: &'a str,
    /// A cancel was asked for and waits for the engine; the hold is released when it
    /// confirms.
    cancel_requested: bool,
    self_trade_prevention_mode: SelfTradePrevention,
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
        self_trade_prevention_mode: o.stp,
        created_at_ms: o.created_ms,
        updated_at_ms: o.updated_ms,
    }
}

/// A page of orders, newest first.
#[derive(Serialize, ToSchema)]
pub struct OrderPage<'a> {
    orders: Vec<OrderView<'a>>,
    /// Pass as `before` for the next page; null on the last one.
    next_before: Option<u64>,
}

/// One asset's balance of the acting user.
#[derive(Serialize, ToSchema)]
pub struct BalanceView<'a> {
    asset: &'a str,
    available: String,
    /// Held for open orders.
    held: String,
}

pub fn balance_view<'a>(b: &BalanceRow, r: &'a RefData) -> BalanceView<'a> {
    let asset = r.asset(b.asset);
    BalanceView {
        asset: &asset.code,
        available: format(b.available, asset.scale),
        held: format(b.held, asset.scale),
    }
}

#[derive(Serialize, ToSchema)]
pub struct BalanceList<'a> {
    balances: Vec<BalanceView<'a>>,
}

/// One side of a trade as its owner sees it: a self-trade is two fills, one per side.
#[derive(Serialize, ToSchema)]
pub struct FillView<'a> {
    /// Orders the user's fills and pages them (`before`).
    fill_id: i64,
    /// The trade's id within its symbol.
    trade_id: u64,
    symbol: &'a str,
    order_id: u64,
    side: Side,
    role: Role,
    price: String,
    quantity: String,
    quote_quantity: String,
    /// This side's fee: floor(what it receives × rate / 10,000), per fill.
    fee: String,
    fee_asset: &'a str,
    time_ms: i64,
}

/// Whether a fill's order was resting (MAKER) or arriving (TAKER).
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Maker,
    Taker,
}

fn fill_view<'a>(f: &FillRow, r: &'a RefData) -> FillView<'a> {
    let t = &f.trade;
    let symbol = &r.symbols[&t.symbol];
    let (bs, qs) = (r.base_scale(symbol), r.quote_scale(symbol));
    let (order, fee, fee_asset, fee_scale) = match f.side {
        Side::Buy => (t.buy_order, t.buyer_fee, symbol.base_asset, bs),
        Side::Sell => (t.sell_order, t.seller_fee, symbol.quote_asset, qs),
    };
    FillView {
        fill_id: f.fill_id,
        trade_id: t.trade_id,
        symbol: &symbol.name,
        order_id: order,
        side: f.side,
        role: if t.taker_side == f.side {
            Role::Taker
        } else {
            Role::Maker
        },
        price: format(t.price, qs),
        quantity: format(t.qty, bs),
        quote_quantity: format(t.quote_qty, qs),
        fee: format(fee, fee_scale),
        fee_asset: &r.asset(fee_asset).code,
        time_ms: t.created_ms,
    }
}

/// A page of fills, newest first.
#[derive(Serialize, ToSchema)]
pub struct FillPage<'a> {
    fills: Vec<FillView<'a>>,
    /// Pass as `before` for the next page; null on the last one.
    next_before: Option<i64>,
}

/// A symbol and its trading rules.
#[derive(Serialize, ToSchema)]
pub struct MarketView<'a> {
    symbol: &'a str,
    base: &'a str,
    quote: &'a str,
    tick_size: String,
    lot_size: String,
    min_notional: String,
    maker_fee_bps: u32,
    taker_fee_bps: u32,
    /// Largest quantity of one order.
    max_quantity: String,
    default_self_trade_prevention_mode: SelfTradePrevention,
    status: SymbolStatus,
}

pub fn market_view<'a>(s: &'a SymbolRow, r: &'a RefData) -> MarketView<'a> {
    let (bs, qs) = (r.base_scale(s), r.quote_scale(s));
    MarketView {
        symbol: &s.name,
        base: &r.asset(s.base_asset).code,
        quote: &r.asset(s.quote_asset).code,
        tick_size: format(s.tick_size, qs),
        lot_size: format(s.lot_size, bs),
        min_notional: format(s.min_notional, qs),
        maker_fee_bps: s.maker_fee_bps,
        taker_fee_bps: s.taker_fee_bps,
        max_quantity: format(s.max_quantity, bs),
        default_self_trade_prevention_mode: s.default_stp,
        status: s.status,
    }
}

#[derive(Serialize, ToSchema)]
pub struct AssetView<'a> {
    code: &'a str,
    /// Decimal places of its amounts.
    scale: u32,
}

#[derive(Serialize, ToSchema)]
pub struct AssetList<'a> {
    assets: Vec<AssetView<'a>>,
}

/// An id in a path: a string of digits, or 400. A number too large for any id names nothing
/// that can exist: `None`, which the caller answers with 404.
fn path_id(what: &'static str, text: &str) -> Result<Option<u64>, Problem> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::bad_request(
            "INVALID_ID",
            format!("{what} must be a positive integer"),
        ));
    }
    Ok(text
        .parse::<u64>()
        .ok()
        .filter(|&id| id <= agora_exchange::ORDER_ID_MAX))
}

/// A paging cursor (`before`): 1 to 2^63 − 1, or 400.
fn parse_cursor(text: &str) -> Result<i64, Problem> {
    text.parse::<i64>().ok().filter(|&v| v > 0).ok_or_else(|| {
        Problem::bad_request(
            "INVALID_ID",
            format!("before must be an integer from 1 to {}", i64::MAX),
        )
    })
}

fn not_found(id: &str) -> Problem {
    Problem::from(agora_exchange::order_not_found(id))
}

fn parse_limit(limit: Option<&str>) -> Result<usize, Problem> {
    limit_param(limit, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX)
}

fn symbol_filter(name: Option<&str>, r: &RefData) -> Result<Option<u32>, Problem> {
    name.map(|n| r.symbol_by_name(n).map(|s| s.id).map_err(Problem::from))
        .transpose()
}

/// Places an order. The funds it needs are held at once, in the same transaction as the
/// order; the answer means the order is durable and on its way to the engine (follow it
/// with `GET /api/v1/orders/{id}` or the WebSocket user stream).
#[utoipa::path(
    post, path = "/api/v1/orders", tag = TRADING, security(("user_id" = [])),
    params(IdempotencyKeyHeader),
    request_body = OrderRequest,
    responses(
        (status = 202, description = "Accepted: held and queued for matching", body = OrderView),
        (status = 200, description = "A repeated `client_order_id`: the original order", body = OrderView),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 409, response = Problem), (status = 413, response = Problem),
        (status = 415, response = Problem), (status = 422, response = Problem),
    )
)]
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

/// One of the acting user's orders (another user's order is not found).
#[utoipa::path(
    get, path = "/api/v1/orders/{id}", tag = TRADING, security(("user_id" = [])),
    params(("id" = String, Path, description = "Order id (digits)", pattern = "^[0-9]+$")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 404, response = Problem),
    )
)]
pub async fn get_order(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    Path(id): Path<String>,
) -> Result<axum::response::Response, Problem> {
    let id = path_id("order id", &id)?.ok_or_else(|| not_found(&id))?;
    let order = state.exchange.order(user, id).await?;
    let r = state.exchange.refdata();
    Ok(Json(order_view(&order, &r)).into_response())
}

/// Asks the engine to cancel an open order. The answer shows `cancel_requested`; the order
/// turns CANCELED and its hold is released when the engine confirms. Idempotent.
#[utoipa::path(
    delete, path = "/api/v1/orders/{id}", tag = TRADING, security(("user_id" = [])),
    params(
        ("id" = String, Path, description = "Order id (digits)", pattern = "^[0-9]+$"),
        IdempotencyKeyHeader,
    ),
    responses(
        (status = 202, description = "Cancel requested", body = OrderView),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 404, response = Problem), (status = 409, response = Problem),
        (status = 413, response = Problem), (status = 422, response = Problem),
    )
)]
pub async fn cancel_order(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    let id = path_id("order id", &id)?.ok_or_else(|| not_found(&id))?;
    let order = state.exchange.cancel_order(user, id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(order_view(&order, &state.exchange.refdata())).into_response(),
    ))
}

/// Paging and filters of the order list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this symbol.
    symbol: Option<String>,
    /// Only orders in this status.
    #[param(value_type = Option<OrderStatus>)]
    status: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(value_type = Option<u16>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Only orders older than this cursor (`next_before` of the previous page).
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
}

/// The acting user's orders, newest first.
#[utoipa::path(
    get, path = "/api/v1/orders", tag = TRADING, security(("user_id" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, response = Problem), (status = 401, response = Problem),
    )
)]
pub async fn list_orders(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    Query(p): Query<ListParams>,
) -> Result<axum::response::Response, Problem> {
    let r = state.exchange.refdata();
    let status =
        p.status
            .as_deref()
            .map(|s| {
                serde_json::from_value::<OrderStatus>(serde_json::Value::String(s.to_string()))
                    .map_err(|_| {
                        Problem::bad_request(
                            "INVALID_STATUS",
                            "status must be NEW, PARTIALLY_FILLED, FILLED, CANCELED, REJECTED, \
                         EXPIRED or EXPIRED_IN_MATCH",
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
            .map(|b| parse_cursor(b).map(|v| v as u64))
            .transpose()?,
        limit,
    };
    let orders = state.exchange.orders(query).await?;
    let next_before = (orders.len() == limit)
        .then(|| orders.last().map(|o| o.id))
        .flatten();
    Ok(Json(OrderPage {
        orders: orders.iter().map(|o| order_view(o, &r)).collect(),
        next_before,
    })
    .into_response())
}

/// The acting user's balances.
#[utoipa::path(
    get, path = "/api/v1/balances", tag = TRADING, security(("user_id" = [])),
    responses(
        (status = 200, description = "Every asset the user holds", body = BalanceList),
        (status = 401, response = Problem),
    )
)]
pub async fn balances(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
) -> Result<axum::response::Response, Problem> {
    let r = state.exchange.refdata();
    let rows = state.exchange.balances(user).await?;
    Ok(Json(BalanceList {
        balances: rows.iter().map(|b| balance_view(b, &r)).collect(),
    })
    .into_response())
}

/// Paging and filter of the fill list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FillParams {
    /// Only this symbol.
    symbol: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(value_type = Option<u16>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Only fills older than this cursor (`next_before` of the previous page).
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
}

/// The acting user's fills, newest first: one per side of each of their trades (a
/// self-trade shows as two). Fees are floored per fill.
#[utoipa::path(
    get, path = "/api/v1/fills", tag = TRADING, security(("user_id" = [])),
    params(FillParams),
    responses(
        (status = 200, description = "A page of fills", body = FillPage),
        (status = 400, response = Problem), (status = 401, response = Problem),
    )
)]
pub async fn fills(
    State(state): State<AppState>,
    ActingUser(user): ActingUser,
    Query(p): Query<FillParams>,
) -> Result<axum::response::Response, Problem> {
    let r = state.exchange.refdata();
    let limit = parse_limit(p.limit.as_deref())?;
    let before = p.before.as_deref().map(parse_cursor).transpose()?;
    let rows = state
        .exchange
        .fills(user, symbol_filter(p.symbol.as_deref(), &r)?, before, limit)
        .await?;
    let next_before = (rows.len() == limit)
        .then(|| rows.last().map(|f| f.fill_id))
        .flatten();
    Ok(Json(FillPage {
        fills: rows.iter().map(|f| fill_view(f, &r)).collect(),
        next_before,
    })
    .into_response())
}

/// Every listed asset.
#[utoipa::path(
    get, path = "/api/v1/assets", tag = PUBLIC,
    responses((status = 200, description = "The assets", body = AssetList))
)]
pub async fn list_assets(State(state): State<AppState>) -> axum::response::Response {
    let r = state.exchange.refdata();
    let mut assets: Vec<_> = r.assets.values().collect();
    assets.sort_by_key(|a| a.id);
    Json(AssetList {
        assets: assets
            .iter()
            .map(|a| AssetView {
                code: &a.code,
                scale: a.scale,
            })
            .collect(),
    })
    .into_response()
}

// ---- admin ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1-64 characters of A-Z, a-z, 0-9, -, _, ., @; unique.
    #[schema(example = "alice")]
    name: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserCreated {
    user_id: u64,
    name: String,
}

/// Creates a user (until identity lands, users act by sending `X-User-Id`).
#[utoipa::path(
    post, path = "/api/v1/admin/users", tag = ADMIN, security(("admin_token" = [])),
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = UserCreated),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 409, response = Problem), (status = 413, response = Problem),
        (status = 415, response = Problem),
    )
)]
pub async fn create_user(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<impl IntoResponse, Problem> {
    let user = state.exchange.create_user(&body.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserCreated {
            user_id: user.id,
            name: user.name,
        }),
    ))
}

/// Lists an asset.
#[utoipa::path(
    post, path = "/api/v1/admin/assets", tag = ADMIN, security(("admin_token" = [])),
    request_body = NewAsset,
    responses(
        (status = 201, description = "Created", body = AssetView),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 409, response = Problem), (status = 413, response = Problem),
        (status = 415, response = Problem),
    )
)]
pub async fn create_asset(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<NewAsset>,
) -> Result<impl IntoResponse, Problem> {
    let asset = state.exchange.create_asset(body).await?;
    let view = AssetView {
        code: &asset.code,
        scale: asset.scale,
    };
    Ok((StatusCode::CREATED, Json(view).into_response()))
}

/// Lists a symbol; its book opens at once.
#[utoipa::path(
    post, path = "/api/v1/admin/symbols", tag = ADMIN, security(("admin_token" = [])),
    request_body = NewSymbol,
    responses(
        (status = 201, description = "Created", body = MarketView),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 409, response = Problem), (status = 413, response = Problem),
        (status = 415, response = Problem),
    )
)]
pub async fn create_symbol(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<NewSymbol>,
) -> Result<impl IntoResponse, Problem> {
    let symbol = state.exchange.create_symbol(&body).await?;
    let r = state.exchange.refdata();
    Ok((
        StatusCode::CREATED,
        Json(market_view(&symbol, &r)).into_response(),
    ))
}

/// Halts or resumes trading, or changes the default self-trade prevention mode.
#[utoipa::path(
    patch, path = "/api/v1/admin/symbols/{symbol}", tag = ADMIN, security(("admin_token" = [])),
    params(("symbol" = String, Path, description = "Symbol name")),
    request_body = SymbolUpdate,
    responses(
        (status = 200, description = "The symbol as it is now", body = MarketView),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 404, response = Problem), (status = 413, response = Problem),
        (status = 415, response = Problem),
    )
)]
pub async fn update_symbol(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SymbolUpdate>,
) -> Result<axum::response::Response, Problem> {
    path_symbol(&state.exchange.refdata(), &name)?;
    let symbol = state.exchange.update_symbol(&name, body).await?;
    let r = state.exchange.refdata();
    Ok(Json(market_view(&symbol, &r)).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeposit {
    user_id: u64,
    #[schema(example = "USDT")]
    asset: String,
    /// A positive decimal string at the asset's scale.
    #[schema(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$", example = "1000.50")]
    amount: String,
}

/// Credits a user from the outside world (a balanced entry against the external account).
#[utoipa::path(
    post, path = "/api/v1/admin/deposits", tag = ADMIN, security(("admin_token" = [])),
    params(IdempotencyKeyHeader),
    request_body = NewDeposit,
    responses(
        (status = 200, description = "The user's balance of the asset", body = BalanceView),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 404, response = Problem), (status = 409, response = Problem),
        (status = 413, response = Problem), (status = 415, response = Problem),
        (status = 422, response = Problem),
    )
)]
pub async fn deposit(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<NewDeposit>,
) -> Result<axum::response::Response, Problem> {
    let balance = state
        .exchange
        .deposit(body.user_id, &body.asset, &body.amount)
        .await?;
    let r = state.exchange.refdata();
    Ok(Json(balance_view(&balance, &r)).into_response())
}

/// A resting order in the engine's book.
#[derive(Serialize, ToSchema)]
pub struct BookOrder {
    order_id: u64,
    user_id: u64,
    side: Side,
    price: String,
    remaining: String,
}

/// A symbol's book as the engine holds it, in priority order.
#[derive(Serialize, ToSchema)]
pub struct BookView<'a> {
    symbol: &'a str,
    /// Offset of the last input the book reflects.
    input_seq: i64,
    next_trade_id: u64,
    /// Bids best first, then asks best first; arrival order within a price.
    orders: Vec<BookOrder>,
}

/// The engine's book of a symbol, order by order.
#[utoipa::path(
    get, path = "/api/v1/admin/books/{symbol}", tag = ADMIN, security(("admin_token" = [])),
    params(("symbol" = String, Path, description = "Symbol name")),
    responses(
        (status = 200, description = "The book", body = BookView),
        (status = 400, response = Problem), (status = 401, response = Problem),
        (status = 404, response = Problem),
    )
)]
pub async fn book(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<axum::response::Response, Problem> {
    let r = state.exchange.refdata();
    let symbol = path_symbol(&r, &name)?;
    let snapshot = state
        .exchange
        .book(symbol.id)
        .await?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "UNKNOWN_SYMBOL", "no book"))?;
    let (bs, qs) = (r.base_scale(symbol), r.quote_scale(symbol));
    Ok(Json(BookView {
        symbol: &symbol.name,
        input_seq: snapshot.input_seq,
        next_trade_id: snapshot.next_trade_id,
        orders: snapshot
            .resting
            .iter()
            .map(|o| BookOrder {
                order_id: o.id,
                user_id: o.user,
                side: o.side,
                price: format(o.price, qs),
                remaining: format(o.remaining, bs),
            })
            .collect(),
    })
    .into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReconcileParams {
    /// true: drop the incremental audit state first and recheck the whole ledger.
    #[param(value_type = Option<bool>)]
    full: Option<String>,
}

/// Checks every ledger, order and book invariant against the store and the engine. Runs are
/// incremental (what changed since the last run, plus balances, holds, open orders and
/// every book in full); the first after start, and `full=true`, recheck all history.
#[utoipa::path(
    get, path = "/api/v1/admin/reconcile", tag = ADMIN, security(("admin_token" = [])),
    params(ReconcileParams),
    responses(
        (status = 200, description = "The report; `ok` false lists the problems", body = agora_exchange::reconcile::Report),
        (status = 400, response = Problem), (status = 401, response = Problem),
    )
)]
pub async fn reconcile(
    State(state): State<AppState>,
    _: Admin,
    Query(p): Query<ReconcileParams>,
) -> Result<Json<agora_exchange::reconcile::Report>, Problem> {
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
    Ok(Json(state.exchange.reconcile(full).await?))
}

/// Counters for operators and tests.
#[utoipa::path(
    get, path = "/api/v1/admin/status", tag = ADMIN, security(("admin_token" = [])),
    responses(
        (status = 200, description = "Counters", body = agora_exchange::Status),
        (status = 401, response = Problem),
    )
)]
pub async fn status(State(state): State<AppState>, _: Admin) -> Json<agora_exchange::Status> {
    Json(state.exchange.status())
}

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
}

/// Liveness and readiness: 200 once the engine has caught up after start, 503 before.
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    if state.exchange.status().ready {
        (StatusCode::OK, Json(Health { status: "ok" }))
    } else {
        let starting = Health { status: "starting" };
        (StatusCode::SERVICE_UNAVAILABLE, Json(starting))
    }
}

#[cfg(test)]
mod tests {
    use super::tokens_match;

    #[test]
    fn only_the_exact_token_matches() {
        let token = b"correct-horse-battery-staple";
        assert!(tokens_match(token, token));
        assert!(!tokens_match(b"correct-horse-battery-stapl", token));
        assert!(!tokens_match(b"correct-horse-battery-staple!", token));
        assert!(!tokens_match(b"correct-horse-battery-stapLe", token));
        assert!(!tokens_match(b"", token));
        assert!(!tokens_match(b"correct-horse-battery-staple\0", token));
    }
}
