//! The exchange as a venue on the core's writer (`agora_core::writer`).
//!
//! Every state change of the exchange — an order's hold, its row and its outbox event; a
//! cancel request; a deposit; the settlement of the engine's output — is applied here to
//! the exchange's working set (open orders, engine cursors, candles, reference data) and to
//! the core's (balances, journal, outbox), and committed with everything else of its batch
//! by the writer. Replies go out and book inputs are published only after the commit, so an
//! answered request is durable (invariant 3) and the engine never sees an input the store
//! has not got.
//!
//! Being the only writer is what lets the working set be authoritative: no other process
//! changes these rows behind its back, so a balance check is a map lookup, not a query.

use crate::error::{ErrorClass, ExchangeError, ExchangeResult};
use crate::events::{BookInput, BOOK_AGGREGATE};
use crate::market::{candle_of, candle_row, Committed};
use crate::reconcile::{self, BookVerdict};
use crate::rules::{NewAsset, RefData, SymbolUpdate, ValidOrder, OPEN_ORDERS_PER_USER_SYMBOL_MAX};
use crate::settled::{Settled, SettledPublisher};
use crate::settlement::settle_trade;
use crate::shard::{BookAudit, BookSnapshot, InFlight};
use crate::Shared;
use agora_core::accounts::{BalanceRow, PostError};
use agora_core::outbox::{consumer_offsets, put_consumer_offset, OutboxRow};
use agora_core::writer::{fatal, Core, Venue};
use agora_core::{Database, WriteBatch};
use agora_engine::{DoneReason, Event, NewOrder, Side};
use agora_ledger::{Account, Balance, Bucket, Entry, EntryKind, LedgerError};
use agora_market::{candles::fold, Candle, Interval};
use agora_store::queries::Loads;
use agora_store::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;

pub type Reply<T> = oneshot::Sender<ExchangeResult<T>>;

/// The writer's answer to a cancel.
pub enum Cancel {
    /// The order is open: its cancel is on its way to the book.
    Requested(OrderRow),
    /// The order is neither open nor among the recently closed ones (an old order,
    /// someone else's, or never placed). Which of these, the caller reads from the store
    /// itself, off the writer's thread: a store read on the single writer thread is a round
    /// trip to the database that every other request would wait behind. Anything the writer
    /// closed is committed by the time this answer arrives.
    NotOpen,
}

pub enum Request {
    PlaceOrder {
        user: u64,
        order: ValidOrder,
        reply: Reply<Placed>,
    },
    CancelOrder {
        user: u64,
        order: u64,
        reply: Reply<Cancel>,
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
    /// Distributed mode: audit a book through the log (the engine's snapshot comes back in
    /// its output, at the cut of the audit input).
    AuditBook {
        symbol: u32,
        reply: oneshot::Sender<BookVerdict>,
        in_flight: InFlight,
    },
}

/// The answer to a placement: the order, and whether this call created it (false when a
/// repeated client order id returned the original).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Placed {
    pub order: OrderRow,
    pub created: bool,
}

/// What an engine shard produced for a run of one symbol's inputs.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EngineOutput {
    pub symbol: u32,
    /// Sequence (outbox `seq`) of the first input with effects here, and of the last input
    /// consumed (the cursor to commit with these effects). A run of only duplicates has
    /// both at the cursor already committed, and no events.
    pub first_input_seq: i64,
    pub last_input_seq: i64,
    pub next_trade_id: u64,
    pub events: Vec<Event>,
    /// Distributed mode: where the input sits in the book-inputs topic. Committed with the
    /// effects, it is where an engine that takes the partition over resumes reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_position: Option<LogPosition>,
    /// Distributed mode: where this output sits in the engine-output topic (set by the
    /// settlement consumer): where settlement resumes reading.
    #[serde(skip)]
    pub output_position: Option<LogPosition>,
    /// The book right after an `AuditRequested` input (distributed mode's book audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<BookSnapshot>,
}

/// A record's place in a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogPosition {
    pub partition: u32,
    pub offset: i64,
}

/// `consumer_offsets` names of the distributed mode's consumers.
pub const ENGINE_CONSUMER: &str = "exchange-engine";
pub const SETTLEMENT_CONSUMER: &str = "exchange-settlement";

