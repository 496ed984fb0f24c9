//! The whole-system benchmark, run by `cargo xtask bench system` (which builds the release
//! binaries and starts nothing else: the stack must be up). Every service runs as its release
//! binary on this machine with its default settings (overrides are named where they are made and
//! recorded in the results), against the stack's broker, PostgreSQL and Redis, with topics, schema
//! and key prefix of its own. Five parts, in one run, written as JSON to the path given (default
//! `target/wick-bench/system.json`):
//!
//! 1. **Scale** (`scale`): `feed-publisher replay` of one JSON-lines file whose trades are spread
//!    evenly over N instruments (3, the reference; 1,000; 10,000 if asked) and over the same span of
//!    event time, into a fresh deployment; timed from the replay's start until the database holds
//!    every trade in all 16 intervals. Machine CPU (`/proc/stat`), each service's CPU and peak RSS
//!    (`VmHWM`), records per trade on both topics (the partitions' high watermarks) and the
//!    aggregators' summed consumer lag sampled every second. The 1,000-instrument load again with 2
//!    and 4 aggregator instances (`instance.index`/`instance.count`, partitions split by index).
//! 2. **Idle** (`idle`): each service's CPU over 60 s without trades, after start-up settled.
//! 3. **Broker floor** (`floor`): bare rskafka produce-then-fetch round trips on a fresh topic, and
//!    the delay a long-polling consumer sees, with the fetch waits the services use.
//! 4. **Push latency** (`latency`): trades at a steady rate across 1,000 instruments through the
//!    feed-publisher's own producer (this process is the feed), each timed from its hand-off to the
//!    producer until the first WebSocket push of a candle that contains it; the services' latency
//!    budget histograms scraped before and after, for the per-hop breakdown.
//! 5. **The naive alternative** (`naive`): the same trades `COPY`-ed into a PostgreSQL table, and
//!    candles computed at query time with `date_bin` (`time_bucket` where TimescaleDB is
//!    installed): ingest rate, and p50 and p99 of 1-hour and 1-day candles over 30 days of trades,
//!    cold and warm (200 of each by default), beside the same queries to Wick's gateway, cold (a
//!    gateway with both caches off) and warm (whose answers are checked equal first).
//!
//! `WICK_BENCH_ONLY=scale,latency` (any of the part names) runs only those parts: `cargo xtask
//! bench system` runs every part but the naive alternative, `cargo xtask bench naive` that one.
//! Sizes are settings (`WICK_BENCH_*`, below).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use rskafka::client::partition::{Compression, OffsetAt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wick_core::{Clock, Instrument, SystemClock, TakerSide, Timestamp, Trade};

const MARKET_PARTITIONS: i32 = 16;
const CANDLE_PARTITIONS: i32 = 4;
/// 2024-03-01T00:00:00Z, where generated history starts.
const HISTORY_START_MS: i64 = 1_709_251_200_000;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A comma-separated list setting (`WICK_BENCH_PUSH_RATES=1000,50000`); empty for "none".
fn list_setting(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name).unwrap_or_else(|_| default.to_owned()).split(',').filter_map(|v| v.trim().parse().ok()).collect()
}

/// A service process, killed when dropped.
struct Proc {
    label: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The running services of one deployment and their operations endpoints.
struct Services {
    procs: Vec<Proc>,
    aggregator_ops: Vec<String>,
    gateway_ops: String,
}

impl Services {
    /// Fails when a service has exited.
    fn alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited ({status})", p.label);
            }
        }
        Ok(())
    }

    fn ticks(&self) -> Vec<u64> {
        self.procs.iter().map(|p| process_ticks(p.child.id())).collect()
    }

    /// CPU seconds of each service since `before` (from [`Services::ticks`]).
    fn cpu_since(&self, before: &[u64]) -> serde_json::Map<String, Value> {
        let hz = clock_ticks_per_second();
        self.procs
            .iter()
            .zip(before)
            .map(|(p, b)| (p.label.clone(), json!(process_ticks(p.child.id()).saturating_sub(*b) as f64 / hz)))
            .collect()
    }

    fn peak_rss(&self) -> serde_json::Map<String, Value> {
        self.procs.iter().map(|p| (p.label.clone(), json!(peak_rss_mib(p.child.id())))).collect()
    }
}

/// The broker a deployment works against: a private tansu of its own (the stack's binary and
/// SQLite engine, in a fresh directory; the default), or the stack's (`WICK_BENCH_BROKER=stack`),
/// which other sessions share and which keeps every topic ever made.
struct Broker {
    address: String,
    /// The private broker's process, for its CPU time.
    pid: Option<u32>,
    _process: Option<wick_test_support::BrokerProcess>,
}

impl Broker {
    fn private() -> bool {
        std::env::var("WICK_BENCH_BROKER").as_deref() != Ok("stack")
    }

    fn start() -> Result<Broker> {
        if !Broker::private() {
            return Ok(Broker::stack());
        }
        let process = wick_test_support::BrokerProcess::start(wick_test_support::StorageEngine::Sqlite)?;
        let address = process.address();
        let pid = tansu_pid(&address);
        Ok(Broker { address, pid, _process: Some(process) })
    }

    fn stack() -> Broker {
        Broker { address: wick_test_support::broker_address(), pid: None, _process: None }
    }

    async fn client(&self) -> Result<rskafka::client::Client> {
        Ok(wick_kafka::connect(std::slice::from_ref(&self.address), Duration::from_secs(10)).await?)
    }
}

/// The tansu process listening on `address`.
fn tansu_pid(address: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
        (cmdline.contains("tansu") && cmdline.contains(&format!("tcp://{address}"))).then_some(pid)
    })
}

/// The size of the stack's broker database (its `tansu.db`), for the record.
fn stack_broker_bytes() -> Option<u64> {
    let pid = tansu_pid(&wick_test_support::broker_address())?;
    std::fs::metadata(std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?.join("tansu.db")).ok().map(|m| m.len())
}

/// One deployment: its broker, topics, schema, Redis prefix, and the gateway's address.
struct Deployment {
    broker: Broker,
    market: String,
    candles: String,
    schema: String,
    prefix: String,
    http: String,
    logs: PathBuf,
}

impl Deployment {
    async fn new(name: &str) -> Result<Deployment> {
        let broker = Broker::start()?;
        let client = broker.client().await?;
        let market = wick_test_support::unique_name(&format!("bench-{name}-market"));
        let candles = wick_test_support::unique_name(&format!("bench-{name}-candles"));
        let specs = [
            wick_kafka::TopicSpec { name: market.clone(), partitions: MARKET_PARTITIONS },
            wick_kafka::TopicSpec { name: candles.clone(), partitions: CANDLE_PARTITIONS },
            // The services' default dead-letter partition count.
            wick_kafka::TopicSpec { name: format!("{market}-dlq"), partitions: 4 },
            wick_kafka::TopicSpec { name: format!("{candles}-dlq"), partitions: 4 },
        ];
        wick_kafka::ensure_topics(&client, &broker.address, &specs).await?;
        let schema = wick_test_support::unique_ident("wick_bench");
        db().await?.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
        let logs = wick_test_support::service_binary("query-gateway")?.parent().context("no dir")?.join("wick-bench-logs").join(name);
        std::fs::create_dir_all(&logs)?;
        Ok(Deployment {
            broker,
            market,
            candles,
            schema,
            prefix: wick_test_support::unique_name("wick-bench"),
            http: format!("127.0.0.1:{}", wick_test_support::free_port()?),
            logs,
        })
    }

