//! The gateway's OpenAPI document against the gateway itself. Trades go through the real
//! ingest-aggregator and persistence-writer into PostgreSQL and Redis; then schemathesis (PyPI,
//! pinned in `.ci/run`) reads `/api/openapi.json` from the running gateway and sends what the
//! document declares valid and what it declares invalid, with every check it has: no 5xx, only
//! documented statuses, content types and headers, bodies that match the document, invalid
//! requests refused (4xx) and valid ones accepted, a 405 with `Allow`. Any finding fails the test
//! with schemathesis' own report, which names the request and how to replay it.
//!
//! Two rules tie parameters together, which OpenAPI 3.0 cannot state (start not after end; a
//! `timeZone` query combining at most `binance.max_source_candles` stored candles): the document
//! says them in words, and `contract_hooks.py` lets their 400 through only for requests that
//! really break them.
//!
//! The run is bounded: `WICK_CONTRACT_EXAMPLES` cases per operation in the fuzzing phase (default
//! [`EXAMPLES`]) and [`RUN_LIMIT`]. Its seed is `WICK_CONTRACT_SEED`, or a new one each run,
//! printed so that a failure can be replayed: `WICK_CONTRACT_SEED=<seed> cargo nextest run -p
//! wick-e2e --test contract`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wick_core::{Instrument, SystemClock, TakerSide, Timestamp, Trade};
use wick_service::duration::Duration as ConfigDuration;
use wick_service::ops::Readiness;
use wick_service::shutdown::{self, ShutdownTrigger};

const MARKET_PARTITIONS: i32 = 2;
const CANDLE_PARTITIONS: i32 = 2;
/// The schemathesis release `.ci/run` installs.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Test cases per operation in the fuzzing phase, unless `WICK_CONTRACT_EXAMPLES` says otherwise.
const EXAMPLES: u32 = 500;
/// The whole schemathesis run, at most.
const RUN_LIMIT: Duration = Duration::from_secs(240);

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

/// The schemathesis command line (`st`), or a failure that says how to install it.
fn schemathesis() -> &'static str {
    match Command::new("st").arg("--version").output() {
        Ok(out)
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(SCHEMATHESIS.trim_start_matches("schemathesis==")) =>
        {
            "st"
        }
        Ok(out) => panic!(
            "`st --version` says {:?}, not {SCHEMATHESIS}: run `python3 -m pip install {SCHEMATHESIS}`",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        Err(e) => panic!("schemathesis is not installed ({e}): run `python3 -m pip install {SCHEMATHESIS}`"),
    }
}

/// Trades of three instruments over about a day (two of the default Binance exchange, so that
/// `/api/v3/klines` has symbols), each in event-time order.
fn trades() -> Vec<Trade> {
    let names = ["BINANCE:BTC-USDT", "BINANCE:ETH-BTC", "COINBASE:BTC-USD"];
    let start = Timestamp::parse_rfc3339("2024-03-09T21:00:00Z").unwrap().as_micros();
    let mut out = Vec::new();
    let mut seed: u64 = 0xc0_47ac7;
    for (k, name) in names.iter().enumerate() {
        let instrument = Instrument::new(name).unwrap();
        let mut clock = start + k as i64 * 1_000;
        for id in 1..=300u64 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Gaps up to about 10 minutes: some minutes and hours have no trades.
            clock += 1_000 + ((seed >> 33) % 600_000_000) as i64;
            let price = format!("{}.{}", 20_000 + (seed >> 40) % 500, (seed >> 20) % 1000);
            let qty = format!("0.{:04}", 1 + (seed >> 50) % 9999);
            let side = if seed % 3 == 0 { TakerSide::Sell } else { TakerSide::Buy };
            let t = Timestamp::from_micros(clock).unwrap();
            out.push(Trade::new(instrument.clone(), id, price.parse().unwrap(), qty.parse().unwrap(), side, t, t).unwrap());
        }
    }
    out
}

