//! persistence-writer: reads the candle events of its partitions of `candles-completed`, writes
//! them to TimescaleDB or PostgreSQL with their offsets in the same transaction (so a crash at any
//! point neither loses nor doubles a candle: replays only re-apply versions the database already
//! has, which the version guard ignores), then fills the Redis L2 cache.
//!
//! Tasks: one reader per owned partition (fetch, decode, dead-letter what is not a candle batch)
//! -> a bounded channel (backpressure: a slow database slows the readers) -> the batcher, which
//! writes a batch when it holds `max_candles` candles or its oldest waited `max_delay` -> the cache
//! follower ([`cache`]), which never holds the database up.

pub mod cache;
pub mod config;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use deadpool_postgres::Pool;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use tokio::sync::mpsc;
use wick_core::{Candle, Clock, Instrument, Interval, Timestamp};
use wick_service::backoff::Backoff;
use wick_service::ops::Readiness;
use wick_service::shutdown::Shutdown;
use wick_store::{StorageMode, TimescaleSettings};

use crate::cache::CacheFeed;
use crate::config::Config;
use crate::metrics::Metrics;

/// What a run did, for the log line at exit and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub candles: u64,
    pub rows_written: u64,
    pub transactions: u64,
    pub dead_letters: u64,
}

/// Ready when both the broker and the database answer.
#[derive(Debug)]
struct Health {
    broker: AtomicBool,
    db: AtomicBool,
    readiness: Readiness,
    metrics: Metrics,
}

impl Health {
    fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::SeqCst);
        self.update();
    }
    fn set_db(&self, up: bool) {
        self.db.store(up, Ordering::SeqCst);
        self.metrics.db_up.set(i64::from(up));
        self.update();
    }
    fn update(&self) {
        self.readiness.set(self.broker.load(Ordering::SeqCst) && self.db.load(Ordering::SeqCst));
    }
}

/// Per-partition positions, for the lag gauge.
#[derive(Debug, Default)]
struct Position {
    high_watermark: AtomicI64,
    committed: AtomicI64,
}

/// Records decoded from one fetch of one partition.
#[derive(Debug)]
struct Fetched {
    partition: i32,
    next_offset: i64,
    candles: Vec<Candle>,
}

/// Runs the writer until `shutdown`; then commits the batch in hand and returns.
pub async fn run(config: Config, metrics: Metrics, readiness: Readiness, clock: Arc<dyn Clock>, shutdown: Shutdown) -> Result<Summary> {
    let health = Arc::new(Health { broker: AtomicBool::new(false), db: AtomicBool::new(false), readiness, metrics: metrics.clone() });
    let pool = wick_store::pool(&config.database.url, config.database.schema.as_deref(), config.database.pool_size)?;
    let Some(mode) = migrate_with_retries(&config, &pool, &health, &shutdown).await? else {
        return Ok(Summary::default());
    };
    if mode == StorageMode::Plain {
        create_partitions_ahead(&pool, clock.now(), config.database.partitions_ahead).await?;
    }

    let client = Arc::new(wick_kafka::connect(&config.kafka.brokers, config.kafka.request_deadline.get()).await?);
    let topics = [&config.kafka.candles_topic, &config.kafka.dead_letter_topic]
        .map(|name| wick_kafka::TopicSpec { name: name.clone(), partitions: config.kafka.candles_partitions });
    wick_kafka::ensure_topics(&client, &config.kafka.brokers.join(","), &topics).await?;
    health.set_broker(true);
    let owned = wick_kafka::owned_partitions(config.kafka.candles_partitions, config.instance.index, config.instance.count)?;
    let committed: HashMap<i32, i64> = {
        let db = pool.get().await.context("database connection for the stored offsets")?;
        wick_store::load_resume_offsets(&db, &config.kafka.candles_topic, config.redis.enabled).await?.into_iter().collect()
    };
    tracing::info!(partitions = ?owned, stored_offsets = ?committed, mode = mode.as_str(), "persistence-writer starting");

    let positions: Arc<BTreeMap<i32, Position>> = Arc::new(owned.iter().map(|p| (*p, Position::default())).collect());
    let (tx, rx) = mpsc::channel::<Fetched>(64);
    let mut readers = Vec::new();
    for &partition in &owned {
        let reader = Reader {
            client: client.clone(),
            config: config.clone(),
            partition,
            metrics: metrics.clone(),
            health: health.clone(),
            positions: positions.clone(),
        };
        let start = committed.get(&partition).copied();
        let tx = tx.clone();
        let shutdown = shutdown.clone();
        readers.push(tokio::spawn(async move { reader.run(start, tx, shutdown).await }));
    }
    drop(tx);

    let feed = CacheFeed::new(config.redis.max_pending, &config.redis.key_prefix);
    let follower = if config.redis.enabled {
        let cache = wick_cache::L2Cache::connect(&wick_cache::CacheSettings {
            url: config.redis.url.clone(),
            prefix: config.redis.key_prefix.clone(),
            ttl: config.redis.ttl.get(),
            command_timeout: config.redis.command_timeout.get(),
        })?;
        Some(tokio::spawn(cache::follow(cache, feed.clone(), pool.clone(), config.kafka.candles_topic.clone(), metrics.clone())))
    } else {
        None
    };

    let batcher = Batcher { config: &config, pool: &pool, mode, metrics: &metrics, health: &health, positions: &positions, feed: &feed };
    let written = batcher.run(rx, clock, &shutdown).await;
    feed.close();
    let mut dead_letters = 0;
    for reader in readers {
        match reader.await {
            Ok(Ok(n)) => dead_letters += n,
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "partition reader failed"),
            Err(e) => tracing::error!(error = %e, "partition reader panicked"),
        }
    }
    if let Some(follower) = follower {
        let _ = follower.await;
    }
    let mut summary = written?;
    summary.dead_letters = dead_letters;
    health.readiness.set(false);
    Ok(summary)
}

