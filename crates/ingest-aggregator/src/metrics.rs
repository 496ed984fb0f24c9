//! ingest-aggregator's metrics, declared once; emitted per fetch and per ring batch.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use wick_service::metrics::{counter, counter_vec, gauge, gauge_vec, histogram, histogram_vec};

use crate::shard::ShardStats;

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub records_consumed: IntCounterVec,
    pub trades_consumed: IntCounter,
    pub poll_seconds: Histogram,
    /// The latency budget's hops through this service (see `hop_seconds` in `new`).
    pub hop_seconds: HistogramVec,
    pub lag: IntGaugeVec,
    pub ring_remaining: IntGauge,
    pub events_dropped: IntCounter,
    pub duplicates: IntCounter,
    pub late: IntCounter,
    pub too_late: IntCounter,
    pub dead_letters: IntCounterVec,
    pub candles_emitted: IntCounterVec,
    pub records_produced: IntCounter,
    pub produce_seconds: Histogram,
    pub checkpoints: IntCounter,
    pub checkpoints_superseded: IntCounter,
    pub checkpoint_bytes: IntGauge,
    pub aggregation_errors: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            records_consumed: counter_vec(
                "wick_ingest_records_consumed_total",
                "market-events records consumed, by partition.",
                &["partition"],
            ),
            trades_consumed: counter("wick_ingest_trades_consumed_total", "Trades decoded from consumed records."),
            poll_seconds: histogram("wick_ingest_poll_seconds", "Duration of one fetch from the broker.", 0.0005, 2.0, 14),
            hop_seconds: histogram_vec(
                "wick_ingest_hop_seconds",
                "Latency budget by hop: publish_to_fetch (a market-events record's timestamp to the fetch that returned it: produce, broker, fetch wait), \
                 fetch_to_output (the fetch to its trades' candle events leaving the shard: ring, apply, update throttle), output_to_ack (a \
                 candles-completed record's first event to the broker's acknowledgement: linger and produce).",
                &["hop"],
                0.0001,
                2.0,
                18,
            ),
            lag: gauge_vec(
                "wick_ingest_consumer_lag_records",
                "Records behind: log end (high watermark) minus position, by partition.",
                &["partition"],
            ),
            ring_remaining: gauge("wick_ingest_ring_remaining_capacity", "Free slots of the ring."),
            events_dropped: counter(
                "wick_ingest_events_dropped_total",
                "Events dropped by the ring: always 0 (a full ring stalls fetching).",
            ),
            duplicates: counter("wick_ingest_duplicates_total", "Trades counted once already (same instrument and trade id)."),
            late: counter("wick_ingest_late_trades_total", "Trades for a final candle within the revision window: the candle was revised."),
            too_late: counter("wick_ingest_too_late_trades_total", "Trades older than the revision window: dead-lettered as too_late."),
            dead_letters: counter_vec(
                "wick_ingest_dead_letters_total",
                "Records and trades sent to the dead-letter topic, by reason.",
                &["reason"],
            ),
            candles_emitted: counter_vec(
                "wick_ingest_candles_emitted_total",
                "Candle events published, by kind (update, final, revision).",
                &["kind"],
            ),
            records_produced: counter("wick_ingest_records_produced_total", "candles-completed records acknowledged by the broker."),
            produce_seconds: histogram("wick_ingest_produce_seconds", "Duration of one produce request.", 0.0005, 2.0, 14),
            checkpoints: counter("wick_ingest_checkpoints_total", "Partition checkpoints stored."),
            checkpoints_superseded: counter(
                "wick_ingest_checkpoints_superseded_total",
                "Partition checkpoints not stored because another instance had stored a newer one (after a re-shard).",
            ),
            checkpoint_bytes: gauge("wick_ingest_checkpoint_bytes", "Size of the latest partition checkpoint's state."),
            aggregation_errors: counter("wick_ingest_aggregation_errors_total", "Trades or candles that overflowed the exact arithmetic."),
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
            Box::new(self.records_consumed.clone()),
            Box::new(self.trades_consumed.clone()),
            Box::new(self.poll_seconds.clone()),
            Box::new(self.hop_seconds.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.ring_remaining.clone()),
            Box::new(self.events_dropped.clone()),
            Box::new(self.duplicates.clone()),
            Box::new(self.late.clone()),
            Box::new(self.too_late.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.candles_emitted.clone()),
            Box::new(self.records_produced.clone()),
            Box::new(self.produce_seconds.clone()),
            Box::new(self.checkpoints.clone()),
            Box::new(self.checkpoints_superseded.clone()),
            Box::new(self.checkpoint_bytes.clone()),
            Box::new(self.aggregation_errors.clone()),
        ]
    }

    /// Adds a shard's counters since its last report.
    pub fn add_shard_stats(&self, s: &ShardStats) {
        self.duplicates.inc_by(s.duplicates);
        self.late.inc_by(s.revised);
        self.too_late.inc_by(s.too_late);
        self.dead_letters.with_label_values(&["too_late"]).inc_by(s.too_late);
        self.dead_letters.with_label_values(&["overflow"]).inc_by(s.errors);
        self.dead_letters.with_label_values(&["dedup_full"]).inc_by(s.dedup_full);
        self.aggregation_errors.inc_by(s.errors);
        self.candles_emitted.with_label_values(&["update"]).inc_by(s.updates);
        self.candles_emitted.with_label_values(&["final"]).inc_by(s.finals);
        self.candles_emitted.with_label_values(&["revision"]).inc_by(s.revisions);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
