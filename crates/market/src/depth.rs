//! L2 depth of one symbol, kept from the engine's events alone (never by asking the engine).
//!
//! It mirrors the resting orders (id → side, price, remaining) so that a trade or a cancel,
//! which name only the order, can be turned into a level change. Every level change gets the
//! next update id; a client keeps a local book in sync the way Binance documents: take a
//! snapshot (`last_update_id`), buffer the diffs, drop those whose last id is at or below the
//! snapshot's, and apply the rest in order, each one's first id following the previous
//! one's last.

use agora_engine::{Event, OrderId, Price, Qty, RestingOrder, Side};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeMap;

/// A price level's new total (0 = the level is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LevelChange {
    pub side: Side,
    pub price: Price,
    pub qty: LevelQty,
}

/// A price level's total quantity: wide, because many orders at one price can together hold
/// more than an i64 (each order fits one; a buy is bounded by its quote hold, not by supply).
pub type LevelQty = i128;

/// The changes one batch of events made, with the update ids they cover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DepthDiff {
    pub first_update_id: u64,
    pub last_update_id: u64,
    pub changes: Vec<LevelChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DepthSnapshot {
    pub last_update_id: u64,
    /// Best first.
    pub bids: Vec<(Price, LevelQty)>,
    pub asks: Vec<(Price, LevelQty)>,
}

#[derive(Clone, Debug, Default)]
pub struct DepthBook {
    orders: FxHashMap<OrderId, (Side, Price, Qty)>,
    bids: BTreeMap<Price, LevelQty>,
    asks: BTreeMap<Price, LevelQty>,
    update_id: u64,
}

impl DepthBook {
    /// A book holding `resting` (e.g. the open orders a restart restored), update id 0.
    pub fn from_resting(resting: impl IntoIterator<Item = RestingOrder>) -> DepthBook {
        let mut book = DepthBook::default();
        for o in resting {
            book.add(o.id, o.side, o.price, o.remaining);
        }
        book
    }

    pub fn update_id(&self) -> u64 {
        self.update_id
    }

    /// This book, replacing one whose last update id was `previous` (a read model rebuilt
    /// after it missed events): its id moves one past it without a diff, so a client
    /// following the diff stream sees the next diff's first id skip one and takes a new
    /// snapshot, as the sync procedure says, instead of applying diffs to a stale book.
    pub fn replacing(mut self, previous: u64) -> DepthBook {
        self.update_id = previous + 1;
        self
    }

    pub fn best_bid(&self) -> Option<(Price, LevelQty)> {
        self.bids.iter().next_back().map(|(p, q)| (*p, *q))
    }

    pub fn best_ask(&self) -> Option<(Price, LevelQty)> {
        self.asks.iter().next().map(|(p, q)| (*p, *q))
    }

    fn levels(&mut self, side: Side) -> &mut BTreeMap<Price, LevelQty> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    fn add(&mut self, id: OrderId, side: Side, price: Price, qty: Qty) -> LevelQty {
        self.orders.insert(id, (side, price, qty));
        let level = self.levels(side).entry(price).or_default();
        *level += qty as LevelQty;
        *level
    }

    /// Takes `qty` off a resting order; returns the level's new total.
    fn reduce(&mut self, id: OrderId, qty: Qty) -> Option<(Side, Price, LevelQty)> {
        let (side, price, remaining) = self.orders.get_mut(&id)?;
        let (side, price) = (*side, *price);
        *remaining -= qty;
        debug_assert!(*remaining >= 0);
        if *remaining <= 0 {
            self.orders.remove(&id);
        }
        let levels = self.levels(side);
        // The mirror holds the order, so its level exists: every resting order's quantity
        // was added to it, and wide sums cannot wrap.
        let level = levels
            .get_mut(&price)
            .expect("a resting order's level exists");
        *level -= qty as LevelQty;
        let total = *level;
        debug_assert!(total >= 0);
        if total <= 0 {
            levels.remove(&price);
        }
        Some((side, price, total.max(0)))
    }

