//! The whole pipeline on the real stack: Binance trade files replayed by feed-publisher ->
//! `market-events` -> ingest-aggregator -> `candles-completed` -> persistence-writer ->
//! PostgreSQL and Redis -> query-gateway. Once with one instance of each service (single Redis),
//! once scaled out (two aggregators, two writers, two gateways, the Redis cluster); every interval
//! of every instrument is compared between the two deployments, with the exact reference over the
//! trades, over REST, gRPC and WebSocket and in the database. And a live session over a local
//! Binance (WebSocket and REST) that drops trades, whose gaps are repaired over REST: the candles
//! served equal the exact reference over the full set of trades.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use wick_core::{Candle, Instrument, Interval, SystemClock, TakerSide, Timestamp, Trade};
use wick_service::duration::Duration as ConfigDuration;
use wick_service::ops::Readiness;
use wick_service::shutdown::{self, ShutdownTrigger};

const MARKET_PARTITIONS: i32 = 16;
const CANDLE_PARTITIONS: i32 = 4;
/// 2024-06-01T00:00:00Z: each symbol's last trade, long after the others. Its event time moves the
/// watermark past every earlier candle, so all of them are closed by event time alone and both
/// deployments end in the same state, however long each has been idle.
const TERMINATOR_MS: i64 = 1_717_200_000_000;
/// Candles from here on hold only terminators; their `closed` flag follows the clock, so they are
/// not compared.
const HISTORY_END_MS: i64 = 1_714_521_600_000; // 2024-05-01

/// The topics, schema and Redis of one deployment.
struct Deployment {
    market: String,
    candles: String,
    schema: String,
    prefix: String,
    redis_url: String,
    db: tokio_postgres::Client,
}

async fn deployment(redis_url: String) -> Deployment {
    let client = wick_test_support::kafka().await;
    let market = wick_test_support::topic(&client, "e2e-market", MARKET_PARTITIONS).await;
    let candles = wick_test_support::topic(&client, "e2e-candles", CANDLE_PARTITIONS).await;
    let (db, schema) = wick_test_support::postgres_schema().await;
    let prefix = wick_test_support::redis_prefix().trim_end_matches(':').to_owned();
    Deployment { market, candles, schema, prefix, redis_url, db }
}

