//! The distributed mode against the real binary: a writer process (api, relay, settlement,
//! market) and engine processes (`--roles engine`) meeting in a Kafka-protocol broker
//! (`AGORA_TEST_KAFKA`, default 127.0.0.1:9092) and the store the suite runs on
//! (`AGORA_TEST_STORE`: SQLite, PostgreSQL or MariaDB). Each test cluster has topics and
//! consumer groups of its own (`--log-namespace`). Without a broker these tests fail under
//! `CI=true` and skip with a hint otherwise. The writer keeps its idempotency records in
//! Redis (`AGORA_TEST_REDIS`, under the cluster's namespace as key prefix), so a keyed
//! request is still answered once across the writer's restarts; without Redis (outside CI)
//! the clusters use the in-process cache and the cases that need Redis are skipped.

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Partitions of each test cluster's topics: more than symbols, so that engines can own
/// none, some or all of them.
const PARTITIONS: u32 = 4;

/// librdkafka settings for a test cluster: a killed engine's partitions move to the
/// survivor within seconds, not the default 45 s session timeout; and one record per
/// record batch, because tansu 0.6.0's memory engine answers a fetch from the middle of a
/// batch without that batch's tail (see `crates/kafka/tests/broker.rs`), and engines and
/// settlement resume from the middle of batches after every rebalance and restart.
const TEST_CLIENT: &str = "session.timeout.ms=6000&heartbeat.interval.ms=500&batch.num.messages=1";

/// A writer process and `engines` engine processes on one fresh store and namespace, on
/// the broker at `kafka` (a `kafka://` URL).
fn cluster_on(
    kafka: &str,
    namespace: &str,
    engines: usize,
) -> (Server, Vec<EngineProcess>, Vec<String>) {
    let log_args = kafka_args(&format!("{kafka}?{TEST_CLIENT}"), namespace, PARTITIONS);
    let mut writer_args: Vec<&str> = vec!["--roles", "api,relay,settlement,market"];
    writer_args.extend(log_args.iter().map(String::as_str));
    let cache_args = redis_cache_args(namespace);
    writer_args.extend(cache_args.iter().map(String::as_str));
    let writer = Server::start_with(&writer_args);
    let engines = (0..engines)
        .map(|_| EngineProcess::start(&writer, &log_args))
        .collect();
    let args: Vec<String> = writer_args.iter().map(|a| a.to_string()).collect();
    (writer, engines, args)
}

/// `--cache redis://… --cache-prefix <namespace>` when the test Redis answers (it must
/// under `CI=true`); none otherwise (the in-process cache).
fn redis_cache_args(namespace: &str) -> Vec<String> {
    match agora_cache::testing::redis_or_skip() {
        Some(url) => ["--cache", &url, "--cache-prefix", namespace]
            .map(String::from)
            .to_vec(),
        None => Vec::new(),
    }
}

/// Whether the cluster's writer runs on Redis (see [`redis_cache_args`]).
fn on_redis(writer_args: &[&str]) -> bool {
    writer_args
        .iter()
        .any(|a| a.starts_with("redis://") || a.starts_with("rediss://"))
}

/// A cluster on the test broker (tansu under `scripts/services`), or `None` (skip).
fn cluster(engines: usize) -> Option<(Server, Vec<EngineProcess>, Vec<String>)> {
    let kafka = kafka_or_skip()?;
    Some(cluster_on(&kafka, &fresh_namespace(), engines))
}

/// librdkafka's mock cluster, served from this test process to the agora processes, with
/// the namespace's topics created.
fn mock_broker(
    namespace: &str,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let mock = rdkafka::mocking::MockCluster::new(1).expect("librdkafka mock cluster");
    for topic in ["book-inputs", "engine-output", "settled"] {
        mock.create_topic(&format!("{namespace}.{topic}"), PARTITIONS as i32, 1)
            .expect("create topic");
    }
    let url = format!("kafka://{}", mock.bootstrap_servers());
    (mock, url)
}

