//! Typed configuration of `agora serve`. Precedence: command-line flag, then `AGORA_*`
//! environment variable, then the TOML file given with `--config`, then the default.

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the long flags, e.g. `data-dir`).
    #[arg(long, env = "AGORA_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]. Port 0 picks a free port.
    #[arg(long, env = "AGORA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the embedded store lives [default: ./agora-data].
    #[arg(long, env = "AGORA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The store: `sqlite` (the embedded default, in the data directory),
    /// `postgres://user@host:port/db` or `mysql://user@host:port/db` (MariaDB too). The
    /// database must exist; agora creates its tables [default: sqlite].
    #[arg(long, env = "AGORA_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// The event log: `embedded` (the default, in this process) or
    /// `kafka://host:port,…` (the distributed mode; librdkafka properties may follow as a
    /// query, `?linger.ms=1`) [default: embedded].
    #[arg(long, env = "AGORA_EVENT_LOG")]
    pub event_log: Option<String>,
    /// Partitions of the exchange's Kafka topics when agora creates them, 1 to 1024
    /// [default: 8].
    #[arg(long, env = "AGORA_LOG_PARTITIONS")]
    pub log_partitions: Option<u32>,
    /// Prefix of the Kafka topic and consumer-group names, so that several deployments can
    /// share a cluster: 1-64 of a-z, 0-9, `-`, `_` [default: agora].
    #[arg(long, env = "AGORA_LOG_NAMESPACE")]
    pub log_namespace: Option<String>,
    /// The roles this process plays: `all`, or some of `api,relay,engine,settlement,market`.
    /// With Kafka, run the writer's process (`api,relay,settlement,market`) once and
    /// engine processes (`engine`) as many times as you like; leave `relay` out of the
    /// writer's roles to have relay processes (`relay`, or `relay,engine`) publish the
    /// outbox instead, and `market` to have market processes (`market`, any number) keep
    /// the read model from the log and serve market data and WebSockets [default: all].
    #[arg(long, env = "AGORA_ROLES")]
    pub roles: Option<String>,
    /// The writer's process, for an api-only process (`--roles api`): the `http://host:port`
    /// an `agora serve` hosting the writer listens on. The api-only process needs the same
    /// PostgreSQL or MySQL store, the same Redis cache (`--cache`, `--cache-prefix`) and the
    /// same admin token as the writer's process.
    #[arg(long, env = "AGORA_WRITER_URL")]
    pub writer_url: Option<String>,
    /// Seed demo assets, symbols, funded users and a starting book if the store is empty.
    #[arg(long, env = "AGORA_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default)]
    pub demo: bool,
    /// Run the market-making and market-taking bots (on by default with --demo).
    #[arg(long, env = "AGORA_BOTS", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default)]
    pub bots: bool,
    /// Never run the bots, even with --demo.
    #[arg(long, env = "AGORA_NO_BOTS", conflicts_with = "bots", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default)]
    pub no_bots: bool,
    /// Bot orders per second per symbol, up to 10,000 [default: 8].
    #[arg(long, env = "AGORA_BOT_RATE")]
    pub bot_rate: Option<f64>,
    /// Share of bot orders that take liquidity (IOC across the spread); the rest quote
    /// [default: 0.3].
    #[arg(long, env = "AGORA_BOT_TAKER_SHARE")]
    pub bot_taker_share: Option<f64>,
    /// Volatility of the bots' reference price per square-root second, as a fraction
    /// (0.001 = 0.1%/√s) [default: 0.0008].
    #[arg(long, env = "AGORA_BOT_VOLATILITY")]
    pub bot_volatility: Option<f64>,
    /// `full` fsyncs every group commit (survives power loss); `normal` survives a
    /// process crash only [default: full].
    #[arg(long, env = "AGORA_DURABILITY")]
    pub durability: Option<DurabilitySetting>,
    /// Matching-engine threads [default: 1].
    #[arg(long, env = "AGORA_ENGINE_SHARDS")]
    pub engine_shards: Option<u32>,
    /// Requests taken into one group commit at most [default: 4096].
    #[arg(long, env = "AGORA_BATCH_MAX")]
    pub batch_max: Option<usize>,
    /// Admin endpoints then require `X-Admin-Token` with this value (at least 16
    /// characters). Required to listen on anything but a loopback address.
    #[arg(long, env = "AGORA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// HTTP requests served at once at most; more wait their turn [default: 10000].
    #[arg(long, env = "AGORA_INFLIGHT_MAX")]
    pub inflight_max: Option<usize>,
    /// Open HTTP connections at most; more wait in the accept backlog [default: 10000].
    #[arg(long, env = "AGORA_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Kernel send buffer of each connection, in bytes [default: 262144].
    #[arg(long, env = "AGORA_SOCKET_SEND_BUFFER")]
    pub socket_send_buffer: Option<usize>,
    /// WebSocket connections one client (user, or IP without one) may hold [default: 100].
    #[arg(long, env = "AGORA_WS_CONNECTIONS_PER_CLIENT")]
    pub ws_connections_per_client: Option<usize>,
    /// Batches (what one commit or trade flush brings a connection) queued for one
    /// WebSocket before it is closed as a slow consumer [default: 1024].
    #[arg(long, env = "AGORA_WS_SEND_BUFFER")]
    pub ws_send_buffer: Option<usize>,
    /// Streams one WebSocket may subscribe to [default: 64].
    #[arg(long, env = "AGORA_WS_SUBSCRIPTIONS_MAX")]
    pub ws_subscriptions_max: Option<usize>,
    /// Where idempotency keys and rate-limit state live: `memory` (this process) or
    /// `redis://[user:password@]host:port/db` (shared by every API process) [default: memory].
    #[arg(long, env = "AGORA_CACHE", hide_env_values = true)]
    pub cache: Option<String>,
    /// Prefix of every key agora writes to Redis, so that deployments (or test runs) can
    /// share one database: 1-64 of A-Z, a-z, 0-9, `.`, `_`, `-`, `:` [default: agora].
    #[arg(long, env = "AGORA_CACHE_PREFIX")]
    pub cache_prefix: Option<String>,
    /// How long the answer to a request with an `Idempotency-Key` is kept for retries, in
    /// seconds, 60 to 2592000 (30 days) [default: 86400].
    #[arg(long, env = "AGORA_IDEMPOTENCY_TTL_SECS")]
    pub idempotency_ttl_secs: Option<u64>,
    /// Requests per second allowed to each user (each IP address without `X-User-Id`) on
    /// `/api/v1`, 1 to 1000000; beyond, 429 with `Retry-After` [default: no limit].
    #[arg(long, env = "AGORA_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Requests a client may send at once before the rate applies, 1 to 1000000 (needs
    /// --rate-limit) [default: one second's worth, the rate].
    #[arg(long, env = "AGORA_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Log as JSON lines instead of text (the level comes from `AGORA_LOG`, e.g. `info`,
    /// `agora_exchange=debug`).
    #[arg(long, env = "AGORA_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default)]
    pub log_json: bool,
}

