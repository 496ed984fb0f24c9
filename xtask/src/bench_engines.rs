//! `cargo xtask bench broker-engines`: which tansu storage engine the local stack should run,
//! SQLite (what it runs) or PostgreSQL (which the machine runs anyway), decided by measurement.
//!
//! Both engines run as private tansu 0.6.0 brokers of their own on free ports, each starting empty
//! (a fresh SQLite file; a freshly created database with [`SCHEMA`], which tansu's PostgreSQL
//! engine does not create itself), so neither pays for the stack's grown database. Against each, in
//! the same run and back to back: the broker benchmark (`cargo bench -p wick-kafka --bench broker`
//! through `WICK_TEST_KAFKA`), then Wick's broker-facing test suites. The cold build of each
//! binary is measured outside this command (a `cargo install` into an empty target directory under
//! `/usr/bin/time -v`) and its log is read here.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench_results::{self as results, Doc, Record};
use crate::util::{cargo, root};

/// tansu's PostgreSQL engine needs its tables made beforehand (it ships no DDL for PostgreSQL).
const SCHEMA: &str = include_str!("tansu_postgres.sql");

/// The database each measurement creates afresh and drops afterwards.
const DATABASE: &str = "tansu_bench";

/// The broker-facing test suites, as `cargo nextest run` arguments.
const SUITES: [&[&str]; 4] = [
    &["-p", "wick-kafka"],
    &["-p", "feed-publisher", "--test", "integration"],
    &["-p", "ingest-aggregator", "--test", "aggregator"],
    &["-p", "persistence-writer"],
];

/// The broker benchmarks: (criterion name, label, records per iteration).
const WORKLOADS: [(&str, &str, f64); 6] = [
    ("produce_1x100B", "produce 1 record of 100 B", 1.0),
    ("produce_100x100B", "produce 100 records of 100 B (one request)", 100.0),
    ("produce_100x100B_8_partitions_in_flight", "produce 100 records of 100 B to each of 8 partitions at once", 800.0),
    ("produce_100x4KB", "produce 100 records of 4 KB (one request)", 100.0),
    ("fetch_5000x100B", "fetch 5000 records of 100 B (1 MiB fetches)", 5000.0),
    ("fetch_5000x4KB", "fetch 5000 records of 4 KB (1 MiB fetches)", 5000.0),
];

/// How much faster (geometric mean of the time ratios over every workload) the PostgreSQL engine
/// must be to be worth a second database process in the stack's broker path.
const CLEAR_WIN: f64 = 1.2;

#[derive(Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn key(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// The binary: `WICK_BENCH_TANSU_SQLITE` / `WICK_BENCH_TANSU_POSTGRES`, else where the stack and
    /// the measured `cargo install --root` put them.
    fn binary(self) -> PathBuf {
        let home = std::env::var("HOME").unwrap_or_default();
        match self {
            Engine::Sqlite => {
                std::env::var("WICK_BENCH_TANSU_SQLITE").map_or_else(|_| Path::new(&home).join(".cargo/bin/tansu"), PathBuf::from)
            }
            Engine::Postgres => std::env::var("WICK_BENCH_TANSU_POSTGRES")
                .map_or_else(|_| Path::new(&home).join(".cargo/tansu-pg/bin/tansu"), PathBuf::from),
        }
    }

    /// The `time -v` log of its cold `cargo install`: `WICK_BENCH_TANSU_SQLITE_BUILD_LOG` /
    /// `WICK_BENCH_TANSU_POSTGRES_BUILD_LOG`.
    fn build_log(self) -> Option<PathBuf> {
        let var = match self {
            Engine::Sqlite => "WICK_BENCH_TANSU_SQLITE_BUILD_LOG",
            Engine::Postgres => "WICK_BENCH_TANSU_POSTGRES_BUILD_LOG",
        };
        std::env::var_os(var).map(PathBuf::from)
    }
}

