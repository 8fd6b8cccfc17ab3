//! The settled feed: what each commit made true, for market processes (`--roles market`).
//!
//! In the embedded mode, and in a writer's process that plays the market role, the market
//! thread gets each commit over an in-process channel ([`crate::market`]). A writer without
//! the market role also publishes it, right after each commit, to `<ns>.settled`:
//!
//! - per symbol the commit settled engine output for, a [`Settled::Symbol`] keyed by the
//!   symbol's name: the engine events, trades and candles, and the symbol's cursor before
//!   and after the commit;
//! - per user whose orders or balances changed, a [`Settled::User`] keyed by the user id.
//!
//! Market processes rebuild the read model from one store snapshot and read on from the
//! log's ends as they were just before it ([`MarketFeed`]). Nothing here decides money:
//! the feed is derived from the store, so it is published after the commit rather than
//! written to the outbox (which would double the rows every order costs). What a crash
//! between a commit and its publication loses is found and repaired instead: a symbol's
//! record names the cursor it follows, and a market process whose own cursor for the
//! symbol differs rebuilds that symbol from the store. A writer publishes every symbol's
//! cursor when it starts ([`Settled::Symbol`] with nothing settled), so a symbol that went
//! quiet after the crash is repaired too. A lost user record is lost to live streams only,
//! as with any push stream (clients read their orders over REST when they reconnect).

use crate::market::{candle_of, candle_row, CommitObserver, Committed, MarketData, SymbolMarket};
use crate::rules::RefData;
use agora_bus::{partition_for, EventLog, Record};
use agora_core::accounts::BalanceRow;
use agora_engine::Event;
use agora_market::{Candle, Interval};
use agora_store::{OrderRow, TradeRow};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One record of the settled feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Settled {
    /// What one commit settled for one symbol. `cursor` is the symbol's cursor after the
    /// commit (the last book input applied), `prev_cursor` the one before: a reader that
    /// is not at `prev_cursor` missed something. A writer that starts sends each symbol's
    /// cursor with both equal and nothing else.
    Symbol {
        symbol: u32,
        prev_cursor: i64,
        cursor: i64,
        events: Vec<Event>,
        trades: Vec<TradeRow>,
        candles: Vec<(Interval, Candle)>,
    },
    /// One user's orders and balances as one commit left them.
    User {
        user: u64,
        orders: Vec<OrderRow>,
        balances: Vec<BalanceRow>,
    },
}

impl Settled {
    pub fn event_type(&self) -> &'static str {
        match self {
            Settled::Symbol { .. } => "SymbolSettled",
            Settled::User { .. } => "UserUpdated",
        }
    }
}

/// The records of one commit: one per symbol settled (in symbol order), one per user
/// touched. `cursors` are the symbols' cursors before the commit and after it.
pub fn records_of(
    committed: &Committed,
    cursors: &BTreeMap<u32, (i64, i64)>,
    refdata: &RefData,
) -> Vec<(String, Settled)> {
    let mut symbols: BTreeMap<u32, Settled> = cursors
        .iter()
        .map(|(&symbol, &(prev_cursor, cursor))| {
            let settled = Settled::Symbol {
                symbol,
                prev_cursor,
                cursor,
                events: Vec::new(),
                trades: Vec::new(),
                candles: Vec::new(),
            };
            (symbol, settled)
        })
        .collect();
    for (symbol, batch) in &committed.events {
        if let Some(Settled::Symbol { events, .. }) = symbols.get_mut(symbol) {
            events.extend_from_slice(batch);
        }
    }
    for t in &committed.trades {
        if let Some(Settled::Symbol { trades, .. }) = symbols.get_mut(&t.symbol) {
            trades.push(t.clone());
        }
    }
    for row in &committed.candles {
        if let Some(Settled::Symbol { candles, .. }) = symbols.get_mut(&row.symbol) {
            candles.push(candle_of(row));
        }
    }
    let mut users: BTreeMap<u64, (Vec<OrderRow>, Vec<BalanceRow>)> = BTreeMap::new();
    for o in &committed.orders {
        users.entry(o.user).or_default().0.push(o.clone());
    }
    for b in &committed.balances {
        users.entry(b.user).or_default().1.push(*b);
    }
    let mut records: Vec<(String, Settled)> = symbols
        .into_iter()
        .filter_map(|(id, s)| Some((refdata.symbols.get(&id)?.name.clone(), s)))
        .collect();
    records.extend(users.into_iter().map(|(user, (orders, balances))| {
        let user_record = Settled::User {
            user,
            orders,
            balances,
        };
        (user.to_string(), user_record)
    }));
    records
}

