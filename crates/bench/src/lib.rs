//! `agora bench`: a closed-loop load generator against the real HTTP API.
//!
//! It creates its own assets, symbols and funded users (names tagged per run, so it can run
//! against a server that already has data), then `clients` concurrent tasks place a crossing
//! flow — resting GTC limits around a mid price, IOC orders that take them, and cancels of
//! their own resting orders — for `duration_secs`. It measures:
//! - accept latency: POST /orders until its 202;
//! - accept→settled latency: for a sample of IOC orders, from the 202 until GET shows a
//!   terminal status (so it includes the engine and the settlement commit), polled every
//!   millisecond, which bounds the measurement error at about 1 ms.
//!
//! Trades are counted by the server (admin status) after the flow has drained.

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of a running agora.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Start `agora serve` on a free port with a fresh data dir instead of using --url.
    #[arg(long)]
    pub spawn: bool,
    /// With --spawn: the durability of the spawned server (full or normal).
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    pub durability: String,
    /// How long to run the flow.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub duration_secs: u64,
    /// Concurrent clients (each keeps one request in flight). 0 only with --bots: the bots
    /// alone make the trades.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub clients: usize,
    /// With --spawn: the spawned server runs the demo market with its bots at this many
    /// orders per second per symbol, and the WebSocket subscribers follow the demo symbols
    /// too. The bots' orders take the exchange's order path below HTTP, so the two cores are
    /// spent on the fan-out under test rather than on HTTP order clients.
    #[arg(long, requires = "spawn", value_parser = bot_rate)]
    pub bots: Option<f64>,
    /// Requests (orders and cancels) per second across all clients, sent on a fixed
    /// schedule (open loop). 0: every client sends its next request as soon as the last one
    /// is answered (closed loop, the server's saturation throughput). Latency at a given load
    /// is measured with a rate; at saturation every queue is full and latency says little.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub rate: u64,
    #[arg(long, default_value_t = 200, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub users: usize,
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000))]
    pub symbols: usize,
    /// One in this many IOC orders is followed to settlement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub settle_sample_every: u64,
    #[arg(long, env = "AGORA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// WebSocket clients subscribed to every bench symbol's trade stream, measuring the delay
    /// from a trade's settlement to its delivery.
    #[arg(long, default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub ws_subscribers: usize,
    /// Clients reading REST depth in a loop while the flow runs.
    #[arg(long, default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub depth_readers: usize,
    /// Send a unique `Idempotency-Key` with every order and cancel: the server's keyed path
    /// (a cache lookup and a store of the answer per request).
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Print the result as one JSON object as well.
    #[arg(long)]
    pub json: bool,
}

fn bot_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 10_000.0 => Ok(r),
        _ => Err("a number above 0 and at most 10000".into()),
    }
}

/// Latencies are recorded in microseconds, up to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The open-loop schedule: request `k` is due `k / rate` seconds after the start, whichever
/// client sends it. A client behind schedule sends at once.
struct Pacer {
    started: tokio::time::Instant,
    interval_ns: u64,
    next: AtomicU64,
}

impl Pacer {
    fn new(rate: u64) -> Option<Pacer> {
        (rate > 0).then(|| Pacer {
            started: tokio::time::Instant::now(),
            interval_ns: 1_000_000_000 / rate,
            next: AtomicU64::new(0),
        })
    }

    /// Waits for the next request's turn; returns when it was due. Latency counts from
    /// then, not from the send: a request sent late because the server was slow to answer
    /// the client's previous one waited too (no coordinated omission).
    async fn wait(&self) -> Instant {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let due = self.started + Duration::from_nanos(k.saturating_mul(self.interval_ns));
        tokio::time::sleep_until(due).await;
        due.into_std()
    }
}

struct Shared {
    accepted: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    accept_us: Mutex<Histogram<u64>>,
    settle_us: Mutex<Histogram<u64>>,
    pollers: Arc<tokio::sync::Semaphore>,
    delivery_us: Mutex<Histogram<u64>>,
    deliveries: AtomicU64,
    ws_failed: AtomicU64,
    depth_us: Mutex<Histogram<u64>>,
    depth_reads: AtomicU64,
}

struct Setup {
    symbols: Vec<String>,
    users: Vec<u64>,
    /// Symbols the subscribers follow: the bench's own, and with --bots the demo's.
    streamed: Vec<String>,
}

