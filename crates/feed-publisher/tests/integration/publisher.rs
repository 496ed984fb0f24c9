//! feed-publisher against the real broker: replay and simulate publish exactly the trades they
//! read, batched per instrument on the partition Kafka's partitioner picks, and refuse bad input
//! loudly (dead letters for bad lines, an error before publishing for a bad file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use feed_publisher::producer::Producer;
use feed_publisher::replay::ReplayProgress;
use feed_publisher::{config::Config, metrics::Metrics, run};
use wick_core::{Clock, Instrument, SystemClock, Trade};
use wick_kafka::partitioner::partition_for;
use wick_service::shutdown::{Shutdown, ShutdownTrigger};

struct Topics {
    market: String,
    dead_letters: String,
    config: Config,
}

async fn topics() -> Topics {
    let client = wick_test_support::kafka().await;
    let market = wick_test_support::topic(&client, "market-events", 16).await;
    let dead_letters = wick_test_support::topic(&client, "market-events-dlq", 1).await;
    let mut config = Config::default();
    config.kafka.brokers = vec![wick_test_support::broker_address()];
    config.kafka.market_events_topic = market.clone();
    config.kafka.dead_letter_topic = dead_letters.clone();
    config.producer.linger = wick_service::duration::Duration::from_millis(5);
    Topics { market, dead_letters, config }
}

/// A producer for the test's topics, the clock it uses, and a shutdown that is never triggered.
async fn start(t: &Topics) -> (Arc<dyn Clock>, Producer, ShutdownTrigger, Shutdown) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let client = run::connect(&t.config).await.unwrap();
    let producer = run::start_producer(&t.config, client, Metrics::new(), clock.clone()).await.unwrap();
    let (trigger, shutdown) = wick_service::shutdown::channel();
    (clock, producer, trigger, shutdown)
}

/// Every trade on the topic, by instrument in offset order, checking that each record is one
/// partition's batches, every instrument on Kafka's partition for its key, at most once a record.
async fn read_trades(topic: &str) -> BTreeMap<String, Vec<Trade>> {
    let client = wick_test_support::kafka().await;
    let mut out: BTreeMap<String, Vec<Trade>> = BTreeMap::new();
    for p in 0..16 {
        let partition = wick_test_support::partition(&client, topic, p).await;
        let (records, _) = wick_test_support::read_to_end(&partition, 0, Duration::from_secs(20)).await.unwrap();
        for r in records {
            assert_eq!(r.record.key, None, "a partition's record has no key");
            let content_type = r.record.headers.get("content-type").map(Vec::as_slice);
            assert_eq!(content_type, Some(wick_wire::CONTENT_TYPE_TRADE_BATCHES.as_bytes()));
            let parts = wick_wire::trades_of_record(content_type, r.record.value.as_deref().unwrap(), wick_core::Timestamp::MIN).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for (instrument, trades) in parts {
                let key = instrument.as_str().to_owned();
                assert_eq!(partition_for(key.as_bytes(), 16), p, "{key} is on Kafka's partition for its key");
                assert!(seen.insert(key.clone()), "{key} appears once in a record");
                out.entry(key).or_default().extend(trades);
            }
        }
    }
    out
}