/// The writer's side: publishes each commit's records, queued behind the earlier ones of
/// their partition (the idempotent producer keeps them in order and writes none twice).
pub struct SettledPublisher {
    log: Arc<dyn EventLog>,
}

impl SettledPublisher {
    pub fn new(log: Arc<dyn EventLog>) -> SettledPublisher {
        SettledPublisher { log }
    }

    pub fn publish(&self, records: Vec<(String, Settled)>) {
        let partitions = self.log.partitions();
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for (key, settled) in records {
            // The record's seq: the symbol's cursor (increasing per key); user records are
            // ordered by the log alone.
            let seq = match &settled {
                Settled::Symbol { cursor, .. } => *cursor,
                Settled::User { .. } => 0,
            };
            let payload = serde_json::to_string(&settled).expect("settled records serialize");
            by_partition
                .entry(partition_for(&key, partitions))
                .or_default()
                .push(Record::new(seq, key, settled.event_type(), payload));
        }
        for (partition, records) in by_partition {
            // Nothing was queued: market processes notice the missing cursor and rebuild.
            if let Err(e) = self.log.append_queued(partition, records) {
                tracing::warn!(error = %e, partition, "settled records not published");
            }
        }
    }
}

/// Rebuilds symbols' read models from the store: the model and cursor of each of
/// `symbols` as of one snapshot (symbols the store does not know are left out).
pub trait SymbolSource: Send {
    fn load(&mut self, symbols: &[u32]) -> Result<Vec<(u32, i64, SymbolMarket)>, String>;
}

/// A market process's side: applies the feed to the read model, in order per symbol,
/// dropping what the model already has and rebuilding a symbol that missed a record.
pub struct MarketFeed {
    market: Arc<MarketData>,
    /// Each symbol's cursor as the model holds it.
    cursors: FxHashMap<u32, i64>,
    source: Box<dyn SymbolSource>,
    /// Records dropped as already applied, and symbols rebuilt, since start.
    pub dropped: u64,
    pub rebuilt: u64,
}

impl MarketFeed {
    /// `cursors`: each symbol's cursor in the snapshot `market` was built from.
    pub fn new(
        market: Arc<MarketData>,
        cursors: FxHashMap<u32, i64>,
        source: Box<dyn SymbolSource>,
    ) -> MarketFeed {
        MarketFeed {
            market,
            cursors,
            source,
            dropped: 0,
            rebuilt: 0,
        }
    }

    pub fn market(&self) -> &MarketData {
        &self.market
    }

    pub fn cursor(&self, symbol: u32) -> i64 {
        self.cursors.get(&symbol).copied().unwrap_or(0)
    }

