//! Test harness: runs the real `agora` binary on a random port with a fresh data dir.
#![allow(dead_code)]

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The binary under test. AGORA_TEST_BIN runs the suite against another build (e.g. to show
/// that a regression test fails on the code before its fix).
pub fn agora_bin() -> String {
    std::env::var("AGORA_TEST_BIN").unwrap_or(env!("CARGO_BIN_EXE_agora").into())
}

/// The store the suite runs on: `AGORA_TEST_STORE` names a server (a base URL such as
/// `postgres://postgres@127.0.0.1:5432` or `mysql://root@127.0.0.1:3306`), and each test
/// server gets a database of its own there; unset, each gets an SQLite store in its data
/// directory.
pub fn test_store_base() -> Option<String> {
    std::env::var("AGORA_TEST_STORE")
        .ok()
        .filter(|s| !s.is_empty() && s != "sqlite")
}

/// The servers' log level: `AGORA_TEST_LOG` (e.g. `info`), else `warn`.
pub fn test_log_level() -> String {
    std::env::var("AGORA_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// Whether the suite runs on the embedded SQLite store (some tests edit it directly).
pub fn on_sqlite() -> bool {
    test_store_base().is_none()
}

/// A new, empty database on the server at `base`; returns its URL.
fn fresh_database(base: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "agora_e2e_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let base = base.trim_end_matches('/');
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        if base.starts_with("mysql://") {
            let mut c = sqlx::MySqlConnection::connect(base).await.expect(base);
            sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
            ))
            .execute(&mut c)
            .await
            .unwrap();
        } else {
            let admin = format!("{base}/postgres");
            let mut c = sqlx::PgConnection::connect(&admin).await.expect(base);
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .unwrap();
        }
    });
    format!("{base}/{name}")
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    /// `--store` for every boot of this server (`sqlite` unless `AGORA_TEST_STORE` is set).
    pub store: String,
    _dir: Option<tempfile::TempDir>,
    pub http: Client,
    /// Whether the store is this server's to drop (not an API process's in front of another).
    owns_store: bool,
}

