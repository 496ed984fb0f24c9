//! The moving parts, from broker to broker:
//!
//! ```text
//! fetch task per owned partition --(bounded channel)--> ring publisher thread --> ring
//!   --> shard threads (each sees every event, keeps its instruments) --(bounded channel)-->
//!   output task (records per partition, produced and acknowledged) --> checkpoint task (database)
//! ```
//!
//! Backpressure runs the whole way back: a slow broker stalls the output task, whose full channel
//! stalls the shards, which stop freeing ring slots, which stalls the publisher, whose full
//! channel stalls fetching. Nothing is dropped anywhere.
//!
//! Checkpoints: a fetch task periodically sends a *barrier* for its partition after the trades
//! before it. Each shard answers with its state of the partition's instruments, after the outputs
//! derived from those trades; the output task produces everything before a barrier, waits for
//! every shard's answer, and only then hands the checkpoint (offset and merged state) to the
//! checkpoint task. So a stored checkpoint never covers output the broker has not acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use deadpool_postgres::Pool;
use prost::Message;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::Record;
use tokio::sync::mpsc;
use wick_core::ring::{Consumer, Producer, RingClosed};
use wick_core::{Clock, Timestamp, Trade};
use wick_service::backoff::Backoff;
use wick_service::shutdown::Shutdown;
use wick_wire::pb;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::shard::{shard_of, Output, Shard, Tick};

