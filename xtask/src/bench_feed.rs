//! The replay benchmark: `feed-publisher replay` of a 2M-trade Binance CSV against the stack's
//! broker, beside kafka-python publishing the same trades as one JSON record each, in the same run.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench_results::{Doc, Record};
use crate::util::{cargo, output, root, run};

const TRADES: u64 = 2_000_000;
const BASELINE_TRADES: u64 = 50_000;
const RUNS: usize = 3;

fn csv_path() -> PathBuf {
    root().join("target/wick-bench/BTCUSDT-trades-2026-09-21.csv")
}

/// A deterministic Binance trades CSV: a random walk on a 0.01 tick, microsecond times.
fn write_csv() -> Result<()> {
    let path = csv_path();
    if path.is_file() {
        return Ok(());
    }
    fs::create_dir_all(path.parent().context("no parent")?)?;
    let mut out = std::io::BufWriter::new(fs::File::create(&path)?);
    let (mut state, mut cents, mut micros) = (0x2545_F491_4F6C_DD1Du64, 6_325_010i64, 1_758_412_800_000_000i64);
    for id in 1..=TRADES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        cents = (cents + (state % 7) as i64 - 3).max(1);
        micros += 1 + (state >> 8) as i64 % 40_000;
        let qty = 1 + (state >> 24) % 99_999;
        let maker = if (state >> 40) % 2 == 0 { "True" } else { "False" };
        writeln!(out, "{id},{}.{:02},0.{qty:05},1.0,{micros},{maker},True", cents / 100, cents % 100)?;
    }
    out.flush()?;
    Ok(())
}

pub fn create_topic(name: &str, partitions: i32) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let brokers = vec!["127.0.0.1:9092".to_owned()];
        let client = wick_kafka::connect(&brokers, Duration::from_secs(30)).await?;
        wick_kafka::ensure_topics(&client, "127.0.0.1:9092", &[wick_kafka::TopicSpec { name: name.to_owned(), partitions }]).await?;
        anyhow::Ok(())
    })
}

/// Median trades per second of `RUNS` replays with `compression`.
fn replay_rate(compression: &str, suffix: &str) -> Result<f64> {
    let binary = crate::util::target_dir().join("release/feed-publisher");
    let (topic, dlq) = (format!("bench-market-events-{suffix}-{compression}"), format!("bench-market-events-dlq-{suffix}-{compression}"));
    create_topic(&topic, 16)?;
    create_topic(&dlq, 1)?;
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = output(
            Command::new(&binary)
                .arg("replay")
                .arg(csv_path())
                .env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &topic)
                .env("WICK__KAFKA__DEAD_LETTER_TOPIC", &dlq)
                .env("WICK__PRODUCER__COMPRESSION", compression)
                .env("WICK__OPS__LISTEN", "127.0.0.1:0")
                .env("RUST_LOG", "warn"),
        )?;
        let elapsed = started.elapsed().as_secs_f64();
        if !out.contains(&format!("published {TRADES},")) {
            bail!("feed-publisher did not publish every trade: {out}");
        }
        rates.push(TRADES as f64 / elapsed);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

fn kafka_python_rate(suffix: &str) -> Result<(f64, String)> {
    let has = Command::new("python3").args(["-c", "import kafka"]).status().is_ok_and(|s| s.success());
    if !has {
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "kafka-python"]))?;
    }
    let topic = format!("bench-kafka-python-{suffix}");
    create_topic(&topic, 16)?;
    let script = root().join("xtask/bench/kafka_python_publish.py");
    let out =
        output(Command::new("python3").arg(script).args(["127.0.0.1:9092", &topic]).arg(csv_path()).arg(BASELINE_TRADES.to_string()))?;
    let mut parts = out.split_whitespace();
    let (sent, seconds): (f64, f64) = (parts.next().context("no count")?.parse()?, parts.next().context("no time")?.parse()?);
    let version = parts.next().unwrap_or("?").to_owned();
    Ok((sent / seconds, version))
}

pub fn measure() -> Result<Value> {
    if !crate::stack::broker_answers() {
        bail!("the feed benchmark needs the stack: run `cargo xtask stack up` first");
    }
    write_csv()?;
    run(cargo().args(["build", "--release", "-p", "feed-publisher"]))?;
    let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).to_string();
    let none = replay_rate("none", &suffix)?;
    let lz4 = replay_rate("lz4", &suffix)?;
    let (baseline, version) = kafka_python_rate(&suffix)?;
    Ok(json!({
        "trades": TRADES, "baseline_trades": BASELINE_TRADES, "replay_none": none, "replay_lz4": lz4,
        "kafka_python": baseline, "kafka_python_version": version,
    }))
}

pub fn render(record: &Record, doc: &mut Doc) -> Result<()> {
    let r = &record.samples[0].results;
    let get = |k: &str| record.median(&[k]);
    let (none, lz4, baseline) = (get("replay_none"), get("replay_lz4"), get("kafka_python"));
    let md = &mut doc.body;
    writeln!(
        md,
        "Command: `cargo xtask bench feed`. `feed-publisher replay` of a {:.0}-trade Binance trades CSV (one instrument) into a \
         16-partition topic of the stack's broker, wall time of the whole command (start-up, parsing, batching, every request \
         acknowledged), median of {RUNS} replays; beside it, kafka-python {} publishing the first {:.0} trades of the same file as one \
         JSON record each (acks=1, linger 10 ms; `xtask/bench/kafka_python_publish.py`), in the same run.\n",
        get("trades"),
        r["kafka_python_version"].as_str().unwrap_or("?"),
        get("baseline_trades")
    )?;
    writeln!(md, "| publisher | trades/s | ratio |")?;
    writeln!(md, "|---|---:|---|")?;
    writeln!(md, "| kafka-python, one JSON record per trade | {baseline:.0} | baseline |")?;
    writeln!(md, "| `feed-publisher replay`, batched protobuf, no compression | {none:.0} | **{:.0}x** |", none / baseline)?;
    writeln!(md, "| `feed-publisher replay`, batched protobuf, lz4 (the default) | {lz4:.0} | **{:.0}x** |", lz4 / baseline)?;
    writeln!(md)?;
    writeln!(
        md,
        "Goal: at least 1M trades/s: {} without compression, {} with lz4.{}\n",
        if none >= 1e6 { "met" } else { "**missed**" },
        if lz4 >= 1e6 { "met" } else { "**missed**" },
        if lz4 < none {
            format!(
                " With lz4 the replay took {:.1}x as long: it waits on the broker, as tansu takes longer to accept compressed \
                 requests, so on this broker `WICK__PRODUCER__COMPRESSION=none` is the faster setting; lz4 stays the default \
                 for real brokers, as in the seed.",
                none / lz4
            )
        } else {
            String::new()
        }
    )?;
    Ok(())
}
