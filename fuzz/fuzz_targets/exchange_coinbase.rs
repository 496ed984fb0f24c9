//! Coinbase Exchange `match` / `last_match` / `heartbeat` and Advanced Trade `market_trades`.
#![no_main]

use feed_publisher::exchange::{coinbase, Exchange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    wick_fuzz::feed_message(Exchange::Coinbase, coinbase::parse(text, wick_fuzz::received()));
});
