//! The gateway benchmark: the same 500-candle range query against three query-gateway processes
//! that differ only in where they read (L1, Redis with L1 off, PostgreSQL with both caches off),
//! loaded with `oha` (HTTP) and a tonic client (gRPC), in the same run on this machine.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util::{cargo, output, root, run};

const CANDLES: i64 = 3000;
const SECONDS: u64 = 10;
const CONNECTIONS: u32 = 16;
const FIXED_RATE: u32 = 10_000;
/// The query starts 750 minutes into the data: its 500 candles span two chunks (the worst case).
const OFFSET_MINUTES: i64 = 750;

fn results_path() -> PathBuf {
    root().join("target/wick-bench/gateway.json")
}

/// A gateway process, killed when dropped.
struct Gateway {
    name: &'static str,
    child: Child,
    http: String,
    grpc: String,
    ops: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start(name: &'static str, l1: bool, redis: bool, schema: &str, topic: &str, prefix: &str) -> Result<Gateway> {
    let (http, grpc, ops) =
        (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let child = Command::new(crate::util::target_dir().join("release/query-gateway"))
        .env("WICK__HTTP__LISTEN", &http)
        .env("WICK__GRPC__LISTEN", &grpc)
        .env("WICK__OPS__LISTEN", &ops)
        .env("WICK__DATABASE__SCHEMA", schema)
        .env("WICK__KAFKA__CANDLES_TOPIC", topic)
        .env("WICK__REDIS__KEY_PREFIX", prefix)
        .env("WICK__L1__ENABLED", l1.to_string())
        .env("WICK__REDIS__ENABLED", redis.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting query-gateway")?;
    let gateway = Gateway { name, child, http: format!("http://{http}"), grpc: format!("http://{grpc}"), ops: format!("http://{ops}") };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&http).is_err() {
        if Instant::now() > deadline {
            bail!("{name} gateway did not start listening on {http}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(gateway)
}

/// The gateway's own latency histogram of `/api/v1/candles`: (upper bound in seconds, cumulative
/// count) per bucket.
fn server_histogram(ops: &str) -> Result<Vec<(f64, f64)>> {
    let text = curl(&format!("{ops}/metrics"))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("wick_gateway_request_seconds_bucket{") && l.contains("route=\"/api/v1/candles\"")) {
        let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).context("le label")?;
        let count: f64 = line.rsplit(' ').next().context("count")?.parse()?;
        out.push((if le == "+Inf" { f64::INFINITY } else { le.parse()? }, count));
    }
    Ok(out)
}

/// The bucket bound (µs) under which `q` of the requests between two scrapes were handled.
fn server_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let diffs: Vec<(f64, f64)> =
        after.iter().map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m))).collect();
    let total = diffs.last().map_or(0.0, |(_, n)| *n);
    diffs.iter().find(|(_, n)| *n >= q * total).map_or(f64::NAN, |(le, _)| le * 1e6)
}

fn curl(url: &str) -> Result<String> {
    output(Command::new("curl").args(["-s", "-S", "--fail", "--max-time", "20", url]))
}

