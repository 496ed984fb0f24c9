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
    let readiness = wick_service::ops::Readiness::default();
    let (trigger, shutdown) = wick_service::shutdown::channel();
    let ops_shutdown = shutdown.clone();
    let (ops_addr, ops) =
        wick_service::ops::serve(
            config.ops.listen,
            metrics.registry.clone(),
            readiness.clone(),
            async move { ops_shutdown.requested().await },
        )
        .await?;
    tracing::info!(%ops_addr, "operations endpoint up");
    tokio::spawn(async move {
        stop.await;
        tracing::info!("shutdown requested: committing the batch in hand");
        trigger.trigger();
    });
    let summary = persistence_writer::run(config, metrics, readiness, Arc::new(SystemClock), shutdown).await?;
    tracing::info!(?summary, "persistence-writer stopped");
    ops.abort();
    Ok(())
}
