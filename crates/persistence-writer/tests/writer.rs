//! persistence-writer against the real broker, PostgreSQL and Redis (single node and a cluster of
//! its own): idempotent replays, the version guard, offsets and rows atomic under kill -9, a
//! PostgreSQL restart and a Redis cluster node stopped during load, dead letters, partitions
//! across a month boundary, and a TimescaleDB installed but not preloaded.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use persistence_writer::config::Config;
use persistence_writer::metrics::Metrics;
use rskafka::client::partition::UnknownTopicHandling;
use wick_cache::{CacheSettings, L2Cache};
use wick_core::{Candle, Instrument, Interval, SystemClock, TakerSide, Timestamp, Trade};
use wick_service::ops::Readiness;
use wick_service::shutdown::{self, ShutdownTrigger};
use wick_wire::CandleEventKind;

const PARTITIONS: i32 = 4;

/// The candle events of one instrument: one record.
type Record = (Instrument, Vec<(CandleEventKind, Candle)>);

/// A deterministic stream of candle events as the aggregator would publish them, crossing the
/// month boundary 2024-01-31 -> 2024-02-01: updates with rising versions, finals, revisions by late
/// trades, and stale re-sends of older versions (which must change nothing).
fn candle_records(count: usize) -> Vec<Record> {
    let instruments: Vec<Instrument> = ["SIM:BTC-USD", "SIM:ETH-USD", "SIM:SOL-USD", "SIM:XRP-USD", "SIM:ADA-USD", "SIM:DOT-USD"]
        .iter()
        .map(|s| Instrument::new(s).unwrap())
        .collect();
    let start = Timestamp::parse_rfc3339("2024-01-31T23:55:00Z").unwrap().as_micros();
    let mut open: BTreeMap<usize, BTreeMap<Interval, Candle>> = BTreeMap::new();
    let mut finals: Vec<Candle> = Vec::new();
    let mut sent: Vec<(CandleEventKind, Candle)> = Vec::new();
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let k = n % instruments.len();
        let instrument = &instruments[k];
        // 3 s of event time per record: every instrument gets a new minute every 20 records, and
        // the run crosses hours and the month.
        let t = Timestamp::from_micros(start + (n as i64) * 3_000_000 + k as i64).unwrap();
        let price = format!("{}.{:02}", 100 + (n * 7919 % 50), n % 100);
        let trade =
            Trade::new(instrument.clone(), n as u64 + 1, price.parse().unwrap(), "0.125".parse().unwrap(), TakerSide::Buy, t, t).unwrap();
        let mut events = Vec::new();
        for interval in [Interval::M1, Interval::H1] {
            let series = open.entry(k).or_default();
            let bucket = interval.bucket_start(t);
            if let Some(c) = series.get(&interval) {
                if c.open_time() != bucket {
                    let mut done = series.remove(&interval).unwrap();
                    done.mark_closed();
                    events.push((CandleEventKind::Final, done.clone()));
                    finals.push(done);
                }
            }
            match series.get_mut(&interval) {
                Some(c) => c.apply(&trade).unwrap(),
                None => {
                    series.insert(interval, Candle::from_trade(interval, &trade).unwrap());
                }
            }
            events.push((CandleEventKind::Update, series[&interval].clone()));
        }
        if n % 37 == 0 {
            // A late trade revises the latest final candle of this instrument.
            if let Some(f) = finals.iter_mut().rev().find(|c| c.instrument() == instrument) {
                let late = Trade::new(
                    instrument.clone(),
                    1_000_000 + n as u64,
                    "99.5".parse().unwrap(),
                    "2".parse().unwrap(),
                    TakerSide::Sell,
                    f.open_time(),
                    f.open_time(),
                )
                .unwrap();
                f.apply(&late).unwrap();
                events.push((CandleEventKind::Revision, f.clone()));
            }
        }
        if n % 23 == 0 && !sent.is_empty() {
            // A stale re-send of something older of the same instrument.
            if let Some(old) = sent.iter().rev().skip(30).find(|(_, c)| c.instrument() == instrument) {
                events.push(old.clone());
            }
        }
        sent.extend(events.iter().cloned());
        out.push((instrument.clone(), events));
    }
    out
}

