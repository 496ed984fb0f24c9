//! The JSON single-trade record (`content-type: application/json` on `market-events`, and the
//! lines of a JSON-lines history file).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match wick_wire::decode_json_trade(data, wick_fuzz::received()) {
        Ok(trade) => wick_fuzz::accepted_trades(&[trade]),
        Err(e) => {
            wick_fuzz::refused(&e);
            assert!(!e.reason().is_empty());
        }
    }
});
