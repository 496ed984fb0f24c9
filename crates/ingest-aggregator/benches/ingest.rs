//! Whole-service throughput of ingest-aggregator, from a pre-loaded `market-events` topic to
//! acknowledged `candles-completed` output, beside a bare rskafka fetch-and-decode loop over the
//! same topic in the same run (the floor: what reading the input costs at all).
//!
//! "Acknowledged" is measured by the checkpoints: a partition's checkpoint is stored only after
//! the broker acknowledged every output derived from the records before it, so the run ends when
//! every partition's checkpoint reaches the end of the input.
//!
//! Runs its own tansu broker (SQLite engine, fresh data directory), so that figures do not depend
//! on what earlier runs left in the stack's broker; PostgreSQL comes from the stack
//! (`cargo xtask stack up`). Writes `target/wick-bench/ingest.json`, which
//! `cargo xtask bench` turns into a section of `docs/BENCHMARKS.md`. `WICK_BENCH_TRADES` sets the
//! number of trades (default 4,000,000), `WICK_BENCH_SHARDS` and `WICK_BENCH_WAIT` the
//! aggregator's shards and wait strategy (default 1 and `blocking`: on 2 cores shared with the
//! broker, more threads only take turns).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest_aggregator::config::Config;
use rskafka::client::partition::{Compression, OffsetAt};
use wick_core::{Instrument, SystemClock, TakerSide, Timestamp, Trade};

const PARTITIONS: i32 = 16;
const INSTRUMENTS: usize = 16;
const TRADES_PER_RECORD: usize = 500;

/// CPU time (user + system) of this process so far, from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on every Linux the stack runs on.
    Duration::from_millis(ticks * 10)
}

async fn preload(broker: &str, topic: &str, trades: usize) -> usize {
    let client = wick_test_support::kafka_at(broker).await;
    let instruments: Vec<Instrument> = (0..INSTRUMENTS).map(|i| Instrument::new(&format!("BENCH:C{i}-USDT")).unwrap()).collect();
    let start = Timestamp::parse_rfc3339("2026-01-05T00:00:00Z").unwrap().as_micros();
    let per_instrument = trades / INSTRUMENTS;
    let mut records = 0;
    let mut by_partition: Vec<Vec<rskafka::record::Record>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
    for (k, instrument) in instruments.iter().enumerate() {
        let p = wick_kafka::partitioner::partition_for(instrument.as_str().as_bytes(), PARTITIONS) as usize;
        let mut price: i64 = 6_000_000 + k as i64 * 1000;
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ k as u64;
        for chunk_start in (0..per_instrument).step_by(TRADES_PER_RECORD) {
            let batch: Vec<Trade> = (chunk_start..(chunk_start + TRADES_PER_RECORD).min(per_instrument))
                .map(|n| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    price += (seed % 21) as i64 - 10;
                    // 20 trades per second per instrument: the run spans about a day.
                    let t = Timestamp::from_micros(start + n as i64 * 50_000).unwrap();
                    let side = if seed % 2 == 0 { TakerSide::Buy } else { TakerSide::Sell };
                    Trade::new(
                        instrument.clone(),
                        n as u64 + 1,
                        wick_core::Decimal::new(i128::from(price), 2).unwrap(),
                        wick_core::Decimal::new(i128::from(1 + seed % 100_000), 5).unwrap(),
                        side,
                        t,
                        t,
                    )
                    .unwrap()
                })
                .collect();
            by_partition[p].push(wick_test_support::record(wick_wire::encode_trade_batch(instrument, "BENCH", &batch)));
            records += 1;
        }
    }
    for (p, list) in by_partition.into_iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let pc = wick_test_support::partition(&client, topic, p as i32).await;
        for chunk in list.chunks(20) {
            pc.produce(chunk.to_vec(), Compression::NoCompression).await.unwrap();
        }
    }
    records
}

