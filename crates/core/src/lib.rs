//! agora's transaction core: what every venue (the exchange, commerce) needs to move value
//! exactly once, on the embedded default and on the distributed stack alike.
//!
//! - [`store`]: the store port — portable rows, batches and queries over SQLite, PostgreSQL
//!   and MySQL/MariaDB adapters, with per-component migrations and commit fencing.
//! - [`clock`]: the clock port.

pub mod clock;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use store::{
    Database, Dialect, Fence, Migration, ReadDatabase, Row, StoreError, StoreResult, Table, Value,
    Write, WriteBatch,
};
