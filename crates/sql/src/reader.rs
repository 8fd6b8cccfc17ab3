//! The read pool, for either backend.

use std::sync::Arc;
use std::time::Duration;

use agora_core::store::{Row, StoreResult, Value};
use sqlx::pool::PoolOptions;
use sqlx::Pool;

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
        let args = args::<B>(params)?;
        let pool = self.pool.clone();
        self.bridge.stream(
            move |sink| async move {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| sql("waiting for a read connection")(e).error)?;
                let streamed = stream_rows::<B>(&mut conn, &sql_text, args, &sink).await;
                if let Err(failure) = streamed {
                    if failure.broken {
                        conn.close_on_drop();
                    }
                    return Err(failure.error);
                }
                Ok(())
            },
            each,
        )
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