impl Server {
    /// A fresh server with an empty store.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_path_buf();
        let mut s = Server {
            child: None,
            url: String::new(),
            data_dir,
            store: test_store_base().map_or_else(|| "sqlite".into(), |b| fresh_database(&b)),
            _dir: Some(dir),
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            owns_store: true,
        };
        s.boot(&[]);
        s
    }

    pub fn start_with(args: &[&str]) -> Server {
        let mut s = Server::start();
        s.kill9();
        s.boot(args);
        s
    }

    /// An api-only process (`--roles api`) in front of `writer`: the same store, its commands
    /// sent to `writer`'s address; `extra` adds flags (the cache's, at least).
    pub fn api_process(writer: &Server, extra: &[&str]) -> Server {
        Server::api_process_to(&writer.url, writer, extra)
    }

    /// An api-only process on `store_of`'s store whose commands go to `writer_url`.
    pub fn api_process_to(writer_url: &str, store_of: &Server, extra: &[&str]) -> Server {
        let mut args = vec!["--roles", "api", "--writer-url", writer_url];
        args.extend_from_slice(extra);
        Server::sibling(store_of, &args)
    }

    /// Another HTTP process on `store_of`'s store (an api-only or a market process), with
    /// these flags.
    pub fn sibling(store_of: &Server, args: &[&str]) -> Server {
        let mut s = Server {
            child: None,
            url: String::new(),
            data_dir: store_of.data_dir.clone(),
            store: store_of.store.clone(),
            _dir: None,
            http: store_of.http.clone(),
            owns_store: false,
        };
        s.boot(args);
        s
    }

    fn boot(&mut self, extra: &[&str]) {
        // A free port, unless the flags name one (a restart on the same address).
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(agora_bin())
            .arg("serve")
            .args(listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--store", &self.store])
            .args(extra)
            .env("AGORA_LOG", test_log_level())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn agora");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("agora exited before listening")
                .expect("read stdout");
            if let Some(url) = line.strip_prefix("agora listening on ") {
                break url.to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.url = url;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", self.url)).send() {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server never became healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// SIGKILL, then up again with these flags.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.kill9();
        self.boot(args);
    }

    /// One integer read straight from the server's store (stopped or running).
    pub fn stored_i64(&self, sql: &str) -> i64 {
        if self.store == "sqlite" {
            return rusqlite::Connection::open(self.data_dir.join("agora.db"))
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            if self.store.starts_with("mysql://") {
                let mut c = sqlx::MySqlConnection::connect(&self.store).await.unwrap();
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
            } else {
                let mut c = sqlx::PgConnection::connect(&self.store).await.unwrap();
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
            }
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn get(&self, path: &str, user: Option<u64>) -> Response {
        let mut r = self.http.get(format!("{}{path}", self.url));
        if let Some(u) = user {
            r = r.header("x-user-id", u);
        }
        r.send().expect("GET")
    }

    pub fn post(&self, path: &str, user: Option<u64>, body: Value) -> Response {
        let mut r = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(u) = user {
            r = r.header("x-user-id", u);
        }
        r.send().expect("POST")
    }

    pub fn delete(&self, path: &str, user: u64) -> Response {
        self.http
            .delete(format!("{}{path}", self.url))
            .header("x-user-id", user)
            .send()
            .expect("DELETE")
    }

    pub fn admin(&self, path: &str, body: Value) -> Value {
        let r = self.post(&format!("/api/v1/admin/{path}"), None, body);
        let status = r.status();
        let v: Value = r.json().expect("json");
        assert!(status.is_success(), "admin {path}: {status} {v}");
        v
    }

    pub fn json(&self, path: &str, user: Option<u64>) -> Value {
        let r = self.get(path, user);
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().expect("json")
    }

    /// Waits until every accepted input has been matched and settled.
    pub fn quiesce(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.json("/api/v1/admin/status", None);
            if s["pending_inputs"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "engine never drained: {s}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Quiesces, then asserts every ledger, order and book invariant, with every book
    /// compared.
    pub fn assert_invariants(&self) -> Value {
        self.quiesce();
        let report = self.reconcile(false);
        assert_eq!(report["ok"], true, "reconciliation failed: {report:#}");
        assert_eq!(
            report["books_compared"].as_u64().unwrap(),
            self.symbols().len() as u64,
            "every book must be compared: {report:#}"
        );
        report
    }

    /// `GET /api/v1/admin/reconcile` (`?full=true` when `full`).
    pub fn reconcile(&self, full: bool) -> Value {
        let path = if full {
            "/api/v1/admin/reconcile?full=true"
        } else {
            "/api/v1/admin/reconcile"
        };
        self.json(path, None)
    }

    /// Names of the listed symbols.
    pub fn symbols(&self) -> Vec<String> {
        self.json("/api/v1/markets", None)["markets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["symbol"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn order(&self, user: u64, id: u64) -> Value {
        self.json(&format!("/api/v1/orders/{id}"), Some(user))
    }

    pub fn balance(&self, user: u64, asset: &str) -> (String, String) {
        let b = self.json("/api/v1/balances", Some(user));
        b["balances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["asset"] == asset)
            .map(|x| {
                (
                    x["available"].as_str().unwrap().to_string(),
                    x["held"].as_str().unwrap().to_string(),
                )
            })
            .unwrap_or_else(|| ("0".into(), "0".into()))
    }

    pub fn book(&self, symbol: &str) -> Value {
        self.json(&format!("/api/v1/admin/books/{symbol}"), None)
    }
}

/// `agora reconcile` on a server's stopped store: (exit code, its JSON report).
pub fn reconcile_offline(s: &Server) -> (i32, Value) {
    let out = Command::new(agora_bin())
        .arg("reconcile")
        .arg("--data-dir")
        .arg(&s.data_dir)
        .args(["--store", &s.store])
        .env("AGORA_LOG", test_log_level())
        .output()
        .expect("run agora reconcile");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agora reconcile printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), report)
}

/// The kinds of the problems a report lists.
pub fn problem_kinds(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["kind"].as_str().expect("kind").to_string())
        .collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        let owned = self.owns_store && !on_sqlite();
        if let Some((base, name)) = self.store.rsplit_once('/').filter(|_| owned) {
            drop_database(base, name);
        }
    }
}

/// Best effort: a test server's database, once the server is gone.
fn drop_database(base: &str, name: &str) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        use sqlx::Connection;
        if base.starts_with("mysql://") {
            if let Ok(mut c) = sqlx::MySqlConnection::connect(base).await {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(&mut c)
                    .await;
            }
        } else if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{base}/postgres")).await {
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await;
        }
    });
}

