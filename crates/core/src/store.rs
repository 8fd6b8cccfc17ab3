//! The store port: a relational database seen through the small subset of SQL that SQLite,
//! PostgreSQL and MySQL/MariaDB share, so that every venue writes its rows and queries once
//! and every adapter runs them.
//!
//! - **Writes** go through [`Database::commit`], which applies one [`WriteBatch`] atomically:
//!   the writer gathers many requests into a batch and commits them in one transaction (group
//!   commit). A batch is a list of [`Write`]s: `Put` a row of a [`Table`] (insert, or on a
//!   duplicate key update the columns the table names — the adapter spells the upsert in its
//!   dialect), or `Exec` a portable statement. A venue adds its own tables by declaring them;
//!   no adapter's `commit` changes.
//! - **Reads** are portable `SELECT`s with `?` placeholders, answered as [`Row`]s of
//!   [`Value`]s; typed decoding lives with the venue that owns the table.
//! - **Schema**: each component (the core, each venue) brings its own [`Migration`]s, one
//!   script per dialect, applied in version order and recorded per component.
//!
//! Portable SQL, the rules: `?` placeholders (PostgreSQL's adapter numbers them); identifiers
//! that are keywords somewhere in double quotes (MySQL runs with `ANSI_QUOTES`); no string
//! literals containing `?`; integers are 64-bit (`BIGINT` in the server dialects), text is
//! text; `LIMIT n` at the end. PostgreSQL types a statement's parameters from its first run
//! and cannot type a parameter that is only compared with NULL: give each `?` the same kind
//! of value every time, and turn optional filters into optional clauses, never
//! `? IS NULL OR …`.

use thiserror::Error;

/// Why a store operation failed. No database type crosses the port.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database could not be reached or answered with an error; the operation may be
    /// retried.
    #[error("database: {0}")]
    Database(String),
    /// A row could not be decoded into what its table promises.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("migration: {0}")]
    Migration(String),
    /// A conditional write found its condition false (e.g. a balance would go negative); the
    /// batch was rolled back.
    #[error("conflict: {0}")]
    Conflict(String),
    /// This writer lost its role: another process holds a newer epoch. It must stop writing.
    #[error("fenced: {0}")]
    Fenced(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One column value. Integers are 64-bit; money, quantities and ids are never floats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    /// Text known at compile time (enum names): no allocation on the write path.
    Static(&'static str),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            Value::Static(s) => Some(s),
            _ => None,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    /// Ids and counters stay below 2^63 (the API refuses larger ones before they get here).
    fn from(v: u64) -> Value {
        debug_assert!(v <= i64::MAX as u64);
        Value::Int(v as i64)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v as i64)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v as i64)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&'static str> for Value {
    fn from(v: &'static str) -> Value {
        Value::Static(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// A table as the write path sees it.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// Every column a `Put` supplies, in order; the key columns come first.
    pub columns: &'static [&'static str],
    /// How many leading columns form the primary key.
    pub key_len: usize,
    /// Columns overwritten when a `Put` meets an existing key. Empty: rows are immutable and a
    /// duplicate key fails the batch (the dedup record of an exactly-once effect).
    pub update: &'static [&'static str],
}

impl Table {
    pub fn key(&self) -> &'static [&'static str] {
        &self.columns[..self.key_len]
    }
}

/// One write of a batch. Values live in the batch's arena (`WriteBatch::values`).
#[derive(Clone, Copy, Debug)]
pub enum Write {
    /// A row of `table`: `table.columns.len()` values starting at `at`.
    Put { table: &'static Table, at: usize },
    /// A portable statement with `params` `?` placeholders, values starting at `at`.
    Exec {
        sql: &'static str,
        params: usize,
        at: usize,
    },
}

/// Everything one group commit writes, in order. Rows are final values (upserts), so a batch
/// that touched a balance ten times writes it once.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub writes: Vec<Write>,
    /// The values of every write, back to back (one allocation for the whole batch).
    pub values: Vec<Value>,
    /// When set, the adapter checks in the same transaction that this writer still holds the
    /// role at this epoch, and fails with [`StoreError::Fenced`] otherwise.
    pub fence: Option<Fence>,
}

/// A writer's claim on a role, checked by every commit it makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub role: String,
    pub epoch: i64,
}

