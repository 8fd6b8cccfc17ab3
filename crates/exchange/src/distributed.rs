//! The distributed mode: the exchange's roles as processes that meet in Kafka and the store.
//!
//! - **settlement**: the writer. It holds the `exchange-writer` role (fenced by epoch),
//!   takes the API's requests, commits holds, orders and outbox rows, whose book inputs
//!   reach `agora.book-inputs` through the relay.
//!   It consumes `agora.engine-output` and settles it exactly once: every output names the
//!   input it answers, and an input at or below its symbol's cursor is dropped. The cursor
//!   and both log positions (where engines and settlement resume) commit with the effects.
//! - **engine**: members of the consumer group `agora-engine` on `agora.book-inputs`. A
//!   member that is assigned a partition rebuilds its books from the store (the open orders
//!   at each symbol's cursor, read in one snapshot with the partition's position) and reads
//!   on from that position; one that loses a partition drops its books at once. Outputs go
//!   to the same partition number of `agora.engine-output`, one per input, so settlement
//!   sees one input partition's outputs in order. A member that lost a partition and is
//!   still sending (a "zombie") sends what the new owner sends — the engine is deterministic
//!   — and settlement drops whichever copy comes second.
//! - **relay**: in the writer's process, the writer publishes its own commits (the fast
//!   path) and holds every outbox partition's lease; without it, relay processes
//!   (`--roles relay`, any number) publish the outbox partitions they hold a lease on
//!   (`agora_core::relay`).
//! - **market**: in the writer's process, the market thread gets each commit in process.
//!   A writer without the market role publishes each commit to `agora.settled`, and market
//!   processes (`--roles market`, any number) keep the read model from it and serve the
//!   market REST endpoints and WebSockets (`crate::settled`).
//! - **api** runs in the writer's process in this version (the request port is in-process
//!   there), besides api-only processes that send their commands to it
//!   (`crate::commands`).

use crate::rules::RefData;
use crate::sequencer::SETTLEMENT_CONSUMER;
use crate::sequencer::{EngineOutput, LogPosition, ShardOutput, ENGINE_CONSUMER};
use crate::shard::{AssignedBooks, BookSource, Outputs, Shard, ShardControl};
use crate::{restore_book, StartError};
use agora_bus::{partition_for, topics, EventLog, LogConsumer, LogError, Polled};
use agora_core::outbox::consumer_offsets;
use agora_core::store::{InSnapshot, ReadDatabase};
use agora_kafka::{KafkaConfig, KafkaConsumer, KafkaProducer};

use agora_store::queries::Loads;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc;

/// Consumer group of the engine processes on `<prefix>.book-inputs`: `<prefix>-engine`.
pub const ENGINE_GROUP: &str = "engine";
/// Consumer group of the settlement (writer) on `<prefix>.engine-output`:
/// `<prefix>-settlement`.
pub const SETTLEMENT_GROUP: &str = "settlement";
/// The default namespace of topics and groups: `agora.book-inputs`, `agora-engine`, …
pub const NAMESPACE_DEFAULT: &str = "agora";
/// Engine outputs the settlement feed queues for the writer at most.
const FEED_QUEUED_MAX: u64 = 65_536;

/// Partitions of the exchange's topics when agora creates them.
pub const PARTITIONS_DEFAULT: u32 = 8;

