//! MySQL and MariaDB.

use std::borrow::Cow;
use std::str::FromStr;

use agora_core::store::{Dialect, Row, StoreError, StoreResult, Table, Value};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use sqlx::error::BoxDynError;
use sqlx::mysql::{
    MySqlArguments, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlRow,
};
use sqlx::{Arguments, Column, Executor, MySql, Row as _, TypeInfo, ValueRef};

use crate::backend::{decimal_to_int, Backend};
use crate::error::{sql, Failure};
use crate::STATEMENTS_CACHED;

pub(crate) struct My;

/// How long a process waits for another to finish applying migrations.
const MIGRATION_LOCK_WAIT_S: i64 = 600;

impl Backend for My {
    type Db = MySql;
    type Args = MySqlArguments;

    const DIALECT: Dialect = Dialect::Mysql;
    const NAME: &'static str = "MySQL";
    const CREATE_MIGRATIONS_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS agora_migrations (
        component   VARCHAR(64) NOT NULL,
        version     BIGINT NOT NULL,
        applied_ms  BIGINT NOT NULL,
        PRIMARY KEY (component, version)
    ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";

    // Sessions run READ COMMITTED (see `set_up`), where each statement reads the latest
    // commits; `SET TRANSACTION` without SESSION sets the level of the next transaction
    // only, and CONSISTENT SNAPSHOT takes the snapshot at once (at REPEATABLE READ it is
    // then kept to the end).
    const BEGIN_SNAPSHOT: &'static [&'static str] = &[
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
    ];

    fn options(url: &str) -> StoreResult<MySqlConnectOptions> {
        let options = MySqlConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("MySQL URL: {e}")))?;
        // Binary collation: text compares and keys as in SQLite and PostgreSQL ("a" ≠ "A").
        Ok(options
            .charset("utf8mb4")
            .collation("utf8mb4_bin")
            .statement_cache_capacity(STATEMENTS_CACHED))
    }

    fn set_up(conn: &mut MySqlConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        async move {
            // ANSI_QUOTES: portable SQL quotes identifiers with double quotes ("interval").
            // STRICT_ALL_TABLES: a value that does not fit is an error, never truncated.
            // READ COMMITTED, as PostgreSQL: InnoDB's default (REPEATABLE READ) takes gap
            // locks on inserts and ranges, which make concurrent writers wait on and
            // deadlock over rows neither of them touches.
            conn.execute(sqlx::raw_sql(
                "SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES,STRICT_ALL_TABLES'); \
                 SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            ))
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn statement(sql: &str) -> Cow<'_, str> {
        Cow::Borrowed(sql)
    }

    fn bind(args: &mut MySqlArguments, value: &Value) -> StoreResult<()> {
        match value {
            Value::Null => args.add(None::<i64>),
            Value::Int(v) => args.add(*v),
            Value::Text(s) => args.add(s.as_str()),
            Value::Static(s) => args.add(*s),
        }
        .map_err(|e| StoreError::Database(format!("binding {value:?}: {e}")))
    }

    fn execute<'c>(
        conn: &'c mut MySqlConnection,
        sql: &'c str,
        args: MySqlArguments,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>> {
        async move {
            let done = sqlx::query_with(sql, args).execute(conn).await?;
            Ok(done.rows_affected())
        }
        .boxed()
    }

    fn execute_script<'c>(
        conn: &'c mut MySqlConnection,
        script: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        async move {
            // sqlx connects with CLIENT_MULTI_STATEMENTS: the server runs the whole script
            // and stops at the first error.
            conn.execute(sqlx::raw_sql(script)).await?;
            Ok(())
        }
        .boxed()
    }

    fn fetch<'c>(
        conn: &'c mut MySqlConnection,
        sql: &'c str,
        args: MySqlArguments,
    ) -> BoxStream<'c, Result<MySqlRow, sqlx::Error>> {
        sqlx::query_with(sql, args).fetch(conn).boxed()
    }

    fn decode(row: &MySqlRow) -> StoreResult<Row> {
        let mut values = Vec::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            let corrupt = |what: &dyn std::fmt::Display| {
                StoreError::Corrupt(format!("column {}: {what}", column.name()))
            };
            let raw = row.try_get_raw(i).map_err(|e| corrupt(&e))?;
            if raw.is_null() {
                values.push(Value::Null);
                continue;
            }
            let decoded: Result<Value, BoxDynError> = match column.type_info().name() {
                "BIGINT" | "INT" | "MEDIUMINT" | "SMALLINT" | "TINYINT" | "BOOLEAN" => {
                    row.try_get::<i64, _>(i).map(Value::Int).map_err(Into::into)
                }
                "BIGINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED" | "SMALLINT UNSIGNED"
                | "TINYINT UNSIGNED" => row
                    .try_get::<u64, _>(i)
                    .map_err(BoxDynError::from)
                    .and_then(|v| Ok(Value::Int(i64::try_from(v)?))),
                // `SUM` of BIGINT answers a DECIMAL, sent as its decimal text.
                "DECIMAL" => row
                    .try_get_unchecked::<&str, _>(i)
                    .map_err(BoxDynError::from)
                    .and_then(|text| {
                        decimal_to_int(text)
                            .map(Value::Int)
                            .ok_or_else(|| format!("{text} is not a 64-bit integer").into())
                    }),
                // Expressions over text may come back as binary strings: text if UTF-8.
                "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM"
                | "VARBINARY" | "BINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" => row
                    .try_get_unchecked::<&str, _>(i)
                    .map(|s| Value::Text(s.to_owned()))
                    .map_err(Into::into),
                other => Err(format!("unsupported type {other}").into()),
            };
            values.push(decoded.map_err(|e| corrupt(&e))?);
        }
        Ok(Row(values))
    }

    fn other_key_conflict(e: &sqlx::Error, table: &Table) -> bool {
        // The upsert's guard set the key's first column to NULL: "Column 'id' cannot be
        // null" (ER_BAD_NULL_ERROR).
        const ER_BAD_NULL_ERROR: u16 = 1048;
        match e {
            sqlx::Error::Database(db) => {
                !table.update.is_empty()
                    && db
                        .try_downcast_ref::<MySqlDatabaseError>()
                        .is_some_and(|e| e.number() == ER_BAD_NULL_ERROR)
                    && db.message().contains(&format!("'{}'", table.columns[0]))
            }
            _ => false,
        }
    }

    fn lock_migrations(conn: &mut MySqlConnection) -> BoxFuture<'_, Result<(), Failure>> {
        async move {
            // Named after the database: MySQL's named locks are server-wide.
            let got: Option<i64> =
                sqlx::query_scalar("SELECT GET_LOCK(CONCAT('agora_migrations.', DATABASE()), ?)")
                    .bind(MIGRATION_LOCK_WAIT_S)
                    .fetch_one(conn)
                    .await
                    .map_err(sql("taking the migration lock"))?;
            if got != Some(1) {
                return Err(StoreError::Migration(format!(
                    "another process held the migration lock for {MIGRATION_LOCK_WAIT_S} s"
                ))
                .into());
            }
            Ok(())
        }
        .boxed()
    }

    fn unlock_migrations(conn: &mut MySqlConnection) -> BoxFuture<'_, Result<(), Failure>> {
        async move {
            sqlx::query("SELECT RELEASE_LOCK(CONCAT('agora_migrations.', DATABASE()))")
                .execute(conn)
                .await
                .map_err(sql("releasing the migration lock"))?;
            Ok(())
        }
        .boxed()
    }
}
