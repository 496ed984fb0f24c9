//! The candle store: the schema of `migrations/` (a TimescaleDB hypertable when the extension can
//! be created, plain PostgreSQL range partitioning otherwise; decided once and recorded), and the
//! write path: a binary `COPY` into a staging table, one `INSERT ... ON CONFLICT ... DO UPDATE`
//! that only applies a newer version, and the consumed offsets, all in one transaction.

mod numeric;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::pin_mut;
use postgres_types::{ToSql, Type};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{Client, GenericClient};
use wick_core::time::{civil_from_days, days_from_civil, MICROS_PER_DAY};
use wick_core::{Candle, Interval, Timestamp};

pub use numeric::PgNumeric;

const BASE: &str = include_str!("../../../migrations/0001_base.sql");
const CHECKPOINTS: &str = include_str!("../../../migrations/0003_aggregator_checkpoints.sql");
const CACHE_OFFSETS: &str = include_str!("../../../migrations/0004_writer_cache_offsets.sql");
const COLUMNS: &str = include_str!("../../../migrations/0002_candles_columns.sql");
const PLAIN: &str = include_str!("../../../migrations/0002_candles_plain.sql");
const TIMESCALE: &str = include_str!("../../../migrations/0002_candles_timescale.sql");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database connection pool: {0}")]
    Pool(String),
    #[error("unknown storage mode {0:?} recorded in wick_meta")]
    UnknownMode(String),
    /// TimescaleDB's files are installed, but its library is not preloaded: `CREATE EXTENSION`
    /// ends the connection (FATAL), and would on every retry.
    #[error(
        "CREATE EXTENSION timescaledb ended the connection ({0}): TimescaleDB is installed but not preloaded. \
         Add timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL, \
         or remove TimescaleDB's extension files to store candles with plain PostgreSQL partitioning"
    )]
    TimescaleNotPreloaded(String),
}

/// The server's own message (and SQLSTATE) when there is one: tokio-postgres prints only "db error".
pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// What is wrong with a database setting (`url_key` holding `url`, `schema_key` holding
/// `schema`), for the services' configuration checks; empty when nothing is.
pub fn connection_problems(url_key: &str, url: &str, schema_key: &str, schema: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = url.parse::<tokio_postgres::Config>() {
        problems.push(format!("{url_key} is not a PostgreSQL connection string: {e}"));
    }
    if let Some(schema) = schema.filter(|s| !identifier(s)) {
        problems.push(format!("{schema_key} must be a plain identifier (got {schema:?})"));
    }
    problems
}

/// A plain SQL identifier (letters, digits and `_`, not starting with a digit): safe to splice.
fn identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// A connection pool to `url`, with `schema` (if any) on every connection's search path.
/// Connections that broke (a database restart) are replaced when next taken.
pub fn pool(url: &str, schema: Option<&str>, max_size: usize) -> Result<deadpool_postgres::Pool, StoreError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if let Some(schema) = schema {
        config.options(format!("-c search_path={schema}"));
    }
    config.connect_timeout(Duration::from_secs(5));
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    deadpool_postgres::Pool::builder(manager).max_size(max_size).build().map_err(|e| StoreError::Pool(e.to_string()))
}

/// Where candles live.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StorageMode {
    /// A TimescaleDB hypertable with compression.
    Timescale,
    /// A plain PostgreSQL table partitioned by month of open time.
    Plain,
}

impl StorageMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            StorageMode::Timescale => "timescaledb",
            StorageMode::Plain => "postgresql",
        }
    }
}

/// TimescaleDB settings (ignored on plain PostgreSQL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimescaleSettings {
    /// PostgreSQL interval syntax, e.g. `7 days`.
    pub chunk_interval: String,
    pub compress_after: String,
    /// Drop chunks older than this, if set.
    pub retention: Option<String>,
}

impl Default for TimescaleSettings {
    fn default() -> Self {
        TimescaleSettings { chunk_interval: "7 days".into(), compress_after: "7 days".into(), retention: None }
    }
}

/// The exact statements that create the TimescaleDB schema.
pub fn timescale_sql(settings: &TimescaleSettings) -> String {
    let mut sql = TIMESCALE
        .replace("{columns}", COLUMNS.trim_end())
        .replace("{chunk_interval}", &settings.chunk_interval.replace('\'', ""))
        .replace("{compress_after}", &settings.compress_after.replace('\'', ""));
    if let Some(retention) = &settings.retention {
        sql.push_str(&format!(
            "\nSELECT add_retention_policy('candles', INTERVAL '{}', if_not_exists => TRUE);\n",
            retention.replace('\'', "")
        ));
    }
    sql
}

