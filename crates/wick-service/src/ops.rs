//! The operations endpoint every service serves: `/metrics` (Prometheus text format),
//! `/health/livez` (the process runs) and `/health/readyz` (it can do its work: broker, database...
//! reachable). The bind address comes from config, so tests use port 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus::{Encoder, Registry, TextEncoder};
use warp::Filter;

/// Whether the service is ready; flipped by the service as its dependencies come and go.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves the operations endpoint on `addr` until `shutdown` resolves; returns the bound address
/// and the server task.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let metrics = warp::path("metrics").and(warp::path::end()).map(move || {
        let mut body = Vec::new();
        let status = match TextEncoder::new().encode(&registry.gather(), &mut body) {
            Ok(()) => warp::http::StatusCode::OK,
            Err(_) => warp::http::StatusCode::INTERNAL_SERVER_ERROR,
        };
        warp::reply::with_status(warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4"), status)
    });
    let livez = warp::path!("health" / "livez").map(|| "ok");
    let readyz = warp::path!("health" / "readyz").map(move || {
        if readiness.get() {
            warp::reply::with_status("ready", warp::http::StatusCode::OK)
        } else {
            warp::reply::with_status("not ready", warp::http::StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    let routes = warp::get().and(metrics.or(livez).or(readyz));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the operations endpoint on {addr}"))?;
    let bound = listener.local_addr()?;
    let server = warp::serve(routes).incoming(listener).graceful(shutdown).run();
    Ok((bound, tokio::spawn(server)))
}

/// A running service's shared plumbing: readiness, the shutdown signal (SIGINT or SIGTERM, or a
/// test), and the operations endpoint.
#[derive(Debug)]
pub struct Service {
    pub readiness: Readiness,
    pub shutdown: crate::shutdown::Shutdown,
    pub ops_addr: SocketAddr,
    ops: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Serves the operations endpoint on `listen` and turns `stop` (usually
    /// [`crate::shutdown::signal`], created first thing in `main`) into the shutdown signal,
    /// logging `on_stop` when it comes.
    pub async fn start(
        listen: SocketAddr,
        registry: Registry,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
        on_stop: &'static str,
    ) -> Result<Service> {
        let readiness = Readiness::default();
        let (trigger, shutdown) = crate::shutdown::channel();
        let ops_shutdown = shutdown.clone();
        let (ops_addr, ops) = serve(listen, registry, readiness.clone(), async move { ops_shutdown.requested().await }).await?;
        tracing::info!(%ops_addr, "operations endpoint up");
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutdown requested: {on_stop}");
            trigger.trigger();
        });
        Ok(Service { readiness, shutdown, ops_addr, ops })
    }

    /// Stops the operations endpoint.
    pub fn finish(self) {
        self.readiness.set(false);
        self.ops.abort();
    }
}