/// Every acknowledged order exists and is in a known status (that open ones are exactly
/// the books' orders is what the book audits of the reconciliation check).
fn check_acked(s: &Server, acked: &[(u64, u64)]) {
    for &(user, id) in acked {
        let r = s.get(&format!("/api/v1/orders/{id}"), Some(user));
        assert_eq!(r.status(), 200, "acknowledged order {id} was lost");
        let o: Value = r.json().unwrap();
        let status = o["status"].as_str().unwrap();
        assert!(
            [
                "FILLED",
                "CANCELED",
                "EXPIRED",
                "REJECTED",
                "NEW",
                "PARTIALLY_FILLED"
            ]
            .contains(&status),
            "order {id} in unknown status {status}"
        );
    }
}

#[test]
fn orders_match_in_engine_processes_and_settle_through_the_log() {
    let Some((s, _engines, _)) = cluster(2) else {
        return;
    };
    let users = two_markets(&s, 8);
    random_flow(&s, &users, 300, 11, 0.3);
    let report = s.assert_invariants();
    assert!(
        s.json("/api/v1/admin/status", None)["trades"]
            .as_u64()
            .unwrap()
            > 10,
        "the flow should trade: {report}"
    );
    // The market read model follows the settled trades.
    let trades = s.json("/api/v1/markets/BASE-QUOTE/trades?limit=5", None);
    assert!(!trades["trades"].as_array().unwrap().is_empty());
}

/// The cluster test runs on librdkafka's mock cluster: tansu 0.6.0's group coordinator
/// also evicts live members now and then after a member was killed, and can leave a
/// partition assigned to a member that is gone (seen with two clusters on one broker), so
/// a book stops until the broker is restarted. The mock's coordinator expires a killed
/// member after the session timeout and hands its partitions to the survivors, as Kafka's
/// does.
#[test]
fn killed_engines_and_writer_lose_nothing_and_apply_nothing_twice() {
    let namespace = fresh_namespace();
    let (_broker, kafka) = mock_broker(&namespace);
    let (mut s, mut engines, writer_args) = cluster_on(&kafka, &namespace, 2);
    let writer_args: Vec<&str> = writer_args.iter().map(String::as_str).collect();
    let users = two_markets(&s, 6);
    // A keyed order before any kill: with Redis, the writer answers its retries with the
    // first answer after every restart (the in-process cache would forget it).
    let keyed_key = format!("{namespace}-keyed");
    let keyed_buy = limit("BUY", "9.00", "1", "GTC");
    let keyed = send_keyed(keyed_order(&s, users[0], &keyed_key, &keyed_buy));
    assert_eq!(keyed.0, 202, "{}", keyed.1);
    assert!(!keyed.2, "a first request is not a replay");
    let mut acked_all: Vec<(u64, u64)> = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = load(&s, &users, 4, stop.clone(), round);
        // An engine dies mid-load: its partitions move to the survivor, which rebuilds
        // their books from the store and replays from the settled position.
        std::thread::sleep(Duration::from_millis(rng.random_range(300..900)));
        let victim = rng.random_range(0..engines.len());
        engines[victim].kill9();
        std::thread::sleep(Duration::from_millis(rng.random_range(500..1500)));
        // It comes back: partitions are shared again (moved back, or others).
        engines[victim].restart();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..900)));
        // Then the writer dies mid-load.
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            acked_all.extend(w.join().unwrap());
        }
        s.restart_with(&writer_args);
        check_acked(&s, &acked_all);
        if on_redis(&writer_args) {
            let again = send_keyed(keyed_order(&s, users[0], &keyed_key, &keyed_buy));
            assert_eq!(
                (again.0, &again.1, again.2),
                (keyed.0, &keyed.1, true),
                "the keyed order is replayed from Redis after the writer's restart"
            );
        }
        s.assert_invariants();
    }
    assert!(
        acked_all.len() > 100,
        "the load was too light to mean much: {}",
        acked_all.len()
    );
    assert!(
        s.json("/api/v1/admin/status", None)["trades"]
            .as_u64()
            .unwrap()
            > 20,
        "the flow should trade"
    );
    // Offline, on the stopped store: the ledger and order invariants from scratch.
    s.kill9();
    let (code, report) = reconcile_offline(&s);
    assert_eq!(code, 0, "{report:#}");
}

