//! Fault injection: the invariant of `DESIGN.md` under crashes and outages. Every drill runs the
//! four service binaries against a deployment of its own, each service kept running by a
//! supervisor (as Kubernetes would restart a crashed pod), while the drill injects its faults:
//! kill -9 of each service at random moments, repeated; a broker restart; Redis stopped (a single
//! node, and one node of a cluster); PostgreSQL stopped. Once the input is consumed, the stored
//! candles and the gateway's answers (every interval of every instrument over the whole history,
//! paged) must equal those of one clean pass over the same trades, and the clean pass must equal
//! the exact reference computed naively from the input files: nothing lost, nothing doubled. Every
//! stored candle must be in the Redis cache at the database's version; only after Redis lost what
//! it held may one be absent (the gateway's answers show it is still served). A table of the drills
//! and their outcomes is printed.
//!
//! Small by default (CI); `cargo xtask faults` runs it larger. Settings, from the environment:
//! `WICK_FAULTS_ROUNDS` (faults per kill drill, default 3), `WICK_FAULTS_TRADES` (trades per
//! instrument, default 3000), `WICK_FAULTS_PACE` (seconds the feed takes, default 10),
//! `WICK_FAULTS_DB_OUTAGE` (seconds PostgreSQL is stopped, default 30), `WICK_FAULTS_PARALLEL`
//! (drills at once, default 4), `WICK_FAULTS_SEED` (the random moments; printed),
//! `WICK_FAULTS_ONLY` (comma-separated parts of drill names: run only those). The settings can make
//! a run larger but never empty (at least one fault per drill, 100 trades, 2 s of feed, a
//! selection that matches a drill), and a drill whose faults did not all land fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex, Semaphore};
use wick_core::{Candle, Instrument, Interval, Timestamp};

const MARKET_PARTITIONS: i32 = 16;
const CANDLE_PARTITIONS: i32 = 4;
const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
/// 2024-03-10T00:00:00Z: the first trade.
const FIRST_MS: i64 = 1_710_028_800_000;
/// 2024-06-01T00:00:00Z: each instrument's last trade, published once the history is done. Its
/// event time moves every watermark past every candle of the history, so that all of them are
/// closed by event time alone (never by the clock): the final state is the same in every run.
const TERMINATOR_MS: i64 = 1_717_200_000_000;
/// Candles opening from here on hold only terminators: their `closed` flag follows the clock, so
/// they are counted but not compared.
const HISTORY_END_MS: i64 = 1_714_521_600_000; // 2024-05-01

/// How big the run is.
#[derive(Clone, Debug)]
struct Scale {
    rounds: usize,
    trades: usize,
    pace: Duration,
    db_outage: Duration,
    parallel: usize,
    seed: u64,
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Scale {
    fn from_env() -> Scale {
        let default_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        let scale = Scale {
            rounds: setting("WICK_FAULTS_ROUNDS", 3),
            trades: setting("WICK_FAULTS_TRADES", 3000),
            pace: Duration::from_secs_f64(setting("WICK_FAULTS_PACE", 10.0)),
            db_outage: Duration::from_secs_f64(setting("WICK_FAULTS_DB_OUTAGE", 30.0)),
            parallel: setting("WICK_FAULTS_PARALLEL", 4),
            seed: setting("WICK_FAULTS_SEED", default_seed),
        };
        // The settings may make a run larger, never empty: a drill without faults, trades or
        // time proves nothing.
        assert!(scale.rounds >= 1, "WICK_FAULTS_ROUNDS must be at least 1 (a kill drill without kills proves nothing)");
        assert!(scale.trades >= 100, "WICK_FAULTS_TRADES must be at least 100 per instrument");
        assert!(scale.pace >= Duration::from_secs(2), "WICK_FAULTS_PACE must be at least 2 seconds (faults land while trades flow)");
        assert!(scale.parallel >= 1, "WICK_FAULTS_PARALLEL must be at least 1");
        scale
    }
}

/// xorshift64: the drills' random moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn duration_between(&mut self, from: Duration, to: Duration) -> Duration {
        let span = to.saturating_sub(from).as_millis() as u64;
        from + Duration::from_millis(self.below(span + 1))
    }
}

/// The input: Binance public-data trade files (one per instrument, about 45 s apart on average)
/// and the terminator files.
struct Input {
    history: Vec<PathBuf>,
    terminators: Vec<PathBuf>,
    trades: usize,
    /// `--speed` that makes the history take `Scale::pace`.
    speed: f64,
}

