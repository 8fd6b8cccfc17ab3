//! The group-commit writer, generic over venues.
//!
//! One thread applies every state change — a venue's requests (from the API) and its
//! feedback (what its consumers produced, e.g. the matching engine's trades) — to the
//! working set ([`Core`]: accounts, outbox, the venue's own state), then commits everything
//! in one transaction per batch. Batches form by themselves: while one commit is on its way
//! to disk, new requests queue up, and the next loop takes all of them (up to
//! `batch_max`). Replies are sent and outbox rows published only after the commit, so an
//! answered request is durable and no consumer sees an event the store has not got.
//!
//! A venue plugs in by implementing [`Venue`]: its request and feedback types, how to apply
//! them, which rows it stages into each batch, and what it does once a batch is durable. The
//! core brings the loop, durability, ledger posting, the outbox and its relay, and the
//! restart path (re-publish everything past the relay position, wait for the consumers to
//! catch up).

use crate::accounts::{Accounts, BalanceRow, PostError};
use crate::clock::Clock;
use crate::outbox::{self, Outbox, OutboxRow};
use crate::store::{Database, StoreResult, WriteBatch};
use agora_bus::EventLog;
use agora_ledger::Entry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The writer's state that every venue shares: the store, the accounts, the outbox, the
/// clock, and what waits for the next commit.
pub struct Core {
    db: Box<dyn Database>,
    pub accounts: Accounts,
    pub outbox: Outbox,
    clock: Arc<dyn Clock>,
    log: Arc<dyn EventLog>,
    batch: WriteBatch,
    /// Carried by every commit: this writer's claim on its role.
    fence: Option<crate::store::Fence>,
    /// Run after the batch commits, in order (replies, publishing shared state).
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
}

impl Core {
    /// Loads the accounts and the outbox's counters from `db`.
    pub fn load(
        mut db: Box<dyn Database>,
        clock: Arc<dyn Clock>,
        log: Arc<dyn EventLog>,
        balance_cache_max: usize,
    ) -> StoreResult<Core> {
        let accounts = Accounts::load(&mut *db, balance_cache_max)?;
        let outbox = Outbox::load(&mut *db)?;
        Ok(Core {
            db,
            accounts,
            outbox,
            clock,
            log,
            batch: WriteBatch::default(),
            fence: None,
            after_commit: Vec::new(),
        })
    }

    /// Fences every later commit with `fence` (see [`crate::store::acquire_role`]).
    pub fn fence_with(&mut self, fence: crate::store::Fence) {
        self.fence = Some(fence);
    }

    /// The store, for the venue's own reads (lookups when its working set misses).
    pub fn db(&mut self) -> &mut dyn Database {
        &mut *self.db
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A user's balance of one asset.
    pub fn balance(&mut self, user: u64, asset: u32) -> StoreResult<agora_ledger::Balance> {
        self.accounts.balance(&mut *self.db, user, asset)
    }

    /// Posts a balanced entry (all postings or none); returns its journal id.
    pub fn post(&mut self, entry: Entry, ref_id: Option<i64>) -> Result<i64, PostError> {
        let now = self.clock.now_ms();
        self.accounts.post(&mut *self.db, entry, ref_id, now)
    }

    /// Queues an event for the next commit, to be published after it; returns its seq.
    pub fn append_event(
        &mut self,
        aggregate_type: &str,
        key: &str,
        event_type: &str,
        payload: String,
    ) -> i64 {
        let now = self.clock.now_ms();
        self.outbox
            .append(aggregate_type, key, event_type, payload, now)
    }

    /// Runs `f` once the current batch has committed (a reply, a shared-state update).
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }

    /// Sends `value` on `reply` once the current batch has committed.
    pub fn reply_after_commit<T: Send + 'static>(&mut self, reply: oneshot::Sender<T>, value: T) {
        self.after_commit(move || {
            let _ = reply.send(value);
        });
    }
}

