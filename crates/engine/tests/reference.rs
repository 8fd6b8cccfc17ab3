//! The engine held against a naive reference engine on random order flow: both must emit the
//! same events (same trades, same ids, same order) and end with the same resting book.

use agora_engine::*;
use proptest::prelude::*;

/// Two specs: unit lots, and lots of 5 (which exercises lot rounding of quote budgets).
const SPECS: [BookSpec; 2] = [
    BookSpec {
        base_unit: 100,
        lot_size: 1,
    },
    BookSpec {
        base_unit: 100,
        lot_size: 5,
    },
];

/// Obviously-correct matching: a flat list scanned in full for every fill.
struct Reference {
    spec: BookSpec,
    resting: Vec<(u64, RestingOrder)>, // (arrival seq, order)
    arrivals: u64,
    next_trade_id: TradeId,
}

impl Reference {
    fn new(spec: BookSpec) -> Reference {
        Reference {
            spec,
            resting: Vec::new(),
            arrivals: 0,
            next_trade_id: 0,
        }
    }

    fn best_maker(&self, side: Side, limit: Option<Price>) -> Option<usize> {
        self.resting
            .iter()
            .enumerate()
            .filter(|(_, (_, o))| o.side == side.opposite())
            .filter(|(_, (_, o))| match (side, limit) {
                (_, None) => true,
                (Side::Buy, Some(l)) => o.price <= l,
                (Side::Sell, Some(l)) => o.price >= l,
            })
            .min_by_key(|(_, (seq, o))| {
                let price_rank = match side {
                    Side::Buy => o.price,
                    Side::Sell => -o.price,
                };
                (price_rank, *seq)
            })
            .map(|(i, _)| i)
    }

    fn execute(&mut self, cmd: &Command, out: &mut Vec<Event>) {
        match *cmd {
            Command::Cancel { id } => match self.resting.iter().position(|(_, o)| o.id == id) {
                Some(i) => {
                    let (_, o) = self.resting.remove(i);
                    out.push(Event::Done {
                        order: id,
                        reason: DoneReason::Canceled,
                        remaining: o.remaining,
                    });
                }
                None => out.push(Event::CancelRejected { order: id }),
            },
            Command::Place(order) => self.place(order, out),
        }
    }

    fn place(&mut self, order: NewOrder, out: &mut Vec<Event>) {
        if self.resting.iter().any(|(_, o)| o.id == order.id) {
            out.push(Event::Done {
                order: order.id,
                reason: DoneReason::Rejected,
                remaining: 0,
            });
            return;
        }
        let (limit, mut remaining, mut budget) = match order.kind {
            OrderKind::Limit { price, qty, tif } => {
                if tif == TimeInForce::Fok {
                    let crossing: Qty = self
                        .resting
                        .iter()
                        .filter(|(_, o)| o.side == order.side.opposite())
                        .filter(|(_, o)| match order.side {
                            Side::Buy => o.price <= price,
                            Side::Sell => o.price >= price,
                        })
                        .map(|(_, o)| o.remaining)
                        .sum();
                    if crossing < qty {
                        out.push(Event::Done {
                            order: order.id,
                            reason: DoneReason::Expired,
                            remaining: qty,
                        });
                        return;
                    }
                }
                (Some(price), qty, None)
            }
            OrderKind::Market { qty } => (None, qty, None),
            OrderKind::MarketQuote { budget } => (None, Qty::MAX, Some(budget)),
        };
        let mut filled = 0;
        let mut exhausted = false;
        while remaining > 0 {
            let Some(i) = self.best_maker(order.side, limit) else {
                break;
            };
            let maker = self.resting[i].1;
            let mut fill = remaining.min(maker.remaining);
            if let Some(b) = budget {
                let afford = (b as i128 * self.spec.base_unit as i128 / maker.price as i128) as i64;
                fill = fill.min(afford - afford % self.spec.lot_size);
                if fill == 0 {
                    exhausted = true;
                    break;
                }
                budget = Some(b - self.spec.notional(maker.price, fill));
            }
            remaining -= fill;
            filled += fill;
            self.resting[i].1.remaining -= fill;
            self.next_trade_id += 1;
            out.push(Event::Trade {
                id: self.next_trade_id,
                price: maker.price,
                qty: fill,
                taker: order.id,
                taker_user: order.user,
                maker: maker.id,
                maker_user: maker.user,
                taker_side: order.side,
            });
            if self.resting[i].1.remaining == 0 {
                self.resting.remove(i);
                out.push(Event::Done {
                    order: maker.id,
                    reason: DoneReason::Filled,
                    remaining: 0,
                });
            }
        }
        match order.kind {
            OrderKind::Limit { price, tif, .. } => {
                if remaining == 0 {
                    out.push(Event::Done {
                        order: order.id,
                        reason: DoneReason::Filled,
                        remaining: 0,
                    });
                } else if tif == TimeInForce::Gtc {
                    self.arrivals += 1;
                    self.resting.push((
                        self.arrivals,
                        RestingOrder {
                            id: order.id,
                            user: order.user,
                            side: order.side,
                            price,
                            remaining,
                        },
                    ));
                    out.push(Event::Rested {
                        order: order.id,
                        side: order.side,
                        price,
                        remaining,
                    });
                } else {
                    out.push(Event::Done {
                        order: order.id,
                        reason: DoneReason::Expired,
                        remaining,
                    });
                }
            }
            OrderKind::Market { .. } => out.push(Event::Done {
                order: order.id,
                reason: if remaining == 0 {
                    DoneReason::Filled
                } else {
                    DoneReason::Expired
                },
                remaining,
            }),
            OrderKind::MarketQuote { .. } => {
                if !exhausted {
                    if let (Some(b), Some(i)) = (budget, self.best_maker(order.side, None)) {
                        exhausted = (b as i128 * self.spec.base_unit as i128
                            / self.resting[i].1.price as i128)
                            < self.spec.lot_size as i128;
                    }
                }
                out.push(Event::Done {
                    order: order.id,
                    reason: if filled > 0 && exhausted {
                        DoneReason::Filled
                    } else {
                        DoneReason::Expired
                    },
                    remaining: 0,
                });
            }
        }
    }

