//! Exchange-core-like flow through agora's engine and the Rust order-book crates that can
//! take it, side by side in one run.
//!
//! A book is filled to ~1,000 resting orders on ~750 price levels, then a stream of
//! operations runs: ~9% new GTC limits, ~3% IOC limits that cross, ~6% cancels and ~82%
//! cancel-and-replace near the last price. The stream is generated once (simulated on
//! agora's book so that cancels target live orders and the book stays near its size), then
//! replayed unchanged through every engine.
//!
//! Reported per engine: operations/s (tight loop, no timing inside) and p50/p99/p99.9
//! latency per operation (a separate pass timing each operation). A cancel-and-replace
//! counts as one operation.
//!
//! Run: `cargo bench -p agora-engine --bench exchange_core_flow` (optionally `-- --ops N`).

use agora_engine::{
    Book, BookSpec, Command, Event, NewOrder, OrderKind, SelfTradePrevention, Side, TimeInForce,
};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

const MID: i64 = 1_000_000;
const LEVELS_PER_SIDE: i64 = 375;
const BOOK_TARGET: usize = 1_000;

#[derive(Clone, Copy, Debug)]
enum Op {
    Gtc {
        id: u64,
        side: Side,
        price: i64,
        qty: i64,
    },
    Ioc {
        id: u64,
        side: Side,
        price: i64,
        qty: i64,
    },
    Cancel {
        id: u64,
    },
    Replace {
        cancel: u64,
        id: u64,
        side: Side,
        price: i64,
        qty: i64,
    },
}

struct Flow {
    fill: Vec<Op>,
    ops: Vec<Op>,
}

