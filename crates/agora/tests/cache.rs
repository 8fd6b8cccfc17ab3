//! `Idempotency-Key` and the rate limit against the real binary, on both caches: `memory`
//! (in-process) and `redis://` at `AGORA_TEST_REDIS` (default `redis://127.0.0.1:6379/15`,
//! each server under its own key prefix). Without Redis the Redis cases fail under
//! `CI=true`, and are skipped with a hint otherwise.

mod common;
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// `serve` flags for one cache; `None` when Redis is wanted and missing (skip).
fn cache_args(cache: &str) -> Option<Vec<String>> {
    match cache {
        "memory" => Some(vec!["--cache".into(), "memory".into()]),
        _ => {
            let url = agora_cache::testing::redis_or_skip()?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let prefix = format!("agora-e2e-{}-{nanos}", std::process::id());
            // Short-lived records: the test leaves nothing in Redis for long.
            let args = [
                "--cache",
                &url,
                "--cache-prefix",
                &prefix,
                "--idempotency-ttl-secs",
                "60",
            ];
            Some(args.map(String::from).to_vec())
        }
    }
}

/// One test per case and cache.
macro_rules! on_both_caches {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $case() { super::$case("memory") })*
        }
        mod redis {
            $(#[test] fn $case() { super::$case("redis") })*
        }
    };
}

on_both_caches!(
    a_keyed_request_is_answered_once_and_replayed,
    concurrent_duplicates_create_one_order,
    the_rate_limit_answers_429_with_retry_after,
);

fn start(cache: &str, extra: &[&str]) -> Option<Server> {
    let mut args = cache_args(cache)?;
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Some(Server::start_with(&args))
}

fn order_count(s: &Server, user: u64) -> usize {
    s.json("/api/v1/orders", Some(user))["orders"]
        .as_array()
        .unwrap()
        .len()
}

fn a_keyed_request_is_answered_once_and_replayed(cache: &str) {
    let Some(s) = start(cache, &[]) else {
        return;
    };
    let users = market(&s, 2);
    let (alice, bob) = (users[0], users[1]);
    let buy = limit("BUY", "10.00", "5", "GTC");

    // Placed once; the retry gets the same answer, marked as a replay.
    let (status, first, replayed) = send_keyed(keyed_order(&s, alice, "order-1", &buy));
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, again, replayed) = send_keyed(keyed_order(&s, alice, "order-1", &buy));
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again, first);
    assert_eq!(order_count(&s, alice), 1);

    // The same key for another request is a client bug: refused, nothing placed.
    let other = limit("BUY", "10.01", "5", "GTC");
    let (status, problem, _) = send_keyed(keyed_order(&s, alice, "order-1", &other));
    assert_eq!(
        (status, &problem["code"]),
        (422, &json!("IDEMPOTENCY_KEY_REUSED"))
    );
    assert_eq!(order_count(&s, alice), 1);
    // Keys are per user: bob's "order-1" is his own.
    let (status, bobs, replayed) = send_keyed(keyed_order(&s, bob, "order-1", &other));
    assert_eq!((status, replayed), (202, false), "{bobs}");
    assert_ne!(bobs["order_id"], first["order_id"]);

    // A definite refusal is kept too: the retry does not run again.
    let too_fine = limit("BUY", "10.001", "5", "GTC");
    let (status, refused, _) = send_keyed(keyed_order(&s, alice, "order-2", &too_fine));
    assert_eq!(
        (status, &refused["code"]),
        (400, &json!("TOO_MANY_DECIMALS"))
    );
    let (status, again, replayed) = send_keyed(keyed_order(&s, alice, "order-2", &too_fine));
    assert_eq!((status, replayed, &again), (400, true, &refused));

    // Cancels and deposits take keys as well.
    let id = first["order_id"].as_u64().unwrap();
    let cancel = || {
        s.http
            .delete(format!("{}/api/v1/orders/{id}", s.url))
            .header("x-user-id", alice)
            .header("idempotency-key", "cancel-1")
    };
    let (status, canceled, replayed) = send_keyed(cancel());
    assert_eq!((status, replayed), (202, false), "{canceled}");
    let (status, again, replayed) = send_keyed(cancel());
    assert_eq!((status, replayed, &again), (202, true, &canceled));
    let deposit = || {
        s.http
            .post(format!("{}/api/v1/admin/deposits", s.url))
            .header("idempotency-key", "deposit-1")
            .json(&json!({"user_id": bob, "asset": "BASE", "amount": "7"}))
    };
    let (status, balance, _) = send_keyed(deposit());
    assert_eq!((status, &balance["available"]), (200, &json!("1000007.00")));
    let (status, again, replayed) = send_keyed(deposit());
    assert_eq!((status, replayed, &again), (200, true, &balance));
    assert_eq!(s.balance(bob, "BASE").0, "1000007.00"); // credited once

    // Bad keys are refused before anything runs.
    for key in ["k".repeat(256), "with space".into()] {
        let (status, problem, _) = send_keyed(keyed_order(&s, alice, &key, &buy));
        assert_eq!(
            (status, &problem["code"]),
            (400, &json!("INVALID_IDEMPOTENCY_KEY"))
        );
    }
    // An unauthenticated request takes no key: the key is still free for its user.
    let (status, _, _) = send_keyed(keyed_order(&s, 999, "order-3", &buy));
    assert_eq!(status, 401);
    let (status, _, replayed) = send_keyed(keyed_order(&s, alice, "order-3", &buy));
    assert_eq!((status, replayed), (202, false));
    // Without a key nothing changes: two requests, two orders.
    assert_eq!(place(&s, alice, buy.clone()).0, 202);
    assert_eq!(place(&s, alice, buy).0, 202);
    assert_eq!(order_count(&s, alice), 4);
    s.assert_invariants();
}

