//! The API contract: the OpenAPI 3.1 document of `/api/v1`, generated from the handlers'
//! `#[utoipa::path]` attributes and the views' schemas as the router is built (so a route
//! without a description cannot be added), served at `/api/v1/openapi.json`, with the
//! Swagger UI at `/docs` (its assets are compiled into the binary: no CDN at run time).

use crate::idempotency::{guarded, Scope};
use crate::problem::Problem;
use crate::rate_limit::RateLimited;
use crate::{api, market_api, AppState};
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const TRADING: &str = "trading";
pub const PUBLIC: &str = "market data";
pub const ADMIN: &str = "admin";

pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
pub const DOCS_PATH: &str = "/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agora",
        description = "An exchange on a double-entry transaction core. Amounts are decimal \
            strings, exact at each asset's scale; errors are RFC 9457 problems with a stable \
            `code`. Fees are charged on what each side receives, floored per fill (a fill \
            below 10,000 / bps minor units pays no fee). Market data streams (depth diffs, \
            trades, ticker, candles, the user stream) are on the WebSocket at `/ws`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Security),
    components(schemas(Problem), responses(Problem, RateLimited)),
    tags(
        (name = TRADING, description = "The acting user's orders, fills and balances (send \
            `X-User-Id` until identity lands)"),
        (name = PUBLIC, description = "Public market data, served from memory"),
        (name = ADMIN, description = "Operators: listing, deposits, books, reconciliation \
            (`X-Admin-Token` when one is configured; always beyond loopback)"),
    )
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let header = |name: &str, description: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                name,
                description,
            )))
        };
        components.add_security_scheme(
            "user_id",
            header("X-User-Id", "The acting user's id (until identity lands)"),
        );
        components.add_security_scheme(
            "admin_token",
            header("X-Admin-Token", "The token given with --admin-token"),
        );
    }
}

/// What any operation may answer besides its own responses: 408 when it takes longer than
/// the request timeout, 429 past the rate limit (when one is set), 503 while agora starts
/// (the engine catching up) or stops, or when the store or the cache cannot be reached for a
/// moment.
struct EveryOperation;

impl utoipa::Modify for EveryOperation {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Ref, RefOr};
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, response) in [
                    ("408", "Problem"),
                    ("429", "RateLimited"),
                    ("503", "Problem"),
                ] {
                    let response = RefOr::Ref(Ref::from_response_name(response));
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(response);
                }
            }
        }
    }
}

/// Every `/api/v1` route, each with its part of the document; the state-changing ones that
/// take `Idempotency-Key` behind its guard.
fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(guarded(routes!(api::place_order), Scope::User, state))
        .routes(routes!(api::list_orders))
        .routes(routes!(api::get_order))
        .routes(guarded(routes!(api::cancel_order), Scope::User, state))
        .routes(routes!(api::balances))
        .routes(routes!(api::fills))
        .routes(routes!(api::list_assets))
        .routes(routes!(market_api::markets))
        .routes(routes!(market_api::depth))
        .routes(routes!(market_api::trades))
        .routes(routes!(market_api::ticker_handler))
        .routes(routes!(market_api::candles))
        .routes(routes!(api::create_user))
        .routes(routes!(api::create_asset))
        .routes(routes!(api::create_symbol))
        .routes(routes!(api::update_symbol))
        .routes(guarded(routes!(api::deposit), Scope::Admin, state))
        .routes(routes!(api::book))
        .routes(routes!(api::reconcile))
        .routes(routes!(api::status))
}

/// The `/api/v1` routes, the document's route and the docs UI.
pub fn api_router(state: &AppState) -> Router<AppState> {
    let (router, mut document) = routes(state).split_for_parts();
    utoipa::Modify::modify(&EveryOperation, &mut document);
    router.merge(utoipa_swagger_ui::SwaggerUi::new(DOCS_PATH).url(OPENAPI_PATH, document))
}
