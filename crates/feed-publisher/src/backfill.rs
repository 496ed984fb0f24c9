//! The `backfill` command: historical trades from an exchange's public REST API, normalized like
//! the live feed's and published to `market-events`.
//!
//! Binance Spot `GET /api/v3/aggTrades` is supported: the first page of a symbol is asked for by
//! time (`startTime`/`endTime`, at most one hour apart, as the endpoint requires), the following
//! ones by id (`fromId` = last aggregate id + 1) until a trade at or after `end`. The trades are
//! those of the live `aggTrade` feed: same instrument, same id (`a`), same taker side.
//!
//! Delivery: a page is published and flushed (the broker acknowledged it) before its last id is
//! written to the symbol's state file, so `--resume` after a failure continues after the last
//! acknowledged trade and publishes nothing twice.
//!
//! Requests go through a rate limiter (governor) and are retried with jittered exponential
//! back-off (backon): HTTP 429 and 418 (Binance's IP ban) wait the answer's `Retry-After`, 5xx
//! answers and connection errors the back-off; any other 4xx fails at once with the exchange's
//! message.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use wick_core::{Clock, TakerSide, Timestamp};
use wick_service::shutdown::Shutdown;

use crate::exchange::{self, Exchange};
use crate::producer::{DeadLetter, Producer};
use crate::run::Summary;

/// Binance's public REST API.
pub const BINANCE_URL: &str = "https://api.binance.com";

/// Binance allows 6,000 request weight per minute per IP; `aggTrades` weighs 2. Half of the
/// budget leaves room for other clients on the same address.
pub const BINANCE_REQUESTS_PER_MINUTE: u32 = 1_500;

/// Trades per page (Binance's maximum).
const PAGE: usize = 1000;

/// Binance's longest `startTime`..`endTime` span for `aggTrades`.
const WINDOW_MS: i64 = 3_600_000;

/// What `backfill` fetches and how.
#[derive(Clone, Debug)]
pub struct BackfillSettings {
    pub exchange: Exchange,
    /// The exchange's own symbols (`BTCUSDT`).
    pub symbols: Vec<String>,
    /// Trades from this time (inclusive) ...
    pub start: Timestamp,
    /// ... to this one (exclusive).
    pub end: Timestamp,
    /// The REST API's base URL.
    pub base_url: String,
    /// Where the per-symbol state files live.
    pub state_dir: PathBuf,
    /// Continue after the last acknowledged trade of each symbol's state file.
    pub resume: bool,
    pub requests_per_minute: NonZeroU32,
    /// Retries of one request (rate limiting, outages) before the backfill fails.
    pub max_retries: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// Where a symbol's backfill stands: written after the broker acknowledged the trades up to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillState {
    pub exchange: String,
    pub symbol: String,
    /// The last published trade id (Binance: aggregate id).
    pub last_id: u64,
    /// Its trade time, epoch milliseconds.
    pub last_time_ms: i64,
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

/// A second's worth of requests at once: a minute's budget in one burst, then the steady rate,
/// would ask for twice the budget in the first minute.
fn burst(per_minute: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new(per_minute.get() / 60).unwrap_or(NonZeroU32::MIN)
}

/// Why one request failed; all but `Refused` are retried.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("rate limited (HTTP 429) by {url}")]
    RateLimited { url: String, retry_after: Option<Duration> },
    #[error("IP banned (HTTP 418) by {url}")]
    Banned { url: String, retry_after: Option<Duration> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Refused(String),
}

impl FetchError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::RateLimited { retry_after, .. } | FetchError::Banned { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// `Retry-After` in seconds (the form Binance, Coinbase and Kraken send).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let text = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The HTTP side: one client, one rate limiter, one retry policy.
struct Fetcher {
    http: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    backoff: ExponentialBuilder,
    max_retries: usize,
    rate_limited: u64,
    banned: u64,
    retried: u64,
}

impl Fetcher {
    fn new(settings: &BackfillSettings) -> Result<Fetcher> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("wick-feed-publisher/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Fetcher {
            http,
            limiter: RateLimiter::direct(Quota::per_minute(settings.requests_per_minute).allow_burst(burst(settings.requests_per_minute))),
            backoff: ExponentialBuilder::default()
                .with_min_delay(settings.min_backoff)
                .with_max_delay(settings.max_backoff)
                .with_max_times(settings.max_retries)
                .with_jitter(),
            max_retries: settings.max_retries,
            rate_limited: 0,
            banned: 0,
            retried: 0,
        })
    }