/// A private tansu broker on a free port; stopped (and its data removed) when dropped.
struct Broker {
    child: Child,
    dir: PathBuf,
    address: String,
}

impl Broker {
    fn start(engine: Engine, postgres: &str) -> Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let dir = root().join(format!("target/wick-bench/broker-engines/{}", engine.key()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let storage = match engine {
            // Relative: tansu 0.6.0 rejects an absolute SQLite path.
            Engine::Sqlite => "sqlite://tansu.db".to_owned(),
            Engine::Postgres => postgres_url(postgres, DATABASE),
        };
        let log = fs::File::create(dir.join("broker.log"))?;
        let url = format!("tcp://{address}");
        let child = Command::new(engine.binary())
            .current_dir(&dir)
            .args(["broker", "--storage-engine", &storage, "--listener-url", &url, "--advertised-listener-url", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", engine.binary().display()))?;
        let mut broker = Broker { child, dir, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !crate::stack::broker_serves(&broker.address) {
            if broker.child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("the {} broker did not start: see {}", engine.key(), broker.dir.join("broker.log").display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stack's PostgreSQL, as libpq key-values: `WICK_BENCH_POSTGRES`, else the stack's.
fn postgres_config() -> String {
    std::env::var("WICK_BENCH_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into())
}

/// The URL tansu takes for `database` on the server of `config`.
fn postgres_url(config: &str, database: &str) -> String {
    let field = |key: &str, default: &str| {
        config.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap_or(default).to_owned()
    };
    // Loopback needs no TLS (the stack's server presents a certificate for `localhost`, which
    // tansu's rustls refuses for 127.0.0.1).
    format!("postgres://{}@{}:{}/{database}?sslmode=disable", field("user", "postgres"), field("host", "127.0.0.1"), field("port", "5432"))
}

/// Drops and creates [`DATABASE`] (with [`SCHEMA`] when `schema`), or only drops it.
fn reset_database(config: &str, schema: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(config, tokio_postgres::NoTls).await.context("connecting to PostgreSQL")?;
        let task = tokio::spawn(connection);
        client.batch_execute(&format!("drop database if exists {DATABASE} with (force)")).await?;
        if schema {
            client.batch_execute(&format!("create database {DATABASE}")).await?;
            let own = format!("{config} dbname={DATABASE}");
            let (db, connection) = tokio_postgres::connect(&own, tokio_postgres::NoTls).await?;
            let own_task = tokio::spawn(connection);
            db.batch_execute(SCHEMA).await.context("creating tansu's tables")?;
            drop(db);
            let _ = own_task.await;
        }
        drop(client);
        let _ = task.await;
        anyhow::Ok(())
    })
}

/// CPU and wall time of a cold `cargo install` from its `/usr/bin/time -v` log.
fn build_cost(log: &Path) -> Result<Value> {
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let field = |name: &str| text.lines().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()));
    let seconds = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok());
    let (Some(user), Some(system), Some(wall)) =
        (seconds("User time (seconds):"), seconds("System time (seconds):"), field("Elapsed (wall clock) time (h:mm:ss or m:ss):"))
    else {
        bail!("{} has no complete `time -v` block (is the build still running?)", log.display());
    };
    // `h:mm:ss` or `m:ss.ss`.
    let wall_seconds = wall.split(':').try_fold(0.0, |acc, part| part.parse::<f64>().map(|p| acc * 60.0 + p))?;
    let exit = text.lines().rev().find_map(|l| l.trim().strip_prefix("Exit status:").map(|v| v.trim().to_owned()));
    Ok(json!({
        "command": field("Command being timed:").map(|c| c.trim_matches('"').to_owned()),
        "user_seconds": user,
        "system_seconds": system,
        "cpu_seconds": user + system,
        "wall_seconds": wall_seconds,
        "max_rss_kb": seconds("Maximum resident set size (kbytes):"),
        "exit_status": exit,
    }))
}

/// The broker benchmark against `address`: criterion medians in ns by workload.
fn bench(address: &str) -> Result<Value> {
    let _ = fs::remove_dir_all(crate::util::target_dir().join("criterion/broker"));
    let quickack = if crate::stack::quickack_enabled() { "on" } else { "off" };
    crate::util::run(
        cargo()
            .args(["bench", "-p", "wick-kafka", "--bench", "broker"])
            .env("WICK_TEST_KAFKA", address)
            .env("WICK_BENCH_QUICKACK", quickack)
            .env("WICK_BENCH_BROKER_FULL", "1"),
    )?;
    let medians = crate::bench::criterion_medians("broker")?;
    let mut out = serde_json::Map::new();
    for (name, _, _) in WORKLOADS {
        out.insert(name.to_owned(), medians[format!("broker/{name}/quickack_{quickack}")].clone());
    }
    Ok(json!({ "quickack": quickack, "load_average": results::load_average(), "medians_ns": out }))
}

/// One test suite against `address`: tests passed and failed, and the failing tests' names.
fn suite(args: &[&str], address: &str) -> Result<Value> {
    let started = Instant::now();
    let out = cargo()
        .args(["nextest", "run", "--no-fail-fast"])
        .args(args)
        .env("WICK_TEST_KAFKA", address)
        .stdin(Stdio::null())
        .output()
        .context("starting cargo nextest")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let count = |word: &str| {
        text.lines()
            .rev()
            .find(|l| l.contains("tests run:"))
            .and_then(|l| l.split([':', ',']).find_map(|part| part.trim().strip_suffix(word).and_then(|n| n.trim().parse::<u64>().ok())))
            .unwrap_or(0)
    };
    let mut failed: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            (l.starts_with("FAIL [") || l.starts_with("TIMEOUT [") || l.starts_with("SIGSEGV [") || l.starts_with("ABORT ["))
                .then(|| {
                    l.split_once(']').map(|(_, rest)| rest.split_whitespace().filter(|w| !w.starts_with('(')).collect::<Vec<_>>().join(" "))
                })
                .flatten()
        })
        .collect();
    failed.sort();
    failed.dedup();
    if !text.contains("tests run:") {
        eprintln!("{text}");
        bail!("cargo nextest run {} did not run (exit {})", args.join(" "), out.status);
    }
    eprintln!("broker-engines: {} against {address}: {} passed, {} failed", args.join(" "), count(" passed"), failed.len());
    Ok(json!({
        "command": format!("cargo nextest run {}", args.join(" ")),
        "passed": count(" passed"),
        "failed": count(" failed") + count(" timed out"),
        "failing": failed,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

pub fn measure() -> Result<Value> {
    let engines = [Engine::Sqlite, Engine::Postgres];
    for engine in engines {
        if !engine.binary().is_file() {
            bail!("no {} tansu at {} (see the module doc)", engine.key(), engine.binary().display());
        }
    }
    let config = postgres_config();
    reset_database(&config, true)?;
    let measured = (|| {
        let brokers = [Broker::start(Engine::Sqlite, &config)?, Broker::start(Engine::Postgres, &config)?];
        let mut out = serde_json::Map::new();
        for (engine, broker) in engines.iter().zip(&brokers) {
            eprintln!("broker-engines: benchmark against the {} engine on {}", engine.key(), broker.address);
            out.insert(engine.key().to_owned(), json!({ "bench": bench(&broker.address)? }));
        }
        // Suite by suite, each against both engines, so that a run cut short by its time budget
        // (`WICK_BENCH_ENGINES_SUITE_MINUTES`) has run the same suites on both.
        let budget = std::env::var("WICK_BENCH_ENGINES_SUITE_MINUTES").ok().and_then(|m| m.parse::<f64>().ok());
        let suites_started = Instant::now();
        let mut suites: [Vec<Value>; 2] = Default::default();
        for args in SUITES {
            let over = budget.is_some_and(|m| suites_started.elapsed().as_secs_f64() > m * 60.0);
            for (i, broker) in brokers.iter().enumerate() {
                suites[i].push(match over {
                    true => json!({ "command": format!("cargo nextest run {}", args.join(" ")), "skipped": "time budget" }),
                    false => suite(args, &broker.address)?,
                });
            }
        }
        for ((engine, broker), suites) in engines.iter().zip(&brokers).zip(suites) {
            out[engine.key()]["suites"] = Value::Array(suites);
            out[engine.key()]["broker_alive"] = json!(crate::stack::broker_serves(&broker.address));
        }
        anyhow::Ok(out)
    })();
    let dropped = reset_database(&config, false);
    let mut out = measured?;
    dropped?;
    for engine in engines {
        let build = match engine.build_log() {
            Some(log) => {
                // A build still running (started after the other one, so that they do not compete)
                // is waited for.
                let deadline = Instant::now() + Duration::from_secs(45 * 60);
                loop {
                    match build_cost(&log) {
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("broker-engines: waiting for the build: {e:#}");
                            std::thread::sleep(Duration::from_secs(20));
                        }
                        cost => break cost?,
                    }
                }
            }
            None => Value::Null,
        };
        out[engine.key()]["build"] = build;
        out[engine.key()]["binary"] = json!(engine.binary().display().to_string());
    }
    Ok(Value::Object(out))
}

fn ms(ns: f64) -> String {
    format!("{:.2} ms", ns / 1e6)
}

pub fn render(r: &Record, doc: &mut Doc) -> Result<()> {
    let f = |path: &[&str]| r.median(path);
    let s = &r.samples[0].results;
    let md = &mut doc.body;
    writeln!(
        md,
        "Command: `cargo xtask bench broker-engines`. Two private tansu 0.6.0 brokers on this machine, each starting empty: the \
         SQLite engine (`--storage-engine sqlite://tansu.db` in a fresh directory, as `cargo xtask stack up` runs it) and the \
         PostgreSQL engine (`--storage-engine postgres://…/{DATABASE}`, a database created for the run on the stack's PostgreSQL \
         with the tables in `xtask/src/tansu_postgres.sql`, which that engine does not create itself, and dropped after it). \
         Against each in turn, in the same run: `cargo bench -p wick-kafka --bench broker` (`WICK_TEST_KAFKA` pointing at it, \
         loopback `quickack` {}), then Wick's broker-facing test suites with `cargo nextest run`.\n",
        s["sqlite"]["bench"]["quickack"].as_str().unwrap_or("?"),
    )?;
    writeln!(md, "### Latency and throughput\n")?;
    writeln!(md, "| workload | SQLite: time | SQLite: records/s | PostgreSQL: time | PostgreSQL: records/s | PostgreSQL / SQLite time |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
    let mut log_ratio = 0.0;
    for (name, label, records) in WORKLOADS {
        let (sqlite, pg) = (f(&["sqlite", "bench", "medians_ns", name]), f(&["postgres", "bench", "medians_ns", name]));
        log_ratio += (pg / sqlite).ln();
        writeln!(
            md,
            "| {label} | {} | {:.0} | {} | {:.0} | {:.2}x |",
            ms(sqlite),
            records / (sqlite / 1e9),
            ms(pg),
            records / (pg / 1e9),
            pg / sqlite
        )?;
    }
    let time_ratio = (log_ratio / WORKLOADS.len() as f64).exp();
    let load = |engine: &str| {
        let l = &s[engine]["bench"]["load_average"];
        l[0].as_f64().map_or_else(|| "unknown".to_owned(), |x| format!("{x:.2}"))
    };
    writeln!(
        md,
        "\nCriterion medians; 1-minute load average when each engine's benchmark started: SQLite {}, PostgreSQL {}. Over the six \
         workloads the PostgreSQL engine takes {time_ratio:.2}x the SQLite engine's time (geometric mean).\n",
        load("sqlite"),
        load("postgres")
    )?;

    writeln!(md, "### Conformance: Wick's broker-facing tests\n")?;
    writeln!(md, "| suite | SQLite: passed / failed | PostgreSQL: passed / failed |")?;
    writeln!(md, "|---|---:|---:|")?;
    let suites = |engine: &str| s[engine]["suites"].as_array().cloned().unwrap_or_default();
    let (sqlite_suites, pg_suites) = (suites("sqlite"), suites("postgres"));
    let failed_total = |v: &[Value]| v.iter().map(|s| s["failed"].as_u64().unwrap_or(0)).sum::<u64>();
    let cell = |s: &Value| match s["skipped"].as_str() {
        Some(why) => format!("not run ({why})"),
        None => format!("{} / {}", s["passed"], s["failed"]),
    };
    for (a, b) in sqlite_suites.iter().zip(&pg_suites) {
        writeln!(md, "| `{}` | {} | {} |", a["command"].as_str().unwrap_or("?"), cell(a), cell(b))?;
    }
    writeln!(md)?;
    for (engine, label) in [("sqlite", "SQLite"), ("postgres", "PostgreSQL")] {
        let failing: Vec<String> = suites(engine)
            .iter()
            .flat_map(|s| s["failing"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        if !failing.is_empty() {
            writeln!(md, "Failing on the {label} engine: {}.\n", failing.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "))?;
        }
        if s[engine]["broker_alive"] == false {
            writeln!(md, "The {label} broker no longer answered metadata requests after the suites.\n")?;
        }
    }
    writeln!(
        md,
        "Tests that start a broker of their own (the restart tests in `wick-kafka`, the aggregator's broker-outage test) start \
         it with the stack's SQLite binary whichever engine is under test; everything else talks to the broker under test.\n"
    )?;

    writeln!(md, "### Cold build\n")?;
    writeln!(md, "| binary | CPU (user + system) | wall | peak memory |")?;
    writeln!(md, "|---|---:|---:|---:|")?;
    for (engine, label) in [("sqlite", "SQLite (`--features libsql`)"), ("postgres", "PostgreSQL (`--features postgres`)")] {
        let b = &s[engine]["build"];
        if b.is_null() {
            writeln!(md, "| {label} | not measured | | |")?;
        } else {
            writeln!(
                md,
                "| {label} | {:.0} s ({:.1} min) | {:.0} s | {:.2} GB |",
                f(&[engine, "build", "cpu_seconds"]),
                f(&[engine, "build", "cpu_seconds"]) / 60.0,
                f(&[engine, "build", "wall_seconds"]),
                f(&[engine, "build", "max_rss_kb"]) / 1e6
            )?;
        }
    }
    writeln!(
        md,
        "\nEach a `cargo install --locked tansu@0.6.0 --no-default-features --features <engine>` into an empty target directory \
         under `/usr/bin/time -v nice -n 19`, one after the other. Compare the CPU seconds: the wall time is inflated by \
         `nice` whenever other work shares the two cores.\n"
    )?;

    writeln!(md, "### Decision\n")?;
    let pg_failed = failed_total(&pg_suites);
    let sqlite_failed = failed_total(&sqlite_suites);
    let build_ratio = f(&["postgres", "build", "cpu_seconds"]) / f(&["sqlite", "build", "cpu_seconds"]);
    let build =
        if build_ratio.is_nan() { String::new() } else { format!(" Its cold build takes {build_ratio:.2}x the SQLite build's CPU time.") };
    let speed = 1.0 / time_ratio;
    if pg_failed == 0 && speed >= CLEAR_WIN {
        writeln!(
            md,
            "**PostgreSQL wins**: it passes every broker-facing test ({sqlite_failed} failures on SQLite) and is {speed:.2}x as fast \
             over the workloads above (the bar: {CLEAR_WIN:.1}x).{build} The stack still runs SQLite: switching needs `stack up` \
             to create the database and its tables before starting tansu, `stack down` to leave them, CI to provision the same, \
             and a run of the whole test suite and `cargo xtask bench` on the new engine.\n"
        )?;
    } else {
        let mut reasons = Vec::new();
        if pg_failed > 0 {
            reasons.push(format!(
                "it fails {pg_failed} broker-facing tests that SQLite {}",
                if sqlite_failed == 0 { "passes".to_owned() } else { format!("fails {sqlite_failed} of") }
            ));
        }
        if speed < CLEAR_WIN {
            reasons.push(format!(
                "it is {speed:.2}x as fast as SQLite over the workloads above, below the {CLEAR_WIN:.1}x that would pay for a broker \
                 that needs a database and its tables made before it starts"
            ));
        }
        writeln!(md, "**SQLite stays** the stack's engine: with PostgreSQL, {}.{build}\n", reasons.join("; and "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_results::fixtures::record;

    fn engine(ns_per_workload: f64, failed: u64, cpu_seconds: f64) -> Value {
        let medians: serde_json::Map<String, Value> =
            WORKLOADS.iter().map(|(name, _, _)| ((*name).to_owned(), json!(ns_per_workload))).collect();
        json!({
            "bench": { "quickack": "on", "load_average": [1.0, 1.0, 1.0], "medians_ns": medians },
            "suites": [{ "command": "cargo nextest run -p wick-kafka", "passed": 10 - failed, "failed": failed,
                         "failing": (0..failed).map(|i| format!("wick-kafka::broker t{i}")).collect::<Vec<_>>() }],
            "broker_alive": true,
            "build": { "cpu_seconds": cpu_seconds, "wall_seconds": cpu_seconds, "max_rss_kb": 1e6 },
        })
    }

    fn rendered(sqlite: Value, postgres: Value) -> String {
        let mut doc = Doc::default();
        render(&record("broker-engines", vec![json!({ "sqlite": sqlite, "postgres": postgres })]), &mut doc).unwrap();
        doc.finish().unwrap()
    }

    #[test]
    fn the_decision_follows_conformance_and_speed() {
        let md = rendered(engine(2e6, 0, 600.0), engine(1e6, 0, 900.0));
        assert!(md.contains("**PostgreSQL wins**"), "{md}");
        assert!(md.contains("is 2.00x as fast"), "{md}");
        assert!(md.contains("takes 1.50x the SQLite build's CPU time"), "{md}");

        let md = rendered(engine(2e6, 0, 600.0), engine(1e6, 2, 900.0));
        assert!(md.contains("**SQLite stays**"), "{md}");
        assert!(md.contains("it fails 2 broker-facing tests that SQLite passes"), "{md}");
        assert!(md.contains("`wick-kafka::broker t1`"), "{md}");

        let md = rendered(engine(1e6, 0, 600.0), engine(1.1e6, 0, 900.0));
        assert!(md.contains("**SQLite stays**"), "{md}");
        assert!(md.contains("it is 0.91x as fast as SQLite"), "{md}");
    }

    #[test]
    fn a_time_log_gives_cpu_and_wall_seconds() {
        let dir = std::env::temp_dir().join(format!("wick-engines-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("build.log");
        fs::write(
            &log,
            "   Compiling tansu v0.6.0\n\tCommand being timed: \"cargo install tansu\"\n\tUser time (seconds): 900.50\n\t\
             System time (seconds): 99.50\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n\t\
             Maximum resident set size (kbytes): 2000000\n\tExit status: 0\nexit 0\n",
        )
        .unwrap();
        let cost = build_cost(&log).unwrap();
        assert_eq!(cost["cpu_seconds"], 1000.0);
        assert_eq!(cost["wall_seconds"], 3723.0);
        assert_eq!(cost["command"], "cargo install tansu");
        fs::write(&log, "   Compiling tansu v0.6.0\n").unwrap();
        assert!(build_cost(&log).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
