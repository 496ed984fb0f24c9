//! The backfill benchmark: `feed-publisher backfill` of a day of one Binance instrument from a
//! local HTTP server answering Binance's documented `historicalTrades` and `aggTrades` pages
//! (keep-alive HTTP/1.1, every page rendered in advance so that the server costs little), into
//! the stack's broker; with the rate limiter at its default and unlimited, beside the ceiling
//! Binance's documented request weights impose.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench_results::{Doc, Record};
use crate::util::{cargo, output, root, run};

/// A day at 3 trades per second on average: the order of a mid-cap Binance spot pair (BTCUSDT
/// trades about ten times as often). Enough for 260 pages, so the default rate limit shows in
/// the figure rather than its first second's burst, and the default-limited run stays near two
/// minutes.
const TRADES: u64 = 259_200;
/// 2026-09-21T00:00:00Z, in milliseconds.
const DAY_START_MS: i64 = 1_789_948_800_000;
const DAY_MS: i64 = 86_400_000;
const FIRST_ID: u64 = 4_000_000_000;

/// Binance's documented figures: weight per minute and IP, weights, trades per page.
const WEIGHT_PER_MINUTE: f64 = 6_000.0;
const PAGE: f64 = 1_000.0;

/// The two Binance feeds' history: (`--feed`, endpoint, request weight, default requests per
/// minute of `HistorySettings::for_feed`).
const FEEDS: [(&str, &str, f64, f64); 2] = [("trade", "historicalTrades", 25.0, 120.0), ("aggTrade", "aggTrades", 2.0, 1_500.0)];

/// "Unlimited": far above anything a page can be fetched at.
const UNLIMITED: u32 = 1_000_000_000;

/// Every trade of the day in both documented shapes, and the pages' bodies by first id.
struct Day {
    trades: Vec<String>,
    agg_trades: Vec<String>,
}

fn day() -> Day {
    let (mut state, mut cents) = (0x9E37_79B9_7F4A_7C15u64, 6_325_010i64);
    let mut day = Day { trades: Vec::with_capacity(TRADES as usize), agg_trades: Vec::with_capacity(TRADES as usize) };
    for i in 0..TRADES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        cents = (cents + (state % 7) as i64 - 3).max(1);
        let id = FIRST_ID + i;
        let time = DAY_START_MS + (i as i64 * DAY_MS) / TRADES as i64;
        let (price, qty, maker) = (
            format!("{}.{:02}000000", cents / 100, cents % 100),
            format!("0.{:08}", 1 + (state >> 24) % 99_999_999),
            (state >> 40) % 2 == 0,
        );
        day.trades.push(format!(
            r#"{{"id":{id},"price":"{price}","qty":"{qty}","quoteQty":"0.00000000","time":{time},"isBuyerMaker":{maker},"isBestMatch":true}}"#
        ));
        // One trade per aggregate, numbered alike: `f` and `l` are the trade's id.
        day.agg_trades.push(format!(r#"{{"a":{id},"p":"{price}","q":"{qty}","f":{id},"l":{id},"T":{time},"m":{maker},"M":true}}"#));
    }
    day
}

fn query(target: &str) -> impl Iterator<Item = (&str, &str)> {
    target.split_once('?').map_or("", |(_, q)| q).split('&').filter_map(|kv| kv.split_once('='))
}

/// The answer to one request: `historicalTrades`/`aggTrades` by `fromId`, `aggTrades` by time.
fn body(day: &Day, target: &str) -> Option<String> {
    let path = target.split('?').next()?;
    let list = match path {
        "/api/v3/historicalTrades" => &day.trades,
        "/api/v3/aggTrades" => &day.agg_trades,
        _ => return None,
    };
    let (mut from, mut start, mut end, mut limit) = (None, None, None, 500usize);
    for (k, v) in query(target) {
        match k {
            "fromId" => from = v.parse::<u64>().ok(),
            "startTime" => start = v.parse::<i64>().ok(),
            "endTime" => end = v.parse::<i64>().ok(),
            "limit" => limit = v.parse().unwrap_or(500).min(1000),
            _ => {}
        }
    }
    let first = match (from, start, end) {
        (Some(from), _, _) => from.saturating_sub(FIRST_ID).min(TRADES) as usize,
        (None, Some(start), Some(end)) => {
            // Trade i is at DAY_START_MS + floor(i * DAY_MS / TRADES): the first at or after
            // `start` and the first after `end`.
            let at = |ms: i64| {
                ((ms - DAY_START_MS).max(0) as u128 * u128::from(TRADES)).div_ceil(DAY_MS as u128).min(u128::from(TRADES)) as usize
            };
            let (index, last) = (at(start), at(end + 1));
            limit = limit.min(last.saturating_sub(index));
            index
        }
        _ => return None,
    };
    let page = &list[first..(first + limit).min(list.len())];
    Some(format!("[{}]", page.join(",")))
}

/// Answers requests on one keep-alive connection until the client closes it.
fn serve(day: &Day, stream: TcpStream) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        std::io::copy(&mut (&mut reader).take(content_length as u64), &mut std::io::sink())?;
        let target = request_line.split(' ').nth(1).unwrap_or("/");
        let (status, body) = match body(day, target) {
            Some(body) => ("200 OK", body),
            None => ("404 Not Found", String::new()),
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\nX-MBX-USED-WEIGHT-1M: 2\r\n\r\n",
            body.len()
        )?;
        writer.write_all(body.as_bytes())?;
        writer.flush()?;
    }
}

