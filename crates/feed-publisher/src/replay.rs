//! History files for `replay`: Binance public-data `trades` and `aggTrades` CSV files (with or
//! without a header line, millisecond or microsecond timestamps) and JSON lines of normalized
//! trades. This module recognizes a file's format and parses its lines; reading and pacing are
//! the command's.

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
