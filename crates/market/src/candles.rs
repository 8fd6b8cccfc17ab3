//! Candles (OHLCV) per interval, and the 24-hour rolling ticker computed from 1-minute
//! candles. Times are Unix milliseconds (UTC); a bucket is `[open_ms, open_ms + interval)`.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Interval {
    #[serde(rename = "1m")]
    M1,
    #[serde(rename = "5m")]
    M5,
    #[serde(rename = "15m")]
    M15,
    #[serde(rename = "1h")]
    H1,
    #[serde(rename = "4h")]
    H4,
    #[serde(rename = "1d")]
    D1,
}

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

impl Interval {
    pub const ALL: [Interval; 6] = [
        Interval::M1,
        Interval::M5,
        Interval::M15,
        Interval::H1,
        Interval::H4,
        Interval::D1,
    ];

    pub fn ms(self) -> i64 {
        match self {
            Interval::M1 => MINUTE_MS,
            Interval::M5 => 5 * MINUTE_MS,
            Interval::M15 => 15 * MINUTE_MS,
            Interval::H1 => 60 * MINUTE_MS,
            Interval::H4 => 240 * MINUTE_MS,
            Interval::D1 => DAY_MS,
        }
    }

    /// Start of the bucket holding `time_ms` (UTC-aligned, like every exchange).
    pub fn bucket(self, time_ms: i64) -> i64 {
        time_ms - time_ms.rem_euclid(self.ms())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::H1 => "1h",
            Interval::H4 => "4h",
            Interval::D1 => "1d",
        }
    }

    pub fn parse(text: &str) -> Option<Interval> {
        Interval::ALL.into_iter().find(|i| i.as_str() == text)
    }
}

/// One bucket. Prices in quote minor units; volume in base minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candle {
    pub open_ms: i64,
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub close: i64,
    pub volume: i64,
    pub quote_volume: i64,
    pub trades: u64,
}

impl Candle {
    pub fn first(open_ms: i64, price: i64, qty: i64, quote: i64) -> Candle {
        Candle {
            open_ms,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: qty,
            quote_volume: quote,
            trades: 1,
        }
    }

    /// Adds a later trade of the same bucket.
    pub fn add(&mut self, price: i64, qty: i64, quote: i64) {
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.close = price;
        self.volume = self.volume.saturating_add(qty);
        self.quote_volume = self.quote_volume.saturating_add(quote);
        self.trades += 1;
    }

    /// A bucket without trades: flat at the previous close, no volume.
    pub fn empty(open_ms: i64, previous_close: i64) -> Candle {
        Candle {
            open_ms,
            open: previous_close,
            high: previous_close,
            low: previous_close,
            close: previous_close,
            volume: 0,
            quote_volume: 0,
            trades: 0,
        }
    }
}

/// Folds a trade into the current candle of `interval`: returns the candle to store (the
/// same bucket updated, or a new bucket opened). Trades must come in time order.
pub fn fold(
    current: Option<Candle>,
    interval: Interval,
    time_ms: i64,
    price: i64,
    qty: i64,
    quote: i64,
) -> Candle {
    let bucket = interval.bucket(time_ms);
    match current {
        Some(mut c) if c.open_ms == bucket => {
            c.add(price, qty, quote);
            c
        }
        Some(c) => {
            debug_assert!(c.open_ms < bucket, "trades out of time order");
            Candle::first(bucket, price, qty, quote)
        }
        None => Candle::first(bucket, price, qty, quote),
    }
}

/// The most recent candles of one interval, oldest first, only buckets that had trades.
#[derive(Clone, Debug)]
pub struct CandleSeries {
    interval: Interval,
    candles: VecDeque<Candle>,
    kept_max: usize,
}