/// A service running in this process until stopped.
struct Running {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.trigger.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

fn aggregator(d: &Deployment, index: u32, count: u32) -> Running {
    aggregator_measured(d, index, count, ingest_aggregator::metrics::Metrics::new())
}

fn aggregator_measured(d: &Deployment, index: u32, count: u32, metrics: ingest_aggregator::metrics::Metrics) -> Running {
    let mut c = ingest_aggregator::config::Config::default();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.market_events_topic = d.market.clone();
    c.kafka.market_events_partitions = MARKET_PARTITIONS;
    c.kafka.candles_topic = d.candles.clone();
    c.kafka.candles_partitions = CANDLE_PARTITIONS;
    c.kafka.dead_letter_topic = format!("{}-dlq", d.market);
    c.instance.index = index;
    c.instance.count = count;
    c.consumer.auto_offset_reset = "earliest".into();
    c.consumer.fetch_max_wait = ConfigDuration::from_millis(50);
    c.ring.num_consumers = 1;
    c.checkpoint.database_url = wick_test_support::postgres_config();
    c.checkpoint.schema = Some(d.schema.clone());
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(async move {
        if let Err(e) = ingest_aggregator::run(c, metrics, Readiness::default(), Arc::new(SystemClock), stop).await {
            panic!("ingest-aggregator failed: {e:#}");
        }
    });
    Running { trigger, task }
}

fn writer(d: &Deployment, index: u32, count: u32) -> Running {
    let mut c = persistence_writer::config::Config::default();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.candles_topic = d.candles.clone();
    c.kafka.candles_partitions = CANDLE_PARTITIONS;
    c.kafka.dead_letter_topic = format!("{}-dlq", d.candles);
    c.kafka.fetch_max_wait = ConfigDuration::from_millis(50);
    c.instance.index = index;
    c.instance.count = count;
    c.database.url = wick_test_support::postgres_config();
    c.database.schema = Some(d.schema.clone());
    c.redis.url = d.redis_url.clone();
    c.redis.key_prefix = d.prefix.clone();
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    let (trigger, stop) = shutdown::channel();
    let metrics = persistence_writer::metrics::Metrics::new();
    let task = tokio::spawn(async move {
        if let Err(e) = persistence_writer::run(c, metrics, Readiness::default(), Arc::new(SystemClock), stop).await {
            panic!("persistence-writer failed: {e:#}");
        }
    });
    Running { trigger, task }
}

struct Gateway {
    http: String,
    grpc: String,
    metrics: query_gateway::metrics::Metrics,
    running: Running,
}

async fn gateway(d: &Deployment) -> Gateway {
    let mut c = query_gateway::config::Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.candles_topic = d.candles.clone();
    c.kafka.candles_partitions = CANDLE_PARTITIONS;
    c.kafka.fetch_max_wait = ConfigDuration::from_millis(50);
    c.database.url = wick_test_support::postgres_config();
    c.database.schema = Some(d.schema.clone());
    c.redis.url = d.redis_url.clone();
    c.redis.key_prefix = d.prefix.clone();
    c.live.prune_interval = ConfigDuration::from_millis(200);
    // The WebSocket client of the test stores every push; the whole replay may queue up.
    c.live.client_buffer = 1_000_000;
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    let (trigger, stop) = shutdown::channel();
    let metrics = query_gateway::metrics::Metrics::new();
    let started = query_gateway::start(c, metrics.clone(), Readiness::default(), Arc::new(SystemClock), stop).await.unwrap();
    let (http, grpc) = (format!("http://{}", started.http_addr), format!("http://{}", started.grpc_addr));
    let task = tokio::spawn(started.stopped());
    Gateway { http, grpc, metrics, running: Running { trigger, task } }
}

/// Deterministic Binance public-data trade files (`id,price,qty,quote_qty,time,is_buyer_maker,
/// is_best_match`, millisecond times, no header) of two symbols over about a day and a half, and
/// the trades they hold.
fn trade_files(dir: &std::path::Path) -> (Vec<PathBuf>, Vec<Trade>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = Vec::new();
    let mut trades = Vec::new();
    for (k, symbol) in ["BTCUSDT", "ETHUSDT"].iter().enumerate() {
        let path = dir.join(format!("{symbol}-trades-2024-03-10.csv"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let instrument = Instrument::new(&format!("BINANCE:{}-USDT", &symbol[..3])).unwrap();
        let mut t = 1_710_028_800_000i64 + k as i64 * 7; // 2024-03-10
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ k as u64;
        for id in 1..=3000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            t += 1 + (seed % 90_000) as i64;
            let price = format!("{}.{:02}", 60_000 + (seed >> 20) % 900, (seed >> 30) % 100);
            let qty = format!("0.{:05}", 1 + (seed >> 40) % 99_999);
            let buyer_maker = (seed >> 50) % 2 == 0;
            writeln!(out, "{id},{price},{qty},0,{t},{},True", if buyer_maker { "True" } else { "False" }).unwrap();
            let at = Timestamp::from_millis(t).unwrap();
            // The buyer is the maker: the taker sold.
            let side = if buyer_maker { TakerSide::Sell } else { TakerSide::Buy };
            trades.push(Trade::new(instrument.clone(), id, price.parse().unwrap(), qty.parse().unwrap(), side, at, at).unwrap());
        }
        writeln!(out, "3001,60000.00,0.00001,0,{TERMINATOR_MS},True,True").unwrap();
        let at = Timestamp::from_millis(TERMINATOR_MS).unwrap();
        trades.push(
            Trade::new(instrument.clone(), 3001, "60000.00".parse().unwrap(), "0.00001".parse().unwrap(), TakerSide::Sell, at, at).unwrap(),
        );
        files.push(path);
    }
    (files, trades)
}

/// `feed-publisher replay` of the files into `topic`, as the binary runs it.
async fn replay(files: &[PathBuf], topic: &str) {
    let mut c = feed_publisher::config::Config::default();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.market_events_topic = topic.to_owned();
    c.kafka.dead_letter_topic = format!("{topic}-dlq");
    let clock: Arc<dyn wick_core::Clock> = Arc::new(SystemClock);
    let client = feed_publisher::run::connect(&c).await.unwrap();
    let producer = feed_publisher::run::start_producer(&c, client, feed_publisher::metrics::Metrics::new(), clock.clone()).await.unwrap();
    let (_trigger, stop) = shutdown::channel();
    let summary = feed_publisher::run::replay(&producer, files, None, None, clock, &stop).await.unwrap();
    let (summary, _) = feed_publisher::run::finish(producer, summary).await.unwrap();
    assert_eq!(summary.published, 6002, "{summary}");
}

fn reference(trades: &[Trade]) -> BTreeMap<(String, Interval, i64), Candle> {
    let mut out: BTreeMap<(String, Interval, i64), Candle> = BTreeMap::new();
    for t in trades {
        for interval in Interval::ALL {
            let key = (t.instrument().to_string(), interval, interval.bucket_start(t.event_time()).as_millis());
            match out.get_mut(&key) {
                Some(c) => c.apply(t).unwrap(),
                None => {
                    out.insert(key, Candle::from_trade(interval, t).unwrap());
                }
            }
        }
    }
    out
}

/// Waits until the database holds every trade in every interval, Redis is as current as the
/// database, and the gateways have read everything and hold nothing unstored.
async fn settle(d: &Deployment, trades: usize, gateways: &[&Gateway]) {
    let counts = format!("SELECT interval, sum(trade_count)::int8 FROM {}.candles GROUP BY interval", d.schema);
    let cache = format!(
        "SELECT count(*) > 0 AND coalesce(bool_and(cache_next_offset = next_offset), false) FROM {}.writer_offsets WHERE topic = $1",
        d.schema
    );
    let open =
        format!("SELECT count(*) FROM {}.candles WHERE NOT closed AND open_time < to_timestamp({HISTORY_END_MS} / 1000.0)", d.schema);
    wick_test_support::wait_until("the deployment has settled", Duration::from_secs(240), || async {
        let stored =
            d.db.query(&counts, &[]).await.map(|rows| rows.len() == 16 && rows.iter().all(|r| r.get::<_, i64>(1) == trades as i64));
        let cached = d.db.query_one(&cache, &[&d.candles]).await.map(|r| r.get::<_, bool>(0));
        let closed = d.db.query_one(&open, &[]).await.map(|r| r.get::<_, i64>(0) == 0);
        stored.unwrap_or(false)
            && cached.unwrap_or(false)
            && closed.unwrap_or(false)
            && gateways.iter().all(|g| g.metrics.live_lag.get() == 0 && g.metrics.unpersisted.get() == 0 && g.metrics.live_events.get() > 0)
    })
    .await
    .unwrap();
}

fn curl(url: &str) -> String {
    let out = Command::new("curl").args(["-s", "-S", "--fail", "--max-time", "20", url]).output().expect("curl runs");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every stored candle, as the server prints it.
async fn rows(d: &Deployment) -> Vec<String> {
    let sql = format!(
        "SELECT concat_ws(' ', instrument, interval, open_time, open, high, low, close, volume, quote_volume, taker_buy_volume, \
         taker_buy_quote_volume, trade_count, first_trade_id, last_trade_id, closed, version) FROM {}.candles \
         WHERE open_time < to_timestamp({HISTORY_END_MS} / 1000.0) ORDER BY instrument, interval, open_time",
        d.schema
    );
    d.db.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_each_and_two_of_each_serve_exactly_the_reference() {
    let dir = std::env::temp_dir().join(wick_test_support::unique_name("wick-e2e"));
    let (files, trades) = trade_files(&dir);
    let want = reference(&trades);

    let single = deployment(format!("redis://{}", wick_test_support::redis_address())).await;
    let scaled = deployment("redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002&node=127.0.0.1:7003".into()).await;
    let one = gateway(&single).await;
    let (two_a, two_b) = (gateway(&scaled).await, gateway(&scaled).await);
    let mut services = vec![aggregator(&single, 0, 1), writer(&single, 0, 1)];
    for index in 0..2 {
        services.push(aggregator(&scaled, index, 2));
        services.push(writer(&scaled, index, 2));
    }
    // A WebSocket client of one scaled-out gateway follows every interval of both instruments.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws", two_a.http.replace("http://", "ws://"))).await.unwrap();
    for name in ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT"] {
        for interval in Interval::ALL {
            let subscribe = serde_json::json!({"op": "subscribe", "instrument": name, "interval": interval.as_str()});
            ws.send(tokio_tungstenite::tungstenite::Message::Text(subscribe.to_string().into())).await.unwrap();
        }
    }
    let (stop_reading, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut texts = Vec::new();
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => texts.push(t.to_string()),
                    Some(Ok(_)) => {}
                    _ => break,
                },
                _ = &mut stopped => break,
            }
        }
        texts
    });

    replay(&files, &single.market).await;
    replay(&files, &scaled.market).await;
    settle(&single, trades.len(), &[&one]).await;
    settle(&scaled, trades.len(), &[&two_a, &two_b]).await;
    // Settled means read; give the last pushes a moment to cross the socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_reading.send(());
    let pushed_texts = reader.await.unwrap();
    let mut pushed: BTreeMap<(String, String, i64), serde_json::Value> = BTreeMap::new();
    let mut subscribed = 0;
    for text in &pushed_texts {
        let m: serde_json::Value = serde_json::from_str(text).unwrap();
        match m["type"].as_str() {
            Some("subscribed") => subscribed += 1,
            Some("candle") => {
                let c = &m["candle"];
                let key = (
                    c["instrument"].as_str().unwrap().to_owned(),
                    c["interval"].as_str().unwrap().to_owned(),
                    c["open_time"].as_i64().unwrap(),
                );
                if pushed.get(&key).is_none_or(|held| held["version"].as_u64() < c["version"].as_u64()) {
                    pushed.insert(key, c.clone());
                }
            }
            other => panic!("unexpected message {other:?}: {text}"),
        }
    }
    assert_eq!(subscribed, 32);

    // The databases agree row for row.
    let (stored_one, stored_two) = (rows(&single).await, rows(&scaled).await);
    assert!(stored_one.len() > 10_000, "{} rows", stored_one.len());
    assert_eq!(stored_one, stored_two, "one of each and two of each stored different candles");

    // Every interval of both instruments, over REST from the three gateways and gRPC from one.
    let first_ms = trades.iter().map(|t| t.event_time().as_millis()).min().unwrap();
    let mut grpc = query_gateway::grpc::proto::candle_service_client::CandleServiceClient::connect(two_b.grpc.clone()).await.unwrap();
    let mut compared = 0;
    for name in ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT"] {
        for interval in Interval::ALL {
            let path =
                format!("/api/v1/candles?instrument={name}&interval={interval}&start={first_ms}&end={}&limit=1000", HISTORY_END_MS - 1);
            let body = curl(&format!("{}{path}", one.http));
            assert_eq!(curl(&format!("{}{path}", two_a.http)), body, "{path}");
            assert_eq!(curl(&format!("{}{path}", two_b.http)), body, "{path}");
            let reply = grpc
                .get_candles(query_gateway::grpc::proto::GetCandlesRequest {
                    instrument: name.into(),
                    interval: interval.as_str().into(),
                    start_time_ms: Some(first_ms),
                    end_time_ms: Some(HISTORY_END_MS - 1),
                    limit: 1000,
                    fill: 0,
                })
                .await
                .unwrap()
                .into_inner();
            let as_json = query_gateway::json::page(&query_gateway::query::Page {
                candles: reply.candles.iter().map(|c| wick_wire::candle_from_wire(c).unwrap()).collect(),
                next_start: reply.next_start_time_ms.map(|ms| Timestamp::from_millis(ms).unwrap()),
            });
            assert_eq!(as_json, body, "gRPC {name} {interval}");
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            for c in parsed["candles"].as_array().unwrap() {
                // The newest version pushed over the WebSocket is the one served.
                let pushed_key = (name.to_owned(), interval.as_str().to_owned(), c["open_time"].as_i64().unwrap());
                assert_eq!(pushed.get(&pushed_key), Some(c), "WebSocket pushes for {pushed_key:?}");
                let key = (name.to_owned(), interval, c["open_time"].as_i64().unwrap());
                let reference = want.get(&key).unwrap_or_else(|| panic!("a candle the trades do not make: {c}"));
                assert_eq!(c["trade_count"], reference.trade_count(), "{c}");
                for (field, value) in [
                    ("open", reference.open()),
                    ("high", reference.high()),
                    ("low", reference.low()),
                    ("close", reference.close()),
                    ("volume", reference.volume()),
                    ("quote_volume", reference.quote_volume()),
                    ("taker_buy_volume", reference.taker_buy_volume()),
                    ("taker_buy_quote_volume", reference.taker_buy_quote_volume()),
                ] {
                    assert_eq!(c[field].as_str().unwrap(), value.to_string(), "{field} of {c}");
                }
                compared += 1;
            }
        }
    }
    // The first 1000 candles of each interval opening at or after `start`, before the history
    // ends: every one was served.
    let mut per_series: BTreeMap<(&str, Interval), usize> = BTreeMap::new();
    for (name, interval, open) in want.keys() {
        if *open >= first_ms && *open < HISTORY_END_MS {
            *per_series.entry((name.as_str(), *interval)).or_default() += 1;
        }
    }
    let expected: usize = per_series.values().map(|n| (*n).min(1000)).sum();
    assert_eq!(compared, expected, "every traded candle in range was served");

    for s in services {
        s.stop().await;
    }
    for g in [one, two_a, two_b] {
        g.running.stop().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// One step of a scripted WebSocket connection.
enum Step {
    Send(String),
    /// Drop the connection without a close frame.
    Disconnect,
    /// Send nothing more until this is done.
    Until(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
}

/// Serves `script[i]` to the i-th connection, after reading its subscription; the last connection
/// stays open afterwards.
async fn websocket_server(script: Vec<Vec<Step>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        for steps in script {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.next().await;
            let mut dropped = false;
            for step in steps {
                match step {
                    Step::Send(text) => ws.send(tokio_tungstenite::tungstenite::Message::text(text)).await.unwrap(),
                    Step::Until(done) => done.await,
                    Step::Disconnect => {
                        dropped = true;
                        break;
                    }
                }
            }
            if !dropped {
                while let Some(Ok(_)) = ws.next().await {}
            }
        }
    });
    url
}

