//! SQLite adapter of the store port: one write connection owned by the writer thread, a
//! small pool of read-only connections for the API, WAL so readers never block the writer.
//!
//! Why rusqlite and not sqlx here: the embedded write path is one thread issuing thousands of
//! small statements per group commit; rusqlite runs them in-thread with cached prepared
//! statements, where sqlx's SQLite driver adds a channel round trip per statement.

use agora_core::store::{
    upsert_sql, Database, Dialect, Migration, ReadDatabase, Row, SnapshotReads, StoreError,
    StoreResult, Value, Write, WriteBatch,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, ToSql};
use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod audit;
pub use audit::SqliteAuditor;

/// rusqlite's errors, told as the port's.
pub(crate) fn db_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, ref msg)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(msg.clone().unwrap_or_else(|| e.to_string()))
        }
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        e => StoreError::Database(e.to_string()),
    }
}

trait OrStore<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T> OrStore<T> for rusqlite::Result<T> {
    fn db(self) -> StoreResult<T> {
        self.map_err(db_error)
    }
}

/// A port value bound as a statement parameter.
struct Bind<'a>(&'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Static(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn binds(values: &[Value]) -> Vec<Bind<'_>> {
    values.iter().map(Bind).collect()
}

/// A result row as port values. Only integers, text and NULL are ever stored.
pub(crate) fn row_of(r: &rusqlite::Row, columns: usize) -> StoreResult<Row> {
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match r.get_ref(i).db()? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Text(t) => Value::Text(
                std::str::from_utf8(t)
                    .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))?
                    .to_string(),
            ),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "column {i}: unexpected {:?}",
                    other.data_type()
                )))
            }
        });
    }
    Ok(Row(values))
}

fn query_each(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    each: &mut dyn FnMut(Row) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(sql).db()?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(binds(params))).db()?;
    while let Some(r) = rows.next().db()? {
        each(row_of(r, columns)?)?;
    }
    Ok(())
}

/// How hard a commit insists on reaching the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: survives power loss.
    Full,
    /// fsync at checkpoints only: survives a process crash (SIGKILL), not power loss.
    Normal,
}

fn open(path: &Path, read_only: bool) -> StoreResult<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).db()?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).db()?;
    // 8 MB: a bigger cache makes every commit slower, because SQLite scans the whole
    // page-cache hash when a write transaction ends (pcache1TruncateUnsafe).
    conn.pragma_update(None, "cache_size", -8_000).db()?;
    conn.pragma_update(None, "temp_store", "MEMORY").db()?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Checkpointing, tuned with `agora bench` on the 2-core machine (BENCHMARKS.md). Copying
/// committed WAL pages into the database must not sit on the writer's path (SQLite's
/// auto-checkpoint there: 13k orders/s at 1,000 pages, p99 accept 21 ms at 16,000) and must
/// not let the WAL grow forever (a background PASSIVE checkpoint never catches up with a busy
/// writer, so the WAL never wraps: it reached 400 MB while ext4 zeroed new blocks). So:
/// a background connection does the bulk copying, once a second; once the WAL passes
/// `WAL_WRAP_FRAMES` it chases every few milliseconds until it is nearly caught up, and the
/// writer then copies the small remainder right after a commit — the one moment no frame is
/// being added, so that checkpoint completes and the next commit wraps the WAL.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);
const CHECKPOINT_CHASE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);
/// WAL size (in 1 KiB pages) past which the WAL should wrap.
const WAL_WRAP_FRAMES: i64 = 65_536;
/// The writer finishes a checkpoint only when at most this many pages remain to copy.
const WAL_FINISH_FRAMES_MAX: i64 = 2_048;

/// What the background checkpointer last saw, for the writer.
#[derive(Default)]
struct WalProgress {
    frames: AtomicI64,
    backfilled: AtomicI64,
}