/// Shortest admin token accepted: a guessable token is no better than none.
pub const ADMIN_TOKEN_LEN_MIN: usize = 16;
/// Shortest idempotency TTL: a key must outlive its request's lease by a margin.
pub const IDEMPOTENCY_TTL_SECS_MIN: u64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    Full,
    Normal,
}

/// Settings with every default applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A server database's URL; `None` is the embedded SQLite store in `data_dir`.
    pub store_url: Option<String>,
    /// A Kafka URL; `None` is the embedded log.
    pub event_log_url: Option<String>,
    pub log_partitions: u32,
    pub log_namespace: String,
    pub roles: agora_exchange::distributed::Roles,
    /// An api-only process: the writer's process (`http://host:port`).
    pub writer_url: Option<String>,
    pub demo: bool,
    /// The bots' configuration, if bots run.
    pub bots: Option<agora_exchange::bots::BotConfig>,
    pub durability: DurabilitySetting,
    pub engine_shards: u32,
    pub batch_max: usize,
    pub admin_token: Option<String>,
    pub inflight_max: usize,
    pub connections_max: usize,
    pub ws_limits: crate::ws::WsLimits,
    pub socket_send_buffer_bytes: usize,
    pub log_json: bool,
    pub cache: agora_cache::Backend,
    pub cache_prefix: String,
    pub idempotency_ttl_ms: u64,
    /// The per-client rate limit, if any.
    pub rate_limit: Option<agora_cache::Rate>,
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<ServeArgs>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        let engine_shards = self.engine_shards.or(file.engine_shards).unwrap_or(1);
        let batch_max = self.batch_max.or(file.batch_max).unwrap_or(4_096);
        let inflight_max = self.inflight_max.or(file.inflight_max).unwrap_or(10_000);
        anyhow::ensure!(
            (1..=64).contains(&engine_shards),
            "engine-shards must be 1-64"
        );
        anyhow::ensure!(
            (1..=65_536).contains(&batch_max),
            "batch-max must be 1-65536"
        );
        let connections_max = self
            .connections_max
            .or(file.connections_max)
            .unwrap_or(10_000);
        anyhow::ensure!(inflight_max >= 1, "inflight-max must be at least 1");
        anyhow::ensure!(connections_max >= 1, "connections-max must be at least 1");
        let defaults = crate::ws::WsLimits::default();
        let ws_limits = crate::ws::WsLimits {
            connections_per_client_max: self
                .ws_connections_per_client
                .or(file.ws_connections_per_client)
                .unwrap_or(defaults.connections_per_client_max),
            send_buffer_batches: self
                .ws_send_buffer
                .or(file.ws_send_buffer)
                .unwrap_or(defaults.send_buffer_batches),
            subscriptions_max: self
                .ws_subscriptions_max
                .or(file.ws_subscriptions_max)
                .unwrap_or(defaults.subscriptions_max),
            message_bytes_max: defaults.message_bytes_max,
        };
        anyhow::ensure!(
            ws_limits.connections_per_client_max >= 1
                && (1..=1_000_000).contains(&ws_limits.send_buffer_batches)
                && (1..=1_024).contains(&ws_limits.subscriptions_max),
            "ws limits: connections per client >= 1, send buffer 1-1000000, subscriptions 1-1024"
        );
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid default"));
        let admin_token = self.admin_token.or(file.admin_token);
        anyhow::ensure!(
            admin_token
                .as_deref()
                .is_none_or(|t| t.len() >= ADMIN_TOKEN_LEN_MIN),
            "admin-token must be at least {ADMIN_TOKEN_LEN_MIN} characters"
        );
        // Open admin endpoints are a convenience on one's own machine, never on a network.
        anyhow::ensure!(
            listen.ip().is_loopback() || admin_token.is_some(),
            "refusing to listen on {listen} with open admin endpoints: set --admin-token \
             (AGORA_ADMIN_TOKEN) or listen on a loopback address"
        );
        let cache = agora_cache::Backend::parse(
            self.cache
                .as_deref()
                .or(file.cache.as_deref())
                .unwrap_or("memory"),
        )
        .context("cache")?;
        let cache_prefix = self
            .cache_prefix
            .or(file.cache_prefix)
            .unwrap_or_else(|| "agora".into());
        anyhow::ensure!(
            (1..=64).contains(&cache_prefix.len())
                && cache_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)),
            "cache-prefix must be 1-64 of A-Z, a-z, 0-9, '.', '_', '-', ':'"
        );
        let idempotency_ttl_secs = self
            .idempotency_ttl_secs
            .or(file.idempotency_ttl_secs)
            .unwrap_or(24 * 3_600);
        anyhow::ensure!(
            (IDEMPOTENCY_TTL_SECS_MIN..=agora_cache::TTL_MS_MAX / 1_000)
                .contains(&idempotency_ttl_secs),
            "idempotency-ttl-secs must be {IDEMPOTENCY_TTL_SECS_MIN} to {}",
            agora_cache::TTL_MS_MAX / 1_000
        );
        let rate_limit_burst = self.rate_limit_burst.or(file.rate_limit_burst);
        let rate_limit = match (self.rate_limit.or(file.rate_limit), rate_limit_burst) {
            (None, None) => None,
            (None, Some(_)) => anyhow::bail!("rate-limit-burst needs rate-limit"),
            (Some(per_s), burst) => {
                let burst = burst.unwrap_or(per_s);
                anyhow::ensure!(
                    (1..=1_000_000).contains(&burst),
                    "rate-limit-burst must be 1 to 1000000"
                );
                Some(
                    agora_cache::Rate::per_second(per_s, burst)
                        .map_err(|_| anyhow::anyhow!("rate-limit must be 1 to 1000000"))?,
                )
            }
        };
        let event_log_url = match self.event_log.or(file.event_log).as_deref() {
            None | Some("embedded") => None,
            Some(url) => {
                anyhow::ensure!(
                    url.starts_with("kafka://"),
                    "event-log must be embedded or kafka://host:port,…"
                );
                Some(url.to_string())
            }
        };
        let log_partitions = self
            .log_partitions
            .or(file.log_partitions)
            .unwrap_or(agora_exchange::distributed::PARTITIONS_DEFAULT);
        anyhow::ensure!(
            (1..=1024).contains(&log_partitions),
            "log-partitions must be 1 to 1024"
        );
        let log_namespace = self
            .log_namespace
            .or(file.log_namespace)
            .unwrap_or_else(|| agora_exchange::distributed::NAMESPACE_DEFAULT.into());
        anyhow::ensure!(
            (1..=64).contains(&log_namespace.len())
                && log_namespace
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b)),
            "log-namespace must be 1-64 of a-z, 0-9, -, _"
        );
        let roles = match self.roles.or(file.roles) {
            None => agora_exchange::distributed::Roles::ALL,
            Some(text) => agora_exchange::distributed::Roles::parse(&text)
                .map_err(|e| anyhow::anyhow!("roles: {e}"))?,
        };
        let writer_url = self.writer_url.or(file.writer_url);
        roles
            .check(event_log_url.is_some(), writer_url.is_some())
            .map_err(|e| anyhow::anyhow!("roles: {e}"))?;
        if let Some(url) = &writer_url {
            check_writer_url(url)?;
        }
        let store_url = match self.store.or(file.store).as_deref() {
            None | Some("sqlite") => None,
            Some(url) => {
                anyhow::ensure!(
                    ["postgres://", "postgresql://", "mysql://"]
                        .iter()
                        .any(|scheme| url.starts_with(scheme)),
                    "store must be sqlite, postgres://… or mysql://…"
                );
                Some(url.to_string())
            }
        };
        if roles.relay && roles.workers_only() {
            anyhow::ensure!(
                store_url.is_some(),
                "a relay process writes its leases in the writer's store: give --store \
                 postgres://… or mysql://… (SQLite is one process's file)"
            );
        }
        if roles.market_only() {
            anyhow::ensure!(
                store_url.is_some(),
                "a market process reads the writer's store: give --store postgres://… or \
                 mysql://… (SQLite is one process's file)"
            );
            let seeds = self.demo || file.demo || self.bots || file.bots;
            anyhow::ensure!(
                !seeds,
                "demo data and bots run in the writer's process, not a market process"
            );
        }
        if roles.api_only() {
            // Every API process must see the same committed state and the same idempotency
            // keys as the others.
            anyhow::ensure!(
                store_url.is_some(),
                "an api-only process reads the writer's store: give --store postgres://… or \
                 mysql://… (SQLite is one process's file)"
            );
            anyhow::ensure!(
                matches!(cache, agora_cache::Backend::Redis(_)),
                "an api-only process shares idempotency keys and rate limits with the others: \
                 give --cache redis://…"
            );
            let seeds = self.demo || file.demo || self.bots || file.bots;
            anyhow::ensure!(
                !seeds,
                "demo data and bots run in the writer's process, not an api-only one"
            );
        }
        Ok(Settings {
            listen,
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("agora-data")),
            store_url,
            event_log_url: event_log_url.clone(),
            log_partitions,
            log_namespace,
            roles,
            writer_url,
            demo: self.demo || file.demo,
            bots: {
                let on = (self.bots || file.bots || self.demo || file.demo)
                    && !(self.no_bots || file.no_bots);
                let defaults = agora_exchange::bots::BotConfig::default();
                let config = agora_exchange::bots::BotConfig {
                    orders_per_s: self
                        .bot_rate
                        .or(file.bot_rate)
                        .unwrap_or(defaults.orders_per_s),
                    taker_probability: self
                        .bot_taker_share
                        .or(file.bot_taker_share)
                        .unwrap_or(defaults.taker_probability),
                    volatility: self
                        .bot_volatility
                        .or(file.bot_volatility)
                        .unwrap_or(defaults.volatility),
                    ..defaults
                };
                anyhow::ensure!(
                    config.orders_per_s > 0.0 && config.orders_per_s <= 10_000.0,
                    "bot-rate must be above 0 and at most 10000"
                );
                anyhow::ensure!(
                    (0.0..=1.0).contains(&config.taker_probability),
                    "bot-taker-share must be between 0 and 1"
                );
                anyhow::ensure!(
                    (0.0..=0.1).contains(&config.volatility),
                    "bot-volatility must be between 0 and 0.1"
                );
                on.then_some(config)
            },
            durability: self
                .durability
                .or(file.durability)
                .unwrap_or(DurabilitySetting::Full),
            engine_shards,
            batch_max,
            admin_token,
            inflight_max,
            connections_max,
            ws_limits,
            socket_send_buffer_bytes: self
                .socket_send_buffer
                .or(file.socket_send_buffer)
                .unwrap_or(256 * 1024)
                .clamp(4096, 64 * 1024 * 1024),
            log_json: self.log_json || file.log_json,
            cache,
            cache_prefix,
            idempotency_ttl_ms: idempotency_ttl_secs * 1_000,
            rate_limit,
        })
    }
}

