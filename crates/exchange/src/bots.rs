//! The virtual price generator: market-making and market-taking bots that keep a market
//! alive without a real feed (the seeds replace a real market with one).
//!
//! Bots are users. Their orders take the same path as anyone's below HTTP — validation,
//! holds, the sequencer, the engine, settlement — so they are real orders with real holds and
//! real fills, and every invariant covers them. Per symbol, a reference price follows a
//! geometric random walk kept in whole ticks; a maker quotes a ladder of bids and asks around
//! it (cancelling its oldest quotes to stay within a bound), and a taker now and then sends an
//! IOC that crosses the spread toward the reference, so trades print and the price moves.

use crate::{Exchange, OrderRequest};
use agora_engine::{Side, TimeInForce};
use agora_ledger::units;
use agora_store::{OrderType, SymbolRow, SymbolStatus};
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct BotConfig {
    /// Orders per second per symbol (maker and taker together).
    pub orders_per_s: f64,
    /// Volatility of the reference price per square-root second (0.001 = 0.1%/√s).
    pub volatility: f64,
    /// Levels the maker quotes on each side.
    pub levels: u32,
    /// Distance between quote levels, in basis points of the price (at least one tick).
    pub level_spacing_bps: i64,
    /// Open maker orders kept per symbol at most.
    pub maker_orders_max: usize,
    /// Chance that an order is a taker order.
    pub taker_probability: f64,
    /// Orders (and cancels) per symbol awaiting the sequencer at once. One at a time makes
    /// every order its own small commit; a few in flight share commits, so a high
    /// `orders_per_s` costs far less.
    pub in_flight_max: usize,
    pub seed: u64,
}

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig {
            orders_per_s: 8.0,
            volatility: 0.0008,
            levels: 5,
            level_spacing_bps: 5,
            maker_orders_max: 40,
            taker_probability: 0.3,
            in_flight_max: 32,
            seed: 0xB075,
        }
    }
}

pub const MAKER: &str = "bot-maker";
pub const TAKER: &str = "bot-taker";

