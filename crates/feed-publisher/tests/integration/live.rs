//! Live sessions against a local WebSocket server replaying the exchanges' documented payloads:
//! subscription, a disconnect mid-stream, a duplicate after the reconnect, a malformed frame, an
//! unknown message type, and sequence gaps, end to end into the real broker. Gap repair against a
//! local REST server answering the exchanges' documented trade history endpoints (Binance
//! `historicalTrades` and `aggTrades`, Coinbase Exchange product trades) from the full set of
//! trades, with held answers (the live stream goes on meanwhile), outages and holes.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Mutex, Notify};
use tokio_tungstenite::tungstenite::Message;
use wick_core::{Clock, SystemClock, TakerSide, Timestamp, Trade};

use feed_publisher::exchange::{binance, coinbase, FeedMessage};
use feed_publisher::history::HistorySettings;
use feed_publisher::live::{self, Feed, LiveSettings, RepairSettings};
use feed_publisher::metrics::Metrics;
use feed_publisher::run;

/// One step of a scripted connection.
enum Step {
    Send(String),
    /// Drop the connection without a close frame.
    Disconnect,
}

/// Serves `script[i]` to the i-th connection (after reading its subscription message); the last
/// connection stays open afterwards. Returns the URL and the subscriptions received.
async fn fixture_server(script: Vec<Vec<Step>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let subscriptions = Arc::new(Mutex::new(Vec::new()));
    let seen = subscriptions.clone();
    tokio::spawn(async move {
        for steps in script {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            if let Some(Ok(Message::Text(sub))) = ws.next().await {
                seen.lock().await.push(sub.as_str().to_owned());
            }
            let mut dropped = false;
            for step in steps {
                match step {
                    Step::Send(text) => ws.send(Message::text(text)).await.unwrap(),
                    Step::Disconnect => {
                        dropped = true;
                        break;
                    }
                }
            }
            if !dropped {
                // Keep the last connection open until the client goes away.
                while let Some(Ok(_)) = ws.next().await {}
            }
        }
    });
    (url, subscriptions)
}

/// A live session publishing into fresh topics, running until its trigger fires.
struct Session {
    market: String,
    dead_letters: String,
    metrics: Metrics,
    trigger: wick_service::shutdown::ShutdownTrigger,
    task: tokio::task::JoinHandle<(anyhow::Result<run::Summary>, feed_publisher::producer::Producer)>,
}

async fn start_session(feed: Feed, symbol: &str, url: String, idle_timeout: Duration) -> Session {
    start_repairing_session(feed, symbol, url, idle_timeout, None).await
}

async fn start_repairing_session(feed: Feed, symbol: &str, url: String, idle_timeout: Duration, repair: Option<RepairSettings>) -> Session {
    let client = wick_test_support::kafka().await;
    let market = wick_test_support::topic(&client, "market-events", 16).await;
    let dead_letters = wick_test_support::topic(&client, "market-events-dlq", 1).await;
    let mut config = feed_publisher::config::Config::default();
    config.kafka.brokers = vec![wick_test_support::broker_address()];
    config.kafka.market_events_topic = market.clone();
    config.kafka.dead_letter_topic = dead_letters.clone();
    let metrics = Metrics::new();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let producer = run::start_producer(&config, run::connect(&config).await.unwrap(), metrics.clone(), clock.clone()).await.unwrap();
    let settings = LiveSettings {
        feed,
        symbols: vec![symbol.into()],
        url,
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        idle_timeout,
        repair,
    };
    let (trigger, shutdown) = wick_service::shutdown::channel();
    let task = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let summary = live::run(&settings, &producer, &metrics, clock, &shutdown).await;
            (summary, producer)
        })
    };
    Session { market, dead_letters, metrics, trigger, task }
}

impl Session {
    /// Stops the session, flushing the producer, and returns its summary and producer figures.
    async fn stop(self) -> (run::Summary, feed_publisher::producer::ProducerStats) {
        self.trigger.trigger();
        let (summary, producer) = self.task.await.unwrap();
        run::finish(producer, summary.unwrap()).await.unwrap()
    }
}

/// Waits until the session has handed `count` trades of `instrument` to the broker.
async fn wait_published(metrics: &Metrics, instrument: &str, count: u64) {
    let instrument = wick_core::Instrument::new(instrument).unwrap();
    wick_test_support::wait_until(&format!("{count} trades of {instrument} are published"), Duration::from_secs(20), || {
        let done = metrics.published_total(&instrument) == count;
        async move { done }
    })
    .await
    .unwrap();
}