/// A venue on the core: the exchange, commerce, or a test's toy.
pub trait Venue: Send + 'static {
    /// What callers ask of the venue.
    type Request: Send + 'static;
    /// What the venue's consumers send back to the writer (applied before requests).
    type Feedback: Send + 'static;
    /// Work a feedback item asks to finish right after the batch so far has committed.
    type Deferred: Send;

    fn apply_request(&mut self, core: &mut Core, request: Self::Request);

    /// Applies feedback; `Some` asks the writer to commit what it has, then
    /// [`Venue::resume`].
    fn apply_feedback(
        &mut self,
        core: &mut Core,
        feedback: Self::Feedback,
    ) -> Option<Self::Deferred>;

    fn resume(&mut self, _core: &mut Core, _deferred: Self::Deferred) {}

    /// Answers a request that will not be served (the writer is starting or stopping).
    fn refuse(&mut self, request: Self::Request);

    /// How far the consumer of `key`'s events has applied them (committed, or in this
    /// batch): the relay restarts after the lowest such position among keys in flight.
    fn consumed(&self, key: &str) -> i64;

    /// Whether an outbox row goes to the event log (or is kept in the outbox only).
    fn publishes(&self, row: &OutboxRow) -> bool;

    /// Writes the venue's changed rows into the batch.
    fn stage(&mut self, now_ms: i64, batch: &mut WriteBatch);

    /// The batch's events are about to be committed (they count as in flight from here).
    fn committing(&mut self, _events: &[OutboxRow]) {}

    /// The batch is durable (or had nothing to write); called before its events are
    /// published and its replies sent.
    fn durable(&mut self, _balances: Vec<BalanceRow>) {}

    /// After the batch's events are published and its replies sent.
    fn published(&mut self) {}

    /// After every commit and its publication, before its replies: how many keys have
    /// events published and not yet consumed (see
    /// [`crate::outbox::Outbox::keys_in_flight`]); start-up and shutdown wait for none.
    fn in_flight(&mut self, _keys: usize) {}

    /// The writer has caught up and serves requests from now on.
    fn ready(&mut self) {}
}

/// What reaches the writer through the request port.
pub enum Envelope<R> {
    Request(R),
    /// Stop taking requests, wait for what is in flight, then exit.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone, Copy, Debug)]
pub struct WriterLimits {
    /// Most requests (and, separately, feedback items) taken into one commit.
    pub batch_max: usize,
    /// Outbox rows read per page while catching up after a restart.
    pub relay_page_rows: usize,
    /// How long start-up waits for consumers to answer before giving up.
    pub catch_up_silence_max: Duration,
    /// How long shutdown waits for what is in flight.
    pub drain_max: Duration,
    /// Whether start-up waits for the consumers to apply every re-published event. True
    /// when they are threads of this process; false when the log is durable and they are
    /// other processes, which may be down (they catch up from the log when they return).
    pub catch_up_waits: bool,
    /// Whether the writer publishes its own commits to the log (its in-process relay, the
    /// fast path), or leaves that to relay processes and only counts what is in flight.
    pub relays_itself: bool,
}

impl Default for WriterLimits {
    fn default() -> WriterLimits {
        WriterLimits {
            batch_max: 4_096,
            relay_page_rows: 4_096,
            catch_up_silence_max: Duration::from_secs(30),
            drain_max: Duration::from_secs(10),
            catch_up_waits: true,
            relays_itself: true,
        }
    }
}

/// The store is the source of truth; if it cannot be written or read, carrying on would
/// diverge from it. Stop, and let recovery rebuild from what was committed.
pub fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    tracing::error!(error = %e, "{what}; stopping so recovery can replay from the store");
    eprintln!("fatal: {what}: {e}");
    std::process::abort();
}

pub struct Writer<V: Venue> {
    core: Core,
    venue: V,
    limits: WriterLimits,
}

impl<V: Venue> Writer<V> {
    pub fn new(core: Core, venue: V, limits: WriterLimits) -> Writer<V> {
        assert!(limits.batch_max > 0 && limits.relay_page_rows > 0);
        Writer {
            core,
            venue,
            limits,
        }
    }

