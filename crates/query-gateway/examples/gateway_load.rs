//! Helpers of the gateway benchmark (`cargo xtask bench gateway`):
//!
//! - `gateway_load fixture URL SCHEMA CANDLES`: stores CANDLES closed 1-minute candles of
//!   `BENCH:BTC-USD` in SCHEMA (schema and tables created), printing the first open time (ms);
//! - `gateway_load grpc ENDPOINT INSTRUMENT INTERVAL START_MS LIMIT SECONDS CONCURRENCY`: calls
//!   `GetCandles` as fast as CONCURRENCY callers can for SECONDS and prints the rate and latency
//!   percentiles as JSON (the HTTP side is measured with `oha`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use query_gateway::grpc::proto::{candle_service_client::CandleServiceClient, GetCandlesRequest};
use wick_core::{Candle, Instrument, Interval, TakerSide, Timestamp, Trade};

/// The first open time: a chunk boundary (1000 minutes) of November 2023.
const FIRST_OPEN_MS: i64 = 28_333 * 60_000_000;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["fixture", url, schema, n] => fixture(url, schema, n.parse()?).await,
        ["grpc", endpoint, instrument, interval, start, limit, seconds, concurrency] => {
            grpc(endpoint, instrument, interval, start.parse()?, limit.parse()?, seconds.parse()?, concurrency.parse()?).await
        }
        _ => bail!("usage: gateway_load fixture URL SCHEMA CANDLES | grpc ENDPOINT INSTRUMENT INTERVAL START_MS LIMIT SECONDS CONCURRENCY"),
    }
}

async fn fixture(url: &str, schema: &str, n: i64) -> Result<()> {
    let (mut db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connecting")?;
    tokio::spawn(connection);
    db.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path = {schema}")).await?;
    let mode = wick_store::migrate(&mut db, &wick_store::TimescaleSettings::default()).await?;
    let instrument = Instrument::new("BENCH:BTC-USD")?;
    let mut candles = Vec::new();
    for m in 0..n {
        let open = FIRST_OPEN_MS + m * 60_000;
        let mut c: Option<Candle> = None;
        for k in 0..4 {
            let t = Timestamp::from_millis(open + k * 15_000)?;
            let price = format!("{}.{:02}", 30_000 + (m * 7 + k * 13) % 400, (m + k) % 100);
            let trade = Trade::new(instrument.clone(), (m * 4 + k) as u64 + 1, price.parse()?, "0.125".parse()?, TakerSide::Buy, t, t)?;
            match &mut c {
                Some(c) => c.apply(&trade)?,
                None => c = Some(Candle::from_trade(Interval::M1, &trade)?),
            }
        }
        let mut c = c.context("no candle")?;
        c.mark_closed();
        candles.push(c);
    }
    wick_store::ensure_partitions(&db, &wick_store::months_of(&candles)).await?;
    for chunk in candles.chunks(1000) {
        wick_store::write_batch(&mut db, mode, chunk, &[]).await?;
    }
    println!("{FIRST_OPEN_MS}");
    Ok(())
}

async fn grpc(endpoint: &str, instrument: &str, interval: &str, start: i64, limit: u32, seconds: u64, concurrency: usize) -> Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?.tcp_nodelay(true).connect().await?;
    let request = GetCandlesRequest {
        instrument: instrument.into(),
        interval: interval.into(),
        start_time_ms: Some(start),
        end_time_ms: None,
        limit,
        fill: 0,
    };
    let mut first = CandleServiceClient::new(channel.clone());
    let got = first.get_candles(request.clone()).await?.into_inner().candles.len();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = CandleServiceClient::new(channel.clone());
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                if client.get_candles(request.clone()).await.is_err() {
                    return Err(anyhow::anyhow!("GetCandles failed"));
                }
                latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok(latencies_us)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "candles": got, "requests": all.len(), "seconds": elapsed, "rps": all.len() as f64 / elapsed,
            "p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999), "concurrency": concurrency,
        })
    );
    Ok(())
}
