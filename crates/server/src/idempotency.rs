//! `Idempotency-Key` on the state-changing endpoints (placing and cancelling orders,
//! deposits), with Stripe's semantics, kept in the cache port (`agora_cache::Idempotency`):
//!
//! - the first request with a key runs and its answer is stored for `--idempotency-ttl-secs`
//!   — if it is definite: 2xx, or 4xx other than 408 and 429 (a 5xx, a timeout or a refusal
//!   to serve says nothing about what the request would do, so the key is freed for a retry);
//! - the same key with the same method, path and body gets that answer again, with
//!   `Idempotent-Replayed: true`; with anything else, 422 `IDEMPOTENCY_KEY_REUSED`;
//! - while the first is still running, 409 `IDEMPOTENCY_KEY_IN_USE`;
//! - keys are per acting user (per admin for admin endpoints), 1-255 visible ASCII
//!   characters (400 `INVALID_IDEMPOTENCY_KEY`).
//!
//! An api-only process whose writer did not answer (`WRITER_NO_ANSWER`: the request may
//! have been done) keeps the key held until its lease ends; retries meanwhile get 409.
//!
//! A request without the header does not touch the cache. Once a keyed request has started,
//! it runs to the end on its own task even if the client goes away or the request deadline
//! answers 408, and its answer is stored: the client's retry then gets it, instead of a
//! second order. The cache is not the store: after a restart of the in-process cache the
//! keys are gone — `client_order_id` is the guard that survives everything.

use crate::api::{ActingUser, Admin};
use crate::problem::Problem;
use crate::{AppState, BODY_BYTES_MAX, REQUEST_TIMEOUT};
use agora_cache::{Begin, Fingerprint, Lease};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::Route;
use futures_util::future::{BoxFuture, Either};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::future::ready;
use std::task::{Context, Poll};
use tower::Service;
use utoipa::IntoParams;
use utoipa_axum::router::UtoipaMethodRouter;

pub const HEADER: &str = "idempotency-key";
/// Set on an answer that was stored, not computed now.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const KEY_LEN_MAX: usize = 255;
/// How long a running request holds its key. A request answers within the request deadline
/// or runs on to the end on its own task (the sequencer answers or the process stops), so
/// twice the deadline is never cut short; a process that dies mid-request leaves its keys
/// held this long in a shared cache.
pub const LEASE_MS: u64 = 2 * REQUEST_TIMEOUT.as_millis() as u64;

/// The `Idempotency-Key` header as the OpenAPI document describes it
/// (`params(IdempotencyKeyHeader)` on an operation).
pub struct IdempotencyKeyHeader;

impl IntoParams for IdempotencyKeyHeader {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[!-~]{1,255}$"))
            .max_length(Some(KEY_LEN_MAX));
        vec![ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Makes retries safe: the first request with a key runs; the same key with the \
                 same request again gets the first answer (marked `Idempotent-Replayed: true`) \
                 for 24 hours (`--idempotency-ttl-secs`). 2xx and 4xx answers are kept; 5xx, \
                 408 and 429 are not, so the key can be retried. The same key with another \
                 request (method, path or body): 422 `IDEMPOTENCY_KEY_REUSED`; while the \
                 first still runs: 409 `IDEMPOTENCY_KEY_IN_USE`. Keys are per user; a V4 UUID \
                 is a good one.",
            ))
            .schema(Some(schema))
            .build()]
    }
}

/// Whose keys a route's requests use.
#[derive(Clone, Copy)]
pub enum Scope {
    /// The acting user's (`X-User-Id`).
    User,
    /// The operators' (`X-Admin-Token`).
    Admin,
}

/// Puts `Idempotency-Key` handling in front of the handlers of `routes`.
pub fn guarded(
    routes: UtoipaMethodRouter<AppState>,
    scope: Scope,
    state: &AppState,
) -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, router) = routes;
    let layer = GuardLayer {
        state: state.clone(),
        scope,
    };
    (schemas, paths, router.layer(layer))
}

#[derive(Clone)]
struct GuardLayer {
    state: AppState,
    scope: Scope,
}

impl tower::Layer<Route> for GuardLayer {
    type Service = Guard;

    fn layer(&self, handler: Route) -> Guard {
        Guard {
            handler,
            state: self.state.clone(),
            scope: self.scope,
        }
    }
}

/// A tower service rather than a `from_fn` middleware so that a request without the header,
/// nearly every one, goes straight to the handler: no allocation, no state cloned.
#[derive(Clone)]
struct Guard {
    handler: Route,
    state: AppState,
    scope: Scope,
}