    /// Applies a batch of records (in log order per partition) and tells `observer`.
    /// Returns the symbols it rebuilt.
    pub fn apply(
        &mut self,
        records: impl IntoIterator<Item = Settled>,
        observer: Option<&dyn CommitObserver>,
        refdata: &RefData,
    ) -> Vec<u32> {
        let mut batch = Committed::default();
        let mut gaps: FxHashSet<u32> = FxHashSet::default();
        for record in records {
            match record {
                Settled::Symbol {
                    symbol,
                    prev_cursor,
                    cursor,
                    events,
                    trades,
                    candles,
                } => {
                    let mine = self.cursor(symbol);
                    if gaps.contains(&symbol) || cursor <= mine {
                        // Already in the model (the snapshot, or a gap's rebuild ahead).
                        self.dropped += 1;
                        continue;
                    }
                    if prev_cursor != mine {
                        gaps.insert(symbol);
                        continue;
                    }
                    self.cursors.insert(symbol, cursor);
                    if !events.is_empty() {
                        batch.events.push((symbol, events));
                    }
                    batch.trades.extend(trades);
                    batch
                        .candles
                        .extend(candles.iter().map(|(i, c)| candle_row(symbol, *i, c)));
                }
                Settled::User {
                    orders, balances, ..
                } => {
                    batch.orders.extend(orders);
                    batch.balances.extend(balances);
                }
            }
        }
        if !batch.is_empty() {
            let diffs = self.market.apply(&batch);
            if let Some(observer) = observer {
                observer.committed(&batch, &diffs, &self.market, refdata);
            }
        }
        let mut gaps: Vec<u32> = gaps.into_iter().collect();
        gaps.sort_unstable();
        if !gaps.is_empty() {
            self.rebuild(&gaps);
        }
        gaps
    }

