//! The matching engine: one limit order book per symbol, price-time priority.
//!
//! The engine is a pure function of its input sequence (design.md invariant 6): no IO, no
//! clocks, no randomness, no hashing that influences order. Feeding the same commands to a
//! fresh [`Book`] yields the same [`Event`]s with the same trade ids, which is what makes
//! crash recovery a replay and lets consumers drop duplicates by id.
//!
//! Units: a price is in minor units of the quote asset per one *whole* unit of the base
//! asset; a quantity is in minor units of the base asset. The notional of a fill is
//! `price * qty / base_unit` (see [`BookSpec::notional`]); symbol rules guarantee it is exact.
//!
//! Data layout, chosen for the cancel-and-replace heavy flow exchanges see: resting orders
//! live in a slab (`Vec<Node>` + free list) linked into one FIFO list per price level, and an
//! id index finds any order in O(1), so cancel never scans the book. Price levels sit in a
//! `BTreeMap` per side, which keeps best-price lookup O(log levels) and iteration ordered.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::btree_map::{BTreeMap, Entry};

pub type OrderId = u64;
pub type UserId = u64;
pub type TradeId = u64;
/// Quote-asset minor units per one whole base unit.
pub type Price = i64;
/// Base-asset minor units.
pub type Qty = i64;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TimeInForce {
    /// Good till canceled: the unfilled rest waits in the book.
    Gtc,
    /// Immediate or cancel: fill what crosses now, expire the rest.
    Ioc,
    /// Fill or kill: fill all of it now or none of it.
    Fok,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderKind {
    Limit {
        price: Price,
        qty: Qty,
        tif: TimeInForce,
    },
    /// Take up to `qty` at any price; never rests.
    Market { qty: Qty },
    /// Buy for at most `budget` quote minor units at any price; never rests.
    MarketQuote { budget: i64 },
}

/// What happens when an order would trade against a resting order of the same user
/// (Binance's `selfTradePreventionMode`; the taker's mode decides). A prevented match is
/// not a trade: the order(s) it names leave the book as [`DoneReason::ExpiredInMatch`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SelfTradePrevention {
    /// Self-trades happen (they are balanced: the user pays fees on both sides).
    #[default]
    None,
    /// The taker's unfilled rest expires; the resting order stays.
    ExpireTaker,
    /// The resting order expires; the taker goes on matching the next one.
    ExpireMaker,
    /// Both expire.
    ExpireBoth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub kind: OrderKind,
    /// Absent in inputs written before self-trade prevention existed: those self-traded.
    #[serde(default)]
    pub stp: SelfTradePrevention,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Place(NewOrder),
    Cancel { id: OrderId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DoneReason {
    Filled,
    Canceled,
    /// IOC/market remainder, or a FOK that could not fill completely.
    Expired,
    /// Expired by self-trade prevention (Binance's `EXPIRED_IN_MATCH`).
    ExpiredInMatch,
    /// The engine refused the command (duplicate id, malformed quantity).
    Rejected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Event {
    Trade {
        id: TradeId,
        price: Price,
        qty: Qty,
        taker: OrderId,
        taker_user: UserId,
        maker: OrderId,
        maker_user: UserId,
        taker_side: Side,
    },
    /// A limit order's unfilled rest now waits in the book.
    Rested {
        order: OrderId,
        side: Side,
        price: Price,
        remaining: Qty,
    },
    /// The order left the engine for good; `remaining` is its unfilled base quantity
    /// (for a quote-budget market buy, always 0: its leftover lives in the hold).
    Done {
        order: OrderId,
        reason: DoneReason,
        remaining: Qty,
    },
    /// Cancel of an order the book does not hold (already done, or never seen).
    CancelRejected { order: OrderId },
}

/// Per-symbol constants the engine needs to compute notionals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookSpec {
    /// Minor units of the base asset in one whole unit (10^base_scale).
    pub base_unit: i64,
    /// Quantities are multiples of this.
    pub lot_size: Qty,
}

impl BookSpec {
    /// Quote minor units paid for `qty` at `price`. Symbol rules make this exact; the
    /// division floors so that it can never exceed a hold computed the same way.
    pub fn notional(&self, price: Price, qty: Qty) -> i64 {
        let n = price as i128 * qty as i128 / self.base_unit as i128;
        debug_assert!(n <= i64::MAX as i128);
        n as i64
    }

    /// Largest multiple of the lot that `budget` buys at `price`.
    fn affordable_qty(&self, budget: i64, price: Price) -> Qty {
        let q = budget as i128 * self.base_unit as i128 / price as i128;
        let q = q.min(i64::MAX as i128) as i64;
        q - q % self.lot_size
    }
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    id: OrderId,
    user: UserId,
    price: Price,
    remaining: Qty,
    side: Side,
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy, Debug)]
struct Level {
    head: u32,
    tail: u32,
    /// Sum of the resting quantities. Wide: every order fits an i64, but many orders at one
    /// price need not (a buy's quantity is bounded by its quote hold, not by base supply).
    total: i128,
    count: u32,
}

/// A resting order as seen from outside, in priority order when listed by [`Book::resting`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestingOrder {
    pub id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub price: Price,
    pub remaining: Qty,
}

