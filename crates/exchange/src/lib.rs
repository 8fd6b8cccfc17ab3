//! The exchange venue: orders in, trades out, money moved exactly once.
//!
//! Follow one order through this crate:
//! 1. [`Exchange::place_order`] validates it against the symbol's rules ([`rules`]) and hands
//!    it to the [`sequencer`], the single writer, which holds the funds, inserts the order and
//!    its `OrderAccepted` outbox event, and group-commits them in one transaction.
//! 2. After the commit the sequencer publishes the event to the log partition of its symbol;
//!    the [`shard`] that owns the symbol's book matches it.
//! 3. The shard's output (trades, done orders) returns to the sequencer, which settles it
//!    ([`settlement`]) and commits the effects together with the shard's cursor, so each
//!    trade is applied exactly once.
//!
//! Restart: books are rebuilt from the open orders the store knows were processed (those at
//! or below each symbol's cursor), then every later outbox input is replayed. The engine is
//! deterministic, so the replay yields the same trades with the same ids.

pub mod bots;
pub mod commands;
pub mod distributed;
pub mod error;
pub mod events;
pub mod market;
pub mod reconcile;
pub mod rules;
pub mod sequencer;
pub mod settled;
pub mod settlement;
pub mod shard;
#[cfg(test)]
pub(crate) mod test_rows;

pub use commands::{Answer, Command, WriterPort};
pub use error::{ErrorClass, ExchangeError, ExchangeResult};
pub use rules::{NewAsset, NewSymbol, OrderRequest, RefData, SymbolUpdate};
pub use sequencer::Placed;
pub use shard::BookSnapshot;

use agora_bus::{partition_for, EmbeddedLog};
use agora_core::{Clock, Database, ReadDatabase};
use agora_core::{Core, RequestPort, Writer, WriterLimits};
use agora_engine::{Book, RestingOrder, Side};
use agora_store::audit::PortableAuditor;
use agora_store::queries::{Loads, Reads};
use agora_store::sqlite::{Checkpointer, Durability, SqliteStore};
use agora_store::*;
use rustc_hash::{FxHashMap, FxHashSet};
use sequencer::{Cancel, ExchangeVenue, Request, ShardOutput};
use shard::{InFlight, Outputs, Shard, ShardBook, ShardControl};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// Limits and knobs of the exchange core.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Engine threads; symbols are spread over them by name.
    pub engine_shards: u32,
    /// Requests waiting for the sequencer; callers wait (backpressure) beyond this.
    pub request_queue_max: usize,
    pub batch_max: usize,
    pub read_connections: usize,
    /// Batches of book inputs queued per shard before the sequencer waits.
    pub shard_queue_batches: usize,
    /// Stamps every row the writer makes (order times, journal entries, candles).
    pub clock: Arc<dyn Clock>,
    /// A PostgreSQL or MySQL/MariaDB URL; `None` is SQLite in `data_dir`.
    pub store_url: Option<String>,
    /// `kafka://host:port,…`: the distributed mode's event log; `None` is the embedded log.
    pub event_log_url: Option<String>,
    /// Partitions of the Kafka topics when agora creates them.
    pub log_partitions: u32,
    /// Prefix of the Kafka topics and consumer groups (`agora` → `agora.book-inputs`).
    pub log_namespace: String,
    /// The roles this process plays (all of them unless distributed).
    pub roles: distributed::Roles,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            durability: Durability::Full,
            engine_shards: 1,
            request_queue_max: 16_384,
            batch_max: 4_096,
            read_connections: 4,
            shard_queue_batches: 1_024,
            clock: agora_core::clock::system(),
            store_url: None,
            event_log_url: None,
            log_partitions: distributed::PARTITIONS_DEFAULT,
            log_namespace: distributed::NAMESPACE_DEFAULT.into(),
            roles: distributed::Roles::ALL,
        }
    }
}

/// State the sequencer shares with API handlers.
pub(crate) struct Shared {
    pub refdata: RwLock<Arc<RefData>>,
    pub users: RwLock<FxHashSet<u64>>,
    /// Book inputs published since start (re-published ones included).
    pub published: AtomicU64,
    /// Book inputs of the batch being committed: set before its commit, cleared once
    /// `keys_in_flight` counts them.
    pub committing: AtomicU64,
    /// Symbols with book inputs published and not yet settled, after the last commit.
    pub keys_in_flight: AtomicU64,
    /// Trades committed since the store was created.
    pub trades: AtomicU64,
    /// Book inputs re-published from the outbox when this process started.
    pub replayed_at_start: AtomicU64,
    pub ready: AtomicBool,
    /// Distributed: engine outputs the settlement feed has queued for the writer and the
    /// writer has not applied yet (the feed stops reading above a bound).
    pub feed_queued: AtomicU64,
}

impl Shared {
    /// Zero exactly when every book input in the store has been settled: the inputs of a
    /// batch count from just before its commit until the symbols in flight include them.
    /// `committing` is read first: cleared only after `keys_in_flight` is stored, so a zero
    /// there means either the batch has not committed or its symbols are already counted.
    pub fn pending_inputs(&self) -> u64 {
        let committing = self.committing.load(Ordering::Acquire);
        let pending = committing + self.keys_in_flight.load(Ordering::Acquire);
        // Before the catch-up's first commit nothing is counted yet, though the store may
        // hold unsettled inputs: never report "nothing pending" before ready.
        if self.ready.load(Ordering::Acquire) {
            pending
        } else {
            pending.max(1)
        }
    }
}

