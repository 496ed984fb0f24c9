//! The `live` command: one WebSocket session per exchange that subscribes to the trades of the
//! given symbols, keeps the connection alive, reconnects with exponential backoff and subscribes
//! again, drops trades it has already published (a reconnect re-sends recent ones), and counts
//! gaps in the exchange's trade sequence (trade ids, Coinbase heartbeats' `last_trade_id`).
//!
//! Every exchange numbers trades per instrument in increasing order (Binance `t`/`a`, Coinbase
//! `trade_id`, Kraken v2 `trade_id`), so de-duplication keeps only the highest id published per
//! instrument: memory stays bounded by the number of instruments.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wick_core::{Clock, Instrument, Trade};
use wick_service::shutdown::Shutdown;

use crate::exchange::{self, binance, coinbase, kraken, Exchange, FeedMessage};
use crate::metrics::Metrics;
use crate::producer::{DeadLetter, Producer};
use crate::run::Summary;

/// Which of an exchange's public trade feeds a session follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Feed {
    /// Binance `<symbol>@trade`.
    BinanceTrade,
    /// Binance `<symbol>@aggTrade` (one message per taker order).
    BinanceAggTrade,
    /// Coinbase Exchange `matches` with `heartbeat`.
    CoinbaseExchange,
    /// Coinbase Advanced Trade `market_trades`.
    CoinbaseAdvanced,
    /// Kraken WebSocket v2 `trade`.
    KrakenV2,
    /// Kraken WebSocket v1 `trade` (no trade ids: Wick derives them; no gap detection).
    KrakenV1,
}

impl Feed {
    /// The feed named `name` (`trade`, `aggTrade`, `exchange`, `advanced`, `v2`, `v1`) of
    /// `exchange`, or its default.
    pub fn of(exchange: Exchange, name: Option<&str>) -> Result<Feed, String> {
        match (exchange, name) {
            (Exchange::Binance, None | Some("trade")) => Ok(Feed::BinanceTrade),
            (Exchange::Binance, Some("aggTrade")) => Ok(Feed::BinanceAggTrade),
            (Exchange::Coinbase, None | Some("exchange")) => Ok(Feed::CoinbaseExchange),
            (Exchange::Coinbase, Some("advanced")) => Ok(Feed::CoinbaseAdvanced),
            (Exchange::Kraken, None | Some("v2")) => Ok(Feed::KrakenV2),
            (Exchange::Kraken, Some("v1")) => Ok(Feed::KrakenV1),
            (e, Some(other)) => Err(format!("{e} has no feed {other:?}: binance trade|aggTrade, coinbase exchange|advanced, kraken v2|v1")),
        }
    }

    pub fn exchange(self) -> Exchange {
        match self {
            Feed::BinanceTrade | Feed::BinanceAggTrade => Exchange::Binance,
            Feed::CoinbaseExchange | Feed::CoinbaseAdvanced => Exchange::Coinbase,
            Feed::KrakenV2 | Feed::KrakenV1 => Exchange::Kraken,
        }
    }

    /// Whether consecutive trades have consecutive ids, so that a jump is a gap.
    fn sequential_ids(self) -> bool {
        !matches!(self, Feed::KrakenV1 | Feed::CoinbaseAdvanced)
    }
}

/// A live session's settings.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    pub feed: Feed,
    /// The exchange's own symbols: `BTCUSDT`, `BTC-USD`, `BTC/USD`.
    pub symbols: Vec<String>,
    /// The WebSocket URL (default: the exchange's public feed; tests point it at a local server).
    pub url: String,
    /// The first reconnect waits this long, doubling up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A connection silent for this long (no trade, heartbeat or ping) is considered dead.
    pub idle_timeout: Duration,
}