    fn spawn(&self, name: &'static str, label: &str, args: &[&str], env: &[(&str, String)]) -> Result<Proc> {
        let log = std::fs::File::create(self.logs.join(format!("{label}.log")))?;
        let mut c = Command::new(wick_test_support::service_binary(name)?);
        c.args(args).env("RUST_LOG", "warn").env("WICK__OPS__LISTEN", "127.0.0.1:0").env("WICK__KAFKA__BROKERS", &self.broker.address);
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
        Ok(Proc { label: label.to_owned(), child: c.spawn().with_context(|| format!("starting {name}"))? })
    }

    /// `aggregators` aggregator instances (splitting the partitions by index), the writer and the
    /// gateway; every one of them ready (`/health/readyz`).
    async fn start(&self, aggregator_env: &[(&str, String)], aggregators: u32) -> Result<Services> {
        let mut procs = Vec::new();
        let mut aggregator_ops = Vec::new();
        let mut ready = Vec::new();
        for index in 0..aggregators {
            let ops = format!("127.0.0.1:{}", wick_test_support::free_port()?);
            let mut env = aggregator_env.to_vec();
            env.push(("WICK__OPS__LISTEN", ops.clone()));
            let label = if aggregators > 1 {
                env.push(("WICK__INSTANCE__INDEX", index.to_string()));
                env.push(("WICK__INSTANCE__COUNT", aggregators.to_string()));
                format!("ingest-aggregator {} of {aggregators}", index + 1)
            } else {
                "ingest-aggregator".to_owned()
            };
            procs.push(self.spawn("ingest-aggregator", &label, &[], &env)?);
            aggregator_ops.push(ops.clone());
            ready.push(ops);
        }
        let writer_ops = format!("127.0.0.1:{}", wick_test_support::free_port()?);
        procs.push(self.spawn("persistence-writer", "persistence-writer", &[], &[("WICK__OPS__LISTEN", writer_ops.clone())])?);
        ready.push(writer_ops);
        let grpc = format!("127.0.0.1:{}", wick_test_support::free_port()?);
        let gateway_ops = format!("127.0.0.1:{}", wick_test_support::free_port()?);
        procs.push(self.spawn(
            "query-gateway",
            "query-gateway",
            &[],
            &[
                ("WICK__HTTP__LISTEN", self.http.clone()),
                ("WICK__GRPC__LISTEN", grpc),
                // The benchmark's clients all come from 127.0.0.1.
                ("WICK__LIMITS__PER_ADDRESS_RATE", "0".into()),
                ("WICK__OPS__LISTEN", gateway_ops.clone()),
            ],
        )?);
        ready.push(gateway_ops.clone());
        let mut services = Services { procs, aggregator_ops, gateway_ops };
        let deadline = Instant::now() + Duration::from_secs(90);
        for ops in &ready {
            while http_get(ops, "/health/readyz").await.is_err() {
                services.alive().with_context(|| format!("at start; logs in {}", self.logs.display()))?;
                if Instant::now() > deadline {
                    bail!("a service at {ops} did not become ready (logs in {})", self.logs.display());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        while tokio::net::TcpStream::connect(&self.http).await.is_err() {
            if Instant::now() > deadline {
                bail!("the gateway did not answer (logs in {})", self.logs.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(services)
    }

    /// Records on the deployment's topics: the sum of the partitions' high watermarks.
    async fn records(&self) -> Result<(i64, i64)> {
        let kafka = self.broker.client().await?;
        let mut counts = [0i64; 2];
        for (n, (topic, partitions)) in counts.iter_mut().zip([(&self.market, MARKET_PARTITIONS), (&self.candles, CANDLE_PARTITIONS)]) {
            for p in 0..partitions {
                *n += wick_test_support::partition(&kafka, topic, p).await.get_offset(OffsetAt::Latest).await?;
            }
        }
        Ok((counts[0], counts[1]))
    }

    /// Drops the deployment's schema once it is measured, so that later parts do not work against
    /// a bigger database. Its topics stay: deleting a topic does not return on this broker.
    async fn remove(&self, db: &tokio_postgres::Client) {
        let _ = db.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema)).await;
    }
}

async fn db() -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=wick", tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Waits until every interval of the deployment holds `trades` trades, or `timeout`; returns the
/// trades stored in the least complete interval (0 while an interval has none). Polls no more
/// often than keeps the database's share of the work small (the query reads every candle row).
async fn wait_stored(db: &tokio_postgres::Client, schema: &str, trades: i64, timeout: Duration, services: &mut Services) -> Result<i64> {
    let sql = format!(
        "SELECT count(*), coalesce(min(n), 0)::int8 FROM (SELECT sum(trade_count)::int8 AS n FROM {schema}.candles GROUP BY interval) s"
    );
    let deadline = Instant::now() + timeout;
    let mut stored = 0;
    loop {
        services.alive()?;
        let asked = Instant::now();
        if let Ok(row) = db.query_one(&sql, &[]).await {
            stored = if row.get::<_, i64>(0) == 16 { row.get::<_, i64>(1) } else { 0 };
            if stored == trades {
                return Ok(stored);
            }
        }
        if Instant::now() > deadline {
            return Ok(stored);
        }
        tokio::time::sleep((asked.elapsed() * 5).clamp(Duration::from_millis(50), Duration::from_secs(1))).await;
    }
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

/// Clock ticks of every running process of the stack (PostgreSQL, Redis, by command name) and of
/// the broker: `broker` when it is a private one, every tansu otherwise.
fn stack_ticks(broker: Option<u32>) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let name = match comm.trim() {
            "tansu" if broker.is_none_or(|b| b == pid) => "broker (tansu)",
            "postgres" => "PostgreSQL",
            "redis-server" => "Redis",
            _ => continue,
        };
        *out.entry(name).or_default() += process_ticks(pid);
    }
    out
}

fn stack_cpu_since(before: &BTreeMap<&'static str, u64>, broker: Option<u32>) -> serde_json::Map<String, Value> {
    let hz = clock_ticks_per_second();
    stack_ticks(broker)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v.saturating_sub(before.get(k).copied().unwrap_or(0)) as f64 / hz)))
        .collect()
}

/// Peak resident set size of a process (`VmHWM`), in MiB (NaN once it is gone).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Cores the machine kept busy over `span`, whoever ran.
async fn busy_cores(span: Duration) -> Result<f64> {
    let m0 = machine_ticks()?;
    tokio::time::sleep(span).await;
    let m1 = machine_ticks()?;
    Ok((m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64 * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
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

/// The sum of every series of metric `name` in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The cumulative buckets (upper bound, count) of histogram `name`, summed over the series whose
/// labels contain `label` (every series when empty) and over `texts` (several instances).
fn histogram(texts: &[String], name: &str, label: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut by_bound: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in texts.iter().flat_map(|t| t.lines()) {
        let Some(rest) = line.strip_prefix(&prefix) else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        if !labels.contains(label) {
            continue;
        }
        let Some(le) = labels.split("le=\"").nth(1).and_then(|v| v.split('"').next()) else { continue };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let entry = by_bound.entry(bound.to_bits()).or_insert((bound, 0.0));
        entry.1 += value.parse::<f64>().unwrap_or(0.0);
    }
    let mut buckets: Vec<(f64, f64)> = by_bound.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// What was observed between two scrapes of the same histogram.
fn histogram_delta(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after.iter().map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m))).collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly within its bucket (as
/// Prometheus' `histogram_quantile` does); the highest finite bound when it falls in `+Inf`.
fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (le - lower) * ((rank - below) / (n - below).max(f64::MIN_POSITIVE)));
        }
        (lower, below) = (le, n);
    }
    Some(lower)
}

