//! query-gateway against the real stack: trades go through the real ingest-aggregator and
//! persistence-writer into PostgreSQL and Redis, and the gateway is read with real clients (curl,
//! a tonic client, Binance's own Python connector, a reflection-only gRPC client, a WebSocket
//! client, headless Chromium). Every tier's answers are compared with the database's and with a
//! naive exact reference over the trades.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use query_gateway::config::Config;
use query_gateway::metrics::Metrics;
use wick_core::{Candle, Decimal, Instrument, Interval, SystemClock, TakerSide, Timestamp, Trade, UtcOffset};
use wick_service::duration::Duration as ConfigDuration;
use wick_service::ops::Readiness;
use wick_service::shutdown::{self, ShutdownTrigger};
use wick_wire::CandleEventKind;

const MARKET_PARTITIONS: i32 = 4;
const CANDLE_PARTITIONS: i32 = 4;

/// Topics, schema and key prefix of one test.
struct Env {
    market: String,
    candles: String,
    schema: String,
    prefix: String,
    db: tokio_postgres::Client,
}

async fn env() -> Env {
    let client = wick_test_support::kafka().await;
    let market = wick_test_support::topic(&client, "gw-market", MARKET_PARTITIONS).await;
    let candles = wick_test_support::topic(&client, "gw-candles", CANDLE_PARTITIONS).await;
    let (db, schema) = wick_test_support::postgres_schema().await;
    Env { market, candles, schema, prefix: wick_test_support::redis_prefix().trim_end_matches(':').to_owned(), db }
}

fn redis_url() -> String {
    format!("redis://{}", wick_test_support::redis_address())
}

fn aggregator_config(env: &Env) -> ingest_aggregator::config::Config {
    let mut c = ingest_aggregator::config::Config::default();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.market_events_topic = env.market.clone();
    c.kafka.market_events_partitions = MARKET_PARTITIONS;
    c.kafka.candles_topic = env.candles.clone();
    c.kafka.candles_partitions = CANDLE_PARTITIONS;
    c.kafka.dead_letter_topic = format!("{}-dlq", env.market);
    c.consumer.auto_offset_reset = "earliest".into();
    c.consumer.fetch_max_wait = ConfigDuration::from_millis(50);
    c.ring.num_consumers = 2;
    c.checkpoint.database_url = wick_test_support::postgres_config();
    c.checkpoint.schema = Some(env.schema.clone());
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    c
}

fn writer_config(env: &Env) -> persistence_writer::config::Config {
    let mut c = persistence_writer::config::Config::default();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.candles_topic = env.candles.clone();
    c.kafka.candles_partitions = CANDLE_PARTITIONS;
    c.kafka.dead_letter_topic = format!("{}-dlq", env.candles);
    c.kafka.fetch_max_wait = ConfigDuration::from_millis(50);
    c.database.url = wick_test_support::postgres_config();
    c.database.schema = Some(env.schema.clone());
    c.redis.url = redis_url();
    c.redis.key_prefix = env.prefix.clone();
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    c
}

