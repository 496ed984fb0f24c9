//! feed-publisher's configuration (YAML file, `WICK__SECTION__KEY` overrides). With no file it
//! works against the stack of `cargo xtask stack up`.

use serde::{Deserialize, Serialize};
use wick_service::config::{OpsConfig, Validate};
use wick_service::duration::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub producer: ProducerConfig,
    pub ops: OpsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config { kafka: Default::default(), producer: Default::default(), ops: OpsConfig::on_port(9101) }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub market_events_topic: String,
    pub dead_letter_topic: String,
    /// How long requests retry before a broker outage fails the run.
    pub request_deadline: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// How long a partition's first pending trade waits for company (the seed's `linger-ms: 10`).
    pub linger: Duration,
    /// A partition's request is sent once it holds about this many bytes (below Kafka's default
    /// `message.max.bytes` of 1 MB, counting trades at an upper bound of their size).
    pub max_request_bytes: usize,
    /// `lz4` (the seed's) or `none`.
    pub compression: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            market_events_topic: "market-events".into(),
            dead_letter_topic: "market-events-dlq".into(),
            request_deadline: Duration::from_secs(30),
        }
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig { linger: Duration::from_millis(10), max_request_bytes: 900_000, compression: "lz4".into() }
    }
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.kafka.brokers.is_empty() {
            problems.push("kafka.brokers must name at least one broker".into());
        }
        if self.kafka.market_events_topic.is_empty() || self.kafka.dead_letter_topic.is_empty() {
            problems.push("kafka.market_events_topic and kafka.dead_letter_topic must not be empty".into());
        }
        if !matches!(self.producer.compression.as_str(), "lz4" | "none") {
            problems.push(format!("producer.compression must be lz4 or none (got {:?})", self.producer.compression));
        }
        if self.producer.max_request_bytes < 1024 {
            problems.push(format!("producer.max_request_bytes must be at least 1024 (got {})", self.producer.max_request_bytes));
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
    fn another_service_settings_are_ignored() {
        // One environment for the four services, as a compose `.env` holds it.
        let env = [
            ("WICK__CHECKPOINT__INTERVAL", "5s"),
            ("WICK__KAFKA__CANDLES_TOPIC", "candles"),
            ("WICK__KAFKA__MARKET_EVENTS_TOPIC", "trades"),
            ("WICK__DATABASE__URL", "postgres://db/wick"),
            ("WICK__HTTP__LISTEN", "0.0.0.0:8080"),
            ("WICK__PRODUCER__COMPRESSION", "none"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c: Config = wick_service::config::load_with_env(None, env).unwrap();
        assert_eq!((c.producer.compression.as_str(), c.kafka.market_events_topic.as_str()), ("none", "trades"));
        let env = [("WICK__CHECKPOINTS__INTERVAL", "5s")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert!(wick_service::config::load_with_env::<Config>(None, env).is_err());
    }
}