/// Counts for health checks and tests.
#[derive(Clone, Copy, Debug, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    pub ready: bool,
    /// Zero exactly when every book input in the store is settled (else the inputs being
    /// committed plus the symbols with inputs in flight).
    pub pending_inputs: u64,
    pub trades: u64,
    pub replayed_at_start: u64,
}

/// A running exchange. Cheap to clone; all clones talk to the same sequencer.
#[derive(Clone)]
pub struct Exchange {
    inner: Arc<Inner>,
}

struct Inner {
    requests: RequestPort<Request>,
    reader: Arc<dyn ReadDatabase>,
    auditor: Arc<dyn AuditStore>,
    /// One reconciliation at a time; later callers wait here, not on a blocking thread
    /// parked on the auditor's lock.
    reconciling: tokio::sync::Mutex<()>,
    /// Per symbol, whether a book audit is in flight (at most one is).
    book_audits: Mutex<FxHashMap<u32, Arc<AtomicBool>>>,
    market: Arc<market::MarketData>,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    /// Embedded: one per engine shard. Distributed: this process's engine member, if any.
    shard_control: Vec<crossbeam_channel::Sender<ShardControl>>,
    /// Whether the engines' inputs and outputs travel through Kafka.
    distributed: bool,
    /// Distributed: stops the settlement consumer.
    stop_feed: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    checkpointer: Mutex<Option<Checkpointer>>,
    /// An API process without the writer: where its commands go (see [`Exchange::connect`]).
    writer: Option<Arc<dyn WriterPort>>,
    kind: ProcessKind,
    /// Whether this process serves WebSockets (it plays the market role).
    websockets: bool,
}

/// What an [`Exchange`] handle stands for in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessKind {
    /// Hosts the writer (and knows every user).
    Writer,
    /// An api-only process: commands go to the writer's process.
    Api,
    /// A market process: the read model from the settled topic, no commands.
    Market,
}

/// The store's connections, as the configuration chose them.
pub struct OpenStore {
    pub store: Box<dyn Database>,
    pub reader: Arc<dyn ReadDatabase>,
    pub auditor: Arc<dyn AuditStore>,
    pub checkpointer: Option<Checkpointer>,
}

/// Opens the store `config` names: its writer connection, a read pool and a reconciliation
/// reader (SQLite's incremental one, or the portable one on a server database).
pub fn open_store(config: &Config) -> Result<OpenStore, StartError> {
    match &config.store_url {
        None => {
            let store = SqliteStore::open(&config.data_dir.join("agora.db"), config.durability)?;
            let reader: Arc<dyn ReadDatabase> = Arc::new(store.reader(config.read_connections)?);
            let auditor: Arc<dyn AuditStore> = Arc::new(store.auditor()?);
            let checkpointer = Checkpointer::spawn(&store)?;
            Ok(OpenStore {
                store: Box::new(store),
                reader,
                auditor,
                checkpointer: Some(checkpointer),
            })
        }
        Some(url) => {
            let (store, reader) = agora_sql::connect(url, config.read_connections as u32)?;
            let auditor: Arc<dyn AuditStore> = Arc::new(PortableAuditor::new(reader.clone()));
            Ok(OpenStore {
                store,
                reader,
                auditor,
                checkpointer: None,
            })
        }
    }
}

/// How often an API process without the writer reloads the reference data.
pub const REFDATA_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// A read pool on the store `config` names, for a process that does not host the writer
/// (an API or engine process): no writer connection, no migrations.
pub fn open_reader(config: &Config) -> Result<Arc<dyn ReadDatabase>, StartError> {
    match &config.store_url {
        // SQLite is one process's file: its reader comes with the store.
        None => Ok(open_store(config)?.reader),
        Some(url) => Ok(agora_sql::connect_reader(
            url,
            config.read_connections as u32,
        )?),
    }
}

/// Assets and symbols as committed, read in one snapshot.
fn load_refdata(reader: &dyn ReadDatabase) -> StoreResult<RefData> {
    let mut refdata = None;
    reader.snapshot(&mut |snapshot| {
        let mut q = agora_core::store::InSnapshot(snapshot);
        let mut loads = Loads(&mut q);
        refdata = Some(RefData::new(loads.assets()?, loads.symbols()?));
        Ok(())
    })?;
    Ok(refdata.expect("the snapshot ran"))
}

/// The market read model over the books restored from the store, with the store's recent
/// trades and candles.
fn market_model<D: agora_core::store::Queries + ?Sized>(
    loads: &mut Loads<'_, D>,
    books: &FxHashMap<u32, ShardBook>,
) -> StoreResult<market::MarketData> {
    let depths = books
        .iter()
        .map(|(&id, b)| (id, agora_market::DepthBook::from_resting(b.book.resting())))
        .collect();
    Ok(market::MarketData::new(
        depths,
        loads.recent_trades(market::RECENT_TRADES_MAX)?,
        loads.recent_candles(market::CANDLES_KEPT)?,
    ))
}

/// The market read model and each symbol's cursor, as of one store snapshot.
struct MarketSnapshot {
    refdata: RefData,
    cursors: FxHashMap<u32, i64>,
    market: market::MarketData,
}

