//! The batching producer: within the linger window, the trades of every instrument of a partition
//! are gathered into one record (a protobuf `TradeBatches` of one `TradeBatch` per instrument: see
//! `proto/wick/v1/market.proto`), sent as one produce request, and each partition is written by one
//! task, in order, so an instrument's trades keep their order. One record per partition and linger
//! window, whatever the number of instruments: the broker's cost follows records as much as bytes. The partition is Kafka's default (murmur2 of the instrument key). Memory is bounded:
//! the input channel and every partition queue are bounded, so a slow broker slows the caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::Record;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wick_core::{Clock, Instrument, Trade};

use crate::exchange;
use crate::metrics::Metrics;
use wick_kafka::partitioner::partition_for;

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerSettings {
    pub topic: String,
    pub dead_letter_topic: String,
    /// How long the first trade of a partition's pending request may wait for company.
    pub linger: Duration,
    /// A partition's pending request is sent once its encoded size reaches this.
    pub max_request_bytes: usize,
    pub compression: Compression,
    /// How long to wait for `topic` to be created (by ingest-aggregator starting at the same
    /// moment, or an operator) before giving up.
    pub topic_wait: Duration,
}

/// A record that could not be turned into trades, for the dead-letter topic.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub raw: Vec<u8>,
    pub reason: String,
    /// Where it came from: `binance`, `replay:FILE:LINE`, ...
    pub source: String,
}

/// The partition count of `topic`, waiting up to `wait` for the topic to appear: the publisher
/// does not create it (ingest-aggregator owns its partition count), and may start first.
async fn partition_count(client: &Client, topic: &str, wait: Duration) -> Result<i32> {
    let deadline = Instant::now() + wait;
    let mut waiting = false;
    loop {
        let topics = client.list_topics().await.context("listing topics")?;
        if let Some(t) = topics.iter().find(|t| t.name == topic && !t.partitions.is_empty()) {
            return Ok(t.partitions.len() as i32);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("topic {topic} does not exist on the broker (waited {wait:?}); ingest-aggregator creates it at start, or create it yourself");
        }
        if !waiting {
            tracing::info!(topic, "waiting for the topic to be created (ingest-aggregator creates it at start)");
            waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a partition writer is asked to do, in order.
enum Write {
    Records(Vec<Record>),
    /// Acknowledge once everything before it is written.
    Sync(oneshot::Sender<()>),
}

enum Command {
    Trade(Trade),
    Trades(Vec<Trade>),
    DeadLetter(DeadLetter),
    Flush(oneshot::Sender<()>),
}

/// What the producer did, for the end-of-run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    pub trades: u64,
    pub records: u64,
    /// One per instrument in each record: the records a producer of one record per instrument
    /// (Wick's first format) would have written for the same linger windows.
    pub instrument_batches: u64,
    pub requests: u64,
    pub dead_letters: u64,
}

/// Handle to the producer tasks.
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::Sender<Command>,
    task: JoinHandle<Result<ProducerStats>>,
}

/// An upper bound of one trade's encoded size inside a batch (a Binance trade takes about 44
/// bytes), so that requests stay under their limit without encoding twice.
const TRADE_BYTES: usize = 64;

/// Commands queued before `publish` waits: with replay's chunks of 1024 trades, at most about
/// 260k trades (some 20 MB) wait in the queue.
const QUEUE: usize = 256;

impl Producer {
    /// Starts the producer for `settings.topic`, whose partition count is read from the broker.
    pub async fn start(client: Arc<Client>, settings: ProducerSettings, metrics: Metrics, clock: Arc<dyn Clock>) -> Result<Producer> {
        let partitions = partition_count(&client, &settings.topic, settings.topic_wait).await?;
        let mut sinks = Vec::new();
        let mut workers = Vec::new();
        for p in 0..partitions {
            let (tx, rx) = mpsc::channel::<Write>(4);
            let partition =
                client.partition_client(settings.topic.clone(), p, UnknownTopicHandling::Retry).await.context("partition client")?;
            workers.push(tokio::spawn(write_partition(partition, rx, settings.compression, metrics.clone())));
            sinks.push(tx);
        }
        let dead_letters = client
            .partition_client(settings.dead_letter_topic.clone(), 0, UnknownTopicHandling::Retry)
            .await
            .with_context(|| format!("dead-letter topic {}", settings.dead_letter_topic))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(batch(rx, sinks, workers, dead_letters, settings, metrics, clock));
        Ok(Producer { tx, task })
    }

    /// Queues a trade; waits while the producer is full (backpressure).
    pub async fn publish(&self, trade: Trade) -> Result<()> {
        self.tx.send(Command::Trade(trade)).await.map_err(|_| anyhow!("the producer stopped"))
    }

    /// Queues many trades at once (cheaper than one by one at high rates).
    pub async fn publish_many(&self, trades: Vec<Trade>) -> Result<()> {
        if trades.is_empty() {
            return Ok(());
        }
        self.tx.send(Command::Trades(trades)).await.map_err(|_| anyhow!("the producer stopped"))
    }

    pub async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.tx.send(Command::DeadLetter(letter)).await.map_err(|_| anyhow!("the producer stopped"))
    }

    /// Sends everything queued so far and waits until the broker acknowledged it.
    pub async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Command::Flush(done)).await.map_err(|_| anyhow!("the producer stopped"))?;
        wait.await.map_err(|_| anyhow!("the producer stopped before flushing"))
    }

    /// Flushes, stops, and reports what was published; fails if any write failed.
    pub async fn close(self) -> Result<ProducerStats> {
        drop(self.tx);
        self.task.await.context("producer task")?
    }
}

