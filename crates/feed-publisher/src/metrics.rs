//! feed-publisher's metrics, declared once; emitted per record batch, not per trade.

use prometheus::core::Collector;
use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};
use wick_core::{Instrument, Timestamp, Trade};
use wick_service::metrics::{counter, counter_vec, histogram};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    trades_published: IntCounterVec,
    trades_per_record: Histogram,
    pub instruments_per_record: Histogram,
    pub produce_seconds: Histogram,
    publish_delay_seconds: Histogram,
    pub receive_to_publish_seconds: Histogram,
    pub produce_errors: IntCounter,
    pub dead_letters: IntCounter,
    pub rejected: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub gaps: IntCounterVec,
    pub gap_trades_repaired: IntCounterVec,
    pub gap_trades_unrepaired: IntCounterVec,
    pub gap_ranges_unrepaired: IntCounterVec,
    pub gap_repair_seconds: Histogram,
    pub reconnects: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            trades_published: counter_vec(
                "wick_feed_trades_published_total",
                "Trades handed to the broker in records, by instrument and exchange.",
                &["instrument", "exchange"],
            ),
            trades_per_record: histogram("wick_feed_trades_per_record", "Trades per instrument in a market-events record.", 1.0, 2.0, 14),
            instruments_per_record: histogram("wick_feed_instruments_per_record", "Instruments per record (one record per partition and linger window).", 1.0, 2.0, 12),
            produce_seconds: histogram("wick_feed_produce_seconds", "Duration of one produce request.", 0.0005, 2.0, 14),
            publish_delay_seconds: histogram(
                "wick_feed_exchange_to_publish_delay_seconds",
                "Event time to hand-off to the producer, oldest trade of each record.",
                0.001,
                2.0,
                16,
            ),
            receive_to_publish_seconds: histogram(
                "wick_feed_receive_to_publish_seconds",
                "Latency budget, first hop: receive time of a record's oldest trade to the record's hand-off to its partition writer (linger and queueing).",
                0.0001,
                2.0,
                18,
            ),
            produce_errors: counter("wick_feed_produce_errors_total", "Produce requests that failed after retries."),
            dead_letters: counter("wick_feed_dead_letters_total", "Records written to the dead-letter topic."),
            rejected: counter_vec(
                "wick_feed_rejected_total",
                "Inputs that could not be parsed, by source and reason.",
                &["source", "reason"],
            ),
            duplicates: counter_vec(
                "wick_feed_duplicates_total",
                "Trades dropped as duplicates (e.g. after a reconnect), by exchange.",
                &["exchange"],
            ),
            gaps: counter_vec(
                "wick_feed_sequence_gaps_total",
                "Trade ids missing from an exchange's sequence, by exchange.",
                &["exchange"],
            ),
            gap_trades_repaired: counter_vec(
                "wick_feed_gap_trades_repaired_total",
                "Missing trades fetched from the exchange's REST history and published, by exchange.",
                &["exchange"],
            ),
            gap_trades_unrepaired: counter_vec(
                "wick_feed_gap_trades_unrepaired_total",
                "Missing trade ids that could not be repaired (dead-lettered as unrepaired_gap), by exchange.",
                &["exchange"],
            ),
            gap_ranges_unrepaired: counter_vec(
                "wick_feed_gap_ranges_unrepaired_total",
                "unrepaired_gap dead letters: ranges of missing trades (or, on feeds without an id sequence, spans across a reconnect) that could not be repaired, by exchange.",
                &["exchange"],
            ),
            gap_repair_seconds: histogram("wick_feed_gap_repair_seconds", "Duration of one gap's fetch from the REST history, retries included.", 0.01, 2.0, 14),
            reconnects: counter_vec(
                "wick_feed_reconnects_total",
                "WebSocket reconnects (and failed connects), by exchange.",
                &["exchange"],
            ),
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
            Box::new(self.trades_published.clone()),
            Box::new(self.trades_per_record.clone()),
            Box::new(self.instruments_per_record.clone()),
            Box::new(self.receive_to_publish_seconds.clone()),
            Box::new(self.produce_seconds.clone()),
            Box::new(self.publish_delay_seconds.clone()),
            Box::new(self.produce_errors.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.duplicates.clone()),
            Box::new(self.gaps.clone()),
            Box::new(self.gap_trades_repaired.clone()),
            Box::new(self.gap_trades_unrepaired.clone()),
            Box::new(self.gap_ranges_unrepaired.clone()),
            Box::new(self.gap_repair_seconds.clone()),
            Box::new(self.reconnects.clone()),
        ]
    }

    /// Trades of `instrument` handed to the broker so far.
    pub fn published_total(&self, instrument: &Instrument) -> u64 {
        self.trades_published.with_label_values(&[instrument.as_str(), instrument.exchange()]).get()
    }

    /// Inputs refused from `source`, over every reason.
    pub fn rejected_total(&self, source: &str) -> u64 {
        ["malformed", "unknown_type", "invalid_field"].iter().map(|r| self.rejected.with_label_values(&[source, r]).get()).sum()
    }

    /// One record's worth of trades of one instrument.
    pub fn observe_batch(&self, instrument: &Instrument, trades: &[Trade], now: Timestamp) {
        self.trades_published.with_label_values(&[instrument.as_str(), instrument.exchange()]).inc_by(trades.len() as u64);
        self.trades_per_record.observe(trades.len() as f64);
        if let Some(oldest) = trades.iter().map(Trade::event_time).min() {
            self.publish_delay_seconds.observe((now.as_micros() - oldest.as_micros()).max(0) as f64 / 1e6);
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
