//! The `replay` and `simulate` commands, as functions the binary and the tests call.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rskafka::client::partition::Compression;
use rskafka::client::Client;
use wick_core::{Clock, Instrument, Timestamp, Trade};
use wick_service::shutdown::Shutdown;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::producer::{DeadLetter, Producer, ProducerSettings, ProducerStats};
use crate::replay::{self, ReplayFormat, ReplayProgress};
use crate::simulate::{self, Simulator};

/// The end-of-run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Trades (or lines) read.
    pub read: u64,
    /// Trades handed to the broker and acknowledged.
    pub published: u64,
    /// Inputs refused (sent to the dead-letter topic).
    pub rejected: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "read {}, published {}, rejected {}", self.read, self.published, self.rejected)
    }
}

pub async fn connect(config: &Config) -> Result<Arc<Client>> {
    let client = wick_kafka::connect(&config.kafka.brokers, config.kafka.request_deadline.get()).await?;
    Ok(Arc::new(client))
}

pub async fn start_producer(config: &Config, client: Arc<Client>, metrics: Metrics, clock: Arc<dyn Clock>) -> Result<Producer> {
    let settings = ProducerSettings {
        topic: config.kafka.market_events_topic.clone(),
        dead_letter_topic: config.kafka.dead_letter_topic.clone(),
        linger: config.producer.linger.get(),
        max_request_bytes: config.producer.max_request_bytes,
        compression: match config.producer.compression.as_str() {
            "lz4" => Compression::Lz4,
            _ => Compression::NoCompression,
        },
        topic_wait: config.kafka.request_deadline.get(),
    };
    Producer::start(client, settings, metrics, clock).await
}

/// A history file, checked before anything is published.
struct ReplayFile {
    path: PathBuf,
    format: ReplayFormat,
    instrument: Option<Instrument>,
    size: u64,
}

fn open_file(path: &Path, instrument: Option<&Instrument>) -> Result<ReplayFile> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    let mut first = String::new();
    BufReader::new(file).read_line(&mut first).with_context(|| format!("reading {}", path.display()))?;
    let format = replay::detect(path, &first)?;
    let instrument = match (format, instrument) {
        (ReplayFormat::JsonLines, _) => None,
        (_, Some(i)) => Some(i.clone()),
        (_, None) => Some(replay::instrument_from_file_name(path)?),
    };
    Ok(ReplayFile { path: path.to_owned(), format, instrument, size })
}

/// Replays history files in order: as fast as possible, or at `speed` times real time. Shows its
/// progress on stderr: a bar on a terminal, a line every 10 s elsewhere ([`ReplayProgress::stderr`]).
pub async fn replay(
    producer: &Producer,
    files: &[PathBuf],
    instrument: Option<&Instrument>,
    speed: Option<f64>,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
) -> Result<Summary> {
    replay_with_progress(producer, files, instrument, speed, clock, shutdown, &mut ReplayProgress::stderr()).await
}

/// [`replay`], showing its progress on `progress`.
pub async fn replay_with_progress(
    producer: &Producer,
    files: &[PathBuf],
    instrument: Option<&Instrument>,
    speed: Option<f64>,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
    progress: &mut ReplayProgress,
) -> Result<Summary> {
    if files.is_empty() {
        bail!("replay needs at least one file");
    }
    // Every file must exist and be recognizable before the first trade goes out.
    let files = files.iter().map(|p| open_file(p, instrument)).collect::<Result<Vec<_>>>()?;
    progress.begin(files.iter().map(|f| f.size).sum());
    let mut summary = Summary::default();
    // Bytes of the files read: each line and its newline.
    let mut bytes: u64 = 0;
    let outcome: Result<()> = async {
        // Pacing: the first trade's event time is replayed at the wall time the replay started.
        let mut pace: Option<(i64, Instant)> = None;
        // Trades go to the producer in chunks: one hand-off per chunk, one clock read per chunk.
        const CHUNK: usize = 1024;
        let mut chunk: Vec<Trade> = Vec::with_capacity(CHUNK);
        let mut received = clock.now();
        let mut files_before: u64 = 0;
        for file in &files {
            let reader = BufReader::new(std::fs::File::open(&file.path).with_context(|| format!("cannot open {}", file.path.display()))?);
            let placeholder = Instrument::new("REPLAY:UNKNOWN-UNKNOWN")?;
            let instrument = file.instrument.as_ref().unwrap_or(&placeholder);
            for (index, line) in reader.split(b'\n').enumerate() {
                if index % CHUNK == 0 {
                    if shutdown.is_requested() {
                        producer.publish_many(std::mem::take(&mut chunk)).await?;
                        producer.flush().await?;
                        return Ok(());
                    }
                    received = clock.now();
                    progress.update(bytes, summary.read, summary.rejected);
                }
                let line = line.with_context(|| format!("reading {}", file.path.display()))?;
                bytes = (bytes + line.len() as u64 + 1).min(files_before + file.size);
                let text = String::from_utf8_lossy(&line);
                match replay::parse_line(file.format, &text, index == 0, instrument, received) {
                    Ok(None) => continue,
                    Ok(Some(trade)) => {
                        summary.read += 1;
                        if let Some(speed) = speed {
                            let event = trade.event_time().as_micros();
                            let (first_event, started) = *pace.get_or_insert((event, Instant::now()));
                            let due = Duration::from_micros(((event - first_event).max(0) as f64 / speed) as u64);
                            if let Some(wait) = due.checked_sub(started.elapsed()) {
                                producer.publish_many(std::mem::take(&mut chunk)).await?;
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = shutdown.requested() => {
                                        producer.flush().await?;
                                        return Ok(());
                                    }
                                }
                            }
                        }
                        chunk.push(trade);
                        if chunk.len() == CHUNK {
                            producer.publish_many(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))).await?;
                        }
                    }
                    Err(e) => {
                        summary.read += 1;
                        summary.rejected += 1;
                        let source = format!("replay:{}:{}", file.path.display(), index + 1);
                        producer.dead_letter(DeadLetter { raw: line.clone(), reason: e.to_string(), source }).await?;
                    }
                }
            }
            producer.publish_many(std::mem::take(&mut chunk)).await?;
            files_before += file.size;
            bytes = files_before;
        }
        producer.flush().await?;
        Ok(())
    }
    .await;
    progress.update(bytes, summary.read, summary.rejected);
    progress.finish();
    outcome.map(|()| summary)
}