/// A small market: BASE (scale 2) / QUOTE (scale 2), tick 0.01, lot 1.00, fees 10/20 bps,
/// and `users` users funded with 1,000,000 of each. Returns the user ids.
pub fn market(s: &Server, users: usize) -> Vec<u64> {
    s.admin("assets", json!({"code": "BASE", "scale": 2}));
    s.admin("assets", json!({"code": "QUOTE", "scale": 2}));
    s.admin(
        "symbols",
        json!({"name": "BASE-QUOTE", "base": "BASE", "quote": "QUOTE", "tick_size": "0.01",
               "lot_size": "1", "min_notional": "1", "maker_fee_bps": 10, "taker_fee_bps": 20}),
    );
    (0..users)
        .map(|i| {
            let id = s.admin("users", json!({"name": format!("user{i}")}))["user_id"]
                .as_u64()
                .unwrap();
            for asset in ["BASE", "QUOTE"] {
                s.admin(
                    "deposits",
                    json!({"user_id": id, "asset": asset, "amount": "1000000"}),
                );
            }
            id
        })
        .collect()
}

pub fn limit(side: &str, price: &str, qty: &str, tif: &str) -> Value {
    json!({"symbol": "BASE-QUOTE", "side": side, "type": "LIMIT", "price": price,
           "quantity": qty, "time_in_force": tif})
}

/// Places an order and returns (status code, body).
pub fn place(s: &Server, user: u64, body: Value) -> (u16, Value) {
    let r = s.post("/api/v1/orders", Some(user), body);
    let code = r.status().as_u16();
    (code, r.json().expect("json"))
}

