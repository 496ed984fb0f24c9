//! The whole-system benchmark (`cargo xtask bench system`): every service as its release binary
//! on this machine against the stack; and the naive alternative (`cargo xtask bench naive`). The
//! measuring program of both is `tests/examples/system_bench.rs`.

use std::fmt::Write as _;
use std::fs;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::bench_results::{Doc, Record};
use crate::util::{cargo, root, run};

/// Runs `parts` of the measuring program; its results.
fn measure_parts(parts: &str) -> Result<Value> {
    if !crate::stack::broker_answers() {
        anyhow::bail!("the local stack is not up: run `cargo xtask stack up` first");
    }
    let path = root().join(format!("target/wick-bench/system-{}.json", parts.replace(',', "-")));
    let _ = fs::remove_file(&path);
    run(cargo().args(["run", "--release", "-p", "wick-e2e", "--example", "system_bench", "--"]).arg(&path).env("WICK_BENCH_ONLY", parts))?;
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Every part of the whole-system benchmark but the naive alternative.
pub fn measure() -> Result<Value> {
    measure_parts("scale,idle,floor,latency")
}

pub fn measure_naive() -> Result<Value> {
    measure_parts("naive")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Milliseconds, or what a missing figure means (a trade never pushed within the wait).
fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 1000.0 => format!("{:.2} s", x / 1e3),
        Some(x) => format!("{x:.1} ms"),
        None => "not pushed".into(),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The scale run of the JSON-lines replay with `instruments` instruments and `aggregators`
/// instances, if measured.
fn scale_run(r: &Value, instruments: u64, aggregators: u64) -> Option<&Value> {
    scale_run_of(r, "json-lines", instruments, aggregators)
}

fn scale_run_of<'a>(r: &'a Value, input: &str, instruments: u64, aggregators: u64) -> Option<&'a Value> {
    r["scale"]["runs"].as_array()?.iter().find(|x| {
        x.get("error").is_none()
            && x["input"] == input
            && x["instruments"].as_u64() == Some(instruments)
            && x["aggregators"].as_u64() == Some(aggregators)
    })
}

fn latency_run(r: &Value, rate: u64) -> Option<&Value> {
    r["latency"]["runs"].as_array()?.iter().find(|x| x.get("error").is_none() && x["rate"].as_u64() == Some(rate))
}

/// The highest peak RSS of services whose name starts with `service`, over `runs`: (MiB, where).
fn peak_rss<'a>(runs: impl Iterator<Item = (&'a Value, String)>, service: &str) -> Option<(f64, String)> {
    let mut best: Option<(f64, String)> = None;
    for (run, label) in runs {
        for (name, v) in run["peak_rss_mib"].as_object().into_iter().flatten() {
            if name.starts_with(service) && best.as_ref().is_none_or(|(b, _)| f(v) > *b) {
                best = Some((f(v), label.clone()));
            }
        }
    }
    best
}

/// The runs that load the services with 1,000 instruments: the scale run with one aggregator and
/// every latency run.
fn thousand_instrument_runs(r: &Value) -> Vec<(&Value, String)> {
    let mut runs: Vec<(&Value, String)> =
        scale_run(r, 1000, 1).map(|x| (x, "replay of 1,000 instruments".to_owned())).into_iter().collect();
    for l in r["latency"]["runs"].as_array().into_iter().flatten() {
        runs.push((l, format!("{} trades/s live", l["rate"])));
    }
    runs
}

