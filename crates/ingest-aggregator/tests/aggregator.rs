//! ingest-aggregator against the real broker and PostgreSQL (where its checkpoints live): a
//! fixture with duplicates, out-of-order, late and too-late trades and quiet minutes gives exactly
//! the reference candles for all 16 intervals; kill -9 at random moments loses and doubles nothing;
//! two instances split the instruments; idle instruments close by the injected clock; two days of
//! history of two instruments sharing a partition, replayed one file after the other, give exactly
//! the reference; malformed records are dead-lettered.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ingest_aggregator::config::Config;
use ingest_aggregator::metrics::Metrics;
use rskafka::client::partition::UnknownTopicHandling;
use wick_core::{Candle, Clock, Instrument, Interval, ManualClock, SystemClock, TakerSide, Timestamp, Trade};
use wick_service::ops::Readiness;
use wick_service::shutdown::{self, ShutdownTrigger};
use wick_wire::CandleEventKind;

const PARTITIONS: i32 = 4;
const SEC: i64 = 1_000_000;

type Key = (String, Interval, i64);

struct Env {
    market: String,
    candles: String,
    dlq: String,
    schema: String,
    db: tokio_postgres::Client,
}

async fn env() -> Env {
    let client = wick_test_support::kafka().await;
    let market = wick_test_support::topic(&client, "market", PARTITIONS).await;
    let candles = wick_test_support::topic(&client, "candles", 2).await;
    let dlq = wick_test_support::topic(&client, "dlq", 2).await;
    let (db, schema) = wick_test_support::postgres_schema().await;
    db.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
    Env { market, candles, dlq, schema, db }
}

fn config(env: &Env) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = vec![wick_test_support::broker_address()];
    c.kafka.market_events_topic = env.market.clone();
    c.kafka.market_events_partitions = PARTITIONS;
    c.kafka.candles_topic = env.candles.clone();
    c.kafka.candles_partitions = 2;
    c.kafka.dead_letter_topic = env.dlq.clone();
    c.kafka.dead_letter_partitions = 2;
    c.consumer.auto_offset_reset = "earliest".into();
    c.consumer.fetch_max_wait = wick_service::duration::Duration::from_millis(50);
    c.ring.wait_strategy = "blocking".into();
    c.ring.num_consumers = 2;
    c.checkpoint.database_url = wick_test_support::postgres_config();
    c.checkpoint.schema = Some(env.schema.clone());
    c.checkpoint.interval = wick_service::duration::Duration::from_secs(1);
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    c
}

fn instrument(name: &str) -> Instrument {
    Instrument::new(name).unwrap()
}

fn trade(instrument: &Instrument, id: u64, at_us: i64, price: &str, qty: &str, side: TakerSide) -> Trade {
    let t = Timestamp::from_micros(at_us).unwrap();
    Trade::new(instrument.clone(), id, price.parse().unwrap(), qty.parse().unwrap(), side, t, t).unwrap()
}

/// Produces trades in order as `TradeBatch` records of up to `per_record` trades of one
/// instrument, each on the instrument's partition (Kafka's murmur2, as feed-publisher does).
async fn produce(topic: &str, trades: &[Trade], per_record: usize) {
    let client = wick_test_support::kafka().await;
    let mut by_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut run: Vec<Trade> = Vec::new();
    let mut push = |run: &mut Vec<Trade>| {
        if let Some(first) = run.first() {
            let i = first.instrument().clone();
            let p = wick_kafka::partitioner::partition_for(i.as_str().as_bytes(), PARTITIONS);
            by_partition.entry(p).or_default().push(wick_wire::encode_trade_batch(&i, "X", run));
            run.clear();
        }
    };
    for t in trades {
        if run.len() >= per_record || run.first().is_some_and(|f| f.instrument() != t.instrument()) {
            push(&mut run);
        }
        run.push(t.clone());
    }
    push(&mut run);
    for (p, values) in by_partition {
        let pc = wick_test_support::partition(&client, topic, p).await;
        for chunk in values.chunks(100) {
            wick_test_support::produce(&pc, chunk.to_vec()).await;
        }
    }
}

