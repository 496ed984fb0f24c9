//! ingest-aggregator against the real broker and PostgreSQL (where its checkpoints live): a
//! fixture with duplicates, out-of-order, late and too-late trades and quiet minutes gives exactly
//! the reference candles for all 16 intervals; kill -9 at random moments loses and doubles nothing;
//! two instances split the instruments; a quiet live instrument closes its minute on time, also
//! right after a restart; history replayed in parts with pauses longer than the revision window
//! loses nothing; two days of history of two instruments sharing a partition, replayed one file
//! after the other, give exactly the reference; hostile and malformed records are dead-lettered
//! with their reasons; wall-clock steps refuse nothing.

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

/// Produces trades in order as feed-publisher does: records of up to `per_record` trades of one
/// partition (Kafka's murmur2 of each instrument), each a `TradeBatches` of one batch per instrument.
async fn produce(topic: &str, trades: &[Trade], per_record: usize) {
    produce_to(&wick_test_support::kafka().await, topic, trades, per_record).await
}

async fn produce_to(client: &rskafka::client::Client, topic: &str, trades: &[Trade], per_record: usize) {
    let mut by_partition: BTreeMap<i32, Vec<Trade>> = BTreeMap::new();
    for t in trades {
        by_partition
            .entry(wick_kafka::partitioner::partition_for(t.instrument().as_str().as_bytes(), PARTITIONS))
            .or_default()
            .push(t.clone());
    }
    for (p, trades) in by_partition {
        let mut records = Vec::new();
        for chunk in trades.chunks(per_record) {
            let mut batches: Vec<(Instrument, Vec<Trade>)> = Vec::new();
            for t in chunk {
                match batches.iter_mut().find(|(i, _)| i.same_as(t.instrument())) {
                    Some((_, run)) => run.push(t.clone()),
                    None => batches.push((t.instrument().clone(), vec![t.clone()])),
                }
            }
            let value =
                wick_wire::encode_trade_batches(batches.iter().map(|(i, run)| wick_wire::trade_batch_to_wire(i, "X", run)).collect());
            records.push(rskafka::record::Record {
                key: None,
                value: Some(value),
                headers: [(wick_wire::CONTENT_TYPE_HEADER.to_owned(), wick_wire::CONTENT_TYPE_TRADE_BATCHES.as_bytes().to_vec())].into(),
                timestamp: chrono::Utc::now(),
            });
        }
        let pc = wick_test_support::partition(client, topic, p).await;
        for chunk in records.chunks(100) {
            pc.produce(chunk.to_vec(), rskafka::client::partition::Compression::NoCompression).await.unwrap();
        }
    }
}

/// Produces trades as single-instrument `TradeBatch` records (the first format, still accepted).
async fn produce_single_batches(topic: &str, trades: &[Trade]) {
    let client = wick_test_support::kafka().await;
    for t in trades {
        let p = wick_kafka::partitioner::partition_for(t.instrument().as_str().as_bytes(), PARTITIONS);
        let pc = wick_test_support::partition(&client, topic, p).await;
        let value = wick_wire::encode_trade_batch(t.instrument(), "X", std::slice::from_ref(t));
        wick_test_support::produce(&pc, vec![value]).await;
    }
}

/// The candle events on the topic: the latest version of every candle, and how many of each kind.
async fn published(topic: &str) -> (BTreeMap<Key, (CandleEventKind, Candle)>, BTreeMap<&'static str, usize>) {
    published_from(&wick_test_support::kafka().await, topic).await
}