/// Generates the flow by simulating it on agora's book (any correct price-time engine
/// reaches the same states).
fn generate(n_ops: usize, seed: u64) -> Flow {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut book = Book::new(BookSpec {
        base_unit: 1,
        lot_size: 1,
    });
    let mut out = Vec::new();
    let mut next_id = 1u64;
    let mut live: Vec<u64> = Vec::new();
    let mut sides = std::collections::HashMap::new();
    let apply = |book: &mut Book, cmd: Command, out: &mut Vec<Event>| {
        out.clear();
        book.execute(&cmd, out);
    };
    let mut fill = Vec::new();
    // Fill: one order on each of 750 levels, then ~250 more on random levels.
    for i in 0..BOOK_TARGET {
        let side = if i % 2 == 0 { Side::Buy } else { Side::Sell };
        let offset = if i < 2 * LEVELS_PER_SIDE as usize {
            1 + (i as i64 / 2)
        } else {
            rng.random_range(1..=LEVELS_PER_SIDE)
        };
        let price = if side == Side::Buy {
            MID - offset
        } else {
            MID + offset
        };
        let qty = rng.random_range(1..=100);
        let id = next_id;
        next_id += 1;
        apply(
            &mut book,
            place(id, side, price, qty, TimeInForce::Gtc),
            &mut out,
        );
        fill.push(Op::Gtc {
            id,
            side,
            price,
            qty,
        });
        live.push(id);
        sides.insert(id, side);
    }
    let passive_price = |rng: &mut rand::rngs::StdRng, book: &Book, side: Side| {
        // Within 2 × 375 ticks of the touch: ~1,000 orders then spread over ~750 levels.
        let depth = rng.random_range(0..2 * LEVELS_PER_SIDE);
        match side {
            Side::Buy => book.best_ask().unwrap_or(MID + 1) - 1 - depth,
            Side::Sell => book.best_bid().unwrap_or(MID - 1) + 1 + depth,
        }
    };
    let mut ops = Vec::with_capacity(n_ops);
    while ops.len() < n_ops {
        // Drop ids the engine has finished with (filled by IOCs or crossing GTCs).
        if ops.len() % 64 == 0 {
            live.retain(|id| book.contains(*id));
        }
        let roll = rng.random_range(0..100);
        let roll = match (roll, live.len()) {
            (0..=8, n) if n > BOOK_TARGET + 100 => 12, // too big: cancel instead
            (12..=17, n) if n < BOOK_TARGET - 100 => 0, // too small: add instead
            (r, _) => r,
        };
        let op = if roll < 9 || live.is_empty() {
            let side = if rng.random_bool(0.5) {
                Side::Buy
            } else {
                Side::Sell
            };
            let price = passive_price(&mut rng, &book, side);
            let (id, qty) = (next_id, rng.random_range(1..=100));
            next_id += 1;
            live.push(id);
            sides.insert(id, side);
            Op::Gtc {
                id,
                side,
                price,
                qty,
            }
        } else if roll < 12 {
            let side = if rng.random_bool(0.5) {
                Side::Buy
            } else {
                Side::Sell
            };
            let price = match side {
                Side::Buy => book.best_ask().unwrap_or(MID) + rng.random_range(0..3),
                Side::Sell => book.best_bid().unwrap_or(MID) - rng.random_range(0..3),
            };
            let (id, qty) = (next_id, rng.random_range(1..=150));
            next_id += 1;
            Op::Ioc {
                id,
                side,
                price,
                qty,
            }
        } else if roll < 18 {
            let id = live.swap_remove(rng.random_range(0..live.len()));
            Op::Cancel { id }
        } else {
            let cancel = live.swap_remove(rng.random_range(0..live.len()));
            let side = sides[&cancel];
            let price = passive_price(&mut rng, &book, side);
            let (id, qty) = (next_id, rng.random_range(1..=100));
            next_id += 1;
            live.push(id);
            sides.insert(id, side);
            Op::Replace {
                cancel,
                id,
                side,
                price,
                qty,
            }
        };
        match op {
            Op::Gtc {
                id,
                side,
                price,
                qty,
            } => apply(
                &mut book,
                place(id, side, price, qty, TimeInForce::Gtc),
                &mut out,
            ),
            Op::Ioc {
                id,
                side,
                price,
                qty,
            } => apply(
                &mut book,
                place(id, side, price, qty, TimeInForce::Ioc),
                &mut out,
            ),
            Op::Cancel { id } => apply(&mut book, Command::Cancel { id }, &mut out),
            Op::Replace {
                cancel,
                id,
                side,
                price,
                qty,
            } => {
                apply(&mut book, Command::Cancel { id: cancel }, &mut out);
                apply(
                    &mut book,
                    place(id, side, price, qty, TimeInForce::Gtc),
                    &mut out,
                );
            }
        }
        ops.push(op);
    }
    let (bids, asks) = book.depth(usize::MAX);
    eprintln!(
        "flow: {} ops; book after the run: {} orders on {} levels",
        ops.len(),
        book.len(),
        bids.len() + asks.len()
    );
    Flow { fill, ops }
}

fn place(id: u64, side: Side, price: i64, qty: i64, tif: TimeInForce) -> Command {
    Command::Place(NewOrder {
        id,
        user: id % 1000,
        side,
        kind: OrderKind::Limit { price, qty, tif },
        stp: SelfTradePrevention::None,
    })
}

/// The operations every engine under test offers.
trait Engine {
    const NAME: &'static str;
    fn new() -> Self;
    fn gtc(&mut self, id: u64, side: Side, price: i64, qty: i64);
    fn ioc(&mut self, id: u64, side: Side, price: i64, qty: i64);
    fn cancel(&mut self, id: u64);

    #[inline]
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Gtc {
                id,
                side,
                price,
                qty,
            } => self.gtc(id, side, price, qty),
            Op::Ioc {
                id,
                side,
                price,
                qty,
            } => self.ioc(id, side, price, qty),
            Op::Cancel { id } => self.cancel(id),
            Op::Replace {
                cancel,
                id,
                side,
                price,
                qty,
            } => {
                self.cancel(cancel);
                self.gtc(id, side, price, qty);
            }
        }
    }
}

struct Agora {
    book: Book,
    out: Vec<Event>,
}

