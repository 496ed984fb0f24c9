//! The L2 candle cache in Redis, shared by persistence-writer (which fills it after each database
//! commit) and query-gateway (which reads it, and fills it from the database on a miss).
//!
//! # Key layout
//! One Redis hash per *chunk* of a series: `<prefix>:{<instrument>|<interval>}:<chunk>`, where
//! `<chunk>` is the open time (epoch ms) divided by [`chunk_span_ms`] (1000 candles of the
//! interval), so a range query of up to 1000 candles touches at most two keys. The braces are a
//! Redis Cluster hash tag: every chunk of a series lives in one slot, so one script call covers a
//! chunk in cluster mode too. Fields:
//! - `<open time ms>` -> `<version>:<protobuf wick.v1.Candle>`;
//! - [`COMPLETE_FIELD`], set only by a reader that loaded the whole chunk from the database: a
//!   chunk without it is partial (the writer only adds the candles it wrote) and must not answer a
//!   range query on its own.
//!
//! Every write goes through one Lua script that sets a field only when its version is newer than
//! the stored one, so writers and readers filling the cache in any order never put an older
//! candle over a newer one, and refreshes the key's TTL (1 hour by default).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fred::interfaces::LuaInterface;
use fred::prelude::*;
use prost::Message;
use wick_core::{Candle, Instrument, Interval, Timestamp};

pub use fred;

/// The field marking a chunk loaded whole from the database.
pub const COMPLETE_FIELD: &str = "complete";

/// Candles per chunk.
pub const CHUNK_CANDLES: i64 = 1000;

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("Redis URL {url:?}: {source}")]
    Config { url: String, source: fred::error::Error },
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("cached candle under {key} field {field}: {reason}")]
    Corrupt { key: String, field: String, reason: String },
}

/// The time span of one chunk of `interval`, in ms (months count as 31 days: any fixed span
/// works, the chunk of a candle only has to be a function of its open time).
pub fn chunk_span_ms(interval: Interval) -> i64 {
    let width_ms = interval.fixed_micros().map_or(31 * 86_400_000, |us| us / 1000);
    width_ms * CHUNK_CANDLES
}

/// The chunk number of a candle opening at `open_time`.
pub fn chunk_of(interval: Interval, open_time: Timestamp) -> i64 {
    open_time.as_millis().div_euclid(chunk_span_ms(interval))
}

/// The key of a chunk.
pub fn chunk_key(prefix: &str, instrument: &Instrument, interval: Interval, chunk: i64) -> String {
    format!("{prefix}:{{{}|{}}}:{chunk}", instrument.as_str(), interval.as_str())
}

/// The stored form of a candle: its version, a colon, the protobuf `wick.v1.Candle`.
pub fn encode_value(candle: &Candle) -> Vec<u8> {
    let mut out = format!("{}:", candle.version()).into_bytes();
    wick_wire::candle_to_wire(candle).encode(&mut out).unwrap_or_default();
    out
}

/// A stored candle, checked like every record Wick decodes.
pub fn decode_value(bytes: &[u8]) -> Result<Candle, String> {
    let colon = bytes.iter().position(|b| *b == b':').ok_or("no version prefix")?;
    let wire = wick_wire::pb::Candle::decode(&bytes[colon + 1..]).map_err(|e| e.to_string())?;
    wick_wire::candle_from_wire(&wire).map_err(|e| e.to_string())
}

/// Sets fields only when newer; ARGV = ttl seconds, then (field, version, value) triples.
const UPSERT_SCRIPT: &str = r"
local n = 0
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local older = false
  if cur then
    local v = tonumber(string.match(cur, '^(%d+):'))
    older = v ~= nil and v >= tonumber(ARGV[i + 1])
  end
  if not older then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
if ARGV[1] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// What is wrong with a Redis URL setting (`key` holding `url`), if anything.
pub fn url_problem(key: &str, url: &str) -> Option<String> {
    (!(url.starts_with("redis://") || url.starts_with("redis-cluster://")))
        .then(|| format!("{key} must start with redis:// or redis-cluster:// (got {url:?})"))
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// `redis://host:port` (single node) or `redis-cluster://host:port?node=host:port&node=...`.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// Time to live of a chunk after its last write.
    pub ttl: Duration,
    /// How long one command may take before it counts as failed.
    pub command_timeout: Duration,
}

