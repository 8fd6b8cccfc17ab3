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
    /// Seed demo assets, symbols, funded users and a starting book if the store is empty.
    #[arg(long, env = "AGORA_DEMO")]
    #[serde(default)]
    pub demo: bool,
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
    /// If set, admin endpoints require `X-Admin-Token` with this value.
    #[arg(long, env = "AGORA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// HTTP requests served at once at most; more wait their turn [default: 10000].
    #[arg(long, env = "AGORA_INFLIGHT_MAX")]
    pub inflight_max: Option<usize>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "AGORA_LOG_JSON")]
    #[serde(default)]
    pub log_json: bool,
}

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
    pub demo: bool,
    pub durability: DurabilitySetting,
    pub engine_shards: u32,
    pub batch_max: usize,
    pub admin_token: Option<String>,
    pub inflight_max: usize,
    pub log_json: bool,
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
        anyhow::ensure!(inflight_max >= 1, "inflight-max must be at least 1");
        Ok(Settings {
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid default")),
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("agora-data")),
            demo: self.demo || file.demo,
            durability: self
                .durability
                .or(file.durability)
                .unwrap_or(DurabilitySetting::Full),
            engine_shards,
            batch_max,
            admin_token: self.admin_token.or(file.admin_token),
            inflight_max,
            log_json: self.log_json || file.log_json,
        })
    }
}
