//! Helpers shared by Wick's integration tests: per-test topics, database schemas and Redis key
//! prefixes; waiting for a condition; producing and reading records; a private broker process.
//!
//! Tests run against the real services that `cargo xtask stack up` starts. An unreachable service
//! fails the test with a message naming it; nothing is ever skipped.

pub mod browser;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::{Record, RecordAndOffset};

/// The broker tests use: `WICK_TEST_KAFKA` or the stack's `127.0.0.1:9092`.
pub fn broker_address() -> String {
    std::env::var("WICK_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// PostgreSQL for tests: `WICK_TEST_POSTGRES` or the stack's server.
pub fn postgres_config() -> String {
    std::env::var("WICK_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into())
}

/// Redis for tests: `WICK_TEST_REDIS` (host:port) or the stack's `127.0.0.1:6379`.
pub fn redis_address() -> String {
    std::env::var("WICK_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// A name unique to this test run and call: `prefix-<pid>-<counter>-<nanos>`, valid as a topic,
/// schema (lower case, `_` instead of `-` via [`unique_ident`]) or key prefix.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// [`unique_name`] as an SQL identifier.
pub fn unique_ident(prefix: &str) -> String {
    unique_name(prefix).replace('-', "_").to_lowercase()
}

/// Connects to the test broker, failing with a message that names it when it does not answer.
pub async fn kafka() -> Client {
    kafka_at(&broker_address()).await
}

pub async fn kafka_at(address: &str) -> Client {
    match wick_kafka::connect(&[address.to_owned()], Duration::from_secs(10)).await {
        Ok(client) => client,
        Err(e) => panic!("Kafka broker at {address} is unreachable ({e}); start the stack with `cargo xtask stack up`"),
    }
}

/// Creates a topic with a unique name and returns the name.
pub async fn topic(client: &Client, prefix: &str, partitions: i32) -> String {
    let name = unique_name(prefix);
    let spec = wick_kafka::TopicSpec { name: name.clone(), partitions };
    wick_kafka::ensure_topics(client, &broker_address(), &[spec]).await.unwrap_or_else(|e| panic!("creating test topic {name}: {e}"));
    name
}

pub async fn partition(client: &Client, topic: &str, partition: i32) -> PartitionClient {
    client
        .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry)
        .await
        .unwrap_or_else(|e| panic!("partition client for {topic}/{partition}: {e}"))
}

/// A record with a value and no key.
pub fn record(value: impl Into<Vec<u8>>) -> Record {
    Record { key: None, value: Some(value.into()), headers: Default::default(), timestamp: chrono::Utc::now() }
}

/// Produces `values` as one batch and returns their offsets.
pub async fn produce(client: &PartitionClient, values: impl IntoIterator<Item = Vec<u8>>) -> Vec<i64> {
    let records: Vec<Record> = values.into_iter().map(record).collect();
    client.produce(records, Compression::NoCompression).await.unwrap_or_else(|e| panic!("producing to {}: {e}", client.topic()))
}

/// Reads from `offset` until the high watermark that the fetches report, or until `timeout`.
/// Returns every record seen and the last high watermark.
pub async fn read_to_end(client: &PartitionClient, mut offset: i64, timeout: Duration) -> Result<(Vec<RecordAndOffset>, i64)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let (records, high_watermark) =
            client.fetch_records(offset, 1..1_048_576, 100).await.with_context(|| format!("fetching {} from {offset}", client.topic()))?;
        if let Some(last) = records.last() {
            offset = last.offset + 1;
        }
        out.extend(records);
        if offset >= high_watermark {
            return Ok((out, high_watermark));
        }
        if Instant::now() > deadline {
            bail!(
                "read {} records of {} from offset {offset}: high watermark {high_watermark} not reached in {timeout:?}",
                out.len(),
                client.topic()
            );
        }
    }
}

/// An answer of [`http_server`]: status, extra headers, JSON body.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn json(status: u16, body: impl Into<String>) -> HttpAnswer {
        HttpAnswer { status, headers: Vec::new(), body: body.into() }
    }
}

