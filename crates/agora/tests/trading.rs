//! End-to-end trading against the real binary over HTTP: exact balances after fills and
//! fees, every time-in-force, market orders bounded by their hold, cancels, idempotency,
//! and the ledger/book invariants after every test.

mod common;
use common::*;
use serde_json::json;

#[test]
fn crossing_limits_settle_exactly_with_fees_and_price_improvement() {
    let s = Server::start();
    let u = market(&s, 2);
    let (a, b) = (u[0], u[1]);
    let (code, sell) = place(&s, a, limit("SELL", "5.00", "1500", "GTC"));
    assert_eq!(code, 202, "{sell}");
    assert_eq!(sell["status"], "NEW");
    assert_eq!(s.balance(a, "BASE"), ("998500.00".into(), "1500.00".into()));
    let (code, buy) = place(&s, b, limit("BUY", "5.10", "1000", "GTC"));
    assert_eq!(code, 202, "{buy}");
    assert_eq!(buy["held"], "5100.00");
    let buy = wait_status(&s, b, buy["order_id"].as_u64().unwrap(), &["FILLED"]);
    assert_eq!(buy["filled_quantity"], "1000.00");
    assert_eq!(buy["filled_quote"], "5000.00");
    assert_eq!(buy["fee"], "2.00"); // taker 20 bps of 1000 BASE received
    assert_eq!(buy["held"], "0.00");
    let sell = s.order(a, sell["order_id"].as_u64().unwrap());
    assert_eq!(sell["status"], "PARTIALLY_FILLED");
    assert_eq!(sell["fee"], "5.00"); // maker 10 bps of 5000 QUOTE received
    assert_eq!(s.balance(a, "BASE"), ("998500.00".into(), "500.00".into()));
    assert_eq!(s.balance(a, "QUOTE"), ("1004995.00".into(), "0.00".into()));
    assert_eq!(s.balance(b, "BASE"), ("1000998.00".into(), "0.00".into()));
    // Bought below the limit: the 100.00 not needed was released.
    assert_eq!(s.balance(b, "QUOTE"), ("995000.00".into(), "0.00".into()));

    let fills = s.json("/api/v1/fills", Some(b));
    let f = &fills["fills"][0];
    assert_eq!(
        (f["side"].as_str(), f["role"].as_str()),
        (Some("BUY"), Some("TAKER"))
    );
    assert_eq!(
        (f["price"].as_str(), f["quantity"].as_str()),
        (Some("5.00"), Some("1000.00"))
    );
    let fills = s.json("/api/v1/fills", Some(a));
    assert_eq!(fills["fills"][0]["role"], "MAKER");
    assert_eq!(fills["fills"][0]["fee_asset"], "QUOTE");

    // Cancel the rest: the hold comes back when the engine confirms.
    let sell_id = sell["order_id"].as_u64().unwrap();
    let r = s.delete(&format!("/api/v1/orders/{sell_id}"), a);
    assert_eq!(r.status(), 202);
    let sell = wait_status(&s, a, sell_id, &["CANCELED"]);
    assert_eq!(sell["filled_quantity"], "1000.00");
    assert_eq!(s.balance(a, "BASE"), ("999000.00".into(), "0.00".into()));
    let r = s.delete(&format!("/api/v1/orders/{sell_id}"), a);
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["code"], "ORDER_NOT_OPEN");
    // Only the owner learns that it exists: to another user, and for an id never given
    // out, it is not found.
    let buy_id = buy["order_id"].as_u64().unwrap();
    for (id, user) in [(buy_id, a), (sell_id, b), (sell_id + 1_000, a)] {
        let r = s.delete(&format!("/api/v1/orders/{id}"), user);
        assert_eq!(r.status(), 404, "order {id}");
    }
    s.assert_invariants();
}

