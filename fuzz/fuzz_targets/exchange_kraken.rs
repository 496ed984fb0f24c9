//! Kraken WebSocket v2 `trade` objects and v1 `trade` arrays (one entry point tells them apart).
#![no_main]

use feed_publisher::exchange::{kraken, Exchange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    wick_fuzz::feed_message(Exchange::Kraken, kraken::parse(text, wick_fuzz::received()));
});