/// Rows for the goals table.
fn goals(md: &mut String, r: &Value) -> Result<()> {
    let reference = scale_run(r, 3, 1);
    let thousand = scale_run(r, 1000, 1);
    if let Some(t) = reference {
        let rate = f(&t["trades_per_second"]);
        writeln!(
            md,
            "| whole system: >= 200k trades/s from feed to database | {rate:.0} trades/s (3 instruments) | {} |",
            verdict(rate >= 200_000.0)
        )?;
    }
    if let (Some(a), Some(b)) = (reference, thousand) {
        let ratio = f(&b["trades_per_second"]) / f(&a["trades_per_second"]);
        writeln!(
            md,
            "| whole system: 1,000 instruments feed to database >= 0.7x the 3-instrument trades/s | {:.0} vs {:.0} trades/s: {ratio:.2}x | {} |",
            f(&b["trades_per_second"]),
            f(&a["trades_per_second"]),
            verdict(ratio >= 0.7 && b["completed"] == true)
        )?;
    }
    if let Some(l) = latency_run(r, 20_000) {
        let max = f(&l["max_ms"]);
        writeln!(
            md,
            "| whole system: keeps up with 20k trades/s live across 1,000 instruments, lag under 1 s | slowest trade pushed after {}, p99 {}, at {:.0} trades/s | {} |",
            ms(&l["max_ms"]),
            ms(&l["p99_ms"]),
            f(&l["achieved_rate"]),
            verdict(max < 1000.0 && f(&l["achieved_rate"]) >= 0.95 * f(&l["rate"]))
        )?;
    }
    if let Some(services) = r["idle"]["percent_of_one_core"].as_object() {
        let (worst, pct) = services.iter().map(|(k, v)| (k.as_str(), f(v))).fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a });
        writeln!(
            md,
            "| whole system: idle, every service under 2% of one core | highest: {worst} {pct:.2}% | {} |",
            verdict(services.values().all(|v| f(v) < 2.0))
        )?;
    }
    // The baseline (8.5 µs) was a replay of Binance CSV files: that run decides; the
    // JSON-lines one is shown beside it.
    if let Some(t) = scale_run_of(r, "binance-csv", 3, 1).or(reference) {
        let cpu = f(&t["cpu_us_per_trade"]);
        let json = match (t["input"].as_str(), reference) {
            (Some("binance-csv"), Some(j)) => format!("; JSON lines: {:.2} µs", f(&j["cpu_us_per_trade"])),
            _ => String::new(),
        };
        writeln!(
            md,
            "| whole system: <= 3 µs of machine CPU per trade, feed to database, 3 instruments | {cpu:.2} µs replaying {} (Wick and its stack alone: {:.2} µs{json}) | {} |",
            if t["input"] == "binance-csv" { "Binance CSV files" } else { "JSON lines" },
            f(&t["wick_and_stack_cpu_us_per_trade"]),
            verdict(cpu <= 3.0)
        )?;
    }
    if let Some(l) = latency_run(r, 50_000) {
        let p99 = f(&l["p99_ms"]);
        let achieved = f(&l["achieved_rate"]) >= 0.95 * f(&l["rate"]);
        writeln!(
            md,
            "| whole system: trade-to-push p99 < 100 ms at 50k trades/s (1,000 instruments) | p99 {} at {:.0} trades/s | {} |",
            ms(&l["p99_ms"]),
            f(&l["achieved_rate"]),
            verdict(p99 < 100.0 && achieved)
        )?;
        let own = f(&l["wick_hops_p99_sum_ms"]);
        writeln!(
            md,
            "| whole system: Wick's own share of trade-to-push < 5 ms p99 at 50k trades/s | {} (sum of the p99s of Wick's hops; see Trade-to-push latency) | {} |",
            ms(&l["wick_hops_p99_sum_ms"]),
            verdict(own < 5.0)
        )?;
        writeln!(
            md,
            "| whole system: trade-to-WebSocket-push p99 <= 10 ms at 50000 trades/s | p99 {} at {:.0} trades/s (1,000 instruments) | {} |",
            ms(&l["p99_ms"]),
            f(&l["achieved_rate"]),
            verdict(p99 <= 10.0 && achieved)
        )?;
    }
    for (service, label) in [("ingest-aggregator", "ingest-aggregator"), ("query-gateway", "query-gateway")] {
        if let Some((mib, at)) = peak_rss(thousand_instrument_runs(r).into_iter(), service) {
            writeln!(
                md,
                "| whole system: {label} under 256 MiB RSS at 1,000 instruments × 16 intervals | peak {mib:.0} MiB ({at}) | {} |",
                verdict(mib < 256.0)
            )?;
        }
    }
    if r.get("scale").is_some() {
        writeln!(
            md,
            "| whole system: aggregator and gateway RSS flat over a 30-minute soak | not measured (the whole run is kept to about 20 minutes) | not measured |"
        )?;
    }
    Ok(())
}

/// `key value` pairs of an object, for prose: "wait_strategy `phased`, num_consumers `0`".
fn settings(v: &Value) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("`{k}` {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "not recorded".into())
}

