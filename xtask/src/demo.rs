//! `cargo xtask demo [INSTRUMENTS [RATE]] [--check]`: the whole pipeline on the local stack, with
//! the live chart. Installs what the build and the stack need, brings the stack up, builds the four
//! services (release), starts them on a deployment of its own (fresh topics, database and Redis
//! prefix, so that a second run never meets the first one's checkpoints), publishes a day of
//! simulated history and goes on live, prints the URLs, and on Ctrl-C stops everything it started.
//!
//! `--check` is the same without a person: on free ports, it waits until the history is served in
//! every interval, then publishes one trade of its own through feed-publisher and sees it become a
//! candle in a WebSocket push and over REST; it exits 0, or non-zero with what went wrong, having
//! stopped everything it started. CI runs it first, on a fresh clone.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::stack;
use crate::util::{cargo, root, run};

const SERVICES: [&str; 4] = ["feed-publisher", "ingest-aggregator", "persistence-writer", "query-gateway"];

/// The 16 intervals: each must show candles once the history is in.
const INTERVALS: [&str; 16] = ["1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"];

/// How much history the simulator publishes before going live.
const HISTORY: &str = "1d";

/// The instrument the check's own trade is of: not one the simulator trades.
const PROBE: &str = "DEMO:CHECK-USD";

/// A service the demo started; stopped with SIGTERM (then SIGKILL).
struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    eprintln!("demo: stopped {}", self.name);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("demo: killed {} (it did not stop within 15 s)", self.name);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One run's deployment: its own names and ports.
struct Deployment {
    database: String,
    market: String,
    candles: String,
    prefix: String,
    /// Operations ports, in the order of [`SERVICES`].
    ops: [u16; 4],
    http: u16,
    grpc: u16,
}

impl Deployment {
    /// Names from the run's start time; the default ports, or free ones for `--check` (which may
    /// run beside a demo someone is looking at).
    fn new(check: bool) -> Result<Deployment> {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let port = |default: u16| -> Result<u16> {
            Ok(if check { std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port() } else { default })
        };
        Ok(Deployment {
            database: format!("wick_demo_{stamp}"),
            market: format!("demo-{stamp}-market-events"),
            candles: format!("demo-{stamp}-candles-completed"),
            prefix: format!("wick-demo-{stamp}"),
            ops: [port(9101)?, port(9102)?, port(9103)?, port(9104)?],
            http: port(8080)?,
            grpc: port(50051)?,
        })
    }

    fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.database)
    }

    /// The environment of `service`: the deployment's names (the ring keeps its defaults: phased
    /// waiting and one shard per core leave an idle machine idle).
    fn env(&self, service: &str) -> Vec<(String, String)> {
        let index = SERVICES.iter().position(|s| *s == service).unwrap_or(0);
        let mut env =
            vec![("RUST_LOG".to_owned(), "warn".to_owned()), ("WICK__OPS__LISTEN".to_owned(), format!("127.0.0.1:{}", self.ops[index]))];
        let mut set = |k: &str, v: String| env.push((k.to_owned(), v));
        match service {
            "feed-publisher" => {
                set("WICK__KAFKA__MARKET_EVENTS_TOPIC", self.market.clone());
                set("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.market));
            }
            "ingest-aggregator" => {
                set("WICK__KAFKA__MARKET_EVENTS_TOPIC", self.market.clone());
                set("WICK__KAFKA__CANDLES_TOPIC", self.candles.clone());
                set("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.market));
                set("WICK__CHECKPOINT__DATABASE_URL", self.database_url());
                // The history is published before the aggregator reads it.
                set("WICK__CONSUMER__AUTO_OFFSET_RESET", "earliest".into());
            }
            "persistence-writer" => {
                set("WICK__KAFKA__CANDLES_TOPIC", self.candles.clone());
                set("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.candles));
                set("WICK__DATABASE__URL", self.database_url());
                set("WICK__REDIS__KEY_PREFIX", self.prefix.clone());
            }
            _ => {
                set("WICK__KAFKA__CANDLES_TOPIC", self.candles.clone());
                set("WICK__DATABASE__URL", self.database_url());
                set("WICK__REDIS__KEY_PREFIX", self.prefix.clone());
                set("WICK__HTTP__LISTEN", format!("127.0.0.1:{}", self.http));
                set("WICK__GRPC__LISTEN", format!("127.0.0.1:{}", self.grpc));
                // The simulator's instruments are SIM:*, so Binance-style symbols (BTCUSD) name them.
                set("WICK__BINANCE__EXCHANGE", "SIM".into());
            }
        }
        env
    }

    fn start(&self, service: &'static str, args: &[&str]) -> Result<Service> {
        let logs = root().join("target/demo");
        fs::create_dir_all(&logs)?;
        let log = fs::File::create(logs.join(format!("{service}.log")))?;
        let mut cmd = Command::new(crate::util::target_dir().join("release").join(service));
        cmd.args(args).envs(self.env(service)).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {service}"))?;
        Ok(Service { name: service, child })
    }
}

pub fn run_demo(args: &[String]) -> Result<()> {
    let check = args.iter().any(|a| a == "--check");
    if let Some(flag) = args.iter().find(|a| a.starts_with('-') && *a != "--check") {
        bail!("unknown option {flag}: cargo xtask demo [INSTRUMENTS [RATE]] [--check]");
    }
    let positional: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    let instruments = positional.first().copied().unwrap_or("4");
    let rate = positional.get(1).copied().unwrap_or("200");
    let started = Instant::now();
    build_prerequisites()?;
    let stack_was_up = stack::broker_answers();
    stack::run_stack(&["up".to_owned()])?;
    eprintln!("demo: stack up after {:.0} s", started.elapsed().as_secs_f64());
    let outcome = (|| {
        run(cargo().args(["build", "--release"]).args(SERVICES.iter().flat_map(|s| ["-p", *s])))?;
        eprintln!("demo: services built after {:.0} s", started.elapsed().as_secs_f64());
        run_services(instruments, rate, check, started)
    })();
    if !stack_was_up {
        if let Err(e) = stack::run_stack(&["down".to_owned()]) {
            eprintln!("demo: stack down failed: {e:#}");
        }
    }
    match &outcome {
        Ok(()) if check => eprintln!("demo --check passed in {:.0} s", started.elapsed().as_secs_f64()),
        Err(_) if check => eprintln!("demo --check FAILED after {:.0} s (service logs: target/demo/)", started.elapsed().as_secs_f64()),
        _ => {}
    }
    outcome
}

/// What the services' build needs beyond the Rust toolchain: OpenSSL for the exchange feeds'
/// TLS (openssl-sys finds it with pkg-config). Debian's packages, installed when missing.
fn build_prerequisites() -> Result<()> {
    if !stack::have("dpkg") {
        return Ok(());
    }
    let missing: Vec<&str> = ["pkg-config", "libssl-dev"]
        .into_iter()
        .filter(|p| !Command::new("dpkg").args(["-s", p]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()))
        .collect();
    if !missing.is_empty() {
        stack::apt_install(&missing)?;
    }
    Ok(())
}

fn run_services(instruments: &str, rate: &str, check: bool, started: Instant) -> Result<()> {
    // Ctrl-C reaches the whole foreground process group: the services stop by themselves, and this
    // process only has to notice, wait for them and take the stack down.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let signals = runtime.block_on(async {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        anyhow::Ok((term, int))
    });
    let (mut term, mut int) = signals?;

    drop_old_databases();
    let d = Deployment::new(check)?;
    let mut services = Vec::new();
    let outcome = (|| {
        for service in ["persistence-writer", "query-gateway", "ingest-aggregator"] {
            services.push(d.start(service, &[])?);
        }
        wait_ready(&mut services, &d)?;
        services.push(d.start("feed-publisher", &["simulate", "--instruments", instruments, "--rate", rate, "--history", HISTORY])?);
        wait_ready(&mut services, &d)?;
        eprintln!("demo: services ready after {:.0} s; publishing a day of history, then live", started.elapsed().as_secs_f64());
        wait_for_history(&mut services, &d)?;
        eprintln!("demo: a day of history served in every interval after {:.0} s", started.elapsed().as_secs_f64());
        if check {
            return check_a_trade(&mut services, &d);
        }
        let http = d.http;
        println!(
            "\nWick is running: a day of simulated history, then trades of {instruments} instruments at {rate}/s -> feed-publisher -> \
             market-events -> ingest-aggregator -> candles-completed -> persistence-writer -> PostgreSQL and Redis -> query-gateway.\n\n\
             \x20 live chart     http://127.0.0.1:{http}/?instrument=SIM:BTC-USD&interval=1m\n\
             \x20 REST           http://127.0.0.1:{http}/api/v1/candles?instrument=SIM:BTC-USD&interval=1h&fill=previous\n\
             \x20 Binance klines http://127.0.0.1:{http}/api/v3/klines?symbol=BTCUSD&interval=1m\n\
             \x20 OpenAPI        http://127.0.0.1:{http}/api/openapi.json\n\
             \x20 WebSocket      ws://127.0.0.1:{http}/ws\n\
             \x20 gRPC           127.0.0.1:{} (wick.v1.CandleService, reflection on)\n\
             \x20 metrics        http://127.0.0.1:9101/metrics ... 9104/metrics\n\
             \x20 this run       topics {}, {} (and -dlq); database {}; Redis prefix {}\n\
             \x20 logs           target/demo/*.log\n\nCtrl-C stops everything the demo started.\n",
            d.grpc, d.market, d.candles, d.database, d.prefix
        );
        runtime.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                    _ = tick.tick() => exited(&mut services)?,
                }
            }
        })
    })();
    if let Err(e) = &outcome {
        eprintln!("\ndemo: {e:#}");
        for s in &services {
            print_log_tail(s.name);
        }
    }
    eprintln!("\ndemo: stopping");
    for s in services.iter_mut().rev() {
        s.stop();
    }
    if check {
        let _ = psql(&format!("DROP DATABASE IF EXISTS \"{}\"", d.database));
    }
    outcome
}

