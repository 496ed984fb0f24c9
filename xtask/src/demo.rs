//! `cargo xtask demo`: the whole pipeline on the local stack, with the live chart. Brings the stack
//! up (installing what is missing), builds the four services, starts them with their default
//! configuration (the simulator publishing a handful of instruments), prints the URLs, and on
//! Ctrl-C stops everything it started.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::stack;
use crate::util::{cargo, root, run};

/// A service the demo started; stopped with SIGTERM (then SIGKILL) when dropped.
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

fn start(name: &'static str, args: &[&str], env: &[(&str, &str)]) -> Result<Service> {
    let logs = root().join("target/demo");
    fs::create_dir_all(&logs)?;
    let log = fs::File::create(logs.join(format!("{name}.log")))?;
    let mut cmd = Command::new(root().join("target/release").join(name));
    cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    Ok(Service { name, child })
}

/// `GET path` on a loopback port, the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn wait_ready(services: &mut [Service], ports: &[(u16, &str)]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for (port, name) in ports {
        while http_status(*port, "/health/readyz") != Some(200) {
            for s in services.iter_mut() {
                if let Ok(Some(status)) = s.child.try_wait() {
                    bail!("{} exited with {status}: see target/demo/{}.log", s.name, s.name);
                }
            }
            if Instant::now() > deadline {
                bail!("{name} not ready on port {port} within 2 minutes: see target/demo/{name}.log");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

pub fn run_demo(args: &[String]) -> Result<()> {
    let instruments = args.first().map(String::as_str).unwrap_or("4");
    let rate = args.get(1).map(String::as_str).unwrap_or("200");
    let stack_was_up = stack::broker_answers();
    stack::run_stack(&["up".to_owned()])?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "feed-publisher",
        "-p",
        "ingest-aggregator",
        "-p",
        "persistence-writer",
        "-p",
        "query-gateway",
    ]))?;

    // Ctrl-C reaches the whole foreground process group: the services stop by themselves, and this
    // process only has to notice, wait for them and take the stack down.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stop = runtime.block_on(async {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        anyhow::Ok((term, int))
    });
    let (mut term, mut int) = stop?;

    let quiet = [("RUST_LOG", "warn")];
    let mut services = vec![
        start("persistence-writer", &[], &quiet)?,
        // The simulator's instruments are SIM:*, so Binance-style symbols (BTCUSD) name them.
        start("query-gateway", &[], &[("RUST_LOG", "warn"), ("WICK__BINANCE__EXCHANGE", "SIM")])?,
        // Two shards that block when idle leave the 2 cores of a small machine to the rest.
        start(
            "ingest-aggregator",
            &[],
            &[("RUST_LOG", "warn"), ("WICK__RING__WAIT_STRATEGY", "blocking"), ("WICK__RING__NUM_CONSUMERS", "2")],
        )?,
    ];
    let outcome = (|| {
        wait_ready(&mut services, &[(9103, "persistence-writer"), (9104, "query-gateway"), (9102, "ingest-aggregator")])?;
        services.push(start("feed-publisher", &["simulate", "--instruments", instruments, "--rate", rate], &quiet)?);
        wait_ready(&mut services, &[(9101, "feed-publisher")])?;
        println!(
            "\nWick is running: simulated trades of {instruments} instruments at {rate}/s -> feed-publisher -> market-events -> \
             ingest-aggregator -> candles-completed -> persistence-writer -> PostgreSQL and Redis -> query-gateway.\n\n\
             \x20 live chart     http://127.0.0.1:8080/?instrument=SIM:BTC-USD&interval=1s\n\
             \x20 REST           http://127.0.0.1:8080/api/v1/candles?instrument=SIM:BTC-USD&interval=1m&fill=previous\n\
             \x20 Binance klines http://127.0.0.1:8080/api/v3/klines?symbol=BTCUSD&interval=1m\n\
             \x20 OpenAPI        http://127.0.0.1:8080/api/openapi.json\n\
             \x20 WebSocket      ws://127.0.0.1:8080/ws\n\
             \x20 gRPC           127.0.0.1:50051 (wick.v1.CandleService, reflection on)\n\
             \x20 metrics        http://127.0.0.1:9101/metrics ... 9104/metrics\n\
             \x20 logs           target/demo/*.log\n\nCtrl-C stops everything the demo started.\n"
        );
        runtime.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                    _ = tick.tick() => {
                        for s in services.iter_mut() {
                            if let Ok(Some(status)) = s.child.try_wait() {
                                bail!("{} exited with {status}: see target/demo/{}.log", s.name, s.name);
                            }
                        }
                    }
                }
            }
        })
    })();
    eprintln!("\ndemo: stopping");
    for s in services.iter_mut().rev() {
        s.stop();
    }
    drop(services);
    if !stack_was_up {
        stack::run_stack(&["down".to_owned()])?;
    }
    outcome
}
