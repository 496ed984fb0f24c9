//! Live sessions against a local WebSocket server replaying the exchanges' documented payloads:
//! subscription, a disconnect mid-stream, a duplicate after the reconnect, a malformed frame, an
//! unknown message type, and sequence gaps, end to end into the real broker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use wick_core::{Clock, SystemClock};

use feed_publisher::live::{self, Feed, LiveSettings};
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