    /// Bids best-first, then asks best-first, FIFO within a level.
    fn resting(&self) -> Vec<RestingOrder> {
        let mut bids: Vec<_> = self
            .resting
            .iter()
            .filter(|(_, o)| o.side == Side::Buy)
            .collect();
        bids.sort_by_key(|(seq, o)| (-o.price, *seq));
        let mut asks: Vec<_> = self
            .resting
            .iter()
            .filter(|(_, o)| o.side == Side::Sell)
            .collect();
        asks.sort_by_key(|(seq, o)| (o.price, *seq));
        bids.into_iter().chain(asks).map(|(_, o)| *o).collect()
    }
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Buy), Just(Side::Sell)]
}

fn tif() -> impl Strategy<Value = TimeInForce> {
    prop_oneof![
        6 => Just(TimeInForce::Gtc),
        2 => Just(TimeInForce::Ioc),
        2 => Just(TimeInForce::Fok)
    ]
}

/// An abstract step; order ids are assigned sequentially and cancels pick an earlier id, so
/// cancels hit live, filled and unknown orders alike.
#[derive(Clone, Debug)]
enum Step {
    Limit(Side, Price, Qty, TimeInForce),
    Market(Side, Qty),
    MarketQuote(i64),
    Cancel(usize),
    Duplicate(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (side(), 90i64..110, 1i64..20, tif()).prop_map(|(s, p, q, t)| Step::Limit(s, p, q, t)),
        1 => (side(), 1i64..40).prop_map(|(s, q)| Step::Market(s, q)),
        1 => (1i64..5000).prop_map(Step::MarketQuote),
        4 => any::<usize>().prop_map(Step::Cancel),
        1 => any::<usize>().prop_map(Step::Duplicate),
    ]
}

/// Turns steps into commands; quantities are counted in lots.
fn to_commands(steps: &[Step], lot: Qty) -> Vec<Command> {
    let mut next_id = 0u64;
    let mut cmds = Vec::new();
    for s in steps {
        let mut place = |side, kind| {
            next_id += 1;
            Command::Place(NewOrder {
                id: next_id,
                user: next_id % 7,
                side,
                kind,
            })
        };
        let cmd = match *s {
            Step::Limit(side, price, qty, tif) => place(side, OrderKind::Limit { price, qty, tif }),
            Step::Market(side, qty) => place(side, OrderKind::Market { qty: qty * lot }),
            Step::MarketQuote(budget) => place(Side::Buy, OrderKind::MarketQuote { budget }),
            Step::Cancel(pick) => Command::Cancel {
                id: (pick as u64) % (next_id + 2), // sometimes an id never used
            },
            Step::Duplicate(pick) if next_id > 0 => Command::Place(NewOrder {
                id: 1 + (pick as u64) % next_id,
                user: 1,
                side: Side::Buy,
                kind: OrderKind::Limit {
                    price: 1,
                    qty: lot,
                    tif: TimeInForce::Gtc,
                },
            }),
            Step::Duplicate(_) => continue,
        };
        cmds.push(cmd);
    }
    cmds
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn engine_matches_reference(steps in prop::collection::vec(step(), 1..300), spec in prop::sample::select(&SPECS[..])) {
        let cmds = to_commands(&steps, spec.lot_size);
        let mut book = Book::new(spec);
        let mut reference = Reference::new(spec);
        for cmd in &cmds {
            let (mut got, mut want) = (Vec::new(), Vec::new());
            book.execute(cmd, &mut got);
            reference.execute(cmd, &mut want);
            prop_assert_eq!(&got, &want, "after {:?}", cmd);
            book.check_invariants();
        }
        prop_assert_eq!(book.resting(), reference.resting());
    }

    /// Invariant 6: replaying the same inputs gives the same outputs, and a book restored
    /// from a snapshot of its resting orders continues exactly like the original.
    #[test]
    fn replay_and_restore_are_deterministic(
        steps in prop::collection::vec(step(), 1..200),
        cut in any::<prop::sample::Index>(),
    ) {
        // Ids must grow with arrival for restore-by-id, as they do in the system.
        let steps: Vec<_> = steps.into_iter().filter(|s| !matches!(s, Step::Duplicate(_))).collect();
        let spec = SPECS[1];
        let cmds = to_commands(&steps, spec.lot_size);
        prop_assume!(!cmds.is_empty());
        let cut = cut.index(cmds.len());
        let run = |book: &mut Book, cmds: &[Command]| {
            let mut out = Vec::new();
            cmds.iter().for_each(|c| book.execute(c, &mut out));
            out
        };
        let mut a = Book::new(spec);
        let mut b = Book::new(spec);
        prop_assert_eq!(run(&mut a, &cmds), run(&mut b, &cmds));

        let mut original = Book::new(spec);
        run(&mut original, &cmds[..cut]);
        // Restore by arrival order: resting() is priority order, and ids grow with arrival.
        let mut snapshot = original.resting();
        snapshot.sort_by_key(|o| o.id);
        let mut restored = Book::new(spec);
        snapshot.into_iter().for_each(|o| restored.restore(o));
        restored.set_next_trade_id(original.next_trade_id());
        prop_assert_eq!(run(&mut original, &cmds[cut..]), run(&mut restored, &cmds[cut..]));
        prop_assert_eq!(original.resting(), restored.resting());
    }
}
