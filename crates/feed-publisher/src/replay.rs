//! History files for `replay`: Binance public-data `trades` and `aggTrades` CSV files (with or
//! without a header line, millisecond or microsecond timestamps) and JSON lines of normalized
//! trades. This module recognizes a file's format and parses its lines, and shows how far a
//! replay has got ([`ReplayProgress`]); reading and pacing are the command's.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wick_core::{Instrument, TakerSide, Timestamp, Trade};

use crate::exchange::{self, Exchange, ParseError};

/// A recognized history-file format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReplayFormat {
    /// `id,price,qty,quote_qty,time,is_buyer_maker,is_best_match`
    BinanceTrades,
    /// `agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match`
    BinanceAggTrades,
    /// One normalized trade per line, as `wick_wire::decode_json_trade` reads it.
    JsonLines,
}

/// Why a file cannot be replayed at all (as opposed to one bad line, which is counted and
/// dead-lettered).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {reason}")]
    Unrecognized { path: String, reason: String },
}

/// Timestamps at or above this are microseconds (10^14 ms would be the year 5138).
const MICROS_THRESHOLD: i64 = 100_000_000_000_000;

/// Recognizes a file's format from its name and first line.
pub fn detect(path: &Path, first_line: &str) -> Result<ReplayFormat, ReplayError> {
    let unrecognized = |reason: String| ReplayError::Unrecognized { path: path.display().to_string(), reason };
    let first = first_line.trim();
    if first.starts_with('{') {
        return Ok(ReplayFormat::JsonLines);
    }
    let fields = first.split(',').count();
    match fields {
        7 => Ok(ReplayFormat::BinanceTrades),
        8 => Ok(ReplayFormat::BinanceAggTrades),
        _ if first.is_empty() => Err(unrecognized("the file is empty".into())),
        n => Err(unrecognized(format!(
            "no recognizable format: the first line has {n} comma-separated fields; expected a Binance trades (7) or aggTrades (8) CSV, or JSON lines"
        ))),
    }
}

/// The instrument of a Binance history file, from the symbol before the first `-` of its name
/// (`BTCUSDT-trades-2026-09-21.csv` is `BINANCE:BTC-USDT`).
pub fn instrument_from_file_name(path: &Path) -> Result<Instrument, ReplayError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let symbol = name.split('-').next().unwrap_or_default();
    exchange::instrument_for(Exchange::Binance, symbol).map_err(|e| ReplayError::Unrecognized {
        path: path.display().to_string(),
        reason: format!("cannot tell the instrument from the file name ({e}); pass --instrument"),
    })
}

fn time(text: &str) -> Result<Timestamp, ParseError> {
    let value: i64 = text.trim().parse().map_err(|_| exchange::field("time", format!("{text:?} is not an integer")))?;
    let t = if value >= MICROS_THRESHOLD { Timestamp::from_micros(value) } else { Timestamp::from_millis(value) };
    t.map_err(|e| exchange::field("time", e))
}

fn buyer_maker(text: &str) -> Result<TakerSide, ParseError> {
    // "True" -> the buyer was the maker -> the taker sold.
    match text.trim() {
        "True" | "true" | "1" => Ok(TakerSide::Sell),
        "False" | "false" | "0" => Ok(TakerSide::Buy),
        other => Err(exchange::field("is_buyer_maker", format!("{other:?} is not True or False"))),
    }
}

/// Parses one line; `Ok(None)` for a blank line or, when `first` (the file's first line), a
/// header. Anywhere else, a line that is not a trade is an error.
pub fn parse_line(
    format: ReplayFormat,
    line: &str,
    first: bool,
    instrument: &Instrument,
    received: Timestamp,
) -> Result<Option<Trade>, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let line = if first { line.trim_start_matches('\u{feff}') } else { line };
    if line.trim().is_empty() {
        return Ok(None);
    }
    match format {
        ReplayFormat::JsonLines => {
            wick_wire::decode_json_trade(line.as_bytes(), received).map(Some).map_err(|e| exchange::field("line", e))
        }
        ReplayFormat::BinanceTrades | ReplayFormat::BinanceAggTrades => {
            let mut fields = [""; 8];
            let mut count = 0;
            for f in line.split(',') {
                if count < fields.len() {
                    fields[count] = f;
                }
                count += 1;
            }
            if first && !fields[0].trim().starts_with(|c: char| c.is_ascii_digit()) {
                return Ok(None); // header
            }
            let expected = if format == ReplayFormat::BinanceTrades { 7 } else { 8 };
            if count != expected {
                return Err(exchange::field("line", format!("{count} fields, expected {expected}")));
            }
            let (id, price, qty, t, maker) = match format {
                ReplayFormat::BinanceTrades => (fields[0], fields[1], fields[2], fields[4], fields[5]),
                _ => (fields[0], fields[1], fields[2], fields[5], fields[6]),
            };
            let id: u64 = id.trim().parse().map_err(|_| exchange::field("id", format!("{id:?} is not an integer")))?;
            exchange::trade(
                instrument.clone(),
                id,
                exchange::decimal("price", price.trim())?,
                exchange::decimal("qty", qty.trim())?,
                buyer_maker(maker)?,
                time(t)?,
                received,
            )
            .map(Some)
        }
    }
}

