//! query-gateway's configuration (YAML file, `WICK__SECTION__KEY` overrides). With no file it
//! works against the stack of `cargo xtask stack up`: HTTP on 127.0.0.1:8080, gRPC on
//! 127.0.0.1:50051, operations on 127.0.0.1:9104.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use wick_service::config::{OpsConfig, Validate};
use wick_service::duration::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    pub kafka: KafkaConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub l1: L1Config,
    pub live: LiveConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub binance: BinanceConfig,
    pub ops: OpsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: Default::default(),
            grpc: Default::default(),
            kafka: Default::default(),
            database: Default::default(),
            redis: Default::default(),
            l1: Default::default(),
            live: Default::default(),
            auth: Default::default(),
            limits: Default::default(),
            binance: Default::default(),
            ops: OpsConfig::on_port(9104),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// REST, WebSocket and the chart page.
    pub listen: SocketAddr,
    /// Origins allowed by CORS: empty for none, `*` for any.
    pub cors_origins: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub candles_topic: String,
    pub candles_partitions: i32,
    pub request_deadline: Duration,
    pub fetch_max_wait: Duration,
    pub fetch_max_bytes: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host:port/database`; never logged.
    pub url: String,
    /// A schema to read from (default: the server's search path).
    pub schema: Option<String>,
    pub pool_size: usize,
    /// A query slower than this fails (503), so a stuck database cannot pile up requests.
    pub query_timeout: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Use the L2 cache at all.
    pub enabled: bool,
    /// `redis://host:port` or `redis-cluster://host:port?node=host:port&node=host:port`.
    pub url: String,
    /// The same prefix the persistence-writer writes under.
    pub key_prefix: String,
    pub ttl: Duration,
    pub command_timeout: Duration,
}

/// The in-process cache of chunks (1000 candles of one series each).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct L1Config {
    pub enabled: bool,
    /// Chunks held (an estimate quick_cache sizes itself by).
    pub max_entries: usize,
    /// Candles held at most, over all chunks (a candle takes about 600 bytes with its JSON).
    pub max_candles: u64,
    /// A chunk is reloaded this long after it was loaded.
    pub ttl: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// Pair subscriptions per WebSocket connection or gRPC stream.
    pub max_subscriptions: usize,
    /// Messages queued for one client; a client further behind is disconnected.
    pub client_buffer: usize,
    /// WebSocket connections, and gRPC streams, at most (each).
    pub max_connections: usize,
    /// Candle versions held until the writer has stored them (see ARCHITECTURE.md); beyond this
    /// the oldest are dropped and counted.
    pub max_unpersisted: usize,
    /// How often the writer's stored offsets are read to drop candles it has stored.
    pub prune_interval: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted API keys (header `x-api-key`, `authorization: Bearer <key>`, or `api_key` query
    /// parameter for browsers' WebSockets). Empty: no key needed. Never logged.
    pub api_keys: Vec<String>,
}

/// Token buckets: `rate` requests per second on average, bursts of `burst`. 0 disables a limit.
/// Per-key limits apply to configured keys only (with no keys, limit per address).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub per_key_rate: u32,
    pub per_key_burst: u32,
    pub per_address_rate: u32,
    pub per_address_burst: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BinanceConfig {
    /// `/api/v3/klines?symbol=BTCUSDT` reads `<exchange>:BTC-USDT`.
    pub exchange: String,
    /// Quote assets, longest match first, to split a Binance symbol into base and quote.
    pub quote_assets: Vec<String>,
    /// The most stored candles one `timeZone` query may combine.
    pub max_source_candles: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), cors_origins: Vec::new() }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig { listen: SocketAddr::from(([127, 0, 0, 1], 50051)) }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            candles_topic: "candles-completed".into(),
            candles_partitions: 4,
            request_deadline: Duration::from_secs(30),
            fetch_max_wait: Duration::from_millis(100),
            fetch_max_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/wick".into(),
            schema: None,
            pool_size: 8,
            query_timeout: Duration::from_secs(5),
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
            command_timeout: Duration::from_millis(500),
        }
    }
}

