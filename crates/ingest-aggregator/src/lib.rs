//! ingest-aggregator: the owned partitions of `market-events` -> the wick-core ring -> event-time
//! candles of every configured interval -> `candles-completed`, with nothing lost across crashes.
//!
//! - [`pipeline`]: fetch tasks, the ring publisher, shard threads, the output task and the
//!   checkpoint task, with backpressure from end to end.
//! - [`shard`]: the aggregation state machine of one shard (watermarks, revisions, duplicates,
//!   throttled updates, checkpoint state).
//! - [`dedup`]: trade ids seen, as ranges.
//!
//! Delivery: each owned partition is checkpointed in the database (`aggregator_checkpoints`): the
//! offset of the next record and the state of its instruments at that offset, stored only after
//! the output derived from the records before it was acknowledged by the broker. A restart
//! resumes from there: candles that can still change are rebuilt exactly (same content, same
//! versions), so consumers ignore what they have already seen.

pub mod config;
pub mod dedup;
pub mod metrics;
pub mod pipeline;
pub mod shard;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use wick_core::Clock;
use wick_service::ops::Readiness;
use wick_service::shutdown::Shutdown;
use wick_store::StoreError;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{Event, Fetcher, Input};
use crate::shard::{shard_of, Shard, ShardSettings};

/// At most this many id ranges are kept per instrument for duplicate detection (ids are forgotten
/// once too old to count, so only hostile ids reach it; a trade refused by it is dead-lettered as
/// `dedup_full`). A range takes about 40 bytes.
const MAX_ID_RANGES: usize = 1 << 20;

/// Runs the aggregator until `shutdown`; then drains the ring, flushes, checkpoints and returns.
pub async fn run(config: Config, metrics: Metrics, readiness: Readiness, clock: Arc<dyn Clock>, shutdown: Shutdown) -> Result<()> {
    let pool = wick_store::pool(&config.checkpoint.database_url, config.checkpoint.schema.as_deref(), 2)?;
    // The database may be down or not yet up (services start together): wait for it rather than
    // exit and be restarted in a loop.
    match until_database_answers("preparing the checkpoint database", &shutdown, || prepare_database(&config, &pool)).await {
        Some(prepared) => prepared?,
        None => return Ok(()),
    }
    let client = Arc::new(wick_kafka::connect(&config.kafka.brokers, config.kafka.request_deadline.get()).await?);
    let k = &config.kafka;
    let topics = [
        (&k.market_events_topic, k.market_events_partitions),
        (&k.candles_topic, k.candles_partitions),
        (&k.dead_letter_topic, k.dead_letter_partitions),
    ]
    .map(|(name, partitions)| wick_kafka::TopicSpec { name: name.clone(), partitions });
    wick_kafka::ensure_topics(&client, &k.brokers.join(","), &topics).await?;
    let owned = wick_kafka::owned_partitions(k.market_events_partitions, config.instance.index, config.instance.count)?;
    let Some(checkpoints) =
        until_database_answers("loading the checkpoints", &shutdown, || pipeline::load_checkpoints(&pool, &k.market_events_topic, &owned))
            .await
    else {
        return Ok(());
    };
    let checkpoints = checkpoints?;
    tracing::info!(
        partitions = ?owned,
        checkpoints = ?checkpoints.iter().map(|(p, (o, s))| (*p, *o, s.instruments.len())).collect::<Vec<_>>(),
        "ingest-aggregator starting"
    );

    let shard_count = config.ring.shards();
    let settings = ShardSettings {
        intervals: config.intervals(),
        allowed_lateness_us: micros(config.aggregation.allowed_lateness.get()),
        revision_window_us: micros(config.aggregation.revision_window.get()),
        update_throttle_us: micros(config.aggregation.update_throttle.get()),
        max_id_ranges: MAX_ID_RANGES,
        live_lag_us: micros(config.aggregation.live_lag.get()),
    };
    let mut shards: Vec<Shard> = (0..shard_count).map(|i| Shard::new(i, settings.clone())).collect();
    for (partition, (_, state)) in &checkpoints {
        for instrument in &state.instruments {
            let target = wick_core::Instrument::new(&instrument.instrument)
                .map(|i| shard_of(&i, shard_count))
                .with_context(|| format!("checkpoint of partition {partition}"))?;
            shards[target].restore(*partition, instrument).map_err(|e| anyhow::anyhow!("checkpoint of partition {partition}: {e}"))?;
        }
    }

    let (producer, consumers) =
        wick_core::ring::ring(config.ring.buffer_size, shard_count, config.wait_strategy(), Event::default).context("building the ring")?;
    let (output_tx, output_rx) = mpsc::channel(1024);
    let mut threads = Vec::new();
    for (shard, consumer) in shards.into_iter().zip(consumers) {
        let (tx, m) = (output_tx.clone(), metrics.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("wick-shard-{}", consumer.index()))
                .spawn(move || pipeline::run_shard(shard, consumer, tx, m))
                .context("starting a shard thread")?,
        );
    }
    drop(output_tx);
    let (input_tx, input_rx) = mpsc::channel::<Input>(64);
    let m = metrics.clone();
    threads.push(
        std::thread::Builder::new()
            .name("wick-ring-publisher".into())
            .spawn(move || pipeline::publish(input_rx, producer, shard_count, m))
            .context("starting the ring publisher")?,
    );

    let to_store = pipeline::Checkpoints::default();
    let checkpointer = tokio::spawn(pipeline::store_checkpoints(
        pool.clone(),
        k.market_events_topic.clone(),
        to_store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let closing = to_store.clone();
    let output =
        tokio::spawn(pipeline::output(client.clone(), config.clone(), output_rx, to_store, shard_count, metrics.clone(), shutdown.clone()));

    let wall = Arc::new(pipeline::SteadyWall::new(clock));
    let statuses: Vec<(i32, Arc<pipeline::PartitionStatus>)> = owned.iter().map(|&p| (p, Arc::default())).collect();
    let ticker =
        tokio::spawn(pipeline::tick(config.aggregation.tick.get(), statuses.clone(), wall.clone(), input_tx.clone(), shutdown.clone()));
    let mut fetchers = Vec::new();
    for (partition, status) in statuses {
        let fetcher = Fetcher {
            client: client.clone(),
            config: config.clone(),
            partition,
            metrics: metrics.clone(),
            wall: wall.clone(),
            status,
            readiness: readiness.clone(),
        };
        let start = checkpoints.get(&partition).map(|(offset, _)| *offset);
        fetchers.push(tokio::spawn(fetcher.run(start, input_tx.clone(), shutdown.clone())));
    }
    drop(input_tx);
    readiness.set(true);

    let mut failure: Option<anyhow::Error> = None;
    for f in fetchers {
        match f.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e.context("a partition fetcher failed"))),
            Err(e) => failure = failure.or(Some(anyhow::anyhow!("a partition fetcher panicked: {e}"))),
        }
    }
    // The ticker holds the last sender of the ring publisher's channel.
    ticker.abort();
    let _ = ticker.await;
    // The fetchers are done: the publisher closes the ring, the shards drain it, the output task
    // produces the rest and hands over the last checkpoints.
    let result = output.await;
    closing.close();
    let result = result.context("the output task panicked")?;
    let stored = checkpointer.await.context("the checkpoint task panicked")?;
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    readiness.set(false);
    if let Some(e) = failure {
        return Err(e);
    }
    result?;
    stored?;
    Ok(())
}