    /// One attempt: waits for the rate limiter, then classifies the answer.
    async fn attempt(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        self.limiter.until_ready().await;
        let response = self.http.get(url).send().await.map_err(|e| FetchError::Unavailable(format!("GET {url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| FetchError::Unavailable(format!("GET {url}: reading the body: {e}")));
        }
        let wait = retry_after(&response);
        let body: String = response.text().await.unwrap_or_default().chars().take(300).collect();
        Err(match status.as_u16() {
            429 => FetchError::RateLimited { url: url.to_owned(), retry_after: wait },
            418 => FetchError::Banned { url: url.to_owned(), retry_after: wait },
            500..=599 => FetchError::Unavailable(format!("GET {url}: HTTP {status}: {body}")),
            _ => FetchError::Refused(format!("GET {url}: HTTP {status}: {body}")),
        })
    }

    /// GET with retries; rate-limit answers wait their `Retry-After` (at least the back-off).
    async fn get(&mut self, url: &str) -> Result<Vec<u8>> {
        let this = &*self;
        let mut counts = (0u64, 0u64, 0u64);
        let outcome = (|| this.attempt(url))
            .retry(this.backoff)
            .when(|e| !matches!(e, FetchError::Refused(_)))
            .adjust(|e, backoff| backoff.map(|b| e.retry_after().map_or(b, |wait| wait.max(b))))
            .notify(|e, wait| {
                counts.2 += 1;
                match e {
                    FetchError::RateLimited { .. } => counts.0 += 1,
                    FetchError::Banned { .. } => {
                        counts.1 += 1;
                        tracing::error!(error = %e, wait = ?wait, "the exchange banned this IP address for exceeding its rate limits; waiting");
                    }
                    _ => {}
                }
                tracing::warn!(error = %e, wait = ?wait, "request failed; retrying");
            })
            .await;
        self.rate_limited += counts.0;
        self.banned += counts.1;
        self.retried += counts.2;
        outcome.map_err(|e| match e {
            FetchError::Refused(_) => anyhow::Error::new(e).context("the exchange refused the request"),
            _ => anyhow::Error::new(e).context(format!("giving up after {} retries", self.max_retries)),
        })
    }
}

/// Binance `aggTrades` entry: `{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}`.
#[derive(Deserialize)]
struct AggTrade<'a> {
    a: u64,
    p: &'a str,
    q: &'a str,
    #[serde(rename = "T")]
    time: i64,
    m: bool,
}

/// What `backfill` did, beyond the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub summary: Summary,
    pub requests: u64,
    pub retried: u64,
    pub rate_limited: u64,
    pub banned: u64,
}

