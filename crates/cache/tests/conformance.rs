//! The cache port's contract, written once and run against every adapter: `memory::*` in
//! process, `redis::*` against the Redis at `AGORA_TEST_REDIS` (default
//! `redis://127.0.0.1:6379/15`; each test keeps to its own key prefix and deletes its keys
//! afterwards). Without Redis the Redis cases fail under `CI=true` and are skipped, saying
//! how to start it, otherwise.

use agora_cache::memory::{Limits, MemoryCache};
use agora_cache::redis::RedisCache;
use agora_cache::{Begin, Cache, CacheError, Claim, Fingerprint, Rate, KEY_BYTES_MAX};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fixture {
    cache: Arc<dyn Cache>,
    /// The Redis keys to delete afterwards (`PREFIX:*`).
    redis: Option<(String, String)>,
}

impl Fixture {
    async fn memory(_test: &str) -> Option<Fixture> {
        Some(Fixture {
            cache: Arc::new(MemoryCache::new(Limits::default())),
            redis: None,
        })
    }

    async fn redis(test: &str) -> Option<Fixture> {
        let url = agora_cache::testing::redis_or_skip()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("agora-test:{}:{test}:{nanos}", std::process::id());
        let cache = RedisCache::connect(&url, &prefix, Duration::from_secs(5))
            .await
            .expect("connect");
        Some(Fixture {
            cache: Arc::new(cache),
            redis: Some((url, prefix)),
        })
    }

    async fn cleanup(self) {
        let Some((url, prefix)) = self.redis else {
            return;
        };
        let client = ::redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            ::redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut connection)
                .await
                .unwrap();
        }
    }
}

/// One test per case and adapter.
macro_rules! suite {
    ($adapter:ident, $open:path; $($case:ident),* $(,)?) => {
        mod $adapter {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(fixture) = $open(stringify!($case)).await {
                        super::$case(fixture.cache.clone()).await;
                        fixture.cleanup().await;
                    }
                }
            )*
        }
    };
}

macro_rules! every_case {
    ($adapter:ident, $open:path) => {
        suite!($adapter, $open;
            idempotency_replays_a_finished_request,
            idempotency_abandon_frees_the_key_for_its_holder_only,
            idempotency_leases_and_records_expire,
            idempotency_begin_races_have_one_winner,
            rate_limits_allow_a_burst_then_the_rate,
            rate_limits_hold_under_concurrency,
            gates_admit_exactly_the_limit,
            gates_admit_a_member_once,
            gates_release_and_reset_from_the_store,
            kv_values_expire_and_delete,
            oversized_and_invalid_arguments_are_refused,
        );
    };
}

every_case!(memory, crate::Fixture::memory);
every_case!(redis, crate::Fixture::redis);

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of(&[b"POST", b"/api/v1/orders", body.as_bytes()])
}

fn lease(begin: Begin) -> agora_cache::Lease {
    match begin {
        Begin::New(lease) => lease,
        other => panic!("expected New, got {other:?}"),
    }
}

async fn idempotency_replays_a_finished_request(cache: Arc<dyn Cache>) {
    let (a, b) = (fp("{\"qty\":1}"), fp("{\"qty\":2}"));
    let held = lease(cache.begin("user:1", "k1", &a, 30_000).await.unwrap());
    assert_eq!(
        cache.begin("user:1", "k1", &a, 30_000).await,
        Ok(Begin::InProgress)
    );
    assert_eq!(
        cache.begin("user:1", "k1", &b, 30_000).await,
        Ok(Begin::Mismatch)
    );
    cache
        .complete("user:1", "k1", held, b"202 the order", 60_000)
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            cache.begin("user:1", "k1", &a, 30_000).await,
            Ok(Begin::Done(b"202 the order".to_vec()))
        );
    }
    assert_eq!(
        cache.begin("user:1", "k1", &b, 30_000).await,
        Ok(Begin::Mismatch)
    );
    // Keys are per scope; and a scope cannot be spelled from another scope and key.
    assert!(matches!(
        cache.begin("user:2", "k1", &a, 30_000).await,
        Ok(Begin::New(_))
    ));
    assert!(matches!(
        cache.begin("user:1:k", "1", &a, 30_000).await,
        Ok(Begin::New(_))
    ));
    // Empty responses are responses too.
    let held = lease(cache.begin("user:1", "empty", &a, 30_000).await.unwrap());
    cache
        .complete("user:1", "empty", held, b"", 60_000)
        .await
        .unwrap();
    assert_eq!(
        cache.begin("user:1", "empty", &a, 30_000).await,
        Ok(Begin::Done(Vec::new()))
    );
}