/// What engine shards send the sequencer, in one stream per shard.
pub(crate) enum ShardOutput {
    Engine(EngineOutput),
    /// A book audit, placed in the stream right behind the outputs it has seen.
    BookAudit(BookAudit),
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
    /// The cursor before this batch of every symbol it settled output for (the settled
    /// feed says which cursor each symbol's record follows).
    prev_cursors: BTreeMap<u32, i64>,
    /// Client order ids placed in this batch, not yet findable in the store.
    client_ids: FxHashMap<(u64, String), u64>,
    /// Log positions moved in this batch.
    positions: FxHashSet<(&'static str, u32)>,
}

/// The last [`RecentlyClosed::CAPACITY`] finished orders: owner and final status.
#[derive(Default)]
struct RecentlyClosed {
    by_id: FxHashMap<u64, (u64, OrderStatus)>,
    oldest_first: std::collections::VecDeque<u64>,
}

impl RecentlyClosed {
    /// About 2 MiB.
    const CAPACITY: usize = 65_536;

    fn insert(&mut self, order: u64, user: u64, status: OrderStatus) {
        if self.oldest_first.len() == Self::CAPACITY {
            if let Some(oldest) = self.oldest_first.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
        self.oldest_first.push_back(order);
        self.by_id.insert(order, (user, status));
    }

    fn get(&self, order: u64) -> Option<(u64, &OrderStatus)> {
        self.by_id.get(&order).map(|(user, status)| (*user, status))
    }
}

pub(crate) struct ExchangeVenue {
    shared: Arc<Shared>,
    refdata: RefData,
    users: FxHashSet<u64>,
    user_names: FxHashSet<String>,
    open: FxHashMap<u64, OrderRow>,
    /// Who owned the most recently finished orders and how they ended: a cancel racing its
    /// order's fill (common: clients cancel what they believe still rests) is answered
    /// from memory.
    recently_closed: RecentlyClosed,
    /// Open orders per (user, symbol), for the limit above.
    open_count: FxHashMap<(u64, u32), u32>,
    cursors: FxHashMap<u32, CursorRow>,
    /// The current candle of every series that has traded.
    candles: FxHashMap<(u32, Interval), Candle>,
    /// Latest trade time per symbol: trade times never go backwards, even if the clock does.
    last_trade_ms: FxHashMap<u32, i64>,
    feed: crossbeam_channel::Sender<Committed>,
    /// A writer without the market role: publishes each commit for market processes.
    settled: Option<SettledPublisher>,
    /// Distributed mode: the furthest log position applied per (consumer, partition), this
    /// run (positions only move forward: an output replayed by an engine that lost its
    /// partition carries an older one).
    positions: FxHashMap<(&'static str, u32), i64>,
    /// Distributed mode: book audits sent through the log, by the seq of their input.
    audits: FxHashMap<i64, (oneshot::Sender<BookVerdict>, InFlight)>,
    next: Counters,
    write: Changes,
    dirty: Dirty,
    /// What the batch being committed made true, for the market read model.
    committed: Option<Committed>,
}

impl ExchangeVenue {
    pub(crate) fn new(
        db: &mut dyn Database,
        shared: Arc<Shared>,
        recovered: Recovered,
        feed: crossbeam_channel::Sender<Committed>,
        settled: Option<SettledPublisher>,
    ) -> StoreResult<Self> {
        let Recovered {
            refdata,
            open_orders,
            cursors,
        } = recovered;
        let mut loads = Loads(db);
        let loaded = loads.users()?;
        let users = loaded.iter().map(|u| u.id).collect();
        let user_names = loaded.into_iter().map(|u| u.name).collect();
        let next = loads.counters()?;
        // Positions only move forward, also across restarts: an output replayed after one
        // carries an older position than the one stored.
        let mut positions = FxHashMap::default();
        for consumer in [ENGINE_CONSUMER, SETTLEMENT_CONSUMER] {
            for (partition, position) in consumer_offsets(&mut *loads.0, consumer)? {
                if let Ok(partition) = partition.parse::<u32>() {
                    positions.insert((consumer, partition), position);
                }
            }
        }
        shared
            .trades
            .store(next.max_trade_seq as u64, Ordering::Release);
        let mut candles = FxHashMap::default();
        let mut last_trade_ms = FxHashMap::default();
        for row in loads.recent_candles(1)? {
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
        Ok(ExchangeVenue {
            shared,
            refdata,
            users,
            user_names,
            open: open_orders.into_iter().map(|o| (o.id, o)).collect(),
            recently_closed: RecentlyClosed::default(),
            open_count,
            cursors: cursors.into_iter().map(|c| (c.symbol, c)).collect(),
            candles,
            last_trade_ms,
            feed,
            settled,
            positions,
            audits: FxHashMap::default(),
            next,
            write: Changes::default(),
            dirty: Dirty::default(),
            committed: None,
        })
    }
}

impl Venue for ExchangeVenue {
    type Request = Request;
    type Feedback = ShardOutput;
    type Deferred = BookAudit;