/// What `simulate` publishes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimulateSettings {
    /// Instruments (1 to 8) from the simulator's catalog.
    pub instruments: usize,
    /// Live trades per second, across all instruments.
    pub rate: f64,
    /// Seed of the random walk.
    pub seed: u64,
    /// Stop after this many trades, the history's included.
    pub count: Option<u64>,
    /// First publish this much history: trades with event times from now minus it up to now
    /// ([`crate::simulate::history_rate`] per second), as fast as the broker takes them.
    pub history: Option<Duration>,
}

/// Simulates `rate` trades per second over `instruments` until `count` trades (if given) or
/// shutdown, after the history if one is asked for. Live trades are made in steps of 10 ms, with
/// event times spread over the time since the previous step (never after the clock's now).
pub async fn simulate(producer: &Producer, settings: &SimulateSettings, clock: Arc<dyn Clock>, shutdown: &Shutdown) -> Result<Summary> {
    let mut sim = Simulator::new(settings.instruments, settings.seed).map_err(anyhow::Error::msg)?;
    let mut summary = Summary::default();
    let mut last = clock.now();
    if let Some(span) = settings.history {
        let started = Instant::now();
        let rate = simulate::history_rate(span);
        let span_us = i64::try_from(span.as_micros()).unwrap_or(i64::MAX);
        let mut from = last.saturating_sub_micros(span_us);
        tracing::info!(span = ?span, trades_per_second = rate, "publishing the history");
        // Publishing takes a while: the time that passed meanwhile becomes history too, until the
        // history is within a second of the clock and the live steps take over.
        loop {
            let to = clock.now();
            let mut chunk: Vec<Trade> = Vec::with_capacity(HISTORY_CHUNK);
            for step in sim.history(from, to, rate) {
                chunk.extend(step);
                if chunk.len() >= HISTORY_CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(HISTORY_CHUNK));
                    if !publish_counted(producer, full, settings.count, &mut summary).await? || shutdown.is_requested() {
                        producer.flush().await?;
                        return Ok(summary);
                    }
                }
            }
            if !publish_counted(producer, chunk, settings.count, &mut summary).await? {
                producer.flush().await?;
                return Ok(summary);
            }
            from = to;
            if clock.now().as_micros() - from.as_micros() < 1_000_000 {
                break;
            }
        }
        last = from;
        tracing::info!(trades = summary.read, seconds = started.elapsed().as_secs_f64(), "history published; going live");
    }
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.requested() => break,
        }
        let now: Timestamp = clock.now();
        let trades = sim.step(last, now, settings.rate / 100.0);
        last = last.max(now);
        if !publish_counted(producer, trades, settings.count, &mut summary).await? {
            break;
        }
    }
    producer.flush().await?;
    Ok(summary)
}

/// History trades are handed to the producer in chunks of this many.
const HISTORY_CHUNK: usize = 1024;

/// Publishes `trades`, or as many of them as `count` still allows; false once it is reached.
async fn publish_counted(producer: &Producer, mut trades: Vec<Trade>, count: Option<u64>, summary: &mut Summary) -> Result<bool> {
    if let Some(count) = count {
        trades.truncate(usize::try_from(count.saturating_sub(summary.read)).unwrap_or(usize::MAX));
    }
    summary.read += trades.len() as u64;
    producer.publish_many(trades).await?;
    Ok(count.is_none_or(|c| summary.read < c))
}

/// Closes the producer and completes the summary with what the broker acknowledged.
pub async fn finish(producer: Producer, mut summary: Summary) -> Result<(Summary, ProducerStats)> {
    let stats = producer.close().await?;
    summary.published = stats.trades;
    Ok((summary, stats))
}
