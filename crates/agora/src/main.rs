//! The `agora` command: a thin shell over the library crates.

use agora_server::settings::ServeArgs;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "Bursty, high-contention transactions: an exchange on a double-entry core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which store a maintenance command works on (as `agora serve` takes them).
#[derive(clap::Args)]
struct StoreArgs {
    #[arg(long, env = "AGORA_DATA_DIR", default_value = "agora-data")]
    data_dir: PathBuf,
    /// `sqlite` (in the data directory), `postgres://…` or `mysql://…`.
    #[arg(
        long,
        env = "AGORA_STORE",
        default_value = "sqlite",
        hide_env_values = true
    )]
    store: String,
}

impl StoreArgs {
    fn config(&self) -> anyhow::Result<agora_exchange::Config> {
        std::fs::create_dir_all(&self.data_dir)?;
        let mut config = agora_exchange::Config::new(self.data_dir.clone());
        config.store_url = (self.store != "sqlite").then(|| self.store.clone());
        Ok(config)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run agora: every role in one process, on the store `--store` names.
    Serve(Box<ServeArgs>),
    /// Create or upgrade the store's schema, then exit.
    Migrate(StoreArgs),
    /// Check the ledger and order invariants of a stopped store; exits 1 on any problem.
    Reconcile(StoreArgs),
    /// Drive a running agora over HTTP with many concurrent clients and report throughput
    /// and latency percentiles.
    Bench(agora_bench::BenchArgs),
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGORA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A panic on the writer, an engine, the market or the settlement feed thread means the
/// in-memory state can no longer be trusted: stop the whole process (fail-stop) and let
/// recovery rebuild from the store.
fn abort_on_core_thread_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let name = std::thread::current().name().unwrap_or("").to_string();
        if ["writer", "market", "settlement-feed"].contains(&name.as_str())
            || name.starts_with("engine-")
        {
            std::process::abort();
        }
    }));
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = args.resolve()?;
            init_logging(settings.log_json);
            abort_on_core_thread_panic();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(agora_server::serve(settings))
        }
        Command::Migrate(args) => {
            init_logging(false);
            let config = args.config()?;
            let mut open = agora_exchange::open_store(&config)?;
            agora_store::schema::migrate(&mut *open.store)?;
            println!("the store is up to date");
            Ok(())
        }
        Command::Reconcile(args) => {
            init_logging(false);
            let report = agora_exchange::reconcile::offline(&args.config()?)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Bench(args) => {
            init_logging(false);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(agora_bench::run(args))
        }
    }
}
