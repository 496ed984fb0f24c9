//! persistence-writer's metrics, declared once; emitted per batch.

use prometheus::core::Collector;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use wick_service::metrics::{counter, counter_vec, gauge, gauge_vec, histogram};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Candle events read from the topic.
    pub candles_received: IntCounter,
    /// Rows inserted or changed (replays and older versions change nothing).
    pub rows_written: IntCounter,
    pub batch_candles: Histogram,
    pub commit_seconds: Histogram,
    pub db_retries: IntCounter,
    pub db_up: IntGauge,
    pub lag: IntGaugeVec,
    pub dead_letters: IntCounterVec,
    pub l2_writes: IntCounter,
    pub l2_failures: IntCounter,
    pub l2_invalidated: IntCounter,
    pub l2_pending: IntGauge,
    pub l2_breaker_open: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            candles_received: counter("wick_writer_candles_received_total", "Candle events read from candles-completed."),
            rows_written: counter("wick_writer_rows_written_total", "Candle rows inserted or changed in the database."),
            batch_candles: histogram("wick_writer_batch_candles", "Distinct candles per database transaction.", 1.0, 2.0, 16),
            commit_seconds: histogram(
                "wick_writer_commit_seconds",
                "Duration of one write transaction (COPY, upsert, offsets, commit).",
                0.0005,
                2.0,
                16,
            ),
            db_retries: counter("wick_writer_db_retries_total", "Write transactions that failed and were retried."),
            db_up: gauge("wick_writer_db_up", "1 while the last database write succeeded, 0 while writes fail."),
            lag: gauge_vec(
                "wick_writer_lag_records",
                "Records of a partition not yet committed: high watermark minus committed offset.",
                &["partition"],
            ),
            dead_letters: counter_vec("wick_writer_dead_letters_total", "Records sent to the dead-letter topic, by reason.", &["reason"]),
            l2_writes: counter("wick_writer_l2_writes_total", "Candles written to the Redis L2 cache."),
            l2_failures: counter("wick_writer_l2_failures_total", "Failed L2 cache writes (each opens the breaker)."),
            l2_invalidated: counter("wick_writer_l2_invalidated_total", "L2 chunks removed because too many writes were missed."),
            l2_pending: gauge("wick_writer_l2_pending_candles", "Committed candles waiting for the L2 cache."),
            l2_breaker_open: gauge("wick_writer_l2_breaker_open", "1 while the L2 circuit breaker is open."),
        };
        wick_service::metrics::register(&m.registry, m.collectors());
        m
    }

    /// The name of every metric this service exports, whether or not it has a sample yet (a vec
    /// metric without label values is absent from `gather()`). The deployment's dashboards and
    /// alerts are checked against these (`xtask/tests/deploy_metrics.rs`).
    pub fn metric_names(&self) -> Vec<String> {
        self.collectors().iter().flat_map(|c| c.desc()).map(|d| d.fq_name.clone()).collect()
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.candles_received.clone()),
            Box::new(self.rows_written.clone()),
            Box::new(self.batch_candles.clone()),
            Box::new(self.commit_seconds.clone()),
            Box::new(self.db_retries.clone()),
            Box::new(self.db_up.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.l2_writes.clone()),
            Box::new(self.l2_failures.clone()),
            Box::new(self.l2_invalidated.clone()),
            Box::new(self.l2_pending.clone()),
            Box::new(self.l2_breaker_open.clone()),
        ]
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
