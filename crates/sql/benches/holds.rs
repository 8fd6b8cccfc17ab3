//! Holds across processes: who arbitrates an account? Measured for issue #9, item 4.
//!
//! Every strategy places the hold an accepted order places — one balance row update
//! (available → held), one order row insert, one journal row insert — in the schema agora
//! migrates (the core's `balances` and `journal`, the exchange's `orders`, with their
//! indexes), on PostgreSQL and on MySQL/MariaDB:
//!
//! - (a)  the database as arbiter, one transaction per order: a conditional
//!   `UPDATE balances SET available = available - ?, held = held + ? WHERE … AND
//!   available >= ?` (no row affected: insufficient funds, roll back), then the two inserts;
//!   N connections, as N API processes would hold between them;
//! - (a') the same with a pessimistic row lock: `SELECT … FOR UPDATE`, check, `UPDATE`;
//! - (b)  the database as arbiter with group commit per process: P processes (a task and a
//!   connection each) take up to B waiting orders into one transaction, conditional updates
//!   one by one in (user, asset) order (two processes lock rows in the same order, so they
//!   cannot deadlock), then multi-row inserts of the accepted orders;
//! - (c)  agora's choice, a single writer: balances checked in memory, up to B orders per
//!   transaction as multi-row upserts, fenced by the writer's epoch — through this crate's
//!   own adapter (`PostgresDatabase` / `MysqlDatabase`, `acquire_role`), on a thread of its
//!   own, as the sequencer commits.
//!
//! The load is closed-loop: `HOLDS_CLIENTS` clients (64) each send an order for a random
//! user and wait for its answer; client i talks to connection (or process) i mod N. Latency
//! is per order, from sending it to its answer, queueing included. Every transaction is
//! durable (the servers' defaults: `synchronous_commit = on`,
//! `innodb_flush_log_at_trx_commit = 1`). After each case the store is checked: no balance
//! below zero, value conserved, the balances' held == the orders' holds, one journal row per
//! order. Last, per strategy, an overdraw check: 10 users with funds for exactly 20 orders
//! each get 640 orders at once; exactly 200 must be accepted and every balance end at zero.
//!
//! ```text
//! cargo bench -p agora-sql --bench holds
//! ```
//!
//! Environment: `HOLDS_POSTGRES` (`postgres://postgres@127.0.0.1:5432/postgres`) and
//! `HOLDS_MYSQL` (`mysql://root@127.0.0.1:3306/`) are admin URLs: `agora_holds_bench` is
//! created there and dropped at the end. `HOLDS_SERVERS` (`postgres,mysql`), `HOLDS_USERS`
//! (`1000,10`), `HOLDS_SECS` (5 per case), `HOLDS_WARMUP_MS` (500), `HOLDS_CLIENTS` (64),
//! `HOLDS_CONNS` (`2,8,32`: (a)), `HOLDS_LOCK_CONNS` (`8`: (a')), `HOLDS_PROCS` (`2,8`: (b)),
//! `HOLDS_BATCH` (64: the most orders per transaction in (b) and (c)).
//!
//! With a closed loop, (c)'s batches are about half the clients in flight (the other half
//! wait in the commit under way), so its throughput grows with them:
//! `HOLDS_CLIENTS=256 HOLDS_BATCH=256` shows how far; the arbiters' does not grow so.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_core::accounts::{BALANCES, JOURNAL};
use agora_core::store::{acquire_role, numbered_placeholders, Database, Value, WriteBatch};
use agora_sql::{MysqlDatabase, PostgresDatabase};
use agora_store::schema::ORDERS;
use hdrhistogram::Histogram;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot};

const DB_NAME: &str = "agora_holds_bench";
const ASSET: i64 = 2;
const PRICE: i64 = 10;
const QTY: i64 = 10;
/// What each order holds: a limit buy of 10 at 10.
const AMOUNT: i64 = PRICE * QTY;
/// Each user's funds in the timed cases: never exhausted.
const PLENTY: i64 = 1_000_000_000_000;
const NOW_MS: i64 = 1_700_000_000_000;
/// The overdraw check: users, orders each can pay for, orders each client sends.
const OVERDRAW_USERS: i64 = 10;
const OVERDRAW_FUNDED: i64 = 20;
const OVERDRAW_PER_CLIENT: u64 = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Postgres,
    Mysql,
}

impl Server {
    fn admin_url(self) -> String {
        let (var, default) = match self {
            Server::Postgres => (
                "HOLDS_POSTGRES",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            Server::Mysql => ("HOLDS_MYSQL", "mysql://root@127.0.0.1:3306/"),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_string())
    }

    /// The type a `CAST` to a 64-bit integer names.
    fn int(self) -> &'static str {
        match self {
            Server::Postgres => "BIGINT",
            Server::Mysql => "SIGNED",
        }
    }

