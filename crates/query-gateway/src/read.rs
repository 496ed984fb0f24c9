//! The read path: L1 (in process, `quick_cache`) -> L2 (Redis, via `wick-cache`) -> database.
//!
//! The unit of caching is the *chunk*: the candles of one series (instrument, interval) whose
//! open times fall in one span of 1000 buckets ([`wick_cache::chunk_of`]), the same unit as the
//! L2 layout. A tier answers for a chunk only when it holds the whole chunk: L1 entries are
//! always whole (loaded from a complete L2 chunk or from the database), and an L2 chunk is whole
//! only with its `complete` marker. A query takes the chunks its range touches, so an answer
//! never depends on which tier served it.
//!
//! Candle events from `candles-completed` reach the gateway before the writer has stored them.
//! The live consumer applies each one to the L1 chunk holding it (if loaded) and keeps it in
//! [`Unpersisted`] until the writer's stored offsets show it is in the database and in L2; every
//! chunk loaded from L2 or the database gets those candles merged in, so a load never goes back
//! behind what the gateway already showed. Every merge keeps the higher version of a candle.
//!
//! Concurrent misses on one chunk share one load (`quick_cache`'s placeholder guard).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use wick_cache::{chunk_of, chunk_span_ms, Breaker, L2Cache};
use wick_core::{Candle, CandleParts, Decimal, Instrument, Interval, Timestamp, TradeKey};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// One chunk of one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub instrument: Instrument,
    pub interval: Interval,
    pub chunk: i64,
}

impl ChunkKey {
    pub fn of(instrument: &Instrument, interval: Interval, open_time: Timestamp) -> ChunkKey {
        ChunkKey { instrument: instrument.clone(), interval, chunk: chunk_of(interval, open_time) }
    }

    /// Open times (µs) `[from, to)` of the chunk.
    fn bounds_us(&self) -> (i64, i64) {
        let span_us = chunk_span_ms(self.interval) * 1000;
        (self.chunk * span_us, (self.chunk + 1) * span_us)
    }
}

/// A whole chunk: every candle of the series in its span, by open time (µs), each beside its JSON
/// (rendered once when it enters the chunk: a REST answer from L1 is then a concatenation).
#[derive(Debug)]
pub struct Chunk {
    loaded_at: Instant,
    candles: RwLock<BTreeMap<i64, (Candle, Box<str>)>>,
}

impl Chunk {
    fn new(candles: impl IntoIterator<Item = Candle>) -> Chunk {
        let mut map = BTreeMap::new();
        for c in candles {
            keep_newer(&mut map, c);
        }
        Chunk { loaded_at: Instant::now(), candles: RwLock::new(map) }
    }

    fn apply(&self, candle: &Candle) {
        let mut map = self.candles.write().unwrap_or_else(|e| e.into_inner());
        keep_newer(&mut map, candle.clone());
    }

    /// The candles opening in `[from, to]`, appended to `out`.
    fn copy_range(&self, from: Timestamp, to: Timestamp, out: &mut Vec<Candle>) {
        let map = self.candles.read().unwrap_or_else(|e| e.into_inner());
        out.extend(map.range(from.as_micros()..=to.as_micros()).map(|(_, (c, _))| c.clone()));
    }

    /// The JSON of the candles opening in `[from, to]`, comma-separated, appended to `out`;
    /// returns how many.
    fn json_range(&self, from: Timestamp, to: Timestamp, out: &mut String, mut written: usize) -> usize {
        let map = self.candles.read().unwrap_or_else(|e| e.into_inner());
        for (_, (_, json)) in map.range(from.as_micros()..=to.as_micros()) {
            if written > 0 {
                out.push(',');
            }
            out.push_str(json);
            written += 1;
        }
        written
    }

    /// The last candle opening before `before`.
    fn last_before(&self, before: Timestamp) -> Option<Candle> {
        let map = self.candles.read().unwrap_or_else(|e| e.into_inner());
        map.range(..before.as_micros()).next_back().map(|(_, (c, _))| c.clone())
    }