/// A writer into a shared buffer, to read what a progress wrote.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn temp_file(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(wick_test_support::unique_name("wick-replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[tokio::test]
async fn replay_publishes_every_good_line_in_order_and_dead_letters_the_bad_ones() {
    let t = topics().await;
    let mut csv = String::from("id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n");
    for i in 0..500u64 {
        let price = if i == 99 { "abc".to_owned() } else { format!("63250.{:02}", i % 100) };
        csv.push_str(&format!(
            "{},{price},0.00{:03},1,{},{},True\n",
            1000 + i,
            i % 1000 + 1,
            1_758_412_800_000 + i * 10,
            if i % 3 == 0 { "True" } else { "False" }
        ));
    }
    let csv_path = temp_file("BTCUSDT-trades-2026-09-21.csv", &csv);
    let jsonl: String = (0..3)
        .map(|i| format!("{{\"instrument\":\"COINBASE:BTC-USD\",\"trade_id\":{i},\"price\":\"400.0{i}\",\"quantity\":\"1\",\"side\":\"sell\",\"event_time\":{}}}\n", 1_700_000_000_000_000i64 + i))
        .collect();
    let json_path = temp_file("more.jsonl", &jsonl);

    let (clock, producer, _trigger, shutdown) = start(&t).await;
    let lines = Captured::default();
    let mut progress = ReplayProgress::lines(Box::new(lines.clone()), Duration::ZERO);
    let files = [csv_path.clone(), json_path.clone()];
    let summary = run::replay_with_progress(&producer, &files, None, None, clock, &shutdown, &mut progress).await.unwrap();
    let (summary, stats) = run::finish(producer, summary).await.unwrap();
    assert_eq!((summary.read, summary.published, summary.rejected), (503, 502, 1));
    assert!(stats.records < 100, "trades are batched into few records ({} records)", stats.records);
    // The progress counted every byte of both files and every line, and said so last.
    let size = (csv.len() + jsonl.len()) as u64;
    assert_eq!(progress.totals(), (size, 503, 1));
    let text = lines.text();
    let last = text.lines().last().unwrap();
    let size_text = indicatif::HumanBytes(size);
    assert!(last.starts_with(&format!("replay: finished: {size_text} of {size_text} in ")), "{text}");
    assert!(last.contains("503 trades") && last.ends_with(", 1 rejected"), "{text}");
    assert!(text.lines().count() >= 2, "a line per chunk of lines, then the last: {text}");

    let published = read_trades(&t.market).await;
    let btc = &published["BINANCE:BTC-USDT"];
    let ids: Vec<u64> = btc.iter().map(Trade::trade_id).collect();
    assert_eq!(ids, (1000..1500).filter(|i| *i != 1099).collect::<Vec<_>>(), "every good line, in file order");
    assert_eq!(btc[0].price().to_string(), "63250.00");
    assert_eq!(btc[0].side(), wick_core::TakerSide::Sell);
    assert_eq!(btc[1].side(), wick_core::TakerSide::Buy);
    assert_eq!(published["COINBASE:BTC-USD"].len(), 3);

    let client = wick_test_support::kafka().await;
    let dlq = wick_test_support::partition(&client, &t.dead_letters, 0).await;
    let (letters, _) = wick_test_support::read_to_end(&dlq, 0, Duration::from_secs(10)).await.unwrap();
    assert_eq!(letters.len(), 1);
    let headers = &letters[0].record.headers;
    assert!(String::from_utf8_lossy(&headers["reason"]).starts_with("price:"), "{headers:?}");
    assert_eq!(String::from_utf8_lossy(&headers["source"]), format!("replay:{}:101", csv_path.display()));
    assert!(String::from_utf8_lossy(letters[0].record.value.as_deref().unwrap()).starts_with("1099,abc,"));
}