/// The candle events on the topic: the latest version of every candle, and how many of each kind.
async fn published(topic: &str) -> (BTreeMap<Key, (CandleEventKind, Candle)>, BTreeMap<&'static str, usize>) {
    let client = wick_test_support::kafka().await;
    let mut latest: BTreeMap<Key, (CandleEventKind, Candle)> = BTreeMap::new();
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for p in 0..2 {
        let pc = wick_test_support::partition(&client, topic, p).await;
        let (records, _) = wick_test_support::read_to_end(&pc, 0, Duration::from_secs(30)).await.unwrap();
        for r in records {
            let (_, events) = wick_wire::decode_candle_batch(r.record.value.as_deref().unwrap()).unwrap();
            for (kind, c) in events {
                *kinds
                    .entry(match kind {
                        CandleEventKind::Update => "update",
                        CandleEventKind::Final => "final",
                        CandleEventKind::Revision => "revision",
                    })
                    .or_default() += 1;
                let key = (c.instrument().to_string(), c.interval(), c.open_time().as_millis());
                if let Some((_, held)) = latest.get(&key) {
                    if held.version() > c.version() {
                        continue;
                    }
                    if held.version() == c.version() {
                        assert_eq!(held, &c, "one version, one content: {key:?}");
                    }
                }
                latest.insert(key, (kind, c));
            }
        }
    }
    (latest, kinds)
}

/// The reference: every bucket of every interval folded from its trades with the model's `Candle`.
fn reference(trades: &[Trade]) -> BTreeMap<Key, Candle> {
    let mut out: BTreeMap<Key, Candle> = BTreeMap::new();
    for t in trades {
        for i in Interval::ALL {
            let key = (t.instrument().to_string(), i, i.bucket_start(t.event_time()).as_millis());
            match out.get_mut(&key) {
                Some(c) => c.apply(t).unwrap(),
                None => {
                    out.insert(key, Candle::from_trade(i, t).unwrap());
                }
            }
        }
    }
    out
}

/// Checks that every reference candle not holding a trade of `open_after` or later was published
/// final, with exactly the reference content and version.
fn assert_finals_equal(published: &BTreeMap<Key, (CandleEventKind, Candle)>, want: &BTreeMap<Key, Candle>, sentinels: &[Trade]) {
    let mut checked = 0;
    for (key, expected) in want {
        let holds_sentinel =
            sentinels.iter().any(|s| s.instrument().as_str() == key.0 && key.1.bucket_start(s.event_time()).as_millis() == key.2);
        if holds_sentinel {
            continue;
        }
        let mut expected = expected.clone();
        expected.mark_closed();
        let Some((_, got)) = published.get(key) else { panic!("{key:?} was never published") };
        assert_eq!(got, &expected, "{key:?}");
        checked += 1;
    }
    assert!(checked > 100, "only {checked} candles checked");
    let extra: Vec<&Key> = published.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(extra.is_empty(), "candles without trades: {extra:?}");
}

/// The fixture: three instruments over 25 minutes with duplicates, out-of-order arrivals within
/// the lateness, a late trade inside the revision window, a too-late one, quiet minutes, and a
/// sentinel trade per instrument 70 days later that closes every earlier candle (even 1M).
/// Returns (everything to publish, what counts, the sentinels).
fn fixture(trades_per_instrument: u64) -> (Vec<Trade>, Vec<Trade>, Vec<Trade>) {
    let names = ["SIM:BTC-USD", "SIM:ETH-USD", "BINANCE:SOL-USDT"];
    let start = Timestamp::parse_rfc3339("2024-02-28T23:50:00Z").unwrap().as_micros();
    let mut publish = Vec::new();
    let mut counted = Vec::new();
    let mut sentinels = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let i = instrument(name);
        let mut last = start;
        for n in 0..trades_per_instrument {
            let mut at = start + (n as i64) * 25 * SEC * 60 / trades_per_instrument as i64;
            // Quiet minutes: SOL trades nothing from minute 5 to minute 9.
            if k == 2 && (5 * 60 * SEC..9 * 60 * SEC).contains(&(at - start)) {
                continue;
            }
            // Out of order, within the 1 s lateness.
            if n % 11 == 5 {
                at -= 400_000;
            }
            let side = if n % 3 == 0 { TakerSide::Sell } else { TakerSide::Buy };
            let t = trade(
                &i,
                n + 1,
                at,
                &format!("{}.{:03}", 100 + (n * 7 + k as u64) % 40, n % 1000),
                &format!("0.{:04}", 1 + n % 9999),
                side,
            );
            publish.push(t.clone());
            counted.push(t.clone());
            if n % 17 == 3 {
                publish.push(t); // a duplicate
            }
            last = last.max(at);
        }
        // Late by two minutes: revises final candles.
        let late = trade(&i, 1_000_001, last - 120 * SEC, "99.5", "1.5", TakerSide::Sell);
        publish.push(late.clone());
        counted.push(late);
        // Late by twenty minutes: too late.
        publish.push(trade(&i, 1_000_002, last - 1200 * SEC, "1", "1", TakerSide::Buy));
        let sentinel = trade(&i, 2_000_000, last + 70 * 86_400 * SEC, "100", "1", TakerSide::Buy);
        publish.push(sentinel.clone());
        counted.push(sentinel.clone());
        sentinels.push(sentinel);
    }
    (publish, counted, sentinels)
}

