//! Regression tests for defects found by outside testing (issue #8): each one failed on the
//! code before its fix. Against the real binary.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Creates a user funded with `funds` (asset, amount) and returns its id.
fn funded_user(s: &Server, name: &str, funds: &[(&str, &str)]) -> u64 {
    let id = s.admin("users", json!({ "name": name }))["user_id"]
        .as_u64()
        .unwrap();
    for (asset, amount) in funds {
        s.admin(
            "deposits",
            json!({"user_id": id, "asset": asset, "amount": amount}),
        );
    }
    id
}

/// COIN (scale 4) against USD (scale 6) as the outside report had it: tick 0.01 and lot
/// 0.0013 unless `rules` (merged into the listing) says otherwise.
fn coin_usd(s: &Server, rules: Value) {
    s.admin("assets", json!({"code": "COIN", "scale": 4}));
    s.admin("assets", json!({"code": "USD", "scale": 6}));
    let mut symbol = json!({"name": "COIN-USD", "base": "COIN", "quote": "USD",
                            "tick_size": "0.01", "lot_size": "0.0013"});
    for (k, v) in rules.as_object().unwrap() {
        symbol[k] = v.clone();
    }
    s.admin("symbols", symbol);
}

fn order(symbol: &str, side: &str, kind: &str, fields: Value) -> Value {
    let mut o = json!({"symbol": symbol, "side": side, "type": kind});
    for (k, v) in fields.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

fn status_code(s: &Server, method: &str, path: &str, user: u64) -> (u16, Value) {
    let url = format!("{}{path}", s.url);
    let r = match method {
        "GET" => s.http.get(url),
        _ => s.http.delete(url),
    }
    .header("x-user-id", user)
    .send()
    .expect("request");
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

#[test]
fn ids_beyond_the_i64_range_are_not_found_and_the_server_lives_on() {
    let s = Server::start();
    let users = market(&s, 1);
    let u = users[0];
    for id in [
        "9223372036854775808",
        "18446744073709551615",
        "99999999999999999999999",
    ] {
        for method in ["DELETE", "GET"] {
            let (code, problem) = status_code(&s, method, &format!("/api/v1/orders/{id}"), u);
            assert_eq!(
                (code, problem["code"].as_str()),
                (404, Some("ORDER_NOT_FOUND")),
                "{method} {id}: {problem}"
            );
        }
    }
    for path in [
        "/api/v1/orders?before=18446744073709551615",
        "/api/v1/orders?before=9223372036854775808",
        "/api/v1/fills?before=18446744073709551615",
        "/api/v1/orders?before=0",
    ] {
        let (code, problem) = status_code(&s, "GET", path, u);
        assert_eq!(
            (code, problem["code"].as_str()),
            (400, Some("INVALID_ID")),
            "{path}: {problem}"
        );
    }
    // The largest possible id is a valid cursor, and the server is still serving.
    let (code, _) = status_code(&s, "GET", "/api/v1/orders?before=9223372036854775807", u);
    assert_eq!(code, 200);
    assert_eq!(s.get("/health", None).status(), 200);
    s.assert_invariants();
}

/// Scale 18 and whole-unit lots: two buys of 5 at one price rest 10^19 minor units, more
/// than an i64 holds. The depth used to show a negative total, a FOK sell of 1 expired
/// although 10 were bid, and a cancel then panicked the market thread (process abort).
#[test]
fn resting_quantity_beyond_i64_at_one_price_stays_exact() {
    let s = Server::start();
    s.admin("assets", json!({"code": "WIDE", "scale": 18}));
    s.admin("assets", json!({"code": "CASH", "scale": 2}));
    let symbol = s.admin(
        "symbols",
        json!({"name": "WIDE-CASH", "base": "WIDE", "quote": "CASH", "tick_size": "1", "lot_size": "1"}),
    );
    assert_eq!(symbol["max_quantity"], "9.000000000000000000");
    let buyer = funded_user(&s, "buyer", &[("CASH", "1000")]);
    let seller = funded_user(&s, "seller", &[("WIDE", "2")]);
    let buy = || {
        order(
            "WIDE-CASH",
            "BUY",
            "LIMIT",
            json!({"price": "1", "quantity": "5"}),
        )
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (code, o) = place(&s, buyer, buy());
        assert_eq!(code, 202, "{o}");
        ids.push(o["order_id"].as_u64().unwrap());
    }
    // Ten whole units is more minor units than any one amount can be.
    let (code, o) = place(
        &s,
        buyer,
        order(
            "WIDE-CASH",
            "BUY",
            "LIMIT",
            json!({"price": "1", "quantity": "10"}),
        ),
    );
    assert_eq!(
        (code, o["code"].as_str()),
        (400, Some("OUT_OF_RANGE")),
        "{o}"
    );
    s.quiesce();
    let depth = s.json("/api/v1/markets/WIDE-CASH/depth", None);
    assert_eq!(depth["bids"], json!([["1.00", "10.000000000000000000"]]));
    let fok = order(
        "WIDE-CASH",
        "SELL",
        "LIMIT",
        json!({"price": "1", "quantity": "1", "time_in_force": "FOK"}),
    );
    let fok = s.order(seller, placed(&s, seller, fok));
    assert_eq!(fok["status"], "FILLED", "{fok}");
    let (code, third) = place(&s, buyer, buy());
    assert_eq!(code, 202, "{third}");
    for id in &ids {
        assert_eq!(
            s.delete(&format!("/api/v1/orders/{id}"), buyer).status(),
            202
        );
    }
    s.quiesce();
    // The market read model follows the commits on its own thread: wait until it has the
    // cancels (quiesce only says the store has them).
    let want = json!([["1.00", "5.000000000000000000"]]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut depth = s.json("/api/v1/markets/WIDE-CASH/depth", None);
    while depth["bids"] != want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        depth = s.json("/api/v1/markets/WIDE-CASH/depth", None);
    }
    assert_eq!(depth["bids"], want);
    let ticker = s.json("/api/v1/markets/WIDE-CASH/ticker", None);
    assert_eq!(ticker["best_bid_quantity"], "5.000000000000000000");
    assert_eq!(s.get("/health", None).status(), 200);
    s.assert_invariants();
}

/// A symbol may bound one order's quantity below the default; larger orders are refused.
#[test]
fn one_order_may_not_exceed_the_symbols_max_quantity() {
    let s = Server::start();
    coin_usd(&s, json!({"lot_size": "0.01", "max_quantity": "2.5"}));
    let symbol = &s.json("/api/v1/markets", None)["markets"][0];
    assert_eq!(symbol["max_quantity"], "2.5000");
    let u = funded_user(&s, "trader", &[("COIN", "10"), ("USD", "1000")]);
    for (kind, fields) in [
        ("LIMIT", json!({"price": "1", "quantity": "2.51"})),
        ("MARKET", json!({"quantity": "3"})),
    ] {
        let (code, o) = place(&s, u, order("COIN-USD", "SELL", kind, fields));
        assert_eq!(
            (code, o["code"].as_str()),
            (400, Some("QUANTITY_TOO_LARGE")),
            "{o}"
        );
    }
    let (code, o) = place(
        &s,
        u,
        order(
            "COIN-USD",
            "SELL",
            "LIMIT",
            json!({"price": "1", "quantity": "2.5"}),
        ),
    );
    assert_eq!(code, 202, "{o}");
    s.assert_invariants();
}

/// A candle request's cost follows its limit, not its range: a range ending in 2100 used to
/// build every one-minute bucket up to then (seconds and gigabytes per request).
#[test]
fn candle_ranges_into_the_future_cost_what_the_limit_asks_for() {
    let s = Server::start();
    let users = market(&s, 2);
    place(&s, users[0], limit("SELL", "10.00", "1", "GTC"));
    place(&s, users[1], limit("BUY", "10.00", "1", "GTC"));
    s.quiesce();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let path = format!(
        "/api/v1/markets/BASE-QUOTE/candles?interval=1m&start={}&end=4102444800000",
        now_ms - 3_600_000
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, path) = (s.url.clone(), path.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                let v: Value = reqwest::blocking::get(format!("{url}{path}"))
                    .unwrap()
                    .json()
                    .unwrap();
                (v, t.elapsed())
            })
        })
        .collect();
    let health = Instant::now();
    assert_eq!(s.get("/health", None).status(), 200);
    let health_ms = health.elapsed().as_millis();
    for w in workers {
        let (v, took) = w.join().unwrap();
        let candles = v["candles"].as_array().unwrap();
        assert!(!candles.is_empty(), "{v}");
        let last_open = candles.last().unwrap()["open_ms"].as_i64().unwrap();
        assert!(
            last_open <= now_ms + 60_000,
            "a candle from the future: {last_open}"
        );
        assert!(
            candles.len() <= 61,
            "{} candles for one hour",
            candles.len()
        );
        // Generous for a debug build: the old code took seconds in release.
        assert!(
            took < Duration::from_secs(2),
            "a candle request took {took:?}"
        );
    }
    assert!(
        health_ms < 1_000,
        "/health waited {health_ms} ms behind candle requests"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // A range wholly in the future is empty, not an error.
    let future = s.json(
        "/api/v1/markets/BASE-QUOTE/candles?interval=1m&start=4000000000000&end=4102444800000",
        None,
    );
    assert_eq!(future["candles"], json!([]));
}

