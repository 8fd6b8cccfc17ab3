//! The writer's connection, for either backend: commits, migrations, queries.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_core::store::{
    Dialect, Fence, Migration, Row, StoreError, StoreResult, Table, Value, Write, WriteBatch,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryStreamExt};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::Mutex;

use crate::backend::{Backend, Conn, Options};
use crate::bridge::{Bridge, RowSink, ROWS_PER_CHUNK};
use crate::error::{sql, Failure};
use crate::plan::{
    insert_sql, json_insert_sql, json_insert_sql_guarded, json_rows, plan, Sizing, Step,
};

/// How long opening a connection may take before the operation fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a dropped adapter waits for its connections to say goodbye to the server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Writer<B: Backend> {
    pub(crate) bridge: Arc<Bridge>,
    pub(crate) options: Options<B>,
    /// One connection, opened again on the next operation after it broke. Behind an async
    /// mutex because the operations that use it run on the bridge's runtime; the writer is
    /// used from one thread, so the mutex is never contended.
    conn: Arc<Mutex<Option<Conn<B>>>>,
    /// Statement texts, built once: inserts by (table, rows; 0 for a JSON insert), `Exec`s
    /// in this dialect.
    inserts: HashMap<(usize, usize), Arc<str>>,
    execs: HashMap<&'static str, Arc<str>>,
}

/// One statement of a commit, its arguments already encoded on the caller's thread.
struct Statement<B: Backend> {
    sql: Arc<str>,
    args: B::Args,
    doing: Doing,
}

/// What a statement does, for an error's message.
enum Doing {
    Insert(&'static Table),
    Exec(&'static str),
}

impl fmt::Display for Doing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Doing::Insert(table) => write!(f, "insert into {}", table.name),
            Doing::Exec(sql) => write!(f, "{sql}"),
        }
    }
}

impl Doing {
    /// The port's error for a failed statement.
    fn failed<B: Backend>(self, e: sqlx::Error) -> Failure {
        match self {
            Doing::Insert(table) if B::other_key_conflict(&e, table) => {
                StoreError::Conflict(format!(
                    "insert into {}: a row has the unique key of another row (or a NULL key)",
                    table.name
                ))
                .into()
            }
            doing => sql(doing)(e),
        }
    }
}

impl<B: Backend> Writer<B> {
    pub(crate) fn connect(url: &str) -> StoreResult<Writer<B>> {
        let bridge = Bridge::new()?;
        let options = B::options(url)?;
        let first = options.clone();
        let conn = bridge.run(async move { connect::<B>(&first).await.map_err(|f| f.error) })?;
        Ok(Writer {
            bridge,
            options,
            conn: Arc::new(Mutex::new(Some(conn))),
            inserts: HashMap::new(),
            execs: HashMap::new(),
        })
    }