/// A local HTTP/1.1 server standing in for an exchange's REST API: one request per connection
/// (`Connection: close`), each answered by `answer(target)` (the request target, path and query),
/// which may take its time. Returns the base URL.
pub async fn http_server<F, Fut>(answer: F) -> String
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HttpAnswer> + Send,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let target = String::from_utf8_lossy(&request).split(' ').nth(1).unwrap_or("/").to_owned();
                let HttpAnswer { status, headers, body } = answer(target).await;
                let mut response = format!(
                    "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&body);
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    url
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A schema of its own in the test database, dropped by the caller when done (or left for
/// inspection when the test fails).
pub async fn postgres_schema() -> (tokio_postgres::Client, String) {
    let config = postgres_config();
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL ({config}) is unreachable ({e}); start the stack with `cargo xtask stack up`"));
    tokio::spawn(connection);
    let schema = unique_ident("wick_test");
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap_or_else(|e| panic!("creating schema {schema}: {e}"));
    (client, schema)
}

/// A Redis key prefix of its own, after checking that Redis answers `PING`.
pub fn redis_prefix() -> String {
    let address = redis_address();
    if let Err(e) = redis_ping(&address) {
        panic!("Redis at {address} is unreachable ({e}); start the stack with `cargo xtask stack up`");
    }
    format!("{}:", unique_name("wick-test"))
}

/// Sends `PING` over RESP and expects `+PONG`.
pub fn redis_ping(address: &str) -> Result<()> {
    let addr = address.to_socket_addrs()?.next().context("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf)?;
    if &buf != b"+PONG\r\n" {
        bail!("unexpected answer {:?}", String::from_utf8_lossy(&buf));
    }
    Ok(())
}

/// The tansu binary: on `PATH` or in `~/.cargo/bin`.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("WICK_TANSU") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain([Path::new(&home).join(".cargo/bin")])
        .collect::<Vec<_>>();
    candidates
        .into_iter()
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
        .context("the tansu broker is not installed: run `cargo xtask stack up` (it installs it)")
}

/// Where a private broker keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageEngine {
    /// `sqlite://` in the broker's own directory: what the stack uses.
    Sqlite,
    /// `memory://`: loses records when a fetch starts mid-batch (tansu 0.6.0); kept to show that
    /// the conformance tests catch it.
    Memory,
}

impl StorageEngine {
    /// `WICK_CONFORMANCE_ENGINE=memory` selects the memory engine; the default is SQLite.
    pub fn from_env() -> StorageEngine {
        match std::env::var("WICK_CONFORMANCE_ENGINE").as_deref() {
            Ok("memory") => StorageEngine::Memory,
            _ => StorageEngine::Sqlite,
        }
    }
}

/// A tansu broker of the test's own, on a free port, that the test can restart.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    engine: StorageEngine,
}

