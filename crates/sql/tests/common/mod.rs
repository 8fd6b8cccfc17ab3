//! Test support: a throwaway database per test on the real servers, the schema's tables as
//! the write path declares them, and the core's and the exchange's migrations.
//!
//! The servers: PostgreSQL at `AGORA_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and MySQL/MariaDB at `AGORA_TEST_MYSQL`
//! (default `mysql://root@127.0.0.1:3306/`). Each test creates `agora_test_<pid>_<n>` there
//! and drops it when done. A server that cannot be reached fails the test under `CI=true`,
//! and otherwise skips it with a note on how to start the server.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agora_core::store::{Database, Migration, ReadDatabase, Table, Value, WriteBatch};
use agora_sql::{MysqlDatabase, MysqlReader, PostgresDatabase, PostgresReader};
use sqlx::{ConnectOptions, Connection, Executor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Mysql,
}

impl Server {
    fn admin_url(self) -> String {
        let (var, default) = match self {
            Server::Postgres => (
                "AGORA_TEST_POSTGRES",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            Server::Mysql => ("AGORA_TEST_MYSQL", "mysql://root@127.0.0.1:3306/"),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_string())
    }

    fn how_to_start(self) -> &'static str {
        match self {
            Server::Postgres => {
                "start it with `service postgresql start` (or point AGORA_TEST_POSTGRES at one)"
            }
            Server::Mysql => {
                "start it with `service mariadb start` (or point AGORA_TEST_MYSQL at one)"
            }
        }
    }
}

/// A fresh, empty database for one test, dropped with the value.
pub struct TestDb {
    pub server: Server,
    pub url: String,
    admin_url: String,
    name: String,
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// A new database on `server`, or `None` (after saying why) when the server is not
    /// running and this is not CI.
    pub fn new(server: Server) -> Option<TestDb> {
        let admin_url = server.admin_url();
        let name = format!(
            "agora_test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let create = format!("CREATE DATABASE {name}");
        if let Err(e) = admin(server, &admin_url, &create) {
            let message = format!(
                "{server:?} is not reachable at {admin_url} ({e}): {}",
                server.how_to_start()
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true needs the database servers: {message}");
            }
            eprintln!("SKIPPED: {message}");
            return None;
        }
        let url = with_database(&admin_url, &name);
        Some(TestDb {
            server,
            url,
            admin_url,
            name,
        })
    }

    pub fn writer(&self) -> Box<dyn Database> {
        match self.server {
            Server::Postgres => Box::new(PostgresDatabase::connect(&self.url).expect("connect")),
            Server::Mysql => Box::new(MysqlDatabase::connect(&self.url).expect("connect")),
        }
    }

    /// A read pool of its own (as an API process that does not host the writer has).
    pub fn reader(&self) -> Arc<dyn ReadDatabase> {
        self.reader_of(4)
    }

    /// A read pool of `connections` connections of its own.
    pub fn reader_of(&self, connections: u32) -> Arc<dyn ReadDatabase> {
        match self.server {
            Server::Postgres => {
                Arc::new(PostgresReader::connect(&self.url, connections).expect("connect"))
            }
            Server::Mysql => {
                Arc::new(MysqlReader::connect(&self.url, connections).expect("connect"))
            }
        }
    }

    /// A writer with the core's and the exchange's schema applied.
    pub fn migrated(&self) -> Box<dyn Database> {
        let mut db = self.writer();
        db.migrate("core", CORE).expect("core migrations");
        db.migrate("exchange", EXCHANGE)
            .expect("exchange migrations");
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let drop = match self.server {
            // Connections a failed test left open must not keep the database alive.
            Server::Postgres => format!("DROP DATABASE {} WITH (FORCE)", self.name),
            Server::Mysql => format!("DROP DATABASE {}", self.name),
        };
        if let Err(e) = admin(self.server, &self.admin_url, &drop) {
            eprintln!("could not drop {}: {e}", self.name);
        }
    }
}

/// Runs one statement on the server's admin database, on a thread and runtime of its own
/// (tests may call this from inside a tokio runtime).
fn admin(server: Server, url: &str, statement: &str) -> Result<(), String> {
    let (url, statement) = (url.to_string(), statement.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let timeout = Duration::from_secs(5);
            let run = async {
                match server {
                    Server::Postgres => {
                        let options = sqlx::postgres::PgConnectOptions::from_str(&url)?;
                        let mut conn = options.connect().await?;
                        conn.execute(statement.as_str()).await?;
                        conn.close().await
                    }
                    Server::Mysql => {
                        let options = sqlx::mysql::MySqlConnectOptions::from_str(&url)?;
                        let mut conn = options.connect().await?;
                        conn.execute(statement.as_str()).await?;
                        conn.close().await
                    }
                }
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(done) => done.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer in {} s", timeout.as_secs())),
            }
        })
    })
    .join()
    .expect("admin thread")
}