#[test]
fn market_buy_never_spends_more_than_it_held() {
    let s = Server::start();
    let u = market(&s, 2);
    let (a, b) = (u[0], u[1]);
    place(&s, a, limit("SELL", "2.00", "100", "GTC"));
    place(&s, a, limit("SELL", "3.00", "100", "GTC"));
    s.quiesce();
    let mkt = |quote: &str| json!({"symbol": "BASE-QUOTE", "side": "BUY", "type": "MARKET", "quote_quantity": quote});
    let (code, o) = place(&s, b, mkt("400.00"));
    assert_eq!(code, 202, "{o}");
    // 100 at 2.00 = 200.00, then 66 at 3.00 = 198.00; 2.00 cannot buy one more lot.
    let o = wait_status(&s, b, o["order_id"].as_u64().unwrap(), &["FILLED"]);
    assert_eq!(o["filled_quantity"], "166.00");
    assert_eq!(o["filled_quote"], "398.00");
    assert_eq!(s.balance(b, "QUOTE"), ("999602.00".into(), "0.00".into()));
    // Fees: 20 bps of 100 = 0.20, of 66 = 0.132 → 0.13 (rounded down).
    assert_eq!(s.balance(b, "BASE"), ("1000165.67".into(), "0.00".into()));
    // The book runs dry: what is not filled is released, and the order expires.
    let (_, o) = place(&s, b, mkt("1000.00"));
    let o = wait_status(&s, b, o["order_id"].as_u64().unwrap(), &["EXPIRED"]);
    assert_eq!(o["filled_quantity"], "34.00");
    assert_eq!(o["held"], "0.00");
    assert_eq!(s.balance(b, "QUOTE"), ("999500.00".into(), "0.00".into()));
    let sell = json!({"symbol": "BASE-QUOTE", "side": "SELL", "type": "MARKET", "quantity": "5"});
    let (_, o) = place(&s, a, sell);
    let o = wait_status(&s, a, o["order_id"].as_u64().unwrap(), &["EXPIRED"]);
    assert_eq!(o["filled_quantity"], "0.00");
    s.assert_invariants();
}

#[test]
fn ioc_expires_its_rest_and_fok_fills_all_or_nothing() {
    let s = Server::start();
    let u = market(&s, 2);
    let (a, b) = (u[0], u[1]);
    place(&s, a, limit("SELL", "1.00", "10", "GTC"));
    let (_, ioc) = place(&s, b, limit("BUY", "1.00", "15", "IOC"));
    let ioc = wait_status(&s, b, ioc["order_id"].as_u64().unwrap(), &["EXPIRED"]);
    assert_eq!(ioc["filled_quantity"], "10.00");
    assert_eq!(s.balance(b, "QUOTE"), ("999990.00".into(), "0.00".into()));

    let (_, maker) = place(&s, a, limit("SELL", "1.00", "10", "GTC"));
    let (_, fok) = place(&s, b, limit("BUY", "1.00", "15", "FOK"));
    let fok = wait_status(&s, b, fok["order_id"].as_u64().unwrap(), &["EXPIRED"]);
    assert_eq!(fok["filled_quantity"], "0.00");
    assert_eq!(
        s.order(a, maker["order_id"].as_u64().unwrap())["status"],
        "NEW"
    );
    let (_, fok) = place(&s, b, limit("BUY", "1.00", "10", "FOK"));
    wait_status(&s, b, fok["order_id"].as_u64().unwrap(), &["FILLED"]);
    assert_eq!(s.balance(b, "QUOTE"), ("999980.00".into(), "0.00".into()));
    s.assert_invariants();
}

#[test]
fn insufficient_funds_holds_nothing() {
    let s = Server::start();
    let u = market(&s, 1);
    let poor = s.admin("users", json!({"name": "poor"}))["user_id"]
        .as_u64()
        .unwrap();
    s.admin(
        "deposits",
        json!({"user_id": poor, "asset": "QUOTE", "amount": "10"}),
    );
    let (code, body) = place(&s, poor, limit("BUY", "1.00", "11", "GTC"));
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_FUNDS");
    assert_eq!(s.balance(poor, "QUOTE"), ("10.00".into(), "0.00".into()));
    let orders = s.json("/api/v1/orders", Some(poor));
    assert_eq!(orders["orders"].as_array().unwrap().len(), 0);
    // Exactly enough is fine.
    let (code, _) = place(&s, poor, limit("BUY", "1.00", "10", "GTC"));
    assert_eq!(code, 202);
    assert_eq!(s.balance(poor, "QUOTE"), ("0.00".into(), "10.00".into()));
    let _ = u;
    s.assert_invariants();
}

