#!/usr/bin/env python3
"""Writes each service chart's values.schema.json. The `config` block lists exactly the settings of
the service's `src/config.rs` (section -> key -> type), so a misspelt or unknown setting fails
`helm lint`/`helm template`. Run again after a config change: `python3 deploy/helm/tools/gen_schemas.py`."""
import json, pathlib

# A Wick duration (wick_service::duration), in configuration.
DUR = {"type": "string", "pattern": r"^[0-9]+(us|ms|s|m|h|d)$"}
# A Prometheus duration (the ServiceMonitor's scrape interval).
PROM_DUR = {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h|d)$"}
STR = {"type": "string"}
INT = {"type": "integer", "minimum": 0}
BOOL = {"type": "boolean"}
LIST = {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]}
ADDR = {"type": "string", "pattern": r"^[^:]+:[0-9]+$"}

KAFKA_FEED = {"brokers": LIST, "market_events_topic": STR, "dead_letter_topic": STR, "request_deadline": DUR}
CONFIG = {
    "feed-publisher": {
        "kafka": KAFKA_FEED,
        "producer": {"linger": DUR, "max_request_bytes": INT, "compression": {"enum": ["lz4", "none"]}},
    },
    "ingest-aggregator": {
        "kafka": {"brokers": LIST, "market_events_topic": STR, "market_events_partitions": INT, "candles_topic": STR,
                  "candles_partitions": INT, "dead_letter_topic": STR, "dead_letter_partitions": INT, "request_deadline": DUR},
        "consumer": {"fetch_min_bytes": INT, "fetch_max_bytes": INT, "fetch_max_wait": DUR, "max_poll_records": INT,
                     "auto_offset_reset": {"enum": ["latest", "earliest"]}},
        "ring": {"buffer_size": INT, "wait_strategy": {"enum": ["phased", "yielding", "busy-spin", "blocking"]}, "phased_spin": DUR,
                 "phased_yield": DUR, "num_consumers": {"type": "integer", "minimum": 0, "maximum": 64}},
        "aggregation": {"intervals": LIST, "allowed_lateness": DUR, "revision_window": DUR, "update_throttle": DUR, "tick": DUR},
        "output": {"linger": DUR, "max_request_bytes": INT},
        "checkpoint": {"database_url": STR, "schema": STR, "interval": DUR},
    },
    "persistence-writer": {
        "kafka": {"brokers": LIST, "candles_topic": STR, "candles_partitions": INT, "dead_letter_topic": STR,
                  "request_deadline": DUR, "fetch_max_wait": DUR, "fetch_max_bytes": INT},
        "batch": {"max_candles": INT, "max_delay": DUR},
        "database": {"url": STR, "schema": STR, "pool_size": INT, "min_backoff": DUR, "max_backoff": DUR,
                     "partitions_ahead": INT, "chunk_interval": STR, "compress_after": STR, "retention": STR},
        "redis": {"enabled": BOOL, "url": STR, "key_prefix": STR, "ttl": DUR, "command_timeout": DUR, "max_pending": INT},
    },
    "query-gateway": {
        "http": {"cors_origins": LIST},
        "kafka": {"brokers": LIST, "candles_topic": STR, "candles_partitions": INT, "request_deadline": DUR,
                  "fetch_max_wait": DUR, "fetch_max_bytes": INT},
        "database": {"url": STR, "schema": STR, "pool_size": INT, "query_timeout": DUR},
        "redis": {"enabled": BOOL, "url": STR, "key_prefix": STR, "ttl": DUR, "command_timeout": DUR},
        "l1": {"enabled": BOOL, "max_entries": INT, "ttl": DUR},
        "live": {"max_subscriptions": INT, "client_buffer": INT, "max_connections": INT, "max_unpersisted": INT,
                 "prune_interval": DUR},
        "auth": {"api_keys": LIST},
        "limits": {"per_key_rate": INT, "per_key_burst": INT, "per_address_rate": INT, "per_address_burst": INT},
        "binance": {"exchange": STR, "quote_assets": LIST, "max_source_candles": INT},
    },
}


