//! The whole-system benchmark, run by `cargo xtask bench system` (which builds the release
//! binaries and starts nothing else: the stack must be up). Every service runs as its release
//! binary on this machine, against the stack's broker, PostgreSQL and Redis, with topics, schema
//! and key prefix of its own. Three measurements, in one run, written as JSON to the path given
//! (default `target/wick-bench/system.json`):
//!
//! 1. **Throughput**: `feed-publisher replay` of dense Binance trade files into a fresh
//!    deployment, timed from the replay's start until the database holds every trade in all 16
//!    intervals; the CPU time of every process on the machine over that span (`/proc/stat`), and
//!    of each service (`/proc/<pid>/stat`).
//! 2. **Push latency**: trades published at a steady rate through the feed-publisher's own
//!    producer (this process is the feed), each timed from its hand-off to the producer until the
//!    first WebSocket push of a candle that contains it reaches a client of the gateway.
//!    (`WICK_BENCH_WAIT=blocking` runs the aggregator's ring with the blocking wait strategy.)
//! 3. **The naive alternative**: the same trades `COPY`-ed into a PostgreSQL table, and candles
//!    computed at query time with `date_bin` (`time_bucket` where TimescaleDB is installed):
//!    ingest rate, and p99 of 1-hour and 1-day candles over 30 days of trades, beside the same
//!    queries to Wick's gateway (whose answers are checked equal first).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wick_core::{Clock, Instrument, SystemClock, TakerSide, Timestamp, Trade};

const MARKET_PARTITIONS: i32 = 16;
const CANDLE_PARTITIONS: i32 = 4;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A service process, killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One deployment: topics, schema, Redis prefix, and the gateway's address.
struct Deployment {
    market: String,
    candles: String,
    schema: String,
    prefix: String,
    http: String,
    logs: PathBuf,
}

impl Deployment {
    async fn new(name: &str) -> Result<Deployment> {
        let client = wick_test_support::kafka().await;
        let market = wick_test_support::unique_name(&format!("bench-{name}-market"));
        let candles = wick_test_support::unique_name(&format!("bench-{name}-candles"));
        let specs = [
            wick_kafka::TopicSpec { name: market.clone(), partitions: MARKET_PARTITIONS },
            wick_kafka::TopicSpec { name: candles.clone(), partitions: CANDLE_PARTITIONS },
            // The services' default dead-letter partition count.
            wick_kafka::TopicSpec { name: format!("{market}-dlq"), partitions: 4 },
            wick_kafka::TopicSpec { name: format!("{candles}-dlq"), partitions: 4 },
        ];
        wick_kafka::ensure_topics(&client, &wick_test_support::broker_address(), &specs).await?;
        let schema = wick_test_support::unique_ident("wick_bench");
        db().await?.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
        let logs = wick_test_support::service_binary("query-gateway")?.parent().context("no dir")?.join("wick-bench-logs").join(name);
        std::fs::create_dir_all(&logs)?;
        Ok(Deployment {
            market,
            candles,
            schema,
            prefix: wick_test_support::unique_name("wick-bench"),
            http: format!("127.0.0.1:{}", wick_test_support::free_port()?),
            logs,
        })
    }

