//! SQLite adapter of the store port: one write connection owned by the writer thread, a
//! small pool of read-only connections for the API, WAL so readers never block the writer.
//!
//! Why rusqlite and not sqlx here: the embedded write path is one thread issuing thousands of
//! small statements per group commit; rusqlite runs them in-thread with cached prepared
//! statements, where sqlx's SQLite driver adds a channel round trip per statement.

use crate::*;
use agora_engine::{Side, TimeInForce};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod audit;
pub use audit::SqliteAuditor;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_exchange.sql")),
    (
        2,
        include_str!("../migrations/sqlite/0002_relay_position.sql"),
    ),
    (3, include_str!("../migrations/sqlite/0003_candles.sql")),
    (
        4,
        include_str!("../migrations/sqlite/0004_order_limits_and_stp.sql"),
    ),
];

/// Stored interval texts, interned so rows can carry `&'static str`.
const INTERVALS: [&str; 6] = ["1m", "5m", "15m", "1h", "4h", "1d"];

fn interval_text(text: String) -> rusqlite::Result<&'static str> {
    INTERVALS
        .iter()
        .copied()
        .find(|i| *i == text)
        .ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("unknown interval {text:?}").into(),
            )
        })
}

const CANDLE_COLUMNS: &str =
    "symbol_id, interval, open_ms, open, high, low, close, volume, quote_volume, trades";

fn candle_from_row(r: &Row) -> rusqlite::Result<CandleRow> {
    Ok(CandleRow {
        symbol: r.get(0)?,
        interval: interval_text(r.get(1)?)?,
        open_ms: r.get(2)?,
        open: r.get(3)?,
        high: r.get(4)?,
        low: r.get(5)?,
        close: r.get(6)?,
        volume: r.get(7)?,
        quote_volume: r.get(8)?,
        trades: r.get(9)?,
    })
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
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // 8 MB: a bigger cache makes every commit slower, because SQLite scans the whole
    // page-cache hash when a write transaction ends (pcache1TruncateUnsafe).
    conn.pragma_update(None, "cache_size", -8_000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Stable text of a unit enum, through its serde name (`Side::Buy` → `"BUY"`).
fn enum_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => unreachable!("not a unit enum: {other:?}"),
    }
}