fn market_snapshot(reader: &dyn ReadDatabase) -> Result<MarketSnapshot, StartError> {
    let mut found = None;
    let mut failed = None;
    reader.snapshot(&mut |snapshot| {
        let mut q = agora_core::store::InSnapshot(snapshot);
        let mut loads = Loads(&mut q);
        let refdata = RefData::new(loads.assets()?, loads.symbols()?);
        let open_orders = loads.open_orders()?;
        let cursors = loads.cursors()?;
        let books = match restore_books(&refdata, &open_orders, &cursors) {
            Ok(books) => books,
            Err(e) => {
                failed = Some(e);
                return Ok(());
            }
        };
        let market = market_model(&mut loads, &books)?;
        found = Some(MarketSnapshot {
            refdata,
            cursors: cursors.iter().map(|c| (c.symbol, c.input_seq)).collect(),
            market,
        });
        Ok(())
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(found.expect("the snapshot ran")),
    }
}

/// Rebuilds a market process's symbols from the store.
struct StoreSymbols(Arc<dyn ReadDatabase>);

impl settled::SymbolSource for StoreSymbols {
    fn load(&mut self, symbols: &[u32]) -> Result<Vec<(u32, i64, market::SymbolMarket)>, String> {
        let snapshot = market_snapshot(&*self.0).map_err(|e| e.to_string())?;
        let mut models = snapshot.market.into_symbols();
        Ok(symbols
            .iter()
            .filter_map(|&s| {
                let model = models.remove(&s)?;
                Some((s, snapshot.cursors.get(&s).copied().unwrap_or(0), model))
            })
            .collect())
    }
}

/// Reloads the reference data every [`REFDATA_REFRESH`] until `stop`.
fn spawn_refdata_refresher(
    reader: Arc<dyn ReadDatabase>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("refdata".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(REFDATA_REFRESH);
                match load_refdata(&*reader) {
                    Ok(r) => *shared.refdata.write().expect("lock") = Arc::new(r),
                    Err(e) => tracing::warn!(error = %e, "reference data not reloaded"),
                }
            }
        })
        .expect("spawn refdata thread")
}

/// Shared state of a process without the writer: ready from the start, no counts.
fn shared_without_writer(refdata: RefData) -> Arc<Shared> {
    Arc::new(Shared {
        refdata: RwLock::new(Arc::new(refdata)),
        // Users are looked up in the store on a miss (they are created elsewhere).
        users: RwLock::default(),
        published: AtomicU64::new(0),
        committing: AtomicU64::new(0),
        keys_in_flight: AtomicU64::new(0),
        trades: AtomicU64::new(0),
        replayed_at_start: AtomicU64::new(0),
        ready: AtomicBool::new(true),
        feed_queued: AtomicU64::new(0),
    })
}

/// The writer role of the exchange's store (one holder at a time, fenced by epoch).
const WRITER_ROLE: &str = "exchange-writer";

/// Balances the writer keeps in memory before its cache is dropped and refilled lazily.
const BALANCE_CACHE_MAX: usize = 1_000_000;

/// How long a reconciliation waits for the engine books' audits.
pub const BOOK_AUDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store is inconsistent: {0}")]
    Inconsistent(String),
    #[error("event log: {0}")]
    Log(String),
}

impl Exchange {
    /// Opens the store, rebuilds the books, and starts the sequencer and shard threads.
    /// Returns at once; [`Exchange::status`] reports `ready` once the engine has caught up.
    pub fn start(config: Config) -> Result<Exchange, StartError> {
        Exchange::start_observed(config, None)
    }

