//! `cargo xtask stack up | down | status`: the local stack on loopback. A Kafka-protocol broker
//! (tansu with its SQLite engine), PostgreSQL, Redis, a 3-node Redis cluster, and Wick's topics.
//! `up` is idempotent and reuses whatever already answers; `down` stops only what `up` started.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{output, root, run};

const BROKER: &str = "127.0.0.1:9092";
const POSTGRES: &str = "127.0.0.1:5432";
const REDIS: &str = "127.0.0.1:6379";
const TANSU_VERSION: &str = "0.6.0";

/// Wick's topics and their default partition counts.
const TOPICS: [(&str, i32); 4] = [("market-events", 16), ("candles-completed", 4), ("market-events-dlq", 4), ("candles-completed-dlq", 4)];

fn cluster_ports() -> Vec<u16> {
    std::env::var("WICK_STACK_REDIS_CLUSTER_PORTS")
        .ok()
        .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .filter(|v: &Vec<u16>| v.len() == 3)
        .unwrap_or_else(|| vec![7001, 7002, 7003])
}

fn stack_dir() -> PathBuf {
    root().join("target/stack")
}

/// What `up` started, one line per component: `name pid` (pid 0 when there is no process).
fn state_file() -> PathBuf {
    stack_dir().join("started")
}

fn record_started(name: &str, pid: u32) -> Result<()> {
    fs::create_dir_all(stack_dir())?;
    let mut f = fs::OpenOptions::new().create(true).append(true).open(state_file())?;
    writeln!(f, "{name} {pid}")?;
    Ok(())
}

fn started() -> Vec<(String, u32)> {
    fs::read_to_string(state_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(n, p)| (n.to_owned(), p.parse().unwrap_or(0))))
        .collect()
}

pub fn run_stack(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("down") => down(),
        Some("status") => status(),
        _ => bail!("usage: cargo xtask stack up|down|status"),
    }
}

pub fn broker_answers() -> bool {
    answers(BROKER) && broker_serves(BROKER)
}

/// The broker answers a Kafka metadata request (listing topics), not only TCP: tansu 0.6.0's
/// SQLite engine can fail (a panic in its storage task, seen under load) while its listener
/// still accepts connections, and every request then fails.
pub fn broker_serves(address: &str) -> bool {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return false };
    runtime.block_on(async {
        let listed = async {
            let client = wick_kafka::connect(&[address.to_owned()], Duration::from_secs(5)).await.ok()?;
            client.list_topics().await.ok()
        };
        tokio::time::timeout(Duration::from_secs(10), listed).await.ok().flatten().is_some()
    })
}