/// The exact statements that create the plain PostgreSQL schema.
pub fn plain_sql() -> String {
    PLAIN.replace("{columns}", COLUMNS.trim_end())
}

/// Applies the schema, deciding the storage mode the first time (and only then) by trying
/// `CREATE EXTENSION timescaledb`; the decision is recorded in `wick_meta` and logged.
pub async fn migrate(client: &mut Client, settings: &TimescaleSettings) -> Result<StorageMode, StoreError> {
    // Services start together (a Helm release, a test): concurrent `CREATE ... IF NOT EXISTS` can
    // still collide in the catalog, so migrations run one at a time per database.
    client.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).await?;
    let result = migrate_locked(client, settings).await;
    let unlocked = client.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).await;
    let mode = result?;
    unlocked?;
    Ok(mode)
}

/// Applies only Wick's bookkeeping tables (offsets, checkpoints), not the candle schema: for the
/// aggregator, which must not decide the candle store's settings before the writer does.
pub async fn migrate_bookkeeping(client: &mut Client) -> Result<(), StoreError> {
    client.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).await?;
    let result = async {
        ensure_schema(client).await?;
        client.batch_execute(BASE).await?;
        client.batch_execute(CHECKPOINTS).await?;
        client.batch_execute(CACHE_OFFSETS).await?;
        Ok::<(), StoreError>(())
    }
    .await;
    let unlocked = client.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).await;
    result?;
    unlocked?;
    Ok(())
}

/// The advisory lock key of migrations (any constant; "wick" in ASCII).
const MIGRATION_LOCK: i64 = 0x7769_636b;

/// Creates the schema the connection's search path names first (a service's `schema` setting, see
/// [`pool`]) when it does not exist yet, so that a deployment of its own needs no manual step.
/// Runs under the migration lock: services starting together do not race for it.
async fn ensure_schema(client: &Client) -> Result<(), StoreError> {
    let row = client.query_one("SELECT current_schema() IS NULL, current_setting('search_path')", &[]).await?;
    if !row.get::<_, bool>(0) {
        return Ok(());
    }
    let path: String = row.get(1);
    let first = path.split(',').next().unwrap_or_default().trim().trim_matches('"');
    if identifier(first) {
        client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {first}")).await?;
        tracing::info!(schema = first, "created the schema");
    }
    Ok(())
}

async fn migrate_locked(client: &mut Client, settings: &TimescaleSettings) -> Result<StorageMode, StoreError> {
    ensure_schema(client).await?;
    client.batch_execute(BASE).await?;
    client.batch_execute(CHECKPOINTS).await?;
    client.batch_execute(CACHE_OFFSETS).await?;
    let recorded = client.query_opt("SELECT value FROM wick_meta WHERE key = 'storage_mode'", &[]).await?;
    let mode = match recorded.map(|r| r.get::<_, String>(0)) {
        Some(m) if m == StorageMode::Timescale.as_str() => StorageMode::Timescale,
        Some(m) if m == StorageMode::Plain.as_str() => StorageMode::Plain,
        Some(other) => return Err(StoreError::UnknownMode(other)),
        None => {
            let mode = decide(client).await?;
            client
                .execute("INSERT INTO wick_meta (key, value) VALUES ('storage_mode', $1) ON CONFLICT (key) DO NOTHING", &[&mode.as_str()])
                .await?;
            tracing::info!(mode = mode.as_str(), "candle storage decided");
            mode
        }
    };
    let ddl = match mode {
        StorageMode::Timescale => timescale_sql(settings),
        StorageMode::Plain => plain_sql(),
    };
    client.batch_execute(&ddl).await?;
    tracing::info!(mode = mode.as_str(), "candle schema applied");
    Ok(mode)
}

/// What the server says about TimescaleDB before anything is tried.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TimescaleAvailability {
    /// No `timescaledb` extension files on the server.
    NotInstalled,
    /// The files are there, but `shared_preload_libraries` does not name `timescaledb`:
    /// `CREATE EXTENSION timescaledb` would end the connection.
    NotPreloaded,
    /// Installed, and preloaded as far as this role can see (`shared_preload_libraries` is
    /// readable only by superusers and members of `pg_read_all_settings`).
    Installed,
}