/// What fetch tasks hand to the ring publisher.
#[derive(Debug)]
pub enum Input {
    Trades {
        partition: i32,
        trades: Vec<(i64, Trade)>,
        /// When the fetch that read them returned (the latency budget's `fetch_to_output`).
        fetched: Instant,
    },
    Tick {
        partition: i32,
        tick: Tick,
    },
    /// `seq` numbers the barriers of a partition, so that every one is joined on its own.
    Barrier {
        partition: i32,
        offset: i64,
        seq: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Kind {
    #[default]
    Empty,
    Trade,
    Tick,
    Barrier,
}

/// One ring slot, allocated once and overwritten in place.
#[derive(Debug, Default)]
pub struct Event {
    kind: Kind,
    shard: usize,
    partition: i32,
    offset: i64,
    tick: Tick,
    seq: u64,
    trade: Option<Trade>,
    fetched: Option<Instant>,
}

/// The ring publisher: the ring's single producer, fed by every fetch task.
pub fn publish(mut rx: mpsc::Receiver<Input>, mut producer: Producer<Event>, shards: usize, metrics: Metrics) {
    let capacity = producer.capacity() as i64;
    while let Some(input) = rx.blocking_recv() {
        let published = match input {
            Input::Trades { partition, trades, fetched } => {
                let mut trades = trades.into_iter();
                producer.publish_batch(trades.len(), |_, slot| {
                    if let Some((offset, trade)) = trades.next() {
                        slot.kind = Kind::Trade;
                        slot.shard = shard_of(trade.instrument(), shards);
                        slot.partition = partition;
                        slot.offset = offset;
                        slot.trade = Some(trade);
                        slot.fetched = Some(fetched);
                    }
                })
            }
            Input::Tick { partition, tick } => producer.publish(|slot| {
                slot.kind = Kind::Tick;
                slot.partition = partition;
                slot.tick = tick;
            }),
            Input::Barrier { partition, offset, seq } => producer.publish(|slot| {
                slot.kind = Kind::Barrier;
                slot.seq = seq;
                slot.partition = partition;
                slot.offset = offset;
            }),
        };
        metrics.ring_remaining.set(capacity - producer.occupancy() as i64);
        if published.is_err() {
            tracing::error!("every shard is gone: the ring publisher stops");
            return;
        }
    }
    // Dropping the producer closes the ring: shards drain what was published, then stop.
}

/// A shard thread: polls the ring until it is closed and drained.
pub fn run_shard(mut shard: Shard, mut consumer: Consumer<Event>, tx: mpsc::Sender<Output>, metrics: Metrics) {
    let index = consumer.index();
    let mut out = Vec::new();
    let fetch_to_output = metrics.hop_seconds.with_label_values(&["fetch_to_output"]);
    // The earliest fetch of the trades applied since candle events last left the shard.
    let mut earliest: Option<Instant> = None;
    loop {
        let polled = consumer.poll(|e| match e.kind {
            Kind::Trade if e.shard == index => {
                if let Some(trade) = &e.trade {
                    shard.on_trade(trade, e.partition, e.offset, &mut out);
                    if earliest.is_none() {
                        earliest = e.fetched;
                    }
                }
            }
            Kind::Tick => shard.on_tick(e.partition, e.tick),
            Kind::Barrier => shard.on_barrier(e.partition, e.offset, e.seq, &mut out),
            _ => {}
        });
        shard.flush(&mut out);
        metrics.add_shard_stats(&std::mem::take(&mut shard.stats));
        if let Some(fetched) = earliest.filter(|_| out.iter().any(|o| matches!(o, Output::Candles { .. }))) {
            fetch_to_output.observe(fetched.elapsed().as_secs_f64());
            earliest = None;
        }
        for o in out.drain(..) {
            if tx.blocking_send(o).is_err() {
                tracing::error!(shard = index, "the output task is gone: shard stops");
                return;
            }
        }
        if polled == Err(RingClosed) {
            return;
        }
    }
}

/// Retry delays for the broker and the database: 50 ms doubling to 5 s, with jitter.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
}

/// Produces `records` to `client`, retrying until the broker acknowledges them; gives up only
/// when shutdown was asked for and the broker still fails (nothing is checkpointed then, so the
/// records are produced again after the restart).
async fn produce_acknowledged(client: &PartitionClient, records: Vec<Record>, shutdown: &Shutdown, metrics: &Metrics) -> Result<()> {
    let mut backoff = backoff();
    let mut failures_while_stopping = 0;
    loop {
        let started = Instant::now();
        match client.produce(records.clone(), Compression::NoCompression).await {
            Ok(_) => {
                metrics.produce_seconds.observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(topic = client.topic(), partition = client.partition(), error = %e, "produce failed; retrying");
                if shutdown.is_requested() {
                    failures_while_stopping += 1;
                    if failures_while_stopping >= 3 {
                        bail!("producing to {}/{} at shutdown: {e}", client.topic(), client.partition());
                    }
                }
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

/// The candle events waiting for one partition of `candles-completed`: one record once sent.
struct Pending {
    batches: Vec<pb::CandleBatch>,
    bytes: usize,
    since: Option<Instant>,
}

impl Pending {
    /// The record of everything pending (one `CandleBatches`, see `proto/wick/v1/market.proto`),
    /// leaving the slot empty.
    fn take_record(&mut self) -> Record {
        let batches = std::mem::take(&mut self.batches);
        self.bytes = 0;
        self.since = None;
        let mut headers = BTreeMap::new();
        headers.insert(wick_wire::CONTENT_TYPE_HEADER.to_owned(), wick_wire::CONTENT_TYPE_CANDLE_BATCHES.as_bytes().to_vec());
        Record { key: None, value: Some(wick_wire::encode_candle_batches(batches)), headers, timestamp: chrono::Utc::now() }
    }
}

/// The output side: candle records per partition of `candles-completed`, dead letters, and the
/// checkpoint barriers. Returns when every shard has stopped and everything is acknowledged.
pub async fn output(
    client: Arc<Client>,
    config: Config,
    mut rx: mpsc::Receiver<Output>,
    checkpoints: Checkpoints,
    shards: usize,
    metrics: Metrics,
    shutdown: Shutdown,
) -> Result<()> {
    let mut candles = Vec::new();
    for p in 0..config.kafka.candles_partitions {
        candles.push(
            client
                .partition_client(config.kafka.candles_topic.clone(), p, UnknownTopicHandling::Retry)
                .await
                .with_context(|| format!("{}/{p}", config.kafka.candles_topic))?,
        );
    }
    let mut dead_letters = Vec::new();
    for p in 0..config.kafka.dead_letter_partitions {
        dead_letters.push(
            client
                .partition_client(config.kafka.dead_letter_topic.clone(), p, UnknownTopicHandling::Retry)
                .await
                .with_context(|| format!("{}/{p}", config.kafka.dead_letter_topic))?,
        );
    }
    let mut pending: Vec<Pending> = (0..candles.len()).map(|_| Pending { batches: Vec::new(), bytes: 0, since: None }).collect();
    // (partition, barrier seq) -> (offset, shards that answered, their states).
    let mut barriers: HashMap<(i32, u64), (i64, u64, Vec<pb::InstrumentState>)> = HashMap::new();
    let linger = config.output.linger.get();
    let partitions = config.kafka.candles_partitions;
    loop {
        let deadline = pending.iter().filter_map(|p| p.since).min().map(|t| tokio::time::Instant::from_std(t + linger));
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                flush(&candles, &mut pending, Some(linger), &shutdown, &metrics).await?;
                continue;
            }
        };
        let Some(received) = received else {
            flush(&candles, &mut pending, None, &shutdown, &metrics).await?;
            return Ok(());
        };
        match received {
            Output::Candles { instrument, events } => {
                let p = wick_kafka::partitioner::partition_for(instrument.as_str().as_bytes(), partitions) as usize;
                let max = config.output.max_request_bytes;
                // Records stay under `output.max_request_bytes` (consumers fetch with a byte limit,
                // and this broker returns nothing for a record above it): a record is sent before a
                // batch would push it over, and one instrument's events alone over the limit (a
                // long history closing at once) are split, in order, over several records.
                let whole = wick_wire::candle_batch_to_wire(&instrument, &events);
                let pieces = whole.encoded_len().div_ceil(max).max(1);
                let per_piece = events.len().div_ceil(pieces).max(1);
                let batches = if pieces == 1 {
                    vec![whole]
                } else {
                    events.chunks(per_piece).map(|chunk| wick_wire::candle_batch_to_wire(&instrument, chunk)).collect()
                };
                for batch in batches {
                    let len = batch.encoded_len() + 8;
                    if !pending[p].batches.is_empty() && pending[p].bytes + len > max {
                        let since = pending[p].since;
                        let record = pending[p].take_record();
                        produce_acknowledged(&candles[p], vec![record], &shutdown, &metrics).await?;
                        metrics.records_produced.inc();
                        if let Some(since) = since {
                            metrics.hop_seconds.with_label_values(&["output_to_ack"]).observe(since.elapsed().as_secs_f64());
                        }
                    }
                    let slot = &mut pending[p];
                    slot.bytes += len;
                    slot.since.get_or_insert_with(Instant::now);
                    slot.batches.push(batch);
                }
            }
            Output::DeadLetter { value, reason, partition, offset } => {
                let record = wick_kafka::dead_letter_record(value, reason, &config.kafka.market_events_topic, partition, offset);
                let target = &dead_letters[partition.rem_euclid(dead_letters.len() as i32) as usize];
                produce_acknowledged(target, vec![record], &shutdown, &metrics).await?;
            }
            Output::Barrier { shard, partition, offset, seq, states } => {
                // Everything the shard derived before the barrier is in `pending` or produced.
                flush(&candles, &mut pending, None, &shutdown, &metrics).await?;
                let entry = barriers.entry((partition, seq)).or_insert((offset, 0, Vec::new()));
                entry.1 |= 1 << shard;
                entry.2.extend(states);
                if entry.1.count_ones() as usize == shards {
                    if let Some((offset, _, mut instruments)) = barriers.remove(&(partition, seq)) {
                        instruments.sort_by(|a, b| a.instrument.cmp(&b.instrument));
                        let state = pb::PartitionState { instruments }.encode_to_vec();
                        checkpoints.offer(partition, offset, state);
                    }
                }
            }
        }
    }
}

/// Produces the partitions whose oldest record waited `linger` (all of them when `None`),
/// concurrently.
async fn flush(
    candles: &[PartitionClient],
    pending: &mut [Pending],
    linger: Option<Duration>,
    shutdown: &Shutdown,
    metrics: &Metrics,
) -> Result<()> {
    let mut requests = Vec::new();
    let mut oldest: Option<Instant> = None;
    for (p, slot) in pending.iter_mut().enumerate() {
        let due = slot.since.is_some_and(|t| linger.is_none_or(|l| t.elapsed() >= l));
        if due && !slot.batches.is_empty() {
            oldest = oldest.min(slot.since).or(slot.since);
            let record = slot.take_record();
            metrics.records_produced.inc();
            requests.push(produce_acknowledged(&candles[p], vec![record], shutdown, metrics));
        } else if due {
            slot.since = None;
        }
    }
    for result in futures_util::future::join_all(requests).await {
        result?;
    }
    if let Some(oldest) = oldest {
        metrics.hop_seconds.with_label_values(&["output_to_ack"]).observe(oldest.elapsed().as_secs_f64());
    }
    Ok(())
}

/// partition -> (next offset, encoded `PartitionState`).
type PendingCheckpoints = BTreeMap<i32, (i64, Vec<u8>)>;

/// Checkpoints waiting to be stored: only the newest of each partition is kept, so a slow or
/// unreachable database delays checkpoints (a restart then replays a little more) but never
/// holds up the candles.
#[derive(Clone, Debug, Default)]
pub struct Checkpoints {
    inner: Arc<std::sync::Mutex<(PendingCheckpoints, bool)>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Checkpoints {
    pub fn offer(&self, partition: i32, offset: i64, state: Vec<u8>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let newer = inner.0.get(&partition).is_none_or(|(held, _)| *held <= offset);
        if newer {
            inner.0.insert(partition, (offset, state));
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// No more checkpoints will come.
    pub fn close(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.notify.notify_one();
    }

    fn take(&self) -> (PendingCheckpoints, bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut inner.0), inner.1)
    }
}

/// Stores the offered checkpoints, retrying while the database fails, until the output side is
/// done and everything offered is stored.
pub async fn store_checkpoints(pool: Pool, topic: String, checkpoints: Checkpoints, metrics: Metrics, shutdown: Shutdown) -> Result<()> {
    let mut backoff = backoff();
    let mut failures_while_stopping = 0;
    loop {
        let (batch, closed) = checkpoints.take();
        if batch.is_empty() {
            if closed {
                return Ok(());
            }
            checkpoints.notify.notified().await;
            continue;
        }
        let attempt = async {
            let db = pool.get().await.context("connecting to the checkpoint database")?;
            for (partition, (offset, state)) in &batch {
                if wick_store::save_checkpoint(&**db, &topic, *partition, *offset, state).await? {
                    metrics.checkpoints.inc();
                    metrics.checkpoint_bytes.set(state.len() as i64);
                } else {
                    // Another instance owns the partition now and has checkpointed further on.
                    metrics.checkpoints_superseded.inc();
                    tracing::warn!(
                        partition,
                        next_offset = offset,
                        "a newer checkpoint of this partition is stored (another instance owns it now): kept"
                    );
                }
            }
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => {
                backoff.reset();
                failures_while_stopping = 0;
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "storing checkpoints failed; retrying");
                for (partition, (offset, state)) in batch {
                    checkpoints.offer(partition, offset, state);
                }
                if shutdown.is_requested() {
                    failures_while_stopping += 1;
                    if failures_while_stopping >= 3 {
                        bail!("storing checkpoints at shutdown: {e:#} (a restart replays from the previous ones)");
                    }
                }
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

/// The wall clock as the aggregator uses it: never going back. A backward step (NTP, VM resume)
/// would otherwise make trades the clock had already passed look like they came from the future;
/// a forward step only makes things look older (less live, never refused).
#[derive(Debug)]
pub struct SteadyWall {
    clock: Arc<dyn Clock>,
    latest: std::sync::atomic::AtomicI64,
}

impl SteadyWall {
    pub fn new(clock: Arc<dyn Clock>) -> SteadyWall {
        SteadyWall { clock, latest: std::sync::atomic::AtomicI64::new(0) }
    }

    pub fn now(&self) -> Timestamp {
        let now = self.clock.now().as_micros();
        let latest = self.latest.fetch_max(now, std::sync::atomic::Ordering::Relaxed).max(now);
        Timestamp::from_micros(latest).unwrap_or(Timestamp::MIN)
    }

    pub fn monotonic_micros(&self) -> i64 {
        self.clock.monotonic_micros()
    }
}

/// What a partition's fetch loop knows of being caught up, read by every tick of the partition:
/// (epoch, proofs so far, monotonic start of the latest fetch that reached the high watermark).
#[derive(Debug, Default)]
pub struct PartitionStatus(std::sync::Mutex<(u64, u64, Option<i64>)>);

impl PartitionStatus {
    /// A fetch that started at `started` (monotonic) reached the high watermark.
    fn caught_up(&self, started: i64) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.1 += 1;
        s.2 = Some(started);
    }

    /// A fetch failed or left records behind: the chain of proofs is broken.
    fn broken(&self) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        s.2 = None;
    }

    /// The tick of this partition now.
    pub fn tick(&self, wall: &SteadyWall) -> Tick {
        let (epoch, proof, caught_up_as_of) = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        Tick { wall: wall.now(), mono: wall.monotonic_micros(), epoch, proof, caught_up_as_of }
    }
}

/// The aggregator's clock: every `period`, one tick per owned partition, so that idle watermarks
/// and throttled updates move on whether or not fetches return (a fetch can wait or fail for long).
pub async fn tick(
    period: Duration,
    partitions: Vec<(i32, Arc<PartitionStatus>)>,
    wall: Arc<SteadyWall>,
    tx: mpsc::Sender<Input>,
    shutdown: Shutdown,
) {
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            _ = shutdown.requested() => return,
        }
        for (partition, status) in &partitions {
            if tx.send(Input::Tick { partition: *partition, tick: status.tick(&wall) }).await.is_err() {
                return;
            }
        }
    }
}

/// One owned partition's fetch loop.
pub(crate) struct Fetcher {
    pub(crate) client: Arc<Client>,
    pub config: Config,
    pub partition: i32,
    pub metrics: Metrics,
    pub wall: Arc<SteadyWall>,
    pub status: Arc<PartitionStatus>,
    pub readiness: wick_service::ops::Readiness,
}

impl Fetcher {
    /// Reads from `start` until shutdown, then sends a last barrier. `None` starts at the log end
    /// or the beginning, as configured.
    pub async fn run(self, start: Option<i64>, tx: mpsc::Sender<Input>, shutdown: Shutdown) -> Result<()> {
        let topic = self.config.kafka.market_events_topic.clone();
        let source = self
            .client
            .partition_client(topic.clone(), self.partition, UnknownTopicHandling::Retry)
            .await
            .with_context(|| format!("{topic}/{}", self.partition))?;
        let dlq_partitions = self.config.kafka.dead_letter_partitions;
        let dlq = self
            .client
            .partition_client(
                self.config.kafka.dead_letter_topic.clone(),
                self.partition.rem_euclid(dlq_partitions),
                UnknownTopicHandling::Retry,
            )
            .await
            .with_context(|| format!("dead-letter topic {}", self.config.kafka.dead_letter_topic))?;
        let reset = if self.config.consumer.auto_offset_reset == "earliest" { OffsetAt::Earliest } else { OffsetAt::Latest };
        let mut offset = match start {
            Some(o) => o,
            None => match self.offset_at(&source, reset, &shutdown).await {
                Some(o) => o,
                None => return Ok(()),
            },
        };
        // The clock first, so that shards know the time before the first trade; and without a
        // checkpoint, one at the start offset at once, so that a restart resumes here rather than
        // at a later log end.
        let mut barrier_seq = 0u64;
        if tx.send(Input::Tick { partition: self.partition, tick: self.status.tick(&self.wall) }).await.is_err() {
            return Ok(());
        }
        if start.is_none() {
            barrier_seq += 1;
            if tx.send(Input::Barrier { partition: self.partition, offset, seq: barrier_seq }).await.is_err() {
                return Ok(());
            }
        }
        tracing::info!(partition = self.partition, offset, from_checkpoint = start.is_some(), "consuming");
        let c = &self.config.consumer;
        let max_wait = i32::try_from(c.fetch_max_wait.get().as_millis()).unwrap_or(i32::MAX);
        let interval = self.config.checkpoint.interval.get();
        let mut last_barrier = (Instant::now(), offset);
        let mut backoff = backoff();
        let partition_label = self.partition.to_string();
        let partitions = self.config.kafka.market_events_partitions;
        let publish_to_fetch = self.metrics.hop_seconds.with_label_values(&["publish_to_fetch"]);
        let future_tolerance = i64::try_from(self.config.aggregation.future_tolerance.get().as_micros()).unwrap_or(i64::MAX);
        loop {
            let started = Instant::now();
            let started_mono = self.wall.monotonic_micros();
            let fetched = tokio::select! {
                r = source.fetch_records(offset, c.fetch_min_bytes..c.fetch_max_bytes, max_wait) => r,
                _ = shutdown.requested() => break,
            };
            let (records, high_watermark) = match fetched {
                Ok(f) => f,
                Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }) => {
                    self.status.broken();
                    let Some(earliest) = self.offset_at(&source, OffsetAt::Earliest, &shutdown).await else { break };
                    tracing::error!(partition = self.partition, offset, earliest, "offset out of range: resuming at the earliest offset");
                    offset = earliest;
                    continue;
                }
                Err(e) => {
                    self.status.broken();
                    self.readiness.set(false);
                    tracing::warn!(partition = self.partition, error = %e, "fetch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.delay()) => {}
                        _ = shutdown.requested() => break,
                    }
                    continue;
                }
            };
            self.readiness.set(true);
            let fetched = Instant::now();
            self.metrics.poll_seconds.observe(fetched.duration_since(started).as_secs_f64());
            let mut consumed = 0u64;
            let mut trades = Vec::new();
            // One clock reading per fetch: the reference of the future check and the receive time
            // of JSON trades that carry none.
            let now = self.wall.now();
            for r in records {
                if r.offset < offset {
                    continue;
                }
                consumed += 1;
                publish_to_fetch.observe((now.as_micros() - r.record.timestamp.timestamp_micros()).max(0) as f64 / 1e6);
                let raw = r.record.value.unwrap_or_default();
                let content_type = r.record.headers.get(wick_wire::CONTENT_TYPE_HEADER).map(Vec::as_slice);
                let parts = match wick_wire::decode_market_record(content_type, &raw, now) {
                    Ok(parts) => parts,
                    Err(e) => {
                        self.dead_letter(&dlq, raw, e.reason(), &e.to_string(), r.offset, &shutdown).await?;
                        offset = r.offset + 1;
                        continue;
                    }
                };
                let whole = parts.len() == 1;
                for part in parts {
                    // An instrument belongs to the partition it hashes to: trades published elsewhere
                    // (a client without the key) would be aggregated beside the owner's state.
                    let (instrument, batch) = match part {
                        Ok(part) => part,
                        Err(refused) => {
                            let reason = refused.error.reason();
                            self.dead_letter(&dlq, refused.value, reason, &refused.error.to_string(), r.offset, &shutdown).await?;
                            continue;
                        }
                    };
                    let owner = wick_kafka::partitioner::partition_for(instrument.as_str().as_bytes(), partitions);
                    if owner != self.partition {
                        let detail = format!("{instrument} belongs to partition {owner} (records must be keyed by instrument)");
                        if whole {
                            self.dead_letter(&dlq, raw.clone(), "wrong_partition", &detail, r.offset, &shutdown).await?;
                            continue;
                        }
                        // One part of a partition's record: its readable trades go as one letter,
                        // the others with their own reasons.
                        let mut misplaced = Vec::new();
                        for item in batch {
                            match item {
                                Ok(t) => misplaced.push(t),
                                Err(refused) => {
                                    let reason = refused.error.reason();
                                    self.dead_letter(&dlq, refused.value, reason, &refused.error.to_string(), r.offset, &shutdown).await?;
                                }
                            }
                        }
                        let value = wick_wire::encode_trade_batch(&instrument, "", &misplaced);
                        self.dead_letter(&dlq, value, "wrong_partition", &detail, r.offset, &shutdown).await?;
                        continue;
                    }
                    for item in batch {
                        match item {
                            // Refused at the door: an event time beyond the clock plus the
                            // tolerance would move the instrument's watermark into the future
                            // and make every later trade of it too late.
                            Ok(t) if t.event_time().as_micros() > now.as_micros().saturating_add(future_tolerance) => {
                                let detail = format!(
                                    "event time {} is more than {:?} after the aggregator's clock ({now})",
                                    t.event_time(),
                                    self.config.aggregation.future_tolerance.get()
                                );
                                self.dead_letter(&dlq, wick_wire::encode_json_trade(&t), "future", &detail, r.offset, &shutdown).await?;
                            }
                            // Refused at the door: its week would open before the epoch,
                            // which no candle can hold (see `EARLIEST_EVENT_TIME`).
                            Ok(t) if t.event_time() < wick_core::EARLIEST_EVENT_TIME => {
                                let detail = format!(
                                    "event time {} is before {}, the first Monday after the epoch: its 1w candle would open before 1970",
                                    t.event_time(),
                                    wick_core::EARLIEST_EVENT_TIME
                                );
                                self.dead_letter(&dlq, wick_wire::encode_json_trade(&t), "too_early", &detail, r.offset, &shutdown).await?;
                            }
                            Ok(t) => trades.push((r.offset, t)),
                            Err(refused) => {
                                let reason = refused.error.reason();
                                self.dead_letter(&dlq, refused.value, reason, &refused.error.to_string(), r.offset, &shutdown).await?;
                            }
                        }
                    }
                }
                offset = r.offset + 1;
                if trades.len() >= c.max_poll_records {
                    self.metrics.trades_consumed.inc_by(trades.len() as u64);
                    if tx.send(Input::Trades { partition: self.partition, trades: std::mem::take(&mut trades), fetched }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            self.metrics.records_consumed.with_label_values(&[&partition_label]).inc_by(consumed);
            self.metrics.trades_consumed.inc_by(trades.len() as u64);
            self.metrics.lag.with_label_values(&[&partition_label]).set(wick_kafka::lag(high_watermark, offset));
            let fetched_any = consumed > 0;
            if !trades.is_empty() && tx.send(Input::Trades { partition: self.partition, trades, fetched }).await.is_err() {
                return Ok(());
            }
            // After the trades are in the channel, so that a tick proving the partition caught up
            // always comes after what was read before it.
            if offset >= high_watermark {
                self.status.caught_up(started_mono);
            } else {
                self.status.broken();
            }
            // A tick right after trades lets their updates out without waiting for the timer.
            if fetched_any && tx.send(Input::Tick { partition: self.partition, tick: self.status.tick(&self.wall) }).await.is_err() {
                return Ok(());
            }
            if last_barrier.0.elapsed() >= interval && last_barrier.1 != offset {
                last_barrier = (Instant::now(), offset);
                barrier_seq += 1;
                if tx.send(Input::Barrier { partition: self.partition, offset, seq: barrier_seq }).await.is_err() {
                    return Ok(());
                }
            }
        }
        // The shutdown checkpoint: everything read so far.
        let _ = tx.send(Input::Barrier { partition: self.partition, offset, seq: barrier_seq + 1 }).await;
        Ok(())
    }

    /// The offset at `at`, retried while the broker fails; `None` when shutdown came first.
    async fn offset_at(&self, source: &PartitionClient, at: OffsetAt, shutdown: &Shutdown) -> Option<i64> {
        let mut backoff = backoff();
        loop {
            match source.get_offset(at).await {
                Ok(o) => return Some(o),
                Err(e) => {
                    self.readiness.set(false);
                    tracing::warn!(partition = self.partition, error = %e, "reading an offset failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.delay()) => {}
                _ = shutdown.requested() => return None,
            }
        }
    }

    async fn dead_letter(
        &self,
        dlq: &PartitionClient,
        raw: Vec<u8>,
        reason: &str,
        detail: &str,
        offset: i64,
        shutdown: &Shutdown,
    ) -> Result<()> {
        tracing::warn!(partition = self.partition, offset, reason, detail, "record or trade refused: dead-lettered");
        let mut record = wick_kafka::dead_letter_record(raw, reason, &self.config.kafka.market_events_topic, self.partition, offset);
        record.headers.insert("detail".to_owned(), detail.as_bytes().to_vec());
        produce_acknowledged(dlq, vec![record], shutdown, &self.metrics).await?;
        self.metrics.dead_letters.with_label_values(&[reason]).inc();
        Ok(())
    }
}

/// Loads the checkpoint of each owned partition: (next offset, state), if any.
pub async fn load_checkpoints(pool: &Pool, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, (i64, pb::PartitionState)>> {
    let db = pool.get().await.context("connecting to the checkpoint database")?;
    let mut out = BTreeMap::new();
    for &p in partitions {
        if let Some((offset, bytes)) = wick_store::load_checkpoint(&**db, topic, p).await? {
            let state = pb::PartitionState::decode(bytes.as_slice())
                .with_context(|| format!("checkpoint of {topic}/{p} is not a PartitionState"))?;
            out.insert(p, (offset, state));
        }
    }
    Ok(out)
}
