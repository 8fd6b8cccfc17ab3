//! agora's HTTP face and process lifecycle: builds the router, starts the exchange, seeds
//! demo data, and shuts down cleanly on SIGTERM (stop accepting, let in-flight requests
//! finish, let the engine and settlement drain, then exit).

pub mod api;
pub mod demo;
pub mod idempotency;
pub mod listener;
pub mod market_api;
pub mod openapi;
pub mod problem;
pub mod rate_limit;
pub mod settings;
pub mod writer_link;
pub mod ws;

use agora_exchange::{Config, Exchange, ProcessKind};
use agora_store::sqlite::Durability;
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use problem::Problem;
use settings::{DurabilitySetting, Settings};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted; orders are a few hundred bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// A request still unanswered after this is cut off (slow clients, stuck reads).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AppState {
    pub exchange: Exchange,
    pub admin_token: Option<Arc<str>>,
    pub hub: Arc<ws::Hub>,
    /// Idempotency keys and rate-limit state (`--cache`).
    pub cache: Arc<dyn agora_cache::Cache>,
    /// How long an idempotent answer is kept.
    pub idempotency_ttl_ms: u64,
    /// The per-client limit of `/api/v1`, if any.
    pub rate_limit: Option<agora_cache::Rate>,
    /// An api-only process: the writer's process, where commands and what only it holds in
    /// memory are sent.
    pub writer: Option<Arc<writer_link::WriterClient>>,
}

pub fn router(state: AppState, inflight_max: usize) -> Router {
    let mut api = openapi::api_router(&state);
    let websockets = if state.exchange.serves_websockets() {
        Router::new().route("/ws", get(ws::ws_handler))
    } else {
        Router::new().route("/ws", get(writer_link::no_websockets))
    };
    let process_routes = match (&state.writer, state.exchange.kind()) {
        // An api-only process: what only the writer's process holds goes there.
        (Some(writer), _) => {
            let layer = axum::middleware::from_fn_with_state(writer.clone(), writer_link::forward);
            api = api.layer(layer);
            websockets
        }
        // A market process: market data only.
        (None, ProcessKind::Market) => {
            api = api.layer(axum::middleware::from_fn(market_api::market_process_only));
            websockets
        }
        (None, _) => websockets.route(
            writer_link::REQUESTS_PATH,
            axum::routing::post(writer_link::take_command),
        ),
    };
    // Not even a pass-through layer when off: the order path pays nothing for it.
    if let Some(rate) = state.rate_limit {
        let layer = axum::middleware::from_fn_with_state((state.clone(), rate), rate_limit::limit);
        api = api.layer(layer);
    }
    Router::new()
        .route("/health", get(api::health))
        .merge(process_routes)
        .merge(api)
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn(deadline))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(inflight_max))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            use axum::response::IntoResponse;
            tracing::error!("handler panicked");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
            )
            .into_response()
        }))
        .with_state(state)
}

/// Cuts off a request still unanswered after `REQUEST_TIMEOUT`, with a problem like every
/// other error.
async fn deadline(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
        )
        .into_response(),
    }
}

pub fn exchange_config(settings: &Settings) -> Config {
    let mut config = Config::new(settings.data_dir.clone());
    config.durability = match settings.durability {
        DurabilitySetting::Full => Durability::Full,
        DurabilitySetting::Normal => Durability::Normal,
    };
    config.engine_shards = settings.engine_shards;
    config.store_url = settings.store_url.clone();
    config.event_log_url = settings.event_log_url.clone();
    config.log_partitions = settings.log_partitions;
    config.log_namespace = settings.log_namespace.clone();
    config.roles = settings.roles;
    config.batch_max = settings.batch_max;
    config
}