/// Whether the TimescaleDB extension is installed on the server and its library preloaded.
pub async fn timescale_availability(client: &impl GenericClient) -> Result<TimescaleAvailability, StoreError> {
    let installed = client.query_opt("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'", &[]).await?.is_some();
    if !installed {
        return Ok(TimescaleAvailability::NotInstalled);
    }
    // pg_settings leaves out the rows this role may not read, where current_setting() would fail.
    let preload = client.query_opt("SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'", &[]).await?;
    Ok(match preload.map(|r| r.get::<_, String>(0)) {
        Some(libraries) if !preloads(&libraries, "timescaledb") => TimescaleAvailability::NotPreloaded,
        _ => TimescaleAvailability::Installed,
    })
}

/// Whether a `shared_preload_libraries` value (`'a, "$libdir/b.so"'`) names `library`.
fn preloads(libraries: &str, library: &str) -> bool {
    libraries.split(',').any(|entry| {
        let entry = entry.trim().trim_matches('"');
        let file = entry.rsplit('/').next().unwrap_or(entry);
        file.strip_suffix(".so").unwrap_or(file) == library
    })
}

/// TimescaleDB when its extension can be created here, plain PostgreSQL otherwise.
async fn decide(client: &mut Client) -> Result<StorageMode, StoreError> {
    match timescale_availability(&*client).await? {
        TimescaleAvailability::NotInstalled => {
            tracing::info!("TimescaleDB is not installed: using plain PostgreSQL partitioning");
            return Ok(StorageMode::Plain);
        }
        // Trying would end the connection (FATAL "must be preloaded"), and so would every retry.
        TimescaleAvailability::NotPreloaded => {
            tracing::warn!(
                "TimescaleDB is installed but not preloaded (shared_preload_libraries does not name timescaledb): \
                 using plain PostgreSQL partitioning. To use TimescaleDB, add timescaledb to shared_preload_libraries \
                 in postgresql.conf, restart PostgreSQL, and start over on a new database (the choice is recorded)"
            );
            return Ok(StorageMode::Plain);
        }
        TimescaleAvailability::Installed => {}
    }
    let tx = client.transaction().await?;
    // A failed CREATE EXTENSION aborts the transaction; the rollback leaves nothing behind.
    match tx.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb").await {
        Ok(()) => {
            tx.commit().await?;
            Ok(StorageMode::Timescale)
        }
        // A role that cannot read shared_preload_libraries only learns it this way.
        Err(e)
            if e.is_closed() || e.as_db_error().is_some_and(|db| db.parsed_severity() == Some(tokio_postgres::error::Severity::Fatal)) =>
        {
            Err(StoreError::TimescaleNotPreloaded(db_message(&e)))
        }
        Err(e) => {
            tracing::warn!(reason = %db_message(&e), "TimescaleDB is installed but its extension cannot be created: using plain PostgreSQL partitioning");
            tx.rollback().await?;
            Ok(StorageMode::Plain)
        }
    }
}

/// Creates the database that `config` names when the server says it does not exist (SQLSTATE
/// 3D000), by connecting to the `postgres` database of the same server. Returns whether it
/// created it.
pub async fn ensure_database(config: &tokio_postgres::Config) -> Result<bool, StoreError> {
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => Ok(false),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            let name = config.get_dbname().unwrap_or("postgres").to_owned();
            let mut admin = config.clone();
            admin.dbname("postgres");
            let (client, connection) = admin.connect(tokio_postgres::NoTls).await?;
            let task = tokio::spawn(connection);
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            let created = match client.batch_execute(&format!("CREATE DATABASE {quoted}")).await {
                Ok(()) => true,
                // Another instance created it first (42P04), or at the same moment: both passed the
                // existence check and the second insert into pg_database hit its unique index (23505).
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                        || e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                {
                    false
                }
                Err(e) => return Err(e.into()),
            };
            drop(client);
            let _ = task.await;
            if created {
                tracing::info!(database = %name, "database created");
            }
            Ok(created)
        }
        Err(e) => Err(e.into()),
    }
}

/// The (year, month) of every candle's open time.
pub fn months_of<'a>(candles: impl IntoIterator<Item = &'a Candle>) -> BTreeSet<(i64, i64)> {
    candles
        .into_iter()
        .map(|c| {
            let (y, m, _) = civil_from_days(c.open_time().as_micros().div_euclid(MICROS_PER_DAY));
            (y, m)
        })
        .collect()
}