/// Which roles this process plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub relay: bool,
    pub engine: bool,
    pub settlement: bool,
    pub market: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        relay: true,
        engine: true,
        settlement: true,
        market: true,
    };

    /// `all`, or a comma-separated subset of `api,relay,engine,settlement,market`.
    pub fn parse(text: &str) -> Result<Roles, String> {
        if text.trim() == "all" {
            return Ok(Roles::ALL);
        }
        let mut roles = Roles {
            api: false,
            relay: false,
            engine: false,
            settlement: false,
            market: false,
        };
        for role in text.split(',').map(str::trim) {
            let flag = match role {
                "api" => &mut roles.api,
                "relay" => &mut roles.relay,
                "engine" => &mut roles.engine,
                "settlement" => &mut roles.settlement,
                "market" => &mut roles.market,
                _ => {
                    return Err(format!(
                        "unknown role {role:?}: roles are all, or any of api, relay, engine, \
                         settlement, market"
                    ))
                }
            };
            *flag = true;
        }
        Ok(roles)
    }

    /// Whether this process hosts the writer (and with it the request port).
    pub fn writer(&self) -> bool {
        self.settlement
    }

    /// Only the API: an API process that sends its commands to the writer's process.
    pub fn api_only(&self) -> bool {
        self.api && !(self.relay || self.engine || self.settlement || self.market)
    }

    /// Only the market: a market process that keeps the read model from the settled topic.
    pub fn market_only(&self) -> bool {
        self.market && !(self.api || self.relay || self.engine || self.settlement)
    }

    /// Whether this process hosts no writer and no API: engine and relay processes.
    pub fn workers_only(&self) -> bool {
        !(self.api || self.settlement || self.market) && (self.engine || self.relay)
    }

    /// The combinations this version runs: the writer's process (settlement with api and
    /// market; relay and engine or not), worker processes (relay, engine or both), and
    /// api-only processes (with the writer's address).
    pub fn check(&self, distributed: bool, writer_url_given: bool) -> Result<(), String> {
        if self.api_only() {
            // Needs no log: it reaches the writer over HTTP and reads the store.
            return if writer_url_given {
                Ok(())
            } else {
                Err(
                    "an api-only process (--roles api) needs --writer-url, the address of \
                     the writer's process"
                        .into(),
                )
            };
        }
        if writer_url_given {
            return Err("--writer-url is for api-only processes (--roles api)".into());
        }
        if !distributed && *self != Roles::ALL {
            return Err(
                "roles other than all need a Kafka event log (--event-log kafka://…)".into(),
            );
        }
        if self.market_only() {
            return Ok(());
        }
        let writer_roles = self.settlement || self.api || self.market;
        if writer_roles && !(self.settlement && self.api) {
            return Err(
                "api runs in the writer's process in this version (besides api-only and \
                 market-only processes): give them together (--roles api,settlement, with \
                 market, relay and engine or not), and run the others apart with --roles \
                 market, relay, engine or relay,engine"
                    .into(),
            );
        }
        if !(writer_roles || self.engine || self.relay) {
            return Err("no role given".into());
        }
        Ok(())
    }
}

/// The Kafka side of a process: its configuration, its producer, and the partition count
/// of the exchange's topics.
#[derive(Clone)]
pub struct KafkaLink {
    pub config: Arc<KafkaConfig>,
    pub producer: Arc<KafkaProducer>,
    pub partitions: u32,
    /// Names this deployment's topics and groups, so several can share a cluster.
    pub namespace: String,
}

impl KafkaLink {
    /// Connects, and creates the exchange's topics with `partitions` partitions unless they
    /// exist. Existing topics keep their partition count; engine output needs at least as
    /// many partitions as book inputs (outputs go to their input's partition number).
    pub fn open(url: &str, partitions: u32, namespace: &str) -> Result<KafkaLink, StartError> {
        let log_error = |what: &str, e: LogError| StartError::Log(format!("{what}: {e}"));
        let config = KafkaConfig::from_url(url).map_err(|e| log_error("event log URL", e))?;
        let mut counts = Vec::new();
        let (inputs, outputs, settled) = (
            topic(namespace, topics::BOOK_INPUTS),
            topic(namespace, topics::ENGINE_OUTPUT),
            topic(namespace, topics::SETTLED),
        );
        for topic in [&inputs, &outputs, &settled] {
            let state = agora_kafka::ensure_topic(&config, topic, partitions, 1)
                .map_err(|e| log_error(&format!("topic {topic}"), e))?;
            counts.push(match state {
                agora_kafka::TopicState::Created => partitions,
                agora_kafka::TopicState::Existed { partitions } => partitions,
            });
        }
        if counts[1] < counts[0] {
            return Err(StartError::Log(format!(
                "{outputs} has {} partitions, fewer than the {} of {inputs}",
                counts[1], counts[0],
            )));
        }
        let producer =
            KafkaProducer::new(&config).map_err(|e| log_error("creating the producer", e))?;
        Ok(KafkaLink {
            config: Arc::new(config),
            producer: Arc::new(producer),
            partitions: counts[0],
            namespace: namespace.to_string(),
        })
    }

