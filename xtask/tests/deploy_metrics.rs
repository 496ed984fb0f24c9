//! The deployment names only metrics that a service exports: every `wick_*` name in the Grafana
//! dashboards, the alert rules and the charts' values (autoscaling queries) is declared by one of
//! the four services' `Metrics` (histogram series may add `_bucket`, `_sum` or `_count`). Names
//! from elsewhere (`up`, Kubernetes' own) are not checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is inside the workspace").to_path_buf()
}

/// The deployment files that name metrics.
fn deployment_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = Vec::new();
    for (dir, suffix) in [("deploy/grafana", ".json"), ("deploy/prometheus", "-rules.yaml")] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("reading {dir}: {e}")) {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(suffix) {
                files.push(path);
            }
        }
    }
    for chart in ["ingest-aggregator", "persistence-writer"] {
        files.push(root.join("deploy/helm").join(chart).join("values.yaml"));
    }
    files.sort();
    files
}

/// Every `wick_[a-z0-9_]+` token of `text` (not part of a longer identifier).
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("wick_").map(|p| p + i) {
        let mut end = at;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_') {
            end += 1;
        }
        // `wick_*` in prose is no name.
        if (at == 0 || !ident(bytes[at - 1])) && end > at + "wick_".len() {
            names.insert(text[at..end].to_owned());
        }
        i = end.max(at + 1);
    }
    names
}

/// What the four services declare.
fn declared() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    names.extend(feed_publisher::metrics::Metrics::new().metric_names());
    names.extend(ingest_aggregator::metrics::Metrics::new().metric_names());
    names.extend(persistence_writer::metrics::Metrics::new().metric_names());
    names.extend(query_gateway::metrics::Metrics::new().metric_names());
    names
}

fn exported(name: &str, declared: &BTreeSet<String>) -> bool {
    let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s));
    std::iter::once(name).chain(base).any(|n| declared.contains(n))
}

#[test]
fn deployment_names_only_exported_metrics() {
    let declared = declared();
    assert!(declared.len() > 30, "the services declare {} metrics: metric_names() looks broken", declared.len());
    let mut unknown = Vec::new();
    for file in deployment_files() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let names = metric_tokens(&text);
        // A file that names no metric would pass vacuously: the scan or the file is wrong.
        assert!(!names.is_empty(), "{} names no wick_* metric", file.display());
        for name in names {
            if !exported(&name, &declared) {
                unknown.push(format!("{}: {name}", file.strip_prefix(root()).unwrap_or(&file).display()));
            }
        }
    }
    assert!(unknown.is_empty(), "metrics that no service exports:\n  {}", unknown.join("\n  "));
}

#[test]
fn vec_metrics_without_samples_are_declared_too() {
    let declared = declared();
    assert!(declared.contains("wick_gateway_l1_hits_total"));
    assert!(declared.contains("wick_gateway_requests_total"), "a vec metric without samples is found too");
    assert!(!declared.contains("wick_gateway_no_such_metric_total"));
}

#[test]
fn tokens_are_whole_names() {
    let found = metric_tokens(r#"rate(wick_a_total[5m]) / x_wick_b + {"expr": "wick_c_bucket"} WICK__KAFKA wick_*"#);
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["wick_a_total", "wick_c_bucket"]);
}