struct Running {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: Metrics,
}

fn start(config: Config, clock: Arc<dyn Clock>) -> Running {
    let metrics = Metrics::new();
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(ingest_aggregator::run(config, metrics.clone(), Readiness::default(), clock, shutdown));
    Running { trigger, task, metrics }
}

impl Running {
    async fn stop(self) -> Metrics {
        self.trigger.trigger();
        self.task.await.unwrap().unwrap();
        self.metrics
    }
}

/// Waits until the checkpoints cover every record of the market topic.
async fn wait_checkpointed(env: &Env, partitions: &[i32], timeout: Duration) {
    let client = wick_test_support::kafka().await;
    let mut ends = BTreeMap::new();
    for &p in partitions {
        let pc = wick_test_support::partition(&client, &env.market, p).await;
        ends.insert(p, pc.get_offset(rskafka::client::partition::OffsetAt::Latest).await.unwrap());
    }
    wick_test_support::wait_until("the checkpoints cover the whole input", timeout, || async {
        let rows =
            env.db.query("SELECT partition, next_offset FROM aggregator_checkpoints WHERE topic = $1", &[&env.market]).await.unwrap();
        let done: BTreeMap<i32, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        ends.iter().all(|(p, end)| *end == 0 || done.get(p) == Some(end))
    })
    .await
    .unwrap();
}