/// How far a replay has got: bytes of the files read (of their total), trades read and refused,
/// their rates and the time left at the rate so far. On a terminal a progress bar (indicatif);
/// elsewhere (a log file, CI) a plain line every so often, so the output stays readable.
#[derive(Debug)]
pub struct ReplayProgress {
    total_bytes: u64,
    bytes: u64,
    trades: u64,
    rejected: u64,
    started: Instant,
    output: Output,
}

enum Output {
    Bar(ProgressBar),
    Lines { to: Box<dyn Write + Send>, every: Duration, last: Instant },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Bar(_) => f.write_str("Bar"),
            Output::Lines { every, .. } => write!(f, "Lines every {every:?}"),
        }
    }
}

/// How often a replay whose stderr is not a terminal writes a progress line.
pub const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(10);

impl ReplayProgress {
    /// A bar when stderr is a terminal, else a line every [`PROGRESS_LINE_EVERY`] on stderr.
    pub fn stderr() -> ReplayProgress {
        if std::io::stderr().is_terminal() {
            ReplayProgress::bar(ProgressDrawTarget::stderr())
        } else {
            ReplayProgress::lines(Box::new(std::io::stderr()), PROGRESS_LINE_EVERY)
        }
    }

    /// A progress bar drawn on `target`.
    pub fn bar(target: ProgressDrawTarget) -> ReplayProgress {
        let bar = ProgressBar::with_draw_target(Some(0), target);
        let template = "{spinner} [{elapsed}] [{wide_bar}] {percent:>3}% {binary_bytes}/{binary_total_bytes} \
                        ({binary_bytes_per_sec}), {msg}, ETA {eta}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        ReplayProgress::with(Output::Bar(bar))
    }

    /// A plain line on `to` at most every `every` (and one at the end).
    pub fn lines(to: Box<dyn Write + Send>, every: Duration) -> ReplayProgress {
        ReplayProgress::with(Output::Lines { to, every, last: Instant::now() })
    }

    fn with(output: Output) -> ReplayProgress {
        ReplayProgress { total_bytes: 0, bytes: 0, trades: 0, rejected: 0, started: Instant::now(), output }
    }

    /// The replay starts: `total_bytes` to read.
    pub fn begin(&mut self, total_bytes: u64) {
        self.total_bytes = total_bytes;
        self.started = Instant::now();
        if let Output::Bar(bar) = &self.output {
            bar.set_length(total_bytes);
            bar.reset_elapsed();
            bar.reset_eta();
        }
    }

    /// The replay has read `bytes` of its files, `trades` trades (or lines), `rejected` of them
    /// refused.
    pub fn update(&mut self, bytes: u64, trades: u64, rejected: u64) {
        (self.bytes, self.trades, self.rejected) = (bytes, trades, rejected);
        let elapsed = self.started.elapsed();
        let due = matches!(&self.output, Output::Lines { every, last, .. } if last.elapsed() >= *every);
        let line = due.then(|| self.line(elapsed));
        match &mut self.output {
            Output::Bar(bar) => {
                bar.set_position(bytes);
                bar.set_message(trade_counts(trades, rejected, elapsed));
            }
            Output::Lines { to, last, .. } => {
                if let Some(line) = line {
                    *last = Instant::now();
                    let _ = writeln!(to, "{line}");
                }
            }
        }
    }