/// A local Binance REST server on a free port, until dropped.
struct Server {
    url: String,
    stop: Arc<AtomicBool>,
    address: std::net::SocketAddr,
}

impl Server {
    fn start(day: Arc<Day>) -> Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let day = day.clone();
                std::thread::spawn(move || {
                    let _ = serve(&day, stream);
                });
            }
        });
        Ok(Server { url: format!("http://{address}"), stop, address })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.address);
    }
}

/// One backfill of the day: (seconds, requests).
fn backfill(server: &Server, feed: &str, requests_per_minute: u32, suffix: &str) -> Result<(f64, f64)> {
    let binary = crate::util::target_dir().join("release/feed-publisher");
    let label = if requests_per_minute == UNLIMITED { "unlimited".to_owned() } else { requests_per_minute.to_string() };
    let (topic, dlq) = (format!("bench-backfill-{suffix}-{feed}-{label}"), format!("bench-backfill-dlq-{suffix}-{feed}-{label}"));
    crate::bench_feed::create_topic(&topic, 16)?;
    crate::bench_feed::create_topic(&dlq, 1)?;
    let state_dir = root().join("target/wick-bench").join(format!("backfill-state-{suffix}-{feed}-{label}"));
    let started = Instant::now();
    let out = output(
        Command::new(&binary)
            .args(["backfill", "--exchange", "binance", "--symbols", "BTCUSDT", "--feed", feed])
            .args(["--start", "2026-09-21", "--end", "2026-09-22", "--url", &server.url])
            .arg("--requests-per-minute")
            .arg(requests_per_minute.to_string())
            .arg("--state-dir")
            .arg(&state_dir)
            .env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &topic)
            .env("WICK__KAFKA__DEAD_LETTER_TOPIC", &dlq)
            .env("WICK__OPS__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn"),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&state_dir);
    if !out.contains(&format!("published {TRADES},")) {
        bail!("feed-publisher backfill did not publish the day's {TRADES} trades: {out}");
    }
    let requests: f64 =
        out.split(" requests,").next().and_then(|s| s.trim().rsplit('\n').next()?.trim().parse().ok()).context("no request count")?;
    Ok((seconds, requests))
}

pub fn measure() -> Result<Value> {
    if !crate::stack::broker_answers() {
        bail!("the backfill benchmark needs the stack: run `cargo xtask stack up` first");
    }
    run(cargo().args(["build", "--release", "-p", "feed-publisher"]))?;
    let server = Server::start(Arc::new(day()))?;
    let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).to_string();
    let mut runs = Vec::new();
    for (feed, endpoint, weight, default_rate) in FEEDS {
        for rate in [default_rate as u32, UNLIMITED] {
            eprintln!("bench: backfill of {TRADES} trades, {feed} feed ({endpoint}), {rate} requests per minute");
            let (seconds, requests) = backfill(&server, feed, rate, &suffix)?;
            runs.push(json!({
                "feed": feed, "endpoint": endpoint, "weight": weight, "unlimited": rate == UNLIMITED,
                "requests_per_minute": rate, "seconds": seconds, "requests": requests, "trades_per_s": TRADES as f64 / seconds,
            }));
        }
    }
    Ok(json!({ "trades": TRADES, "runs": runs }))
}

/// `1234567` as `1,234,567`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.round().abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Binance's ceiling for an endpoint of `weight`, in trades per second.
fn binance_ceiling(weight: f64) -> f64 {
    WEIGHT_PER_MINUTE / weight * PAGE / 60.0
}