fn enum_parse<T: DeserializeOwned>(text: String) -> rusqlite::Result<T> {
    serde_json::from_value(serde_json::Value::String(text)).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
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
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path, durability: Durability) -> StoreResult<SqliteStore> {
        let mut conn = open(path, false)?;
        // 1 KiB pages (takes effect when the file is created): each commit dirties about one
        // leaf page per distinct user in the per-user indexes and writes each dirty page whole
        // to the WAL, so smaller pages mean fewer bytes per commit. Measured on the 2-core
        // machine with `agora bench`: 4 KiB 12-15k orders/s, 2 KiB 15-17k, 1 KiB 17-18k, 512 B
        // no better than 1 KiB (BENCHMARKS.md).
        conn.pragma_update(None, "page_size", 1024)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        // Checkpoints: see `Checkpointer`.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // Keep the wrapped WAL's blocks allocated (re-growing it costs zeroing), trim beyond.
        conn.pragma_update(None, "journal_size_limit", 2 * WAL_WRAP_FRAMES * 1024)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            wal: Arc::default(),
        })
    }

    /// A pool of `size` read-only connections to the same database.
    pub fn reader(&self, size: usize) -> StoreResult<SqliteReader> {
        assert!(size > 0);
        let conns = (0..size)
            .map(|_| {
                let c = open(&self.path, true)?;
                c.pragma_update(None, "query_only", true)?;
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

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Migration(format!("{version}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
            params![version, now_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied migration");
    }
    Ok(())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const ORDER_COLUMNS: &str = "id, user_id, symbol_id, side, type, time_in_force, price, quantity, \
     quote_quantity, client_order_id, status, filled_qty, filled_quote, fee_paid, hold_asset, \
     held, accept_seq, cancel_requested, created_ms, updated_ms, stp";

fn order_from_row(r: &Row) -> rusqlite::Result<OrderRow> {
    Ok(OrderRow {
        id: r.get(0)?,
        user: r.get(1)?,
        symbol: r.get(2)?,
        side: enum_parse::<Side>(r.get(3)?)?,
        order_type: enum_parse::<OrderType>(r.get(4)?)?,
        time_in_force: enum_parse::<TimeInForce>(r.get(5)?)?,
        price: r.get(6)?,
        quantity: r.get(7)?,
        quote_quantity: r.get(8)?,
        client_order_id: r.get(9)?,
        status: enum_parse::<OrderStatus>(r.get(10)?)?,
        filled_qty: r.get(11)?,
        filled_quote: r.get(12)?,
        fee_paid: r.get(13)?,
        hold_asset: r.get(14)?,
        held: r.get(15)?,
        accept_seq: r.get(16)?,
        cancel_requested: r.get(17)?,
        created_ms: r.get(18)?,
        updated_ms: r.get(19)?,
        stp: enum_parse(r.get(20)?)?,
    })
}

const TRADE_COLUMNS: &str = "seq, symbol_id, trade_id, price, qty, quote_qty, buy_order, \
     sell_order, buyer, seller, taker_side, buyer_fee, seller_fee, created_ms";

fn trade_from_row(r: &Row) -> rusqlite::Result<TradeRow> {
    Ok(TradeRow {
        seq: r.get(0)?,
        symbol: r.get(1)?,
        trade_id: r.get(2)?,
        price: r.get(3)?,
        qty: r.get(4)?,
        quote_qty: r.get(5)?,
        buy_order: r.get(6)?,
        sell_order: r.get(7)?,
        buyer: r.get(8)?,
        seller: r.get(9)?,
        taker_side: enum_parse::<Side>(r.get(10)?)?,
        buyer_fee: r.get(11)?,
        seller_fee: r.get(12)?,
        created_ms: r.get(13)?,
    })
}

fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, f)?;
    Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
}

impl Store for SqliteStore {
    fn commit(&mut self, b: &WriteBatch) -> StoreResult<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut s =
                tx.prepare_cached("INSERT INTO users (id, name, created_ms) VALUES (?1, ?2, ?3)")?;
            for u in &b.users {
                s.execute(params![u.id, u.name, u.created_ms])?;
            }
            let mut s =
                tx.prepare_cached("INSERT INTO assets (id, code, scale) VALUES (?1, ?2, ?3)")?;
            for a in &b.assets {
                s.execute(params![a.id, a.code, a.scale])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO symbols (id, name, base_asset, quote_asset, tick_size, lot_size, \
                 min_notional, maker_fee_bps, taker_fee_bps, status, max_quantity, default_stp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
                 default_stp = excluded.default_stp",
            )?;
            for y in &b.symbols {
                s.execute(params![
                    y.id,
                    y.name,
                    y.base_asset,
                    y.quote_asset,
                    y.tick_size,
                    y.lot_size,
                    y.min_notional,
                    y.maker_fee_bps,
                    y.taker_fee_bps,
                    enum_text(&y.status),
                    y.max_quantity,
                    enum_text(&y.default_stp)
                ])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO balances (user_id, asset_id, available, held) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (user_id, asset_id) DO UPDATE \
                 SET available = excluded.available, held = excluded.held",
            )?;
            for x in &b.balances {
                s.execute(params![x.user, x.asset, x.available, x.held])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO venue_balances (account, asset_id, amount) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (account, asset_id) DO UPDATE SET amount = excluded.amount",
            )?;
            for x in &b.venue_balances {
                s.execute(params![enum_text(&x.account), x.asset, x.amount])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO journal (id, kind, ref_id, postings, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for j in &b.journal {
                s.execute(params![j.id, j.kind, j.ref_id, j.postings, j.created_ms])?;
            }
            let mut s = tx.prepare_cached(&format!(
                "INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
                 filled_qty = excluded.filled_qty, filled_quote = excluded.filled_quote, \
                 fee_paid = excluded.fee_paid, held = excluded.held, \
                 cancel_requested = excluded.cancel_requested, updated_ms = excluded.updated_ms"
            ))?;
            for o in &b.orders {
                s.execute(params![
                    o.id,
                    o.user,
                    o.symbol,
                    enum_text(&o.side),
                    enum_text(&o.order_type),
                    enum_text(&o.time_in_force),
                    o.price,
                    o.quantity,
                    o.quote_quantity,
                    o.client_order_id,
                    enum_text(&o.status),
                    o.filled_qty,
                    o.filled_quote,
                    o.fee_paid,
                    o.hold_asset,
                    o.held,
                    o.accept_seq,
                    o.cancel_requested,
                    o.created_ms,
                    o.updated_ms,
                    enum_text(&o.stp)
                ])?;
            }
            let mut s = tx.prepare_cached(&format!(
                "INSERT INTO trades ({TRADE_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ))?;
            for t in &b.trades {
                s.execute(params![
                    t.seq,
                    t.symbol,
                    t.trade_id,
                    t.price,
                    t.qty,
                    t.quote_qty,
                    t.buy_order,
                    t.sell_order,
                    t.buyer,
                    t.seller,
                    enum_text(&t.taker_side),
                    t.buyer_fee,
                    t.seller_fee,
                    t.created_ms
                ])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO outbox (seq, id, aggregatetype, aggregateid, type, payload, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in &b.outbox {
                s.execute(params![
                    e.seq,
                    e.id,
                    e.aggregate_type,
                    e.aggregate_id,
                    e.event_type,
                    e.payload,
                    e.created_ms
                ])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO engine_cursors (symbol_id, input_seq, next_trade_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (symbol_id) DO UPDATE \
                 SET input_seq = excluded.input_seq, next_trade_id = excluded.next_trade_id",
            )?;
            for c in &b.cursors {
                s.execute(params![c.symbol, c.input_seq, c.next_trade_id])?;
            }
            let mut s = tx.prepare_cached(&format!(
                "INSERT INTO candles ({CANDLE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (symbol_id, interval, open_ms) DO UPDATE SET high = excluded.high, \
                 low = excluded.low, close = excluded.close, volume = excluded.volume, \
                 quote_volume = excluded.quote_volume, trades = excluded.trades"
            ))?;
            for c in &b.candles {
                s.execute(params![
                    c.symbol,
                    c.interval,
                    c.open_ms,
                    c.open,
                    c.high,
                    c.low,
                    c.close,
                    c.volume,
                    c.quote_volume,
                    c.trades
                ])?;
            }
            if let Some(seq) = b.relay_position {
                tx.prepare_cached(
                    "INSERT INTO relay_position (id, seq) VALUES (1, ?1) \
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
                )?
                .execute(params![seq])?;
            }
            if let Some(seq) = b.outbox_prune_through {
                tx.prepare_cached("DELETE FROM outbox WHERE seq <= ?1")?
                    .execute(params![seq])?;
            }
        }
        tx.commit()?;
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

    fn load_assets(&mut self) -> StoreResult<Vec<AssetRow>> {
        collect(
            &self.conn,
            "SELECT id, code, scale FROM assets ORDER BY id",
            [],
            |r| {
                Ok(AssetRow {
                    id: r.get(0)?,
                    code: r.get(1)?,
                    scale: r.get(2)?,
                })
            },
        )
    }

    fn load_symbols(&mut self) -> StoreResult<Vec<SymbolRow>> {
        collect(
            &self.conn,
            "SELECT id, name, base_asset, quote_asset, tick_size, lot_size, min_notional, \
             maker_fee_bps, taker_fee_bps, status, max_quantity, default_stp \
             FROM symbols ORDER BY id",
            [],
            |r| {
                Ok(SymbolRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    base_asset: r.get(2)?,
                    quote_asset: r.get(3)?,
                    tick_size: r.get(4)?,
                    lot_size: r.get(5)?,
                    min_notional: r.get(6)?,
                    maker_fee_bps: r.get(7)?,
                    taker_fee_bps: r.get(8)?,
                    status: enum_parse(r.get(9)?)?,
                    max_quantity: r.get(10)?,
                    default_stp: enum_parse(r.get(11)?)?,
                })
            },
        )
    }

    fn load_users(&mut self) -> StoreResult<Vec<UserRow>> {
        collect(
            &self.conn,
            "SELECT id, name, created_ms FROM users",
            [],
            |r| {
                Ok(UserRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            },
        )
    }

    fn load_open_orders(&mut self) -> StoreResult<Vec<OrderRow>> {
        collect(
            &self.conn,
            &format!(
                "SELECT {ORDER_COLUMNS} FROM orders \
                 WHERE status IN ('NEW', 'PARTIALLY_FILLED') ORDER BY accept_seq"
            ),
            [],
            order_from_row,
        )
    }

    fn load_book_orders(&mut self, symbol: u32, accept_seq_max: i64) -> StoreResult<Vec<OrderRow>> {
        collect(
            &self.conn,
            &format!(
                "SELECT {ORDER_COLUMNS} FROM orders \
                 WHERE status IN ('NEW', 'PARTIALLY_FILLED') AND symbol_id = ?1 \
                 AND accept_seq <= ?2 ORDER BY accept_seq"
            ),
            params![symbol, accept_seq_max],
            order_from_row,
        )
    }

    fn load_cursors(&mut self) -> StoreResult<Vec<CursorRow>> {
        collect(
            &self.conn,
            "SELECT symbol_id, input_seq, next_trade_id FROM engine_cursors",
            [],
            |r| {
                Ok(CursorRow {
                    symbol: r.get(0)?,
                    input_seq: r.get(1)?,
                    next_trade_id: r.get(2)?,
                })
            },
        )
    }

    fn load_relay_position(&mut self) -> StoreResult<i64> {
        Ok(self
            .conn
            .query_row("SELECT seq FROM relay_position WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0))
    }

    fn load_venue_balances(&mut self) -> StoreResult<Vec<VenueBalanceRow>> {
        collect(
            &self.conn,
            "SELECT account, asset_id, amount FROM venue_balances",
            [],
            |r| {
                Ok(VenueBalanceRow {
                    account: enum_parse(r.get(0)?)?,
                    asset: r.get(1)?,
                    amount: r.get(2)?,
                })
            },
        )
    }

    fn load_balance(&mut self, user: u64, asset: u32) -> StoreResult<Option<BalanceRow>> {
        let mut s = self.conn.prepare_cached(
            "SELECT available, held FROM balances WHERE user_id = ?1 AND asset_id = ?2",
        )?;
        Ok(s.query_row(params![user, asset], |r| {
            Ok(BalanceRow {
                user,
                asset,
                available: r.get(0)?,
                held: r.get(1)?,
            })
        })
        .optional()?)
    }

    fn find_order_by_client_id(
        &mut self,
        user: u64,
        client_id: &str,
    ) -> StoreResult<Option<OrderRow>> {
        let mut s = self.conn.prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ?1 AND client_order_id = ?2"
        ))?;
        Ok(s.query_row(params![user, client_id], order_from_row)
            .optional()?)
    }

    fn find_order(&mut self, id: u64) -> StoreResult<Option<OrderRow>> {
        let mut s = self
            .conn
            .prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"))?;
        Ok(s.query_row(params![id], order_from_row).optional()?)
    }

    fn load_counters(&mut self) -> StoreResult<Counters> {
        let one =
            |sql: &str| -> StoreResult<i64> { Ok(self.conn.query_row(sql, [], |r| r.get(0))?) };
        Ok(Counters {
            max_order_id: one("SELECT COALESCE(MAX(id), 0) FROM orders")? as u64,
            max_outbox_seq: one("SELECT COALESCE(MAX(seq), 0) FROM outbox")?,
            max_journal_id: one("SELECT COALESCE(MAX(id), 0) FROM journal")?,
            max_trade_seq: one("SELECT COALESCE(MAX(seq), 0) FROM trades")?,
            max_user_id: one("SELECT COALESCE(MAX(id), 0) FROM users")? as u64,
            max_asset_id: one("SELECT COALESCE(MAX(id), 0) FROM assets")? as u32,
            max_symbol_id: one("SELECT COALESCE(MAX(id), 0) FROM symbols")? as u32,
        })
    }

    fn load_recent_candles(&mut self, per_series: usize) -> StoreResult<Vec<CandleRow>> {
        collect(
            &self.conn,
            &format!(
                "SELECT {CANDLE_COLUMNS} FROM (SELECT *, ROW_NUMBER() OVER ( \
                   PARTITION BY symbol_id, interval ORDER BY open_ms DESC) AS n FROM candles) \
                 WHERE n <= ?1 ORDER BY symbol_id, interval, open_ms"
            ),
            params![per_series as i64],
            candle_from_row,
        )
    }

    fn load_recent_trades(&mut self, per_symbol: usize) -> StoreResult<Vec<TradeRow>> {
        let symbols: Vec<u32> = collect(&self.conn, "SELECT id FROM symbols", [], |r| r.get(0))?;
        let mut all = Vec::new();
        for symbol in symbols {
            let mut rows = collect(
                &self.conn,
                &format!(
                    "SELECT {TRADE_COLUMNS} FROM trades WHERE symbol_id = ?1 \
                     ORDER BY trade_id DESC LIMIT ?2"
                ),
                params![symbol, per_symbol as i64],
                trade_from_row,
            )?;
            rows.reverse();
            all.extend(rows);
        }
        Ok(all)
    }

    fn outbox_after(&mut self, after: i64, limit: usize) -> StoreResult<Vec<OutboxRow>> {
        collect(
            &self.conn,
            "SELECT seq, id, aggregatetype, aggregateid, type, payload, created_ms \
             FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            params![after, limit as i64],
            |r| {
                Ok(OutboxRow {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    aggregate_type: r.get(2)?,
                    aggregate_id: r.get(3)?,
                    event_type: r.get(4)?,
                    payload: r.get(5)?,
                    created_ms: r.get(6)?,
                })
            },
        )
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

impl ReadStore for SqliteReader {
    fn order(&self, id: u64) -> StoreResult<Option<OrderRow>> {
        self.with(|c| {
            let mut s =
                c.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"))?;
            Ok(s.query_row(params![id], order_from_row).optional()?)
        })
    }

    fn orders(&self, q: &OrderQuery) -> StoreResult<Vec<OrderRow>> {
        let status = q.status.map(|s| enum_text(&s));
        self.with(|c| {
            collect(
                c,
                &format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ?1 \
                     AND (?2 IS NULL OR symbol_id = ?2) AND (?3 IS NULL OR status = ?3) \
                     AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5"
                ),
                params![q.user, q.symbol, status, q.before_id, q.limit as i64],
                order_from_row,
            )
        })
    }

    fn balances(&self, user: u64) -> StoreResult<Vec<BalanceRow>> {
        self.with(|c| {
            collect(
                c,
                "SELECT asset_id, available, held FROM balances WHERE user_id = ?1 ORDER BY asset_id",
                params![user],
                |r| {
                    Ok(BalanceRow {
                        user,
                        asset: r.get(0)?,
                        available: r.get(1)?,
                        held: r.get(2)?,
                    })
                },
            )
        })
    }

    fn fills(
        &self,
        user: u64,
        symbol: Option<u32>,
        before_fill_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<FillRow>> {
        // fill_id = 2·seq (+1 for the sell side), so "fill_id < b" is "seq < (b+1)/2" on the
        // buy side and "seq < b/2" on the sell side: each side is a range on its index.
        let b = before_fill_id.unwrap_or(i64::MAX);
        let sql = |column: &str| {
            format!(
                "SELECT {TRADE_COLUMNS} FROM trades WHERE {column} = ?1 \
                 AND (?2 IS NULL OR symbol_id = ?2) AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
            )
        };
        // Both sides from one snapshot: a trade committed between two reads could show its
        // sell fill without its buy fill, and paging would then skip the buy for good.
        let mut fills = self.with(|c| {
            let tx = c.transaction()?;
            let side = |column: &str, seq_below: i64, side: Side| {
                collect(
                    &tx,
                    &sql(column),
                    params![user, symbol, seq_below, limit as i64],
                    |r| Ok(FillRow::new(trade_from_row(r)?, side)),
                )
            };
            let mut fills = side("buyer", b / 2 + b % 2, Side::Buy)?;
            fills.extend(side("seller", b / 2, Side::Sell)?);
            tx.commit()?;
            Ok(fills)
        })?;
        fills.sort_unstable_by_key(|f| std::cmp::Reverse(f.fill_id));
        fills.truncate(limit);
        Ok(fills)
    }

    fn user_by_name(&self, name: &str) -> StoreResult<Option<UserRow>> {
        self.with(|c| {
            let mut s =
                c.prepare_cached("SELECT id, name, created_ms FROM users WHERE name = ?1")?;
            Ok(s.query_row(params![name], |r| {
                Ok(UserRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            })
            .optional()?)
        })
    }

    fn candles(
        &self,
        symbol: u32,
        interval: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<CandleRow>> {
        self.with(|c| {
            let mut rows = collect(
                c,
                &format!(
                    "SELECT {CANDLE_COLUMNS} FROM candles WHERE symbol_id = ?1 AND interval = ?2 \
                     AND open_ms < ?3 ORDER BY open_ms DESC LIMIT 1"
                ),
                params![symbol, interval, start_ms],
                candle_from_row,
            )?;
            let mut range = collect(
                c,
                &format!(
                    "SELECT {CANDLE_COLUMNS} FROM candles WHERE symbol_id = ?1 AND interval = ?2 \
                     AND open_ms >= ?3 AND open_ms <= ?4 ORDER BY open_ms DESC LIMIT ?5"
                ),
                params![symbol, interval, start_ms, end_ms, limit as i64],
                candle_from_row,
            )?;
            range.reverse();
            rows.extend(range);
            Ok(rows)
        })
    }
}