/// The public WebSocket URL of each feed.
pub fn default_url(feed: Feed, symbols: &[String]) -> String {
    let binance = |kind: &str| {
        let streams: Vec<String> = symbols.iter().map(|s| format!("{}@{kind}", s.to_ascii_lowercase())).collect();
        format!("wss://stream.binance.com:9443/stream?streams={}", streams.join("/"))
    };
    match feed {
        Feed::BinanceTrade => binance("trade"),
        Feed::BinanceAggTrade => binance("aggTrade"),
        Feed::CoinbaseExchange => "wss://ws-feed.exchange.coinbase.com".into(),
        Feed::CoinbaseAdvanced => "wss://advanced-trade-ws.coinbase.com".into(),
        Feed::KrakenV2 => "wss://ws.kraken.com/v2".into(),
        Feed::KrakenV1 => "wss://ws.kraken.com".into(),
    }
}

/// The subscription messages sent after every (re)connect.
pub fn subscriptions(feed: Feed, symbols: &[String]) -> Vec<String> {
    let quoted: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
    let list = quoted.join(",");
    let binance = |kind: &str| {
        // The combined-stream URL names the streams already; subscribing again is harmless and
        // makes a URL without streams (a proxy, a recorded feed) work too.
        let params: Vec<String> = symbols.iter().map(|s| format!("\"{}@{kind}\"", s.to_ascii_lowercase())).collect();
        vec![format!("{{\"method\":\"SUBSCRIBE\",\"params\":[{}],\"id\":1}}", params.join(","))]
    };
    match feed {
        Feed::BinanceTrade => binance("trade"),
        Feed::BinanceAggTrade => binance("aggTrade"),
        Feed::CoinbaseExchange => {
            vec![format!("{{\"type\":\"subscribe\",\"product_ids\":[{list}],\"channels\":[\"matches\",\"heartbeat\"]}}")]
        }
        Feed::CoinbaseAdvanced => vec![
            format!("{{\"type\":\"subscribe\",\"product_ids\":[{list}],\"channel\":\"market_trades\"}}"),
            "{\"type\":\"subscribe\",\"channel\":\"heartbeats\"}".to_owned(),
        ],
        Feed::KrakenV2 => {
            vec![format!("{{\"method\":\"subscribe\",\"params\":{{\"channel\":\"trade\",\"symbol\":[{list}],\"snapshot\":false}}}}")]
        }
        Feed::KrakenV1 => vec![format!("{{\"event\":\"subscribe\",\"pair\":[{list}],\"subscription\":{{\"name\":\"trade\"}}}}")],
    }
}

/// The last trade id published per instrument, for de-duplication and gap detection.
#[derive(Debug, Default)]
struct Sequence {
    last: HashMap<Instrument, u64>,
}

impl Sequence {
    /// Whether to publish `trade`, and how many ids were skipped before it.
    fn admit(&mut self, trade: &Trade) -> (bool, u64) {
        match self.last.get_mut(trade.instrument()) {
            Some(last) if trade.trade_id() <= *last => (false, 0),
            Some(last) => {
                let gap = trade.trade_id() - *last - 1;
                *last = trade.trade_id();
                (true, gap)
            }
            None => {
                self.last.insert(trade.instrument().clone(), trade.trade_id());
                (true, 0)
            }
        }
    }

    /// Ids the exchange says were traded but that never arrived.
    fn missed_before(&self, instrument: &Instrument, last_trade_id: u64) -> u64 {
        self.last.get(instrument).map_or(0, |last| last_trade_id.saturating_sub(*last))
    }
}

fn parse(feed: Feed, text: &str, received: wick_core::Timestamp) -> Result<FeedMessage, exchange::ParseError> {
    match feed.exchange() {
        Exchange::Binance => binance::parse(text, received, false),
        Exchange::Coinbase => coinbase::parse(text, received),
        Exchange::Kraken => kraken::parse(text, received),
    }
}