/// Polls an order until its status is one of `want`.
pub fn wait_status(s: &Server, user: u64, id: u64, want: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = s.order(user, id);
        if want.iter().any(|w| o["status"] == *w) {
            return o;
        }
        assert!(Instant::now() < deadline, "order {id} stuck: {o}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A random flow of limit orders (a share of them IOC) and cancels of earlier ones, around
/// 10.00 on BASE-QUOTE, from random users; every order must be accepted.
pub fn random_flow(s: &Server, users: &[u64], n: usize, seed: u64, ioc_share: f64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut open: Vec<(u64, u64)> = Vec::new();
    for _ in 0..n {
        let user = users[rng.random_range(0..users.len())];
        if rng.random_range(0..10) < 2 && !open.is_empty() {
            let (u, id) = open.swap_remove(rng.random_range(0..open.len()));
            s.delete(&format!("/api/v1/orders/{id}"), u);
            continue;
        }
        let side = if rng.random_bool(0.5) { "BUY" } else { "SELL" };
        let tif = if rng.random_bool(ioc_share) {
            "IOC"
        } else {
            "GTC"
        };
        let price = format!(
            "{}.{:02}",
            rng.random_range(9..11),
            rng.random_range(0..100)
        );
        let qty = rng.random_range(1..40).to_string();
        let (code, o) = place(s, user, limit(side, &price, &qty, tif));
        assert_eq!(code, 202, "{o}");
        open.push((user, o["order_id"].as_u64().unwrap()));
    }
}

/// Depth levels as the API prints them (`[["price", "qty"], …]`) → (price, qty) strings.
pub fn levels(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l[0].as_str().unwrap().to_string(),
                l[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The Kafka-protocol broker of the distributed tests as a log URL, or `None` (skip) when it
/// is not running and the suite is not under CI (see `agora_testsvc`).
pub fn kafka_or_skip() -> Option<String> {
    let addr = agora_testsvc::service_addr("AGORA_TEST_KAFKA", "127.0.0.1:9092");
    agora_testsvc::require_service("Kafka-protocol broker", &addr, "scripts/services")
        .then(|| format!("kafka://{addr}"))
}

/// A topic and group namespace of its own for each test cluster on the shared broker.
pub fn fresh_namespace() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "e2e-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The event-log flags of one test cluster.
pub fn kafka_args(kafka: &str, namespace: &str, partitions: u32) -> Vec<String> {
    [
        "--event-log",
        kafka,
        "--log-namespace",
        namespace,
        "--log-partitions",
        &partitions.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// An engine-only process (`agora serve --roles engine`) of a test cluster.
pub struct EngineProcess {
    child: Option<Child>,
    args: Vec<String>,
}

impl EngineProcess {
    /// Starts an engine process on `writer`'s store with these event-log flags.
    pub fn start(writer: &Server, log_args: &[String]) -> EngineProcess {
        EngineProcess::start_roles(writer, "engine", log_args)
    }

    /// Starts a worker process (`engine`, `relay` or `relay,engine`) on `writer`'s store.
    pub fn start_roles(writer: &Server, roles: &str, log_args: &[String]) -> EngineProcess {
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            writer.data_dir.display().to_string(),
            "--store".into(),
            writer.store.clone(),
            "--roles".into(),
            roles.into(),
        ];
        args.extend(log_args.iter().cloned());
        let mut e = EngineProcess { child: None, args };
        e.boot();
        e
    }

    fn boot(&mut self) {
        let mut child = Command::new(agora_bin())
            .arg("serve")
            .args(&self.args)
            .env("AGORA_LOG", test_log_level())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn agora engine");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("agora worker exited before running")
                .expect("read stdout");
            if line.starts_with("agora ") && line.ends_with(" running") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL (if running), then up again.
    pub fn restart(&mut self) {
        self.kill9();
        self.boot();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub const SYMBOLS: [&str; 2] = ["BASE-QUOTE", "ALT-QUOTE"];

/// The test market plus a second symbol, so that the symbols' cursors differ at a crash
/// and the restart must drop re-published inputs of the one that was further ahead.
pub fn two_markets(s: &Server, users: usize) -> Vec<u64> {
    let ids = market(s, users);
    s.admin("assets", json!({"code": "ALT", "scale": 2}));
    s.admin(
        "symbols",
        json!({"name": "ALT-QUOTE", "base": "ALT", "quote": "QUOTE", "tick_size": "0.01", "lot_size": "1"}),
    );
    for &id in &ids {
        s.admin(
            "deposits",
            json!({"user_id": id, "asset": "ALT", "amount": "1000000"}),
        );
    }
    ids
}

/// Places a crossing flow on both of [`two_markets`]' symbols from `threads` threads until told to stop or the server dies;
/// returns every (user, order id) that was acknowledged with 202.
pub fn load(
    s: &Server,
    users: &[u64],
    threads: usize,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Vec<std::thread::JoinHandle<Vec<(u64, u64)>>> {
    use rand::{Rng, SeedableRng};
    (0..threads)
        .map(|t| {
            let (url, users, stop) = (s.url.clone(), users.to_vec(), stop.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + t as u64);
                let mut acked = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let user = users[rng.random_range(0..users.len())];
                    let resp = if rng.random_range(0..10) == 0 && !acked.is_empty() {
                        let (u, id): (u64, u64) = acked[rng.random_range(0..acked.len())];
                        http.delete(format!("{url}/api/v1/orders/{id}"))
                            .header("x-user-id", u)
                            .send()
                    } else {
                        let side = if rng.random_bool(0.5) { "BUY" } else { "SELL" };
                        let tif = if rng.random_bool(0.3) { "IOC" } else { "GTC" };
                        let price = format!("10.{:02}", rng.random_range(0..20));
                        let mut body =
                            limit(side, &price, &rng.random_range(1..30).to_string(), tif);
                        body["symbol"] = json!(SYMBOLS[rng.random_range(0..2)]);
                        http.post(format!("{url}/api/v1/orders"))
                            .header("x-user-id", user)
                            .json(&body)
                            .send()
                    };
                    match resp {
                        Ok(r) if r.status().as_u16() == 202 => {
                            let v: Value = match r.json() {
                                Ok(v) => v,
                                Err(_) => break,
                            };
                            if v["cancel_requested"] == false {
                                acked.push((user, v["order_id"].as_u64().unwrap()));
                            }
                        }
                        // An API process whose writer is down or restarting: nothing done.
                        Ok(r) if r.status().as_u16() == 503 => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Ok(r) => assert!(r.status().is_client_error(), "answered {}", r.status()),
                        Err(_) => break, // the server died
                    }
                }
                acked
            })
        })
        .collect()
}

/// Sends a request and returns (status, body, whether it was a replay of a keyed request:
/// `Idempotent-Replayed: true`).
pub fn send_keyed(request: reqwest::blocking::RequestBuilder) -> (u16, Value, bool) {
    let r = request.send().expect("request");
    let status = r.status().as_u16();
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (status, r.json().expect("json"), replayed)
}

/// `POST /api/v1/orders` of `body` for `user` under `Idempotency-Key: key`.
pub fn keyed_order(
    s: &Server,
    user: u64,
    key: &str,
    body: &Value,
) -> reqwest::blocking::RequestBuilder {
    s.http
        .post(format!("{}/api/v1/orders", s.url))
        .header("x-user-id", user)
        .header("idempotency-key", key)
        .json(body)
}