/// A tick of 0.01 and a lot of 0.0013: a market buy whose budget buys exactly the last
/// 0.013 in the book used to end EXPIRED although it spent everything.
#[test]
fn a_market_buy_that_spends_its_budget_on_the_last_order_is_filled() {
    let s = Server::start();
    coin_usd(&s, json!({}));
    let seller = funded_user(&s, "seller", &[("COIN", "1")]);
    let buyer = funded_user(&s, "buyer", &[("USD", "100")]);
    let (code, _) = place(
        &s,
        seller,
        order(
            "COIN-USD",
            "SELL",
            "LIMIT",
            json!({"price": "100", "quantity": "0.013"}),
        ),
    );
    assert_eq!(code, 202);
    s.quiesce();
    let budget = |amount: &str| {
        order(
            "COIN-USD",
            "BUY",
            "MARKET",
            json!({"quote_quantity": amount}),
        )
    };
    let o = s.order(buyer, placed(&s, buyer, budget("1.3")));
    assert_eq!(o["status"], "FILLED", "{o}");
    assert_eq!(o["filled_quote"], "1.300000");
    // With budget left for more at the last price, an emptied book means EXPIRED.
    place(
        &s,
        seller,
        order(
            "COIN-USD",
            "SELL",
            "LIMIT",
            json!({"price": "100", "quantity": "0.0013"}),
        ),
    );
    s.quiesce();
    let o = s.order(buyer, placed(&s, buyer, budget("1")));
    assert_eq!(
        (o["status"].as_str(), o["filled_quantity"].as_str()),
        (Some("EXPIRED"), Some("0.0013"))
    );
    s.assert_invariants();
}