/// A writer URL is `http://host:port` (plain HTTP: the writer's process is on the
/// deployment's private network, like its database), without a path.
fn check_writer_url(url: &str) -> anyhow::Result<()> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| anyhow::anyhow!("writer-url must be http://host:port"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http")
            && uri.authority().is_some()
            && matches!(uri.path(), "" | "/")
            && uri.query().is_none(),
        "writer-url must be http://host:port"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn resolve(args: &[&str]) -> anyhow::Result<Settings> {
        Cli::try_parse_from(std::iter::once("agora").chain(args.iter().copied()))?
            .serve
            .resolve()
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let s = resolve(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.data_dir, PathBuf::from("agora-data"));
        assert_eq!(s.durability, DurabilitySetting::Full);
        assert_eq!((s.engine_shards, s.batch_max), (1, 4_096));
        assert!(!s.demo && s.admin_token.is_none() && s.bots.is_none());
        let rate = |args: &[&str]| resolve(args).unwrap().bots.map(|b| b.orders_per_s);
        assert_eq!(rate(&["--demo"]), Some(8.0));
        assert_eq!(rate(&["--demo", "--no-bots"]), None);
        assert_eq!(rate(&["--bots", "--bot-rate", "2.5"]), Some(2.5));
        let bots = resolve(&[
            "--bots",
            "--bot-taker-share",
            "0.6",
            "--bot-volatility",
            "0.002",
        ])
        .unwrap()
        .bots
        .unwrap();
        assert_eq!((bots.taker_probability, bots.volatility), (0.6, 0.002));
        assert!(resolve(&["--bots", "--bot-rate", "0"]).is_err());
        assert!(resolve(&["--bots", "--bot-taker-share", "1.5"]).is_err());
        assert!(resolve(&["--bots", "--bot-volatility", "-0.1"]).is_err());
    }

    #[test]
    fn the_cache_is_in_process_and_rates_are_unlimited_by_default() {
        let s = resolve(&[]).unwrap();
        assert_eq!(s.cache, agora_cache::Backend::Memory);
        assert_eq!(s.cache_prefix, "agora");
        assert_eq!(s.idempotency_ttl_ms, 86_400_000);
        assert_eq!(s.rate_limit, None);
        let s = resolve(&[
            "--cache",
            "redis://127.0.0.1:6379/3",
            "--cache-prefix",
            "venue-a",
            "--idempotency-ttl-secs",
            "3600",
            "--rate-limit",
            "50",
        ])
        .unwrap();
        assert_eq!(
            s.cache,
            agora_cache::Backend::Redis("redis://127.0.0.1:6379/3".into())
        );
        assert_eq!(
            (s.cache_prefix.as_str(), s.idempotency_ttl_ms),
            ("venue-a", 3_600_000)
        );
        // The burst is one second's worth unless given.
        assert_eq!(s.rate_limit, agora_cache::Rate::per_second(50, 50).ok());
        let burst = resolve(&["--rate-limit", "50", "--rate-limit-burst", "200"]).unwrap();
        assert_eq!(
            burst.rate_limit,
            agora_cache::Rate::per_second(50, 200).ok()
        );
    }

    #[test]
    fn bad_cache_and_rate_settings_are_refused() {
        for args in [
            &["--cache", "memcached://127.0.0.1"][..],
            &["--cache", "redis://127.0.0.1:notaport"],
            &["--cache-prefix", ""],
            &["--cache-prefix", "has space"],
            &["--idempotency-ttl-secs", "59"],
            &["--idempotency-ttl-secs", "2592001"],
            &["--rate-limit", "0"],
            &["--rate-limit", "1000001"],
            &["--rate-limit", "10", "--rate-limit-burst", "0"],
            &["--rate-limit-burst", "10"],
        ] {
            assert!(resolve(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn on_off_settings_take_the_usual_spellings_from_the_environment() {
        // One variable per case: tests in this module run in parallel, in one process.
        for (value, on) in [("true", true), ("1", true), ("yes", true), ("off", false)] {
            std::env::set_var("AGORA_LOG_JSON", value);
            let s = resolve(&[]).unwrap();
            std::env::remove_var("AGORA_LOG_JSON");
            assert_eq!(s.log_json, on, "AGORA_LOG_JSON={value}");
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agora.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\ndata-dir = \"/srv/agora\"\nengine-shards = 2\n\
             durability = \"normal\"\ndemo = true\ncache = \"redis://127.0.0.1/1\"\n\
             rate-limit = 100\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let s = resolve(&["--config", path, "--listen", "127.0.0.1:9100"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9100"); // flag wins
        assert_eq!(s.data_dir, PathBuf::from("/srv/agora")); // from the file
        assert_eq!(s.engine_shards, 2);
        assert_eq!(s.durability, DurabilitySetting::Normal);
        assert!(s.demo);
        assert_eq!(
            s.cache,
            agora_cache::Backend::Redis("redis://127.0.0.1/1".into())
        );
        assert_eq!(s.rate_limit, agora_cache::Rate::per_second(100, 100).ok());
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agora.toml");
        std::fs::write(&file, "listne = \"127.0.0.1:9000\"\n").unwrap();
        assert!(resolve(&["--config", file.to_str().unwrap()]).is_err()); // typo'd key
        assert!(resolve(&["--engine-shards", "0"]).is_err());
        assert!(resolve(&["--listen", "not-an-address"]).is_err());
        assert!(resolve(&["--durability", "sometimes"]).is_err());
        assert!(resolve(&["--config", "/nonexistent/agora.toml"]).is_err());
    }

    #[test]
    fn admin_endpoints_are_never_open_beyond_loopback() {
        let token = "0123456789abcdef";
        // Loopback, v4 or v6: open admin endpoints are allowed.
        assert!(resolve(&["--listen", "127.0.0.1:0"]).is_ok());
        assert!(resolve(&["--listen", "[::1]:0"]).is_ok());
        // Any other address needs a token.
        let refused = resolve(&["--listen", "0.0.0.0:8080"]).unwrap_err();
        assert!(refused.to_string().contains("admin-token"), "{refused}");
        assert!(resolve(&["--listen", "10.1.2.3:8080"]).is_err());
        assert!(resolve(&["--listen", "[::]:8080"]).is_err());
        assert!(resolve(&["--listen", "0.0.0.0:8080", "--admin-token", token]).is_ok());
        // A short token is refused anywhere.
        assert!(resolve(&["--admin-token", "short"]).is_err());
    }

    #[test]
    fn api_only_processes_need_the_writer_a_shared_store_and_redis() {
        let pg = "postgres://postgres@127.0.0.1/agora";
        let redis = "redis://127.0.0.1:6379/0";
        let writer = "http://10.0.0.5:8080";
        let api = |extra: &[&str]| {
            let mut args = vec!["--roles", "api", "--store", pg, "--cache", redis];
            args.extend_from_slice(extra);
            resolve(&args)
        };
        let s = api(&["--writer-url", writer]).unwrap();
        assert!(s.roles.api_only());
        assert_eq!(s.writer_url.as_deref(), Some(writer));
        assert!(api(&[]).is_err(), "no writer url");
        for url in [
            "https://10.0.0.5:8080",
            "http://10.0.0.5:8080/x",
            "10.0.0.5:8080",
            "http://",
        ] {
            assert!(api(&["--writer-url", url]).is_err(), "{url}");
        }
        assert!(
            api(&["--writer-url", writer, "--demo"]).is_err(),
            "demo runs with the writer"
        );
        let on = |args: &[&str]| resolve(args).map(|_| ());
        assert!(
            on(&["--roles", "api", "--writer-url", writer, "--cache", redis]).is_err(),
            "sqlite"
        );
        assert!(
            on(&["--roles", "api", "--writer-url", writer, "--store", pg]).is_err(),
            "memory cache"
        );
        assert!(
            on(&["--writer-url", writer]).is_err(),
            "only an api-only process has a writer url"
        );
    }

    #[test]
    fn market_processes_need_kafka_and_a_shared_store() {
        let pg = "postgres://postgres@127.0.0.1/agora";
        let kafka = "kafka://127.0.0.1:9092";
        let s = resolve(&["--roles", "market", "--store", pg, "--event-log", kafka]).unwrap();
        assert!(s.roles.market_only());
        let on = |args: &[&str]| resolve(args).map(|_| ());
        assert!(on(&["--roles", "market", "--store", pg]).is_err(), "no log");
        assert!(
            on(&["--roles", "market", "--event-log", kafka]).is_err(),
            "sqlite"
        );
        assert!(
            on(&[
                "--roles",
                "market",
                "--store",
                pg,
                "--event-log",
                kafka,
                "--demo"
            ])
            .is_err(),
            "demo runs with the writer"
        );
    }
}
