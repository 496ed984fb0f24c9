//! query-gateway: serves candles over gRPC (`wick.v1.CandleService`), REST (Wick's own and
//! Binance's klines) and WebSocket, from L1 (in process) -> L2 (Redis) -> the database, kept
//! current by reading `candles-completed`; and the live chart page.
//!
//! Modules: [`query`] (what a request means), [`read`] (the tiers), [`live`] (the topic reader and
//! the subscription hub), [`rest`] and [`grpc`] (the protocols), [`limits`] (API keys and rate
//! limits), [`error`] (one error type for all of them).

pub mod binance_ws;
pub mod config;
pub mod error;
pub mod grpc;
pub mod json;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod query;
pub mod read;
pub mod rest;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use wick_core::Clock;
use wick_service::ops::Readiness;
use wick_service::shutdown::Shutdown;

use crate::config::Config;
use crate::live::{Consumer, Hub};
use crate::metrics::Metrics;
use crate::read::{ReadPath, L2};

/// What the protocol front ends share.
pub struct Gateway {
    pub config: Config,
    pub read: Arc<ReadPath>,
    pub hub: Arc<Hub>,
    pub guard: limits::Guard,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub shutdown: Shutdown,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("read", &self.read).finish()
    }
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: Metrics,
}

impl Running {
    /// Waits for the servers and readers to stop (after shutdown was requested), and for the
    /// WebSocket connections to close (each sends its client a close frame, for at most 10 s).
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(11);
        while self.metrics.ws_clients.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts serving; everything stops when `shutdown` is requested.
pub async fn start(config: Config, metrics: Metrics, readiness: Readiness, clock: Arc<dyn Clock>, shutdown: Shutdown) -> Result<Running> {
    let pool = wick_store::pool(&config.database.url, config.database.schema.as_deref(), config.database.pool_size)?;
    let l2 = if config.redis.enabled {
        let cache = wick_cache::L2Cache::connect(&wick_cache::CacheSettings {
            url: config.redis.url.clone(),
            prefix: config.redis.key_prefix.clone(),
            ttl: config.redis.ttl.get(),
            command_timeout: config.redis.command_timeout.get(),
        })?;
        Some(Arc::new(L2::new(cache, config.redis.command_timeout.get())))
    } else {
        None
    };
    let l1 = config.l1.enabled.then(|| (config.l1.max_entries, config.l1.max_candles, config.l1.ttl.get()));
    let read = Arc::new(ReadPath::new(l1, l2, pool.clone(), config.database.query_timeout.get(), metrics.clone()));
    let hub = Hub::new(config.live.client_buffer, config.live.max_subscriptions, metrics.clone());

    let client = Arc::new(wick_kafka::connect(&config.kafka.brokers, config.kafka.request_deadline.get()).await?);
    let topic = wick_kafka::TopicSpec { name: config.kafka.candles_topic.clone(), partitions: config.kafka.candles_partitions };
    wick_kafka::ensure_topics(&client, &config.kafka.brokers.join(","), &[topic]).await?;
    // What the writer stored decides where live reading starts: ask a few times (the database
    // may be starting beside the gateway) before falling back to the earliest offsets.
    let mut stored = None;
    let mut backoff = wick_service::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    for attempt in 1..=5 {
        match stored_offsets(&pool, &config).await {
            Ok(s) => {
                stored = Some(s);
                break;
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "reading the writer's offsets");
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
    if stored.is_none() {
        tracing::warn!("the database cannot tell what the writer stored: live candles are read from the earliest offsets");
    }
    match read.load_instruments().await {
        Ok(n) => tracing::info!(instruments = n, "instruments loaded"),
        Err(e) => tracing::warn!(error = %e, "instruments not loaded yet; retrying in the background"),
    }
    let consumer = Arc::new(Consumer {
        client,
        topic: config.kafka.candles_topic.clone(),
        partitions: config.kafka.candles_partitions,
        fetch_max_wait: config.kafka.fetch_max_wait.get(),
        fetch_max_bytes: config.kafka.fetch_max_bytes,
        read: read.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
    });
    let mut tasks = consumer.start(stored, shutdown.clone()).await?;
    tasks.push(tokio::spawn(prune(read.clone(), pool, config.clone(), shutdown.clone())));

    let guard = limits::Guard::new(&config.auth, &config.limits, metrics.clone());
    let http_listen = config.http.listen;
    let grpc_listen = config.grpc.listen;
    let gw = Arc::new(Gateway { config, read, hub, guard, metrics: metrics.clone(), clock, shutdown: shutdown.clone() });

    let http = tokio::net::TcpListener::bind(http_listen).await.with_context(|| format!("binding HTTP on {http_listen}"))?;
    let http_addr = http.local_addr()?;
    let grpc = tokio::net::TcpListener::bind(grpc_listen).await.with_context(|| format!("binding gRPC on {grpc_listen}"))?;
    let grpc_addr = grpc.local_addr()?;
    let http_shutdown = shutdown.clone();
    let server = warp::serve(rest::routes(gw.clone())).incoming(http).graceful(async move { http_shutdown.requested().await }).run();
    tasks.push(tokio::spawn(server));
    tasks.push(grpc::serve(gw, grpc).await?);
    readiness.set(true);
    tracing::info!(%http_addr, %grpc_addr, "query-gateway serving");
    Ok(Running { http_addr, grpc_addr, tasks, metrics })
}

/// The writer's stored offsets: per partition, how far both the database and (with L2) Redis
/// hold the candles.
async fn stored_offsets(pool: &deadpool_postgres::Pool, config: &Config) -> Result<HashMap<i32, i64>, String> {
    let load = async {
        let db = pool.get().await.map_err(|e| e.to_string())?;
        match wick_store::load_resume_offsets(&db, &config.kafka.candles_topic, config.redis.enabled).await {
            Ok(rows) => Ok(rows.into_iter().collect()),
            // A database without the writer's table yet (SQLSTATE 42P01) has stored nothing.
            Err(wick_store::StoreError::Db(e)) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(HashMap::new()),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(config.database.query_timeout.get(), load).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within database.query_timeout ({:?})", config.database.query_timeout.get())),
    }
}

/// Drops the live candles the writer has stored, and retries loading instruments until it works.
async fn prune(read: Arc<ReadPath>, pool: deadpool_postgres::Pool, config: Config, shutdown: Shutdown) {
    let mut instruments_loaded = !read.instruments().is_empty();
    let every = config.live.prune_interval.get().max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.requested() => return,
        }
        if let Ok(stored) = stored_offsets(&pool, &config).await {
            read.prune(&stored, config.live.max_unpersisted);
        } else {
            read.prune(&HashMap::new(), config.live.max_unpersisted);
        }
        if !instruments_loaded {
            instruments_loaded = read.load_instruments().await.is_ok();
        }
    }
}