/// The self-trade market of the outside report: tick 0.01, lot 0.0013, a user on both sides.
fn self_trade_market(s: &Server) -> u64 {
    coin_usd(s, json!({"maker_fee_bps": 10, "taker_fee_bps": 20}));
    funded_user(s, "trader", &[("COIN", "1"), ("USD", "1000")])
}

fn at_995(side: &str, stp: Option<&str>) -> Value {
    let mut o = order(
        "COIN-USD",
        side,
        "LIMIT",
        json!({"price": "99.5", "quantity": "0.013"}),
    );
    if let Some(mode) = stp {
        o["self_trade_prevention_mode"] = json!(mode);
    }
    o
}

/// Places an order and waits until it has been matched (settled by the engine).
fn placed(s: &Server, user: u64, body: Value) -> u64 {
    let (code, o) = place(s, user, body);
    assert_eq!(code, 202, "{o}");
    s.quiesce();
    o["order_id"].as_u64().unwrap()
}

#[test]
fn a_self_trade_shows_both_fills() {
    let s = Server::start();
    let u = self_trade_market(&s);
    let buy = placed(&s, u, at_995("BUY", None));
    let sell = placed(&s, u, at_995("SELL", None));
    let fills = s.json("/api/v1/fills", Some(u))["fills"].clone();
    let sides: Vec<(u64, &str, &str)> = fills
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["order_id"].as_u64().unwrap(),
                f["side"].as_str().unwrap(),
                f["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(sides, vec![(sell, "SELL", "TAKER"), (buy, "BUY", "MAKER")]);
    assert_eq!(fills[0]["trade_id"], fills[1]["trade_id"]);
    // Each fill carries its side's fee, as its order does.
    for (f, id) in [(&fills[0], sell), (&fills[1], buy)] {
        assert_eq!(f["fee"], s.order(u, id)["fee"], "{f}");
    }
    // Paging one fill at a time walks both sides of the trade.
    let first = s.json("/api/v1/fills?limit=1", Some(u));
    let cursor = first["next_before"].as_i64().unwrap();
    let second = s.json(&format!("/api/v1/fills?limit=1&before={cursor}"), Some(u));
    assert_eq!(second["fills"][0]["side"], "BUY");
    s.assert_invariants();
}

#[test]
fn self_trade_prevention_expires_the_taker_the_maker_or_both() {
    let s = Server::start();
    let u = self_trade_market(&s);
    let balances = |s: &Server| s.json("/api/v1/balances", Some(u));
    let before = balances(&s);
    // EXPIRE_TAKER: the taker's rest expires; the resting order stays.
    let maker = placed(&s, u, at_995("BUY", None));
    let taker = placed(&s, u, at_995("SELL", Some("EXPIRE_TAKER")));
    assert_eq!(s.order(u, taker)["status"], "EXPIRED_IN_MATCH");
    assert_eq!(
        s.order(u, taker)["self_trade_prevention_mode"],
        "EXPIRE_TAKER"
    );
    assert_eq!(s.order(u, maker)["status"], "NEW");
    // EXPIRE_MAKER: the resting order expires; the taker goes on and rests itself.
    let taker = placed(&s, u, at_995("SELL", Some("EXPIRE_MAKER")));
    assert_eq!(s.order(u, maker)["status"], "EXPIRED_IN_MATCH");
    assert_eq!(s.order(u, taker)["status"], "NEW");
    // EXPIRE_BOTH: both.
    let both = placed(&s, u, at_995("BUY", Some("EXPIRE_BOTH")));
    assert_eq!(s.order(u, both)["status"], "EXPIRED_IN_MATCH");
    assert_eq!(s.order(u, taker)["status"], "EXPIRED_IN_MATCH");
    // Nothing traded, every hold went back.
    assert!(s.json("/api/v1/fills", Some(u))["fills"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(balances(&s), before);
    // The symbol's default applies to orders that do not choose.
    let r = s
        .http
        .patch(format!("{}/api/v1/admin/symbols/COIN-USD", s.url))
        .json(&json!({"default_self_trade_prevention_mode": "EXPIRE_MAKER"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap()["default_self_trade_prevention_mode"],
        "EXPIRE_MAKER"
    );
    let maker = placed(&s, u, at_995("BUY", None));
    let taker = placed(&s, u, at_995("SELL", None));
    assert_eq!(
        s.order(u, taker)["self_trade_prevention_mode"],
        "EXPIRE_MAKER"
    );
    assert_eq!(s.order(u, maker)["status"], "EXPIRED_IN_MATCH");
    s.assert_invariants();
}

/// Minimum notional 1: a one-lot MARKET SELL worth 0.13 at the market's price used to trade.
#[test]
fn a_market_sell_below_the_minimum_notional_is_refused() {
    let s = Server::start();
    coin_usd(&s, json!({"min_notional": "1"}));
    let a = funded_user(&s, "a", &[("COIN", "1"), ("USD", "1000")]);
    let b = funded_user(&s, "b", &[("COIN", "1"), ("USD", "1000")]);
    let sell = |qty: &str| order("COIN-USD", "SELL", "MARKET", json!({"quantity": qty}));
    // A bid is the reference before any trade: 0.0013 × 100 = 0.13 < 1.
    placed(
        &s,
        a,
        order(
            "COIN-USD",
            "BUY",
            "LIMIT",
            json!({"price": "100", "quantity": "0.13"}),
        ),
    );
    let (code, problem) = place(&s, b, sell("0.0013"));
    assert_eq!(
        (code, problem["code"].as_str()),
        (400, Some("NOTIONAL_TOO_SMALL")),
        "{problem}"
    );
    // After trades, the average price of the last five minutes is the reference.
    placed(&s, b, sell("0.013"));
    let (code, problem) = place(&s, b, sell("0.0013"));
    assert_eq!(
        (code, problem["code"].as_str()),
        (400, Some("NOTIONAL_TOO_SMALL")),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("100.000000"),
        "{problem}"
    );
    // 0.0104 × 100 = 1.04 clears it.
    let (code, o) = place(&s, b, sell("0.0104"));
    assert_eq!(code, 202, "{o}");
    s.assert_invariants();
}

#[test]
fn admin_endpoints_need_a_token_beyond_loopback_and_compare_it() {
    // Beyond loopback without a token, agora refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(agora_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run agora");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agora started on 0.0.0.0 with open admin endpoints");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("admin-token"), "{stderr}");
    // With a token, admin endpoints take exactly that token.
    let token = "correct-horse-battery-staple";
    let s = Server::start_with(&["--admin-token", token]);
    let status = |sent: Option<&str>| {
        let mut r = s.http.get(format!("{}/api/v1/admin/status", s.url));
        if let Some(t) = sent {
            r = r.header("x-admin-token", t);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("correct-horse-battery-stapl")), 401);
    assert_eq!(status(Some("correct-horse-battery-staple!")), 401);
    assert_eq!(status(Some("")), 401);
    assert_eq!(status(Some(token)), 200);
}