    /// Portable `?` placeholders in this server's spelling.
    fn stmt(self, sql: &str) -> String {
        match self {
            Server::Postgres => numbered_placeholders(sql),
            Server::Mysql => sql.to_string(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// (a): a conditional update, one transaction per order.
    Arbiter,
    /// (a'): `SELECT … FOR UPDATE`, check, update; one transaction per order.
    Locked,
    /// (b): conditional updates in (user, asset) order, up to B orders per transaction.
    Grouped,
    /// (c): the single writer.
    Writer,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Arbiter => "(a) DB arbiter, conditional UPDATE, 1 tx/order",
            Kind::Locked => "(a') DB arbiter, SELECT … FOR UPDATE, 1 tx/order",
            Kind::Grouped => "(b) DB arbiter, group commit per process",
            Kind::Writer => "(c) single writer, in-memory check, group commit",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    kind: Kind,
    /// Connections (a, a'), processes (b), 1 (c).
    workers: usize,
    users: i64,
}

#[derive(Clone, Debug)]
struct Config {
    servers: Vec<Server>,
    users: Vec<i64>,
    secs: f64,
    warmup: Duration,
    clients: usize,
    conns: Vec<usize>,
    lock_conns: Vec<usize>,
    procs: Vec<usize>,
    batch: usize,
}

fn env_list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn env_nums<T: FromStr>(var: &str, default: &str) -> Vec<T> {
    env_list(var, default)
        .iter()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{var}: {s:?} is not a number"))
        })
        .collect()
}

fn env_num<T: FromStr>(var: &str, default: &str) -> T {
    env_nums(var, default)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{var} is empty"))
}

impl Config {
    fn from_env() -> Config {
        let servers = env_list("HOLDS_SERVERS", "postgres,mysql")
            .iter()
            .map(|s| match s.as_str() {
                "postgres" | "postgresql" | "pg" => Server::Postgres,
                "mysql" | "mariadb" => Server::Mysql,
                other => panic!("HOLDS_SERVERS: unknown server {other:?}"),
            })
            .collect();
        Config {
            servers,
            users: env_nums("HOLDS_USERS", "1000,10"),
            secs: env_num("HOLDS_SECS", "5"),
            warmup: Duration::from_millis(env_num("HOLDS_WARMUP_MS", "500")),
            clients: env_num("HOLDS_CLIENTS", "64"),
            conns: env_nums("HOLDS_CONNS", "2,8,32"),
            lock_conns: env_nums("HOLDS_LOCK_CONNS", "8"),
            procs: env_nums("HOLDS_PROCS", "2,8"),
            batch: env_num("HOLDS_BATCH", "64"),
        }
    }