impl Engine for Agora {
    const NAME: &'static str = "agora-engine";
    fn new() -> Self {
        Agora {
            book: Book::new(BookSpec {
                base_unit: 1,
                lot_size: 1,
            }),
            out: Vec::with_capacity(64),
        }
    }
    fn gtc(&mut self, id: u64, side: Side, price: i64, qty: i64) {
        self.out.clear();
        self.book.execute(
            &place(id, side, price, qty, TimeInForce::Gtc),
            &mut self.out,
        );
        black_box(&self.out);
    }
    fn ioc(&mut self, id: u64, side: Side, price: i64, qty: i64) {
        self.out.clear();
        self.book.execute(
            &place(id, side, price, qty, TimeInForce::Ioc),
            &mut self.out,
        );
        black_box(&self.out);
    }
    fn cancel(&mut self, id: u64) {
        self.out.clear();
        self.book.execute(&Command::Cancel { id }, &mut self.out);
        black_box(&self.out);
    }
}

struct Lobster(lobster::OrderBook);

fn lobster_side(side: Side) -> lobster::Side {
    match side {
        Side::Buy => lobster::Side::Bid,
        Side::Sell => lobster::Side::Ask,
    }
}

impl Engine for Lobster {
    const NAME: &'static str = "lobster 0.7 (IOC = limit + cancel)";
    fn new() -> Self {
        let mut book = lobster::OrderBook::default();
        book.track_stats(false);
        Lobster(book)
    }
    fn gtc(&mut self, id: u64, side: Side, price: i64, qty: i64) {
        black_box(self.0.execute(lobster::OrderType::Limit {
            id: id as u128,
            side: lobster_side(side),
            qty: qty as u64,
            price: price as u64,
        }));
    }
    fn ioc(&mut self, id: u64, side: Side, price: i64, qty: i64) {
        let event = self.0.execute(lobster::OrderType::Limit {
            id: id as u128,
            side: lobster_side(side),
            qty: qty as u64,
            price: price as u64,
        });
        // Lobster has no IOC: take the rest off the book if any rested.
        if !matches!(event, lobster::OrderEvent::Filled { .. }) {
            black_box(
                self.0
                    .execute(lobster::OrderType::Cancel { id: id as u128 }),
            );
        }
        black_box(event);
    }
    fn cancel(&mut self, id: u64) {
        black_box(
            self.0
                .execute(lobster::OrderType::Cancel { id: id as u128 }),
        );
    }
}

struct Matchcore {
    book: matchcore::OrderBook,
    seq: u64,
    /// Our id → matchcore's order id (its submit sequence number).
    ids: Vec<u64>,
}

impl Matchcore {
    fn submit(&mut self, id: u64, side: Side, price: i64, qty: i64, tif: matchcore::TimeInForce) {
        use matchcore::*;
        let seq = self.seq;
        self.seq += 1;
        if self.ids.len() <= id as usize {
            self.ids.resize(id as usize + 1, u64::MAX);
        }
        self.ids[id as usize] = seq;
        let side = match side {
            agora_engine::Side::Buy => matchcore::Side::Buy,
            agora_engine::Side::Sell => matchcore::Side::Sell,
        };
        black_box(self.book.execute(&Command {
            meta: CommandMeta {
                sequence_number: SequenceNumber(seq),
                timestamp: Timestamp(seq),
            },
            kind: CommandKind::Submit(SubmitCmd {
                order: NewOrder::Limit(LimitOrder::new(
                    Price(price as u64),
                    QuantityPolicy::Standard {
                        quantity: Quantity(qty as u64),
                    },
                    OrderFlags::new(side, false, tif),
                )),
            }),
        }));
    }
}