    /// Like [`Exchange::start`], telling `observer` about every commit (after the market
    /// read model has applied it).
    pub fn start_observed(
        config: Config,
        observer: Option<Arc<dyn market::CommitObserver>>,
    ) -> Result<Exchange, StartError> {
        assert!(config.engine_shards > 0 && config.batch_max > 0);
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        let OpenStore {
            mut store,
            reader,
            auditor,
            checkpointer,
        } = open_store(&config)?;
        agora_store::schema::migrate(&mut *store)?;
        // Before anything is read: a previous writer's last commit may still be landing.
        let fence = agora_core::store::acquire_role(
            &mut *store,
            WRITER_ROLE,
            &format!("pid {}", std::process::id()),
            config.clock.now_ms(),
        )?;
        let mut loads = Loads(&mut *store);
        let refdata = RefData::new(loads.assets()?, loads.symbols()?);
        let open_orders = loads.open_orders()?;
        let cursors = loads.cursors()?;
        let books = restore_books(&refdata, &open_orders, &cursors)?;
        let market = Arc::new(market_model(&mut loads, &books)?);

        let shared = Arc::new(Shared {
            refdata: RwLock::new(Arc::new(refdata.clone())),
            users: RwLock::new(loads.users()?.into_iter().map(|u| u.id).collect()),
            published: AtomicU64::new(0),
            committing: AtomicU64::new(0),
            keys_in_flight: AtomicU64::new(0),
            trades: AtomicU64::new(0), // set by the sequencer from its counters
            replayed_at_start: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            feed_queued: AtomicU64::new(0),
        });
        let (output_tx, output_rx) = mpsc::unbounded_channel();
        let mut threads = Vec::new();
        let mut shard_control = Vec::new();
        let stop_feed = Arc::new(AtomicBool::new(false));
        let mut settled = None;
        let log: Arc<dyn agora_bus::EventLog> = match &config.event_log_url {
            None => {
                let log = EmbeddedLog::new(config.engine_shards, config.shard_queue_batches);
                spawn_shards(
                    &config,
                    &refdata,
                    books,
                    &log,
                    &output_tx,
                    &mut threads,
                    &mut shard_control,
                );
                Arc::new(log)
            }
            Some(url) => {
                let link = distributed::KafkaLink::open(
                    url,
                    config.log_partitions,
                    &config.log_namespace,
                )?;
                // The writer's own relay holds every outbox partition while it runs; without
                // the relay role it hands them to relay processes.
                if config.roles.relay {
                    agora_core::relay::hold_all(
                        &mut *store,
                        link.partitions,
                        distributed::WRITER_RELAY_HOLDER,
                    )?;
                } else {
                    agora_core::relay::release_all(&mut *store, distributed::WRITER_RELAY_HOLDER)?;
                }
                if config.roles.engine {
                    let member = distributed::EngineMember::start(&link, reader.clone())?;
                    let (control, thread) = member.into_parts();
                    shard_control.push(control);
                    threads.push(thread);
                }
                // Without the market role here, market processes read each commit from the
                // settled topic.
                if !config.roles.market {
                    settled = Some(settled::SettledPublisher::new(
                        link.log(agora_bus::topics::SETTLED)?,
                    ));
                }
                threads.push(distributed::spawn_settlement_feed(
                    &link,
                    reader.clone(),
                    output_tx.clone(),
                    shared.clone(),
                    stop_feed.clone(),
                )?);
                link.log(agora_bus::topics::BOOK_INPUTS)?
            }
        };
        drop(output_tx);
        let limits = WriterLimits {
            batch_max: config.batch_max,
            // Engines in other processes may be down; they catch up from the log.
            catch_up_waits: config.event_log_url.is_none(),
            relays_itself: config.event_log_url.is_none() || config.roles.relay,
            ..WriterLimits::default()
        };
        let (feed_tx, feed_rx) = crossbeam_channel::bounded(market::FEED_QUEUE_MAX);
        let (market_thread, market_shared) = (market.clone(), shared.clone());
        threads.push(
            std::thread::Builder::new()
                .name("market".into())
                .spawn(move || market::run(market_thread, feed_rx, market_shared, observer))
                .expect("spawn market thread"),
        );
        let venue = ExchangeVenue::new(
            &mut *store,
            shared.clone(),
            sequencer::Recovered {
                refdata,
                open_orders,
                cursors,
            },
            feed_tx,
            settled,
        )?;
        let mut core = Core::load(store, config.clock.clone(), log, BALANCE_CACHE_MAX)?;
        core.fence_with(fence);
        let writer = Writer::new(core, venue, limits);
        let (request_tx, request_rx) = RequestPort::bounded(config.request_queue_max);
        threads.push(
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || writer.run(request_rx, output_rx))
                .expect("spawn writer thread"),
        );
        Ok(Exchange {
            inner: Arc::new(Inner {
                requests: request_tx,
                reader,
                auditor,
                reconciling: tokio::sync::Mutex::new(()),
                book_audits: Mutex::default(),
                market,
                shared,
                clock: config.clock.clone(),
                shard_control,
                stop_feed,
                distributed: config.event_log_url.is_some(),
                threads: Mutex::new(threads),
                checkpointer: Mutex::new(checkpointer),
                writer: None,
                kind: ProcessKind::Writer,
                websockets: config.roles.market,
            }),
        })
    }

    /// An API process that does not host the writer (`--roles api`): it sends every state
    /// change to `writer`, reads committed state from the store's read pool, and keeps the
    /// reference data (assets, symbols) it validates with fresh: reloaded every
    /// [`REFDATA_REFRESH`], and at once after a listing through it or an answer that names
    /// something it has not loaded yet. Market data, books and reconciliation are the writer's
    /// process's (the HTTP layer forwards them).
    pub fn connect(config: &Config, writer: Arc<dyn WriterPort>) -> Result<Exchange, StartError> {
        let reader = open_reader(config)?;
        let shared = shared_without_writer(load_refdata(&*reader)?);
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = spawn_refdata_refresher(reader.clone(), shared.clone(), stop.clone());
        // No writer here: its port is closed from the start (nothing local sends to it).
        let (requests, _) = RequestPort::bounded(1);
        Ok(Exchange {
            inner: Arc::new(Inner {
                requests,
                auditor: Arc::new(PortableAuditor::new(reader.clone())),
                reader,
                reconciling: tokio::sync::Mutex::new(()),
                book_audits: Mutex::default(),
                market: Arc::new(market::MarketData::new(
                    FxHashMap::default(),
                    Vec::new(),
                    Vec::new(),
                )),
                shared,
                clock: config.clock.clone(),
                shard_control: Vec::new(),
                stop_feed: stop,
                distributed: true,
                threads: Mutex::new(vec![refresher]),
                checkpointer: Mutex::new(None),
                writer: Some(writer),
                kind: ProcessKind::Api,
                websockets: false,
            }),
        })
    }

    /// A market process (`--roles market`): the read model, rebuilt from one store snapshot
    /// and kept from the settled topic (see [`settled`]), for the market REST endpoints and
    /// WebSockets; `observer` is told about every record applied. It takes no state change.
    pub fn start_market(
        config: &Config,
        observer: Option<Arc<dyn market::CommitObserver>>,
    ) -> Result<Exchange, StartError> {
        let url = config.event_log_url.as_deref().ok_or_else(|| {
            StartError::Log(
                "a market process needs a Kafka event log (--event-log kafka://…)".into(),
            )
        })?;
        let link = distributed::KafkaLink::open(url, config.log_partitions, &config.log_namespace)?;
        let topic = link.topic(agora_bus::topics::SETTLED);
        let mut log = agora_kafka::KafkaReader::open(&link.config, &topic)
            .map_err(|e| StartError::Log(format!("reading {topic}: {e}")))?;
        let reader = open_reader(config)?;
        // The ends first, then the snapshot: whatever the snapshot lacks was committed after
        // it, so published after it, so it sits past these ends.
        let ends = log
            .ends()
            .map_err(|e| StartError::Log(format!("reading {topic}: {e}")))?;
        let MarketSnapshot {
            refdata,
            cursors,
            market,
        } = market_snapshot(&*reader)?;
        log.start_at(&ends)
            .map_err(|e| StartError::Log(format!("reading {topic}: {e}")))?;
        let market = Arc::new(market);
        let shared = shared_without_writer(refdata);
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = spawn_refdata_refresher(reader.clone(), shared.clone(), stop.clone());
        let mut feed = settled::MarketFeed::new(
            market.clone(),
            cursors,
            Box::new(StoreSymbols(reader.clone())),
        );
        let follower = {
            let (shared, stop, reader) = (shared.clone(), stop.clone(), reader.clone());
            std::thread::Builder::new()
                .name("market-feed".into())
                .spawn(move || {
                    follow_settled(&mut log, &mut feed, &shared, &*reader, observer, &stop)
                })
                .expect("spawn market feed thread")
        };
        let (requests, _) = RequestPort::bounded(1);
        Ok(Exchange {
            inner: Arc::new(Inner {
                requests,
                auditor: Arc::new(PortableAuditor::new(reader.clone())),
                reader,
                reconciling: tokio::sync::Mutex::new(()),
                book_audits: Mutex::default(),
                market,
                shared,
                clock: config.clock.clone(),
                shard_control: Vec::new(),
                stop_feed: stop,
                distributed: true,
                threads: Mutex::new(vec![refresher, follower]),
                checkpointer: Mutex::new(None),
                writer: None,
                kind: ProcessKind::Market,
                websockets: true,
            }),
        })
    }

    pub fn kind(&self) -> ProcessKind {
        self.inner.kind
    }

    /// Whether this process plays the market role (its read model is kept for WebSockets).
    pub fn serves_websockets(&self) -> bool {
        self.inner.websockets
    }

    /// Whether this process sends its state changes to a writer in another process.
    pub fn is_remote(&self) -> bool {
        self.inner.writer.is_some()
    }

    /// Sends a command to the writer's process; reloads the reference data when the answer
    /// may have changed it or names something not loaded here.
    async fn forward<T: TryFrom<Answer, Error = ExchangeError>>(
        &self,
        writer: &Arc<dyn WriterPort>,
        command: Command,
    ) -> ExchangeResult<T> {
        let changes_refdata = command.changes_refdata();
        let answer = writer.execute(command).await?;
        if changes_refdata || answer.is_newer_than(&self.refdata()) {
            let reader = self.inner.reader.clone();
            match tokio::task::spawn_blocking(move || load_refdata(&*reader)).await {
                Ok(Ok(r)) => *self.inner.shared.refdata.write().expect("lock") = Arc::new(r),
                // The command is done; the periodic reload catches up.
                Ok(Err(e)) => tracing::warn!(error = %e, "reference data not reloaded"),
                Err(e) => tracing::warn!(error = %e, "reference data not reloaded"),
            }
        }
        answer.try_into()
    }

    /// The exchange's clock (the one its rows are stamped with).
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    pub fn status(&self) -> Status {
        let s = &self.inner.shared;
        Status {
            ready: s.ready.load(Ordering::Acquire),
            pending_inputs: s.pending_inputs(),
            trades: s.trades.load(Ordering::Acquire),
            replayed_at_start: s.replayed_at_start.load(Ordering::Acquire),
        }
    }

    /// The market read model (depth, trades, candles), served from memory.
    pub fn market(&self) -> &market::MarketData {
        &self.inner.market
    }

    /// Stored candles of one series, for ranges older than the in-memory ones.
    pub async fn stored_candles(
        &self,
        symbol: u32,
        interval: agora_market::Interval,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> ExchangeResult<Vec<CandleRow>> {
        self.read(move |r| r.candles(symbol, interval.as_str(), start_ms, end_ms, limit))
            .await
    }

    pub fn refdata(&self) -> Arc<RefData> {
        self.inner.shared.refdata.read().expect("lock").clone()
    }

    /// Whether `user` exists. The writer's process knows every user; an API process without
    /// it asks the store on a miss and remembers the users it found.
    pub async fn user_exists(&self, user: u64) -> ExchangeResult<bool> {
        let users = &self.inner.shared.users;
        if users.read().expect("lock").contains(&user) {
            return Ok(true);
        }
        if self.inner.kind == ProcessKind::Writer || user > ORDER_ID_MAX {
            return Ok(false);
        }
        let found = self.read(move |r| r.user(user)).await?.is_some();
        if found {
            users.write().expect("lock").insert(user);
        }
        Ok(found)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(sequencer::Reply<T>) -> Request,
    ) -> ExchangeResult<T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .requests
            .send(make(tx))
            .await
            .map_err(|_| ExchangeError::unavailable("the exchange is stopping"))?;
        rx.await
            .map_err(|_| ExchangeError::unavailable("the exchange is stopping"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reads<dyn ReadDatabase>) -> StoreResult<T> + Send + 'static,
    ) -> ExchangeResult<T> {
        let reads = Reads(self.inner.reader.clone());
        tokio::task::spawn_blocking(move || f(&reads))
            .await
            .map_err(|e| ExchangeError::unavailable(format!("read task: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "read failed");
                ExchangeError::unavailable("the store could not be read; retry shortly")
            })
    }

    pub async fn place_order(&self, user: u64, request: &OrderRequest) -> ExchangeResult<Placed> {
        if let Some(writer) = &self.inner.writer {
            let order = request.clone();
            return self
                .forward(writer, Command::PlaceOrder { user, order })
                .await;
        }
        let refdata = self.refdata();
        // Only a MARKET SELL is valued at the reference price (its notional is otherwise
        // unknown until it matches); no other order pays for reading it.
        let market_sell = (request.order_type, request.side) == (OrderType::Market, Side::Sell);
        let reference_price = match refdata.symbol_by_name.get(&request.symbol) {
            Some(&id) if market_sell => {
                let base_unit = refdata.book_spec(&refdata.symbols[&id]).base_unit;
                self.market().reference_price(id, self.now_ms(), base_unit)
            }
            _ => None,
        };
        let order = rules::validate_order(request, &refdata, reference_price)?;
        self.call(|reply| Request::PlaceOrder { user, order, reply })
            .await
    }

    /// Asks the engine to cancel; the hold is released when it confirms.
    pub async fn cancel_order(&self, user: u64, order: u64) -> ExchangeResult<OrderRow> {
        if order > ORDER_ID_MAX {
            return Err(order_not_found(order));
        }
        if let Some(writer) = &self.inner.writer {
            return self
                .forward(writer, Command::CancelOrder { user, order })
                .await;
        }
        match self
            .call(|reply| Request::CancelOrder { user, order, reply })
            .await?
        {
            Cancel::Requested(row) => Ok(row),
            // Closed, someone else's, or never placed: only the owner learns which.
            Cancel::NotOpen => match self.read(move |r| r.order(order)).await? {
                Some(row) if row.user == user => Err(order_not_open(order, &row.status)),
                _ => Err(order_not_found(order)),
            },
        }
    }

    pub async fn deposit(
        &self,
        user: u64,
        asset: &str,
        amount: &str,
    ) -> ExchangeResult<BalanceRow> {
        if let Some(writer) = &self.inner.writer {
            let (asset, amount) = (asset.to_string(), amount.to_string());
            let deposit = Command::Deposit {
                user,
                asset,
                amount,
            };
            return self.forward(writer, deposit).await;
        }
        let asset = self.refdata().asset_by_code(asset)?.clone();
        let amount = rules::parse_amount(amount, &asset)?;
        self.call(|reply| Request::Deposit {
            user,
            asset: asset.id,
            amount,
            reply,
        })
        .await
    }

    pub async fn create_user(&self, name: &str) -> ExchangeResult<UserRow> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
        if !ok {
            return Err(ExchangeError::invalid(
                "INVALID_NAME",
                "name must be 1-64 characters of A-Z, a-z, 0-9, -, _, ., @",
            ));
        }
        let name = name.to_string();
        if let Some(writer) = &self.inner.writer {
            return self.forward(writer, Command::CreateUser { name }).await;
        }
        self.call(|reply| Request::CreateUser { name, reply }).await
    }

    pub async fn create_asset(&self, asset: NewAsset) -> ExchangeResult<AssetRow> {
        if let Some(writer) = &self.inner.writer {
            return self.forward(writer, Command::CreateAsset { asset }).await;
        }
        rules::validate_asset(&asset, &self.refdata())?;
        self.call(|reply| Request::CreateAsset { asset, reply })
            .await
    }

    pub async fn create_symbol(&self, symbol: &NewSymbol) -> ExchangeResult<SymbolRow> {
        if let Some(writer) = &self.inner.writer {
            let symbol = symbol.clone();
            return self.forward(writer, Command::CreateSymbol { symbol }).await;
        }
        let symbol = rules::validate_symbol(symbol, &self.refdata())?;
        self.call(|reply| Request::CreateSymbol { symbol, reply })
            .await
    }

    pub async fn user_by_name(&self, name: &str) -> ExchangeResult<Option<UserRow>> {
        let name = name.to_string();
        self.read(move |r| r.user_by_name(&name)).await
    }

    pub async fn update_symbol(
        &self,
        name: &str,
        update: SymbolUpdate,
    ) -> ExchangeResult<SymbolRow> {
        if let Some(writer) = &self.inner.writer {
            let name = name.to_string();
            return self
                .forward(writer, Command::UpdateSymbol { name, update })
                .await;
        }
        let symbol = self.refdata().symbol_by_name(name)?.id;
        if update.status.is_none() && update.default_self_trade_prevention_mode.is_none() {
            return Err(ExchangeError::invalid(
                "EMPTY_UPDATE",
                "give status, default_self_trade_prevention_mode or both",
            ));
        }
        self.call(|reply| Request::UpdateSymbol {
            symbol,
            update,
            reply,
        })
        .await
    }

    /// One of the user's orders; another user's order is reported as not found.
    pub async fn order(&self, user: u64, id: u64) -> ExchangeResult<OrderRow> {
        if id > ORDER_ID_MAX {
            return Err(order_not_found(id));
        }
        match self.read(move |r| r.order(id)).await? {
            Some(o) if o.user == user => Ok(o),
            _ => Err(order_not_found(id)),
        }
    }

    pub async fn orders(&self, query: OrderQuery) -> ExchangeResult<Vec<OrderRow>> {
        self.read(move |r| r.orders(&query)).await
    }

    pub async fn balances(&self, user: u64) -> ExchangeResult<Vec<BalanceRow>> {
        self.read(move |r| r.balances(user)).await
    }

    pub async fn fills(
        &self,
        user: u64,
        symbol: Option<u32>,
        before_fill_id: Option<i64>,
        limit: usize,
    ) -> ExchangeResult<Vec<FillRow>> {
        self.read(move |r| r.fills(user, symbol, before_fill_id, limit))
            .await
    }

    /// The engine's book of a symbol, straight from its shard.
    pub async fn book(&self, symbol: u32) -> ExchangeResult<Option<BookSnapshot>> {
        let name = match self.refdata().symbols.get(&symbol) {
            Some(s) => s.name.clone(),
            None => return Ok(None),
        };
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + BOOK_AUDIT_WAIT;
        self.to_shard(
            &name,
            ShardControl::Snapshot { symbol, reply: tx },
            deadline,
        )
        .await
        .map_err(|_| ExchangeError::unavailable("engine is busy"))?;
        rx.await
            .map_err(|_| ExchangeError::unavailable("engine stopped"))
    }

    /// Checks every ledger and order invariant against the store (incrementally, unless
    /// `full`: see [`reconcile`]), and compares each engine book with the store at a
    /// consistent cut while orders keep flowing. A book that cannot be audited within
    /// [`BOOK_AUDIT_WAIT`] is reported as not compared.
    pub async fn reconcile(&self, full: bool) -> ExchangeResult<reconcile::Report> {
        let _one_at_a_time = self.inner.reconciling.lock().await;
        let refdata = self.refdata();
        let mut symbols: Vec<(u32, String)> = refdata
            .symbols
            .values()
            .map(|s| (s.id, s.name.clone()))
            .collect();
        symbols.sort_unstable();
        let auditor = self.inner.auditor.clone();
        // Ask for the books first: they are answered while the ledger is read.
        let deadline = tokio::time::Instant::now() + BOOK_AUDIT_WAIT;
        let mut books = Vec::with_capacity(symbols.len());
        for (id, name) in symbols {
            let request = self.request_book_audit(id, &name, deadline).await;
            books.push((name, request));
        }
        let shared = self.inner.shared.clone();
        let latest = move || shared.refdata.read().expect("lock").clone();
        let mut report =
            tokio::task::spawn_blocking(move || reconcile::audit_ledger(&*auditor, &latest, full))
                .await
                .map_err(|e| ExchangeError::unavailable(format!("audit task: {e}")))?
                .map_err(|e| {
                    tracing::error!(error = %e, "ledger audit failed");
                    ExchangeError::unavailable("the store could not be audited; retry shortly")
                })?;
        for (name, request) in books {
            let verdict = match request {
                Err(why) => reconcile::BookVerdict::NotCompared(why),
                Ok(answer) => match tokio::time::timeout_at(deadline, answer).await {
                    Ok(Ok(verdict)) => verdict,
                    Ok(Err(_)) => reconcile::BookVerdict::NotCompared("the engine stopped".into()),
                    Err(_) => reconcile::BookVerdict::NotCompared(format!(
                        "no answer within {} s",
                        BOOK_AUDIT_WAIT.as_secs()
                    )),
                },
            };
            report.add_book(&name, verdict);
        }
        Ok(report)
    }

    /// Sends one book's audit to its shard, unless one is already in flight.
    async fn request_book_audit(
        &self,
        symbol: u32,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<oneshot::Receiver<reconcile::BookVerdict>, String> {
        let flag = self
            .inner
            .book_audits
            .lock()
            .expect("lock")
            .entry(symbol)
            .or_default()
            .clone();
        let in_flight = InFlight::take(&flag)
            .ok_or_else(|| "an earlier audit of this book is still in flight".to_string())?;
        let (reply, answer) = oneshot::channel();
        if self.inner.distributed {
            // Through the log, behind every input of the book sent before it.
            let audit = Request::AuditBook {
                symbol,
                reply,
                in_flight,
            };
            self.inner
                .requests
                .send(audit)
                .await
                .map_err(|_| "the exchange is stopping".to_string())?;
            return Ok(answer);
        }
        // On failure the message, and with it the in-flight mark, is dropped.
        let audit = ShardControl::Audit {
            symbol,
            reply,
            in_flight,
        };
        self.to_shard(name, audit, deadline)
            .await
            .map_err(|_| "the engine is busy".to_string())?;
        Ok(answer)
    }

    /// Sends a control message to the shard that owns `symbol_name`, waiting for room in its
    /// bounded queue until `deadline` (a reconciliation of many symbols sends more messages
    /// than the queue holds; the shard drains it quickly).
    async fn to_shard(
        &self,
        symbol_name: &str,
        message: ShardControl,
        deadline: tokio::time::Instant,
    ) -> Result<(), ()> {
        let shards = self.inner.shard_control.len() as u32;
        if shards == 0 {
            return Err(()); // the engines run in other processes
        }
        let control = self.inner.shard_control[partition_for(symbol_name, shards) as usize].clone();
        let message = match control.try_send(message) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Full(message)) => message,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(()),
        };
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::task::spawn_blocking(move || control.send_timeout(message, wait).map_err(|_| ()))
            .await
            .map_err(|_| ())?
    }

    /// Stops taking requests, lets the engine and settlement drain, and joins the threads.
    pub async fn shutdown(&self) {
        self.inner.requests.shutdown().await;
        for control in &self.inner.shard_control {
            let _ = control.send(ShardControl::Stop);
        }
        self.inner.stop_feed.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.inner.threads.lock().expect("lock"));
        let checkpointer = self.inner.checkpointer.lock().expect("lock").take();
        let _ = tokio::task::spawn_blocking(move || {
            threads.into_iter().for_each(|t| {
                let _ = t.join();
            });
            drop(checkpointer); // one last checkpoint after the final commit
        })
        .await;
    }
}

