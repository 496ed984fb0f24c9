//! Sustained candle upserts per second against the real PostgreSQL: Wick's write path (binary
//! `COPY` into staging, one version-guarded `INSERT ... SELECT ... ON CONFLICT`) against the two
//! writers a user would otherwise write, in the same run on the same server, each in a schema of
//! its own created by the same migrations:
//! - multi-row `INSERT ... VALUES (...), (...) ... ON CONFLICT ... DO UPDATE ... WHERE newer`, 1000
//!   rows per statement (19,000 parameters; the protocol's limit is 65,535), one transaction per
//!   batch;
//! - one prepared `INSERT ... ON CONFLICT` per candle, each its own statement and transaction
//!   (autocommit), as a row-at-a-time consumer writes.
//!
//! Every batch is half updates (a newer version of candles written by the previous batch) and
//! half new candles, as a writer following live candles sees. Needs the stack's PostgreSQL
//! (`cargo xtask stack up`); `WICK_TEST_POSTGRES` names another server.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio_postgres::Client;
use wick_core::{Candle, CandleParts, Decimal, Instrument, Interval, Timestamp, TradeKey};
use wick_store::{CandleRow, StorageMode, TimescaleSettings, COLUMN_NAMES, UPSERT_SET};

const INSTRUMENTS: usize = 50;

/// Batch `n` of `size` candles: minutes `[n * m / 2, n * m / 2 + m)` of every instrument, with
/// `n + 1` trades each, so the first half updates the previous batch's second half.
fn batch(n: u64, size: usize) -> Vec<Candle> {
    let minutes = (size / INSTRUMENTS) as i64;
    let first_minute = n as i64 * minutes / 2;
    let mut out = Vec::with_capacity(size);
    for k in 0..INSTRUMENTS {
        let instrument = Instrument::new(&format!("BENCH:I{k}-USD")).unwrap();
        for m in first_minute..first_minute + minutes {
            let open_time = Timestamp::from_micros(1_700_000_000_000_000 / 60_000_000 * 60_000_000 + m * 60_000_000).unwrap();
            let d = |s: &str| s.parse::<Decimal>().unwrap();
            let trades = n + 1;
            let parts = CandleParts {
                instrument: instrument.clone(),
                interval: Interval::M1,
                open_time,
                open: d("43210.12"),
                high: d("43299.99"),
                low: d("43100.01"),
                close: d(&format!("432{:02}.50", n % 100)),
                volume: Decimal::new(i128::from(trades) * 125, 3).unwrap(),
                quote_volume: Decimal::new(i128::from(trades) * 5_401_265, 3).unwrap(),
                taker_buy_volume: Decimal::new(i128::from(trades) * 50, 3).unwrap(),
                taker_buy_quote_volume: Decimal::new(i128::from(trades) * 2_160_506, 3).unwrap(),
                trade_count: trades,
                first_trade: TradeKey { event_time: open_time, trade_id: 1 },
                last_trade: TradeKey { event_time: open_time, trade_id: trades },
                closed: false,
            };
            out.push(Candle::from_parts(parts).unwrap());
        }
    }
    out
}

async fn schema(name: &str) -> (Client, StorageMode) {
    let config = std::env::var("WICK_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into());
    let (mut client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL ({config}) is unreachable ({e}); start the stack with `cargo xtask stack up`"));
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}; SET search_path TO {name}")).await.unwrap();
    let mode = wick_store::migrate(&mut client, &TimescaleSettings::default()).await.unwrap();
    (client, mode)
}

async fn multi_row_insert(client: &mut Client, mode: StorageMode, candles: &[Candle]) {
    let tx = client.transaction().await.unwrap();
    if mode == StorageMode::Plain {
        wick_store::ensure_partitions(&tx, &wick_store::months_of(candles)).await.unwrap();
    }
    for chunk in candles.chunks(1000) {
        let rows: Vec<CandleRow> = chunk.iter().map(CandleRow::new).collect();
        let params: Vec<_> = rows.iter().flat_map(|r| r.params()).collect();
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", (1..=19).map(|c| format!("${}", i * 19 + c)).collect::<Vec<_>>().join(", ")))
            .collect();
        let sql = format!("INSERT INTO candles ({COLUMN_NAMES}) VALUES {} {UPSERT_SET}", values.join(", "));
        tx.execute(&sql, &params).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn row_per_statement(client: &mut Client, mode: StorageMode, candles: &[Candle]) {
    if mode == StorageMode::Plain {
        wick_store::ensure_partitions(&*client, &wick_store::months_of(candles)).await.unwrap();
    }
    let placeholders = (1..=19).map(|c| format!("${c}")).collect::<Vec<_>>().join(", ");
    let statement = client.prepare(&format!("INSERT INTO candles ({COLUMN_NAMES}) VALUES ({placeholders}) {UPSERT_SET}")).await.unwrap();
    for c in candles {
        client.execute(&statement, &CandleRow::new(c).params()).await.unwrap();
    }
}

fn upsert(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("upsert");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    for (name, size) in [("wick_copy", 10_000usize), ("multi_row_insert", 10_000), ("row_per_statement", 500)] {
        let (mut client, mode) = runtime.block_on(schema(&format!("wick_bench_{name}")));
        let mut n = 0u64;
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(BenchmarkId::new(name, size), |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let candles = batch(n, size);
                    n += 1;
                    let started = Instant::now();
                    runtime.block_on(async {
                        match name {
                            "wick_copy" => {
                                wick_store::write_batch(&mut client, mode, &candles, &[]).await.unwrap();
                            }
                            "multi_row_insert" => multi_row_insert(&mut client, mode, &candles).await,
                            _ => row_per_statement(&mut client, mode, &candles).await,
                        }
                    });
                    spent += started.elapsed();
                }
                spent
            })
        });
        runtime.block_on(client.batch_execute(&format!("DROP SCHEMA wick_bench_{name} CASCADE"))).unwrap();
    }
    group.finish();
}

criterion_group!(benches, upsert);
criterion_main!(benches);
