//! Market data over REST, against the real binary: depth equals the engine's book after
//! random flow and after a restart; trades, candles and the ticker agree with the fills.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Bids and asks as (price, quantity) decimal strings, best first.
type Levels = (Vec<(String, String)>, Vec<(String, String)>);

/// The engine's book (admin endpoint) aggregated into levels, best first.
fn engine_levels(s: &Server) -> Levels {
    let mut bids: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let mut asks: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let cents = |t: &str| (t.parse::<f64>().unwrap() * 100.0).round() as i64; // test-only parse
    for o in s.book("BASE-QUOTE")["orders"].as_array().unwrap() {
        let p = o["price"].as_str().unwrap();
        let side = if o["side"] == "BUY" {
            &mut bids
        } else {
            &mut asks
        };
        let e = side.entry(cents(p)).or_insert((p.to_string(), 0));
        e.1 += cents(o["remaining"].as_str().unwrap());
    }
    let fmt = |q: i64| format!("{}.{:02}", q / 100, q % 100);
    (
        bids.values()
            .rev()
            .map(|(p, q)| (p.clone(), fmt(*q)))
            .collect(),
        asks.values().map(|(p, q)| (p.clone(), fmt(*q))).collect(),
    )
}

fn rest_levels(s: &Server) -> Levels {
    let d = s.json("/api/v1/markets/BASE-QUOTE/depth?limit=5000", None);
    (levels(&d["bids"]), levels(&d["asks"]))
}

/// Waits until the read model has caught up with settlement (it is fed after each commit).
fn wait_depth_matches(s: &Server) {
    s.quiesce();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (want, got) = (engine_levels(s), rest_levels(s));
        if want == got {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "depth never matched:\nengine {want:?}\nrest   {got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn depth_equals_the_engine_book_after_random_flow_and_after_restart() {
    let mut s = Server::start();
    let users = market(&s, 6);
    random_flow(&s, &users, 400, 5, 0.2);
    wait_depth_matches(&s);
    let before = s.json("/api/v1/markets/BASE-QUOTE/depth?limit=5000", None);
    assert!(before["last_update_id"].as_u64().unwrap() > 0);
    s.restart();
    wait_depth_matches(&s);
    // More flow after the restart keeps them equal.
    random_flow(&s, &users, 100, 6, 0.2);
    wait_depth_matches(&s);
    s.assert_invariants();
}

#[test]
fn trades_candles_and_ticker_agree_with_the_fills() {
    let mut s = Server::start();
    let u = market(&s, 2);
    place(&s, u[0], limit("SELL", "10.00", "5", "GTC"));
    place(&s, u[0], limit("SELL", "12.00", "5", "GTC"));
    let (_, o) = place(&s, u[1], limit("BUY", "12.00", "7", "IOC"));
    wait_status(&s, u[1], o["order_id"].as_u64().unwrap(), &["FILLED"]);
    s.quiesce();
    let wait_trades = |s: &Server, n: usize| {
        for _ in 0..500 {
            let t = s.json("/api/v1/markets/BASE-QUOTE/trades", None);
            if t["trades"].as_array().unwrap().len() == n {
                return t;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("trades never arrived");
    };
    let t = wait_trades(&s, 2);
    // Newest first: 2 at 12.00 then 5 at 10.00, both taken by a buyer.
    let got: Vec<(&str, &str, &str)> = t["trades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["price"].as_str().unwrap(),
                t["quantity"].as_str().unwrap(),
                t["taker_side"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("12.00", "2.00", "BUY"), ("10.00", "5.00", "BUY")]
    );
    let check = |s: &Server| {
        let c = s.json(
            "/api/v1/markets/BASE-QUOTE/candles?interval=1m&limit=5",
            None,
        );
        let last = c["candles"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (
                &last["open"],
                &last["high"],
                &last["low"],
                &last["close"],
                &last["volume"],
                &last["quote_volume"],
                &last["trades"]
            ),
            (
                &json!("10.00"),
                &json!("12.00"),
                &json!("10.00"),
                &json!("12.00"),
                &json!("7.00"),
                &json!("74.00"),
                &json!(2)
            ),
            "{c}"
        );
        let d = s.json("/api/v1/markets/BASE-QUOTE/candles?interval=1d", None);
        assert_eq!(
            d["candles"].as_array().unwrap().last().unwrap()["volume"],
            "7.00"
        );
        let t = s.json("/api/v1/markets/BASE-QUOTE/ticker", None);
        assert_eq!(
            (&t["open"], &t["last"], &t["high"], &t["volume"]),
            (
                &json!("10.00"),
                &json!("12.00"),
                &json!("12.00"),
                &json!("7.00")
            )
        );
        assert_eq!(t["change_percent"], "20.00");
        assert_eq!(
            (&t["best_ask"], &t["best_ask_quantity"], &t["best_bid"]),
            (&json!("12.00"), &json!("3.00"), &Value::Null)
        );
    };
    check(&s);
    // Everything survives a restart (trades and candles from the store, depth rebuilt).
    s.restart();
    wait_trades(&s, 2);
    check(&s);
    s.assert_invariants();
}

#[test]
fn market_endpoints_refuse_bad_parameters() {
    let s = Server::start();
    market(&s, 1);
    for (path, code, problem) in [
        ("/api/v1/markets/NOPE/depth", 404, "UNKNOWN_SYMBOL"),
        (
            "/api/v1/markets/BASE-QUOTE/depth?limit=0",
            400,
            "INVALID_LIMIT",
        ),
        (
            "/api/v1/markets/BASE-QUOTE/depth?limit=5001",
            400,
            "INVALID_LIMIT",
        ),
        (
            "/api/v1/markets/BASE-QUOTE/trades?limit=abc",
            400,
            "INVALID_LIMIT",
        ),
        (
            "/api/v1/markets/BASE-QUOTE/candles",
            400,
            "INVALID_INTERVAL",
        ),
        (
            "/api/v1/markets/BASE-QUOTE/candles?interval=2h",
            400,
            "INVALID_INTERVAL",
        ),
        (
            "/api/v1/markets/BASE-QUOTE/candles?interval=1m&start=x",
            400,
            "INVALID_TIME",
        ),
        (
            "/api/v1/markets/BASE-QUOTE/candles?interval=1m&start=-5",
            400,
            "INVALID_TIME",
        ),
        (
            "/api/v1/markets/BASE-QUOTE/candles?interval=1m&start=2000&end=1000",
            400,
            "INVALID_TIME",
        ),
        (
            "/api/v1/markets/BASE-QUOTE/candles?interval=1m&limit=1001",
            400,
            "INVALID_LIMIT",
        ),
    ] {
        let r = s.get(path, None);
        assert_eq!(r.status().as_u16(), code, "{path}");
        let body: Value = r.json().unwrap();
        assert_eq!(body["code"], problem, "{path}");
    }
    // A market with no trades: empty, not an error.
    let t = s.json("/api/v1/markets/BASE-QUOTE/ticker", None);
    assert_eq!(t["last"], Value::Null);
    let c = s.json("/api/v1/markets/BASE-QUOTE/candles?interval=1h", None);
    assert!(c["candles"].as_array().unwrap().is_empty());
    let m = s.json("/api/v1/markets", None);
    assert_eq!(m["markets"][0]["symbol"], "BASE-QUOTE");
}
