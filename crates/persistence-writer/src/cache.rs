//! Keeps the Redis L2 cache current behind the database, without ever holding the database up.
//!
//! After each commit the writer *offers* the committed candles ([`CacheFeed::offer`]: a map
//! insert, never a wait). A separate task ([`follow`]) writes them to Redis. When Redis fails, a
//! circuit breaker opens, the candles stay pending (newest version per candle, so memory is
//! bounded by the candles touched, not by the write rate) and are written once Redis answers
//! again. Beyond `max_pending` candles, the chunks of further candles are remembered instead and
//! deleted when Redis is back, so a reader reloads them from the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wick_cache::{chunk_key, chunk_of, Breaker, L2Cache};
use wick_core::{Candle, Instrument, Interval, Timestamp};

use crate::metrics::Metrics;

type CandleKey = (Instrument, Interval, Timestamp);

#[derive(Default, Debug)]
struct Pending {
    candles: HashMap<CandleKey, Candle>,
    invalidate: BTreeSet<String>,
    /// The committed offsets these candles come from: once they are in Redis, the cache is
    /// current up to there.
    offsets: BTreeMap<i32, i64>,
    /// The writer has made its last offer.
    closed: bool,
}

impl Pending {
    fn add(&mut self, candle: Candle, max: usize, prefix: &str) {
        let key = (candle.instrument().clone(), candle.interval(), candle.open_time());
        let len = self.candles.len();
        match self.candles.get_mut(&key) {
            Some(held) if held.version() >= candle.version() => {}
            Some(held) => *held = candle,
            None if len < max => {
                self.candles.insert(key, candle);
            }
            None => {
                self.invalidate.insert(chunk_key(prefix, &key.0, key.1, chunk_of(key.1, key.2)));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.candles.is_empty() && self.invalidate.is_empty() && self.offsets.is_empty()
    }

    fn add_offsets(&mut self, offsets: &BTreeMap<i32, i64>) {
        for (p, o) in offsets {
            let held = self.offsets.entry(*p).or_insert(*o);
            *held = (*held).max(*o);
        }
    }
}

/// The writer's side: committed candles go in here.
#[derive(Clone, Debug)]
pub struct CacheFeed {
    pending: Arc<Mutex<Pending>>,
    notify: Arc<Notify>,
    max_pending: usize,
    prefix: String,
}

impl CacheFeed {
    pub fn new(max_pending: usize, prefix: &str) -> CacheFeed {
        CacheFeed { pending: Arc::default(), notify: Arc::default(), max_pending, prefix: prefix.to_owned() }
    }

    /// Hands committed candles, and the offsets committed with them, to the cache follower;
    /// never waits for Redis.
    pub fn offer(&self, candles: impl IntoIterator<Item = Candle>, offsets: &BTreeMap<i32, i64>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for c in candles {
            pending.add(c, self.max_pending, &self.prefix);
        }
        pending.add_offsets(offsets);
        drop(pending);
        self.notify.notify_one();
    }

    /// The writer's last offer has been made: the follower stops once it is written (or Redis
    /// fails).
    pub fn close(&self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.notify.notify_one();
    }

    /// What is pending, and whether the writer is done.
    fn take(&self) -> (Pending, bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let closed = pending.closed;
        let taken = std::mem::take(&mut *pending);
        pending.closed = closed;
        (taken, closed)
    }

    /// Puts back what could not be written, under anything newer that arrived meanwhile.
    fn restore(&self, failed: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.invalidate.extend(failed.invalidate);
        pending.add_offsets(&failed.offsets);
        for (_, c) in failed.candles {
            pending.add(c, self.max_pending, &self.prefix);
        }
    }

    fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).candles.len()
    }
}

