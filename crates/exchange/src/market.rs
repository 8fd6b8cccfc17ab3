//! The market-data side: the in-memory read model of every symbol (depth, recent trades,
//! candles), fed after each commit with what that commit made true, and read by the API.
//!
//! It runs on its own thread so that the sequencer hands over a batch and moves on; the
//! channel between them is bounded and lossless (the depth mirror must see every event),
//! so a market thread that falls behind slows the sequencer rather than losing data.

use agora_engine::Event;
use agora_market::candles::MINUTE_MS;
use agora_market::{Candle, CandleSeries, DepthBook, DepthDiff, Interval};
use agora_store::{BalanceRow, CandleRow, OrderRow, TradeRow};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

/// Recent trades kept per symbol.
pub const RECENT_TRADES_MAX: usize = 1_000;
/// Candles kept in memory per series; older ranges are read from the store.
pub const CANDLES_KEPT: usize = 1_000;
/// The window of the reference price (Binance's `avgPriceMins` default).
pub const AVERAGE_PRICE_MINUTES: i64 = 5;
/// Committed batches waiting for the market thread before the sequencer waits.
pub const FEED_QUEUE_MAX: usize = 1_024;

/// What one commit made true, for readers of the market.
#[derive(Debug, Default)]
pub struct Committed {
    /// Engine events settled in this commit, per symbol, in order.
    pub events: Vec<(u32, Vec<Event>)>,
    pub trades: Vec<TradeRow>,
    pub candles: Vec<CandleRow>,
    pub orders: Vec<OrderRow>,
    pub balances: Vec<BalanceRow>,
}

impl Committed {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.trades.is_empty()
            && self.candles.is_empty()
            && self.orders.is_empty()
            && self.balances.is_empty()
    }
}

pub fn candle_of(row: &CandleRow) -> (Interval, Candle) {
    let interval = Interval::parse(row.interval).expect("stored intervals are valid");
    (
        interval,
        Candle {
            open_ms: row.open_ms,
            open: row.open,
            high: row.high,
            low: row.low,
            close: row.close,
            volume: row.volume,
            quote_volume: row.quote_volume,
            trades: row.trades,
        },
    )
}

pub fn candle_row(symbol: u32, interval: Interval, c: &Candle) -> CandleRow {
    CandleRow {
        symbol,
        interval: interval.as_str(),
        open_ms: c.open_ms,
        open: c.open,
        high: c.high,
        low: c.low,
        close: c.close,
        volume: c.volume,
        quote_volume: c.quote_volume,
        trades: c.trades,
    }
}

/// One symbol's read model.
#[derive(Debug)]
pub struct SymbolMarket {
    pub depth: DepthBook,
    pub trades: VecDeque<TradeRow>,
    pub candles: Vec<CandleSeries>,
}

impl SymbolMarket {
    pub fn new(depth: DepthBook) -> SymbolMarket {
        SymbolMarket {
            depth,
            trades: VecDeque::new(),
            candles: Interval::ALL
                .iter()
                .map(|&i| CandleSeries::new(i, CANDLES_KEPT))
                .collect(),
        }
    }

    pub fn series(&self, interval: Interval) -> &CandleSeries {
        &self.candles[Interval::ALL
            .iter()
            .position(|&i| i == interval)
            .expect("all intervals")]
    }

    fn series_mut(&mut self, interval: Interval) -> &mut CandleSeries {
        &mut self.candles[Interval::ALL
            .iter()
            .position(|&i| i == interval)
            .expect("all intervals")]
    }

    fn push_trade(&mut self, t: TradeRow) {
        self.trades.push_back(t);
        if self.trades.len() > RECENT_TRADES_MAX {
            self.trades.pop_front();
        }
    }
}

/// Every symbol's read model. Readers take one symbol's lock briefly.
#[derive(Default)]
pub struct MarketData {
    symbols: RwLock<FxHashMap<u32, Arc<RwLock<SymbolMarket>>>>,
}

impl MarketData {
    /// Builds the read model from what the store and the restored books hold at start.
    pub fn new(
        depths: FxHashMap<u32, DepthBook>,
        trades: Vec<TradeRow>,
        candles: Vec<CandleRow>,
    ) -> MarketData {
        let mut symbols: FxHashMap<u32, SymbolMarket> = depths
            .into_iter()
            .map(|(id, depth)| (id, SymbolMarket::new(depth)))
            .collect();
        for t in trades {
            symbols
                .entry(t.symbol)
                .or_insert_with(|| SymbolMarket::new(DepthBook::default()))
                .push_trade(t);
        }
        for row in candles {
            let (interval, candle) = candle_of(&row);
            symbols
                .entry(row.symbol)
                .or_insert_with(|| SymbolMarket::new(DepthBook::default()))
                .series_mut(interval)
                .upsert(candle);
        }
        MarketData {
            symbols: RwLock::new(
                symbols
                    .into_iter()
                    .map(|(id, m)| (id, Arc::new(RwLock::new(m))))
                    .collect(),
            ),
        }
    }

