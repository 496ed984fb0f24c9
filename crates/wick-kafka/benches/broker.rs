//! The broker itself, through rskafka: produce and fetch latency and throughput, small (100 B) and
//! large (4 KB) records, one partition and eight in flight. Every later throughput figure is read
//! against what the broker on this machine carries.
//!
//! Needs the stack's broker (`cargo xtask stack up`). `WICK_BENCH_QUICKACK` (`on` or `off`) names
//! the state of the loopback route's `quickack` flag, which `cargo xtask bench` sets before each run,
//! so both states are measured in the same run.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::Record;

const SMALL: usize = 100;
const LARGE: usize = 4096;
const BATCH: usize = 100;
const PARTITIONS: i32 = 8;
const FILL_BATCHES: usize = 50;

fn records(n: usize, size: usize) -> Vec<Record> {
    (0..n).map(|i| Record { value: Some(vec![(i % 251) as u8; size]), ..wick_test_support::record(Vec::new()) }).collect()
}

async fn produce(p: &PartitionClient, n: usize, size: usize) {
    p.produce(records(n, size), Compression::NoCompression).await.expect("produce");
}

fn main() {
    let quickack = std::env::var("WICK_BENCH_QUICKACK").unwrap_or_else(|_| "unknown".into());
    let full = std::env::var("WICK_BENCH_BROKER_FULL").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (client, topic) = rt.block_on(async {
        let client = wick_test_support::kafka().await;
        let topic = wick_test_support::topic(&client, "bench-broker", PARTITIONS).await;
        (client, topic)
    });
    let partitions: Vec<PartitionClient> = rt.block_on(async {
        let mut v = Vec::new();
        for p in 0..PARTITIONS {
            v.push(wick_test_support::partition(&client, &topic, p).await);
        }
        v
    });

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("broker");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(10);
    let id = |name: &str| BenchmarkId::new(name, format!("quickack_{quickack}"));

    group.throughput(Throughput::Elements(1));
    group.bench_function(id("produce_1x100B"), |b| b.to_async(&rt).iter(|| produce(&partitions[0], 1, SMALL)));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(id("produce_100x100B"), |b| b.to_async(&rt).iter(|| produce(&partitions[0], BATCH, SMALL)));

    // Fetch: 50 batches of 100 records written beforehand, read back from the first to the last
    // with 1 MiB fetches (tansu answers with everything up to the byte limit).
    let fill = |p: &PartitionClient, size: usize| {
        rt.block_on(async {
            let start = p.get_offset(rskafka::client::partition::OffsetAt::Latest).await.expect("latest offset");
            for _ in 0..FILL_BATCHES {
                produce(p, BATCH, size).await;
            }
            (start, start + (FILL_BATCHES * BATCH) as i64)
        })
    };
    let read_all = |p: &'static PartitionClient, (from, to): (i64, i64)| {
        move |iters: u64| async move {
            let begin = Instant::now();
            for _ in 0..iters {
                let mut offset = from;
                while offset < to {
                    let (records, _) = p.fetch_records(offset, 1..1_048_576, 0).await.expect("fetch");
                    offset = records.last().map_or(offset, |r| r.offset + 1);
                }
            }
            begin.elapsed()
        }
    };
    let partitions: &'static [PartitionClient] = partitions.leak();
    group.throughput(Throughput::Elements((FILL_BATCHES * BATCH) as u64));
    let small = fill(&partitions[1], SMALL);
    group.bench_function(id("fetch_5000x100B"), |b| b.to_async(&rt).iter_custom(read_all(&partitions[1], small)));

    if full {
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(id("produce_100x4KB"), |b| b.to_async(&rt).iter(|| produce(&partitions[2], BATCH, LARGE)));
        let large = fill(&partitions[3], LARGE);
        group.throughput(Throughput::Elements((FILL_BATCHES * BATCH) as u64));
        group.bench_function(id("fetch_5000x4KB"), |b| b.to_async(&rt).iter_custom(read_all(&partitions[3], large)));
        group.throughput(Throughput::Elements(BATCH as u64 * PARTITIONS as u64));
        group.bench_function(id("produce_100x100B_8_partitions_in_flight"), |b| {
            b.to_async(&rt).iter(|| async {
                let requests = partitions.iter().map(|p| produce(p, BATCH, SMALL));
                futures_join_all(requests).await;
            })
        });
    }
    group.finish();
    c.final_summary();
    // The topic is left behind on purpose: tansu 0.6.0 deletes every topic when asked to delete one.
    drop(client);
}

/// Runs the futures concurrently on the current task (no extra dependency for `join_all`).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    done = false;
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
