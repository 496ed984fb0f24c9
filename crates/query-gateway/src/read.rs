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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Its weight in L1 (candles held when loaded, plus one), fixed for the cache's accounting.
    weight: u64,
    /// A reload after the TTL is under way (one at a time; readers keep the old one meanwhile).
    refreshing: AtomicBool,
    candles: RwLock<BTreeMap<i64, (Candle, Box<str>)>>,
}

impl Chunk {
    fn new(candles: impl IntoIterator<Item = Candle>) -> Chunk {
        let mut map = BTreeMap::new();
        for c in candles {
            keep_newer(&mut map, c);
        }
        Chunk { loaded_at: Instant::now(), weight: 1 + map.len() as u64, refreshing: AtomicBool::new(false), candles: RwLock::new(map) }
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

    /// Up to `max` of the candles opening in `[from, to]` into `sink`, oldest first; returns how
    /// many, and the open time of the next one in the range when there are more.
    fn take(&self, from: Timestamp, to: Timestamp, max: usize, sink: &mut dyn Sink) -> (usize, Option<Timestamp>) {
        let map = self.candles.read().unwrap_or_else(|e| e.into_inner());
        let mut taken = 0;
        for (_, (candle, json)) in map.range(from.as_micros()..=to.as_micros()) {
            if taken == max {
                return (taken, Some(candle.open_time()));
            }
            sink.push(candle, json);
            taken += 1;
        }
        (taken, None)
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

/// Where [`ReadPath::first_candles`] puts the candles it reads.
pub trait Sink {
    /// A candle and its JSON.
    fn push(&mut self, candle: &Candle, json: &str);
}

impl Sink for Vec<Candle> {
    fn push(&mut self, candle: &Candle, _: &str) {
        Vec::push(self, candle.clone());
    }
}

/// Candles as the items of a JSON array (comma-separated) appended to a string.
#[derive(Debug)]
pub struct JsonItems<'a> {
    pub out: &'a mut String,
    pub written: usize,
}

impl Sink for JsonItems<'_> {
    fn push(&mut self, _: &Candle, json: &str) {
        if self.written > 0 {
            self.out.push(',');
        }
        self.out.push_str(json);
        self.written += 1;
    }
}

/// L1 is bounded by candles held, not only by chunks.
#[derive(Clone, Copy, Debug)]
pub struct ChunkWeight;

impl quick_cache::Weighter<ChunkKey, Arc<Chunk>> for ChunkWeight {
    fn weight(&self, _: &ChunkKey, chunk: &Arc<Chunk>) -> u64 {
        chunk.weight
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

/// One candle version seen on `candles-completed`: the record that carried it, and when.
#[derive(Debug, Clone)]
struct Seen {
    candle: Candle,
    partition: i32,
    offset: i64,
    at: Instant,
}

/// Candle versions seen on `candles-completed` that the writer may not have stored yet.
///
/// An entry goes once the writer's stored offsets pass its record *and* it is older than the
/// grace period: a chunk load that started before the writer stored it may still be reading the
/// database or Redis without it, and merges this set when the read returns (loads are bounded by
/// the database and Redis timeouts, which the grace period exceeds).
#[derive(Debug, Default)]
pub struct Unpersisted {
    series: HashMap<Series, BTreeMap<i64, Seen>>,
    len: usize,
}

impl Unpersisted {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn add(&mut self, candle: &Candle, partition: i32, offset: i64, at: Instant) {
        let map = self.series.entry((candle.instrument().clone(), candle.interval())).or_default();
        let key = candle.open_time().as_micros();
        let seen = Seen { candle: candle.clone(), partition, offset, at };
        match map.get(&key) {
            Some(held) if held.candle.version() >= candle.version() => {}
            Some(_) => {
                map.insert(key, seen);
            }
            None => {
                map.insert(key, seen);
                self.len += 1;
            }
        }
    }

    /// Drops what the writer has stored (records before `stored[partition]`) and was seen before
    /// `seen_before`.
    pub fn prune(&mut self, stored: &HashMap<i32, i64>, seen_before: Instant) {
        let mut len = 0;
        self.series.retain(|_, map| {
            map.retain(|_, s| s.at >= seen_before || stored.get(&s.partition).is_none_or(|next| s.offset >= *next));
            len += map.len();
            !map.is_empty()
        });
        self.len = len;
    }

    /// Drops the longest-held versions until at most `max` are held; returns how many went.
    pub fn cap(&mut self, max: usize) -> usize {
        if self.len <= max {
            return 0;
        }
        let mut seen: Vec<Instant> = self.series.values().flat_map(|m| m.values().map(|s| s.at)).collect();
        seen.sort_unstable();
        let cut = seen[self.len - max.max(1)];
        let before = self.len;
        let mut len = 0;
        self.series.retain(|_, map| {
            map.retain(|_, s| s.at >= cut);
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
            .map(|m| m.range(from..to).map(|(_, s)| s.candle.clone()).collect())
            .unwrap_or_default()
    }

    /// The latest-opening candle of a series before `before`.
    fn last_before(&self, instrument: &Instrument, interval: Interval, before: Timestamp) -> Option<Candle> {
        let map = self.series.get(&(instrument.clone(), interval))?;
        map.range(..before.as_micros()).next_back().map(|(_, s)| s.candle.clone())
    }

    /// The earliest-opening candle of a series at or after `from`.
    fn first_from(&self, instrument: &Instrument, interval: Interval, from: Timestamp) -> Option<Candle> {
        let map = self.series.get(&(instrument.clone(), interval))?;
        map.range(from.as_micros()..).next().map(|(_, s)| s.candle.clone())
    }
}

/// The L2 tier with its circuit breaker.
#[derive(Debug)]
pub struct L2 {
    cache: Mutex<L2Cache>,
    command_timeout: Duration,
    breaker: Mutex<Breaker>,
}

impl L2 {
    pub fn new(cache: L2Cache, command_timeout: Duration) -> L2 {
        L2 {
            cache: Mutex::new(cache),
            command_timeout,
            breaker: Mutex::new(Breaker::new(Duration::from_millis(250), Duration::from_secs(10))),
        }
    }

    /// The current client (cheap: a handle).
    pub fn cache(&self) -> L2Cache {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
            if breaker.reconnect_due(Instant::now()) {
                tracing::warn!("L2 cache reads keep failing: rebuilding the Redis client");
                if let Err(e) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).reconnect() {
                    tracing::error!(error = %e, "rebuilding the Redis client failed");
                }
            }
        }
        metrics.l2_breaker_open.set(i64::from(breaker.is_open()));
    }
}

/// Where candles are read from.
pub struct ReadPath {
    l1: Option<quick_cache::sync::Cache<ChunkKey, Arc<Chunk>, ChunkWeight>>,
    l1_ttl: Duration,
    /// How long a stored candle version is still kept in `unpersisted` (see [`Unpersisted`]).
    grace: Duration,
    l2: Option<Arc<L2>>,
    db: Pool,
    db_timeout: Duration,
    unpersisted: Mutex<Unpersisted>,
    instruments: RwLock<BTreeSet<Instrument>>,
    /// The instrument list was read from the database (so an unknown one has no candles).
    instruments_loaded: AtomicBool,
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
    /// `l1`: (chunks, candles, TTL) when enabled.
    pub fn new(l1: Option<(usize, u64, Duration)>, l2: Option<Arc<L2>>, db: Pool, db_timeout: Duration, metrics: Metrics) -> ReadPath {
        let redis_timeout = l2.as_ref().map_or(Duration::ZERO, |l2| l2.command_timeout);
        ReadPath {
            l1: l1.map(|(chunks, candles, _)| quick_cache::sync::Cache::with_weighter(chunks, candles, ChunkWeight)),
            l1_ttl: l1.map_or(Duration::ZERO, |(_, _, ttl)| ttl),
            grace: 2 * (db_timeout + redis_timeout) + Duration::from_secs(1),
            l2,
            db,
            db_timeout,
            unpersisted: Mutex::new(Unpersisted::default()),
            instruments: RwLock::new(BTreeSet::new()),
            instruments_loaded: AtomicBool::new(false),
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
        let mut items = JsonItems { out, written: 0 };
        for chunk in chunk_of(interval, from)..=chunk_of(interval, to) {
            let key = ChunkKey { instrument: instrument.clone(), interval, chunk };
            self.chunk(&key).await?.take(from, to, usize::MAX, &mut items);
        }
        Ok(items.written)
    }

    /// The first `n` candles of a series opening in `[from, to]`, oldest first, into `sink`;
    /// returns the open time of the next candle in the range when there is one (where the next
    /// page starts).
    ///
    /// Chunks are read in turn (through the tiers) while they hold candles of the range. Past a
    /// chunk without any, the next candle is found with one index lookup ([`Self::first_from`]),
    /// so sparse history costs a lookup per gap, not a load per empty chunk: the work is bounded
    /// by the candles returned, wherever they lie. Knowing that no candle follows takes that
    /// lookup too, unless the chunks up to `to` were all read.
    pub async fn first_candles(
        &self,
        instrument: &Instrument,
        interval: Interval,
        from: Timestamp,
        to: Timestamp,
        n: usize,
        sink: &mut (dyn Sink + Send),
    ) -> Result<Option<Timestamp>, ApiError> {
        let mut from = from;
        let mut taken = 0;
        while from <= to {
            let key = ChunkKey::of(instrument, interval, from);
            let (got, next) = self.chunk(&key).await?.take(from, to, n - taken, sink);
            taken += got;
            if next.is_some() {
                return Ok(next);
            }
            // `from` only moves forward: to the next chunk, or to a candle beyond it.
            let Ok(chunk_end) = Timestamp::from_micros(key.bounds_us().1) else { break };
            if chunk_end > to {
                break;
            }
            from = chunk_end;
            if got == 0 {
                match self.first_from(instrument, interval, from).await? {
                    Some(c) if c.open_time() <= to => from = c.open_time(),
                    _ => break,
                }
            }
        }
        Ok(None)
    }

    /// The last candle of a series opening before `before`: from the chunk holding `before` when
    /// it has one, else from the database (an index lookup) and what is on its way there.
    pub async fn last_before(&self, instrument: &Instrument, interval: Interval, before: Timestamp) -> Result<Option<Candle>, ApiError> {
        let key = ChunkKey::of(instrument, interval, before);
        if let Some(c) = self.chunk(&key).await?.last_before(before) {
            return Ok(Some(c));
        }
        let (chunk_start, _) = key.bounds_us();
        let pending = self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).last_before(instrument, interval, before);
        let sql = format!(
            "SELECT {COLUMNS} FROM candles WHERE instrument = $1 AND interval = $2 AND open_time < (timestamptz 'epoch' + $3::int8 * interval '1 microsecond') \
             ORDER BY open_time DESC LIMIT 1"
        );
        let stored = self.query(&sql, instrument, interval, chunk_start, None).await?.into_iter().next();
        Ok(latest(stored, pending))
    }

    /// The first candle of a series opening at or after `from` (the database's index, and what is
    /// on its way there).
    pub async fn first_from(&self, instrument: &Instrument, interval: Interval, from: Timestamp) -> Result<Option<Candle>, ApiError> {
        let pending = self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).first_from(instrument, interval, from);
        let sql = format!(
            "SELECT {COLUMNS} FROM candles WHERE instrument = $1 AND interval = $2 AND open_time >= (timestamptz 'epoch' + $3::int8 * interval '1 microsecond') \
             ORDER BY open_time LIMIT 1"
        );
        let stored = self.query(&sql, instrument, interval, from.as_micros(), None).await?.into_iter().next();
        Ok(match (stored, pending) {
            (Some(s), Some(p)) => Some(if p.open_time() < s.open_time() { p } else { s }),
            (s, p) => s.or(p),
        })
    }

    async fn chunk(&self, key: &ChunkKey) -> Result<Arc<Chunk>, ApiError> {
        let Some(l1) = &self.l1 else {
            return Ok(Arc::new(self.load(key).await?));
        };
        match l1.get_value_or_guard_async(key).await {
            Ok(chunk) if chunk.loaded_at.elapsed() < self.l1_ttl => {
                self.metrics.l1_hits.inc();
                Ok(chunk)
            }
            Ok(stale) => {
                // One reader reloads; the others, and this one when the reload fails (the
                // database down), keep answering from the chunk, which the live feed kept current.
                self.metrics.l1_hits.inc();
                if stale.refreshing.swap(true, Ordering::AcqRel) {
                    return Ok(stale);
                }
                match self.load(key).await {
                    Ok(fresh) => Ok(self.insert(l1, key, fresh)),
                    Err(e) => {
                        tracing::debug!(error = %e, "reloading an expired L1 chunk failed; serving it as it is");
                        stale.refreshing.store(false, Ordering::Release);
                        Ok(stale)
                    }
                }
            }
            Err(guard) => {
                self.metrics.l1_misses.inc();
                let chunk = Arc::new(self.load(key).await?);
                let _ = guard.insert(chunk.clone());
                self.merge_unpersisted(key, &chunk);
                self.metrics.l1_entries.set(l1.len() as i64);
                Ok(chunk)
            }
        }
    }

    fn insert(&self, l1: &quick_cache::sync::Cache<ChunkKey, Arc<Chunk>, ChunkWeight>, key: &ChunkKey, chunk: Chunk) -> Arc<Chunk> {
        let chunk = Arc::new(chunk);
        l1.insert(key.clone(), chunk.clone());
        self.merge_unpersisted(key, &chunk);
        chunk
    }

    /// Candles that arrived while the chunk was loading.
    fn merge_unpersisted(&self, key: &ChunkKey, chunk: &Chunk) {
        let pending = self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).in_chunk(key);
        for c in &pending {
            chunk.apply(c);
        }
    }