impl Default for L1Config {
    fn default() -> Self {
        L1Config { enabled: true, max_entries: 10_000, max_candles: 1_000_000, ttl: Duration::from_secs(300) }
    }
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            max_subscriptions: 64,
            client_buffer: 1024,
            max_connections: 10_000,
            max_unpersisted: 500_000,
            prune_interval: Duration::from_secs(1),
        }
    }
}

impl Default for BinanceConfig {
    fn default() -> Self {
        BinanceConfig {
            exchange: "BINANCE".into(),
            quote_assets: ["FDUSD", "USDT", "USDC", "TUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "JPY", "DAI", "USD"]
                .map(String::from)
                .to_vec(),
            max_source_candles: 200_000,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.kafka.brokers.is_empty() {
            problems.push("kafka.brokers must name at least one broker".into());
        }
        if self.kafka.candles_partitions < 1 {
            problems.push(format!("kafka.candles_partitions must be at least 1 (got {})", self.kafka.candles_partitions));
        }
        if self.kafka.fetch_max_bytes < 1024 {
            problems.push(format!("kafka.fetch_max_bytes must be at least 1024 (got {})", self.kafka.fetch_max_bytes));
        }
        if self.database.pool_size == 0 {
            problems.push("database.pool_size must be at least 1".into());
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
        if self.l1.enabled && (self.l1.max_entries == 0 || self.l1.max_candles < 1000) {
            problems.push("l1.max_entries must be at least 1 and l1.max_candles at least 1000".into());
        }
        if self.live.max_unpersisted < 1000 {
            problems.push(format!("live.max_unpersisted must be at least 1000 (got {})", self.live.max_unpersisted));
        }
        if self.live.max_subscriptions == 0 || self.live.client_buffer == 0 || self.live.max_connections == 0 {
            problems.push("live.max_subscriptions, live.client_buffer and live.max_connections must be at least 1".into());
        }
        if self.auth.api_keys.iter().any(|k| k.len() < 8 || k.chars().any(|c| c.is_whitespace() || c.is_control())) {
            problems.push("auth.api_keys: every key must be at least 8 characters without spaces".into());
        }
        let l = &self.limits;
        if (l.per_key_rate > 0 && l.per_key_burst == 0) || (l.per_address_rate > 0 && l.per_address_burst == 0) {
            problems.push("limits: a rate needs a burst of at least 1".into());
        }
        if self.binance.exchange.is_empty() || self.binance.quote_assets.is_empty() {
            problems.push("binance.exchange and binance.quote_assets must not be empty".into());
        }
        if self.http.cors_origins.iter().any(|o| o != "*" && !(o.starts_with("http://") || o.starts_with("https://"))) {
            problems.push("http.cors_origins: each entry is `*` or an origin such as https://example.com".into());
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
        c.database.pool_size = 0;
        c.auth.api_keys = vec!["short".into()];
        c.limits.per_key_rate = 5;
        c.http.cors_origins = vec!["example.com".into()];
        let problems = c.validate();
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn environment_overrides_reach_every_section() {
        let env = [
            ("WICK__HTTP__LISTEN", "0.0.0.0:80"),
            ("WICK__AUTH__API_KEYS", "key-one-1,key-two-2"),
            ("WICK__L1__TTL", "1m"),
            ("WICK__REDIS__ENABLED", "false"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c: Config = wick_service::config::load_with_env(None, env).unwrap();
        assert_eq!(c.http.listen.port(), 80);
        assert_eq!(c.auth.api_keys, vec!["key-one-1", "key-two-2"]);
        assert_eq!(c.l1.ttl.get(), std::time::Duration::from_secs(60));
        assert!(!c.redis.enabled);
    }
}