impl tower::Service<Request> for Guard {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<RouteFuture<Infallible>, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Route as Service<Request>>::poll_ready(&mut self.handler, cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(key) = request.headers().get(HEADER) else {
            return Either::Left(self.handler.call(request));
        };
        let key = match parse_key(key) {
            Ok(key) => key.to_string(),
            Err(problem) => return Either::Right(Box::pin(ready(Ok(problem.into_response())))),
        };
        // The handler that was polled ready goes with the request; a clone stays.
        let handler = self.handler.clone();
        let handler = std::mem::replace(&mut self.handler, handler);
        let (state, scope) = (self.state.clone(), self.scope);
        Either::Right(Box::pin(async move {
            Ok(keyed(state, scope, key, request, handler).await)
        }))
    }
}

/// A request with a key: authenticated, fingerprinted, then run once, replayed or refused.
async fn keyed(
    state: AppState,
    scope: Scope,
    key: String,
    request: Request,
    handler: Route,
) -> Response {
    // Authenticate first: no request may take a key in a scope it cannot act in.
    let scope = match scope {
        Scope::User => ActingUser::from_headers(request.headers(), &state)
            .await
            .map(|ActingUser(user)| format!("user:{user}")),
        Scope::Admin => Admin::from_headers(request.headers(), &state).map(|_| "admin".into()),
    };
    let scope = match scope {
        Ok(scope) => scope,
        Err(problem) => return problem.into_response(),
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, BODY_BYTES_MAX).await else {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the body is larger than {BODY_BYTES_MAX} bytes"),
        )
        .into_response();
    };
    let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let fingerprint =
        Fingerprint::of(&[parts.method.as_str().as_bytes(), target.as_bytes(), &body]);
    match state
        .cache
        .begin(&scope, &key, &fingerprint, LEASE_MS)
        .await
    {
        Ok(Begin::New(lease)) => {
            let request = Request::from_parts(parts, Body::from(body));
            let held = Held { scope, key, lease };
            // Its own task: it finishes, and its answer is stored, whatever happens to this
            // request (client gone, deadline).
            tokio::spawn(run(state, held, request, handler))
                .await
                .unwrap_or_else(|_| internal_error())
        }
        Ok(Begin::Done(stored)) => match StoredResponse::decode(&stored) {
            Some(stored) => stored.replay(),
            None => {
                tracing::error!(%scope, %key, "a stored idempotent response is unreadable");
                internal_error()
            }
        },
        Ok(Begin::InProgress) => Problem::new(
            StatusCode::CONFLICT,
            "IDEMPOTENCY_KEY_IN_USE",
            "a request with this Idempotency-Key is still running; retry shortly",
        )
        .into_response(),
        Ok(Begin::Mismatch) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IDEMPOTENCY_KEY_REUSED",
            "this Idempotency-Key was used for a different request (method, path or body); \
             use a new key for a new request",
        )
        .into_response(),
        // Running without the check could do twice what the client asked to be done once.
        Err(e) => {
            tracing::warn!(error = %e, "idempotency key not checked");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "CACHE_UNAVAILABLE",
                "idempotency keys cannot be checked right now; retry shortly",
            )
            .into_response()
        }
    }
}

/// A key this request holds.
struct Held {
    scope: String,
    key: String,
    lease: Lease,
}

/// Runs the handler, then stores its answer (definite) or frees the key (anything else).
async fn run(state: AppState, held: Held, request: Request, mut handler: Route) -> Response {
    let Held { scope, key, lease } = held;
    let response = std::panic::AssertUnwindSafe(handler.call(request))
        .catch_unwind()
        .await;
    let response = match response {
        Ok(Ok(response)) if is_definite(response.status()) => response,
        // Sent to the writer's process, which did not answer: the request may have been
        // done, so the key is not freed for a retry that could do it twice. It stays held
        // (retries get 409) until its lease ends.
        Ok(Ok(response)) if outcome_unknown(&response) => return response,
        Ok(Ok(response)) => {
            free(&state, &scope, &key, lease).await;
            return response;
        }
        Ok(Err(never)) => match never {},
        Err(_) => {
            tracing::error!("handler panicked");
            free(&state, &scope, &key, lease).await;
            return internal_error();
        }
    };
    let (parts, body) = response.into_parts();
    // The handlers' bodies are in memory already: collecting them cannot fail or wait.
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        free(&state, &scope, &key, lease).await;
        return internal_error();
    };
    let stored = StoredResponse {
        status: parts.status,
        content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        body: body.clone(),
    };
    match state
        .cache
        .complete(
            &scope,
            &key,
            lease,
            &stored.encode(),
            state.idempotency_ttl_ms,
        )
        .await
    {
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, %scope, %key, "idempotent response not stored"),
    }
    Response::from_parts(parts, Body::from(body))
}