/// The flags that put a cluster's writer on Redis (`--cache …`, `--cache-prefix …`): what
/// its API processes must share with it.
fn cache_args_of(writer_args: &[String]) -> Vec<&str> {
    writer_args
        .windows(2)
        .filter(|w| w[0] == "--cache" || w[0] == "--cache-prefix")
        .flat_map(|w| [w[0].as_str(), w[1].as_str()])
        .collect()
}

/// Two api-only processes (`--roles api --writer-url …`) in front of a writer, on
/// the same store and Redis: listings, deposits and orders through either are the writer's
/// commits; either reads what the other did; a keyed order sent to one is replayed by the
/// other; market data, status and reconciliation come from the writer's process; while the
/// writer is down they answer 503 without doing anything, and carry on once it is back.
#[test]
fn api_processes_share_a_cluster_writer_the_store_and_the_keys() {
    if on_sqlite() {
        return; // an API process needs a store other processes can open
    }
    if let Some((s, _engines, writer_args)) = cluster(1) {
        api_processes_in_front_of(s, &writer_args);
    }
}

/// The same in front of a writer with the embedded log (no Kafka): API processes need only
/// the writer's address, the store and Redis.
#[test]
fn api_processes_share_an_embedded_writer_the_store_and_the_keys() {
    if on_sqlite() {
        return;
    }
    let writer_args = redis_cache_args(&fresh_namespace());
    let args: Vec<&str> = writer_args.iter().map(String::as_str).collect();
    api_processes_in_front_of(Server::start_with(&args), &writer_args);
}

