//! The `backfill` command: historical trades from an exchange's public REST API ([`history`]),
//! normalized like the live feed's and published to `market-events`.
//!
//! Each symbol starts at its first trade at or after `start` (Binance: the first trade id of the
//! first aggregate trade of `aggTrades`' time windows; Coinbase: bisecting trade ids; Kraken: the
//! time itself) and is paged in id order, which is time order, until the first trade at or after
//! `end`. Publishing in time order matters: the aggregator's event-time watermark must see history
//! in order.
//!
//! Delivery: a page is published and flushed (the broker acknowledged it) before its last id is
//! written to the symbol's state file, so `--resume` after a failure continues after the last
//! acknowledged trade and publishes nothing twice. Entries that cannot be normalized go to the
//! dead-letter topic with the reason, and count as read and rejected.
//!
//! [`history`]: crate::history

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use wick_core::{Clock, Timestamp};
use wick_service::shutdown::Shutdown;

use crate::exchange::{self, Exchange};
use crate::history::{History, HistoryCounters, HistorySettings, Mark, Position};
use crate::live::Feed;
use crate::producer::{DeadLetter, Producer};
use crate::run::Summary;

/// What `backfill` fetches and how.
#[derive(Clone, Debug)]
pub struct BackfillSettings {
    /// The live feed whose trades (and ids) the history must match: Binance `trade` (by
    /// `historicalTrades`) or `aggTrade` (by `aggTrades`), Coinbase Exchange, Kraken v2.
    pub feed: Feed,
    /// The exchange's own symbols (`BTCUSDT`, `BTC-USD`, `BTC/USD`).
    pub symbols: Vec<String>,
    /// Trades from this time (inclusive) ...
    pub start: Timestamp,
    /// ... to this one (exclusive).
    pub end: Timestamp,
    /// Where the per-symbol state files live.
    pub state_dir: PathBuf,
    /// Continue after the last acknowledged trade of each symbol's state file.
    pub resume: bool,
    /// Base URL, rate and retries of the REST requests.
    pub history: HistorySettings,
}

/// The name of `feed` in state files and flags (as `live --feed` names it).
pub fn feed_name(feed: Feed) -> &'static str {
    match feed {
        Feed::BinanceTrade => "trade",
        Feed::BinanceAggTrade => "aggTrade",
        Feed::CoinbaseExchange => "exchange",
        Feed::CoinbaseAdvanced => "advanced",
        Feed::KrakenV2 => "v2",
        Feed::KrakenV1 => "v1",
    }
}

/// Where a symbol's backfill stands: written after the broker acknowledged the trades up to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillState {
    pub exchange: String,
    /// The feed whose ids `last_id` is one of (Binance trade and aggregate ids differ).
    pub feed: String,
    pub symbol: String,
    /// The last published (or dead-lettered) trade id.
    pub last_id: u64,
    /// Its trade time, epoch microseconds.
    pub last_time_us: i64,
}

/// The state file of one exchange and symbol.
pub fn state_path(dir: &Path, exchange: Exchange, symbol: &str) -> PathBuf {
    let safe: String = symbol.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    dir.join(format!("backfill-{exchange}-{safe}.json"))
}

pub fn read_state(path: &Path) -> Result<Option<BackfillState>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("state file {} is not valid", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the state next to its place and renames it there, so a crash leaves the old or the new
/// state, never half of one.
fn write_state(path: &Path, state: &BackfillState) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec(state)?).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

/// What `backfill` did, beyond the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub summary: Summary,
    pub history: HistoryCounters,
}