/// What one clean pass leaves: the newest version of every candle.
fn expected(records: &[Record]) -> BTreeMap<(String, String, i64), Candle> {
    let mut out: BTreeMap<(String, String, i64), Candle> = BTreeMap::new();
    for (_, events) in records {
        for (_, c) in events {
            let key = (c.instrument().to_string(), c.interval().as_str().to_owned(), c.open_time().as_millis());
            if out.get(&key).is_none_or(|held| held.version() < c.version()) {
                out.insert(key, c.clone());
            }
        }
    }
    out
}

/// Produces the records, partitioned by instrument, in order; returns how many went to each
/// partition.
async fn produce(client: &rskafka::client::Client, topic: &str, records: &[Record]) -> BTreeMap<i32, usize> {
    let mut by_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for (instrument, events) in records {
        let p = (instrument.as_str().bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32;
        by_partition.entry(p).or_default().push(wick_wire::encode_candle_batch(instrument, events));
    }
    let mut counts = BTreeMap::new();
    for (p, values) in by_partition {
        let pc = wick_test_support::partition(client, topic, p).await;
        counts.insert(p, values.len());
        for chunk in values.chunks(200) {
            wick_test_support::produce(&pc, chunk.to_vec()).await;
        }
    }
    counts
}

struct Env {
    topic: String,
    schema: String,
    db: tokio_postgres::Client,
    redis_url: String,
    prefix: String,
}

async fn env() -> Env {
    let client = wick_test_support::kafka().await;
    let topic = wick_test_support::topic(&client, "writer", PARTITIONS).await;
    let (db, schema) = wick_test_support::postgres_schema().await;
    db.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
    let prefix = wick_test_support::redis_prefix();
    Env { topic, schema, db, redis_url: format!("redis://{}", wick_test_support::redis_address()), prefix }
}

fn config(env: &Env) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.candles_topic = env.topic.clone();
    c.kafka.dead_letter_topic = format!("{}-dlq", env.topic);
    c.kafka.fetch_max_wait = wick_service::duration::Duration::from_millis(50);
    c.database.url = wick_test_support::postgres_config();
    c.database.schema = Some(env.schema.clone());
    c.database.max_backoff = wick_service::duration::Duration::from_millis(500);
    c.redis.url = env.redis_url.clone();
    c.redis.key_prefix = env.prefix.clone();
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    c
}

struct Running {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<anyhow::Result<persistence_writer::Summary>>,
    metrics: Metrics,
    readiness: Readiness,
}

fn start(config: Config) -> Running {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(persistence_writer::run(config, metrics.clone(), readiness.clone(), Arc::new(SystemClock), shutdown));
    Running { trigger, task, metrics, readiness }
}

impl Running {
    async fn stop(self) -> persistence_writer::Summary {
        self.trigger.trigger();
        self.task.await.unwrap().unwrap()
    }
}

