//! sqlx's errors as the port's: no sqlx type leaves the crate.

use std::fmt::Display;

use agora_core::store::StoreError;
use sqlx::error::ErrorKind;

/// A failed operation: the port's error, and whether the connection it ran on is broken.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: StoreError,
    /// The connection failed (IO, protocol) rather than the server refusing a statement:
    /// it is dropped, and the next operation opens a new one.
    pub(crate) broken: bool,
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure {
            error,
            broken: false,
        }
    }
}

/// Maps a sqlx error of an operation that was `doing` something (for the message).
pub(crate) fn sql<D: Display>(doing: D) -> impl FnOnce(sqlx::Error) -> Failure {
    move |e| {
        let message = format!("{doing}: {e}");
        let (error, broken) = match &e {
            // A key or a CHECK refused the write: retrying the same batch cannot help.
            sqlx::Error::Database(db)
                if matches!(
                    db.kind(),
                    ErrorKind::UniqueViolation
                        | ErrorKind::CheckViolation
                        | ErrorKind::ForeignKeyViolation
                ) =>
            {
                (StoreError::Conflict(message), false)
            }
            sqlx::Error::Database(_) | sqlx::Error::Encode(_) => {
                (StoreError::Database(message), false)
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. } => (StoreError::Corrupt(message), false),
            _ => (StoreError::Database(message), true),
        };
        Failure { error, broken }
    }
}
