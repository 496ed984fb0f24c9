//! query-gateway: candles over gRPC, REST and WebSocket, and the live chart page.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use query_gateway::{config::Config, metrics::Metrics};
use wick_core::SystemClock;

/// Serves candles: gRPC `wick.v1.CandleService` (with health and reflection), REST
/// (`/api/v1/candles`, `/api/v1/instruments`, Binance-compatible `/api/v3/klines`,
/// `/api/openapi.json`), WebSocket `/ws`, and the live chart at `/`. Reads L1 (in process) ->
/// L2 (Redis) -> PostgreSQL/TimescaleDB, kept current from `candles-completed`.
///
/// Configuration: the YAML file of `--config` (optional), every key overridable as
/// `WICK__SECTION__KEY`, e.g. `WICK__HTTP__LISTEN=0.0.0.0:8080`, `WICK__GRPC__LISTEN=0.0.0.0:50051`,
/// `WICK__DATABASE__URL=postgres://postgres@db:5432/wick`,
/// `WICK__REDIS__URL=redis-cluster://r1:6379?node=r2:6379`, `WICK__L1__MAX_ENTRIES=10000`,
/// `WICK__L1__TTL=5m`, `WICK__AUTH__API_KEYS=key1,key2`, `WICK__LIMITS__PER_KEY_RATE=50`,
/// `WICK__LIMITS__PER_KEY_BURST=100`, `WICK__HTTP__CORS_ORIGINS=https://example.com`. Without any,
/// it works against the stack of `cargo xtask stack up`. Metrics and health on `ops.listen`
/// (default 127.0.0.1:9104).
#[derive(Parser, Debug)]
#[command(name = "query-gateway", version)]
struct Cli {
    /// YAML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let stop = wick_service::shutdown::signal();
    wick_service::init_telemetry();
    let cli = Cli::parse();
    let config: Config = wick_service::config::load(cli.config.as_deref())?;
    let metrics = Metrics::new();
    let service = wick_service::ops::Service::start(config.ops.listen, metrics.registry.clone(), stop, "closing connections").await?;
    let running = query_gateway::start(config, metrics, service.readiness.clone(), Arc::new(SystemClock), service.shutdown.clone()).await?;
    running.stopped().await;
    tracing::info!("query-gateway stopped");
    service.finish();
    Ok(())
}
