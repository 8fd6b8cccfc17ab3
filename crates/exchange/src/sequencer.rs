//! The sequencer: the one thread that writes.
//!
//! Every state change — an order's hold, its row and its outbox event; a cancel request; a
//! deposit; the settlement of the engine's output — is applied here to an in-memory working
//! set (balances, open orders, cursors) and then committed to the store in one transaction
//! per batch. Batches form by themselves: while one commit is on its way to disk, new
//! requests queue up, and the next loop takes all of them (up to `batch_max`). Replies are
//! sent and outbox records published only after the commit, so an answered request is
//! durable (invariant 3) and the engine never sees an input the store has not got.
//!
//! Being the only writer is what lets the working set be authoritative: no other process
//! changes these rows behind its back, so a balance check is a map lookup, not a query.

use crate::error::{ErrorClass, ExchangeError, ExchangeResult};
use crate::events::{BookInput, BOOK_AGGREGATE};
use crate::market::{candle_of, candle_row, Committed};
use crate::reconcile::{self, BookVerdict};
use crate::rules::{NewAsset, RefData, SymbolUpdate, ValidOrder, OPEN_ORDERS_PER_USER_SYMBOL_MAX};
use crate::settlement::settle_trade;
use crate::shard::BookAudit;
use crate::Shared;
use agora_bus::EventLog;
use agora_core::accounts::{Accounts, PostError};
use agora_core::outbox::{self, Outbox};
use agora_core::{Clock, Database, WriteBatch};
use agora_engine::{DoneReason, Event, NewOrder, Side};
use agora_ledger::{Account, Balance, Bucket, Entry, EntryKind, LedgerError};
use agora_market::{candles::fold, Candle, Interval};
use agora_store::queries::Loads;
use agora_store::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub type Reply<T> = oneshot::Sender<ExchangeResult<T>>;

pub enum Request {
    PlaceOrder {
        user: u64,
        order: ValidOrder,
        reply: Reply<Placed>,
    },
    CancelOrder {
        user: u64,
        order: u64,
        reply: Reply<OrderRow>,
    },
    Deposit {
        user: u64,
        asset: u32,
        amount: i64,
        reply: Reply<BalanceRow>,
    },
    CreateUser {
        name: String,
        reply: Reply<UserRow>,
    },
    CreateAsset {
        asset: NewAsset,
        reply: Reply<AssetRow>,
    },
    CreateSymbol {
        symbol: SymbolRow,
        reply: Reply<SymbolRow>,
    },
    /// Halt or resume trading (halted symbols refuse new orders; cancels still work), or
    /// change the default self-trade prevention mode.
    UpdateSymbol {
        symbol: u32,
        update: SymbolUpdate,
        reply: Reply<SymbolRow>,
    },
    /// Stop taking requests, settle everything in flight, then exit.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The answer to a placement: the order, and whether this call created it (false when a
/// repeated client order id returned the original).
#[derive(Clone, Debug)]
pub struct Placed {
    pub order: OrderRow,
    pub created: bool,
}

/// What an engine shard produced for a run of one symbol's inputs.
#[derive(Debug)]
pub struct EngineOutput {
    pub symbol: u32,
    /// Offset of the last input consumed (the cursor to commit with these effects).
    pub last_input_seq: i64,
    pub next_trade_id: u64,
    /// How many log records were consumed, duplicates included.
    pub inputs: u64,
    pub events: Vec<Event>,
}

/// What engine shards send the sequencer, in one stream per shard.
pub(crate) enum ShardOutput {
    Engine(EngineOutput),
    /// A book audit, placed in the stream right behind the outputs it has seen.
    BookAudit(BookAudit),
}

#[derive(Clone, Copy, Debug)]
pub struct SequencerLimits {
    /// Most requests (and, separately, engine outputs) taken into one commit.
    pub batch_max: usize,
    /// Balances kept in memory before the cache is dropped and refilled lazily.
    pub balance_cache_max: usize,
    /// Outbox rows read per page while catching up after a restart.
    pub relay_page_rows: usize,
}

/// What `Exchange::start` already loaded from the store.
pub(crate) struct Recovered {
    pub refdata: RefData,
    pub open_orders: Vec<OrderRow>,
    pub cursors: Vec<CursorRow>,
}

/// Rows touched since the last commit.
#[derive(Default)]
struct Dirty {
    orders: FxHashSet<u64>,
    /// Orders that left `open` in this batch, kept until they are written.
    finished: FxHashMap<u64, OrderRow>,
    cursors: FxHashSet<u32>,
    candles: FxHashSet<(u32, Interval)>,
    /// Engine events settled in this batch, for the market read model.
    events: Vec<(u32, Vec<Event>)>,
    /// Client order ids placed in this batch, not yet findable in the store.
    client_ids: FxHashMap<(u64, String), u64>,
    replies: Vec<Box<dyn FnOnce() + Send>>,
    settled_inputs: u64,
}

pub(crate) struct Sequencer<S: Database> {
    store: S,
    clock: Arc<dyn Clock>,
    log: Arc<dyn EventLog>,
    shared: Arc<Shared>,
    limits: SequencerLimits,
    refdata: RefData,
    users: FxHashSet<u64>,
    user_names: FxHashSet<String>,
    accounts: Accounts,
    outbox: Outbox,
    open: FxHashMap<u64, OrderRow>,
    /// Open orders per (user, symbol), for the limit above.
    open_count: FxHashMap<(u64, u32), u32>,
    cursors: FxHashMap<u32, CursorRow>,
    /// The current candle of every series that has traded.
    candles: FxHashMap<(u32, Interval), Candle>,
    /// Latest trade time per symbol: trade times never go backwards, even if the clock does.
    last_trade_ms: FxHashMap<u32, i64>,
    feed: crossbeam_channel::Sender<Committed>,
    next: Counters,
    write: Changes,
    /// The store port's batch, refilled at each commit (its buffers reused).
    batch: WriteBatch,
    dirty: Dirty,
}

fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    // The store is the source of truth; if it cannot be read or written, carrying on would
    // diverge from it. Stop, and let recovery rebuild from what was committed.
    tracing::error!(error = %e, "{what}; stopping so recovery can replay from the store");
    eprintln!("fatal: {what}: {e}");
    std::process::abort();
}