/// Binance's `GET /api/v3/historicalTrades` (`symbol`, `fromId`, `limit`) over `trades`; the
/// answer for `hold`'s symbol and id waits for its signal. One request per connection.
async fn binance_rest_server(trades: Arc<Vec<Trade>>, hold: (String, u64, Arc<tokio::sync::Notify>)) -> String {
    wick_test_support::http_server(move |target: String| {
        let (trades, hold) = (trades.clone(), hold.clone());
        async move {
            let query: BTreeMap<&str, &str> =
                target.split_once('?').map_or("", |(_, q)| q).split('&').filter_map(|kv| kv.split_once('=')).collect();
            let (symbol, from, limit) = (query["symbol"], query["fromId"].parse::<u64>().unwrap(), query["limit"].parse().unwrap());
            if (symbol, from) == (hold.0.as_str(), hold.1) {
                hold.2.notified().await;
            }
            let page: Vec<String> = trades
                .iter()
                .filter(|t| symbol_of(t) == symbol && t.trade_id() >= from)
                .take(limit)
                .map(|t| {
                    format!(
                        r#"{{"id":{},"price":"{}","qty":"{}","quoteQty":"0","time":{},"isBuyerMaker":{},"isBestMatch":true}}"#,
                        t.trade_id(),
                        t.price(),
                        t.quantity(),
                        t.event_time().as_millis(),
                        t.side() == TakerSide::Sell
                    )
                })
                .collect();
            wick_test_support::HttpAnswer::json(200, format!("[{}]", page.join(",")))
        }
    })
    .await
}