/// One aggregated price level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelView {
    pub price: Price,
    /// Wide for the same reason as the level's total.
    pub qty: i128,
    pub orders: u32,
}

/// The order book of one symbol.
#[derive(Clone, Debug)]
pub struct Book {
    spec: BookSpec,
    bids: BTreeMap<Price, Level>,
    asks: BTreeMap<Price, Level>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    index: FxHashMap<OrderId, u32>,
    next_trade_id: TradeId,
}

impl Book {
    pub fn new(spec: BookSpec) -> Book {
        assert!(spec.base_unit > 0 && spec.lot_size > 0);
        Book {
            spec,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            index: FxHashMap::default(),
            next_trade_id: 1,
        }
    }

    pub fn spec(&self) -> BookSpec {
        self.spec
    }

    /// The id the next trade will get; persisted with the consumer's offset so that a
    /// restored book continues the same id sequence.
    pub fn next_trade_id(&self) -> TradeId {
        self.next_trade_id
    }

    pub fn set_next_trade_id(&mut self, id: TradeId) {
        assert!(id >= 1);
        self.next_trade_id = id;
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, id: OrderId) -> bool {
        self.index.contains_key(&id)
    }

    pub fn best_bid(&self) -> Option<Price> {
        self.bids.keys().next_back().copied()
    }

    pub fn best_ask(&self) -> Option<Price> {
        self.asks.keys().next().copied()
    }

    /// Applies one command, appending what happened to `out`.
    pub fn execute(&mut self, command: &Command, out: &mut Vec<Event>) {
        match *command {
            Command::Place(order) => self.place(order, out),
            Command::Cancel { id } => self.cancel(id, out),
        }
    }

    fn place(&mut self, order: NewOrder, out: &mut Vec<Event>) {
        let well_formed = match order.kind {
            OrderKind::Limit { price, qty, .. } => price > 0 && qty > 0,
            OrderKind::Market { qty } => qty > 0,
            OrderKind::MarketQuote { budget } => budget > 0 && order.side == Side::Buy,
        };
        let done = |reason, remaining| Event::Done {
            order: order.id,
            reason,
            remaining,
        };
        if !well_formed || self.index.contains_key(&order.id) {
            out.push(done(DoneReason::Rejected, 0));
            return;
        }
        match order.kind {
            OrderKind::Limit { price, qty, tif } => {
                if tif == TimeInForce::Fok && !self.can_fill(&order, price, qty) {
                    out.push(done(DoneReason::Expired, qty));
                    return;
                }
                let mut taker = Taker::new(order, Some(price), qty, None);
                self.match_taker(&mut taker, out);
                if taker.remaining == 0 {
                    out.push(done(DoneReason::Filled, 0));
                } else if taker.prevented {
                    out.push(done(DoneReason::ExpiredInMatch, taker.remaining));
                } else if tif == TimeInForce::Gtc {
                    self.rest(order.id, order.user, order.side, price, taker.remaining);
                    out.push(Event::Rested {
                        order: order.id,
                        side: order.side,
                        price,
                        remaining: taker.remaining,
                    });
                } else {
                    out.push(done(DoneReason::Expired, taker.remaining));
                }
            }
            OrderKind::Market { qty } => {
                let mut taker = Taker::new(order, None, qty, None);
                self.match_taker(&mut taker, out);
                let reason = if taker.remaining == 0 {
                    DoneReason::Filled
                } else if taker.prevented {
                    DoneReason::ExpiredInMatch
                } else {
                    DoneReason::Expired
                };
                out.push(done(reason, taker.remaining));
            }
            OrderKind::MarketQuote { budget } => {
                let mut taker = Taker::new(order, None, Qty::MAX, Some(budget));
                self.match_taker(&mut taker, out);
                let reason = if taker.prevented {
                    DoneReason::ExpiredInMatch
                } else if self.budget_spent(&taker) {
                    DoneReason::Filled
                } else {
                    DoneReason::Expired
                };
                out.push(done(reason, 0));
            }
        }
    }