    fn apply_request(&mut self, core: &mut Core, request: Request) {
        self.apply(core, request);
    }

    fn apply_feedback(&mut self, core: &mut Core, feedback: ShardOutput) -> Option<BookAudit> {
        match feedback {
            ShardOutput::Engine(o) => self.apply_engine_output(core, o),
            // Compared after the outputs before it are committed (see `audit_book`).
            ShardOutput::BookAudit(a) if a.snapshot.is_some() => Some(a),
            ShardOutput::BookAudit(a) => {
                self.audit_book(core, a);
                None
            }
        }
    }

    fn resume(&mut self, core: &mut Core, audit: BookAudit) {
        self.audit_book(core, audit);
    }

    fn refuse(&mut self, request: Request) {
        refuse(request);
    }

    fn consumed(&self, symbol_name: &str) -> i64 {
        self.refdata
            .symbol_by_name
            .get(symbol_name)
            .and_then(|id| self.cursors.get(id))
            .map_or(0, |c| c.input_seq)
    }

    fn publishes(&self, row: &OutboxRow) -> bool {
        row.aggregate_type == BOOK_AGGREGATE
    }

    fn stage(&mut self, now_ms: i64, batch: &mut WriteBatch) {
        let d = &mut self.dirty;
        let w = &mut self.write;
        for id in d.orders.drain() {
            let row = self.open.get(&id).or_else(|| d.finished.get(&id));
            let mut row = row.expect("dirty order is open or finished").clone();
            row.updated_ms = now_ms;
            w.orders.push(row);
        }
        d.finished.clear();
        d.client_ids.clear();
        for symbol in d.cursors.drain() {
            w.cursors.push(self.cursors[&symbol]);
        }
        for (consumer, partition) in d.positions.drain() {
            let offset = self.positions[&(consumer, partition)];
            put_consumer_offset(batch, consumer, &partition.to_string(), offset);
        }
        for (symbol, interval) in d.candles.drain() {
            w.candles.push(candle_row(
                symbol,
                interval,
                &self.candles[&(symbol, interval)],
            ));
        }
        w.write_to(batch);
    }

    fn committing(&mut self, events: &[OutboxRow]) {
        count_in_flight(&self.shared, events);
    }

    fn durable(&mut self, balances: Vec<BalanceRow>) {
        let w = std::mem::take(&mut self.write);
        self.shared
            .trades
            .fetch_add(w.trades.len() as u64, Ordering::AcqRel);
        let committed = Committed {
            events: std::mem::take(&mut self.dirty.events),
            trades: w.trades,
            candles: w.candles,
            orders: w.orders,
            balances,
        };
        let prev_cursors = std::mem::take(&mut self.dirty.prev_cursors);
        if let Some(settled) = &self.settled {
            let cursors = prev_cursors
                .into_iter()
                .map(|(symbol, prev)| (symbol, (prev, self.cursors[&symbol].input_seq)))
                .collect();
            let records = crate::settled::records_of(&committed, &cursors, &self.refdata);
            if !records.is_empty() {
                settled.publish(records);
            }
        }
        self.committed = (!committed.is_empty()).then_some(committed);
    }

    fn published(&mut self) {
        if let Some(committed) = self.committed.take() {
            if self.feed.send(committed).is_err() {
                fatal("feeding the market read model", "market thread gone");
            }
        }
    }

    fn in_flight(&mut self, keys: usize) {
        self.shared
            .keys_in_flight
            .store(keys as u64, Ordering::Release);
        self.shared.committing.store(0, Ordering::Release);
    }