fn answers(address: &str) -> bool {
    address.parse::<SocketAddr>().ok().is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

fn redis_pings(address: &str) -> bool {
    let Some(addr) = address.parse::<SocketAddr>().ok() else { return false };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("{what} did not come up within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn have(command: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {command}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    eprintln!("stack: installing {}", packages.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The tansu binary, installed with `cargo install` when missing (a cold build takes under 10
/// minutes on 2 cores when nothing else builds, longer when something does; the binary is cached
/// in `~/.cargo/bin` across runs).
pub fn tansu() -> Result<PathBuf> {
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let installed = PathBuf::from(cargo_home).join("bin/tansu");
    if installed.is_file() {
        return Ok(installed);
    }
    if have("tansu") {
        return Ok(PathBuf::from("tansu"));
    }
    eprintln!("stack: tansu {TANSU_VERSION} is missing; installing it (a cold build: under 10 minutes on 2 cores, once)");
    run(Command::new("cargo").args([
        "install",
        "--locked",
        &format!("tansu@{TANSU_VERSION}"),
        "--no-default-features",
        "--features",
        "libsql",
    ]))?;
    Ok(installed)
}

fn up() -> Result<()> {
    fs::create_dir_all(stack_dir())?;
    quickack_on()?;
    broker_up()?;
    postgres_up()?;
    migrate()?;
    redis_up()?;
    redis_cluster_up()?;
    topics_up()?;
    status()
}

fn broker_up() -> Result<()> {
    if answers(BROKER) {
        if broker_serves(BROKER) {
            eprintln!("stack: broker already answers on {BROKER}");
            return Ok(());
        }
        // Accepting connections without serving: restart it when it is the stack's own broker.
        let ours = started()
            .into_iter()
            .rev()
            .find(|(name, _)| name == "broker")
            .map(|(_, pid)| pid)
            .filter(|pid| String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).contains("tansu"));
        let Some(pid) = ours else {
            bail!("a broker on {BROKER} accepts connections but does not answer Kafka requests, and the stack did not start it: stop it");
        };
        eprintln!("stack: the broker (pid {pid}) accepts connections but does not answer Kafka requests (see its log): restarting it");
        let _ = Command::new("kill").arg(pid.to_string()).status();
        // A stopped process (SIGSTOP) takes the signal only once continued.
        let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        wait_for("the broken broker to stop", Duration::from_secs(30), || !answers(BROKER))?;
    }
    let binary = tansu()?;
    let dir = stack_dir().join("tansu");
    // The stack's broker starts empty every time: tests and benchmarks only ever add topics (with
    // unique names), and tansu's SQLite engine fetches more slowly as its database grows (see
    // ARCHITECTURE.md), so a broker that kept everything would slow each run down further.
    // `stack up` creates Wick's topics again below.
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let log = fs::File::create(dir.join("broker.log"))?;
    // The SQLite path is relative to the broker's working directory (an absolute one fails in 0.6.0).
    let mut cmd = Command::new(binary);
    cmd.current_dir(&dir)
        .args(["broker", "--storage-engine", "sqlite://tansu.db"])
        .args(["--listener-url", &format!("tcp://{BROKER}"), "--advertised-listener-url", &format!("tcp://{BROKER}")])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    detach(&mut cmd);
    let child = cmd.spawn().context("starting tansu")?;
    record_started("broker", child.id())?;
    wait_for("the broker", Duration::from_secs(30), || answers(BROKER) && broker_serves(BROKER))
        .with_context(|| format!("see {}", dir.join("broker.log").display()))?;
    eprintln!("stack: started broker (tansu, SQLite engine in {}) on {BROKER}", dir.display());
    Ok(())
}

/// Own process group, so a Ctrl-C in the terminal that ran `up` does not stop the stack.
fn detach(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}

fn postgres_up() -> Result<()> {
    if !answers(POSTGRES) {
        if !have("pg_ctlcluster") {
            apt_install(&["postgresql"])?;
        }
        let version = postgres_version()?;
        trust_loopback(&version)?;
        // On a systemd machine the package starts the cluster itself; `pg_ctlcluster start` would
        // then fail with "already running" (exit 2).
        if !answers(POSTGRES) {
            let status = Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &version, "main", "start"]).status()?;
            if !status.success() && status.code() != Some(2) {
                bail!("pg_ctlcluster {version} main start failed with {status}");
            }
            record_started(&format!("postgres:{version}"), 0)?;
        }
        wait_for("PostgreSQL", Duration::from_secs(30), || answers(POSTGRES))?;
        eprintln!("stack: started PostgreSQL {version}");
    }
    if !have("psql") {
        apt_install(&["postgresql-client"])?;
    }
    let exists = output(Command::new("psql").args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-w",
        "-tAc",
        "SELECT 1 FROM pg_database WHERE datname = 'wick'",
    ]))
    .context("PostgreSQL on 127.0.0.1:5432 must accept user postgres without a password (trust on loopback)")?;
    if exists.trim() != "1" {
        run(Command::new("psql").args(["-h", "127.0.0.1", "-U", "postgres", "-w", "-c", "CREATE DATABASE wick"]))?;
    }
    Ok(())
}

/// The newest installed PostgreSQL major version (numerically: 15 beats 9.6).
fn postgres_version() -> Result<String> {
    let versions = fs::read_dir("/etc/postgresql").context("no /etc/postgresql after installing postgresql")?;
    versions
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max_by(|a, b| {
            let key = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
            key(a).cmp(&key(b))
        })
        .context("no PostgreSQL cluster in /etc/postgresql")
}

/// Debian creates clusters with password authentication on TCP; the design's default URL
/// (`postgres://postgres@127.0.0.1:5432/wick`) has none. Trust loopback on a cluster we start.
fn trust_loopback(version: &str) -> Result<()> {
    let path = PathBuf::from(format!("/etc/postgresql/{version}/main/pg_hba.conf"));
    let hba = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rules = "host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n";
    if !hba.starts_with(rules) {
        fs::write(&path, format!("{rules}{hba}")).with_context(|| format!("writing {}", path.display()))?;
        // Reload if it is already running; a cluster started afterwards reads the file anyway.
        let _ = Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", version, "main", "reload"]).status();
    }
    Ok(())
}