#[test]
fn a_repeated_client_order_id_returns_the_original_order() {
    let s = Server::start();
    let u = market(&s, 2);
    let mut body = limit("BUY", "1.00", "10", "GTC");
    body["client_order_id"] = json!("my-order-1");
    let (code, first) = place(&s, u[0], body.clone());
    assert_eq!(code, 202);
    let (code, again) = place(&s, u[0], body.clone());
    assert_eq!(code, 200);
    assert_eq!(first["order_id"], again["order_id"]);
    assert_eq!(
        s.balance(u[0], "QUOTE"),
        ("999990.00".into(), "10.00".into())
    );
    // Another user may use the same client id.
    let (code, other) = place(&s, u[1], body);
    assert_eq!(code, 202);
    assert_ne!(other["order_id"], first["order_id"]);
    s.assert_invariants();
}

#[test]
fn users_see_only_their_own_orders() {
    let s = Server::start();
    let u = market(&s, 2);
    let (_, o) = place(&s, u[0], limit("BUY", "1.00", "1", "GTC"));
    let id = o["order_id"].as_u64().unwrap();
    for r in [
        s.get(&format!("/api/v1/orders/{id}"), Some(u[1])),
        s.delete(&format!("/api/v1/orders/{id}"), u[1]),
        s.get("/api/v1/orders/999999", Some(u[0])),
        s.delete("/api/v1/orders/999999", u[0]),
    ] {
        assert_eq!(r.status(), 404);
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["code"], "ORDER_NOT_FOUND");
    }
    assert_eq!(s.order(u[0], id)["status"], "NEW");
    let mine = s.json("/api/v1/orders", Some(u[1]));
    assert!(mine["orders"].as_array().unwrap().is_empty());
    s.assert_invariants();
}

#[test]
fn order_lists_filter_and_paginate() {
    let s = Server::start();
    let u = market(&s, 1);
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, o) = place(&s, u[0], limit("BUY", &format!("1.0{i}"), "1", "GTC"));
        ids.push(o["order_id"].as_u64().unwrap());
    }
    s.delete(&format!("/api/v1/orders/{}", ids[0]), u[0]);
    wait_status(&s, u[0], ids[0], &["CANCELED"]);
    let page = s.json("/api/v1/orders?limit=2", Some(u[0]));
    let got: Vec<u64> = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[4], ids[3]]);
    let next = page["next_before"].as_u64().unwrap();
    let page = s.json(&format!("/api/v1/orders?limit=2&before={next}"), Some(u[0]));
    let got: Vec<u64> = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    let canceled = s.json(
        "/api/v1/orders?status=CANCELED&symbol=BASE-QUOTE",
        Some(u[0]),
    );
    assert_eq!(canceled["orders"].as_array().unwrap().len(), 1);
    s.assert_invariants();
}