    /// The replay is over (done, failed or stopped): the bar stays with the totals, or a last
    /// line says them.
    pub fn finish(&mut self) {
        let elapsed = self.started.elapsed();
        let done = self.done_line(elapsed);
        match &mut self.output {
            Output::Bar(bar) => {
                bar.set_message(trade_counts(self.trades, self.rejected, elapsed));
                bar.abandon();
            }
            Output::Lines { to, .. } => {
                let _ = writeln!(to, "{done}");
                let _ = to.flush();
            }
        }
    }

    /// (bytes read, trades read, rejected) so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        (self.bytes, self.trades, self.rejected)
    }

    /// The progress line after `elapsed`.
    pub fn line(&self, elapsed: Duration) -> String {
        let percent = self.bytes.saturating_mul(100).checked_div(self.total_bytes).unwrap_or(100);
        let seconds = elapsed.as_secs_f64();
        let bytes_per_second = if seconds > 0.0 { self.bytes as f64 / seconds } else { 0.0 };
        let eta = match self.total_bytes.saturating_sub(self.bytes) {
            0 => "0 seconds".to_owned(),
            _ if self.bytes == 0 || seconds <= 0.0 => "unknown".to_owned(),
            left => HumanDuration(Duration::from_secs_f64(left as f64 * seconds / self.bytes as f64)).to_string(),
        };
        format!(
            "replay: {} of {} ({percent}%), {}, {}/s, ETA {eta}",
            HumanBytes(self.bytes),
            HumanBytes(self.total_bytes),
            trade_counts(self.trades, self.rejected, elapsed),
            HumanBytes(bytes_per_second as u64)
        )
    }

    /// The last line, after `elapsed`.
    pub fn done_line(&self, elapsed: Duration) -> String {
        format!(
            "replay: finished: {} of {} in {}, {}",
            HumanBytes(self.bytes),
            HumanBytes(self.total_bytes),
            HumanDuration(elapsed),
            trade_counts(self.trades, self.rejected, elapsed)
        )
    }
}