/// The statement creating the monthly partition of `(year, month)` if it is missing.
pub fn partition_sql(year: i64, month: i64) -> String {
    let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF candles FOR VALUES FROM ('{year:04}-{month:02}-01 00:00:00+00') TO ('{ny:04}-{nm:02}-01 00:00:00+00')",
        partition_name(year, month)
    )
}

/// Creates the monthly partitions of `months` that are missing (plain PostgreSQL only); safe
/// against writers creating the same month at the same moment, also inside a transaction.
pub async fn ensure_partitions(client: &impl GenericClient, months: &BTreeSet<(i64, i64)>) -> Result<(), StoreError> {
    let months: Vec<(i64, i64)> = months.iter().copied().collect();
    let names: Vec<String> = months.iter().map(|(y, m)| partition_name(*y, *m)).collect();
    let missing =
        client.query("SELECT i FROM unnest($1::text[]) WITH ORDINALITY AS t(name, i) WHERE to_regclass(name) IS NULL", &[&names]).await?;
    for row in missing {
        let Some(&(y, m)) = usize::try_from(row.get::<_, i64>(0) - 1).ok().and_then(|i| months.get(i)) else { continue };
        // `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent creator (the loser fails
        // with 42P07 or 23505, which would abort the caller's transaction): creators take turns,
        // and the later one finds the partition there. The lock is held to the end of the
        // transaction, which only a batch that creates a month pays for.
        client
            .batch_execute(&format!("DO $$ BEGIN PERFORM pg_advisory_xact_lock({PARTITION_LOCK}); {}; END $$", partition_sql(y, m)))
            .await?;
    }
    Ok(())
}

/// The advisory lock key of partition creation ("wickpart" in ASCII).
const PARTITION_LOCK: i64 = 0x7769_636b_7061_7274;

fn partition_name(year: i64, month: i64) -> String {
    format!("candles_y{year:04}m{month:02}")
}

/// The month after `(year, month)`, for creating partitions ahead of time.
pub fn next_month(year: i64, month: i64) -> (i64, i64) {
    let days = days_from_civil(year, month, 1) + 31;
    let (y, m, _) = civil_from_days(days);
    (y, m)
}

fn system_time(t: Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(t.as_micros()).unwrap_or(0))
}

const STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS candles_staging (LIKE candles INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";

fn copy_statement() -> String {
    format!("COPY candles_staging ({COLUMN_NAMES}) FROM STDIN (FORMAT binary)")
}

/// Staging holds each key once ([`write_batch`] keeps the newest version of each); a row changes
/// only for a newer version.
const UPSERT_FROM_STAGING: &str = "INSERT INTO candles SELECT * FROM candles_staging ";

/// The SET clause of the upsert, shared with the naive writers of the benchmark.
pub const UPSERT_SET: &str = "ON CONFLICT (instrument, interval, open_time) DO UPDATE SET \
    close_time = EXCLUDED.close_time, open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, \
    volume = EXCLUDED.volume, quote_volume = EXCLUDED.quote_volume, taker_buy_volume = EXCLUDED.taker_buy_volume, \
    taker_buy_quote_volume = EXCLUDED.taker_buy_quote_volume, trade_count = EXCLUDED.trade_count, \
    first_trade_id = EXCLUDED.first_trade_id, last_trade_id = EXCLUDED.last_trade_id, first_trade_time = EXCLUDED.first_trade_time, \
    last_trade_time = EXCLUDED.last_trade_time, closed = EXCLUDED.closed, version = EXCLUDED.version \
    WHERE candles.version < EXCLUDED.version";

const OFFSETS: &str = "INSERT INTO writer_offsets (topic, partition, next_offset) VALUES ($1, $2, $3) \
    ON CONFLICT (topic, partition) DO UPDATE SET next_offset = GREATEST(writer_offsets.next_offset, EXCLUDED.next_offset)";

/// The column values of one candle row, in the order of the `candles` table (and of [`COLUMNS`]).
#[derive(Debug)]
pub struct CandleRow<'a> {
    instrument: &'a str,
    interval: &'static str,
    closed: bool,
    open_time: SystemTime,
    close_time: SystemTime,
    first_id: Option<PgNumeric>,
    last_id: Option<PgNumeric>,
    first_time: Option<SystemTime>,
    last_time: Option<SystemTime>,
    numbers: [PgNumeric; 8],
    trade_count: i64,
    version: i64,
}