    fn cases(&self, users: i64) -> Vec<Case> {
        let mut cases = Vec::new();
        let mut add = |kind, workers: &[usize]| {
            for &workers in workers {
                cases.push(Case {
                    kind,
                    workers,
                    users,
                });
            }
        };
        add(Kind::Arbiter, &self.conns);
        add(Kind::Locked, &self.lock_conns);
        add(Kind::Grouped, &self.procs);
        add(Kind::Writer, &[1]);
        cases
    }
}

/// An order's identity; everything else about it is the same for every order.
#[derive(Clone, Copy, Debug)]
struct Order {
    id: i64,
    user: i64,
}

/// The journal entry's postings, as `Entry::postings_json` writes a hold.
fn postings(user: i64) -> String {
    format!("[[\"A\",{user},{ASSET},-{AMOUNT}],[\"H\",{user},{ASSET},{AMOUNT}]]")
}

/// The order's row for the adapter, in `ORDERS.columns` order.
fn order_row(o: Order) -> [Value; 21] {
    [
        o.id.into(),
        o.user.into(),
        1i64.into(),
        "BUY".into(),
        "LIMIT".into(),
        "GTC".into(),
        PRICE.into(),
        QTY.into(),
        Value::Null,
        Value::Null,
        "NEW".into(),
        0i64.into(),
        0i64.into(),
        0i64.into(),
        ASSET.into(),
        AMOUNT.into(),
        o.id.into(),
        0i64.into(),
        NOW_MS.into(),
        NOW_MS.into(),
        "NONE".into(),
    ]
}

fn journal_row(o: Order) -> [Value; 5] {
    [
        o.id.into(),
        "HOLD".into(),
        o.id.into(),
        postings(o.user).into(),
        NOW_MS.into(),
    ]
}

/// The same order row, bound to a sqlx query (`ORDERS.columns` order).
macro_rules! bind_order {
    ($q:expr, $o:expr) => {
        $q.bind($o.id)
            .bind($o.user)
            .bind(1i64)
            .bind("BUY")
            .bind("LIMIT")
            .bind("GTC")
            .bind(PRICE)
            .bind(QTY)
            .bind(None::<i64>)
            .bind(None::<&str>)
            .bind("NEW")
            .bind(0i64)
            .bind(0i64)
            .bind(0i64)
            .bind(ASSET)
            .bind(AMOUNT)
            .bind($o.id)
            .bind(0i64)
            .bind(NOW_MS)
            .bind(NOW_MS)
            .bind("NONE")
    };
}

macro_rules! bind_journal {
    ($q:expr, $o:expr) => {
        $q.bind($o.id)
            .bind("HOLD")
            .bind($o.id)
            .bind(postings($o.user))
            .bind(NOW_MS)
    };
}

/// The statements of (a), (a') and (b), in one server's spelling.
struct Sql {
    hold: String,
    lock: String,
    take: String,
    /// Inserts of 1, 2, 4, … rows: a batch is written in power-of-two chunks, so each
    /// connection prepares a handful of statements instead of one per batch size.
    orders: Vec<String>,
    journal: Vec<String>,
}

impl Sql {
    fn new(server: Server, max_rows: usize) -> Sql {
        let sizes = max_rows.next_power_of_two().ilog2() + 1;
        let insert = |table: &str, columns: &[&str], rows: usize| {
            let row = format!("({})", vec!["?"; columns.len()].join(", "));
            server.stmt(&format!(
                "INSERT INTO {table} ({}) VALUES {}",
                columns.join(", "),
                vec![row; rows].join(", ")
            ))
        };
        Sql {
            hold: server.stmt(
                "UPDATE balances SET available = available - ?, held = held + ? \
                 WHERE user_id = ? AND asset_id = ? AND available >= ?",
            ),
            lock: server.stmt(
                "SELECT available FROM balances WHERE user_id = ? AND asset_id = ? FOR UPDATE",
            ),
            take: server.stmt(
                "UPDATE balances SET available = available - ?, held = held + ? \
                 WHERE user_id = ? AND asset_id = ?",
            ),
            orders: (0..sizes)
                .map(|k| insert("orders", ORDERS.columns, 1 << k))
                .collect(),
            journal: (0..sizes)
                .map(|k| insert("journal", JOURNAL.columns, 1 << k))
                .collect(),
        }
    }
}

/// A connection of either server. The operations are written once and expanded for each.
enum Conn {
    Pg(PgConnection),
    My(MySqlConnection),
}

macro_rules! on {
    ($conn:expr, $c:ident => $body:block) => {
        match $conn {
            Conn::Pg($c) => $body,
            Conn::My($c) => $body,
        }
    };
}

/// Deadlocks and serialization failures: the transaction may be run again.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40001" | "40P01")),
        _ => false,
    }
}