/// Runs `attempt` until it succeeds, retrying with back-off (100 ms doubling to 5 s) while it fails
/// because the database cannot be reached; other failures are returned. `None` when shutdown came
/// first.
async fn until_database_answers<T, F, Fut>(what: &str, shutdown: &Shutdown, mut attempt: F) -> Option<Result<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = wick_service::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(failures, "{what}: the database answers");
                }
                return Some(Ok(v));
            }
            Err(e) if unreachable_database(&e) => {
                failures += 1;
                tracing::warn!(failures, error = format!("{e:#}"), "{what}: the database is unreachable; retrying");
            }
            Err(e) => return Some(Err(e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay()) => {}
            _ = shutdown.requested() => return None,
        }
    }
}

/// The failure is the database being out of reach (no connection, a server shutting down or
/// starting up), not a refusal of what was asked: worth waiting for.
fn unreachable_database(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if cause.downcast_ref::<deadpool_postgres::PoolError>().is_some() {
            return true;
        }
        if let Some(StoreError::Pool(_)) = cause.downcast_ref::<StoreError>() {
            return true;
        }
        match cause.downcast_ref::<tokio_postgres::Error>() {
            // SQLSTATE classes 08 (connection exception) and 57 (operator intervention: admin
            // shutdown, cannot connect now); no server error at all means the connection failed.
            Some(pg) => pg.as_db_error().is_none_or(|db| matches!(&db.code().code()[..2], "08" | "57")),
            None => false,
        }
    })
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Creates the database if missing and applies the bookkeeping migrations (the checkpoint table).
async fn prepare_database(config: &Config, pool: &Pool) -> Result<()> {
    let pg: tokio_postgres::Config = config.checkpoint.database_url.parse().context("checkpoint.database_url")?;
    wick_store::ensure_database(&pg).await.context("creating the checkpoint database")?;
    let mut db = pool.get().await.context("connecting to the checkpoint database")?;
    wick_store::migrate_bookkeeping(&mut db).await.context("applying the migrations")?;
    Ok(())
}