async fn idempotency_abandon_frees_the_key_for_its_holder_only(cache: Arc<dyn Cache>) {
    let a = fp("a");
    let first = lease(cache.begin("s", "k", &a, 30_000).await.unwrap());
    cache.abandon("s", "k", first).await.unwrap();
    let second = lease(cache.begin("s", "k", &a, 30_000).await.unwrap());
    // The first holder's lease no longer counts: it neither frees nor completes the key.
    cache.abandon("s", "k", first).await.unwrap();
    assert_eq!(
        cache.begin("s", "k", &a, 30_000).await,
        Ok(Begin::InProgress)
    );
    assert_eq!(
        cache.complete("s", "k", first, b"stale", 60_000).await,
        Err(CacheError::LeaseLost)
    );
    cache
        .complete("s", "k", second, b"fresh", 60_000)
        .await
        .unwrap();
    assert_eq!(
        cache.begin("s", "k", &a, 30_000).await,
        Ok(Begin::Done(b"fresh".to_vec()))
    );
    // Abandoning a finished key changes nothing.
    cache.abandon("s", "k", second).await.unwrap();
    assert_eq!(
        cache.begin("s", "k", &a, 30_000).await,
        Ok(Begin::Done(b"fresh".to_vec()))
    );
}

async fn idempotency_leases_and_records_expire(cache: Arc<dyn Cache>) {
    let a = fp("a");
    // A holder that died: its lease runs out and the key is free again.
    let crashed = lease(cache.begin("s", "k", &a, 100).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let retry = lease(cache.begin("s", "k", &a, 30_000).await.unwrap());
    assert_eq!(
        cache.complete("s", "k", crashed, b"late", 60_000).await,
        Err(CacheError::LeaseLost)
    );
    // A finished record lives for its TTL, then the key is new again.
    cache.complete("s", "k", retry, b"done", 100).await.unwrap();
    assert_eq!(
        cache.begin("s", "k", &a, 30_000).await,
        Ok(Begin::Done(b"done".to_vec()))
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        cache.begin("s", "k", &fp("b"), 30_000).await,
        Ok(Begin::New(_))
    ));
}

async fn idempotency_begin_races_have_one_winner(cache: Arc<dyn Cache>) {
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.begin("s", "race", &fp("a"), 30_000).await })
        })
        .collect();
    let (mut new, mut in_progress) = (0, 0);
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Begin::New(_) => new += 1,
            Begin::InProgress => in_progress += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((new, in_progress), (1, 199));
}

async fn rate_limits_allow_a_burst_then_the_rate(cache: Arc<dyn Cache>) {
    let rate = Rate::per_second(10, 5).unwrap(); // one per 100 ms, five at once
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let d = cache.allow("client:a", rate).await.unwrap();
        assert!(d.allowed, "{d:?}");
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let refused = cache.allow("client:a", rate).await.unwrap();
    assert!(!refused.allowed && refused.remaining == 0, "{refused:?}");
    assert!((1..=100).contains(&refused.retry_after_ms), "{refused:?}");
    // Another key has its own bucket.
    assert!(cache.allow("client:b", rate).await.unwrap().allowed);
    // After the advertised wait, exactly one more fits.
    tokio::time::sleep(Duration::from_millis(refused.retry_after_ms + 5)).await;
    assert!(cache.allow("client:a", rate).await.unwrap().allowed);
}

async fn rate_limits_hold_under_concurrency(cache: Arc<dyn Cache>) {
    let rate = Rate::per_second(1, 50).unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.allow("busy", rate).await.unwrap().allowed })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += u64::from(task.await.unwrap());
    }
    // The burst, plus one per whole second the test took (one second at most, normally 0).
    let refilled = started.elapsed().as_secs();
    assert!((50..=50 + refilled).contains(&allowed), "{allowed} allowed");
}

async fn gates_admit_exactly_the_limit(cache: Arc<dyn Cache>) {
    let tasks: Vec<_> = (0..1_000)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.claim("coupon", &format!("user{i}"), 100).await })
        })
        .collect();
    let (mut claimed, mut sold_out) = (Vec::new(), 0);
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap().unwrap() {
            Claim::Claimed => claimed.push(format!("user{i}")),
            Claim::SoldOut => sold_out += 1,
            Claim::AlreadyClaimed => panic!("every member claimed once"),
        }
    }
    assert_eq!((claimed.len(), sold_out), (100, 900));
    assert_eq!(cache.count("coupon").await, Ok(100));
    let mut members = cache.members("coupon").await.unwrap();
    members.sort();
    claimed.sort();
    assert_eq!(members, claimed);
}

async fn gates_admit_a_member_once(cache: Arc<dyn Cache>) {
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.claim("stock", "user7", 10).await })
        })
        .collect();
    let mut claimed = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Claim::Claimed => claimed += 1,
            Claim::AlreadyClaimed => {}
            Claim::SoldOut => panic!("one member cannot sell a gate of 10 out"),
        }
    }
    assert_eq!(claimed, 1);
    assert_eq!(cache.count("stock").await, Ok(1));
}

