//! RFC 9457 problem+json errors with a stable `code`, and the extractors that turn every
//! malformed request into one (never a panic, never a 5xx).

use agora_exchange::{ErrorClass, ExchangeError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An error (RFC 9457 `application/problem+json`). `code` is stable and machine-readable;
/// `detail` is for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `code` says what went wrong.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub kind: &'static str,
    /// The HTTP status's reason phrase.
    #[schema(example = "Bad Request")]
    pub title: &'static str,
    /// The HTTP status code.
    #[schema(example = 400)]
    pub status: u16,
    /// Stable error code, e.g. INSUFFICIENT_FUNDS, PRICE_OFF_TICK, ORDER_NOT_FOUND.
    #[schema(example = "PRICE_OFF_TICK")]
    pub code: &'static str,
    #[schema(example = "price must be a multiple of the tick size 0.01")]
    pub detail: String,
}

/// Every error status answers with a problem; one reusable response for all of them.
impl<'r> utoipa::ToResponse<'r> for Problem {
    fn response() -> (
        &'r str,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    ) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build();
        let response = ResponseBuilder::new()
            .description("An RFC 9457 problem with a stable `code`")
            .content(PROBLEM_JSON, content)
            .build();
        ("Problem", response.into())
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `code` of a problem answer, as a response extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProblemCode(pub &'static str);

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, axum::Json(&self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        // For middleware that acts on the kind of error (idempotency keys).
        response.extensions_mut().insert(ProblemCode(self.code));
        response
    }
}

impl From<ExchangeError> for Problem {
    fn from(e: ExchangeError) -> Problem {
        let status = match e.class {
            ErrorClass::Invalid => StatusCode::BAD_REQUEST,
            ErrorClass::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::Conflict => StatusCode::CONFLICT,
            ErrorClass::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        Problem::new(status, e.code, e.detail)
    }
}

/// `axum::Json` whose every rejection is a problem with a stable code.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => {
                    Problem::bad_request("INVALID_FIELD", e.body_text())
                }
                JsonRejection::JsonSyntaxError(e) => {
                    Problem::bad_request("MALFORMED_JSON", e.body_text())
                }
                JsonRejection::MissingJsonContentType(_) => Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UNSUPPORTED_MEDIA_TYPE",
                    "send the body as application/json",
                ),
                JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "BODY_TOO_LARGE",
                        e.body_text(),
                    )
                }
                other => Problem::bad_request("BAD_BODY", other.body_text()),
            }),
        }
    }
}

/// `axum::extract::Query` whose rejection is a problem.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| Problem::bad_request("INVALID_QUERY", e.body_text()))
    }
}

/// `axum::extract::Path` whose rejection is a problem.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| Problem::bad_request("INVALID_PATH", e.body_text()))
    }
}

/// A `limit` query parameter: absent → `default`; 1 to `max`, or 400 INVALID_LIMIT.
pub fn limit_param(text: Option<&str>, default: usize, max: usize) -> Result<usize, Problem> {
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

/// A symbol named in a path: unknown is 404 (in a body it is 400, the request's fault).
pub fn path_symbol<'r>(
    r: &'r agora_exchange::RefData,
    name: &str,
) -> Result<&'r agora_store::SymbolRow, Problem> {
    r.symbol_by_name(name)
        .map_err(|e| Problem::new(StatusCode::NOT_FOUND, e.code, e.detail))
}
