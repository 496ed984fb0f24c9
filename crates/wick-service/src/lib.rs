//! What every Wick service shares, so the services look alike: typed configuration from a YAML file
//! with `WICK__SECTION__KEY` environment overrides ([`config`]), durations written as `10ms` or
//! `5m` ([`duration`]), logging ([`init_telemetry`]), the operations endpoint with `/metrics`,
//! `/health/livez` and `/health/readyz` ([`ops`]), shutdown on SIGINT or SIGTERM ([`shutdown`]), and
//! retry delays with jitter ([`backoff`]), and metric declarations ([`metrics`]).

pub mod backoff;
pub mod config;
pub mod duration;
pub mod metrics;
pub mod ops;
pub mod shutdown;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_telemetry() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