    /// Runs `op` with the connection on the bridge's runtime, opening the connection first
    /// if the last operation broke it.
    fn with_conn<T, F>(&self, op: F) -> StoreResult<T>
    where
        F: for<'c> FnOnce(&'c mut Conn<B>) -> BoxFuture<'c, Result<T, Failure>> + Send + 'static,
        T: Send + 'static,
    {
        let conn = self.conn.clone();
        let options = self.options.clone();
        self.bridge
            .run(async move { using::<B, T, F>(&mut *conn.lock().await, &options, op).await })
    }

    pub(crate) fn commit(&mut self, batch: &WriteBatch) -> StoreResult<()> {
        if batch.is_empty() && batch.fence.is_none() {
            return Ok(());
        }
        let only_puts = batch.writes.iter().all(|w| matches!(w, Write::Put { .. }));
        if B::DIALECT == Dialect::Postgres && only_puts && !batch.is_empty() {
            return self.commit_in_one_statement(batch);
        }
        let statements = self.statements(batch)?;
        let fence = batch.fence.clone();
        self.with_conn(move |conn| {
            async move {
                let mut tx = conn.begin().await.map_err(sql("BEGIN"))?;
                if let Some(fence) = fence {
                    check_fence::<B>(&mut tx, &fence).await?;
                }
                for s in statements {
                    B::execute(&mut tx, &s.sql, s.args)
                        .await
                        .map_err(|e| s.doing.failed::<B>(e))?;
                }
                tx.commit().await.map_err(sql("COMMIT"))
            }
            .boxed()
        })
    }

    /// PostgreSQL, a batch of rows only (no `Exec`, whose order relative to the rows would
    /// matter): the whole commit as one statement in its own implicit transaction — one
    /// round trip where BEGIN, the fence check, a statement per table and COMMIT take one
    /// each. Each table's upsert is a data-modifying CTE (PostgreSQL runs every one to
    /// completion; they write different tables, so sharing one snapshot changes nothing).
    /// The fence is a `FOR UPDATE` CTE that every upsert's `WHERE` checks: a writer that
    /// lost its role writes nothing, and the statement's answer (the epoch it found) says so.
    fn commit_in_one_statement(&mut self, batch: &WriteBatch) -> StoreResult<()> {
        let mut args = B::Args::default();
        let mut parts: Vec<String> = Vec::new();
        let mut guard = "";
        if let Some(fence) = &batch.fence {
            B::bind(&mut args, &Value::Text(fence.role.clone()))?;
            B::bind(&mut args, &Value::Int(fence.epoch))?;
            parts.push(
                "fence AS (SELECT epoch FROM agora_fences WHERE role = $1 FOR UPDATE)".into(),
            );
            guard = "EXISTS (SELECT 1 FROM fence WHERE epoch = $2)";
        }
        let mut tables: Vec<&'static Table> = Vec::new();
        for step in plan(batch, Sizing::OneParameter) {
            let Step::Rows { table, rows } = step else {
                unreachable!("a batch of puts plans rows only")
            };
            B::bind(&mut args, &Value::Text(json_rows(table, &rows)))?;
            let param = parts.len() + if batch.fence.is_some() { 2 } else { 1 };
            parts.push(format!(
                "w{} AS ({})",
                tables.len(),
                json_insert_sql_guarded(table, param, guard)
            ));
            tables.push(table);
        }
        let answer = if batch.fence.is_some() {
            "SELECT (SELECT epoch FROM fence)"
        } else {
            "SELECT 0"
        };
        let text = format!("WITH {} {answer}", parts.join(", "));
        let fence = batch.fence.clone();
        self.with_conn(move |conn| {
            async move {
                let rows: Vec<_> =
                    B::fetch(conn, &text, args)
                        .try_collect()
                        .await
                        .map_err(|e| {
                            match tables.iter().find(|t| B::other_key_conflict(&e, t)) {
                                Some(table) => Doing::Insert(table).failed::<B>(e),
                                None => sql("committing a batch in one statement")(e),
                            }
                        })?;
                let Some(fence) = fence else { return Ok(()) };
                let held = match rows.first() {
                    Some(row) => B::decode(row)?.opt_int(0)?,
                    None => None,
                };
                if held != Some(fence.epoch) {
                    let now =
                        held.map_or("is not held".to_string(), |e| format!("is at epoch {e}"));
                    return Err(StoreError::Fenced(format!(
                        "role {} {now}; this writer holds epoch {} (nothing was written)",
                        fence.role, fence.epoch
                    ))
                    .into());
                }
                Ok(())
            }
            .boxed()
        })
    }

    /// The batch's statements with their arguments, built on the caller's thread.
    fn statements(&mut self, batch: &WriteBatch) -> StoreResult<Vec<Statement<B>>> {
        // PostgreSQL takes a table's rows as one JSON parameter: one statement per table.
        // MySQL has no such conversion without spelling every column's type, so it gets
        // multi-row inserts with a placeholder per value.
        let sizing = match B::DIALECT {
            Dialect::Postgres => Sizing::OneParameter,
            _ => Sizing::PowersOfTwo,
        };
        plan(batch, sizing)
            .into_iter()
            .map(|step| match step {
                Step::Rows { table, rows } if sizing == Sizing::OneParameter => {
                    let sql = self
                        .inserts
                        .entry((std::ptr::from_ref::<Table>(table) as usize, 0))
                        .or_insert_with(|| json_insert_sql(table).into())
                        .clone();
                    let mut args = B::Args::default();
                    B::bind(&mut args, &Value::Text(json_rows(table, &rows)))?;
                    Ok(Statement {
                        sql,
                        args,
                        doing: Doing::Insert(table),
                    })
                }
                Step::Rows { table, rows } => {
                    let sql = self
                        .inserts
                        .entry((std::ptr::from_ref::<Table>(table) as usize, rows.len()))
                        .or_insert_with(|| insert_sql(B::DIALECT, table, rows.len()).into())
                        .clone();
                    let mut args = B::Args::default();
                    for value in rows.iter().flat_map(|r| r.iter()) {
                        B::bind(&mut args, value)?;
                    }
                    Ok(Statement {
                        sql,
                        args,
                        doing: Doing::Insert(table),
                    })
                }
                Step::Exec { sql, params } => Ok(Statement {
                    sql: self
                        .execs
                        .entry(sql)
                        .or_insert_with(|| B::statement(sql).into())
                        .clone(),
                    args: args::<B>(params)?,
                    doing: Doing::Exec(sql),
                }),
            })
            .collect()
    }

    pub(crate) fn migrate(&mut self, component: &str, migrations: &[Migration]) -> StoreResult<()> {
        let mut scripts: Vec<(i64, &'static str)> = migrations
            .iter()
            .map(|m| (m.version, m.script(B::DIALECT)))
            .collect();
        scripts.sort_by_key(|(version, _)| *version);
        if let Some(w) = scripts.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(StoreError::Migration(format!(
                "{component}: version {} is given twice",
                w[0].0
            )));
        }
        let component = component.to_string();
        self.with_conn(move |conn| {
            async move {
                // One process at a time: two starting together must not both apply a
                // migration (nor both create agora_migrations).
                B::lock_migrations(conn).await?;
                let applied = apply::<B>(conn, &component, &scripts).await;
                let unlocked = B::unlock_migrations(conn).await;
                applied.and(unlocked)
            }
            .boxed()
        })
    }

    pub(crate) fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let sql = B::statement(sql).into_owned();
        let args = args::<B>(params)?;
        let conn = self.conn.clone();
        let options = self.options.clone();
        self.bridge.stream(
            move |sink| async move {
                let mut slot = conn.lock().await;
                using::<B, _, _>(&mut slot, &options, move |c| {
                    async move { stream_rows::<B>(c, &sql, args, &sink).await }.boxed()
                })
                .await
            },
            each,
        )
    }
}