async fn produce_trades(topic: &str, trades: &[Trade]) {
    let client = wick_test_support::kafka().await;
    let mut by_instrument: BTreeMap<Instrument, Vec<Trade>> = BTreeMap::new();
    for t in trades {
        by_instrument.entry(t.instrument().clone()).or_default().push(t.clone());
    }
    for (instrument, trades) in by_instrument {
        let p = wick_kafka::partitioner::partition_for(instrument.as_str().as_bytes(), MARKET_PARTITIONS);
        let values: Vec<Vec<u8>> = trades.chunks(100).map(|run| wick_wire::encode_trade_batch(&instrument, "X", run)).collect();
        wick_test_support::produce(&wick_test_support::partition(&client, topic, p).await, values).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_says_exactly_what_the_gateway_answers() {
    let st = schemathesis();
    let client = wick_test_support::kafka().await;
    let market = wick_test_support::topic(&client, "contract-market", MARKET_PARTITIONS).await;
    let candles = wick_test_support::topic(&client, "contract-candles", CANDLE_PARTITIONS).await;
    let (db, schema) = wick_test_support::postgres_schema().await;
    let prefix = wick_test_support::redis_prefix().trim_end_matches(':').to_owned();
    let redis_url = format!("redis://{}", wick_test_support::redis_address());

    let mut a = ingest_aggregator::config::Config::default();
    a.kafka.brokers = vec![wick_test_support::broker_address()];
    a.kafka.market_events_topic = market.clone();
    a.kafka.market_events_partitions = MARKET_PARTITIONS;
    a.kafka.candles_topic = candles.clone();
    a.kafka.candles_partitions = CANDLE_PARTITIONS;
    a.kafka.dead_letter_topic = format!("{market}-dlq");
    a.consumer.auto_offset_reset = "earliest".into();
    a.consumer.fetch_max_wait = ConfigDuration::from_millis(50);
    a.checkpoint.database_url = wick_test_support::postgres_config();
    a.checkpoint.schema = Some(schema.clone());
    a.ops.listen = "127.0.0.1:0".parse().unwrap();
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(async move {
        let metrics = ingest_aggregator::metrics::Metrics::new();
        if let Err(e) = ingest_aggregator::run(a, metrics, Readiness::default(), Arc::new(SystemClock), stop).await {
            panic!("ingest-aggregator failed: {e:#}");
        }
    });
    let aggregator = Running { trigger, task };

    let mut w = persistence_writer::config::Config::default();
    w.kafka.brokers = vec![wick_test_support::broker_address()];
    w.kafka.candles_topic = candles.clone();
    w.kafka.candles_partitions = CANDLE_PARTITIONS;
    w.kafka.dead_letter_topic = format!("{candles}-dlq");
    w.kafka.fetch_max_wait = ConfigDuration::from_millis(50);
    w.database.url = wick_test_support::postgres_config();
    w.database.schema = Some(schema.clone());
    w.redis.url = redis_url.clone();
    w.redis.key_prefix = prefix.clone();
    w.ops.listen = "127.0.0.1:0".parse().unwrap();
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(async move {
        let metrics = persistence_writer::metrics::Metrics::new();
        if let Err(e) = persistence_writer::run(w, metrics, Readiness::default(), Arc::new(SystemClock), stop).await {
            panic!("persistence-writer failed: {e:#}");
        }
    });
    let writer = Running { trigger, task };

    let trades = trades();
    produce_trades(&market, &trades).await;
    let counts = format!("SELECT interval, sum(trade_count)::int8 FROM {schema}.candles GROUP BY interval");
    wick_test_support::wait_until("the writer stored every trade in every interval", Duration::from_secs(120), || async {
        db.query(&counts, &[]).await.is_ok_and(|rows| rows.len() == 16 && rows.iter().all(|r| r.get::<_, i64>(1) == trades.len() as i64))
    })
    .await
    .unwrap();

    // Started after the data is stored, so that it knows every instrument from the database.
    let mut g = query_gateway::config::Config::default();
    g.http.listen = "127.0.0.1:0".parse().unwrap();
    g.grpc.listen = "127.0.0.1:0".parse().unwrap();
    g.kafka.brokers = vec![wick_test_support::broker_address()];
    g.kafka.candles_topic = candles.clone();
    g.kafka.candles_partitions = CANDLE_PARTITIONS;
    g.kafka.fetch_max_wait = ConfigDuration::from_millis(50);
    g.database.url = wick_test_support::postgres_config();
    g.database.schema = Some(schema.clone());
    g.redis.url = redis_url;
    g.redis.key_prefix = prefix;
    g.ops.listen = "127.0.0.1:0".parse().unwrap();
    let (trigger, stop) = shutdown::channel();
    let metrics = query_gateway::metrics::Metrics::new();
    let started = query_gateway::start(g, metrics, Readiness::default(), Arc::new(SystemClock), stop).await.unwrap();
    let http = format!("http://{}", started.http_addr);
    let gateway = Running { trigger, task: tokio::spawn(started.stopped()) };

    let seed: u64 = match std::env::var("WICK_CONTRACT_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|e| panic!("WICK_CONTRACT_SEED={s:?}: {e}")),
        Err(_) => u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()),
    };
    let examples: u32 = std::env::var("WICK_CONTRACT_EXAMPLES")
        .map_or(EXAMPLES, |s| s.parse().unwrap_or_else(|e| panic!("WICK_CONTRACT_EXAMPLES={s:?}: {e}")));
    // Its working directory: schemathesis keeps a cache of failures there and replays them in the
    // next run, which must not depend on an earlier one.
    let report = std::env::temp_dir().join(wick_test_support::unique_name("wick-contract"));
    std::fs::create_dir_all(&report).unwrap();
    let hooks = format!("{}/contract_hooks.py", env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = vec![
        "run".into(),
        format!("{http}/api/openapi.json"),
        "--checks".into(),
        "all".into(),
        "--max-examples".into(),
        examples.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--workers".into(),
        "2".into(),
        "--request-timeout".into(),
        "30".into(),
        "--generation-database".into(),
        "none".into(),
        "--report".into(),
        "ndjson".into(),
        "--report-dir".into(),
        report.display().to_string(),
        "--no-color".into(),
    ];
    let shown = format!("SCHEMATHESIS_HOOKS={hooks} {st} {}", args.join(" "));
    eprintln!("schemathesis seed {seed}: {shown}");
    let started = Instant::now();
    let report_dir = report.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(st)
            .args(&args)
            .current_dir(&report_dir)
            .env("SCHEMATHESIS_HOOKS", &hooks)
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("schemathesis starts");
        // Read both pipes on threads so a chatty run cannot block on a full pipe.
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let read_out = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s).ok();
            s
        });
        let read_err = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut s).ok();
            s
        });
        let deadline = Instant::now() + RUN_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for schemathesis") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (status, read_out.join().unwrap_or_default(), read_err.join().unwrap_or_default())
    })
    .await
    .unwrap();
    let (status, stdout, stderr) = out;
    eprintln!("schemathesis ran {:.1} s", started.elapsed().as_secs_f64());
    let Some(status) = status else {
        panic!("schemathesis did not finish within {RUN_LIMIT:?} (seed {seed}):\n{stdout}\n{stderr}");
    };
    assert!(status.success(), "schemathesis found problems (seed {seed}; replay with WICK_CONTRACT_SEED={seed}):\n{stdout}\n{stderr}");

    // It must have tested every operation of the document, with many cases each.
    let ndjson =
        std::fs::read_dir(&report).unwrap().filter_map(Result::ok).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "ndjson"));
    let ndjson = ndjson.unwrap_or_else(|| panic!("no ndjson report in {}:\n{stdout}", report.display()));
    let events = std::fs::read_to_string(&ndjson).unwrap();
    let mut cases: BTreeMap<String, usize> = BTreeMap::new();
    for line in events.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("report line is not JSON ({e}): {line}"));
        if let Some(label) = event.pointer("/ScenarioFinished/recorder/label").and_then(|l| l.as_str()) {
            let n = event.pointer("/ScenarioFinished/recorder/cases").and_then(|c| c.as_object()).map_or(0, |c| c.len());
            *cases.entry(label.to_owned()).or_default() += n;
        }
    }
    // The instruments have no parameter but the key: few distinct requests exist.
    for (operation, least) in
        [("GET /api/v1/candles", 100), ("GET /api/v3/klines", 100), ("GET /api/v3/uiKlines", 100), ("GET /api/v1/instruments", 5)]
    {
        let n = cases.get(operation).copied().unwrap_or(0);
        assert!(n >= least, "schemathesis tested {operation} with {n} cases, fewer than {least} (all: {cases:?}):\n{stdout}");
    }
    eprintln!("schemathesis cases per operation: {cases:?}\n{stdout}");
    let _ = std::fs::remove_dir_all(&report);

    for s in [gateway, writer, aggregator] {
        s.stop().await;
    }
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