impl<S: Database> Sequencer<S> {
    pub(crate) fn new(
        mut store: S,
        clock: Arc<dyn Clock>,
        log: Arc<dyn EventLog>,
        shared: Arc<Shared>,
        limits: SequencerLimits,
        recovered: Recovered,
        feed: crossbeam_channel::Sender<Committed>,
    ) -> StoreResult<Self> {
        let Recovered {
            refdata,
            open_orders,
            cursors,
        } = recovered;
        let loaded = Loads(&mut store).users()?;
        let users = loaded.iter().map(|u| u.id).collect();
        let user_names = loaded.into_iter().map(|u| u.name).collect();
        let accounts = Accounts::load(&mut store, limits.balance_cache_max)?;
        let outbox = Outbox::load(&mut store)?;
        let next = Loads(&mut store).counters()?;
        shared
            .trades
            .store(next.max_trade_seq as u64, Ordering::Release);
        let mut candles = FxHashMap::default();
        let mut last_trade_ms = FxHashMap::default();
        for row in Loads(&mut store).recent_candles(1)? {
            let (interval, candle) = candle_of(&row);
            if interval == Interval::M1 {
                last_trade_ms.insert(row.symbol, candle.open_ms);
            }
            candles.insert((row.symbol, interval), candle);
        }
        let mut open_count: FxHashMap<(u64, u32), u32> = FxHashMap::default();
        for o in &open_orders {
            *open_count.entry((o.user, o.symbol)).or_default() += 1;
        }
        Ok(Sequencer {
            store,
            clock,
            log,
            shared,
            limits,
            refdata,
            users,
            user_names,
            accounts,
            outbox,
            open: open_orders.into_iter().map(|o| (o.id, o)).collect(),
            open_count,
            cursors: cursors.into_iter().map(|c| (c.symbol, c)).collect(),
            candles,
            last_trade_ms,
            feed,
            next,
            write: Changes::default(),
            batch: WriteBatch::default(),
            dirty: Dirty::default(),
        })
    }