impl<B: Backend> Drop for Writer<B> {
    fn drop(&mut self) {
        // Say goodbye to the server instead of cutting the socket (which it logs).
        let conn = self.conn.clone();
        let _ = self.bridge.run(async move {
            if let Some(c) = conn.lock().await.take() {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, c.close()).await;
            }
            Ok(())
        });
    }
}

/// Opens a connection and sets its session up.
pub(crate) async fn connect<B: Backend>(options: &Options<B>) -> Result<Conn<B>, Failure> {
    let connecting = sql(format!("connecting to {}", B::NAME));
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(connected) => connected.map_err(connecting)?,
        Err(_) => {
            return Err(StoreError::Database(format!(
                "connecting to {}: no answer in {} s",
                B::NAME,
                CONNECT_TIMEOUT.as_secs()
            ))
            .into())
        }
    };
    B::set_up(&mut conn)
        .await
        .map_err(sql("setting the session up"))?;
    Ok(conn)
}

/// Runs `op` on the connection in `slot`, opening one first if there is none, and drops it
/// when `op` broke it.
async fn using<B: Backend, T, F>(
    slot: &mut Option<Conn<B>>,
    options: &Options<B>,
    op: F,
) -> StoreResult<T>
where
    F: for<'c> FnOnce(&'c mut Conn<B>) -> BoxFuture<'c, Result<T, Failure>>,
{
    let conn = match slot {
        Some(conn) => conn,
        None => slot.insert(connect::<B>(options).await.map_err(|f| f.error)?),
    };
    let result = op(conn).await;
    if let Err(failure) = &result {
        // A server error may also mean the session is gone (an administrator ended it, the
        // server is shutting down): a failed operation keeps its connection only if it
        // still answers (which also rolls the failed transaction back).
        if failure.broken || conn.ping().await.is_err() {
            *slot = None;
        }
    }
    result.map_err(|f| f.error)
}