/// Backfills every symbol in turn. Shows a progress bar (by event time) on stderr.
pub async fn run(settings: &BackfillSettings, producer: &Producer, clock: Arc<dyn Clock>, shutdown: &Shutdown) -> Result<BackfillReport> {
    if settings.exchange != Exchange::Binance {
        bail!("backfill supports binance so far (coinbase and kraken are not implemented yet)");
    }
    if settings.end <= settings.start {
        bail!("--end must be after --start");
    }
    let symbols = settings
        .symbols
        .iter()
        .map(|s| Ok((s.to_ascii_uppercase(), exchange::instrument_for(settings.exchange, s)?)))
        .collect::<Result<Vec<_>, exchange::ParseError>>()?;
    let span = (settings.end.as_millis() - settings.start.as_millis()) as u64;
    let bar = ProgressBar::with_draw_target(Some(span * symbols.len() as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] [{wide_bar}] {percent:>3}% {msg}, ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut fetcher = Fetcher::new(settings)?;
    let mut report = BackfillReport::default();
    for (index, (symbol, instrument)) in symbols.iter().enumerate() {
        let offset = span * index as u64;
        let path = state_path(&settings.state_dir, settings.exchange, symbol);
        let mut cursor = if settings.resume { read_state(&path)? } else { None };
        if let Some(state) = &cursor {
            tracing::info!(symbol, last_id = state.last_id, "resuming after the last acknowledged trade");
        }
        let mut window = settings.start.as_millis();
        loop {
            if shutdown.is_requested() {
                bar.abandon();
                return Ok(report);
            }
            let base = settings.base_url.trim_end_matches('/');
            let url = match &cursor {
                Some(state) => format!("{base}/api/v3/aggTrades?symbol={symbol}&fromId={}&limit={PAGE}", state.last_id + 1),
                None if window >= settings.end.as_millis() => break,
                None => {
                    let window_end = (window + WINDOW_MS).min(settings.end.as_millis()) - 1;
                    format!("{base}/api/v3/aggTrades?symbol={symbol}&startTime={window}&endTime={window_end}&limit={PAGE}")
                }
            };
            let body = fetcher.get(&url).await?;
            report.requests += 1;
            let page: Vec<AggTrade<'_>> = serde_json::from_slice(&body).with_context(|| format!("GET {url}: not an aggTrades array"))?;
            if page.is_empty() {
                match cursor {
                    // By id: nothing newer exists yet.
                    Some(_) => break,
                    // By time: an hour without trades.
                    None => {
                        window += WINDOW_MS;
                        continue;
                    }
                }
            }
            let received = clock.now();
            let full = page.len() >= PAGE;
            let mut trades = Vec::with_capacity(page.len());
            let mut last = None;
            let mut reached_end = false;
            for t in &page {
                if t.time >= settings.end.as_millis() {
                    reached_end = true;
                    break;
                }
                report.summary.read += 1;
                last = Some((t.a, t.time));
                match normalize(instrument, t, received) {
                    Ok(trade) => trades.push(trade),
                    Err(e) => {
                        report.summary.rejected += 1;
                        let raw = serde_json::to_vec(&serde_json::json!({"a": t.a, "p": t.p, "q": t.q, "T": t.time, "m": t.m}))?;
                        producer
                            .dead_letter(DeadLetter {
                                raw,
                                reason: e.to_string(),
                                source: format!("backfill:{}:{symbol}", settings.exchange),
                            })
                            .await?;
                    }
                }
            }
            if let Some((last_id, last_time_ms)) = last {
                producer.publish_many(trades).await?;
                producer.flush().await?;
                let state = BackfillState { exchange: settings.exchange.to_string(), symbol: symbol.clone(), last_id, last_time_ms };
                write_state(&path, &state)?;
                cursor = Some(state);
                bar.set_position(offset + (last_time_ms - settings.start.as_millis()).clamp(0, span as i64) as u64);
                bar.set_message(format!("{symbol}: {} trades", report.summary.read));
            }
            if reached_end || (cursor.is_some() && !full) {
                break;
            }
        }
        bar.set_position(offset + span);
    }
    bar.finish();
    report.retried = fetcher.retried;
    report.rate_limited = fetcher.rate_limited;
    report.banned = fetcher.banned;
    Ok(report)
}

fn normalize(instrument: &wick_core::Instrument, t: &AggTrade<'_>, received: Timestamp) -> Result<wick_core::Trade, exchange::ParseError> {
    exchange::trade(
        instrument.clone(),
        t.a,
        exchange::decimal("p", t.p)?,
        exchange::decimal("q", t.q)?,
        if t.m { TakerSide::Sell } else { TakerSide::Buy },
        Timestamp::from_millis(t.time).map_err(|e| exchange::field("T", e))?,
        received,
    )
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
    fn an_agg_trade_is_normalized_like_the_live_agg_trade_feed() {
        let rest = r#"[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}]"#;
        let page: Vec<AggTrade<'_>> = serde_json::from_str(rest).unwrap();
        let instrument = exchange::instrument_for(Exchange::Binance, "BNBBTC").unwrap();
        let from_rest = normalize(&instrument, &page[0], Timestamp::MIN).unwrap();
        let live = r#"{"e":"aggTrade","E":1498793709153,"s":"BNBBTC","a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}"#;
        let exchange::FeedMessage::Trades(from_live) = exchange::binance::parse(live, Timestamp::MIN, false).unwrap() else {
            panic!("expected a trade")
        };
        assert_eq!(from_live, vec![from_rest]);
    }

    #[test]
    fn the_limiter_bursts_a_second_of_requests_at_most() {
        let per_minute = |n| NonZeroU32::new(n).unwrap();
        assert_eq!(burst(per_minute(1500)).get(), 25);
        assert_eq!(burst(per_minute(30)).get(), 1);
    }

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(parse_time("2024-05-01").unwrap(), parse_time("2024-05-01T00:00:00Z").unwrap());
        assert!(parse_time("yesterday").is_err());
    }
}
