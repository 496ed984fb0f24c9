//! The operations endpoint over real HTTP: metrics in Prometheus text format, liveness, readiness
//! that follows the service, and a clean stop on shutdown.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wick_service::ops::{self, Readiness};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, response)
}

#[tokio::test]
async fn serves_metrics_and_health_until_shutdown() {
    let registry = prometheus::Registry::new();
    let counter = prometheus::IntCounter::new("wick_test_things_total", "Things counted by the test.").unwrap();
    registry.register(Box::new(counter.clone())).unwrap();
    counter.inc_by(3);
    let readiness = Readiness::default();
    let (trigger, shutdown) = wick_service::shutdown::channel();
    let (addr, server) =
        ops::serve("127.0.0.1:0".parse().unwrap(), registry, readiness.clone(), async move { shutdown.requested().await }).await.unwrap();

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("wick_test_things_total 3"), "{body}");
    assert_eq!(get(addr, "/health/livez").await.0, 200);
    assert_eq!(get(addr, "/health/readyz").await.0, 503);
    readiness.set(true);
    assert_eq!(get(addr, "/health/readyz").await.0, 200);
    assert_eq!(get(addr, "/nope").await.0, 404);

    trigger.trigger();
    server.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the endpoint stops on shutdown");
}
