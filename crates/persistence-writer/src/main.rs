//! persistence-writer: candles from `candles-completed` into the database, then the L2 cache.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use persistence_writer::{config::Config, metrics::Metrics};
use wick_core::SystemClock;

/// Writes the candle events of its partitions of `candles-completed` to TimescaleDB (or plain
/// PostgreSQL where the extension is absent) with exactly-once effect, then to the Redis L2 cache.
///
/// Configuration: the YAML file of `--config` (optional), every key overridable as
/// `WICK__SECTION__KEY`, e.g. `WICK__DATABASE__URL=postgres://postgres@db:5432/wick`,
/// `WICK__INSTANCE__INDEX=1`, `WICK__INSTANCE__COUNT=2`, `WICK__BATCH__MAX_CANDLES=100`,
/// `WICK__BATCH__MAX_DELAY=100ms`, `WICK__REDIS__URL=redis-cluster://r1:6379?node=r2:6379`,
/// `WICK__REDIS__TTL=1h`, `WICK__OPS__LISTEN=0.0.0.0:9103`. Without any, it works against the
/// stack of `cargo xtask stack up`. Metrics and health are served on `ops.listen` (default
/// 127.0.0.1:9103): `/metrics`, `/health/livez`, `/health/readyz`.
#[derive(Parser, Debug)]
#[command(name = "persistence-writer", version)]
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
    let service =
        wick_service::ops::Service::start(config.ops.listen, metrics.registry.clone(), stop, "committing the batch in hand").await?;
    let summary =
        persistence_writer::run(config, metrics, service.readiness.clone(), Arc::new(SystemClock), service.shutdown.clone()).await?;
    tracing::info!(?summary, "persistence-writer stopped");
    service.finish();
    Ok(())
}