fn api_processes_in_front_of(mut s: Server, writer_args: &[String]) {
    let cache_args = cache_args_of(writer_args);
    if cache_args.is_empty() {
        return; // no Redis outside CI: API processes need it (see redis_cache_args)
    }
    let api = [
        Server::api_process(&s, &cache_args),
        Server::api_process(&s, &cache_args),
    ];
    // Listings and funding through the first: the second sees them (in the store, and in
    // its reference data within its reload interval).
    let users = two_markets(&api[0], 6);
    let markets = api[1].json("/api/v1/markets", None);
    assert_eq!(markets["markets"].as_array().unwrap().len(), 2, "{markets}");
    let (code, o) = place(&api[1], users[0], limit("BUY", "9.50", "3", "GTC"));
    assert_eq!(code, 202, "{o}");
    let id = o["order_id"].as_u64().unwrap();
    assert_eq!(api[0].order(users[0], id)["status"], "NEW");
    assert_eq!(
        api[0]
            .get(&format!("/api/v1/orders/{id}"), Some(users[1]))
            .status(),
        404,
        "another user's order is not found"
    );
    let canceled = api[0].delete(&format!("/api/v1/orders/{id}"), users[0]);
    assert_eq!(canceled.status(), 202);
    wait_status(&api[1], users[0], id, &["CANCELED"]);
    // An unknown user is refused by an API process as by the writer's.
    assert_eq!(
        place(&api[0], 999_999, limit("BUY", "9.50", "1", "GTC")).0,
        401
    );

    // Orders through both at once.
    std::thread::scope(|scope| {
        for (i, a) in api.iter().enumerate() {
            let users = &users;
            scope.spawn(move || random_flow(a, users, 150, 40 + i as u64, 0.3));
        }
    });
    // One Idempotency-Key, sent to each: the second answer is the first, replayed.
    let key = format!("{}-keyed", cache_args[cache_args.len() - 1]);
    let body = limit("SELL", "10.90", "2", "GTC");
    let first = send_keyed(keyed_order(&api[0], users[2], &key, &body));
    assert_eq!((first.0, first.2), (202, false), "{}", first.1);
    let again = send_keyed(keyed_order(&api[1], users[2], &key, &body));
    assert_eq!((again.0, again.2), (202, true), "{}", again.1);
    assert_eq!(again.1["order_id"], first.1["order_id"]);

    // Market data is the writer's process's, forwarded as it is.
    let depth = "/api/v1/markets/BASE-QUOTE/depth?limit=50";
    s.quiesce();
    assert_eq!(api[0].json(depth, None), s.json(depth, None));
    // WebSockets are served by market processes only.
    assert_eq!(api[0].get("/ws", None).status(), 421);

    // The writer dies: commands get 503 WRITER_UNAVAILABLE and change nothing; reads of
    // the store go on.
    let writer_url = s.url.clone();
    let listen = writer_url.trim_start_matches("http://").to_string();
    s.kill9();
    let before = api[0].json("/api/v1/balances", Some(users[3]));
    let (code, problem) = place(&api[0], users[3], limit("BUY", "9.10", "1", "GTC"));
    assert_eq!(
        (code, problem["code"].as_str()),
        (503, Some("WRITER_UNAVAILABLE"))
    );
    assert_eq!(api[1].json("/api/v1/balances", Some(users[3])), before);
    // Back on the same address: the API processes carry on.
    let mut restart_args: Vec<&str> = writer_args.iter().map(String::as_str).collect();
    restart_args.extend(["--listen", &listen]);
    s.restart_with(&restart_args);
    assert_eq!(s.url, writer_url);
    let (code, o) = place(&api[0], users[3], limit("BUY", "9.10", "1", "GTC"));
    assert_eq!(code, 202, "{o}");

    // Every invariant, checked through an API process (status and reconciliation are
    // forwarded to the writer's process).
    api[1].assert_invariants();
}

/// A writer that takes the connection and never answers: the API process answers 503
/// `WRITER_NO_ANSWER` (the outcome is unknown) after its call timeout, and keeps the
/// `Idempotency-Key` held, so that a retry cannot place the order a second time.
#[test]
fn a_writer_that_never_answers_leaves_the_key_held() {
    if on_sqlite() {
        return;
    }
    let namespace = fresh_namespace();
    let writer_args = redis_cache_args(&namespace);
    let cache_args = cache_args_of(&writer_args);
    if cache_args.is_empty() {
        return;
    }
    let args: Vec<&str> = writer_args.iter().map(String::as_str).collect();
    let s = Server::start_with(&args);
    let users = market(&s, 1);
    // Accepts connections (the kernel's backlog does) and never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let api = Server::api_process_to(&silent_url, &s, &cache_args);
    let body = limit("BUY", "9.00", "1", "GTC");
    let key = format!("{namespace}-silent");
    let first = send_keyed(keyed_order(&api, users[0], &key, &body));
    assert_eq!(first.0, 503, "{}", first.1);
    assert_eq!(first.1["code"], "WRITER_NO_ANSWER");
    let retry = send_keyed(keyed_order(&api, users[0], &key, &body));
    assert_eq!(retry.0, 409, "{} replayed: {}", retry.1, retry.2);
    assert_eq!(retry.1["code"], "IDEMPOTENCY_KEY_IN_USE");
    drop(silent);
}

