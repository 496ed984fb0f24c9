//! A history file for `feed-publisher replay`, read as the command reads one: the first line
//! tells the format (Binance trades or aggTrades CSV, or JSON lines), then every line is parsed;
//! here every line is also parsed in the other two formats.
#![no_main]

use std::path::Path;

use feed_publisher::replay::{self, ReplayFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("BTCUSDT-trades-2026-09-21.csv");
    let instrument = replay::instrument_from_file_name(path).expect("a Binance file name");
    // `BufRead::read_line`: a first line that is not UTF-8 fails the file before any parsing.
    let first_end = data.iter().position(|&b| b == b'\n').map_or(data.len(), |i| i + 1);
    let detected = match std::str::from_utf8(&data[..first_end]) {
        Ok(first) => replay::detect(path, first).inspect_err(wick_fuzz::refused).ok(),
        Err(_) => None,
    };
    for format in [ReplayFormat::BinanceTrades, ReplayFormat::BinanceAggTrades, ReplayFormat::JsonLines] {
        let mut trades = Vec::new();
        // Lines as the command splits them: at '\n', each decoded lossily.
        for (index, line) in data.split(|&b| b == b'\n').enumerate() {
            let text = String::from_utf8_lossy(line);
            match replay::parse_line(format, &text, index == 0, &instrument, wick_fuzz::received()) {
                Ok(Some(trade)) => {
                    if format != ReplayFormat::JsonLines {
                        assert_eq!(trade.instrument(), &instrument, "a CSV trade is the file's instrument's");
                    }
                    trades.push(trade);
                }
                Ok(None) => assert!(text.trim().is_empty() || index == 0, "only the first line may be skipped as a header: {text:?}"),
                Err(e) => wick_fuzz::refused(&e),
            }
        }
        if detected == Some(format) {
            wick_fuzz::accepted_trades(&trades);
        }
    }
});