impl Conn {
    async fn open(server: Server, url: &str) -> Result<Conn, sqlx::Error> {
        Ok(match server {
            Server::Postgres => Conn::Pg(
                PgConnectOptions::from_str(url)?
                    .application_name("holds-bench")
                    .connect()
                    .await?,
            ),
            Server::Mysql => {
                let mut c = MySqlConnectOptions::from_str(url)?
                    .charset("utf8mb4")
                    .collation("utf8mb4_bin")
                    .connect()
                    .await?;
                // The session agora's adapter sets up: READ COMMITTED, as PostgreSQL.
                sqlx::raw_sql(
                    "SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES,STRICT_ALL_TABLES'); \
                     SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                )
                .execute(&mut c)
                .await?;
                Conn::My(c)
            }
        })
    }

    async fn close(self) -> Result<(), sqlx::Error> {
        on!(self, c => { c.close().await })
    }

    async fn script(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        on!(self, c => {
            sqlx::raw_sql(sql).execute(&mut *c).await?;
            Ok(())
        })
    }

    async fn ints(&mut self, sql: &str) -> Result<Vec<i64>, sqlx::Error> {
        on!(self, c => {
            let row: (i64, i64, i64, i64) = sqlx::query_as(sql).fetch_one(&mut *c).await?;
            Ok(vec![row.0, row.1, row.2, row.3])
        })
    }

    async fn texts(&mut self, sql: &str) -> Result<(String, String), sqlx::Error> {
        on!(self, c => { sqlx::query_as(sql).fetch_one(&mut *c).await })
    }

    /// (a) and (a'): one order, one transaction. `Ok(false)`: insufficient funds.
    async fn hold_one(&mut self, sql: &Sql, o: Order, lock: bool) -> Result<bool, sqlx::Error> {
        on!(self, c => {
            let mut tx = c.begin().await?;
            let held = if lock {
                let row: Option<(i64,)> = sqlx::query_as(&sql.lock)
                    .bind(o.user)
                    .bind(ASSET)
                    .fetch_optional(&mut *tx)
                    .await?;
                let enough = row.is_some_and(|(available,)| available >= AMOUNT);
                if enough {
                    sqlx::query(&sql.take)
                        .bind(AMOUNT)
                        .bind(AMOUNT)
                        .bind(o.user)
                        .bind(ASSET)
                        .execute(&mut *tx)
                        .await?;
                }
                enough
            } else {
                sqlx::query(&sql.hold)
                    .bind(AMOUNT)
                    .bind(AMOUNT)
                    .bind(o.user)
                    .bind(ASSET)
                    .bind(AMOUNT)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1
            };
            if !held {
                tx.rollback().await?;
                return Ok(false);
            }
            bind_order!(sqlx::query(&sql.orders[0]), o)
                .execute(&mut *tx)
                .await?;
            bind_journal!(sqlx::query(&sql.journal[0]), o)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// (b): `orders`, sorted by (user, asset), in one transaction; whether each was held.
    async fn hold_batch(&mut self, sql: &Sql, orders: &[Order]) -> Result<Vec<bool>, sqlx::Error> {
        on!(self, c => {
            let mut tx = c.begin().await?;
            let mut held = Vec::with_capacity(orders.len());
            for o in orders {
                let n = sqlx::query(&sql.hold)
                    .bind(AMOUNT)
                    .bind(AMOUNT)
                    .bind(o.user)
                    .bind(ASSET)
                    .bind(AMOUNT)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                held.push(n == 1);
            }
            let accepted: Vec<Order> = orders
                .iter()
                .zip(&held)
                .filter(|(_, h)| **h)
                .map(|(o, _)| *o)
                .collect();
            let mut rest = &accepted[..];
            while !rest.is_empty() {
                let k = (rest.len().ilog2() as usize).min(sql.orders.len() - 1);
                let (chunk, tail) = rest.split_at(1 << k);
                let mut q = sqlx::query(&sql.orders[k]);
                for o in chunk {
                    q = bind_order!(q, o);
                }
                q.execute(&mut *tx).await?;
                let mut q = sqlx::query(&sql.journal[k]);
                for o in chunk {
                    q = bind_journal!(q, o);
                }
                q.execute(&mut *tx).await?;
                rest = tail;
            }
            tx.commit().await?;
            Ok(held)
        })
    }
}

struct Req {
    order: Order,
    reply: oneshot::Sender<bool>,
}

/// Counted by the workers over the whole case (warm-up included).
#[derive(Default)]
struct Stats {
    retries: AtomicU64,
    txs: AtomicU64,
    tx_orders: AtomicU64,
}

impl Stats {
    fn committed(&self, orders: usize) {
        self.txs.fetch_add(1, Relaxed);
        self.tx_orders.fetch_add(orders as u64, Relaxed);
    }
}

/// (a), (a'): one order at a time on this connection.
async fn arbiter(
    mut conn: Conn,
    sql: Arc<Sql>,
    mut rx: mpsc::Receiver<Req>,
    lock: bool,
    stats: Arc<Stats>,
) -> Conn {
    while let Some(req) = rx.recv().await {
        let held = loop {
            match conn.hold_one(&sql, req.order, lock).await {
                Ok(held) => break held,
                Err(e) if retryable(&e) => {
                    stats.retries.fetch_add(1, Relaxed);
                }
                Err(e) => panic!("hold of order {}: {e}", req.order.id),
            }
        };
        stats.committed(1);
        let _ = req.reply.send(held);
    }
    conn
}

/// (b): what is waiting, up to `batch_max` orders, in one transaction.
async fn grouped(
    mut conn: Conn,
    sql: Arc<Sql>,
    mut rx: mpsc::Receiver<Req>,
    batch_max: usize,
    stats: Arc<Stats>,
) -> Conn {
    let mut reqs = Vec::with_capacity(batch_max);
    while let Some(first) = rx.recv().await {
        reqs.push(first);
        while reqs.len() < batch_max {
            match rx.try_recv() {
                Ok(req) => reqs.push(req),
                Err(_) => break,
            }
        }
        // Row locks in one global order: (user, asset); the asset is the same for all.
        reqs.sort_by_key(|r| (r.order.user, r.order.id));
        let orders: Vec<Order> = reqs.iter().map(|r| r.order).collect();
        let held = loop {
            match conn.hold_batch(&sql, &orders).await {
                Ok(held) => break held,
                Err(e) if retryable(&e) => {
                    stats.retries.fetch_add(1, Relaxed);
                }
                Err(e) => panic!("hold of {} orders: {e}", orders.len()),
            }
        };
        stats.committed(orders.len());
        for (req, held) in reqs.drain(..).zip(held) {
            let _ = req.reply.send(held);
        }
    }
    conn
}

/// (c): the single writer, on a thread of its own with agora's adapter, as the sequencer.
fn single_writer(
    server: Server,
    url: String,
    mut rx: mpsc::Receiver<Req>,
    batch_max: usize,
    stats: Arc<Stats>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let mut db: Box<dyn Database> = match server {
        Server::Postgres => Box::new(PostgresDatabase::connect(&url).expect("connect")),
        Server::Mysql => Box::new(MysqlDatabase::connect(&url).expect("connect")),
    };
    // The role first, then the state: every commit below carries this epoch.
    let fence = acquire_role(&mut *db, "holds-bench", "holds bench", NOW_MS).expect("role");
    let mut balances: HashMap<i64, (i64, i64)> = db
        .query(
            "SELECT user_id, available, held FROM balances WHERE asset_id = ?",
            &[ASSET.into()],
        )
        .expect("balances")
        .into_iter()
        .map(|r| {
            let int = |i| r.int(i).expect("an integer");
            (int(0), (int(1), int(2)))
        })
        .collect();
    ready.send(()).expect("bench waiting");
    let mut reqs = Vec::with_capacity(batch_max);
    let mut held = Vec::with_capacity(batch_max);
    while let Some(first) = rx.blocking_recv() {
        reqs.push(first);
        while reqs.len() < batch_max {
            match rx.try_recv() {
                Ok(req) => reqs.push(req),
                Err(_) => break,
            }
        }
        let mut batch = WriteBatch {
            fence: Some(fence.clone()),
            ..WriteBatch::default()
        };
        for req in &reqs {
            let o = req.order;
            let ok = match balances.get_mut(&o.user) {
                Some((available, on_hold)) if *available >= AMOUNT => {
                    *available -= AMOUNT;
                    *on_hold += AMOUNT;
                    batch.put(
                        &BALANCES,
                        [
                            o.user.into(),
                            ASSET.into(),
                            (*available).into(),
                            (*on_hold).into(),
                        ],
                    );
                    batch.put(&ORDERS, order_row(o));
                    batch.put(&JOURNAL, journal_row(o));
                    true
                }
                _ => false,
            };
            held.push(ok);
        }
        // Fail-stop, as the sequencer: memory is ahead of the store after a failed commit.
        db.commit(&batch).expect("commit");
        stats.committed(reqs.len());
        for (req, ok) in reqs.drain(..).zip(held.drain(..)) {
            let _ = req.reply.send(ok);
        }
    }
}

#[derive(Default)]
struct Control {
    measuring: AtomicBool,
    stop: AtomicBool,
}

struct ClientResult {
    latency: Histogram<u64>,
    accepted: u64,
    rejected: u64,
    accepted_all: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Which user a client's n-th order is for.
enum Pick {
    /// Uniformly at random (xorshift64*, seeded per client).
    Random(u64),
    /// Round robin over the users, all clients together: every user gets the same number.
    RoundRobin { client: u64, per_client: u64 },
}

async fn client(
    tx: mpsc::Sender<Req>,
    users: i64,
    mut pick: Pick,
    limit: u64,
    next_id: Arc<AtomicI64>,
    control: Arc<Control>,
) -> ClientResult {
    let mut r = ClientResult {
        latency: histogram(),
        accepted: 0,
        rejected: 0,
        accepted_all: 0,
    };
    let mut n = 0u64;
    while n < limit && !control.stop.load(Relaxed) {
        let user = match &mut pick {
            Pick::Random(state) => {
                *state ^= *state >> 12;
                *state ^= *state << 25;
                *state ^= *state >> 27;
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % users as u64) as i64 + 1
            }
            Pick::RoundRobin { client, per_client } => {
                ((*client * *per_client + n) % users as u64) as i64 + 1
            }
        };
        n += 1;
        let order = Order {
            id: next_id.fetch_add(1, Relaxed),
            user,
        };
        let (reply, answer) = oneshot::channel();
        let sent = Instant::now();
        tx.send(Req { order, reply }).await.expect("service gone");
        let held = answer.await.expect("service dropped an order");
        if held {
            r.accepted_all += 1;
        }
        if control.measuring.load(Relaxed) {
            r.latency
                .record(sent.elapsed().as_micros().max(1) as u64)
                .expect("latency in range");
            if held {
                r.accepted += 1;
            } else {
                r.rejected += 1;
            }
        }
    }
    r
}

enum Load {
    /// Warm up, then measure for `secs`.
    Timed { warmup: Duration, secs: f64 },
    /// Each client sends `per_client` orders, round robin over the users, all measured.
    Fixed { per_client: u64 },
}

struct Measured {
    case: Case,
    orders_per_s: f64,
    latency: Histogram<u64>,
    accepted: u64,
    rejected: u64,
    retries: u64,
    per_tx: f64,
}

/// The bench database on one server, and a connection to it for resets and checks.
struct BenchDb {
    server: Server,
    label: String,
    url: String,
    admin: Conn,
}

impl BenchDb {
    /// `expr` as a 64-bit integer (`SUM` answers NUMERIC or DECIMAL).
    fn sum(&self, expr: &str) -> String {
        format!("CAST({expr} AS {})", self.server.int())
    }

    async fn reset(&mut self, users: i64, funds: i64) -> Result<(), String> {
        let truncate = match self.server {
            Server::Postgres => "TRUNCATE orders, journal, balances".to_string(),
            Server::Mysql => {
                "TRUNCATE TABLE orders; TRUNCATE TABLE journal; TRUNCATE TABLE balances".into()
            }
        };
        let mut insert =
            "INSERT INTO balances (user_id, asset_id, available, held) VALUES ".to_string();
        for u in 1..=users {
            if u > 1 {
                insert.push_str(", ");
            }
            write!(insert, "({u}, {ASSET}, {funds}, 0)").expect("a String");
        }
        // Statistics for the fresh tables, and no checkpoint due in the middle of a case.
        let settle: &[&str] = match self.server {
            Server::Postgres => &["ANALYZE balances, orders, journal", "CHECKPOINT"],
            Server::Mysql => &["ANALYZE TABLE balances, orders, journal"],
        };
        let mut scripts = vec![truncate.as_str(), insert.as_str()];
        scripts.extend(settle);
        for sql in scripts {
            self.admin
                .script(sql)
                .await
                .map_err(|e| format!("reset: {e}"))?;
        }
        Ok(())
    }

    /// The safety checks after a case: returns (min available, sum available, sum held).
    async fn check(&mut self, users: i64, funds: i64, accepted: u64) -> Result<[i64; 3], String> {
        let orders = format!(
            "SELECT {}, {}, {}, {} FROM orders",
            self.sum("COUNT(*)"),
            self.sum("COALESCE(SUM(held), 0)"),
            self.sum("(SELECT COUNT(*) FROM journal)"),
            self.sum("0"),
        );
        let balances = format!(
            "SELECT {}, {}, {}, {} FROM balances",
            self.sum("COUNT(*)"),
            self.sum("MIN(available)"),
            self.sum("SUM(available)"),
            self.sum("SUM(held)"),
        );
        let o = self.admin.ints(&orders).await.map_err(|e| e.to_string())?;
        let b = self
            .admin
            .ints(&balances)
            .await
            .map_err(|e| e.to_string())?;
        let (n_orders, orders_held, n_journal) = (o[0], o[1], o[2]);
        let (n_bal, min_available, available, held) = (b[0], b[1], b[2], b[3]);
        let expect = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
        expect(n_bal == users, format!("{n_bal} balance rows, not {users}"))?;
        expect(
            min_available >= 0,
            format!("a balance below zero: {min_available}"),
        )?;
        expect(
            available + held == users * funds,
            format!("not conserved: {available} + {held} != {}", users * funds),
        )?;
        expect(
            n_orders == accepted as i64 && n_journal == n_orders,
            format!("{n_orders} orders and {n_journal} journal rows for {accepted} accepted"),
        )?;
        expect(
            held == orders_held && held == n_orders * AMOUNT,
            format!("held {held}, the orders hold {orders_held}"),
        )?;
        Ok([min_available, available, held])
    }

    async fn run(&mut self, case: Case, cfg: &Config, load: &Load) -> Result<Measured, String> {
        let funds = match load {
            Load::Timed { .. } => PLENTY,
            Load::Fixed { .. } => OVERDRAW_FUNDED * AMOUNT,
        };
        self.reset(case.users, funds).await?;
        let stats = Arc::new(Stats::default());
        let max_rows = cfg.batch.max(1);
        let sql = Arc::new(Sql::new(self.server, max_rows));
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        let mut thread = None;
        match case.kind {
            Kind::Arbiter | Kind::Locked | Kind::Grouped => {
                for _ in 0..case.workers {
                    let conn = Conn::open(self.server, &self.url)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let (tx, rx) = mpsc::channel(cfg.clients);
                    senders.push(tx);
                    let (sql, stats) = (sql.clone(), stats.clone());
                    tasks.push(tokio::spawn(match case.kind {
                        Kind::Grouped => {
                            Box::pin(grouped(conn, sql, rx, max_rows, stats)) as BoxConn
                        }
                        kind => Box::pin(arbiter(conn, sql, rx, kind == Kind::Locked, stats)),
                    }));
                }
            }
            Kind::Writer => {
                let (tx, rx) = mpsc::channel(cfg.clients);
                senders.push(tx);
                let (ready_tx, ready) = std::sync::mpsc::channel();
                let (server, url, stats) = (self.server, self.url.clone(), stats.clone());
                thread = Some(std::thread::spawn(move || {
                    single_writer(server, url, rx, max_rows, stats, ready_tx)
                }));
                tokio::task::spawn_blocking(move || ready.recv())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|_| "the writer did not start".to_string())?;
            }
        }

        let control = Arc::new(Control::default());
        let next_id = Arc::new(AtomicI64::new(1));
        let clients: Vec<_> = (0..cfg.clients)
            .map(|i| {
                let (pick, limit) = match load {
                    Load::Timed { .. } => (
                        Pick::Random(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1)),
                        u64::MAX,
                    ),
                    Load::Fixed { per_client } => (
                        Pick::RoundRobin {
                            client: i as u64,
                            per_client: *per_client,
                        },
                        *per_client,
                    ),
                };
                tokio::spawn(client(
                    senders[i % senders.len()].clone(),
                    case.users,
                    pick,
                    limit,
                    next_id.clone(),
                    control.clone(),
                ))
            })
            .collect();
        drop(senders);

        let window = match load {
            Load::Timed { warmup, secs } => {
                tokio::time::sleep(*warmup).await;
                control.measuring.store(true, Relaxed);
                let started = Instant::now();
                tokio::time::sleep(Duration::from_secs_f64(*secs)).await;
                control.measuring.store(false, Relaxed);
                let window = started.elapsed();
                control.stop.store(true, Relaxed);
                Some(window)
            }
            Load::Fixed { .. } => {
                control.measuring.store(true, Relaxed);
                None
            }
        };
        let started = Instant::now();
        let mut latency = histogram();
        let (mut accepted, mut rejected, mut accepted_all) = (0, 0, 0);
        for c in clients {
            let r = c.await.map_err(|e| format!("client: {e}"))?;
            latency.add(&r.latency).expect("same bounds");
            accepted += r.accepted;
            rejected += r.rejected;
            accepted_all += r.accepted_all;
        }
        let window = window.unwrap_or_else(|| started.elapsed());
        for t in tasks {
            let conn = t.await.map_err(|e| format!("worker: {e}"))?;
            let _ = conn.close().await;
        }
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|_| "the single writer panicked".to_string())?;
        }

        let [_, available, _] = self
            .check(case.users, funds, accepted_all)
            .await
            .map_err(|e| format!("{} {case:?}: CHECK FAILED: {e}", self.label))?;
        if let Load::Fixed { .. } = load {
            let capacity = (case.users * OVERDRAW_FUNDED) as u64;
            if accepted_all != capacity || available != 0 {
                return Err(format!(
                    "{} {case:?}: OVERDRAW CHECK FAILED: {accepted_all} accepted for funds of \
                     {capacity}, {available} left available",
                    self.label
                ));
            }
        }
        let txs = stats.txs.load(Relaxed).max(1);
        Ok(Measured {
            case,
            orders_per_s: accepted as f64 / window.as_secs_f64(),
            latency,
            accepted,
            rejected,
            retries: stats.retries.load(Relaxed),
            per_tx: stats.tx_orders.load(Relaxed) as f64 / txs as f64,
        })
    }
}