/// Every trade published on `market` for `instrument`, in order.
async fn published(market: &str, instrument: &str) -> Vec<wick_core::Trade> {
    let client = wick_test_support::kafka().await;
    let p = wick_test_support::partition(&client, market, wick_kafka::partitioner::partition_for(instrument.as_bytes(), 16)).await;
    let (records, _) = wick_test_support::read_to_end(&p, 0, Duration::from_secs(10)).await.unwrap();
    records
        .iter()
        .flat_map(|r| {
            let content_type = r.record.headers.get(wick_wire::CONTENT_TYPE_HEADER).map(Vec::as_slice);
            wick_wire::trades_of_record(content_type, r.record.value.as_deref().unwrap(), wick_core::Timestamp::MIN).unwrap()
        })
        .filter(|(i, _)| i.as_str() == instrument)
        .flat_map(|(_, trades)| trades)
        .collect()
}

fn coinbase_match(kind: &str, id: u64, price: &str, maker_side: &str) -> String {
    format!(
        r#"{{"type":"{kind}","trade_id":{id},"sequence":{},"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:{:02}.028459Z","product_id":"BTC-USD","size":"5.23512","price":"{price}","side":"{maker_side}"}}"#,
        40 + id,
        id
    )
}

#[tokio::test]
async fn coinbase_session_survives_disconnects_and_bad_frames_and_loses_nothing() {
    let (url, subscriptions) = fixture_server(vec![
        vec![
            Step::Send(r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}"#.into()),
            Step::Send(coinbase_match("last_match", 9, "400.00", "buy")),
            Step::Send(coinbase_match("match", 10, "400.23", "sell")),
            Step::Disconnect,
        ],
        vec![
            Step::Send(coinbase_match("match", 10, "400.23", "sell")), // re-sent after the reconnect
            Step::Send("{\"type\":\"match\",\"trade_id\":".into()),    // malformed
            Step::Send(r#"{"type":"l2update","product_id":"BTC-USD","changes":[]}"#.into()), // unknown type
            Step::Send(coinbase_match("match", 12, "401.00", "buy")),  // 11 never arrives
            Step::Send(
                r#"{"type":"heartbeat","sequence":90,"last_trade_id":13,"product_id":"BTC-USD","time":"2014-11-07T08:19:28.464459Z"}"#
                    .into(),
            ),
        ],
    ])
    .await;
    let session = start_session(Feed::CoinbaseExchange, "BTC-USD", url, Duration::from_secs(30)).await;
    let metrics = session.metrics.clone();
    let gauge = |c: &prometheus::IntCounterVec| c.with_label_values(&["coinbase"]).get();
    wick_test_support::wait_until("the session has seen every frame", Duration::from_secs(20), || {
        let done = gauge(&metrics.gaps) == 2 && metrics.rejected_total("coinbase") == 2;
        async move { done }
    })
    .await
    .unwrap();
    let (market, dead_letters) = (session.market.clone(), session.dead_letters.clone());
    let (summary, stats) = session.stop().await;
    assert_eq!((summary.read, summary.rejected), (6, 2), "{summary}: 4 trades (one a duplicate) and 2 refused frames");
    assert_eq!(stats.trades, 3);
    assert_eq!(gauge(&metrics.duplicates), 1);
    assert_eq!(gauge(&metrics.gaps), 2, "trade 11 skipped, and the heartbeat's 13 never arrived");

    // The subscription was sent again after the reconnect.
    let subs = subscriptions.lock().await.clone();
    assert_eq!(subs.len(), 2);
    assert!(subs.iter().all(|s| s.contains("\"matches\"") && s.contains("BTC-USD")), "{subs:?}");

    let trades = published(&market, "COINBASE:BTC-USD").await;
    let summary: Vec<(u64, String, wick_core::TakerSide)> =
        trades.iter().map(|t| (t.trade_id(), t.price().to_string(), t.side())).collect();
    use wick_core::TakerSide::{Buy, Sell};
    assert_eq!(summary, vec![(9, "400.00".into(), Sell), (10, "400.23".into(), Buy), (12, "401.00".into(), Sell)]);

    let client = wick_test_support::kafka().await;
    let dlq = wick_test_support::partition(&client, &dead_letters, 0).await;
    let (letters, _) = wick_test_support::read_to_end(&dlq, 0, Duration::from_secs(10)).await.unwrap();
    let reasons: Vec<String> = letters.iter().map(|l| String::from_utf8_lossy(&l.record.headers["reason"]).into_owned()).collect();
    assert_eq!(letters.len(), 2, "{reasons:?}");
    assert!(reasons[0].starts_with("malformed JSON"), "{reasons:?}");
    assert_eq!(reasons[1], "unknown message type \"l2update\"");
    assert_eq!(letters[1].record.value.as_deref(), Some(&br#"{"type":"l2update","product_id":"BTC-USD","changes":[]}"#[..]));
}

#[tokio::test]
async fn kraken_session_keeps_numbers_exact_and_reconnects_when_silent() {
    let trade = |id: u64, price: &str, qty: &str| {
        format!(
            r#"{{"channel":"trade","type":"update","data":[{{"symbol":"BTC/USD","side":"buy","price":{price},"qty":{qty},"ord_type":"limit","trade_id":{id},"timestamp":"2023-10-06T17:35:55.440295Z"}}]}}"#
        )
    };
    // The first connection goes silent (no close): the session must notice and reconnect.
    let (url, subscriptions) = fixture_server(vec![
        vec![Step::Send(trade(10218208, "105944.20", "0.00027625"))],
        vec![Step::Send(trade(10218208, "105944.20", "0.00027625")), Step::Send(trade(10218210, "105910.50", "0.00012460"))],
    ])
    .await;
    // The fixture server keeps connection 1 open until the client leaves; the idle timeout ends it.
    let session = start_session(Feed::KrakenV2, "BTC/USD", url, Duration::from_millis(300)).await;
    let metrics = session.metrics.clone();
    wick_test_support::wait_until("the second connection's trades arrive", Duration::from_secs(20), || {
        let done = metrics.gaps.with_label_values(&["kraken"]).get() == 1;
        async move { done }
    })
    .await
    .unwrap();
    let market = session.market.clone();
    let (_, stats) = session.stop().await;
    let trades = published(&market, "KRAKEN:BTC-USD").await;
    assert_eq!(stats.trades, 2);
    assert_eq!(metrics.duplicates.with_label_values(&["kraken"]).get(), 1);
    assert_eq!(subscriptions.lock().await.len(), 2);
    assert!(subscriptions.lock().await[0].contains(r#""channel":"trade""#));

    let got: Vec<(u64, String, String)> = trades.iter().map(|t| (t.trade_id(), t.price().to_string(), t.quantity().to_string())).collect();
    assert_eq!(got, vec![(10218208, "105944.20".into(), "0.00027625".into()), (10218210, "105910.50".into(), "0.00012460".into())]);
}

#[tokio::test]
async fn kraken_v1_and_advanced_trade_feeds_subscribe_and_publish() {
    // Kraken v1: positional arrays, control events, derived ids (no gap counting).
    let (url, subscriptions) = fixture_server(vec![vec![
        Step::Send(r#"{"connectionID":1,"event":"systemStatus","status":"online","version":"1.9.0"}"#.into()),
        Step::Send(r#"{"channelID":0,"channelName":"trade","event":"subscriptionStatus","pair":"XBT/USD","status":"subscribed","subscription":{"name":"trade"}}"#.into()),
        Step::Send(r#"[0,[["5541.20000","0.15850568","1534614057.321597","s","l",""],["6060.00000","0.02455000","1534614057.324998","b","l",""]],"trade","XBT/USD"]"#.into()),
        Step::Send(r#"{"event":"heartbeat"}"#.into()),
    ]])
    .await;
    let session = start_session(Feed::KrakenV1, "XBT/USD", url, Duration::from_secs(30)).await;
    let metrics = session.metrics.clone();
    wait_published(&metrics, "KRAKEN:BTC-USD", 2).await;
    let market = session.market.clone();
    let (summary, stats) = session.stop().await;
    assert_eq!((summary.read, summary.rejected, stats.trades), (2, 0, 2), "{summary}");
    assert_eq!(metrics.gaps.with_label_values(&["kraken"]).get(), 0, "derived v1 ids are not a sequence");
    assert!(subscriptions.lock().await[0].contains(r#""event":"subscribe""#));
    let trades = published(&market, "KRAKEN:BTC-USD").await;
    assert_eq!(trades.iter().map(|t| t.price().to_string()).collect::<Vec<_>>(), vec!["5541.20000", "6060.00000"]);

    // Coinbase Advanced Trade: market_trades, maker side flipped to the taker's.
    let (url, subscriptions) = fixture_server(vec![vec![
        Step::Send(r#"{"channel":"subscriptions","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":0,"events":[]}"#.into()),
        Step::Send(r#"{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":1,"events":[{"type":"snapshot","trades":[{"trade_id":"41","product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY","time":"2019-08-14T20:42:27.265Z"}]}]}"#.into()),
    ]])
    .await;
    let session = start_session(Feed::CoinbaseAdvanced, "ETH-USD", url, Duration::from_secs(30)).await;
    let metrics = session.metrics.clone();
    wait_published(&metrics, "COINBASE:ETH-USD", 1).await;
    let market = session.market.clone();
    let (_, stats) = session.stop().await;
    assert_eq!(stats.trades, 1);
    assert!(subscriptions.lock().await[0].contains(r#""channel":"market_trades""#));
    let trades = published(&market, "COINBASE:ETH-USD").await;
    assert_eq!((trades[0].trade_id(), trades[0].side()), (41, wick_core::TakerSide::Sell));
}

/// One HTTP answer: status and JSON body.
type Answer = (u16, String);

/// Serves HTTP/1.1 GETs, one request per connection, each answered by `answer(target)` (which may
/// take its time). Returns the base URL and every target asked for, in order.
async fn rest_server<F, Fut>(answer: F) -> (String, Arc<std::sync::Mutex<Vec<String>>>)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send,
{
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let answer = Arc::new(answer);
    let url = wick_test_support::http_server(move |target: String| {
        log.lock().unwrap().push(target.clone());
        let answer = answer.clone();
        async move {
            let (status, body) = answer(target).await;
            wick_test_support::HttpAnswer::json(status, body)
        }
    })
    .await;
    (url, asked)
}

fn query(target: &str) -> HashMap<String, String> {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// Repair from `url`, quick to retry, waiting `wait` for each repair before the stream goes on.
fn repair_from(url: &str, wait: Duration) -> RepairSettings {
    RepairSettings {
        history: HistorySettings {
            base_url: url.to_owned(),
            requests_per_minute: NonZeroU32::new(60_000).unwrap(),
            max_retries: 2,
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
        wait,
        timeout: Duration::from_secs(60),
    }
}

/// A trade the fixtures serve both live and over REST: id, time (ms), price, quantity, whether
/// the buyer was the maker.
#[derive(Clone, Debug)]
struct Served {
    id: u64,
    time_ms: i64,
    price: String,
    quantity: String,
    buyer_is_maker: bool,
}

/// `count` trades from id `first`, a second apart from 2024-05-01, with varied prices and sides.
fn served(first: u64, count: u64) -> Vec<Served> {
    (0..count)
        .map(|i| Served {
            id: first + i,
            time_ms: 1_714_521_600_000 + i as i64 * 1000,
            price: format!("{}.{:02}", 60_000 + (i * 7919) % 500, i % 100),
            quantity: format!("0.{:05}", 1 + (i * 104_729) % 99_999),
            buyer_is_maker: i % 3 == 0,
        })
        .collect()
}

impl Served {
    /// Binance `<symbol>@trade` (`aggregate`: `@aggTrade`) in a combined-stream envelope.
    fn binance_ws(&self, aggregate: bool) -> String {
        let (event, id) = if aggregate {
            ("aggTrade", format!(r#""a":{},"f":{},"l":{}"#, self.id, self.id, self.id))
        } else {
            ("trade", format!(r#""t":{}"#, self.id))
        };
        format!(
            r#"{{"stream":"btcusdt@{}","data":{{"e":"{event}","E":{},"s":"BTCUSDT",{id},"p":"{}","q":"{}","T":{},"m":{},"M":true}}}}"#,
            event.to_ascii_lowercase().replace("aggtrade", "aggTrade"),
            self.time_ms,
            self.price,
            self.quantity,
            self.time_ms,
            self.buyer_is_maker
        )
    }

    /// `GET /api/v3/historicalTrades` entry.
    fn binance_rest(&self) -> String {
        format!(
            r#"{{"id":{},"price":"{}","qty":"{}","quoteQty":"0","time":{},"isBuyerMaker":{},"isBestMatch":true}}"#,
            self.id, self.price, self.quantity, self.time_ms, self.buyer_is_maker
        )
    }

    /// `GET /api/v3/aggTrades` entry.
    fn binance_agg_rest(&self) -> String {
        format!(
            r#"{{"a":{},"p":"{}","q":"{}","f":{},"l":{},"T":{},"m":{},"M":true}}"#,
            self.id, self.price, self.quantity, self.id, self.id, self.time_ms, self.buyer_is_maker
        )
    }

    fn coinbase_time(&self) -> String {
        Timestamp::from_millis(self.time_ms).unwrap().to_string()
    }

    /// Coinbase Exchange `match` (`side` is the maker's: a buyer maker means a sell taker).
    fn coinbase_ws(&self) -> String {
        format!(
            r#"{{"type":"match","trade_id":{},"sequence":{},"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"{}","product_id":"BTC-USD","size":"{}","price":"{}","side":"{}"}}"#,
            self.id,
            self.id + 1000,
            self.coinbase_time(),
            self.quantity,
            self.price,
            if self.buyer_is_maker { "buy" } else { "sell" }
        )
    }

    /// `GET /products/<id>/trades` entry.
    fn coinbase_rest(&self) -> String {
        format!(
            r#"{{"time":"{}","trade_id":{},"price":"{}","size":"{}","side":"{}"}}"#,
            self.coinbase_time(),
            self.id,
            self.price,
            self.quantity,
            if self.buyer_is_maker { "buy" } else { "sell" }
        )
    }
}

/// Binance's `historicalTrades`/`aggTrades` (`fromId`, `limit`) over `trades`.
fn binance_page(trades: &[Served], target: &str, aggregate: bool) -> Answer {
    let q = query(target);
    let from: u64 = q["fromId"].parse().unwrap();
    let limit: usize = q["limit"].parse().unwrap();
    assert_eq!(q["symbol"], "BTCUSDT");
    let page: Vec<String> = trades
        .iter()
        .filter(|t| t.id >= from)
        .take(limit)
        .map(|t| if aggregate { t.binance_agg_rest() } else { t.binance_rest() })
        .collect();
    (200, format!("[{}]", page.join(",")))
}

/// Coinbase's product trades: `after=X` answers the trades with ids below X, newest first.
fn coinbase_page(trades: &[Served], target: &str) -> Answer {
    assert!(target.starts_with("/products/BTC-USD/trades?"), "{target}");
    let q = query(target);
    let after: u64 = q["after"].parse().unwrap();
    let limit: usize = q["limit"].parse().unwrap();
    let page: Vec<String> = trades.iter().rev().filter(|t| t.id < after).take(limit).map(Served::coinbase_rest).collect();
    (200, format!("[{}]", page.join(",")))
}

/// (id, price, quantity, side, event time µs): what the candles are made of.
fn essence(t: &Trade) -> (u64, String, String, TakerSide, i64) {
    (t.trade_id(), t.price().to_string(), t.quantity().to_string(), t.side(), t.event_time().as_micros())
}

/// The trades as the live feed's parser makes them: what the session must publish.
fn parsed(messages: impl IntoIterator<Item = String>, parse: impl Fn(&str) -> FeedMessage) -> Vec<(u64, String, String, TakerSide, i64)> {
    messages
        .into_iter()
        .flat_map(|m| match parse(&m) {
            FeedMessage::Trades(trades) => trades,
            other => panic!("expected trades, got {other:?}"),
        })
        .map(|t| essence(&t))
        .collect()
}

/// Every dead letter of the session: (reason, payload).
async fn dead_letters(topic: &str) -> Vec<(String, serde_json::Value)> {
    let client = wick_test_support::kafka().await;
    let dlq = wick_test_support::partition(&client, topic, 0).await;
    let (letters, _) = wick_test_support::read_to_end(&dlq, 0, Duration::from_secs(10)).await.unwrap();
    letters
        .iter()
        .map(|l| {
            let reason = String::from_utf8_lossy(&l.record.headers["reason"]).into_owned();
            let value = l.record.value.as_deref().unwrap();
            (
                reason,
                serde_json::from_slice(value).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(value).into_owned())),
            )
        })
        .collect()
}

fn by_exchange(c: &prometheus::IntCounterVec, exchange: &str) -> u64 {
    c.with_label_values(&[exchange]).get()
}

#[tokio::test]
async fn binance_gaps_within_a_connection_and_across_a_reconnect_are_repaired_in_order() {
    let trades = served(1001, 12);
    let ws = |ids: &[u64]| -> Vec<Step> { ids.iter().map(|id| Step::Send(trades[(*id - 1001) as usize].binance_ws(false))).collect() };
    // Connection 1 skips 1004 and 1005 and drops after 1007; connection 2 re-sends 1007 and
    // resumes at 1010 (1008 and 1009 were traded while reconnecting).
    let mut first = vec![Step::Send(r#"{"result":null,"id":1}"#.into())];
    first.extend(ws(&[1001, 1002, 1003, 1006, 1007]));
    first.push(Step::Disconnect);
    let (ws_url, _) = fixture_server(vec![first, ws(&[1007, 1010, 1011, 1012])]).await;
    let history = trades.clone();
    let (rest_url, asked) = rest_server(move |target| {
        let answer = binance_page(&history, &target, false);
        async move { answer }
    })
    .await;
    // A generous wait: each repair is answered at once, so the stream waits for it and stays in
    // id order.
    let repair = repair_from(&rest_url, Duration::from_secs(30));
    let session = start_repairing_session(Feed::BinanceTrade, "BTCUSDT", ws_url, Duration::from_secs(30), Some(repair)).await;
    let metrics = session.metrics.clone();
    wait_published(&metrics, "BINANCE:BTC-USDT", 12).await;
    let market = session.market.clone();
    let dead_letter_topic = session.dead_letters.clone();
    let (summary, stats) = session.stop().await;

    let published: Vec<_> = published(&market, "BINANCE:BTC-USDT").await.iter().map(essence).collect();
    let expected = parsed(trades.iter().map(|t| t.binance_ws(false)), |m| binance::parse(m, Timestamp::MIN, false).unwrap());
    assert_eq!(published, expected, "every trade once, in id order: the repairs went out before the trades that revealed them");
    assert_eq!((stats.trades, summary.read, summary.rejected), (12, 13, 0), "{summary}: 9 live (one a duplicate), 4 repaired");
    assert_eq!(by_exchange(&metrics.gaps, "binance"), 4);
    assert_eq!(by_exchange(&metrics.gap_trades_repaired, "binance"), 4);
    assert_eq!(by_exchange(&metrics.gap_trades_unrepaired, "binance"), 0);
    assert_eq!(by_exchange(&metrics.duplicates, "binance"), 1);
    assert_eq!(metrics.gap_repair_seconds.get_sample_count(), 2);
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "one page per gap: {asked:?}");
    assert!(asked[0].starts_with("/api/v3/historicalTrades?") && asked[0].contains("fromId=1004"), "{asked:?}");
    assert!(asked[1].contains("fromId=1008"), "{asked:?}");
    assert!(dead_letters(&dead_letter_topic).await.is_empty());
}

#[tokio::test]
async fn a_coinbase_heartbeat_reveals_a_gap_repaired_while_the_stream_goes_on() {
    let trades = served(9, 8); // ids 9..=16
    let t = |id: u64| trades[(id - 9) as usize].clone();
    let heartbeat = r#"{"type":"heartbeat","sequence":90,"last_trade_id":13,"product_id":"BTC-USD","time":"2024-05-01T00:00:05.000000Z"}"#;
    // 11, 12 and 13 never come in order: the heartbeat says 13 was traded; then 13 itself comes
    // late, while its repair is still running, and 14 after it. 15 and 16 are never traded live.
    let (ws_url, _) = fixture_server(vec![vec![
        Step::Send(r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]},{"name":"heartbeat","product_ids":["BTC-USD"]}]}"#.into()),
        Step::Send(t(9).coinbase_ws()),
        Step::Send(t(10).coinbase_ws()),
        Step::Send(heartbeat.into()),
        Step::Send(t(13).coinbase_ws()),
        Step::Send(t(14).coinbase_ws()),
    ]])
    .await;
    // The history answers only once the live stream went on past the gap.
    let release = Arc::new(Notify::new());
    let (history, held) = (trades.clone(), release.clone());
    let (rest_url, asked) = rest_server(move |target| {
        let (answer, held) = (coinbase_page(&history, &target), held.clone());
        async move {
            held.notified().await;
            answer
        }
    })
    .await;
    let repair = repair_from(&rest_url, Duration::from_millis(100));
    let session = start_repairing_session(Feed::CoinbaseExchange, "BTC-USD", ws_url, Duration::from_secs(30), Some(repair)).await;
    let metrics = session.metrics.clone();
    wait_published(&metrics, "COINBASE:BTC-USD", 4).await;
    release.notify_one();
    wait_published(&metrics, "COINBASE:BTC-USD", 6).await;
    let market = session.market.clone();
    let (summary, stats) = session.stop().await;

    let published: Vec<_> = published(&market, "COINBASE:BTC-USD").await.iter().map(essence).collect();
    let expected = parsed([9, 10, 13, 14, 11, 12].map(|id| t(id).coinbase_ws()), |m| coinbase::parse(m, Timestamp::MIN).unwrap());
    assert_eq!(published, expected, "13 arrived live during the repair: published then, and not again by the repair");
    assert_eq!((stats.trades, summary.read), (6, 6), "{summary}");
    assert_eq!(by_exchange(&metrics.gaps, "coinbase"), 3, "the heartbeat's 11..=13");
    assert_eq!(by_exchange(&metrics.gap_trades_repaired, "coinbase"), 2);
    assert_eq!(by_exchange(&metrics.gap_trades_unrepaired, "coinbase"), 0);
    assert_eq!(by_exchange(&metrics.duplicates, "coinbase"), 0);
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(query(&asked[0])["after"], (11 + 1000).to_string(), "the ids from 11 on: {asked:?}");
}

#[tokio::test]
async fn what_the_history_cannot_give_is_dead_lettered_as_unrepaired_gap() {
    let trades = served(1, 12);
    // Binance aggTrades: the gap 3..=4 meets an outage (503 until the retries run out), the gap
    // 7..=9 a history that lacks 8.
    let ws: Vec<Step> = [1u64, 2, 5, 6, 10, 11].iter().map(|id| Step::Send(trades[(*id - 1) as usize].binance_ws(true))).collect();
    let (ws_url, _) = fixture_server(vec![ws]).await;
    let history: Vec<Served> = trades.iter().filter(|t| t.id != 8).cloned().collect();
    let (rest_url, asked) = rest_server(move |target| {
        let answer = if query(&target)["fromId"] == "3" {
            (503, "<html>503 Service Temporarily Unavailable</html>".to_owned())
        } else {
            binance_page(&history, &target, true)
        };
        async move { answer }
    })
    .await;
    let repair = repair_from(&rest_url, Duration::from_secs(30));
    let session = start_repairing_session(Feed::BinanceAggTrade, "BTCUSDT", ws_url, Duration::from_secs(30), Some(repair)).await;
    let metrics = session.metrics.clone();
    wait_published(&metrics, "BINANCE:BTC-USDT", 8).await;
    let (market, dead_letter_topic) = (session.market.clone(), session.dead_letters.clone());
    let (_, stats) = session.stop().await;

    let published: Vec<u64> = published(&market, "BINANCE:BTC-USDT").await.iter().map(Trade::trade_id).collect();
    assert_eq!(published, [1, 2, 5, 6, 7, 9, 10, 11]);
    assert_eq!((stats.trades, stats.dead_letters), (8, 2));
    assert_eq!(by_exchange(&metrics.gaps, "binance"), 5);
    assert_eq!(by_exchange(&metrics.gap_trades_repaired, "binance"), 2);
    assert_eq!(by_exchange(&metrics.gap_trades_unrepaired, "binance"), 3);
    assert_eq!(by_exchange(&metrics.gap_ranges_unrepaired, "binance"), 2);
    assert_eq!(asked.lock().unwrap().iter().filter(|t| t.contains("fromId=3&")).count(), 3, "the first try and 2 retries");

    let letters = dead_letters(&dead_letter_topic).await;
    let reasons: Vec<&str> = letters.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(reasons, ["unrepaired_gap", "unrepaired_gap"]);
    let time = |id: usize| Timestamp::from_millis(trades[id - 1].time_ms).unwrap().to_string();
    let (outage, hole) = (&letters[0].1, &letters[1].1);
    assert_eq!(
        (&outage["exchange"], &outage["symbol"], &outage["instrument"]),
        (&"binance".into(), &"BTCUSDT".into(), &"BINANCE:BTC-USDT".into())
    );
    assert_eq!((outage["from_id"].as_u64(), outage["to_id"].as_u64(), outage["missing"].as_u64()), (Some(3), Some(4), Some(2)));
    assert_eq!(outage["after"], serde_json::json!({"id": 2, "time": time(2)}));
    assert_eq!(outage["before"], serde_json::json!({"id": 5, "time": time(5)}));
    let error = outage["error"].as_str().unwrap();
    assert!(error.contains("503") && error.contains("giving up after 2 retries"), "{error}");
    // Only 8 is missing from 7..=9: the letter names it between the repaired 7 and 9.
    assert_eq!((hole["from_id"].as_u64(), hole["to_id"].as_u64(), hole["missing"].as_u64()), (Some(8), Some(8), Some(1)));
    assert_eq!(hole["after"], serde_json::json!({"id": 7, "time": time(7)}));
    assert_eq!(hole["before"], serde_json::json!({"id": 9, "time": time(9)}));
}

#[tokio::test]
async fn feeds_without_an_id_sequence_report_what_a_reconnect_may_have_lost() {
    // Kraken v1: no ids, no history. The span between the last trade before the reconnect and the
    // first after it is reported.
    let v1 = |price: &str, time: &str| format!(r#"[0,[["{price}","0.15850568","{time}","s","l",""]],"trade","XBT/USD"]"#);
    let (url, _) = fixture_server(vec![
        vec![Step::Send(v1("5541.2", "1534614057.321597")), Step::Disconnect],
        vec![Step::Send(v1("5542.0", "1534614090.000001")), Step::Send(v1("5543.0", "1534614091.000001"))],
    ])
    .await;
    let repair = repair_from("http://127.0.0.1:9", Duration::from_secs(1));
    let session = start_repairing_session(Feed::KrakenV1, "XBT/USD", url, Duration::from_secs(30), Some(repair.clone())).await;
    let metrics = session.metrics.clone();
    wait_published(&metrics, "KRAKEN:BTC-USD", 3).await;
    let dead_letter_topic = session.dead_letters.clone();
    session.stop().await;
    let letters = dead_letters(&dead_letter_topic).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (reason, gap) = &letters[0];
    assert_eq!(reason, "unrepaired_gap");
    assert_eq!((&gap["symbol"], &gap["from_id"], &gap["missing"]), (&"XBT/USD".into(), &serde_json::Value::Null, &serde_json::Value::Null));
    assert_eq!(
        (&gap["after"]["time"], &gap["before"]["time"]),
        (&"2018-08-18T17:40:57.321597Z".into(), &"2018-08-18T17:41:30.000001Z".into())
    );
    assert_eq!((by_exchange(&metrics.gap_ranges_unrepaired, "kraken"), by_exchange(&metrics.gap_trades_unrepaired, "kraken")), (1, 0));

    // Coinbase Advanced Trade: the snapshot after the reconnect overlaps the trades seen, so
    // nothing was lost and nothing is reported.
    let advanced = |ids: &[u64]| {
        let trades: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"trade_id":"{id}","product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY","time":"2019-08-14T20:42:27.265Z"}}"#))
            .collect();
        format!(
            r#"{{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":1,"events":[{{"type":"snapshot","trades":[{}]}}]}}"#,
            trades.join(",")
        )
    };
    let (url, _) =
        fixture_server(vec![vec![Step::Send(advanced(&[40, 41])), Step::Disconnect], vec![Step::Send(advanced(&[41, 42]))]]).await;
    let session = start_repairing_session(Feed::CoinbaseAdvanced, "ETH-USD", url, Duration::from_secs(30), Some(repair)).await;
    let metrics = session.metrics.clone();
    wait_published(&metrics, "COINBASE:ETH-USD", 3).await;
    let dead_letter_topic = session.dead_letters.clone();
    session.stop().await;
    assert!(dead_letters(&dead_letter_topic).await.is_empty());
    assert_eq!(by_exchange(&metrics.gap_ranges_unrepaired, "coinbase"), 0);
    assert_eq!(by_exchange(&metrics.duplicates, "coinbase"), 1);
}