/// Fetches every partition to its end and decodes every trade: the floor of any consumer.
async fn bare_fetch_and_decode(broker: &str, topic: &str) -> usize {
    let client = Arc::new(wick_test_support::kafka_at(broker).await);
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        let client = client.clone();
        let topic = topic.to_owned();
        tasks.push(tokio::spawn(async move {
            let pc = wick_test_support::partition(&client, &topic, p).await;
            let end = pc.get_offset(OffsetAt::Latest).await.unwrap();
            let (mut offset, mut trades) = (0, 0);
            while offset < end {
                let (records, _) = pc.fetch_records(offset, 10_240..8 * 1024 * 1024, 100).await.unwrap();
                for r in records {
                    if r.offset < offset {
                        continue;
                    }
                    let content_type = r.record.headers.get(wick_wire::CONTENT_TYPE_HEADER).map(Vec::as_slice);
                    let parts = wick_wire::decode_market_record(
                        content_type,
                        r.record.value.as_deref().unwrap_or_default(),
                        wick_core::Timestamp::MIN,
                    )
                    .unwrap();
                    trades += parts.iter().map(|p| p.as_ref().map_or(0, |(_, t)| t.len())).sum::<usize>();
                    offset = r.offset + 1;
                }
            }
            trades
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

async fn wick(broker: &str, topic: &str) -> (u64, u64) {
    let client = wick_test_support::kafka_at(broker).await;
    let candles = create_topic(&client, broker, "bench-candles", 4).await;
    let dlq = create_topic(&client, broker, "bench-dlq", 4).await;
    let (db, schema) = wick_test_support::postgres_schema().await;
    let mut config = Config::default();
    config.kafka.brokers = vec![broker.to_owned()];
    config.kafka.market_events_topic = topic.to_owned();
    config.kafka.candles_topic = candles;
    config.kafka.dead_letter_topic = dlq;
    config.consumer.auto_offset_reset = "earliest".into();
    config.ring.wait_strategy = std::env::var("WICK_BENCH_WAIT").unwrap_or_else(|_| "blocking".into());
    config.ring.num_consumers = std::env::var("WICK_BENCH_SHARDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    config.checkpoint.database_url = wick_test_support::postgres_config();
    config.checkpoint.schema = Some(schema.clone());
    config.checkpoint.interval = wick_service::duration::Duration::from_millis(200);
    config.ops.listen = "127.0.0.1:0".parse().unwrap();
    let mut ends = Vec::new();
    for p in 0..PARTITIONS {
        ends.push(wick_test_support::partition(&client, topic, p).await.get_offset(OffsetAt::Latest).await.unwrap());
    }
    let total: i64 = ends.iter().sum();
    let metrics = ingest_aggregator::metrics::Metrics::new();
    let (trigger, shutdown) = wick_service::shutdown::channel();
    let run = tokio::spawn(ingest_aggregator::run(config, metrics.clone(), Default::default(), Arc::new(SystemClock), shutdown));
    loop {
        let done: i64 = db
            .query_one(
                &format!("SELECT coalesce(sum(next_offset), 0)::int8 FROM {schema}.aggregator_checkpoints WHERE topic = $1"),
                &[&topic],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if done >= total {
            break;
        }
        assert!(!run.is_finished(), "the aggregator stopped early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trigger.trigger();
    run.await.unwrap().unwrap();
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    (metrics.trades_consumed.get(), metrics.records_produced.get())
}

async fn create_topic(client: &rskafka::client::Client, broker: &str, prefix: &str, partitions: i32) -> String {
    let name = wick_test_support::unique_name(prefix);
    wick_kafka::ensure_topics(client, broker, &[wick_kafka::TopicSpec { name: name.clone(), partitions }]).await.unwrap();
    name
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let trades: usize = std::env::var("WICK_BENCH_TRADES").ok().and_then(|s| s.parse().ok()).unwrap_or(4_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let broker_process = wick_test_support::BrokerProcess::start(wick_test_support::StorageEngine::Sqlite).unwrap();
    let broker = broker_process.address();
    runtime.block_on(async {
        let client = wick_test_support::kafka_at(&broker).await;
        let topic = create_topic(&client, &broker, "bench-market", PARTITIONS).await;
        let records = preload(&broker, &topic, trades).await;
        eprintln!("ingest bench: {trades} trades in {records} records on {topic}");

        let (cpu0, t0) = (cpu_time(), Instant::now());
        let decoded = bare_fetch_and_decode(&broker, &topic).await;
        let (bare_wall, bare_cpu) = (t0.elapsed(), cpu_time() - cpu0);
        assert_eq!(decoded, trades / INSTRUMENTS * INSTRUMENTS);

        let (cpu0, t0) = (cpu_time(), Instant::now());
        let (consumed, produced) = wick(&broker, &topic).await;
        let (wick_wall, wick_cpu) = (t0.elapsed(), cpu_time() - cpu0);
        assert_eq!(consumed as usize, decoded);

        let per_second = |wall: Duration| decoded as f64 / wall.as_secs_f64();
        let json = serde_json::json!({
            "trades": decoded,
            "records": records,
            "partitions": PARTITIONS,
            "instruments": INSTRUMENTS,
            "bare": { "seconds": bare_wall.as_secs_f64(), "trades_per_second": per_second(bare_wall), "cpu_us_per_trade": bare_cpu.as_secs_f64() * 1e6 / decoded as f64 },
            "wick": {
                "seconds": wick_wall.as_secs_f64(),
                "trades_per_second": per_second(wick_wall),
                "cpu_us_per_trade": wick_cpu.as_secs_f64() * 1e6 / decoded as f64,
                "records_produced": produced,
                "wait_strategy": std::env::var("WICK_BENCH_WAIT").unwrap_or_else(|_| "blocking".into()),
                "shards": std::env::var("WICK_BENCH_SHARDS").ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(1),
            },
        });
        eprintln!("ingest bench: {json}");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wick-bench");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ingest.json"), serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    });
}
