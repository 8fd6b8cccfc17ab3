//! Demo data for `agora serve --demo`: a security priced in KRW, two crypto pairs, funded
//! users, and a starting book so that a first market order has something to fill against.

use agora_engine::Side;
use agora_exchange::{Exchange, NewAsset, NewSymbol, OrderRequest};
use agora_store::OrderType;

pub const DEMO_USERS: [&str; 3] = ["alice", "bob", "maker"];

struct Market {
    name: &'static str,
    base: &'static str,
    quote: &'static str,
    tick: &'static str,
    lot: &'static str,
    min_notional: &'static str,
    /// Reference price in whole quote units and the spacing of the starting book.
    reference: i64,
    step: i64,
    depth_qty: &'static str,
}

const MARKETS: [Market; 3] = [
    Market {
        name: "005930-KRW", // Samsung Electronics common shares
        base: "005930",
        quote: "KRW",
        tick: "100",
        lot: "1",
        min_notional: "1000",
        reference: 70_000,
        step: 100,
        depth_qty: "10",
    },
    Market {
        name: "BTC-USDT",
        base: "BTC",
        quote: "USDT",
        tick: "0.01",
        lot: "0.0001",
        min_notional: "5",
        reference: 65_000,
        step: 5,
        depth_qty: "0.05",
    },
    Market {
        name: "ETH-USDT",
        base: "ETH",
        quote: "USDT",
        tick: "0.01",
        lot: "0.0001",
        min_notional: "5",
        reference: 3_200,
        step: 1,
        depth_qty: "0.5",
    },
];

/// Seeds the demo if the store has no assets yet; prints the demo users' ids either way.
pub async fn seed(exchange: &Exchange) -> anyhow::Result<()> {
    if exchange.refdata().assets.is_empty() {
        for (code, scale) in [
            ("KRW", 0),
            ("USDT", 6),
            ("BTC", 8),
            ("ETH", 8),
            ("005930", 0),
        ] {
            exchange
                .create_asset(NewAsset {
                    code: code.into(),
                    scale,
                })
                .await?;
        }
        for m in &MARKETS {
            exchange
                .create_symbol(&NewSymbol {
                    name: m.name.into(),
                    base: m.base.into(),
                    quote: m.quote.into(),
                    tick_size: m.tick.into(),
                    lot_size: m.lot.into(),
                    min_notional: Some(m.min_notional.into()),
                    maker_fee_bps: 5,
                    taker_fee_bps: 10,
                    status: None,
                    max_quantity: None,
                    default_self_trade_prevention_mode: None,
                })
                .await?;
        }
        for name in DEMO_USERS {
            let user = exchange.create_user(name).await?;
            let scale = if name == "maker" { 10 } else { 1 };
            for (asset, amount) in [
                ("KRW", 100_000_000),
                ("USDT", 1_000_000),
                ("BTC", 10),
                ("ETH", 100),
                ("005930", 1_000),
            ] {
                exchange
                    .deposit(user.id, asset, &(amount * scale).to_string())
                    .await?;
            }
        }
        let maker = exchange.user_by_name("maker").await?.expect("just created");
        for m in &MARKETS {
            for level in 1..=5 {
                for (side, price) in [
                    (Side::Buy, m.reference - level * m.step),
                    (Side::Sell, m.reference + level * m.step),
                ] {
                    let order = OrderRequest {
                        symbol: m.name.into(),
                        side,
                        order_type: OrderType::Limit,
                        price: Some(price.to_string()),
                        quantity: Some(m.depth_qty.into()),
                        quote_quantity: None,
                        time_in_force: None,
                        client_order_id: Some(format!("demo-{}-{side:?}-{level}", m.name)),
                        self_trade_prevention_mode: None,
                    };
                    exchange.place_order(maker.id, &order).await?;
                }
            }
        }
        tracing::info!("demo data seeded");
    }
    let mut ids = Vec::new();
    for name in DEMO_USERS {
        if let Some(u) = exchange.user_by_name(name).await? {
            ids.push(format!("{name}={}", u.id));
        }
    }
    println!("demo users (send as X-User-Id): {}", ids.join(" "));
    Ok(())
}