/// Creates the database if missing and applies the schema, retrying while the database is
/// unreachable (not when TimescaleDB is installed but not preloaded: that needs the operator);
/// `None` when shutdown came first.
async fn migrate_with_retries(config: &Config, pool: &Pool, health: &Health, shutdown: &Shutdown) -> Result<Option<StorageMode>> {
    let settings = TimescaleSettings {
        chunk_interval: config.database.chunk_interval.clone(),
        compress_after: config.database.compress_after.clone(),
        retention: config.database.retention.clone(),
    };
    let pg: tokio_postgres::Config = config.database.url.parse().context("database.url")?;
    let mut backoff = backoff(config);
    loop {
        let attempt = async {
            wick_store::ensure_database(&pg).await?;
            let mut db = pool.get().await.context("connecting to the database")?;
            let mode = wick_store::migrate(&mut db, &settings).await?;
            anyhow::Ok(mode)
        };
        match attempt.await {
            Ok(mode) => {
                health.set_db(true);
                return Ok(Some(mode));
            }
            // A server that ends the connection on CREATE EXTENSION would do it on every retry.
            Err(e) if matches!(e.downcast_ref(), Some(wick_store::StoreError::TimescaleNotPreloaded(_))) => return Err(e),
            Err(e) => {
                health.set_db(false);
                tracing::warn!(error = format!("{e:#}"), "database not ready for migrations; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay()) => {}
            _ = shutdown.requested() => return Ok(None),
        }
    }
}

/// Monthly partitions from the current month to `ahead` months later.
async fn create_partitions_ahead(pool: &Pool, now: Timestamp, ahead: u32) -> Result<()> {
    let (mut y, mut m, _) = wick_core::time::civil_from_days(now.as_micros().div_euclid(wick_core::time::MICROS_PER_DAY));
    let mut months = BTreeSet::new();
    for _ in 0..=ahead {
        months.insert((y, m));
        (y, m) = wick_store::next_month(y, m);
    }
    let db = pool.get().await.context("database connection for partitions")?;
    wick_store::ensure_partitions(&**db, &months).await?;
    Ok(())
}

/// Retry delays between the configured bounds.
fn backoff(config: &Config) -> Backoff {
    Backoff::new(config.database.min_backoff.get(), config.database.max_backoff.get())
}

/// Reads one partition.
struct Reader {
    client: Arc<Client>,
    config: Config,
    partition: i32,
    metrics: Metrics,
    health: Arc<Health>,
    positions: Arc<BTreeMap<i32, Position>>,
}

impl Reader {
    /// Reads from `start` (the committed offset; the earliest one when nothing was committed)
    /// until shutdown. Returns the dead letters written.
    async fn run(self, start: Option<i64>, tx: mpsc::Sender<Fetched>, shutdown: Shutdown) -> Result<u64> {
        let topic = &self.config.kafka.candles_topic;
        let source = self
            .client
            .partition_client(topic.clone(), self.partition, UnknownTopicHandling::Retry)
            .await
            .with_context(|| format!("{topic}/{}", self.partition))?;
        let dlq = self
            .client
            .partition_client(self.config.kafka.dead_letter_topic.clone(), self.partition, UnknownTopicHandling::Retry)
            .await
            .with_context(|| format!("dead-letter topic {}", self.config.kafka.dead_letter_topic))?;
        let mut offset = match start {
            Some(o) => o,
            None => {
                source.get_offset(OffsetAt::Earliest).await.with_context(|| format!("earliest offset of {topic}/{}", self.partition))?
            }
        };
        let position = &self.positions[&self.partition];
        position.committed.store(offset, Ordering::Relaxed);
        let max_wait = i32::try_from(self.config.kafka.fetch_max_wait.get().as_millis()).unwrap_or(i32::MAX);
        let mut backoff = backoff(&self.config);
        let mut dead_letters = 0;
        loop {
            let fetched = tokio::select! {
                r = source.fetch_records(offset, 1..self.config.kafka.fetch_max_bytes, max_wait) => r,
                _ = shutdown.requested() => return Ok(dead_letters),
            };
            let (records, high_watermark) = match fetched {
                Ok(f) => f,
                Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }) => {
                    let earliest = source.get_offset(OffsetAt::Earliest).await.context("earliest offset")?;
                    tracing::error!(
                        partition = self.partition,
                        offset,
                        earliest,
                        "offset out of range: records were deleted before they were written; resuming at the earliest"
                    );
                    offset = earliest;
                    continue;
                }
                Err(e) => {
                    self.health.set_broker(false);
                    tracing::warn!(partition = self.partition, error = %e, "fetch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.delay()) => {}
                        _ = shutdown.requested() => return Ok(dead_letters),
                    }
                    continue;
                }
            };
            self.health.set_broker(true);
            backoff.reset();
            position.high_watermark.store(high_watermark, Ordering::Relaxed);
            let mut candles = Vec::new();
            let mut advanced = false;
            for r in records {
                if r.offset < offset {
                    continue;
                }
                let raw = r.record.value.unwrap_or_default();
                let content_type = r.record.headers.get(wick_wire::CONTENT_TYPE_HEADER).map(Vec::as_slice);
                match wick_wire::decode_candle_record(content_type, &raw) {
                    Ok(parts) => {
                        for part in parts {
                            match part {
                                Ok((_, events)) => candles.extend(events.into_iter().map(|(_, c)| c)),
                                // One instrument's part is refused alone; the others are stored.
                                Err(refused) => {
                                    self.dead_letter(&dlq, refused.value, &refused.error.to_string(), r.offset, &shutdown).await?;
                                    dead_letters += 1;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.dead_letter(&dlq, raw, &e.to_string(), r.offset, &shutdown).await?;
                        dead_letters += 1;
                    }
                }
                offset = r.offset + 1;
                advanced = true;
                // Hand over in pieces, so the batcher can cut batches near their size limit.
                if candles.len() >= self.config.batch.max_candles {
                    self.metrics.candles_received.inc_by(candles.len() as u64);
                    if tx
                        .send(Fetched { partition: self.partition, next_offset: offset, candles: std::mem::take(&mut candles) })
                        .await
                        .is_err()
                    {
                        return Ok(dead_letters);
                    }
                    advanced = false;
                }
            }
            if advanced {
                self.metrics.candles_received.inc_by(candles.len() as u64);
                if tx.send(Fetched { partition: self.partition, next_offset: offset, candles }).await.is_err() {
                    return Ok(dead_letters);
                }
            }
            let lag = wick_kafka::lag(high_watermark, position.committed.load(Ordering::Relaxed));
            self.metrics.lag.with_label_values(&[&self.partition.to_string()]).set(lag);
        }
    }

    /// Writes a dead letter, retrying until the broker takes it: a dead letter is data too.
    async fn dead_letter(&self, dlq: &PartitionClient, raw: Vec<u8>, reason: &str, offset: i64, shutdown: &Shutdown) -> Result<()> {
        tracing::warn!(partition = self.partition, offset, reason, "record is not a candle batch: dead-lettered");
        let mut backoff = backoff(&self.config);
        loop {
            let record = wick_kafka::dead_letter_record(raw.clone(), reason, &self.config.kafka.candles_topic, self.partition, offset);
            match dlq.produce(vec![record], Compression::NoCompression).await {
                Ok(_) => {
                    self.metrics.dead_letters.with_label_values(&["malformed"]).inc();
                    return Ok(());
                }
                Err(e) if shutdown.is_requested() => bail!("writing a dead letter at shutdown: {e}"),
                Err(e) => {
                    tracing::warn!(error = %e, "writing a dead letter failed; retrying");
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
        }
    }
}

type CandleKey = (Instrument, Interval, Timestamp);

/// The batch in hand: the newest version of each candle, and the next offset of each partition.
#[derive(Default)]
struct Batch {
    candles: HashMap<CandleKey, Candle>,
    offsets: BTreeMap<i32, i64>,
    since: Option<Instant>,
}

impl Batch {
    fn add(&mut self, f: Fetched) {
        self.since.get_or_insert_with(Instant::now);
        for c in f.candles {
            let key = (c.instrument().clone(), c.interval(), c.open_time());
            match self.candles.get(&key) {
                Some(held) if held.version() >= c.version() => {}
                _ => {
                    self.candles.insert(key, c);
                }
            }
        }
        let next = self.offsets.entry(f.partition).or_insert(f.next_offset);
        *next = (*next).max(f.next_offset);
    }

    fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

struct Batcher<'a> {
    config: &'a Config,
    pool: &'a Pool,
    mode: StorageMode,
    metrics: &'a Metrics,
    health: &'a Health,
    positions: &'a BTreeMap<i32, Position>,
    feed: &'a CacheFeed,
}

impl Batcher<'_> {
    /// Batches and writes until every reader has stopped; the last batch is committed too.
    async fn run(&self, mut rx: mpsc::Receiver<Fetched>, clock: Arc<dyn Clock>, shutdown: &Shutdown) -> Result<Summary> {
        let mut summary = Summary::default();
        let mut batch = Batch::default();
        let mut partitions_checked = Instant::now();
        loop {
            let deadline = batch.since.map(|t| tokio::time::Instant::from_std(t + self.config.batch.max_delay.get()));
            let closed = tokio::select! {
                received = rx.recv() => match received {
                    Some(f) => {
                        summary.candles += f.candles.len() as u64;
                        batch.add(f);
                        false
                    }
                    None => true,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => false,
            };
            let due = batch.since.is_some_and(|t| t.elapsed() >= self.config.batch.max_delay.get());
            if !batch.is_empty() && (closed || due || batch.candles.len() >= self.config.batch.max_candles) {
                let written = std::mem::take(&mut batch);
                summary.rows_written += self.commit(written, shutdown).await?;
                summary.transactions += 1;
            }
            if closed {
                return Ok(summary);
            }
            if self.mode == StorageMode::Plain && partitions_checked.elapsed() > Duration::from_secs(3600) {
                partitions_checked = Instant::now();
                if let Err(e) = create_partitions_ahead(self.pool, clock.now(), self.config.database.partitions_ahead).await {
                    tracing::warn!(error = format!("{e:#}"), "creating partitions ahead failed; batches create their own");
                }
            }
        }
    }

    /// Writes one batch, retrying with backoff while the database fails. The version guard and
    /// the offsets in the same transaction make a retry after an unknown outcome harmless.
    async fn commit(&self, batch: Batch, shutdown: &Shutdown) -> Result<u64> {
        let candles: Vec<Candle> = batch.candles.into_values().collect();
        let topic = &self.config.kafka.candles_topic;
        let offsets: Vec<(String, i32, i64)> = batch.offsets.iter().map(|(p, o)| (topic.clone(), *p, *o)).collect();
        let mut backoff = backoff(self.config);
        let mut failures_while_stopping = 0;
        loop {
            let started = Instant::now();
            let attempt = async {
                let mut db = self.pool.get().await.context("connecting to the database")?;
                let changed = wick_store::write_batch(&mut db, self.mode, &candles, &offsets).await?;
                anyhow::Ok(changed)
            };
            match attempt.await {
                Ok(changed) => {
                    tracing::debug!(candles = candles.len(), changed, seconds = started.elapsed().as_secs_f64(), "batch committed");
                    self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.batch_candles.observe(candles.len() as f64);
                    self.metrics.rows_written.inc_by(changed);
                    if !self.health.db.load(Ordering::SeqCst) {
                        tracing::info!("database writes succeed again");
                    }
                    self.health.set_db(true);
                    for (p, o) in &batch.offsets {
                        let position = &self.positions[p];
                        position.committed.store(*o, Ordering::Relaxed);
                        let lag = wick_kafka::lag(position.high_watermark.load(Ordering::Relaxed), *o);
                        self.metrics.lag.with_label_values(&[&p.to_string()]).set(lag);
                    }
                    if self.config.redis.enabled {
                        self.feed.offer(candles, &batch.offsets);
                    }
                    return Ok(changed);
                }
                Err(e) => {
                    self.health.set_db(false);
                    self.metrics.db_retries.inc();
                    tracing::warn!(error = format!("{e:#}"), candles = candles.len(), "database write failed; retrying");
                    if shutdown.is_requested() {
                        failures_while_stopping += 1;
                        if failures_while_stopping >= 3 {
                            bail!("the database is unreachable at shutdown: {} candles stay uncommitted and will be re-read from the stored offsets ({e:#})", candles.len());
                        }
                    }
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
        }
    }
}