/// The candle columns in table order.
pub const COLUMN_NAMES: &str = "instrument, interval, open_time, close_time, open, high, low, close, volume, quote_volume, \
    taker_buy_volume, taker_buy_quote_volume, trade_count, first_trade_id, last_trade_id, first_trade_time, last_trade_time, closed, version";

impl<'a> CandleRow<'a> {
    pub fn new(c: &'a Candle) -> CandleRow<'a> {
        let id =
            |k: Option<wick_core::TradeKey>| k.map(|k| PgNumeric(wick_core::Decimal::new(i128::from(k.trade_id), 0).unwrap_or_default()));
        let time = |k: Option<wick_core::TradeKey>| k.map(|k| system_time(k.event_time));
        CandleRow {
            instrument: c.instrument().as_str(),
            interval: c.interval().as_str(),
            closed: c.is_closed(),
            open_time: system_time(c.open_time()),
            close_time: system_time(c.close_time()),
            first_id: id(c.first_trade()),
            last_id: id(c.last_trade()),
            first_time: time(c.first_trade()),
            last_time: time(c.last_trade()),
            numbers: [
                c.open(),
                c.high(),
                c.low(),
                c.close(),
                c.volume(),
                c.quote_volume(),
                c.taker_buy_volume(),
                c.taker_buy_quote_volume(),
            ]
            .map(PgNumeric),
            trade_count: i64::try_from(c.trade_count()).unwrap_or(i64::MAX),
            version: i64::try_from(c.version()).unwrap_or(i64::MAX),
        }
    }

    /// The 19 parameters, for `COPY` or an `INSERT`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 19] {
        let [open, high, low, close, volume, quote_volume, buy_volume, buy_quote_volume] = &self.numbers;
        [
            &self.instrument,
            &self.interval,
            &self.open_time,
            &self.close_time,
            open,
            high,
            low,
            close,
            volume,
            quote_volume,
            buy_volume,
            buy_quote_volume,
            &self.trade_count,
            &self.first_id,
            &self.last_id,
            &self.first_time,
            &self.last_time,
            &self.closed,
            &self.version,
        ]
    }
}

/// Writes `candles` (any versions, any order) and the consumed `offsets` (topic, partition, next
/// offset) in one transaction. Returns the number of rows inserted or changed: replays and
/// older versions change nothing.
pub async fn write_batch(
    client: &mut Client,
    mode: StorageMode,
    candles: &[Candle],
    offsets: &[(String, i32, i64)],
) -> Result<u64, StoreError> {
    // The newest version of each key: one upsert cannot change a row twice.
    let mut newest: std::collections::HashMap<(&str, Interval, Timestamp), &Candle> =
        std::collections::HashMap::with_capacity(candles.len());
    for c in candles {
        let held = newest.entry((c.instrument().as_str(), c.interval(), c.open_time())).or_insert(c);
        if held.version() < c.version() {
            *held = c;
        }
    }
    let tx = client.transaction().await?;
    if mode == StorageMode::Plain {
        ensure_partitions(&tx, &months_of(candles)).await?;
    }
    tx.batch_execute(STAGING).await?;
    let sink = tx.copy_in(&copy_statement()).await?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::INT8,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::BOOL,
        Type::INT8,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for c in newest.into_values() {
        let row = CandleRow::new(c);
        writer.as_mut().write(&row.params()).await?;
    }
    writer.finish().await?;
    let changed = tx.execute(&format!("{UPSERT_FROM_STAGING}{UPSERT_SET}"), &[]).await?;
    for (topic, partition, next) in offsets {
        tx.execute(OFFSETS, &[topic, partition, next]).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Stores the checkpoint of one partition, replacing the previous one unless that one is further
/// on: during a rolling re-shard an instance that has lost a partition may still write its last
/// checkpoint after the new owner wrote a newer one, and a checkpoint never goes back. Whether it
/// was stored (`false`: a newer one exists and is kept).
pub async fn save_checkpoint(
    client: &impl GenericClient,
    topic: &str,
    partition: i32,
    next_offset: i64,
    state: &[u8],
) -> Result<bool, StoreError> {
    let stored = client
        .execute(
            "INSERT INTO aggregator_checkpoints (topic, partition, next_offset, state) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, state = EXCLUDED.state, written_at = now() \
             WHERE aggregator_checkpoints.next_offset <= EXCLUDED.next_offset",
            &[&topic, &partition, &next_offset, &state],
        )
        .await?;
    Ok(stored == 1)
}

/// The checkpoint of one partition: its next offset and state.
pub async fn load_checkpoint(client: &impl GenericClient, topic: &str, partition: i32) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    let row = client
        .query_opt("SELECT next_offset, state FROM aggregator_checkpoints WHERE topic = $1 AND partition = $2", &[&topic, &partition])
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Records that the L2 cache holds everything from the partitions' records before these offsets.
pub async fn save_cache_offsets(client: &impl GenericClient, topic: &str, offsets: &[(i32, i64)]) -> Result<(), StoreError> {
    for (partition, next) in offsets {
        client
            .execute(
                "UPDATE writer_offsets SET cache_next_offset = GREATEST(coalesce(cache_next_offset, 0), $3) WHERE topic = $1 AND partition = $2",
                &[&topic, partition, next],
            )
            .await?;
    }
    Ok(())
}

/// Where the writer resumes: per partition, the committed offset, or the cache's when the cache
/// is behind (and `with_cache`).
pub async fn load_resume_offsets(client: &Client, topic: &str, with_cache: bool) -> Result<Vec<(i32, i64)>, StoreError> {
    let rows = client
        .query("SELECT partition, next_offset, cache_next_offset FROM writer_offsets WHERE topic = $1 ORDER BY partition", &[&topic])
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (p, next, cache): (i32, i64, Option<i64>) = (r.get(0), r.get(1), r.get(2));
            (p, if with_cache { cache.unwrap_or(0).min(next) } else { next })
        })
        .collect())
}