/// `BTCUSDT` for `BINANCE:BTC-USDT`.
fn symbol_of(t: &Trade) -> String {
    format!("{}{}", t.instrument().base(), t.instrument().quote())
}

/// A Binance `trade` message in a combined-stream envelope, as the live feed sends it.
fn binance_message(t: &Trade) -> String {
    let symbol = symbol_of(t);
    format!(
        r#"{{"stream":"{}@trade","data":{{"e":"trade","E":{ms},"s":"{symbol}","t":{},"p":"{}","q":"{}","T":{ms},"m":{},"M":true}}}}"#,
        symbol.to_ascii_lowercase(),
        t.trade_id(),
        t.price(),
        t.quantity(),
        t.side() == TakerSide::Sell,
        ms = t.event_time().as_millis()
    )
}

/// Every candle of every interval of `instruments` the gateway serves for the history, paged.
async fn served_candles(http: &str, instruments: &[&str]) -> BTreeMap<(String, Interval, i64), serde_json::Value> {
    let mut out = BTreeMap::new();
    for name in instruments {
        for interval in Interval::ALL {
            let mut start = 0;
            loop {
                let path =
                    format!("/api/v1/candles?instrument={name}&interval={interval}&start={start}&end={}&limit=1000", HISTORY_END_MS - 1);
                let page: serde_json::Value = serde_json::from_str(&curl(&format!("{http}{path}"))).unwrap();
                for c in page["candles"].as_array().unwrap() {
                    out.insert((name.to_string(), interval, c["open_time"].as_i64().unwrap()), c.clone());
                }
                match page["next_start"].as_i64() {
                    Some(next) if next > start => start = next,
                    Some(next) => panic!("{path}: next_start {next} does not move on"),
                    None => break,
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_session_whose_gaps_are_repaired_over_rest_serves_exactly_the_reference() {
    let dir = std::env::temp_dir().join(wick_test_support::unique_name("wick-e2e-gaps"));
    let (_, trades) = trade_files(&dir);
    let want = reference(&trades);
    let d = deployment(format!("redis://{}", wick_test_support::redis_address())).await;
    let g = gateway(&d).await;
    let aggregation = ingest_aggregator::metrics::Metrics::new();
    let services = vec![aggregator_measured(&d, 0, 1, aggregation.clone()), writer(&d, 0, 1)];

    // The live feed: both symbols in event-time order. It drops every trade whose id is a
    // multiple of 97, loses everything between BTC 1500 and BTC 1541 to a reconnect (re-sending
    // the last three trades before it), and drops one more BTC trade, `held`, whose repair is
    // answered only after the trade that revealed it was published: it comes late, and revises
    // the candles that closed meanwhile.
    let mut feed: Vec<&Trade> = trades.iter().collect();
    feed.sort_by_key(|t| t.event_time());
    let btc = |id: u64| trades.iter().find(|t| t.instrument().as_str() == "BINANCE:BTC-USDT" && t.trade_id() == id).unwrap();
    let dropped = |t: &Trade| t.trade_id() % 97 == 0;
    let held = (2000..2900)
        .find(|&k: &u64| {
            // Its one-second candle is final once the next trade is read: a revision, not an update.
            let closes = (btc(k).event_time().as_millis() / 1000 + 1) * 1000;
            [k - 1, k, k + 1].iter().all(|id| id % 97 != 0) && btc(k + 1).event_time().as_millis() - 1000 >= closes
        })
        .unwrap();
    let position = |t: &Trade| feed.iter().position(|f| std::ptr::eq(*f, t)).unwrap();
    let (cut, resume) = (position(btc(1500)), position(btc(1541)));
    let publisher = feed_publisher::metrics::Metrics::new();
    let btc_instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
    let published_btc = |count: u64| {
        let (metrics, instrument) = (publisher.clone(), btc_instrument.clone());
        Box::pin(async move {
            wick_test_support::wait_until(&format!("{count} BTC trades are published"), Duration::from_secs(120), || {
                let done = metrics.published_total(&instrument) == count;
                async move { done }
            })
            .await
            .unwrap();
        })
    };
    let mut first = vec![Step::Send(r#"{"result":null,"id":1}"#.into())];
    first.extend(feed[..=cut].iter().filter(|t| !dropped(t)).map(|t| Step::Send(binance_message(t))));
    first.push(Step::Disconnect);
    let mut second: Vec<Step> = feed[cut - 2..=cut].iter().filter(|t| !dropped(t)).map(|t| Step::Send(binance_message(t))).collect();
    let resent = second.len() as u64;
    let mut sent = first.len() as u64 - 2 + resent;
    let (held_trade, revealing) = (btc(held), btc(held + 1));
    for t in &feed[resume..] {
        if dropped(t) || std::ptr::eq(*t, held_trade) {
            continue;
        }
        second.push(Step::Send(binance_message(t)));
        sent += 1;
        if std::ptr::eq(*t, revealing) {
            // Every BTC trade up to `held + 1` once `held` is repaired: nothing newer goes out
            // before it, so that it revises within the revision window.
            second.push(Step::Until(published_btc(held + 1)));
        }
    }
    let lost = trades.len() as u64 - (sent - resent);
    assert!(lost > 100, "{lost} trades lost");
    let ws_url = websocket_server(vec![first, second]).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let rest_url = binance_rest_server(Arc::new(trades.clone()), ("BTCUSDT".into(), held, release.clone())).await;
    {
        // Answer the held repair once the trade that revealed it was published (after the
        // session's wait for the repair ran out).
        let revealed = published_btc(held);
        let release = release.clone();
        tokio::spawn(async move {
            revealed.await;
            release.notify_one();
        });
    }

    let mut c = feed_publisher::config::Config::default();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.market_events_topic = d.market.clone();
    c.kafka.dead_letter_topic = format!("{}-dlq", d.market);
    let clock: Arc<dyn wick_core::Clock> = Arc::new(SystemClock);
    let client = feed_publisher::run::connect(&c).await.unwrap();
    let producer = feed_publisher::run::start_producer(&c, client, publisher.clone(), clock.clone()).await.unwrap();
    let mut settings =
        feed_publisher::live::LiveSettings::new(feed_publisher::live::Feed::BinanceTrade, vec!["BTCUSDT".into(), "ETHUSDT".into()]);
    settings.url = ws_url;
    settings.min_backoff = Duration::from_millis(20);
    let repair = settings.repair.as_mut().unwrap();
    repair.history.base_url = rest_url;
    repair.history.requests_per_minute = std::num::NonZeroU32::new(60_000).unwrap();
    // Long enough for any local answer: only the held repair outlasts it.
    repair.wait = Duration::from_secs(10);
    let (stop_session, session_stop) = shutdown::channel();
    let session = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let summary = feed_publisher::live::run(&settings, &producer, &publisher, clock, &session_stop).await;
            (summary, producer)
        })
    };
    wick_test_support::wait_until("every trade is published", Duration::from_secs(240), || {
        let done = ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT"].iter().all(|i| publisher.published_total(&Instrument::new(i).unwrap()) == 3001);
        async move { done }
    })
    .await
    .unwrap();
    stop_session.trigger();
    let (summary, producer) = session.await.unwrap();
    let (summary, _) = feed_publisher::run::finish(producer, summary.unwrap()).await.unwrap();
    assert_eq!(summary.published, trades.len() as u64, "{summary}");
    let by_exchange = |c: &prometheus::IntCounterVec| c.with_label_values(&["binance"]).get();
    assert_eq!(by_exchange(&publisher.gaps), lost);
    assert_eq!(by_exchange(&publisher.gap_trades_repaired), lost);
    assert_eq!(by_exchange(&publisher.gap_trades_unrepaired), 0);
    assert_eq!(by_exchange(&publisher.duplicates), resent, "the trades re-sent after the reconnect");

    settle(&d, trades.len(), &[&g]).await;
    // The held trade came after its one-second candle was final (a revision). Nothing else came
    // late, and nothing too late.
    assert_eq!((aggregation.late.get(), aggregation.too_late.get()), (1, 0));
    let served = served_candles(&g.http, &["BINANCE:BTC-USDT", "BINANCE:ETH-USDT"]).await;
    let without_state = |mut v: serde_json::Value| {
        let o = v.as_object_mut().unwrap();
        o.remove("closed");
        o.remove("version");
        v
    };
    let history: Vec<_> = want.iter().filter(|((_, _, open), _)| *open < HISTORY_END_MS).collect();
    assert_eq!(served.len(), history.len(), "the candles served are those of the reference");
    for (key, candle) in history {
        let got = served.get(key).unwrap_or_else(|| panic!("no candle served for {key:?}"));
        assert_eq!(got["closed"], true, "{got}");
        let expected: serde_json::Value = serde_json::from_str(&query_gateway::json::candle(candle)).unwrap();
        assert_eq!(without_state(got.clone()), without_state(expected), "{key:?}");
    }

    for s in services {
        s.stop().await;
    }
    g.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
