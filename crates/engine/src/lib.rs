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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub kind: OrderKind,
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
    total: Qty,
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
    pub qty: Qty,
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
        if !well_formed || self.index.contains_key(&order.id) {
            out.push(Event::Done {
                order: order.id,
                reason: DoneReason::Rejected,
                remaining: 0,
            });
            return;
        }
        match order.kind {
            OrderKind::Limit { price, qty, tif } => {
                if tif == TimeInForce::Fok && !self.can_fill(order.side, price, qty) {
                    out.push(Event::Done {
                        order: order.id,
                        reason: DoneReason::Expired,
                        remaining: qty,
                    });
                    return;
                }
                let mut taker = Taker::new(order, Some(price), qty, None);
                self.match_taker(&mut taker, out);
                if taker.remaining == 0 {
                    out.push(Event::Done {
                        order: order.id,
                        reason: DoneReason::Filled,
                        remaining: 0,
                    });
                } else if tif == TimeInForce::Gtc {
                    self.rest(order.id, order.user, order.side, price, taker.remaining);
                    out.push(Event::Rested {
                        order: order.id,
                        side: order.side,
                        price,
                        remaining: taker.remaining,
                    });
                } else {
                    out.push(Event::Done {
                        order: order.id,
                        reason: DoneReason::Expired,
                        remaining: taker.remaining,
                    });
                }
            }
            OrderKind::Market { qty } => {
                let mut taker = Taker::new(order, None, qty, None);
                self.match_taker(&mut taker, out);
                let reason = if taker.remaining == 0 {
                    DoneReason::Filled
                } else {
                    DoneReason::Expired
                };
                out.push(Event::Done {
                    order: order.id,
                    reason,
                    remaining: taker.remaining,
                });
            }
            OrderKind::MarketQuote { budget } => {
                let mut taker = Taker::new(order, None, Qty::MAX, Some(budget));
                self.match_taker(&mut taker, out);
                // Filled when the budget cannot buy another lot at the price it stopped at;
                // expired when the book ran dry first or nothing filled at all.
                let reason = if taker.filled > 0 && taker.budget_exhausted {
                    DoneReason::Filled
                } else {
                    DoneReason::Expired
                };
                out.push(Event::Done {
                    order: order.id,
                    reason,
                    remaining: 0,
                });
            }
        }
    }

    /// FOK pre-check: is there enough crossing quantity for all of `qty`?
    fn can_fill(&self, side: Side, limit: Price, qty: Qty) -> bool {
        let mut available: Qty = 0;
        let mut add = |level: &Level| {
            available = available.saturating_add(level.total);
            available >= qty
        };
        match side {
            Side::Buy => self.asks.range(..=limit).any(|(_, level)| add(level)),
            Side::Sell => self.bids.range(limit..).rev().any(|(_, level)| add(level)),
        }
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
        while taker.remaining > 0 {
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
                let maker = &mut nodes[slot as usize];
                let mut fill = taker.remaining.min(maker.remaining);
                if let Some(budget) = taker.budget {
                    fill = fill.min(spec.affordable_qty(budget, level_price));
                    if fill == 0 {
                        taker.budget_exhausted = true;
                        return;
                    }
                    let notional = spec.notional(level_price, fill);
                    taker.budget = Some(budget - notional);
                }
                debug_assert!(fill > 0);
                maker.remaining -= fill;
                taker.remaining -= fill;
                taker.filled += fill;
                level.total -= fill;
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
                if maker.remaining == 0 {
                    let maker_id = maker.id;
                    level.head = maker.next;
                    if level.head == NIL {
                        level.tail = NIL;
                    } else {
                        nodes[level.head as usize].prev = NIL;
                    }
                    level.count -= 1;
                    index.remove(&maker_id);
                    free.push(slot);
                    out.push(Event::Done {
                        order: maker_id,
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
        if let Some(budget) = taker.budget {
            // The loop also ends when the book runs dry; the budget is exhausted only if
            // not even one lot at the best remaining price is affordable.
            let best = match taker.order.side {
                Side::Buy => levels.keys().next().copied(),
                Side::Sell => levels.keys().next_back().copied(),
            };
            if let Some(price) = best {
                taker.budget_exhausted |= spec.affordable_qty(budget, price) == 0;
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
                    total: qty,
                    count: 1,
                });
            }
            Entry::Occupied(mut o) => {
                let level = o.get_mut();
                let tail = level.tail;
                self.nodes[tail as usize].next = slot;
                self.nodes[slot as usize].prev = tail;
                level.tail = slot;
                level.total += qty;
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
        level.total -= node.remaining;
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
                    total += n.remaining;
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
    budget: Option<i64>,
    budget_exhausted: bool,
}

impl Taker {
    fn new(order: NewOrder, limit: Option<Price>, qty: Qty, budget: Option<i64>) -> Taker {
        Taker {
            order,
            limit,
            remaining: qty,
            filled: 0,
            budget,
            budget_exhausted: false,
        }
    }
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
        let out = run(
            &mut book,
            Command::Place(NewOrder {
                id: 3,
                user: 30,
                side: Side::Buy,
                kind: OrderKind::MarketQuote { budget: 15 },
            }),
        );
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