    fn spawn(&self, name: &'static str, args: &[&str], env: &[(&str, String)]) -> Result<Proc> {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))?;
        let mut c = Command::new(wick_test_support::service_binary(name)?);
        c.args(args).env("RUST_LOG", "warn").env("WICK__OPS__LISTEN", "127.0.0.1:0");
        // Each service accepts only its own settings.
        if matches!(name, "feed-publisher" | "ingest-aggregator") {
            c.env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &self.market).env("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.market));
        }
        if name != "feed-publisher" {
            c.env("WICK__KAFKA__CANDLES_TOPIC", &self.candles);
        }
        match name {
            "ingest-aggregator" => {
                c.env("WICK__CHECKPOINT__SCHEMA", &self.schema);
            }
            "persistence-writer" | "query-gateway" => {
                c.env("WICK__DATABASE__SCHEMA", &self.schema).env("WICK__REDIS__KEY_PREFIX", &self.prefix);
            }
            _ => {}
        }
        if name == "persistence-writer" {
            c.env("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.candles));
        }
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
        for (k, v) in env {
            c.env(k, v);
        }
        Ok(Proc { name, child: c.spawn().with_context(|| format!("starting {name}"))? })
    }

    /// The aggregator, the writer and the gateway; the gateway answering.
    async fn start(&self, aggregator_env: &[(&str, String)]) -> Result<Vec<Proc>> {
        // Ring consumers sleep when idle (the default `yielding` spins): on 2 cores shared by every
        // process of the system, a spinning consumer takes a core from the others.
        let mut env = vec![("WICK__RING__WAIT_STRATEGY", "blocking".to_owned())];
        env.extend(aggregator_env.iter().cloned());
        let mut procs = vec![self.spawn("ingest-aggregator", &[], &env)?];
        procs.push(self.spawn("persistence-writer", &[], &[])?);
        let grpc = format!("127.0.0.1:{}", wick_test_support::free_port()?);
        procs.push(self.spawn(
            "query-gateway",
            &[],
            &[("WICK__HTTP__LISTEN", self.http.clone()), ("WICK__GRPC__LISTEN", grpc), ("WICK__LIMITS__PER_ADDRESS_RATE", "0".into())],
        )?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(&self.http).await.is_err() {
            if Instant::now() > deadline {
                bail!("the gateway did not start (logs in {})", self.logs.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for p in &mut procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited at start ({status}); logs in {}", p.name, self.logs.display());
            }
        }
        Ok(procs)
    }
}

async fn db() -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=wick", tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Waits until every interval of the deployment holds `trades` trades; false on timeout.
async fn wait_stored(db: &tokio_postgres::Client, schema: &str, trades: i64, timeout: Duration, procs: &mut [Proc]) -> Result<bool> {
    let sql = format!("SELECT count(*) FROM (SELECT sum(trade_count)::int8 AS n FROM {schema}.candles GROUP BY interval) s WHERE n = $1");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited ({status})", p.name);
            }
        }
        if let Ok(row) = db.query_one(&sql, &[&trades]).await {
            if row.get::<_, i64>(0) == 16 {
                return Ok(true);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// Busy and total clock ticks of the whole machine.
fn machine_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> =
        stat.lines().next().context("empty /proc/stat")?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// User + system clock ticks of a process (0 once it is gone).
fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Dense Binance trade files: `instruments` symbols, `per_instrument` trades each, `gap_ms` apart
/// on average, from 2024-03-01.
fn write_trades(dir: &Path, tag: &str, instruments: usize, per_instrument: usize, gap_ms: u64) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for k in 0..instruments {
        let symbol = format!("{}USDT", ["BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "AVAX", "LINK"][k % 8]);
        let path = dir.join(format!("{symbol}-trades-{tag}.csv"));
        files.push(path.clone());
        if path.is_file() {
            continue;
        }
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let (mut seed, mut cents, mut t) = (0x9e37_79b9_7f4a_7c15u64 ^ (k as u64 + 7), 6_000_000i64 / (k as i64 + 1), 1_709_251_200_000i64);
        for id in 1..=per_instrument {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            cents = (cents + (seed % 7) as i64 - 3).max(100);
            t += (seed >> 10) as i64 % (2 * gap_ms as i64 + 1);
            let maker = if (seed >> 40) % 2 == 0 { "True" } else { "False" };
            writeln!(out, "{id},{}.{:02},0.{:05},0,{t},{maker},True", cents / 100, cents % 100, 1 + (seed >> 20) % 99_999)?;
        }
        out.flush()?;
    }
    Ok(files)
}

/// Part 1: sustained trades/s from feed to database, and CPU per trade.
async fn throughput(dir: &Path, db: &tokio_postgres::Client) -> Result<Value> {
    let (instruments, per) = (setting("WICK_BENCH_INSTRUMENTS", 4usize), setting("WICK_BENCH_TRADES", 500_000usize));
    let files = write_trades(dir, "dense", instruments, per, 20)?;
    let total = (instruments * per) as i64;
    let d = Deployment::new("throughput").await?;
    let mut services = d.start(&[]).await?;
    // The broker takes uncompressed batches far faster than lz4 ones (see the replay section).
    let ticks0 = machine_ticks()?;
    let started = Instant::now();
    let mut args: Vec<&str> = vec!["replay"];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    let mut feed = d.spawn("feed-publisher", &args, &[("WICK__PRODUCER__COMPRESSION", "none".into())])?;
    let mut feed_ticks = 0;
    let published = loop {
        feed_ticks = feed_ticks.max(process_ticks(feed.child.id()));
        if let Some(status) = feed.child.try_wait()? {
            if !status.success() {
                bail!("feed-publisher replay failed: {status}");
            }
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !wait_stored(db, &d.schema, total, Duration::from_secs(900), &mut services).await? {
        bail!("the database did not receive every trade (logs in {})", d.logs.display());
    }
    let elapsed = started.elapsed();
    let ticks1 = machine_ticks()?;
    let hz = clock_ticks_per_second();
    let mut per_service = serde_json::Map::new();
    per_service.insert("feed-publisher".into(), json!(feed_ticks as f64 / hz));
    for p in &services {
        per_service.insert(p.name.into(), json!(process_ticks(p.child.id()) as f64 / hz));
    }
    let busy = (ticks1.0 - ticks0.0) as f64 / hz;
    let rows: i64 = db.query_one(&format!("SELECT count(*) FROM {}.candles", d.schema), &[]).await?.get(0);
    drop(services);
    drop(feed);
    Ok(json!({
        "instruments": instruments,
        "trades": total,
        "candles": rows,
        "replay_seconds": published.as_secs_f64(),
        "seconds": elapsed.as_secs_f64(),
        "trades_per_second": total as f64 / elapsed.as_secs_f64(),
        "machine_cpu_seconds": busy,
        "cpu_us_per_trade": busy * 1e6 / total as f64,
        "service_cpu_seconds": per_service,
        "files": files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    }))
}

/// Part 2: trade-to-push latency at a steady rate.
async fn latency() -> Result<Value> {
    let rate: u64 = setting("WICK_BENCH_PUSH_RATE", 50_000);
    let seconds: u64 = setting("WICK_BENCH_PUSH_SECONDS", 20);
    let warmup = Duration::from_secs(3);
    let instruments: Vec<Instrument> = (0..4).map(|k| Instrument::new(&format!("BENCH:I{k}-USD")).unwrap()).collect();
    let d = Deployment::new("latency").await?;
    // Updates of open candles go out every 5 ms (default 250 ms): the setting a latency-sensitive
    // deployment chooses; the aggregator's clock ticks every 1 ms to honour it.
    let ops = format!("127.0.0.1:{}", wick_test_support::free_port()?);
    let aggregator_env = [
        ("WICK__AGGREGATION__UPDATE_THROTTLE", "5ms".to_owned()),
        ("WICK__AGGREGATION__TICK", "1ms".to_owned()),
        ("WICK__OUTPUT__LINGER", "1ms".to_owned()),
        ("WICK__CONSUMER__FETCH_MAX_WAIT", "5ms".to_owned()),
        ("WICK__CONSUMER__FETCH_MIN_BYTES", "1".to_owned()),
        // The default wait strategy here: consumers that sleep add their wake-up to every update.
        ("WICK__RING__WAIT_STRATEGY", std::env::var("WICK_BENCH_WAIT").unwrap_or_else(|_| "yielding".into())),
        ("WICK__OPS__LISTEN", ops.clone()),
    ];
    let services = d.start(&aggregator_env).await?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.http)).await?;
    for i in &instruments {
        let m = json!({"op": "subscribe", "instrument": i.to_string(), "interval": "1s"});
        ws.send(tokio_tungstenite::tungstenite::Message::Text(m.to_string().into())).await?;
    }
    let total = (rate * seconds) as usize;
    let per = total / instruments.len() + 2;
    // Nanoseconds after `base` at which each trade went to the producer, per instrument and id.
    let sent: Arc<Vec<Vec<AtomicU64>>> = Arc::new((0..instruments.len()).map(|_| (0..=per).map(|_| AtomicU64::new(0)).collect()).collect());
    let base = Instant::now();
    let receiver = {
        let (sent, names) = (sent.clone(), instruments.iter().map(|i| i.to_string()).collect::<Vec<_>>());
        tokio::spawn(async move {
            let mut seen = vec![0u64; names.len()];
            let mut samples: Vec<(u64, u64)> = Vec::with_capacity(total); // (sent at, latency), ns
            let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
            while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                let now = base.elapsed().as_nanos() as u64;
                let tokio_tungstenite::tungstenite::Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if v["type"] != "candle" {
                    continue;
                }
                *kinds.entry(v["kind"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
                let c = &v["candle"];
                let Some(k) = names.iter().position(|n| c["instrument"] == n.as_str()) else { continue };
                let last = c["last_trade_id"].as_u64().unwrap_or(0).min(per as u64);
                for id in seen[k] + 1..=last {
                    let at = sent[k][id as usize].load(Ordering::SeqCst);
                    samples.push((at, now.saturating_sub(at)));
                }
                seen[k] = seen[k].max(last);
                if seen.iter().sum::<u64>() >= total as u64 {
                    break;
                }
            }
            (samples, kinds)
        })
    };
    // This process is the feed: the feed-publisher's producer, as `feed-publisher` runs it.
    let mut config = feed_publisher::config::Config::default();
    config.kafka.market_events_topic = d.market.clone();
    config.kafka.dead_letter_topic = format!("{}-dlq", d.market);
    config.producer.linger = wick_service::duration::Duration::from_millis(1);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let client = feed_publisher::run::connect(&config).await?;
    let producer = feed_publisher::run::start_producer(&config, client, feed_publisher::metrics::Metrics::new(), clock.clone()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let mut next_id = vec![1u64; instruments.len()];
    let (mut published, mut n) = (0usize, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while published < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        let mut batch = Vec::with_capacity(due - published);
        let now = clock.now();
        let at = base.elapsed().as_nanos() as u64;
        for _ in published..due {
            let k = (n % instruments.len() as u64) as usize;
            n += 1;
            let id = next_id[k];
            next_id[k] += 1;
            sent[k][id as usize].store(at, Ordering::SeqCst);
            let price = wick_core::Decimal::new(6_000_000 + (n % 977) as i128, 2).context("price")?;
            let qty = wick_core::Decimal::new(1 + (n % 9_999) as i128, 5).context("quantity")?;
            let side = if n % 2 == 0 { TakerSide::Buy } else { TakerSide::Sell };
            batch.push(Trade::new(instruments[k].clone(), id, price, qty, side, now, now)?);
        }
        published = due;
        producer.publish_many(batch).await?;
    }
    let achieved = published as f64 / start.elapsed().as_secs_f64();
    producer.flush().await?;
    let (samples, kinds) = receiver.await?;
    let _ = feed_publisher::run::finish(producer, Default::default()).await;
    // The aggregator's own account: how long its fetches took, how often it produced.
    let text = String::from_utf8(Command::new("curl").args(["-s", &format!("http://{ops}/metrics")]).output()?.stdout)?;
    let metric = |name: &str| -> f64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    let aggregator = json!({
        "fetches": metric("wick_ingest_poll_seconds_count"),
        "fetch_mean_ms": metric("wick_ingest_poll_seconds_sum") * 1e3 / metric("wick_ingest_poll_seconds_count"),
        "produce_requests": metric("wick_ingest_produce_seconds_count"),
        "update_candles": metric("wick_ingest_candles_emitted_total{kind=\"update\"}"),
    });
    // Records on each topic: how often the feed and the aggregator produced.
    let kafka = wick_test_support::kafka().await;
    let mut records = serde_json::Map::new();
    for (topic, partitions) in [(&d.market, MARKET_PARTITIONS), (&d.candles, CANDLE_PARTITIONS)] {
        let mut n = 0;
        for p in 0..partitions {
            let pc = wick_test_support::partition(&kafka, topic, p).await;
            n += pc.get_offset(rskafka::client::partition::OffsetAt::Latest).await?;
        }
        records.insert(if *topic == d.market { "market_events" } else { "candles_completed" }.into(), json!(n));
    }
    drop(services);
    let warm = (start - base + warmup).as_nanos() as u64;
    let mut lat: Vec<u64> = samples.iter().filter(|(at, _)| *at >= warm).map(|(_, l)| *l).collect();
    if lat.len() < total / 2 {
        bail!("only {} of {total} trades were seen in pushes", lat.len());
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1] as f64 / 1e6;
    Ok(json!({
        "rate": rate, "achieved_rate": achieved, "seconds": seconds, "warmup_seconds": warmup.as_secs(),
        "trades_measured": lat.len(), "trades_seen": samples.len(), "trades": total,
        "p50_ms": q(0.50), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": q(1.0),
        "update_throttle_ms": 5, "tick_ms": 1,
        "wait_strategy": std::env::var("WICK_BENCH_WAIT").unwrap_or_else(|_| "yielding".into()),
        "aggregator": aggregator,
        "pushes": kinds, "records": records,
    }))
}

/// A GET over a fresh connection; the body.
async fn http_get(address: &str, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(address).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {head} {body}");
    }
    Ok(body.to_owned())
}

fn quantile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1]
}

/// Part 3: the naive alternative against Wick over 30 days of trades.
async fn naive(dir: &Path, db: &tokio_postgres::Client, dense: &[PathBuf]) -> Result<Value> {
    // 30 days of one instrument, a trade every 2 s on average: 1.3M trades.
    let per: usize = setting("WICK_BENCH_MONTH_TRADES", 1_296_000);
    let files = write_trades(dir, "month", 1, per, 2000)?;
    let d = Deployment::new("naive").await?;
    let mut services = d.start(&[]).await?;
    let started = Instant::now();
    let mut feed = d.spawn("feed-publisher", &["replay", files[0].to_str().unwrap()], &[("WICK__PRODUCER__COMPRESSION", "none".into())])?;
    if !feed.child.wait()?.success() {
        bail!("feed-publisher replay failed");
    }
    if !wait_stored(db, &d.schema, per as i64, Duration::from_secs(1800), &mut services).await? {
        bail!("Wick did not store the month (logs in {})", d.logs.display());
    }
    let wick_month_seconds = started.elapsed().as_secs_f64();

    // The naive store: one row per trade, as a user would create it.
    let timescale = db.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb").await.is_ok();
    db.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; CREATE TABLE {s}.trades (instrument text NOT NULL, trade_id int8 NOT NULL, price numeric NOT NULL, \
         qty numeric NOT NULL, buyer_maker bool NOT NULL, ts timestamptz NOT NULL); CREATE INDEX ON {s}.trades (instrument, ts);",
        s = d.schema
    ))
    .await?;
    if timescale {
        db.batch_execute(&format!("SELECT create_hypertable('{}.trades', 'ts')", d.schema)).await?;
    }
    let copy = |files: Vec<PathBuf>, table: String| async move {
        let mut rows = 0u64;
        let started = Instant::now();
        for f in &files {
            let symbol = f.file_name().unwrap().to_str().unwrap().split('-').next().unwrap().to_owned();
            let instrument = format!("BINANCE:{}-USDT", symbol.trim_end_matches("USDT"));
            let sink = db.copy_in(&format!("COPY {table} FROM STDIN")).await?;
            futures_util::pin_mut!(sink);
            let text = std::fs::read_to_string(f)?;
            let mut chunk = String::with_capacity(1 << 20);
            for line in text.lines() {
                let p: Vec<&str> = line.split(',').collect();
                let ts = p[4].parse::<i64>()?;
                chunk.push_str(&format!("{instrument}\t{}\t{}\t{}\t{}\t{}\n", p[0], p[1], p[2], p[5] == "True", chrono_ts(ts)));
                rows += 1;
                if chunk.len() > (1 << 20) - 256 {
                    sink.send(bytes::Bytes::from(std::mem::take(&mut chunk))).await?;
                }
            }
            sink.send(bytes::Bytes::from(chunk)).await?;
            sink.finish().await?;
        }
        anyhow::Ok((rows, started.elapsed().as_secs_f64()))
    };
    let table = format!("{}.trades", d.schema);
    let (dense_rows, dense_seconds) = copy(dense.to_vec(), table.clone()).await?;
    db.batch_execute(&format!("TRUNCATE {table}")).await?;
    let (month_rows, month_seconds) = copy(files.clone(), table.clone()).await?;
    db.batch_execute(&format!("ANALYZE {table}")).await?;

    let instrument = "BINANCE:BTC-USDT";
    let (from, to) = (1_709_251_200_000i64, 1_709_251_200_000i64 + 30 * 86_400_000);
    let bucket = if timescale { "time_bucket($1::text::interval, ts)" } else { "date_bin($1::text::interval, ts, '2000-01-01')" };
    let sql = format!(
        "SELECT (extract(epoch from {bucket}) * 1000)::int8 AS open_ms, (array_agg(price ORDER BY ts, trade_id))[1]::text, max(price)::text, \
         min(price)::text, (array_agg(price ORDER BY ts DESC, trade_id DESC))[1]::text, sum(qty)::text, count(*) \
         FROM {table} WHERE instrument = $2 AND ts >= to_timestamp($3::int8 / 1000.0) AND ts < to_timestamp($4::int8 / 1000.0) \
         GROUP BY 1 ORDER BY 1"
    );
    let statement = db.prepare(&sql).await?;
    let mut out = serde_json::Map::new();
    for (interval, pg_interval) in [("1h", "1 hour"), ("1d", "1 day")] {
        let path = format!("/api/v1/candles?instrument={instrument}&interval={interval}&start={from}&end={}&limit=1000", to - 1);
        // Both compute the same candles.
        let wick: Value = serde_json::from_str(&http_get(&d.http, &path).await?)?;
        let naive_rows = db.query(&statement, &[&pg_interval, &instrument, &from, &to]).await?;
        let wick_candles = wick["candles"].as_array().context("candles")?;
        if wick_candles.len() != naive_rows.len() {
            bail!("{interval}: Wick served {} candles, the naive query {}", wick_candles.len(), naive_rows.len());
        }
        for (w, r) in wick_candles.iter().zip(&naive_rows) {
            let same = w["open_time"].as_i64() == Some(r.get::<_, i64>(0))
                && [("open", 1), ("high", 2), ("low", 3), ("close", 4), ("volume", 5)]
                    .iter()
                    .all(|(f, i)| w[*f].as_str().map(|s| s.parse::<f64>().ok()) == Some(r.get::<_, String>(*i).parse::<f64>().ok()))
                && w["trade_count"].as_i64() == Some(r.get::<_, i64>(6));
            if !same {
                bail!("{interval}: Wick and the naive query disagree: {w} vs {:?}", (r.get::<_, i64>(0), r.get::<_, String>(1)));
            }
        }
        let (mut wick_ms, mut naive_ms) = (Vec::new(), Vec::new());
        for _ in 0..setting("WICK_BENCH_WICK_QUERIES", 200) {
            let t = Instant::now();
            http_get(&d.http, &path).await?;
            wick_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        for _ in 0..setting("WICK_BENCH_NAIVE_QUERIES", 20) {
            let t = Instant::now();
            db.query(&statement, &[&pg_interval, &instrument, &from, &to]).await?;
            naive_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        out.insert(
            interval.into(),
            json!({
                "candles": naive_rows.len(),
                "wick_queries": wick_ms.len(), "wick_p50_ms": quantile(&mut wick_ms, 0.5), "wick_p99_ms": quantile(&mut wick_ms, 0.99),
                "naive_queries": naive_ms.len(), "naive_p50_ms": quantile(&mut naive_ms, 0.5), "naive_p99_ms": quantile(&mut naive_ms, 0.99),
            }),
        );
    }
    drop(services);
    drop(feed);
    db.batch_execute(&format!("DROP TABLE {table}")).await?;
    Ok(json!({
        "timescaledb": timescale,
        "bucket_function": if timescale { "time_bucket" } else { "date_bin" },
        "month_trades": per,
        "wick_month_seconds": wick_month_seconds,
        "wick_month_trades_per_second": per as f64 / wick_month_seconds,
        "copy_dense_trades_per_second": dense_rows as f64 / dense_seconds,
        "copy_month_trades_per_second": month_rows as f64 / month_seconds,
        "queries": out,
    }))
}

/// Epoch milliseconds as a PostgreSQL timestamptz literal (UTC).
fn chrono_ts(ms: i64) -> String {
    let t = Timestamp::from_millis(ms).expect("valid time");
    t.to_string()
}

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/wick-bench/system.json"));
    for s in ["feed-publisher", "ingest-aggregator", "persistence-writer", "query-gateway"] {
        wick_test_support::service_binary(s)?;
    }
    let dir = out.parent().context("no parent")?.join("system-data");
    let db = db().await.context("the stack's database wick (run `cargo xtask stack up`)")?;
    // `WICK_BENCH_ONLY=latency` (or throughput, naive) runs one part and prints it, for
    // investigation; the report needs all three.
    if let Ok(only) = std::env::var("WICK_BENCH_ONLY") {
        let part = match only.as_str() {
            "latency" => latency().await?,
            "throughput" => throughput(&dir, &db).await?,
            "naive" => {
                let (instruments, per) = (setting("WICK_BENCH_INSTRUMENTS", 4usize), setting("WICK_BENCH_TRADES", 500_000usize));
                naive(&dir, &db, &write_trades(&dir, "dense", instruments, per, 20)?).await?
            }
            other => bail!("WICK_BENCH_ONLY={other:?}: latency, throughput or naive"),
        };
        println!("{part}");
        return Ok(());
    }
    eprintln!("system bench: throughput");
    let throughput = throughput(&dir, &db).await?;
    eprintln!("{throughput}");
    eprintln!("system bench: push latency");
    let latency = latency().await?;
    eprintln!("{latency}");
    eprintln!("system bench: the naive alternative");
    let dense: Vec<PathBuf> = throughput["files"].as_array().unwrap().iter().map(|f| PathBuf::from(f.as_str().unwrap())).collect();
    let naive = naive(&dir, &db, &dense).await?;
    eprintln!("{naive}");
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let result = json!({
        "throughput": throughput, "latency": latency, "naive": naive,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim(),
    });
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