/// The writer's connection.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    wal: Arc<WalProgress>,
    /// The upsert of each table, built once (keyed by the table's address: two venues may
    /// declare different views of one table).
    upserts: FxHashMap<usize, String>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database. Components apply their schema with
    /// [`Database::migrate`].
    pub fn open(path: &Path, durability: Durability) -> StoreResult<SqliteStore> {
        let mut conn = open(path, false)?;
        // 1 KiB pages (takes effect when the file is created): each commit dirties about one
        // leaf page per distinct user in the per-user indexes and writes each dirty page whole
        // to the WAL, so smaller pages mean fewer bytes per commit. Measured on the 2-core
        // machine with `agora bench`: 4 KiB 12-15k orders/s, 2 KiB 15-17k, 1 KiB 17-18k, 512 B
        // no better than 1 KiB (BENCHMARKS.md).
        conn.pragma_update(None, "page_size", 1024).db()?;
        conn.pragma_update(None, "journal_mode", "WAL").db()?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync).db()?;
        // Checkpoints: see `Checkpointer`.
        conn.pragma_update(None, "wal_autocheckpoint", 0).db()?;
        // Keep the wrapped WAL's blocks allocated (re-growing it costs zeroing), trim beyond.
        conn.pragma_update(None, "journal_size_limit", 2 * WAL_WRAP_FRAMES * 1024)
            .db()?;
        adopt_legacy_migrations(&mut conn)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            wal: Arc::default(),
            upserts: FxHashMap::default(),
        })
    }

    /// A pool of `size` read-only connections to the same database.
    pub fn reader(&self, size: usize) -> StoreResult<SqliteReader> {
        assert!(size > 0);
        let conns = (0..size)
            .map(|_| {
                let c = open(&self.path, true)?;
                c.pragma_update(None, "query_only", true).db()?;
                Ok(Mutex::new(c))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(SqliteReader {
            conns,
            next: AtomicUsize::new(0),
        })
    }
}

/// A PASSIVE checkpoint: (busy, WAL frames, frames copied). Never waits for anyone.
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

/// The background half of checkpointing (see `WAL_WRAP_FRAMES`). Stops when dropped.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub fn spawn(store: &SqliteStore) -> StoreResult<Checkpointer> {
        let conn = open(&store.path, false)?;
        let (stop, wal) = (Arc::new(AtomicBool::new(false)), store.wal.clone());
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || {
                let mut pause = CHECKPOINT_PAUSE;
                let mut slept = std::time::Duration::ZERO;
                while !flag.load(Ordering::Relaxed) {
                    // Sleep in short steps so that stopping is prompt.
                    let step = pause.min(std::time::Duration::from_millis(50));
                    std::thread::sleep(step);
                    slept += step;
                    if slept < pause {
                        continue;
                    }
                    slept = std::time::Duration::ZERO;
                    match checkpoint(&conn) {
                        Ok((_, frames, backfilled)) => {
                            wal.frames.store(frames, Ordering::Release);
                            wal.backfilled.store(backfilled, Ordering::Release);
                            pause = if frames > WAL_WRAP_FRAMES {
                                CHECKPOINT_CHASE_PAUSE
                            } else {
                                CHECKPOINT_PAUSE
                            };
                        }
                        Err(e) => tracing::warn!(error = %e, "checkpoint failed; will retry"),
                    }
                }
                let _ = checkpoint(&conn); // leave little for the next start to redo
            })
            .expect("spawn checkpointer thread");
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS agora_migrations (
    component TEXT NOT NULL, version INTEGER NOT NULL, applied_ms INTEGER NOT NULL,
    PRIMARY KEY (component, version))";

/// Stores from before the core had its own schema recorded the exchange's migrations alone
/// in `schema_migrations`; record them as the exchange component's (the core's migration 1
/// creates only what they lack).
fn adopt_legacy_migrations(conn: &mut Connection) -> StoreResult<()> {
    let legacy: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'schema_migrations'",
            [],
            |r| r.get(0),
        )
        .db()?;
    if !legacy {
        return Ok(());
    }
    let tx = conn.transaction().db()?;
    tx.execute_batch(MIGRATIONS_TABLE).db()?;
    tx.execute_batch(
        "INSERT OR IGNORE INTO agora_migrations (component, version, applied_ms) \
         SELECT 'exchange', version, applied_ms FROM schema_migrations; \
         DROP TABLE schema_migrations;",
    )
    .db()?;
    tx.commit().db()?;
    tracing::info!("recorded the store's earlier migrations as the exchange's");
    Ok(())
}

fn now_ms() -> i64 {
    agora_core::Clock::now_ms(&agora_core::SystemClock)
}