fn write_input(dir: &Path, per_instrument: usize, pace: Duration) -> Input {
    std::fs::create_dir_all(dir).unwrap();
    let (mut history, mut terminators) = (Vec::new(), Vec::new());
    let mut span_ms = 0;
    for (k, symbol) in SYMBOLS.iter().enumerate() {
        let path = dir.join(format!("{symbol}-trades-2024-03.csv"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut t = FIRST_MS + k as i64 * 13;
        let mut seed = 0x2545_f491_4f6c_dd1du64 ^ (k as u64 + 1);
        for id in 1..=per_instrument as u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            t += 1 + (seed % 90_000) as i64;
            let price = format!("{}.{:02}", [60_000, 3_000, 150][k] + (seed >> 20) % 90, (seed >> 30) % 100);
            let qty = format!("{}.{:05}", (seed >> 56) % 3, 1 + (seed >> 40) % 99_999);
            let maker = if (seed >> 50) % 2 == 0 { "True" } else { "False" };
            writeln!(out, "{id},{price},{qty},0,{t},{maker},True").unwrap();
        }
        assert!(t < HISTORY_END_MS, "the history ends before its last candles would reach the terminators");
        span_ms += t - FIRST_MS;
        history.push(path);
        let path = dir.join(format!("{symbol}-trades-2024-06.csv"));
        std::fs::write(&path, format!("{},1.00,0.00001,0,{TERMINATOR_MS},True,True\n", per_instrument + 1)).unwrap();
        terminators.push(path);
    }
    let speed = span_ms as f64 / 1000.0 / pace.as_secs_f64().max(0.1);
    Input { history, terminators, trades: SYMBOLS.len() * (per_instrument + 1), speed }
}

fn instrument_of(symbol: &str) -> String {
    format!("BINANCE:{}-{}", &symbol[..symbol.len() - 4], &symbol[symbol.len() - 4..])
}

/// Where one deployment's broker, database and Redis are.
struct Backends {
    broker: String,
    /// tokio-postgres configuration (key=value or URL).
    database: String,
    schema: String,
    redis_url: String,
    prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    Feed,
    Aggregator,
    Writer,
    Gateway,
}

impl Service {
    const ALL: [Service; 4] = [Service::Feed, Service::Aggregator, Service::Writer, Service::Gateway];

    fn binary(self) -> &'static str {
        match self {
            Service::Feed => "feed-publisher",
            Service::Aggregator => "ingest-aggregator",
            Service::Writer => "persistence-writer",
            Service::Gateway => "query-gateway",
        }
    }
}

/// One service kept running by a supervisor task: restarted 200 ms after any exit, except that
/// the feed's supervisor stops once the history and the terminators are published.
struct Supervised {
    pid: Arc<AtomicU32>,
    starts: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    /// SIGKILL to the running process, if one runs; true when one did.
    fn kill_9(&self) -> bool {
        let pid = self.pid.load(Ordering::SeqCst);
        pid != 0 && std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().is_ok_and(|s| s.success())
    }