    /// The price a MARKET SELL's notional is estimated at (Binance's `avgPrice`): the
    /// volume-weighted average price of the last `AVERAGE_PRICE_MINUTES` one-minute buckets;
    /// the last trade's price if nothing traded in them; the best bid if the symbol never
    /// traded; none without a bid either. `base_unit` is 10^base scale.
    pub fn reference_price(&self, symbol: u32, now_ms: i64, base_unit: i64) -> Option<i64> {
        let m = self.symbol(symbol)?;
        let m = m.read().expect("lock");
        let minutes = m.series(Interval::M1);
        let since = Interval::M1.bucket(now_ms) - (AVERAGE_PRICE_MINUTES - 1) * MINUTE_MS;
        let (volume, quote) = minutes.recent(since).fold((0i128, 0i128), |(v, q), c| {
            (v + c.volume as i128, q + c.quote_volume as i128)
        });
        if volume > 0 {
            return i64::try_from(quote * base_unit as i128 / volume).ok();
        }
        if let Some(last) = m.trades.back() {
            return Some(last.price);
        }
        m.depth.best_bid().map(|(price, _)| price)
    }

    pub fn symbol(&self, id: u32) -> Option<Arc<RwLock<SymbolMarket>>> {
        self.symbols.read().expect("lock").get(&id).cloned()
    }

    fn symbol_or_new(&self, id: u32) -> Arc<RwLock<SymbolMarket>> {
        if let Some(m) = self.symbol(id) {
            return m;
        }
        self.symbols
            .write()
            .expect("lock")
            .entry(id)
            .or_insert_with(|| Arc::new(RwLock::new(SymbolMarket::new(DepthBook::default()))))
            .clone()
    }

    /// Puts a rebuilt symbol in place of the one kept so far; its depth's update ids go on
    /// from the old one's with a skip (see [`DepthBook::replacing`]).
    pub fn replace(&self, id: u32, mut rebuilt: SymbolMarket) {
        let kept = self.symbol_or_new(id);
        let mut kept = kept.write().expect("lock");
        rebuilt.depth = std::mem::take(&mut rebuilt.depth).replacing(kept.depth.update_id());
        *kept = rebuilt;
    }

    /// Every symbol's model, taken out (of a model built to rebuild another's symbols).
    pub fn into_symbols(self) -> FxHashMap<u32, SymbolMarket> {
        self.symbols
            .into_inner()
            .expect("lock")
            .into_iter()
            .map(|(id, m)| {
                let m = Arc::try_unwrap(m).map_or_else(
                    |shared| {
                        let m = shared.read().expect("lock");
                        SymbolMarket {
                            depth: m.depth.clone(),
                            trades: m.trades.clone(),
                            candles: m.candles.clone(),
                        }
                    },
                    |m| m.into_inner().expect("lock"),
                );
                (id, m)
            })
            .collect()
    }

    /// Applies one commit; returns the depth diffs it produced, per symbol.
    pub fn apply(&self, batch: &Committed) -> Vec<(u32, DepthDiff)> {
        let mut diffs = Vec::new();
        for (symbol, events) in &batch.events {
            let m = self.symbol_or_new(*symbol);
            let mut m = m.write().expect("lock");
            if let Some(diff) = m.depth.apply(events) {
                diffs.push((*symbol, diff));
            }
        }
        // Candles before trades: a reader who sees a trade also sees the candle holding it.
        for row in &batch.candles {
            let (interval, candle) = candle_of(row);
            self.symbol_or_new(row.symbol)
                .write()
                .expect("lock")
                .series_mut(interval)
                .upsert(candle);
        }
        for t in &batch.trades {
            self.symbol_or_new(t.symbol)
                .write()
                .expect("lock")
                .push_trade(t.clone());
        }
        diffs
    }
}

/// Told about every commit once the read model has applied it (e.g. to push it to
/// WebSocket subscribers). Runs on the market thread: it must not block.
pub trait CommitObserver: Send + Sync {
    fn committed(
        &self,
        batch: &Committed,
        diffs: &[(u32, DepthDiff)],
        market: &MarketData,
        refdata: &crate::RefData,
    );

    /// Called when no commit has arrived for `IDLE_TICK` (a chance to flush what waits).
    fn idle(&self, _market: &MarketData, _refdata: &crate::RefData) {}
}

/// How long the market thread waits for a commit before telling the observer it is idle.
pub const IDLE_TICK: std::time::Duration = std::time::Duration::from_millis(5);

/// The market thread: applies committed batches in order until the sequencer hangs up.
pub(crate) fn run(
    market: Arc<MarketData>,
    feed: crossbeam_channel::Receiver<Committed>,
    shared: Arc<crate::Shared>,
    observer: Option<Arc<dyn CommitObserver>>,
) {
    loop {
        match feed.recv_timeout(IDLE_TICK) {
            Ok(batch) => {
                let diffs = market.apply(&batch);
                if let Some(observer) = &observer {
                    let refdata = shared.refdata.read().expect("lock").clone();
                    observer.committed(&batch, &diffs, &market, &refdata);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if let Some(observer) = &observer {
                    let refdata = shared.refdata.read().expect("lock").clone();
                    observer.idle(&market, &refdata);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
}
