//! persistence-writer's configuration (YAML file, `WICK__SECTION__KEY` overrides). With no file it
//! works against the stack of `cargo xtask stack up`.

use serde::{Deserialize, Serialize};
use wick_service::config::{InstanceConfig, OpsConfig, Validate};
use wick_service::duration::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub instance: InstanceConfig,
    pub batch: BatchConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub ops: OpsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: Default::default(),
            instance: Default::default(),
            batch: Default::default(),
            database: Default::default(),
            redis: Default::default(),
            ops: OpsConfig::on_port(9103),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub candles_topic: String,
    /// Partitions of `candles_topic` (created with this many when missing).
    pub candles_partitions: i32,
    /// Records that are not valid candle batches go here, with the reason and their source.
    pub dead_letter_topic: String,
    /// How long broker requests retry before an outage fails the run.
    pub request_deadline: Duration,
    /// The longest a fetch waits for records.
    pub fetch_max_wait: Duration,
    /// The most bytes one fetch returns.
    pub fetch_max_bytes: i32,
}

/// A batch is written when it holds `max_candles` candles or its first candle waited `max_delay`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub max_candles: usize,
    pub max_delay: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host:port/database` or key=value form. The password may be given here or
    /// in `PGPASSWORD`-style settings of the URL; it is never logged.
    pub url: String,
    /// A schema to work in (default: the server's search path).
    pub schema: Option<String>,
    pub pool_size: usize,
    /// Retries after a failed write: exponential backoff with jitter between these bounds.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Monthly partitions created ahead of the current month (plain PostgreSQL).
    pub partitions_ahead: u32,
    /// TimescaleDB only: PostgreSQL interval syntax.
    pub chunk_interval: String,
    pub compress_after: String,
    pub retention: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Fill the L2 cache at all.
    pub enabled: bool,
    /// `redis://host:port` or `redis-cluster://host:port?node=host:port&node=host:port`.
    pub url: String,
    pub key_prefix: String,
    pub ttl: Duration,
    /// A command slower than this counts as a failure.
    pub command_timeout: Duration,
    /// Candles held for the cache while Redis is unreachable; beyond this their chunks are
    /// invalidated instead once Redis is back.
    pub max_pending: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            candles_topic: "candles-completed".into(),
            candles_partitions: 4,
            dead_letter_topic: "candles-completed-dlq".into(),
            request_deadline: Duration::from_secs(30),
            fetch_max_wait: Duration::from_millis(100),
            fetch_max_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_candles: 100, max_delay: Duration::from_millis(100) }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/wick".into(),
            schema: None,
            pool_size: 2,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            partitions_ahead: 2,
            chunk_interval: "7 days".into(),
            compress_after: "7 days".into(),
            retention: None,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            enabled: true,
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "wick".into(),
            ttl: Duration::from_secs(3600),
            command_timeout: Duration::from_secs(1),
            max_pending: 200_000,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.kafka.brokers.is_empty() {
            problems.push("kafka.brokers must name at least one broker".into());
        }
        if self.kafka.candles_topic.is_empty() || self.kafka.dead_letter_topic.is_empty() {
            problems.push("kafka.candles_topic and kafka.dead_letter_topic must not be empty".into());
        }
        if self.kafka.candles_partitions < 1 {
            problems.push(format!("kafka.candles_partitions must be at least 1 (got {})", self.kafka.candles_partitions));
        }
        if self.kafka.fetch_max_bytes < 1024 {
            problems.push(format!("kafka.fetch_max_bytes must be at least 1024 (got {})", self.kafka.fetch_max_bytes));
        }
        problems.extend(self.instance.problem());
        if self.batch.max_candles == 0 {
            problems.push("batch.max_candles must be at least 1".into());
        }
        if self.database.pool_size == 0 {
            problems.push("database.pool_size must be at least 1".into());
        }
        if self.database.min_backoff > self.database.max_backoff {
            problems.push("database.min_backoff must not exceed database.max_backoff".into());
        }
        problems.extend(wick_store::connection_problems(
            "database.url",
            &self.database.url,
            "database.schema",
            self.database.schema.as_deref(),
        ));
        if self.redis.enabled {
            problems.extend(wick_cache::url_problem("redis.url", &self.redis.url));
        }
        if self.redis.ttl.get().as_secs() == 0 {
            problems.push("redis.ttl must be at least 1s".into());
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
    fn defaults_are_valid_and_bad_values_are_all_reported() {
        assert!(Config::default().validate().is_empty());
        let mut c = Config::default();
        c.instance.index = 2;
        c.instance.count = 2;
        c.batch.max_candles = 0;
        c.database.schema = Some("x; DROP TABLE candles".into());
        c.redis.url = "http://x".into();
        let problems = c.validate();
        assert_eq!(problems.len(), 4, "{problems:#?}");
    }
}