    /// Runs until shutdown (or until every request sender is gone): catch up the consumers
    /// from the outbox, then serve. Call on a thread of its own.
    pub fn run(
        mut self,
        mut requests: mpsc::Receiver<Envelope<V::Request>>,
        mut feedback: mpsc::UnboundedReceiver<V::Feedback>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| fatal("writer runtime", e));
        rt.block_on(async move {
            self.catch_up(&mut feedback).await;
            self.venue.ready();
            // Every caller that asked to stop is answered once the writer has stopped.
            let mut shutdown: Vec<oneshot::Sender<()>> = Vec::new();
            let batch_max = self.limits.batch_max;
            let mut feedback_batch = Vec::with_capacity(batch_max);
            let mut request_batch = Vec::with_capacity(batch_max);
            loop {
                if !shutdown.is_empty() {
                    if self.keys_in_flight() == 0 {
                        break;
                    }
                    match tokio::time::timeout(self.limits.drain_max, feedback.recv()).await {
                        Ok(Some(f)) => feedback_batch.push(f),
                        _ => {
                            tracing::warn!("consumers did not drain in time; stopping anyway");
                            break;
                        }
                    }
                } else {
                    tokio::select! {
                        biased;
                        Some(f) = feedback.recv() => feedback_batch.push(f),
                        r = requests.recv() => match r {
                            Some(r) => request_batch.push(r),
                            None => break,
                        },
                    }
                }
                while feedback_batch.len() < batch_max {
                    match feedback.try_recv() {
                        Ok(f) => feedback_batch.push(f),
                        Err(_) => break,
                    }
                }
                if shutdown.is_empty() {
                    while request_batch.len() < batch_max {
                        match requests.try_recv() {
                            Ok(r) => request_batch.push(r),
                            Err(_) => break,
                        }
                    }
                }
                for f in feedback_batch.drain(..) {
                    self.apply_feedback(f);
                }
                for r in request_batch.drain(..) {
                    match r {
                        Envelope::Shutdown(reply) => shutdown.push(reply),
                        Envelope::Request(r) => self.venue.apply_request(&mut self.core, r),
                    }
                }
                self.commit();
            }
            // Refuse whatever is still queued rather than leave callers hanging.
            requests.close();
            while let Ok(r) = requests.try_recv() {
                match r {
                    Envelope::Request(r) => self.venue.refuse(r),
                    Envelope::Shutdown(reply) => drop(reply.send(())),
                }
            }
            for reply in shutdown {
                let _ = reply.send(());
            }
            tracing::info!("writer stopped");
        });
    }

    fn apply_feedback(&mut self, feedback: V::Feedback) {
        if let Some(deferred) = self.venue.apply_feedback(&mut self.core, feedback) {
            self.commit();
            self.venue.resume(&mut self.core, deferred);
        }
    }

    /// Re-publishes every event the consumers may not have applied (the relay's restart
    /// path), applying their feedback as it comes, until nothing is in flight. A writer
    /// whose commits relay processes publish only counts those events as in flight.
    async fn catch_up(&mut self, feedback: &mut mpsc::UnboundedReceiver<V::Feedback>) {
        let mut from = self.core.outbox.relay_position();
        let started = std::time::Instant::now();
        let mut relayed = 0usize;
        loop {
            let rows = outbox::rows_after(&mut *self.core.db, from, self.limits.relay_page_rows)
                .unwrap_or_else(|e| fatal("reading the outbox", e));
            let Some(last) = rows.last() else { break };
            from = last.seq;
            relayed += rows.len();
            self.venue.committing(&rows);
            self.publish(rows);
            while let Ok(f) = feedback.try_recv() {
                self.apply_feedback(f);
            }
            self.commit();
        }
        while self.limits.catch_up_waits && self.keys_in_flight() > 0 {
            match tokio::time::timeout(self.limits.catch_up_silence_max, feedback.recv()).await {
                Ok(Some(f)) => self.apply_feedback(f),
                _ => fatal("catching up", "the consumers went silent"),
            }
            while let Ok(f) = feedback.try_recv() {
                self.apply_feedback(f);
            }
            self.commit();
        }
        if relayed > 0 {
            tracing::info!(
                relayed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "consumers caught up"
            );
        }
    }

    fn keys_in_flight(&self) -> usize {
        let venue = &self.venue;
        self.core.outbox.keys_in_flight(|key| venue.consumed(key))
    }

    fn publish(&mut self, rows: Vec<OutboxRow>) {
        let venue = &self.venue;
        if !self.limits.relays_itself {
            self.core.outbox.track(&rows, |r| venue.publishes(r));
            return;
        }
        if let Err(e) = self
            .core
            .outbox
            .publish(&*self.core.log, rows, |r| venue.publishes(r))
        {
            fatal("publishing to the event log", e);
        }
    }

    /// Commits everything applied since the last commit, then publishes its events and runs
    /// what waited for it.
    fn commit(&mut self) {
        let now = self.core.clock.now_ms();
        let core = &mut self.core;
        core.batch.clear();
        core.batch.fence = core.fence.clone();
        let balances = core.accounts.flush(&mut core.batch);
        self.venue.stage(now, &mut core.batch);
        let venue = &self.venue;
        core.outbox
            .flush(&mut core.batch, |key| venue.consumed(key));
        let after = std::mem::take(&mut core.after_commit);
        if core.batch.writes.is_empty() {
            // Nothing to write (e.g. only duplicates were consumed).
            self.venue.durable(balances);
            let keys = self.keys_in_flight();
            self.venue.in_flight(keys);
            after.into_iter().for_each(|f| f());
            self.venue.published();
            return;
        }
        self.venue.committing(self.core.outbox.pending());
        let mut attempt = 0;
        while let Err(e) = self.core.db.commit(&self.core.batch) {
            attempt += 1;
            tracing::warn!(error = %e, attempt, "commit failed; retrying");
            if attempt == 5 || matches!(e, crate::StoreError::Fenced(_)) {
                fatal("committing a batch", e);
            }
            std::thread::sleep(Duration::from_millis(50 << attempt));
        }
        let events = self.core.outbox.take_committed();
        self.venue.durable(balances);
        // Publish before replying: once a caller holds its answer, the events it caused are
        // with the consumers (an embedded log) or queued for the broker in commit order (a
        // Kafka log, whose acknowledgements the next batch does not wait for).
        self.publish(events);
        let keys = self.keys_in_flight();
        self.venue.in_flight(keys);
        after.into_iter().for_each(|f| f());
        self.venue.published();
        self.core.accounts.committed();
    }
}

/// The request port: how callers (the API) reach a venue's writer. This is the in-process
/// port (a bounded queue: callers wait when it is full, which is the backpressure).
pub struct RequestPort<R> {
    requests: mpsc::Sender<Envelope<R>>,
}

impl<R> Clone for RequestPort<R> {
    fn clone(&self) -> Self {
        RequestPort {
            requests: self.requests.clone(),
        }
    }
}

/// The writer is gone (stopped or stopping).
#[derive(Debug, thiserror::Error)]
#[error("the writer has stopped")]
pub struct WriterStopped;

impl<R: Send + 'static> RequestPort<R> {
    /// A port and the receiving end for [`Writer::run`], queueing at most `capacity`.
    pub fn bounded(capacity: usize) -> (RequestPort<R>, mpsc::Receiver<Envelope<R>>) {
        let (requests, rx) = mpsc::channel(capacity);
        (RequestPort { requests }, rx)
    }

    pub async fn send(&self, request: R) -> Result<(), WriterStopped> {
        self.requests
            .send(Envelope::Request(request))
            .await
            .map_err(|_| WriterStopped)
    }

    /// Asks the writer to stop once what is in flight has settled; returns when it has.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Envelope::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