/// The next offset to consume of every partition of `topic` the writer has committed.
pub async fn load_offsets(client: &Client, topic: &str) -> Result<Vec<(i32, i64)>, StoreError> {
    let rows = client.query("SELECT partition, next_offset FROM writer_offsets WHERE topic = $1 ORDER BY partition", &[&topic]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_settings_are_checked() {
        assert!(
            connection_problems("database.url", "postgres://postgres@127.0.0.1:5432/wick", "database.schema", Some("wick_1")).is_empty()
        );
        let problems = connection_problems("database.url", "host=127.0.0.1 port=notaport", "database.schema", Some("1; DROP"));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].starts_with("database.schema must be a plain identifier"));
    }

    #[test]
    fn partitions_cover_whole_months() {
        assert_eq!(
            partition_sql(2024, 12),
            "CREATE TABLE IF NOT EXISTS candles_y2024m12 PARTITION OF candles FOR VALUES FROM ('2024-12-01 00:00:00+00') TO ('2025-01-01 00:00:00+00')"
        );
        assert_eq!(next_month(2024, 1), (2024, 2));
        assert_eq!(next_month(2024, 12), (2025, 1));
    }

    /// The TimescaleDB branch cannot run here (the extension is not packaged); its exact SQL is
    /// pinned instead. `create_hypertable(relation, time_column, chunk_time_interval =>,
    /// if_not_exists =>)`, `ALTER TABLE ... SET (timescaledb.compress, ...)` and
    /// `add_compression_policy(..., if_not_exists =>)` are the TimescaleDB 2.x API on PostgreSQL
    /// 15 to 17.
    #[test]
    fn timescale_sql_is_exactly_this() {
        let sql = timescale_sql(&TimescaleSettings {
            chunk_interval: "1 day".into(),
            compress_after: "14 days".into(),
            retention: Some("365 days".into()),
        });
        let statements: Vec<String> = sql
            .split(';')
            .map(|s| s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n").trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(statements.len(), 5, "{statements:#?}");
        assert!(
            statements[0].starts_with("CREATE TABLE IF NOT EXISTS candles (")
                && statements[0].contains("PRIMARY KEY (instrument, interval, open_time)")
        );
        assert!(!statements[0].contains("PARTITION BY"));
        assert_eq!(
            statements[1],
            "SELECT create_hypertable('candles', 'open_time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE)"
        );
        assert_eq!(
            statements[2].split_whitespace().collect::<Vec<_>>().join(" "),
            "ALTER TABLE candles SET ( timescaledb.compress, timescaledb.compress_segmentby = 'instrument, interval', timescaledb.compress_orderby = 'open_time DESC' )"
        );
        assert_eq!(statements[3], "SELECT add_compression_policy('candles', INTERVAL '14 days', if_not_exists => TRUE)");
        assert_eq!(statements[4], "SELECT add_retention_policy('candles', INTERVAL '365 days', if_not_exists => TRUE)");
        assert!(!timescale_sql(&TimescaleSettings::default()).contains("add_retention_policy"));
    }
}