/// The aggregators' consumer lag (records), summed over instances, every `every` until stopped.
struct LagSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(f64, f64)>>,
}

impl LagSampler {
    fn start(ops: Vec<String>, every: Duration) -> LagSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let mut lag = 0.0;
                for o in &ops {
                    if let Ok(text) = http_get(o, "/metrics").await {
                        lag += metric_sum(&text, "wick_ingest_consumer_lag_records");
                    }
                }
                samples.push((started.elapsed().as_secs_f64(), lag));
                tokio::time::sleep(every).await;
            }
            samples
        });
        LagSampler { stop, task }
    }

    async fn finish(self) -> Value {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.task.await.unwrap_or_default();
        let max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
        json!({ "max_records": max, "samples": samples.iter().map(|(t, l)| json!([t, l])).collect::<Vec<_>>() })
    }
}

/// The name of generated instrument `k`: the first eight after real Binance symbols.
fn instrument_name(k: usize) -> String {
    const NAMES: [&str; 8] = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "AVAX", "LINK"];
    match NAMES.get(k) {
        Some(n) => format!("BINANCE:{n}-USDT"),
        None => format!("BINANCE:Z{k:05}-USDT"),
    }
}

/// xorshift64: deterministic test data.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// One JSON-lines file of `trades` trades spread evenly over `instruments` instruments and over
/// `span_ms` of event time from 2024-03-01: the instruments trade in turn, in event-time order, so
/// that every linger window of the replay holds trades of many instruments (as an exchange's feed
/// does). Prices are random walks on a 0.01 tick; written once per shape.
fn write_spread(dir: &Path, instruments: usize, trades: usize, span_ms: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("spread-{instruments}i-{trades}t-{span_ms}ms.jsonl"));
    if path.is_file() {
        return Ok(path);
    }
    let names: Vec<String> = (0..instruments).map(instrument_name).collect();
    let mut seeds: Vec<u64> = (0..instruments).map(|k| 0x9e37_79b9_7f4a_7c15u64 ^ (k as u64 + 7)).collect();
    let mut cents: Vec<i64> = (0..instruments).map(|k| 6_000_000 / (k as i64 % 97 + 1)).collect();
    let partial = path.with_extension("partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    let (start_us, span_us) = (HISTORY_START_MS * 1000, span_ms as i64 * 1000);
    for i in 0..trades {
        let k = i % instruments;
        let r = next(&mut seeds[k]);
        cents[k] = (cents[k] + (r % 7) as i64 - 3).max(100);
        let t = start_us + (i as i128 * span_us as i128 / trades as i128) as i64;
        let side = if (r >> 40) % 2 == 0 { "buy" } else { "sell" };
        writeln!(
            out,
            r#"{{"instrument":"{}","trade_id":{},"price":"{}.{:02}","quantity":"0.{:05}","side":"{side}","event_time":{t}}}"#,
            names[k],
            i / instruments + 1,
            cents[k] / 100,
            cents[k] % 100,
            1 + (r >> 20) % 99_999
        )?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// The trades of [`write_spread`] as Binance trade CSV files, one per instrument (microsecond
/// times, so the trades are the same), for a replay of the format exchanges publish history in.
fn write_spread_csv(dir: &Path, instruments: usize, trades: usize, span_ms: u64) -> Result<Vec<PathBuf>> {
    let source = write_spread(dir, instruments, trades, span_ms)?;
    let symbol = |k: usize| instrument_name(k).trim_start_matches("BINANCE:").replace('-', "");
    let paths: Vec<PathBuf> =
        (0..instruments).map(|k| dir.join(format!("{}-trades-spread-{trades}t-{span_ms}ms.csv", symbol(k)))).collect();
    if paths.iter().all(|p| p.is_file()) {
        return Ok(paths);
    }
    let index: HashMap<String, usize> = (0..instruments).map(|k| (instrument_name(k), k)).collect();
    let mut outs = paths.iter().map(|p| Ok(std::io::BufWriter::new(std::fs::File::create(p)?))).collect::<Result<Vec<_>>>()?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::open(&source)?)) {
        let v: Value = serde_json::from_str(&line?)?;
        let k = *index.get(v["instrument"].as_str().context("instrument")?).context("unknown instrument")?;
        let maker = if v["side"] == "sell" { "True" } else { "False" };
        writeln!(
            outs[k],
            "{},{},{},0,{},{maker},True",
            v["trade_id"],
            v["price"].as_str().context("price")?,
            v["quantity"].as_str().context("quantity")?,
            v["event_time"]
        )?;
    }
    for mut o in outs {
        o.flush()?;
    }
    Ok(paths)
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
        let (mut seed, mut cents, mut t) = (0x9e37_79b9_7f4a_7c15u64 ^ (k as u64 + 7), 6_000_000i64 / (k as i64 + 1), HISTORY_START_MS);
        for id in 1..=per_instrument {
            next(&mut seed);
            cents = (cents + (seed % 7) as i64 - 3).max(100);
            t += (seed >> 10) as i64 % (2 * gap_ms as i64 + 1);
            let maker = if (seed >> 40) % 2 == 0 { "True" } else { "False" };
            writeln!(out, "{id},{}.{:02},0.{:05},0,{t},{maker},True", cents / 100, cents % 100, 1 + (seed >> 20) % 99_999)?;
        }
        out.flush()?;
    }
    Ok(files)
}

/// What the aggregator runs with when nothing is set: its compiled-in ring defaults.
fn aggregator_ring_defaults() -> Value {
    serde_json::to_value(&ingest_aggregator::config::Config::default().ring).unwrap_or(Value::Null)
}

/// Part 1, one run: `feed-publisher replay` of `file` into a fresh deployment with `aggregators`
/// aggregator instances, until the database holds all `trades` in all 16 intervals.
async fn scale_run(
    db: &tokio_postgres::Client,
    files: &[PathBuf],
    input: &str,
    instruments: usize,
    trades: i64,
    aggregators: u32,
) -> Result<Value> {
    eprintln!("system bench: scale, {instruments} instruments ({input}), {aggregators} aggregator(s)");
    let d = Deployment::new(&format!("scale-{instruments}i-{aggregators}a")).await?;
    let broker = (d.broker.address.clone(), d.broker.pid.is_some());
    scale_measure(db, &d, files, input, instruments, trades, aggregators).await.map_err(|e| {
        let gone = broker.1 && tansu_pid(&broker.0).is_none();
        if gone {
            e.context("the deployment's broker had exited")
        } else {
            e
        }
    })
}