    /// A quote-budget order is FILLED when it traded and what is left of its budget cannot
    /// buy one more lot at the price where matching stopped: the best ask still in the book,
    /// or, if it emptied the book, the price of its last fill. Otherwise (nothing traded, or
    /// the book ran dry while the budget could still buy) it EXPIRED.
    fn budget_spent(&self, taker: &Taker) -> bool {
        let Some(budget) = taker.budget else {
            return false;
        };
        let stop_price = self.best_ask().or(taker.last_price);
        taker.filled > 0 && stop_price.is_some_and(|p| self.spec.affordable_qty(budget, p) == 0)
    }

    /// FOK pre-check: would matching now fill all of `qty`? Self-trade prevention counts: a
    /// resting order of the same user is skipped (EXPIRE_MAKER) or ends the match
    /// (EXPIRE_TAKER, EXPIRE_BOTH), exactly as `match_taker` will treat it.
    fn can_fill(&self, order: &NewOrder, limit: Price, qty: Qty) -> bool {
        let want = qty as i128;
        let mut available: i128 = 0;
        // Some(answer) once the scan can stop, None to go on to the next level.
        let mut scan = |level: &Level| -> Option<bool> {
            if order.stp == SelfTradePrevention::None {
                available += level.total;
            } else {
                let mut slot = level.head;
                while slot != NIL {
                    let node = &self.nodes[slot as usize];
                    if node.user != order.user {
                        available += node.remaining as i128;
                    } else if order.stp != SelfTradePrevention::ExpireMaker {
                        return Some(available >= want);
                    }
                    slot = node.next;
                }
            }
            (available >= want).then_some(true)
        };
        let answer = match order.side {
            Side::Buy => self.asks.range(..=limit).find_map(|(_, l)| scan(l)),
            Side::Sell => self.bids.range(limit..).rev().find_map(|(_, l)| scan(l)),
        };
        answer.unwrap_or(false)
    }

    fn match_taker(&mut self, taker: &mut Taker, out: &mut Vec<Event>) {
        let Book {
            spec,
            bids,
            asks,
            nodes,
            free,
            index,
            next_trade_id,
        } = self;
        let levels = match taker.order.side {
            Side::Buy => asks,
            Side::Sell => bids,
        };
        let stp = taker.order.stp;
        let mut stop = false;
        while taker.remaining > 0 && !stop {
            let entry = match taker.order.side {
                Side::Buy => levels.first_entry(),
                Side::Sell => levels.last_entry(),
            };
            let Some(mut entry) = entry else { break };
            let level_price = *entry.key();
            let crosses = match (taker.order.side, taker.limit) {
                (_, None) => true,
                (Side::Buy, Some(limit)) => level_price <= limit,
                (Side::Sell, Some(limit)) => level_price >= limit,
            };
            if !crosses {
                break;
            }
            let level = entry.get_mut();
            while taker.remaining > 0 && level.head != NIL {
                let slot = level.head;
                let maker = nodes[slot as usize];
                let mut fill = taker.remaining.min(maker.remaining);
                if let Some(budget) = taker.budget {
                    fill = fill.min(spec.affordable_qty(budget, level_price));
                    if fill == 0 {
                        stop = true; // the budget cannot buy a lot at this price
                        break;
                    }
                }
                if maker.user == taker.order.user && stp != SelfTradePrevention::None {
                    if stp != SelfTradePrevention::ExpireTaker {
                        level.total -= maker.remaining as i128;
                        unlink_head(level, nodes, free, index);
                        out.push(Event::Done {
                            order: maker.id,
                            reason: DoneReason::ExpiredInMatch,
                            remaining: maker.remaining,
                        });
                    }
                    if stp != SelfTradePrevention::ExpireMaker {
                        taker.prevented = true;
                        stop = true;
                        break;
                    }
                    continue;
                }
                debug_assert!(fill > 0);
                if let Some(budget) = taker.budget.as_mut() {
                    *budget -= spec.notional(level_price, fill);
                }
                nodes[slot as usize].remaining -= fill;
                taker.remaining -= fill;
                taker.filled += fill;
                taker.last_price = Some(level_price);
                level.total -= fill as i128;
                let trade_id = *next_trade_id;
                *next_trade_id += 1;
                out.push(Event::Trade {
                    id: trade_id,
                    price: level_price,
                    qty: fill,
                    taker: taker.order.id,
                    taker_user: taker.order.user,
                    maker: maker.id,
                    maker_user: maker.user,
                    taker_side: taker.order.side,
                });
                if fill == maker.remaining {
                    unlink_head(level, nodes, free, index);
                    out.push(Event::Done {
                        order: maker.id,
                        reason: DoneReason::Filled,
                        remaining: 0,
                    });
                }
            }
            if level.head == NIL {
                debug_assert!(level.total == 0 && level.count == 0);
                entry.remove();
            }
        }
    }