fn scale_section(md: &mut String, r: &Value) -> Result<()> {
    let s = &r["scale"];
    let Some(all) = s["runs"].as_array() else { return Ok(()) };
    let runs: Vec<Value> = all.iter().filter(|t| t.get("error").is_none()).cloned().collect();
    let failed: Vec<&Value> = all.iter().filter(|t| t.get("error").is_some()).collect();
    let reference = scale_run(r, 3, 1);
    writeln!(md, "### Exchange scale: feed to database at 3, 1,000 and more instruments\n")?;
    writeln!(
        md,
        "`feed-publisher replay` (compression off: this broker takes uncompressed batches far faster, see Replay above) of one \
         JSON-lines file per shape, {} trades in each over the same {} s of event time, spread evenly: the instruments trade in \
         turn, in event-time order, so every linger window holds trades of many instruments, as an exchange's feed does (at 1,000 \
         instruments that is {:.1} trades/s per instrument, the issue's mid-sized exchange). Timed from the replay's start until \
         PostgreSQL holds every trade in all 16 intervals (polled, at most once a second). Every service runs with its defaults; \
         the aggregator's ring defaults in this build: {}. Machine CPU is every process on the machine (`/proc/stat`), including \
         other work on the same cores (the background column: cores busy just before the part started); \"Wick + stack\" counts \
         only the services, the broker, PostgreSQL and Redis (`/proc/<pid>/stat`). Records per trade are the partitions' high \
         watermarks of the run's own topics over its trades. Lag is the aggregators' `wick_ingest_consumer_lag_records`, summed \
         over partitions and instances, sampled every second.\n",
        s["trades"],
        s["span_seconds"],
        f(&s["trades"]) / 1000.0 / f(&s["span_seconds"]),
        settings(&s["ring_defaults"]),
    )?;
    writeln!(
        md,
        "| instruments | input | aggregators | replay done | database complete | **trades/s** | vs 3 instruments | machine CPU per trade | Wick + stack CPU per trade | candle rows | market-events records per trade | candles-completed records per trade | max lag (records) |"
    )?;
    writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let base = reference.map_or(f64::NAN, |t| f(&t["trades_per_second"]));
    for t in &runs {
        let done = if t["completed"] == true {
            format!("{:.1} s", f(&t["seconds"]))
        } else {
            format!("**not within {:.0} s** ({} of {} trades stored)", f(&t["seconds"]), t["stored_trades"], t["trades"])
        };
        writeln!(
            md,
            "| {} | {} | {} | {:.1} s | {done} | **{:.0}** | {:.2}x | {:.2} µs | {:.2} µs | {} | {:.5} | {:.5} | {:.0} |",
            t["instruments"],
            t["input"].as_str().unwrap_or("?"),
            t["aggregators"],
            f(&t["replay_seconds"]),
            f(&t["trades_per_second"]),
            f(&t["trades_per_second"]) / base,
            f(&t["cpu_us_per_trade"]),
            f(&t["wick_and_stack_cpu_us_per_trade"]),
            t["candles"],
            f(&t["records"]["market_events_per_trade"]),
            f(&t["records"]["candles_completed_per_trade"]),
            f(&t["lag"]["max_records"]),
        )?;
    }
    for t in &failed {
        writeln!(
            md,
            "| {} | {} | {} | **failed**: {} | | | | | | | | | |",
            t["instruments"],
            t["input"].as_str().unwrap_or("?"),
            t["aggregators"],
            t["error"].as_str().unwrap_or("?").replace('|', "/").replace('\n', " ")
        )?;
    }
    writeln!(md, "\nCPU seconds of each process over each run, and peak RSS (`VmHWM`):\n")?;
    writeln!(
        md,
        "| instruments | input | aggregators | feed-publisher | ingest-aggregator | persistence-writer | query-gateway | broker | PostgreSQL | Redis | RSS feed-publisher | RSS ingest-aggregator | RSS persistence-writer | RSS query-gateway |"
    )?;
    writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for t in &runs {
        let sum = |m: &Value, prefix: &str| -> f64 {
            m.as_object().into_iter().flatten().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| f(v)).sum()
        };
        let rss = |prefix: &str| -> String {
            let v: Vec<String> = t["peak_rss_mib"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| format!("{:.0}", f(v)))
                .collect();
            format!("{} MiB", v.join(" + "))
        };
        let (c, st) = (&t["service_cpu_seconds"], &t["stack_cpu_seconds"]);
        writeln!(
            md,
            "| {} | {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {} | {} | {} | {} |",
            t["instruments"],
            t["input"].as_str().unwrap_or("?"),
            t["aggregators"],
            sum(c, "feed-publisher"),
            sum(c, "ingest-aggregator"),
            sum(c, "persistence-writer"),
            sum(c, "query-gateway"),
            sum(st, "broker"),
            sum(st, "PostgreSQL"),
            sum(st, "Redis"),
            rss("feed-publisher"),
            rss("ingest-aggregator"),
            rss("persistence-writer"),
            rss("query-gateway"),
        )?;
    }
    writeln!(md, "\nThe aggregators' lag over each run (seconds after the replay started: records behind):\n")?;
    for t in &runs {
        let samples: Vec<(f64, f64)> = t["lag"]["samples"].as_array().into_iter().flatten().map(|s| (f(&s[0]), f(&s[1]))).collect();
        let step = samples.len().div_ceil(12).max(1);
        let shown: Vec<String> = samples.iter().step_by(step).map(|(t, l)| format!("{t:.0} s: {l:.0}")).collect();
        writeln!(
            md,
            "- {} instruments ({}), {} aggregator(s): {}",
            t["instruments"],
            t["input"].as_str().unwrap_or("?"),
            t["aggregators"],
            shown.join(", ")
        )?;
    }
    writeln!(md)?;
    if let (Some(a), Some(b)) = (reference, scale_run(r, 1000, 1)) {
        let last_lag =
            b["lag"]["samples"].as_array().into_iter().flatten().filter(|s| f(&s[1]) > 0.0).map(|s| f(&s[0])).fold(0.0, f64::max);
        let c = &b["service_cpu_seconds"];
        let st = &b["stack_cpu_seconds"];
        let store = f(&c["persistence-writer"]) + f(&st["PostgreSQL"]);
        writeln!(
            md,
            "Where the 1,000-instrument run's time goes: the replay had published every trade after {:.1} s and the aggregator's lag \
             was last above zero at {last_lag:.0} s, but the database held every trade only after {:.1} s. The rest is storing \
             candles: the same trades make {} candle rows at 1,000 instruments ({:.2} per trade: at {:.0} trades/s per instrument \
             almost every trade opens a 1-second candle of its own) against {} at 3 instruments, and persistence-writer plus \
             PostgreSQL used {store:.1} of the run's {:.1} CPU seconds ({:.0}%). Records per trade on market-events went from {:.5} \
             to {:.5}: with one record per partition and linger window the broker's record count no longer follows the instruments.\n",
            f(&b["replay_seconds"]),
            f(&b["seconds"]),
            b["candles"],
            f(&b["candles"]) / f(&b["trades"]),
            f(&b["trades"]) / 1000.0 / f(&s["span_seconds"]),
            a["candles"],
            f(&b["machine_cpu_seconds"]),
            100.0 * store / f(&b["machine_cpu_seconds"]),
            f(&a["records"]["market_events_per_trade"]),
            f(&b["records"]["market_events_per_trade"]),
        )?;
    }
    // Scale-out.
    let outs: Vec<&Value> = runs.iter().filter(|t| t["instruments"].as_u64() == Some(1000) && t["input"] == "json-lines").collect();
    if outs.len() > 1 {
        let one = outs.iter().find(|t| t["aggregators"].as_u64() == Some(1)).map_or(f64::NAN, |t| f(&t["trades_per_second"]));
        writeln!(md, "### Scale-out: aggregator instances on the 1,000-instrument load\n")?;
        writeln!(
            md,
            "The same 1,000-instrument replay with the aggregator run as N instances (`instance.index` of `instance.count`: \
             instance i owns the market-events partitions p with p mod N = i, so each gets 16/N partitions), one writer and one \
             gateway, as above. This machine has {} cores: instances add threads, not cores; they share the cores with the broker, \
             PostgreSQL, the writer and the gateway, so this measures the cost of splitting more than the gain of more machines.\n",
            r["cores"]
        )?;
        writeln!(
            md,
            "Replay time and the writer's and PostgreSQL's CPU are in the tables above: more instances do not move the bound \
             (storing the candles), and on these cores their extra fetch loops and shard threads compete with the broker and the \
             writer.\n"
        )?;
        writeln!(md, "| aggregator instances | trades/s | vs 1 instance | replay done | database complete | max lag (records) | aggregator CPU (all instances) |")?;
        writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|")?;
        for t in outs {
            let cpu: f64 = t["service_cpu_seconds"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("ingest-aggregator"))
                .map(|(_, v)| f(v))
                .sum();
            writeln!(
                md,
                "| {} | {:.0} | {:.2}x | {:.1} s | {:.1} s | {:.0} | {cpu:.2} s |",
                t["aggregators"],
                f(&t["trades_per_second"]),
                f(&t["trades_per_second"]) / one,
                f(&t["replay_seconds"]),
                f(&t["seconds"]),
                f(&t["lag"]["max_records"]),
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

fn idle_section(md: &mut String, r: &Value) -> Result<()> {
    let i = &r["idle"];
    let Some(percent) = i["percent_of_one_core"].as_object() else { return Ok(()) };
    writeln!(md, "### Idle\n")?;
    writeln!(
        md,
        "A fresh deployment with default settings and no trades: the aggregator, the writer, the gateway and `feed-publisher \
         simulate --rate 0` (connected to the broker, publishing nothing). After {} s to settle, each process's CPU time \
         (`utime + stime`) over {:.0} s. The aggregator ran its ring defaults: {}.\n",
        i["settle_seconds"],
        f(&i["seconds"]),
        settings(&i["ring_defaults"])
    )?;
    writeln!(md, "| process | CPU time | % of one core | under 2% |")?;
    writeln!(md, "|---|---:|---:|---|")?;
    for (name, pct) in percent {
        writeln!(md, "| {name} | {:.2} s | {:.2}% | {} |", f(&i["cpu_seconds"][name]), f(pct), verdict(f(pct) < 2.0))?;
    }
    for (name, pct) in i["stack_percent_of_one_core"].as_object().into_iter().flatten() {
        let whose = if name.starts_with("broker") && r["private_broker"] == true {
            "this deployment's own broker, serving only these four processes"
        } else {
            "the stack's, shared with other sessions"
        };
        writeln!(md, "| {name} ({whose}) | | {:.2}% | |", f(pct))?;
    }
    writeln!(
        md,
        "\nThe whole machine kept {:.2} cores busy over that minute (the stack and other sessions' builds and tests included). \
         The aggregator made {:.0} fetches a second meanwhile (its 16 partition loops, each a fetch of at most \
         `consumer.fetch_max_wait`, 100 ms by default, while nothing arrives), beside its ring's shards and its clock \
         (`aggregation.tick`, 50 ms, one tick per owned partition).\n",
        f(&i["machine_busy_cores"]),
        f(&i["aggregator_fetches_per_second"])
    )?;
    Ok(())
}

fn floor_section(md: &mut String, r: &Value) -> Result<()> {
    let b = &r["floor"];
    if b.get("trips").is_none() {
        return Ok(());
    }
    writeln!(md, "### The broker's own floor\n")?;
    writeln!(
        md,
        "Bare rskafka 0.6 against a fresh broker like the deployments' (a private tansu, SQLite engine) on a fresh 1-partition \
         topic, records of {} B, uncompressed, {} of each, \
         producer and consumer on connections of their own. Sequential: produce one record (acknowledged), then fetch it \
         (max wait 5 ms, the latency runs' `consumer.fetch_max_wait`). Waiting consumer: a consumer long-polls with the given max \
         wait (5 ms, the latency runs' aggregator; 100 ms, the default of the aggregator and of the gateway) while a record is \
         produced every 3 ms; the figure is from a produce request's start until the consumer holds the record.\n",
        b["record_bytes"], b["trips"]
    )?;
    let stack = &b["stack"];
    if stack.is_object() {
        writeln!(
            md,
            "The same on the stack's shared broker ({:.1} GB database, other sessions' traffic) beside the fresh one the \
             deployments use:\n",
            f(&stack["database_bytes"]) / 1e9
        )?;
        writeln!(md, "| measure | p50 | p99 | max | stack's broker p50 | stack's broker p99 |")?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
    } else {
        writeln!(md, "| measure | p50 | p99 | max |")?;
        writeln!(md, "|---|---:|---:|---:|")?;
    }
    for (label, path) in [
        ("produce one record, acknowledged", vec!["produce"]),
        ("fetch that record", vec!["fetch"]),
        ("produce then fetch: round trip", vec!["round_trip"]),
        ("waiting consumer, max wait 5 ms: produce to record in hand", vec!["waiting_consumer", "max_wait_5ms"]),
        ("waiting consumer, max wait 100 ms: produce to record in hand", vec!["waiting_consumer", "max_wait_100ms"]),
    ] {
        let v = path.iter().fold(b, |v, k| &v[*k]);
        write!(md, "| {label} | {} | {} | {} |", ms(&v["p50_ms"]), ms(&v["p99_ms"]), ms(&v["max_ms"]))?;
        if stack.is_object() {
            let w = path.iter().fold(stack, |v, k| &v[*k]);
            write!(md, " {} | {} |", ms(&w["p50_ms"]), ms(&w["p99_ms"]))?;
        }
        writeln!(md)?;
    }
    writeln!(md)?;
    Ok(())
}

fn latency_section(md: &mut String, r: &Value) -> Result<()> {
    let l = &r["latency"];
    let Some(all) = l["runs"].as_array() else { return Ok(()) };
    let runs: Vec<Value> = all.iter().filter(|x| x.get("error").is_none()).cloned().collect();
    let runs = &runs;
    let Some(first) = runs.first() else { return Ok(()) };
    writeln!(md, "### Trade-to-push latency\n")?;
    let overrides: Vec<String> = l["aggregator_overrides"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            format!(
                "`{}={}` (default {})",
                o["setting"].as_str().unwrap_or("?"),
                o["value"].as_str().unwrap_or("?"),
                o["default"].as_str().unwrap_or("?")
            )
        })
        .collect();
    writeln!(
        md,
        "Trades at a steady rate for {} s each, round robin over {} instruments, published through the feed-publisher's own \
         producer by the measuring program (one record per partition and linger window, the producer's linger set to 1 ms against \
         a default of 10 ms, lz4 compression as by default), into a fresh deployment per rate. WebSocket clients of the gateway \
         subscribe to the 1s candles of every instrument ({} connections of at most 60 subscriptions, under the gateway's default \
         of 64 per connection). A trade's latency runs from its hand-off to the producer until the first push of a candle whose \
         `last_trade_id` covers it arrives, for every trade after a {} s warm-up; trades not pushed within {} s after the last \
         was published count as slower than all others. The aggregator runs with these overrides, the settings a \
         latency-sensitive deployment chooses and the ones the issue's 2.8 s figure was measured with: {}. The throttle is a \
         deliberate delay (an open candle is pushed at most once per throttle), so at its default of 250 ms the p99 would be \
         about 250 ms by design; the tick honours the throttle, the fetch settings stop a fetch waiting for 10 KB. Everything \
         else, the ring's wait strategy and the gateway included, is default{}.\n",
        first["seconds"],
        l["instruments"],
        f(&l["instruments"]).div_euclid(60.0) + if f(&l["instruments"]) % 60.0 > 0.0 { 1.0 } else { 0.0 },
        first["warmup_seconds"],
        first["drain_seconds"],
        overrides.join(", "),
        match l["wait_strategy_override"].as_str() {
            Some(w) => format!(" (but the ring's wait strategy was forced to `{w}` for this run)"),
            None => String::new(),
        }
    )?;
    writeln!(
        md,
        "| trades/s asked | achieved | trades measured | pushed | p50 | p99 | p99.9 | max | max lag (records) | machine busy cores | pushes | candle events per trade | aggregator fetches per partition per second |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for x in runs {
        let pushes: f64 = x["pushes"].as_object().into_iter().flatten().map(|(_, v)| f(v)).sum();
        writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {pushes:.0} | {:.1} | {:.1} |",
            x["rate"],
            f(&x["achieved_rate"]),
            x["trades_measured"],
            x["trades_seen"],
            ms(&x["p50_ms"]),
            ms(&x["p99_ms"]),
            ms(&x["p999_ms"]),
            ms(&x["max_ms"]),
            f(&x["lag"]["max_records"]),
            f(&x["machine_busy_cores"]),
            f(&x["candle_events_per_trade"]),
            f(&x["aggregator_fetches_per_partition_per_second"]),
        )?;
    }
    for x in all.iter().filter(|x| x.get("error").is_some()) {
        writeln!(
            md,
            "| {} | **failed**: {} | | | | | | | | | | | |",
            x["rate"],
            x["error"].as_str().unwrap_or("?").replace('|', "/").replace('\n', " ")
        )?;
    }
    writeln!(
        md,
        "\nThe latency budget by hop, from the services' own histograms (`wick_feed_receive_to_publish_seconds`, \
         `wick_ingest_hop_seconds`, `wick_gateway_hop_seconds`; exponential buckets doubling from 0.1 ms, scraped when the warm-up \
         ended and after the last push, quantiles interpolated within a bucket as Prometheus' `histogram_quantile` does, so each is \
         good to about a factor of 2 at most). p50 / p99 per rate:\n"
    )?;
    write!(md, "| hop | whose |")?;
    for x in runs {
        write!(md, " {} trades/s |", x["rate"])?;
    }
    writeln!(md)?;
    writeln!(md, "|---|---|{}", "---:|".repeat(runs.len()))?;
    const LABELS: [&str; 6] = [
        "feed: trade received to record handed to its partition's writer (linger, queue)",
        "aggregator `publish_to_fetch`: record created to the fetch returning it (produce request, broker, fetch wait)",
        "aggregator `fetch_to_output`: fetch to the candle events leaving the shard (ring, apply, throttle, tick)",
        "aggregator `output_to_ack`: events at the output to the candle record acknowledged (linger, produce request)",
        "gateway `publish_to_fetch`: candle record created to the gateway's fetch returning it (produce request, broker, fetch wait)",
        "gateway `fetch_to_send`: fetch to the push written to the client's socket",
    ];
    for (i, label) in LABELS.iter().enumerate() {
        write!(md, "| {label} | {} |", first["hops"][i]["whose"].as_str().unwrap_or("?"))?;
        for x in runs {
            let h = &x["hops"][i];
            write!(md, " {} / {} |", ms(&h["p50_ms"]), ms(&h["p99_ms"]))?;
        }
        writeln!(md)?;
    }
    for (i, label) in ["feed: one produce request", "aggregator: one fetch (`wick_ingest_poll_seconds`)", "aggregator: one produce request"]
        .iter()
        .enumerate()
    {
        write!(md, "| {label} | broker |")?;
        for x in runs {
            let h = &x["requests"][i];
            write!(md, " {} / {} |", ms(&h["p50_ms"]), ms(&h["p99_ms"]))?;
        }
        writeln!(md)?;
    }
    write!(md, "| **sum of the p99s of Wick's hops** (rows marked Wick, and `output_to_ack`) | |")?;
    for x in runs {
        write!(md, " **{}** |", ms(&x["wick_hops_p99_sum_ms"]))?;
    }
    writeln!(md)?;
    write!(md, "| sum of the p99s of the broker hops | |")?;
    for x in runs {
        write!(md, " {} |", ms(&x["broker_hops_p99_sum_ms"]))?;
    }
    writeln!(md)?;
    write!(md, "| total p99 minus the broker hops' p99s | |")?;
    for x in runs {
        let rest = f(&x["p99_ms"]) - f(&x["broker_hops_p99_sum_ms"]);
        if rest < 0.0 {
            write!(md, " below 0 |")?;
        } else {
            write!(md, " {} |", ms(&serde_json::json!(rest)))?;
        }
    }
    writeln!(md)?;
    writeln!(
        md,
        "\nHow the time is attributed: a hop is the broker's when it spans a produce request, the broker's storage and a fetch \
         wait (the two `publish_to_fetch` hops; the fetch wait is a Wick setting, but the broker decides how long a fetch takes, \
         see the floor above); Wick's when it is the feed's, the aggregator's or the gateway's own work or a deliberate wait \
         (linger, throttle, tick); `output_to_ack` holds the output linger and the produce request, and is counted as Wick's \
         whole, so that Wick's share is not understated. Percentiles do not add: the sum of per-hop p99s overstates the p99 of \
         the sum unless the slow cases of every hop coincide, and \"total minus broker hops\" can understate it; both are shown. \
         What no hop covers is the push crossing loopback into the measuring client, which shares the cores.\n"
    )?;
    Ok(())
}

/// Per-trade CPU of each process of a scale run, in µs, biggest first, with the rest of the
/// machine last.
fn cpu_breakdown(t: &Value) -> String {
    let trades = f(&t["trades"]);
    let mut parts: Vec<(String, f64)> = t["service_cpu_seconds"]
        .as_object()
        .into_iter()
        .flatten()
        .chain(t["stack_cpu_seconds"].as_object().into_iter().flatten())
        .map(|(k, v)| (k.clone(), f(v) * 1e6 / trades))
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let known: f64 = parts.iter().map(|p| p.1).sum();
    parts.push(("everything else on the machine".into(), f(&t["cpu_us_per_trade"]) - known));
    parts.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ")
}

/// What limits each whole-system miss, from this run's figures.
fn misses_section(md: &mut String, r: &Value) -> Result<()> {
    let mut items = Vec::new();
    if let (Some(a), Some(b)) = (scale_run(r, 3, 1), scale_run(r, 1000, 1)) {
        if f(&b["trades_per_second"]) < 0.7 * f(&a["trades_per_second"]) {
            let store = |t: &Value| f(&t["service_cpu_seconds"]["persistence-writer"]) + f(&t["stack_cpu_seconds"]["PostgreSQL"]);
            let mut text = format!(
                "**1,000 instruments against 3.** Not the broker's records (market-events: {:.5} records per trade against {:.5}) \
                 and not the aggregator (its lag stayed under {:.0} records), but the candles: the same trades make {} candle rows \
                 instead of {}, and persistence-writer plus PostgreSQL spent {:.1} CPU seconds storing them against {:.1}; the \
                 database completes {:.0} s after the replay ended.",
                f(&b["records"]["market_events_per_trade"]),
                f(&a["records"]["market_events_per_trade"]),
                f(&b["lag"]["max_records"]) + 1.0,
                b["candles"],
                a["candles"],
                store(b),
                store(a),
                f(&b["seconds"]) - f(&b["replay_seconds"]),
            );
            if let Some(c) = scale_run(r, 10_000, 1) {
                text += &format!(
                    " At 10,000 instruments: {} rows, {:.0} trades/s, writer plus PostgreSQL {:.1} CPU seconds.",
                    c["candles"],
                    f(&c["trades_per_second"]),
                    store(c)
                );
            }
            text += " A 1-second candle per instrument and second is what a chart of that instrument needs, so the rate at which \
                     candle rows can be stored, not the rate of trades, bounds feed-to-database time for many quiet instruments.";
            items.push(text);
        }
    }
    if let Some(t) = scale_run_of(r, "binance-csv", 3, 1).or(scale_run(r, 3, 1)) {
        if f(&t["cpu_us_per_trade"]) > 3.0 {
            items.push(format!(
                "**CPU per trade at 3 instruments** ({:.2} µs, {} replay). Per process, µs per trade: {}. \
                 Cores busy before the part started: {:.2}.",
                f(&t["cpu_us_per_trade"]),
                t["input"].as_str().unwrap_or("?"),
                cpu_breakdown(t),
                f(&r["scale"]["background_busy_cores"])
            ));
        }
    }
    if let Some(percent) = r["idle"]["percent_of_one_core"].as_object() {
        let over: Vec<String> = percent.iter().filter(|(_, v)| f(v) >= 2.0).map(|(k, v)| format!("{k} {:.2}%", f(v))).collect();
        if !over.is_empty() {
            items.push(format!(
                "**Idle.** Over 2% of one core: {}. The aggregator's shards ran the `{}` wait strategy, which parks a shard \
                 that found nothing for a while; while idle the aggregator still fetched {:.0} times a second (16 partition loops \
                 waiting at most 100 ms each) and ticked its clock. This run does not separate those costs from the ring's.",
                over.join(", "),
                r["idle"]["ring_defaults"]["wait_strategy"].as_str().unwrap_or("?"),
                f(&r["idle"]["aggregator_fetches_per_second"])
            ));
        }
    }
    if let Some(l) = latency_run(r, 50_000) {
        if f(&l["p99_ms"]).is_nan() || f(&l["p99_ms"]) >= 100.0 {
            let runs = r["latency"]["runs"].as_array().cloned().unwrap_or_default();
            let busy: Vec<String> = runs.iter().map(|x| format!("{:.2} at {}", f(&x["machine_busy_cores"]), x["rate"])).collect();
            let req = |i: usize| format!("{} / {}", ms(&l["requests"][i]["p50_ms"]), ms(&l["requests"][i]["p99_ms"]));
            let b = &r["floor"];
            items.push(format!(
                "**Trade-to-push latency.** The broker under this load: at 50k trades/s the aggregator's fetches took {} (p50 / \
                 p99) with `fetch_max_wait` at 5 ms, {:.1} fetches per partition per second; the feed's produce requests {}, the \
                 aggregator's {}. On an otherwise quiet fresh topic the broker produces a record in {} (p50) and a waiting \
                 consumer with a 5 ms wait holds it {} after the produce started, with a 100 ms wait {} (p50; the floor above: \
                 this broker answers a waiting fetch when its wait is over, not when a record arrives). The gateway waits 100 ms \
                 by default (`kafka.fetch_max_wait`, not overridden here), and its `publish_to_fetch` hop took {} at p50. The \
                 feed's own hop, counted as Wick's, is mostly records waiting for their partition's previous produce request. Much of what \
                 loads the broker and the cores is the candles again: every trade became {:.1} candle events at 50k trades/s and \
                 {:.1} at the lowest rate (where an instrument trades about once a second, less often than the 5 ms throttle, so \
                 each trade releases an update of all 16 intervals; at higher rates the trades of one slow fetch share their \
                 updates), which the gateway, the writer, Redis and PostgreSQL all take; the machine's cores were busy throughout \
                 (cores busy by rate: {}).",
                req(1),
                f(&l["aggregator_fetches_per_partition_per_second"]),
                req(0),
                req(2),
                ms(&b["produce"]["p50_ms"]),
                ms(&b["waiting_consumer"]["max_wait_5ms"]["p50_ms"]),
                ms(&b["waiting_consumer"]["max_wait_100ms"]["p50_ms"]),
                ms(&l["hops"][4]["p50_ms"]),
                f(&l["candle_events_per_trade"]),
                runs.first().map_or(f64::NAN, |x| f(&x["candle_events_per_trade"])),
                busy.join(", ")
            ));
        }
    }
    let rss = |t: Option<&Value>, service: &str| -> f64 {
        t.map_or(f64::NAN, |t| {
            t["peak_rss_mib"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with(service))
                .map(|(_, v)| f(v))
                .fold(0.0, f64::max)
        })
    };
    let (three, thousand, ten) = (scale_run(r, 3, 1), scale_run(r, 1000, 1), scale_run(r, 10_000, 1));
    if rss(thousand, "ingest-aggregator") >= 256.0 || rss(thousand, "query-gateway") >= 256.0 {
        items.push(format!(
            "**Memory.** Peak RSS of ingest-aggregator / query-gateway for the same trades: {:.0} / {:.0} MiB at 3 instruments, \
             {:.0} / {:.0} MiB at 1,000, {:.0} / {:.0} MiB at 10,000: memory follows the instruments (the candles held), not the \
             trades. The defaults let it grow that far (the aggregator keeps every candle within `aggregation.revision_window`, \
             600 s, so that late trades can revise it; the gateway holds up to `live.max_unpersisted` = 500,000 candle versions \
             and `l1.max_candles` = 1,000,000 candles); which of these takes the memory is not measured here.",
            rss(three, "ingest-aggregator"),
            rss(three, "query-gateway"),
            rss(thousand, "ingest-aggregator"),
            rss(thousand, "query-gateway"),
            rss(ten, "ingest-aggregator"),
            rss(ten, "query-gateway"),
        ));
    }
    if items.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "### What limits the whole-system misses
"
    )?;
    for item in items {
        writeln!(md, "- {item}")?;
    }
    writeln!(md)?;
    Ok(())
}