async fn scale_measure(
    db: &tokio_postgres::Client,
    d: &Deployment,
    files: &[PathBuf],
    input: &str,
    instruments: usize,
    trades: i64,
    aggregators: u32,
) -> Result<Value> {
    let mut services = d.start(&[], aggregators).await?;
    let service_ticks = services.ticks();
    let stack = stack_ticks(d.broker.pid);
    let sampler = LagSampler::start(services.aggregator_ops.clone(), Duration::from_secs(1));
    let ticks0 = machine_ticks()?;
    let started = Instant::now();
    // The broker takes uncompressed batches far faster than lz4 ones (see the replay section).
    let mut args = vec!["replay"];
    for f in files {
        args.push(f.to_str().context("path")?);
    }
    let mut feed = d.spawn("feed-publisher", "feed-publisher", &args, &[("WICK__PRODUCER__COMPRESSION", "none".into())])?;
    let (mut feed_ticks, mut feed_rss) = (0, 0.0f64);
    let published = loop {
        feed_ticks = feed_ticks.max(process_ticks(feed.child.id()));
        feed_rss = feed_rss.max(peak_rss_mib(feed.child.id()));
        if let Some(status) = feed.child.try_wait()? {
            if !status.success() {
                bail!("feed-publisher replay failed: {status} (logs in {})", d.logs.display());
            }
            break started.elapsed();
        }
        services.alive()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let timeout = Duration::from_secs(setting("WICK_BENCH_SCALE_TIMEOUT", 600));
    let stored = wait_stored(db, &d.schema, trades, timeout.saturating_sub(started.elapsed()), &mut services).await?;
    let elapsed = started.elapsed();
    let ticks1 = machine_ticks()?;
    let lag = sampler.finish().await;
    let hz = clock_ticks_per_second();
    let mut cpu = services.cpu_since(&service_ticks);
    cpu.insert("feed-publisher".into(), json!(feed_ticks as f64 / hz));
    let stack_cpu = stack_cpu_since(&stack, d.broker.pid);
    let mut rss = services.peak_rss();
    rss.insert("feed-publisher".into(), json!(feed_rss));
    let mut aggregator_texts = Vec::new();
    for ops in &services.aggregator_ops {
        aggregator_texts.push(http_get(ops, "/metrics").await.unwrap_or_default());
    }
    let polls: f64 = aggregator_texts.iter().map(|t| metric_sum(t, "wick_ingest_poll_seconds_count")).sum();
    let poll_seconds: f64 = aggregator_texts.iter().map(|t| metric_sum(t, "wick_ingest_poll_seconds_sum")).sum();
    let rows: i64 = db.query_one(&format!("SELECT count(*) FROM {}.candles", d.schema), &[]).await?.get(0);
    let (market_records, candle_records) = d.records().await?;
    drop(services);
    drop(feed);
    d.remove(db).await;
    let busy = (ticks1.0 - ticks0.0) as f64 / hz;
    let own: f64 = cpu.values().chain(stack_cpu.values()).filter_map(Value::as_f64).sum();
    Ok(json!({
        "instruments": instruments,
        "input": input,
        "aggregators": aggregators,
        "trades": trades,
        "completed": stored == trades,
        "stored_trades": stored,
        "candles": rows,
        "replay_seconds": published.as_secs_f64(),
        "seconds": elapsed.as_secs_f64(),
        "trades_per_second": stored as f64 / elapsed.as_secs_f64(),
        "machine_cpu_seconds": busy,
        "cpu_us_per_trade": busy * 1e6 / trades as f64,
        "wick_and_stack_cpu_us_per_trade": own * 1e6 / trades as f64,
        "service_cpu_seconds": cpu,
        "stack_cpu_seconds": stack_cpu,
        "peak_rss_mib": rss,
        "records": {
            "market_events": market_records, "candles_completed": candle_records,
            "market_events_per_trade": market_records as f64 / trades as f64,
            "candles_completed_per_trade": candle_records as f64 / trades as f64,
        },
        "aggregator_fetches": polls,
        "aggregator_fetch_mean_ms": poll_seconds * 1e3 / polls,
        "lag": lag,
    }))
}

/// A scale run, or what made it fail: one run that fails (tansu 0.6.0's SQLite storage can stop
/// under load) is reported as failed and the others still run.
fn failed_as_value(run: Result<Value>, instruments: u64, aggregators: u64, input: &str) -> Value {
    run.unwrap_or_else(|e| {
        eprintln!("system bench: the run of {instruments} instruments ({input}), {aggregators} aggregator(s) failed: {e:#}");
        json!({"instruments": instruments, "aggregators": aggregators, "input": input, "error": format!("{e:#}")})
    })
}

/// Part 1: the same number of trades over the same span of event time, at 3 and 1,000 instruments
/// (and more if asked), then the 1,000-instrument load with more aggregator instances.
async fn scale(dir: &Path, db: &tokio_postgres::Client) -> Result<Value> {
    let trades: usize = setting("WICK_BENCH_SCALE_TRADES", 1_200_000);
    let span_seconds: u64 = setting("WICK_BENCH_SCALE_SPAN_SECONDS", 600);
    let mut runs = Vec::new();
    let mut files = BTreeMap::new();
    let csv = list_setting("WICK_BENCH_SCALE_CSV", "3");
    for instruments in list_setting("WICK_BENCH_SCALE_INSTRUMENTS", "3,1000,10000") {
        let file = write_spread(dir, instruments as usize, trades, span_seconds * 1000)?;
        files.insert(instruments, file.clone());
        runs.push(failed_as_value(
            scale_run(db, &[file], "json-lines", instruments as usize, trades as i64, 1).await,
            instruments,
            1,
            "json-lines",
        ));
        eprintln!("{}", runs.last().unwrap());
        if csv.contains(&instruments) {
            let csv_files = write_spread_csv(dir, instruments as usize, trades, span_seconds * 1000)?;
            runs.push(failed_as_value(
                scale_run(db, &csv_files, "binance-csv", instruments as usize, trades as i64, 1).await,
                instruments,
                1,
                "binance-csv",
            ));
            eprintln!("{}", runs.last().unwrap());
        }
    }
    let scale_out_instruments: u64 = setting("WICK_BENCH_SCALE_OUT_INSTRUMENTS", 1000);
    for aggregators in list_setting("WICK_BENCH_SCALE_OUT", "2,4") {
        let file = match files.get(&scale_out_instruments) {
            Some(f) => f.clone(),
            None => write_spread(dir, scale_out_instruments as usize, trades, span_seconds * 1000)?,
        };
        runs.push(failed_as_value(
            scale_run(db, &[file], "json-lines", scale_out_instruments as usize, trades as i64, aggregators as u32).await,
            scale_out_instruments,
            aggregators,
            "json-lines",
        ));
        eprintln!("{}", runs.last().unwrap());
    }
    Ok(json!({
        "trades": trades,
        "span_seconds": span_seconds,
        "files": files.values().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "ring_defaults": aggregator_ring_defaults(),
        "runs": runs,
    }))
}

/// Part 2: each service's CPU over a quiet minute.
async fn idle(db: &tokio_postgres::Client) -> Result<Value> {
    let (settle, seconds): (u64, u64) = (setting("WICK_BENCH_IDLE_SETTLE_SECONDS", 10), setting("WICK_BENCH_IDLE_SECONDS", 60));
    eprintln!("system bench: idle, {settle} s to settle then {seconds} s");
    let d = Deployment::new("idle").await?;
    let mut services = d.start(&[], 1).await?;
    // A feed that is up and connected but has no trades to publish.
    services.procs.push(d.spawn("feed-publisher", "feed-publisher", &["simulate", "--instruments", "1", "--rate", "0"], &[])?);
    tokio::time::sleep(Duration::from_secs(settle)).await;
    services.alive()?;
    let aggregator = services.aggregator_ops[0].clone();
    let fetches0 = metric_sum(&http_get(&aggregator, "/metrics").await?, "wick_ingest_poll_seconds_count");
    let (before, stack, m0, started) = (services.ticks(), stack_ticks(d.broker.pid), machine_ticks()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    services.alive()?;
    let fetches1 = metric_sum(&http_get(&aggregator, "/metrics").await?, "wick_ingest_poll_seconds_count");
    let span = started.elapsed().as_secs_f64();
    let m1 = machine_ticks()?;
    let cpu = services.cpu_since(&before);
    let stack_cpu = stack_cpu_since(&stack, d.broker.pid);
    let percent = |m: &serde_json::Map<String, Value>| -> serde_json::Map<String, Value> {
        m.iter().map(|(k, v)| (k.clone(), json!(v.as_f64().unwrap_or(f64::NAN) * 100.0 / span))).collect()
    };
    let result = json!({
        "settle_seconds": settle,
        "seconds": span,
        "cpu_seconds": cpu,
        "percent_of_one_core": percent(&cpu),
        "stack_percent_of_one_core": percent(&stack_cpu),
        "machine_busy_cores": (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64 * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        "ring_defaults": aggregator_ring_defaults(),
        "aggregator_fetches_per_second": (fetches1 - fetches0) / span,
        "peak_rss_mib": services.peak_rss(),
    });
    drop(services);
    d.remove(db).await;
    Ok(result)
}

fn quantile_ms(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn summary_ms(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    if samples.is_empty() {
        return Value::Null;
    }
    json!({
        "n": samples.len(),
        "p50_ms": quantile_ms(&samples, 0.5), "p99_ms": quantile_ms(&samples, 0.99), "max_ms": quantile_ms(&samples, 1.0),
    })
}

/// Part 3: what the broker alone costs a record on its way through, measured on a fresh topic of
/// a broker like the deployments' and, for comparison, of the stack's.
async fn broker_floor() -> Result<Value> {
    let trips: usize = setting("WICK_BENCH_FLOOR_TRIPS", 300);
    eprintln!("system bench: broker floor, {trips} round trips");
    let mut floor = broker_floor_of(&Broker::start()?, trips).await?;
    if Broker::private() {
        floor["stack"] = broker_floor_of(&Broker::stack(), trips).await?;
        floor["stack"]["database_bytes"] = json!(stack_broker_bytes());
    }
    floor["private"] = json!(Broker::private());
    Ok(floor)
}

async fn broker_floor_of(broker: &Broker, trips: usize) -> Result<Value> {
    let producer_client = broker.client().await?;
    // The consumer has a connection of its own, as the services do: a fetch waiting on a
    // connection would hold up a produce behind it.
    let consumer_client = broker.client().await?;
    let topic = wick_test_support::unique_name("bench-floor");
    wick_kafka::ensure_topics(&producer_client, &broker.address, &[wick_kafka::TopicSpec { name: topic.clone(), partitions: 1 }]).await?;
    let producer = wick_test_support::partition(&producer_client, &topic, 0).await;
    let consumer = Arc::new(wick_test_support::partition(&consumer_client, &topic, 0).await);
    let value = vec![7u8; 200];
    // Sequential: produce one record, acknowledged; then fetch it.
    let (mut produce, mut fetch, mut round) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trips {
        let t0 = Instant::now();
        let offsets = producer.produce(vec![wick_test_support::record(value.clone())], Compression::NoCompression).await?;
        let t1 = Instant::now();
        let offset = *offsets.first().context("no offset")?;
        loop {
            let (records, _) = consumer.fetch_records(offset, 1..1_048_576, 5).await?;
            if records.iter().any(|r| r.offset == offset) {
                break;
            }
        }
        let t2 = Instant::now();
        produce.push((t1 - t0).as_secs_f64() * 1e3);
        fetch.push((t2 - t1).as_secs_f64() * 1e3);
        round.push((t2 - t0).as_secs_f64() * 1e3);
    }
    // A consumer long-polling with the services' fetch waits: the time from a produce request's
    // start until the consumer holds the record, one record every 3 ms.
    let mut waiting = serde_json::Map::new();
    for max_wait_ms in [5i32, 100] {
        let start = producer.get_offset(OffsetAt::Latest).await?;
        let base = Instant::now();
        let reader = {
            let consumer = consumer.clone();
            tokio::spawn(async move {
                let (mut offset, mut seen) = (start, Vec::new());
                while seen.len() < trips {
                    let (records, _) = consumer.fetch_records(offset, 1..1_048_576, max_wait_ms).await?;
                    let now = base.elapsed().as_nanos() as u64;
                    let from = offset;
                    for r in records.into_iter().filter(|r| r.offset >= from) {
                        offset = r.offset + 1;
                        let v = r.record.value.unwrap_or_default();
                        let sent = u64::from_le_bytes(v.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default());
                        seen.push(now.saturating_sub(sent) as f64 / 1e6);
                    }
                }
                anyhow::Ok(seen)
            })
        };
        let mut tick = tokio::time::interval(Duration::from_millis(3));
        for _ in 0..trips {
            tick.tick().await;
            let mut v = (base.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
            v.resize(200, 7);
            producer.produce(vec![wick_test_support::record(v)], Compression::NoCompression).await?;
        }
        let seen =
            tokio::time::timeout(Duration::from_secs(30), reader).await.context("the waiting consumer did not see every record")???;
        waiting.insert(format!("max_wait_{max_wait_ms}ms"), summary_ms(seen));
    }
    Ok(json!({
        "trips": trips, "record_bytes": 200,
        "produce": summary_ms(produce), "fetch": summary_ms(fetch), "round_trip": summary_ms(round),
        "waiting_consumer": waiting,
    }))
}

/// A field of a pushed candle's JSON: `"key":value` or `"key":"value"`.
fn push_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    match rest.strip_prefix('"') {
        Some(s) => s.split('"').next(),
        None => rest.split([',', '}']).next(),
    }
}

/// The latency budget's hops, in the order a trade crosses them: (service, metric, label, whose).
const HOPS: [(&str, &str, &str, &str); 6] = [
    ("feed", "wick_feed_receive_to_publish_seconds", "", "Wick"),
    ("aggregator", "wick_ingest_hop_seconds", "hop=\"publish_to_fetch\"", "broker"),
    ("aggregator", "wick_ingest_hop_seconds", "hop=\"fetch_to_output\"", "Wick"),
    ("aggregator", "wick_ingest_hop_seconds", "hop=\"output_to_ack\"", "Wick + broker"),
    ("gateway", "wick_gateway_hop_seconds", "hop=\"publish_to_fetch\"", "broker"),
    ("gateway", "wick_gateway_hop_seconds", "hop=\"fetch_to_send\"", "Wick"),
];

/// The other histograms shown beside the hops: (service, metric).
const REQUESTS: [(&str, &str); 3] =
    [("feed", "wick_feed_produce_seconds"), ("aggregator", "wick_ingest_poll_seconds"), ("aggregator", "wick_ingest_produce_seconds")];

/// Scrapes of the three services' metrics at one moment.
struct Scrape {
    feed: String,
    aggregator: String,
    gateway: String,
}

impl Scrape {
    async fn take(feed: &feed_publisher::metrics::Metrics, aggregator: &str, gateway: &str) -> Scrape {
        Scrape {
            feed: prometheus::TextEncoder::new().encode_to_string(&feed.registry.gather()).unwrap_or_default(),
            aggregator: http_get(aggregator, "/metrics").await.unwrap_or_default(),
            gateway: http_get(gateway, "/metrics").await.unwrap_or_default(),
        }
    }

    fn of(&self, service: &str) -> &str {
        match service {
            "feed" => &self.feed,
            "aggregator" => &self.aggregator,
            _ => &self.gateway,
        }
    }

    /// p50, p99 and count of what `name` (with `label`) observed since `before`.
    fn delta(&self, before: &Scrape, service: &str, name: &str, label: &str) -> Value {
        let after = histogram(&[self.of(service).to_owned()], name, label);
        let earlier = histogram(&[before.of(service).to_owned()], name, label);
        let d = histogram_delta(&after, &earlier);
        let ms = |q| histogram_quantile(&d, q).map(|s| s * 1e3);
        json!({"count": d.last().map_or(0.0, |b| b.1), "p50_ms": ms(0.5), "p99_ms": ms(0.99)})
    }
}

/// Part 4, one rate: trade-to-push latency across `instruments` instruments.
async fn latency(rate: u64, instruments: usize, db: &tokio_postgres::Client) -> Result<Value> {
    let seconds: u64 = setting("WICK_BENCH_PUSH_SECONDS", 20);
    let drain = Duration::from_secs(setting("WICK_BENCH_PUSH_DRAIN_SECONDS", 20));
    let warmup = Duration::from_secs(3);
    eprintln!("system bench: push latency, {rate} trades/s across {instruments} instruments for {seconds} s");
    let names: Vec<Instrument> = (0..instruments).map(|k| Instrument::new(&format!("BENCH:L{k:04}-USD"))).collect::<Result<_, _>>()?;
    let d = Deployment::new(&format!("latency-{rate}")).await?;
    // The overrides of a latency-sensitive deployment (stated in the report with their defaults).
    let mut aggregator_env: Vec<(&str, String)> = latency_overrides().iter().map(|(k, v, _)| (*k, (*v).to_owned())).collect();
    if let Ok(wait) = std::env::var("WICK_BENCH_WAIT") {
        // For investigation only: the report measures the default wait strategy.
        aggregator_env.push(("WICK__RING__WAIT_STRATEGY", wait));
    }
    let mut services = d.start(&aggregator_env, 1).await?;
    let (aggregator_ops, gateway_ops) = (services.aggregator_ops[0].clone(), services.gateway_ops.clone());
    // Every instrument's 1s candles, over as many connections as the gateway's default of 64
    // subscriptions per connection needs.
    const PER_CONNECTION: usize = 60;
    let mut sockets = Vec::new();
    for chunk in (0..instruments).collect::<Vec<_>>().chunks(PER_CONNECTION) {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.http)).await?;
        for &k in chunk {
            let m = json!({"op": "subscribe", "instrument": names[k].to_string(), "interval": "1s"});
            ws.send(tokio_tungstenite::tungstenite::Message::Text(m.to_string().into())).await?;
        }
        let mut acknowledged = 0;
        while acknowledged < chunk.len() {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.context("subscription replies")?.context("closed")??;
            let text = m.into_text()?;
            if text.contains("\"subscribed\"") {
                acknowledged += 1;
            } else if text.contains("\"error\"") {
                bail!("subscribing: {text}");
            }
        }
        sockets.push((ws, chunk.to_vec()));
    }
    let total = (rate * seconds) as usize;
    let expected: Vec<u64> = (0..instruments).map(|k| (total / instruments + usize::from(k < total % instruments)) as u64).collect();
    // Nanoseconds after `base` at which each trade went to the producer, per instrument and id.
    let sent: Arc<Vec<Vec<AtomicU64>>> =
        Arc::new(expected.iter().map(|n| (0..=*n as usize).map(|_| AtomicU64::new(0)).collect()).collect());
    let base = Instant::now();
    // Set once publishing is over: when the receivers stop waiting (ns after `base`).
    let give_up = Arc::new(AtomicU64::new(u64::MAX));
    let index: Arc<HashMap<String, usize>> = Arc::new(names.iter().enumerate().map(|(k, n)| (n.to_string(), k)).collect());
    let mut receivers = Vec::new();
    for (mut ws, mine) in sockets {
        let (sent, index, expected, give_up) = (sent.clone(), index.clone(), expected.clone(), give_up.clone());
        receivers.push(tokio::spawn(async move {
            let mut seen: HashMap<usize, u64> = mine.iter().map(|k| (*k, 0)).collect();
            let mut samples: Vec<(u64, u64)> = Vec::new(); // (sent at, latency), ns
            let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
            let mut closed = None;
            let mut quiet_since = Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Ok(Some(Ok(m))) => {
                        let now = base.elapsed().as_nanos() as u64;
                        quiet_since = Instant::now();
                        let text = match m {
                            tokio_tungstenite::tungstenite::Message::Text(t) => t,
                            tokio_tungstenite::tungstenite::Message::Close(frame) => {
                                closed = Some(frame.map(|f| f.reason.to_string()).unwrap_or_default());
                                break;
                            }
                            _ => continue,
                        };
                        if !text.starts_with(r#"{"type":"candle""#) {
                            continue;
                        }
                        *kinds.entry(push_field(&text, "\"kind\":").unwrap_or("?").to_owned()).or_default() += 1;
                        let Some(&k) = push_field(&text, "\"instrument\":").and_then(|i| index.get(i)) else { continue };
                        let Some(last) = push_field(&text, "\"last_trade_id\":").and_then(|v| v.parse::<u64>().ok()) else { continue };
                        let last = last.min(expected[k]);
                        let Some(s) = seen.get_mut(&k) else { continue };
                        for id in *s + 1..=last {
                            let at = sent[k][id as usize].load(Ordering::SeqCst);
                            samples.push((at, now.saturating_sub(at)));
                        }
                        *s = (*s).max(last);
                        if seen.iter().all(|(k, s)| *s >= expected[*k]) {
                            break;
                        }
                    }
                    Ok(Some(Err(e))) => {
                        closed = Some(e.to_string());
                        break;
                    }
                    Ok(None) => {
                        closed = Some("closed".into());
                        break;
                    }
                    Err(_) => {}
                }
                let now = base.elapsed().as_nanos() as u64;
                let over = give_up.load(Ordering::SeqCst);
                if now > over || (over != u64::MAX && quiet_since.elapsed() > Duration::from_secs(5)) {
                    break;
                }
            }
            (samples, kinds, closed)
        }));
    }
    // This process is the feed: the feed-publisher's producer, as `feed-publisher` runs it.
    let mut config = feed_publisher::config::Config::default();
    config.kafka.market_events_topic = d.market.clone();
    config.kafka.brokers = vec![d.broker.address.clone()];
    config.kafka.dead_letter_topic = format!("{}-dlq", d.market);
    config.producer.linger = wick_service::duration::Duration::from_millis(setting("WICK_BENCH_FEED_LINGER_MS", 1));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let feed_metrics = feed_publisher::metrics::Metrics::new();
    let client = feed_publisher::run::connect(&config).await?;
    let producer = feed_publisher::run::start_producer(&config, client, feed_metrics.clone(), clock.clone()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sampler = LagSampler::start(vec![aggregator_ops.clone()], Duration::from_secs(1));
    let (service_ticks, stack, m0) = (services.ticks(), stack_ticks(d.broker.pid), machine_ticks()?);
    let start = Instant::now();
    // The histograms as the warm-up ends: the breakdown covers what the latencies cover.
    let before = {
        let (feed_metrics, aggregator_ops, gateway_ops) = (feed_metrics.clone(), aggregator_ops.clone(), gateway_ops.clone());
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            Scrape::take(&feed_metrics, &aggregator_ops, &gateway_ops).await
        })
    };
    let mut next_id = vec![1u64; instruments];
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
            let k = (n % instruments as u64) as usize;
            n += 1;
            let id = next_id[k];
            next_id[k] += 1;
            sent[k][id as usize].store(at, Ordering::SeqCst);
            let price = wick_core::Decimal::new(6_000_000 + (n % 977) as i128, 2).context("price")?;
            let qty = wick_core::Decimal::new(1 + (n % 9_999) as i128, 5).context("quantity")?;
            let side = if n % 2 == 0 { TakerSide::Buy } else { TakerSide::Sell };
            batch.push(Trade::new(names[k].clone(), id, price, qty, side, now, now)?);
        }
        published = due;
        producer.publish_many(batch).await?;
    }
    let achieved = published as f64 / start.elapsed().as_secs_f64();
    producer.flush().await?;
    give_up.store((base.elapsed() + drain).as_nanos() as u64, Ordering::SeqCst);
    let mut samples = Vec::new();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut disconnects = Vec::new();
    for r in receivers {
        let (s, k, closed) = r.await?;
        samples.extend(s);
        for (kind, n) in k {
            *kinds.entry(kind).or_default() += n;
        }
        disconnects.extend(closed);
    }
    let span = start.elapsed().as_secs_f64();
    let m1 = machine_ticks()?;
    let after = Scrape::take(&feed_metrics, &aggregator_ops, &gateway_ops).await;
    let before = before.await?;
    let lag = sampler.finish().await;
    let _ = feed_publisher::run::finish(producer, Default::default()).await;
    let cpu = services.cpu_since(&service_ticks);
    let stack_cpu = stack_cpu_since(&stack, d.broker.pid);
    let rss = services.peak_rss();
    services.alive()?;
    let (market_records, candle_records) = d.records().await?;
    drop(services);
    d.remove(db).await;

    let warm = (start - base + warmup).as_nanos() as u64;
    let measured: usize =
        (0..instruments).map(|k| (1..=expected[k] as usize).filter(|&id| sent[k][id].load(Ordering::SeqCst) >= warm).count()).sum();
    let mut lat: Vec<u64> = samples.iter().filter(|(at, _)| *at >= warm).map(|(_, l)| *l).collect();
    let seen = lat.len();
    // Trades never pushed count as slower than any that were.
    lat.resize(measured.max(seen), u64::MAX);
    lat.sort_unstable();
    let q = |p: f64| -> Value {
        match lat.get(((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len().max(1)) - 1) {
            Some(&v) if v != u64::MAX => json!(v as f64 / 1e6),
            _ => Value::Null,
        }
    };
    let hops: Vec<Value> = HOPS
        .iter()
        .map(|(service, name, label, whose)| {
            let mut v = after.delta(&before, service, name, label);
            v["service"] = json!(service);
            v["hop"] = json!(label.split('"').nth(1).unwrap_or("receive_to_publish"));
            v["whose"] = json!(whose);
            v
        })
        .collect();
    let requests: Vec<Value> = REQUESTS
        .iter()
        .map(|(service, name)| {
            let mut v = after.delta(&before, service, name, "");
            v["service"] = json!(service);
            v["metric"] = json!(name);
            v
        })
        .collect();
    let p99_of = |whose: &[&str]| -> f64 {
        hops.iter().filter(|h| whose.contains(&h["whose"].as_str().unwrap_or(""))).map(|h| h["p99_ms"].as_f64().unwrap_or(f64::NAN)).sum()
    };
    Ok(json!({
        "rate": rate, "achieved_rate": achieved, "seconds": seconds, "warmup_seconds": warmup.as_secs(), "instruments": instruments,
        "trades": total, "trades_measured": measured, "trades_seen": seen, "drain_seconds": drain.as_secs(),
        "p50_ms": q(0.50), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": q(1.0),
        "hops": hops, "requests": requests,
        "wick_hops_p99_sum_ms": p99_of(&["Wick", "Wick + broker"]),
        "candle_events_per_trade": (metric_sum(&after.aggregator, "wick_ingest_candles_emitted_total")
            - metric_sum(&before.aggregator, "wick_ingest_candles_emitted_total"))
            / measured.max(1) as f64,
        "aggregator_fetches_per_partition_per_second": (metric_sum(&after.aggregator, "wick_ingest_poll_seconds_count")
            - metric_sum(&before.aggregator, "wick_ingest_poll_seconds_count"))
            / f64::from(MARKET_PARTITIONS)
            / (span - warmup.as_secs_f64()),
        "broker_hops_p99_sum_ms": p99_of(&["broker"]),
        "pushes": kinds, "disconnects": disconnects,
        "records": { "market_events": market_records, "candles_completed": candle_records },
        "lag": lag,
        "machine_busy_cores": (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64 * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        "span_seconds": span,
        "service_cpu_seconds": cpu, "stack_cpu_seconds": stack_cpu, "peak_rss_mib": rss,
    }))
}

/// The aggregator settings of the latency runs: (variable, value, default).
const LATENCY_OVERRIDES: [(&str, &str, &str); 5] = [
    ("WICK__AGGREGATION__UPDATE_THROTTLE", "5ms", "250ms"),
    ("WICK__AGGREGATION__TICK", "1ms", "50ms"),
    ("WICK__OUTPUT__LINGER", "1ms", "5ms"),
    ("WICK__CONSUMER__FETCH_MAX_WAIT", "5ms", "100ms"),
    ("WICK__CONSUMER__FETCH_MIN_BYTES", "1", "10240"),
];

/// The overrides in force: all of [`LATENCY_OVERRIDES`] but those named (by any part of the
/// variable) in `WICK_BENCH_PUSH_DEFAULTS`, for investigation.
fn latency_overrides() -> Vec<(&'static str, &'static str, &'static str)> {
    let defaults = std::env::var("WICK_BENCH_PUSH_DEFAULTS").unwrap_or_default();
    let keep = |name: &str| !defaults.split(',').any(|d| !d.trim().is_empty() && name.contains(d.trim()));
    LATENCY_OVERRIDES.iter().copied().filter(|(k, _, _)| keep(k)).collect()
}

/// Part 4: trade-to-push latency at every rate.
async fn latencies(db: &tokio_postgres::Client) -> Result<Value> {
    let instruments: usize = setting("WICK_BENCH_PUSH_INSTRUMENTS", 1000);
    let mut runs = Vec::new();
    for rate in list_setting("WICK_BENCH_PUSH_RATES", "1000,10000,20000,50000") {
        let run = latency(rate, instruments, db).await.unwrap_or_else(|e| {
            eprintln!("system bench: the latency run at {rate} trades/s failed: {e:#}");
            json!({"rate": rate, "error": format!("{e:#}")})
        });
        eprintln!("{run}");
        runs.push(run);
    }
    Ok(json!({
        "instruments": instruments,
        "aggregator_overrides": latency_overrides().iter().map(|(k, v, d)| json!({"setting": k, "value": v, "default": d})).collect::<Vec<_>>(),
        "feed_linger_ms": setting("WICK_BENCH_FEED_LINGER_MS", 1u64),
        "ring_defaults": aggregator_ring_defaults(),
        "wait_strategy_override": std::env::var("WICK_BENCH_WAIT").ok(),
        "runs": runs,
    }))
}

/// The count, p50, p99 and maximum of latencies in milliseconds.
fn latency_summary(ms: &mut [f64]) -> Value {
    json!({ "n": ms.len(), "p50_ms": quantile(ms, 0.5), "p99_ms": quantile(ms, 0.99), "max_ms": quantile(ms, 1.0) })
}

fn quantile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1]
}