/// `oha` for `SECONDS`, optionally at a fixed rate: requests/s and latency percentiles (µs).
fn oha(url: &str, rate: Option<u32>) -> Result<Value> {
    let mut cmd = Command::new("oha");
    cmd.args(["--no-tui", "--output-format", "json", "-z", &format!("{SECONDS}s"), "-c", &CONNECTIONS.to_string()]);
    if let Some(q) = rate {
        cmd.args(["-q", &q.to_string()]);
    }
    let out: Value = serde_json::from_str(&output(cmd.arg(url))?).context("oha's JSON")?;
    let p = |k: &str| out["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1e6;
    let ok = out["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let total: u64 = out["statusCodeDistribution"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    if ok == 0 || ok != total {
        bail!("oha against {url}: {ok} of {total} answers were 200: {}", out["statusCodeDistribution"]);
    }
    Ok(json!({
        "rps": out["summary"]["requestsPerSec"], "p50_us": p("p50"), "p99_us": p("p99"), "p999_us": p("p99.9"), "requests": total,
    }))
}

pub fn measure() -> Result<()> {
    if Command::new("oha").arg("--version").output().is_err() {
        run(cargo().args(["install", "--locked", "oha"]))?;
    }
    run(cargo().args(["build", "--release", "-p", "query-gateway", "--bin", "query-gateway", "--example", "gateway_load"]))?;
    let suffix = format!("{}{}", std::process::id(), Instant::now().elapsed().as_nanos() % 1000);
    let (schema, topic, prefix) = (format!("bench_gw_{suffix}"), format!("bench-gw-candles-{suffix}"), format!("bench-gw-{suffix}"));
    crate::bench_feed::create_topic(&topic, 4)?;
    let load = crate::util::target_dir().join("release/examples/gateway_load");
    let first: i64 =
        output(Command::new(&load).args(["fixture", "postgres://postgres@127.0.0.1:5432/wick", &schema, &CANDLES.to_string()]))?
            .trim()
            .parse()
            .context("fixture's first open time")?;
    let start_ms = first + OFFSET_MINUTES * 60_000;
    let path = format!("/api/v1/candles?instrument=BENCH:BTC-USD&interval=1m&start={start_ms}&limit=500");

    let gateways = [
        start("L1 (in process)", true, true, &schema, &topic, &prefix)?,
        start("Redis (L1 off)", false, true, &schema, &topic, &prefix)?,
        start("PostgreSQL (L1 and Redis off)", false, false, &schema, &topic, &prefix)?,
    ];
    // Warm every tier (the Redis chunks are filled behind the first database read), and check
    // that all three give the same 500 candles.
    let mut bodies = Vec::new();
    for g in &gateways {
        curl(&format!("{}{path}", g.http))?;
    }
    std::thread::sleep(Duration::from_secs(1));
    for g in &gateways {
        let body = curl(&format!("{}{path}", g.http))?;
        let candles = serde_json::from_str::<Value>(&body)?["candles"].as_array().map_or(0, Vec::len);
        if candles != 500 {
            bail!("{} answered {candles} candles, not 500", g.name);
        }
        bodies.push(body);
    }
    if bodies.iter().any(|b| *b != bodies[0]) {
        bail!("the tiers answered differently");
    }

    let mut results = Vec::new();
    for g in &gateways {
        eprintln!("bench: gateway, {} over HTTP", g.name);
        let http = oha(&format!("{}{path}", g.http), None)?;
        eprintln!("bench: gateway, {} over gRPC", g.name);
        let grpc: Value = serde_json::from_str(&output(Command::new(&load).args([
            "grpc",
            &g.grpc,
            "BENCH:BTC-USD",
            "1m",
            &start_ms.to_string(),
            "500",
            &SECONDS.to_string(),
            &CONNECTIONS.to_string(),
        ]))?)?;
        results.push(json!({ "tier": g.name, "http": http, "grpc": grpc }));
    }
    eprintln!("bench: gateway, L1 at a fixed {FIXED_RATE} requests/s");
    let before = server_histogram(&gateways[0].ops)?;
    let mut fixed = oha(&format!("{}{path}", gateways[0].http), Some(FIXED_RATE))?;
    let after = server_histogram(&gateways[0].ops)?;
    fixed["server_p50_le_us"] = json!(server_quantile(&before, &after, 0.50));
    fixed["server_p99_le_us"] = json!(server_quantile(&before, &after, 0.99));
    drop(gateways);
    let oha_version = output(Command::new("oha").arg("--version"))?.trim().to_owned();
    let r = json!({
        "tiers": results, "fixed_rate": FIXED_RATE, "fixed": fixed, "seconds": SECONDS, "connections": CONNECTIONS,
        "oha": oha_version, "candles": 500, "body_bytes": bodies[0].len(),
    });
    fs::create_dir_all(results_path().parent().context("no parent")?)?;
    fs::write(results_path(), serde_json::to_string_pretty(&r)?)?;
    Ok(())
}

fn results() -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(results_path()).ok()?).ok()
}

