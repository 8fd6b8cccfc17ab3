//! Errors the exchange reports to its callers: a stable machine-readable `code`, a class
//! the HTTP layer maps to a status, and a human sentence.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorClass {
    /// The request is malformed or breaks a rule (400).
    Invalid,
    /// No acting user, or an unknown one (401).
    Unauthenticated,
    /// The thing does not exist for this caller (404).
    NotFound,
    /// The request is valid but conflicts with current state (409).
    Conflict,
    /// Valid, but refused by a business rule such as funds (422).
    Rejected,
    /// Shutting down or overloaded; retry later (503).
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeError {
    pub class: ErrorClass,
    pub code: &'static str,
    pub detail: String,
}

impl ExchangeError {
    pub fn new(class: ErrorClass, code: &'static str, detail: impl Into<String>) -> Self {
        ExchangeError {
            class,
            code,
            detail: detail.into(),
        }
    }

    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorClass::Invalid, code, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(ErrorClass::Unavailable, "UNAVAILABLE", detail)
    }
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for ExchangeError {}

pub type ExchangeResult<T> = Result<T, ExchangeError>;
