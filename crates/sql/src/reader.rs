//! The read pool, for either backend.

use std::sync::Arc;
use std::time::Duration;

use agora_core::store::{Row, SnapshotReads, StoreError, StoreResult, Value};
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::{Connection, Pool};
use tokio::sync::Mutex;

use crate::backend::{Backend, Options};
use crate::bridge::Bridge;
use crate::error::sql;
use crate::writer::{args, stream_rows};

/// How long a dropped reader waits for its connections to say goodbye to the server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Reader<B: Backend> {
    bridge: Arc<Bridge>,
    pool: Pool<B::Db>,
}

impl<B: Backend> Reader<B> {
    /// A pool of up to `connections` connections, on `bridge`'s runtime.
    pub(crate) fn open(
        bridge: Arc<Bridge>,
        options: Options<B>,
        connections: u32,
    ) -> StoreResult<Reader<B>> {
        let pool = bridge.run(async move {
            PoolOptions::<B::Db>::new()
                .max_connections(connections.max(1))
                // Not a ping per acquire (a round trip per read, doubling the reads' cost):
                // a connection found broken by its read is replaced and the read retried.
                .test_before_acquire(false)
                .after_connect(|conn, _| B::set_up(conn))
                .connect_with(options)
                .await
                .map_err(|e| sql(format!("connecting to {}", B::NAME))(e).error)
        })?;
        Ok(Reader { bridge, pool })
    }

    pub(crate) fn connect(url: &str, connections: u32) -> StoreResult<Reader<B>> {
        Reader::open(Bridge::new()?, B::options(url)?, connections)
    }

    pub(crate) fn query_each(
        &self,
        sql_text: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let sql_text = B::statement(sql_text).into_owned();
        let params = params.to_vec();
        let pool = self.pool.clone();
        self.bridge.stream(
            move |sink| async move {
                // Every idle connection may be dead (after a restart): enough attempts to
                // go through all of them to a new one.
                let mut retries = pool.options().get_max_connections();
                loop {
                    let mut conn = acquire::<B>(&pool).await?;
                    let args = args::<B>(&params)?;
                    let Err(failure) = stream_rows::<B>(&mut conn, &sql_text, args, &sink).await
                    else {
                        return Ok(());
                    };
                    let broken = failure.broken || (*conn).ping().await.is_err();
                    if broken {
                        conn.close_on_drop();
                    }
                    // A pooled connection the server dropped while it sat idle (a restart,
                    // an administrator) fails its first use: nothing was read yet, so the
                    // read runs again on another connection.
                    if broken && retries > 0 && !sink.sent_any() {
                        retries -= 1;
                        continue;
                    }
                    return Err(failure.error);
                }
            },
            each,
        )
    }
}

async fn acquire<B: Backend>(pool: &Pool<B::Db>) -> StoreResult<PoolConnection<B::Db>> {
    pool.acquire()
        .await
        .map_err(|e| sql("waiting for a read connection")(e).error)
}

impl<B: Backend> Reader<B> {
    /// Runs `reads` in one read-only transaction on one pooled connection (see
    /// `ReadDatabase::snapshot`). The transaction begins and ends on the adapter's runtime;
    /// `reads` runs on this thread, and each of its queries streams through the bridge like
    /// [`Reader::query_each`], on the snapshot's connection.
    pub(crate) fn snapshot(
        &self,
        reads: &mut dyn FnMut(&mut dyn SnapshotReads) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let slot: Slot<B> = Arc::new(Mutex::new(None));
        let (pool, begun) = (self.pool.clone(), slot.clone());
        self.bridge.run(async move {
            let mut retries = pool.options().get_max_connections();
            let conn = loop {
                let mut conn = acquire::<B>(&pool).await?;
                let mut failed = None;
                for statement in B::BEGIN_SNAPSHOT {
                    if let Err(e) = B::execute_script(&mut conn, statement).await {
                        failed = Some(sql(statement)(e));
                        break;
                    }
                }
                let Some(failure) = failed else { break conn };
                // Perhaps half begun (MySQL's level set for a transaction that did not
                // start): not given to anyone else.
                let broken = failure.broken || (*conn).ping().await.is_err();
                conn.close_on_drop();
                if broken && retries > 0 {
                    retries -= 1; // a connection dropped while idle (see `query_each`)
                    continue;
                }
                return Err(failure.error);
            };
            *begun.lock().await = Some(conn);
            Ok(())
        })?;
        let mut snapshot = Snapshot::<B> {
            bridge: &self.bridge,
            slot,
            ended: false,
        };
        let read = reads(&mut snapshot);
        let ended = snapshot.end(read.is_ok());
        read.and(ended)
    }
}

/// A snapshot's connection, inside its transaction; `None` once the transaction ended. It
/// is only touched on the bridge's runtime, so the connection is always given back (or
/// dropped) there: sqlx returns a connection to its pool on the runtime it is dropped on.
type Slot<B> = Arc<Mutex<Option<PoolConnection<<B as Backend>::Db>>>>;

/// The reads of one snapshot.
struct Snapshot<'a, B: Backend> {
    bridge: &'a Bridge,
    slot: Slot<B>,
    ended: bool,
}

impl<B: Backend> Snapshot<'_, B> {
    /// Commits (or rolls back) the transaction and gives the connection back to the pool.
    /// A connection whose transaction cannot be ended is closed instead.
    fn end(&mut self, commit: bool) -> StoreResult<()> {
        self.ended = true;
        let slot = self.slot.clone();
        self.bridge.run(async move {
            let Some(mut conn) = slot.lock().await.take() else {
                return Ok(());
            };
            let statement = if commit { "COMMIT" } else { "ROLLBACK" };
            B::execute_script(&mut conn, statement).await.map_err(|e| {
                conn.close_on_drop();
                sql(statement)(e).error
            })
        })
    }
}

impl<B: Backend> SnapshotReads for Snapshot<'_, B> {
    fn query_each(
        &mut self,
        sql_text: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let sql_text = B::statement(sql_text).into_owned();
        let args = args::<B>(params)?;
        let slot = self.slot.clone();
        self.bridge.stream(
            move |sink| async move {
                let mut conn = slot.lock().await;
                let conn = conn
                    .as_mut()
                    .ok_or_else(|| StoreError::Database("the snapshot has ended".into()))?;
                stream_rows::<B>(&mut **conn, &sql_text, args, &sink)
                    .await
                    .map_err(|failure| failure.error)
            },
            each,
        )
    }
}

impl<B: Backend> Drop for Snapshot<'_, B> {
    fn drop(&mut self) {
        // `reads` panicked: end the transaction all the same, on the runtime.
        if !self.ended {
            let _ = self.end(false);
        }
    }
}

impl<B: Backend> Drop for Reader<B> {
    fn drop(&mut self) {
        let pool = self.pool.clone();
        let _ = self.bridge.run(async move {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, pool.close()).await;
            Ok(())
        });
    }
}
