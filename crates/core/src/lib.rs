//! agora's transaction core: what every venue (the exchange, commerce) needs to move value
//! exactly once, on the embedded default and on the distributed stack alike.
//!
//! - [`store`]: the store port — portable rows, batches and queries over SQLite, PostgreSQL
//!   and MySQL/MariaDB adapters, with per-component migrations and commit fencing.
//! - [`accounts`]: the accounts working set and ledger posting with holds.
//! - [`outbox`]: the transactional outbox and its relay to the event log.
//! - [`relay`]: relays apart from the writer, each publishing the outbox partitions it
//!   holds a lease on.
//! - [`writer`]: the group-commit writer loop, generic over [`writer::Venue`]s, and the
//!   request port that reaches it.
//! - [`clock`]: the clock port.

pub mod accounts;
pub mod clock;
pub mod outbox;
pub mod relay;
pub mod store;
pub mod writer;

/// The core's schema (accounts, journal, outbox, relay position and leases, fences,
/// consumer offsets, inbox), applied as component `core` before any venue's.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: include_str!("../migrations/sqlite/0001_core.sql"),
        postgres: include_str!("../migrations/postgres/0001_core.sql"),
        mysql: include_str!("../migrations/mysql/0001_core.sql"),
    },
    Migration {
        version: 2,
        sqlite: include_str!("../migrations/sqlite/0002_relay_leases.sql"),
        postgres: include_str!("../migrations/postgres/0002_relay_leases.sql"),
        mysql: include_str!("../migrations/mysql/0002_relay_leases.sql"),
    },
];

pub use clock::{Clock, ManualClock, SystemClock};
pub use store::{
    Database, Dialect, Fence, Migration, ReadDatabase, Row, SnapshotReads, StoreError, StoreResult,
    Table, Value, Write, WriteBatch,
};
pub use writer::{Core, RequestPort, Venue, Writer, WriterLimits};