/// Runs the session until shutdown.
pub async fn run(
    settings: &LiveSettings,
    producer: &Producer,
    metrics: &Metrics,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
) -> Result<Summary> {
    let exchange = settings.feed.exchange();
    for s in &settings.symbols {
        exchange::instrument_for(exchange, s).with_context(|| format!("symbol {s}"))?;
    }
    let name = exchange.to_string();
    let mut sequence = Sequence::default();
    let mut summary = Summary::default();
    let mut backoff = settings.min_backoff;
    while !shutdown.is_requested() {
        let connected = tokio::select! {
            c = tokio_tungstenite::connect_async(settings.url.as_str()) => c,
            _ = shutdown.requested() => break,
        };
        let mut socket = match connected {
            Ok((socket, _)) => socket,
            Err(e) => {
                tracing::warn!(exchange = %name, url = %settings.url, error = %e, ?backoff, "connect failed; retrying");
                metrics.reconnects.with_label_values(&[&name]).inc();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.requested() => break,
                }
                backoff = (backoff * 2).min(settings.max_backoff);
                continue;
            }
        };
        tracing::info!(exchange = %name, url = %settings.url, "connected; subscribing");
        for message in subscriptions(settings.feed, &settings.symbols) {
            socket.send(Message::text(message)).await.context("subscribing")?;
        }
        loop {
            let next = tokio::select! {
                m = tokio::time::timeout(settings.idle_timeout, socket.next()) => match m {
                    Ok(m) => m,
                    Err(_) => {
                        tracing::warn!(exchange = %name, timeout = ?settings.idle_timeout, "connection silent; reconnecting");
                        break;
                    }
                },
                _ = shutdown.requested() => {
                    let _ = socket.close(None).await;
                    return Ok(summary);
                }
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Ping(payload))) => {
                    socket.send(Message::Pong(payload)).await.ok();
                    continue;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(exchange = %name, error = %e, "connection lost");
                    break;
                }
            };
            // A healthy message resets the backoff.
            backoff = settings.min_backoff;
            match parse(settings.feed, text.as_str(), clock.now()) {
                Ok(FeedMessage::Trades(trades)) => {
                    for trade in trades {
                        summary.read += 1;
                        let (fresh, gap) = sequence.admit(&trade);
                        if gap > 0 && settings.feed.sequential_ids() {
                            tracing::warn!(exchange = %name, instrument = %trade.instrument(), missed = gap, "gap in the trade sequence");
                            metrics.gaps.with_label_values(&[&name]).inc_by(gap);
                        }
                        if fresh {
                            producer.publish(trade).await?;
                        } else {
                            metrics.duplicates.with_label_values(&[&name]).inc();
                        }
                    }
                }
                Ok(FeedMessage::Heartbeat { instrument, last_trade_id }) => {
                    let missed = if settings.feed.sequential_ids() { sequence.missed_before(&instrument, last_trade_id) } else { 0 };
                    if missed > 0 {
                        tracing::warn!(exchange = %name, %instrument, missed, "heartbeat reports trades that never arrived");
                        metrics.gaps.with_label_values(&[&name]).inc_by(missed);
                    }
                }
                Ok(FeedMessage::Control(what)) => tracing::debug!(exchange = %name, what, "control message"),
                Err(e) => {
                    // As in replay, a refused input counts as read and as rejected.
                    summary.read += 1;
                    summary.rejected += 1;
                    metrics.rejected.with_label_values(&[&name, reason_label(&e)]).inc();
                    let letter = DeadLetter { raw: text.as_bytes().to_vec(), reason: e.to_string(), source: name.clone() };
                    producer.dead_letter(letter).await?;
                }
            }
        }
        metrics.reconnects.with_label_values(&[&name]).inc();
        tracing::info!(exchange = %name, ?backoff, "disconnected; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.requested() => break,
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
    Ok(summary)
}

fn reason_label(e: &exchange::ParseError) -> &'static str {
    match e {
        exchange::ParseError::Json(_) => "malformed",
        exchange::ParseError::UnknownType(_) => "unknown_type",
        exchange::ParseError::Field { .. } => "invalid_field",
    }
}