    /// This deployment's name of a topic of [`topics`].
    pub fn topic(&self, name: &str) -> String {
        topic(&self.namespace, name)
    }

    /// This deployment's name of a consumer group.
    pub fn group(&self, name: &str) -> String {
        format!("{}-{name}", self.namespace)
    }

    pub fn join(&self, group: &str, topic: &str) -> Result<KafkaConsumer, StartError> {
        let (group, topic) = (self.group(group), self.topic(topic));
        KafkaConsumer::join(&self.config, &group, &topic)
            .map_err(|e| StartError::Log(format!("joining {group} on {topic}: {e}")))
    }

    pub fn log(&self, topic: &str) -> Result<Arc<dyn EventLog>, StartError> {
        let topic = self.topic(topic);
        let log = self
            .producer
            .log(&topic)
            .map_err(|e| StartError::Log(format!("topic {topic}: {e}")))?;
        Ok(Arc::new(log))
    }
}

/// `topic` (an `agora.` name of [`topics`]) in `namespace`.
fn topic(namespace: &str, topic: &str) -> String {
    let suffix = topic.strip_prefix("agora.").unwrap_or(topic);
    format!("{namespace}.{suffix}")
}

/// Reads the books of assigned partitions from the store.
struct StoreBooks {
    reader: Arc<dyn ReadDatabase>,
    partitions: u32,
}