    fn len(&self) -> usize {
        self.candles.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn keep_newer(map: &mut BTreeMap<i64, (Candle, Box<str>)>, candle: Candle) {
    let key = candle.open_time().as_micros();
    match map.get(&key) {
        Some((held, _)) if held.version() >= candle.version() => {}
        _ => {
            let json = crate::json::candle(&candle).into_boxed_str();
            map.insert(key, (candle, json));
        }
    }
}

type Series = (Instrument, Interval);

/// Candle versions seen on `candles-completed` that the writer may not have stored yet, with the
/// partition and offset of the record that carried them.
#[derive(Debug, Default)]
pub struct Unpersisted {
    series: HashMap<Series, BTreeMap<i64, (Candle, i32, i64)>>,
    len: usize,
}

impl Unpersisted {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn add(&mut self, candle: &Candle, partition: i32, offset: i64) {
        let map = self.series.entry((candle.instrument().clone(), candle.interval())).or_default();
        let key = candle.open_time().as_micros();
        match map.get(&key) {
            Some((held, _, _)) if held.version() >= candle.version() => {}
            Some(_) => {
                map.insert(key, (candle.clone(), partition, offset));
            }
            None => {
                map.insert(key, (candle.clone(), partition, offset));
                self.len += 1;
            }
        }
    }

    /// Drops what the writer has stored: records before `stored[partition]`.
    pub fn prune(&mut self, stored: &HashMap<i32, i64>) {
        let mut len = 0;
        self.series.retain(|_, map| {
            map.retain(|_, (_, p, o)| stored.get(p).is_none_or(|next| *o >= *next));
            len += map.len();
            !map.is_empty()
        });
        self.len = len;
    }

    /// Drops the oldest records until at most `max` candles are held; returns how many went.
    pub fn cap(&mut self, max: usize) -> usize {
        if self.len <= max {
            return 0;
        }
        let mut offsets: Vec<i64> = self.series.values().flat_map(|m| m.values().map(|(_, _, o)| *o)).collect();
        offsets.sort_unstable();
        let cut = offsets[self.len - max];
        let before = self.len;
        let mut len = 0;
        self.series.retain(|_, map| {
            map.retain(|_, (_, _, o)| *o >= cut);
            len += map.len();
            !map.is_empty()
        });
        self.len = len;
        before - len
    }

    fn in_chunk(&self, key: &ChunkKey) -> Vec<Candle> {
        let (from, to) = key.bounds_us();
        self.series
            .get(&(key.instrument.clone(), key.interval))
            .map(|m| m.range(from..to).map(|(_, (c, _, _))| c.clone()).collect())
            .unwrap_or_default()
    }
}

/// The L2 tier with its circuit breaker.
#[derive(Debug)]
pub struct L2 {
    pub cache: L2Cache,
    breaker: Mutex<Breaker>,
}

impl L2 {
    pub fn new(cache: L2Cache) -> L2 {
        L2 { cache, breaker: Mutex::new(Breaker::new(Duration::from_millis(250), Duration::from_secs(10))) }
    }

    fn allows(&self) -> bool {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner()).allows(Instant::now())
    }

    fn record(&self, ok: bool, metrics: &Metrics) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            breaker.success();
        } else {
            breaker.failure(Instant::now());
            metrics.l2_errors.inc();
        }
        metrics.l2_breaker_open.set(i64::from(breaker.is_open()));
    }
}

/// Where candles are read from.
pub struct ReadPath {
    l1: Option<quick_cache::sync::Cache<ChunkKey, Arc<Chunk>>>,
    l1_ttl: Duration,
    l2: Option<Arc<L2>>,
    db: Pool,
    db_timeout: Duration,
    unpersisted: Mutex<Unpersisted>,
    instruments: RwLock<BTreeSet<Instrument>>,
    metrics: Metrics,
}

impl std::fmt::Debug for ReadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPath").field("l1", &self.l1.is_some()).field("l2", &self.l2.is_some()).finish()
    }
}

const COLUMNS: &str = "instrument, interval, (extract(epoch from open_time) * 1000000)::bigint, open::text, high::text, low::text, \
     close::text, volume::text, quote_volume::text, taker_buy_volume::text, taker_buy_quote_volume::text, trade_count, \
     first_trade_id::text, last_trade_id::text, (extract(epoch from first_trade_time) * 1000000)::bigint, \
     (extract(epoch from last_trade_time) * 1000000)::bigint, closed, version";

impl ReadPath {
    pub fn new(l1: Option<(usize, Duration)>, l2: Option<Arc<L2>>, db: Pool, db_timeout: Duration, metrics: Metrics) -> ReadPath {
        ReadPath {
            l1: l1.map(|(entries, _)| quick_cache::sync::Cache::new(entries)),
            l1_ttl: l1.map_or(Duration::ZERO, |(_, ttl)| ttl),
            l2,
            db,
            db_timeout,
            unpersisted: Mutex::new(Unpersisted::default()),
            instruments: RwLock::new(BTreeSet::new()),
            metrics,
        }
    }