/// A Redis (single node or cluster) client for the candle cache.
#[derive(Clone)]
pub struct L2Cache {
    client: Client,
    prefix: String,
    ttl_secs: u64,
    settings: CacheSettings,
}

impl std::fmt::Debug for L2Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2Cache").field("prefix", &self.prefix).field("ttl_secs", &self.ttl_secs).finish()
    }
}

impl L2Cache {
    /// Starts connecting in the background and returns at once: an unreachable Redis must never
    /// hold up a service, its commands fail within the command timeout and the caller's breaker
    /// opens. The client reconnects by itself with exponential backoff.
    pub fn connect(settings: &CacheSettings) -> Result<L2Cache, CacheError> {
        let config = Config::from_url(&settings.url).map_err(|source| CacheError::Config { url: settings.url.clone(), source })?;
        let timeout = settings.command_timeout;
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|source| CacheError::Config { url: settings.url.clone(), source })?;
        client.connect();
        Ok(L2Cache { client, prefix: settings.prefix.clone(), ttl_secs: settings.ttl.as_secs().max(1), settings: settings.clone() })
    }

    /// Replaces the client with a new one from the same settings, and lets the old one go; for a
    /// caller whose breaker says so ([`Breaker::reconnect_due`]).
    pub fn reconnect(&mut self) -> Result<(), CacheError> {
        let fresh = L2Cache::connect(&self.settings)?;
        let old = std::mem::replace(self, fresh);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), old.client.quit()).await;
        });
        Ok(())
    }

    /// Waits until the first connection is up (for tests and start-up logs).
    pub async fn wait_connected(&self, within: Duration) -> Result<(), CacheError> {
        let deadline = Instant::now() + within;
        loop {
            match self.client.ping::<String>(None).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Writes `candles` (any order, any versions), each only where it is newer than the cached
    /// one; one script call per chunk, pipelined. Returns the fields changed.
    pub async fn upsert(&self, candles: &[Candle]) -> Result<u64, CacheError> {
        let mut chunks: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for c in candles {
            let key = chunk_key(&self.prefix, c.instrument(), c.interval(), chunk_of(c.interval(), c.open_time()));
            let args = chunks.entry(key).or_insert_with(|| vec![Value::from(self.ttl_secs.to_string())]);
            args.push(Value::from(c.open_time().as_millis().to_string()));
            args.push(Value::from(c.version().to_string()));
            args.push(Value::Bytes(encode_value(c).into()));
        }
        if chunks.is_empty() {
            return Ok(0);
        }
        // Pipelines cannot carry EVAL in fred; concurrent calls share the multiplexed connection
        // of each node, which pipelines them just the same.
        let calls = chunks.into_iter().map(|(key, args)| self.client.eval::<i64, _, _, _>(UPSERT_SCRIPT, key, args));
        let mut changed = 0;
        for result in futures_util::future::join_all(calls).await {
            changed += result?.max(0) as u64;
        }
        Ok(changed)
    }

    /// Marks a chunk as loaded whole from the database (after its candles were upserted).
    pub async fn mark_complete(&self, instrument: &Instrument, interval: Interval, chunk: i64) -> Result<(), CacheError> {
        let key = chunk_key(&self.prefix, instrument, interval, chunk);
        let _: () = self.client.hset(&key, (COMPLETE_FIELD, "1")).await?;
        let _: () = self.client.expire(&key, self.ttl_secs as i64, None).await?;
        Ok(())
    }

    /// The cached candles of a chunk by open time, and whether the chunk is complete.
    pub async fn chunk(&self, instrument: &Instrument, interval: Interval, chunk: i64) -> Result<(bool, Vec<Candle>), CacheError> {
        let key = chunk_key(&self.prefix, instrument, interval, chunk);
        let fields: std::collections::HashMap<String, Vec<u8>> = self.client.hgetall(&key).await?;
        let complete = fields.contains_key(COMPLETE_FIELD);
        let mut candles = Vec::with_capacity(fields.len());
        for (field, value) in &fields {
            if field == COMPLETE_FIELD {
                continue;
            }
            let candle = decode_value(value).map_err(|reason| CacheError::Corrupt { key: key.clone(), field: field.clone(), reason })?;
            candles.push(candle);
        }
        candles.sort_by_key(Candle::open_time);
        Ok((complete, candles))
    }

    /// Removes chunks (when the writer could not keep them current).
    pub async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        // One key per command: in cluster mode a multi-key DEL must stay within one slot.
        let pipeline = self.client.pipeline();
        for key in keys {
            let _: () = pipeline.del(key.as_str()).await?;
        }
        for result in pipeline.try_all::<Value>().await {
            result?;
        }
        Ok(())
    }
}

