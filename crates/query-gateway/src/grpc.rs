//! The gRPC side (tonic): `wick.v1.CandleService`, gRPC health, and reflection (v1 and v1alpha)
//! so that standard tools and clients work without the proto file.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use wick_core::{Candle, UtcOffset};
use wick_wire::pb;

use crate::error::ApiError;
use crate::live::Subscriber;
use crate::query::{self, CandleQuery, Fill};
use crate::Gateway;

/// The generated service code.
#[allow(clippy::all, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("wick.v1");

    /// The descriptors of `candle_service.proto` and its imports, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wick_descriptor");
}

use proto::candle_service_server::{CandleService, CandleServiceServer};

/// The service, over the gateway.
#[derive(Debug, Clone)]
pub struct CandleApi(pub Arc<Gateway>);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CandleEvent, Status>> + Send>>;

impl CandleApi {
    /// The API key and rate limits, as for REST.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let meta = request.metadata();
        let key = crate::limits::request_key(
            meta.get("x-api-key").and_then(|v| v.to_str().ok()),
            meta.get("authorization").and_then(|v| v.to_str().ok()),
            None,
        );
        self.0.guard.check(key, request.remote_addr().map(|a: SocketAddr| a.ip())).map_err(|e| e.to_grpc())
    }

    fn finish<T>(&self, route: &str, started: Instant, result: Result<T, Status>) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => 0,
            Err(s) => s.code() as u16,
        };
        self.0.metrics.request("grpc", route, code, started.elapsed().as_secs_f64());
        result
    }
}

fn to_wire(candles: &[Candle]) -> Vec<pb::Candle> {
    candles.iter().map(wick_wire::candle_to_wire).collect()
}

fn parse_request(r: &proto::GetCandlesRequest) -> Result<CandleQuery, ApiError> {
    let time = |name: &'static str, ms: Option<i64>| ms.map(|ms| query::parse_time(name, &ms.max(0).to_string())).transpose();
    if r.start_time_ms.is_some_and(|t| t < 0) || r.end_time_ms.is_some_and(|t| t < 0) {
        return Err(ApiError::invalid("start_time_ms", "times must not be negative"));
    }
    let q = CandleQuery {
        instrument: query::parse_instrument(&r.instrument)?,
        interval: query::parse_interval("interval", &r.interval)?,
        start: time("start_time_ms", r.start_time_ms)?,
        end: time("end_time_ms", r.end_time_ms)?,
        limit: if r.limit == 0 { query::DEFAULT_LIMIT } else { query::parse_limit(Some(&r.limit.to_string()))? },
        fill: match proto::Fill::try_from(r.fill) {
            Ok(proto::Fill::Previous) => Fill::Previous,
            Ok(_) => Fill::None,
            Err(_) => return Err(ApiError::invalid("fill", format!("unknown fill {}", r.fill))),
        },
        offset: UtcOffset::UTC,
    };
    query::check_order(q.start, q.end)?;
    Ok(q)
}

#[tonic::async_trait]
impl CandleService for CandleApi {
    async fn get_candles(&self, request: Request<proto::GetCandlesRequest>) -> Result<Response<proto::GetCandlesResponse>, Status> {
        let started = Instant::now();
        let result = async {
            self.admit(&request)?;
            let q = parse_request(request.get_ref()).map_err(|e| e.to_grpc())?;
            let page = self.0.candles(&q).await.map_err(|e| e.to_grpc())?;
            Ok(Response::new(proto::GetCandlesResponse {
                candles: to_wire(&page.candles),
                next_start_time_ms: page.next_start.map(|t| t.as_millis()),
            }))
        }
        .await;
        self.finish("GetCandles", started, result)
    }

    type StreamCandlesStream = EventStream;

    async fn stream_candles(&self, request: Request<proto::StreamCandlesRequest>) -> Result<Response<EventStream>, Status> {
        let started = Instant::now();
        let result = (|| {
            self.admit(&request)?;
            if self.0.metrics.stream_clients.get() >= self.0.config.live.max_connections as i64 {
                return Err(Status::resource_exhausted(format!("at most {} streams", self.0.config.live.max_connections)));
            }
            let subs = &request.get_ref().subscriptions;
            if subs.is_empty() {
                return Err(ApiError::MissingParameter("subscriptions").to_grpc());
            }
            let mut sub = self.0.hub.subscriber();
            for s in subs {
                let instrument = query::parse_instrument(&s.instrument).map_err(|e| e.to_grpc())?;
                let interval = query::parse_interval("interval", &s.interval).map_err(|e| e.to_grpc())?;
                sub.subscribe((instrument, interval)).map_err(|e| Status::invalid_argument(e.to_string()))?;
            }
            Ok(sub)
        })();
        let result = result.map(|sub| Response::new(event_stream(self.0.clone(), sub)));
        self.finish("StreamCandles", started, result)
    }

    async fn list_instruments(
        &self,
        request: Request<proto::ListInstrumentsRequest>,
    ) -> Result<Response<proto::ListInstrumentsResponse>, Status> {
        let started = Instant::now();
        let result = self.admit(&request).map(|()| {
            let instruments = self
                .0
                .read
                .instruments()
                .iter()
                .map(|i| proto::InstrumentInfo {
                    instrument: i.as_str().to_owned(),
                    exchange: i.exchange().to_owned(),
                    base: i.base().to_owned(),
                    quote: i.quote().to_owned(),
                })
                .collect();
            Response::new(proto::ListInstrumentsResponse { instruments })
        });
        self.finish("ListInstruments", started, result)
    }
}

/// A subscriber's events as a gRPC stream; ends with RESOURCE_EXHAUSTED when the client falls too
/// far behind, UNAVAILABLE at shutdown.
fn event_stream(gw: Arc<Gateway>, sub: Subscriber) -> EventStream {
    gw.metrics.stream_clients.inc();
    let guard = StreamGuard(gw.clone());
    Box::pin(futures_util::stream::unfold(Some((sub, guard)), move |state| {
        let gw = gw.clone();
        async move {
            let (mut sub, guard) = state?;
            let next = tokio::select! {
                e = sub.rx.recv() => e.map(|e| Ok(pb::CandleEvent {
                    kind: match e.kind {
                        wick_wire::CandleEventKind::Update => pb::CandleEventKind::Update,
                        wick_wire::CandleEventKind::Final => pb::CandleEventKind::Final,
                        wick_wire::CandleEventKind::Revision => pb::CandleEventKind::Revision,
                    } as i32,
                    candle: Some(wick_wire::candle_to_wire(&e.candle)),
                })),
                _ = sub.state.dropped() => Some(Err(Status::resource_exhausted(format!(
                    "too slow: more than {} candle events queued; call again", sub.buffer()
                )))),
                _ = gw.shutdown.requested() => Some(Err(Status::unavailable("server shutting down"))),
            };
            match next {
                Some(Ok(e)) => Some((Ok(e), Some((sub, guard)))),
                Some(Err(s)) => Some((Err(s), None)),
                None => None,
            }
        }
    }))
}

/// Counts an open stream until it is dropped.
struct StreamGuard(Arc<Gateway>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.stream_clients.dec();
    }
}

/// Serves the candle service, health and reflection on `listener` until shutdown.
pub async fn serve(gw: Arc<Gateway>, listener: tokio::net::TcpListener) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CandleServiceServer<CandleApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let shutdown = gw.shutdown.clone();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Keepalive pings find peers that went away without closing their streams.
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CandleServiceServer::new(CandleApi(gw)))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.requested().await;
            reporter.set_not_serving::<CandleServiceServer<CandleApi>>().await;
        });
    Ok(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }))
}