/// Rows for the goals table.
pub fn goals(md: &mut String) -> Result<()> {
    let Some(r) = results() else { return Ok(()) };
    let rps = |i: usize| r["tiers"][i]["http"]["rps"].as_f64().unwrap_or(f64::NAN);
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let (l1, redis, pg) = (rps(0), rps(1), rps(2));
    writeln!(
        md,
        "| gateway: 500-candle query from L1 >= 20x PostgreSQL (HTTP requests/s) | {:.1}x | {} |",
        l1 / pg,
        verdict(l1 / pg >= 20.0)
    )?;
    writeln!(
        md,
        "| gateway: 500-candle query from L1 >= 3x Redis (HTTP requests/s) | {:.1}x | {} |",
        l1 / redis,
        verdict(l1 / redis >= 3.0)
    )?;
    let p99 = r["fixed"]["p99_us"].as_f64().unwrap_or(f64::NAN);
    let achieved = r["fixed"]["rps"].as_f64().unwrap_or(f64::NAN);
    writeln!(
        md,
        "| gateway: p99 < 1 ms at {} requests/s from L1 | p99 {:.0} µs at {:.0} requests/s | {} |",
        r["fixed_rate"],
        p99,
        achieved,
        verdict(p99 < 1000.0 && achieved >= 0.95 * r["fixed_rate"].as_f64().unwrap_or(f64::MAX))
    )?;
    Ok(())
}

pub fn section(md: &mut String) -> Result<()> {
    let Some(r) = results() else {
        writeln!(md, "## query-gateway\n\nNot measured yet: run `cargo xtask bench gateway`.\n")?;
        return Ok(());
    };
    writeln!(md, "## query-gateway\n")?;
    writeln!(
        md,
        "Command: `cargo xtask bench gateway`. Three release `query-gateway` processes on the stack, identical but for where they \
         read: L1 (in process, with Redis and PostgreSQL behind it), Redis (`WICK__L1__ENABLED=false`) and PostgreSQL \
         (`WICK__L1__ENABLED=false WICK__REDIS__ENABLED=false`). The query is `GET /api/v1/candles` for {} closed 1-minute candles \
         spanning two cache chunks; the three answers are checked byte-equal first. HTTP load: {} with {} connections for {} s; \
         gRPC: `GetCandles` for the same range from {} concurrent tonic callers on one HTTP/2 connection for {} s \
         (`crates/query-gateway/examples/gateway_load.rs`). The load generator shares the 2 cores with the gateway.\n",
        r["candles"],
        r["oha"].as_str().unwrap_or("oha"),
        r["connections"],
        r["seconds"],
        r["connections"],
        r["seconds"]
    )?;
    writeln!(md, "| served from | HTTP requests/s | p50 µs | p99 µs | vs PostgreSQL | gRPC calls/s | gRPC p50 µs | gRPC p99 µs |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let pg = r["tiers"][2]["http"]["rps"].as_f64().unwrap_or(f64::NAN);
    for t in r["tiers"].as_array().into_iter().flatten() {
        let f = |side: &str, k: &str| t[side][k].as_f64().unwrap_or(f64::NAN);
        writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.1}x | {:.0} | {:.0} | {:.0} |",
            t["tier"].as_str().unwrap_or("?"),
            f("http", "rps"),
            f("http", "p50_us"),
            f("http", "p99_us"),
            f("http", "rps") / pg,
            f("grpc", "rps"),
            f("grpc", "p50_us"),
            f("grpc", "p99_us")
        )?;
    }
    let f = |k: &str| r["fixed"][k].as_f64().unwrap_or(f64::NAN);
    writeln!(
        md,
        "\nFrom L1 at a fixed {} requests/s (`oha -q {}`): {:.0} requests/s achieved, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs as the \
         client sees them. The gateway's own histogram (`wick_gateway_request_seconds`, from routing to the body handed to the \
         server, exponential buckets) puts its p50 at or under {:.0} µs and its p99 at or under {:.0} µs over the same requests: \
         the rest is moving each answer ({} candles, {:.0} KB of JSON) through loopback TCP into a load generator on the same \
         2 cores, {:.1} GB/s at this rate.\n",
        r["fixed_rate"],
        r["fixed_rate"],
        f("rps"),
        f("p50_us"),
        f("p99_us"),
        f("p999_us"),
        f("server_p50_le_us"),
        f("server_p99_le_us"),
        r["candles"],
        r["body_bytes"].as_f64().unwrap_or(f64::NAN) / 1e3,
        r["body_bytes"].as_f64().unwrap_or(f64::NAN) * f("rps") / 1e9
    )?;
    Ok(())
}