    fn ready(&mut self) {
        if let Some(settled) = &self.settled {
            // Each symbol's cursor: a market process that missed what this writer's
            // predecessor committed last (and went quiet since) finds out now.
            let markers = self
                .cursors
                .values()
                .filter_map(|c| {
                    let name = self.refdata.symbols.get(&c.symbol)?.name.clone();
                    let marker = Settled::Symbol {
                        symbol: c.symbol,
                        prev_cursor: c.input_seq,
                        cursor: c.input_seq,
                        events: Vec::new(),
                        trades: Vec::new(),
                        candles: Vec::new(),
                    };
                    Some((name, marker))
                })
                .collect();
            settled.publish(markers);
        }
        self.shared.replayed_at_start.store(
            self.shared.published.load(Ordering::Acquire),
            Ordering::Release,
        );
        self.shared.ready.store(true, Ordering::Release);
        tracing::info!("exchange ready");
    }
}

impl ExchangeVenue {
    fn apply(&mut self, core: &mut Core, request: Request) {
        match request {
            Request::PlaceOrder { user, order, reply } => {
                let result = self.place(core, user, order);
                self.reply_after_commit(core, reply, result);
            }
            Request::CancelOrder { user, order, reply } => {
                let result = self.cancel(core, user, order);
                self.reply_after_commit(core, reply, result);
            }
            Request::Deposit {
                user,
                asset,
                amount,
                reply,
            } => {
                let result = self.deposit(core, user, asset, amount);
                self.reply_after_commit(core, reply, result);
            }
            Request::CreateUser { name, reply } => {
                let result = self.create_user(core, name);
                self.reply_after_commit(core, reply, result);
            }
            Request::CreateAsset { asset, reply } => {
                let result = self.create_asset(core, asset);
                self.reply_after_commit(core, reply, result);
            }
            Request::CreateSymbol { symbol, reply } => {
                let result = self.create_symbol(core, symbol);
                self.reply_after_commit(core, reply, result);
            }
            Request::UpdateSymbol {
                symbol,
                update,
                reply,
            } => {
                let result = self.update_symbol(core, symbol, update);
                self.reply_after_commit(core, reply, result);
            }
            Request::AuditBook {
                symbol,
                reply,
                in_flight,
            } => {
                if !self.refdata.symbols.contains_key(&symbol) {
                    let _ = reply.send(BookVerdict::NotCompared("no such symbol".into()));
                    return;
                }
                // Audits nobody waits for any more (no engine answered in time) let go of
                // their in-flight mark here, so the next reconciliation can ask again.
                self.audits.retain(|_, (reply, _)| !reply.is_closed());
                let seq = self.append_outbox(core, &BookInput::AuditRequested { symbol });
                self.audits.insert(seq, (reply, in_flight));
            }
        }
    }

    /// Successes wait for the commit; refusals changed nothing and go out at once.
    fn reply_after_commit<T: Send + 'static>(
        &mut self,
        core: &mut Core,
        reply: Reply<T>,
        result: ExchangeResult<T>,
    ) {
        match result {
            Ok(_) => core.reply_after_commit(reply, result),
            Err(_) => {
                let _ = reply.send(result);
            }
        }
    }

    fn balance(&mut self, core: &mut Core, user: u64, asset: u32) -> Balance {
        core.balance(user, asset)
            .unwrap_or_else(|e| fatal("loading a balance", e))
    }

    /// Applies a balanced entry to the working set: all postings or none.
    fn post(
        &mut self,
        core: &mut Core,
        entry: Entry,
        ref_id: Option<i64>,
    ) -> Result<(), LedgerError> {
        match core.post(entry, ref_id) {
            Ok(_) => Ok(()),
            Err(PostError::Ledger(e)) => Err(e),
            Err(PostError::Store(e)) => fatal("loading a balance", e),
        }
    }

