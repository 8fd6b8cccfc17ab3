//! API processes apart from the writer (`agora serve --roles api --writer-url …`).
//!
//! The writer's process serves its request port on its own listener at
//! [`REQUESTS_PATH`]: a [`Command`] in, the answer or the error out, behind the admin token.
//! An api-only process sends every state change there through a [`WriterClient`] (the
//! exchange's [`WriterPort`]), reads committed state from the store itself, and forwards what
//! only the writer's process has in memory — market data, engine books, status and
//! reconciliation — verbatim ([`forward`]). WebSockets are served by market processes only.

use crate::api::Admin;
use crate::problem::Problem;
use crate::{AppState, BODY_BYTES_MAX};
use agora_exchange::commands::WireError;
use agora_exchange::{Answer, Command, ExchangeError, ExchangeResult, WriterPort};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Where the writer's process takes commands from API processes.
pub const REQUESTS_PATH: &str = "/internal/v1/requests";
/// Largest command accepted: an order with every field at its longest is well under 2 KiB.
pub const COMMAND_BYTES_MAX: usize = 16 * 1024;
/// A writer that does not accept the connection within this is taken as down (503, nothing
/// happened: safe to retry).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A command unanswered after this is reported as of unknown outcome (503): the client
/// retries with the same `Idempotency-Key` or `client_order_id`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands one API process has in flight to the writer at most; more wait their turn.
pub const IN_FLIGHT_MAX: usize = 1_024;
/// Idle connections kept open to the writer.
pub const IDLE_CONNECTIONS_MAX: usize = 64;
/// Largest answer read from the writer (a forwarded book or reconciliation report is the
/// largest).
pub const ANSWER_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// The writer's request port over HTTP.
pub struct WriterClient {
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
    admin_token: Option<String>,
    in_flight: tokio::sync::Semaphore,
}

impl WriterClient {
    pub fn new(writer_url: &str, admin_token: Option<&str>) -> anyhow::Result<WriterClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .pool_max_idle_per_host(IDLE_CONNECTIONS_MAX)
            .tcp_nodelay(true)
            .build()?;
        Ok(WriterClient {
            http,
            base: writer_url.trim_end_matches('/').to_string(),
            admin_token: admin_token.map(str::to_string),
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT_MAX),
        })
    }

    /// Sends one request to the writer's process and reads its answer, within
    /// [`CALL_TIMEOUT`] and [`IN_FLIGHT_MAX`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> ExchangeResult<(StatusCode, HeaderMap, Bytes)> {
        let _permit = tokio::time::timeout(CALL_TIMEOUT, self.in_flight.acquire())
            .await
            .map_err(|_| unreachable_writer("too many requests are waiting for it"))?
            .map_err(|_| unreachable_writer("this process is stopping"))?;
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                unreachable_writer(&e.to_string())
            } else {
                no_answer(&e.to_string())
            }
        })?;
        if response
            .content_length()
            .is_some_and(|n| n > ANSWER_BYTES_MAX)
        {
            return Err(no_answer("its answer is larger than this process reads"));
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| no_answer(&e.to_string()))?;
        Ok((status, headers, body))
    }
}

/// The writer could not be reached: the request was not sent, nothing happened.
fn unreachable_writer(why: &str) -> ExchangeError {
    tracing::warn!(why, "writer unavailable");
    ExchangeError::new(
        agora_exchange::ErrorClass::Unavailable,
        "WRITER_UNAVAILABLE",
        "the writer's process cannot be reached; nothing was done, retry shortly",
    )
}

/// The code of a command whose outcome is unknown.
pub const NO_ANSWER: &str = "WRITER_NO_ANSWER";

/// The request may have reached the writer, but no answer came back: its outcome is unknown.
fn no_answer(why: &str) -> ExchangeError {
    tracing::warn!(why, "no answer from the writer");
    ExchangeError::new(
        agora_exchange::ErrorClass::Unavailable,
        NO_ANSWER,
        "the writer's process did not answer; the request may or may not have been done (an \
         order's client_order_id finds it if it was; an Idempotency-Key sent with it stays \
         held until its lease ends)",
    )
}