fn gateway_config(env: &Env) -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.candles_topic = env.candles.clone();
    c.kafka.candles_partitions = CANDLE_PARTITIONS;
    c.kafka.fetch_max_wait = ConfigDuration::from_millis(50);
    c.database.url = wick_test_support::postgres_config();
    c.database.schema = Some(env.schema.clone());
    c.redis.url = redis_url();
    c.redis.key_prefix = env.prefix.clone();
    c.live.prune_interval = ConfigDuration::from_millis(200);
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// A service running in this process.
struct Service {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn stop(self) {
        self.trigger.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

fn start_aggregator(env: &Env) -> Service {
    let (trigger, stop) = shutdown::channel();
    let config = aggregator_config(env);
    let task = tokio::spawn(async move {
        let metrics = ingest_aggregator::metrics::Metrics::new();
        if let Err(e) = ingest_aggregator::run(config, metrics, Readiness::default(), Arc::new(SystemClock), stop).await {
            panic!("ingest-aggregator failed: {e:#}");
        }
    });
    Service { trigger, task }
}

fn start_writer(config: persistence_writer::config::Config) -> Service {
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(async move {
        let metrics = persistence_writer::metrics::Metrics::new();
        if let Err(e) = persistence_writer::run(config, metrics, Readiness::default(), Arc::new(SystemClock), stop).await {
            panic!("persistence-writer failed: {e:#}");
        }
    });
    Service { trigger, task }
}

struct Gateway {
    http: String,
    grpc: String,
    metrics: Metrics,
    service: Service,
}

async fn start_gateway(config: Config) -> Gateway {
    let (trigger, stop) = shutdown::channel();
    let metrics = Metrics::new();
    let running = query_gateway::start(config, metrics.clone(), Readiness::default(), Arc::new(SystemClock), stop).await.unwrap();
    let (http, grpc) = (format!("http://{}", running.http_addr), format!("http://{}", running.grpc_addr));
    let task = tokio::spawn(running.stopped());
    Gateway { http, grpc, metrics, service: Service { trigger, task } }
}

/// A response as curl saw it.
#[derive(Debug)]
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl -i` with extra arguments.
async fn curl(url: &str, extra: &[&str]) -> Http {
    let mut args = vec!["-s", "-S", "-i", "--max-time", "20"];
    args.extend_from_slice(extra);
    args.push(url);
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let out = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output()).await.unwrap().expect("curl runs");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    Http { status, headers, body: body.to_owned() }
}

async fn get(base: &str, path: &str) -> Http {
    curl(&format!("{base}{path}"), &[]).await
}

fn instrument(name: &str) -> Instrument {
    Instrument::new(name).unwrap()
}

/// Deterministic trades of three instruments over about four days (2024-03-09 to 03-13, across a
/// week boundary), each instrument in event-time order, interleaved.
fn history() -> Vec<Trade> {
    let names = ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT", "COINBASE:BTC-USD"];
    let start = Timestamp::parse_rfc3339("2024-03-09T21:00:00Z").unwrap().as_micros();
    let mut out = Vec::new();
    let mut clock = [start; 3];
    let mut seed: u64 = 0x5eed;
    for n in 0..4500u64 {
        for (k, name) in names.iter().enumerate() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Gaps from 1 ms to about 150 s, so some seconds, minutes and hours have no trades.
            clock[k] += 1_000 + ((seed >> 33) % 150_000_000) as i64;
            let price = format!("{}.{}", 20_000 + (seed >> 40) % 500, (seed >> 20) % 1000);
            let qty = format!("0.{:04}", 1 + (seed >> 50) % 9999);
            let side = if seed % 3 == 0 { TakerSide::Sell } else { TakerSide::Buy };
            let t = Timestamp::from_micros(clock[k]).unwrap();
            out.push(Trade::new(instrument(name), n + 1, price.parse().unwrap(), qty.parse().unwrap(), side, t, t).unwrap());
        }
    }
    out
}

async fn produce_trades(topic: &str, trades: &[Trade]) {
    let client = wick_test_support::kafka().await;
    let mut by_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut by_instrument: BTreeMap<Instrument, Vec<Trade>> = BTreeMap::new();
    for t in trades {
        by_instrument.entry(t.instrument().clone()).or_default().push(t.clone());
    }
    for (i, trades) in by_instrument {
        let p = wick_kafka::partitioner::partition_for(i.as_str().as_bytes(), MARKET_PARTITIONS);
        for run in trades.chunks(200) {
            by_partition.entry(p).or_default().push(wick_wire::encode_trade_batch(&i, "X", run));
        }
    }
    for (p, values) in by_partition {
        let pc = wick_test_support::partition(&client, topic, p).await;
        for chunk in values.chunks(50) {
            wick_test_support::produce(&pc, chunk.to_vec()).await;
        }
    }
}

/// The exact candles of `trades` by (instrument, interval, open time), folded trade by trade.
fn reference(trades: &[Trade]) -> BTreeMap<(Instrument, Interval, i64), Candle> {
    let mut out: BTreeMap<(Instrument, Interval, i64), Candle> = BTreeMap::new();
    for t in trades {
        for interval in Interval::ALL {
            let key = (t.instrument().clone(), interval, interval.bucket_start(t.event_time()).as_millis());
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

async fn wait_stored(db: &tokio_postgres::Client, schema: &str, trades: usize, instruments: usize) {
    let sql = format!("SELECT interval, sum(trade_count)::int8, count(DISTINCT instrument)::int8 FROM {schema}.candles GROUP BY interval");
    wick_test_support::wait_until("the writer stored every trade in every interval", Duration::from_secs(180), || async {
        match db.query(&sql, &[]).await {
            Ok(rows) => {
                rows.len() == 16 && rows.iter().all(|r| r.get::<_, i64>(1) == trades as i64 && r.get::<_, i64>(2) == instruments as i64)
            }
            Err(_) => false,
        }
    })
    .await
    .unwrap();
}

/// The candles of a `/api/v1/candles` answer.
fn answer_candles(body: &serde_json::Value) -> &Vec<serde_json::Value> {
    body["candles"].as_array().unwrap_or_else(|| panic!("no candles in {body}"))
}

fn same_values(got: &serde_json::Value, want: &Candle) {
    let d = |k: &str| got[k].as_str().unwrap().parse::<Decimal>().unwrap();
    assert_eq!(got["open_time"], want.open_time().as_millis());
    assert_eq!(got["close_time"], want.close_time().as_millis());
    for (k, v) in [
        ("open", want.open()),
        ("high", want.high()),
        ("low", want.low()),
        ("close", want.close()),
        ("volume", want.volume()),
        ("quote_volume", want.quote_volume()),
        ("taker_buy_volume", want.taker_buy_volume()),
        ("taker_buy_quote_volume", want.taker_buy_quote_volume()),
    ] {
        assert_eq!(d(k), v, "{k} of {got}");
        assert_eq!(got[k].as_str().unwrap(), v.to_string(), "{k} digits of {got}");
    }
    assert_eq!(got["trade_count"], want.trade_count());
    assert_eq!(got["first_trade_id"], want.first_trade().unwrap().trade_id);
    assert_eq!(got["last_trade_id"], want.last_trade().unwrap().trade_id);
}

/// Naive klines for Binance's `timeZone`: trades bucketed by the shifted grid, folded in order,
/// empty buckets flat at the previous close, up to the bucket holding now.
fn reference_klines(
    trades: &[Trade],
    instrument: &Instrument,
    interval: Interval,
    offset: UtcOffset,
    start_ms: i64,
    limit: usize,
) -> Vec<serde_json::Value> {
    let mine: Vec<&Trade> = trades.iter().filter(|t| t.instrument() == instrument).collect();
    let start = Timestamp::from_millis(start_ms).unwrap();
    let mut open = interval.bucket_start_with_offset(start, offset);
    if open < start {
        open = interval.next_open_with_offset(open, offset);
    }
    let d = |x: Decimal| x.to_string_min_scale(8);
    let mut out = Vec::new();
    let mut last_close: Option<Decimal> = mine.iter().rfind(|t| t.event_time() < open).map(|t| t.price());
    if last_close.is_none() {
        // Binance answers from the first kline on when the start is before it.
        match mine.iter().find(|t| t.event_time() >= open) {
            Some(first) => open = interval.bucket_start_with_offset(first.event_time(), offset),
            None => return Vec::new(),
        }
    }
    // Like Binance, no buckets after the one holding now.
    let now = wick_core::Clock::now(&SystemClock);
    for _ in 0..limit {
        if open > now {
            break;
        }
        let next = interval.next_open_with_offset(open, offset);
        let inside: Vec<&&Trade> = mine.iter().filter(|t| t.event_time() >= open && t.event_time() < next).collect();
        let close_ms = next.as_millis() - 1;
        if inside.is_empty() {
            if let Some(p) = last_close {
                out.push(serde_json::json!([
                    open.as_millis(),
                    d(p),
                    d(p),
                    d(p),
                    d(p),
                    "0.00000000",
                    close_ms,
                    "0.00000000",
                    0,
                    "0.00000000",
                    "0.00000000",
                    "0"
                ]));
            }
        } else {
            let (mut high, mut low) = (inside[0].price(), inside[0].price());
            let (mut v, mut q, mut bv, mut bq) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
            for t in &inside {
                high = high.max(t.price());
                low = low.min(t.price());
                let quote = t.price().checked_mul(t.quantity()).unwrap();
                v = v.checked_add(t.quantity()).unwrap();
                q = q.checked_add(quote).unwrap();
                if t.side() == TakerSide::Buy {
                    bv = bv.checked_add(t.quantity()).unwrap();
                    bq = bq.checked_add(quote).unwrap();
                }
            }
            let close = inside.last().unwrap().price();
            last_close = Some(close);
            out.push(serde_json::json!([
                open.as_millis(),
                d(inside[0].price()),
                d(high),
                d(low),
                d(close),
                d(v),
                close_ms,
                d(q),
                inside.len(),
                d(bv),
                d(bq),
                "0"
            ]));
        }
        open = next;
    }
    out
}

/// Every tier answers exactly as the database does, and as the exact reference over the trades.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_tier_answers_like_the_database_and_the_reference() {
    let env = env().await;
    let trades = history();
    let want = reference(&trades);
    // The L1 gateway starts first and serves while candles are still arriving.
    let full = start_gateway(gateway_config(&env)).await;
    let aggregator = start_aggregator(&env);
    let writer = start_writer(writer_config(&env));
    produce_trades(&env.market, &trades).await;
    // Until the writer has created its tables the database cannot answer (503): serve while
    // candles arrive, not before the schema exists.
    let tables = format!("SELECT to_regclass('{}.candles') IS NOT NULL", env.schema);
    wick_test_support::wait_until("the writer created its tables", Duration::from_secs(60), || async {
        env.db.query_one(&tables, &[]).await.map(|r| r.get::<_, bool>(0)).unwrap_or(false)
    })
    .await
    .unwrap();
    let btc = "BINANCE:BTC-USDT";
    let last_ms = trades.iter().map(|t| t.event_time().as_millis()).max().unwrap();
    for _ in 0..5 {
        for iv in ["1m", "1h", "1d"] {
            let r = get(&full.http, &format!("/api/v1/candles?instrument={btc}&interval={iv}&end={last_ms}&limit=1000")).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_stored(&env.db, &env.schema, trades.len(), 3).await;
    // The gateway has read everything, the writer has stored all it read, and Redis is as current
    // as the database.
    let cache_current =
        format!("SELECT coalesce(bool_and(cache_next_offset = next_offset), false) FROM {}.writer_offsets WHERE topic = $1", env.schema);
    wick_test_support::wait_until("the gateway, the database and Redis agree", Duration::from_secs(60), || async {
        let redis = env.db.query_one(&cache_current, &[&env.candles]).await.map(|r| r.get::<_, bool>(0)).unwrap_or(false);
        redis && full.metrics.live_lag.get() == 0 && full.metrics.unpersisted.get() == 0 && full.metrics.live_events.get() > 0
    })
    .await
    .unwrap();

    let mut db_only = gateway_config(&env);
    db_only.l1.enabled = false;
    db_only.redis.enabled = false;
    let db_only = start_gateway(db_only).await;
    let mut l2_only = gateway_config(&env);
    l2_only.l1.enabled = false;
    let l2_only = start_gateway(l2_only).await;

    let first_ms = trades.iter().map(|t| t.event_time().as_millis()).min().unwrap();
    let mid_ms = (first_ms + last_ms) / 2;
    let mut queries = Vec::new();
    for name in ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT", "COINBASE:BTC-USD"] {
        for interval in Interval::ALL {
            let iv = interval.as_str();
            queries.push(format!("/api/v1/candles?instrument={name}&interval={iv}&end={last_ms}&limit=1000"));
            queries.push(format!("/api/v1/candles?instrument={name}&interval={iv}&start={first_ms}&limit=700&fill=previous"));
            queries.push(format!("/api/v1/candles?instrument={name}&interval={iv}&start={mid_ms}&end={}&limit=333", mid_ms + 86_400_000));
        }
    }
    let mut checked = 0;
    for q in &queries {
        let truth = get(&db_only.http, q).await;
        assert_eq!(truth.status, 200, "{q}: {}", truth.body);
        for (tier, gw) in [("L1", &full), ("L1 again", &full), ("L2 filling", &l2_only), ("L2", &l2_only)] {
            let got = get(&gw.http, q).await;
            assert_eq!(got.body, truth.body, "{tier} differs from the database for {q}");
        }
        // Traded candles equal the reference to the last digit.
        let body = truth.json();
        for c in answer_candles(&body) {
            let interval: Interval = c["interval"].as_str().unwrap().parse().unwrap();
            let key = (instrument(c["instrument"].as_str().unwrap()), interval, c["open_time"].as_i64().unwrap());
            match want.get(&key) {
                Some(reference) => {
                    same_values(c, reference);
                    checked += 1;
                }
                None => assert_eq!(c["trade_count"], 0, "{q}: a candle without trades in the reference: {c}"),
            }
        }
    }
    assert!(checked > 20_000, "only {checked} candles compared");
    assert!(full.metrics.l1_hits.get() > 0 && full.metrics.l1_misses.get() > 0);
    assert!(l2_only.metrics.l2_hits.get() > 0, "L2 never answered a chunk whole");
    assert_eq!(db_only.metrics.l1_hits.get() + db_only.metrics.l2_hits.get(), 0);

    // gRPC GetCandles gives the same candles as REST.
    let mut client = query_gateway::grpc::proto::candle_service_client::CandleServiceClient::connect(full.grpc.clone()).await.unwrap();
    for iv in ["1s", "15m", "1w", "1M"] {
        let r = client
            .get_candles(query_gateway::grpc::proto::GetCandlesRequest {
                instrument: btc.into(),
                interval: iv.into(),
                start_time_ms: Some(first_ms),
                end_time_ms: None,
                limit: 1000,
                fill: query_gateway::grpc::proto::Fill::Previous as i32,
            })
            .await
            .unwrap()
            .into_inner();
        let rest =
            get(&db_only.http, &format!("/api/v1/candles?instrument={btc}&interval={iv}&start={first_ms}&limit=1000&fill=previous")).await;
        assert_eq!(grpc_as_rest(&r), rest.body, "gRPC and REST differ for {iv}");
    }
    let listed = client.list_instruments(query_gateway::grpc::proto::ListInstrumentsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.instruments.len(), 3);

    // Binance klines, with time zones that move the boundaries, against the naive reference.
    let eth = instrument("BINANCE:ETH-USDT");
    for (iv, tz) in [("1h", "0"), ("1d", "8"), ("1h", "05:45"), ("4h", "-1:30"), ("1w", "+2"), ("1M", "-3"), ("1d", "0"), ("3d", "14")] {
        let interval: Interval = iv.parse().unwrap();
        let offset: UtcOffset = tz.parse().unwrap();
        let start = first_ms - 3 * 86_400_000;
        let path = format!("/api/v3/klines?symbol=ETHUSDT&interval={iv}&startTime={start}&limit=200&timeZone={}", tz.replace('+', "%2B"));
        let truth = get(&db_only.http, &path).await;
        assert_eq!(truth.status, 200, "{path}: {}", truth.body);
        assert_eq!(get(&full.http, &path).await.body, truth.body, "{path}");
        let got = truth.json();
        let expected = reference_klines(&trades, &eth, interval, offset, start, 200);
        assert!(!expected.is_empty(), "{path}");
        assert_eq!(got, serde_json::Value::Array(expected), "{path}");
    }

    for s in [full.service, db_only.service, l2_only.service, aggregator, writer] {
        s.stop().await;
    }
}

/// A gRPC `GetCandles` answer as the REST body of the same page.
fn grpc_as_rest(r: &query_gateway::grpc::proto::GetCandlesResponse) -> String {
    query_gateway::json::page(&query_gateway::query::Page {
        candles: r.candles.iter().map(|c| wick_wire::candle_from_wire(c).unwrap()).collect(),
        next_start: r.next_start_time_ms.map(|ms| Timestamp::from_millis(ms).unwrap()),
    })
}

/// Trades of one instrument in four bursts of ten minutes, years and weeks apart: most chunks of
/// every interval are empty.
fn sparse_history() -> Vec<Trade> {
    let sol = instrument("BINANCE:SOL-USDT");
    let bursts = ["2019-06-01T10:00:00Z", "2024-03-01T23:55:00Z", "2024-03-05T00:00:00Z", "2024-04-20T13:30:00Z"];
    let mut out = Vec::new();
    for (b, at) in bursts.iter().enumerate() {
        let t0 = Timestamp::parse_rfc3339(at).unwrap().as_micros();
        for k in 0..40i64 {
            let t = Timestamp::from_micros(t0 + k * 15_500_000).unwrap();
            let price = format!("{}.{:02}", 100 + b as i64 * 10 + k % 7, k);
            let side = if k % 3 == 0 { TakerSide::Sell } else { TakerSide::Buy };
            out.push(Trade::new(sol.clone(), out.len() as u64 + 1, price.parse().unwrap(), "1.5".parse().unwrap(), side, t, t).unwrap());
        }
    }
    out
}

/// Every page of a REST candle query from `start`, following `next_start` (and checking the
/// `Link` header says the same) until it is null: the bodies, and the candles in order.
async fn rest_pages(base: &str, query: &str, start: i64, limit: usize) -> (Vec<String>, Vec<serde_json::Value>) {
    let (mut bodies, mut candles) = (Vec::new(), Vec::new());
    let mut start = Some(start);
    while let Some(s) = start {
        assert!(bodies.len() < 1000, "{query}: paging does not end");
        let path = format!("/api/v1/candles?{query}&start={s}");
        let r = get(base, &path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let body = r.json();
        let page = answer_candles(&body);
        assert!(page.len() <= limit, "{path}: {} candles", page.len());
        start = body["next_start"].as_i64();
        match start {
            Some(next) => {
                assert_eq!(page.len(), limit, "{path}: a page with a next one is full");
                assert!(next > page.last().unwrap()["open_time"].as_i64().unwrap(), "{path}");
                let link = format!(r#"</api/v1/candles?{query}&start={next}>; rel="next""#);
                assert_eq!(r.header("link"), Some(link.as_str()), "{path}");
            }
            None => {
                assert!(body["next_start"].is_null(), "{path}: {body}");
                assert_eq!(r.header("link"), None, "{path}");
            }
        }
        candles.extend(page.iter().cloned());
        bodies.push(r.body);
    }
    (bodies, candles)
}

/// Paging through sparse history: from `start=0`, `next_start` leads through every candle once
/// (no empty pages while candles lie further on), with and without `fill`, identically from every
/// tier and over gRPC; Binance's klines keep Binance's own start semantics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_through_sparse_history_returns_every_candle_once() {
    let env = env().await;
    let trades = sparse_history();
    let want = reference(&trades);
    let writer = start_writer(writer_config(&env));
    let stored = publish_history(&env.candles, &trades).await;
    wait_written(&env.db, &env.schema, stored.len()).await;
    writer.stop().await;
    let mut db_only = gateway_config(&env);
    db_only.l1.enabled = false;
    db_only.redis.enabled = false;
    let db_only = start_gateway(db_only).await;
    let mut l2_only = gateway_config(&env);
    l2_only.l1.enabled = false;
    let l2_only = start_gateway(l2_only).await;
    let full = start_gateway(gateway_config(&env)).await;

    let sol = instrument("BINANCE:SOL-USDT");
    let last_ms = trades.iter().map(|t| t.event_time().as_millis()).max().unwrap();
    let hours_from = Timestamp::parse_rfc3339("2024-03-01T00:00:00Z").unwrap().as_millis();
    // (query, start, limit, the open times of every page together with the reference candle of
    // each, the close before the first).
    type Case<'a> = (String, i64, usize, Vec<(i64, Option<&'a Candle>)>, Option<Decimal>);
    let mut cases: Vec<Case> = Vec::new();
    // Without fill: every stored candle of every interval, 7 per page.
    for interval in Interval::ALL {
        let mine: Vec<(i64, Option<&Candle>)> =
            want.iter().filter(|((i, iv, _), _)| *i == sol && *iv == interval).map(|((_, _, ms), c)| (*ms, Some(c))).collect();
        cases.push((format!("instrument={sol}&interval={interval}&limit=7"), 0, 7, mine, None));
    }
    // With fill: from the first candle (or, for hours, from the second burst's day, which the
    // first burst's close fills) to `end`, flat where nothing traded.
    for (interval, limit, start) in
        [(Interval::D1, 1000, 0), (Interval::W1, 100, 0), (Interval::Mo1, 7, 0), (Interval::H1, 500, hours_from)]
    {
        let mine: Vec<(&i64, &Candle)> =
            want.iter().filter(|((i, iv, _), _)| *i == sol && *iv == interval).map(|((_, _, ms), c)| (ms, c)).collect();
        let mut open = if start == 0 { *mine[0].0 } else { start };
        let before = mine.iter().rfind(|(ms, _)| **ms < open).map(|(_, c)| c.close());
        let mut filled = Vec::new();
        while open <= last_ms {
            filled.push((open, want.get(&(sol.clone(), interval, open))));
            open = interval.next_open(Timestamp::from_millis(open).unwrap()).as_millis();
        }
        cases.push((
            format!("instrument={sol}&interval={interval}&end={last_ms}&limit={limit}&fill=previous"),
            start,
            limit,
            filled,
            before,
        ));
    }

    let mut compared = 0;
    for (query, start, limit, expected, before) in &cases {
        let (truth, candles) = rest_pages(&db_only.http, query, *start, *limit).await;
        assert!(!candles.is_empty(), "{query}: start={start} found nothing");
        let opens: Vec<i64> = candles.iter().map(|c| c["open_time"].as_i64().unwrap()).collect();
        assert_eq!(opens, expected.iter().map(|(ms, _)| *ms).collect::<Vec<_>>(), "{query}: every candle once, in order");
        let mut last_close = *before;
        for (got, (_, reference)) in candles.iter().zip(expected) {
            match reference {
                Some(c) => {
                    same_values(got, c);
                    last_close = Some(c.close());
                }
                None => {
                    assert_eq!(got["trade_count"], 0, "{query}: {got}");
                    assert_eq!(got["close"].as_str().unwrap().parse::<Decimal>().ok(), last_close, "{query}: {got}");
                }
            }
            compared += 1;
        }
        for (tier, gw) in [("L1", &full), ("L1 again", &full), ("L2 filling", &l2_only), ("L2", &l2_only)] {
            let (bodies, _) = rest_pages(&gw.http, query, *start, *limit).await;
            assert_eq!(bodies, truth, "{tier} pages differ from the database's for {query}");
        }
    }
    assert!(compared > 400, "only {compared} candles compared");
    assert!(full.metrics.l1_hits.get() > 0, "L1 never answered");
    assert!(l2_only.metrics.l2_hits.get() > 0, "L2 never answered a chunk whole");

    // gRPC pages are the REST pages, cursor included.
    let mut client = query_gateway::grpc::proto::candle_service_client::CandleServiceClient::connect(full.grpc.clone()).await.unwrap();
    for (interval, fill, limit, end) in [("1m", 1, 9, None), ("1s", 0, 50, None), ("1d", 2, 400, Some(last_ms))] {
        let fill_param = if fill == 2 { "&fill=previous" } else { "" };
        let end_param = end.map(|e| format!("&end={e}")).unwrap_or_default();
        let query = format!("instrument={sol}&interval={interval}{end_param}&limit={limit}{fill_param}");
        let (rest, _) = rest_pages(&db_only.http, &query, 0, limit as usize).await;
        let mut pages = Vec::new();
        let mut start = Some(0);
        while let Some(s) = start {
            let r = client
                .get_candles(query_gateway::grpc::proto::GetCandlesRequest {
                    instrument: sol.to_string(),
                    interval: interval.into(),
                    start_time_ms: Some(s),
                    end_time_ms: end,
                    limit,
                    fill,
                })
                .await
                .unwrap()
                .into_inner();
            start = r.next_start_time_ms;
            pages.push(grpc_as_rest(&r));
            assert!(pages.len() <= rest.len(), "{query}: gRPC pages go on");
        }
        assert_eq!(pages, rest, "gRPC pages differ from REST for {query}");
    }

    // Binance's klines: a startTime before the first candle answers from it, every interval filled.
    for (iv, limit) in [("1M", 1000), ("1d", 1000), ("1h", 50)] {
        let path = format!("/api/v3/klines?symbol=SOLUSDT&interval={iv}&startTime=0&limit={limit}");
        let got = get(&db_only.http, &path).await;
        assert_eq!(got.status, 200, "{path}: {}", got.body);
        let expected = reference_klines(&trades, &sol, iv.parse().unwrap(), UtcOffset::UTC, 0, limit);
        assert_eq!(got.json(), serde_json::Value::Array(expected), "{path}");
        assert_eq!(get(&full.http, &path).await.body, got.body, "{path} from L1");
    }

    for s in [full.service, db_only.service, l2_only.service] {
        s.stop().await;
    }
}

/// Binance's own Python connector reads the klines endpoint unchanged, errors included; a
/// reflection-only gRPC client finds and calls the service; bad requests get clear 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standard_clients_and_bad_requests() {
    let env = env().await;
    let trades: Vec<Trade> = history().into_iter().take(3000).collect();
    let gw = start_gateway(gateway_config(&env)).await;
    let aggregator = start_aggregator(&env);
    let writer = start_writer(writer_config(&env));
    produce_trades(&env.market, &trades).await;
    wait_stored(&env.db, &env.schema, trades.len(), 3).await;
    let first_ms = trades.iter().map(|t| t.event_time().as_millis()).min().unwrap();

    let script = |name: &str| format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"));
    let python = |args: Vec<String>| async move {
        let shown = args.join(" ");
        let out = tokio::task::spawn_blocking(move || Command::new("python3").args(&args).output()).await.unwrap().unwrap();
        assert!(out.status.success(), "{shown}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let binance = python(vec![
        script("binance_klines.py"),
        gw.http.clone(),
        "BTCUSDT".into(),
        "1h".into(),
        format!("startTime={first_ms}"),
        "limit=24".into(),
        "timeZone=8".into(),
    ])
    .await;
    let ours = get(&gw.http, &format!("/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={first_ms}&limit=24&timeZone=8")).await.json();
    assert_eq!(binance["klines"], ours);
    assert_eq!(ours.as_array().unwrap().len(), 24);
    // uiKlines, Binance's klines for charts, answers the same.
    let ui = get(&gw.http, &format!("/api/v3/uiKlines?symbol=BTCUSDT&interval=1h&startTime={first_ms}&limit=24&timeZone=8")).await.json();
    assert_eq!(ui, ours);
    // From the epoch, as clients do to find a symbol's first kline: Binance answers from it.
    let earliest = get(&gw.http, "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=0&limit=1").await.json();
    let first_btc = trades.iter().filter(|t| t.instrument().as_str() == "BINANCE:BTC-USDT").map(|t| t.event_time()).min().unwrap();
    assert_eq!(earliest[0][0], Interval::M1.bucket_start(first_btc).as_millis(), "{earliest}");
    let refused = python(vec![script("binance_klines.py"), gw.http.clone(), "NOPEUSDT".into(), "1h".into()]).await;
    assert_eq!((refused["status"].as_i64(), refused["error_code"].as_i64()), (Some(400), Some(-1121)), "{refused}");
    let refused = python(vec![script("binance_klines.py"), gw.http.clone(), "BTCUSDT".into(), "7m".into()]).await;
    assert_eq!(refused["error_code"].as_i64(), Some(-1120), "{refused}");

    let reflected = python(vec![
        script("reflection_client.py"),
        gw.grpc.trim_start_matches("http://").to_owned(),
        "BINANCE:BTC-USDT".into(),
        "1h".into(),
        first_ms.to_string(),
        "10".into(),
    ])
    .await;
    let services: Vec<&str> = reflected["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for s in ["wick.v1.CandleService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"] {
        assert!(services.contains(&s), "{s} not in {services:?}");
    }
    // The current reflection protocol (v1) answers too.
    {
        use tonic_reflection::pb::v1::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest};
        use tonic_reflection::pb::v1::{server_reflection_response::MessageResponse, ServerReflectionRequest};
        let channel = tonic::transport::Endpoint::from_shared(gw.grpc.clone()).unwrap().connect().await.unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut answers = client.server_reflection_info(futures_util::stream::iter(vec![request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response else {
            panic!("no service list over reflection v1");
        };
        assert!(list.service.iter().any(|s| s.name == "wick.v1.CandleService"), "{list:?}");
    }
    assert_eq!(reflected["health"], "SERVING");
    let rest = get(&gw.http, &format!("/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=1h&start={first_ms}&limit=10")).await.json();
    let rest = answer_candles(&rest);
    let via_reflection = reflected["candles"].as_array().unwrap();
    assert_eq!(via_reflection.len(), rest.len());
    for (g, r) in via_reflection.iter().zip(rest) {
        assert_eq!(g["open_time_us"].as_str().unwrap().parse::<i64>().unwrap() / 1000, r["open_time"].as_i64().unwrap());
        assert_eq!(g["trade_count"].as_str().unwrap(), r["trade_count"].to_string());
    }

    // Bad requests: the status, and a message that says what was wrong.
    let cases: &[(&str, u16, &str)] = &[
        ("/api/v1/candles?interval=1m", 400, "missing required parameter 'instrument'"),
        ("/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=2m", 400, "unknown interval \"2m\""),
        ("/api/v1/candles?instrument=btc&interval=1m", 400, "invalid instrument"),
        ("/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=1m&limit=1001", 400, "limit must be an integer from 1 to 1000"),
        ("/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=1m&start=2&end=1", 400, "start must not be after end"),
        ("/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=1m&start=soon", 400, "expected epoch milliseconds or RFC 3339"),
        ("/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=1m&fill=zero", 400, "expected none or previous"),
        ("/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=1m&colour=red", 400, "unknown parameter 'colour'"),
        ("/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=1m&interval=1h", 400, "more than once"),
        ("/api/v2/candles", 404, "no route /api/v2/candles"),
        ("/nowhere", 404, "no route /nowhere"),
    ];
    for (path, status, message) in cases {
        let r = get(&gw.http, path).await;
        assert_eq!(r.status, *status, "{path}: {}", r.body);
        let body = r.json();
        assert!(body["message"].as_str().unwrap().contains(message), "{path}: {body}");
        assert!(body["code"].is_string(), "{path}: {body}");
    }
    let binance_cases: &[(&str, i64)] = &[
        ("/api/v3/klines?symbol=BTCUSDT", -1102),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=5000", -1100),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1m&timeZone=15", -1100),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=abc", -1100),
        ("/api/v3/klines?symbol=XYZ&interval=1m", -1121),
    ];
    for (path, code) in binance_cases {
        let r = get(&gw.http, path).await;
        assert_eq!(r.status, 400, "{path}");
        let body = r.json();
        assert_eq!(body["code"], *code, "{path}: {body}");
        assert!(body["msg"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {body}");
    }
    let post = curl(&format!("{}/api/v1/candles", gw.http), &["-X", "POST"]).await;
    assert_eq!(post.status, 405, "{}", post.body);
    assert_eq!(post.header("allow"), Some("GET, HEAD"), "a 405 says which methods are allowed");
    // And both are: a HEAD is answered as the GET, without the body (it was a 404).
    let head = curl(&format!("{}/api/v1/candles?instrument=BINANCE:BTC-USDT&interval=1h&limit=2", gw.http), &["-I"]).await;
    assert_eq!((head.status, head.body.as_str()), (200, ""), "{head:?}");
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(curl(&format!("{}/", gw.http), &["-I"]).await.status, 200);
    assert_eq!(curl(&format!("{}/api/v2/candles", gw.http), &["-I"]).await.status, 404);
    // The WebSocket without the handshake: 426 and what to do, not "no route /ws".
    let plain = get(&gw.http, "/ws").await;
    assert_eq!((plain.status, plain.header("upgrade")), (426, Some("websocket")), "{plain:?}");
    assert!(plain.json()["message"].as_str().unwrap().contains("Upgrade: websocket"), "{plain:?}");
    let openapi = get(&gw.http, "/api/openapi.json").await.json();
    assert_eq!(openapi["openapi"], "3.0.3");
    assert!(openapi["paths"]["/api/v3/klines"]["get"]["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "timeZone"));
    // The document refuses what the gateway refuses: an empty instrument or symbol is not valid.
    let schema_of = |path: &str, name: &str| {
        openapi["paths"][path]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["schema"].clone()
    };
    assert_eq!(schema_of("/api/v1/candles", "instrument")["pattern"], "^[A-Z0-9_]+:[A-Z0-9]+-[A-Z0-9]+$");
    // Binance refuses an unknown symbol (-1121): the document lists the known ones.
    assert_eq!(schema_of("/api/v3/klines", "symbol")["enum"], serde_json::json!(["BTCUSDT", "ETHUSDT"]));
    for path in ["/api/v1/candles?instrument=&interval=1m", "/api/v3/klines?symbol=&interval=1m"] {
        assert_eq!(get(&gw.http, path).await.status, 400, "{path}");
    }

    for s in [gw.service, aggregator, writer] {
        s.stop().await;
    }
}

/// API keys (header, bearer, query) on REST, WebSocket and gRPC; rate limits with Retry-After;
/// CORS for a configured origin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rate_limits_and_cors() {
    let env = env().await;
    let mut config = gateway_config(&env);
    config.auth.api_keys = vec!["wick-test-key-1".into()];
    config.limits.per_key_rate = 1;
    config.limits.per_key_burst = 3;
    config.http.cors_origins = vec!["https://charts.example.com".into()];
    let gw = start_gateway(config).await;
    let path = format!("{}/api/v1/instruments", gw.http);

    let r = curl(&path, &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["message"].as_str().unwrap().contains("API key is required"));
    assert_eq!(curl(&path, &["-H", "x-api-key: wrong-key-123"]).await.status, 401);
    assert_eq!(curl(&path, &["-H", "x-api-key: wick-test-key-1"]).await.status, 200);
    assert_eq!(curl(&path, &["-H", "authorization: Bearer wick-test-key-1"]).await.status, 200);
    assert_eq!(curl(&format!("{path}?api_key=wick-test-key-1"), &[]).await.status, 200);
    let limited = curl(&path, &["-H", "x-api-key: wick-test-key-1"]).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(limited.json()["code"], "rate_limited");
    assert_eq!(gw.metrics.rate_limited.with_label_values(&["key"]).get(), 1);

    let allowed = curl(&path, &["-H", "origin: https://charts.example.com", "-H", "x-api-key: wick-test-key-1"]).await;
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://charts.example.com"), "{allowed:?}");
    let preflight = curl(
        &path,
        &[
            "-X",
            "OPTIONS",
            "-H",
            "origin: https://charts.example.com",
            "-H",
            "access-control-request-method: GET",
            "-H",
            "access-control-request-headers: x-api-key",
        ],
    )
    .await;
    assert_eq!(preflight.status, 200, "{preflight:?}");
    let foreign = curl(&path, &["-H", "origin: https://evil.example.com", "-H", "x-api-key: wick-test-key-1"]).await;
    assert!(foreign.header("access-control-allow-origin").is_none(), "{foreign:?}");

    let ws_url = gw.http.replace("http://", "ws://") + "/ws";
    assert!(tokio_tungstenite::connect_async(&ws_url).await.is_err(), "a WebSocket without a key was accepted");
    let mut grpc = query_gateway::grpc::proto::candle_service_client::CandleServiceClient::connect(gw.grpc.clone()).await.unwrap();
    let status = grpc.list_instruments(query_gateway::grpc::proto::ListInstrumentsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    gw.service.stop().await;
}

/// Candle events as the aggregator publishes them, straight onto the gateway's topic.
async fn publish_candles(topic: &str, events: &[(CandleEventKind, Candle)]) {
    let client = wick_test_support::kafka().await;
    let instrument = events[0].1.instrument().clone();
    let p = wick_kafka::partitioner::partition_for(instrument.as_str().as_bytes(), CANDLE_PARTITIONS);
    let pc = wick_test_support::partition(&client, topic, p).await;
    let values: Vec<Vec<u8>> = events.chunks(2000).map(|chunk| wick_wire::encode_candle_batch(&instrument, chunk)).collect();
    for batch in values.chunks(20) {
        wick_test_support::produce(&pc, batch.to_vec()).await;
    }
}

fn one_trade_candle(name: &str, interval: Interval, second: i64, id: u64, closed: bool) -> Candle {
    let t = Timestamp::from_millis(1_700_000_000_000 + second * 1000).unwrap();
    let trade = Trade::new(instrument(name), id, "42.5".parse().unwrap(), "2".parse().unwrap(), TakerSide::Buy, t, t).unwrap();
    let mut c = Candle::from_trade(interval, &trade).unwrap();
    if closed {
        c.mark_closed();
    }
    c
}

/// The next text message of a WebSocket, as JSON.
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a message within 20 s").unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// WebSocket and gRPC streams push the events of subscribed pairs only, each marked closed or
/// not; a client that stops reading is disconnected with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_pushes_and_slow_clients() {
    let env = env().await;
    let mut config = gateway_config(&env);
    config.live.client_buffer = 8;
    config.live.max_subscriptions = 3;
    let gw = start_gateway(config).await;
    let ws_url = gw.http.replace("http://", "ws://") + "/ws";
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let send = |v: serde_json::Value| WsMessage::Text(v.to_string().into());
    ws.send(send(serde_json::json!({"op": "subscribe", "instrument": "SIM:AAA-USD", "interval": "1s"}))).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    ws.send(send(serde_json::json!({"op": "subscribe", "instrument": "SIM:AAA-USD", "interval": "7s"}))).await.unwrap();
    assert!(next_json(&mut ws).await["message"].as_str().unwrap().contains("unknown interval"));
    ws.send(WsMessage::Text("{not json".into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "error");
    for i in ["1m", "1h"] {
        ws.send(send(serde_json::json!({"op": "subscribe", "instrument": "SIM:AAA-USD", "interval": i}))).await.unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    }
    ws.send(send(serde_json::json!({"op": "subscribe", "instrument": "SIM:BBB-USD", "interval": "1m"}))).await.unwrap();
    assert!(next_json(&mut ws).await["message"].as_str().unwrap().contains("at most 3 subscriptions"));
    ws.send(send(serde_json::json!({"op": "unsubscribe", "instrument": "SIM:AAA-USD", "interval": "1h"}))).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "unsubscribed");

    let mut grpc = query_gateway::grpc::proto::candle_service_client::CandleServiceClient::connect(gw.grpc.clone()).await.unwrap();
    let mut stream = grpc
        .stream_candles(query_gateway::grpc::proto::StreamCandlesRequest {
            subscriptions: vec![query_gateway::grpc::proto::CandleSubscription { instrument: "SIM:AAA-USD".into(), interval: "1m".into() }],
        })
        .await
        .unwrap()
        .into_inner();

    let events = vec![
        (CandleEventKind::Update, one_trade_candle("SIM:AAA-USD", Interval::S1, 0, 1, false)),
        (CandleEventKind::Update, one_trade_candle("SIM:AAA-USD", Interval::H1, 0, 1, false)),
        (CandleEventKind::Final, one_trade_candle("SIM:AAA-USD", Interval::S1, 0, 1, true)),
        (CandleEventKind::Update, one_trade_candle("SIM:AAA-USD", Interval::M1, 0, 1, false)),
    ];
    publish_candles(&env.candles, &events).await;
    let first = next_json(&mut ws).await;
    assert_eq!(
        (first["kind"].as_str(), first["candle"]["interval"].as_str(), first["candle"]["closed"].as_bool()),
        (Some("update"), Some("1s"), Some(false))
    );
    let second = next_json(&mut ws).await;
    assert_eq!(
        (second["kind"].as_str(), second["candle"]["closed"].as_bool(), second["candle"]["version"].as_u64()),
        (Some("final"), Some(true), Some(3))
    );
    let third = next_json(&mut ws).await;
    assert_eq!(third["candle"]["interval"], "1m", "the unsubscribed 1h update must not arrive: {third}");
    let pushed = tokio::time::timeout(Duration::from_secs(20), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(pushed.candle.as_ref().unwrap().interval, "1m");
    assert_eq!(pushed.kind, wick_wire::pb::CandleEventKind::Update as i32);

    // A client that stops reading: far more events than its queue and the socket buffers hold.
    let (mut slow, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    slow.send(send(serde_json::json!({"op": "subscribe", "instrument": "SIM:CCC-USD", "interval": "1s"}))).await.unwrap();
    assert_eq!(next_json(&mut slow).await["type"], "subscribed");
    let flood: Vec<(CandleEventKind, Candle)> =
        (0..60_000).map(|s| (CandleEventKind::Final, one_trade_candle("SIM:CCC-USD", Interval::S1, s, s as u64 + 1, true))).collect();
    publish_candles(&env.candles, &flood).await;
    wick_test_support::wait_until("the slow client is dropped", Duration::from_secs(60), || async {
        gw.metrics.clients_dropped.with_label_values(&["slow_consumer"]).get() == 1
    })
    .await
    .unwrap();
    // Reading now drains what was in flight, then the close frame with its reason.
    let close = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = slow.next().await {
            match m {
                Ok(WsMessage::Close(frame)) => return frame,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("too slow"), "{}", close.reason);
    // The fast client is still served.
    ws.send(send(serde_json::json!({"op": "ping"}))).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    gw.service.stop().await;
}

/// Final candles of every interval for `trades`, published as the aggregator would; returns them.
async fn publish_history(topic: &str, trades: &[Trade]) -> Vec<Candle> {
    let mut by_instrument: BTreeMap<Instrument, Vec<(CandleEventKind, Candle)>> = BTreeMap::new();
    let mut all = Vec::new();
    for (_, mut c) in reference(trades) {
        c.mark_closed();
        all.push(c.clone());
        by_instrument.entry(c.instrument().clone()).or_default().push((CandleEventKind::Final, c));
    }
    for events in by_instrument.values() {
        publish_candles(topic, events).await;
    }
    all
}

async fn wait_written(db: &tokio_postgres::Client, schema: &str, candles: usize) {
    let sql = format!("SELECT count(*)::int8 FROM {schema}.candles");
    wick_test_support::wait_until(&format!("the writer stored {candles} candles"), Duration::from_secs(120), || async {
        db.query_one(&sql, &[]).await.map(|r| r.get::<_, i64>(0) == candles as i64).unwrap_or(false)
    })
    .await
    .unwrap();
}

/// The queries the resilience drills repeat: every interval of two instruments. They end at the
/// last trade: knowing that no candle follows a page up to now takes the database's index.
fn drill_queries(trades: &[Trade]) -> Vec<String> {
    let first_ms = trades.iter().map(|t| t.event_time().as_millis()).min().unwrap();
    let last_ms = trades.iter().map(|t| t.event_time().as_millis()).max().unwrap();
    let mut out = Vec::new();
    for name in ["BINANCE:BTC-USDT", "COINBASE:BTC-USD"] {
        for interval in Interval::ALL {
            out.push(format!("/api/v1/candles?instrument={name}&interval={interval}&start={first_ms}&end={last_ms}&limit=1000"));
        }
    }
    out
}

/// Redis down: a single node that is not there, then one node of a cluster killed under reads.
/// The breaker opens (the metric shows it), answers come from L1 and the database and stay equal
/// to the database's; once the node is back the breaker closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outages_open_the_breaker_and_answers_stay_right() {
    let env = env().await;
    let trades: Vec<Trade> = history().into_iter().take(1500).collect();
    let writer = start_writer(writer_config(&env));
    let candles = publish_history(&env.candles, &trades).await;
    wait_written(&env.db, &env.schema, candles.len()).await;
    writer.stop().await;
    let queries = drill_queries(&trades);
    let mut truth_config = gateway_config(&env);
    truth_config.l1.enabled = false;
    truth_config.redis.enabled = false;
    let truth_gw = start_gateway(truth_config).await;
    let mut truth = Vec::new();
    for q in &queries {
        let r = get(&truth_gw.http, q).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        truth.push(r.body);
    }

    // A single Redis that is not there.
    let mut single = gateway_config(&env);
    single.redis.url = format!("redis://127.0.0.1:{}", wick_test_support::free_port().unwrap());
    single.redis.command_timeout = ConfigDuration::from_millis(200);
    let gw = start_gateway(single).await;
    for (q, want) in queries.iter().zip(&truth) {
        let r = get(&gw.http, q).await;
        assert_eq!((r.status, &r.body), (200, want), "{q} without Redis");
    }
    assert_eq!(gw.metrics.l2_breaker_open.get(), 1, "the breaker should be open");
    assert!(gw.metrics.l2_errors.get() >= 1);
    gw.service.stop().await;

    // One node of a cluster killed while an L2-only gateway reads (no L1: every read goes to Redis).
    let mut cluster = wick_test_support::RedisClusterProcess::start().unwrap();
    let mut config = gateway_config(&env);
    config.redis.url = cluster.url();
    config.redis.command_timeout = ConfigDuration::from_millis(300);
    config.l1.enabled = false;
    let gw = start_gateway(config).await;
    for _ in 0..2 {
        for (q, want) in queries.iter().zip(&truth) {
            assert_eq!(&get(&gw.http, q).await.body, want, "{q} with the cluster up");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(gw.metrics.l2_hits.get() > 0, "the cluster never answered");
    cluster.kill_node(0);
    for (q, want) in queries.iter().zip(&truth) {
        let r = get(&gw.http, q).await;
        assert_eq!((r.status, &r.body), (200, want), "{q} with a cluster node down");
    }
    assert!(gw.metrics.l2_errors.get() >= 1, "no Redis error seen with a node down");
    cluster.restart_node(0).unwrap();
    wick_test_support::wait_until("the breaker closes once the node is back", Duration::from_secs(60), || async {
        for (q, want) in queries.iter().zip(&truth) {
            assert_eq!(&get(&gw.http, q).await.body, want, "{q} after the node came back");
        }
        gw.metrics.l2_breaker_open.get() == 0
    })
    .await
    .unwrap();
    for s in [gw.service, truth_gw.service] {
        s.stop().await;
    }
}

/// PostgreSQL stopped: what the caches hold is served unchanged, anything else is a 503 that says
/// why; once it is back, everything is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_serves_the_cache_else_503() {
    let env = env().await;
    let pg = wick_test_support::PostgresProcess::start().unwrap();
    let trades: Vec<Trade> = history().into_iter().take(900).collect();
    let mut writer = writer_config(&env);
    writer.database.url = pg.url("wick");
    writer.database.schema = None;
    writer.redis.enabled = false;
    let writer = start_writer(writer);
    let candles = publish_history(&env.candles, &trades).await;
    // The writer creates the database: connect once it has.
    let mut attempts = 0;
    let (db, connection) = loop {
        match tokio_postgres::connect(&pg.url("wick"), tokio_postgres::NoTls).await {
            Ok(connected) => break connected,
            Err(_) if attempts < 600 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the writer never created the database: {e}"),
        }
    };
    let connection = tokio::spawn(connection);
    wait_written(&db, "public", candles.len()).await;
    drop(db);
    connection.abort();
    writer.stop().await;

    let mut config = gateway_config(&env);
    config.database.url = pg.url("wick");
    config.database.schema = None;
    config.database.query_timeout = ConfigDuration::from_secs(2);
    config.redis.enabled = false;
    let gw = start_gateway(config).await;
    let queries = drill_queries(&trades);
    let (cached, uncached) = queries.split_at(queries.len() / 2);
    let mut before = Vec::new();
    for q in cached {
        let r = get(&gw.http, q).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        before.push(r.body);
    }
    pg.stop().unwrap();
    for (q, want) in cached.iter().zip(&before) {
        let r = get(&gw.http, q).await;
        assert_eq!((r.status, &r.body), (200, want), "{q} from L1 with the database down");
    }
    let r = get(&gw.http, &uncached[0]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.json()["message"].as_str().unwrap().contains("the database cannot answer"), "{}", r.body);
    assert!(gw.metrics.db_errors.get() >= 1);
    pg.start_again().unwrap();
    wick_test_support::wait_until("the database answers again", Duration::from_secs(60), || async {
        get(&gw.http, &uncached[0]).await.status == 200
    })
    .await
    .unwrap();
    for q in uncached {
        assert_eq!(get(&gw.http, q).await.status, 200, "{q}");
    }
    gw.service.stop().await;
}

/// Pixels of the candle colours (#26a69a up, #ef5350 down) drawn on the page's canvases.
const CANDLE_PIXELS_JS: &str = r#"(() => {
  let n = 0;
  for (const c of document.querySelectorAll('canvas')) {
    if (!c.width || !c.height) continue;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) {
      const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
      if ((Math.abs(r - 0x26) < 8 && Math.abs(g - 0xa6) < 8 && Math.abs(b - 0x9a) < 8) ||
          (Math.abs(r - 0xef) < 8 && Math.abs(g - 0x53) < 8 && Math.abs(b - 0x50) < 8)) n++;
    }
  }
  return n;
})()"#;

/// The live chart in headless Chromium: the page loads history over REST and draws candles, and a
/// trade published to the pipeline (feed topic -> aggregator -> candles topic -> gateway ->
/// WebSocket) moves the last candle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_chart_draws_candles_and_follows_new_trades() {
    let env = env().await;
    let btc = instrument("BINANCE:BTC-USDT");
    let now_ms = wick_core::Clock::now(&SystemClock).as_millis();
    // Twenty minutes of history up to a minute ago, one trade every 20 s.
    let start = now_ms - 21 * 60_000;
    let trades: Vec<Trade> = (0..60)
        .map(|n| {
            let t = Timestamp::from_millis(start + n * 20_000).unwrap();
            let price = format!("{}.5", 30_000 + (n * 37) % 200);
            Trade::new(btc.clone(), n as u64 + 1, price.parse().unwrap(), "0.5".parse().unwrap(), TakerSide::Buy, t, t).unwrap()
        })
        .collect();
    let gw = start_gateway(gateway_config(&env)).await;
    let aggregator = start_aggregator(&env);
    let writer = start_writer(writer_config(&env));
    produce_trades(&env.market, &trades).await;
    let sql = format!("SELECT coalesce(sum(trade_count), 0)::int8 FROM {}.candles WHERE interval = '1m'", env.schema);
    wick_test_support::wait_until("the history is stored", Duration::from_secs(60), || async {
        env.db.query_one(&sql, &[]).await.map(|r| r.get::<_, i64>(0) == trades.len() as i64).unwrap_or(false)
    })
    .await
    .unwrap();

    let browser = tokio::task::spawn_blocking(wick_test_support::browser::Browser::launch).await.unwrap().unwrap();
    let page = browser.open(&format!("{}/?instrument=BINANCE:BTC-USDT&interval=1m", gw.http)).await.unwrap();
    let drawn = page.wait_for("window.wickState && wickState.ready && wickState.candles", Duration::from_secs(30)).await.unwrap();
    assert!(drawn.as_u64().unwrap() >= 20, "{drawn} candles drawn");
    let pixels = page.wait_for(CANDLE_PIXELS_JS, Duration::from_secs(10)).await.unwrap();
    assert!(pixels.as_u64().unwrap() > 200, "only {pixels} candle pixels");
    let before = page.eval("JSON.stringify(wickState.last)").await.unwrap();

    // A trade now, above every price so far: the last candle's high and close move to it.
    let t = wick_core::Clock::now(&SystemClock);
    let trade = Trade::new(btc.clone(), 1_000, "31234.75".parse().unwrap(), "1.25".parse().unwrap(), TakerSide::Sell, t, t).unwrap();
    produce_trades(&env.market, &[trade]).await;
    let moved = page
        .wait_for(
            "wickState.last && wickState.last.close === '31234.75' && wickState.last.high === '31234.75' && wickState.updates > 0",
            Duration::from_secs(30),
        )
        .await;
    let after = page.eval("JSON.stringify(wickState.last)").await.unwrap();
    assert!(moved.is_ok(), "the last candle did not follow the trade: before {before}, after {after}");
    let shot = page.screenshot_png().await.unwrap();
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n");
    drop(browser);
    for s in [gw.service, aggregator, writer] {
        s.stop().await;
    }
}

/// The binary as deployed: configured by environment alone, ready on its operations port, its
/// metrics named as documented, and a clean exit on SIGTERM with a WebSocket client connected
/// (which gets a close frame saying why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_health_metrics_and_stops_cleanly() {
    let mut env = env().await;
    env.db.batch_execute(&format!("SET search_path TO {}", env.schema)).await.unwrap();
    wick_store::migrate(&mut env.db, &wick_store::TimescaleSettings::default()).await.unwrap();
    let port = |_: ()| wick_test_support::free_port().unwrap();
    let (http, grpc, ops) = (port(()), port(()), port(()));
    let child = Command::new(env!("CARGO_BIN_EXE_query-gateway"))
        .env("WICK__HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("WICK__GRPC__LISTEN", format!("127.0.0.1:{grpc}"))
        .env("WICK__OPS__LISTEN", format!("127.0.0.1:{ops}"))
        .env("WICK__KAFKA__CANDLES_TOPIC", &env.candles)
        .env("WICK__DATABASE__URL", wick_test_support::postgres_config())
        .env("WICK__DATABASE__SCHEMA", &env.schema)
        .env("WICK__REDIS__URL", redis_url())
        .env("WICK__KAFKA__BROKERS", wick_test_support::broker_address())
        .env("WICK__REDIS__KEY_PREFIX", &env.prefix)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut child = wick_test_support::ServiceProcess(child);
    wick_test_support::wait_ready(&format!("127.0.0.1:{ops}"), Duration::from_secs(60)).await.unwrap();
    let base = format!("http://127.0.0.1:{http}");
    assert_eq!(get(&base, "/api/v1/instruments").await.json(), serde_json::json!({"instruments": []}));
    // The database answers (an instrument it never saw reads nothing, without a 503).
    let r = get(&base, "/api/v1/candles?instrument=SIM:AAA-USD&interval=1m&end=1700000000000&limit=5&fill=previous").await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"candles":[],"next_start":null}"#));
    let page = get(&base, "/").await;
    assert!(page.body.contains("lightweight-charts.js") && page.header("content-type").unwrap().starts_with("text/html"));
    assert!(get(&base, "/static/lightweight-charts.js").await.body.len() > 100_000);
    let metrics = get(&format!("http://127.0.0.1:{ops}"), "/metrics").await.body;
    for name in [
        "wick_gateway_requests_total{api=\"rest\",route=\"/api/v1/instruments\",status=\"200\"} 1",
        "wick_gateway_request_seconds_bucket",
        "wick_gateway_l1_entries",
        "wick_gateway_l2_breaker_open 0",
        "wick_gateway_ws_clients 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{http}/ws")).await.unwrap();
    wick_test_support::wait_until("the WebSocket client is counted", Duration::from_secs(10), || async {
        get(&format!("http://127.0.0.1:{ops}"), "/metrics").await.body.contains("wick_gateway_ws_clients 1")
    })
    .await
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.terminate()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut reason = None;
    while let Some(Ok(m)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Close(frame) = m {
            reason = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            break;
        }
    }
    assert_eq!(reason, Some((1001, "server shutting down".to_owned())));
}

/// The gateway started while the database cannot tell what the writer stored reads the candles
/// topic from its earliest offsets: candles the writer had not stored yet are still answered once
/// the database is back (it used to start at the log end and miss them until the writer caught up).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_started_without_the_writers_offsets_misses_no_unstored_candle() {
    let env = env().await;
    let pg = wick_test_support::PostgresProcess::start().unwrap();
    let trades: Vec<Trade> = history().into_iter().take(900).collect();
    let (stored_trades, unstored_trades) = trades.split_at(450);
    let mut writer = writer_config(&env);
    writer.database.url = pg.url("wick");
    writer.database.schema = None;
    writer.redis.enabled = false;
    let writer = start_writer(writer);
    let stored = publish_history(&env.candles, stored_trades).await;
    let mut attempts = 0;
    let (db, connection) = loop {
        match tokio_postgres::connect(&pg.url("wick"), tokio_postgres::NoTls).await {
            Ok(connected) => break connected,
            Err(_) if attempts < 600 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the writer never created the database: {e}"),
        }
    };
    let connection = tokio::spawn(connection);
    wait_written(&db, "public", stored.len()).await;
    drop(db);
    connection.abort();
    writer.stop().await;
    // Candles the writer never stored (it is down), then the database goes down too.
    let unstored = publish_history(&env.candles, unstored_trades).await;
    pg.stop().unwrap();

    let mut config = gateway_config(&env);
    config.database.url = pg.url("wick");
    config.database.schema = None;
    config.database.query_timeout = ConfigDuration::from_secs(1);
    config.redis.enabled = false;
    let gw = start_gateway(config).await;
    pg.start_again().unwrap();
    let last = unstored.iter().max_by_key(|c| (c.open_time(), c.interval().as_str())).unwrap();
    let ms = last.open_time().as_millis();
    let query = format!("/api/v1/candles?instrument={}&interval={}&start={ms}&end={ms}", last.instrument(), last.interval());
    wick_test_support::wait_until("the database answers again", Duration::from_secs(60), || async {
        get(&gw.http, &query).await.status == 200
    })
    .await
    .unwrap();
    let body = get(&gw.http, &query).await.json();
    let got = answer_candles(&body);
    assert_eq!(got.len(), 1, "the unstored candle is answered: {body}");
    same_values(&got[0], last);
    gw.service.stop().await;
}

/// A Binance WebSocket client reads Wick's kline streams unchanged: the raw stream
/// `/ws/<symbol>@kline_<interval>`, the combined `/stream?streams=...`, and Binance's own Python
/// connector subscribing with its `kline()` calls; a bad stream name is refused before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binance_kline_streams_serve_binance_clients() {
    let env = env().await;
    let gw = start_gateway(gateway_config(&env)).await;
    let ws_base = gw.http.replace("http://", "ws://");
    let (mut raw, _) = tokio_tungstenite::connect_async(format!("{ws_base}/ws/btcusdt@kline_1m")).await.unwrap();
    let (mut combined, _) =
        tokio_tungstenite::connect_async(format!("{ws_base}/stream?streams=btcusdt@kline_1m/ethusdt@kline_1h")).await.unwrap();
    // Binance's connector, combined and not: it connects to `/ws` or `/stream` and sends SUBSCRIBE.
    let mut connectors = Vec::new();
    for combined in ["0", "1"] {
        let mut child = tokio::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/binance_stream.py"))
            .args([ws_base.as_str(), combined, "2", "btcusdt:1m"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with binance-connector (pip install binance-connector)");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("the connector answers").unwrap();
        let first: serde_json::Value = serde_json::from_str(&first.expect("a line from the connector")).unwrap();
        assert_eq!(first["subscribed"], serde_json::json!({"result": null, "id": 1}), "{first}");
        connectors.push((child, lines));
    }

    let open = one_trade_candle("BINANCE:BTC-USDT", Interval::M1, 0, 7, false);
    let closed = one_trade_candle("BINANCE:BTC-USDT", Interval::M1, 0, 7, true);
    publish_candles(
        &env.candles,
        &[
            (CandleEventKind::Update, one_trade_candle("BINANCE:BTC-USDT", Interval::M5, 0, 7, false)),
            (CandleEventKind::Update, open.clone()),
            (CandleEventKind::Final, closed.clone()),
        ],
    )
    .await;
    let want = |c: &Candle| serde_json::from_str::<serde_json::Value>(&query_gateway::binance_ws::kline_event(c, 0)).unwrap()["k"].clone();
    for (i, expected) in [&open, &closed].into_iter().enumerate() {
        let k = next_json(&mut raw).await;
        assert_eq!((k["e"].as_str(), k["s"].as_str()), (Some("kline"), Some("BTCUSDT")), "{k}");
        assert!(k["E"].as_i64().unwrap() > 1_700_000_000_000, "{k}");
        assert_eq!(k["k"], want(expected), "raw event {i}");
        assert_eq!(k["k"]["x"], i == 1);
        let c = next_json(&mut combined).await;
        assert_eq!(c["stream"], "btcusdt@kline_1m", "{c}");
        assert_eq!(c["data"]["k"], want(expected), "combined event {i}");
    }
    assert_eq!(want(&open)["t"], 1_699_999_980_000_i64, "the minute of 1_700_000_000_000");
    assert_eq!(want(&open)["T"], 1_700_000_039_999_i64);
    for (mut child, mut lines) in connectors {
        let mut events = Vec::new();
        while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap() {
            events.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
        assert_eq!(events.last(), Some(&serde_json::json!({"done": true})), "{events:?}");
        let klines: Vec<&serde_json::Value> =
            events.iter().filter_map(|e| e.get("data").or(Some(e))).filter(|e| e["e"] == "kline").collect();
        assert_eq!(klines.len(), 2, "{events:?}");
        assert_eq!(klines[0]["k"], want(&open));
        assert_eq!(klines[1]["k"], want(&closed));
        assert!(child.wait().await.unwrap().success());
    }

    // Refused before the upgrade, with what is wrong.
    for (path, says) in [
        ("/ws/btcusdt@trade", "unknown stream"),
        ("/ws/btcusdt@kline_7m", "invalid interval"),
        ("/stream?streams=btcusdt@kline_1m&streams=ethusdt@kline_1m", "streams"),
    ] {
        let refused = curl(
            &format!("{}{path}", gw.http),
            &[
                "-H",
                "Connection: Upgrade",
                "-H",
                "Upgrade: websocket",
                "-H",
                "Sec-WebSocket-Version: 13",
                "-H",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ],
        )
        .await;
        assert_eq!(refused.status, 400, "{path}: {refused:?}");
        assert!(refused.body.contains(says), "{path}: {refused:?}");
    }
    gw.service.stop().await;
}