async fn published_from(
    client: &rskafka::client::Client,
    topic: &str,
) -> (BTreeMap<Key, (CandleEventKind, Candle)>, BTreeMap<&'static str, usize>) {
    let mut latest: BTreeMap<Key, (CandleEventKind, Candle)> = BTreeMap::new();
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for p in 0..2 {
        let pc = wick_test_support::partition(client, topic, p).await;
        let (records, _) = wick_test_support::read_to_end(&pc, 0, Duration::from_secs(30)).await.unwrap();
        for r in records {
            let content_type = r.record.headers.get(wick_wire::CONTENT_TYPE_HEADER).map(Vec::as_slice);
            assert_eq!(content_type, Some(wick_wire::CONTENT_TYPE_CANDLE_BATCHES.as_bytes()), "one record per partition");
            let size = r.record.value.as_ref().map_or(0, Vec::len);
            assert!(size <= 900_000, "a record of {size} bytes is over output.max_request_bytes");
            let parts = wick_wire::candles_of_record(content_type, r.record.value.as_deref().unwrap()).unwrap();
            for (kind, c) in parts.into_iter().flat_map(|(_, events)| events) {
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
    wait_for_finals_from(&wick_test_support::kafka().await, topic, want, sentinels, timeout).await
}

async fn wait_for_finals_from(
    client: &rskafka::client::Client,
    topic: &str,
    want: &BTreeMap<Key, Candle>,
    sentinels: &[Trade],
    timeout: Duration,
) {
    wick_test_support::wait_until("every final candle is published", timeout, || async {
        let (got, _) = published_from(client, topic).await;
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

/// Waits until the service has read `n` trades.
async fn wait_read(metrics: &Metrics, n: usize) {
    wick_test_support::wait_until(&format!("{n} trades read"), Duration::from_secs(60), || async {
        metrics.trades_consumed.get() >= n as u64
    })
    .await
    .unwrap()
}

/// The minute candle of `i` holding `at` in the published output, if any.
async fn minute_of(topic: &str, i: &Instrument, at: i64) -> Option<(CandleEventKind, Candle)> {
    let key = (i.to_string(), Interval::M1, Interval::M1.bucket_start(Timestamp::from_micros(at).unwrap()).as_millis());
    published(topic).await.0.get(&key).cloned()
}

/// Every dead letter on the test's dead-letter topic: (reason, value).
async fn dead_letters(env: &Env) -> Vec<(String, Vec<u8>)> {
    let client = wick_test_support::kafka().await;
    let mut out = Vec::new();
    for p in 0..2 {
        let pc = client.partition_client(env.dlq.clone(), p, UnknownTopicHandling::Retry).await.unwrap();
        for l in wick_test_support::read_to_end(&pc, 0, Duration::from_secs(10)).await.unwrap().0 {
            out.push((String::from_utf8(l.record.headers["reason"].clone()).unwrap(), l.record.value.unwrap_or_default()));
        }
    }
    out
}

#[tokio::test]
async fn a_quiet_live_instrument_closes_its_minute_on_time_also_right_after_a_restart() {
    for restart in [false, true] {
        let env = env().await;
        // The aggregator's clock reads 00:00:08 as the trades of 00:00:05 and 00:00:08 arrive: live.
        let start_at = Timestamp::parse_rfc3339("2026-01-01T00:00:08Z").unwrap();
        let clock = ManualClock::new(start_at);
        let i = instrument("SIM:IDLE-USD");
        let t0 = start_at.as_micros();
        let trades = vec![trade(&i, 1, t0 - 3 * SEC, "10", "1", TakerSide::Buy), trade(&i, 2, t0, "11", "2", TakerSide::Sell)];
        produce(&env.market, &trades, 10).await;
        let mut running = start(config(&env), Arc::new(clock.clone()));
        wick_test_support::wait_until("the in-progress minute is published", Duration::from_secs(30), || async {
            minute_of(&env.candles, &i, t0).await.is_some_and(|(_, c)| c.trade_count() == 2)
        })
        .await
        .unwrap();
        if restart {
            // Stopped at 00:00:30 and started again: the watermark and liveness come back from the
            // checkpoint, and idle closing goes on from there.
            clock.set(Timestamp::from_micros(t0 + 22 * SEC).unwrap());
            tokio::time::sleep(Duration::from_millis(300)).await;
            running.stop().await;
            running = start(config(&env), Arc::new(clock.clone()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // 00:00:59.9: the minute has not ended.
        clock.set(Timestamp::from_micros(t0 + 51 * SEC + 900_000).unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!minute_of(&env.candles, &i, t0).await.unwrap().1.is_closed(), "the minute has not ended (restart: {restart})");
        // The minute's end plus the allowed lateness (1 s) plus one tick (50 ms): final.
        clock.set(Timestamp::from_micros(t0 + 53 * SEC + 50_000).unwrap());
        wick_test_support::wait_until("the idle minute closes", Duration::from_secs(30), || async {
            minute_of(&env.candles, &i, t0).await.is_some_and(|(_, c)| c.is_closed())
        })
        .await
        .unwrap();
        let (got, _) = published(&env.candles).await;
        let five = &got[&(i.to_string(), Interval::M5, Interval::M5.bucket_start(start_at).as_millis())];
        assert!(!five.1.is_closed(), "the watermark moved by the idle time only");
        running.stop().await;
        env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
    }
}

/// History of three instruments (2.5 h crossing midnight), split in two by time.
fn history_halves() -> (Vec<Vec<Trade>>, Vec<Vec<Trade>>, Vec<Trade>) {
    let start = Timestamp::parse_rfc3339("2024-03-09T22:45:00Z").unwrap().as_micros();
    let (mut first, mut second, mut sentinels) = (Vec::new(), Vec::new(), Vec::new());
    for (k, name) in ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT", "BINANCE:SOL-USDT"].iter().enumerate() {
        let i = instrument(name);
        let trades: Vec<Trade> = (0..3_000u64)
            .map(|n| {
                // Every 3 s, with a trade 0.4 s out of order now and then.
                let at = start + n as i64 * 3 * SEC - if n % 13 == 7 { 400_000 } else { 0 };
                trade(&i, n + 1, at, &format!("{}.{}", 100 + (n * 3 + k as u64) % 50, n % 10), "0.01", TakerSide::Buy)
            })
            .collect();
        let (a, b) = trades.split_at(1_500);
        first.push(a.to_vec());
        second.push(b.to_vec());
        sentinels.push(trade(&i, 1_000_000, start + 70 * 86_400 * SEC, "1", "1", TakerSide::Sell));
    }
    (first, second, sentinels)
}

#[tokio::test]
async fn history_replayed_in_parts_with_pauses_longer_than_the_revision_window_loses_nothing() {
    let env = env().await;
    // Today's clock; the history is from 2024. Default settings but the test's topics.
    let clock = ManualClock::new(Timestamp::parse_rfc3339("2026-06-01T12:00:00Z").unwrap());
    let (first, second, sentinels) = history_halves();
    let running = start(config(&env), Arc::new(clock.clone()));
    // BTC's first half, ETH's first half, then SOL's, each a replay of its own ...
    let mut read = 0;
    for part in &first {
        produce(&env.market, part, 200).await;
        read += part.len();
        wait_read(&running.metrics, read).await;
    }
    // ... an 11-minute pause (longer than the 10-minute revision window), caught up all along ...
    for _ in 0..66 {
        clock.advance_micros(10 * SEC);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... then the second halves in another order, and the sentinels that close everything.
    for part in second.iter().rev() {
        produce(&env.market, part, 200).await;
        read += part.len();
        wait_read(&running.metrics, read).await;
        clock.advance_micros(120 * SEC);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&env.market, &sentinels, 10).await;
    let mut counted: Vec<Trade> = first.concat();
    counted.extend(second.concat());
    counted.extend(sentinels.clone());
    let want = reference(&counted);
    wait_for_finals(&env.candles, &want, &sentinels, Duration::from_secs(90)).await;
    let metrics = running.stop().await;
    assert_eq!((metrics.too_late.get(), metrics.late.get()), (0, 0), "no good trade became late");
    assert!(dead_letters(&env).await.is_empty(), "nothing dead-lettered");
    let (got, _) = published(&env.candles).await;
    assert_finals_equal(&got, &want, &sentinels);
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

#[tokio::test]
async fn a_broker_outage_longer_than_the_revision_window_during_a_replay_loses_nothing() {
    let env = env().await;
    let mut broker = wick_test_support::BrokerProcess::start(wick_test_support::StorageEngine::Sqlite).unwrap();
    let mut config = config(&env);
    config.kafka.brokers = vec![broker.address()];
    let clock = ManualClock::new(Timestamp::parse_rfc3339("2026-06-01T12:00:00Z").unwrap());
    let (first, second, sentinels) = history_halves();
    let client = wick_test_support::kafka_at(&broker.address()).await;
    for (topic, partitions) in [(&env.market, PARTITIONS), (&env.candles, 2), (&env.dlq, 2)] {
        client.controller_client().unwrap().create_topic(topic.as_str(), partitions, 1, 5_000).await.unwrap();
    }
    produce_to(&client, &env.market, &first.concat(), 200).await;
    let running = start(config, Arc::new(clock.clone()));
    wait_read(&running.metrics, first.concat().len()).await;
    // The broker goes down; 11 minutes pass on the aggregator's clock (longer than the revision
    // window) while every fetch fails; then it comes back and the replay goes on.
    broker.stop();
    for _ in 0..66 {
        clock.advance_micros(10 * SEC);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    broker.start_again().unwrap();
    let client = wick_test_support::kafka_at(&broker.address()).await;
    produce_to(&client, &env.market, &second.concat(), 200).await;
    produce_to(&client, &env.market, &sentinels, 10).await;
    let mut counted: Vec<Trade> = first.concat();
    counted.extend(second.concat());
    counted.extend(sentinels.clone());
    let want = reference(&counted);
    wait_for_finals_from(&client, &env.candles, &want, &sentinels, Duration::from_secs(120)).await;
    let metrics = running.stop().await;
    assert_eq!((metrics.too_late.get(), metrics.late.get()), (0, 0), "no good trade became late");
    let refused: u64 = ["too_late", "overflow", "future", "too_early", "malformed", "dedup_full"]
        .iter()
        .map(|r| metrics.dead_letters.with_label_values(&[r]).get())
        .sum();
    assert_eq!(refused, 0, "nothing dead-lettered");
    let (got, _) = published_from(&client, &env.candles).await;
    assert_finals_equal(&got, &want, &sentinels);
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

#[tokio::test]
async fn hostile_trades_are_refused_each_with_its_reason_and_nothing_else_changes() {
    let env = env().await;
    let (first, second, sentinels) = history_halves();
    let btc = instrument("BINANCE:BTC-USDT");
    let partition = wick_kafka::partitioner::partition_for(btc.as_str().as_bytes(), PARTITIONS);
    let client = wick_test_support::kafka().await;
    let pc = wick_test_support::partition(&client, &env.market, partition).await;
    let json = |body: &str| rskafka::record::Record {
        key: Some(btc.as_str().as_bytes().to_vec()),
        value: Some(body.as_bytes().to_vec()),
        headers: [(wick_wire::CONTENT_TYPE_HEADER.to_owned(), wick_wire::CONTENT_TYPE_JSON.as_bytes().to_vec())].into(),
        timestamp: chrono::Utc::now(),
    };
    let in_the_middle = first[0][1_499].event_time().to_string();
    let hostile = [
        r#"{"instrument":"BINANCE:BTC-USDT","trade_id":900001,"price":"100","quantity":"1","event_time":"2099-01-01T00:00:00Z"}"#
            .to_owned(),
        format!(
            r#"{{"instrument":"BINANCE:BTC-USDT","trade_id":900002,"price":"100.123456789012345678","quantity":"0.123456789012345678","event_time":"{in_the_middle}"}}"#
        ),
        r#"{"instrument":"BINANCE:BTC-USDT","trade_id":900003,"price":"100","quantity":"1","event_time":-5}"#.to_owned(),
        r#"{"instrument":"BINANCE:BTC-USDT","trade_id":900005,"price":"100","quantity":"1","event_time":"1970-01-04T23:59:59.999999Z"}"#
            .to_owned(),
    ];
    produce(&env.market, &first.concat(), 200).await;
    pc.produce(hostile.iter().map(|h| json(h)).collect(), rskafka::client::partition::Compression::NoCompression).await.unwrap();
    // A partition's record with a part of an instrument of another partition and a part whose
    // instrument is not one: each refused alone.
    let elsewhere = ["BINANCE:ETH-USDT", "BINANCE:SOL-USDT", "COINBASE:BTC-USD", "KRAKEN:XBT-USD"]
        .into_iter()
        .map(instrument)
        .find(|i| wick_kafka::partitioner::partition_for(i.as_str().as_bytes(), PARTITIONS) != partition)
        .unwrap();
    let at = first[0][1_499].event_time();
    let stray = Trade::new(elsewhere.clone(), 900_004, "5".parse().unwrap(), "1".parse().unwrap(), TakerSide::Buy, at, at).unwrap();
    let mut nameless = wick_wire::trade_batch_to_wire(&btc, "X", std::slice::from_ref(&stray));
    nameless.instrument = "no instrument".into();
    let mixed =
        wick_wire::encode_trade_batches(vec![wick_wire::trade_batch_to_wire(&elsewhere, "X", std::slice::from_ref(&stray)), nameless]);
    let mut record = json("");
    record.value = Some(mixed);
    record.headers.insert(wick_wire::CONTENT_TYPE_HEADER.to_owned(), wick_wire::CONTENT_TYPE_TRADE_BATCHES.as_bytes().to_vec());
    pc.produce(vec![record], rskafka::client::partition::Compression::NoCompression).await.unwrap();
    produce(&env.market, &second.concat(), 200).await;
    // The sentinels in the first format: records written before partition batches still count.
    produce_single_batches(&env.market, &sentinels).await;
    let running = start(config(&env), Arc::new(SystemClock));
    let mut counted: Vec<Trade> = first.concat();
    counted.extend(second.concat());
    counted.extend(sentinels.clone());
    let want = reference(&counted);
    wait_for_finals(&env.candles, &want, &sentinels, Duration::from_secs(90)).await;
    let metrics = running.stop().await;
    let mut reasons: Vec<String> = dead_letters(&env).await.into_iter().map(|(r, _)| r).collect();
    reasons.sort();
    assert_eq!(reasons, ["bad_time", "future", "malformed", "too_early", "too_precise", "wrong_partition"]);
    for reason in ["bad_time", "future", "malformed", "too_early", "too_precise", "wrong_partition"] {
        assert_eq!(metrics.dead_letters.with_label_values(&[reason]).get(), 1, "{reason} counted");
    }
    assert_eq!((metrics.too_late.get(), metrics.late.get(), metrics.aggregation_errors.get()), (0, 0, 0));
    let (got, _) = published(&env.candles).await;
    assert_finals_equal(&got, &want, &sentinels);
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}

#[tokio::test]
async fn wall_clock_steps_either_way_refuse_nothing_and_updates_keep_flowing() {
    let env = env().await;
    let now = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let clock = ManualClock::new(now);
    let i = instrument("SIM:STEP-USD");
    let running = start(config(&env), Arc::new(clock.clone()));
    let mut id = 0;
    let mut send = |at: i64| {
        id += 1;
        trade(&i, id, at, &format!("{}", 10 + id % 5), "1", TakerSide::Buy)
    };
    let mut all = Vec::new();
    // Live trades at the exchange's time, while the aggregator's clock steps an hour forward, then
    // two hours back (NTP steps, a VM resumed).
    for (step, k) in [(0, 0), (3_600 * SEC, 1), (-7_200 * SEC, 2)] {
        clock.step_wall_micros(step);
        let batch: Vec<Trade> = (0..5).map(|n| send(now.as_micros() + (k * 5 + n) * SEC)).collect();
        produce(&env.market, &batch, 10).await;
        all.extend(batch);
        let want = all.len() as u64;
        wick_test_support::wait_until("an update holding every trade so far", Duration::from_secs(30), || async {
            // Time passes (the throttle lets the trailing update out).
            clock.advance_micros(300_000);
            let (got, _) = published(&env.candles).await;
            got.values().any(|(_, c)| c.interval() == Interval::H1 && c.trade_count() == want)
        })
        .await
        .unwrap();
        clock.advance_micros(SEC);
    }
    let metrics = running.stop().await;
    assert!(dead_letters(&env).await.is_empty(), "nothing dead-lettered");
    assert_eq!((metrics.too_late.get(), metrics.late.get()), (0, 0));
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

#[tokio::test]
async fn a_database_down_at_start_is_waited_for_and_then_nothing_is_lost() {
    let env = env().await;
    let pg = tokio::task::spawn_blocking(wick_test_support::PostgresProcess::start).await.unwrap().unwrap();
    pg.stop().unwrap();
    let mut c = config(&env);
    c.checkpoint.database_url = pg.url("wick_checkpoints");
    let (publish, counted, sentinels) = fixture(500);
    produce(&env.market, &publish, 50).await;
    let running = start(c, Arc::new(SystemClock));
    // Down for a while: the service waits (it neither exits nor reads anything).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!running.task.is_finished(), "the aggregator must wait for its database, not exit");
    assert_eq!(running.metrics.trades_consumed.get(), 0, "nothing is read before the checkpoints are known");
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again().unwrap();
        pg
    })
    .await
    .unwrap();
    let want = reference(&counted);
    wait_for_finals(&env.candles, &want, &sentinels, Duration::from_secs(90)).await;
    running.stop().await;
    let (got, _) = published(&env.candles).await;
    assert_finals_equal(&got, &want, &sentinels);
    drop(pg);
    env.db.batch_execute(&format!("DROP SCHEMA {} CASCADE", env.schema)).await.unwrap();
}
