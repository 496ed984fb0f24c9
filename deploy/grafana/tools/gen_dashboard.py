#!/usr/bin/env python3
"""Writes deploy/grafana/wick-overview.json (Grafana dashboard, schema 39). Edit the panels here and
run again: `python3 deploy/grafana/tools/gen_dashboard.py`. Every wick_* name in the expressions is
checked against what the services export (xtask/tests/deploy_metrics.rs)."""
import json, pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
panels, y = [], 0
pid = 0


def row(title):
    global y, pid
    pid += 1
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


def ts(title, targets, unit="short", x=0, w=8, h=8, desc=""):
    global pid
    pid += 1
    panels.append({
        "type": "timeseries", "title": title, "id": pid, "datasource": DS, "description": desc,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l} for i, (e, l) in enumerate(targets)],
    })


def line(*cells):
    global y
    x = 0
    w = 24 // len(cells)
    for c in cells:
        title, targets, unit, *desc = c
        ts(title, targets, unit, x=x, w=w, desc=desc[0] if desc else "")
        x += w
    y += 8


def q(h, m):
    return f"histogram_quantile({h}, sum by (le) (rate({m}_bucket[$__rate_interval])))"


def quantiles(m):
    return [(q(0.5, m), "p50"), (q(0.99, m), "p99")]


row("Feed (feed-publisher)")
line(("Trades published /s", [("sum by (exchange) (rate(wick_feed_trades_published_total[$__rate_interval]))", "{{exchange}}")], "ops"),
     ("Produce latency", quantiles("wick_feed_produce_seconds"), "s"),
     ("Feed problems /s", [("sum(rate(wick_feed_dead_letters_total[$__rate_interval]))", "dead letters"),
                           ("sum(rate(wick_feed_produce_errors_total[$__rate_interval]))", "produce errors"),
                           ("sum by (exchange) (rate(wick_feed_sequence_gaps_total[$__rate_interval]))", "gaps {{exchange}}"),
                           ("sum by (exchange) (rate(wick_feed_gap_trades_repaired_total[$__rate_interval]))", "gap trades repaired {{exchange}}"),
                           ("sum by (exchange) (rate(wick_feed_gap_trades_unrepaired_total[$__rate_interval]))", "gap trades unrepaired {{exchange}}"),
                           ("sum by (exchange) (rate(wick_feed_reconnects_total[$__rate_interval]))", "reconnects {{exchange}}")], "ops"))

row("Ingest (ingest-aggregator)")
line(("Records consumed /s", [("sum by (instance) (rate(wick_ingest_records_consumed_total[$__rate_interval]))", "{{instance}}"),
                              ("sum(rate(wick_ingest_trades_consumed_total[$__rate_interval]))", "trades")], "ops"),
     ("Poll time", quantiles("wick_ingest_poll_seconds"), "s",
      "One fetch from the broker. tansu waits the whole fetch_max_wait, so the median sits near it."),
     ("Consumer lag (records)", [("sum by (instance) (wick_ingest_consumer_lag_records)", "{{instance}}"),
                                 ("max by (partition) (wick_ingest_consumer_lag_records)", "partition {{partition}}")], "short"))
line(("Ring remaining capacity", [("min by (instance) (wick_ingest_ring_remaining_capacity)", "{{instance}}")], "short",
      "Free ring slots; near 0 means the shards are the bottleneck and fetching stalls."),
     ("Events dropped (must stay 0)", [("sum(increase(wick_ingest_events_dropped_total[$__rate_interval]))", "dropped")], "short"),
     ("Late and dead-lettered trades /s", [("sum(rate(wick_ingest_late_trades_total[$__rate_interval]))", "late (revised)"),
                                           ("sum(rate(wick_ingest_too_late_trades_total[$__rate_interval]))", "too late"),
                                           ("sum by (reason) (rate(wick_ingest_dead_letters_total[$__rate_interval]))", "dead letters {{reason}}"),
                                           ("sum(rate(wick_ingest_duplicates_total[$__rate_interval]))", "duplicates")], "ops"))
line(("Candles emitted /s", [("sum by (kind) (rate(wick_ingest_candles_emitted_total[$__rate_interval]))", "{{kind}}")], "ops"),
     ("Output produce latency", quantiles("wick_ingest_produce_seconds"), "s"),
     ("Checkpoints", [("sum(rate(wick_ingest_checkpoints_total[$__rate_interval]))", "checkpoints /s"),
                      ("max(wick_ingest_checkpoint_bytes)", "latest size (bytes)")], "short"))

