//! The PostgreSQL and MySQL/MariaDB adapters of agora's store port
//! ([`agora_core::store`]), via sqlx.
//!
//! Each backend has a writer ([`PostgresDatabase`], [`MysqlDatabase`]: one connection, used
//! by the writer thread) and a read pool ([`PostgresReader`], [`MysqlReader`]: `Send + Sync`,
//! for API reads and audits). They are synchronous, like the port: each adapter runs sqlx on
//! a small tokio runtime of its own and blocks the caller on a channel, so callers may be
//! plain threads or may run inside another tokio runtime (see `bridge.rs`).
//!
//! A commit is one transaction: the fence check (`SELECT … FOR UPDATE` on `agora_fences`)
//! when the batch carries one, then the batch's writes, with consecutive `Put`s coalesced
//! into multi-row upserts (see `plan.rs`).
//!
//! ```no_run
//! use agora_core::store::{Database, ReadDatabase, WriteBatch};
//! use agora_sql::{MysqlReader, PostgresDatabase};
//!
//! let mut writer = PostgresDatabase::connect("postgres://agora@127.0.0.1:5432/agora")?;
//! writer.commit(&WriteBatch::default())?;
//! let reader = writer.reader(8)?; // a pool on the writer's runtime
//! let api_only = MysqlReader::connect("mysql://agora@127.0.0.1:3306/agora", 8)?;
//! let users = api_only.query("SELECT id, name FROM users WHERE id > ?", &[0i64.into()])?;
//! # Ok::<(), agora_core::store::StoreError>(())
//! ```
//!
//! Portable SQL on PostgreSQL, beyond the port's rules: statements are prepared and cached
//! per connection by their text, with the parameter types of their first run, so a
//! statement binds the same kind of value (integer or text) in each place every time; a
//! NULL parameter has no type of its own and takes the one of the column it is written to
//! or compared with (`? IS NULL` alone cannot be typed).

mod backend;
mod bridge;
mod error;
mod mysql;
mod plan;
mod postgres;
mod reader;
mod writer;

use std::sync::Arc;

use agora_core::store::{
    Database, Dialect, Migration, ReadDatabase, Row, SnapshotReads, StoreError, StoreResult, Value,
    WriteBatch,
};

use crate::reader::Reader;
use crate::writer::Writer;

/// Prepared statements each connection keeps. A table's inserts come in at most 11 sizes
/// (powers of two up to 1,024 rows), so this covers dozens of tables plus the queries.
const STATEMENTS_CACHED: usize = 512;

/// Defines the public writer and reader of one backend over the shared implementation.
macro_rules! adapter {
    ($database:ident, $reader:ident, $backend:ty, $name:literal, $url:literal) => {
        #[doc = concat!("The writer's connection to ", $name, ": `Database` of the store port.")]
        pub struct $database(Writer<$backend>);

        impl $database {
            #[doc = concat!("Connects to `", $url, "` (sqlx's URL syntax: user, password, ")]
            /// host, port, database, and options such as `sslmode`).
            pub fn connect(url: &str) -> StoreResult<Self> {
                Writer::connect(url).map(Self)
            }

            /// A pool of up to `connections` read connections to the same database, served
            /// by this writer's runtime.
            pub fn reader(&self, connections: u32) -> StoreResult<$reader> {
                Reader::open(self.0.bridge.clone(), self.0.options.clone(), connections)
                    .map($reader)
            }
        }

        impl Database for $database {
            fn dialect(&self) -> Dialect {
                <$backend as backend::Backend>::DIALECT
            }

            fn migrate(&mut self, component: &str, migrations: &[Migration]) -> StoreResult<()> {
                self.0.migrate(component, migrations)
            }

            fn commit(&mut self, batch: &WriteBatch) -> StoreResult<()> {
                self.0.commit(batch)
            }

            fn query_each(
                &mut self,
                sql: &str,
                params: &[Value],
                each: &mut dyn FnMut(Row) -> StoreResult<()>,
            ) -> StoreResult<()> {
                self.0.query_each(sql, params, each)
            }
        }

        #[doc = concat!("A pool of read connections to ", $name, ": `ReadDatabase` of the store port.")]
        pub struct $reader(Reader<$backend>);

        impl $reader {
            #[doc = concat!("Connects up to `connections` connections to `", $url, "`, on a runtime of its own")]
            /// (for a process that reads without hosting the writer).
            pub fn connect(url: &str, connections: u32) -> StoreResult<Self> {
                Reader::connect(url, connections).map(Self)
            }
        }

        impl ReadDatabase for $reader {
            fn dialect(&self) -> Dialect {
                <$backend as backend::Backend>::DIALECT
            }

            fn query_each(
                &self,
                sql: &str,
                params: &[Value],
                each: &mut dyn FnMut(Row) -> StoreResult<()>,
            ) -> StoreResult<()> {
                self.0.query_each(sql, params, each)
            }

            fn snapshot(
                &self,
                reads: &mut dyn FnMut(&mut dyn SnapshotReads) -> StoreResult<()>,
            ) -> StoreResult<()> {
                self.0.snapshot(reads)
            }
        }
    };
}

adapter!(
    PostgresDatabase,
    PostgresReader,
    postgres::Pg,
    "PostgreSQL",
    "postgres://user@host:port/db"
);
adapter!(
    MysqlDatabase,
    MysqlReader,
    mysql::My,
    "MySQL or MariaDB",
    "mysql://user@host:port/db"
);

/// The writer and a read pool of `read_connections` for a `postgres://` (`postgresql://`)
/// or `mysql://` URL: what a composition root picks its store with.
pub fn connect(
    url: &str,
    read_connections: u32,
) -> StoreResult<(Box<dyn Database>, Arc<dyn ReadDatabase>)> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "postgres" | "postgresql" => {
            let writer = PostgresDatabase::connect(url)?;
            let reader = writer.reader(read_connections)?;
            Ok((Box::new(writer), Arc::new(reader)))
        }
        "mysql" => {
            let writer = MysqlDatabase::connect(url)?;
            let reader = writer.reader(read_connections)?;
            Ok((Box::new(writer), Arc::new(reader)))
        }
        _ => Err(unknown_scheme(scheme)),
    }
}

/// Only a read pool of `connections` for a `postgres://` or `mysql://` URL, on a runtime of
/// its own: for a process that reads the store without hosting the writer.
pub fn connect_reader(url: &str, connections: u32) -> StoreResult<Arc<dyn ReadDatabase>> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "postgres" | "postgresql" => Ok(Arc::new(PostgresReader::connect(url, connections)?)),
        "mysql" => Ok(Arc::new(MysqlReader::connect(url, connections)?)),
        _ => Err(unknown_scheme(scheme)),
    }
}

fn unknown_scheme(scheme: &str) -> StoreError {
    // Not the URL itself: it may hold a password.
    StoreError::Database(format!(
        "a store URL starts with postgres:// or mysql://, not {scheme:?}://"
    ))
}