    /// Applies the engine's events; returns the level changes with their update ids (None if
    /// nothing in the book changed).
    pub fn apply(&mut self, events: &[Event]) -> Option<DepthDiff> {
        let first = self.update_id + 1;
        let mut changes = Vec::new();
        for event in events {
            let change = match *event {
                Event::Rested {
                    order,
                    side,
                    price,
                    remaining,
                } => {
                    let qty = self.add(order, side, price, remaining);
                    Some((side, price, qty))
                }
                Event::Trade { maker, qty, .. } => self.reduce(maker, qty),
                Event::Done {
                    order, remaining, ..
                } => {
                    // Makers filled to zero left with their last trade; a canceled or expired
                    // resting order takes its remainder with it. Takers never rested.
                    match self.orders.get(&order) {
                        Some(&(_, _, left)) if left > 0 => {
                            debug_assert_eq!(left, remaining);
                            self.reduce(order, left)
                        }
                        _ => None,
                    }
                }
                Event::CancelRejected { .. } => None,
            };
            if let Some((side, price, qty)) = change {
                self.update_id += 1;
                changes.push(LevelChange { side, price, qty });
            }
        }
        (!changes.is_empty()).then_some(DepthDiff {
            first_update_id: first,
            last_update_id: self.update_id,
            changes,
        })
    }

    pub fn snapshot(&self, limit: usize) -> DepthSnapshot {
        DepthSnapshot {
            last_update_id: self.update_id,
            bids: self
                .bids
                .iter()
                .rev()
                .take(limit)
                .map(|(p, q)| (*p, *q))
                .collect(),
            asks: self
                .asks
                .iter()
                .take(limit)
                .map(|(p, q)| (*p, *q))
                .collect(),
        }
    }
}

/// A client's local book, kept in sync from a snapshot and diffs (what a WebSocket client
/// does); used by tests to prove the procedure works.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalBook {
    pub last_update_id: u64,
    pub bids: BTreeMap<Price, LevelQty>,
    pub asks: BTreeMap<Price, LevelQty>,
}

/// Bids and asks, each best first, as (price, qty).
pub type Levels = (Vec<(Price, LevelQty)>, Vec<(Price, LevelQty)>);

#[derive(Debug, PartialEq, Eq)]
pub struct GapError {
    pub expected: u64,
    pub got: u64,
}

impl LocalBook {
    pub fn from_snapshot(s: &DepthSnapshot) -> LocalBook {
        LocalBook {
            last_update_id: s.last_update_id,
            bids: s.bids.iter().copied().collect(),
            asks: s.asks.iter().copied().collect(),
        }
    }

    /// Applies a diff; ignores diffs the snapshot already covers; refuses a gap.
    pub fn apply(&mut self, diff: &DepthDiff) -> Result<(), GapError> {
        if diff.last_update_id <= self.last_update_id {
            return Ok(());
        }
        if diff.first_update_id > self.last_update_id + 1 {
            return Err(GapError {
                expected: self.last_update_id + 1,
                got: diff.first_update_id,
            });
        }
        // A diff straddling the snapshot: its changes are absolute totals, so re-applying
        // the ones the snapshot already had is harmless.
        for c in &diff.changes {
            let levels = match c.side {
                Side::Buy => &mut self.bids,
                Side::Sell => &mut self.asks,
            };
            if c.qty == 0 {
                levels.remove(&c.price);
            } else {
                levels.insert(c.price, c.qty);
            }
        }
        self.last_update_id = diff.last_update_id;
        Ok(())
    }

