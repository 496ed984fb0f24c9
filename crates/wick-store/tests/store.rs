//! The store against the real PostgreSQL (plain branch; TimescaleDB is not packaged here, so its
//! SQL is pinned by unit tests): exact decimals, version guard, idempotent replays, offsets in the
//! same transaction, partitions across a month boundary, the storage decision made once, a
//! TimescaleDB that is installed but not preloaded (on a private server whose fake `timescaledb`
//! extension ends the connection, as the real one does), and concurrent creators of databases,
//! schemas and partitions.

use proptest::prelude::*;
use tokio_postgres::Client;
use wick_core::{Candle, Decimal, Instrument, Interval, TakerSide, Timestamp, Trade};
use wick_store::{PgNumeric, StorageMode, TimescaleSettings};

async fn store() -> (Client, String) {
    let (client, schema) = wick_test_support::postgres_schema().await;
    client.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
    (client, schema)
}

fn trade(id: u64, rfc3339: &str, price: &str, qty: &str) -> Trade {
    let t = Timestamp::parse_rfc3339(rfc3339).unwrap();
    Trade::new(Instrument::new("BINANCE:BTC-USDT").unwrap(), id, price.parse().unwrap(), qty.parse().unwrap(), TakerSide::Buy, t, t)
        .unwrap()
}

fn candle(trades: &[Trade]) -> Candle {
    let mut c = Candle::from_trade(Interval::M1, &trades[0]).unwrap();
    for t in &trades[1..] {
        c.apply(t).unwrap();
    }
    c
}

