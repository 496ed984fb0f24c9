//! The L2 cache against the real Redis, single node and the stack's 3-node cluster: version-guarded
//! writes, chunk reads, the completeness marker, invalidation, and TTLs.

use std::time::Duration;

use wick_cache::{CacheSettings, L2Cache};
use wick_core::{Candle, Instrument, Interval, TakerSide, Timestamp, Trade};

fn candle(instrument: &str, minute: i64, trades: u64) -> Candle {
    let instrument = Instrument::new(instrument).unwrap();
    let t = Timestamp::from_micros(1_700_000_000_000_000 + minute * 60_000_000).unwrap();
    let trade = |id: u64| {
        Trade::new(instrument.clone(), id, format!("{}.5", 100 + id).parse().unwrap(), "0.01".parse().unwrap(), TakerSide::Sell, t, t)
            .unwrap()
    };
    let mut c = Candle::from_trade(Interval::M1, &trade(1)).unwrap();
    for id in 2..=trades {
        c.apply(&trade(id)).unwrap();
    }
    c
}

async fn cache(url: String) -> L2Cache {
    let cache = L2Cache::connect(&CacheSettings {
        url,
        prefix: wick_test_support::redis_prefix(),
        ttl: Duration::from_secs(60),
        command_timeout: Duration::from_secs(2),
    })
    .unwrap();
    cache
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("Redis is unreachable ({e}); start the stack with `cargo xtask stack up`"));
    cache
}

async fn versions_are_guarded_and_chunks_read_back(cache: L2Cache) {
    let btc = Instrument::new("BINANCE:BTC-USDT").unwrap();
    let newer = candle("BINANCE:BTC-USDT", 0, 5);
    let older = candle("BINANCE:BTC-USDT", 0, 3);
    let other = candle("BINANCE:BTC-USDT", 1, 1);
    let eth = candle("BINANCE:ETH-USDT", 0, 2);
    assert_eq!(cache.upsert(&[newer.clone(), other.clone(), eth.clone()]).await.unwrap(), 3);
    assert_eq!(cache.upsert(std::slice::from_ref(&older)).await.unwrap(), 0, "an older version never replaces a newer one");
    assert_eq!(cache.upsert(std::slice::from_ref(&newer)).await.unwrap(), 0, "the same version changes nothing");
    let chunk = wick_cache::chunk_of(Interval::M1, newer.open_time());
    let (complete, held) = cache.chunk(&btc, Interval::M1, chunk).await.unwrap();
    assert!(!complete, "the writer's candles alone do not make a chunk complete");
    assert_eq!(held, vec![newer.clone(), other.clone()], "exact candles, in open-time order");

    let mut closed = newer.clone();
    closed.mark_closed();
    assert_eq!(cache.upsert(std::slice::from_ref(&closed)).await.unwrap(), 1, "a newer version replaces");
    cache.mark_complete(&btc, Interval::M1, chunk).await.unwrap();
    let (complete, held) = cache.chunk(&btc, Interval::M1, chunk).await.unwrap();
    assert!(complete);
    assert_eq!(held[0], closed);

    let key = wick_cache::chunk_key(cache.prefix(), &btc, Interval::M1, chunk);
    cache.invalidate(&[key]).await.unwrap();
    let (complete, held) = cache.chunk(&btc, Interval::M1, chunk).await.unwrap();
    assert!(!complete && held.is_empty());
    let (_, eth_held) = cache.chunk(eth.instrument(), Interval::M1, chunk).await.unwrap();
    assert_eq!(eth_held, vec![eth], "other series are untouched");
}

#[tokio::test]
async fn single_node() {
    let c = cache(format!("redis://{}", wick_test_support::redis_address())).await;
    versions_are_guarded_and_chunks_read_back(c).await;
}

#[tokio::test]
async fn cluster() {
    let url = std::env::var("WICK_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002&node=127.0.0.1:7003".into());
    versions_are_guarded_and_chunks_read_back(cache(url).await).await;
}

#[tokio::test]
async fn an_unreachable_redis_fails_fast_instead_of_hanging() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = L2Cache::connect(&CacheSettings {
        url: format!("redis://127.0.0.1:{port}"),
        prefix: "x".into(),
        ttl: Duration::from_secs(60),
        command_timeout: Duration::from_millis(200),
    })
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), c.upsert(&[candle("SIM:BTC-USD", 0, 1)]))
        .await
        .expect("bounded by the command timeout");
    assert!(err.is_err());
}
