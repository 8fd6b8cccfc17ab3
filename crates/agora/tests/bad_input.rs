//! Bad input: every malformed or rule-breaking request gets a 4xx problem+json with a stable
//! code, nothing changes, and the server never answers 5xx.

mod common;
use common::*;
use serde_json::{json, Value};

/// Everything a user could observe: balances, orders, fills of every user, plus the book.
fn observable(s: &Server, users: &[u64]) -> Value {
    let per_user: Vec<Value> = users
        .iter()
        .map(|&u| {
            json!([
                s.json("/api/v1/balances", Some(u)),
                s.json("/api/v1/orders", Some(u)),
                s.json("/api/v1/fills", Some(u)),
            ])
        })
        .collect();
    json!({"users": per_user, "book": s.book("BASE-QUOTE")["orders"], "status": s.json("/api/v1/admin/status", None)})
}

/// (method, path, X-User-Id, content type, body, expected status, expected problem code)
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
);

fn raw(
    s: &Server,
    method: &str,
    path: &str,
    user: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = s
        .http
        .request(method, format!("{}{path}", s.url))
        .body(body);
    if let Some(u) = user {
        r = r.header("x-user-id", u);
    }
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    let resp = r.send().expect("request");
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let text = resp.text().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (code, body, ct)
}

#[test]
fn bad_requests_get_a_4xx_problem_and_change_nothing() {
    let s = Server::start();
    let users = market(&s, 2);
    place(&s, users[0], limit("SELL", "5.00", "10", "GTC"));
    s.quiesce();
    let u = users[0].to_string();
    let other_order = {
        let (_, o) = place(&s, users[1], limit("BUY", "1.00", "1", "GTC"));
        s.quiesce();
        o["order_id"].as_u64().unwrap()
    };
    let before_other = observable(&s, &users);
    let order = |v: Value| v.to_string().into_bytes();
    let base = || limit("BUY", "1.00", "1", "GTC");
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        order(b)
    };
    let without = |k: &str| {
        let mut b = base();
        b.as_object_mut().unwrap().remove(k);
        order(b)
    };
    let json_ct = Some("application/json");
    let other_path = format!("/api/v1/orders/{other_order}");
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("POST", "/api/v1/orders", Some(&u), json_ct, b"{not json".to_vec(), 400, "MALFORMED_JSON"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, b"".to_vec(), 400, "MALFORMED_JSON"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, b"[]".to_vec(), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), None, order(base()), 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!(1.0)), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("quantity", json!(5)), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("side", json!("HOLD")), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("type", json!("STOP")), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("time_in_force", json!("GTD")), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("surprise", json!(1)), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, without("symbol"), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, without("side"), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, without("price"), 400, "MISSING_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, without("quantity"), 400, "MISSING_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("0")), 400, "NOT_POSITIVE"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("-1.00")), 400, "NEGATIVE_NUMBER"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("quantity", json!("0")), 400, "NOT_POSITIVE"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("quantity", json!("-3")), 400, "NEGATIVE_NUMBER"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("1.001")), 400, "TOO_MANY_DECIMALS"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("quantity", json!("1.5")), 400, "QUANTITY_OFF_LOT"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("1e2")), 400, "INVALID_NUMBER"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("NaN")), 400, "INVALID_NUMBER"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("")), 400, "INVALID_NUMBER"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("99999999999999999999999")), 400, "OUT_OF_RANGE"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("quantity", json!("92233720368547759")), 400, "OUT_OF_RANGE"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, order(limit("BUY", "92233720368547758.07", "92233720368547758", "GTC")), 400, "OUT_OF_RANGE"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("0.50")), 400, "NOTIONAL_TOO_SMALL"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("symbol", json!("NOPE-X")), 400, "UNKNOWN_SYMBOL"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("client_order_id", json!("bad id!")), 400, "INVALID_CLIENT_ORDER_ID"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("client_order_id", json!("x".repeat(65))), 400, "INVALID_CLIENT_ORDER_ID"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("quote_quantity", json!("10")), 400, "UNEXPECTED_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, order(json!({"symbol": "BASE-QUOTE", "side": "BUY", "type": "MARKET", "quantity": "1"})), 400, "UNEXPECTED_FIELD"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, order(json!({"symbol": "BASE-QUOTE", "side": "BUY", "type": "MARKET", "quote_quantity": "5", "time_in_force": "GTC"})), 400, "INVALID_TIME_IN_FORCE"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, vec![b' '; 70 * 1024], 413, "BODY_TOO_LARGE"),
        ("POST", "/api/v1/orders", Some(&u), json_ct, with("price", json!("1.00")).into_iter().chain(b"garbage".iter().copied()).collect(), 400, "MALFORMED_JSON"),
        ("POST", "/api/v1/orders", None, json_ct, order(base()), 401, "UNAUTHENTICATED"),
        ("POST", "/api/v1/orders", Some("abc"), json_ct, order(base()), 401, "UNAUTHENTICATED"),
        ("POST", "/api/v1/orders", Some("-1"), json_ct, order(base()), 401, "UNAUTHENTICATED"),
        ("POST", "/api/v1/orders", Some("99999"), json_ct, order(base()), 401, "UNAUTHENTICATED"),
        ("POST", "/api/v1/orders", Some("18446744073709551616"), json_ct, order(base()), 401, "UNAUTHENTICATED"),
        ("GET", "/api/v1/orders/abc", Some(&u), None, vec![], 400, "INVALID_ID"),
        ("GET", "/api/v1/orders/-5", Some(&u), None, vec![], 400, "INVALID_ID"),
        ("GET", "/api/v1/orders/99999999999999999999999", Some(&u), None, vec![], 404, "ORDER_NOT_FOUND"),
        ("DELETE", "/api/v1/orders/9223372036854775808", Some(&u), None, vec![], 404, "ORDER_NOT_FOUND"),
        ("GET", "/api/v1/orders?before=18446744073709551615", Some(&u), None, vec![], 400, "INVALID_ID"),
        ("GET", "/api/v1/orders/424242", Some(&u), None, vec![], 404, "ORDER_NOT_FOUND"),
        ("GET", &other_path, Some(&u), None, vec![], 404, "ORDER_NOT_FOUND"),
        ("DELETE", &other_path, Some(&u), None, vec![], 404, "ORDER_NOT_FOUND"),
        ("DELETE", "/api/v1/orders/424242", Some(&u), None, vec![], 404, "ORDER_NOT_FOUND"),
        ("DELETE", "/api/v1/orders/x", Some(&u), None, vec![], 400, "INVALID_ID"),
        ("GET", "/api/v1/orders?limit=0", Some(&u), None, vec![], 400, "INVALID_LIMIT"),
        ("GET", "/api/v1/orders?limit=100000", Some(&u), None, vec![], 400, "INVALID_LIMIT"),
        ("GET", "/api/v1/orders?status=SLEEPING", Some(&u), None, vec![], 400, "INVALID_STATUS"),
        ("GET", "/api/v1/orders?symbol=NOPE", Some(&u), None, vec![], 400, "UNKNOWN_SYMBOL"),
        ("GET", "/api/v1/orders?before=x", Some(&u), None, vec![], 400, "INVALID_ID"),
        ("GET", "/api/v1/fills?limit=-1", Some(&u), None, vec![], 400, "INVALID_LIMIT"),
        ("GET", "/api/v1/balances", None, None, vec![], 401, "UNAUTHENTICATED"),
        ("PUT", "/api/v1/orders", Some(&u), json_ct, order(base()), 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/api/v1/nothing-here", Some(&u), None, vec![], 404, "NOT_FOUND"),
        ("POST", "/api/v1/admin/deposits", None, json_ct, order(json!({"user_id": 1, "asset": "BASE", "amount": "-5"})), 400, "NEGATIVE_NUMBER"),
        ("POST", "/api/v1/admin/deposits", None, json_ct, order(json!({"user_id": 1, "asset": "BASE", "amount": "0"})), 400, "NOT_POSITIVE"),
        ("POST", "/api/v1/admin/deposits", None, json_ct, order(json!({"user_id": 1, "asset": "BASE", "amount": "0.001"})), 400, "TOO_MANY_DECIMALS"),
        ("POST", "/api/v1/admin/deposits", None, json_ct, order(json!({"user_id": 1, "asset": "NOPE", "amount": "1"})), 400, "UNKNOWN_ASSET"),
        ("POST", "/api/v1/admin/deposits", None, json_ct, order(json!({"user_id": 424242, "asset": "BASE", "amount": "1"})), 404, "UNKNOWN_USER"),
        ("POST", "/api/v1/admin/deposits", None, json_ct, order(json!({"user_id": 1, "asset": "BASE", "amount": "92233720368547758.07"})), 400, "OUT_OF_RANGE"),
        ("POST", "/api/v1/admin/deposits", None, json_ct, order(json!({"user_id": "1", "asset": "BASE", "amount": "1"})), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/admin/symbols", None, json_ct, order(json!({"name": "BASE-QUOTE", "base": "BASE", "quote": "QUOTE", "tick_size": "0.01", "lot_size": "1"})), 409, "ALREADY_EXISTS"),
        ("POST", "/api/v1/admin/symbols", None, json_ct, order(json!({"name": "X-Y", "base": "BASE", "quote": "BASE", "tick_size": "0.01", "lot_size": "1"})), 400, "SAME_ASSET"),
        ("POST", "/api/v1/admin/symbols", None, json_ct, order(json!({"name": "X-Y", "base": "BASE", "quote": "QUOTE", "tick_size": "0.01", "lot_size": "0.01"})), 400, "INEXACT_NOTIONAL"),
        ("POST", "/api/v1/admin/symbols", None, json_ct, order(json!({"name": "x y", "base": "BASE", "quote": "QUOTE", "tick_size": "0.01", "lot_size": "1"})), 400, "INVALID_NAME"),
        ("POST", "/api/v1/admin/symbols", None, json_ct, order(json!({"name": "X-Y", "base": "BASE", "quote": "QUOTE", "tick_size": "0.01", "lot_size": "1", "taker_fee_bps": 5000})), 400, "INVALID_FEE"),
        ("POST", "/api/v1/admin/assets", None, json_ct, order(json!({"code": "BASE", "scale": 2})), 409, "ALREADY_EXISTS"),
        ("POST", "/api/v1/admin/assets", None, json_ct, order(json!({"code": "NEW", "scale": 19})), 400, "INVALID_SCALE"),
        ("POST", "/api/v1/admin/assets", None, json_ct, order(json!({"code": "NEW", "scale": -1})), 400, "INVALID_FIELD"),
        ("POST", "/api/v1/admin/users", None, json_ct, order(json!({"name": ""})), 400, "INVALID_NAME"),
        ("POST", "/api/v1/admin/users", None, json_ct, order(json!({"name": "user0"})), 409, "ALREADY_EXISTS"),
        ("GET", "/api/v1/admin/books/NOPE", None, None, vec![], 404, "UNKNOWN_SYMBOL"),
        ("PATCH", "/api/v1/admin/symbols/NOPE", None, json_ct, order(json!({"status": "HALTED"})), 404, "UNKNOWN_SYMBOL"),
        ("PATCH", "/api/v1/admin/symbols/BASE-QUOTE", None, json_ct, order(json!({})), 400, "EMPTY_UPDATE"),
        // The writer's request port, as API processes reach it.
        ("POST", "/internal/v1/requests", None, json_ct, b"{not json".to_vec(), 400, "INVALID_COMMAND"),
        ("POST", "/internal/v1/requests", None, json_ct, order(json!({"drop_tables": {}})), 400, "INVALID_COMMAND"),
        ("POST", "/internal/v1/requests", None, json_ct, order(json!({"create_user": {"name": "x", "admin": true}})), 400, "INVALID_COMMAND"),
        ("POST", "/internal/v1/requests", None, json_ct, vec![b' '; 20 * 1024], 413, "BODY_TOO_LARGE"),
        ("GET", "/internal/v1/requests", None, None, vec![], 405, "METHOD_NOT_ALLOWED"),
    ];
    for (method, path, user, ct, body, want_code, want_problem) in cases {
        let (code, problem, content_type) = raw(&s, method, path, user, ct, body);
        assert_eq!(
            (code, problem["code"].as_str().unwrap_or("<no code>")),
            (want_code, want_problem),
            "{method} {path}: {problem}"
        );
        assert_eq!(content_type, "application/problem+json", "{method} {path}");
        assert_eq!(problem["status"], want_code);
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(
        observable(&s, &users),
        before_other,
        "a rejected request changed state"
    );
    s.assert_invariants();
}

/// A random decimal-looking string: mostly well-formed numbers of every size and precision
/// (so that they reach the tick, lot, scale, range and notional rules), sometimes malformed.
fn fuzzed_number(rng: &mut impl rand::Rng) -> String {
    let mut digits = |max_len: usize| -> String {
        let n = rng.random_range(0..=max_len);
        (0..n)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect()
    };
    let (whole, frac, short) = (digits(21), digits(21), digits(3));
    let mut n = match rng.random_range(0..5) {
        0 => whole,
        1 => format!("{whole}.{frac}"),
        2 => format!("{}.{short}", rng.random_range(0..10_000)),
        3 => format!("0.{short}"),
        _ => rng.random_range(0..100).to_string(),
    };
    match rng.random_range(0..12) {
        0 => n.insert(0, '-'),
        1 => n.push_str("e3"),
        2 => n.insert(0, ' '),
        3 => n = n.replace('.', ","),
        4 => n.push('.'),
        _ => {}
    }
    n
}

/// Random bytes and random JSON never produce a 5xx or a panic, and change nothing. Numbers
/// are fuzzed too and reach validation: the orders come from a user without funds, so even
/// one that passes every rule is refused (INSUFFICIENT_FUNDS) and changes nothing.
#[test]
fn fuzzed_bodies_never_cause_a_5xx() {
    use rand::{Rng, SeedableRng};
    let s = Server::start();
    let mut users = market(&s, 1);
    let broke = s.admin("users", json!({"name": "broke"}))["user_id"]
        .as_u64()
        .unwrap();
    users.push(broke);
    let before = observable(&s, &users);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let fields = [
        "symbol",
        "side",
        "type",
        "price",
        "quantity",
        "quote_quantity",
        "time_in_force",
        "client_order_id",
        "self_trade_prevention_mode",
    ];
    let values = [
        json!(null),
        json!(true),
        json!(-1),
        json!(1e308),
        json!(""),
        json!("BUY"),
        json!("SELL"),
        json!("LIMIT"),
        json!("MARKET"),
        json!("BASE-QUOTE"),
        json!("0.00"),
        json!("1.00"),
        json!("-0"),
        json!("１"),
        json!("1,5"),
        json!(" 1"),
        json!("0x10"),
        json!([1]),
        json!({"a": 1}),
        json!("9".repeat(40)),
        json!("1.0000000000000000000001"),
        json!("IOC"),
        json!("FOK"),
        json!("EXPIRE_BOTH"),
    ];
    let mut codes = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..1_000 {
        let body = if i % 5 == 0 {
            (0..rng.random_range(0..64))
                .map(|_| rng.random::<u8>())
                .collect::<Vec<u8>>()
        } else {
            let mut o = serde_json::Map::new();
            for f in fields {
                if rng.random_bool(0.7) {
                    o.insert(f.into(), values[rng.random_range(0..values.len())].clone());
                }
            }
            // A plausible order shape half of the time, with fuzzed numbers in it.
            if rng.random_bool(0.5) {
                o.insert("symbol".into(), json!("BASE-QUOTE"));
                let side = if rng.random_bool(0.5) { "BUY" } else { "SELL" };
                o.insert("side".into(), json!(side));
                let kind = if rng.random_bool(0.7) {
                    "LIMIT"
                } else {
                    "MARKET"
                };
                o.insert("type".into(), json!(kind));
                o.remove("time_in_force");
                o.remove("self_trade_prevention_mode");
                o.remove("client_order_id");
                for f in ["price", "quantity", "quote_quantity"] {
                    o.remove(f);
                }
                match (kind, side) {
                    ("LIMIT", _) => {
                        o.insert("price".into(), json!(fuzzed_number(&mut rng)));
                        o.insert("quantity".into(), json!(fuzzed_number(&mut rng)));
                    }
                    (_, "BUY") => {
                        o.insert("quote_quantity".into(), json!(fuzzed_number(&mut rng)));
                    }
                    _ => {
                        o.insert("quantity".into(), json!(fuzzed_number(&mut rng)));
                    }
                }
            }
            Value::Object(o).to_string().into_bytes()
        };
        let (code, problem, _) = raw(
            &s,
            "POST",
            "/api/v1/orders",
            Some(&broke.to_string()),
            Some("application/json"),
            body,
        );
        assert!((400..500).contains(&code), "answered {code}: {problem}");
        let code = problem["code"]
            .as_str()
            .expect("a problem code")
            .to_string();
        *codes.entry(code).or_default() += 1;
    }
    // The fuzzed numbers got past parsing into every rule, down to the funds check.
    for reached in [
        "INVALID_NUMBER",
        "TOO_MANY_DECIMALS",
        "OUT_OF_RANGE",
        "NEGATIVE_NUMBER",
        "NOT_POSITIVE",
        "QUANTITY_OFF_LOT",
        "NOTIONAL_TOO_SMALL",
        "INSUFFICIENT_FUNDS",
    ] {
        assert!(
            codes.contains_key(reached),
            "never reached {reached}: {codes:?}"
        );
    }
    assert_eq!(observable(&s, &users), before);
    s.assert_invariants();
}