/// One step of the reference price: geometric Brownian motion without drift, rounded to
/// whole ticks and kept at least one tick above zero.
pub fn walk(price_ticks: i64, volatility: f64, dt_s: f64, normal: f64) -> i64 {
    let factor = (-0.5 * volatility * volatility * dt_s + volatility * dt_s.sqrt() * normal).exp();
    ((price_ticks as f64 * factor).round() as i64).max(1)
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Running bots; dropping the handle stops them.
pub struct Bots {
    stop: Arc<AtomicBool>,
}

impl Drop for Bots {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Creates (or reuses) the bot users, funds new ones, and starts one task per symbol that
/// has a reference price: the last trade, else the middle of the book.
pub async fn start(exchange: &Exchange, config: BotConfig) -> crate::ExchangeResult<Bots> {
    assert!(config.orders_per_s > 0.0 && config.levels > 0 && config.level_spacing_bps > 0);
    assert!(config.in_flight_max > 0 && (0.0..=1.0).contains(&config.taker_probability));
    let mut users = Vec::new();
    for name in [MAKER, TAKER] {
        let user = match exchange.user_by_name(name).await? {
            Some(u) => u,
            None => {
                let u = exchange.create_user(name).await?;
                // Funds minted once from the external account, like any deposit.
                let refdata = exchange.refdata();
                for asset in refdata.assets.values() {
                    let whole = 10i64.pow(9.min(18 - asset.scale));
                    let amount =
                        units::format(whole.saturating_mul(units::unit(asset.scale)), asset.scale);
                    exchange.deposit(u.id, &asset.code, &amount).await?;
                }
                u
            }
        };
        users.push(user.id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let refdata = exchange.refdata();
    let mut symbols: Vec<SymbolRow> = refdata
        .symbols
        .values()
        .filter(|s| s.status == SymbolStatus::Trading)
        .cloned()
        .collect();
    symbols.sort_by_key(|s| s.id);
    for symbol in symbols {
        let (exchange, config, stop) = (exchange.clone(), config.clone(), stop.clone());
        let (maker, taker) = (users[0], users[1]);
        tokio::spawn(async move {
            // A symbol's bots start once it has a price to follow: a trade, or a quote in
            // the book. Orders just placed get there once an engine has matched them — in
            // distributed mode the engine processes may start after this one.
            let mut announced = false;
            let reference = loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(price) = reference_price(&exchange, &symbol) {
                    break price;
                }
                if !announced {
                    tracing::info!(symbol = %symbol.name, "no price to follow yet; bots wait");
                    announced = true;
                }
                tokio::time::sleep(PRICE_POLL).await;
            };
            run_symbol(exchange, config, stop, symbol, reference, maker, taker).await;
        });
    }
    Ok(Bots { stop })
}

/// How often a symbol without a price is looked at again.
const PRICE_POLL: Duration = Duration::from_millis(200);

fn reference_price(exchange: &Exchange, symbol: &SymbolRow) -> Option<i64> {
    let m = exchange.market().symbol(symbol.id)?;
    let m = m.read().expect("lock");
    if let Some(t) = m.trades.back() {
        return Some(t.price);
    }
    match (m.depth.best_bid(), m.depth.best_ask()) {
        (Some((b, _)), Some((a, _))) => Some((b + a) / 2),
        (Some((p, _)), None) | (None, Some((p, _))) => Some(p),
        (None, None) => None,
    }
}

/// The most often a bot task wakes; at a higher order rate each wake-up sends several orders.
const WAKE_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// What a finished bot request tells its symbol's task.
enum Outcome {
    Quoted(u64),
    Done,
}

async fn run_symbol(
    exchange: Exchange,
    config: BotConfig,
    stop: Arc<AtomicBool>,
    symbol: SymbolRow,
    reference: i64,
    maker: u64,
    taker: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ symbol.id as u64);
    let refdata = exchange.refdata();
    let (base_scale, quote_scale) = (refdata.base_scale(&symbol), refdata.quote_scale(&symbol));
    let base_unit = units::unit(base_scale) as i128;
    let tick = symbol.tick_size;
    let mut price_ticks = (reference / tick).max(1);
    let order_period_s = 1.0 / config.orders_per_s;
    let mut quotes: VecDeque<u64> = VecDeque::new();
    let mut in_flight: tokio::task::JoinSet<Outcome> = tokio::task::JoinSet::new();
    let mut interval =
        tokio::time::interval(Duration::from_secs_f64(order_period_s).max(WAKE_INTERVAL_MIN));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Orders due but not yet sent: the rate holds whatever the wake-up interval.
    let mut due = 0.0f64;
    let mut last_wake = tokio::time::Instant::now();
    // Smallest quantity (in lots) whose value clears the minimum notional at `price`.
    let lots_min = |price: i64| -> i64 {
        let lot_value = (price as i128 * symbol.lot_size as i128 / base_unit).max(1);
        ((symbol.min_notional as i128 + lot_value - 1) / lot_value).max(1) as i64
    };
    let order = |side: Side, price: i64, lots: i64, tif: TimeInForce| OrderRequest {
        symbol: symbol.name.clone(),
        side,
        order_type: OrderType::Limit,
        price: Some(units::format(price, quote_scale)),
        quantity: Some(units::format(lots * symbol.lot_size, base_scale)),
        quote_quantity: None,
        time_in_force: Some(tif),
        client_order_id: None,
        self_trade_prevention_mode: None,
    };
    while !stop.load(Ordering::Relaxed) {
        let outcome = tokio::select! {
            _ = interval.tick() => None,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => Some(done),
        };
        if let Some(done) = outcome {
            if let Ok(Outcome::Quoted(id)) = done {
                quotes.push_back(id);
                // Oldest quotes cancelled to stay within the bound (they may have filled).
                while quotes.len() > config.maker_orders_max {
                    let oldest = quotes.pop_front().expect("non-empty");
                    let exchange = exchange.clone();
                    in_flight.spawn(async move {
                        let _ = exchange.cancel_order(maker, oldest).await;
                        Outcome::Done
                    });
                }
            }
            continue;
        }
        let now = tokio::time::Instant::now();
        due = (due + (now - last_wake).as_secs_f64() * config.orders_per_s).min(
            // A stalled exchange does not leave a burst owed.
            config.in_flight_max as f64,
        );
        last_wake = now;
        while due >= 1.0 && in_flight.len() < config.in_flight_max {
            due -= 1.0;
            price_ticks = walk(
                price_ticks,
                config.volatility,
                order_period_s,
                normal(&mut rng),
            );
            let mid = price_ticks * tick;
            let step = (mid as i128 * config.level_spacing_bps as i128 / 10_000 / tick as i128)
                .max(1) as i64
                * tick;
            // (user, whether the order is a quote to keep track of, the order)
            let (user, quote, request) = if rng.random_bool(config.taker_probability) {
                // Cross toward the reference: buy when asks sit below it, sell otherwise.
                let best_ask = exchange
                    .market()
                    .symbol(symbol.id)
                    .and_then(|m| m.read().expect("lock").depth.best_ask());
                let side = match best_ask {
                    Some((ask, _)) if ask <= mid => Side::Buy,
                    _ if rng.random_bool(0.5) => Side::Buy,
                    _ => Side::Sell,
                };
                // Reaching a random depth: most takers lift the top of the book, some sweep.
                let reach = rng.random_range(1..=config.levels as i64);
                let price = match side {
                    Side::Buy => mid + reach * step,
                    Side::Sell => (mid - reach * step).max(tick),
                };
                let lots = lots_min(price) * rng.random_range(1..=40);
                (taker, false, order(side, price, lots, TimeInForce::Ioc))
            } else {
                // Maker: one new quote at a random level.
                let level = rng.random_range(1..=config.levels as i64);
                let side = if rng.random_bool(0.5) {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let price = match side {
                    Side::Buy => (mid - level * step).max(tick),
                    Side::Sell => mid + level * step,
                };
                let lots = lots_min(price) * rng.random_range(1..=20);
                (maker, true, order(side, price, lots, TimeInForce::Gtc))
            };
            let exchange = exchange.clone();
            in_flight.spawn(async move {
                match exchange.place_order(user, &request).await {
                    Ok(placed) if quote => Outcome::Quoted(placed.order.id),
                    Ok(_) => Outcome::Done,
                    Err(e) => {
                        tracing::debug!(symbol = %request.symbol, user, error = %e, "bot order refused");
                        Outcome::Done
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_stays_positive_and_centred() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut p = 10_000;
        let mut sum = 0i64;
        for _ in 0..10_000 {
            p = walk(p, 0.001, 0.1, normal(&mut rng));
            assert!(p >= 1);
            sum += p;
        }
        // Driftless: the average stays near the start (loose bound; the walk is random).
        let mean = sum / 10_000;
        assert!((9_000..11_000).contains(&mean), "mean {mean}");
    }

    #[test]
    fn zero_volatility_stands_still() {
        assert_eq!(walk(1234, 0.0, 1.0, 2.5), 1234);
        assert_eq!(walk(1, 0.5, 1.0, -10.0), 1);
    }
}