row("Writer (persistence-writer)")
line(("Writer throughput /s", [("sum(rate(wick_writer_candles_received_total[$__rate_interval]))", "candles received"),
                               ("sum(rate(wick_writer_rows_written_total[$__rate_interval]))", "rows written"),
                               ("sum(rate(wick_writer_l2_writes_total[$__rate_interval]))", "L2 writes")], "ops"),
     ("Commit latency", quantiles("wick_writer_commit_seconds"), "s"),
     ("Writer lag (records)", [("sum by (instance) (wick_writer_lag_records)", "{{instance}}")], "short"))
line(("Database", [("min by (instance) (wick_writer_db_up)", "db up {{instance}}"),
                   ("sum(rate(wick_writer_db_retries_total[$__rate_interval]))", "retries /s")], "short"),
     ("Writer dead letters /s", [("sum by (reason) (rate(wick_writer_dead_letters_total[$__rate_interval]))", "{{reason}}")], "ops"),
     ("L2 follower", [("max by (instance) (wick_writer_l2_breaker_open)", "breaker open {{instance}}"),
                      ("sum(wick_writer_l2_pending_candles)", "pending candles"),
                      ("sum(rate(wick_writer_l2_failures_total[$__rate_interval]))", "failures /s")], "short"))

row("Caches and API (query-gateway)")
line(("L1 hit rate", [("sum(rate(wick_gateway_l1_hits_total[$__rate_interval])) / (sum(rate(wick_gateway_l1_hits_total[$__rate_interval])) + sum(rate(wick_gateway_l1_misses_total[$__rate_interval])))", "L1")], "percentunit"),
     ("L2 hit rate", [("sum(rate(wick_gateway_l2_hits_total[$__rate_interval])) / (sum(rate(wick_gateway_l2_hits_total[$__rate_interval])) + sum(rate(wick_gateway_l2_misses_total[$__rate_interval])))", "L2")], "percentunit"),
     ("L1 size", [("sum by (instance) (wick_gateway_l1_entries)", "chunks {{instance}}"),
                  ("sum by (instance) (wick_gateway_l1_candles)", "candles {{instance}}")], "short",
      "No metric reports the Redis L2 size; use Redis' own INFO memory (e.g. redis_exporter)."))
line(("API latency", [("histogram_quantile(0.99, sum by (le, api) (rate(wick_gateway_request_seconds_bucket[$__rate_interval])))", "p99 {{api}}"),
                      ("histogram_quantile(0.5, sum by (le, api) (rate(wick_gateway_request_seconds_bucket[$__rate_interval])))", "p50 {{api}}")], "s"),
     ("API requests and errors /s", [("sum by (api) (rate(wick_gateway_requests_total[$__rate_interval]))", "{{api}}"),
                                     ("sum by (api, status) (rate(wick_gateway_requests_total{status=~\"4..|5..\"}[$__rate_interval]))", "{{api}} {{status}}"),
                                     ("sum by (limit) (rate(wick_gateway_rate_limited_total[$__rate_interval]))", "rate limited {{limit}}")], "ops"),
     ("Gateway dependencies", [("max by (instance) (wick_gateway_l2_breaker_open)", "Redis breaker open {{instance}}"),
                               ("sum(rate(wick_gateway_l2_errors_total[$__rate_interval]))", "Redis errors /s"),
                               ("sum(rate(wick_gateway_db_errors_total[$__rate_interval]))", "DB errors /s"),
                               ("sum(rate(wick_gateway_db_loads_total[$__rate_interval]))", "DB chunk loads /s")], "short"))
line(("Live", [("sum(wick_gateway_ws_clients)", "WebSocket clients"), ("sum(wick_gateway_stream_clients)", "gRPC streams"),
               ("max(wick_gateway_live_lag_records)", "live lag (records)"),
               ("sum by (reason) (rate(wick_gateway_clients_dropped_total[$__rate_interval]))", "dropped {{reason}} /s")], "short"),
     ("Unpersisted candles", [("max(wick_gateway_unpersisted_candles)", "held"),
                              ("sum(rate(wick_gateway_unpersisted_dropped_total[$__rate_interval]))", "dropped /s")], "short"),
     ("Live events /s", [("sum(rate(wick_gateway_live_events_total[$__rate_interval]))", "events"),
                         ("sum(rate(wick_gateway_undecodable_records_total[$__rate_interval]))", "undecodable")], "ops"))

dashboard = {
    "title": "Wick", "uid": "wick-overview", "tags": ["wick"], "timezone": "utc", "schemaVersion": 39, "version": 1,
    "editable": True, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
    "annotations": {"list": []},
    "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
                             "current": {}, "hide": 0, "refresh": 1}]},
    "panels": panels,
}
out = pathlib.Path(__file__).resolve().parent.parent / "wick-overview.json"
out.write_text(json.dumps(dashboard, indent=2) + "\n")