/// Frees a key for a retry. If the cache cannot be told, the lease frees it later.
async fn free(state: &AppState, scope: &str, key: &str, lease: Lease) {
    if let Err(e) = state.cache.abandon(scope, key, lease).await {
        tracing::warn!(error = %e, %scope, %key, "idempotency key not freed; its lease will");
    }
}

fn outcome_unknown(response: &Response) -> bool {
    response.extensions().get::<crate::problem::ProblemCode>()
        == Some(&crate::problem::ProblemCode(crate::writer_link::NO_ANSWER))
}

/// 2xx and 4xx say what the request does; 408 (cut off), 429 (not served) and 5xx do not.
fn is_definite(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error()
            && status != StatusCode::REQUEST_TIMEOUT
            && status != StatusCode::TOO_MANY_REQUESTS)
}

fn internal_error() -> Response {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "internal error",
    )
    .into_response()
}

fn parse_key(value: &HeaderValue) -> Result<&str, Problem> {
    let bytes = value.as_bytes();
    if (1..=KEY_LEN_MAX).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic()) {
        Ok(value.to_str().expect("visible ASCII"))
    } else {
        Err(Problem::bad_request(
            "INVALID_IDEMPOTENCY_KEY",
            format!("Idempotency-Key must be 1-{KEY_LEN_MAX} visible ASCII characters"),
        ))
    }
}

/// An answer as the cache keeps it: status (2 bytes), content type (length byte, then the
/// bytes), body.
#[derive(Debug, PartialEq)]
struct StoredResponse {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl StoredResponse {
    fn encode(&self) -> Vec<u8> {
        let content_type = self
            .content_type
            .as_ref()
            .map_or(&b""[..], |v| v.as_bytes());
        // Content types here are short (`application/problem+json`); a longer one is dropped
        // rather than stored wrong.
        let content_type = if content_type.len() <= usize::from(u8::MAX) {
            content_type
        } else {
            &b""[..]
        };
        let mut out = Vec::with_capacity(3 + content_type.len() + self.body.len());
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.push(content_type.len() as u8);
        out.extend_from_slice(content_type);
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<StoredResponse> {
        let (status, rest) = bytes.split_at_checked(2)?;
        let status = StatusCode::from_u16(u16::from_be_bytes([status[0], status[1]])).ok()?;
        let (&len, rest) = rest.split_first()?;
        let (content_type, body) = rest.split_at_checked(usize::from(len))?;
        let content_type = match content_type {
            [] => None,
            bytes => Some(HeaderValue::from_bytes(bytes).ok()?),
        };
        Some(StoredResponse {
            status,
            content_type,
            body: Bytes::copy_from_slice(body),
        })
    }

    fn replay(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        match self.content_type {
            Some(content_type) => headers.insert(header::CONTENT_TYPE, content_type),
            None => headers.remove(header::CONTENT_TYPE),
        };
        headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_responses_round_trip() {
        for content_type in [None, Some(HeaderValue::from_static("application/json"))] {
            let stored = StoredResponse {
                status: StatusCode::ACCEPTED,
                content_type,
                body: Bytes::from_static(b"{\"order_id\":1}"),
            };
            assert_eq!(StoredResponse::decode(&stored.encode()), Some(stored));
        }
        assert_eq!(StoredResponse::decode(b"\x00"), None);
        assert_eq!(StoredResponse::decode(b"\x00\xca\x09ab"), None); // shorter than said
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        let ok = |s: &str| parse_key(&HeaderValue::from_str(s).unwrap()).is_ok();
        assert!(ok("3c9ae5ea-980f-4ebd-a027-04529942b95e"));
        assert!(ok(&"k".repeat(255)));
        assert!(!ok(&"k".repeat(256)));
        assert!(!ok(""));
        assert!(!ok("with space"));
        assert!(parse_key(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_err());
    }

    #[test]
    fn only_definite_answers_are_kept() {
        for (status, kept) in [
            (200, true),
            (202, true),
            (400, true),
            (404, true),
            (409, true),
        ]
        .into_iter()
        .chain([(408, false), (429, false), (500, false), (503, false)])
        {
            assert_eq!(
                is_definite(StatusCode::from_u16(status).unwrap()),
                kept,
                "{status}"
            );
        }
    }
}