    /// Loads a whole chunk from L2 or, failing that, the database (filling L2 behind it).
    async fn load(&self, key: &ChunkKey) -> Result<Chunk, ApiError> {
        // What is on its way to the database now: the writer may store it and the pruning drop
        // it while this read runs, without the read seeing it.
        let before = self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).in_chunk(key);
        let mut chunk = self.read_whole(key).await?;
        for c in &before {
            chunk.apply(c);
        }
        self.merge_unpersisted(key, &chunk);
        chunk.weight = 1 + chunk.len() as u64;
        Ok(chunk)
    }

    async fn read_whole(&self, key: &ChunkKey) -> Result<Chunk, ApiError> {
        if let Some(l2) = self.l2.as_ref().filter(|l2| l2.allows()) {
            match l2.cache().chunk(&key.instrument, key.interval, key.chunk).await {
                Ok((true, candles)) => {
                    l2.record(true, &self.metrics);
                    self.metrics.l2_hits.inc();
                    return Ok(Chunk::new(candles));
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
                    l2.cache().upsert(&candles).await?;
                    l2.cache().mark_complete(&key.instrument, key.interval, key.chunk).await
                };
                let ok = filled.await.is_ok();
                l2.record(ok, &metrics);
            });
        }
        Ok(Chunk::new(candles))
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
            rows.map_err(|e| wick_store::db_message(&e))
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
        self.unpersisted.lock().unwrap_or_else(|e| e.into_inner()).add(candle, partition, offset, Instant::now());
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
        unpersisted.prune(stored, Instant::now().checked_sub(self.grace).unwrap_or_else(Instant::now));
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