    pub fn l2(&self) -> Option<&Arc<L2>> {
        self.l2.as_ref()
    }

    /// The candles of a series opening in `[from, to]`, oldest first.
    pub async fn range(
        &self,
        instrument: &Instrument,
        interval: Interval,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Candle>, ApiError> {
        let mut out = Vec::new();
        for chunk in chunk_of(interval, from)..=chunk_of(interval, to) {
            let key = ChunkKey { instrument: instrument.clone(), interval, chunk };
            self.chunk(&key).await?.copy_range(from, to, &mut out);
        }
        Ok(out)
    }

    /// The JSON array items (comma-separated) of the candles of a series opening in `[from, to]`,
    /// appended to `out`; returns how many.
    pub async fn range_json(
        &self,
        instrument: &Instrument,
        interval: Interval,
        from: Timestamp,
        to: Timestamp,
        out: &mut String,
    ) -> Result<usize, ApiError> {
        let mut written = 0;
        for chunk in chunk_of(interval, from)..=chunk_of(interval, to) {
            let key = ChunkKey { instrument: instrument.clone(), interval, chunk };
            written = self.chunk(&key).await?.json_range(from, to, out, written);
        }
        Ok(written)
    }

    /// The last candle of a series opening before `before`: from the chunk holding `before` when
    /// it has one, else from the database (an index lookup).
    pub async fn last_before(&self, instrument: &Instrument, interval: Interval, before: Timestamp) -> Result<Option<Candle>, ApiError> {
        let key = ChunkKey::of(instrument, interval, before);
        if let Some(c) = self.chunk(&key).await?.last_before(before) {
            return Ok(Some(c));
        }
        let (chunk_start, _) = key.bounds_us();
        let sql = format!(
            "SELECT {COLUMNS} FROM candles WHERE instrument = $1 AND interval = $2 AND open_time < (timestamptz 'epoch' + $3::int8 * interval '1 microsecond') \
             ORDER BY open_time DESC LIMIT 1"
        );
        let rows = self.query(&sql, instrument, interval, chunk_start, None).await?;
        let mut found = rows.into_iter().next();
        // A newer version of it may be on its way to the database.
        if let Some(c) = &found {
            let pending =
                self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).in_chunk(&ChunkKey::of(instrument, interval, c.open_time()));
            for p in pending {
                if p.open_time() < before && found.as_ref().is_none_or(|f| p.open_time() > f.open_time() || p.version() > f.version()) {
                    found = Some(p);
                }
            }
        }
        Ok(found)
    }