/// Embedded mode: one engine thread per shard, each owning one partition of `log`.
fn spawn_shards(
    config: &Config,
    refdata: &RefData,
    books: FxHashMap<u32, ShardBook>,
    log: &EmbeddedLog,
    outputs: &mpsc::UnboundedSender<ShardOutput>,
    threads: &mut Vec<JoinHandle<()>>,
    shard_control: &mut Vec<crossbeam_channel::Sender<ShardControl>>,
) {
    let mut shard_books: Vec<FxHashMap<u32, ShardBook>> = (0..config.engine_shards)
        .map(|_| FxHashMap::default())
        .collect();
    for (symbol, book) in books {
        let name = &refdata.symbols[&symbol].name;
        shard_books[partition_for(name, config.engine_shards) as usize].insert(symbol, book);
    }
    for (i, books) in shard_books.into_iter().enumerate() {
        let log_rx = log
            .consumer([i as u32])
            .expect("each shard owns its partition");
        let (control_tx, control_rx) = crossbeam_channel::bounded(64);
        shard_control.push(control_tx);
        let shard = Shard {
            books,
            outputs: Outputs::Local(outputs.clone()),
            source: None,
            partition_of: FxHashMap::default(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("engine-{i}"))
                .spawn(move || shard.run(log_rx, control_rx))
                .expect("spawn engine thread"),
        );
    }
}