/// Writes offered candles to Redis until the writer closes the feed and everything offered is
/// written, then records how far the cache is current (`writer_offsets.cache_next_offset`), so
/// that after a crash or an outage the writer re-reads what the cache may have missed. While
/// Redis fails the breaker is open; once the writer is done, one failed attempt ends the follower
/// (the recorded offsets make up for it at the next start).
pub async fn follow(mut cache: L2Cache, feed: CacheFeed, pool: deadpool_postgres::Pool, topic: String, metrics: Metrics) {
    let mut breaker = Breaker::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        if !breaker.allows(Instant::now()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let (batch, closed) = feed.take();
        if batch.is_empty() {
            if closed {
                return;
            }
            feed.notify.notified().await;
            continue;
        }
        let count = batch.candles.len();
        match write(&cache, &batch).await {
            Ok(()) => {
                if breaker.is_open() {
                    tracing::info!("Redis answers again: L2 cache breaker closed");
                }
                breaker.success();
                metrics.l2_writes.inc_by(count as u64);
                metrics.l2_invalidated.inc_by(batch.invalidate.len() as u64);
                let offsets: Vec<(i32, i64)> = batch.offsets.iter().map(|(p, o)| (*p, *o)).collect();
                let recorded = async {
                    let db = pool.get().await.map_err(|e| e.to_string())?;
                    wick_store::save_cache_offsets(&**db, &topic, &offsets).await.map_err(|e| e.to_string())
                };
                if let Err(e) = recorded.await {
                    // Only costs a longer re-read after a crash.
                    tracing::warn!(error = %e, "recording the cache's offsets failed");
                }
            }
            Err(e) => {
                if !breaker.is_open() {
                    tracing::warn!(error = %e, "L2 cache write failed: breaker open, candles kept until Redis is back");
                }
                breaker.failure(Instant::now());
                metrics.l2_failures.inc();
                if breaker.reconnect_due(Instant::now()) {
                    tracing::warn!("L2 cache writes keep failing: rebuilding the Redis client");
                    if let Err(e) = cache.reconnect() {
                        tracing::error!(error = %e, "rebuilding the Redis client failed");
                    }
                }
                feed.restore(batch);
                if closed {
                    tracing::warn!("Redis is down at shutdown: the cache is repaired from the recorded offsets at the next start");
                    metrics.l2_breaker_open.set(1);
                    return;
                }
            }
        }
        metrics.l2_breaker_open.set(i64::from(breaker.is_open()));
        metrics.l2_pending.set(feed.len() as i64);
    }
}

async fn write(cache: &L2Cache, batch: &Pending) -> Result<(), wick_cache::CacheError> {
    if !batch.invalidate.is_empty() {
        cache.invalidate(&batch.invalidate.iter().cloned().collect::<Vec<_>>()).await?;
    }
    let candles: Vec<Candle> = batch.candles.values().cloned().collect();
    for chunk in candles.chunks(5_000) {
        cache.upsert(chunk).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_core::{TakerSide, Trade};

    fn candle(minute: i64, trades: u64) -> Candle {
        let instrument = Instrument::new("SIM:BTC-USD").unwrap();
        let t = Timestamp::from_micros(minute * 60_000_000).unwrap();
        let trade = |id| Trade::new(instrument.clone(), id, "1".parse().unwrap(), "1".parse().unwrap(), TakerSide::Buy, t, t).unwrap();
        let mut c = Candle::from_trade(Interval::M1, &trade(1)).unwrap();
        for id in 2..=trades {
            c.apply(&trade(id)).unwrap();
        }
        c
    }

    #[test]
    fn pending_keeps_the_newest_version_and_bounds_memory() {
        let feed = CacheFeed::new(2, "p");
        feed.offer([candle(0, 3), candle(0, 2), candle(1, 1)], &BTreeMap::new());
        assert_eq!(feed.len(), 2);
        feed.offer([candle(2, 1)], &BTreeMap::from([(0, 7)]));
        let (taken, _) = feed.take();
        let first = &taken.candles[&(Instrument::new("SIM:BTC-USD").unwrap(), Interval::M1, Timestamp::from_micros(0).unwrap())];
        assert_eq!(first.trade_count(), 3, "an older version never replaces a newer one");
        assert_eq!(taken.invalidate.len(), 1, "the candle beyond the bound invalidates its chunk instead");
        feed.offer([candle(0, 5)], &BTreeMap::from([(0, 9)]));
        feed.restore(taken);
        let (again, _) = feed.take();
        assert_eq!(again.offsets, BTreeMap::from([(0, 9)]), "the newest offsets are kept");
        assert_eq!(again.candles.values().map(Candle::trade_count).max(), Some(5), "restoring keeps what arrived meanwhile");
    }
}