impl BrokerProcess {
    pub fn start(engine: StorageEngine) -> Result<BrokerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(unique_name("wick-broker"));
        std::fs::create_dir_all(&dir)?;
        let mut broker = BrokerProcess { child: None, dir, port, engine };
        broker.spawn()?;
        Ok(broker)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let engine = match self.engine {
            StorageEngine::Sqlite => "sqlite://tansu.db".to_owned(),
            StorageEngine::Memory => "memory://tansu/".to_owned(),
        };
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("broker.log"))?;
        let child = Command::new(tansu_binary()?)
            .current_dir(&self.dir)
            .args(["broker", "--storage-engine", &engine, "--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting tansu")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!("private tansu broker ({engine}) on port {} did not start ({exited:?}): {}", self.port, tail.join(" | "));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the broker (SIGKILL, no clean shutdown) and starts it again on the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Kills the broker (SIGKILL): it stays down until [`BrokerProcess::start_again`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts a stopped broker again on the same data and port.
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free at the time of the call.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, what: &str, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!("{what} on port {port} did not start ({exited:?}): {}", tail.join(" | "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, a free port), so that a
/// test can stop and restart a real server without disturbing the others. As root, the server
/// runs as the `postgres` user (PostgreSQL refuses to run as root).
#[derive(Debug)]
pub struct PostgresProcess {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PostgresProcess {
    pub fn start() -> Result<PostgresProcess> {
        PostgresProcess::start_with_extension_files(&[])
    }

    /// A private server whose extension directory holds, beside the installed extensions,
    /// `extension_files` (file name, contents), e.g. a `NAME.control` and its `NAME--1.0.sql`.
    /// PostgreSQL finds its share directory relative to its own executable, so the server runs
    /// from a private copy of the installation (the binaries copied, everything else linked):
    /// the files are seen by this server only, never by the shared one.
    pub fn start_with_extension_files(extension_files: &[(&str, &str)]) -> Result<PostgresProcess> {
        let root = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
            .context("PostgreSQL server binaries (/usr/lib/postgresql) are not installed")?
            .flatten()
            .map(|e| e.path())
            .collect();
        versions.sort_by_key(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0));
        let mut bin = versions.pop().context("no PostgreSQL version under /usr/lib/postgresql")?.join("bin");
        let dir = std::env::temp_dir().join(unique_name("wick-pg"));
        std::fs::create_dir_all(&dir)?;
        if !extension_files.is_empty() {
            bin = private_installation(&bin, &dir.join("install"), extension_files)?;
        }
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if as_postgres {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status()?;
            if !status.success() {
                bail!("chown of {} to postgres failed", dir.display());
            }
        }
        let pg = PostgresProcess { bin, dir, port: free_port()?, as_postgres };
        let data = pg.dir.join("data");
        let out = pg.command("initdb").arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]).output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        pg.start_server()?;
        Ok(pg)
    }

    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            c
        } else {
            Command::new(self.bin.join(program))
        }
    }

    fn start_server(&self) -> Result<()> {
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", self.port, self.dir.display());
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-w", "start"])
            .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            bail!("pg_ctl start failed: {} {log}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server at once (`immediate`: like a crash, no checkpoint).
    pub fn stop(&self) -> Result<()> {
        let out = self.command("pg_ctl").arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "-w", "stop"]).output()?;
        if !out.status.success() {
            bail!("pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn start_again(&self) -> Result<()> {
        self.start_server()
    }
}

/// Mirrors the installation of the server binaries in `bin` under `tree` (same absolute paths
/// below it, so the relative share and library paths PostgreSQL computes from its executable land
/// in the mirror), with `extension_files` added to the extension directory. Returns the mirror's
/// bin directory.
fn private_installation(bin: &Path, tree: &Path, extension_files: &[(&str, &str)]) -> Result<PathBuf> {
    let pg_config = |what: &str| -> Result<PathBuf> {
        let out = Command::new(bin.join("pg_config")).arg(what).output().context("running pg_config")?;
        if !out.status.success() {
            bail!("pg_config {what} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    let mirror = |p: &Path| tree.join(p.strip_prefix("/").unwrap_or(p));
    let (bindir, sharedir, pkglibdir) = (pg_config("--bindir")?, pg_config("--sharedir")?, pg_config("--pkglibdir")?);
    // Copies, not links: PostgreSQL resolves symbolic links to find its real location.
    std::fs::create_dir_all(mirror(&bindir))?;
    for program in ["postgres", "initdb", "pg_ctl"] {
        std::fs::copy(bindir.join(program), mirror(&bindir).join(program)).with_context(|| format!("copying {program}"))?;
    }
    if let Some(parent) = mirror(&pkglibdir).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::os::unix::fs::symlink(&pkglibdir, mirror(&pkglibdir))?;
    let extension_dir = mirror(&sharedir).join("extension");
    std::fs::create_dir_all(&extension_dir)?;
    for entry in std::fs::read_dir(&sharedir)?.flatten() {
        if entry.file_name() != "extension" {
            std::os::unix::fs::symlink(entry.path(), mirror(&sharedir).join(entry.file_name()))?;
        }
    }
    for entry in std::fs::read_dir(sharedir.join("extension"))?.flatten() {
        std::os::unix::fs::symlink(entry.path(), extension_dir.join(entry.file_name()))?;
    }
    for (name, contents) in extension_files {
        let path = extension_dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(mirror(&bindir))
}

impl Drop for PostgresProcess {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-node Redis cluster of the test's own (no replicas), so a test can stop one node.
#[derive(Debug)]
pub struct RedisClusterProcess {
    dir: PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl RedisClusterProcess {
    pub fn start() -> Result<RedisClusterProcess> {
        let dir = std::env::temp_dir().join(unique_name("wick-redis-cluster"));
        std::fs::create_dir_all(&dir)?;
        let ports = vec![free_port()?, free_port()?, free_port()?];
        let mut cluster = RedisClusterProcess { dir, children: ports.iter().map(|_| None).collect(), ports };
        for i in 0..3 {
            cluster.start_node(i)?;
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()?;
        if !out.status.success() {
            bail!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        cluster.wait_ok()?;
        Ok(cluster)
    }

    fn start_node(&mut self, i: usize) -> Result<()> {
        let port = self.ports[i];
        let node_dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir)?;
        let log = node_dir.join("redis.log");
        let mut child = Command::new("redis-server")
            .current_dir(&node_dir)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no", "--logfile"])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (install redis-server, or run `cargo xtask stack up`)")?;
        wait_for_port(port, "redis-server", &mut child, &log)?;
        self.children[i] = Some(child);
        Ok(())
    }

    fn wait_ok(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.ports.iter().all(|p| {
                Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the private Redis cluster on {:?} did not become healthy", self.ports);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&node=127.0.0.1:<p3>`.
    pub fn url(&self) -> String {
        format!("redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}", self.ports[0], self.ports[1], self.ports[2])
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (it rejoins from its nodes.conf; its keys are gone) and waits for a
    /// healthy cluster.
    pub fn restart_node(&mut self, i: usize) -> Result<()> {
        self.start_node(i)?;
        self.wait_ok()
    }
}

impl Drop for RedisClusterProcess {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The status of `GET path` on `address` (HTTP/1.0, no body read), for health checks of a service
/// running as a process.
pub fn http_status(address: &str, path: &str) -> Result<u16> {
    let addr = address.to_socket_addrs()?.next().context("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12).and_then(|s| s.parse().ok()).with_context(|| format!("not an HTTP answer: {text:?}"))
}

/// Waits until `http://address/health/readyz` answers 200.
pub async fn wait_ready(address: &str, timeout: Duration) -> Result<()> {
    let address = address.to_owned();
    wait_until(&format!("{address} is ready"), timeout, || {
        let address = address.clone();
        async move { tokio::task::spawn_blocking(move || http_status(&address, "/health/readyz")).await.ok().and_then(Result::ok) == Some(200) }
    })
    .await
}

/// A service process that is killed when the test lets go of it, also when the test fails
/// half-way (a panicking test must not leave a service running against shared topics).
#[derive(Debug)]
pub struct ServiceProcess(pub Child);

impl ServiceProcess {
    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, and wait for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.0.id());
        }
        Ok(self.0.wait()?)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill();
        }
    }
}

/// A single Redis server of the test's own on a free port (nothing kept on disk), that a test
/// can stop and start again on the same port.
#[derive(Debug)]
pub struct RedisProcess {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RedisProcess {
    pub fn start() -> Result<RedisProcess> {
        let dir = std::env::temp_dir().join(unique_name("wick-redis"));
        std::fs::create_dir_all(&dir)?;
        let mut redis = RedisProcess { dir, port: free_port()?, child: None };
        redis.start_again()?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): its keys are gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server on the same port (empty).
    pub fn start_again(&mut self) -> Result<()> {
        let log = self.dir.join("redis.log");
        let mut child = Command::new("redis-server")
            .current_dir(&self.dir)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile"])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (install redis-server, or run `cargo xtask stack up`)")?;
        wait_for_port(self.port, "redis-server", &mut child, &log)?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The path of the workspace binary `name` (`feed-publisher`, `ingest-aggregator`,
/// `persistence-writer`, `query-gateway`), built first with `cargo build` for the profile and
/// target directory the calling test was built with, so that a test of another package never
/// runs a stale or missing binary. Builds once per test process.
pub fn service_binary(name: &str) -> Result<PathBuf> {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.is_none() {
        // A test executable lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe()?;
        let profile_dir = exe.parent().and_then(Path::parent).context("the test executable is not in <target>/<profile>/deps")?;
        let target_dir = profile_dir.parent().context("no target directory")?;
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--quiet"]).env("CARGO_TARGET_DIR", target_dir).current_dir(env!("CARGO_MANIFEST_DIR"));
        for package in ["feed-publisher", "ingest-aggregator", "persistence-writer", "query-gateway"] {
            cargo.args(["-p", package, "--bin", package]);
        }
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(other) => {
                cargo.args(["--profile", other]);
            }
            None => bail!("no profile directory in {}", exe.display()),
        }
        let status = cargo.status().context("running cargo build for the service binaries")?;
        if !status.success() {
            bail!("cargo build of the service binaries failed: {status}");
        }
        *built = Some(profile_dir.to_path_buf());
    }
    let path = built.as_ref().map(|dir| dir.join(name)).context("not built")?;
    if !path.is_file() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}
