//! ingest-aggregator's configuration (YAML file, `WICK__SECTION__KEY` overrides). With no file it
//! works against the stack of `cargo xtask stack up`; the defaults are the seed's.

use serde::{Deserialize, Serialize};
use wick_core::ring::WaitStrategy;
use wick_core::Interval;
use wick_service::config::{InstanceConfig, OpsConfig, Validate};
use wick_service::duration::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub instance: InstanceConfig,
    pub consumer: ConsumerConfig,
    pub ring: RingConfig,
    pub aggregation: AggregationConfig,
    pub output: OutputConfig,
    pub checkpoint: CheckpointConfig,
    pub ops: OpsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: Default::default(),
            instance: Default::default(),
            consumer: Default::default(),
            ring: Default::default(),
            aggregation: Default::default(),
            output: Default::default(),
            checkpoint: Default::default(),
            ops: OpsConfig::on_port(9102),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub market_events_topic: String,
    /// Partitions of `market_events_topic` (created with this many when missing).
    pub market_events_partitions: i32,
    pub candles_topic: String,
    pub candles_partitions: i32,
    /// Malformed and too-late trades go here, with the reason and their source.
    pub dead_letter_topic: String,
    pub dead_letter_partitions: i32,
    /// How long broker requests retry before an outage fails the run.
    pub request_deadline: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// A fetch returns once it has this many bytes (or `fetch_max_wait` passed).
    pub fetch_min_bytes: i32,
    pub fetch_max_bytes: i32,
    pub fetch_max_wait: Duration,
    /// At most this many records are taken from one fetch before the next poll.
    pub max_poll_records: usize,
    /// Where to start without a checkpoint: `latest` (the seed's) or `earliest`.
    pub auto_offset_reset: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RingConfig {
    /// Slots, a power of two.
    pub buffer_size: usize,
    /// How shards wait for trades (and the ring publisher for a full ring): `phased` (spin, then
    /// yield, then sleep: fast under load, free when idle), `yielding` (spin, then yield for as
    /// long as it waits: the seed's, a core per idle shard unless something else wants it),
    /// `busy-spin` or `blocking`.
    pub wait_strategy: String,
    /// `phased`: how long a waiting thread spins.
    pub phased_spin: Duration,
    /// `phased`: how long it then yields before it sleeps.
    pub phased_yield: Duration,
    /// Aggregator shards, each owning instruments by hash; 0 means one per core (at most
    /// [`MAX_SHARDS`]), so idle-free waiting never has more busy shards than cores.
    pub num_consumers: usize,
}

/// The most shards `ring.num_consumers` may ask for.
pub const MAX_SHARDS: usize = 64;

impl RingConfig {
    /// The number of shards: `num_consumers`, or when it is 0 the number of cores this process
    /// may use (at most [`MAX_SHARDS`]).
    pub fn shards(&self) -> usize {
        match self.num_consumers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_SHARDS),
            n => n,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AggregationConfig {
    /// Intervals to build (default: all 16).
    pub intervals: Vec<String>,
    /// The watermark trails each instrument's latest event time by this much.
    pub allowed_lateness: Duration,
    /// A trade for a final candle revises it within this window; older ones are dead-lettered as
    /// `too_late`.
    pub revision_window: Duration,
    /// At most one in-progress update per candle per this period.
    pub update_throttle: Duration,
    /// How often shards look at the clock (idle watermarks, throttled updates).
    pub tick: Duration,
    /// A trade whose event time is more than this after the aggregator's clock is refused
    /// (dead-lettered as `future`): it would move its instrument's watermark ahead of every later
    /// trade.
    pub future_tolerance: Duration,
    /// An instrument is live when its newest trade was read at most this long after its event
    /// time; only a live instrument's watermark moves on while it is idle. History (replays,
    /// backfills, a catch-up after an outage) is older than this and closes candles by event time
    /// alone, whatever pauses come between its parts.
    pub live_lag: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// How long a partition's first pending record waits for company.
    pub linger: Duration,
    /// A produce request is sent once a partition holds this many bytes.
    pub max_request_bytes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The database holding the checkpoints (`aggregator_checkpoints`).
    pub database_url: String,
    /// A schema to work in (default: the server's search path).
    pub schema: Option<String>,
    /// How often each owned partition is checkpointed.
    pub interval: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            market_events_topic: "market-events".into(),
            market_events_partitions: 16,
            candles_topic: "candles-completed".into(),
            candles_partitions: 4,
            dead_letter_topic: "market-events-dlq".into(),
            dead_letter_partitions: 4,
            request_deadline: Duration::from_secs(30),
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_min_bytes: 10_240,
            fetch_max_bytes: 8 * 1024 * 1024,
            fetch_max_wait: Duration::from_millis(100),
            max_poll_records: 500,
            auto_offset_reset: "latest".into(),
        }
    }
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            buffer_size: 8192,
            wait_strategy: "phased".into(),
            phased_spin: Duration::from_micros(2),
            phased_yield: Duration::from_micros(200),
            num_consumers: 0,
        }
    }
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            intervals: Interval::ALL.iter().map(|i| i.as_str().to_owned()).collect(),
            allowed_lateness: Duration::from_secs(1),
            revision_window: Duration::from_secs(600),
            update_throttle: Duration::from_millis(250),
            tick: Duration::from_millis(50),
            future_tolerance: Duration::from_secs(300),
            live_lag: Duration::from_secs(30),
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig { linger: Duration::from_millis(5), max_request_bytes: 900_000 }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { database_url: "postgres://postgres@127.0.0.1:5432/wick".into(), schema: None, interval: Duration::from_secs(5) }
    }
}