    fn rest(&mut self, id: OrderId, user: UserId, side: Side, price: Price, qty: Qty) {
        debug_assert!(qty > 0 && !self.index.contains_key(&id));
        let node = Node {
            id,
            user,
            price,
            remaining: qty,
            side,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                assert!(self.nodes.len() < NIL as usize, "book slab is full");
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let levels = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        match levels.entry(price) {
            Entry::Vacant(v) => {
                v.insert(Level {
                    head: slot,
                    tail: slot,
                    total: qty as i128,
                    count: 1,
                });
            }
            Entry::Occupied(mut o) => {
                let level = o.get_mut();
                let tail = level.tail;
                self.nodes[tail as usize].next = slot;
                self.nodes[slot as usize].prev = tail;
                level.tail = slot;
                level.total += qty as i128;
                level.count += 1;
            }
        }
        self.index.insert(id, slot);
    }

    fn cancel(&mut self, id: OrderId, out: &mut Vec<Event>) {
        let Some(slot) = self.index.remove(&id) else {
            out.push(Event::CancelRejected { order: id });
            return;
        };
        let node = self.nodes[slot as usize];
        let levels = match node.side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let Entry::Occupied(mut entry) = levels.entry(node.price) else {
            unreachable!("indexed order {id} has no price level");
        };
        let level = entry.get_mut();
        if node.prev == NIL {
            level.head = node.next;
        } else {
            self.nodes[node.prev as usize].next = node.next;
        }
        if node.next == NIL {
            level.tail = node.prev;
        } else {
            self.nodes[node.next as usize].prev = node.prev;
        }
        level.total -= node.remaining as i128;
        level.count -= 1;
        if level.count == 0 {
            debug_assert!(level.total == 0);
            entry.remove();
        }
        self.free.push(slot);
        out.push(Event::Done {
            order: id,
            reason: DoneReason::Canceled,
            remaining: node.remaining,
        });
    }

    /// Puts an order back into the book during recovery. Orders must be restored in their
    /// original arrival order so that time priority within each level is kept.
    pub fn restore(&mut self, order: RestingOrder) {
        assert!(order.price > 0 && order.remaining > 0);
        assert!(!self.index.contains_key(&order.id), "order restored twice");
        self.rest(
            order.id,
            order.user,
            order.side,
            order.price,
            order.remaining,
        );
    }

    /// Every resting order, bids best-first then asks best-first, FIFO within a level.
    pub fn resting(&self) -> Vec<RestingOrder> {
        let mut all = Vec::with_capacity(self.index.len());
        let mut push_level = |level: &Level| {
            let mut slot = level.head;
            while slot != NIL {
                let n = &self.nodes[slot as usize];
                all.push(RestingOrder {
                    id: n.id,
                    user: n.user,
                    side: n.side,
                    price: n.price,
                    remaining: n.remaining,
                });
                slot = n.next;
            }
        };
        self.bids.values().rev().for_each(&mut push_level);
        self.asks.values().for_each(&mut push_level);
        all
    }

    /// Aggregated depth, best first, at most `limit` levels per side.
    pub fn depth(&self, limit: usize) -> (Vec<LevelView>, Vec<LevelView>) {
        let view = |(&price, level): (&Price, &Level)| LevelView {
            price,
            qty: level.total,
            orders: level.count,
        };
        (
            self.bids.iter().rev().take(limit).map(view).collect(),
            self.asks.iter().take(limit).map(view).collect(),
        )
    }

    /// Checks the book's internal bookkeeping; for tests and debug assertions.
    pub fn check_invariants(&self) {
        let mut seen = 0usize;
        for (side, levels) in [(Side::Buy, &self.bids), (Side::Sell, &self.asks)] {
            for (&price, level) in levels {
                let (mut total, mut count, mut slot, mut prev) = (0, 0, level.head, NIL);
                while slot != NIL {
                    let n = &self.nodes[slot as usize];
                    assert_eq!(n.side, side);
                    assert_eq!(n.price, price);
                    assert_eq!(n.prev, prev);
                    assert!(n.remaining > 0);
                    assert_eq!(self.index.get(&n.id), Some(&slot));
                    total += n.remaining as i128;
                    count += 1;
                    prev = slot;
                    slot = n.next;
                }
                assert_eq!(level.tail, prev);
                assert_eq!(level.total, total);
                assert_eq!(level.count, count);
                assert!(count > 0, "empty level left in the book");
                seen += count as usize;
            }
        }
        assert_eq!(seen, self.index.len());
        if let (Some(bid), Some(ask)) = (self.best_bid(), self.best_ask()) {
            assert!(bid < ask, "crossed book: bid {bid} >= ask {ask}");
        }
    }
}

struct Taker {
    order: NewOrder,
    limit: Option<Price>,
    remaining: Qty,
    filled: Qty,
    /// What is left of a quote-budget order's budget.
    budget: Option<i64>,
    last_price: Option<Price>,
    /// Self-trade prevention ended the match (EXPIRE_TAKER or EXPIRE_BOTH).
    prevented: bool,
}

impl Taker {
    fn new(order: NewOrder, limit: Option<Price>, qty: Qty, budget: Option<i64>) -> Taker {
        Taker {
            order,
            limit,
            remaining: qty,
            filled: 0,
            budget,
            last_price: None,
            prevented: false,
        }
    }
}

/// Takes the first order off a level's FIFO list and frees its slot (the caller adjusts the
/// level's total).
fn unlink_head(
    level: &mut Level,
    nodes: &mut [Node],
    free: &mut Vec<u32>,
    index: &mut FxHashMap<OrderId, u32>,
) {
    let slot = level.head;
    let node = nodes[slot as usize];
    level.head = node.next;
    if level.head == NIL {
        level.tail = NIL;
    } else {
        nodes[level.head as usize].prev = NIL;
    }
    level.count -= 1;
    index.remove(&node.id);
    free.push(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: BookSpec = BookSpec {
        base_unit: 100,
        lot_size: 1,
    };

    fn limit(id: OrderId, side: Side, price: Price, qty: Qty, tif: TimeInForce) -> Command {
        Command::Place(NewOrder {
            id,
            user: id * 10,
            side,
            kind: OrderKind::Limit { price, qty, tif },
            stp: SelfTradePrevention::None,
        })
    }

    /// A market buy of user `id * 10` spending `budget` quote minor units.
    fn market_quote(id: OrderId, budget: i64) -> Command {
        Command::Place(NewOrder {
            id,
            user: id * 10,
            side: Side::Buy,
            kind: OrderKind::MarketQuote { budget },
            stp: SelfTradePrevention::None,
        })
    }

    fn run(book: &mut Book, cmd: Command) -> Vec<Event> {
        let mut out = Vec::new();
        book.execute(&cmd, &mut out);
        book.check_invariants();
        out
    }

    #[test]
    fn crossing_limit_trades_at_maker_price_and_rests_rest() {
        let mut book = Book::new(SPEC);
        run(&mut book, limit(1, Side::Sell, 101, 5, TimeInForce::Gtc));
        let out = run(&mut book, limit(2, Side::Buy, 102, 8, TimeInForce::Gtc));
        assert_eq!(
            out,
            vec![
                Event::Trade {
                    id: 1,
                    price: 101,
                    qty: 5,
                    taker: 2,
                    taker_user: 20,
                    maker: 1,
                    maker_user: 10,
                    taker_side: Side::Buy
                },
                Event::Done {
                    order: 1,
                    reason: DoneReason::Filled,
                    remaining: 0
                },
                Event::Rested {
                    order: 2,
                    side: Side::Buy,
                    price: 102,
                    remaining: 3
                },
            ]
        );
        assert_eq!(book.best_bid(), Some(102));
        assert_eq!(book.best_ask(), None);
    }

    #[test]
    fn time_priority_within_a_level() {
        let mut book = Book::new(SPEC);
        run(&mut book, limit(1, Side::Sell, 100, 2, TimeInForce::Gtc));
        run(&mut book, limit(2, Side::Sell, 100, 2, TimeInForce::Gtc));
        let out = run(&mut book, limit(3, Side::Buy, 100, 3, TimeInForce::Ioc));
        let makers: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Event::Trade { maker, qty, .. } => Some((*maker, *qty)),
                _ => None,
            })
            .collect();
        assert_eq!(makers, vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn fok_that_cannot_fill_changes_nothing() {
        let mut book = Book::new(SPEC);
        run(&mut book, limit(1, Side::Sell, 100, 2, TimeInForce::Gtc));
        let out = run(&mut book, limit(2, Side::Buy, 100, 3, TimeInForce::Fok));
        assert_eq!(
            out,
            vec![Event::Done {
                order: 2,
                reason: DoneReason::Expired,
                remaining: 3
            }]
        );
        assert_eq!(book.len(), 1);
        assert_eq!(book.next_trade_id(), 1);
    }

    #[test]
    fn cancel_in_the_middle_of_a_level_keeps_links() {
        let mut book = Book::new(SPEC);
        for id in 1..=3 {
            run(&mut book, limit(id, Side::Buy, 99, 1, TimeInForce::Gtc));
        }
        let out = run(&mut book, Command::Cancel { id: 2 });
        assert_eq!(
            out,
            vec![Event::Done {
                order: 2,
                reason: DoneReason::Canceled,
                remaining: 1
            }]
        );
        let ids: Vec<_> = book.resting().iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(
            run(&mut book, Command::Cancel { id: 2 }),
            vec![Event::CancelRejected { order: 2 }]
        );
    }

    #[test]
    fn market_quote_buy_never_spends_more_than_its_budget() {
        let mut book = Book::new(SPEC);
        run(&mut book, limit(1, Side::Sell, 300, 1, TimeInForce::Gtc)); // 3 per unit
        run(&mut book, limit(2, Side::Sell, 500, 10, TimeInForce::Gtc)); // 5 per unit
        let out = run(&mut book, market_quote(3, 15));
        let spent: i64 = out
            .iter()
            .filter_map(|e| match e {
                Event::Trade { price, qty, .. } => Some(SPEC.notional(*price, *qty)),
                _ => None,
            })
            .sum();
        // 1 unit at 3 = 3, then 2 units at 5 = 10: 13 spent, 2 left cannot buy a lot at 5.
        assert_eq!(spent, 13);
        assert!(matches!(
            out.last(),
            Some(Event::Done {
                reason: DoneReason::Filled,
                ..
            })
        ));
    }

    #[test]
    fn a_budget_spent_exactly_on_the_last_order_of_the_book_is_filled() {
        // Base scale 4 (lot 0.0013 = 13), quote scale 2: sell 0.013 @ 100.00, buy for 1.30.
        let spec = BookSpec {
            base_unit: 10_000,
            lot_size: 13,
        };
        let mut book = Book::new(spec);
        run(
            &mut book,
            limit(1, Side::Sell, 10_000, 130, TimeInForce::Gtc),
        );
        let out = run(&mut book, market_quote(2, 130));
        assert_eq!(
            out.last(),
            Some(&Event::Done {
                order: 2,
                reason: DoneReason::Filled,
                remaining: 0
            })
        );
        assert!(book.is_empty());
        // With budget left for another lot at the last price, an emptied book means EXPIRED.
        run(
            &mut book,
            limit(3, Side::Sell, 10_000, 13, TimeInForce::Gtc),
        );
        let out = run(&mut book, market_quote(4, 26));
        assert_eq!(
            out.last(),
            Some(&Event::Done {
                order: 4,
                reason: DoneReason::Expired,
                remaining: 0
            })
        );
    }

    /// A book with a resting sell of user 7 between two of user 8, and user 7 buying through
    /// all three under `stp`: returns the events and the ids left resting.
    fn self_cross(stp: SelfTradePrevention, tif: TimeInForce) -> (Vec<Event>, Vec<OrderId>) {
        let mut book = Book::new(SPEC);
        let sell = |id, user| {
            Command::Place(NewOrder {
                id,
                user,
                side: Side::Sell,
                kind: OrderKind::Limit {
                    price: 100,
                    qty: 2,
                    tif: TimeInForce::Gtc,
                },
                stp: SelfTradePrevention::None,
            })
        };
        run(&mut book, sell(1, 8));
        run(&mut book, sell(2, 7));
        run(&mut book, sell(3, 8));
        let out = run(
            &mut book,
            Command::Place(NewOrder {
                id: 4,
                user: 7,
                side: Side::Buy,
                kind: OrderKind::Limit {
                    price: 100,
                    qty: 4,
                    tif,
                },
                stp,
            }),
        );
        (out, book.resting().iter().map(|o| o.id).collect())
    }

    fn trades_with(out: &[Event]) -> Vec<OrderId> {
        out.iter()
            .filter_map(|e| match e {
                Event::Trade { maker, .. } => Some(*maker),
                _ => None,
            })
            .collect()
    }

    fn done(out: &[Event], id: OrderId) -> Option<(DoneReason, Qty)> {
        out.iter().find_map(|e| match *e {
            Event::Done {
                order,
                reason,
                remaining,
            } if order == id => Some((reason, remaining)),
            _ => None,
        })
    }

    #[test]
    fn self_trade_prevention_follows_the_takers_mode() {
        use SelfTradePrevention::*;
        // NONE: trades with its own order like any other.
        let (out, left) = self_cross(None, TimeInForce::Gtc);
        assert_eq!(trades_with(&out), vec![1, 2]);
        assert_eq!(left, vec![3]);
        // EXPIRE_TAKER: stops at its own order, which stays; the rest expires, never rests.
        let (out, left) = self_cross(ExpireTaker, TimeInForce::Gtc);
        assert_eq!(trades_with(&out), vec![1]);
        assert_eq!(done(&out, 4), Some((DoneReason::ExpiredInMatch, 2)));
        assert_eq!(left, vec![2, 3]);
        // EXPIRE_MAKER: its own order expires, matching goes on to the next.
        let (out, left) = self_cross(ExpireMaker, TimeInForce::Gtc);
        assert_eq!(trades_with(&out), vec![1, 3]);
        assert_eq!(done(&out, 2), Some((DoneReason::ExpiredInMatch, 2)));
        assert_eq!(done(&out, 4), Some((DoneReason::Filled, 0)));
        assert!(left.is_empty());
        // EXPIRE_BOTH: both expire.
        let (out, left) = self_cross(ExpireBoth, TimeInForce::Gtc);
        assert_eq!(trades_with(&out), vec![1]);
        assert_eq!(done(&out, 2), Some((DoneReason::ExpiredInMatch, 2)));
        assert_eq!(done(&out, 4), Some((DoneReason::ExpiredInMatch, 2)));
        assert_eq!(left, vec![3]);
    }

    #[test]
    fn a_fok_counts_only_what_self_trade_prevention_lets_it_fill() {
        use SelfTradePrevention::*;
        // 4 of the 6 resting are others': EXPIRE_MAKER skips the own order and fills.
        let (out, _) = self_cross(ExpireMaker, TimeInForce::Fok);
        assert_eq!(done(&out, 4), Some((DoneReason::Filled, 0)));
        // EXPIRE_TAKER would stop after 2: the FOK expires and changes nothing.
        let (out, left) = self_cross(ExpireTaker, TimeInForce::Fok);
        assert_eq!(out.len(), 1);
        assert_eq!(done(&out, 4), Some((DoneReason::Expired, 4)));
        assert_eq!(left, vec![1, 2, 3]);
    }

    #[test]
    fn duplicate_id_is_rejected() {
        let mut book = Book::new(SPEC);
        run(&mut book, limit(1, Side::Buy, 99, 1, TimeInForce::Gtc));
        let out = run(&mut book, limit(1, Side::Buy, 98, 1, TimeInForce::Gtc));
        assert_eq!(
            out,
            vec![Event::Done {
                order: 1,
                reason: DoneReason::Rejected,
                remaining: 0
            }]
        );
    }
}