/// Random flow from many users; afterwards the ledger conserves, balances match the
/// journal, holds match open orders, fills match trades, and the engine's book equals the
/// store's open orders.
#[test]
fn random_flow_keeps_every_invariant() {
    use rand::{Rng, SeedableRng};
    let s = Server::start();
    let users = market(&s, 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut open: Vec<(u64, u64)> = Vec::new();
    for _ in 0..400 {
        let user = users[rng.random_range(0..users.len())];
        let roll = rng.random_range(0..100);
        if roll < 15 && !open.is_empty() {
            let (u, id) = open.swap_remove(rng.random_range(0..open.len()));
            let code = s
                .delete(&format!("/api/v1/orders/{id}"), u)
                .status()
                .as_u16();
            assert!(code == 202 || code == 409, "cancel answered {code}");
            continue;
        }
        let side = if rng.random_bool(0.5) { "BUY" } else { "SELL" };
        let body = if roll < 25 {
            if side == "BUY" {
                json!({"symbol": "BASE-QUOTE", "side": "BUY", "type": "MARKET", "quote_quantity": format!("{}.00", rng.random_range(1..500))})
            } else {
                json!({"symbol": "BASE-QUOTE", "side": "SELL", "type": "MARKET", "quantity": format!("{}", rng.random_range(1..50))})
            }
        } else {
            let tif = ["GTC", "GTC", "GTC", "IOC", "FOK"][rng.random_range(0..5)];
            let price = format!(
                "{}.{:02}",
                rng.random_range(9..11),
                rng.random_range(0..100)
            );
            limit(side, &price, &rng.random_range(1..60).to_string(), tif)
        };
        let (code, o) = place(&s, user, body);
        assert_eq!(code, 202, "{o}");
        open.push((user, o["order_id"].as_u64().unwrap()));
    }
    let report = s.assert_invariants();
    assert_eq!(report["books_compared"], 1);
    let status = s.json("/api/v1/admin/status", None);
    assert!(
        status["trades"].as_u64().unwrap() > 50,
        "flow should trade: {status}"
    );
}

#[test]
fn open_orders_per_user_and_symbol_are_capped() {
    let s = Server::start();
    let u = market(&s, 1);
    let mut first = None;
    for i in 0..1_000 {
        let (code, o) = place(&s, u[0], limit("BUY", "1.00", "1", "GTC"));
        assert_eq!(code, 202, "order {i}: {o}");
        first.get_or_insert(o["order_id"].as_u64().unwrap());
    }
    let (code, body) = place(&s, u[0], limit("BUY", "1.00", "1", "GTC"));
    assert_eq!(
        (code, body["code"].as_str()),
        (422, Some("TOO_MANY_OPEN_ORDERS"))
    );
    // Nothing was held for the refused order; a cancel frees a slot once confirmed.
    assert_eq!(
        s.balance(u[0], "QUOTE"),
        ("999000.00".into(), "1000.00".into())
    );
    let first = first.unwrap();
    s.delete(&format!("/api/v1/orders/{first}"), u[0]);
    wait_status(&s, u[0], first, &["CANCELED"]);
    let (code, _) = place(&s, u[0], limit("BUY", "1.00", "1", "GTC"));
    assert_eq!(code, 202);
    s.assert_invariants();
}

#[test]
fn a_halted_symbol_refuses_new_orders_but_lets_users_cancel() {
    let mut s = Server::start();
    let u = market(&s, 1);
    let (_, resting) = place(&s, u[0], limit("BUY", "1.00", "1", "GTC"));
    let patch = |s: &Server, status: &str| {
        s.http
            .patch(format!("{}/api/v1/admin/symbols/BASE-QUOTE", s.url))
            .json(&json!({"status": status}))
            .send()
            .unwrap()
    };
    let r = patch(&s, "HALTED");
    assert_eq!(r.status(), 200);
    let (code, body) = place(&s, u[0], limit("BUY", "1.00", "1", "GTC"));
    assert_eq!(
        (code, body["code"].as_str()),
        (409, Some("SYMBOL_NOT_TRADING"))
    );
    let id = resting["order_id"].as_u64().unwrap();
    assert_eq!(
        s.delete(&format!("/api/v1/orders/{id}"), u[0]).status(),
        202
    );
    wait_status(&s, u[0], id, &["CANCELED"]);
    assert_eq!(patch(&s, "SLEEPING").status(), 400);
    assert_eq!(patch(&s, "TRADING").status(), 200);
    let (code, _) = place(&s, u[0], limit("BUY", "1.00", "1", "GTC"));
    assert_eq!(code, 202);
    // The status survives a restart.
    patch(&s, "HALTED");
    s.restart();
    let (code, _) = place(&s, u[0], limit("BUY", "1.00", "1", "GTC"));
    assert_eq!(code, 409);
    s.assert_invariants();
}

/// A buy that fills part below its limit and rests holds exactly limit × remaining: the
/// price improvement comes back at the fill, not when the order ends.
#[test]
fn a_resting_buy_gets_its_price_improvement_back_at_once() {
    let s = Server::start();
    let u = market(&s, 2);
    place(&s, u[0], limit("SELL", "5.00", "2", "GTC"));
    let (_, buy) = place(&s, u[1], limit("BUY", "6.00", "5", "GTC"));
    let buy = wait_status(
        &s,
        u[1],
        buy["order_id"].as_u64().unwrap(),
        &["PARTIALLY_FILLED"],
    );
    assert_eq!(buy["held"], "18.00"); // 3 left × 6.00; 2 × (6.00 − 5.00) released
    assert_eq!(
        s.balance(u[1], "QUOTE"),
        ("999972.00".into(), "18.00".into())
    );
    s.assert_invariants();
}