impl WriteBatch {
    pub fn put<const N: usize>(&mut self, table: &'static Table, row: [Value; N]) {
        assert_eq!(
            N,
            table.columns.len(),
            "a row of {} has the wrong width",
            table.name
        );
        let at = self.values.len();
        self.values.extend(row);
        self.writes.push(Write::Put { table, at });
    }

    pub fn exec<const N: usize>(&mut self, sql: &'static str, params: [Value; N]) {
        let at = self.values.len();
        self.values.extend(params);
        self.writes.push(Write::Exec { sql, params: N, at });
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn clear(&mut self) {
        self.writes.clear();
        self.values.clear();
    }

    /// The values of one write.
    pub fn values_of(&self, write: &Write) -> &[Value] {
        match *write {
            Write::Put { table, at } => &self.values[at..at + table.columns.len()],
            Write::Exec { params, at, .. } => &self.values[at..at + params],
        }
    }

    /// How many rows of `table` the batch puts.
    pub fn count(&self, table: &'static Table) -> usize {
        self.writes
            .iter()
            .filter(|w| matches!(w, Write::Put { table: t, .. } if std::ptr::eq(*t, table)))
            .count()
    }
}

/// A row of a query's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> StoreResult<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("no column {i}")))
    }

    pub fn int(&self, i: usize) -> StoreResult<i64> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            v => Err(StoreError::Corrupt(format!(
                "column {i}: expected an integer, got {v:?}"
            ))),
        }
    }

    pub fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    /// An integer that must fit the target type (ids, counts, scales).
    pub fn get<T: TryFrom<i64>>(&self, i: usize) -> StoreResult<T> {
        let v = self.int(i)?;
        T::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {i}: {v} out of range")))
    }

    pub fn bool(&self, i: usize) -> StoreResult<bool> {
        Ok(self.int(i)? != 0)
    }

    pub fn text(&self, i: usize) -> StoreResult<&str> {
        self.at(i)?
            .as_str()
            .ok_or_else(|| StoreError::Corrupt(format!("column {i}: expected text")))
    }

    pub fn opt_text(&self, i: usize) -> StoreResult<Option<&str>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// The SQL dialects the port has adapters for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// One schema change of one component, in each dialect.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i64,
    pub sqlite: &'static str,
    pub postgres: &'static str,
    pub mysql: &'static str,
}

impl Migration {
    pub fn script(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
            Dialect::Mysql => self.mysql,
        }
    }
}

/// Gathers the rows a streaming query hands out (the `query` of every reading trait).
fn collect_rows(
    run: impl FnOnce(&mut dyn FnMut(Row) -> StoreResult<()>) -> StoreResult<()>,
) -> StoreResult<Vec<Row>> {
    let mut rows = Vec::new();
    run(&mut |r| {
        rows.push(r);
        Ok(())
    })?;
    Ok(rows)
}

/// The writer's connection. Used from one thread.
pub trait Database: Send {
    fn dialect(&self) -> Dialect;

    /// Applies `migrations` of `component` that are not applied yet, each in its own
    /// transaction, in version order.
    fn migrate(&mut self, component: &str, migrations: &[Migration]) -> StoreResult<()>;

    /// Applies every write of `batch` in one transaction, or none of them.
    fn commit(&mut self, batch: &WriteBatch) -> StoreResult<()>;

    /// Runs a portable `SELECT`, calling `each` per row in order.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()>;

    fn query(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        collect_rows(|each| self.query_each(sql, params, each))
    }

