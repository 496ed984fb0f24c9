//! feed-publisher: publishes normalized trades to `market-events`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use feed_publisher::{config::Config, metrics::Metrics, run};
use wick_core::{Clock, Instrument, SystemClock};

/// Publishes normalized trades to the `market-events` topic, batched per instrument.
///
/// Configuration: the YAML file of `--config` (optional), every key overridable as
/// `WICK__SECTION__KEY` (e.g. `WICK__KAFKA__BROKERS=host:9092`, `WICK__PRODUCER__LINGER=10ms`,
/// `WICK__PRODUCER__COMPRESSION=none`, `WICK__OPS__LISTEN=127.0.0.1:9101`). Without any, it
/// works against the stack of `cargo xtask stack up`. Metrics and health are served on
/// `ops.listen` (default 127.0.0.1:9101): `/metrics`, `/health/livez`, `/health/readyz`.
#[derive(Parser, Debug)]
#[command(name = "feed-publisher", version)]
struct Cli {
    /// YAML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Synthetic trades: random walks on realistic tick sizes, with bursts and quiet spells,
    /// deterministic for a seed. Runs until Ctrl-C or --count.
    Simulate {
        /// Number of instruments (1 to 8), from SIM:BTC-USD onwards.
        #[arg(long, default_value_t = 4)]
        instruments: usize,
        /// Total trades per second, across all instruments.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seed of the random walk.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop after this many trades (the history's included).
        #[arg(long)]
        count: Option<u64>,
        /// First publish this much history (e.g. 1d: trades with event times from a day ago up
        /// to now, 2 per second across all instruments, at most 200,000 in all), as fast as the
        /// broker takes them; then go on live with the same instruments, ids and prices.
        #[arg(long, value_name = "DURATION")]
        history: Option<wick_service::duration::Duration>,
    },
    /// Live trades from an exchange's public WebSocket feed, until Ctrl-C: Binance `trade`,
    /// Coinbase Exchange `matches` (with heartbeats for gap detection), Kraken v2 `trade`.
    /// Reconnects with backoff, drops the duplicates a reconnect re-sends, and repairs gaps in the
    /// trade sequence from the exchange's REST API (what cannot be repaired is dead-lettered as
    /// `unrepaired_gap`).
    Live {
        /// binance, coinbase or kraken.
        #[arg(long)]
        exchange: feed_publisher::exchange::Exchange,
        /// The exchange's own symbols: BTCUSDT (Binance), BTC-USD (Coinbase), BTC/USD (Kraken).
        #[arg(long, num_args = 1.., value_delimiter = ',', required = true)]
        symbols: Vec<String>,
        /// Which feed: binance trade (default) or aggTrade; coinbase exchange (default, matches)
        /// or advanced (Advanced Trade market_trades); kraken v2 (default) or v1.
        #[arg(long)]
        feed: Option<String>,
        /// Another WebSocket URL than the exchange's public feed (a proxy or a recorded feed).
        #[arg(long)]
        url: Option<String>,
        /// Another REST base URL than the exchange's, for gap repair (https://api.binance.com,
        /// https://api.exchange.coinbase.com, https://api.kraken.com).
        #[arg(long)]
        rest_url: Option<String>,
        /// Only count gaps in the trade sequence; do not fetch the missing trades over REST.
        #[arg(long)]
        no_gap_repair: bool,
        /// How long the trade that revealed a gap waits for the repair, so that the older
        /// repaired trades are published first; after it, the stream goes on and the repaired
        /// trades follow (revising candles that closed meanwhile).
        #[arg(long, value_name = "DURATION", default_value = "2s")]
        gap_repair_wait: wick_service::duration::Duration,
    },
    /// Historical trades from an exchange's public REST API, then exits, normalized like the live
    /// feed's (same trade ids, so history and live data count once): Binance `historicalTrades`
    /// (the `trade` feed, default) or `aggTrades` (the `aggTrade` feed), Coinbase Exchange
    /// product trades, Kraken `Trades`. Rate limited and retried (429 and 418 wait `Retry-After`,
    /// Kraken's rate-limit errors back off). Each symbol's last acknowledged trade is kept in a
    /// state file, so `--resume` continues where a failed run stopped and publishes nothing twice.
    Backfill {
        /// binance, coinbase or kraken.
        #[arg(long)]
        exchange: feed_publisher::exchange::Exchange,
        /// The exchange's own symbols: BTCUSDT (Binance), BTC-USD (Coinbase), BTC/USD (Kraken).
        #[arg(long, num_args = 1.., value_delimiter = ',', required = true)]
        symbols: Vec<String>,
        /// The live feed whose trades to match: binance trade (default) or aggTrade; coinbase
        /// exchange; kraken v2.
        #[arg(long)]
        feed: Option<String>,
        /// First trade time, inclusive: RFC 3339 or a UTC date (2024-05-01).
        #[arg(long, value_parser = feed_publisher::backfill::parse_time)]
        start: wick_core::Timestamp,
        /// Last trade time, exclusive: RFC 3339 or a UTC date.
        #[arg(long, value_parser = feed_publisher::backfill::parse_time)]
        end: wick_core::Timestamp,
        /// Continue after the last acknowledged trade of each symbol's state file.
        #[arg(long)]
        resume: bool,
        /// Directory of the state files (backfill-<exchange>-<symbol>.json).
        #[arg(long, default_value = ".")]
        state_dir: PathBuf,
        /// Another REST base URL than the exchange's (https://api.binance.com,
        /// https://api.exchange.coinbase.com, https://api.kraken.com).
        #[arg(long)]
        url: Option<String>,
        /// Requests per minute. Defaults keep within the documented limits: Binance 120
        /// historicalTrades (weight 25) or 1,500 aggTrades (weight 2), half of 6,000 weight per
        /// minute; Coinbase 300 (half of 10 per second); Kraken 60 (1 per second).
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// Retries of one request before giving up (the state file keeps what was published).
        #[arg(long, default_value_t = 8)]
        retries: usize,
    },
    /// Replays history files in order and exits: Binance public-data trades or aggTrades CSV
    /// (with or without a header; millisecond or microsecond times), or JSON lines of normalized
    /// trades. Lines that cannot be parsed go to the dead-letter topic.
    Replay {
        /// Files to replay, one after another.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The instrument of CSV files (default: from the file name, BTCUSDT-... is BINANCE:BTC-USDT).
        #[arg(long)]
        instrument: Option<String>,
        /// Replay at N times real time (default: as fast as possible).
        #[arg(long)]
        speed: Option<f64>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let stop = wick_service::shutdown::signal();
    wick_service::init_telemetry();
    let cli = Cli::parse();
    let config: Config = wick_service::config::load(cli.config.as_deref())?;
    let metrics = Metrics::new();
    let service = wick_service::ops::Service::start(config.ops.listen, metrics.registry.clone(), stop, "flushing").await?;
    let shutdown = service.shutdown.clone();

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let client = run::connect(&config).await?;
    let producer = run::start_producer(&config, client, metrics.clone(), clock.clone()).await?;
    service.readiness.set(true);
    let summary = match cli.command {
        Command::Simulate { instruments, rate, seed, count, history } => {
            let settings = run::SimulateSettings { instruments, rate, seed, count, history: history.map(|h| h.get()) };
            run::simulate(&producer, &settings, clock, &shutdown).await
        }
        Command::Live { exchange, symbols, feed, url, rest_url, no_gap_repair, gap_repair_wait } => {
            let feed = feed_publisher::live::Feed::of(exchange, feed.as_deref()).map_err(anyhow::Error::msg)?;
            let mut settings = feed_publisher::live::LiveSettings::new(feed, symbols);
            if let Some(url) = url {
                settings.url = url;
            }
            if let Some(repair) = settings.repair.as_mut() {
                if let Some(rest_url) = rest_url {
                    repair.history.base_url = rest_url;
                }
                repair.wait = gap_repair_wait.get();
            }
            if no_gap_repair {
                settings.repair = None;
            }
            feed_publisher::live::run(&settings, &producer, &metrics, clock, &shutdown).await
        }
        Command::Backfill { exchange, symbols, feed, start, end, resume, state_dir, url, requests_per_minute, retries } => {
            let feed = feed_publisher::live::Feed::of(exchange, feed.as_deref()).map_err(anyhow::Error::msg)?;
            let mut history = feed_publisher::history::HistorySettings::for_feed(feed);
            history.max_retries = retries;
            if let Some(url) = url {
                history.base_url = url;
            }
            if let Some(rate) = requests_per_minute {
                history.requests_per_minute =
                    std::num::NonZeroU32::new(rate).ok_or_else(|| anyhow::anyhow!("--requests-per-minute must be positive"))?;
            }
            let settings = feed_publisher::backfill::BackfillSettings { feed, symbols, start, end, state_dir, resume, history };
            feed_publisher::backfill::run(&settings, &producer, clock, &shutdown).await.map(|report| {
                let h = report.history;
                println!(
                    "{} requests, {} retried ({} rate limited, {} IP bans, {} waits for Binance's weight budget)",
                    h.requests, h.retried, h.rate_limited, h.banned, h.weight_waits
                );
                report.summary
            })
        }
        Command::Replay { files, instrument, speed } => {
            let instrument = instrument.map(|i| Instrument::new(&i)).transpose()?;
            if speed.is_some_and(|s| s.is_nan() || s <= 0.0 || s.is_infinite()) {
                anyhow::bail!("--speed must be a positive number");
            }
            run::replay(&producer, &files, instrument.as_ref(), speed, clock, &shutdown).await
        }
    };
    // Flush what the producer holds even when the command failed, then report the failure.
    let finished = run::finish(producer, summary.as_ref().copied().unwrap_or_default()).await;
    summary?;
    let (summary, stats) = finished?;
    println!(
        "{summary} ({} records of {} instrument batches in {} requests, {} dead letters)",
        stats.records, stats.instrument_batches, stats.requests, stats.dead_letters
    );
    drop(shutdown);
    service.finish();
    Ok(())
}
