//! Binance Spot `trade` / `aggTrade` messages, raw or in a combined stream, read as milliseconds
//! and as microseconds (`timeUnit=MICROSECOND`).
#![no_main]

use feed_publisher::exchange::{binance, Exchange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 (RFC 6455); the session refuses anything else before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    for micros in [false, true] {
        wick_fuzz::feed_message(Exchange::Binance, binance::parse(text, wick_fuzz::received(), micros));
    }
});