impl BookSource for StoreBooks {
    fn load(&mut self, partitions: &[u32]) -> Result<AssignedBooks, String> {
        let mut found: Option<AssignedBooks> = None;
        let mut failed: Option<StartError> = None;
        self.reader
            .snapshot(&mut |snapshot| {
                let mut q = InSnapshot(snapshot);
                let mut loads = Loads(&mut q);
                let refdata = RefData::new(loads.assets()?, loads.symbols()?);
                let cursors: FxHashMap<u32, _> = loads
                    .cursors()?
                    .into_iter()
                    .map(|c| (c.symbol, c))
                    .collect();
                let mut books = FxHashMap::default();
                let mut partition_of = FxHashMap::default();
                for symbol in refdata.symbols.values() {
                    let partition = partition_for(&symbol.name, self.partitions);
                    if !partitions.contains(&partition) {
                        continue;
                    }
                    let cursor = cursors.get(&symbol.id);
                    let orders = loads.book_orders(symbol.id, cursor.map_or(0, |c| c.input_seq))?;
                    match restore_book(&refdata, symbol, cursor, &orders) {
                        Ok(book) => {
                            books.insert(symbol.id, book);
                            partition_of.insert(symbol.id, partition);
                        }
                        Err(e) => {
                            failed = Some(e);
                            return Ok(());
                        }
                    }
                }
                let positions: FxHashMap<String, i64> = consumer_offsets(&mut q, ENGINE_CONSUMER)?
                    .into_iter()
                    .collect();
                let resume_at = partitions
                    .iter()
                    .map(|&p| (p, positions.get(&p.to_string()).map_or(0, |o| o + 1)))
                    .collect();
                found = Some(AssignedBooks {
                    books,
                    partition_of,
                    resume_at,
                });
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        if let Some(e) = failed {
            // Not a passing fault: the store contradicts itself. Matching on would diverge.
            agora_core::writer::fatal("rebuilding assigned books", e);
        }
        found.ok_or_else(|| "the snapshot returned nothing".to_string())
    }
}

/// A running engine member: its thread and its control channel.
pub struct EngineMember {
    pub(crate) control: crossbeam_channel::Sender<ShardControl>,
    thread: Option<JoinHandle<()>>,
}

impl EngineMember {
    /// Joins the engine group; books are rebuilt as partitions are assigned.
    pub fn start(
        link: &KafkaLink,
        reader: Arc<dyn ReadDatabase>,
    ) -> Result<EngineMember, StartError> {
        let consumer = link.join(ENGINE_GROUP, topics::BOOK_INPUTS)?;
        let shard = Shard {
            books: FxHashMap::default(),
            outputs: Outputs::Log(link.log(topics::ENGINE_OUTPUT)?),
            source: Some(Box::new(StoreBooks {
                reader,
                partitions: link.partitions,
            })),
            partition_of: FxHashMap::default(),
        };
        let (control, control_rx) = crossbeam_channel::bounded(64);
        let thread = std::thread::Builder::new()
            .name("engine-member".into())
            .spawn(move || shard.run(consumer, control_rx))
            .expect("spawn engine thread");
        Ok(EngineMember {
            control,
            thread: Some(thread),
        })
    }

    /// Leaves the group and waits for the thread.
    pub fn stop(mut self) {
        let _ = self.control.send(ShardControl::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub(crate) fn into_parts(
        mut self,
    ) -> (crossbeam_channel::Sender<ShardControl>, JoinHandle<()>) {
        let thread = self.thread.take().expect("thread");
        (self.control.clone(), thread)
    }
}

/// Feeds the writer with engine output read from `agora.engine-output`, resuming where the
/// store says settlement stopped. Runs until `stop` or until the writer is gone.
pub(crate) fn spawn_settlement_feed(
    link: &KafkaLink,
    reader: Arc<dyn ReadDatabase>,
    feedback: mpsc::UnboundedSender<ShardOutput>,
    shared: Arc<crate::Shared>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, StartError> {
    let mut consumer = link.join(SETTLEMENT_GROUP, topics::ENGINE_OUTPUT)?;
    let thread = std::thread::Builder::new()
        .name("settlement-feed".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) && !feedback.is_closed() {
                if shared.feed_queued.load(Ordering::Acquire) >= FEED_QUEUED_MAX {
                    // The writer is behind: leave the records in Kafka (librdkafka's own
                    // prefetch is bounded) until it catches up.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                match consumer.poll(Duration::from_millis(50)) {
                    Ok(Polled::Assigned(partitions)) => {
                        let positions = loop {
                            let mut found = Vec::new();
                            let read = reader.snapshot(&mut |s| {
                                found = consumer_offsets(&mut InSnapshot(s), SETTLEMENT_CONSUMER)?;
                                Ok(())
                            });
                            match read {
                                Ok(()) => break found,
                                Err(e) => {
                                    tracing::warn!(error = %e, "reading settlement positions");
                                    if stop.load(Ordering::Acquire) || feedback.is_closed() {
                                        return;
                                    }
                                    std::thread::sleep(Duration::from_millis(500));
                                }
                            }
                        };
                        let positions: FxHashMap<String, i64> = positions.into_iter().collect();
                        for p in partitions {
                            let at = positions.get(&p.to_string()).map_or(0, |o| o + 1);
                            if let Err(e) = consumer.seek(p, at) {
                                agora_core::writer::fatal("seeking engine output", e);
                            }
                        }
                    }
                    Ok(Polled::Records(batch)) => {
                        for d in batch {
                            let mut out: EngineOutput =
                                match serde_json::from_str(&d.record.payload) {
                                    Ok(out) => out,
                                    Err(e) => agora_core::writer::fatal(
                                        "decoding engine output",
                                        format!(
                                            "partition {} offset {}: {e}",
                                            d.partition, d.offset
                                        ),
                                    ),
                                };
                            out.output_position = Some(LogPosition {
                                partition: d.partition,
                                offset: d.offset,
                            });
                            shared.feed_queued.fetch_add(1, Ordering::AcqRel);
                            if feedback.send(ShardOutput::Engine(out)).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Polled::Revoked(_) | Polled::Idle) => {}
                    Err(LogError::Closed) => return,
                    Err(e) => agora_core::writer::fatal("consuming engine output", e),
                }
            }
        })
        .expect("spawn settlement feed");
    Ok(thread)
}

/// The holder name of the writer's own relay in `relay_leases`.
pub const WRITER_RELAY_HOLDER: &str = "exchange-writer";

/// A relay member: publishes the book inputs of the outbox partitions it holds a lease on.
pub struct RelayMember {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RelayMember {
    /// Starts publishing on a thread of its own; its leases come within a renewal.
    pub fn start(
        link: &KafkaLink,
        store: Box<dyn agora_core::Database>,
        clock: Arc<dyn agora_core::Clock>,
    ) -> Result<RelayMember, StartError> {
        let relay = agora_core::relay::Relay::new(
            store,
            link.log(topics::BOOK_INPUTS)?,
            clock,
            "relay",
            Box::new(|row| row.aggregate_type == crate::events::BOOK_AGGREGATE),
            agora_core::relay::RelayLimits::default(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stop_relay = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || relay.run(&stop_relay))
            .expect("spawn relay thread");
        Ok(RelayMember {
            stop,
            thread: Some(thread),
        })
    }

    /// Gives the leases back and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A worker process (`--roles engine`, `relay` or both): what it runs until stopped.
pub struct Workers {
    engine: Option<EngineMember>,
    relay: Option<RelayMember>,
}

impl Workers {
    pub fn stop(self) {
        if let Some(relay) = self.relay {
            relay.stop();
        }
        if let Some(engine) = self.engine {
            engine.stop();
        }
    }
}

/// A worker process: an engine member (joins the engine group and matches what it is
/// assigned; it reads the store, never writes it) and/or a relay (writes only its leases).
pub fn start_workers(config: &crate::Config) -> Result<Workers, StartError> {
    let url = config.event_log_url.as_deref().ok_or_else(|| {
        StartError::Log(
            "engine and relay processes need a Kafka event log (--event-log kafka://…)".into(),
        )
    })?;
    let link = KafkaLink::open(url, config.log_partitions, &config.log_namespace)?;
    let relay = if config.roles.relay {
        let Some(store_url) = &config.store_url else {
            return Err(StartError::Log(
                "a relay process writes its leases in the writer's store: give --store \
                 postgres://… or mysql://… (SQLite is one process's file)"
                    .into(),
            ));
        };
        let (store, _reader) = agora_sql::connect(store_url, 1)?;
        Some(RelayMember::start(&link, store, config.clock.clone())?)
    } else {
        None
    };
    let engine = if config.roles.engine {
        Some(EngineMember::start(&link, crate::open_reader(config)?)?)
    } else {
        None
    };
    Ok(Workers { engine, relay })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_only_the_runnable_combinations_pass() {
        assert_eq!(Roles::parse("all"), Ok(Roles::ALL));
        let writer = Roles::parse("api,relay,settlement,market").unwrap();
        assert!(writer.writer() && !writer.engine);
        assert_eq!(writer.check(true, false), Ok(()));
        let engine = Roles::parse("engine").unwrap();
        assert!(!engine.writer());
        assert_eq!(engine.check(true, false), Ok(()));
        assert_eq!(Roles::ALL.check(false, false), Ok(()));
        assert!(
            engine.check(false, false).is_err(),
            "roles apart need Kafka"
        );
        assert!(Roles::parse("relay,settlement")
            .unwrap()
            .check(true, false)
            .is_err());
        let writer_without_relay = Roles::parse("api,settlement,market").unwrap();
        assert_eq!(writer_without_relay.check(true, false), Ok(()));
        for workers in ["relay", "relay,engine", "engine"] {
            let roles = Roles::parse(workers).unwrap();
            assert!(roles.workers_only() && !roles.writer(), "{workers}");
            assert_eq!(roles.check(true, false), Ok(()), "{workers}");
        }
        assert!(!Roles::ALL.workers_only() && !writer_without_relay.workers_only());
        let market = Roles::parse("market").unwrap();
        assert!(market.market_only() && !market.writer() && !market.workers_only());
        assert_eq!(market.check(true, false), Ok(()));
        assert!(market.check(false, false).is_err(), "needs Kafka");
        assert!(!Roles::ALL.market_only());
        let writer_without_market = Roles::parse("api,relay,settlement").unwrap();
        assert_eq!(writer_without_market.check(true, false), Ok(()));
        assert!(Roles::parse("api,market")
            .unwrap()
            .check(true, false)
            .is_err());
        let api = Roles::parse("api").unwrap();
        assert!(api.api_only() && !api.writer());
        assert!(
            api.check(true, false).is_err(),
            "api alone needs the writer's address"
        );
        assert_eq!(api.check(false, true), Ok(()), "api alone needs no log");
        assert!(
            Roles::ALL.check(false, true).is_err(),
            "the writer has no writer url"
        );
        assert!(Roles::parse("api,engine")
            .unwrap()
            .check(true, true)
            .is_err());
        assert!(Roles::parse("matcher").is_err());
    }
}