    async fn chunk(&self, key: &ChunkKey) -> Result<Arc<Chunk>, ApiError> {
        let Some(l1) = &self.l1 else {
            return Ok(Arc::new(self.load(key).await?));
        };
        loop {
            match l1.get_value_or_guard_async(key).await {
                Ok(chunk) if chunk.loaded_at.elapsed() < self.l1_ttl => {
                    self.metrics.l1_hits.inc();
                    return Ok(chunk);
                }
                Ok(_) => {
                    l1.remove(key);
                }
                Err(guard) => {
                    self.metrics.l1_misses.inc();
                    let chunk = self.load(key).await?;
                    let chunk = Arc::new(chunk);
                    let _ = guard.insert(chunk.clone());
                    // Candles that arrived while the chunk was loading.
                    let pending = self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).in_chunk(key);
                    for c in &pending {
                        chunk.apply(c);
                    }
                    self.metrics.l1_entries.set(l1.len() as i64);
                    return Ok(chunk);
                }
            }
        }
    }

    /// Loads a whole chunk from L2 or, failing that, the database (filling L2 behind it).
    async fn load(&self, key: &ChunkKey) -> Result<Chunk, ApiError> {
        if let Some(l2) = self.l2.as_ref().filter(|l2| l2.allows()) {
            match l2.cache.chunk(&key.instrument, key.interval, key.chunk).await {
                Ok((true, candles)) => {
                    l2.record(true, &self.metrics);
                    self.metrics.l2_hits.inc();
                    return Ok(self.with_unpersisted(key, candles));
                }
                Ok((false, _)) => {
                    l2.record(true, &self.metrics);
                    self.metrics.l2_misses.inc();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "L2 read failed");
                    l2.record(false, &self.metrics);
                }
            }
        }
        let (from, to) = key.bounds_us();
        let sql = format!(
            "SELECT {COLUMNS} FROM candles WHERE instrument = $1 AND interval = $2 \
             AND open_time >= (timestamptz 'epoch' + $3::int8 * interval '1 microsecond') AND open_time < (timestamptz 'epoch' + $4::int8 * interval '1 microsecond') ORDER BY open_time"
        );
        let candles = self.query(&sql, &key.instrument, key.interval, from, Some(to)).await?;
        self.metrics.db_loads.inc();
        if let Some(l2) = self.l2.clone().filter(|l2| l2.allows()) {
            let (key, candles, metrics) = (key.clone(), candles.clone(), self.metrics.clone());
            tokio::spawn(async move {
                let filled = async {
                    l2.cache.upsert(&candles).await?;
                    l2.cache.mark_complete(&key.instrument, key.interval, key.chunk).await
                };
                let ok = filled.await.is_ok();
                l2.record(ok, &metrics);
            });
        }
        Ok(self.with_unpersisted(key, candles))
    }

    fn with_unpersisted(&self, key: &ChunkKey, candles: Vec<Candle>) -> Chunk {
        let chunk = Chunk::new(candles);
        for c in self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).in_chunk(key) {
            chunk.apply(&c);
        }
        chunk
    }

    async fn query(&self, sql: &str, instrument: &Instrument, interval: Interval, a: i64, b: Option<i64>) -> Result<Vec<Candle>, ApiError> {
        let unavailable = |what: String| {
            self.metrics.db_errors.inc();
            ApiError::Unavailable(format!("the database cannot answer and no cache holds this range: {what}"))
        };
        let run = async {
            let db = self.db.get().await.map_err(|e| e.to_string())?;
            let (name, iv) = (instrument.as_str(), interval.as_str());
            let rows = match b {
                Some(b) => db.query(sql, &[&name, &iv, &a, &b]).await,
                None => db.query(sql, &[&name, &iv, &a]).await,
            };
            rows.map_err(|e| e.to_string())
        };
        let rows = match tokio::time::timeout(self.db_timeout, run).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(unavailable(format!("no answer within {:?}", self.db_timeout))),
        };
        rows.iter().map(|r| candle_from_row(r).map_err(|e| unavailable(format!("stored candle: {e}")))).collect()
    }

    /// A candle event from `candles-completed` (record at `offset` of `partition`).
    pub fn apply_live(&self, candle: &Candle, partition: i32, offset: i64) {
        // Recorded before L1 is looked at, and loads insert into L1 before reading this: any
        // interleaving leaves the candle in the chunk.
        self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).add(candle, partition, offset);
        if let Some(l1) = &self.l1 {
            if let Some(chunk) = l1.get(&ChunkKey::of(candle.instrument(), candle.interval(), candle.open_time())) {
                chunk.apply(candle);
            }
        }
        let known = self.instruments.read().unwrap_or_else(|e| e.into_inner()).contains(candle.instrument());
        if !known {
            self.instruments.write().unwrap_or_else(|e| e.into_inner()).insert(candle.instrument().clone());
        }
    }

    /// Forgets candles the writer has stored (in the database and, with L2, in Redis), and caps
    /// what is held.
    pub fn prune(&self, stored: &HashMap<i32, i64>, max: usize) {
        let mut unpersisted = self.unpersisted.lock().unwrap_or_else(|e| e.into_inner());
        unpersisted.prune(stored);
        let dropped = unpersisted.cap(max);
        if dropped > 0 {
            self.metrics.unpersisted_dropped.inc_by(dropped as u64);
            tracing::warn!(dropped, "the writer is far behind: unstored candle versions dropped from the gateway's overlay");
        }
        self.metrics.unpersisted.set(unpersisted.len() as i64);
        if let Some(l1) = &self.l1 {
            self.metrics.l1_entries.set(l1.len() as i64);
            let candles: usize = l1.iter().map(|(_, c)| c.len()).sum();
            self.metrics.l1_candles.set(candles as i64);
        }
    }

    pub fn instruments(&self) -> Vec<Instrument> {
        self.instruments.read().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    pub fn knows(&self, instrument: &Instrument) -> bool {
        self.instruments.read().unwrap_or_else(|e| e.into_inner()).contains(instrument)
    }

    /// Loads the instruments that have candles (monthly candles: one row per instrument and month).
    pub async fn load_instruments(&self) -> Result<usize, String> {
        let db = self.db.get().await.map_err(|e| e.to_string())?;
        let rows = db.query("SELECT DISTINCT instrument FROM candles WHERE interval = '1M'", &[]).await.map_err(|e| e.to_string())?;
        let mut set = self.instruments.write().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            if let Ok(i) = Instrument::new(row.get::<_, &str>(0)) {
                set.insert(i);
            }
        }
        Ok(set.len())
    }
}

