//! Declaring metrics: constructors for the kinds Wick uses, and registration. A metric that cannot
//! be built is a programming error (a bad name), found by every service's first test.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

fn check<T>(name: &str, r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

pub fn counter(name: &str, help: &str) -> IntCounter {
    check(name, IntCounter::new(name, help))
}

pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    check(name, IntCounterVec::new(Opts::new(name, help), labels))
}

pub fn gauge(name: &str, help: &str) -> IntGauge {
    check(name, IntGauge::new(name, help))
}

pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    check(name, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// A histogram with exponential buckets from `start`, each `factor` times the previous.
pub fn histogram(name: &str, help: &str, start: f64, factor: f64, count: usize) -> Histogram {
    let buckets = check(name, prometheus::exponential_buckets(start, factor, count));
    check(name, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)))
}

/// [`histogram`] with labels.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], start: f64, factor: f64, count: usize) -> HistogramVec {
    let buckets = check(name, prometheus::exponential_buckets(start, factor, count));
    check(name, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels))
}

/// Registers every collector.
pub fn register(registry: &Registry, collectors: Vec<Box<dyn Collector>>) {
    for c in collectors {
        registry.register(c).unwrap_or_else(|e| panic!("registering metrics: {e}"));
    }
}