impl WriterPort for WriterClient {
    fn execute(
        &self,
        command: Command,
    ) -> Pin<Box<dyn Future<Output = ExchangeResult<Answer>> + Send + '_>> {
        Box::pin(async move {
            let mut request = self
                .http
                .post(format!("{}{REQUESTS_PATH}", self.base))
                .json(&command);
            if let Some(token) = &self.admin_token {
                request = request.header("x-admin-token", token);
            }
            let (status, _, body) = self.send(request).await?;
            if status != StatusCode::OK {
                // A wrong admin token, an overloaded or stopping writer: it did nothing.
                tracing::error!(%status, body = %String::from_utf8_lossy(&body), "the writer refused a command");
                return Err(unreachable_writer("it refused the command"));
            }
            let result: Result<Answer, WireError> = serde_json::from_slice(&body)
                .map_err(|e| no_answer(&format!("unreadable answer: {e}")))?;
            result.map_err(ExchangeError::from)
        })
    }
}

/// The writer's side: runs a command from an API process as its own API would.
pub async fn take_command(State(state): State<AppState>, _: Admin, body: Body) -> Response {
    let Ok(body) = axum::body::to_bytes(body, COMMAND_BYTES_MAX).await else {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("a command is at most {COMMAND_BYTES_MAX} bytes"),
        )
        .into_response();
    };
    let command: Command = match serde_json::from_slice(&body) {
        Ok(command) => command,
        Err(e) => return Problem::bad_request("INVALID_COMMAND", e.to_string()).into_response(),
    };
    let result: Result<Answer, WireError> =
        command.run(&state.exchange).await.map_err(WireError::from);
    axum::Json(result).into_response()
}

/// Whether a path is served from what only the writer's process holds in memory.
fn served_by_writer(path: &str) -> bool {
    path.starts_with("/api/v1/markets")
        || path.starts_with("/api/v1/admin/books/")
        || path == "/api/v1/admin/reconcile"
        || path == "/api/v1/admin/status"
}

/// Headers that belong to one connection, not to the request or answer (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// An api-only process's middleware: market data, books, status and reconciliation go to
/// the writer's process as they came (its answer comes back as it is); everything else is
/// served here.
pub async fn forward(
    State(writer): State<Arc<WriterClient>>,
    request: Request,
    next: Next,
) -> Response {
    if !served_by_writer(request.uri().path()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, BODY_BYTES_MAX).await {
        Ok(body) => body,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                format!("bodies are at most {BODY_BYTES_MAX} bytes"),
            )
            .into_response()
        }
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = writer
        .http
        .request(parts.method, format!("{}{path_and_query}", writer.base))
        .body(body);
    // The caller's headers, its own admin token (if any) among them: the writer checks it,
    // and this process's token is never added to a forwarded request.
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    match writer.send(outgoing).await {
        Ok((status, headers, body)) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            for (name, value) in &headers {
                if !hop_by_hop(name) {
                    response.headers_mut().append(name, value.clone());
                }
            }
            response
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

/// `/ws` on a process without the market role: WebSockets are served where the market
/// read model is kept for them.
pub async fn no_websockets() -> Problem {
    Problem::new(
        StatusCode::MISDIRECTED_REQUEST,
        "NOT_A_MARKET_PROCESS",
        "this process does not play the market role: connect WebSockets to a process that \
         does (a market process, or a writer's process with the market role)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_in_memory_state_is_forwarded() {
        for path in [
            "/api/v1/markets",
            "/api/v1/markets/BTC-USDT/depth",
            "/api/v1/admin/books/BTC-USDT",
            "/api/v1/admin/reconcile",
            "/api/v1/admin/status",
        ] {
            assert!(served_by_writer(path), "{path}");
        }
        for path in [
            "/api/v1/orders",
            "/api/v1/balances",
            "/api/v1/admin/users",
            "/api/v1/admin/deposits",
            "/health",
        ] {
            assert!(!served_by_writer(path), "{path}");
        }
    }
}
