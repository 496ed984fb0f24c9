//! Typed configuration: defaults, then an optional YAML file, then `WICK__SECTION__KEY` environment
//! variables (double underscores separate the levels; names are matched case-insensitively, values
//! are read as YAML scalars so `10ms`, `16` and `true` work). Validation reports every problem at
//! once.
//!
//! One environment may hold the settings of every Wick service (a compose `.env`, a shared
//! ConfigMap): a variable of a setting that only other services have ([`SETTINGS`]: a section,
//! or a key of a shared section such as `kafka.candles_topic`) is ignored; a section or key no
//! service knows is refused. A YAML file is one service's own, so every key in it must be that
//! service's.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::{Mapping, Value};

/// Checks a loaded configuration, returning every problem found (empty when valid).
pub trait Validate {
    fn validate(&self) -> Vec<String>;
}

/// The environment prefix of every override.
pub const ENV_PREFIX: &str = "WICK__";

/// Every setting of every Wick service: each top-level section with its keys, both sorted. A
/// `WICK__` variable of a setting listed here that the loading service does not have is meant
/// for another service; anything else it does not have is a mistake. Each service's tests check
/// that its settings are listed ([`unlisted_settings`]), so a new one cannot be forgotten.
pub const SETTINGS: &[(&str, &[&str])] = &[
    ("aggregation", &["allowed_lateness", "future_tolerance", "intervals", "live_lag", "revision_window", "tick", "update_throttle"]),
    ("auth", &["api_keys"]),
    ("batch", &["max_candles", "max_delay"]),
    ("binance", &["exchange", "max_source_candles", "quote_assets"]),
    ("checkpoint", &["database_url", "interval", "schema"]),
    ("consumer", &["auto_offset_reset", "fetch_max_bytes", "fetch_max_wait", "fetch_min_bytes", "max_poll_records"]),
    (
        "database",
        &[
            "chunk_interval",
            "compress_after",
            "max_backoff",
            "min_backoff",
            "partitions_ahead",
            "pool_size",
            "query_timeout",
            "retention",
            "schema",
            "url",
        ],
    ),
    ("grpc", &["listen"]),
    ("http", &["cors_origins", "listen"]),
    ("instance", &["count", "index"]),
    (
        "kafka",
        &[
            "brokers",
            "candles_partitions",
            "candles_topic",
            "dead_letter_partitions",
            "dead_letter_topic",
            "fetch_max_bytes",
            "fetch_max_wait",
            "market_events_partitions",
            "market_events_topic",
            "request_deadline",
        ],
    ),
    ("l1", &["enabled", "max_candles", "max_entries", "ttl"]),
    ("limits", &["per_address_burst", "per_address_rate", "per_key_burst", "per_key_rate"]),
    ("live", &["client_buffer", "max_connections", "max_subscriptions", "max_unpersisted", "prune_interval"]),
    ("ops", &["listen"]),
    ("output", &["linger", "max_request_bytes"]),
    ("producer", &["compression", "linger", "max_request_bytes"]),
    ("redis", &["command_timeout", "enabled", "key_prefix", "max_pending", "ttl", "url"]),
    ("ring", &["buffer_size", "num_consumers", "phased_spin", "phased_yield", "wait_strategy"]),
];

/// Whether some Wick service has `section` (and `key` in it, when given).
fn wick_knows(section: &str, key: Option<&str>) -> bool {
    SETTINGS.iter().any(|(s, keys)| *s == section && key.is_none_or(|k| keys.contains(&k)))
}

/// The settings of `T` (its serialized defaults: `section.key`, or `section` when it is not a
/// mapping) missing from [`SETTINGS`]; every service's tests assert that this is empty.
pub fn unlisted_settings<T: Serialize + Default>() -> Vec<String> {
    let map = match serde_yaml::to_value(T::default()) {
        Ok(Value::Mapping(map)) => map,
        Ok(_) => return vec!["(the configuration is not a mapping)".to_owned()],
        Err(e) => return vec![format!("(the defaults do not serialize: {e})")],
    };
    let mut out = Vec::new();
    for (section, value) in &map {
        let section = section.as_str().unwrap_or_default();
        match value {
            Value::Mapping(keys) => out
                .extend(keys.keys().filter_map(Value::as_str).filter(|k| !wick_knows(section, Some(k))).map(|k| format!("{section}.{k}"))),
            _ => out.push(section.to_owned()),
        }
    }
    out
}