/// `url` with its database replaced by `name` (query options kept).
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

pub const CORE: &[Migration] = agora_core::MIGRATIONS;
pub const EXCHANGE: &[Migration] = agora_store::schema::EXCHANGE_MIGRATIONS;

// The schema's tables as their owners declare them for `Put` (each test binary uses some).
#[allow(unused_imports)]
pub use agora_core::accounts::{BALANCES, JOURNAL, USERS};
#[allow(unused_imports)]
pub use agora_core::outbox::OUTBOX;
#[allow(unused_imports)]
pub use agora_store::schema::{CANDLES, ORDERS, TRADES};

pub static FENCES: Table = Table {
    name: "agora_fences",
    columns: &["role", "epoch", "holder", "updated_ms"],
    key_len: 1,
    update: &["epoch", "holder", "updated_ms"],
};

pub fn balance(user: i64, asset: i64, available: i64, held: i64) -> [Value; 4] {
    [user.into(), asset.into(), available.into(), held.into()]
}

pub fn journal(id: i64, kind: &'static str) -> [Value; 5] {
    [
        id.into(),
        kind.into(),
        Value::Null,
        Value::Text(format!("[{{\"entry\":{id}}}]")),
        1_700_000_000_000i64.into(),
    ]
}

pub fn order(id: i64, user: i64, price: i64, status: &'static str) -> [Value; 21] {
    [
        id.into(),
        user.into(),
        1i64.into(),
        "BUY".into(),
        "LIMIT".into(),
        "GTC".into(),
        price.into(),
        100i64.into(),
        Value::Null,
        Value::Null,
        status.into(),
        0i64.into(),
        0i64.into(),
        0i64.into(),
        2i64.into(),
        price.into(),
        id.into(),
        0i64.into(),
        1_700_000_000_000i64.into(),
        1_700_000_000_000i64.into(),
        "NONE".into(),
    ]
}

pub fn outbox(seq: i64) -> [Value; 7] {
    [
        seq.into(),
        Value::Text(format!("evt-{seq}")),
        "book".into(),
        "COIN-USD".into(),
        "OrderAccepted".into(),
        Value::Text(format!("{{\"seq\":{seq}}}")),
        1_700_000_000_000i64.into(),
    ]
}

pub fn trade(seq: i64) -> [Value; 14] {
    [
        seq.into(),
        1i64.into(),
        seq.into(),
        100i64.into(),
        5i64.into(),
        500i64.into(),
        (2 * seq).into(),
        (2 * seq + 1).into(),
        (seq % 97).into(),
        (seq % 89).into(),
        "BUY".into(),
        1i64.into(),
        1i64.into(),
        1_700_000_000_000i64.into(),
    ]
}

/// A batch of one write, for brevity.
pub fn batch(fill: impl FnOnce(&mut WriteBatch)) -> WriteBatch {
    let mut b = WriteBatch::default();
    fill(&mut b);
    b
}

/// The single integer a query answers.
pub fn int(db: &mut dyn Database, sql: &str, params: &[Value]) -> i64 {
    db.query_one(sql, params)
        .expect(sql)
        .expect("a row")
        .int(0)
        .expect("an integer")
}