type BoxConn = std::pin::Pin<Box<dyn std::future::Future<Output = Conn> + Send>>;

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

fn ms(latency: &Histogram<u64>, q: f64) -> f64 {
    latency.value_at_quantile(q) as f64 / 1000.0
}

fn row(label: &str, m: &Measured) -> String {
    format!(
        "| {label} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} |",
        m.case.users,
        m.case.kind.label(),
        m.case.workers,
        m.orders_per_s,
        ms(&m.latency, 0.50),
        ms(&m.latency, 0.99),
        m.per_tx,
        m.rejected,
        m.retries,
    )
}

const HEADER: &str = "| database | users | strategy | conns | orders/s | p50 ms | p99 ms | orders/tx | rejected | deadlock retries |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|";

/// Every case on one server, then the overdraw checks. Rows are printed as they come.
async fn on_server(db: &mut BenchDb, cfg: &Config, rows: &mut Vec<String>) -> Result<(), String> {
    let migrator = db.url.clone();
    let server = db.server;
    tokio::task::spawn_blocking(move || {
        let mut w: Box<dyn Database> = match server {
            Server::Postgres => Box::new(PostgresDatabase::connect(&migrator)?),
            Server::Mysql => Box::new(MysqlDatabase::connect(&migrator)?),
        };
        w.migrate("core", agora_core::MIGRATIONS)?;
        w.migrate("exchange", agora_store::schema::EXCHANGE_MIGRATIONS)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("migrations: {e}"))?;

    let timed = Load::Timed {
        warmup: cfg.warmup,
        secs: cfg.secs,
    };
    for &users in &cfg.users {
        for case in cfg.cases(users) {
            let m = db.run(case, cfg, &timed).await?;
            let line = row(&db.label, &m);
            println!("{line}");
            rows.push(line);
            assert_eq!(m.accepted + m.rejected, m.latency.len());
        }
    }
    let overdraw = Load::Fixed {
        per_client: OVERDRAW_PER_CLIENT,
    };
    let mut checked = Vec::new();
    let kinds = [
        (Kind::Arbiter, 8),
        (Kind::Locked, 8),
        (Kind::Grouped, 8),
        (Kind::Writer, 1),
    ];
    for (kind, workers) in kinds {
        let case = Case {
            kind,
            workers,
            users: OVERDRAW_USERS,
        };
        let m = db.run(case, cfg, &overdraw).await?;
        checked.push(format!(
            "{} {}+{}",
            kind.label().split(' ').next().unwrap_or(""),
            m.accepted,
            m.rejected
        ));
    }
    println!(
        "{}: overdraw check ok — {} users funded for {} orders each, {} orders sent, \
         accepted+rejected per strategy: {}",
        db.label,
        OVERDRAW_USERS,
        OVERDRAW_FUNDED,
        cfg.clients as u64 * OVERDRAW_PER_CLIENT,
        checked.join(", ")
    );
    Ok(())
}

async fn bench(cfg: Config) -> Result<(), String> {
    println!(
        "holds bench: {} CPUs, {} clients, {} s per case after {} ms warm-up, batches of up \
         to {} orders ((b), (c)), {} per order",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cfg.clients,
        cfg.secs,
        cfg.warmup.as_millis(),
        cfg.batch,
        AMOUNT
    );
    let mut rows = Vec::new();
    let mut failed = None;
    for &server in &cfg.servers {
        let admin_url = server.admin_url();
        let mut admin = match Conn::open(server, &admin_url).await {
            Ok(c) => c,
            Err(e) => {
                println!("{server:?} at {admin_url}: not reachable ({e}), skipped");
                continue;
            }
        };
        let (version, durability) = admin
            .texts(match server {
                Server::Postgres => {
                    "SELECT version(), 'synchronous_commit=' || current_setting('synchronous_commit') \
                     || ', fsync=' || current_setting('fsync')"
                }
                Server::Mysql => {
                    // A case-insensitive collation: sqlx takes a binary one for bytes.
                    "SELECT VERSION(), CONCAT('innodb_flush_log_at_trx_commit=', \
                     @@innodb_flush_log_at_trx_commit) COLLATE utf8mb4_general_ci"
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        let label = match server {
            Server::Postgres => "PostgreSQL",
            Server::Mysql if version.contains("MariaDB") => "MariaDB",
            Server::Mysql => "MySQL",
        };
        println!("{label}: {version}; {durability}");
        let drop = match server {
            Server::Postgres => format!("DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"),
            Server::Mysql => format!("DROP DATABASE IF EXISTS {DB_NAME}"),
        };
        admin.script(&drop).await.map_err(|e| e.to_string())?;
        admin
            .script(&format!("CREATE DATABASE {DB_NAME}"))
            .await
            .map_err(|e| e.to_string())?;
        let url = with_database(&admin_url, DB_NAME);
        let result = match Conn::open(server, &url).await {
            Ok(conn) => {
                let mut db = BenchDb {
                    server,
                    label: label.to_string(),
                    url,
                    admin: conn,
                };
                let result = on_server(&mut db, &cfg, &mut rows).await;
                let _ = db.admin.close().await;
                result
            }
            Err(e) => Err(e.to_string()),
        };
        admin.script(&drop).await.map_err(|e| e.to_string())?;
        let _ = admin.close().await;
        if let Err(e) = result {
            println!("{label}: {e}");
            failed = Some(e);
        }
    }
    println!("\n{HEADER}");
    for r in &rows {
        println!("{r}");
    }
    failed.map_or(Ok(()), Err)
}

fn main() {
    // `cargo bench` passes `--bench`; the cases are chosen by the environment.
    let cfg = Config::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let result = runtime.block_on(bench(cfg));
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    if let Err(e) = result {
        eprintln!("holds bench failed: {e}");
        std::process::exit(1);
    }
}
