//! ingest-aggregator: owned partitions of `market-events` into candles on `candles-completed`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use ingest_aggregator::{config::Config, metrics::Metrics};
use wick_core::SystemClock;

/// Consumes the partitions `p mod count == index` of `market-events` through a pre-allocated ring
/// into event-time candles of every configured interval, published to `candles-completed`;
/// checkpoints each partition in the database so that a crash or restart loses no candle.
///
/// Configuration: the YAML file of `--config` (optional), every key overridable as
/// `WICK__SECTION__KEY`, e.g. `WICK__INSTANCE__INDEX=1`, `WICK__INSTANCE__COUNT=2`,
/// `WICK__RING__WAIT_STRATEGY=blocking` (default `phased`), `WICK__RING__NUM_CONSUMERS=4` (default 0:
/// one shard per core),
/// `WICK__AGGREGATION__ALLOWED_LATENESS=1s`, `WICK__AGGREGATION__REVISION_WINDOW=10m`,
/// `WICK__CONSUMER__AUTO_OFFSET_RESET=earliest`,
/// `WICK__CHECKPOINT__DATABASE_URL=postgres://postgres@db:5432/wick`,
/// `WICK__OPS__LISTEN=0.0.0.0:9102`. Without any, it works against the stack of
/// `cargo xtask stack up`. Metrics and health are served on `ops.listen` (default
/// 127.0.0.1:9102): `/metrics`, `/health/livez`, `/health/readyz`.
#[derive(Parser, Debug)]
#[command(name = "ingest-aggregator", version)]
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
    let mut config: Config = wick_service::config::load(cli.config.as_deref())?;
    // 0 shards means one per core; `run` takes the number.
    config.ring.num_consumers = config.ring.shards();
    let metrics = Metrics::new();
    let service = wick_service::ops::Service::start(
        config.ops.listen,
        metrics.registry.clone(),
        stop,
        "draining the ring, flushing and checkpointing",
    )
    .await?;
    ingest_aggregator::run(config, metrics, service.readiness.clone(), Arc::new(SystemClock), service.shutdown.clone()).await?;
    tracing::info!("ingest-aggregator stopped");
    service.finish();
    Ok(())
}
