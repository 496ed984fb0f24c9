//! `backfill` against a local HTTP server that answers the exchanges' documented history
//! endpoints from a fixed set of trades: Binance `historicalTrades` and `aggTrades` (by time
//! window and by `fromId`), Coinbase Exchange product trades (newest first, `after` cursor),
//! Kraken `Trades` (`since` in nanoseconds, `last`), in documented pages; with scripted failures:
//! 429 and 418 with `Retry-After`, Kraken's HTTP 200 rate-limit error, a 5xx outage
//! mid-backfill, client errors. Published trades are read back from the real broker and compared
//! with the served trades of the range, in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wick_core::{Clock, SystemClock, TakerSide, Timestamp};

use feed_publisher::backfill::{self, BackfillSettings};
use feed_publisher::exchange::Exchange;
use feed_publisher::history::HistorySettings;
use feed_publisher::live::Feed;
use feed_publisher::metrics::Metrics;
use feed_publisher::run;

/// Binance aggregate ids are numbered apart from trade ids: the server's aggregate trade of trade
/// `id` is `id + AGG_OFFSET` (one trade per aggregate).
const AGG_OFFSET: u64 = 1_000_000_000;

/// One trade the server knows, with price and quantity in the live feeds' form (Kraken's REST
/// pads them with zeros).
#[derive(Clone, Debug, PartialEq)]
struct ServedTrade {
    id: u64,
    time_us: i64,
    price: String,
    quantity: String,
    taker_sells: bool,
}

impl ServedTrade {
    fn binance_trade(&self) -> String {
        format!(
            r#"{{"id":{},"price":"{}","qty":"{}","quoteQty":"1.0","time":{},"isBuyerMaker":{},"isBestMatch":true}}"#,
            self.id,
            self.price,
            self.quantity,
            self.time_us / 1000,
            self.taker_sells
        )
    }

    fn binance_agg_trade(&self) -> String {
        format!(
            r#"{{"a":{},"p":"{}","q":"{}","f":{},"l":{},"T":{},"m":{},"M":true}}"#,
            self.id + AGG_OFFSET,
            self.price,
            self.quantity,
            self.id,
            self.id,
            self.time_us / 1000,
            self.taker_sells
        )
    }

    /// `side` is the maker's.
    fn coinbase(&self) -> String {
        let time = Timestamp::from_micros(self.time_us).unwrap();
        let maker = if self.taker_sells { "buy" } else { "sell" };
        format!(r#"{{"time":"{time}","trade_id":{},"price":"{}","size":"{}","side":"{maker}"}}"#, self.id, self.price, self.quantity)
    }

    /// Kraken's time has up to 7 decimals (a 100 ns digit on odd ids).
    fn kraken_ns(&self) -> i64 {
        self.time_us * 1000 + if self.id % 2 == 1 { 700 } else { 0 }
    }

    fn kraken(&self) -> String {
        let time = format!("{}.{:06}{}", self.time_us / 1_000_000, self.time_us % 1_000_000, if self.id % 2 == 1 { "7" } else { "" });
        let side = if self.taker_sells { "s" } else { "b" };
        format!(r#"["{}000","{}000",{time},"{side}","l","",{}]"#, self.price, self.quantity, self.id)
    }
}

/// A scripted answer instead of the trades.
#[derive(Clone, Copy, Debug)]
enum Fault {
    TooManyRequests,
    Banned,
    /// Kraken: HTTP 200 with `{"error":["EGeneral:Too many requests"]}`.
    KrakenTooManyRequests,
    BadRequest,
}

/// Requests are counted by kind: pages (`limit`/`count` 1000) and look-ups (finding the start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Lookup,
    Page,
}

#[derive(Default)]
struct ServerState {
    trades: Vec<ServedTrade>,
    /// Faults by kind and request number of that kind (0-based, every request counted).
    faults: HashMap<(Kind, usize), Fault>,
    /// From this request of this kind on, every request answers 503 (while set).
    outage_from: Option<(Kind, usize)>,
    /// Every request's path and query, in order, with its kind and the status answered.
    requests: Vec<(String, Kind, u16)>,
}

impl ServerState {
    fn statuses(&self) -> Vec<u16> {
        self.requests.iter().map(|r| r.2).collect()
    }