/// The largest order id there can be: the store keeps ids as signed 64-bit integers. An id
/// beyond it names no order; checked here so that it never reaches the store (where the
/// conversion would fail, and a failed read on the writer is fatal).
pub const ORDER_ID_MAX: u64 = i64::MAX as u64;

/// How long a market process waits for settled records before telling the observer it
/// is idle.
const SETTLED_POLL: std::time::Duration = market::IDLE_TICK;

/// A market process's feed thread: applies the settled topic to the read model until
/// `stop`. The reference data is reloaded at once when a record names a symbol it lacks.
fn follow_settled(
    log: &mut agora_kafka::KafkaReader,
    feed: &mut settled::MarketFeed,
    shared: &Shared,
    reader: &dyn ReadDatabase,
    observer: Option<Arc<dyn market::CommitObserver>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let delivered = match log.poll(SETTLED_POLL) {
            Ok(delivered) => delivered,
            Err(e) => {
                tracing::warn!(error = %e, "reading the settled topic");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let mut refdata = shared.refdata.read().expect("lock").clone();
        if delivered.is_empty() {
            if let Some(observer) = &observer {
                observer.idle(feed.market(), &refdata);
            }
            continue;
        }
        let records: Vec<settled::Settled> = delivered
            .iter()
            .filter_map(|d| match serde_json::from_str(&d.record.payload) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!(error = %e, partition = d.partition, offset = d.offset, "skipped a settled record");
                    None
                }
            })
            .collect();
        let unknown = records.iter().any(|r| match r {
            settled::Settled::Symbol { symbol, .. } => !refdata.symbols.contains_key(symbol),
            settled::Settled::User { .. } => false,
        });
        if unknown {
            match load_refdata(reader) {
                Ok(r) => {
                    refdata = Arc::new(r);
                    *shared.refdata.write().expect("lock") = refdata.clone();
                }
                Err(e) => tracing::warn!(error = %e, "reference data not reloaded"),
            }
        }
        feed.apply(records, observer.as_deref(), &refdata);
    }
}