    /// Runs until shutdown: catch up the engine from the outbox, mark ready, then serve.
    pub(crate) fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut outputs: mpsc::UnboundedReceiver<ShardOutput>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| fatal("sequencer runtime", e));
        rt.block_on(async move {
            self.catch_up(&mut outputs).await;
            self.shared.ready.store(true, Ordering::Release);
            tracing::info!("exchange ready");
            let mut shutdown: Option<oneshot::Sender<()>> = None;
            let batch_max = self.limits.batch_max;
            let mut engine_batch = Vec::with_capacity(batch_max);
            let mut request_batch = Vec::with_capacity(batch_max);
            loop {
                if shutdown.is_some() {
                    if self.pending_inputs() == 0 {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(10), outputs.recv()).await {
                        Ok(Some(o)) => engine_batch.push(o),
                        _ => {
                            tracing::warn!("engine did not drain in time; stopping anyway");
                            break;
                        }
                    }
                } else {
                    tokio::select! {
                        biased;
                        Some(o) = outputs.recv() => engine_batch.push(o),
                        r = requests.recv() => match r {
                            Some(r) => request_batch.push(r),
                            None => break,
                        },
                    }
                }
                while engine_batch.len() < batch_max {
                    match outputs.try_recv() {
                        Ok(o) => engine_batch.push(o),
                        Err(_) => break,
                    }
                }
                if shutdown.is_none() {
                    while request_batch.len() < batch_max {
                        match requests.try_recv() {
                            Ok(r) => request_batch.push(r),
                            Err(_) => break,
                        }
                    }
                }
                for o in engine_batch.drain(..) {
                    self.apply_output(o);
                }
                for r in request_batch.drain(..) {
                    if let Request::Shutdown { reply } = r {
                        shutdown = Some(reply);
                        continue;
                    }
                    self.apply_request(r);
                }
                self.commit();
            }
            // Refuse whatever is still queued rather than leave callers hanging.
            requests.close();
            while let Ok(r) = requests.try_recv() {
                refuse(r);
            }
            if let Some(reply) = shutdown {
                let _ = reply.send(());
            }
            tracing::info!("sequencer stopped");
        });
    }

    fn pending_inputs(&self) -> u64 {
        self.shared.pending_inputs()
    }

    /// Re-publishes every book input the engine may not have settled (the relay's restart
    /// path), settling as it goes, until the engine has caught up with the outbox.
    async fn catch_up(&mut self, outputs: &mut mpsc::UnboundedReceiver<ShardOutput>) {
        let mut from = self.outbox.relay_position();
        let started = std::time::Instant::now();
        let mut relayed = 0usize;
        loop {
            let rows = outbox::rows_after(&mut self.store, from, self.limits.relay_page_rows)
                .unwrap_or_else(|e| fatal("reading the outbox", e));
            let Some(last) = rows.last() else { break };
            from = last.seq;
            relayed += rows.len();
            count_in_flight(&self.shared, &rows);
            self.publish(rows);
            while let Ok(o) = outputs.try_recv() {
                self.apply_output(o);
            }
            self.commit();
        }
        while self.pending_inputs() > 0 {
            match tokio::time::timeout(Duration::from_secs(30), outputs.recv()).await {
                Ok(Some(o)) => self.apply_output(o),
                _ => fatal("catching up", "engine produced no output for 30 s"),
            }
            while let Ok(o) = outputs.try_recv() {
                self.apply_output(o);
            }
            self.commit();
        }
        self.shared
            .replayed_at_start
            .store(relayed as u64, Ordering::Release);
        if relayed > 0 {
            tracing::info!(
                relayed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "engine caught up"
            );
        }
    }

    /// Hands book inputs to the log; `count_in_flight` has counted them.
    fn publish(&mut self, rows: Vec<OutboxRow>) {
        if let Err(e) = self
            .outbox
            .publish(&*self.log, rows, |r| r.aggregate_type == BOOK_AGGREGATE)
        {
            fatal("publishing to the event log", e);
        }
    }

    fn commit(&mut self) {
        let now = self.clock.now_ms();
        let d = std::mem::take(&mut self.dirty);
        let w = &mut self.write;
        for id in &d.orders {
            let row = self.open.get(id).or_else(|| d.finished.get(id));
            let mut row = row.expect("dirty order is open or finished").clone();
            row.updated_ms = now;
            w.orders.push(row);
        }
        for symbol in &d.cursors {
            w.cursors.push(self.cursors[symbol]);
        }
        for &(symbol, interval) in &d.candles {
            w.candles.push(candle_row(
                symbol,
                interval,
                &self.candles[&(symbol, interval)],
            ));
        }
        self.batch.clear();
        let balances = self.accounts.flush(&mut self.batch);
        w.write_to(&mut self.batch);
        // A symbol's book inputs are consumed up to its engine cursor (committed, or in this
        // batch).
        let (cursors, refdata) = (&self.cursors, &self.refdata);
        self.outbox.flush(&mut self.batch, |name| {
            refdata
                .symbol_by_name
                .get(name)
                .and_then(|id| cursors.get(id))
                .map_or(0, |c| c.input_seq)
        });
        if self.batch.is_empty() {
            // Nothing to write (e.g. only duplicates were consumed): settled as they are.
            self.shared
                .settled
                .fetch_add(d.settled_inputs, Ordering::AcqRel);
            d.replies.into_iter().for_each(|r| r());
            return;
        }
        count_in_flight(&self.shared, self.outbox.pending());
        let mut attempt = 0;
        while let Err(e) = self.store.commit(&self.batch) {
            attempt += 1;
            tracing::warn!(error = %e, attempt, "commit failed; retrying");
            if attempt == 5 {
                fatal("committing a batch", e);
            }
            std::thread::sleep(Duration::from_millis(50 << attempt));
        }
        let w = std::mem::take(&mut self.write);
        let outbox = self.outbox.take_committed();
        self.shared
            .trades
            .fetch_add(w.trades.len() as u64, Ordering::AcqRel);
        let committed = Committed {
            events: d.events,
            trades: w.trades,
            candles: w.candles,
            orders: w.orders,
            balances,
        };
        self.shared
            .settled
            .fetch_add(d.settled_inputs, Ordering::AcqRel);
        // Publish before replying (the inputs have counted as in flight since before the
        // commit): once a caller holds its 202, the engine has its input.
        self.publish(outbox);
        d.replies.into_iter().for_each(|r| r());
        if !committed.is_empty() && self.feed.send(committed).is_err() {
            fatal("feeding the market read model", "market thread gone");
        }
        self.accounts.committed();
    }

    fn apply_request(&mut self, request: Request) {
        if !self.shared.ready.load(Ordering::Acquire) {
            return refuse(request);
        }
        match request {
            Request::PlaceOrder { user, order, reply } => {
                let result = self.place(user, order);
                self.reply_after_commit(reply, result);
            }
            Request::CancelOrder { user, order, reply } => {
                let result = self.cancel(user, order);
                self.reply_after_commit(reply, result);
            }
            Request::Deposit {
                user,
                asset,
                amount,
                reply,
            } => {
                let result = self.deposit(user, asset, amount);
                self.reply_after_commit(reply, result);
            }
            Request::CreateUser { name, reply } => {
                let result = self.create_user(name);
                self.reply_after_commit(reply, result);
            }
            Request::CreateAsset { asset, reply } => {
                let result = self.create_asset(asset);
                self.reply_after_commit(reply, result);
            }
            Request::CreateSymbol { symbol, reply } => {
                let result = self.create_symbol(symbol);
                self.reply_after_commit(reply, result);
            }
            Request::UpdateSymbol {
                symbol,
                update,
                reply,
            } => {
                let result = self.update_symbol(symbol, update);
                self.reply_after_commit(reply, result);
            }
            Request::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    /// Successes wait for the commit; refusals changed nothing and go out at once.
    fn reply_after_commit<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        result: ExchangeResult<T>,
    ) {
        match result {
            Ok(_) => self.dirty.replies.push(Box::new(move || {
                let _ = reply.send(result);
            })),
            Err(_) => {
                let _ = reply.send(result);
            }
        }
    }

    fn balance(&mut self, user: u64, asset: u32) -> Balance {
        self.accounts
            .balance(&mut self.store, user, asset)
            .unwrap_or_else(|e| fatal("loading a balance", e))
    }

    /// Applies a balanced entry to the working set: all postings or none.
    fn post(&mut self, entry: Entry, ref_id: Option<i64>) -> Result<(), LedgerError> {
        let now = self.clock.now_ms();
        match self.accounts.post(&mut self.store, entry, ref_id, now) {
            Ok(_) => Ok(()),
            Err(PostError::Ledger(e)) => Err(e),
            Err(PostError::Store(e)) => fatal("loading a balance", e),
        }
    }

    fn append_outbox(&mut self, input: &BookInput) -> i64 {
        let symbol = &self.refdata.symbols[&input.symbol()];
        self.outbox.append(
            BOOK_AGGREGATE,
            &symbol.name,
            input.event_type(),
            serde_json::to_string(input).expect("book input serializes"),
            self.clock.now_ms(),
        )
    }

    fn require_user(&self, user: u64) -> ExchangeResult<()> {
        if self.users.contains(&user) {
            Ok(())
        } else {
            Err(ExchangeError::new(
                ErrorClass::Unauthenticated,
                "UNKNOWN_USER",
                format!("no user {user}"),
            ))
        }
    }

    fn place(&mut self, user: u64, o: ValidOrder) -> ExchangeResult<Placed> {
        self.require_user(user)?;
        let symbol = &self.refdata.symbols[&o.symbol];
        if symbol.status != SymbolStatus::Trading {
            return Err(ExchangeError::new(
                ErrorClass::Conflict,
                "SYMBOL_NOT_TRADING",
                format!("{} is not trading", symbol.name),
            ));
        }
        if let Some(client_id) = &o.client_order_id {
            let existing = match self.dirty.client_ids.get(&(user, client_id.clone())) {
                Some(id) => self.open.get(id).cloned(),
                None => Loads(&mut self.store)
                    .order_by_client_id(user, client_id)
                    .unwrap_or_else(|e| fatal("looking up a client order id", e)),
            };
            if let Some(order) = existing {
                return Ok(Placed {
                    order,
                    created: false,
                });
            }
        }
        let open = self.open_count.get(&(user, o.symbol)).copied().unwrap_or(0);
        if open >= OPEN_ORDERS_PER_USER_SYMBOL_MAX {
            return Err(ExchangeError::new(
                ErrorClass::Rejected,
                "TOO_MANY_OPEN_ORDERS",
                format!("at most {OPEN_ORDERS_PER_USER_SYMBOL_MAX} open orders per symbol"),
            ));
        }
        let id = self.next.max_order_id + 1;
        let hold = Entry::transfer(
            EntryKind::Hold,
            user,
            o.hold_asset,
            Bucket::Available,
            Bucket::Held,
            o.hold_amount,
        )
        .expect("a transfer balances");
        if let Err(e) = self.post(hold, Some(id as i64)) {
            let available = self.balance(user, o.hold_asset).available;
            let asset = self.refdata.asset(o.hold_asset);
            tracing::debug!(error = %e, "hold refused");
            return Err(ExchangeError::new(
                ErrorClass::Rejected,
                "INSUFFICIENT_FUNDS",
                format!(
                    "order needs {} {} held, {} available",
                    agora_ledger::units::format(o.hold_amount, asset.scale),
                    asset.code,
                    agora_ledger::units::format(available, asset.scale)
                ),
            ));
        }
        self.next.max_order_id = id;
        let accept_seq = self.append_outbox(&BookInput::OrderAccepted {
            symbol: o.symbol,
            order: NewOrder {
                id,
                user,
                side: o.side,
                kind: o.kind,
                stp: o.stp,
            },
        });
        let now = self.clock.now_ms();
        let row = OrderRow {
            id,
            user,
            symbol: o.symbol,
            side: o.side,
            order_type: o.order_type,
            time_in_force: o.time_in_force,
            price: o.price,
            quantity: o.quantity,
            quote_quantity: o.quote_quantity,
            client_order_id: o.client_order_id.clone(),
            stp: o.stp,
            status: OrderStatus::New,
            filled_qty: 0,
            filled_quote: 0,
            fee_paid: 0,
            hold_asset: o.hold_asset,
            held: o.hold_amount,
            accept_seq,
            cancel_requested: false,
            created_ms: now,
            updated_ms: now,
        };
        if let Some(client_id) = o.client_order_id {
            self.dirty.client_ids.insert((user, client_id), id);
        }
        self.open.insert(id, row.clone());
        *self.open_count.entry((user, o.symbol)).or_default() += 1;
        self.dirty.orders.insert(id);
        Ok(Placed {
            order: row,
            created: true,
        })
    }

    fn cancel(&mut self, user: u64, id: u64) -> ExchangeResult<OrderRow> {
        self.require_user(user)?;
        let not_found = || crate::order_not_found(id);
        let Some(order) = self.open.get(&id) else {
            // Closed, someone else's, or never existed: only the owner learns which.
            let row = Loads(&mut self.store)
                .order(id)
                .unwrap_or_else(|e| fatal("looking up an order", e));
            return match row {
                Some(row) if row.user == user => Err(ExchangeError::new(
                    ErrorClass::Conflict,
                    "ORDER_NOT_OPEN",
                    format!(
                        "order {id} is already {}",
                        crate::rules::enum_name(&row.status)
                    ),
                )),
                _ => Err(not_found()),
            };
        };
        if order.user != user {
            return Err(not_found());
        }
        if order.cancel_requested {
            return Ok(order.clone()); // idempotent: one cancel input per order
        }
        let symbol = order.symbol;
        self.append_outbox(&BookInput::CancelRequested {
            symbol,
            order: id,
            user,
        });
        let order = self.open.get_mut(&id).expect("checked above");
        order.cancel_requested = true;
        self.dirty.orders.insert(id);
        Ok(order.clone())
    }

    fn deposit(&mut self, user: u64, asset: u32, amount: i64) -> ExchangeResult<BalanceRow> {
        self.require_user(user)
            .map_err(|e| ExchangeError::new(ErrorClass::NotFound, e.code, e.detail))?;
        assert!(amount > 0 && self.refdata.assets.contains_key(&asset));
        let entry = Entry::new(
            EntryKind::Deposit,
            vec![
                agora_ledger::Posting {
                    account: Account::External,
                    asset,
                    amount: -amount,
                },
                agora_ledger::Posting {
                    account: Account::User {
                        user,
                        bucket: Bucket::Available,
                    },
                    asset,
                    amount,
                },
            ],
        )
        .expect("a deposit balances");
        self.post(entry, None).map_err(|_| {
            ExchangeError::invalid(
                "OUT_OF_RANGE",
                "the balance would exceed the largest amount",
            )
        })?;
        let b = self.balance(user, asset);
        Ok(BalanceRow {
            user,
            asset,
            available: b.available,
            held: b.held,
        })
    }

    fn create_user(&mut self, name: String) -> ExchangeResult<UserRow> {
        if !self.user_names.insert(name.clone()) {
            return Err(ExchangeError::new(
                ErrorClass::Conflict,
                "ALREADY_EXISTS",
                format!("user {name:?} exists"),
            ));
        }
        self.next.max_user_id += 1;
        let row = UserRow {
            id: self.next.max_user_id,
            name,
            created_ms: self.clock.now_ms(),
        };
        self.users.insert(row.id);
        self.write.users.push(row.clone());
        let shared = self.shared.clone();
        let id = row.id;
        self.dirty.replies.push(Box::new(move || {
            shared.users.write().expect("lock").insert(id);
        }));
        Ok(row)
    }

    fn create_asset(&mut self, asset: NewAsset) -> ExchangeResult<AssetRow> {
        crate::rules::validate_asset(&asset, &self.refdata)?;
        self.next.max_asset_id += 1;
        let row = AssetRow {
            id: self.next.max_asset_id,
            code: asset.code,
            scale: asset.scale,
        };
        self.refdata.add_asset(row.clone());
        self.write.assets.push(row.clone());
        self.share_refdata();
        Ok(row)
    }

    fn create_symbol(&mut self, mut symbol: SymbolRow) -> ExchangeResult<SymbolRow> {
        if self.refdata.symbol_by_name.contains_key(&symbol.name) {
            return Err(ExchangeError::new(
                ErrorClass::Conflict,
                "ALREADY_EXISTS",
                format!("symbol {} exists", symbol.name),
            ));
        }
        self.next.max_symbol_id += 1;
        symbol.id = self.next.max_symbol_id;
        self.refdata.add_symbol(symbol.clone());
        let spec = self.refdata.book_spec(&symbol);
        self.append_outbox(&BookInput::SymbolListed {
            symbol: symbol.id,
            base_unit: spec.base_unit,
            lot_size: spec.lot_size,
        });
        self.write.symbols.push(symbol.clone());
        self.share_refdata();
        Ok(symbol)
    }

    fn update_symbol(&mut self, id: u32, update: SymbolUpdate) -> ExchangeResult<SymbolRow> {
        let mut symbol = self.refdata.symbols[&id].clone();
        symbol.status = update.status.unwrap_or(symbol.status);
        symbol.default_stp = update
            .default_self_trade_prevention_mode
            .unwrap_or(symbol.default_stp);
        self.refdata.add_symbol(symbol.clone());
        self.write.symbols.push(symbol.clone());
        self.share_refdata();
        Ok(symbol)
    }

    /// Makes reference data visible to the API once the batch holding it has committed.
    fn share_refdata(&mut self) {
        let snapshot = Arc::new(self.refdata.clone());
        let shared = self.shared.clone();
        self.dirty.replies.push(Box::new(move || {
            *shared.refdata.write().expect("lock") = snapshot;
        }));
    }

    fn apply_output(&mut self, out: ShardOutput) {
        match out {
            ShardOutput::Engine(o) => self.apply_engine_output(o),
            ShardOutput::BookAudit(a) => self.audit_book(a),
        }
    }

    /// Compares a book with the store at the cut its audit marks in the output stream:
    /// every output of the symbol up to the snapshot's input has been applied to the
    /// working set, and none after it. Committing here, before any later output, puts the
    /// store exactly at that cut; orders accepted after it are not in the engine's book
    /// yet and are left out by their `accept_seq`. Reads once per book per
    /// reconciliation, on this thread, like a balance miss does.
    fn audit_book(&mut self, audit: BookAudit) {
        let BookAudit {
            symbol,
            snapshot,
            reply,
            in_flight,
        } = audit;
        let verdict = match snapshot {
            None => BookVerdict::NotCompared("the engine has no book for it yet".into()),
            Some(snapshot) => {
                self.commit();
                let name = self
                    .refdata
                    .symbols
                    .get(&symbol)
                    .map_or_else(|| symbol.to_string(), |s| s.name.clone());
                let orders = Loads(&mut self.store).book_orders(symbol, snapshot.input_seq);
                let cursors = Loads(&mut self.store).cursors();
                match (orders, cursors) {
                    (Ok(orders), Ok(cursors)) => {
                        let cursor = cursors.into_iter().find(|c| c.symbol == symbol);
                        BookVerdict::Compared(reconcile::book_problem(
                            &name, &snapshot, &orders, cursor,
                        ))
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(error = %e, "book audit could not read the store");
                        BookVerdict::NotCompared(format!("the store could not be read: {e}"))
                    }
                }
            }
        };
        drop(in_flight); // before answering: the next reconciliation may audit this book
        let _ = reply.send(verdict);
    }

    fn apply_engine_output(&mut self, out: EngineOutput) {
        self.dirty.settled_inputs += out.inputs;
        let cursor = self.cursors.get(&out.symbol).map_or(0, |c| c.input_seq);
        if out.last_input_seq <= cursor {
            assert!(out.events.is_empty(), "events for inputs already settled");
            return; // duplicates of inputs settled before a restart
        }
        let symbol = self.refdata.symbols[&out.symbol].clone();
        let spec = self.refdata.book_spec(&symbol);
        let last = self.last_trade_ms.get(&symbol.id).copied().unwrap_or(0);
        let now = self.clock.now_ms().max(last);
        for &event in &out.events {
            match event {
                Event::Trade {
                    id,
                    price,
                    qty,
                    taker,
                    maker,
                    taker_side,
                    ..
                } => {
                    let (buy_id, sell_id) = match taker_side {
                        Side::Buy => (taker, maker),
                        Side::Sell => (maker, taker),
                    };
                    let buy = &self.open[&buy_id];
                    let sell = &self.open[&sell_id];
                    let s = settle_trade(&symbol, spec, price, qty, buy, sell, taker_side)
                        .expect("settlement entries balance");
                    let (buyer, seller) = (buy.user, sell.user);
                    self.post(s.entry.clone(), Some(id as i64))
                        .expect("a trade never exceeds the holds that back it");
                    for (order_id, held, fee) in [
                        (buy_id, s.buyer_held_after, s.buyer_fee),
                        (sell_id, s.seller_held_after, s.seller_fee),
                    ] {
                        let o = self.open.get_mut(&order_id).expect("trading order is open");
                        o.filled_qty += qty;
                        o.filled_quote += s.notional;
                        o.fee_paid += fee;
                        o.held = held;
                        o.status = OrderStatus::PartiallyFilled;
                        self.dirty.orders.insert(order_id);
                    }
                    self.last_trade_ms.insert(symbol.id, now);
                    for interval in Interval::ALL {
                        let key = (symbol.id, interval);
                        let candle = fold(
                            self.candles.get(&key).copied(),
                            interval,
                            now,
                            price,
                            qty,
                            s.notional,
                        );
                        self.candles.insert(key, candle);
                        self.dirty.candles.insert(key);
                    }
                    self.next.max_trade_seq += 1;
                    self.write.trades.push(TradeRow {
                        seq: self.next.max_trade_seq,
                        symbol: symbol.id,
                        trade_id: id,
                        price,
                        qty,
                        quote_qty: s.notional,
                        buy_order: buy_id,
                        sell_order: sell_id,
                        buyer,
                        seller,
                        taker_side,
                        buyer_fee: s.buyer_fee,
                        seller_fee: s.seller_fee,
                        created_ms: now,
                    });
                }
                Event::Done { order, reason, .. } => {
                    let mut row = self.open.remove(&order).expect("finished order was open");
                    let key = (row.user, row.symbol);
                    match self.open_count.get_mut(&key) {
                        Some(n) if *n > 1 => *n -= 1,
                        _ => {
                            self.open_count.remove(&key);
                        }
                    }
                    if row.held > 0 {
                        let release = Entry::transfer(
                            EntryKind::Release,
                            row.user,
                            row.hold_asset,
                            Bucket::Held,
                            Bucket::Available,
                            row.held,
                        )
                        .expect("a transfer balances");
                        self.post(release, Some(order as i64))
                            .expect("an order's hold is held");
                        row.held = 0;
                    }
                    row.status = match reason {
                        DoneReason::Filled => OrderStatus::Filled,
                        DoneReason::Canceled => OrderStatus::Canceled,
                        DoneReason::Expired => OrderStatus::Expired,
                        DoneReason::ExpiredInMatch => OrderStatus::ExpiredInMatch,
                        DoneReason::Rejected => OrderStatus::Rejected,
                    };
                    self.dirty.orders.insert(order);
                    self.dirty.finished.insert(order, row);
                }
                Event::Rested { .. } | Event::CancelRejected { .. } => {}
            }
        }
        self.dirty.events.push((out.symbol, out.events));
        self.cursors.insert(
            out.symbol,
            CursorRow {
                symbol: out.symbol,
                input_seq: out.last_input_seq,
                next_trade_id: out.next_trade_id,
            },
        );
        self.dirty.cursors.insert(out.symbol);
    }
}

