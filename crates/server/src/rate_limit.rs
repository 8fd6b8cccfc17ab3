//! The per-client rate limit of `/api/v1` (`--rate-limit`, `--rate-limit-burst`; off unless
//! set): GCRA in the cache port, per acting user, or per IP address for requests without a
//! (known) `X-User-Id`. Past it: 429 `RATE_LIMITED` with `Retry-After` (whole seconds,
//! rounded up). With a shared cache (Redis) every API process counts against one limit.
//!
//! If the cache cannot answer, requests are let through (and that is logged, at most once a
//! second): a limit that fails closed would turn a cache outage into an API outage.

use crate::api::{client_key, ActingUser};
use crate::listener::PeerAddr;
use crate::problem::{Problem, PROBLEM_JSON};
use crate::AppState;
use agora_cache::Rate;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Counts the request against its client's limit; installed only when a rate is set.
pub async fn limit(
    State((state, rate)): State<(AppState, Rate)>,
    request: Request,
    next: Next,
) -> Response {
    // A user id that names no user is an anonymous request: otherwise made-up ids would
    // each get their own bucket.
    let user = if request.headers().contains_key("x-user-id") {
        ActingUser::from_headers(request.headers(), &state)
            .await
            .ok()
            .map(|ActingUser(user)| user)
    } else {
        None
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0 .0.ip());
    match state.cache.allow(&client_key(user, peer), rate).await {
        Ok(decision) if decision.allowed => next.run(request).await,
        Ok(decision) => {
            let retry_after_s = decision.retry_after_ms.div_ceil(1_000).max(1);
            let mut response = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!(
                    "more than {} requests at once or {:.0} a second; retry after {retry_after_s} s",
                    rate.burst,
                    1e6 / rate.interval_us as f64
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            response
        }
        Err(e) => {
            warn_at_most_once_a_second(&e);
            next.run(request).await
        }
    }
}

fn warn_at_most_once_a_second(e: &agora_cache::CacheError) {
    static LAST_WARNED_S: AtomicU64 = AtomicU64::new(0);
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARNED_S.swap(now_s, Ordering::Relaxed) != now_s {
        tracing::warn!(error = %e, "rate limit not checked; letting requests through");
    }
}

/// The 429 answer in the OpenAPI document: a problem with `Retry-After`.
pub struct RateLimited;

impl<'r> utoipa::ToResponse<'r> for RateLimited {
    fn response() -> (
        &'r str,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    ) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, ResponseBuilder, Type};
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build();
        let retry_after = HeaderBuilder::new()
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            ))
            .description(Some("Seconds until a request would be allowed"))
            .build();
        let response = ResponseBuilder::new()
            .description(
                "Rate limited (`RATE_LIMITED`, when `--rate-limit` is set): too many requests \
                 from this user, or from this IP address without `X-User-Id`",
            )
            .content(PROBLEM_JSON, content)
            .header("Retry-After", retry_after)
            .build();
        ("RateLimited", response.into())
    }
}