/// Loads `T` from its defaults, the file at `path` (if any) and the process environment.
pub fn load<T: DeserializeOwned + Serialize + Default + Validate>(path: Option<&Path>) -> Result<T> {
    // Variables that are not UTF-8 cannot be Wick settings; skip them rather than panic.
    load_with_env(path, std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
}

/// [`load`] with an explicit environment (for tests).
pub fn load_with_env<T: DeserializeOwned + Serialize + Default + Validate>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T> {
    // The service's own settings are those of its defaults.
    let defaults = serde_yaml::to_value(T::default()).context("serializing the defaults")?;
    let mut value = defaults.clone();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        let file: Value = serde_yaml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
        merge(&mut value, file);
    }
    let mut elsewhere = Vec::new();
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else { continue };
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let (section, setting) = (path[0].as_str(), path.get(1).map(String::as_str));
        match lookup(&defaults, section) {
            None if wick_knows(section, None) => {
                elsewhere.push(key);
                continue;
            }
            None => {
                let sections: Vec<&str> = SETTINGS.iter().map(|(s, _)| *s).collect();
                bail!("{key}: no Wick service has a section `{section}` (known sections: {})", sections.join(", "));
            }
            // A key of a shared section that only other services have (`kafka.candles_topic`).
            Some(own) if setting.is_some_and(|k| own.is_mapping() && lookup(own, k).is_none() && wick_knows(section, Some(k))) => {
                elsewhere.push(key);
                continue;
            }
            Some(_) => {}
        }
        let scalar: Value = if raw.trim().is_empty() {
            Value::String(String::new())
        } else {
            // Only scalars: `wick:` or `a: b` in a value is text, not a YAML mapping.
            match serde_yaml::from_str(&raw) {
                Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
                _ => Value::String(raw.clone()),
            }
        };
        set(&mut value, &path, scalar).with_context(|| format!("applying {key}"))?;
    }
    if !elsewhere.is_empty() {
        elsewhere.sort();
        tracing::debug!(variables = %elsewhere.join(", "), "ignoring the settings of other Wick services");
    }
    let config: T = serde_yaml::from_value(value).context("invalid configuration")?;
    let problems = config.validate();
    if !problems.is_empty() {
        bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    Ok(config)
}

/// The entry of a mapping whose key matches `name` case-insensitively.
fn lookup<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let Value::Mapping(map) = value else { return None };
    map.iter().find(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(name))).map(|(_, v)| v)
}

/// Overlays `over` onto `base`, mapping by mapping.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn set(value: &mut Value, path: &[String], scalar: Value) -> Result<()> {
    let Some((first, rest)) = path.split_first() else { bail!("empty key") };
    let Value::Mapping(map) = value else { bail!("{first} is not a section") };
    // Match existing keys case-insensitively (`WICK__KAFKA__BROKERS` sets `kafka.brokers`).
    let key = map
        .keys()
        .find(|k| k.as_str().is_some_and(|s| s.eq_ignore_ascii_case(first)))
        .cloned()
        .unwrap_or_else(|| Value::String(first.clone()));
    if rest.is_empty() {
        // A comma-separated value for a list setting becomes a list.
        let scalar = match (map.get(&key), &scalar) {
            (Some(Value::Sequence(_)), Value::String(s)) => {
                Value::Sequence(s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| Value::String(p.to_owned())).collect())
            }
            _ => scalar,
        };
        map.insert(key, scalar);
        return Ok(());
    }
    let entry = map.entry(key).or_insert_with(|| Value::Mapping(Mapping::new()));
    set(entry, rest, scalar)
}

/// The operations endpoint of a service: `/metrics`, `/health/livez`, `/health/readyz`. Each
/// service has its own default port, so that all of them run side by side on one machine.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    pub listen: std::net::SocketAddr,
}

impl OpsConfig {
    /// Listening on loopback at `port`.
    pub fn on_port(port: u16) -> OpsConfig {
        OpsConfig { listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)) }
    }
}

/// Which partitions an instance owns: `p mod count == index` (e.g. a StatefulSet ordinal and its
/// replica count).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    pub index: u32,
    pub count: u32,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig { index: 0, count: 1 }
    }
}