struct Pending {
    /// Per instrument, in order of first appearance.
    batches: Vec<(Instrument, Vec<Trade>)>,
    bytes: usize,
    since: Instant,
}

async fn batch(
    mut rx: mpsc::Receiver<Command>,
    sinks: Vec<mpsc::Sender<Write>>,
    workers: Vec<JoinHandle<Result<u64>>>,
    dead_letters: rskafka::client::partition::PartitionClient,
    settings: ProducerSettings,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
) -> Result<ProducerStats> {
    let partitions = sinks.len() as i32;
    let mut pending: HashMap<i32, Pending> = HashMap::new();
    let mut stats = ProducerStats::default();
    let mut partition_of: HashMap<Instrument, i32> = HashMap::new();
    loop {
        let deadline = pending.values().map(|p| p.since + settings.linger).min();
        let command = match deadline {
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(c) => c,
                Err(_) => {
                    send_due(&mut pending, settings.linger, &sinks, &metrics, &clock, &mut stats).await?;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match command {
            Some(Command::Trade(trade)) => {
                if let Some(full) = add(&mut pending, &mut partition_of, partitions, trade, settings.max_request_bytes) {
                    send(&mut pending, full, &sinks, &metrics, &clock, &mut stats).await?;
                }
            }
            Some(Command::Trades(trades)) => {
                for trade in trades {
                    if let Some(full) = add(&mut pending, &mut partition_of, partitions, trade, settings.max_request_bytes) {
                        send(&mut pending, full, &sinks, &metrics, &clock, &mut stats).await?;
                    }
                }
            }
            Some(Command::DeadLetter(letter)) => {
                write_dead_letter(&dead_letters, letter, &metrics).await?;
                stats.dead_letters += 1;
            }
            Some(Command::Flush(done)) => {
                let all: Vec<i32> = pending.keys().copied().collect();
                for p in all {
                    send(&mut pending, p, &sinks, &metrics, &clock, &mut stats).await?;
                }
                // Every writer acknowledges once what it was given before is written.
                let mut acks = Vec::with_capacity(sinks.len());
                for sink in &sinks {
                    let (ack, wait) = oneshot::channel();
                    sink.send(Write::Sync(ack)).await.map_err(|_| anyhow!("a partition writer stopped"))?;
                    acks.push(wait);
                }
                for wait in acks {
                    wait.await.map_err(|_| anyhow!("a partition writer failed"))?;
                }
                let _ = done.send(());
            }
            None => break,
        }
        // Under a steady stream `recv` never times out, so enforce the linger here too.
        send_due(&mut pending, settings.linger, &sinks, &metrics, &clock, &mut stats).await?;
    }
    let all: Vec<i32> = pending.keys().copied().collect();
    for p in all {
        send(&mut pending, p, &sinks, &metrics, &clock, &mut stats).await?;
    }
    drop(sinks);
    for w in workers {
        stats.requests += w.await.context("partition writer")??;
    }
    Ok(stats)
}

/// Adds a trade to its partition's pending request; returns the partition when that is full.
fn add(
    pending: &mut HashMap<i32, Pending>,
    partition_of: &mut HashMap<Instrument, i32>,
    partitions: i32,
    trade: Trade,
    max_bytes: usize,
) -> Option<i32> {
    let partition = match partition_of.get(trade.instrument()) {
        Some(p) => *p,
        None => {
            let p = partition_for(trade.instrument().as_str().as_bytes(), partitions);
            partition_of.insert(trade.instrument().clone(), p);
            p
        }
    };
    let entry = pending.entry(partition).or_insert_with(|| Pending { batches: Vec::new(), bytes: 0, since: Instant::now() });
    // The last instrument of the partition is nearly always the one of this trade.
    match entry.batches.iter_mut().rev().find(|(i, _)| i.same_as(trade.instrument())) {
        Some((_, trades)) => trades.push(trade),
        None => entry.batches.push((trade.instrument().clone(), vec![trade])),
    }
    entry.bytes += TRADE_BYTES;
    (entry.bytes >= max_bytes).then_some(partition)
}

/// Sends every partition whose first pending trade has waited out the linger.
async fn send_due(
    pending: &mut HashMap<i32, Pending>,
    linger: Duration,
    sinks: &[mpsc::Sender<Write>],
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
    stats: &mut ProducerStats,
) -> Result<()> {
    let now = Instant::now();
    let due: Vec<i32> = pending.iter().filter(|(_, p)| p.since + linger <= now).map(|(k, _)| *k).collect();
    for p in due {
        send(pending, p, sinks, metrics, clock, stats).await?;
    }
    Ok(())
}

/// Encodes a partition's pending batches into records and hands them to its writer.
async fn send(
    pending: &mut HashMap<i32, Pending>,
    partition: i32,
    sinks: &[mpsc::Sender<Write>],
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
    stats: &mut ProducerStats,
) -> Result<()> {
    let Some(p) = pending.remove(&partition) else { return Ok(()) };
    let now = clock.now();
    let mut batches = Vec::with_capacity(p.batches.len());
    if let Some(oldest) = p.batches.iter().flat_map(|(_, t)| t.iter().map(Trade::receive_time)).min() {
        metrics.receive_to_publish_seconds.observe((now.as_micros() - oldest.as_micros()).max(0) as f64 / 1e6);
    }
    for (instrument, trades) in p.batches {
        let symbol = exchange::symbol_for(&instrument).map(|(_, s)| s).unwrap_or_default();
        metrics.observe_batch(&instrument, &trades, now);
        stats.trades += trades.len() as u64;
        batches.push(wick_wire::trade_batch_to_wire(&instrument, &symbol, &trades));
    }
    metrics.instruments_per_record.observe(batches.len() as f64);
    stats.instrument_batches += batches.len() as u64;
    let mut headers = BTreeMap::new();
    headers.insert(wick_wire::CONTENT_TYPE_HEADER.to_owned(), wick_wire::CONTENT_TYPE_TRADE_BATCHES.as_bytes().to_vec());
    // No key: the record holds several instruments, and is produced to their partition explicitly.
    let record = Record {
        key: None,
        value: Some(wick_wire::encode_trade_batches(batches)),
        headers,
        timestamp: chrono::DateTime::from_timestamp_micros(now.as_micros()).unwrap_or_default(),
    };
    stats.records += 1;
    sinks[partition as usize].send(Write::Records(vec![record])).await.map_err(|_| anyhow!("the writer of partition {partition} stopped"))
}

/// Writes one partition's requests in order; a failure (after rskafka's retries) stops the run.
async fn write_partition(
    client: rskafka::client::partition::PartitionClient,
    mut rx: mpsc::Receiver<Write>,
    compression: Compression,
    metrics: Metrics,
) -> Result<u64> {
    let mut requests = 0;
    while let Some(write) = rx.recv().await {
        let records = match write {
            Write::Records(records) => records,
            Write::Sync(ack) => {
                let _ = ack.send(());
                continue;
            }
        };
        let n = records.len();
        let started = std::time::Instant::now();
        if let Err(e) = client.produce(records, compression).await {
            metrics.produce_errors.inc();
            return Err(anyhow!("producing {n} records to {}/{}: {e}", client.topic(), client.partition()));
        }
        metrics.produce_seconds.observe(started.elapsed().as_secs_f64());
        requests += 1;
    }
    Ok(requests)
}

async fn write_dead_letter(client: &rskafka::client::partition::PartitionClient, letter: DeadLetter, metrics: &Metrics) -> Result<()> {
    let mut headers = BTreeMap::new();
    headers.insert("reason".to_owned(), letter.reason.into_bytes());
    headers.insert("source".to_owned(), letter.source.into_bytes());
    let record = Record { key: None, value: Some(letter.raw), headers, timestamp: chrono::Utc::now() };
    client.produce(vec![record], Compression::NoCompression).await.map_err(|e| anyhow!("writing a dead letter: {e}"))?;
    metrics.dead_letters.inc();
    Ok(())
}