fn concurrent_duplicates_create_one_order(cache: &str) {
    let Some(s) = start(cache, &[]) else {
        return;
    };
    let user = market(&s, 1)[0];
    let clients = 32;
    let barrier = Arc::new(Barrier::new(clients));
    let body = limit("SELL", "11.00", "3", "GTC");
    let answers: Vec<(u16, Value, bool)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (barrier, request) = (barrier.clone(), keyed_order(&s, user, "dup", &body));
                scope.spawn(move || {
                    barrier.wait();
                    send_keyed(request)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let placed: Vec<_> = answers
        .iter()
        .filter(|(status, _, replayed)| *status == 202 && !replayed)
        .collect();
    assert_eq!(placed.len(), 1, "{answers:?}");
    let order_id = &placed[0].1["order_id"];
    for (status, body, replayed) in &answers {
        match status {
            202 => assert_eq!(&body["order_id"], order_id, "{body}"),
            409 => assert_eq!(body["code"], "IDEMPOTENCY_KEY_IN_USE", "{body}"),
            _ => panic!("{status} {body} (replayed: {replayed})"),
        }
    }
    assert_eq!(order_count(&s, user), 1);
    eprintln!(
        "DIST {:?}",
        answers.iter().map(|a| (a.0, a.2)).collect::<Vec<_>>()
    );
    s.assert_invariants();
}

fn the_rate_limit_answers_429_with_retry_after(cache: &str) {
    let args = [
        "--demo",
        "--no-bots",
        "--rate-limit",
        "5",
        "--rate-limit-burst",
        "5",
    ];
    let Some(s) = start(cache, &args) else {
        return;
    };
    let balances = |user: u64| s.get("/api/v1/balances", Some(user)).status().as_u16();
    // The demo users exist once seeding is done (until then this is an anonymous request,
    // counted per IP); then let every bucket fill up again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while balances(1) != 200 {
        assert!(std::time::Instant::now() < deadline, "demo never seeded");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(1_100));

    for _ in 0..5 {
        assert_eq!(balances(1), 200);
    }
    let limited = s.get("/api/v1/balances", Some(1));
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1); // one request per 200 ms, rounded up to whole seconds
    assert!(limited.headers()["content-type"] == "application/problem+json");
    let problem: Value = limited.json().unwrap();
    assert_eq!(problem["code"], "RATE_LIMITED");
    // Orders count too; another user has a bucket of their own; health probes none.
    assert_eq!(
        place(
            &s,
            1,
            json!({"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT",
                            "price": "1000", "quantity": "0.01"})
        )
        .0,
        429
    );
    assert_eq!(balances(2), 200);
    for _ in 0..20 {
        assert_eq!(s.get("/health", None).status(), 200);
    }
    // Anonymous requests share their IP's bucket.
    let markets = || s.get("/api/v1/markets", None).status().as_u16();
    let anonymous: Vec<u16> = (0..6).map(|_| markets()).collect();
    assert_eq!(anonymous, [200, 200, 200, 200, 200, 429]);
    // After the advertised wait the user may go on.
    std::thread::sleep(Duration::from_secs(retry_after));
    assert_eq!(balances(1), 200);
}

#[test]
fn an_unreachable_redis_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(agora_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--cache"])
        .arg("redis://agora:s3cret@127.0.0.1:1/0")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run agora");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opening the cache redis://127.0.0.1:1/0"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "the password was printed: {stderr}"
    );
    // Refused before the store was created.
    assert!(!dir.path().join("agora.db").exists());
}