pub fn render(record: &Record, doc: &mut Doc) -> Result<()> {
    let r = &record.samples[0].results;
    let md = &mut doc.body;
    let backgrounds: Vec<String> = ["scale", "idle", "floor", "latency"]
        .iter()
        .filter_map(|p| r[*p]["background_busy_cores"].as_f64().map(|b| format!("{p} {b:.2}")))
        .collect();
    let broker = if r["private_broker"] == true {
        format!(
            "a tansu broker of its own (the stack's tansu binary and SQLite engine, in a fresh data directory, started for each \
             deployment and stopped after it: the stack's broker serves every other session's tests and keeps every topic they \
             made, a {:.1} GB database at this run, which slows it, see the floor below; `WICK_BENCH_BROKER=stack` measures \
             against it instead), the stack's PostgreSQL and Redis",
            f(&r["stack_broker_database_bytes"]) / 1e9
        )
    } else {
        "the stack's tansu broker (SQLite engine, shared with other sessions), PostgreSQL and Redis".to_owned()
    };
    writeln!(
        md,
        "Command: `cargo xtask bench system` (the program is `tests/examples/system_bench.rs`; the measurement took {:.1} minutes). \
         Every service runs as its release binary on this machine ({} cores), each deployment against {broker}, with default \
         settings unless said otherwise; the broker, the database and the measuring program share the same cores, and so did \
         other sessions' builds and tests during this run: cores busy in the 2 s before each part started, by part: {}.\n",
        f(&r["total_seconds"]) / 60.0,
        r["cores"],
        backgrounds.join(", ")
    )?;
    scale_section(md, r)?;
    idle_section(md, r)?;
    floor_section(md, r)?;
    latency_section(md, r)?;
    misses_section(md, r)?;
    let mut rows = String::new();
    goals(&mut rows, r)?;
    for row in rows.lines() {
        doc.goal_row(record, row)?;
    }
    Ok(())
}

