//! The distributed mode against the real binary: a writer process (api, relay, settlement,
//! market) and engine processes (`--roles engine`) meeting in a Kafka-protocol broker
//! (`AGORA_TEST_KAFKA`, default 127.0.0.1:9092) and the store the suite runs on
//! (`AGORA_TEST_STORE`: SQLite, PostgreSQL or MariaDB). Each test cluster has topics and
//! consumer groups of its own (`--log-namespace`). Without a broker these tests fail under
//! `CI=true` and skip with a hint otherwise.

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
/// survivor within seconds, not the default 45 s session timeout.
const FAST_GROUPS: &str = "session.timeout.ms=6000&heartbeat.interval.ms=500";

/// A writer process and `engines` engine processes on one fresh store and namespace.
fn cluster(engines: usize) -> Option<(Server, Vec<EngineProcess>, Vec<String>)> {
    let kafka = kafka_or_skip()?;
    let log_args = kafka_args(&format!("{kafka}?{FAST_GROUPS}"), &fresh_namespace(), PARTITIONS);
    let mut writer_args: Vec<&str> = vec!["--roles", "api,relay,settlement,market"];
    writer_args.extend(log_args.iter().map(String::as_str));
    let writer = Server::start_with(&writer_args);
    let engines = (0..engines)
        .map(|_| EngineProcess::start(&writer, &log_args))
        .collect();
    let args: Vec<String> = writer_args.iter().map(|a| a.to_string()).collect();
    Some((writer, engines, args))
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
            ["FILLED", "CANCELED", "EXPIRED", "REJECTED", "NEW", "PARTIALLY_FILLED"]
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
        s.json("/api/v1/admin/status", None)["trades"].as_u64().unwrap() > 10,
        "the flow should trade: {report}"
    );
    // The market read model follows the settled trades.
    let trades = s.json("/api/v1/markets/BASE-QUOTE/trades?limit=5", None);
    assert!(!trades["trades"].as_array().unwrap().is_empty());
}

#[test]
fn killed_engines_and_writer_lose_nothing_and_apply_nothing_twice() {
    let Some((mut s, mut engines, writer_args)) = cluster(2) else {
        return;
    };
    let writer_args: Vec<&str> = writer_args.iter().map(String::as_str).collect();
    let users = two_markets(&s, 6);
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
        s.assert_invariants();
    }
    assert!(
        acked_all.len() > 100,
        "the load was too light to mean much: {}",
        acked_all.len()
    );
    assert!(
        s.json("/api/v1/admin/status", None)["trades"].as_u64().unwrap() > 20,
        "the flow should trade"
    );
    // Offline, on the stopped store: the ledger and order invariants from scratch.
    s.kill9();
    let (code, report) = reconcile_offline(&s);
    assert_eq!(code, 0, "{report:#}");
}
