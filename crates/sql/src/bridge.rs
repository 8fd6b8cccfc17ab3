//! The bridge between the synchronous store port and sqlx's async drivers.
//!
//! Callers of the port may themselves run inside a tokio runtime (the writer thread drives
//! its loop with a current-thread runtime's `block_on`; API reads run in `spawn_blocking`),
//! where `Runtime::block_on` would panic. So the adapter owns a small runtime of its own,
//! spawns each operation there and waits for the answer on a std channel: blocking a thread
//! on a channel is allowed anywhere, and the work never runs on the caller's runtime.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use agora_core::store::{Row, StoreError, StoreResult};
use tokio::sync::Semaphore;

/// Worker threads of the adapter's runtime: the drivers are IO-bound, encoding and decoding
/// happen on the callers' threads or are cheap.
const WORKER_THREADS: usize = 2;

/// Rows sent to a `query_each` caller per message.
pub(crate) const ROWS_PER_CHUNK: usize = 256;

/// Chunks a query may run ahead of its caller: bounds the memory of a slow consumer.
const CHUNKS_AHEAD: usize = 4;

pub(crate) struct Bridge {
    /// `Some` until drop, which shuts it down without blocking (dropping a runtime blocks,
    /// and panics when that happens inside another runtime).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    pub(crate) fn new() -> StoreResult<Arc<Bridge>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("agora-sql")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("cannot start the SQL runtime: {e}")))?;
        Ok(Arc::new(Bridge {
            runtime: Some(runtime),
        }))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }

    /// Runs `operation` on the adapter's runtime and blocks this thread until it answers.
    pub(crate) fn run<T, F>(&self, operation: F) -> StoreResult<T>
    where
        F: Future<Output = StoreResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (answer, receive) = mpsc::sync_channel(1);
        self.handle().spawn(async move {
            // The receiver waits until this arrives; it cannot have gone away.
            let _ = answer.send(operation.await);
        });
        receive.recv().map_err(|_| stopped())?
    }

    /// Runs a query on the adapter's runtime and hands its rows to `each` on this thread as
    /// they arrive, a chunk at a time, at most `CHUNKS_AHEAD` chunks ahead of `each`.
    /// `query` gets a [`RowSink`]; when `each` fails the sink closes and the query stops.
    pub(crate) fn stream<F, Q>(
        &self,
        query: Q,
        each: &mut dyn FnMut(Row) -> StoreResult<()>,
    ) -> StoreResult<()>
    where
        Q: FnOnce(RowSink) -> F,
        F: Future<Output = StoreResult<()>> + Send + 'static,
    {
        let (send, receive) = mpsc::channel();
        // Credit, not a bounded channel: a bounded std channel would block a runtime worker
        // when full; waiting for a permit is async.
        let credit = Arc::new(Semaphore::new(CHUNKS_AHEAD));
        let sink = RowSink {
            send: send.clone(),
            credit: credit.clone(),
            sent_any: AtomicBool::new(false),
        };
        let operation = query(sink);
        self.handle().spawn(async move {
            let _ = send.send(Chunk::Done(operation.await));
        });
        loop {
            match receive.recv().map_err(|_| stopped())? {
                Chunk::Rows(rows) => {
                    credit.add_permits(1);
                    for row in rows {
                        if let Err(e) = each(row) {
                            credit.close();
                            return Err(e);
                        }
                    }
                }
                Chunk::Done(result) => return result,
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The operation ended without an answer: its runtime stopped, or it panicked (a bug).
fn stopped() -> StoreError {
    StoreError::Database("the SQL adapter's operation ended without an answer".into())
}

enum Chunk {
    Rows(Vec<Row>),
    Done(StoreResult<()>),
}

/// Where a running query puts its rows (see [`Bridge::stream`]).
pub(crate) struct RowSink {
    send: mpsc::Sender<Chunk>,
    credit: Arc<Semaphore>,
    sent_any: AtomicBool,
}

impl RowSink {
    /// Whether any rows went to the caller (a query that failed before may run again).
    pub(crate) fn sent_any(&self) -> bool {
        self.sent_any.load(Ordering::Relaxed)
    }

    /// Hands `rows` to the caller once it has room for them. `false`: the caller stopped
    /// reading, so the query should stop too.
    pub(crate) async fn send(&self, rows: Vec<Row>) -> bool {
        match self.credit.acquire().await {
            Ok(permit) => {
                // The caller gives the permit back when it takes the chunk.
                permit.forget();
                self.sent_any.store(true, Ordering::Relaxed);
                self.send.send(Chunk::Rows(rows)).is_ok()
            }
            Err(_) => false,
        }
    }
}