/// The 30-day comparison with the naive alternative, cold and warm.
pub fn render_naive(record: &Record, doc: &mut Doc) -> Result<()> {
    let n = &record.samples[0].results["naive"];
    let md = &mut doc.body;
    let q1d = &n["queries"]["1d"];
    writeln!(
        md,
        "Command: `cargo xtask bench naive` (the naive part of `tests/examples/system_bench.rs`). The alternative a user would \
         otherwise build: every trade `COPY`-ed into an indexed PostgreSQL table (`(instrument, ts)`), candles computed at query \
         time with `{}` (`time_bucket` when TimescaleDB is installed), open and close by `array_agg` in trade order. 30 days of \
         one instrument ({} trades, one every 2 s on average) went through Wick (replay to database: {:.1} s, {:.0} trades/s) \
         and through `COPY`. Both answers were checked equal (open, high, low, close, volume, trade count of every candle) \
         before timing.\n",
        n["bucket_function"].as_str().unwrap_or("date_bin"),
        n["month_trades"],
        f(&n["wick_month_seconds"]),
        f(&n["wick_month_trades_per_second"]),
    )?;
    writeln!(
        md,
        "Warm and cold, as measured here. **Warm**: the same query again and again; Wick's to the deployment's gateway, whose \
         in-process cache (L1) holds the range after the first answer; the naive one a prepared statement over one open \
         connection. **Cold**: nothing cached on either side's own part. Wick's to a second gateway of the same deployment with \
         L1 and Redis switched off (`WICK__L1__ENABLED=false WICK__REDIS__ENABLED=false`), so every request is what the first \
         request after a cache reset is: a read of PostgreSQL through the gateway's chunk loader; the naive one on a new \
         connection each time (connect, prepare, execute, all timed), so no session state or prepared plan is reused. Neither \
         side empties PostgreSQL's shared buffers or the OS page cache: that would mean restarting the database, which other \
         work on this machine shares. Every Wick request is REST `GET /api/v1/candles` over HTTP from a fresh TCP connection, \
         as a client sees it. Samples per figure (n): Wick {} warm and {} cold, naive {} warm and {} cold; the p99 is the \
         sample at the 99th percentile rank.\n",
        q1d["wick_warm"]["n"], q1d["wick_cold"]["n"], q1d["naive_warm"]["n"], q1d["naive_cold"]["n"],
    )?;
    writeln!(md, "| ingest | trades/s |")?;
    writeln!(md, "|---|---:|")?;
    writeln!(
        md,
        "| naive `COPY`, the trades of the whole-system scale run's 3 instruments ({}, from their CSV files) | {:.0} |",
        n["dense_trades"],
        f(&n["copy_dense_trades_per_second"])
    )?;
    writeln!(md, "| naive `COPY`, the 30 days | {:.0} |", f(&n["copy_month_trades_per_second"]))?;
    writeln!(md, "| Wick, replay to database, the 30 days | {:.0} |", f(&n["wick_month_trades_per_second"]))?;
    writeln!(
        md,
        "\nWick's rate on the 30 days is its rate at one trade every 2 s: almost every trade makes a 1-second candle of its own, \
         so the writer stores about as many candle rows as trades (the whole-system section measures denser input).\n"
    )?;
    writeln!(
        md,
        "| query over 30 days | candles | | naive n | naive p50 | naive p99 | Wick n | Wick p50 | Wick p99 | Wick faster (p99) |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut ratios = Vec::new();
    for interval in ["1h", "1d"] {
        let q = &n["queries"][interval];
        for state in ["cold", "warm"] {
            let (naive, wick) = (&q[format!("naive_{state}")], &q[format!("wick_{state}")]);
            let ratio = f(&naive["p99_ms"]) / f(&wick["p99_ms"]);
            ratios.push((interval, state, ratio));
            writeln!(
                md,
                "| {interval} candles | {} | {state} | {} | {:.1} ms | {:.1} ms | {} | {:.2} ms | {:.2} ms | **{ratio:.0}x** |",
                q["candles"],
                naive["n"],
                f(&naive["p50_ms"]),
                f(&naive["p99_ms"]),
                wick["n"],
                f(&wick["p50_ms"]),
                f(&wick["p99_ms"]),
            )?;
        }
    }
    writeln!(md)?;
    for (_, state, ratio) in ratios.into_iter().filter(|(i, _, _)| *i == "1d") {
        doc.goal(
            record,
            format!("1-day candles over 30 days >= 100x faster (p99) than the naive path, {state}"),
            format!("{ratio:.0}x"),
            &crate::bench_results::judge(&[ratio], crate::bench_results::Aim::AtLeast(100.0)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_results::fixtures::record;
    use serde_json::json;

    fn timed(n: u64, p50: f64, p99: f64) -> Value {
        json!({ "n": n, "p50_ms": p50, "p99_ms": p99, "max_ms": p99 })
    }

    #[test]
    fn the_naive_comparison_is_cold_against_cold_and_warm_against_warm() {
        let query = |candles: u64| {
            json!({ "candles": candles, "naive_warm": timed(200, 2000.0, 2500.0), "naive_cold": timed(200, 2100.0, 3000.0),
                    "wick_warm": timed(200, 0.2, 0.5), "wick_cold": timed(200, 2.0, 60.0) })
        };
        let r = record(
            "naive",
            vec![json!({ "naive": {
                "bucket_function": "date_bin", "month_trades": 1296000, "wick_month_seconds": 55.0, "wick_month_trades_per_second": 23564.0,
                "dense_trades": 1200000, "copy_dense_trades_per_second": 190000.0, "copy_month_trades_per_second": 170000.0,
                "queries": { "1h": query(720), "1d": query(30) },
            }})],
        );
        let mut doc = Doc::default();
        render_naive(&r, &mut doc).unwrap();
        let md = doc.finish().unwrap();
        assert!(md.contains("| 1d candles | 30 | cold | 200 | 2100.0 ms | 3000.0 ms | 200 | 2.00 ms | 60.00 ms | **50x** |"), "{md}");
        assert!(md.contains("| 1d candles | 30 | warm | 200 | 2000.0 ms | 2500.0 ms | 200 | 0.20 ms | 0.50 ms | **5000x** |"), "{md}");
        assert!(md.contains("| 1-day candles over 30 days >= 100x faster (p99) than the naive path, cold | 50x | **missed** |"), "{md}");
        assert!(md.contains("| 1-day candles over 30 days >= 100x faster (p99) than the naive path, warm | 5000x | met |"), "{md}");
        assert!(md.contains("Samples per figure (n): Wick 200 warm and 200 cold, naive 200 warm and 200 cold"), "{md}");
    }
}