/// Waits until the published output stops changing for a moment and every expected final is there.
async fn wait_for_finals(topic: &str, want: &BTreeMap<Key, Candle>, sentinels: &[Trade], timeout: Duration) {
    wick_test_support::wait_until("every final candle is published", timeout, || async {
        let (got, _) = published(topic).await;
        want.keys()
            .filter(|k| !sentinels.iter().any(|s| s.instrument().as_str() == k.0 && k.1.bucket_start(s.event_time()).as_millis() == k.2))
            .all(|k| got.get(k).is_some_and(|(_, c)| c.is_closed() && c.trade_count() == want[k].trade_count()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_fixture_through_the_service_gives_exactly_the_reference_candles() {
    let env = env().await;
    let (publish, counted, sentinels) = fixture(3000);
    produce(&env.market, &publish, 50).await;
    let client = wick_test_support::kafka().await;
    let garbage = wick_test_support::partition(&client, &env.market, 0).await;
    let bad_offsets = wick_test_support::produce(&garbage, vec![b"\xff\xfe not protobuf".to_vec()]).await;

    let running = start(config(&env), Arc::new(SystemClock));
    let want = reference(&counted);
    wait_for_finals(&env.candles, &want, &sentinels, Duration::from_secs(90)).await;
    let metrics = running.stop().await;

    let (got, kinds) = published(&env.candles).await;
    assert_finals_equal(&got, &want, &sentinels);
    let dupes = publish.len() - counted.len() - 3; // minus the three too-late trades
    assert_eq!(metrics.duplicates.get(), dupes as u64);
    assert_eq!(metrics.too_late.get(), 3);
    assert_eq!(metrics.late.get(), 3, "each late trade revised its candles");
    assert!(kinds.get("revision").copied().unwrap_or(0) >= 3 && kinds.get("update").copied().unwrap_or(0) > 0, "{kinds:?}");
    assert_eq!(metrics.events_dropped.get(), 0);

    let dlq = client.partition_client(env.dlq.clone(), 0, UnknownTopicHandling::Retry).await.unwrap();
    let dlq1 = client.partition_client(env.dlq.clone(), 1, UnknownTopicHandling::Retry).await.unwrap();
    let (mut letters, _) = wick_test_support::read_to_end(&dlq, 0, Duration::from_secs(10)).await.unwrap();
    letters.extend(wick_test_support::read_to_end(&dlq1, 0, Duration::from_secs(10)).await.unwrap().0);
    let reasons: Vec<String> = letters.iter().map(|l| String::from_utf8(l.record.headers["reason"].clone()).unwrap()).collect();
    assert_eq!(reasons.iter().filter(|r| *r == "too_late").count(), 3, "{reasons:?}");
    let malformed = letters.iter().find(|l| l.record.headers["reason"] != b"too_late").expect("the malformed record");
    assert_eq!(malformed.record.value.as_deref(), Some(&b"\xff\xfe not protobuf"[..]));
    assert_eq!(malformed.record.headers["source-offset"], bad_offsets[0].to_string().into_bytes());
    assert_eq!(metrics.dead_letters.with_label_values(&["malformed"]).get(), 1);
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

#[tokio::test]
async fn two_instances_split_the_instruments_and_their_union_is_the_whole() {
    let env = env().await;
    let (publish, counted, sentinels) = fixture(600);
    produce(&env.market, &publish, 40).await;
    let mut first = config(&env);
    first.instance.count = 2;
    let mut second = first.clone();
    second.instance.index = 1;
    let (a, b) = (start(first, Arc::new(SystemClock)), start(second, Arc::new(SystemClock)));
    let want = reference(&counted);
    wait_for_finals(&env.candles, &want, &sentinels, Duration::from_secs(90)).await;
    let (ma, mb) = (a.stop().await, b.stop().await);
    assert!(ma.trades_consumed.get() > 0 && mb.trades_consumed.get() > 0, "both instances had work");
    assert_eq!(ma.trades_consumed.get() + mb.trades_consumed.get(), publish.len() as u64, "disjoint: every trade read once");
    let (got, _) = published(&env.candles).await;
    assert_finals_equal(&got, &want, &sentinels);
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

#[tokio::test]
async fn idle_instruments_close_by_the_injected_clock() {
    let env = env().await;
    let clock = ManualClock::new(Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap());
    let i = instrument("SIM:IDLE-USD");
    let t0 = Timestamp::parse_rfc3339("2025-06-01T12:00:10Z").unwrap().as_micros();
    let trades = vec![trade(&i, 1, t0, "10", "1", TakerSide::Buy), trade(&i, 2, t0 + 20 * SEC, "11", "2", TakerSide::Sell)];
    produce(&env.market, &trades, 10).await;
    let running = start(config(&env), Arc::new(clock.clone()));
    let minute = |got: &BTreeMap<Key, (CandleEventKind, Candle)>| {
        got.get(&(i.to_string(), Interval::M1, Interval::M1.bucket_start(Timestamp::from_micros(t0).unwrap()).as_millis())).cloned()
    };
    wick_test_support::wait_until("the in-progress minute is published", Duration::from_secs(30), || async {
        minute(&published(&env.candles).await.0).is_some_and(|(_, c)| c.trade_count() == 2)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!minute(&published(&env.candles).await.0).unwrap().1.is_closed(), "no clock time passed: not final");
    // 40 s of clock time: the watermark reaches 12:00:30 - 1 s + 40 s = 12:01:09, past the minute.
    clock.advance_micros(40 * SEC);
    wick_test_support::wait_until("the idle minute closes", Duration::from_secs(30), || async {
        minute(&published(&env.candles).await.0).is_some_and(|(_, c)| c.is_closed())
    })
    .await
    .unwrap();
    let (got, _) = published(&env.candles).await;
    let five = got.get(&(i.to_string(), Interval::M5, Interval::M5.bucket_start(Timestamp::from_micros(t0).unwrap()).as_millis())).unwrap();
    assert!(!five.1.is_closed(), "the watermark moved by the elapsed time, not to the clock's time");
    running.stop().await;
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

#[tokio::test]
async fn two_days_of_history_replayed_file_after_file_give_exactly_the_reference() {
    let env = env().await;
    // Two instruments on one partition: day files of A, then day files of B (in A's past).
    let (a, b) = (instrument("SIM:AAA-USD"), instrument("SIM:BBB-USD"));
    let mut on_same_partition = b.clone();
    for n in 0..200 {
        let candidate = instrument(&format!("SIM:B{n}-USD"));
        if wick_kafka::partitioner::partition_for(candidate.as_str().as_bytes(), PARTITIONS)
            == wick_kafka::partitioner::partition_for(a.as_str().as_bytes(), PARTITIONS)
        {
            on_same_partition = candidate;
            break;
        }
    }
    let b = on_same_partition;
    let day0 = Timestamp::parse_rfc3339("2024-05-01T00:00:00Z").unwrap().as_micros();
    let mut files = Vec::new();
    for i in [&a, &b] {
        for day in 0..2i64 {
            let file: Vec<Trade> = (0..1440u64)
                .map(|m| {
                    trade(
                        i,
                        day as u64 * 10_000 + m + 1,
                        day0 + day * 86_400 * SEC + m as i64 * 60 * SEC + 7 * SEC,
                        &format!("{}.5", 50 + m % 30),
                        "0.25",
                        TakerSide::Buy,
                    )
                })
                .collect();
            files.push(file);
        }
    }
    let all: Vec<Trade> = files.concat();
    let sentinels: Vec<Trade> = [&a, &b].iter().map(|i| trade(i, 99_999, day0 + 70 * 86_400 * SEC, "1", "1", TakerSide::Buy)).collect();
    let mut publish = all.clone();
    publish.extend(sentinels.clone());
    produce(&env.market, &publish, 200).await;
    let running = start(config(&env), Arc::new(SystemClock));
    let mut counted = all;
    counted.extend(sentinels.clone());
    let want = reference(&counted);
    wait_for_finals(&env.candles, &want, &sentinels, Duration::from_secs(90)).await;
    let metrics = running.stop().await;
    assert_eq!((metrics.too_late.get(), metrics.late.get()), (0, 0), "no good trade became late");
    let (got, _) = published(&env.candles).await;
    assert_finals_equal(&got, &want, &sentinels);
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

fn spawn_binary(config: &Config) -> wick_test_support::ServiceProcess {
    Command::new(env!("CARGO_BIN_EXE_ingest-aggregator"))
        .env("WICK__KAFKA__BROKERS", config.kafka.brokers.join(","))
        .env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &config.kafka.market_events_topic)
        .env("WICK__KAFKA__MARKET_EVENTS_PARTITIONS", config.kafka.market_events_partitions.to_string())
        .env("WICK__KAFKA__CANDLES_TOPIC", &config.kafka.candles_topic)
        .env("WICK__KAFKA__CANDLES_PARTITIONS", "2")
        .env("WICK__KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic)
        .env("WICK__KAFKA__DEAD_LETTER_PARTITIONS", "2")
        .env("WICK__CONSUMER__AUTO_OFFSET_RESET", "earliest")
        .env("WICK__CONSUMER__FETCH_MAX_WAIT", "50ms")
        .env("WICK__RING__WAIT_STRATEGY", "blocking")
        .env("WICK__RING__NUM_CONSUMERS", "2")
        .env("WICK__CHECKPOINT__DATABASE_URL", &config.checkpoint.database_url)
        .env("WICK__CHECKPOINT__SCHEMA", config.checkpoint.schema.as_deref().unwrap())
        .env("WICK__CHECKPOINT__INTERVAL", "200ms")
        .env("WICK__OPS__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(wick_test_support::ServiceProcess)
        .unwrap()
}

#[tokio::test]
async fn kill_9_at_random_moments_neither_loses_nor_doubles_a_candle() {
    let env = env().await;
    let (publish, counted, sentinels) = fixture(120_000);
    produce(&env.market, &publish, 25).await;
    let config = config(&env);
    let client = wick_test_support::kafka().await;
    let mut total = 0;
    for p in 0..PARTITIONS {
        total += wick_test_support::partition(&client, &env.market, p)
            .await
            .get_offset(rskafka::client::partition::OffsetAt::Latest)
            .await
            .unwrap();
    }
    let checkpointed = || async {
        env.db
            .query_one("SELECT coalesce(sum(next_offset), 0)::int8 FROM aggregator_checkpoints WHERE topic = $1", &[&env.market])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    // Kill moments: once the checkpoints pass k/12 of the input (k = 1..10), then a random 0-300 ms
    // more; so every kill lands while work remains, whatever the machine's speed.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut progress = Vec::new();
    for k in 1..=10i64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = spawn_binary(&config);
        let target = total * k / 12;
        wick_test_support::wait_until(&format!("checkpoints pass {target} of {total} records"), Duration::from_secs(90), || async {
            checkpointed().await >= target
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(seed % 300)).await;
        child.kill(); // SIGKILL
        progress.push(checkpointed().await);
    }
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "checkpoints never move back: {progress:?}");
    assert!(progress.iter().any(|p| *p < total), "kills landed mid-stream: {progress:?} of {total} records");
    let mut child = spawn_binary(&config);
    wait_checkpointed(&env, &(0..PARTITIONS).collect::<Vec<_>>(), Duration::from_secs(120)).await;
    let want = reference(&counted);
    wait_for_finals(&env.candles, &want, &sentinels, Duration::from_secs(60)).await;
    assert!(child.terminate().unwrap().success(), "SIGTERM is a clean stop");
    let (got, _) = published(&env.candles).await;
    assert_finals_equal(&got, &want, &sentinels);
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}
