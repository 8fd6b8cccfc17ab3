//! Market data: the read side of the exchange (CQRS). Everything here is built from what
//! the engine and settlement produced — committed trades and the engine's events — never by
//! querying the engine. Pure: no IO, no clock (times are passed in).

pub mod candles;
pub mod depth;

pub use candles::{ticker, Candle, CandleSeries, Interval, Ticker};
pub use depth::{DepthBook, DepthDiff, DepthSnapshot, LevelChange, LocalBook};