/// The binary with stderr not a terminal (here a pipe): plain progress lines, no bar, the totals
/// last.
#[tokio::test]
async fn replay_writes_plain_progress_lines_when_stderr_is_not_a_terminal() {
    let t = topics().await;
    let csv: String =
        (0..2000u64).map(|i| format!("{},63250.{:02},0.001,1,{},True,True\n", i + 1, i % 100, 1_758_412_800_000 + i * 10)).collect();
    let path = temp_file("ETHUSDT-trades-2026-09-21.csv", &csv);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_feed-publisher"))
        .arg("replay")
        .arg(&path)
        .env("WICK__KAFKA__BROKERS", wick_test_support::broker_address())
        .env("WICK__KAFKA__MARKET_EVENTS_TOPIC", &t.market)
        .env("WICK__KAFKA__DEAD_LETTER_TOPIC", &t.dead_letters)
        .env("WICK__OPS__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("read 2000, published 2000, rejected 0"), "{out:?}");
    let size = indicatif::HumanBytes(csv.len() as u64);
    let last = stderr.lines().rfind(|l| l.starts_with("replay: ")).unwrap_or_else(|| panic!("no progress line: {stderr}"));
    assert!(last.starts_with(&format!("replay: finished: {size} of {size} in ")), "{stderr}");
    assert!(last.contains("2,000 trades (") && last.ends_with(", 0 rejected"), "{stderr}");
    assert!(!stderr.contains('\r') && !stderr.contains('\u{1b}'), "no bar drawing on a pipe: {stderr:?}");
}

#[tokio::test]
async fn a_missing_or_unrecognizable_file_fails_before_anything_is_published() {
    let t = topics().await;
    let (clock, producer, _trigger, shutdown) = start(&t).await;
    let good = temp_file("BTCUSDT-trades-2026-09-21.csv", "1,1.0,1.0,1.0,1758412800000,True,True\n");
    let missing = PathBuf::from("/nonexistent/BTCUSDT-trades.csv");
    let err = run::replay(&producer, &[good.clone(), missing], None, None, clock.clone(), &shutdown).await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot open /nonexistent/BTCUSDT-trades.csv"), "{err:#}");
    let garbage = temp_file("notes.txt", "hello there\n");
    let err = run::replay(&producer, &[good, garbage], None, None, clock, &shutdown).await.unwrap_err();
    assert!(format!("{err:#}").contains("no recognizable format"), "{err:#}");
    let (_, stats) = run::finish(producer, run::Summary::default()).await.unwrap();
    assert_eq!(stats.trades, 0);
    assert!(read_trades(&t.market).await.is_empty());
}

#[tokio::test]
async fn simulate_publishes_exactly_the_count_asked_for() {
    let t = topics().await;
    let (clock, producer, _trigger, shutdown) = start(&t).await;
    let settings = run::SimulateSettings { instruments: 3, rate: 200_000.0, seed: 42, count: Some(2_000), history: None };
    let summary = run::simulate(&producer, &settings, clock, &shutdown).await.unwrap();
    let (summary, _) = run::finish(producer, summary).await.unwrap();
    assert_eq!((summary.read, summary.published), (2_000, 2_000));
    let published = read_trades(&t.market).await;
    assert_eq!(published.len(), 3);
    assert_eq!(published.values().map(Vec::len).sum::<usize>(), 2_000);
    for trades in published.values() {
        let ids: Vec<u64> = trades.iter().map(Trade::trade_id).collect();
        assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "per-instrument order is kept");
    }
    let _ = Instrument::new("SIM:BTC-USD").unwrap();
}

#[tokio::test]
async fn simulate_publishes_an_hour_of_history_then_goes_on_live() {
    let t = topics().await;
    let (clock, producer, _trigger, shutdown) = start(&t).await;
    let before = clock.now();
    // An hour at 2 trades a second is some 7,200 trades: the count stops the run after a few
    // thousand live ones, 1,000 a second per instrument.
    let settings =
        run::SimulateSettings { instruments: 2, rate: 2_000.0, seed: 5, count: Some(10_000), history: Some(Duration::from_secs(3600)) };
    let summary = run::simulate(&producer, &settings, clock.clone(), &shutdown).await.unwrap();
    let after = clock.now();
    let (summary, _) = run::finish(producer, summary).await.unwrap();
    assert_eq!((summary.read, summary.published), (10_000, 10_000));
    let published = read_trades(&t.market).await;
    assert_eq!(published.len(), 2);
    let hour = 3_600_000_000;
    for (instrument, trades) in &published {
        let ids: Vec<u64> = trades.iter().map(Trade::trade_id).collect();
        assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "{instrument}: ids continue from the history into live");
        assert!(trades.windows(2).all(|w| w[1].event_time() > w[0].event_time()), "{instrument}: event times strictly increase");
        let first = trades[0].event_time();
        assert!(
            first >= before.saturating_sub_micros(hour) && first < before.saturating_sub_micros(hour - 60_000_000),
            "{instrument}: starts an hour back"
        );
        assert!(trades.last().unwrap().event_time() <= after, "{instrument}: nothing in the future");
        // Then live: the last 200 trades came within a second (the history has 1 a second).
        let tail = &trades[trades.len() - 200..];
        let spread = tail[199].event_time().as_micros() - tail[0].event_time().as_micros();
        assert!(spread < 1_000_000, "{instrument}: goes on live ({spread} µs for 200 trades)");
    }
    let history = published.values().flatten().filter(|t| t.event_time() <= before).count();
    assert!((5_000..=9_500).contains(&history), "about 7,200 trades of history ({history})");
}

#[test]
fn help_documents_every_subcommand_and_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_feed-publisher")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["simulate", "replay", "live", "--config", "WICK__SECTION__KEY"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_feed-publisher")).args(["replay", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--instrument", "--speed", "FILES"] {
        assert!(help.contains(needle), "replay --help lacks {needle}:\n{help}");
    }
    for (command, flags) in [
        ("live", &["--exchange", "--symbols", "--feed", "--url"][..]),
        ("simulate", &["--instruments", "--rate", "--seed", "--count", "--history"][..]),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_feed-publisher")).args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in flags {
            assert!(help.contains(flag), "{command} --help lacks {flag}:\n{help}");
        }
    }
}