fn candle_from_row(r: &tokio_postgres::Row) -> Result<Candle, String> {
    let dec = |i: usize| -> Result<Decimal, String> { r.get::<_, &str>(i).parse::<Decimal>().map_err(|e| e.to_string()) };
    let time = |us: i64| Timestamp::from_micros(us).map_err(|e| e.to_string());
    let key = |id: usize, t: usize| -> Result<TradeKey, String> {
        match (r.get::<_, Option<&str>>(id), r.get::<_, Option<i64>>(t)) {
            (Some(id), Some(t)) => Ok(TradeKey { event_time: time(t)?, trade_id: id.parse().map_err(|e| format!("trade id: {e}"))? }),
            _ => Ok(TradeKey::default()),
        }
    };
    let parts = CandleParts {
        instrument: Instrument::new(r.get::<_, &str>(0)).map_err(|e| e.to_string())?,
        interval: r.get::<_, &str>(1).parse().map_err(|e: wick_core::IntervalError| e.to_string())?,
        open_time: time(r.get(2))?,
        open: dec(3)?,
        high: dec(4)?,
        low: dec(5)?,
        close: dec(6)?,
        volume: dec(7)?,
        quote_volume: dec(8)?,
        taker_buy_volume: dec(9)?,
        taker_buy_quote_volume: dec(10)?,
        trade_count: u64::try_from(r.get::<_, i64>(11)).map_err(|e| e.to_string())?,
        first_trade: key(12, 14)?,
        last_trade: key(13, 15)?,
        closed: r.get(16),
    };
    let candle = Candle::from_parts(parts).map_err(|e| e.to_string())?;
    let version: i64 = r.get(17);
    if version != candle.version() as i64 {
        return Err(format!("version {version} does not match the stored candle's {}", candle.version()));
    }
    Ok(candle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_core::{TakerSide, Trade};

    fn candle(minute: i64, trades: u64) -> Candle {
        let i = Instrument::new("BINANCE:BTC-USDT").unwrap();
        let t = |id: u64| {
            let at = Timestamp::from_millis(minute * 60_000 + id as i64).unwrap();
            Trade::new(i.clone(), id, "1".parse().unwrap(), "1".parse().unwrap(), TakerSide::Buy, at, at).unwrap()
        };
        let mut c = Candle::from_trade(Interval::M1, &t(1)).unwrap();
        for id in 2..=trades {
            c.apply(&t(id)).unwrap();
        }
        c
    }

    #[test]
    fn unpersisted_candles_keep_the_newest_version_until_stored() {
        let mut u = Unpersisted::default();
        u.add(&candle(0, 3), 0, 10);
        u.add(&candle(0, 2), 0, 11); // older version, later record: ignored
        u.add(&candle(1, 1), 1, 5);
        assert_eq!(u.len(), 2);
        let key = ChunkKey::of(candle(0, 1).instrument(), Interval::M1, Timestamp::MIN);
        assert_eq!(u.in_chunk(&key).iter().map(Candle::version).collect::<Vec<_>>(), [3, 1]);
        u.prune(&HashMap::from([(0, 11), (1, 6)]));
        assert_eq!(u.len(), 0);

        for m in 0..10 {
            u.add(&candle(m, 1), 0, m);
        }
        assert_eq!(u.cap(4), 6);
        assert_eq!(u.in_chunk(&key).iter().map(|c| c.open_time().as_millis() / 60_000).collect::<Vec<_>>(), [6, 7, 8, 9]);
    }

    #[test]
    fn chunks_never_take_an_older_version() {
        let chunk = Chunk::new([candle(0, 5)]);
        chunk.apply(&candle(0, 4));
        chunk.apply(&candle(2, 1));
        let mut out = Vec::new();
        chunk.copy_range(Timestamp::MIN, Timestamp::from_millis(120_000).unwrap(), &mut out);
        assert_eq!(out.iter().map(Candle::version).collect::<Vec<_>>(), [5, 1]);
        assert_eq!(chunk.last_before(Timestamp::from_millis(120_000).unwrap()).unwrap().version(), 5);
    }
}