fn psql(sql: &str) -> std::io::Result<std::process::Output> {
    Command::new("psql").args(["-h", "127.0.0.1", "-U", "postgres", "-w", "-tAc", sql]).output()
}

/// Removes the databases of earlier demo runs (best effort: one still in use stays).
fn drop_old_databases() {
    let Ok(out) = psql("SELECT datname FROM pg_database WHERE datname LIKE 'wick\\_demo\\_%'") else { return };
    for name in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|n| !n.is_empty()) {
        let _ = psql(&format!("DROP DATABASE IF EXISTS \"{name}\""));
    }
}

/// Fails when a service exited.
fn exited(services: &mut [Service]) -> Result<()> {
    for s in services.iter_mut() {
        if let Ok(Some(status)) = s.child.try_wait() {
            bail!("{} exited with {status}: see target/demo/{}.log", s.name, s.name);
        }
    }
    Ok(())
}

fn print_log_tail(name: &str) {
    let text = fs::read_to_string(root().join("target/demo").join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if !lines.is_empty() {
        eprintln!("--- target/demo/{name}.log (last lines)");
        for line in &lines[lines.len().saturating_sub(10)..] {
            eprintln!("{line}");
        }
    }
}

fn wait_ready(services: &mut [Service], d: &Deployment) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for s in 0..services.len() {
        let name = services[s].name;
        let port = d.ops[SERVICES.iter().position(|n| *n == name).unwrap_or(0)];
        while http_get(port, "/health/readyz").map(|(status, _)| status).ok() != Some(200) {
            exited(services)?;
            if Instant::now() > deadline {
                bail!("{name} not ready on port {port} within 2 minutes: see target/demo/{name}.log");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// `GET path` on a loopback port (HTTP/1.0, so the body ends with the connection): the status and
/// the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of the HTTP head")?;
    let status = head.get(9..12).and_then(|s| s.parse().ok()).with_context(|| format!("not an HTTP answer: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The candles `/api/v1/candles` serves for an instrument and interval, the latest 1000 intervals.
fn candles(port: u16, instrument: &str, interval: &str) -> Result<Vec<Value>> {
    let (status, body) = http_get(port, &format!("/api/v1/candles?instrument={instrument}&interval={interval}&limit=1000"))?;
    if status != 200 {
        bail!("GET /api/v1/candles ({instrument} {interval}) answered {status}: {body}");
    }
    let value: Value = serde_json::from_str(&body).with_context(|| format!("/api/v1/candles answered no JSON: {body}"))?;
    // A page ({"candles": [...], ...}) or a plain array.
    let list = value.get("candles").cloned().unwrap_or(value);
    list.as_array().cloned().with_context(|| format!("/api/v1/candles answered no list of candles: {body}"))
}

/// Waits until the gateway serves the day of history: 24 hourly candles of SIM:BTC-USD (25 hour
/// buckets are touched), and candles in every interval.
fn wait_for_history(services: &mut [Service], d: &Deployment) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_report = Instant::now();
    loop {
        exited(services)?;
        let hours = candles(d.http, "SIM:BTC-USD", "1h").map(|c| c.len()).unwrap_or(0);
        if hours >= 24 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the day of history was not served within 10 minutes: {hours} hourly candles of SIM:BTC-USD");
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("demo: history so far: {hours} of 25 hourly candles of SIM:BTC-USD");
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let empty: Vec<&str> =
        INTERVALS.iter().copied().filter(|i| candles(d.http, "SIM:BTC-USD", i).map(|c| c.is_empty()).unwrap_or(true)).collect();
    if !empty.is_empty() {
        bail!("after the history, SIM:BTC-USD has no candles in {empty:?}");
    }
    Ok(())
}

/// Publishes one trade of [`PROBE`] through feed-publisher and sees its candle pushed over the
/// WebSocket and served over REST.
fn check_a_trade(services: &mut [Service], d: &Deployment) -> Result<()> {
    let micros = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros())?;
    // A price no other run of the check made: the candle found is this trade's.
    let price = format!("{}.{:02}", 1000 + micros % 9000, micros / 1000 % 100);
    let trade_id = micros;

    let stream = TcpStream::connect(("127.0.0.1", d.http)).context("connecting to the gateway's WebSocket")?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let (mut ws, _) =
        tungstenite::client(format!("ws://127.0.0.1:{}/ws", d.http), stream).context("WebSocket handshake with the gateway")?;
    let subscribe = serde_json::json!({"op": "subscribe", "instrument": PROBE, "interval": "1s"});
    ws.send(tungstenite::Message::text(subscribe.to_string())).context("subscribing")?;

    let file = root().join("target/demo/check-trade.jsonl");
    let line = serde_json::json!({
        "instrument": PROBE, "trade_id": trade_id, "price": price, "quantity": "1.5", "side": "buy", "event_time": micros,
    });
    fs::write(&file, format!("{line}\n"))?;
    let mut publish = Command::new(crate::util::target_dir().join("release/feed-publisher"));
    publish.arg("replay").arg(&file).envs(d.env("feed-publisher")).env("WICK__OPS__LISTEN", "127.0.0.1:0");
    let out = publish.output().context("running feed-publisher replay")?;
    if !out.status.success() {
        bail!("feed-publisher replay of the check's trade failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!("demo: published a trade of {PROBE} at {price} (id {trade_id}); waiting for its candle");

    let is_ours = |c: &Value| {
        c.get("instrument").and_then(Value::as_str) == Some(PROBE)
            && c.get("close").and_then(Value::as_str) == Some(price.as_str())
            && c.get("last_trade_id").and_then(Value::as_i64) == Some(trade_id)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let pushed = loop {
        exited(services)?;
        if Instant::now() > deadline {
            bail!("no WebSocket push of the check's trade of {PROBE} within 60 s");
        }
        match ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let message: Value = serde_json::from_str(text.as_str()).with_context(|| format!("a push that is no JSON: {text}"))?;
                if message.get("type").and_then(Value::as_str) == Some("candle") && message.get("candle").is_some_and(is_ours) {
                    break message;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => bail!("the WebSocket failed: {e}"),
        }
    };
    eprintln!("demo: WebSocket push: {} candle of {PROBE} 1s at {price}", pushed.get("kind").and_then(Value::as_str).unwrap_or("?"));
    let _ = ws.close(None);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let served = candles(d.http, PROBE, "1m")?;
        if let Some(c) = served.iter().find(|c| is_ours(c)) {
            eprintln!("demo: REST /api/v1/candles serves the 1m candle of {PROBE}: {c}");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("REST /api/v1/candles did not serve the check's trade of {PROBE} within 60 s: {served:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