/// `1,234 trades (617/s), 2 rejected`.
fn trade_counts(trades: u64, rejected: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { (trades as f64 / seconds) as u64 } else { 0 };
    format!("{} trades ({}/s), {} rejected", HumanCount(trades), HumanCount(rate), HumanCount(rejected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
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

    /// A terminal that keeps what is drawn on it.
    #[derive(Debug, Default, Clone)]
    struct Screen(Arc<Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            160
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.0.lock().unwrap().push('\r');
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn progress_lines_say_bytes_trades_rates_and_time_left() {
        let mut p = ReplayProgress::lines(Box::new(std::io::sink()), Duration::ZERO);
        p.begin(4 * 1024 * 1024);
        p.update(1024 * 1024, 10_000, 3);
        assert_eq!(
            p.line(Duration::from_secs(5)),
            "replay: 1.00 MiB of 4.00 MiB (25%), 10,000 trades (2,000/s), 3 rejected, 204.80 KiB/s, ETA 15 seconds"
        );
        assert_eq!(p.line(Duration::ZERO), "replay: 1.00 MiB of 4.00 MiB (25%), 10,000 trades (0/s), 3 rejected, 0 B/s, ETA unknown");
        p.update(4 * 1024 * 1024, 40_000, 3);
        assert_eq!(
            p.done_line(Duration::from_secs(20)),
            "replay: finished: 4.00 MiB of 4.00 MiB in 20 seconds, 40,000 trades (2,000/s), 3 rejected"
        );
        let mut empty = ReplayProgress::lines(Box::new(std::io::sink()), Duration::ZERO);
        empty.begin(0);
        assert!(empty.line(Duration::from_secs(1)).contains("(100%)"), "{}", empty.line(Duration::from_secs(1)));
    }

    #[test]
    fn without_a_terminal_lines_are_written_every_so_often_and_at_the_end() {
        let out = Captured::default();
        let mut every_update = ReplayProgress::lines(Box::new(out.clone()), Duration::ZERO);
        every_update.begin(300);
        for i in 1..=3 {
            every_update.update(i * 100, i * 10, 0);
        }
        every_update.finish();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("replay: 100 B of 300 B (33%), 10 trades"), "{text}");
        assert!(lines[2].starts_with("replay: 300 B of 300 B (100%), 30 trades"), "{text}");
        assert!(lines[3].starts_with("replay: finished: 300 B of 300 B in ") && lines[3].ends_with(", 0 rejected"), "{text}");
        assert!(!text.contains('\r') && !text.contains('\x1b'), "plain text only: {text:?}");

        let out = Captured::default();
        let mut hourly = ReplayProgress::lines(Box::new(out.clone()), Duration::from_secs(3600));
        hourly.begin(300);
        hourly.update(100, 10, 0);
        hourly.update(300, 30, 1);
        hourly.finish();
        assert_eq!(out.text().lines().count(), 1, "only the last line within the hour: {}", out.text());
        assert_eq!(hourly.totals(), (300, 30, 1));
    }

    #[test]
    fn on_a_terminal_the_bar_shows_bytes_and_trades() {
        let screen = Screen::default();
        let mut bar = ReplayProgress::bar(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        bar.begin(2048);
        bar.update(1024, 1_500, 2);
        bar.update(2048, 3_000, 2);
        bar.finish();
        let drawn = screen.0.lock().unwrap().clone();
        let last = drawn.rsplit(['\r', '\n']).find(|l| !l.trim().is_empty()).unwrap_or_default();
        assert!(last.contains("100% 2.00 KiB/2.00 KiB") && last.contains("3,000 trades") && last.contains("2 rejected"), "{drawn:?}");
        assert!(last.contains("[=") && last.contains("ETA"), "{drawn:?}");
    }

    fn btc() -> Instrument {
        Instrument::new("BINANCE:BTC-USDT").unwrap()
    }

    #[test]
    fn detects_formats_and_refuses_the_rest() {
        let p = Path::new("BTCUSDT-trades-2026-09-21.csv");
        assert_eq!(detect(p, "1,63250.10,0.001,63.2501,1758412800000,True,True").unwrap(), ReplayFormat::BinanceTrades);
        assert_eq!(detect(p, "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match").unwrap(), ReplayFormat::BinanceTrades);
        assert_eq!(detect(p, "1,63250.10,0.001,5,9,1758412800000000,False,True").unwrap(), ReplayFormat::BinanceAggTrades);
        assert_eq!(detect(Path::new("x.jsonl"), r#"{"instrument":"A:B-C"}"#).unwrap(), ReplayFormat::JsonLines);
        let err = detect(p, "hello,world").unwrap_err().to_string();
        assert!(err.contains("BTCUSDT-trades-2026-09-21.csv") && err.contains("2 comma-separated fields"), "{err}");
        assert!(detect(p, "").unwrap_err().to_string().contains("empty"));
        assert_eq!(instrument_from_file_name(p).unwrap(), btc());
        assert!(instrument_from_file_name(Path::new("trades.csv")).unwrap_err().to_string().contains("--instrument"));
    }

    #[test]
    fn parses_milliseconds_and_microseconds_and_sides() {
        let now = Timestamp::MIN;
        let ms = parse_line(ReplayFormat::BinanceTrades, "7,63250.10,0.00150,94.87515,1758412800123,True,True\r\n", false, &btc(), now)
            .unwrap()
            .unwrap();
        assert_eq!((ms.trade_id(), ms.event_time().as_micros(), ms.side()), (7, 1_758_412_800_123_000, TakerSide::Sell));
        assert_eq!(ms.price().to_string(), "63250.10");
        let us =
            parse_line(ReplayFormat::BinanceAggTrades, "8,1.5,2,10,12,1758412800123456,False,True", false, &btc(), now).unwrap().unwrap();
        assert_eq!((us.trade_id(), us.event_time().as_micros(), us.side()), (8, 1_758_412_800_123_456, TakerSide::Buy));
        let header = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match";
        assert_eq!(parse_line(ReplayFormat::BinanceTrades, header, true, &btc(), now).unwrap(), None);
        assert_eq!(parse_line(ReplayFormat::BinanceTrades, &format!("\u{feff}{header}"), true, &btc(), now).unwrap(), None);
        // Only the first line may be a header: anywhere else it is a bad line.
        assert!(parse_line(ReplayFormat::BinanceTrades, header, false, &btc(), now).unwrap_err().to_string().starts_with("id:"));
        assert!(parse_line(ReplayFormat::BinanceTrades, "garbage", false, &btc(), now).is_err());
        let err = parse_line(ReplayFormat::BinanceTrades, "9,abc,1,1,1758412800123,True,True", false, &btc(), now).unwrap_err();
        assert!(err.to_string().starts_with("price:"), "{err}");
        let err = parse_line(ReplayFormat::BinanceTrades, "9,1,1,1758412800123,True,True", false, &btc(), now).unwrap_err();
        assert!(err.to_string().contains("6 fields, expected 7"), "{err}");
    }
}
