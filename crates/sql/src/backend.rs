//! What differs between PostgreSQL and MySQL/MariaDB, behind one trait, so that the writer,
//! the reader and the migrations are written once (`writer.rs`, `reader.rs`).
//!
//! Each method is implemented with the concrete sqlx types of its database, which keeps
//! sqlx's generic executor bounds out of the shared code.

use std::borrow::Cow;

use agora_core::store::{Dialect, Row, StoreResult, Table, Value};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::error::Failure;

pub(crate) type Conn<B> = <<B as Backend>::Db as sqlx::Database>::Connection;
pub(crate) type Options<B> = <Conn<B> as sqlx::Connection>::Options;
pub(crate) type DbRow<B> = <<B as Backend>::Db as sqlx::Database>::Row;

pub(crate) trait Backend: Send + Sync + 'static {
    type Db: sqlx::Database;
    /// Bind parameters of one statement, encoded as they are added.
    type Args: Default + Send + 'static;

    const DIALECT: Dialect;
    /// The database's name, for messages.
    const NAME: &'static str;
    /// The table that records applied migrations, created before the first one.
    const CREATE_MIGRATIONS_TABLE: &'static str;

    /// The statements, run in order on one connection, that begin a read-only transaction
    /// whose reads all see one snapshot (see `ReadDatabase::snapshot`).
    const BEGIN_SNAPSHOT: &'static [&'static str];

    /// Connection options from a URL; the writer and the readers open connections with them.
    fn options(url: &str) -> StoreResult<Options<Self>>;

    /// Session settings every connection needs before its first statement.
    fn set_up(conn: &mut Conn<Self>) -> BoxFuture<'_, Result<(), sqlx::Error>>;

    /// A portable statement (`?` placeholders) in this dialect.
    fn statement(sql: &str) -> Cow<'_, str>;

    fn bind(args: &mut Self::Args, value: &Value) -> StoreResult<()>;

    /// Runs a prepared (and cached) statement; the number of rows it affected.
    fn execute<'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        args: Self::Args,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>>;

    /// Runs a script of several statements (a migration).
    fn execute_script<'c>(
        conn: &'c mut Conn<Self>,
        script: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    /// Runs a prepared (and cached) query, its rows as they arrive.
    fn fetch<'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        args: Self::Args,
    ) -> BoxStream<'c, Result<DbRow<Self>, sqlx::Error>>;

    fn decode(row: &DbRow<Self>) -> StoreResult<Row>;

    /// Whether an upsert of `table` failed because a row matched an existing one on a
    /// unique key other than the primary key (see `plan::insert_sql`).
    fn other_key_conflict(e: &sqlx::Error, table: &Table) -> bool;

    /// Takes the lock that makes one process at a time apply migrations (a session lock:
    /// it is released by [`Backend::unlock_migrations`] or when the connection closes).
    fn lock_migrations(conn: &mut Conn<Self>) -> BoxFuture<'_, Result<(), Failure>>;

    fn unlock_migrations(conn: &mut Conn<Self>) -> BoxFuture<'_, Result<(), Failure>>;
}

/// A decimal's text (`-123`, `123.000`) as an integer, when it is one and fits 64 bits:
/// what `SUM` of a 64-bit column answers with in MySQL (and PostgreSQL's NUMERIC in text).
pub(crate) fn decimal_to_int(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !fraction.bytes().all(|b| b == b'0') {
        return None;
    }
    whole.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::decimal_to_int;

    #[test]
    fn decimals_become_integers_only_when_exact_and_in_range() {
        assert_eq!(decimal_to_int("0"), Some(0));
        assert_eq!(decimal_to_int("-42.000"), Some(-42));
        assert_eq!(
            decimal_to_int("9223372036854775807"),
            Some(i64::MAX),
            "i64::MAX"
        );
        assert_eq!(decimal_to_int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(decimal_to_int("9223372036854775808"), None);
        assert_eq!(decimal_to_int("1.5"), None);
        assert_eq!(decimal_to_int(""), None);
    }
}