async fn stored(client: &Client) -> Vec<(String, String, String, String, String, i64, bool)> {
    client
        .query("SELECT open::text, high::text, volume::text, quote_volume::text, first_trade_id::text, version, closed FROM candles ORDER BY open_time", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
        .collect()
}

#[tokio::test]
async fn the_storage_decision_is_made_once_and_recorded() {
    let (mut client, _schema) = store().await;
    let settings = TimescaleSettings::default();
    assert_eq!(wick_store::migrate(&mut client, &settings).await.unwrap(), StorageMode::Plain);
    assert_eq!(wick_store::migrate(&mut client, &settings).await.unwrap(), StorageMode::Plain, "migrations are idempotent");
    let recorded: String = client.query_one("SELECT value FROM wick_meta WHERE key = 'storage_mode'", &[]).await.unwrap().get(0);
    assert_eq!(recorded, "postgresql");
    let partitioned: String = client
        .query_one("SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'candles'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitioned, "r", "range-partitioned by open time");
    // A recorded decision is followed, not re-taken: this server has no TimescaleDB, so the
    // recorded TimescaleDB schema fails instead of silently falling back.
    client.execute("UPDATE wick_meta SET value = 'timescaledb' WHERE key = 'storage_mode'", &[]).await.unwrap();
    let err = wick_store::migrate(&mut client, &settings).await.unwrap_err().to_string();
    assert!(err.contains("create_hypertable"), "{err}");
}

#[tokio::test]
async fn upserts_are_exact_version_guarded_and_idempotent_with_their_offsets() {
    let (mut client, _schema) = store().await;
    let mode = wick_store::migrate(&mut client, &TimescaleSettings::default()).await.unwrap();
    let t1 = trade(18_000_000_000_000_000_001, "2026-09-21T12:00:01Z", "63250.10", "0.00001");
    let t2 = trade(18_000_000_000_000_000_002, "2026-09-21T12:00:30Z", "63260.50", "1.50");
    let old = candle(std::slice::from_ref(&t1));
    let mut new = candle(&[t1, t2]);
    new.mark_closed();
    let offsets = |n: i64| vec![("candles-completed".to_owned(), 3, n)];

    assert_eq!(wick_store::write_batch(&mut client, mode, std::slice::from_ref(&old), &offsets(10)).await.unwrap(), 1);
    // Both versions in one batch, newest first or last: the newest wins.
    assert_eq!(wick_store::write_batch(&mut client, mode, &[new.clone(), old.clone()], &offsets(12)).await.unwrap(), 1);
    // version = 2 x trade count + 1 once final.
    let expected = vec![(
        "63250.10".to_owned(),
        "63260.50".to_owned(),
        "1.50001".to_owned(),
        "94891.3825010".to_owned(),
        "18000000000000000001".to_owned(),
        5,
        true,
    )];
    assert_eq!(stored(&client).await, expected);
    // An older version and a replay change nothing; offsets never move back.
    assert_eq!(wick_store::write_batch(&mut client, mode, &[old], &offsets(11)).await.unwrap(), 0);
    assert_eq!(wick_store::write_batch(&mut client, mode, &[new], &offsets(12)).await.unwrap(), 0);
    assert_eq!(stored(&client).await, expected);
    assert_eq!(wick_store::load_offsets(&client, "candles-completed").await.unwrap(), vec![(3, 12)]);
}

#[tokio::test]
async fn a_batch_across_a_month_boundary_creates_both_partitions() {
    let (mut client, schema) = store().await;
    let mode = wick_store::migrate(&mut client, &TimescaleSettings::default()).await.unwrap();
    let january = candle(&[trade(1, "2024-01-31T23:59:59.999999Z", "1", "1")]);
    let february = candle(&[trade(2, "2024-02-01T00:00:00Z", "2", "1")]);
    assert_eq!(wick_store::write_batch(&mut client, mode, &[january, february], &[]).await.unwrap(), 2);
    let parts: Vec<String> = client
        .query("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1", &[&schema])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(parts, vec!["candles_y2024m01".to_owned(), "candles_y2024m02".to_owned()]);
    let counts: Vec<i64> = client
        .query("SELECT count(*) FROM candles_y2024m01 UNION ALL SELECT count(*) FROM candles_y2024m02", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(counts, vec![1, 1]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The binary numeric encoding reads back as the same decimal text, scale included.
    #[test]
    fn numeric_encoding_is_exact(coefficient in any::<i64>(), wide in any::<bool>(), scale in 0u8..=30) {
        let c = if wide { i128::from(coefficient) * 1_000_000_000_000 + 7 } else { i128::from(coefficient) };
        let d = Decimal::new(c, scale).unwrap();
        let text: String = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let (client, _) = store().await;
            client.query_one("SELECT $1::numeric::text", &[&PgNumeric(d)]).await.unwrap().get(0)
        });
        prop_assert_eq!(text, d.to_string());
    }
}

/// A `timescaledb` extension whose installation ends its own connection, as TimescaleDB's does
/// when its library is not preloaded (FATAL "must be preloaded"). Trusted, so that a role without
/// superuser rights may create it too.
const FAKE_TIMESCALEDB: [(&str, &str); 2] = [
    ("timescaledb.control", "comment = 'stands in for TimescaleDB without its preloaded library'\ndefault_version = '0.0.1'\nrelocatable = false\ntrusted = true\n"),
    ("timescaledb--0.0.1.sql", "SELECT pg_terminate_backend(pg_backend_pid());\n"),
];

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn timescaledb_installed_but_not_preloaded_falls_back_to_plain_postgresql() {
    let pg = tokio::task::spawn_blocking(|| wick_test_support::PostgresProcess::start_with_extension_files(&FAKE_TIMESCALEDB))
        .await
        .unwrap()
        .unwrap();
    let mut client = connect(&pg.url("postgres")).await;
    assert_eq!(wick_store::timescale_availability(&client).await.unwrap(), wick_store::TimescaleAvailability::NotPreloaded);
    // What the decision avoids: creating the extension ends the connection.
    let doomed = connect(&pg.url("postgres")).await;
    let err = doomed.batch_execute("CREATE EXTENSION timescaledb").await.unwrap_err();
    assert_eq!(err.as_db_error().and_then(|e| e.parsed_severity()), Some(tokio_postgres::error::Severity::Fatal), "{err:?}");
    assert!(doomed.batch_execute("SELECT 1").await.unwrap_err().is_closed(), "the fake extension ends the connection");

    assert_eq!(wick_store::migrate(&mut client, &TimescaleSettings::default()).await.unwrap(), StorageMode::Plain);
    let partitioned: String = client
        .query_one("SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'candles'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitioned, "r");
    let extensions: i64 = client.query_one("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'", &[]).await.unwrap().get(0);
    assert_eq!(extensions, 0);
    assert!(!client.is_closed(), "the migration's connection lives on");

    // The stack's own server has no TimescaleDB files at all: not touched by this test.
    let (shared, schema) = wick_test_support::postgres_schema().await;
    assert_eq!(wick_store::timescale_availability(&shared).await.unwrap(), wick_store::TimescaleAvailability::NotInstalled);
    shared.batch_execute(&format!("DROP SCHEMA {schema}")).await.unwrap();
}

#[tokio::test]
async fn a_role_that_cannot_see_the_preload_setting_gets_an_error_naming_it_at_once() {
    let pg = tokio::task::spawn_blocking(|| wick_test_support::PostgresProcess::start_with_extension_files(&FAKE_TIMESCALEDB))
        .await
        .unwrap()
        .unwrap();
    let admin = connect(&pg.url("postgres")).await;
    admin.batch_execute("CREATE ROLE wick_app LOGIN").await.unwrap();
    admin.batch_execute("CREATE DATABASE wick_app OWNER wick_app").await.unwrap();
    let url = pg.url("wick_app").replace("postgres@", "wick_app@");
    let mut client = connect(&url).await;
    // shared_preload_libraries is hidden from this role: only trying tells.
    assert_eq!(wick_store::timescale_availability(&client).await.unwrap(), wick_store::TimescaleAvailability::Installed);
    let err = wick_store::migrate(&mut client, &TimescaleSettings::default()).await.unwrap_err();
    assert!(matches!(err, wick_store::StoreError::TimescaleNotPreloaded(_)), "{err}");
    assert!(err.to_string().contains("shared_preload_libraries"), "{err}");
    // Nothing was recorded: an operator who fixes the server gets TimescaleDB on the next start.
    let mut again = connect(&url).await;
    let mode: Option<String> =
        again.query_opt("SELECT value FROM wick_meta WHERE key = 'storage_mode'", &[]).await.unwrap().map(|r| r.get(0));
    assert_eq!(mode, None);
    assert!(matches!(
        wick_store::migrate(&mut again, &TimescaleSettings::default()).await,
        Err(wick_store::StoreError::TimescaleNotPreloaded(_))
    ));
}

#[tokio::test]
async fn databases_created_by_many_at_the_same_moment_exist_once_and_nobody_fails() {
    let admin = connect(&wick_test_support::postgres_config()).await;
    for round in 0..10 {
        let name = wick_test_support::unique_ident("wick_race");
        let mut config: tokio_postgres::Config = wick_test_support::postgres_config().parse().unwrap();
        config.dbname(&name);
        let creators: Vec<_> = (0..6)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move { wick_store::ensure_database(&config).await })
            })
            .collect();
        let mut created = 0;
        for c in creators {
            match c.await.unwrap() {
                Ok(true) => created += 1,
                Ok(false) => {}
                Err(e) => panic!("round {round}: a concurrent creator of {name} failed: {e}"),
            }
        }
        assert_eq!(created, 1, "round {round}: exactly one created {name}");
        admin.batch_execute(&format!("DROP DATABASE {name}")).await.unwrap();
    }
}

