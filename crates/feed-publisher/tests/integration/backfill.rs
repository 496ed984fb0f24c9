//! `backfill` against a local HTTP server that answers Binance's `GET /api/v3/aggTrades` from a
//! fixed set of trades (by time window and by `fromId`, in documented pages), with scripted
//! failures: 429 and 418 with `Retry-After`, a 5xx outage mid-backfill, a 400 with Binance's error
//! body. Published trades are read back from the real broker.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wick_core::{Clock, SystemClock, TakerSide, Timestamp};

use feed_publisher::backfill::{self, BackfillSettings};
use feed_publisher::exchange::Exchange;
use feed_publisher::metrics::Metrics;
use feed_publisher::run;

/// One aggregate trade the server knows: (id, trade time ms, price, quantity, buyer is maker).
#[derive(Clone, Debug, PartialEq)]
struct ServedTrade {
    id: u64,
    time_ms: i64,
    price: String,
    quantity: String,
    buyer_is_maker: bool,
}

impl ServedTrade {
    fn json(&self) -> String {
        format!(
            r#"{{"a":{},"p":"{}","q":"{}","f":{},"l":{},"T":{},"m":{},"M":true}}"#,
            self.id,
            self.price,
            self.quantity,
            self.id * 3,
            self.id * 3 + 2,
            self.time_ms,
            self.buyer_is_maker
        )
    }
}

/// A scripted answer instead of the trades.
#[derive(Clone, Copy, Debug)]
enum Fault {
    TooManyRequests,
    Banned,
    BadRequest,
}

#[derive(Default)]
struct ServerState {
    trades: Vec<ServedTrade>,
    /// Faults by request number (0-based, every request counted).
    faults: HashMap<usize, Fault>,
    /// From this request number on, every request answers 503 (while set).
    outage_from: Option<usize>,
    /// Every request's path and query, in order, with the status answered.
    requests: Vec<(String, u16)>,
}

type Shared = Arc<Mutex<ServerState>>;