    fn of_kind(&self, kind: Kind) -> Vec<&str> {
        self.requests.iter().filter(|r| r.1 == kind).map(|r| r.0.as_str()).collect()
    }
}

type Shared = Arc<Mutex<ServerState>>;

fn query(target: &str) -> HashMap<String, String> {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn kind(target: &str) -> Kind {
    let q = query(target);
    if q.get("limit").or(q.get("count")).is_some_and(|l| l == "1000") {
        Kind::Page
    } else {
        Kind::Lookup
    }
}

type Answer = (u16, Vec<(String, String)>, String);

fn json_list<'a>(trades: impl Iterator<Item = &'a ServedTrade>, render: fn(&ServedTrade) -> String) -> String {
    format!("[{}]", trades.map(render).collect::<Vec<_>>().join(","))
}

/// Each endpoint's documented paging.
fn trades_answer(trades: &[ServedTrade], target: &str) -> Answer {
    let q = query(target);
    let limit: usize = q.get("limit").or(q.get("count")).and_then(|l| l.parse().ok()).unwrap_or(500).min(1000);
    let ok = |body: String| (200, vec![("X-MBX-USED-WEIGHT-1M".to_owned(), "25".to_owned())], body);
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/api/v3/historicalTrades" => {
            let from: u64 = q["fromId"].parse().unwrap();
            ok(json_list(trades.iter().filter(|t| t.id >= from).take(limit), ServedTrade::binance_trade))
        }
        "/api/v3/aggTrades" => {
            let page: Vec<&ServedTrade> = if let Some(from) = q.get("fromId") {
                let from: u64 = from.parse().unwrap();
                trades.iter().filter(|t| t.id + AGG_OFFSET >= from).take(limit).collect()
            } else {
                let (start, end): (i64, i64) = (q["startTime"].parse().unwrap(), q["endTime"].parse().unwrap());
                if end - start > 3_600_000 {
                    return (400, vec![], r#"{"code":-1127,"msg":"More than 1 hours between startTime and endTime."}"#.into());
                }
                trades.iter().filter(|t| (start..=end).contains(&(t.time_us / 1000))).take(limit).collect()
            };
            ok(json_list(page.into_iter(), ServedTrade::binance_agg_trade))
        }
        "/products/BTC-USD/trades" => {
            // Newest first; `after=X`: the trades with ids below X.
            let below: u64 = q.get("after").map_or(u64::MAX, |a| a.parse().unwrap());
            let page: Vec<&ServedTrade> = trades.iter().rev().filter(|t| t.id < below).take(limit).collect();
            let mut headers = vec![];
            if let Some(oldest) = page.last() {
                headers.push(("CB-AFTER".to_owned(), oldest.id.to_string()));
            }
            (200, headers, json_list(page.into_iter(), ServedTrade::coinbase))
        }
        "/0/public/Trades" => {
            if q["pair"] != "XBTUSD" {
                return (200, vec![], r#"{"error":["EQuery:Unknown asset pair"]}"#.into());
            }
            let since: i64 = q["since"].parse().unwrap();
            let page: Vec<&ServedTrade> = trades.iter().filter(|t| t.kraken_ns() > since).take(limit).collect();
            let last = page.last().map_or(since, |t| t.kraken_ns());
            let rows = json_list(page.into_iter(), ServedTrade::kraken);
            (200, vec![], format!(r#"{{"error":[],"result":{{"XXBTZUSD":{rows},"last":"{last}"}}}}"#))
        }
        _ => (404, vec![], String::new()),
    }
}

fn answer(state: &mut ServerState, target: &str) -> (Kind, Answer) {
    let kind = kind(target);
    let number = state.requests.iter().filter(|r| r.1 == kind).count();
    if state.outage_from.is_some_and(|(k, from)| k == kind && number >= from) {
        return (kind, (503, vec![], "<html>503 Service Unavailable</html>".into()));
    }
    let retry_after = || vec![("Retry-After".to_owned(), "1".to_owned())];
    let answer = match state.faults.get(&(kind, number)) {
        Some(Fault::TooManyRequests) => (429, retry_after(), String::new()),
        Some(Fault::Banned) => (418, retry_after(), String::new()),
        Some(Fault::KrakenTooManyRequests) => (200, vec![], r#"{"error":["EGeneral:Too many requests"]}"#.into()),
        Some(Fault::BadRequest) => (400, vec![], r#"{"code":-1121,"msg":"Invalid symbol."}"#.into()),
        None => trades_answer(&state.trades, target),
    };
    (kind, answer)
}

/// Serves HTTP/1.1, one request per connection.
async fn history_server(state: Shared) -> String {
    wick_test_support::http_server(move |target: String| {
        let state = state.clone();
        async move {
            let mut state = state.lock().unwrap();
            let (kind, answer) = answer(&mut state, &target);
            state.requests.push((target, kind, answer.0));
            let (status, headers, body) = answer;
            wick_test_support::HttpAnswer { status, headers, body }
        }
    })
    .await
}

/// `count` trades from `first_us`, `step_us` apart, with varied prices (last digit never 0, as a
/// JSON number shows it), sizes and sides.
fn served_trades(count: u64, first_id: u64, first_us: i64, step_us: i64) -> Vec<ServedTrade> {
    (0..count)
        .map(|i| ServedTrade {
            id: first_id + i,
            time_us: first_us + i as i64 * step_us,
            price: format!("{}.{}", 60_000 + (i * 7919) % 500, 1 + i % 9),
            quantity: format!("0.{:04}1", (i * 104_729) % 9_999),
            taker_sells: i % 3 == 0,
        })
        .collect()
}

struct Target {
    config: feed_publisher::config::Config,
    market: String,
    dead_letters: String,
    state_dir: PathBuf,
}

async fn fresh_target() -> Target {
    let client = wick_test_support::kafka().await;
    let market = wick_test_support::topic(&client, "market-events", 16).await;
    let dead_letters = wick_test_support::topic(&client, "market-events-dlq", 1).await;
    let mut config = feed_publisher::config::Config::default();
    config.kafka.brokers = vec![wick_test_support::broker_address()];
    config.kafka.market_events_topic = market.clone();
    config.kafka.dead_letter_topic = dead_letters.clone();
    let state_dir = std::env::temp_dir().join(wick_test_support::unique_name("backfill-state"));
    Target { config, market, dead_letters, state_dir }
}

fn settings(feed: Feed, symbol: &str, url: &str, state_dir: &Path, range: (Timestamp, Timestamp), resume: bool) -> BackfillSettings {
    BackfillSettings {
        feed,
        symbols: vec![symbol.to_owned()],
        start: range.0,
        end: range.1,
        state_dir: state_dir.to_owned(),
        resume,
        history: HistorySettings {
            base_url: url.to_owned(),
            requests_per_minute: std::num::NonZeroU32::new(60_000).unwrap(),
            max_retries: 2,
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
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

/// (id, event time µs, price, quantity, taker side) of a trade.
type Row = (u64, i64, String, String, TakerSide);

/// Every trade published on `market` for `instrument`, in the order published.
async fn published(market: &str, instrument: &str) -> Vec<Row> {
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
        .map(|t| (t.trade_id(), t.event_time().as_micros(), t.price().to_string(), t.quantity().to_string(), t.side()))
        .collect()
}

/// The served trades as the live feed carries them, with ids numbered by `id`.
fn expected(trades: &[ServedTrade], id: fn(&ServedTrade) -> u64) -> Vec<Row> {
    trades
        .iter()
        .map(|t| {
            let side = if t.taker_sells { TakerSide::Sell } else { TakerSide::Buy };
            (id(t), t.time_us, t.price.clone(), t.quantity.clone(), side)
        })
        .collect()
}

fn time(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

fn state_of(target: &Target, exchange: Exchange, symbol: &str) -> Option<backfill::BackfillState> {
    backfill::read_state(&backfill::state_path(&target.state_dir, exchange, symbol)).unwrap()
}

#[tokio::test]
async fn binance_backfill_by_trade_id_waits_out_rate_limits_and_resumes_after_an_outage_without_duplicates() {
    // 3,500 trades from 01:00 (the first hour of the range has none), 1.5 s apart, to about
    // 02:27; the range ends at 02:20, so the last 300 are outside it.
    let trades = served_trades(3500, 5_000_000, time("2024-05-01T01:00:00Z").as_micros(), 1_500_000);
    let range = (time("2024-05-01T00:00:00Z"), time("2024-05-01T02:20:00Z"));
    let in_range: Vec<ServedTrade> = trades.iter().filter(|t| t.time_us < range.1.as_micros()).cloned().collect();
    assert_eq!(in_range.len(), 3200);
    let state = Arc::new(Mutex::new(ServerState { trades, ..ServerState::default() }));
    {
        let mut s = state.lock().unwrap();
        // Finding the first trade id: the empty first hour is rate limited, the second hour
        // answered with an IP ban; both are retried after Retry-After. From the third page on the
        // server is down.
        s.faults.insert((Kind::Lookup, 0), Fault::TooManyRequests);
        s.faults.insert((Kind::Lookup, 2), Fault::Banned);
        s.outage_from = Some((Kind::Page, 2));
    }
    let url = history_server(state.clone()).await;
    let target = fresh_target().await;

    // The first run fails during the outage, after two acknowledged pages.
    let (outcome, summary) = backfill_once(&target, &settings(Feed::BinanceTrade, "BTCUSDT", &url, &target.state_dir, range, false)).await;
    let error = format!("{:#}", outcome.unwrap_err());
    assert!(error.contains("503") && error.contains("giving up after 2 retries"), "{error}");
    assert_eq!(summary.published, 2000);
    let saved = state_of(&target, Exchange::Binance, "BTCUSDT").unwrap();
    assert_eq!((saved.feed.as_str(), saved.last_id, saved.last_time_us), ("trade", in_range[1999].id, in_range[1999].time_us));
    {
        let s = state.lock().unwrap();
        // 429, the empty hour again, 418, the second hour (the first aggregate trade's `f`), two
        // pages of historicalTrades from it, then 503 three times.
        assert_eq!(s.statuses(), [429, 200, 418, 200, 200, 200, 503, 503, 503]);
        let lookups = s.of_kind(Kind::Lookup);
        assert_eq!(lookups[0], lookups[1], "the rate-limited request is asked again");
        assert!(lookups[1].contains("aggTrades?symbol=BTCUSDT&startTime=1714521600000&endTime=1714525199999&limit=1"), "{}", lookups[1]);
        assert!(lookups[3].contains("startTime=1714525200000"), "{}", lookups[3]);
        let pages = s.of_kind(Kind::Page);
        assert!(pages[0].starts_with("/api/v3/historicalTrades?symbol=BTCUSDT&fromId=5000000&limit=1000"), "{}", pages[0]);
        assert!(pages[1].contains("fromId=5001000"), "{}", pages[1]);
    }

    // The server is back; --resume continues after the last acknowledged trade.
    state.lock().unwrap().outage_from = None;
    let (outcome, summary) = backfill_once(&target, &settings(Feed::BinanceTrade, "BTCUSDT", &url, &target.state_dir, range, true)).await;
    let report = outcome.unwrap();
    assert_eq!(summary.published, 1200);
    assert_eq!(report.summary.read, summary.published);
    assert!(state.lock().unwrap().of_kind(Kind::Page)[5].contains("fromId=5002000"));

    // A third run with --resume finds nothing left to publish.
    let (outcome, summary) = backfill_once(&target, &settings(Feed::BinanceTrade, "BTCUSDT", &url, &target.state_dir, range, true)).await;
    assert_eq!(outcome.unwrap().summary.read, 0);
    assert_eq!(summary.published, 0);

    // Exactly the served trades of the range, once each, in order, with the trade feed's ids.
    assert_eq!(published(&target.market, "BINANCE:BTC-USDT").await, expected(&in_range, |t| t.id));
    std::fs::remove_dir_all(&target.state_dir).unwrap();
}

#[tokio::test]
async fn binance_backfill_of_the_agg_trade_feed_publishes_aggregate_ids_and_resumes_only_that_feed() {
    let trades = served_trades(1500, 42, time("2024-05-01T00:30:00Z").as_micros(), 1_000_000);
    let range = (time("2024-05-01T00:00:00Z"), time("2024-05-01T01:00:00Z"));
    let in_range: Vec<ServedTrade> = trades.iter().filter(|t| t.time_us < range.1.as_micros()).cloned().collect();
    assert_eq!(in_range.len(), 1500);
    let state = Arc::new(Mutex::new(ServerState { trades, ..ServerState::default() }));
    let url = history_server(state.clone()).await;
    let target = fresh_target().await;

    let (outcome, summary) =
        backfill_once(&target, &settings(Feed::BinanceAggTrade, "BTCUSDT", &url, &target.state_dir, range, false)).await;
    let report = outcome.unwrap();
    assert_eq!((report.summary.read, summary.published), (1500, 1500));
    let pages = state.lock().unwrap().of_kind(Kind::Page).iter().map(|p| p.to_string()).collect::<Vec<_>>();
    assert!(pages[0].starts_with(&format!("/api/v3/aggTrades?symbol=BTCUSDT&fromId={}&limit=1000", 42 + AGG_OFFSET)), "{pages:?}");
    assert_eq!(published(&target.market, "BINANCE:BTC-USDT").await, expected(&in_range, |t| t.id + AGG_OFFSET));

    // Aggregate ids are not trade ids: a resume with the trade feed is refused.
    let (outcome, summary) = backfill_once(&target, &settings(Feed::BinanceTrade, "BTCUSDT", &url, &target.state_dir, range, true)).await;
    let error = format!("{:#}", outcome.unwrap_err());
    assert!(error.contains("ids of the aggTrade feed, not trade"), "{error}");
    assert_eq!(summary.published, 0);
    std::fs::remove_dir_all(&target.state_dir).unwrap();
}

#[tokio::test]
async fn coinbase_backfill_finds_the_start_pages_by_cursor_in_time_order_and_dead_letters_a_bad_trade() {
    // 4,000 trades with ids from 700,001, 1.2 s apart from 00:00:00.000321; the range is
    // [00:10, 01:10): ids 700,501 to 703,500.
    let mut trades = served_trades(4000, 700_001, time("2024-05-01T00:00:00.000321Z").as_micros(), 1_200_000);
    let range = (time("2024-05-01T00:10:00Z"), time("2024-05-01T01:10:00Z"));
    trades[1234].price = "6x0".into();
    let in_range: Vec<ServedTrade> =
        trades.iter().filter(|t| (range.0.as_micros()..range.1.as_micros()).contains(&t.time_us)).cloned().collect();
    assert_eq!((in_range[0].id, in_range.len()), (700_501, 3000));
    let state = Arc::new(Mutex::new(ServerState { trades: trades.clone(), ..ServerState::default() }));
    {
        let mut s = state.lock().unwrap();
        // A bisecting look-up and the first page are rate limited; the third page meets an outage.
        s.faults.insert((Kind::Lookup, 3), Fault::TooManyRequests);
        s.faults.insert((Kind::Page, 0), Fault::TooManyRequests);
        s.outage_from = Some((Kind::Page, 3));
    }
    let url = history_server(state.clone()).await;
    let target = fresh_target().await;

    let (outcome, summary) =
        backfill_once(&target, &settings(Feed::CoinbaseExchange, "BTC-USD", &url, &target.state_dir, range, false)).await;
    let error = format!("{:#}", outcome.unwrap_err());
    assert!(error.contains("503") && error.contains("giving up after 2 retries"), "{error}");
    // Two pages, 2,000 entries, one of them refused.
    assert_eq!(summary.published, 1999);
    assert_eq!(state_of(&target, Exchange::Coinbase, "BTC-USD").unwrap().last_id, 702_500);
    {
        let s = state.lock().unwrap();
        let lookups = s.of_kind(Kind::Lookup);
        assert_eq!(lookups[0], "/products/BTC-USD/trades?limit=1", "the newest trade first");
        // Bisecting 22 bits of ids, one probe retried.
        assert!((20..=25).contains(&lookups.len()), "{lookups:?}");
        let pages = s.of_kind(Kind::Page);
        assert_eq!(pages[0], "/products/BTC-USD/trades?limit=1000&after=701501");
        assert_eq!(pages[1], pages[0], "the rate-limited page is asked again");
        assert_eq!(pages[2], "/products/BTC-USD/trades?limit=1000&after=702501");
    }

    state.lock().unwrap().outage_from = None;
    let (outcome, summary) =
        backfill_once(&target, &settings(Feed::CoinbaseExchange, "BTC-USD", &url, &target.state_dir, range, true)).await;
    let report = outcome.unwrap();
    assert_eq!((report.summary.read, report.summary.rejected, summary.published), (1000, 0, 1000));
    assert_eq!(state.lock().unwrap().of_kind(Kind::Page).last().copied(), Some("/products/BTC-USD/trades?limit=1000&after=704501"));

    // In time order, exactly once, the bad trade left out and dead-lettered with its reason.
    let good: Vec<ServedTrade> = in_range.iter().filter(|t| t.price != "6x0").cloned().collect();
    assert_eq!(published(&target.market, "COINBASE:BTC-USD").await, expected(&good, |t| t.id));
    let client = wick_test_support::kafka().await;
    let dlq = wick_test_support::partition(&client, &target.dead_letters, 0).await;
    let (letters, _) = wick_test_support::read_to_end(&dlq, 0, Duration::from_secs(10)).await.unwrap();
    assert_eq!(letters.len(), 1);
    let headers = &letters[0].record.headers;
    assert!(String::from_utf8_lossy(&headers["reason"]).starts_with("price:"), "{headers:?}");
    assert_eq!(String::from_utf8_lossy(&headers["source"]), "backfill:coinbase:BTC-USD");
    assert_eq!(letters[0].record.value.as_deref().unwrap(), trades[1234].coinbase().as_bytes());
    std::fs::remove_dir_all(&target.state_dir).unwrap();
}

#[tokio::test]
async fn kraken_backfill_pages_by_since_backs_off_its_200_rate_limit_errors_and_resumes_after_an_outage() {
    // 3,000 trades 0.7 s apart from 00:00; the range [00:05, 00:30) holds ids 430 to 2,572.
    let trades = served_trades(3000, 1, time("2024-05-01T00:00:00Z").as_micros(), 700_000);
    let range = (time("2024-05-01T00:05:00Z"), time("2024-05-01T00:30:00Z"));
    let in_range: Vec<ServedTrade> =
        trades.iter().filter(|t| (range.0.as_micros()..range.1.as_micros()).contains(&t.time_us)).cloned().collect();
    assert_eq!((in_range[0].id, in_range.len()), (430, 2143));
    let state = Arc::new(Mutex::new(ServerState { trades, ..ServerState::default() }));
    {
        let mut s = state.lock().unwrap();
        s.faults.insert((Kind::Page, 0), Fault::KrakenTooManyRequests);
        s.faults.insert((Kind::Page, 2), Fault::TooManyRequests);
        s.outage_from = Some((Kind::Page, 4));
    }
    let url = history_server(state.clone()).await;
    let target = fresh_target().await;

    let (outcome, summary) = backfill_once(&target, &settings(Feed::KrakenV2, "BTC/USD", &url, &target.state_dir, range, false)).await;
    let error = format!("{:#}", outcome.unwrap_err());
    assert!(error.contains("503") && error.contains("giving up after 2 retries"), "{error}");
    // Two pages: the second starts with the last trade of the first again (same microsecond),
    // which is dropped by its id.
    assert_eq!(summary.published, 1999);
    let saved = state_of(&target, Exchange::Kraken, "BTC/USD").unwrap();
    assert_eq!((saved.last_id, saved.last_time_us), (in_range[1998].id, in_range[1998].time_us));
    {
        let s = state.lock().unwrap();
        assert_eq!(s.statuses(), [200, 200, 429, 200, 503, 503, 503], "Kraken's rate limit is an HTTP 200");
        let pages = s.of_kind(Kind::Page);
        assert_eq!(pages[0], format!("/0/public/Trades?pair=XBTUSD&since={}&count=1000", range.0.as_micros() * 1000 - 1));
        assert_eq!(pages[1], pages[0], "the rate-limited page is asked again");
        // The next page starts in the microsecond of the last trade (its later ids are dropped).
        assert_eq!(pages[2], format!("/0/public/Trades?pair=XBTUSD&since={}&count=1000", in_range[999].time_us * 1000 - 1));
    }

    state.lock().unwrap().outage_from = None;
    let (outcome, summary) = backfill_once(&target, &settings(Feed::KrakenV2, "BTC/USD", &url, &target.state_dir, range, true)).await;
    assert_eq!(outcome.unwrap().summary.read, (in_range.len() - 1999) as u64);
    assert_eq!(summary.published, (in_range.len() - 1999) as u64);

    // v2's form of the numbers (REST pads them), times cut to the microsecond, once each, in order.
    assert_eq!(published(&target.market, "KRAKEN:BTC-USD").await, expected(&in_range, |t| t.id));
    std::fs::remove_dir_all(&target.state_dir).unwrap();
}

#[tokio::test]
async fn client_errors_fail_at_once_with_the_exchange_message() {
    let range = (time("2024-05-01T00:00:00Z"), time("2024-05-01T00:10:00Z"));
    let cases = [
        (
            Feed::BinanceTrade,
            "BTCUSDT",
            Exchange::Binance,
            Some(Fault::BadRequest),
            ["HTTP 400", r#"{"code":-1121,"msg":"Invalid symbol."}"#],
        ),
        (Feed::KrakenV2, "ETH/USD", Exchange::Kraken, None, ["pair=ETHUSD", "EQuery:Unknown asset pair"]),
    ];
    for (feed, symbol, exchange, fault, messages) in cases {
        let state = Arc::new(Mutex::new(ServerState::default()));
        if let Some(fault) = fault {
            state.lock().unwrap().faults.insert((Kind::Lookup, 0), fault);
        }
        let url = history_server(state.clone()).await;
        let target = fresh_target().await;
        let (outcome, summary) = backfill_once(&target, &settings(feed, symbol, &url, &target.state_dir, range, false)).await;
        let error = format!("{:#}", outcome.unwrap_err());
        assert!(error.contains("the exchange refused the request") && messages.iter().all(|m| error.contains(m)), "{error}");
        assert_eq!(summary.published, 0);
        assert_eq!(state.lock().unwrap().requests.len(), 1, "{feed:?}: a refusal is not retried");
        assert!(state_of(&target, exchange, symbol).is_none());
    }
}

#[tokio::test]
async fn feeds_without_exchange_ids_are_refused() {
    let target = fresh_target().await;
    let range = (time("2024-05-01T00:00:00Z"), time("2024-05-01T00:10:00Z"));
    let (outcome, _) =
        backfill_once(&target, &settings(Feed::KrakenV1, "BTC/USD", "http://127.0.0.1:9", &target.state_dir, range, false)).await;
    let error = format!("{:#}", outcome.unwrap_err());
    assert!(error.contains("kraken v1 feed has no REST history"), "{error}");
}