#[tokio::test]
async fn schema_and_partitions_created_by_many_at_the_same_moment_never_fail_a_writer() {
    for round in 0..10 {
        let (admin, schema) = store().await;
        let mut connections = Vec::new();
        for _ in 0..4 {
            let client = connect(&wick_test_support::postgres_config()).await;
            client.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
            connections.push(client);
        }
        // The migrations, all at once.
        let migrations: Vec<_> = connections
            .into_iter()
            .map(|mut client| {
                tokio::spawn(async move {
                    let mode = wick_store::migrate(&mut client, &TimescaleSettings::default()).await;
                    (client, mode)
                })
            })
            .collect();
        let mut connections = Vec::new();
        for m in migrations {
            let (client, mode) = m.await.unwrap();
            assert_eq!(mode.unwrap_or_else(|e| panic!("round {round}: {e}")), StorageMode::Plain);
            connections.push(client);
        }
        // Then a batch of the same new month from each, in transactions that overlap.
        let writes: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(k, mut client)| {
                tokio::spawn(async move {
                    let c = candle(&[trade(k as u64 + 1, &format!("2031-01-15T12:0{k}:00Z"), "1", "1")]);
                    wick_store::write_batch(&mut client, StorageMode::Plain, &[c], &[]).await
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap_or_else(|e| panic!("round {round}: a writer failed: {e}"));
        }
        let rows: i64 = admin.query_one(&format!("SELECT count(*) FROM {schema}.candles"), &[]).await.unwrap().get(0);
        assert_eq!(rows, 4, "round {round}");
        admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }
}

#[tokio::test]
async fn a_schema_the_setting_names_is_created_when_missing_by_either_service() {
    let (admin, _schema) = wick_test_support::postgres_schema().await;
    let url = wick_test_support::postgres_config();
    for bookkeeping_only in [true, false] {
        let fresh = wick_test_support::unique_ident("wick_fresh");
        admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {fresh} CASCADE")).await.unwrap();
        let pool = wick_store::pool(&url, Some(&fresh), 2).unwrap();
        let mut db = pool.get().await.unwrap();
        if bookkeeping_only {
            wick_store::migrate_bookkeeping(&mut db).await.unwrap();
        } else {
            wick_store::migrate(&mut db, &TimescaleSettings::default()).await.unwrap();
        }
        let tables: i64 = admin
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'aggregator_checkpoints'",
                &[&fresh],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables, 1, "the bookkeeping tables are in {fresh}");
        drop(db);
        admin.batch_execute(&format!("DROP SCHEMA {fresh} CASCADE")).await.unwrap();
    }
}

/// A rolling re-shard: the instance that lost partition 3 writes its last checkpoint after the
/// new owner wrote a newer one. The newer one stays; a later checkpoint of the new owner, and one
/// at the same offset, replace it; other partitions are untouched.
#[tokio::test]
async fn a_checkpoint_never_goes_back() {
    let (mut client, _schema) = store().await;
    wick_store::migrate_bookkeeping(&mut client).await.unwrap();
    assert!(wick_store::save_checkpoint(&client, "market-events", 3, 500, b"old owner at 500").await.unwrap());
    assert!(wick_store::save_checkpoint(&client, "market-events", 3, 900, b"new owner at 900").await.unwrap());
    assert!(!wick_store::save_checkpoint(&client, "market-events", 3, 700, b"old owner at 700, late").await.unwrap());
    assert_eq!(wick_store::load_checkpoint(&client, "market-events", 3).await.unwrap(), Some((900, b"new owner at 900".to_vec())));
    assert!(wick_store::save_checkpoint(&client, "market-events", 3, 900, b"new owner at 900 again").await.unwrap());
    assert!(wick_store::save_checkpoint(&client, "market-events", 3, 1200, b"new owner at 1200").await.unwrap());
    assert_eq!(wick_store::load_checkpoint(&client, "market-events", 3).await.unwrap(), Some((1200, b"new owner at 1200".to_vec())));
    assert!(wick_store::save_checkpoint(&client, "market-events", 4, 10, b"another partition").await.unwrap());
    assert!(wick_store::save_checkpoint(&client, "other-topic", 3, 1, b"another topic").await.unwrap());
    assert_eq!(wick_store::load_checkpoint(&client, "market-events", 3).await.unwrap().unwrap().0, 1200);
}