fn query(target: &str) -> HashMap<String, String> {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The aggTrades semantics: `fromId` pages by id, `startTime`/`endTime` (inclusive, at most an
/// hour apart) by time; `limit` trades at most.
fn answer(state: &mut ServerState, target: &str) -> (u16, Vec<(String, String)>, String) {
    let number = state.requests.len();
    if state.outage_from.is_some_and(|from| number >= from) {
        return (503, vec![], "<html>503 Service Unavailable</html>".into());
    }
    match state.faults.get(&number) {
        Some(Fault::TooManyRequests) => return (429, vec![("Retry-After".into(), "1".into())], String::new()),
        Some(Fault::Banned) => return (418, vec![("Retry-After".into(), "1".into())], String::new()),
        Some(Fault::BadRequest) => return (400, vec![], r#"{"code":-1121,"msg":"Invalid symbol."}"#.into()),
        None => {}
    }
    if !target.starts_with("/api/v3/aggTrades?") {
        return (404, vec![], String::new());
    }
    let q = query(target);
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(500).min(1000);
    let page: Vec<&ServedTrade> = if let Some(from) = q.get("fromId") {
        let from: u64 = from.parse().unwrap();
        state.trades.iter().filter(|t| t.id >= from).take(limit).collect()
    } else {
        let start: i64 = q["startTime"].parse().unwrap();
        let end: i64 = q["endTime"].parse().unwrap();
        if end - start > 3_600_000 {
            return (400, vec![], r#"{"code":-1127,"msg":"More than 1 hours between startTime and endTime."}"#.into());
        }
        state.trades.iter().filter(|t| (start..=end).contains(&t.time_ms)).take(limit).collect()
    };
    let body = format!("[{}]", page.iter().map(|t| t.json()).collect::<Vec<_>>().join(","));
    (200, vec![("X-MBX-USED-WEIGHT-1M".into(), "2".into())], body)
}

/// Serves HTTP/1.1, one request per connection.
async fn binance_server(state: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let state = state.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let target = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let (status, headers, body) = {
                    let mut state = state.lock().unwrap();
                    let answer = answer(&mut state, &target);
                    state.requests.push((target, answer.0));
                    answer
                };
                let mut response = format!(
                    "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&body);
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    url
}

/// `count` trades, one every 1.5 s from `first_ms`, with varied prices, sizes and sides.
fn served_trades(count: u64, first_id: u64, first_ms: i64) -> Vec<ServedTrade> {
    (0..count)
        .map(|i| ServedTrade {
            id: first_id + i,
            time_ms: first_ms + i as i64 * 1500,
            price: format!("{}.{:02}", 60_000 + (i * 7919) % 500, i % 100),
            quantity: format!("0.{:05}", 1 + (i * 104_729) % 99_999),
            buyer_is_maker: i % 3 == 0,
        })
        .collect()
}

struct Target {
    config: feed_publisher::config::Config,
    market: String,
}

async fn fresh_topics() -> Target {
    let client = wick_test_support::kafka().await;
    let market = wick_test_support::topic(&client, "market-events", 16).await;
    let dead_letters = wick_test_support::topic(&client, "market-events-dlq", 1).await;
    let mut config = feed_publisher::config::Config::default();
    config.kafka.brokers = vec![wick_test_support::broker_address()];
    config.kafka.market_events_topic = market.clone();
    config.kafka.dead_letter_topic = dead_letters;
    Target { config, market }
}

fn settings(url: &str, state_dir: &Path, start: Timestamp, end: Timestamp, resume: bool) -> BackfillSettings {
    BackfillSettings {
        exchange: Exchange::Binance,
        symbols: vec!["BTCUSDT".into()],
        start,
        end,
        base_url: url.to_owned(),
        state_dir: state_dir.to_owned(),
        resume,
        requests_per_minute: std::num::NonZeroU32::new(60_000).unwrap(),
        max_retries: 2,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

/// One `backfill` run with its own producer, as the binary does it: the producer is flushed and
/// closed even when the backfill fails.
async fn backfill_once(target: &Target, settings: &BackfillSettings) -> (anyhow::Result<backfill::BackfillReport>, run::Summary) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let client = run::connect(&target.config).await.unwrap();
    let producer = run::start_producer(&target.config, client, Metrics::new(), clock.clone()).await.unwrap();
    let (_trigger, shutdown) = wick_service::shutdown::channel();
    let outcome = backfill::run(settings, &producer, clock, &shutdown).await;
    let summary = outcome.as_ref().map(|r| r.summary).unwrap_or_default();
    let (summary, _) = run::finish(producer, summary).await.unwrap();
    (outcome, summary)
}

/// Every trade published on `market` for `instrument`, in order, as (id, time ms, price, qty, side).
async fn published(market: &str, instrument: &str) -> Vec<(u64, i64, String, String, TakerSide)> {
    let client = wick_test_support::kafka().await;
    let p = wick_test_support::partition(&client, market, wick_kafka::partitioner::partition_for(instrument.as_bytes(), 16)).await;
    let (records, _) = wick_test_support::read_to_end(&p, 0, Duration::from_secs(10)).await.unwrap();
    records
        .iter()
        .flat_map(|r| {
            let content_type = r.record.headers.get(wick_wire::CONTENT_TYPE_HEADER).map(Vec::as_slice);
            wick_wire::trades_of_record(content_type, r.record.value.as_deref().unwrap(), Timestamp::MIN).unwrap()
        })
        .filter(|(i, _)| i.as_str() == instrument)
        .flat_map(|(_, trades)| trades)
        .map(|t| (t.trade_id(), t.event_time().as_millis(), t.price().to_string(), t.quantity().to_string(), t.side()))
        .collect()
}

fn expected(trades: &[ServedTrade]) -> Vec<(u64, i64, String, String, TakerSide)> {
    trades
        .iter()
        .map(|t| {
            let side = if t.buyer_is_maker { TakerSide::Sell } else { TakerSide::Buy };
            let decimal = |s: &str| s.parse::<wick_core::Decimal>().unwrap().to_string();
            (t.id, t.time_ms, decimal(&t.price), decimal(&t.quantity), side)
        })
        .collect()
}

fn time(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

#[tokio::test]
async fn binance_backfill_pages_waits_out_rate_limits_and_resumes_after_an_outage_without_duplicates() {
    // 3,500 trades from 01:00 (the first hour of the range has none), 1.5 s apart, to about
    // 02:27; the range ends at 02:20, so the last ~280 are outside it.
    let trades = served_trades(3500, 5_000_000, time("2024-05-01T01:00:00Z").as_millis());
    let (start, end) = (time("2024-05-01T00:00:00Z"), time("2024-05-01T02:20:00Z"));
    let in_range: Vec<ServedTrade> = trades.iter().filter(|t| t.time_ms < end.as_millis()).cloned().collect();
    assert!(in_range.len() > 3000 && in_range.len() < trades.len());
    let state = Arc::new(Mutex::new(ServerState { trades, ..ServerState::default() }));
    {
        let mut s = state.lock().unwrap();
        // The first request (the empty hour) is rate limited, the third (the first page) is
        // answered with an IP ban; both are retried after Retry-After. From the sixth request
        // (after two pages were served) the server is down.
        s.faults.insert(0, Fault::TooManyRequests);
        s.faults.insert(2, Fault::Banned);
        s.outage_from = Some(5);
    }
    let url = binance_server(state.clone()).await;
    let target = fresh_topics().await;
    let state_dir = std::env::temp_dir().join(wick_test_support::unique_name("backfill-state"));

    // The first run fails during the outage, after two acknowledged pages.
    let (outcome, summary) = backfill_once(&target, &settings(&url, &state_dir, start, end, false)).await;
    let error = format!("{:#}", outcome.unwrap_err());
    assert!(error.contains("503") && error.contains("giving up after 2 retries"), "{error}");
    assert_eq!(summary.published, 2000);
    let saved = backfill::read_state(&backfill::state_path(&state_dir, Exchange::Binance, "BTCUSDT")).unwrap().unwrap();
    assert_eq!(saved.last_id, in_range[1999].id);
    {
        let s = state.lock().unwrap();
        let statuses: Vec<u16> = s.requests.iter().map(|(_, status)| *status).collect();
        // 429, the empty hour again, 418, the first page, the second page, then 503 three times.
        assert_eq!(statuses, [429, 200, 418, 200, 200, 503, 503, 503]);
        assert_eq!(s.requests[0].0, s.requests[1].0, "the rate-limited request is asked again");
        assert!(s.requests[1].0.contains("startTime=1714521600000&endTime=1714525199999"), "{}", s.requests[1].0);
        assert!(s.requests[3].0.contains("startTime=1714525200000"), "{}", s.requests[3].0);
        assert!(s.requests[4].0.contains(&format!("fromId={}", in_range[999].id + 1)), "{}", s.requests[4].0);
    }

    // The server is back; --resume continues after the last acknowledged trade.
    state.lock().unwrap().outage_from = None;
    let (outcome, summary) = backfill_once(&target, &settings(&url, &state_dir, start, end, true)).await;
    let report = outcome.unwrap();
    assert_eq!(summary.published, (in_range.len() - 2000) as u64);
    assert_eq!(report.summary.read, summary.published);
    assert!(state.lock().unwrap().requests[8].0.contains(&format!("fromId={}", in_range[1999].id + 1)));

    // A third run with --resume finds nothing left to publish.
    let (outcome, summary) = backfill_once(&target, &settings(&url, &state_dir, start, end, true)).await;
    assert_eq!(outcome.unwrap().summary.read, 0);
    assert_eq!(summary.published, 0);

    // Exactly the served trades of the range, once each, normalized like the live aggTrade feed.
    let mut got = published(&target.market, "BINANCE:BTC-USDT").await;
    got.sort_by_key(|t| t.0);
    assert_eq!(got, expected(&in_range));
    std::fs::remove_dir_all(&state_dir).unwrap();
}

#[tokio::test]
async fn a_binance_client_error_fails_at_once_with_the_exchange_message() {
    let state = Arc::new(Mutex::new(ServerState::default()));
    state.lock().unwrap().faults.insert(0, Fault::BadRequest);
    let url = binance_server(state.clone()).await;
    let target = fresh_topics().await;
    let state_dir = std::env::temp_dir().join(wick_test_support::unique_name("backfill-state"));
    let (start, end) = (time("2024-05-01T00:00:00Z"), time("2024-05-01T00:10:00Z"));
    let (outcome, summary) = backfill_once(&target, &settings(&url, &state_dir, start, end, false)).await;
    let error = format!("{:#}", outcome.unwrap_err());
    assert!(error.contains("HTTP 400") && error.contains("Invalid symbol."), "{error}");
    assert_eq!(summary.published, 0);
    assert_eq!(state.lock().unwrap().requests.len(), 1, "a 400 is not retried");
    assert!(backfill::read_state(&backfill::state_path(&state_dir, Exchange::Binance, "BTCUSDT")).unwrap().is_none());
}