/// A spawned server, killed when dropped.
struct Spawned {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn spawn_server(args: &BenchArgs) -> anyhow::Result<(Spawned, String)> {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir()?;
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.arg("serve");
    if let Some(rate) = args.bots {
        command.args(["--demo", "--bot-rate", &rate.to_string()]);
    }
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--durability", &args.durability])
        .arg("--ws-connections-per-client")
        .arg((args.ws_subscribers + 16).to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawning agora serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("server did not start")??
            .context("server exited")?;
        if let Some(url) = line.strip_prefix("agora listening on ") {
            break url.to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((Spawned { child, _dir: dir }, url))
}

struct Api {
    http: reqwest::Client,
    url: String,
    admin_token: Option<String>,
}

impl Api {
    async fn admin(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .post(format!("{}/api/v1/admin/{path}", self.url))
            .json(&body);
        if let Some(t) = &self.admin_token {
            req = req.header("x-admin-token", t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("admin {path}: {status} {body}");
        }
        Ok(body)
    }

    async fn status(&self) -> anyhow::Result<Value> {
        let mut req = self.http.get(format!("{}/api/v1/admin/status", self.url));
        if let Some(t) = &self.admin_token {
            req = req.header("x-admin-token", t);
        }
        Ok(req.send().await?.error_for_status()?.json().await?)
    }
}

async fn setup(api: &Api, args: &BenchArgs) -> anyhow::Result<Setup> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while api
        .http
        .get(format!("{}/health", api.url))
        .send()
        .await
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        if Instant::now() > deadline {
            bail!("{} did not become healthy", api.url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if args.bots.is_some() {
        // The demo seeds only an empty store: let it go first.
        wait_for_trades(api, deadline).await?;
    }
    let tag: u32 = rand::rng().random_range(0..1_000_000);
    let (base, quote) = (format!("BB{tag}"), format!("BQ{tag}"));
    for code in [&base, &quote] {
        api.admin("assets", json!({"code": code, "scale": 4}))
            .await?;
    }
    let mut symbols = Vec::new();
    for i in 0..args.symbols {
        let name = format!("BX{tag}-{i}");
        api.admin(
            "symbols",
            json!({"name": name, "base": base, "quote": quote, "tick_size": "0.01",
                   "lot_size": "0.01", "maker_fee_bps": 2, "taker_fee_bps": 5}),
        )
        .await?;
        symbols.push(name);
    }
    let mut users = Vec::new();
    for i in 0..args.users {
        let u = api
            .admin("users", json!({"name": format!("bench{tag}-{i}")}))
            .await?;
        let id = u["user_id"].as_u64().context("user id")?;
        for asset in [&base, &quote] {
            api.admin(
                "deposits",
                json!({"user_id": id, "asset": asset, "amount": "100000000"}),
            )
            .await?;
        }
        users.push(id);
    }
    let streamed = match args.bots {
        Some(_) => all_symbols(api).await?,
        None => symbols.clone(),
    };
    Ok(Setup {
        symbols,
        users,
        streamed,
    })
}

/// Waits until the spawned server's demo bots trade.
async fn wait_for_trades(api: &Api, deadline: Instant) -> anyhow::Result<()> {
    while api.status().await?["trades"].as_u64().unwrap_or(0) == 0 {
        if Instant::now() > deadline {
            bail!("the demo bots did not trade");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Every symbol's name (with --bots: the demo's and the bench's).
async fn all_symbols(api: &Api) -> anyhow::Result<Vec<String>> {
    let markets: Value = api
        .http
        .get(format!("{}/api/v1/markets", api.url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let names = markets["markets"]
        .as_array()
        .context("markets")?
        .iter()
        .filter_map(|m| m["symbol"].as_str().map(str::to_string))
        .collect();
    Ok(names)
}

/// The two fields of an order reply the generator reads.
#[derive(serde::Deserialize)]
struct OrderReply {
    order_id: Option<u64>,
    status: Option<String>,
}

/// Orders a worker has resting, to cancel later (bounded).
const OWN_RESTING_MAX: usize = 64;

async fn worker(
    api: Arc<Api>,
    setup: Arc<Setup>,
    shared: Arc<Shared>,
    pacer: Arc<Option<Pacer>>,
    seed: u64,
    sample_every: u64,
    idempotency_keys: bool,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Unique within the run: keys are per user, and every run has its own users.
    let mut requests = 0u64;
    let mut keyed = |request: reqwest::RequestBuilder| {
        requests += 1;
        if idempotency_keys {
            request.header("idempotency-key", format!("bench-{seed}-{requests}"))
        } else {
            request
        }
    };
    let mut resting: Vec<(u64, u64)> = Vec::new(); // (user, order)
    let mut iocs = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let due = match pacer.as_ref() {
            Some(pacer) => Some(pacer.wait().await),
            None => None,
        };
        let roll: u32 = rng.random_range(0..100);
        if roll < 20 && !resting.is_empty() {
            let (user, order) = resting.swap_remove(rng.random_range(0..resting.len()));
            let r = keyed(
                api.http
                    .delete(format!("{}/api/v1/orders/{order}", api.url))
                    .header("x-user-id", user),
            )
            .send()
            .await;
            if r.is_err() {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let user = setup.users[rng.random_range(0..setup.users.len())];
        let symbol = &setup.symbols[rng.random_range(0..setup.symbols.len())];
        let buy = rng.random_bool(0.5);
        let ioc = roll >= 70;
        // Mid 100.00; resting orders within ±0.10, IOC orders cross by up to 0.05.
        let offset: i64 = if ioc {
            rng.random_range(0..=5)
        } else {
            rng.random_range(-10..=10)
        };
        let cents = if buy == ioc {
            10_000 + offset
        } else {
            10_000 - offset
        };
        let qty = rng.random_range(1..=20);
        // Written directly: the generator should spend its CPU on requests, not on JSON trees.
        let body = format!(
            r#"{{"symbol":"{symbol}","side":"{}","type":"LIMIT","price":"{}.{:02}","quantity":"{}.{:02}","time_in_force":"{}"}}"#,
            if buy { "BUY" } else { "SELL" },
            cents / 100,
            cents % 100,
            qty / 100,
            qty % 100,
            if ioc { "IOC" } else { "GTC" },
        );
        let started = due.unwrap_or_else(Instant::now);
        let resp = keyed(
            api.http
                .post(format!("{}/api/v1/orders", api.url))
                .header("x-user-id", user)
                .header("content-type", "application/json")
                .body(body),
        )
        .send()
        .await;
        let accepted_at = Instant::now();
        let resp = match resp {
            Ok(r) => r,
            Err(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let status = resp.status();
        let order: OrderReply = match resp.json().await {
            Ok(v) => v,
            Err(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if status.as_u16() != 202 {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = shared
            .accept_us
            .lock()
            .expect("lock")
            .record((accepted_at - started).as_micros().max(1) as u64);
        let Some(id) = order.order_id else {
            continue;
        };
        if !ioc {
            if resting.len() >= OWN_RESTING_MAX {
                resting.swap_remove(0);
            }
            resting.push((user, id));
            continue;
        }
        iocs += 1;
        if !iocs.is_multiple_of(sample_every) {
            continue;
        }
        // Follow this order to settlement without holding up the flow.
        let Ok(permit) = shared.pollers.clone().try_acquire_owned() else {
            continue;
        };
        let (api, shared) = (api.clone(), shared.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = accepted_at + Duration::from_secs(30);
            while Instant::now() < deadline {
                let r = api
                    .http
                    .get(format!("{}/api/v1/orders/{id}", api.url))
                    .header("x-user-id", user)
                    .send()
                    .await;
                let seen = Instant::now();
                if let Ok(r) = r {
                    if let Ok(v) = r.json::<OrderReply>().await {
                        let s = v.status.as_deref().unwrap_or("");
                        if matches!(s, "FILLED" | "EXPIRED" | "CANCELED" | "REJECTED") {
                            let _ = shared
                                .settle_us
                                .lock()
                                .expect("lock")
                                .record((seen - accepted_at).as_micros().max(1) as u64);
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
}

/// A WebSocket client on every bench symbol's trade stream: records, for each trade it
/// receives, the time from the trade's settlement (`time_ms`) to now.
async fn subscriber(url: String, setup: Arc<Setup>, shared: Arc<Shared>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws_url = url.replacen("http://", "ws://", 1) + "/ws";
    // A small read chunk: tungstenite zero-fills that many bytes on every read attempt.
    // A tick's frames are a few KiB; a longer frame is still read whole.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024);
    let Ok((mut ws, _)) =
        tokio_tungstenite::connect_async_with_config(ws_url, Some(config), false).await
    else {
        shared.ws_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let streams: Vec<String> = setup
        .streamed
        .iter()
        .map(|s| format!("{s}@trade"))
        .collect();
    let sub = json!({"method": "SUBSCRIBE", "params": streams, "id": 1}).to_string();
    if ws.send(Message::text(sub)).await.is_err() {
        shared.ws_failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    #[derive(serde::Deserialize)]
    struct Trade {
        time_ms: i64,
    }
    #[derive(serde::Deserialize)]
    struct Frame {
        data: Option<Vec<Trade>>,
    }
    let mut frames = 0u64;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        // Parse one frame in eight: on one machine the subscribers' parsing competes with the
        // server they measure. The sample is unbiased (every eighth frame, whatever it holds).
        frames += 1;
        if frames % 8 != 1 {
            continue;
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let Ok(Frame { data: Some(trades) }) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        let mut h = shared.delivery_us.lock().expect("lock");
        for t in &trades {
            let _ = h.record((now_us - t.time_ms * 1000).max(1) as u64);
        }
        shared
            .deliveries
            .fetch_add(trades.len() as u64, Ordering::Relaxed); // sampled
    }
    shared.ws_failed.fetch_add(1, Ordering::Relaxed); // closed before the end
}

/// Reads REST depth of the bench symbols in a loop until the flow stops.
async fn depth_reader(api: Arc<Api>, setup: Arc<Setup>, shared: Arc<Shared>, i: usize) {
    let mut n = i;
    while !shared.stop.load(Ordering::Relaxed) {
        let symbol = &setup.symbols[n % setup.symbols.len()];
        n += 1;
        let started = Instant::now();
        let ok = api
            .http
            .get(format!(
                "{}/api/v1/markets/{symbol}/depth?limit=20",
                api.url
            ))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            let _ = shared
                .depth_us
                .lock()
                .expect("lock")
                .record(started.elapsed().as_micros().max(1) as u64);
            shared.depth_reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 && args.bots.is_none() {
        bail!("--clients 0 needs --bots: nothing would trade");
    }
    let (_server, url) = if args.spawn {
        let (s, url) = spawn_server(&args).await?;
        (Some(s), url)
    } else {
        (None, args.url.trim_end_matches('/').to_string())
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients + 64)
        .timeout(Duration::from_secs(30))
        .build()?;
    let api = Arc::new(Api {
        http,
        url,
        admin_token: args.admin_token.clone(),
    });
    eprintln!(
        "setting up {} users on {} symbols at {} …",
        args.users, args.symbols, api.url
    );
    let setup = Arc::new(setup(&api, &args).await?);
    let trades_before = api.status().await?["trades"].as_u64().unwrap_or(0);
    let shared = Arc::new(Shared {
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        accept_us: Mutex::new(histogram()),
        settle_us: Mutex::new(histogram()),
        pollers: Arc::new(tokio::sync::Semaphore::new(64)),
        delivery_us: Mutex::new(histogram()),
        deliveries: AtomicU64::new(0),
        ws_failed: AtomicU64::new(0),
        depth_us: Mutex::new(histogram()),
        depth_reads: AtomicU64::new(0),
    });
    let mut subscribers = Vec::new();
    for _ in 0..args.ws_subscribers {
        subscribers.push(tokio::spawn(subscriber(
            api.url.clone(),
            setup.clone(),
            shared.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(1)).await; // do not stampede the accept queue
    }
    let readers: Vec<_> = (0..args.depth_readers)
        .map(|i| tokio::spawn(depth_reader(api.clone(), setup.clone(), shared.clone(), i)))
        .collect();
    // The schedule starts with the flow, after the subscribers are connected.
    let pacer = Arc::new(Pacer::new(args.rate));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(worker(
                api.clone(),
                setup.clone(),
                shared.clone(),
                pacer.clone(),
                i as u64 + 1,
                args.settle_sample_every,
                args.idempotency_keys,
            ))
        })
        .collect();
    let bar = ProgressBar::new(args.duration_secs);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len}s {msg}")
            .expect("valid template"),
    );
    for _ in 0..args.duration_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rate = shared.accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        bar.set_message(format!("{rate:.0} orders/s accepted"));
        bar.inc(1);
    }
    shared.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for w in workers.into_iter().chain(readers) {
        let _ = w.await;
    }
    bar.finish();
    // Let the engine and settlement drain before counting trades.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = api.status().await?;
        if s["pending_inputs"].as_u64() == Some(0) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = shared.pollers.acquire_many(64).await; // sampled orders finish polling
    tokio::time::sleep(Duration::from_millis(200)).await; // last deliveries arrive
    subscribers.iter().for_each(|s| s.abort());
    let trades = status["trades"].as_u64().unwrap_or(0) - trades_before;
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let accept = shared.accept_us.lock().expect("lock").clone();
    let settle = shared.settle_us.lock().expect("lock").clone();
    let delivery = shared.delivery_us.lock().expect("lock").clone();
    let depth = shared.depth_us.lock().expect("lock").clone();
    let depth_reads = shared.depth_reads.load(Ordering::Relaxed);
    let result = json!({
        "duration_s": elapsed,
        "rate_per_s": args.rate,
        "clients": args.clients,
        "idempotency_keys": args.idempotency_keys,
        "bot_orders_per_s_per_symbol": args.bots,
        "users": args.users,
        "symbols": args.symbols,
        "orders_accepted": accepted,
        "orders_rejected": shared.rejected.load(Ordering::Relaxed),
        "requests_failed": shared.failed.load(Ordering::Relaxed),
        "orders_per_s": accepted as f64 / elapsed,
        "trades": trades,
        "trades_per_s": trades as f64 / elapsed,
        "accept_ms": {"p50": ms(&accept, 0.5), "p99": ms(&accept, 0.99), "p999": ms(&accept, 0.999), "max": accept.max() as f64 / 1000.0},
        "accept_to_settled_ms": {"samples": settle.len(), "p50": ms(&settle, 0.5), "p99": ms(&settle, 0.99), "p999": ms(&settle, 0.999), "max": settle.max() as f64 / 1000.0},
        "ws_subscribers": args.ws_subscribers,
        "ws_failed": shared.ws_failed.load(Ordering::Relaxed),
        "ws_delivery_ms": {"samples": delivery.len(), "p50": ms(&delivery, 0.5), "p99": ms(&delivery, 0.99), "p999": ms(&delivery, 0.999), "max": delivery.max() as f64 / 1000.0},
        "depth_reads_per_s": depth_reads as f64 / elapsed,
        "depth_ms": {"p50": ms(&depth, 0.5), "p99": ms(&depth, 0.99)},
    });
    println!(
        "agora bench: {} clients, {} users, {} symbols, {:.1} s",
        args.clients, args.users, args.symbols, elapsed
    );
    if let Some(rate) = args.bots {
        println!(
            "  demo bots            {rate} orders/s on each of {} demo symbols",
            setup.streamed.len() - setup.symbols.len()
        );
    }
    println!(
        "  orders accepted      {:>10}  ({:.0}/s)",
        accepted,
        accepted as f64 / elapsed
    );
    println!(
        "  orders rejected      {:>10}",
        shared.rejected.load(Ordering::Relaxed)
    );
    println!(
        "  requests failed      {:>10}",
        shared.failed.load(Ordering::Relaxed)
    );
    println!(
        "  trades               {:>10}  ({:.0}/s)",
        trades,
        trades as f64 / elapsed
    );
    println!(
        "  accept latency ms    p50 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>7.2}",
        ms(&accept, 0.5),
        ms(&accept, 0.99),
        ms(&accept, 0.999),
        accept.max() as f64 / 1000.0
    );
    println!(
        "  accept→settled ms    p50 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>7.2}  ({} samples)",
        ms(&settle, 0.5),
        ms(&settle, 0.99),
        ms(&settle, 0.999),
        settle.max() as f64 / 1000.0,
        settle.len()
    );
    if args.ws_subscribers > 0 {
        println!(
            "  ws trade delivery ms p50 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>7.2}  ({} subscribers, {} trade deliveries, {} failed)",
            ms(&delivery, 0.5), ms(&delivery, 0.99), ms(&delivery, 0.999), delivery.max() as f64 / 1000.0,
            args.ws_subscribers, shared.deliveries.load(Ordering::Relaxed), shared.ws_failed.load(Ordering::Relaxed)
        );
    }
    if args.depth_readers > 0 {
        let reads = depth_reads;
        println!(
            "  depth reads          {:>10}  ({:.0}/s)  latency ms p50 {:.2}  p99 {:.2}",
            reads,
            reads as f64 / elapsed,
            ms(&depth, 0.5),
            ms(&depth, 0.99)
        );
    }
    if args.json {
        println!("{result}");
    }
    Ok(())
}