    /// Whether `instrument` surely has no candles: the list was read from the database and has
    /// not seen it since (queries for it then touch no tier).
    pub fn surely_unknown(&self, instrument: &Instrument) -> bool {
        self.instruments_loaded.load(Ordering::Acquire) && !self.knows(instrument)
    }

    pub fn knows(&self, instrument: &Instrument) -> bool {
        self.instruments.read().unwrap_or_else(|e| e.into_inner()).contains(instrument)
    }

    /// Loads the instruments that have candles, whatever intervals are stored.
    pub async fn load_instruments(&self) -> Result<usize, String> {
        let db = self.db.get().await.map_err(|e| e.to_string())?;
        let rows = db.query(INSTRUMENTS_SQL, &[]).await.map_err(|e| wick_store::db_message(&e))?;
        let mut set = self.instruments.write().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            if let Ok(i) = Instrument::new(row.get::<_, &str>(0)) {
                set.insert(i);
            }
        }
        self.instruments_loaded.store(true, Ordering::Release);
        Ok(set.len())
    }
}

/// The distinct instruments with candles, by skipping through the primary key (instrument,
/// interval, open time) one instrument at a time: a probe per instrument, not a scan of the table.
const INSTRUMENTS_SQL: &str = "WITH RECURSIVE i AS ( \
       (SELECT instrument FROM candles ORDER BY instrument LIMIT 1) \
       UNION ALL \
       SELECT (SELECT c.instrument FROM candles c WHERE c.instrument > i.instrument ORDER BY c.instrument LIMIT 1) \
       FROM i WHERE i.instrument IS NOT NULL) \
     SELECT instrument FROM i WHERE instrument IS NOT NULL";