/// Answers a request that will not be served (not ready, or shutting down).
fn refuse(request: Request) {
    let e = || ExchangeError::unavailable("the exchange is starting or stopping; retry shortly");
    match request {
        Request::PlaceOrder { reply, .. } => drop(reply.send(Err(e()))),
        Request::CancelOrder { reply, .. } => drop(reply.send(Err(e()))),
        Request::Deposit { reply, .. } => drop(reply.send(Err(e()))),
        Request::CreateUser { reply, .. } => drop(reply.send(Err(e()))),
        Request::CreateAsset { reply, .. } => drop(reply.send(Err(e()))),
        Request::CreateSymbol { reply, .. } => drop(reply.send(Err(e()))),
        Request::UpdateSymbol { reply, .. } => drop(reply.send(Err(e()))),
        Request::Shutdown { reply } => drop(reply.send(())),
    }
}

/// Counts book inputs as in flight. Called before they are committed, so that no input is
/// ever in the store (an open order, say) while "nothing pending" can be observed.
fn count_in_flight(shared: &Shared, rows: &[OutboxRow]) {
    let inputs = rows
        .iter()
        .filter(|r| r.aggregate_type == BOOK_AGGREGATE)
        .count();
    shared.published.fetch_add(inputs as u64, Ordering::AcqRel);
}