impl Config {
    /// The configured intervals (validated).
    pub fn intervals(&self) -> Vec<Interval> {
        self.aggregation.intervals.iter().filter_map(|i| i.parse().ok()).collect()
    }

    /// The configured wait strategy (validated; anything else is phased).
    pub fn wait_strategy(&self) -> WaitStrategy {
        match self.ring.wait_strategy.as_str() {
            "yielding" => WaitStrategy::Yielding,
            "busy-spin" => WaitStrategy::BusySpin,
            "blocking" => WaitStrategy::Blocking,
            _ => WaitStrategy::Phased { spin_for: self.ring.phased_spin.get(), yield_for: self.ring.phased_yield.get() },
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let k = &self.kafka;
        if k.brokers.is_empty() {
            problems.push("kafka.brokers must name at least one broker".into());
        }
        for (name, value) in [
            ("market_events_topic", &k.market_events_topic),
            ("candles_topic", &k.candles_topic),
            ("dead_letter_topic", &k.dead_letter_topic),
        ] {
            if value.is_empty() {
                problems.push(format!("kafka.{name} must not be empty"));
            }
        }
        for (name, value) in [
            ("market_events_partitions", k.market_events_partitions),
            ("candles_partitions", k.candles_partitions),
            ("dead_letter_partitions", k.dead_letter_partitions),
        ] {
            if value < 1 {
                problems.push(format!("kafka.{name} must be at least 1 (got {value})"));
            }
        }
        problems.extend(self.instance.problem());
        let c = &self.consumer;
        if c.fetch_min_bytes < 1 || c.fetch_max_bytes < c.fetch_min_bytes.max(1024) {
            problems.push(format!(
                "consumer.fetch_min_bytes ({}) must be at least 1 and consumer.fetch_max_bytes ({}) at least 1024 and not below it",
                c.fetch_min_bytes, c.fetch_max_bytes
            ));
        }
        if c.max_poll_records == 0 {
            problems.push("consumer.max_poll_records must be at least 1".into());
        }
        if !matches!(c.auto_offset_reset.as_str(), "latest" | "earliest") {
            problems.push(format!("consumer.auto_offset_reset must be latest or earliest (got {:?})", c.auto_offset_reset));
        }
        if self.ring.buffer_size < 2 || !self.ring.buffer_size.is_power_of_two() {
            problems.push(format!("ring.buffer_size must be a power of two of at least 2 (got {})", self.ring.buffer_size));
        }
        if !matches!(self.ring.wait_strategy.as_str(), "phased" | "yielding" | "busy-spin" | "blocking") {
            problems
                .push(format!("ring.wait_strategy must be phased, yielding, busy-spin or blocking (got {:?})", self.ring.wait_strategy));
        }
        if self.ring.num_consumers > MAX_SHARDS {
            problems.push(format!(
                "ring.num_consumers must be between 1 and {MAX_SHARDS}, or 0 for one per core (got {})",
                self.ring.num_consumers
            ));
        }
        let a = &self.aggregation;
        if a.intervals.is_empty() {
            problems.push("aggregation.intervals must name at least one interval".into());
        }
        for i in &a.intervals {
            if let Err(e) = i.parse::<Interval>() {
                problems.push(format!("aggregation.intervals: {e}"));
            }
        }
        if a.tick.get().is_zero() {
            problems.push("aggregation.tick must be above 0".into());
        }
        if a.live_lag.get() >= a.revision_window.get() && !a.revision_window.get().is_zero() {
            problems.push(format!(
                "aggregation.live_lag ({:?}) must be below aggregation.revision_window ({:?}): a trade read that late is history",
                a.live_lag.get(),
                a.revision_window.get()
            ));
        }
        problems.extend(wick_store::connection_problems(
            "checkpoint.database_url",
            &self.checkpoint.database_url,
            "checkpoint.schema",
            self.checkpoint.schema.as_deref(),
        ));
        if self.checkpoint.interval.get().is_zero() {
            problems.push("checkpoint.interval must be above 0".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_in_the_list_of_wick_settings() {
        assert_eq!(wick_service::config::unlisted_settings::<Config>(), Vec::<String>::new());
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!((c.ring.buffer_size, c.ring.num_consumers, c.consumer.max_poll_records), (8192, 0, 500));
        assert_eq!(c.intervals().len(), 16);
        assert_eq!(c.wait_strategy(), WaitStrategy::default(), "the ring's default, phased 2us/200us");
    }

    fn load(env: &[(&str, &str)]) -> anyhow::Result<Config> {
        wick_service::config::load_with_env(None, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn every_wait_strategy_is_configurable() {
        let us = std::time::Duration::from_micros;
        for (name, expected) in [
            ("phased", WaitStrategy::Phased { spin_for: us(2), yield_for: us(200) }),
            ("yielding", WaitStrategy::Yielding),
            ("busy-spin", WaitStrategy::BusySpin),
            ("blocking", WaitStrategy::Blocking),
        ] {
            assert_eq!(load(&[("WICK__RING__WAIT_STRATEGY", name)]).unwrap().wait_strategy(), expected, "{name}");
        }
        let c = load(&[("WICK__RING__PHASED_SPIN", "50us"), ("WICK__RING__PHASED_YIELD", "1ms")]).unwrap();
        assert_eq!(c.wait_strategy(), WaitStrategy::Phased { spin_for: us(50), yield_for: us(1000) });
        let c = load(&[("WICK__RING__PHASED_SPIN", "0us"), ("WICK__RING__PHASED_YIELD", "0us")]).unwrap();
        assert_eq!(c.wait_strategy(), WaitStrategy::Phased { spin_for: us(0), yield_for: us(0) }, "sleep at once");
        let problem = format!("{:#}", load(&[("WICK__RING__WAIT_STRATEGY", "lazy")]).unwrap_err());
        assert!(problem.contains("ring.wait_strategy must be phased, yielding, busy-spin or blocking"), "{problem}");
        assert!(load(&[("WICK__RING__PHASED_SPIN", "20")]).is_err(), "a duration needs its unit");
    }

    #[test]
    fn zero_consumers_means_one_shard_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let c = load(&[("WICK__RING__NUM_CONSUMERS", "0")]).unwrap();
        assert_eq!(c.ring.shards(), cores.min(MAX_SHARDS));
        assert_eq!(Config::default().ring.shards(), cores.min(MAX_SHARDS));
        for n in [1, 3, MAX_SHARDS] {
            assert_eq!(load(&[("WICK__RING__NUM_CONSUMERS", &n.to_string())]).unwrap().ring.shards(), n);
        }
        let problem = format!("{:#}", load(&[("WICK__RING__NUM_CONSUMERS", "65")]).unwrap_err());
        assert!(problem.contains("ring.num_consumers must be between 1 and 64, or 0 for one per core (got 65)"), "{problem}");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut c = Config::default();
        c.ring.buffer_size = 1000;
        c.aggregation.intervals = vec!["7m".into()];
        c.consumer.auto_offset_reset = "middle".into();
        c.instance.index = 3;
        c.ring.wait_strategy = "lazy".into();
        c.ring.num_consumers = 65;
        assert_eq!(c.validate().len(), 6, "{:#?}", c.validate());
    }
}