    fn append_outbox(&mut self, core: &mut Core, input: &BookInput) -> i64 {
        let symbol = &self.refdata.symbols[&input.symbol()];
        core.append_event(
            BOOK_AGGREGATE,
            &symbol.name,
            input.event_type(),
            serde_json::to_string(input).expect("book input serializes"),
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

    fn place(&mut self, core: &mut Core, user: u64, o: ValidOrder) -> ExchangeResult<Placed> {
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
                None => Loads(core.db())
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
        if let Err(e) = self.post(core, hold, Some(id as i64)) {
            let available = self.balance(core, user, o.hold_asset).available;
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
        let accept_seq = self.append_outbox(
            core,
            &BookInput::OrderAccepted {
                symbol: o.symbol,
                order: NewOrder {
                    id,
                    user,
                    side: o.side,
                    kind: o.kind,
                    stp: o.stp,
                },
            },
        );
        let now = core.now_ms();
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

    fn cancel(&mut self, core: &mut Core, user: u64, id: u64) -> ExchangeResult<Cancel> {
        self.require_user(user)?;
        let Some(order) = self.open.get(&id) else {
            return match self.recently_closed.get(id) {
                Some((owner, status)) if owner == user => Err(crate::order_not_open(id, status)),
                Some(_) => Err(crate::order_not_found(id)),
                None => Ok(Cancel::NotOpen),
            };
        };
        if order.user != user {
            return Err(crate::order_not_found(id));
        }
        if order.cancel_requested {
            return Ok(Cancel::Requested(order.clone())); // idempotent: one cancel input per order
        }
        let symbol = order.symbol;
        self.append_outbox(
            core,
            &BookInput::CancelRequested {
                symbol,
                order: id,
                user,
            },
        );
        let order = self.open.get_mut(&id).expect("checked above");
        order.cancel_requested = true;
        self.dirty.orders.insert(id);
        Ok(Cancel::Requested(order.clone()))
    }

    fn deposit(
        &mut self,
        core: &mut Core,
        user: u64,
        asset: u32,
        amount: i64,
    ) -> ExchangeResult<BalanceRow> {
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
        self.post(core, entry, None).map_err(|_| {
            ExchangeError::invalid(
                "OUT_OF_RANGE",
                "the balance would exceed the largest amount",
            )
        })?;
        let b = self.balance(core, user, asset);
        Ok(BalanceRow {
            user,
            asset,
            available: b.available,
            held: b.held,
        })
    }

    fn create_user(&mut self, core: &mut Core, name: String) -> ExchangeResult<UserRow> {
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
            created_ms: core.now_ms(),
        };
        self.users.insert(row.id);
        self.write.users.push(row.clone());
        let shared = self.shared.clone();
        let id = row.id;
        core.after_commit(move || {
            shared.users.write().expect("lock").insert(id);
        });
        Ok(row)
    }

    fn create_asset(&mut self, core: &mut Core, asset: NewAsset) -> ExchangeResult<AssetRow> {
        crate::rules::validate_asset(&asset, &self.refdata)?;
        self.next.max_asset_id += 1;
        let row = AssetRow {
            id: self.next.max_asset_id,
            code: asset.code,
            scale: asset.scale,
        };
        self.refdata.add_asset(row.clone());
        self.write.assets.push(row.clone());
        self.share_refdata(core);
        Ok(row)
    }

    fn create_symbol(
        &mut self,
        core: &mut Core,
        mut symbol: SymbolRow,
    ) -> ExchangeResult<SymbolRow> {
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
        self.append_outbox(
            core,
            &BookInput::SymbolListed {
                symbol: symbol.id,
                base_unit: spec.base_unit,
                lot_size: spec.lot_size,
            },
        );
        self.write.symbols.push(symbol.clone());
        self.share_refdata(core);
        Ok(symbol)
    }

    fn update_symbol(
        &mut self,
        core: &mut Core,
        id: u32,
        update: SymbolUpdate,
    ) -> ExchangeResult<SymbolRow> {
        let mut symbol = self.refdata.symbols[&id].clone();
        symbol.status = update.status.unwrap_or(symbol.status);
        symbol.default_stp = update
            .default_self_trade_prevention_mode
            .unwrap_or(symbol.default_stp);
        self.refdata.add_symbol(symbol.clone());
        self.write.symbols.push(symbol.clone());
        self.share_refdata(core);
        Ok(symbol)
    }

    /// Makes reference data visible to the API once the batch holding it has committed.
    fn share_refdata(&mut self, core: &mut Core) {
        let snapshot = Arc::new(self.refdata.clone());
        let shared = self.shared.clone();
        core.after_commit(move || {
            *shared.refdata.write().expect("lock") = snapshot;
        });
    }

    /// Compares a book with the store at the cut its audit marks in the output stream:
    /// every output of the symbol up to the snapshot's input has been applied to the
    /// working set, and none after it. The writer commits right before this (the audit is
    /// `Venue::Deferred`), before any later output, which puts the store exactly at that cut; orders accepted after it are not in the engine's book
    /// yet and are left out by their `accept_seq`. Reads once per book per
    /// reconciliation, on this thread, like a balance miss does.
    fn audit_book(&mut self, core: &mut Core, audit: BookAudit) {
        let BookAudit {
            symbol,
            snapshot,
            reply,
            in_flight,
        } = audit;
        let verdict = match snapshot {
            None => BookVerdict::NotCompared("the engine has no book for it yet".into()),
            Some(snapshot) => {
                let name = self
                    .refdata
                    .symbols
                    .get(&symbol)
                    .map_or_else(|| symbol.to_string(), |s| s.name.clone());
                let orders = Loads(core.db()).book_orders(symbol, snapshot.input_seq);
                let cursors = Loads(core.db()).cursors();
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

    /// Settles one output; returns the book audit it answers, to compare once committed.
    fn apply_engine_output(&mut self, core: &mut Core, mut out: EngineOutput) -> Option<BookAudit> {
        if out.output_position.is_some() {
            self.shared.feed_queued.fetch_sub(1, Ordering::AcqRel);
        }
        for (consumer, position) in [
            (ENGINE_CONSUMER, out.input_position),
            (SETTLEMENT_CONSUMER, out.output_position),
        ] {
            if let Some(p) = position {
                let offset = self.positions.entry((consumer, p.partition)).or_insert(-1);
                if p.offset > *offset {
                    *offset = p.offset;
                    self.dirty.positions.insert((consumer, p.partition));
                }
            }
        }
        let cursor = self.cursors.get(&out.symbol).map_or(0, |c| c.input_seq);
        if out.last_input_seq <= cursor {
            // Inputs settled already: replayed after a restart, or (distributed) the same
            // output again from an engine that lost the partition or took it over. The engine
            // is deterministic, so its events are the ones applied then.
            return None;
        }
        if out.first_input_seq <= cursor {
            fatal(
                "settling engine output",
                format!(
                    "symbol {}: output for inputs {}..={} straddles the cursor {cursor}",
                    out.symbol, out.first_input_seq, out.last_input_seq
                ),
            );
        }
        let Some(symbol) = self.refdata.symbols.get(&out.symbol).cloned() else {
            fatal(
                "settling engine output",
                format!("output for unknown symbol {}", out.symbol),
            );
        };
        let spec = self.refdata.book_spec(&symbol);
        let last = self.last_trade_ms.get(&symbol.id).copied().unwrap_or(0);
        let now = core.now_ms().max(last);
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
                    self.post(core, s.entry.clone(), Some(id as i64))
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
                        self.post(core, release, Some(order as i64))
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
                    self.recently_closed.insert(order, row.user, row.status);
                    self.dirty.orders.insert(order);
                    self.dirty.finished.insert(order, row);
                }
                Event::Rested { .. } | Event::CancelRejected { .. } => {}
            }
        }
        let audit = out.audit.take().and_then(|snapshot| {
            let (reply, in_flight) = self.audits.remove(&out.last_input_seq)?;
            Some(BookAudit {
                symbol: out.symbol,
                snapshot: Some(snapshot),
                reply,
                in_flight,
            })
        });
        self.dirty.events.push((out.symbol, out.events));
        let prev = self.cursors.get(&out.symbol).map_or(0, |c| c.input_seq);
        self.dirty.prev_cursors.entry(out.symbol).or_insert(prev);
        self.cursors.insert(
            out.symbol,
            CursorRow {
                symbol: out.symbol,
                input_seq: out.last_input_seq,
                next_trade_id: out.next_trade_id,
            },
        );
        self.dirty.cursors.insert(out.symbol);
        audit
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
        Request::AuditBook { reply, .. } => drop(reply.send(BookVerdict::NotCompared(
            "the exchange is starting or stopping".into(),
        ))),
    }
}

/// Counts book inputs as in flight. Called before they are committed, so that no input is
/// ever in the store (an open order, say) while "nothing pending" can be observed.
fn count_in_flight(shared: &Shared, rows: &[OutboxRow]) {
    let inputs = rows
        .iter()
        .filter(|r| r.aggregate_type == BOOK_AGGREGATE)
        .count() as u64;
    shared.committing.store(inputs, Ordering::Release);
    shared.published.fetch_add(inputs, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recently_closed_keeps_the_newest_orders_up_to_its_capacity() {
        let mut closed = RecentlyClosed::default();
        let n = RecentlyClosed::CAPACITY as u64 + 10;
        for order in 1..=n {
            closed.insert(order, order % 7, OrderStatus::Filled);
        }
        assert_eq!(closed.by_id.len(), RecentlyClosed::CAPACITY);
        assert!(closed.get(10).is_none(), "the oldest went first");
        assert_eq!(closed.get(11), Some((11 % 7, &OrderStatus::Filled)));
        assert_eq!(closed.get(n), Some((n % 7, &OrderStatus::Filled)));
    }
}