impl Engine for Matchcore {
    const NAME: &'static str = "matchcore 0.4";
    fn new() -> Self {
        Matchcore {
            book: matchcore::OrderBook::new("BENCH"),
            seq: 0,
            ids: Vec::new(),
        }
    }
    fn gtc(&mut self, id: u64, side: Side, price: i64, qty: i64) {
        self.submit(id, side, price, qty, matchcore::TimeInForce::Gtc);
    }
    fn ioc(&mut self, id: u64, side: Side, price: i64, qty: i64) {
        self.submit(id, side, price, qty, matchcore::TimeInForce::Ioc);
    }
    fn cancel(&mut self, id: u64) {
        use matchcore::*;
        let seq = self.seq;
        self.seq += 1;
        black_box(self.book.execute(&Command {
            meta: CommandMeta {
                sequence_number: SequenceNumber(seq),
                timestamp: Timestamp(seq),
            },
            kind: CommandKind::Cancel(CancelCmd {
                order_id: OrderId(self.ids[id as usize]),
                order_kind: OrderKind::Limit,
            }),
        }));
    }
}

struct OrderbookRs(orderbook_rs::OrderBook<()>);

fn ob_side(side: Side) -> pricelevel::Side {
    match side {
        Side::Buy => pricelevel::Side::Buy,
        Side::Sell => pricelevel::Side::Sell,
    }
}

impl Engine for OrderbookRs {
    const NAME: &'static str = "orderbook-rs 0.15";
    fn new() -> Self {
        OrderbookRs(orderbook_rs::OrderBook::new("BENCH"))
    }
    fn gtc(&mut self, id: u64, side: Side, price: i64, qty: i64) {
        let r = self.0.add_limit_order(
            pricelevel::Id::from_u64(id),
            price as u128,
            qty as u64,
            ob_side(side),
            pricelevel::TimeInForce::Gtc,
            None,
        );
        let _ = black_box(r);
    }
    fn ioc(&mut self, id: u64, side: Side, price: i64, qty: i64) {
        let r = self.0.add_limit_order(
            pricelevel::Id::from_u64(id),
            price as u128,
            qty as u64,
            ob_side(side),
            pricelevel::TimeInForce::Ioc,
            None,
        );
        let _ = black_box(r);
    }
    fn cancel(&mut self, id: u64) {
        let _ = black_box(self.0.cancel_order(pricelevel::Id::from_u64(id)));
    }
}

struct Result {
    name: &'static str,
    ops_per_s: f64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
}

fn measure<E: Engine>(flow: &Flow) -> Result {
    // Throughput: the whole stream in a tight loop, best of three runs.
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut engine = E::new();
        flow.fill.iter().for_each(|op| engine.apply(op));
        let started = Instant::now();
        for op in &flow.ops {
            engine.apply(op);
        }
        best = best.min(started.elapsed().as_secs_f64());
        black_box(&engine);
    }
    // Latency: each operation timed on its own.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).expect("bounds");
    let mut engine = E::new();
    flow.fill.iter().for_each(|op| engine.apply(op));
    for op in &flow.ops {
        let started = Instant::now();
        engine.apply(op);
        let _ = hist.record(started.elapsed().as_nanos().max(1) as u64);
    }
    Result {
        name: E::NAME,
        ops_per_s: flow.ops.len() as f64 / best,
        p50_ns: hist.value_at_quantile(0.5),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `--ops N` sets the stream length.
    let n_ops = args
        .iter()
        .position(|a| a == "--ops")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let flow = generate(n_ops, 0xA60A);
    let results = [
        measure::<Agora>(&flow),
        measure::<Lobster>(&flow),
        measure::<Matchcore>(&flow),
        measure::<OrderbookRs>(&flow),
    ];
    let ours = results[0].ops_per_s;
    println!(
        "\nexchange-core-like flow, {n_ops} operations after a {}-order fill (one core)",
        flow.fill.len()
    );
    println!(
        "{:<38} {:>12} {:>9} {:>9} {:>9} {:>10}",
        "engine", "ops/s", "p50 ns", "p99 ns", "p99.9 ns", "vs agora"
    );
    for r in &results {
        println!(
            "{:<38} {:>12.0} {:>9} {:>9} {:>9} {:>9.2}x",
            r.name,
            r.ops_per_s,
            r.p50_ns,
            r.p99_ns,
            r.p999_ns,
            r.ops_per_s / ours
        );
    }
}