/// Applies the candle schema of `migrations/` (as the persistence-writer does at start) to
/// `WICK_DATABASE_URL`, or to the stack's database `wick`, which `stack up` creates.
pub fn migrate() -> Result<()> {
    let url = std::env::var("WICK_DATABASE_URL").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=wick".into());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (mut client, connection) =
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.with_context(|| format!("connecting to PostgreSQL ({url})"))?;
        tokio::spawn(connection);
        let mode = wick_store::migrate(&mut client, &wick_store::TimescaleSettings::default()).await?;
        eprintln!("stack: candle schema applied ({})", mode.as_str());
        anyhow::Ok(())
    })
}

fn redis_binaries() -> Result<()> {
    if !have("redis-server") || !have("redis-cli") {
        apt_install(&["redis-server", "redis-tools"])?;
    }
    Ok(())
}

fn redis_server(port: u16, extra: &[&str]) -> Result<()> {
    let dir = stack_dir().join(format!("redis-{port}"));
    fs::create_dir_all(&dir)?;
    let pidfile = dir.join("redis.pid");
    let _ = fs::remove_file(dir.join("nodes.conf"));
    run(Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra))?;
    let address = format!("127.0.0.1:{port}");
    wait_for(&format!("Redis on {address}"), Duration::from_secs(10), || redis_pings(&address))?;
    let pid = fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
    record_started(&format!("redis:{port}"), pid)
}

fn redis_up() -> Result<()> {
    if redis_pings(REDIS) {
        eprintln!("stack: Redis already answers on {REDIS}");
        return Ok(());
    }
    redis_binaries()?;
    redis_server(6379, &[])?;
    eprintln!("stack: started Redis on {REDIS}");
    Ok(())
}

fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}

fn redis_cluster_up() -> Result<()> {
    let ports = cluster_ports();
    redis_binaries()?;
    if ports.iter().all(|p| redis_pings(&format!("127.0.0.1:{p}"))) && cluster_ok(ports[0]) {
        eprintln!("stack: Redis cluster already answers on ports {ports:?}");
        return Ok(());
    }
    let ours: Vec<String> = started().into_iter().map(|(n, _)| n).collect();
    for port in &ports {
        if redis_pings(&format!("127.0.0.1:{port}")) {
            if !ours.contains(&format!("redis:{port}")) {
                bail!("port {port} has a Redis that is not part of a healthy cluster; stop it or set WICK_STACK_REDIS_CLUSTER_PORTS");
            }
            // Ours, from an `up` that failed before the cluster formed: start it afresh.
            let _ = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string(), "shutdown", "nosave"]).output();
            wait_for(&format!("Redis on port {port} to stop"), Duration::from_secs(10), || !answers(&format!("127.0.0.1:{port}")))?;
        }
        redis_server(*port, &["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"])?;
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    run(Command::new("redis-cli").args(["--cluster", "create"]).args(&nodes).args(["--cluster-replicas", "0", "--cluster-yes"]))?;
    wait_for("the Redis cluster", Duration::from_secs(30), || ports.iter().all(|p| cluster_ok(*p)))?;
    eprintln!("stack: started a 3-node Redis cluster on ports {ports:?}");
    Ok(())
}

fn topics_up() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let brokers = vec![BROKER.to_owned()];
        let client = wick_kafka::connect(&brokers, Duration::from_secs(30)).await?;
        let specs: Vec<_> =
            TOPICS.iter().map(|(name, partitions)| wick_kafka::TopicSpec { name: (*name).into(), partitions: *partitions }).collect();
        for (name, state) in wick_kafka::ensure_topics(&client, BROKER, &specs).await? {
            eprintln!("stack: topic {name}: {state:?}");
        }
        anyhow::Ok(())
    })
}

/// The loopback route's `quickack` flag. rskafka writes a request's length and body in two writes
/// without TCP_NODELAY, so Nagle holds the body until the broker ACKs the length, which a delayed
/// ACK postpones by about 40 ms. `quickack 1` on the route makes the ACK immediate.
fn loopback_route() -> Option<String> {
    let out = Command::new("ip").args(["route", "show", "table", "local", "127.0.0.1"]).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("local 127.0.0.1"))?.to_owned();
    Some(line)
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