impl InstanceConfig {
    /// The problem with this assignment, if any.
    pub fn problem(&self) -> Option<String> {
        (self.count == 0 || self.index >= self.count)
            .then(|| format!("instance.index ({}) must be below instance.count ({})", self.index, self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Kafka {
        brokers: Vec<String>,
        linger: crate::duration::Duration,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        kafka: Kafka,
        partitions: i32,
    }

    impl Default for Kafka {
        fn default() -> Kafka {
            Kafka { brokers: vec!["127.0.0.1:9092".into()], linger: crate::duration::Duration::from_millis(10) }
        }
    }

    impl Default for Config {
        fn default() -> Config {
            Config { kafka: Kafka::default(), partitions: 16 }
        }
    }

    impl Validate for Config {
        fn validate(&self) -> Vec<String> {
            let mut problems = Vec::new();
            if self.partitions < 1 {
                problems.push(format!("partitions must be at least 1 (got {})", self.partitions));
            }
            if self.kafka.brokers.is_empty() {
                problems.push("kafka.brokers must name at least one broker".into());
            }
            problems
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_file_then_environment() {
        let dir = std::env::temp_dir().join(format!("wick-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(&file, "kafka:\n  linger: 25ms\npartitions: 8\n").unwrap();
        let c: Config = load_with_env(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        let c: Config =
            load_with_env(Some(&file), env(&[("WICK__PARTITIONS", "4"), ("WICK__KAFKA__BROKERS", "a:1, b:2"), ("OTHER", "x")])).unwrap();
        let prefixed: Config = load_with_env(None, env(&[("WICK__KAFKA__BROKERS", "prefix:")])).unwrap();
        assert_eq!(prefixed.kafka.brokers, vec!["prefix:".to_owned()], "a value ending in a colon is text, not a mapping");
        assert_eq!(c.partitions, 4);
        assert_eq!(c.kafka.linger, crate::duration::Duration::from_millis(25));
        assert_eq!(c.kafka.brokers, vec!["a:1".to_owned(), "b:2".to_owned()]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load_with_env::<Config>(None, env(&[("WICK__PARTITIONS", "0"), ("WICK__KAFKA__BROKERS", "")])).unwrap_err().to_string();
        assert!(err.contains("partitions must be at least 1") && err.contains("kafka.brokers must name"), "{err}");
        let err = format!("{:#}", load_with_env::<Config>(None, env(&[("WICK__KAFKA__LINGER", "soon")])).unwrap_err());
        assert!(err.contains("soon"), "{err}");
        let err = format!("{:#}", load_with_env::<Config>(None, env(&[("WICK__KAFKA__NOPE", "1")])).unwrap_err());
        assert!(err.contains("nope"), "{err}");
        let err = format!("{:#}", load_with_env::<Config>(Some(Path::new("/nonexistent/wick.yaml")), env(&[])).unwrap_err());
        assert!(err.contains("/nonexistent/wick.yaml"), "{err}");
    }

    /// A writer into a shared buffer, to read what was logged.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn other_services_settings_are_ignored_and_logged_once() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber =
            tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_writer(move || writer.clone()).with_ansi(false).finish();
        let c: Config = tracing::subscriber::with_default(subscriber, || {
            load_with_env(
                None,
                env(&[
                    ("WICK__CHECKPOINT__DATABASE_URL", "postgres://elsewhere/wick"),
                    ("WICK__PARTITIONS", "4"),
                    ("WICK__Ring__Buffer_Size", "not even a number"),
                    ("WICK__CHECKPOINT__NOT_CHECKED_HERE", "1"),
                    ("WICK__KAFKA__CANDLES_TOPIC", "another service's key of a shared section"),
                    ("WICK__KAFKA__LINGER", "25ms"),
                ]),
            )
        })
        .unwrap();
        let kafka = Kafka { linger: crate::duration::Duration::from_millis(25), ..Kafka::default() };
        assert_eq!(c, Config { partitions: 4, kafka });
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains("DEBUG")
                && log.contains("WICK__CHECKPOINT__DATABASE_URL")
                && log.contains("WICK__Ring__Buffer_Size")
                && log.contains("WICK__KAFKA__CANDLES_TOPIC")
                && !log.contains("WICK__KAFKA__LINGER"),
            "{log}"
        );
        assert!(!log.contains("elsewhere"), "values are not logged: {log}");
    }

    #[test]
    fn a_section_no_service_knows_is_refused_with_the_known_ones() {
        let err = format!("{:#}", load_with_env::<Config>(None, env(&[("WICK__CHECKPONT__INTERVAL", "5s")])).unwrap_err());
        assert!(err.contains("WICK__CHECKPONT__INTERVAL") && err.contains("`checkpont`"), "{err}");
        for (section, _) in SETTINGS {
            assert!(err.contains(section), "{section} missing from: {err}");
        }
        assert!(load_with_env::<Config>(None, env(&[("WICK__", "1")])).is_err());
        // In an own section, a key no service has is refused too.
        let err = format!("{:#}", load_with_env::<Config>(None, env(&[("WICK__KAFKA__CANDLES_TOPICS", "x")])).unwrap_err());
        assert!(err.contains("candles_topics"), "{err}");
    }

    #[test]
    fn a_file_holds_only_the_service_own_keys() {
        let dir = std::env::temp_dir().join(format!("wick-config-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let other_service = dir.join("other.yaml");
        std::fs::write(&other_service, "checkpoint:\n  interval: 5s\n").unwrap();
        let err = format!("{:#}", load_with_env::<Config>(Some(&other_service), env(&[])).unwrap_err());
        assert!(err.contains("checkpoint"), "{err}");
        let unknown_key = dir.join("unknown.yaml");
        std::fs::write(&unknown_key, "kafka:\n  brokerz: [a:1]\n").unwrap();
        let err = format!("{:#}", load_with_env::<Config>(Some(&unknown_key), env(&[])).unwrap_err());
        assert!(err.contains("brokerz"), "{err}");
    }

    #[test]
    fn the_settings_list_is_sorted_and_catches_an_unlisted_setting() {
        assert!(SETTINGS.windows(2).all(|w| w[0].0 < w[1].0), "{SETTINGS:?}");
        assert!(SETTINGS.iter().all(|(_, keys)| keys.windows(2).all(|w| w[0] < w[1])), "{SETTINGS:?}");
        // No service has `kafka.linger` or a top-level `partitions`.
        assert_eq!(unlisted_settings::<Config>(), vec!["kafka.linger".to_owned(), "partitions".to_owned()]);
    }
}
