//! The `live` command: one WebSocket session per exchange that subscribes to the trades of the
//! given symbols, keeps the connection alive, reconnects with exponential backoff and subscribes
//! again, drops trades it has already published (a reconnect re-sends recent ones), and counts
//! gaps in the exchange's trade sequence (trade ids, Coinbase heartbeats' `last_trade_id`).
//!
//! Every exchange numbers trades per instrument in increasing order (Binance `t`/`a`, Coinbase
//! `trade_id`, Kraken v2 `trade_id`), so de-duplication keeps only the highest id published per
//! instrument: memory stays bounded by the number of instruments. Kraken v2 subscribes with its
//! snapshot, so a reconnect re-sends recent trades and the overlap is dropped. Kraken v1 has no
//! trade ids: its trades are numbered per microsecond and not de-duplicated.

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
            vec![format!("{{\"method\":\"subscribe\",\"params\":{{\"channel\":\"trade\",\"symbol\":[{list}],\"snapshot\":true}}}}")]
        }
        Feed::KrakenV1 => vec![format!("{{\"event\":\"subscribe\",\"pair\":[{list}],\"subscription\":{{\"name\":\"trade\"}}}}")],
    }
}

/// Per instrument: the last trade id published, and the id up to which trades are accounted
/// for (published, or counted as missing), so a gap is counted once whether a later trade or a
/// heartbeat reveals it.
#[derive(Debug, Default)]
struct Sequence {
    marks: HashMap<Instrument, (u64, u64)>,
}

impl Sequence {
    /// Whether to publish `trade`, and how many ids were skipped before it (not yet counted).
    fn admit(&mut self, trade: &Trade) -> (bool, u64) {
        let id = trade.trade_id();
        match self.marks.get_mut(trade.instrument()) {
            Some((last, _)) if id <= *last => (false, 0),
            Some((last, accounted)) => {
                let gap = id.saturating_sub(*accounted).saturating_sub(1);
                *last = id;
                *accounted = (*accounted).max(id);
                (true, gap)
            }
            None => {
                self.marks.insert(trade.instrument().clone(), (id, id));
                (true, 0)
            }
        }
    }

    /// Ids the exchange says were traded but that never arrived (and were not counted yet).
    fn heartbeat(&mut self, instrument: &Instrument, last_trade_id: u64) -> u64 {
        match self.marks.get_mut(instrument) {
            Some((_, accounted)) if last_trade_id > *accounted => {
                let missed = last_trade_id - *accounted;
                *accounted = last_trade_id;
                missed
            }
            _ => 0,
        }
    }
}

/// Kraken v1 trades carry no ids: the parser derives `micros * 1000 + position in the message`,
/// which repeats when two messages hold trades of the same microsecond. Across the session, make
/// them unique: the n-th trade of a microsecond gets `micros * 1000 + n` (Kraken sends trades in
/// time order, which this relies on).
#[derive(Debug, Default)]
struct DerivedIds {
    last: HashMap<Instrument, (i64, u64)>,
}

impl DerivedIds {
    fn renumber(&mut self, trade: Trade) -> Result<Trade> {
        let micros = trade.event_time().as_micros();
        let n = match self.last.get(trade.instrument()) {
            Some((m, n)) if *m == micros => n + 1,
            _ => 0,
        };
        self.last.insert(trade.instrument().clone(), (micros, n));
        let id = u64::try_from(micros).unwrap_or(0) * 1000 + n;
        Ok(Trade::new(
            trade.instrument().clone(),
            id,
            trade.price(),
            trade.quantity(),
            trade.side(),
            trade.event_time(),
            trade.receive_time(),
        )?)
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
    let mut derived = DerivedIds::default();
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
        let mut subscribed = true;
        for message in subscriptions(settings.feed, &settings.symbols) {
            if let Err(e) = socket.send(Message::text(message)).await {
                tracing::warn!(exchange = %name, error = %e, "subscribing failed");
                subscribed = false;
                break;
            }
        }
        if subscribed {
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
                match parse(settings.feed, text.as_str(), clock.now()) {
                    Ok(FeedMessage::Trades(mut trades)) => {
                        // Trades flowing mean the session is healthy: the next reconnect starts fast.
                        backoff = settings.min_backoff;
                        if settings.feed == Feed::KrakenV1 {
                            // No exchange ids: nothing to de-duplicate against, only to number uniquely.
                            for trade in trades {
                                summary.read += 1;
                                producer.publish(derived.renumber(trade)?).await?;
                            }
                            continue;
                        }
                        // Some feeds list a message's trades newest first: admit them in id order.
                        trades.sort_by(|a, b| a.instrument().as_str().cmp(b.instrument().as_str()).then(a.trade_id().cmp(&b.trade_id())));
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
                        let missed = if settings.feed.sequential_ids() { sequence.heartbeat(&instrument, last_trade_id) } else { 0 };
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

#[cfg(test)]
mod tests {
    use super::*;
    use wick_core::{TakerSide, Timestamp};

    fn trade(id: u64, micros: i64) -> Trade {
        let t = Timestamp::from_micros(micros).unwrap();
        Trade::new(Instrument::new("COINBASE:BTC-USD").unwrap(), id, "1".parse().unwrap(), "1".parse().unwrap(), TakerSide::Buy, t, t)
            .unwrap()
    }

    #[test]
    fn gaps_are_counted_once_whoever_reveals_them() {
        let mut s = Sequence::default();
        let btc = Instrument::new("COINBASE:BTC-USD").unwrap();
        assert_eq!(s.admit(&trade(12, 0)), (true, 0));
        // Heartbeats keep saying 13 while 13 has not arrived: one missing trade, counted once.
        assert_eq!(s.heartbeat(&btc, 13), 1);
        assert_eq!(s.heartbeat(&btc, 13), 0);
        // 13 never comes; 14 does: 13 was already counted.
        assert_eq!(s.admit(&trade(14, 0)), (true, 0));
        assert_eq!(s.admit(&trade(14, 0)), (false, 0), "a duplicate");
        assert_eq!(s.admit(&trade(17, 0)), (true, 2));
        assert_eq!(s.heartbeat(&btc, 17), 0);
    }

    #[test]
    fn derived_ids_stay_unique_within_a_microsecond() {
        let mut d = DerivedIds::default();
        let ids: Vec<u64> =
            [(5, 100), (5, 100), (5, 101), (5, 100)].iter().map(|(id, m)| d.renumber(trade(*id, *m)).unwrap().trade_id()).collect();
        assert_eq!(ids, vec![100_000, 100_001, 101_000, 100_000]);
    }

    #[test]
    fn feeds_belong_to_their_exchange() {
        assert_eq!(Feed::of(Exchange::Kraken, Some("v1")).unwrap(), Feed::KrakenV1);
        assert_eq!(Feed::of(Exchange::Binance, None).unwrap(), Feed::BinanceTrade);
        assert!(Feed::of(Exchange::Coinbase, Some("v1")).unwrap_err().contains("coinbase has no feed"));
        assert!(subscriptions(Feed::KrakenV2, &["BTC/USD".into()])[0].contains(r#""snapshot":true"#));
    }
}
