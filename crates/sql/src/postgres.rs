//! PostgreSQL.

use std::borrow::Cow;
use std::str::FromStr;

use agora_core::store::{
    numbered_placeholders, Dialect, Row, StoreError, StoreResult, Table, Value,
};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgConnectOptions, PgConnection, PgRow, PgTypeInfo,
    PgValueFormat, PgValueRef,
};
use sqlx::{Arguments, Column, Executor, Postgres, Row as _, TypeInfo, ValueRef};

use crate::backend::{decimal_to_int, Backend};
use crate::error::{sql, Failure};
use crate::STATEMENTS_CACHED;

pub(crate) struct Pg;

/// The advisory lock key of migrations ("agoramig" in ASCII).
const MIGRATION_LOCK: i64 = 0x6167_6f72_616d_6967;

impl Backend for Pg {
    type Db = Postgres;
    type Args = PgArguments;

    const DIALECT: Dialect = Dialect::Postgres;
    const NAME: &'static str = "PostgreSQL";
    const CREATE_MIGRATIONS_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS agora_migrations (
        component   TEXT NOT NULL,
        version     BIGINT NOT NULL,
        applied_ms  BIGINT NOT NULL,
        PRIMARY KEY (component, version)
    )";

    // The snapshot is taken by the transaction's first query and kept to its end.
    const BEGIN_SNAPSHOT: &'static [&'static str] =
        &["BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"];

    fn options(url: &str) -> StoreResult<PgConnectOptions> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("PostgreSQL URL: {e}")))?;
        Ok(options
            .application_name("agora")
            .statement_cache_capacity(STATEMENTS_CACHED))
    }

    fn set_up(_: &mut PgConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        // PostgreSQL's defaults are what the portable SQL expects.
        async { Ok(()) }.boxed()
    }

    fn statement(sql: &str) -> Cow<'_, str> {
        Cow::Owned(numbered_placeholders(sql))
    }

    fn bind(args: &mut PgArguments, value: &Value) -> StoreResult<()> {
        match value {
            Value::Null => args.add(UntypedNull),
            Value::Int(v) => args.add(*v),
            Value::Text(s) => args.add(s.as_str()),
            Value::Static(s) => args.add(*s),
        }
        .map_err(|e| StoreError::Database(format!("binding {value:?}: {e}")))
    }

    fn execute<'c>(
        conn: &'c mut PgConnection,
        sql: &'c str,
        args: PgArguments,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>> {
        async move {
            let done = sqlx::query_with(sql, args).execute(conn).await?;
            Ok(done.rows_affected())
        }
        .boxed()
    }

    fn execute_script<'c>(
        conn: &'c mut PgConnection,
        script: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        async move {
            // The simple-query protocol runs every statement of the script.
            conn.execute(sqlx::raw_sql(script)).await?;
            Ok(())
        }
        .boxed()
    }

    fn fetch<'c>(
        conn: &'c mut PgConnection,
        sql: &'c str,
        args: PgArguments,
    ) -> BoxStream<'c, Result<PgRow, sqlx::Error>> {
        sqlx::query_with(sql, args).fetch(conn).boxed()
    }

    fn decode(row: &PgRow) -> StoreResult<Row> {
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
                "INT8" => row.try_get::<i64, _>(i).map(Value::Int).map_err(Into::into),
                "INT4" => row
                    .try_get::<i32, _>(i)
                    .map(|v| Value::Int(v.into()))
                    .map_err(Into::into),
                "INT2" => row
                    .try_get::<i16, _>(i)
                    .map(|v| Value::Int(v.into()))
                    .map_err(Into::into),
                // Booleans are integers on the port (`EXISTS (…)` answers one here).
                "BOOL" => row
                    .try_get::<bool, _>(i)
                    .map(|v| Value::Int(v.into()))
                    .map_err(Into::into),
                // `SUM` of BIGINT, `COALESCE(SUM(…), 0)`.
                "NUMERIC" => numeric_to_int(raw).map(Value::Int),
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "UNKNOWN" => row
                    .try_get::<String, _>(i)
                    .map(Value::Text)
                    .map_err(Into::into),
                other => Err(format!("unsupported type {other}").into()),
            };
            values.push(decoded.map_err(|e| corrupt(&e))?);
        }
        Ok(Row(values))
    }

    fn other_key_conflict(_: &sqlx::Error, _: &Table) -> bool {
        // ON CONFLICT names the primary key: another key's violation is a unique violation.
        false
    }

    fn lock_migrations(conn: &mut PgConnection) -> BoxFuture<'_, Result<(), Failure>> {
        async move {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(conn)
                .await
                .map_err(sql("taking the migration lock"))?;
            Ok(())
        }
        .boxed()
    }

    fn unlock_migrations(conn: &mut PgConnection) -> BoxFuture<'_, Result<(), Failure>> {
        async move {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(conn)
                .await
                .map_err(sql("releasing the migration lock"))?;
            Ok(())
        }
        .boxed()
    }
}

/// A NULL parameter of no declared type: PostgreSQL infers it from where it is used (a
/// BIGINT column, a TEXT column). A NULL typed as BIGINT or TEXT would be refused by a
/// column of the other type.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        // OID 0: "unspecified" in the protocol's Parse message.
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(&self, _: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}

/// A NUMERIC in PostgreSQL's binary format, as an integer when it is one and fits 64 bits.
///
/// The format: `ndigits`, `weight`, `sign`, `dscale` (16 bits each, big-endian), then
/// `ndigits` base-10,000 digits; the value is `Σ digit[i] × 10000^(weight − i)`.
fn numeric_to_int(raw: PgValueRef<'_>) -> Result<i64, BoxDynError> {
    if raw.format() == PgValueFormat::Text {
        let text = raw.as_str()?;
        return decimal_to_int(text).ok_or_else(|| not_an_i64(text));
    }
    let bytes = raw.as_bytes()?;
    let word = |i: usize| -> Result<i16, BoxDynError> {
        let b = bytes.get(2 * i..2 * i + 2).ok_or("a truncated NUMERIC")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = usize::try_from(word(0)?)?;
    let weight = word(1)?;
    let sign = word(2)? as u16;
    let digit = |i: usize| -> Result<i128, BoxDynError> {
        if i < ndigits {
            Ok(word(4 + i)?.into())
        } else {
            Ok(0)
        }
    };
    const POSITIVE: u16 = 0x0000;
    const NEGATIVE: u16 = 0x4000;
    if sign != POSITIVE && sign != NEGATIVE {
        return Err("a NaN or infinite NUMERIC is not an integer".into());
    }
    // Digits at or above the decimal point (weight 0 is the units' digit).
    let whole = usize::try_from(i32::from(weight) + 1).unwrap_or(0);
    let mut value: i128 = 0;
    for i in 0..whole {
        let d = digit(i)?;
        value = value
            .checked_mul(10_000)
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| not_an_i64("a NUMERIC beyond 128 bits"))?;
    }
    for i in whole..ndigits {
        if digit(i)? != 0 {
            return Err("a NUMERIC with a fraction is not an integer".into());
        }
    }
    if sign == NEGATIVE {
        value = -value;
    }
    i64::try_from(value).map_err(|_| not_an_i64(&value.to_string()))
}

fn not_an_i64(what: &str) -> BoxDynError {
    format!("{what} does not fit a 64-bit integer").into()
}