    /// Rebuilds `symbols` from the store; retried by the next gap if the store cannot be
    /// read now (the symbol keeps its old cursor, so its next record is a gap again).
    fn rebuild(&mut self, symbols: &[u32]) {
        match self.source.load(symbols) {
            Ok(rebuilt) => {
                for (symbol, cursor, model) in rebuilt {
                    tracing::warn!(
                        symbol,
                        from = self.cursor(symbol),
                        to = cursor,
                        "market read model rebuilt a symbol that missed settled records"
                    );
                    self.market.replace(symbol, model);
                    self.cursors.insert(symbol, cursor);
                    self.rebuilt += 1;
                }
            }
            Err(e) => tracing::error!(error = %e, ?symbols, "market read model not rebuilt"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_engine::Side;
    use agora_market::DepthBook;
    use agora_store::{AssetRow, SymbolRow};

    use std::sync::Mutex;

    fn refdata() -> RefData {
        let asset = |id: u32, code: &str| AssetRow {
            id,
            code: code.into(),
            scale: 2,
        };
        RefData::new(
            vec![asset(1, "BTC"), asset(2, "USDT")],
            vec![SymbolRow {
                id: 7,
                ..crate::test_rows::symbol("BTC-USDT", 1)
            }],
        )
    }

    fn rested(order: u64, price: i64, qty: i64) -> Event {
        Event::Rested {
            order,
            side: Side::Buy,
            price,
            remaining: qty,
        }
    }

    fn symbol_record(prev: i64, cursor: i64, events: Vec<Event>) -> Settled {
        Settled::Symbol {
            symbol: 7,
            prev_cursor: prev,
            cursor,
            events,
            trades: Vec::new(),
            candles: Vec::new(),
        }
    }

    /// A store that holds its symbols at a given cursor with one resting order; counts
    /// its loads.
    struct Store(Arc<Mutex<(i64, u32)>>);

    impl SymbolSource for Store {
        fn load(&mut self, symbols: &[u32]) -> Result<Vec<(u32, i64, SymbolMarket)>, String> {
            let cursor = {
                let mut s = self.0.lock().unwrap();
                s.1 += 1; // loads so far
                s.0
            };
            let mut depth = DepthBook::default();
            depth.apply(&[rested(99, 500, 3)]);
            Ok(symbols
                .iter()
                .map(|&s| (s, cursor, SymbolMarket::new(depth.clone())))
                .collect())
        }
    }

    fn feed(store_cursor: i64) -> (MarketFeed, Arc<Mutex<(i64, u32)>>) {
        let market = Arc::new(MarketData::new(
            FxHashMap::default(),
            Vec::new(),
            Vec::new(),
        ));
        let store = Arc::new(Mutex::new((store_cursor, 0)));
        let mut cursors = FxHashMap::default();
        cursors.insert(7, 10);
        (
            MarketFeed::new(market, cursors, Box::new(Store(store.clone()))),
            store,
        )
    }

    fn levels(feed: &MarketFeed) -> (u64, Vec<(i64, i128)>) {
        let m = feed.market.symbol(7).unwrap();
        let m = m.read().unwrap();
        let s = m.depth.snapshot(100);
        (s.last_update_id, s.bids)
    }

    #[test]
    fn records_in_order_apply_and_those_already_held_are_dropped() {
        let (mut feed, store) = feed(10);
        let r = refdata();
        feed.apply(
            [
                symbol_record(8, 10, vec![rested(1, 100, 5)]), // in the snapshot already
                symbol_record(10, 12, vec![rested(2, 101, 5)]),
                symbol_record(12, 13, vec![rested(3, 102, 5)]),
                symbol_record(12, 13, vec![rested(3, 102, 5)]), // a copy
            ],
            None,
            &r,
        );
        assert_eq!(feed.cursor(7), 13);
        assert_eq!(feed.dropped, 2);
        assert_eq!(levels(&feed).1, vec![(102, 5), (101, 5)]);
        assert_eq!(store.lock().unwrap().1, 0, "no rebuild");
    }

    #[test]
    fn a_missed_record_rebuilds_the_symbol_from_the_store_and_skips_an_update_id() {
        let (mut feed, store) = feed(20);
        let r = refdata();
        feed.apply([symbol_record(10, 12, vec![rested(2, 101, 5)])], None, &r);
        let (update_id, _) = levels(&feed);
        // 12 → 15 was lost: the record after it names 15.
        let rebuilt = feed.apply(
            [
                symbol_record(15, 18, vec![rested(4, 103, 5)]),
                symbol_record(18, 20, vec![rested(5, 104, 5)]),
                symbol_record(20, 21, vec![rested(6, 105, 1)]),
            ],
            None,
            &r,
        );
        assert_eq!(rebuilt, vec![7]);
        assert_eq!(store.lock().unwrap().1, 1, "one rebuild for the batch");
        assert_eq!(feed.cursor(7), 20, "the store's cursor");
        let (after, bids) = levels(&feed);
        assert_eq!(bids, vec![(500, 3)], "the store's book");
        assert_eq!(after, update_id + 1, "ids go on with a skip");
        // What follows the store's cursor applies again.
        feed.apply([symbol_record(20, 21, vec![rested(6, 105, 1)])], None, &r);
        assert_eq!(feed.cursor(7), 21);
        assert_eq!(levels(&feed).1, vec![(500, 3), (105, 1)]);
    }

    #[test]
    fn a_writers_start_marker_repairs_a_quiet_symbol_and_is_dropped_when_in_sync() {
        let (mut feed, store) = feed(14);
        let r = refdata();
        feed.apply([symbol_record(10, 10, Vec::new())], None, &r);
        assert_eq!(store.lock().unwrap().1, 0, "in sync: nothing to do");
        feed.apply([symbol_record(14, 14, Vec::new())], None, &r);
        assert_eq!(store.lock().unwrap().1, 1, "behind the writer: rebuilt");
        assert_eq!(feed.cursor(7), 14);
    }

    #[test]
    fn a_commit_becomes_one_record_per_symbol_and_per_user() {
        let r = refdata();
        let order = OrderRow {
            symbol: 7,
            ..crate::test_rows::limit_order(5, 42, Side::Buy, 100, 1)
        };
        let committed = Committed {
            events: vec![(7, vec![rested(5, 100, 1)]), (7, vec![rested(6, 100, 2)])],
            orders: vec![order.clone()],
            ..Committed::default()
        };
        let mut cursors = BTreeMap::new();
        cursors.insert(7, (3, 9));
        let records = records_of(&committed, &cursors, &r);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, "BTC-USDT");
        assert_eq!(
            records[0].1,
            symbol_record(3, 9, vec![rested(5, 100, 1), rested(6, 100, 2)])
        );
        assert_eq!(records[1].0, "42");
        let json = serde_json::to_string(&records[1].1).unwrap();
        assert_eq!(
            serde_json::from_str::<Settled>(&json).unwrap(),
            records[1].1
        );
    }
}