/// The later-opening of two candles, the newer version when they open together.
fn latest(a: Option<Candle>, b: Option<Candle>) -> Option<Candle> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (b.open_time(), b.version()) > (a.open_time(), a.version()) { b } else { a }),
        (a, b) => a.or(b),
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
    fn unpersisted_candles_keep_the_newest_version_until_stored_and_past_the_grace() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(1);
        let mut u = Unpersisted::default();
        u.add(&candle(0, 3), 0, 10, t0);
        u.add(&candle(0, 2), 0, 11, t0); // older version, later record: ignored
        u.add(&candle(1, 1), 1, 5, t0);
        assert_eq!(u.len(), 2);
        let key = ChunkKey::of(candle(0, 1).instrument(), Interval::M1, Timestamp::MIN);
        assert_eq!(u.in_chunk(&key).iter().map(Candle::trade_count).collect::<Vec<_>>(), [3, 1]);
        let stored = HashMap::from([(0, 11), (1, 6)]);
        // Stored, but seen within the grace period: kept for loads that may have missed it.
        u.prune(&stored, t0);
        assert_eq!(u.len(), 2);
        u.prune(&HashMap::from([(0, 11)]), later);
        assert_eq!(u.len(), 1, "partition 1 is not stored yet");
        u.prune(&stored, later);
        assert_eq!(u.len(), 0);

        for m in 0..10 {
            u.add(&candle(m, 1), 0, m, t0 + Duration::from_millis(m as u64));
        }
        assert_eq!(
            u.last_before(&key.instrument, Interval::M1, Timestamp::from_millis(150_000).unwrap()).unwrap().open_time().as_millis(),
            120_000
        );
        assert_eq!(
            u.first_from(&key.instrument, Interval::M1, Timestamp::from_millis(150_000).unwrap()).unwrap().open_time().as_millis(),
            180_000
        );
        assert_eq!(u.cap(4), 6);
        assert_eq!(u.in_chunk(&key).iter().map(|c| c.open_time().as_millis() / 60_000).collect::<Vec<_>>(), [6, 7, 8, 9]);
        assert_eq!(u.cap(0), 3, "at least one is kept");
    }

    #[test]
    fn the_latest_candle_is_the_later_opening_then_the_newer_version() {
        assert_eq!(latest(Some(candle(5, 1)), Some(candle(1, 9))).unwrap().open_time().as_millis(), 300_000);
        assert_eq!(latest(Some(candle(1, 2)), Some(candle(1, 3))).unwrap().trade_count(), 3);
        assert_eq!(latest(None, Some(candle(1, 3))).unwrap().trade_count(), 3);
    }

    #[test]
    fn a_chunk_gives_up_to_max_candles_and_where_the_rest_begin() {
        let ms = |ms: i64| Timestamp::from_millis(ms).unwrap();
        let chunk = Chunk::new((0..5).map(|m| candle(m, 1)));
        let mut got: Vec<Candle> = Vec::new();
        assert_eq!(chunk.take(ms(60_000), ms(240_000), 2, &mut got), (2, Some(ms(180_000))));
        assert_eq!(got.iter().map(|c| c.open_time().as_millis()).collect::<Vec<_>>(), [60_000, 120_000]);
        assert_eq!(chunk.take(ms(60_001), ms(240_000), 0, &mut got), (0, Some(ms(120_000))));
        assert_eq!(chunk.take(ms(180_000), ms(300_000), 10, &mut got), (2, None));
        let mut json = String::new();
        let mut items = JsonItems { out: &mut json, written: 0 };
        assert_eq!(chunk.take(ms(0), ms(60_000), 5, &mut items), (2, None));
        assert_eq!(items.written, 2);
        assert_eq!(json, format!("{},{}", crate::json::candle(&candle(0, 1)), crate::json::candle(&candle(1, 1))));
    }

    #[test]
    fn chunks_never_take_an_older_version() {
        let chunk = Chunk::new([candle(0, 5)]);
        chunk.apply(&candle(0, 4));
        chunk.apply(&candle(2, 1));
        let mut out = Vec::new();
        chunk.copy_range(Timestamp::MIN, Timestamp::from_millis(120_000).unwrap(), &mut out);
        assert_eq!(out.iter().map(Candle::trade_count).collect::<Vec<_>>(), [5, 1]);
        assert_eq!(chunk.last_before(Timestamp::from_millis(120_000).unwrap()).unwrap().trade_count(), 5);
    }
}