/// Encodes the parameters of one statement.
pub(crate) fn args<B: Backend>(params: &[Value]) -> StoreResult<B::Args> {
    let mut args = B::Args::default();
    for value in params {
        B::bind(&mut args, value)?;
    }
    Ok(args)
}

/// Fails with `Fenced` unless the role is still at the batch's epoch. `FOR UPDATE` holds
/// the role's row until the commit, so a holder that bumps the epoch waits for this batch
/// (or this batch waits for it and then sees the new epoch).
async fn check_fence<B: Backend>(conn: &mut Conn<B>, fence: &Fence) -> Result<(), Failure> {
    let sql_text = B::statement("SELECT epoch FROM agora_fences WHERE role = ? FOR UPDATE");
    let args = args::<B>(&[Value::Text(fence.role.clone())])?;
    let rows: Vec<_> = B::fetch(conn, &sql_text, args)
        .try_collect()
        .await
        .map_err(sql("reading the fence"))?;
    let held = match rows.first() {
        Some(row) => Some(B::decode(row)?.int(0)?),
        None => None,
    };
    if held != Some(fence.epoch) {
        let now = held.map_or("is not held".to_string(), |e| format!("is at epoch {e}"));
        return Err(StoreError::Fenced(format!(
            "role {} {now}; this writer holds epoch {}",
            fence.role, fence.epoch
        ))
        .into());
    }
    Ok(())
}

/// Applies the migrations of `component` that `agora_migrations` does not list yet, in
/// version order, each with its record in one transaction. MySQL commits each DDL
/// statement as it runs, so there a failed migration leaves the statements before the
/// failing one applied (and unrecorded): fix the schema by hand before starting again.
async fn apply<B: Backend>(
    conn: &mut Conn<B>,
    component: &str,
    scripts: &[(i64, &'static str)],
) -> Result<(), Failure> {
    B::execute_script(conn, B::CREATE_MIGRATIONS_TABLE)
        .await
        .map_err(sql("creating agora_migrations"))?;
    let mut applied = HashSet::new();
    let listed = B::statement("SELECT version FROM agora_migrations WHERE component = ?");
    let mut rows = B::fetch(conn, &listed, args::<B>(&[component.to_string().into()])?);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(sql("reading agora_migrations"))?
    {
        applied.insert(B::decode(&row)?.int(0)?);
    }
    drop(rows);
    let record = B::statement(
        "INSERT INTO agora_migrations (component, version, applied_ms) VALUES (?, ?, ?)",
    );
    for &(version, script) in scripts {
        if applied.contains(&version) {
            continue;
        }
        let failed = |e: Failure| Failure {
            error: StoreError::Migration(format!("{component} {version}: {}", e.error)),
            broken: e.broken,
        };
        let mut tx = conn.begin().await.map_err(sql("BEGIN")).map_err(failed)?;
        // A migration may have nothing to do in this dialect.
        if !script.trim().is_empty() {
            B::execute_script(&mut tx, script)
                .await
                .map_err(sql(format!("{} script", B::NAME)))
                .map_err(failed)?;
        }
        let params = [
            component.to_string().into(),
            version.into(),
            now_ms().into(),
        ];
        B::execute(&mut tx, &record, args::<B>(&params)?)
            .await
            .map_err(sql("recording it"))
            .map_err(failed)?;
        tx.commit().await.map_err(sql("COMMIT")).map_err(failed)?;
        tracing::info!(component, version, database = B::NAME, "migration applied");
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sends the rows of a query to `sink` in chunks as they arrive.
pub(crate) async fn stream_rows<B: Backend>(
    conn: &mut Conn<B>,
    sql_text: &str,
    args: B::Args,
    sink: &RowSink,
) -> Result<(), Failure> {
    let mut rows = B::fetch(conn, sql_text, args);
    let mut chunk = Vec::with_capacity(ROWS_PER_CHUNK);
    while let Some(row) = rows.try_next().await.map_err(sql(sql_text))? {
        chunk.push(B::decode(&row)?);
        if chunk.len() == ROWS_PER_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(ROWS_PER_CHUNK));
            if !sink.send(full).await {
                // The caller stopped reading (its callback failed) and returns its error.
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        sink.send(chunk).await;
    }
    Ok(())
}
