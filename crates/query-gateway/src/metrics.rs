//! query-gateway's metrics, declared once.

use prometheus::core::Collector;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use wick_service::metrics::{counter, counter_vec, gauge, histogram_vec, register};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests by API (rest, binance, grpc, ws), route and status.
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// The latency budget's hops through the gateway (see `new`).
    pub hop_seconds: HistogramVec,
    pub l1_hits: IntCounter,
    pub l1_misses: IntCounter,
    pub l1_entries: IntGauge,
    pub l1_candles: IntGauge,
    pub l2_hits: IntCounter,
    pub l2_misses: IntCounter,
    pub l2_errors: IntCounter,
    pub l2_breaker_open: IntGauge,
    pub db_loads: IntCounter,
    pub db_errors: IntCounter,
    pub live_events: IntCounter,
    pub live_lag: IntGauge,
    pub unpersisted: IntGauge,
    pub unpersisted_dropped: IntCounter,
    pub ws_clients: IntGauge,
    pub stream_clients: IntGauge,
    /// Live clients disconnected, by reason.
    pub clients_dropped: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub dead_letters: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            requests: counter_vec("wick_gateway_requests_total", "Requests by API, route and status.", &["api", "route", "status"]),
            request_seconds: histogram_vec(
                "wick_gateway_request_seconds",
                "Request latency by API and route.",
                &["api", "route"],
                0.00005,
                2.0,
                18,
            ),
            hop_seconds: histogram_vec(
                "wick_gateway_hop_seconds",
                "Latency budget by hop: publish_to_fetch (a candles-completed record's timestamp to the fetch that returned it), fetch_to_send \
                 (that fetch to the candle event written to a WebSocket client).",
                &["hop"],
                0.0001,
                2.0,
                18,
            ),
            l1_hits: counter("wick_gateway_l1_hits_total", "Chunks served from the in-process cache."),
            l1_misses: counter("wick_gateway_l1_misses_total", "Chunks not in the in-process cache (loaded from L2 or the database)."),
            l1_entries: gauge("wick_gateway_l1_entries", "Chunks held in the in-process cache."),
            l1_candles: gauge("wick_gateway_l1_candles", "Candles held in the in-process cache."),
            l2_hits: counter("wick_gateway_l2_hits_total", "Chunks served whole from Redis."),
            l2_misses: counter("wick_gateway_l2_misses_total", "Chunks Redis did not hold whole."),
            l2_errors: counter("wick_gateway_l2_errors_total", "Failed Redis calls (each opens the breaker)."),
            l2_breaker_open: gauge("wick_gateway_l2_breaker_open", "1 while the Redis circuit breaker is open."),
            db_loads: counter("wick_gateway_db_loads_total", "Chunks loaded from the database."),
            db_errors: counter("wick_gateway_db_errors_total", "Database reads that failed or timed out."),
            live_events: counter("wick_gateway_live_events_total", "Candle events read from candles-completed."),
            live_lag: gauge("wick_gateway_live_lag_records", "Records of candles-completed not yet read, summed over partitions."),
            unpersisted: gauge("wick_gateway_unpersisted_candles", "Candle versions seen live that the writer has not stored yet."),
            unpersisted_dropped: counter(
                "wick_gateway_unpersisted_dropped_total",
                "Unstored candle versions dropped because the writer was too far behind.",
            ),
            ws_clients: gauge("wick_gateway_ws_clients", "Open WebSocket connections."),
            stream_clients: gauge("wick_gateway_stream_clients", "Open gRPC StreamCandles calls."),
            clients_dropped: counter_vec("wick_gateway_clients_dropped_total", "Live clients disconnected, by reason.", &["reason"]),
            rate_limited: counter_vec("wick_gateway_rate_limited_total", "Requests refused by a rate limit, by limit.", &["limit"]),
            dead_letters: counter(
                "wick_gateway_undecodable_records_total",
                "candles-completed records that are not candle batches (skipped; the writer dead-letters them).",
            ),
        };
        register(&m.registry, m.collectors());
        m
    }

    /// The name of every metric, including vecs without samples yet (for the deployment checks).
    pub fn metric_names(&self) -> Vec<String> {
        self.collectors().iter().flat_map(|c| c.desc()).map(|d| d.fq_name.clone()).collect()
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.request_seconds.clone()),
            Box::new(self.hop_seconds.clone()),
            Box::new(self.l1_hits.clone()),
            Box::new(self.l1_misses.clone()),
            Box::new(self.l1_entries.clone()),
            Box::new(self.l1_candles.clone()),
            Box::new(self.l2_hits.clone()),
            Box::new(self.l2_misses.clone()),
            Box::new(self.l2_errors.clone()),
            Box::new(self.l2_breaker_open.clone()),
            Box::new(self.db_loads.clone()),
            Box::new(self.db_errors.clone()),
            Box::new(self.live_events.clone()),
            Box::new(self.live_lag.clone()),
            Box::new(self.unpersisted.clone()),
            Box::new(self.unpersisted_dropped.clone()),
            Box::new(self.ws_clients.clone()),
            Box::new(self.stream_clients.clone()),
            Box::new(self.clients_dropped.clone()),
            Box::new(self.rate_limited.clone()),
            Box::new(self.dead_letters.clone()),
        ]
    }

    /// Counts a finished request.
    pub fn request(&self, api: &str, route: &str, status: u16, seconds: f64) {
        self.requests.with_label_values(&[api, route, &status.to_string()]).inc();
        self.request_seconds.with_label_values(&[api, route]).observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