def closed(props, required=()):
    return {"type": "object", "additionalProperties": False, "properties": props, "required": list(required)}


def config_schema(sections):
    return closed({s: closed(keys) for s, keys in sections.items()})


K8S_OBJ = {"type": "object"}
COMMON = {
    "image": closed({"repository": STR, "tag": STR, "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
                    ["repository"]),
    "imagePullSecrets": {"type": "array"},
    "fullnameOverride": STR,
    "ops": closed({"port": {"type": "integer", "minimum": 1, "maximum": 65535}}, ["port"]),
    "secretEnv": {"type": "array", "items": closed(
        {"name": {"type": "string", "pattern": "^WICK__[A-Z0-9_]+__[A-Z0-9_]+$"}, "secretName": STR, "secretKey": STR},
        ["name", "secretName", "secretKey"])},
    "extraEnv": {"type": "array"},
    "resources": K8S_OBJ,
    "probes": closed({"periodSeconds": INT, "livenessFailureThreshold": INT, "readinessFailureThreshold": INT,
                      "startupFailureThreshold": INT}),
    "podDisruptionBudget": closed({"enabled": BOOL, "maxUnavailable": {"type": ["integer", "string"]}}),
    "serviceMonitor": closed({"enabled": BOOL, "interval": PROM_DUR, "labels": K8S_OBJ}),
    "networkPolicy": closed({"enabled": BOOL, "metricsNamespaceLabels": K8S_OBJ, "ingress": {"type": "array"},
                             "egress": {"type": "array"}}),
    "service": closed({"headless": BOOL, "ports": {"type": "array", "items": closed(
        {"name": STR, "port": {"type": "integer", "minimum": 1, "maximum": 65535}}, ["name", "port"])}}),
    "podAnnotations": K8S_OBJ,
    "nodeSelector": K8S_OBJ,
    "tolerations": {"type": "array"},
    "affinity": K8S_OBJ,
    "terminationGracePeriodSeconds": INT,
}
KEDA = closed({"keda": closed({"enabled": BOOL, "minReplicas": INT, "maxReplicas": {"type": "integer", "minimum": 1},
                               "prometheusAddress": STR, "lagThreshold": {"type": "integer", "minimum": 1},
                               "query": STR})})
EXTRA = {
    "feed-publisher": {
        "feeds": {"type": "array", "items": closed({
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "exchange": {"enum": ["binance", "coinbase", "kraken"]},
            "symbols": {"type": "array", "items": STR, "minItems": 1},
            "feed": STR, "url": STR}, ["name", "exchange", "symbols"])},
        "simulate": closed({"enabled": BOOL, "instruments": {"type": "integer", "minimum": 1, "maximum": 8},
                            "rate": {"type": "number", "exclusiveMinimum": 0}}),
    },
    "ingest-aggregator": {"replicas": {"type": "integer", "minimum": 1}, "autoscaling": KEDA},
    "persistence-writer": {"replicas": {"type": "integer", "minimum": 1}, "autoscaling": KEDA},
    "query-gateway": {"replicas": {"type": "integer", "minimum": 1}, "autoscaling": closed(
        {"enabled": BOOL, "minReplicas": {"type": "integer", "minimum": 1}, "maxReplicas": {"type": "integer", "minimum": 1},
         "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100}})},
}

here = pathlib.Path(__file__).resolve().parent.parent
for chart, sections in CONFIG.items():
    props = dict(COMMON, config=config_schema(sections), **EXTRA[chart])
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": f"{chart} values", **closed(props, ["image", "ops", "config"])}
    # The wick-lib dependency passes its own (empty) values block through.
    schema["properties"]["wick-lib"] = K8S_OBJ
    schema["properties"]["global"] = K8S_OBJ
    (here / chart / "values.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