impl CandleSeries {
    pub fn new(interval: Interval, kept_max: usize) -> CandleSeries {
        assert!(kept_max > 0);
        CandleSeries {
            interval,
            candles: VecDeque::new(),
            kept_max,
        }
    }

    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// Stores a candle: replaces its bucket if present, else appends (buckets only move
    /// forward), dropping the oldest past `kept_max`.
    pub fn upsert(&mut self, candle: Candle) {
        debug_assert_eq!(candle.open_ms, self.interval.bucket(candle.open_ms));
        match self.candles.back_mut() {
            Some(last) if last.open_ms == candle.open_ms => *last = candle,
            Some(last) if last.open_ms > candle.open_ms => {
                if let Some(c) = self
                    .candles
                    .iter_mut()
                    .find(|c| c.open_ms == candle.open_ms)
                {
                    *c = candle;
                }
            }
            _ => {
                self.candles.push_back(candle);
                if self.candles.len() > self.kept_max {
                    self.candles.pop_front();
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.candles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candles.is_empty()
    }

    /// True if this series holds every bucket at or after `start_ms` that ever traded.
    pub fn covers(&self, start_ms: i64) -> bool {
        self.candles.len() < self.kept_max || self.oldest_ms().is_some_and(|o| o <= start_ms)
    }

    pub fn last(&self) -> Option<&Candle> {
        self.candles.back()
    }

    /// The kept candles whose bucket starts at or after `since_ms`, oldest first.
    pub fn recent(&self, since_ms: i64) -> impl Iterator<Item = &Candle> {
        let newer = self
            .candles
            .iter()
            .rev()
            .take_while(move |c| c.open_ms >= since_ms)
            .count();
        self.candles.iter().skip(self.candles.len() - newer)
    }

    /// Earliest bucket this series can answer for completely.
    pub fn oldest_ms(&self) -> Option<i64> {
        self.candles.front().map(|c| c.open_ms)
    }

    /// Buckets from `start_ms` to `end_ms` (inclusive bucket starts), at most `limit`, the
    /// most recent ones if the range holds more. Buckets without trades between two traded
    /// buckets, or after the last one up to `end_ms`, are filled flat at the previous close;
    /// nothing is invented before the first trade. The work is bounded by `limit` and the
    /// candles kept, never by the width of the range.
    pub fn range(&self, start_ms: i64, end_ms: i64, limit: usize) -> Vec<Candle> {
        let step = self.interval.ms();
        let last_bucket = self.interval.bucket(end_ms);
        let first_bucket =
            self.interval
                .bucket(start_ms)
                .max(first_of_last(last_bucket, step, limit));
        if last_bucket < first_bucket || limit == 0 {
            return Vec::new();
        }
        let buckets = ((last_bucket - first_bucket) / step + 1) as usize;
        let mut out = Vec::with_capacity(buckets.min(limit));
        // The close of the last traded bucket before the range, if any.
        let mut previous = self
            .candles
            .iter()
            .rev()
            .find(|c| c.open_ms < first_bucket)
            .map(|c| c.close);
        let mut stored = self
            .candles
            .iter()
            .filter(|c| c.open_ms >= first_bucket)
            .peekable();
        let mut bucket = first_bucket;
        while bucket <= last_bucket {
            match stored.peek() {
                Some(c) if c.open_ms == bucket => {
                    out.push(**c);
                    previous = Some(c.close);
                    stored.next();
                }
                _ => {
                    if let Some(p) = previous {
                        out.push(Candle::empty(bucket, p));
                    }
                }
            }
            bucket += step;
        }
        debug_assert!(
            out.len() <= limit,
            "the range starts `limit` buckets before its end"
        );
        out
    }
}

/// The first bucket start of the `limit` buckets that end with `last_bucket`.
pub fn first_of_last(last_bucket: i64, step_ms: i64, limit: usize) -> i64 {
    let span = (limit.max(1) as i64 - 1).saturating_mul(step_ms);
    last_bucket.saturating_sub(span)
}

/// 24-hour rolling statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticker {
    /// Price at the start of the window: the open of its first 1-minute bucket, or the
    /// last price before the window if that bucket had no trade.
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub last: i64,
    pub volume: i64,
    pub quote_volume: i64,
    pub trades: u64,
    /// Change from open to last, in hundredths of a percent (basis points), rounded toward
    /// zero.
    pub change_bps: i64,
}

/// The 24-hour window ending at `now_ms`, at one-minute resolution: the 1,440 one-minute
/// buckets whose start is after `now_ms - 24h` (so the current, partial minute counts and the
/// minute that started exactly 24 hours ago does not). `None` if nothing ever traded.
pub fn ticker(minutes: &CandleSeries, now_ms: i64) -> Option<Ticker> {
    assert_eq!(minutes.interval(), Interval::M1);
    let last = minutes.last()?.close;
    let window_start = Interval::M1.bucket(now_ms) - DAY_MS + MINUTE_MS;
    let in_window: Vec<&Candle> = minutes
        .candles
        .iter()
        .filter(|c| c.open_ms >= window_start && c.open_ms <= now_ms)
        .collect();
    let before = minutes
        .candles
        .iter()
        .rev()
        .find(|c| c.open_ms < window_start)
        .map(|c| c.close);
    let open = match (in_window.first(), before) {
        (Some(first), _) if first.open_ms == window_start => first.open,
        (_, Some(previous_close)) => previous_close,
        (Some(first), None) => first.open,
        (None, None) => last,
    };
    let mut t = Ticker {
        open,
        high: open,
        low: open,
        last,
        volume: 0,
        quote_volume: 0,
        trades: 0,
        change_bps: 0,
    };
    if in_window.is_empty() {
        // No trade in 24 hours: flat at the last price.
        t.open = last;
        t.high = last;
        t.low = last;
    }
    for c in &in_window {
        t.high = t.high.max(c.high);
        t.low = t.low.min(c.low);
        t.volume = t.volume.saturating_add(c.volume);
        t.quote_volume = t.quote_volume.saturating_add(c.quote_volume);
        t.trades += c.trades;
    }
    if t.open > 0 {
        t.change_bps = ((t.last as i128 - t.open as i128) * 10_000 / t.open as i128) as i64;
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS; // a UTC midnight

    fn series(interval: Interval, trades: &[(i64, i64, i64)]) -> CandleSeries {
        let mut s = CandleSeries::new(interval, 10_000);
        for &(t, price, qty) in trades {
            let c = fold(s.last().copied(), interval, t, price, qty, price * qty);
            s.upsert(c);
        }
        s
    }

    #[test]
    fn buckets_split_exactly_at_boundaries() {
        let s = series(
            Interval::M1,
            &[(T0, 100, 1), (T0 + 59_999, 105, 2), (T0 + 60_000, 99, 3)],
        );
        let c = s.range(T0, T0 + 60_000, 10);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0],
            Candle {
                open_ms: T0,
                open: 100,
                high: 105,
                low: 100,
                close: 105,
                volume: 3,
                quote_volume: 100 + 210,
                trades: 2
            }
        );
        assert_eq!(
            (c[1].open_ms, c[1].open, c[1].close, c[1].volume),
            (T0 + 60_000, 99, 99, 3)
        );
    }

    #[test]
    fn empty_buckets_are_flat_at_the_previous_close_and_nothing_precedes_the_first_trade() {
        let s = series(
            Interval::M5,
            &[
                (T0 + 5 * MINUTE_MS, 100, 1),
                (T0 + 20 * MINUTE_MS + 1, 90, 1),
            ],
        );
        let c = s.range(T0, T0 + 30 * MINUTE_MS, 100);
        let summary: Vec<(i64, i64, i64, i64)> = c
            .iter()
            .map(|c| ((c.open_ms - T0) / MINUTE_MS, c.open, c.close, c.volume))
            .collect();
        assert_eq!(
            summary,
            vec![
                (5, 100, 100, 1),
                (10, 100, 100, 0),
                (15, 100, 100, 0),
                (20, 90, 90, 1),
                (25, 90, 90, 0),
                (30, 90, 90, 0)
            ]
        );
        // The limit keeps the most recent buckets.
        let last_two = s.range(T0, T0 + 30 * MINUTE_MS, 2);
        assert_eq!(
            last_two.iter().map(|c| c.open_ms).collect::<Vec<_>>(),
            vec![T0 + 25 * MINUTE_MS, T0 + 30 * MINUTE_MS]
        );
    }

    #[test]
    fn every_interval_aligns_to_utc() {
        let t = T0 + 5 * 3_600_000 + 17 * MINUTE_MS + 3_000; // 05:17:03
        let starts: Vec<i64> = Interval::ALL
            .iter()
            .map(|i| (i.bucket(t) - T0) / MINUTE_MS)
            .collect();
        assert_eq!(starts, vec![317, 315, 315, 300, 240, 0]);
        assert_eq!(Interval::parse("4h"), Some(Interval::H4));
        assert_eq!(Interval::parse("2h"), None);
    }

    #[test]
    fn ticker_covers_exactly_the_last_24_hours_of_minutes() {
        // A trade in the minute that starts exactly 24h before "now"'s minute is outside;
        // one a minute later is inside.
        let now = T0 + DAY_MS + 30_000; // 00:00:30 the next day
        let s = series(
            Interval::M1,
            &[
                (T0 - MINUTE_MS, 50, 1),  // yesterday 23:59 → before the window
                (T0 + 10, 80, 2),         // 00:00 → starts exactly 24h before now's minute: outside
                (T0 + MINUTE_MS, 100, 3), // 00:01 → inside, first bucket of the window
                (T0 + 3 * 3_600_000, 130, 1),
                (T0 + 12 * 3_600_000, 70, 4),
                (now, 110, 2), // the current, partial minute
            ],
        );
        let t = ticker(&s, now).unwrap();
        assert_eq!(t.open, 100);
        assert_eq!((t.high, t.low, t.last), (130, 70, 110));
        assert_eq!((t.volume, t.trades), (3 + 1 + 4 + 2, 4));
        assert_eq!(t.quote_volume, 300 + 130 + 280 + 220);
        assert_eq!(t.change_bps, 1_000); // +10.00%
                                         // One minute later the 00:01 bucket leaves the window; the open becomes the last
                                         // price before the window (100, the close of 00:01).
        let t = ticker(&s, now + MINUTE_MS).unwrap();
        assert_eq!((t.open, t.volume), (100, 1 + 4 + 2));
    }

    #[test]
    fn ticker_without_recent_trades_is_flat_at_the_last_price() {
        let s = series(Interval::M1, &[(T0, 100, 1), (T0 + MINUTE_MS, 90, 1)]);
        let t = ticker(&s, T0 + 3 * DAY_MS).unwrap();
        assert_eq!(
            (t.open, t.high, t.low, t.last, t.volume, t.change_bps),
            (90, 90, 90, 90, 0, 0)
        );
        assert!(ticker(&CandleSeries::new(Interval::M1, 10), T0).is_none());
    }

    #[test]
    fn negative_change_rounds_toward_zero() {
        let s = series(Interval::M1, &[(T0, 300, 1), (T0 + 1, 299, 1)]);
        let t = ticker(&s, T0 + 2).unwrap();
        assert_eq!(t.change_bps, -33); // -0.333…%
    }

    #[test]
    fn a_century_wide_range_costs_what_its_limit_asks_for() {
        // 52 million one-minute buckets in the range; only the last three are built.
        let s = series(Interval::M1, &[(T0, 100, 1)]);
        let century = T0 + 100 * 365 * DAY_MS;
        let c = s.range(T0, century, 3);
        assert_eq!(
            c.iter().map(|c| c.open_ms).collect::<Vec<_>>(),
            vec![century - 2 * MINUTE_MS, century - MINUTE_MS, century]
        );
        assert!(c.iter().all(|c| c.close == 100 && c.volume == 0));
        assert!(c.capacity() <= 3, "allocated for the range, not the limit");
    }

    #[test]
    fn a_series_keeps_only_its_most_recent_buckets() {
        let mut s = CandleSeries::new(Interval::M1, 3);
        for i in 0..5 {
            s.upsert(Candle::first(T0 + i * MINUTE_MS, 100 + i, 1, 1));
        }
        assert_eq!(s.oldest_ms(), Some(T0 + 2 * MINUTE_MS));
        assert_eq!(s.range(T0, T0 + 4 * MINUTE_MS, 10).len(), 3);
    }
}