async fn gates_release_and_reset_from_the_store(cache: Arc<dyn Cache>) {
    for m in ["a", "b", "c"] {
        assert_eq!(cache.claim("g", m, 3).await, Ok(Claim::Claimed));
    }
    assert_eq!(cache.claim("g", "d", 3).await, Ok(Claim::SoldOut));
    assert_eq!(cache.claim("g", "a", 3).await, Ok(Claim::AlreadyClaimed));
    // A durable write failed: the unit goes back and someone else gets it.
    assert_eq!(cache.release("g", "b").await, Ok(true));
    assert_eq!(cache.release("g", "b").await, Ok(false));
    assert_eq!(cache.release("nothing", "b").await, Ok(false));
    assert_eq!(cache.claim("g", "d", 3).await, Ok(Claim::Claimed));
    // Reconciliation found the store says otherwise: the store wins.
    let truth: Vec<String> = ["a", "x", "y", "x"].map(String::from).to_vec();
    cache.reset_from("g", &truth).await.unwrap();
    assert_eq!(cache.count("g").await, Ok(3));
    let mut members = cache.members("g").await.unwrap();
    members.sort();
    assert_eq!(members, ["a", "x", "y"]);
    assert_eq!(cache.claim("g", "d", 3).await, Ok(Claim::SoldOut));
    // A bigger limit (more stock) admits more.
    assert_eq!(cache.claim("g", "d", 4).await, Ok(Claim::Claimed));
    cache.reset_from("g", &[]).await.unwrap();
    assert_eq!(cache.count("g").await, Ok(0));
    assert_eq!(cache.members("g").await, Ok(Vec::new()));
    assert_eq!(cache.count("never").await, Ok(0));
}

async fn kv_values_expire_and_delete(cache: Arc<dyn Cache>) {
    assert_eq!(cache.get("depth:BTC").await, Ok(None));
    cache.set("depth:BTC", b"v1", 60_000).await.unwrap();
    cache.set("depth:BTC", b"v2", 60_000).await.unwrap();
    assert_eq!(cache.get("depth:BTC").await, Ok(Some(b"v2".to_vec())));
    assert_eq!(cache.delete("depth:BTC").await, Ok(true));
    assert_eq!(cache.delete("depth:BTC").await, Ok(false));
    assert_eq!(cache.get("depth:BTC").await, Ok(None));
    cache.set("ticker", &[0, 255, 1], 100).await.unwrap();
    assert_eq!(cache.get("ticker").await, Ok(Some(vec![0, 255, 1])));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(cache.get("ticker").await, Ok(None));
    assert_eq!(cache.delete("ticker").await, Ok(false));
}

async fn oversized_and_invalid_arguments_are_refused(cache: Arc<dyn Cache>) {
    let long = "k".repeat(KEY_BYTES_MAX + 1);
    let too_large = |r: Result<_, CacheError>| matches!(r, Err(CacheError::TooLarge { .. }));
    let invalid = |r: Result<_, CacheError>| matches!(r, Err(CacheError::Invalid(_)));
    assert!(too_large(
        cache.begin("s", &long, &fp("a"), 1_000).await.map(drop)
    ));
    assert!(too_large(
        cache.begin(&long, "k", &fp("a"), 1_000).await.map(drop)
    ));
    assert!(too_large(
        cache
            .allow(&long, Rate::per_second(1, 1).unwrap())
            .await
            .map(drop)
    ));
    assert!(too_large(cache.claim(&long, "m", 1).await.map(drop)));
    assert!(too_large(cache.claim("g", &long, 1).await.map(drop)));
    assert!(too_large(
        cache.reset_from("g", std::slice::from_ref(&long)).await
    ));
    assert!(too_large(cache.set(&long, b"v", 1_000).await));
    let huge = vec![0u8; agora_cache::VALUE_BYTES_MAX + 1];
    assert!(too_large(cache.set("k", &huge, 1_000).await));
    let held = lease(cache.begin("s", "k", &fp("a"), 1_000).await.unwrap());
    assert!(too_large(
        cache.complete("s", "k", held, &huge, 1_000).await
    ));
    assert!(invalid(cache.begin("s", "k2", &fp("a"), 0).await.map(drop)));
    assert!(invalid(cache.claim("g", "m", 0).await.map(drop)));
    assert!(invalid(
        cache
            .claim("g", "m", agora_cache::GATE_LIMIT_MAX + 1)
            .await
            .map(drop)
    ));
    assert!(invalid(cache.set("k", b"v", 0).await));
    // Nothing was stored by a refused call.
    assert_eq!(cache.get("k").await, Ok(None));
    assert_eq!(cache.count("g").await, Ok(0));
}