impl Database for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn migrate(&mut self, component: &str, migrations: &[Migration]) -> StoreResult<()> {
        self.conn.execute_batch(MIGRATIONS_TABLE).db()?;
        let current: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM agora_migrations WHERE component = ?1",
                [component],
                |r| r.get(0),
            )
            .db()?;
        let mut pending: Vec<&Migration> =
            migrations.iter().filter(|m| m.version > current).collect();
        pending.sort_by_key(|m| m.version);
        for m in pending {
            let tx = self.conn.transaction().db()?;
            tx.execute_batch(m.sqlite)
                .map_err(|e| StoreError::Migration(format!("{component} {}: {e}", m.version)))?;
            tx.execute(
                "INSERT INTO agora_migrations (component, version, applied_ms) \
                 VALUES (?1, ?2, ?3)",
                params![component, m.version, now_ms()],
            )
            .db()?;
            tx.commit().db()?;
            tracing::info!(component, version = m.version, "applied migration");
        }
        Ok(())
    }

    fn commit(&mut self, b: &WriteBatch) -> StoreResult<()> {
        for w in &b.writes {
            if let Write::Put { table, .. } = w {
                self.upserts
                    .entry(std::ptr::from_ref(*table) as usize)
                    .or_insert_with(|| upsert_sql(Dialect::Sqlite, table));
            }
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .db()?;
        if let Some(fence) = &b.fence {
            let epoch: Option<i64> = tx
                .query_row(
                    "SELECT epoch FROM agora_fences WHERE role = ?1",
                    [&fence.role],
                    |r| r.get(0),
                )
                .optional()
                .db()?;
            if epoch != Some(fence.epoch) {
                return Err(StoreError::Fenced(format!(
                    "{} is at epoch {epoch:?}, this writer holds {}",
                    fence.role, fence.epoch
                )));
            }
        }
        // Batches come in runs of one table's rows: prepare once per run, not per row (the
        // statement cache hashes the whole SQL text on every lookup).
        let mut run: Option<(&'static str, rusqlite::CachedStatement<'_>)> = None;
        for w in &b.writes {
            let sql = match w {
                Write::Put { table, .. } => {
                    self.upserts[&(std::ptr::from_ref(*table) as usize)].as_str()
                }
                Write::Exec { sql, .. } => sql,
            };
            let name = match w {
                Write::Put { table, .. } => table.name,
                Write::Exec { sql, .. } => sql,
            };
            if run
                .as_ref()
                .is_none_or(|(current, _)| !std::ptr::eq(*current, name))
            {
                run = Some((name, tx.prepare_cached(sql).db()?));
            }
            let (_, statement) = run.as_mut().expect("prepared above");
            statement
                .execute(rusqlite::params_from_iter(binds(b.values_of(w))))
                .db()?;
        }
        drop(run);
        tx.commit().db()?;
        let frames = self.wal.frames.load(Ordering::Acquire);
        let behind = frames - self.wal.backfilled.load(Ordering::Acquire);
        if frames > WAL_WRAP_FRAMES && behind <= WAL_FINISH_FRAMES_MAX {
            // The background checkpointer is nearly caught up: finish here, where nothing is
            // being appended, so the WAL restarts from its beginning on the next commit.
            match checkpoint(&self.conn) {
                Ok((_, wal_frames, done)) if wal_frames == done => {
                    self.wal.frames.store(0, Ordering::Release);
                    self.wal.backfilled.store(0, Ordering::Release);
                }
                Ok(_) => {} // a reader still needs old frames; try again later
                Err(e) => tracing::warn!(error = %e, "checkpoint failed; will retry"),
            }
        }
        Ok(())
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()> {
        query_each(&self.conn, sql, params, each)
    }
}

/// Read-only connections for the API. Each call takes one connection for its duration;
/// callers run it on a blocking thread.
pub struct SqliteReader {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl SqliteReader {
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> StoreResult<T>) -> StoreResult<T> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Prefer an idle connection; wait on one only if all are busy.
        for i in 0..self.conns.len() {
            if let Ok(mut c) = self.conns[(start + i) % self.conns.len()].try_lock() {
                return f(&mut c);
            }
        }
        let mut c = self.conns[start % self.conns.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }
}

impl ReadDatabase for SqliteReader {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// One statement, so one snapshot: a reader never sees half a commit.
    fn query_each(
        &self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()> {
        self.with(|c| query_each(c, sql, params, each))
    }

    /// A deferred read transaction: in WAL mode its first read fixes the snapshot every
    /// later read sees. A failed `reads` rolls back (there is nothing to undo: it only ends
    /// the read transaction).
    fn snapshot(
        &self,
        reads: &mut dyn FnMut(&mut dyn SnapshotReads) -> StoreResult<()>,
    ) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction().db()?;
            reads(&mut SqliteSnapshot(&tx))?;
            tx.commit().db()
        })
    }
}

/// The reads of one [`ReadDatabase::snapshot`] on SQLite: one read transaction.
struct SqliteSnapshot<'a>(&'a rusqlite::Transaction<'a>);

impl SnapshotReads for SqliteSnapshot<'_> {
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()> {
        query_each(self.0, sql, params, each)
    }
}