fn set_quickack(on: bool) -> Result<()> {
    let route = loopback_route().context("no local route for 127.0.0.1")?;
    let base: Vec<&str> = route.split_whitespace().take_while(|w| *w != "quickack").collect();
    let mut args = vec!["route", "change"];
    args.extend(&base);
    args.extend(["table", "local"]);
    if on {
        args.extend(["quickack", "1"]);
    }
    run(Command::new("ip").args(&args))
}

pub fn quickack_enabled() -> bool {
    loopback_route().is_some_and(|r| r.contains("quickack 1"))
}

/// Turns `quickack` on for the loopback route when it can (root and iproute2), for the measured
/// before/after see `docs/BENCHMARKS.md`.
fn quickack_on() -> Result<()> {
    if quickack_enabled() {
        return Ok(());
    }
    if !is_root() || !have("ip") {
        eprintln!("stack: not root or no iproute2: leaving the loopback route without quickack (requests may stall ~40 ms)");
        return Ok(());
    }
    match set_quickack(true) {
        Ok(()) => {
            record_started("quickack", 0)?;
            eprintln!("stack: set quickack on the loopback route");
        }
        // E.g. a container without CAP_NET_ADMIN: slower requests, nothing else changes.
        Err(e) => eprintln!("stack: could not set quickack on the loopback route ({e:#}); requests may stall ~40 ms"),
    }
    Ok(())
}

pub fn quickack(on: bool) -> Result<()> {
    set_quickack(on)
}

fn down() -> Result<()> {
    let components = started();
    // Keep going on errors, so one component that is already gone does not keep the rest running.
    let mut failures = Vec::new();
    for (name, pid) in components.iter().rev() {
        let result = match name.split_once(':') {
            _ if name == "quickack" => set_quickack(false).map(|()| "removed quickack from the loopback route".to_owned()),
            Some(("postgres", version)) => {
                let status = Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", version, "main", "stop"]).status();
                match status {
                    // Exit 2: not running any more.
                    Ok(s) if s.success() || s.code() == Some(2) => Ok(format!("stopped PostgreSQL {version}")),
                    Ok(s) => Err(anyhow::anyhow!("pg_ctlcluster {version} main stop failed with {s}")),
                    Err(e) => Err(e.into()),
                }
            }
            Some(("redis", port)) => {
                let _ = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", port, "shutdown", "nosave"]).output();
                Ok(format!("stopped Redis on port {port}"))
            }
            _ if *pid > 0 => {
                // Only kill the pid if it is still the broker we started (it may have died and the pid been reused).
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("tansu") {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                    Ok(format!("stopped {name} (pid {pid})"))
                } else {
                    Ok(format!("{name} (pid {pid}) was no longer running"))
                }
            }
            _ => Ok(String::new()),
        };
        match result {
            Ok(msg) if !msg.is_empty() => eprintln!("stack: {msg}"),
            Ok(_) => {}
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    let _ = fs::remove_file(state_file());
    if components.is_empty() {
        eprintln!("stack: nothing was started by `stack up`");
    }
    if !failures.is_empty() {
        bail!("stack down: {}", failures.join("; "));
    }
    Ok(())
}

fn status() -> Result<()> {
    let mut rows: Vec<(String, String, bool)> = vec![
        ("broker (tansu, SQLite)".into(), BROKER.into(), answers(BROKER) && broker_serves(BROKER)),
        ("PostgreSQL".into(), POSTGRES.into(), answers(POSTGRES)),
        ("Redis".into(), REDIS.into(), redis_pings(REDIS)),
    ];
    for p in cluster_ports() {
        rows.push((
            format!("Redis cluster node{}", if cluster_ok(p) { "" } else { " (cluster not ok)" }),
            format!("127.0.0.1:{p}"),
            redis_pings(&format!("127.0.0.1:{p}")) && cluster_ok(p),
        ));
    }
    rows.push(("loopback quickack".into(), "127.0.0.1 route".into(), quickack_enabled()));
    println!("{:<36} {:<18} state", "component", "address");
    for (name, address, up) in &rows {
        println!("{name:<36} {address:<18} {}", if *up { "up" } else { "DOWN" });
    }
    let started: Vec<String> = started().into_iter().map(|(n, _)| n).collect();
    println!("started by `stack up`: {}", if started.is_empty() { "nothing".into() } else { started.join(", ") });
    Ok(())
}