/// One trade of a Binance trades CSV line (millisecond or microsecond times), as a row of the
/// naive table (tab-separated).
fn naive_row(line: &str, instrument: &str) -> Result<String> {
    let p: Vec<&str> = line.split(',').collect();
    let time: i64 = p.get(4).context("no time field")?.parse()?;
    let ts = if time >= 100_000_000_000_000 { Timestamp::from_micros(time)? } else { Timestamp::from_millis(time)? };
    Ok(format!("{instrument}\t{}\t{}\t{}\t{}\t{ts}\n", p[0], p[1], p[2], p[5] == "True"))
}

/// Part 5: the naive alternative against Wick over 30 days of trades; `dense` are the trades of
/// the 3-instrument scale run, as Binance CSV files.
async fn naive(dir: &Path, db: &tokio_postgres::Client, dense: &[PathBuf]) -> Result<Value> {
    // 30 days of one instrument, a trade every 2 s on average: 1.3M trades.
    let per: usize = setting("WICK_BENCH_MONTH_TRADES", 1_296_000);
    eprintln!("system bench: the naive alternative, {per} trades over 30 days");
    let files = write_trades(dir, "month", 1, per, 2000)?;
    let d = Deployment::new("naive").await?;
    let mut services = d.start(&[], 1).await?;
    let started = Instant::now();
    let mut feed = d.spawn(
        "feed-publisher",
        "feed-publisher",
        &["replay", files[0].to_str().unwrap()],
        &[("WICK__PRODUCER__COMPRESSION", "none".into())],
    )?;
    if !feed.child.wait()?.success() {
        bail!("feed-publisher replay failed");
    }
    if wait_stored(db, &d.schema, per as i64, Duration::from_secs(1800), &mut services).await? != per as i64 {
        bail!("Wick did not store the month (logs in {})", d.logs.display());
    }
    let wick_month_seconds = started.elapsed().as_secs_f64();
    // A second gateway on the same candles, with both caches off: every request is a cold one.
    let cold_http = format!("127.0.0.1:{}", wick_test_support::free_port()?);
    let cold_gateway = d.spawn(
        "query-gateway",
        "query-gateway without caches",
        &[],
        &[
            ("WICK__HTTP__LISTEN", cold_http.clone()),
            ("WICK__GRPC__LISTEN", format!("127.0.0.1:{}", wick_test_support::free_port()?)),
            ("WICK__L1__ENABLED", "false".into()),
            ("WICK__REDIS__ENABLED", "false".into()),
            ("WICK__LIMITS__PER_ADDRESS_RATE", "0".into()),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&cold_http).await.is_err() {
        if Instant::now() > deadline {
            bail!("the gateway without caches did not answer (logs in {})", d.logs.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
                chunk.push_str(&naive_row(line, &instrument)?);
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
    let (from, to) = (HISTORY_START_MS, HISTORY_START_MS + 30 * 86_400_000);
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
        // Warm: the same query again and again. Wick: to the deployment's gateway, whose L1
        // holds the range after the first answer; the naive path: the prepared statement over
        // one open connection. Cold: Wick: to a second gateway of the same deployment with L1 and
        // Redis off, so every request finds no cache and reads PostgreSQL through the gateway's
        // chunk loader; the naive path: a new connection per query (connect, prepare, execute),
        // so no session state or prepared plan is reused. Neither side empties PostgreSQL's
        // buffers or the OS page cache (that would mean restarting the shared database). Every
        // Wick request opens a fresh TCP connection, as a client's first request does.
        let cold_answer: Value = serde_json::from_str(&http_get(&cold_http, &path).await?)?;
        if cold_answer["candles"] != wick["candles"] {
            bail!("{interval}: the gateway without caches answered differently");
        }
        let wick_queries: usize = setting("WICK_BENCH_WICK_QUERIES", 200);
        let naive_queries: usize = setting("WICK_BENCH_NAIVE_QUERIES", 200);
        let mut timed = serde_json::Map::new();
        for (name, address) in [("wick_warm", &d.http), ("wick_cold", &cold_http)] {
            let mut ms = Vec::new();
            for _ in 0..wick_queries {
                let t = Instant::now();
                http_get(address, &path).await?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            timed.insert(name.into(), latency_summary(&mut ms));
        }
        eprintln!("system bench: naive {interval} queries, warm");
        let mut ms = Vec::new();
        for _ in 0..naive_queries {
            let t = Instant::now();
            db.query(&statement, &[&pg_interval, &instrument, &from, &to]).await?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        timed.insert("naive_warm".into(), latency_summary(&mut ms));
        eprintln!("system bench: naive {interval} queries, cold");
        let mut ms = Vec::new();
        for _ in 0..naive_queries {
            let t = Instant::now();
            let fresh = self::db().await?;
            let statement = fresh.prepare(&sql).await?;
            fresh.query(&statement, &[&pg_interval, &instrument, &from, &to]).await?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        timed.insert("naive_cold".into(), latency_summary(&mut ms));
        timed.insert("candles".into(), json!(naive_rows.len()));
        out.insert(interval.into(), Value::Object(timed));
    }
    drop(cold_gateway);
    drop(services);
    drop(feed);
    db.batch_execute(&format!("DROP TABLE {table}")).await?;
    d.remove(db).await;
    Ok(json!({
        "timescaledb": timescale,
        "bucket_function": if timescale { "time_bucket" } else { "date_bin" },
        "month_trades": per,
        "wick_month_seconds": wick_month_seconds,
        "wick_month_trades_per_second": per as f64 / wick_month_seconds,
        "dense_trades": dense_rows,
        "copy_dense_trades_per_second": dense_rows as f64 / dense_seconds,
        "copy_month_trades_per_second": month_rows as f64 / month_seconds,
        "queries": out,
    }))
}

const PARTS: [&str; 5] = ["scale", "idle", "floor", "latency", "naive"];

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/wick-bench/system.json"));
    for s in ["feed-publisher", "ingest-aggregator", "persistence-writer", "query-gateway"] {
        wick_test_support::service_binary(s)?;
    }
    let dir = out.parent().context("no parent")?.join("system-data");
    let db = db().await.context("the stack's database wick (run `cargo xtask stack up`)")?;
    let only: Option<Vec<String>> = std::env::var("WICK_BENCH_ONLY").ok().map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    if let Some(unknown) = only.iter().flatten().find(|p| !PARTS.contains(&p.as_str())) {
        bail!("WICK_BENCH_ONLY: unknown part {unknown:?}; parts are {PARTS:?}");
    }
    let wanted = |part: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));
    let started = Instant::now();
    let mut result = serde_json::Map::new();
    let mut timings = serde_json::Map::new();
    for part in PARTS.into_iter().filter(|p| wanted(p)) {
        // What the rest of the machine (other work on the same cores) keeps busy as the part starts.
        let background = busy_cores(Duration::from_secs(2)).await?;
        let t = Instant::now();
        let mut value = match part {
            "scale" => scale(&dir, &db).await?,
            "idle" => idle(&db).await?,
            "floor" => broker_floor().await?,
            "latency" => latencies(&db).await?,
            _ => {
                let trades: usize = setting("WICK_BENCH_SCALE_TRADES", 1_200_000);
                let dense = write_spread_csv(&dir, 3, trades, setting("WICK_BENCH_SCALE_SPAN_SECONDS", 600u64) * 1000)?;
                naive(&dir, &db, &dense).await?
            }
        };
        value["background_busy_cores"] = json!(background);
        eprintln!("system bench: {part} took {:.0} s (background {background:.2} cores busy)", t.elapsed().as_secs_f64());
        timings.insert(part.into(), json!(t.elapsed().as_secs_f64()));
        result.insert(part.into(), value);
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    result.insert("part_seconds".into(), Value::Object(timings));
    result.insert("private_broker".into(), json!(Broker::private()));
    result.insert("stack_broker_database_bytes".into(), json!(stack_broker_bytes()));
    result.insert("total_seconds".into(), json!(started.elapsed().as_secs_f64()));
    result.insert("cores".into(), json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)));
    result.insert(
        "cpu".into(),
        json!(cpu.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim()),
    );
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, serde_json::to_string_pretty(&Value::Object(result))?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