/// Holders of the outbox partitions' leases, one per partition.
fn lease_holders(s: &Server) -> Vec<String> {
    (0..PARTITIONS)
        .map(|p| {
            // The harness reads integers from the store: ask yes/no questions.
            let writer = s.stored_i64(&format!(
                "SELECT COUNT(*) FROM relay_leases WHERE partition_no = {p} \
                 AND holder = 'exchange-writer'"
            ));
            if writer == 1 {
                return "writer".to_string();
            }
            let live = s.stored_i64(&format!(
                "SELECT COUNT(*) FROM relay_leases WHERE partition_no = {p} AND expires_ms > 0"
            ));
            if live == 0 {
                return "nobody".to_string();
            }
            let epoch = s.stored_i64(&format!(
                "SELECT epoch FROM relay_leases WHERE partition_no = {p}"
            ));
            format!("relay at epoch {epoch}")
        })
        .collect()
}

/// How many distinct relay processes hold live leases.
fn relays_holding(s: &Server) -> i64 {
    s.stored_i64(&format!(
        "SELECT COUNT(DISTINCT holder) FROM relay_leases WHERE expires_ms > {} \
         AND holder <> 'exchange-writer'",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    ))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Relay processes apart from the writer (`--roles relay`; a PostgreSQL or MySQL store):
/// the writer (`api,settlement,market`) leaves its commits to them; two share the outbox
/// partitions by lease; one is SIGKILLed under load and the survivor takes its partitions
/// when the lease ends; the writer is killed and restarted under them; and a writer that
/// takes the relay role back holds every lease, the relay processes idle. Nothing
/// acknowledged is lost, nothing applied twice, the books match the store throughout.
#[test]
fn relay_processes_publish_the_outbox_and_take_over_from_a_killed_one() {
    if on_sqlite() {
        eprintln!("SKIPPED: relay processes need a PostgreSQL or MySQL store (AGORA_TEST_STORE)");
        return;
    }
    let namespace = fresh_namespace();
    let (_broker, kafka) = mock_broker(&namespace);
    let log_args = kafka_args(&format!("{kafka}?{TEST_CLIENT}"), &namespace, PARTITIONS);
    let with_roles = |roles: &'static str| -> Vec<String> {
        let mut args = vec!["--roles".to_string(), roles.to_string()];
        args.extend(log_args.iter().cloned());
        args
    };
    let writer_args = with_roles("api,settlement,market");
    let writer_args: Vec<&str> = writer_args.iter().map(String::as_str).collect();
    let mut s = Server::start_with(&writer_args);
    let mut relays = [
        EngineProcess::start_roles(&s, "relay", &log_args),
        EngineProcess::start_roles(&s, "relay,engine", &log_args),
    ];
    let _engine = EngineProcess::start(&s, &log_args);
    let users = two_markets(&s, 6);
    random_flow(&s, &users, 150, 21, 0.3);
    let report = s.assert_invariants();
    assert!(
        s.json("/api/v1/admin/status", None)["trades"]
            .as_u64()
            .unwrap()
            > 5,
        "orders reach the engines through the relays and trade: {report}"
    );
    wait_for("both relays hold leases", || relays_holding(&s) == 2);

    // Under load, a relay dies: its partitions stop until its lease ends, then the
    // survivor publishes them from the recorded position.
    let mut acked_all = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&s, &users, 4, stop.clone(), 1);
    std::thread::sleep(Duration::from_millis(700));
    relays[0].kill9();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        acked_all.extend(w.join().unwrap());
    }
    wait_for("the survivor holds every partition", || {
        relays_holding(&s) == 1 && !lease_holders(&s).contains(&"nobody".to_string())
    });
    s.assert_invariants();
    check_acked(&s, &acked_all);

    // The relay comes back, and the writer dies mid-load and restarts under the relays.
    relays[0].restart();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&s, &users, 4, stop.clone(), 2);
    std::thread::sleep(Duration::from_millis(800));
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        acked_all.extend(w.join().unwrap());
    }
    s.restart_with(&writer_args);
    s.assert_invariants();
    check_acked(&s, &acked_all);
    wait_for("the relays share the partitions again", || {
        relays_holding(&s) == 2
    });

    // A writer that relays its own commits holds every lease; the relay processes idle.
    let relaying_writer = with_roles("api,relay,settlement,market");
    let relaying_writer: Vec<&str> = relaying_writer.iter().map(String::as_str).collect();
    s.kill9();
    s.restart_with(&relaying_writer);
    assert_eq!(lease_holders(&s), vec!["writer"; PARTITIONS as usize]);
    random_flow(&s, &users, 60, 22, 0.3);
    s.assert_invariants();
    check_acked(&s, &acked_all);
    assert!(
        acked_all.len() > 50,
        "the load was too light to mean much: {}",
        acked_all.len()
    );
    s.kill9();
    let (code, report) = reconcile_offline(&s);
    assert_eq!(code, 0, "{report:#}");
}