    fn query_one(&mut self, sql: &str, params: &[Value]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// Committed state for the API and for audits: a pool of connections, used from many
/// threads (blocking; call from a blocking context).
///
/// Each query alone sees one committed state; [`ReadDatabase::snapshot`] makes several
/// queries see the same one.
pub trait ReadDatabase: Send + Sync {
    fn dialect(&self) -> Dialect;

    fn query_each(
        &self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()>;

    /// Runs `reads` in one read-only transaction on one connection of the pool, so that
    /// every query it makes sees the same committed state (a snapshot), whatever commits
    /// meanwhile: SQLite's deferred read transaction (in WAL mode the snapshot is fixed by
    /// the first read), PostgreSQL's `REPEATABLE READ, READ ONLY`, MySQL's and MariaDB's
    /// `WITH CONSISTENT SNAPSHOT, READ ONLY` at `REPEATABLE READ` (for that transaction
    /// only). The transaction always ends — committed when `reads` succeeds, rolled back
    /// when it fails (its error is returned) — and the connection goes back to the pool
    /// usable. `reads` hands back what it found through what it captures.
    ///
    /// A snapshot holds its connection and old row versions until it ends (on SQLite it
    /// keeps the WAL from wrapping): keep it to one job, such as an audit.
    fn snapshot(
        &self,
        reads: &mut dyn FnMut(&mut dyn SnapshotReads) -> StoreResult<()>,
    ) -> StoreResult<()>;

    fn query(&self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        collect_rows(|each| self.query_each(sql, params, each))
    }

    fn query_one(&self, sql: &str, params: &[Value]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// The queries of one [`ReadDatabase::snapshot`]: each sees the snapshot's committed state.
pub trait SnapshotReads {
    /// Runs a portable `SELECT`, calling `each` per row in order (streamed: rows are not
    /// gathered first). When `each` fails, the query stops and its error is returned.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()>;

    fn query(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        collect_rows(|each| self.query_each(sql, params, each))
    }

    fn query_one(&mut self, sql: &str, params: &[Value]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// Anything portable `SELECT`s run on: a [`Database`], or one [`ReadDatabase::snapshot`]
/// (through [`InSnapshot`]), so typed loads are written once for both.
pub trait Queries {
    fn query_rows(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>>;
}

impl<D: Database + ?Sized> Queries for D {
    fn query_rows(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        self.query(sql, params)
    }
}

/// The queries of one snapshot, as [`Queries`].
pub struct InSnapshot<'a>(pub &'a mut dyn SnapshotReads);

impl Queries for InSnapshot<'_> {
    fn query_rows(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        self.0.query(sql, params)
    }
}

/// Who holds each writer role, and at which epoch (the core's `agora_fences` table).
pub static FENCES: Table = Table {
    name: "agora_fences",
    columns: &["role", "epoch", "holder", "updated_ms"],
    key_len: 1,
    update: &[],
};

/// Takes `role` for a new writer: bumps the role's epoch and returns the fence every commit
/// of this writer must carry. Call it before reading the state the writer will work on.
///
/// Why before: a writer that died (SIGKILL, a lost machine) may leave a commit in flight on
/// a server database, which the server completes after the new writer has started. Every
/// fenced commit locks the role's row (`SELECT … FOR UPDATE`), so the bump waits for that
/// commit to end; what the new writer then reads includes it, and any later commit of the
/// old writer fails with [`StoreError::Fenced`].
///
/// The bump writes a token unique to this call and the epoch is read back with it: if
/// another writer bumped in between, the token read is not ours and this writer does not get
/// the role (`Fenced`) — the last bump wins, and no two writers ever hold one epoch.
pub fn acquire_role(
    db: &mut dyn Database,
    role: &str,
    holder: &str,
    now_ms: i64,
) -> StoreResult<Fence> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let token = format!("{holder} pid {} #{nanos}", std::process::id());
    let mut first = WriteBatch::default();
    first.put(
        &FENCES,
        [
            role.to_string().into(),
            0i64.into(),
            token.clone().into(),
            now_ms.into(),
        ],
    );
    match db.commit(&first) {
        // A conflict here is the role's row existing already (its key is the role).
        Ok(()) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e),
    }
    let mut bump = WriteBatch::default();
    bump.exec(
        "UPDATE agora_fences SET epoch = epoch + 1, holder = ?, updated_ms = ? WHERE role = ?",
        [token.clone().into(), now_ms.into(), role.to_string().into()],
    );
    db.commit(&bump)?;
    let row = db
        .query_one(
            "SELECT epoch, holder FROM agora_fences WHERE role = ?",
            &[role.to_string().into()],
        )?
        .ok_or_else(|| StoreError::Corrupt(format!("role {role} vanished")))?;
    if row.text(1)? != token {
        return Err(StoreError::Fenced(format!(
            "{role} was taken by {} while this writer took it",
            row.text(1)?
        )));
    }
    Ok(Fence {
        role: role.to_string(),
        epoch: row.int(0)?,
    })
}

/// The single-row upsert for a `Put`, in a dialect (the SQLite adapter runs it; the server
/// adapters merge rows into multi-row statements of their own, and MySQL's refuses a match on
/// another unique key, as `ON CONFLICT (key)` does). Identifiers are quoted, so a
/// column may be called `interval` or `type`.
pub fn upsert_sql(dialect: Dialect, table: &Table) -> String {
    let q = |c: &str| match dialect {
        Dialect::Mysql => format!("`{c}`"),
        _ => format!("\"{c}\""),
    };
    let columns: Vec<String> = table.columns.iter().map(|c| q(c)).collect();
    let placeholders: Vec<String> = (1..=table.columns.len())
        .map(|i| match dialect {
            Dialect::Sqlite => format!("?{i}"),
            Dialect::Postgres => format!("${i}"),
            Dialect::Mysql => "?".to_string(),
        })
        .collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        q(table.name),
        columns.join(", "),
        placeholders.join(", ")
    );
    if !table.update.is_empty() {
        let key: Vec<String> = table.key().iter().map(|c| q(c)).collect();
        let set: Vec<String> = match dialect {
            Dialect::Mysql => table
                .update
                .iter()
                .map(|c| format!("{0} = VALUES({0})", q(c)))
                .collect(),
            _ => table
                .update
                .iter()
                .map(|c| format!("{0} = excluded.{0}", q(c)))
                .collect(),
        };
        match dialect {
            Dialect::Mysql => sql += &format!(" ON DUPLICATE KEY UPDATE {}", set.join(", ")),
            _ => {
                sql += &format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    key.join(", "),
                    set.join(", ")
                )
            }
        }
    }
    sql
}

/// A portable statement in PostgreSQL's spelling: `?` becomes `$1`, `$2`, …
pub fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static ITEMS: Table = Table {
        name: "items",
        columns: &["id", "kind", "qty"],
        key_len: 1,
        update: &["qty"],
    };

    #[test]
    fn upserts_per_dialect() {
        assert_eq!(
            upsert_sql(Dialect::Sqlite, &ITEMS),
            "INSERT INTO \"items\" (\"id\", \"kind\", \"qty\") VALUES (?1, ?2, ?3) \
             ON CONFLICT (\"id\") DO UPDATE SET \"qty\" = excluded.\"qty\""
        );
        assert_eq!(
            upsert_sql(Dialect::Postgres, &ITEMS),
            "INSERT INTO \"items\" (\"id\", \"kind\", \"qty\") VALUES ($1, $2, $3) \
             ON CONFLICT (\"id\") DO UPDATE SET \"qty\" = excluded.\"qty\""
        );
        assert_eq!(
            upsert_sql(Dialect::Mysql, &ITEMS),
            "INSERT INTO `items` (`id`, `kind`, `qty`) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE `qty` = VALUES(`qty`)"
        );
    }

    #[test]
    fn batch_values_are_sliced_per_write() {
        let mut b = WriteBatch::default();
        b.put(&ITEMS, [1i64.into(), "A".into(), 5i64.into()]);
        b.exec("DELETE FROM items WHERE id <= ?", [0i64.into()]);
        b.put(&ITEMS, [2i64.into(), "B".into(), Value::Null]);
        let got: Vec<&[Value]> = b.writes.iter().map(|w| b.values_of(w)).collect();
        assert_eq!(got[1], &[Value::Int(0)]);
        assert_eq!(got[2], &[Value::Int(2), Value::Static("B"), Value::Null]);
        assert_eq!(b.count(&ITEMS), 2);
    }

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b = ? AND c > ? LIMIT 5"),
            "SELECT a FROM t WHERE b = $1 AND c > $2 LIMIT 5"
        );
    }

    #[test]
    fn rows_decode_with_range_checks() {
        let r = Row(vec![Value::Int(7), Value::Null, Value::Text("x".into())]);
        assert_eq!(r.get::<u32>(0), Ok(7));
        assert_eq!(r.opt_int(1), Ok(None));
        assert_eq!(r.text(2), Ok("x"));
        assert!(r.int(2).is_err());
        assert!(Row(vec![Value::Int(-1)]).get::<u64>(0).is_err());
    }
}