/// Runs agora until SIGTERM or Ctrl-C.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    if settings.roles.workers_only() {
        return serve_workers(&settings).await;
    }
    // Bind first: a busy port is refused before the store is opened or created.
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    // Then the cache: an unreachable Redis is refused before the store is touched too.
    let options = agora_cache::Options {
        prefix: settings.cache_prefix.clone(),
        ..agora_cache::Options::default()
    };
    let cache = agora_cache::open(&settings.cache, &options)
        .await
        .with_context(|| format!("opening the cache {}", settings.cache))?;
    let config = exchange_config(&settings);
    let hub = Arc::new(ws::Hub::new(settings.ws_limits, config.clock.clone()));
    let (exchange, writer) = match &settings.writer_url {
        None if settings.roles.market_only() => {
            let observer: Arc<dyn agora_exchange::market::CommitObserver> = hub.clone();
            let exchange = tokio::task::spawn_blocking(move || {
                Exchange::start_market(&config, Some(observer))
            })
            .await??;
            (exchange, None)
        }
        None => {
            let observer: Arc<dyn agora_exchange::market::CommitObserver> = hub.clone();
            (Exchange::start_observed(config, Some(observer))?, None)
        }
        Some(url) => {
            let writer = Arc::new(writer_link::WriterClient::new(
                url,
                settings.admin_token.as_deref(),
            )?);
            let port: Arc<dyn agora_exchange::WriterPort> = writer.clone();
            let exchange =
                tokio::task::spawn_blocking(move || Exchange::connect(&config, port)).await??;
            (exchange, Some(writer))
        }
    };
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find a port chosen with `--listen ...:0`.
    println!("agora listening on http://{addr}");
    tracing::info!(%addr, data_dir = %settings.data_dir.display(), cache = %settings.cache, "listening");
    // Demo data, then bots, once the exchange is ready; the bots stop when this is dropped.
    let bots: Arc<std::sync::Mutex<Option<agora_exchange::bots::Bots>>> = Arc::default();
    if settings.demo || settings.bots.is_some() {
        let (exchange, bots, settings) = (exchange.clone(), bots.clone(), settings.clone());
        tokio::spawn(async move {
            while !exchange.status().ready {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if settings.demo {
                if let Err(e) = demo::seed(&exchange).await {
                    tracing::error!(error = %e, "demo seeding failed");
                }
            }
            if let Some(config) = settings.bots {
                match agora_exchange::bots::start(&exchange, config).await {
                    Ok(b) => *bots.lock().expect("lock") = Some(b),
                    Err(e) => tracing::error!(error = %e, "bots did not start"),
                }
            }
        });
    }
    let state = AppState {
        exchange: exchange.clone(),
        admin_token: settings.admin_token.as_deref().map(Arc::from),
        hub,
        cache,
        idempotency_ttl_ms: settings.idempotency_ttl_ms,
        rate_limit: settings.rate_limit,
        writer,
    };
    let listener = listener::LimitedListener::new(
        listener,
        settings.connections_max,
        settings.socket_send_buffer_bytes,
    );
    let app = router(state, settings.inflight_max)
        .into_make_service_with_connect_info::<listener::PeerAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    bots.lock().expect("lock").take(); // no new bot orders while draining
    tracing::info!("http stopped; draining the exchange");
    exchange.shutdown().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// A worker process (`--roles engine`, `relay` or both): no HTTP, just its members until
/// SIGTERM.
async fn serve_workers(settings: &Settings) -> anyhow::Result<()> {
    let config = exchange_config(settings);
    let workers =
        tokio::task::spawn_blocking(move || agora_exchange::distributed::start_workers(&config))
            .await??;
    let roles: Vec<&str> = [
        (settings.roles.relay, "relay"),
        (settings.roles.engine, "engine"),
    ]
    .into_iter()
    .filter_map(|(on, role)| on.then_some(role))
    .collect();
    // Scripts wait for this line ("agora engine running", "agora relay,engine running").
    println!("agora {} running", roles.join(","));
    tracing::info!(roles = %roles.join(","), "worker process running");
    shutdown_signal().await;
    tokio::task::spawn_blocking(move || workers.stop()).await?;
    tracing::info!("workers stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