    /// SIGKILL once a process runs, waiting up to `patience` for one (the supervisor starts a
    /// killed service again within 200 ms); false when none ran, or the service finished for good.
    async fn kill_9_when_running(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            if self.kill_9() {
                return true;
            }
            if Instant::now() >= deadline || self.done.load(Ordering::SeqCst) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shut_down(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// One deployment: its backends, its topics and its four supervised services.
struct Deployment {
    name: String,
    backends: Backends,
    market: String,
    candles: String,
    http: String,
    /// Reconnected after the PostgreSQL drill's outage.
    db: Mutex<tokio_postgres::Client>,
    services: BTreeMap<Service, Supervised>,
    logs: PathBuf,
}

async fn connect_db(config: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) =
        tokio_postgres::connect(config, tokio_postgres::NoTls).await.map_err(|e| format!("PostgreSQL at {config}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

impl Deployment {
    async fn start(name: &str, backends: Backends, input: &Arc<Input>) -> Deployment {
        let client = wick_test_support::kafka_at(&backends.broker).await;
        let market = wick_test_support::unique_name("faults-market");
        let candles = wick_test_support::unique_name("faults-candles");
        let specs = [
            wick_kafka::TopicSpec { name: market.clone(), partitions: MARKET_PARTITIONS },
            wick_kafka::TopicSpec { name: candles.clone(), partitions: CANDLE_PARTITIONS },
            // The services' default dead-letter partition count.
            wick_kafka::TopicSpec { name: format!("{market}-dlq"), partitions: 4 },
            wick_kafka::TopicSpec { name: format!("{candles}-dlq"), partitions: 4 },
        ];
        wick_kafka::ensure_topics(&client, &backends.broker, &specs).await.unwrap();
        let db = connect_db(&backends.database).await.unwrap();
        db.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", backends.schema)).await.unwrap();
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults").join(wick_test_support::unique_name(&name.replace(' ', "-")));
        std::fs::create_dir_all(&logs).unwrap();
        let http = format!("127.0.0.1:{}", wick_test_support::free_port().unwrap());
        let grpc = format!("127.0.0.1:{}", wick_test_support::free_port().unwrap());
        let mut d = Deployment {
            name: name.to_owned(),
            backends,
            market,
            candles,
            http: http.clone(),
            db: Mutex::new(db),
            services: BTreeMap::new(),
            logs,
        };
        for service in Service::ALL {
            let supervised = d.supervise(service, input, &grpc);
            d.services.insert(service, supervised);
        }
        d
    }

    /// The environment of `service`, as a deployment configures it.
    fn command(&self, service: Service, grpc: &str) -> tokio::process::Command {
        let b = &self.backends;
        let mut c = tokio::process::Command::new(wick_test_support::service_binary(service.binary()).unwrap());
        c.env("RUST_LOG", "warn")
            .env("WICK__KAFKA__BROKERS", &b.broker)
            .env("WICK__OPS__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.logs.join(format!("{}.log", service.binary()))).unwrap();
        c.stderr(Stdio::from(log));
        match service {
            Service::Feed => {
                c.env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &self.market)
                    .env("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.market));
            }
            Service::Aggregator => {
                c.env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &self.market)
                    .env("WICK__KAFKA__MARKET_EVENTS_PARTITIONS", MARKET_PARTITIONS.to_string())
                    .env("WICK__KAFKA__CANDLES_TOPIC", &self.candles)
                    .env("WICK__KAFKA__CANDLES_PARTITIONS", CANDLE_PARTITIONS.to_string())
                    .env("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.market))
                    .env("WICK__CONSUMER__AUTO_OFFSET_RESET", "earliest")
                    .env("WICK__CONSUMER__FETCH_MAX_WAIT", "50ms")
                    .env("WICK__CHECKPOINT__DATABASE_URL", &b.database)
                    .env("WICK__CHECKPOINT__SCHEMA", &b.schema)
                    .env("WICK__CHECKPOINT__INTERVAL", "300ms");
            }
            Service::Writer => {
                c.env("WICK__KAFKA__CANDLES_TOPIC", &self.candles)
                    .env("WICK__KAFKA__CANDLES_PARTITIONS", CANDLE_PARTITIONS.to_string())
                    .env("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.candles))
                    .env("WICK__KAFKA__FETCH_MAX_WAIT", "50ms")
                    .env("WICK__DATABASE__URL", &b.database)
                    .env("WICK__DATABASE__SCHEMA", &b.schema)
                    .env("WICK__DATABASE__MAX_BACKOFF", "1s")
                    .env("WICK__REDIS__URL", &b.redis_url)
                    .env("WICK__REDIS__KEY_PREFIX", &b.prefix);
            }
            Service::Gateway => {
                c.env("WICK__HTTP__LISTEN", &self.http)
                    .env("WICK__GRPC__LISTEN", grpc)
                    .env("WICK__KAFKA__CANDLES_TOPIC", &self.candles)
                    .env("WICK__KAFKA__CANDLES_PARTITIONS", CANDLE_PARTITIONS.to_string())
                    .env("WICK__KAFKA__FETCH_MAX_WAIT", "50ms")
                    .env("WICK__DATABASE__URL", &b.database)
                    .env("WICK__DATABASE__SCHEMA", &b.schema)
                    .env("WICK__REDIS__URL", &b.redis_url)
                    .env("WICK__REDIS__KEY_PREFIX", &b.prefix)
                    .env("WICK__LIMITS__PER_ADDRESS_RATE", "0");
            }
        }
        c
    }

    fn supervise(&self, service: Service, input: &Arc<Input>, grpc: &str) -> Supervised {
        let pid = Arc::new(AtomicU32::new(0));
        let starts = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = watch::channel(false);
        // The feed replays the history paced, then the terminators at full speed; each from the
        // start again after a crash (Binance ids make the re-sent trades duplicates).
        let mut runs: Vec<tokio::process::Command> = Vec::new();
        if service == Service::Feed {
            let mut history = self.command(service, grpc);
            history.arg("replay").args(&input.history).args(["--speed", &format!("{:.3}", input.speed)]);
            let mut terminators = self.command(service, grpc);
            terminators.arg("replay").args(&input.terminators);
            runs.push(history);
            runs.push(terminators);
        } else {
            runs.push(self.command(service, grpc));
        }
        let (pid2, starts2, done2) = (pid.clone(), starts.clone(), done.clone());
        let name = format!("{} {}", self.name, service.binary());
        let task = tokio::spawn(async move {
            for mut run in runs {
                loop {
                    if *stopped.borrow() {
                        return;
                    }
                    let mut child = run.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
                    starts2.fetch_add(1, Ordering::SeqCst);
                    pid2.store(child.id().unwrap_or(0), Ordering::SeqCst);
                    let status = tokio::select! {
                        status = child.wait() => status.unwrap(),
                        _ = stopped.changed() => {
                            // The end of the drill: a clean stop (SIGTERM), then SIGKILL if slow.
                            if let Some(id) = child.id() {
                                let _ = std::process::Command::new("kill").args(["-TERM", &id.to_string()]).status();
                            }
                            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                                let _ = child.kill().await;
                            }
                            return;
                        }
                    };
                    pid2.store(0, Ordering::SeqCst);
                    if status.success() && service == Service::Feed {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            done2.store(true, Ordering::SeqCst);
        });
        Supervised { pid, starts, done, stop, task }
    }

    /// How often each service was started again, as `feed/aggregator/writer/gateway`.
    fn restarts(&self) -> String {
        Service::ALL
            .iter()
            .map(|s| self.service(*s).starts.load(Ordering::SeqCst).saturating_sub(if *s == Service::Feed { 2 } else { 1 }))
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn service(&self, s: Service) -> &Supervised {
        &self.services[&s]
    }

    /// Runs `sql` on the deployment's database, reconnecting first when the connection was lost.
    async fn query(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, String> {
        let mut db = self.db.lock().await;
        if db.is_closed() {
            *db = connect_db(&self.backends.database).await?;
        }
        db.query(sql, params).await.map_err(|e| format!("{e}"))
    }

    /// Waits until every trade is stored in every interval, every candle of the history is closed,
    /// and the cache is as current as the database.
    async fn settle(&self, trades: usize, timeout: Duration) -> Result<(), String> {
        let schema = &self.backends.schema;
        let counts = format!("SELECT interval, sum(trade_count)::int8 FROM {schema}.candles GROUP BY interval");
        let open =
            format!("SELECT count(*) FROM {schema}.candles WHERE NOT closed AND open_time < to_timestamp({HISTORY_END_MS} / 1000.0)");
        let cache = format!(
            "SELECT count(*) > 0 AND coalesce(bool_and(cache_next_offset = next_offset), false) FROM {schema}.writer_offsets WHERE topic = $1"
        );
        let feed = self.service(Service::Feed);
        let deadline = Instant::now() + timeout;
        loop {
            if feed.done.load(Ordering::SeqCst) {
                let stored =
                    self.query(&counts, &[]).await.map(|rows| rows.len() == 16 && rows.iter().all(|r| r.get::<_, i64>(1) == trades as i64));
                let closed = self.query(&open, &[]).await.map(|rows| rows[0].get::<_, i64>(0) == 0);
                let cached = self.query(&cache, &[&self.candles]).await.map(|rows| rows[0].get::<_, bool>(0));
                if stored.unwrap_or(false) && closed.unwrap_or(false) && cached.unwrap_or(false) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let fed = if feed.done.load(Ordering::SeqCst) { "fed" } else { "still feeding" };
                let offsets = format!(
                    "SELECT string_agg(format('p%s %s/%s', partition, cache_next_offset, next_offset), ', ' ORDER BY partition) \
                     FROM {schema}.writer_offsets WHERE topic = $1"
                );
                let offsets = self.query(&offsets, &[&self.candles]).await.map(|r| r[0].get::<_, Option<String>>(0));
                let counts = self.query(&counts, &[]).await.map(|rows| rows.iter().map(|r| r.get::<_, i64>(1)).collect::<Vec<_>>());
                let open = self.query(&open, &[]).await.map(|r| r[0].get::<_, i64>(0));
                return Err(format!(
                    "not settled after {timeout:?}: {fed}; trades per interval {counts:?} of {trades}; open history candles {open:?}; \
                     writer offsets cached/committed {offsets:?} (logs: {})",
                    self.logs.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every stored candle of the history, as the server prints it.
    async fn rows(&self) -> Result<Vec<String>, String> {
        let sql = format!(
            "SELECT concat_ws('|', instrument, interval, (extract(epoch from open_time) * 1000)::int8, open, high, low, close, volume, \
             quote_volume, taker_buy_volume, taker_buy_quote_volume, trade_count, first_trade_id, last_trade_id, \
             (extract(epoch from first_trade_time) * 1000000)::int8, (extract(epoch from last_trade_time) * 1000000)::int8, closed, version) \
             FROM {}.candles WHERE open_time < to_timestamp({HISTORY_END_MS} / 1000.0) ORDER BY instrument, interval, open_time",
            self.backends.schema
        );
        Ok(self.query(&sql, &[]).await?.iter().map(|r| r.get(0)).collect())
    }

    /// The gateway's answer for every interval of every instrument over the whole history, paged
    /// with `next_start` (1000 candles a page): the candles served, by `instrument interval`.
    async fn answers(&self) -> Result<BTreeMap<String, Vec<serde_json::Value>>, String> {
        let mut out = BTreeMap::new();
        for symbol in SYMBOLS {
            for interval in Interval::ALL {
                let instrument = instrument_of(symbol);
                // From 0: the candles of the longer intervals open before the first trade.
                let (mut start, mut candles) = (0, Vec::new());
                loop {
                    let path = format!(
                        "/api/v1/candles?instrument={instrument}&interval={interval}&start={start}&end={}&limit=1000",
                        HISTORY_END_MS - 1
                    );
                    let body = http_get(&self.http, &path).await?;
                    let page: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
                    let served = page["candles"].as_array().ok_or_else(|| format!("{path}: no candles in {body}"))?;
                    candles.extend(served.iter().cloned());
                    match page["next_start"].as_i64() {
                        Some(next) if next > start => start = next,
                        Some(next) => return Err(format!("{path}: next_start {next} does not move on from {start}")),
                        None => break,
                    }
                }
                out.insert(format!("{instrument} {interval}"), candles);
            }
        }
        Ok(out)
    }

    /// Every stored candle must be in the cache at the database's version; with `redis_restarted`
    /// (Redis lost what it held) a candle may be absent, never stale, and the gateway's answers
    /// (compared separately) show it is still served from the database. How many it holds.
    async fn cache_check(&self, rows: &[String], redis_restarted: bool) -> Result<usize, String> {
        let cache = wick_cache::L2Cache::connect(&wick_cache::CacheSettings {
            url: self.backends.redis_url.clone(),
            prefix: self.backends.prefix.clone(),
            ttl: Duration::from_secs(3600),
            command_timeout: Duration::from_secs(5),
        })
        .map_err(|e| e.to_string())?;
        cache.wait_connected(Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
        let mut chunks: BTreeMap<(String, Interval, i64), BTreeMap<i64, u64>> = BTreeMap::new();
        let (mut held, mut stale, mut absent) = (0, Vec::new(), Vec::new());
        for row in rows {
            let f: Vec<&str> = row.split('|').collect();
            let (instrument, interval, open_ms, version) = (
                Instrument::new(f[0]).unwrap(),
                f[1].parse::<Interval>().unwrap(),
                f[2].parse::<i64>().unwrap(),
                f[17].parse::<u64>().unwrap(),
            );
            let chunk = wick_cache::chunk_of(interval, Timestamp::from_millis(open_ms).unwrap());
            let key = (f[0].to_owned(), interval, chunk);
            if !chunks.contains_key(&key) {
                let (_, candles) = cache.chunk(&instrument, interval, chunk).await.map_err(|e| e.to_string())?;
                chunks.insert(key.clone(), candles.iter().map(|c: &Candle| (c.open_time().as_millis(), c.version())).collect());
            }
            match chunks[&key].get(&open_ms) {
                Some(v) if *v == version => held += 1,
                Some(v) => stale.push(format!("{} {} {open_ms}: cache v{v}, database v{version}", f[0], f[1])),
                None => absent.push(format!("{} {} {open_ms}", f[0], f[1])),
            }
        }
        if !stale.is_empty() {
            return Err(format!("{} cached candles differ from the database, e.g. {:?}", stale.len(), &stale[..stale.len().min(3)]));
        }
        if !redis_restarted && !absent.is_empty() {
            return Err(format!(
                "{} stored candles are not in the cache (and Redis never restarted), e.g. {:?}",
                absent.len(),
                &absent[..absent.len().min(3)]
            ));
        }
        Ok(held)
    }

    async fn shut_down(self) {
        for (_, s) in self.services {
            s.shut_down().await;
        }
        let _ = self.db.lock().await.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.backends.schema)).await;
    }
}

async fn http_get(address: &str, path: &str) -> Result<String, String> {
    let url = format!("http://{address}{path}");
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-S", "--fail-with-body", "--max-time", "20", &url])
        .output()
        .await
        .map_err(|e| format!("curl: {e}"))?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(body)
    } else {
        Err(format!("GET {path}: {} {body}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// What one clean pass stored and served.
struct Clean {
    rows: Vec<String>,
    answers: BTreeMap<String, Vec<serde_json::Value>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drill {
    KillFeed,
    KillAggregator,
    KillWriter,
    KillGateway,
    KillAny,
    BrokerRestart,
    RedisStopped,
    RedisClusterNode,
    PostgresStopped,
}

impl Drill {
    const ALL: [Drill; 9] = [
        Drill::KillFeed,
        Drill::KillAggregator,
        Drill::KillWriter,
        Drill::KillGateway,
        Drill::KillAny,
        Drill::BrokerRestart,
        Drill::RedisStopped,
        Drill::RedisClusterNode,
        Drill::PostgresStopped,
    ];

    fn name(self) -> &'static str {
        match self {
            Drill::KillFeed => "kill -9 feed-publisher",
            Drill::KillAggregator => "kill -9 ingest-aggregator",
            Drill::KillWriter => "kill -9 persistence-writer",
            Drill::KillGateway => "kill -9 query-gateway",
            Drill::KillAny => "kill -9 any service",
            Drill::BrokerRestart => "broker kill -9 and restart",
            Drill::RedisStopped => "Redis (single node) stopped",
            Drill::RedisClusterNode => "Redis cluster: a node stopped",
            Drill::PostgresStopped => "PostgreSQL stopped",
        }
    }
}

/// The private servers a drill may take down; dropped (stopped) at the drill's end.
#[derive(Default)]
struct Private {
    broker: Option<wick_test_support::BrokerProcess>,
    postgres: Option<wick_test_support::PostgresProcess>,
    redis: Option<wick_test_support::RedisProcess>,
    cluster: Option<wick_test_support::RedisClusterProcess>,
}

/// The stack's servers, or private ones for the drill that stops them.
async fn backends(drill: Option<Drill>, private: &mut Private) -> Backends {
    let mut b = Backends {
        broker: wick_test_support::broker_address(),
        database: wick_test_support::postgres_config(),
        schema: wick_test_support::unique_ident("wick_faults"),
        redis_url: format!("redis://{}", wick_test_support::redis_address()),
        prefix: wick_test_support::redis_prefix().trim_end_matches(':').to_owned(),
    };
    match drill {
        Some(Drill::BrokerRestart) => {
            let broker = wick_test_support::BrokerProcess::start(wick_test_support::StorageEngine::Sqlite).unwrap();
            b.broker = broker.address();
            private.broker = Some(broker);
        }
        Some(Drill::PostgresStopped) => {
            let pg = tokio::task::spawn_blocking(wick_test_support::PostgresProcess::start).await.unwrap().unwrap();
            b.database = pg.url("postgres");
            private.postgres = Some(pg);
        }
        Some(Drill::RedisStopped) => {
            let redis = wick_test_support::RedisProcess::start().unwrap();
            b.redis_url = redis.url();
            private.redis = Some(redis);
        }
        Some(Drill::RedisClusterNode) => {
            let cluster = tokio::task::spawn_blocking(wick_test_support::RedisClusterProcess::start).await.unwrap().unwrap();
            b.redis_url = cluster.url();
            private.cluster = Some(cluster);
        }
        _ => {}
    }
    b
}

/// A line of the summary table.
struct Outcome {
    drill: String,
    faults: String,
    restarts: String,
    seconds: f64,
    candles: usize,
    answers: usize,
    cached: usize,
    result: Result<(), String>,
}

/// Injects the drill's faults, then checks the invariant against the clean pass.
async fn run_drill(drill: Drill, scale: Scale, input: Arc<Input>, clean: watch::Receiver<Option<Arc<Clean>>>, seed: u64) -> Outcome {
    let started = Instant::now();
    let mut private = Private::default();
    let d = Deployment::start(drill.name(), backends(Some(drill), &mut private).await, &input).await;
    let mut rng = Rng(seed);
    let mut faults = Vec::new();
    // Fault moments: random, within the time the feed takes and a little after, so that most land
    // while trades flow and some while the pipeline drains.
    // The feed runs out after its last replay: its kills fall while it replays.
    let window = if drill == Drill::KillFeed { scale.pace } else { scale.pace + Duration::from_secs(2) };
    let rounds = match drill {
        Drill::BrokerRestart | Drill::RedisStopped | Drill::RedisClusterNode => 2,
        Drill::PostgresStopped => 1,
        _ => scale.rounds,
    };
    let mut moments: Vec<Duration> = (0..rounds).map(|_| rng.duration_between(Duration::from_millis(700), window)).collect();
    moments.sort();
    let outage = Duration::from_secs(4);
    for at in moments {
        let now = started.elapsed();
        if at > now {
            tokio::time::sleep(at - now).await;
        }
        let t = format!("{:.1}s", started.elapsed().as_secs_f64());
        match drill {
            Drill::KillFeed | Drill::KillAggregator | Drill::KillWriter | Drill::KillGateway | Drill::KillAny => {
                let victim = match drill {
                    Drill::KillFeed => Service::Feed,
                    Drill::KillAggregator => Service::Aggregator,
                    Drill::KillWriter => Service::Writer,
                    Drill::KillGateway => Service::Gateway,
                    _ => Service::ALL[rng.below(4) as usize],
                };
                if d.service(victim).kill_9_when_running(Duration::from_secs(5)).await {
                    faults.push(format!("{} at {t}", victim.binary()));
                }
            }
            Drill::BrokerRestart => {
                let mut broker = private.broker.take().unwrap();
                let broker = tokio::task::spawn_blocking(move || {
                    broker.restart().unwrap();
                    broker
                })
                .await
                .unwrap();
                private.broker = Some(broker);
                faults.push(format!("broker at {t}"));
            }
            Drill::RedisStopped => {
                private.redis.as_mut().unwrap().stop();
                tokio::time::sleep(outage).await;
                private.redis.as_mut().unwrap().start_again().unwrap();
                faults.push(format!("Redis {}s at {t}", outage.as_secs()));
            }
            Drill::RedisClusterNode => {
                let node = rng.below(3) as usize;
                let mut cluster = private.cluster.take().unwrap();
                cluster.kill_node(node);
                tokio::time::sleep(outage).await;
                let cluster = tokio::task::spawn_blocking(move || {
                    cluster.restart_node(node).unwrap();
                    cluster
                })
                .await
                .unwrap();
                private.cluster = Some(cluster);
                faults.push(format!("node {node} {}s at {t}", outage.as_secs()));
            }
            Drill::PostgresStopped => {
                let pg = private.postgres.take().unwrap();
                pg.stop().unwrap();
                tokio::time::sleep(scale.db_outage).await;
                let pg = tokio::task::spawn_blocking(move || {
                    pg.start_again().unwrap();
                    pg
                })
                .await
                .unwrap();
                private.postgres = Some(pg);
                faults.push(format!("{}s at {t}", scale.db_outage.as_secs()));
            }
        }
    }
    // Every planned fault must have landed, or the drill proved less than it claims.
    let redis_restarted = matches!(drill, Drill::RedisStopped | Drill::RedisClusterNode);
    let result = match check(&d, &input, clean, redis_restarted).await {
        Ok(_) if faults.len() < rounds => Err(format!("only {} of {rounds} faults landed", faults.len())),
        other => other,
    };
    let restarts = d.restarts();
    let (candles, answers, cached, result) = match result {
        Ok((c, a, h)) => (c, a, h, Ok(())),
        Err(e) => (0, 0, 0, Err(e)),
    };
    d.shut_down().await;
    drop(private);
    Outcome {
        drill: drill.name().to_owned(),
        faults: if faults.is_empty() { "none landed".into() } else { faults.join(", ") },
        restarts,
        seconds: started.elapsed().as_secs_f64(),
        candles,
        answers,
        cached,
        result,
    }
}

/// The invariant: stored candles, cached candles and the gateway's answers equal the clean pass.
async fn check(
    d: &Deployment,
    input: &Input,
    mut clean: watch::Receiver<Option<Arc<Clean>>>,
    redis_restarted: bool,
) -> Result<(usize, usize, usize), String> {
    d.settle(input.trades, Duration::from_secs(300)).await?;
    let clean = clean.wait_for(Option::is_some).await.map_err(|_| "the clean pass failed".to_owned())?.clone().unwrap();
    let rows = d.rows().await?;
    if rows != clean.rows {
        let missing = clean.rows.iter().filter(|r| !rows.contains(r)).take(3).collect::<Vec<_>>();
        let extra = rows.iter().filter(|r| !clean.rows.contains(r)).take(3).collect::<Vec<_>>();
        return Err(format!(
            "database: {} rows, the clean pass {}; not in the clean pass: {extra:?}; missing: {missing:?}",
            rows.len(),
            clean.rows.len()
        ));
    }
    let cached = d.cache_check(&rows, redis_restarted).await?;
    // The gateway may still be applying the last records it read: equal within a minute.
    let mut last: String;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match d.answers().await {
            Ok(answers) if answers == clean.answers => return Ok((rows.len(), answers.values().map(Vec::len).sum(), cached)),
            Ok(answers) => {
                let (series, _) = answers.iter().find(|(p, served)| clean.answers.get(*p) != Some(served)).unwrap();
                last = format!("the gateway's answers for {series} differ from the clean pass's");
            }
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The exact candles of the history, computed naively from the input files: every trade applied
/// to its candle of every interval.
fn reference(input: &Input) -> BTreeMap<(String, Interval, i64), Candle> {
    let mut out: BTreeMap<(String, Interval, i64), Candle> = BTreeMap::new();
    for path in &input.history {
        let instrument = feed_publisher::replay::instrument_from_file_name(path).unwrap();
        let received = Timestamp::from_millis(FIRST_MS).unwrap();
        for (n, line) in std::fs::read_to_string(path).unwrap().lines().enumerate() {
            let format = feed_publisher::replay::ReplayFormat::BinanceTrades;
            let Some(t) = feed_publisher::replay::parse_line(format, line, n == 0, &instrument, received).unwrap() else { continue };
            for interval in Interval::ALL {
                let key = (t.instrument().to_string(), interval, interval.bucket_start(t.event_time()).as_millis());
                match out.get_mut(&key) {
                    Some(c) => c.apply(&t).unwrap(),
                    None => {
                        out.insert(key, Candle::from_trade(interval, &t).unwrap());
                    }
                }
            }
        }
    }
    out
}

/// The gateway's answers equal the reference: the same candles, each closed and with every field
/// equal (the version, which counts revisions, aside).
fn equals_reference(
    answers: &BTreeMap<String, Vec<serde_json::Value>>,
    want: &BTreeMap<(String, Interval, i64), Candle>,
) -> Result<(), String> {
    let without_state = |mut v: serde_json::Value| {
        let o = v.as_object_mut().unwrap();
        o.remove("closed");
        o.remove("version");
        v
    };
    let mut compared = 0;
    for ((instrument, interval, open), candle) in want.range(..) {
        if *open >= HISTORY_END_MS {
            continue;
        }
        let served = answers.get(&format!("{instrument} {interval}")).ok_or_else(|| format!("no answers for {instrument} {interval}"))?;
        let Some(got) = served.iter().find(|c| c["open_time"].as_i64() == Some(*open)) else {
            return Err(format!("the clean pass does not serve the reference candle {instrument} {interval} {open}"));
        };
        if got["closed"] != serde_json::Value::Bool(true) {
            return Err(format!("the clean pass serves an open history candle: {got}"));
        }
        let expected: serde_json::Value = serde_json::from_str(&query_gateway::json::candle(candle)).unwrap();
        if without_state(got.clone()) != without_state(expected.clone()) {
            return Err(format!("the clean pass differs from the exact reference: served {got}, reference {expected}"));
        }
        compared += 1;
    }
    let served: usize = answers.values().map(Vec::len).sum();
    if served != compared {
        return Err(format!("the clean pass serves {served} history candles, the reference has {compared}"));
    }
    Ok(())
}

async fn clean_pass(input: Arc<Input>) -> Result<(Clean, Outcome), String> {
    let started = Instant::now();
    let mut private = Private::default();
    let d = Deployment::start("clean pass", backends(None, &mut private).await, &input).await;
    let result = async {
        d.settle(input.trades, Duration::from_secs(300)).await?;
        let rows = d.rows().await?;
        let cached = d.cache_check(&rows, false).await?;
        let answers = d.answers().await?;
        // A deterministic bug would make every pass equal and wrong: the clean pass must also
        // equal the exact reference.
        equals_reference(&answers, &reference(&input))?;
        Ok::<_, String>((rows, answers, cached))
    }
    .await;
    let restarts = d.restarts();
    d.shut_down().await;
    let (rows, answers, cached) = result?;
    // A clean pass restarts nothing: a service that exited on its own would be a finding.
    if restarts != "0/0/0/0" {
        return Err(format!("a service of the clean pass exited and was restarted: {restarts} (feed/aggregator/writer/gateway)"));
    }
    let outcome = Outcome {
        drill: "clean pass (the baseline)".into(),
        faults: "none".into(),
        restarts,
        seconds: started.elapsed().as_secs_f64(),
        candles: rows.len(),
        answers: answers.values().map(Vec::len).sum(),
        cached,
        result: Ok(()),
    };
    Ok((Clean { rows, answers }, outcome))
}

fn table(scale: &Scale, input: &Input, outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nFault-injection drills: {} trades ({} instruments, {} s of feed), {} faults per kill drill, seed {} (WICK_FAULTS_SEED)\n",
        input.trades,
        SYMBOLS.len(),
        scale.pace.as_secs_f64(),
        scale.rounds,
        scale.seed
    );
    let _ = writeln!(
        s,
        "| drill | faults injected | restarts feed/agg/writer/gw | s | candles equal | answers equal | cached equal | outcome |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---|");
    for o in outcomes {
        let result = match &o.result {
            Ok(()) => "ok: equals the clean pass".to_owned(),
            Err(e) => format!("FAILED: {e}"),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {result} |",
            o.drill, o.faults, o.restarts, o.seconds, o.candles, o.answers, o.cached
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_every_drill_the_candles_equal_one_clean_pass() {
    let scale = Scale::from_env();
    let dir = std::env::temp_dir().join(wick_test_support::unique_name("wick-faults"));
    let input = Arc::new(write_input(&dir, scale.trades, scale.pace));
    // Build the binaries before any clock starts.
    for s in Service::ALL {
        wick_test_support::service_binary(s.binary()).unwrap();
    }
    let (clean_tx, clean_rx) = watch::channel(None);
    let permits = Arc::new(Semaphore::new(scale.parallel.max(1)));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    // The clean pass takes its place before any drill is spawned: drills wait for its result while
    // holding their own places, so a clean pass left without one would wait for them forever.
    let clean_permit = permits.clone().acquire_owned().await.unwrap();
    let clean = {
        let (input, outcomes) = (input.clone(), outcomes.clone());
        tokio::spawn(async move {
            let _permit = clean_permit;
            let started = Instant::now();
            let result = clean_pass(input).await;
            eprintln!(
                "faults: clean pass {} after {:.0} s",
                if result.is_ok() { "done" } else { "FAILED" },
                started.elapsed().as_secs_f64()
            );
            match result {
                Ok((clean, outcome)) => {
                    outcomes.lock().await.insert(0, outcome);
                    let _ = clean_tx.send(Some(Arc::new(clean)));
                    Ok(())
                }
                // Dropping the sender tells the drills.
                Err(e) => Err(e),
            }
        })
    };
    let mut seeds = Rng(scale.seed);
    let mut drills = Vec::new();
    let only = std::env::var("WICK_FAULTS_ONLY").unwrap_or_default();
    let selected: Vec<Drill> =
        Drill::ALL.into_iter().filter(|d| only.is_empty() || only.split(',').any(|o| d.name().contains(o.trim()))).collect();
    assert!(!selected.is_empty(), "WICK_FAULTS_ONLY={only:?} matches no drill (drills: {})", Drill::ALL.map(Drill::name).join(", "));
    for drill in selected.iter().copied() {
        let (input, permits, outcomes, clean_rx, scale) =
            (input.clone(), permits.clone(), outcomes.clone(), clean_rx.clone(), scale.clone());
        let seed = seeds.next() | 1;
        drills.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            let outcome = run_drill(drill, scale, input, clean_rx, seed).await;
            // Progress as it happens: a run cut short by the test's time limit still shows how far
            // it got.
            eprintln!(
                "faults: {} after {:.0} s: {}",
                outcome.drill,
                outcome.seconds,
                match &outcome.result {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("FAILED: {e}"),
                }
            );
            outcomes.lock().await.push(outcome);
        }));
    }
    let clean = clean.await.unwrap();
    for d in drills {
        d.await.unwrap();
    }
    let outcomes = outcomes.lock().await;
    let summary = table(&scale, &input, &outcomes);
    println!("{summary}");
    if let Ok(path) = std::env::var("WICK_FAULTS_SUMMARY") {
        std::fs::write(path, &summary).unwrap();
    }
    clean.unwrap_or_else(|e| panic!("the clean pass failed: {e}"));
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(failed.is_empty(), "{} drills broke the invariant:{summary}", failed.len());
    assert_eq!(outcomes.len(), selected.len() + 1);
    let _ = std::fs::remove_dir_all(dir);
}
