//! Keeps the Redis L2 cache current behind the database, without ever holding the database up.
//!
//! After each commit the writer *offers* the committed candles ([`CacheFeed::offer`]: a map
//! insert, never a wait). A separate task ([`follow`]) writes them to Redis. When Redis fails, a
//! circuit breaker opens, the candles stay pending (newest version per candle, so memory is
//! bounded by the candles touched, not by the write rate) and are written once Redis answers
//! again. Beyond `max_pending` candles, the chunks of further candles are remembered instead and
//! deleted when Redis is back, so a reader reloads them from the database.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wick_cache::{chunk_key, chunk_of, Breaker, L2Cache};
use wick_core::{Candle, Instrument, Interval, Timestamp};
use wick_service::shutdown::Shutdown;

use crate::metrics::Metrics;

type CandleKey = (Instrument, Interval, Timestamp);

#[derive(Default, Debug)]
struct Pending {
    candles: HashMap<CandleKey, Candle>,
    invalidate: BTreeSet<String>,
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
        self.candles.is_empty() && self.invalidate.is_empty()
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

    /// Hands committed candles to the cache follower; never waits for Redis.
    pub fn offer(&self, candles: impl IntoIterator<Item = Candle>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for c in candles {
            pending.add(c, self.max_pending, &self.prefix);
        }
        drop(pending);
        self.notify.notify_one();
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back what could not be written, under anything newer that arrived meanwhile.
    fn restore(&self, failed: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.invalidate.extend(failed.invalidate);
        for (_, c) in failed.candles {
            pending.add(c, self.max_pending, &self.prefix);
        }
    }

    fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).candles.len()
    }
}

/// Writes offered candles to Redis until shutdown, then makes one last attempt (bounded by the
/// command timeout) so that a clean stop leaves the cache current when Redis is up.
pub async fn follow(cache: L2Cache, feed: CacheFeed, metrics: Metrics, shutdown: Shutdown) {
    let mut breaker = Breaker::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let stopping = shutdown.is_requested();
        let now = Instant::now();
        if !breaker.allows(now) && !stopping {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.requested() => {}
            }
            continue;
        }
        let batch = feed.take();
        if batch.is_empty() {
            if stopping {
                return;
            }
            tokio::select! {
                _ = feed.notify.notified() => {}
                _ = shutdown.requested() => {}
            }
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
            }
            Err(e) => {
                if !breaker.is_open() {
                    tracing::warn!(error = %e, "L2 cache write failed: breaker open, candles kept until Redis is back");
                }
                breaker.failure(Instant::now());
                metrics.l2_failures.inc();
                feed.restore(batch);
                if stopping {
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
        feed.offer([candle(0, 3), candle(0, 2), candle(1, 1)]);
        assert_eq!(feed.len(), 2);
        feed.offer([candle(2, 1)]);
        let taken = feed.take();
        let first = &taken.candles[&(Instrument::new("SIM:BTC-USD").unwrap(), Interval::M1, Timestamp::from_micros(0).unwrap())];
        assert_eq!(first.trade_count(), 3, "an older version never replaces a newer one");
        assert_eq!(taken.invalidate.len(), 1, "the candle beyond the bound invalidates its chunk instead");
        feed.offer([candle(0, 5)]);
        feed.restore(taken);
        let again = feed.take();
        assert_eq!(again.candles.values().map(Candle::trade_count).max(), Some(5), "restoring keeps what arrived meanwhile");
    }
}