/// Backfills every symbol in turn. Shows a progress bar (by event time) on stderr.
pub async fn run(settings: &BackfillSettings, producer: &Producer, clock: Arc<dyn Clock>, shutdown: &Shutdown) -> Result<BackfillReport> {
    let exchange = settings.feed.exchange();
    if !History::supports(settings.feed) {
        bail!("the {exchange} {} feed has no REST history with its trade ids: backfill its default feed", feed_name(settings.feed));
    }
    if settings.end <= settings.start {
        bail!("--end must be after --start");
    }
    let symbols = settings
        .symbols
        .iter()
        .map(|s| Ok((s.to_ascii_uppercase(), exchange::instrument_for(exchange, s)?)))
        .collect::<Result<Vec<_>, exchange::ParseError>>()?;
    let span = (settings.end.as_micros() - settings.start.as_micros()) as u64;
    let bar = ProgressBar::with_draw_target(Some(span * symbols.len() as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] [{wide_bar}] {percent:>3}% {msg}, ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut history = History::new(settings.feed, settings.history.clone())?;
    let mut report = BackfillReport::default();
    let source = |symbol: &str| format!("backfill:{exchange}:{symbol}");
    for (index, (symbol, _)) in symbols.iter().enumerate() {
        let offset = span * index as u64;
        let path = state_path(&settings.state_dir, exchange, symbol);
        let saved = if settings.resume { read_state(&path)? } else { None };
        let mut position = match &saved {
            Some(state) => {
                if state.feed != feed_name(settings.feed) {
                    bail!(
                        "{} holds {} ids of the {} feed, not {}: resume with --feed {} or start without --resume",
                        path.display(),
                        state.exchange,
                        state.feed,
                        feed_name(settings.feed),
                        state.feed
                    );
                }
                tracing::info!(symbol, last_id = state.last_id, "resuming after the last acknowledged trade");
                let time = Timestamp::from_micros(state.last_time_us).with_context(|| format!("{}: last_time_us", path.display()))?;
                Some(Position::after(Mark { id: state.last_id, time }))
            }
            None => history.first_at(symbol, settings.start, settings.end).await?,
        };
        while let Some(from) = position {
            if shutdown.is_requested() {
                bar.abandon();
                report.history = history.counters();
                return Ok(report);
            }
            let page = history.page(symbol, from, clock.now()).await?;
            let mut trades = Vec::with_capacity(page.entries.len());
            let mut last = None;
            let mut reached_end = false;
            for entry in page.entries {
                let at = match &entry {
                    Ok(trade) => Some(Mark { id: trade.trade_id(), time: trade.event_time() }),
                    Err(rejected) => rejected.at,
                };
                if at.is_some_and(|m| m.time >= settings.end) {
                    reached_end = true;
                    break;
                }
                report.summary.read += 1;
                last = at.or(last);
                match entry {
                    Ok(trade) => trades.push(trade),
                    Err(rejected) => {
                        report.summary.rejected += 1;
                        tracing::warn!(symbol, reason = %rejected.reason, "history entry refused; dead-lettered");
                        producer.dead_letter(DeadLetter { raw: rejected.raw, reason: rejected.reason, source: source(symbol) }).await?;
                    }
                }
            }
            if !trades.is_empty() {
                producer.publish_many(trades).await?;
            }
            if let Some(last) = last {
                producer.flush().await?;
                let state = BackfillState {
                    exchange: exchange.to_string(),
                    feed: feed_name(settings.feed).to_owned(),
                    symbol: symbol.clone(),
                    last_id: last.id,
                    last_time_us: last.time.as_micros(),
                };
                write_state(&path, &state)?;
                bar.set_position(offset + (last.time.as_micros() - settings.start.as_micros()).clamp(0, span as i64) as u64);
                bar.set_message(format!("{symbol}: {} trades", report.summary.read));
            }
            position = (!reached_end && !page.newest).then_some(page.next);
        }
        bar.set_position(offset + span);
    }
    bar.finish();
    report.history = history.counters();
    Ok(report)
}

/// `--start`/`--end`: RFC 3339 (`2024-05-01T00:00:00Z`) or a UTC date (`2024-05-01`).
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_owned() };
    Timestamp::parse_rfc3339(&full).map_err(|e| format!("{text:?}: {e} (expected RFC 3339 or YYYY-MM-DD)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(parse_time("2024-05-01").unwrap(), parse_time("2024-05-01T00:00:00Z").unwrap());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn feed_names_are_live_s() {
        for exchange in [Exchange::Binance, Exchange::Coinbase, Exchange::Kraken] {
            let default = Feed::of(exchange, None).unwrap();
            assert_eq!(Feed::of(exchange, Some(feed_name(default))).unwrap(), default);
        }
        assert_eq!(Feed::of(Exchange::Binance, Some(feed_name(Feed::BinanceAggTrade))).unwrap(), Feed::BinanceAggTrade);
    }

    #[test]
    fn state_files_are_named_per_exchange_and_symbol() {
        assert_eq!(state_path(Path::new("/s"), Exchange::Kraken, "BTC/USD"), Path::new("/s/backfill-kraken-BTC_USD.json"));
    }
}