/// A cancel of one of the caller's orders that has already finished.
pub(crate) fn order_not_open(id: u64, status: &OrderStatus) -> ExchangeError {
    ExchangeError::new(
        ErrorClass::Conflict,
        "ORDER_NOT_OPEN",
        format!("order {id} is already {}", rules::enum_name(status)),
    )
}

pub fn order_not_found(id: impl std::fmt::Display) -> ExchangeError {
    ExchangeError::new(
        ErrorClass::NotFound,
        "ORDER_NOT_FOUND",
        format!("no order {id}"),
    )
}

/// Rebuilds each symbol's book from the orders the store says were resting when the
/// symbol's cursor was committed, in arrival order.
fn restore_books(
    refdata: &RefData,
    open_orders: &[OrderRow],
    cursors: &[CursorRow],
) -> Result<FxHashMap<u32, ShardBook>, StartError> {
    let cursor_of: FxHashMap<u32, CursorRow> = cursors.iter().map(|c| (c.symbol, *c)).collect();
    let mut orders_of: FxHashMap<u32, Vec<&OrderRow>> = FxHashMap::default();
    for o in open_orders {
        if !refdata.symbols.contains_key(&o.symbol) {
            return Err(StartError::Inconsistent(format!(
                "order {} has no symbol",
                o.id
            )));
        }
        orders_of.entry(o.symbol).or_default().push(o);
    }
    refdata
        .symbols
        .values()
        .map(|s| {
            let orders = orders_of.remove(&s.id).unwrap_or_default();
            let book = restore_book(refdata, s, cursor_of.get(&s.id), orders)?;
            Ok((s.id, book))
        })
        .collect()
}

/// One symbol's book at its cursor: the open orders (in arrival order) the engine had seen
/// when the cursor was committed.
fn restore_book<'a>(
    refdata: &RefData,
    symbol: &SymbolRow,
    cursor: Option<&CursorRow>,
    open_orders: impl IntoIterator<Item = &'a OrderRow>,
) -> Result<ShardBook, StartError> {
    let mut book = Book::new(refdata.book_spec(symbol));
    let input_seq = cursor.map_or(0, |c| {
        book.set_next_trade_id(c.next_trade_id);
        c.input_seq
    });
    for o in open_orders {
        if o.accept_seq > input_seq {
            continue; // not yet seen by the engine: it will be replayed
        }
        let (Some(price), Some(quantity), OrderType::Limit) = (o.price, o.quantity, o.order_type)
        else {
            return Err(StartError::Inconsistent(format!(
                "processed order {} is open but cannot rest",
                o.id
            )));
        };
        book.restore(RestingOrder {
            id: o.id,
            user: o.user,
            side: o.side,
            price,
            remaining: quantity - o.filled_qty,
        });
    }
    book.check_invariants();
    Ok(ShardBook { book, input_seq })
}