/// What a market process serves equals what the writer's own read model serves: each
/// symbol's depth, recent trades and 1-minute candles. Waits for the market process to
/// catch up (it reads the log behind the writer).
fn same_market(writer: &Server, market: &Server) {
    let views = |s: &Server| -> Vec<(String, Value, Value, Value)> {
        s.symbols()
            .into_iter()
            .map(|sym| {
                let depth = s.json(&format!("/api/v1/markets/{sym}/depth?limit=5000"), None);
                let trades = s.json(&format!("/api/v1/markets/{sym}/trades?limit=200"), None);
                let candles = s.json(
                    &format!("/api/v1/markets/{sym}/candles?interval=1m&limit=100"),
                    None,
                );
                let levels = serde_json::json!([levels(&depth["bids"]), levels(&depth["asks"])]);
                (sym, levels, trades["trades"].clone(), candles)
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (theirs, ours) = (views(writer), views(market));
        if theirs == ours {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the market process never caught up with the writer:\nwriter {theirs:?}\nmarket {ours:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Market processes (`--roles market`; a PostgreSQL or MySQL store): the writer
/// (`api,relay,settlement`) publishes each commit to the settled topic; market processes
/// rebuild the read model from the store and follow the topic, serving market data and
/// WebSockets (trade and user streams). One started after trading catches up; one is
/// SIGKILLed under load and restarted; the writer is SIGKILLed under load and restarted
/// under them (commits whose records never reached the topic are repaired from the store).
/// Throughout, each market process serves what the writer's own read model serves.
#[test]
fn market_processes_keep_the_read_model_from_the_log() {
    if on_sqlite() {
        eprintln!("SKIPPED: market processes need a PostgreSQL or MySQL store (AGORA_TEST_STORE)");
        return;
    }
    let namespace = fresh_namespace();
    let (_broker, kafka) = mock_broker(&namespace);
    let log_args = kafka_args(&format!("{kafka}?{TEST_CLIENT}"), &namespace, PARTITIONS);
    let with_roles = |roles: &'static str| -> Vec<String> {
        let mut args = vec!["--roles".to_string(), roles.to_string()];
        args.extend(log_args.iter().cloned());
        args
    };
    let writer_args = with_roles("api,relay,settlement");
    let writer_args: Vec<&str> = writer_args.iter().map(String::as_str).collect();
    let market_args = with_roles("market");
    let market_args: Vec<&str> = market_args.iter().map(String::as_str).collect();
    let mut s = Server::start_with(&writer_args);
    let _engine = EngineProcess::start(&s, &log_args);
    let early = Server::sibling(&s, &market_args);
    let users = two_markets(&s, 6);
    random_flow(&s, &users, 120, 31, 0.3);
    s.assert_invariants();
    let mut late = Server::sibling(&s, &market_args);
    same_market(&s, &early);
    same_market(&s, &late);

    // Each process answers what it does not serve with 421.
    assert_eq!(
        s.get("/ws", None).status(),
        421,
        "the writer has no market role"
    );
    let refused = late.post(
        "/api/v1/orders",
        Some(users[0]),
        serde_json::json!({"symbol": "BASE-QUOTE", "side": "BUY", "type": "LIMIT",
            "time_in_force": "GTC", "price": "1.00", "quantity": "1"}),
    );
    assert_eq!(refused.status(), 421);
    let problem: Value = refused.json().unwrap();
    assert_eq!(problem["code"], "NOT_AN_API_PROCESS");

    // WebSockets on a market process: a trade and the user's own order updates.
    let url = late.url.replace("http://", "ws://") + "/ws";
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request
        .headers_mut()
        .insert("x-user-id", users[0].to_string().parse().unwrap());
    let (mut ws, _) = tungstenite::connect(request).expect("ws connect");
    let subscribe =
        serde_json::json!({"method": "SUBSCRIBE", "params": ["ALT-QUOTE@trade", "user"], "id": 1});
    ws.send(tungstenite::Message::text(subscribe.to_string()))
        .unwrap();
    let on_alt = |mut order: Value| {
        order["symbol"] = "ALT-QUOTE".into();
        order
    };
    let (code, _) = place(&s, users[1], on_alt(limit("SELL", "7.00", "3", "GTC")));
    assert_eq!(code, 202);
    let (code, mine) = place(&s, users[0], on_alt(limit("BUY", "7.00", "3", "IOC")));
    assert_eq!(code, 202);
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    }
    let (mut traded, mut told) = (false, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(traded && told) {
        assert!(
            std::time::Instant::now() < deadline,
            "the market process's streams stayed silent (trade {traded}, user {told})"
        );
        let Ok(tungstenite::Message::Text(text)) = ws.read() else {
            continue;
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        match message["stream"].as_str() {
            Some("ALT-QUOTE@trade") => traded = true,
            Some("user") => {
                told |= message["data"]["event"] == "ORDER_UPDATE"
                    && message["data"]["order_id"] == mine["order_id"]
            }
            _ => {}
        }
    }
    drop(ws);

    // Under load: a market process dies and comes back; then the writer dies and comes
    // back under the market processes.
    let mut acked = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&s, &users, 4, stop.clone(), 3);
    std::thread::sleep(Duration::from_millis(700));
    late.kill9();
    std::thread::sleep(Duration::from_millis(500));
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        acked.extend(w.join().unwrap());
    }
    late.restart_with(&market_args);
    s.restart_with(&writer_args);
    s.assert_invariants();
    check_acked(&s, &acked);
    same_market(&s, &early);
    same_market(&s, &late);
    random_flow(&s, &users, 60, 32, 0.3);
    s.assert_invariants();
    same_market(&s, &early);
    same_market(&s, &late);
    assert!(
        acked.len() > 20,
        "the load was too light to mean much: {}",
        acked.len()
    );
}

/// The cluster test with every role in a process of its own, on a PostgreSQL or MySQL
/// store, Kafka and Redis: the writer (`api,settlement`), two API processes (the load goes
/// through them), two engine processes, a relay process and a market process. Each round,
/// under load, one process of each role is SIGKILLed at a random moment, in a random
/// order, and restarted (engine partitions move to the survivor and back; the relay's
/// lease ends and its partitions are taken again; the writer comes back on its address).
/// After each round: every acknowledged order is resting or terminal, conservation and
/// every invariant hold with the books audited against the store, the market process
/// serves what the writer's read model serves; at the end an offline reconciliation of
/// the stopped store is clean.
#[test]
fn every_role_in_its_own_process_survives_a_sigkill_of_each() {
    if on_sqlite() {
        eprintln!("SKIPPED: roles apart need a PostgreSQL or MySQL store (AGORA_TEST_STORE)");
        return;
    }
    let namespace = fresh_namespace();
    let cache_args = redis_cache_args(&namespace);
    if cache_args.is_empty() {
        eprintln!("SKIPPED: API processes need Redis (AGORA_TEST_REDIS)");
        return;
    }
    let cache_args: Vec<&str> = cache_args.iter().map(String::as_str).collect();
    let (_broker, kafka) = mock_broker(&namespace);
    let log_args = kafka_args(&format!("{kafka}?{TEST_CLIENT}"), &namespace, PARTITIONS);
    let with_roles = |roles: &'static str| -> Vec<String> {
        let mut args = vec!["--roles".to_string(), roles.to_string()];
        args.extend(log_args.iter().cloned());
        args
    };
    let mut writer_args = with_roles("api,settlement");
    writer_args.extend(cache_args.iter().map(|a| a.to_string()));
    let writer_args: Vec<&str> = writer_args.iter().map(String::as_str).collect();
    let market_args = with_roles("market");
    let market_args: Vec<&str> = market_args.iter().map(String::as_str).collect();
    let mut writer = Server::start_with(&writer_args);
    let listen = writer.url.trim_start_matches("http://").to_string();
    let mut writer_restart = writer_args.clone();
    writer_restart.extend(["--listen", &listen]);
    let mut api_args = vec!["--roles", "api", "--writer-url", &writer.url];
    api_args.extend(cache_args.iter().copied());
    let api_args: Vec<String> = api_args.iter().map(|a| a.to_string()).collect();
    let api_args: Vec<&str> = api_args.iter().map(String::as_str).collect();
    let mut engines = [
        EngineProcess::start(&writer, &log_args),
        EngineProcess::start(&writer, &log_args),
    ];
    let mut relay = EngineProcess::start_roles(&writer, "relay", &log_args);
    let mut market = Server::sibling(&writer, &market_args);
    let mut api = [
        Server::sibling(&writer, &api_args),
        Server::sibling(&writer, &api_args),
    ];
    let users = two_markets(&api[0], 6);
    random_flow(&api[1], &users, 80, 50, 0.3);

    #[derive(Clone, Copy, Debug)]
    enum Role {
        Api,
        Engine,
        Relay,
        Market,
        Writer,
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(51);
    let mut acked_all: Vec<(u64, u64)> = Vec::new();
    for round in 0..3u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = load(&api[0], &users, 2, stop.clone(), 10 + round);
        workers.extend(load(&api[1], &users, 2, stop.clone(), 20 + round));
        let mut victims = [
            Role::Api,
            Role::Engine,
            Role::Relay,
            Role::Market,
            Role::Writer,
        ];
        for i in (1..victims.len()).rev() {
            victims.swap(i, rng.random_range(0..=i));
        }
        for victim in victims {
            std::thread::sleep(Duration::from_millis(rng.random_range(200..700)));
            let pause = Duration::from_millis(rng.random_range(300..1200));
            eprintln!("round {round}: SIGKILL {victim:?}, back after {pause:?}");
            match victim {
                Role::Api => {
                    let a = &mut api[rng.random_range(0..2)];
                    a.kill9();
                    std::thread::sleep(pause);
                    a.restart_with(&api_args);
                }
                Role::Engine => {
                    let e = &mut engines[rng.random_range(0..2)];
                    e.kill9();
                    std::thread::sleep(pause);
                    e.restart();
                }
                Role::Relay => {
                    relay.kill9();
                    std::thread::sleep(pause);
                    relay.restart();
                }
                Role::Market => {
                    market.kill9();
                    std::thread::sleep(pause);
                    market.restart_with(&market_args);
                }
                Role::Writer => {
                    writer.kill9();
                    std::thread::sleep(pause);
                    writer.restart_with(&writer_restart);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            acked_all.extend(w.join().unwrap());
        }
        writer.assert_invariants();
        check_acked(&writer, &acked_all);
        same_market(&writer, &market);
    }
    assert!(
        acked_all.len() > 100,
        "the load was too light to mean much: {}",
        acked_all.len()
    );
    assert!(
        writer.json("/api/v1/admin/status", None)["trades"]
            .as_u64()
            .unwrap()
            > 20,
        "the flow should trade"
    );
    writer.kill9();
    let (code, report) = reconcile_offline(&writer);
    assert_eq!(code, 0, "{report:#}");
}