/// A circuit breaker: after a failure it opens for a cool-down that doubles with every further
/// failure (up to a maximum); once the cool-down is over one attempt is let through (half open),
/// and a success closes it.
#[derive(Debug)]
pub struct Breaker {
    min_cooldown: Duration,
    max_cooldown: Duration,
    cooldown: Duration,
    open_until: Option<Instant>,
    /// Since when every call has failed (`None` while closed), or since the last reconnect.
    failing_since: Option<Instant>,
}

/// After this long in which every call failed, a client is rebuilt (see [`Breaker::reconnect_due`]).
pub const RECONNECT_AFTER: Duration = Duration::from_secs(15);

impl Breaker {
    pub fn new(min_cooldown: Duration, max_cooldown: Duration) -> Breaker {
        Breaker { min_cooldown, max_cooldown, cooldown: min_cooldown, open_until: None, failing_since: None }
    }

    /// True once every call has failed for [`RECONNECT_AFTER`]; the wait starts again then. The
    /// caller rebuilds its client ([`L2Cache::reconnect`]): fred 10's cluster client was seen (by
    /// the fault-injection drills) to time out every command for minutes after a node restart,
    /// while a new client worked at once.
    pub fn reconnect_due(&mut self, now: Instant) -> bool {
        match self.failing_since {
            Some(since) if now.duration_since(since) >= RECONNECT_AFTER => {
                self.failing_since = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Whether a call may be attempted at `now`.
    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    /// Open (failing) or closed.
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    pub fn success(&mut self) {
        self.open_until = None;
        self.cooldown = self.min_cooldown;
        self.failing_since = None;
    }

    pub fn failure(&mut self, now: Instant) {
        self.failing_since.get_or_insert(now);
        let cooldown = if self.open_until.is_some() { (self.cooldown * 2).min(self.max_cooldown) } else { self.min_cooldown };
        self.cooldown = cooldown;
        self.open_until = Some(now + cooldown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_a_thousand_candles_and_keys_share_a_slot() {
        let i = Instrument::new("BINANCE:BTC-USDT").unwrap();
        assert_eq!(chunk_span_ms(Interval::M1), 60_000_000);
        let t = Timestamp::from_millis(1_700_000_000_000).unwrap();
        assert_eq!(chunk_of(Interval::M1, t), 1_700_000_000_000 / 60_000_000);
        assert_eq!(chunk_key("wick", &i, Interval::M1, 28333), "wick:{BINANCE:BTC-USDT|1m}:28333");
        assert!(chunk_of(Interval::Mo1, t) >= 0);
    }

    #[test]
    fn a_reconnect_is_due_after_failing_that_long_and_again_after_as_long() {
        let mut b = Breaker::new(Duration::from_millis(100), Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!b.reconnect_due(t0), "never while closed");
        b.failure(t0);
        b.failure(t0 + Duration::from_secs(10));
        assert!(!b.reconnect_due(t0 + RECONNECT_AFTER - Duration::from_millis(1)));
        assert!(b.reconnect_due(t0 + RECONNECT_AFTER));
        assert!(!b.reconnect_due(t0 + RECONNECT_AFTER + Duration::from_secs(1)), "the wait starts again");
        assert!(b.reconnect_due(t0 + RECONNECT_AFTER * 2));
        b.success();
        assert!(!b.reconnect_due(t0 + RECONNECT_AFTER * 4), "a success ends the failing spell");
    }

    #[test]
    fn breaker_backs_off_and_closes_on_success() {
        let mut b = Breaker::new(Duration::from_millis(100), Duration::from_millis(350));
        let t0 = Instant::now();
        assert!(b.allows(t0) && !b.is_open());
        b.failure(t0);
        assert!(b.is_open() && !b.allows(t0 + Duration::from_millis(99)) && b.allows(t0 + Duration::from_millis(100)));
        b.failure(t0);
        assert!(!b.allows(t0 + Duration::from_millis(199)) && b.allows(t0 + Duration::from_millis(200)));
        b.failure(t0);
        b.failure(t0);
        assert!(b.allows(t0 + Duration::from_millis(350)), "the cool-down is capped");
        b.success();
        assert!(!b.is_open() && b.allows(t0));
    }
}