pub fn render(record: &Record, doc: &mut Doc) -> Result<()> {
    let r = &record.samples[0].results;
    let trades = r["trades"].as_f64().unwrap_or(f64::NAN);
    let runs = r["runs"].as_array().context("no runs")?;
    let num = |run: &Value, k: &str| run[k].as_f64().unwrap_or(f64::NAN);
    let unlimited = |run: &Value| run["unlimited"].as_bool() == Some(true);
    let md = &mut doc.body;
    writeln!(
        md,
        "Command: `cargo xtask bench backfill`. `feed-publisher backfill --exchange binance --symbols BTCUSDT --start 2026-09-21 \
         --end 2026-09-22` of a day of {} trades ({:.0} per second on average: the order of a mid-cap Binance spot pair, while \
         the busiest pairs trade several times as often), answered by a local HTTP/1.1 server in xtask in Binance's documented \
         `historicalTrades` and `aggTrades` shapes (1,000 trades per page, keep-alive), into a 16-partition topic of the stack's \
         broker; wall time of the whole command (start-up, the start's look-up, every page fetched, parsed, published and \
         acknowledged by the broker before its state file is written and the next page asked for). With the rate limiter at \
         the default of each feed's history, then unlimited (Wick's own ceiling), beside the ceiling Binance's documented \
         limits impose on one IP address: {} request weight per minute, `historicalTrades` weighs 25 and `aggTrades` 2, {} \
         trades per page.\n",
        thousands(trades),
        trades / 86_400.0,
        thousands(WEIGHT_PER_MINUTE),
        thousands(PAGE)
    )?;
    writeln!(
        md,
        "| `--feed` (endpoint, weight) | requests per minute | requests | time for the day | trades/s | the limit's ceiling, trades/s | Binance's ceiling, trades/s |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
    for run in runs {
        let (rate, ceiling) = if unlimited(run) {
            ("unlimited".to_owned(), "none".to_owned())
        } else {
            (format!("{} (default)", thousands(num(run, "requests_per_minute"))), thousands(num(run, "requests_per_minute") * PAGE / 60.0))
        };
        writeln!(
            md,
            "| `{}` (`{}`, {:.0}) | {rate} | {:.0} | {:.1} s | **{}** | {ceiling} | {} |",
            run["feed"].as_str().unwrap_or("?"),
            run["endpoint"].as_str().unwrap_or("?"),
            num(run, "weight"),
            num(run, "requests"),
            num(run, "seconds"),
            thousands(num(run, "trades_per_s")),
            thousands(binance_ceiling(num(run, "weight"))),
        )?;
    }
    writeln!(md)?;
    let by_trade_id = runs.iter().find(|x| x["feed"] == "trade" && !unlimited(x)).context("no default-rate trade run")?;
    let limit = num(by_trade_id, "requests_per_minute") * PAGE / 60.0;
    let own: Vec<String> = runs
        .iter()
        .filter(|x| unlimited(x))
        .map(|x| {
            let rate = num(x, "trades_per_s");
            format!(
                "{} trades/s by `{}`, {:.1}x Binance's ceiling",
                thousands(rate),
                x["endpoint"].as_str().unwrap_or("?"),
                rate / binance_ceiling(num(x, "weight"))
            )
        })
        .collect();
    writeln!(
        md,
        "The defaults use half of Binance's weight budget (other clients may share the address): by trade id (`historicalTrades`, \
         the feed `live` follows by default) a backfill goes at {} trades/s at most, this day in {:.1} minutes, where Binance \
         would allow {} trades/s. Unlimited, Wick alone went {}: the exchange's limits, not Wick, set the pace.{}\n",
        thousands(limit),
        trades / limit / 60.0,
        thousands(binance_ceiling(num(by_trade_id, "weight"))),
        own.join(" and "),
        if runs.iter().any(|x| !unlimited(x) && num(x, "trades_per_s") > num(x, "requests_per_minute") * PAGE / 60.0) {
            " A run faster than its limit's ceiling gained the limiter's first burst (a second's worth of requests at once) over \
             a run of a few seconds."
        } else {
            ""
        }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_pages_by_id_and_by_time_like_binance() {
        let day = day();
        let page: Vec<Value> = serde_json::from_str(
            &body(&day, &format!("/api/v3/historicalTrades?symbol=BTCUSDT&fromId={}&limit=1000", FIRST_ID + 5)).unwrap(),
        )
        .unwrap();
        assert_eq!((page.len(), page[0]["id"].as_u64()), (1000, Some(FIRST_ID + 5)));
        let last: Vec<Value> =
            serde_json::from_str(&body(&day, &format!("/api/v3/historicalTrades?fromId={}&limit=1000", FIRST_ID + TRADES - 10)).unwrap())
                .unwrap();
        assert_eq!(last.len(), 10);
        // The first aggregate trade of the day's first hour, as backfill's start look-up asks.
        let first: Vec<Value> = serde_json::from_str(
            &body(&day, &format!("/api/v3/aggTrades?symbol=BTCUSDT&startTime={DAY_START_MS}&endTime={}&limit=1", DAY_START_MS + 3_599_999))
                .unwrap(),
        )
        .unwrap();
        assert_eq!((first[0]["f"].as_u64(), first[0]["T"].as_i64()), (Some(FIRST_ID), Some(DAY_START_MS)));
        let none: Vec<Value> = serde_json::from_str(
            &body(&day, &format!("/api/v3/aggTrades?startTime={}&endTime={}&limit=1", DAY_START_MS - 7_200_000, DAY_START_MS - 1)).unwrap(),
        )
        .unwrap();
        assert!(none.is_empty());
        assert!(body(&day, "/api/v3/klines?symbol=BTCUSDT").is_none());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(
            (thousands(259_200.0), thousands(999.4), thousands(1_000.0), thousands(66_273.3)),
            ("259,200".into(), "999".into(), "1,000".into(), "66,273".into())
        );
    }
}