async fn committed(db: &tokio_postgres::Client, topic: &str) -> i64 {
    db.query_one("SELECT coalesce(sum(next_offset), 0)::int8 FROM writer_offsets WHERE topic = $1", &[&topic])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Waits until the committed offsets of `topic` reach `target`, and returns them. `stall` is how long
/// the writer may go without committing anything more: a slow machine makes the wait longer, a
/// writer that stopped making progress fails it.
async fn wait_offsets(db: &tokio_postgres::Client, topic: &str, target: i64, stall: Duration) -> i64 {
    let mut best = i64::MIN;
    let mut moved = std::time::Instant::now();
    loop {
        let now = committed(db, topic).await;
        if now >= target {
            return now;
        }
        if now > best {
            best = now;
            moved = std::time::Instant::now();
        } else if moved.elapsed() > stall {
            panic!("the writer committed nothing more for {stall:?}: offsets of {topic} stuck at {now}, waiting for {target}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the writer committed exactly `total` records of `topic` (see [`wait_offsets`] for `stall`).
async fn wait_committed(db: &tokio_postgres::Client, topic: &str, total: usize, stall: Duration) {
    let reached = wait_offsets(db, topic, total as i64, stall).await;
    assert_eq!(reached, total as i64, "the writer committed more offsets than {topic} holds");
}

/// Every stored candle as text, exactly as the server prints it.
async fn stored(db: &tokio_postgres::Client) -> Vec<String> {
    db.query(
        "SELECT concat_ws('|', instrument, interval, (extract(epoch from open_time) * 1000)::int8, (extract(epoch from close_time) * 1000)::int8, \
         open, high, low, close, volume, quote_volume, taker_buy_volume, taker_buy_quote_volume, trade_count, first_trade_id, last_trade_id, \
         (extract(epoch from first_trade_time) * 1000000)::int8, (extract(epoch from last_trade_time) * 1000000)::int8, closed, version) \
         FROM candles ORDER BY instrument, interval, open_time",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The same text for the expected candles.
fn as_rows(candles: &BTreeMap<(String, String, i64), Candle>) -> Vec<String> {
    let mut rows: Vec<String> = candles
        .values()
        .map(|c| {
            let (first, last) = (c.first_trade().unwrap(), c.last_trade().unwrap());
            [
                c.instrument().to_string(),
                c.interval().as_str().to_owned(),
                c.open_time().as_millis().to_string(),
                c.close_time().as_millis().to_string(),
                c.open().to_string(),
                c.high().to_string(),
                c.low().to_string(),
                c.close().to_string(),
                c.volume().to_string(),
                c.quote_volume().to_string(),
                c.taker_buy_volume().to_string(),
                c.taker_buy_quote_volume().to_string(),
                c.trade_count().to_string(),
                first.trade_id.to_string(),
                last.trade_id.to_string(),
                first.event_time.as_micros().to_string(),
                last.event_time.as_micros().to_string(),
                if c.is_closed() { "t" } else { "f" }.to_owned(),
                c.version().to_string(),
            ]
            .join("|")
        })
        .collect();
    // The server sorts by open time within (instrument, interval); so does the key.
    rows.sort_by_key(|r| {
        let mut it = r.split('|');
        (it.next().unwrap().to_owned(), it.next().unwrap().to_owned(), it.next().unwrap().parse::<i64>().unwrap())
    });
    rows
}

fn l2(url: &str, prefix: &str) -> L2Cache {
    L2Cache::connect(&CacheSettings {
        url: url.to_owned(),
        prefix: prefix.to_owned(),
        ttl: Duration::from_secs(600),
        command_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

/// For every expected candle, the version the cache holds (0 when absent).
async fn cached_versions(cache: &L2Cache, candles: &BTreeMap<(String, String, i64), Candle>) -> BTreeMap<(String, String, i64), u64> {
    let mut chunks: BTreeMap<(Instrument, Interval, i64), Vec<Candle>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (key, c) in candles {
        let chunk = wick_cache::chunk_of(c.interval(), c.open_time());
        let id = (c.instrument().clone(), c.interval(), chunk);
        if !chunks.contains_key(&id) {
            let (_, held) = cache.chunk(&id.0, id.1, id.2).await.unwrap();
            chunks.insert(id.clone(), held);
        }
        let version = chunks[&id].iter().find(|h| h.open_time() == c.open_time()).map_or(0, Candle::version);
        out.insert(key.clone(), version);
    }
    out
}

#[tokio::test]
async fn replays_and_stale_versions_change_nothing_and_the_cache_matches_the_database() {
    let env = env().await;
    let client = wick_test_support::kafka().await;
    let records = candle_records(1500);
    let want = expected(&records);
    let counts = produce(&client, &env.topic, &records).await;
    let total: usize = counts.values().sum();

    let writer = start(config(&env));
    wait_committed(&env.db, &env.topic, total, Duration::from_secs(60)).await;
    assert!(writer.readiness.get(), "ready while broker and database answer");
    let cache = l2(&env.redis_url, &env.prefix);
    let cache_holds = |versions: BTreeMap<_, u64>| versions.iter().all(|(k, v)| *v == want[k].version());
    wick_test_support::wait_until("the cache holds every committed candle", Duration::from_secs(20), || async {
        cache_holds(cached_versions(&cache, &want).await)
    })
    .await
    .unwrap();
    let first = writer.stop().await;
    assert_eq!(stored(&env.db).await, as_rows(&want), "the database holds exactly the newest version of every candle");
    assert!(first.rows_written >= want.len() as u64);

    // Partitions by month: the run crosses 2024-01-31 -> 2024-02-01.
    let partitions: Vec<String> = env
        .db
        .query("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'candles'::regclass ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(partitions.contains(&"candles_y2024m01".to_owned()) && partitions.contains(&"candles_y2024m02".to_owned()), "{partitions:?}");
    let february: i64 = env.db.query_one("SELECT count(*) FROM candles_y2024m02", &[]).await.unwrap().get(0);
    assert!(february > 0);

    // A full replay from the start (offsets forgotten) and a second copy of everything change nothing.
    env.db.execute("DELETE FROM writer_offsets", &[]).await.unwrap();
    produce(&client, &env.topic, &records).await;
    let writer = start(config(&env));
    wait_committed(&env.db, &env.topic, 2 * total, Duration::from_secs(60)).await;
    let replay = writer.stop().await;
    assert_eq!(replay.rows_written, 0, "a replay changes no row");
    assert_eq!(replay.candles, 2 * first.candles);
    assert_eq!(stored(&env.db).await, as_rows(&want));
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

#[tokio::test]
async fn malformed_records_are_dead_lettered_with_their_source_and_counted() {
    let env = env().await;
    let client = wick_test_support::kafka().await;
    let records = candle_records(12);
    let want = expected(&records);
    let pc = wick_test_support::partition(&client, &env.topic, 0).await;
    let good: Vec<Vec<u8>> = records.iter().map(|(i, e)| wick_wire::encode_candle_batch(i, e)).collect();
    let mut values = vec![b"not a candle batch".to_vec()];
    values.extend(good);
    let offsets = wick_test_support::produce(&pc, values).await;

    let writer = start(config(&env));
    wait_committed(&env.db, &env.topic, offsets.len(), Duration::from_secs(30)).await;
    let metrics = writer.metrics.clone();
    let summary = writer.stop().await;
    assert_eq!(summary.dead_letters, 1);
    assert_eq!(metrics.dead_letters.with_label_values(&["malformed"]).get(), 1);
    assert_eq!(stored(&env.db).await, as_rows(&want), "the good records around it are written");

    let dlq = client.partition_client(format!("{}-dlq", env.topic), 0, UnknownTopicHandling::Retry).await.unwrap();
    let (letters, _) = wick_test_support::read_to_end(&dlq, 0, Duration::from_secs(10)).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].record;
    assert_eq!(letter.value.as_deref(), Some(&b"not a candle batch"[..]));
    let header = |k: &str| String::from_utf8(letter.headers[k].clone()).unwrap();
    assert!(header("reason").contains("CandleBatch"), "{}", header("reason"));
    assert_eq!(
        (header("source-topic"), header("source-partition"), header("source-offset")),
        (env.topic.clone(), "0".into(), offsets[0].to_string())
    );
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

/// The service's log, kept for a failing test to show: `target/test-logs/<topic>.log`.
fn log_file(name: &str) -> Stdio {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap();
    Stdio::from(file)
}

/// The binary, configured through the environment as a deployment would.
fn spawn_binary(config: &Config, ops: &str) -> wick_test_support::ServiceProcess {
    Command::new(env!("CARGO_BIN_EXE_persistence-writer"))
        .env("WICK__KAFKA__BROKERS", config.kafka.brokers.join(","))
        .env("WICK__KAFKA__CANDLES_TOPIC", &config.kafka.candles_topic)
        .env("WICK__KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic)
        .env("WICK__KAFKA__FETCH_MAX_WAIT", "50ms")
        .env("WICK__DATABASE__URL", &config.database.url)
        .env("WICK__DATABASE__SCHEMA", config.database.schema.as_deref().unwrap())
        .env("WICK__REDIS__URL", &config.redis.url)
        .env("WICK__REDIS__KEY_PREFIX", &config.redis.key_prefix)
        .env("WICK__OPS__LISTEN", ops)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log_file(&config.kafka.candles_topic))
        .spawn()
        .map(wick_test_support::ServiceProcess)
        .unwrap()
}

#[tokio::test]
async fn kill_9_at_random_moments_neither_loses_nor_doubles_a_candle() {
    let env = env().await;
    let client = wick_test_support::kafka().await;
    let records = candle_records(40_000);
    let want = expected(&records);
    let total: usize = produce(&client, &env.topic, &records).await.values().sum();
    let config = config(&env);

    // Kill moments: once the committed offsets pass k/12 of the input (k = 1..10), then a random
    // 0-300 ms more; so every kill lands while work remains, whatever the machine's speed.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut progress = Vec::new();
    for k in 1..=10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = spawn_binary(&config, "127.0.0.1:0");
        let target = (total * k / 12) as i64;
        wait_offsets(&env.db, &env.topic, target, Duration::from_secs(90)).await;
        tokio::time::sleep(Duration::from_millis(seed % 300)).await;
        child.kill(); // SIGKILL
        progress.push(committed(&env.db, &env.topic).await);
    }
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "committed offsets never move back: {progress:?}");
    assert!(progress.iter().any(|p| *p < total as i64), "kills landed mid-stream: {progress:?} of {total}");
    let ops = format!("127.0.0.1:{}", wick_test_support::free_port().unwrap());
    let mut child = spawn_binary(&config, &ops);
    wick_test_support::wait_ready(&ops, Duration::from_secs(30)).await.unwrap();
    wait_committed(&env.db, &env.topic, total, Duration::from_secs(120)).await;
    let status = child.terminate().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    assert_eq!(stored(&env.db).await, as_rows(&want), "after 10 kills, exactly one clean pass");
    // Kills between a commit and its cache write are repaired from the recorded cache offsets.
    let cache = l2(&env.redis_url, &env.prefix);
    let versions = cached_versions(&cache, &want).await;
    let stale: Vec<_> = versions.iter().filter(|(k, v)| **v != want[*k].version()).take(5).collect();
    assert!(stale.is_empty(), "the cache matches the database after the kills: {stale:?}");
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

/// A `timescaledb` extension whose installation ends its own connection, as TimescaleDB's does
/// when its library is not preloaded (trusted, so that a role without superuser rights may try).
const FAKE_TIMESCALEDB: [(&str, &str); 2] = [
    ("timescaledb.control", "default_version = '0.0.1'\nrelocatable = false\ntrusted = true\n"),
    ("timescaledb--0.0.1.sql", "SELECT pg_terminate_backend(pg_backend_pid());\n"),
];

#[tokio::test]
async fn timescaledb_installed_but_not_preloaded_never_keeps_the_writer_retrying() {
    let pg = tokio::task::spawn_blocking(|| wick_test_support::PostgresProcess::start_with_extension_files(&FAKE_TIMESCALEDB))
        .await
        .unwrap()
        .unwrap();
    let env = env().await;

    // As a superuser the writer sees shared_preload_libraries, falls back to plain PostgreSQL and
    // writes (it used to retry "database not ready for migrations" forever).
    let mut config = config(&env);
    config.database.url = pg.url("wick_writer_test");
    config.database.schema = None;
    let writer = start(config.clone());
    let client = wick_test_support::kafka().await;
    let records = candle_records(50);
    let total: usize = produce(&client, &env.topic, &records).await.values().sum();
    wick_test_support::wait_until("the writer is ready", Duration::from_secs(60), || async { writer.readiness.get() }).await.unwrap();
    let (db, connection) = tokio_postgres::connect(&pg.url("wick_writer_test"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    wait_committed(&db, &env.topic, total, Duration::from_secs(60)).await;
    let mode: String = db.query_one("SELECT value FROM wick_meta WHERE key = 'storage_mode'", &[]).await.unwrap().get(0);
    assert_eq!(mode, "postgresql");
    writer.stop().await;

    // A role that cannot read the setting learns it only by trying: the writer stops at once with
    // an error that names it, instead of retrying.
    db.batch_execute("CREATE ROLE wick_app LOGIN").await.unwrap();
    db.batch_execute("CREATE DATABASE wick_app OWNER wick_app").await.unwrap();
    config.database.url = pg.url("wick_app").replace("postgres@", "wick_app@");
    let writer = start(config);
    let err = tokio::time::timeout(Duration::from_secs(60), writer.task).await.expect("the writer stops by itself").unwrap().unwrap_err();
    assert!(format!("{err:#}").contains("shared_preload_libraries"), "{err:#}");
    assert!(!writer.readiness.get());
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

#[tokio::test]
async fn a_postgresql_restart_during_load_loses_nothing() {
    let pg = wick_test_support::PostgresProcess::start().unwrap();
    let env = env().await;
    let client = wick_test_support::kafka().await;
    let records = candle_records(3000);
    let want = expected(&records);
    let (first, second) = records.split_at(1500);

    let mut config = config(&env);
    config.database.url = pg.url("wick_writer_test");
    config.database.schema = None;
    let writer = start(config);
    let (db, connection) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    wick_test_support::wait_until("the writer created its database", Duration::from_secs(30), || async {
        db.query_opt("SELECT 1 FROM pg_database WHERE datname = 'wick_writer_test'", &[]).await.unwrap().is_some()
    })
    .await
    .unwrap();
    drop(db);
    let total_first: usize = produce(&client, &env.topic, first).await.values().sum();

    // Crash the server mid-load, keep it down, then bring it back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.stop().unwrap();
    let total_second: usize = produce(&client, &env.topic, second).await.values().sum();
    wick_test_support::wait_until("readiness drops while the database is down", Duration::from_secs(20), || async {
        !writer.readiness.get()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again().unwrap();

    let (db, connection) = tokio_postgres::connect(&pg.url("wick_writer_test"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    wait_committed(&db, &env.topic, total_first + total_second, Duration::from_secs(90)).await;
    assert!(writer.readiness.get(), "ready again");
    let retries = writer.metrics.db_retries.get();
    writer.stop().await;
    assert!(retries > 0, "the outage was seen and retried");
    assert_eq!(stored(&db).await, as_rows(&want), "nothing lost, nothing doubled");
}

#[tokio::test]
async fn a_redis_cluster_node_stopped_during_load_never_blocks_the_database_and_the_cache_catches_up() {
    let mut cluster = wick_test_support::RedisClusterProcess::start().unwrap();
    let mut env = env().await;
    env.redis_url = cluster.url();
    let client = wick_test_support::kafka().await;
    let records = candle_records(3000);
    let (first, second) = records.split_at(1500);
    let mut config = config(&env);
    config.redis.command_timeout = wick_service::duration::Duration::from_millis(300);
    let writer = start(config);
    let cache = l2(&env.redis_url, &env.prefix);

    let total_first: usize = produce(&client, &env.topic, first).await.values().sum();
    wait_committed(&env.db, &env.topic, total_first, Duration::from_secs(60)).await;
    let want_first = expected(first);
    wick_test_support::wait_until("the cluster holds the first half", Duration::from_secs(20), || async {
        cached_versions(&cache, &want_first).await.iter().all(|(k, v)| *v == want_first[k].version())
    })
    .await
    .unwrap();

    cluster.kill_node(1);
    let total_second: usize = produce(&client, &env.topic, second).await.values().sum();
    wait_committed(&env.db, &env.topic, total_first + total_second, Duration::from_secs(60)).await;
    let want = expected(&records);
    assert_eq!(stored(&env.db).await, as_rows(&want), "the database is complete while a Redis node is down");
    wick_test_support::wait_until("the breaker opens", Duration::from_secs(20), || async { writer.metrics.l2_breaker_open.get() == 1 })
        .await
        .unwrap();
    assert!(writer.metrics.l2_failures.get() > 0);

    cluster.restart_node(1).unwrap();
    wick_test_support::wait_until("the breaker closes and nothing is pending", Duration::from_secs(60), || async {
        writer.metrics.l2_breaker_open.get() == 0 && writer.metrics.l2_pending.get() == 0
    })
    .await
    .unwrap();
    // Candles changed during the outage are all cached now, at the database's version; nothing
    // cached is older than the database (the restarted node lost its keys: those are absent).
    let want_second = expected(second);
    let versions = cached_versions(&cache, &want).await;
    for (key, version) in &versions {
        if want_second.contains_key(key) {
            assert_eq!(*version, want[key].version(), "{key:?} was caught up");
        } else {
            assert!(*version == 0 || *version == want[key].version(), "{key:?} is not stale");
        }
    }
    writer.stop().await;
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}
