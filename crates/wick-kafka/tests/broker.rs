//! Broker conformance: what Wick relies on from the broker, through rskafka. Many small batches
//! are produced, then fetched from an offset in the middle of a batch, from the last offset and
//! from the log end; every record must come back exactly once, in order, and records and offsets
//! must survive a broker restart.
//!
//! By default the tests use the stack's broker (`cargo xtask stack up`) and, for the restart, a
//! private broker with the same SQLite engine. `WICK_CONFORMANCE_ENGINE=memory` runs all of them
//! on a private broker with tansu's `memory://` engine instead, which these tests must reject.

use std::time::Duration;

use rskafka::client::Client;
use wick_test_support::{BrokerProcess, StorageEngine};

const BATCHES: usize = 20;
const PER_BATCH: usize = 10;
const TOTAL: i64 = (BATCHES * PER_BATCH) as i64;
const TIMEOUT: Duration = Duration::from_secs(20);

/// The broker under test: the stack's, or a private one when another engine is asked for.
async fn broker() -> (Option<BrokerProcess>, Client, String) {
    match StorageEngine::from_env() {
        StorageEngine::Sqlite => (None, wick_test_support::kafka().await, wick_test_support::broker_address()),
        engine => {
            let process = BrokerProcess::start(engine).expect("starting a private broker");
            let address = process.address();
            let client = wick_test_support::kafka_at(&address).await;
            (Some(process), client, address)
        }
    }
}

fn value(i: i64) -> Vec<u8> {
    format!("record-{i:05}").into_bytes()
}

/// Produces `BATCHES` batches of `PER_BATCH` records to a fresh single-partition topic.
async fn filled_topic(client: &Client, address: &str) -> rskafka::client::partition::PartitionClient {
    let name = wick_test_support::unique_name("conformance");
    let spec = wick_kafka::TopicSpec { name: name.clone(), partitions: 1 };
    wick_kafka::ensure_topics(client, address, &[spec]).await.expect("creating the topic");
    let partition = wick_test_support::partition(client, &name, 0).await;
    for b in 0..BATCHES {
        let first = (b * PER_BATCH) as i64;
        let offsets = wick_test_support::produce(&partition, (first..first + PER_BATCH as i64).map(value)).await;
        assert_eq!(offsets, (first..first + PER_BATCH as i64).collect::<Vec<_>>(), "offsets of batch {b}");
    }
    partition
}

async fn assert_reads_exactly(partition: &rskafka::client::partition::PartitionClient, from: i64, to: i64) {
    let (records, high_watermark) = wick_test_support::read_to_end(partition, from, TIMEOUT).await.expect("reading back");
    assert_eq!(high_watermark, to, "high watermark");
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (from..to).collect::<Vec<_>>(), "every record from {from} exactly once, in order");
    for r in &records {
        assert_eq!(r.record.value.as_deref(), Some(value(r.offset).as_slice()), "value at offset {}", r.offset);
    }
}

#[tokio::test]
async fn fetches_from_the_start_and_from_the_middle_of_batches() {
    let (_broker, client, address) = broker().await;
    let partition = filled_topic(&client, &address).await;
    for from in [0, 1, 5, PER_BATCH as i64 - 1, 57, TOTAL - PER_BATCH as i64 + 3] {
        assert_reads_exactly(&partition, from, TOTAL).await;
    }
}

#[tokio::test]
async fn fetches_the_last_record_alone() {
    let (_broker, client, address) = broker().await;
    let partition = filled_topic(&client, &address).await;
    assert_reads_exactly(&partition, TOTAL - 1, TOTAL).await;
}

#[tokio::test]
async fn fetches_nothing_at_the_log_end_then_what_comes_next() {
    let (_broker, client, address) = broker().await;
    let partition = filled_topic(&client, &address).await;
    let (records, high_watermark) = partition.fetch_records(TOTAL, 1..1_048_576, 100).await.expect("fetching at the log end");
    assert!(records.is_empty(), "nothing after the log end, got {} records", records.len());
    assert_eq!(high_watermark, TOTAL);
    let offsets = wick_test_support::produce(&partition, [value(TOTAL)]).await;
    assert_eq!(offsets, vec![TOTAL]);
    assert_reads_exactly(&partition, TOTAL, TOTAL + 1).await;
}

#[tokio::test]
async fn records_and_offsets_survive_a_broker_restart() {
    let mut broker = BrokerProcess::start(StorageEngine::from_env()).expect("starting a private broker");
    let address = broker.address();
    let topic = {
        let client = wick_test_support::kafka_at(&address).await;
        let partition = filled_topic(&client, &address).await;
        partition.topic().to_owned()
    };
    broker.restart().expect("restarting the broker");
    let client = wick_test_support::kafka_at(&address).await;
    let partition = wick_test_support::partition(&client, &topic, 0).await;
    assert_reads_exactly(&partition, 0, TOTAL).await;
    assert_reads_exactly(&partition, 13, TOTAL).await;
    // Offsets continue where they were: nothing is reused after the restart.
    let offsets = wick_test_support::produce(&partition, [value(TOTAL)]).await;
    assert_eq!(offsets, vec![TOTAL]);
}

/// Instances of a service start together and each ensures the same topics: whoever loses the race
/// to create one finds it created, and a partition count that differs is still refused.
#[tokio::test]
async fn instances_starting_together_all_see_the_topics() {
    let (_process, client, address) = broker().await;
    let name = wick_test_support::unique_name("race");
    let spec = || vec![wick_kafka::TopicSpec { name: name.clone(), partitions: 3 }];
    let specs: Vec<_> = (0..4).map(|_| spec()).collect();
    let results = futures_util::future::join_all(specs.iter().map(|s| wick_kafka::ensure_topics(&client, &address, s))).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let created = results.iter().flat_map(|r| r.as_ref().unwrap()).filter(|(_, s)| *s == wick_kafka::TopicState::Created).count();
    assert!(created <= 1, "{created} instances created the same topic");
    let other = [wick_kafka::TopicSpec { name: name.clone(), partitions: 5 }];
    assert!(wick_kafka::ensure_topics(&client, &address, &other).await.is_err());
}