    /// (bids best first, asks best first).
    pub fn levels(&self) -> Levels {
        (
            self.bids.iter().rev().map(|(p, q)| (*p, *q)).collect(),
            self.asks.iter().map(|(p, q)| (*p, *q)).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_engine::{
        Book, BookSpec, Command, NewOrder, OrderKind, SelfTradePrevention, TimeInForce,
    };
    use proptest::prelude::*;

    /// An order of one of 5 users, so that orders often meet their own user's, with every
    /// self-trade prevention mode in turn (expired makers leave the book by `Done`).
    fn place(id: u64, side: Side, price: i64, qty: i64, tif: TimeInForce) -> Command {
        use SelfTradePrevention::*;
        Command::Place(NewOrder {
            id,
            user: id % 5,
            side,
            kind: OrderKind::Limit { price, qty, tif },
            stp: [None, ExpireTaker, ExpireMaker, ExpireBoth][(id % 4) as usize],
        })
    }

    /// Runs a flow of (buy?, price, qty, kind) through an engine book and the depth mirror
    /// fed by its events, with a client syncing from a snapshot taken after step
    /// `snapshot_at`; the mirror, the client and the engine must end with the same levels.
    fn check_depth_flow(
        spec: BookSpec,
        flow: &[(bool, i64, i64, u8)],
        snapshot_at: usize,
    ) -> Result<(), TestCaseError> {
        let mut engine = Book::new(spec);
        let mut depth = DepthBook::default();
        let mut client: Option<LocalBook> = None;
        let mut buffered = Vec::new();
        for (i, &(buy, price, qty, kind)) in flow.iter().enumerate() {
            let id = i as u64 + 1;
            let side = if buy { Side::Buy } else { Side::Sell };
            let cmd = match kind {
                0..=5 => place(id, side, price, qty, TimeInForce::Gtc),
                6 => place(id, side, price, qty, TimeInForce::Ioc),
                _ => Command::Cancel {
                    id: 1 + (price as u64).wrapping_mul(7).wrapping_add(qty as u64) % id,
                },
            };
            let mut events = Vec::new();
            engine.execute(&cmd, &mut events);
            if let Some(diff) = depth.apply(&events) {
                buffered.push(diff);
            }
            if i == snapshot_at {
                client = Some(LocalBook::from_snapshot(&depth.snapshot(usize::MAX)));
            }
        }
        let (bids, asks) = engine.depth(usize::MAX);
        let want = (
            bids.iter().map(|l| (l.price, l.qty)).collect::<Vec<_>>(),
            asks.iter().map(|l| (l.price, l.qty)).collect::<Vec<_>>(),
        );
        let s = depth.snapshot(usize::MAX);
        prop_assert_eq!((s.bids.clone(), s.asks.clone()), want.clone());
        let mut client = client.unwrap();
        for diff in &buffered {
            prop_assert_eq!(client.apply(diff), Ok(()));
        }
        prop_assert_eq!(client.levels(), want);
        // Update ids are contiguous across diffs.
        for w in buffered.windows(2) {
            prop_assert_eq!(w[1].first_update_id, w[0].last_update_id + 1);
        }
        Ok(())
    }

    proptest! {
        /// After any flow, the depth kept from events equals the engine's own aggregated book,
        /// and a client that synced from a mid-flow snapshot plus the diffs after it agrees.
        #[test]
        fn depth_from_events_equals_the_engine_book(
            flow in prop::collection::vec((any::<bool>(), 95i64..105, 1i64..20, 0u8..10), 1..400),
            snapshot_at in any::<prop::sample::Index>(),
        ) {
            let spec = BookSpec { base_unit: 1, lot_size: 1 };
            check_depth_flow(spec, &flow, snapshot_at.index(flow.len()))?;
        }

        /// The same at extreme sizes: scale 18, prices of a few minor units, quantities near
        /// i64::MAX, so that one level holds many times what an i64 can.
        #[test]
        fn depth_stays_exact_beyond_i64_per_level(
            flow in prop::collection::vec(
                (any::<bool>(), 1i64..4, prop_oneof![Just(i64::MAX), i64::MAX / 3..=i64::MAX, 1i64..10], 0u8..10),
                1..200,
            ),
            snapshot_at in any::<prop::sample::Index>(),
        ) {
            let spec = BookSpec { base_unit: 1_000_000_000_000_000_000, lot_size: 1 };
            check_depth_flow(spec, &flow, snapshot_at.index(flow.len()))?;
        }
    }

    #[test]
    fn a_gap_in_update_ids_is_detected() {
        let mut client = LocalBook {
            last_update_id: 10,
            ..LocalBook::default()
        };
        let diff = DepthDiff {
            first_update_id: 12,
            last_update_id: 13,
            changes: vec![],
        };
        assert_eq!(
            client.apply(&diff),
            Err(GapError {
                expected: 11,
                got: 12
            })
        );
    }
}
