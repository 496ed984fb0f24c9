//! Services started together, in any order, all come up: the four service binaries started at the
//! same moment on fresh names (a new database, new topics, a new Redis prefix) that each of them
//! creates if missing, ten times over in rotating orders. Each must become ready and none may exit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wick_test_support::{free_port, http_status, service_binary, unique_ident, unique_name, ServiceProcess};

const SERVICES: [&str; 4] = ["feed-publisher", "ingest-aggregator", "persistence-writer", "query-gateway"];

/// `host=.. port=.. user=.. dbname=<database>` on the test server.
fn database_url(database: &str) -> String {
    let config: tokio_postgres::Config = wick_test_support::postgres_config().parse().expect("WICK_TEST_POSTGRES");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    format!("host={host} port={port} user={user} dbname={database}")
}

/// One deployment's fresh names and ports.
struct Deployment {
    database: String,
    market: String,
    candles: String,
    prefix: String,
    ops: [u16; 4],
    http: u16,
    grpc: u16,
}

impl Deployment {
    fn new() -> Deployment {
        let port = || free_port().unwrap();
        Deployment {
            database: unique_ident("wick_startup"),
            market: unique_name("startup-market"),
            candles: unique_name("startup-candles"),
            prefix: unique_name("wick-startup"),
            ops: [port(), port(), port(), port()],
            http: port(),
            grpc: port(),
        }
    }

    fn command(&self, service: usize, logs: &std::path::Path) -> Command {
        let name = SERVICES[service];
        let mut c = Command::new(service_binary(name).unwrap());
        let log = std::fs::File::create(logs.join(format!("{name}.log"))).unwrap();
        c.env("RUST_LOG", "info")
            .env("WICK__KAFKA__BROKERS", wick_test_support::broker_address())
            .env("WICK__OPS__LISTEN", format!("127.0.0.1:{}", self.ops[service]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let database = database_url(&self.database);
        let redis = format!("redis://{}", wick_test_support::redis_address());
        match name {
            "feed-publisher" => {
                c.args(["simulate", "--instruments", "2", "--rate", "50"])
                    .env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &self.market)
                    .env("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.market));
            }
            "ingest-aggregator" => {
                c.env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &self.market)
                    .env("WICK__KAFKA__MARKET_EVENTS_PARTITIONS", "4")
                    .env("WICK__KAFKA__CANDLES_TOPIC", &self.candles)
                    .env("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.market))
                    .env("WICK__CHECKPOINT__DATABASE_URL", &database);
            }
            "persistence-writer" => {
                c.env("WICK__KAFKA__CANDLES_TOPIC", &self.candles)
                    .env("WICK__KAFKA__DEAD_LETTER_TOPIC", format!("{}-dlq", self.candles))
                    .env("WICK__DATABASE__URL", &database)
                    .env("WICK__REDIS__URL", &redis)
                    .env("WICK__REDIS__KEY_PREFIX", &self.prefix);
            }
            _ => {
                c.env("WICK__KAFKA__CANDLES_TOPIC", &self.candles)
                    .env("WICK__HTTP__LISTEN", format!("127.0.0.1:{}", self.http))
                    .env("WICK__GRPC__LISTEN", format!("127.0.0.1:{}", self.grpc))
                    .env("WICK__DATABASE__URL", &database)
                    .env("WICK__REDIS__URL", &redis)
                    .env("WICK__REDIS__KEY_PREFIX", &self.prefix);
            }
        }
        c
    }
}

/// The last lines of a service's log, without backtrace frames.
fn log_tail(logs: &std::path::Path, name: &str) -> String {
    let text = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
    let frame = |l: &&str| {
        let t = l.trim_start();
        t.starts_with("at ") || t.split_once(':').is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    let lines: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[test]
fn four_services_started_at_the_same_moment_on_fresh_names_all_come_up_ten_times() {
    // Built before the first round, so that the services start within microseconds of each other.
    for name in SERVICES {
        service_binary(name).unwrap();
    }
    let admin = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for round in 0..10 {
        let d = Deployment::new();
        let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("startup").join(unique_name(&format!("round-{round}")));
        std::fs::create_dir_all(&logs).unwrap();
        // Each round another service goes first; the commands are ready before any starts.
        let order: Vec<usize> = (0..4).map(|k| (k + round) % 4).collect();
        let mut commands: Vec<(usize, Command)> = order.iter().map(|&s| (s, d.command(s, &logs))).collect();
        let mut running: Vec<(usize, ServiceProcess)> =
            commands.iter_mut().map(|(s, c)| (*s, ServiceProcess(c.spawn().unwrap()))).collect();

        let deadline = Instant::now() + Duration::from_secs(120);
        let mut ready = [false; 4];
        while !ready.iter().all(|r| *r) {
            for (service, process) in running.iter_mut() {
                if let Ok(Some(status)) = process.0.try_wait() {
                    panic!(
                        "round {round} (order {:?}): {} exited with {status} while starting:\n{}",
                        order.iter().map(|s| SERVICES[*s]).collect::<Vec<_>>(),
                        SERVICES[*service],
                        log_tail(&logs, SERVICES[*service])
                    );
                }
                if !ready[*service] {
                    ready[*service] = http_status(&format!("127.0.0.1:{}", d.ops[*service]), "/health/readyz").ok() == Some(200);
                }
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: not ready within 2 minutes: {:?}",
                SERVICES.iter().zip(ready).filter(|(_, r)| !r).map(|(s, _)| (s, log_tail(&logs, s))).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for (service, process) in running.iter_mut() {
            let status = process.terminate().unwrap();
            assert!(status.success(), "round {round}: {} stops cleanly on SIGTERM: {status}", SERVICES[*service]);
        }
        drop(running);
        admin.block_on(async {
            let (db, connection) = tokio_postgres::connect(&wick_test_support::postgres_config(), tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            db.batch_execute(&format!("DROP DATABASE {}", d.database)).await.unwrap();
        });
    }
}
