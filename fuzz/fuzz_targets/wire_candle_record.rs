//! A `candles-completed` record as persistence-writer and query-gateway read it: `CandleBatches` or
//! `CandleBatch` by its content-type header, part by part (`decode_candle_record`) and all or
//! nothing (`candles_of_record`).
//!
//! Input: one byte choosing the header (none, one of the two accepted, or the input up to its first
//! '\n'), then the record's value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick_wire::{CONTENT_TYPE_CANDLE_BATCHES, CONTENT_TYPE_PROTOBUF};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (content_type, value): (Option<&[u8]>, &[u8]) = match selector % 4 {
        0 => (None, rest),
        1 => (Some(CONTENT_TYPE_PROTOBUF.as_bytes()), rest),
        2 => (Some(CONTENT_TYPE_CANDLE_BATCHES.as_bytes()), rest),
        _ => match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (Some(rest), &[]),
        },
    };
    let all = wick_wire::candles_of_record(content_type, value);
    let parts = match wick_wire::decode_candle_record(content_type, value) {
        Ok(parts) => parts,
        Err(e) => {
            wick_fuzz::refused(&e);
            assert_eq!(all, Err(e), "both readers refuse an unreadable record alike");
            return;
        }
    };
    let mut accepted = Vec::new();
    let mut first_error = None;
    for part in parts {
        match part {
            Err(refused) => {
                wick_fuzz::refused(&refused.error);
                assert!(!refused.error.reason().is_empty());
                // What goes to the dead-letter topic reads back as a batch refused for the same reason.
                let again = wick_wire::decode_candle_batch(&refused.value).map(|_| ());
                assert_eq!(again, Err(refused.error.clone()), "a refused part, read back alone");
                first_error.get_or_insert(refused.error);
            }
            Ok((instrument, events)) => {
                for (_, candle) in &events {
                    assert_eq!(candle.instrument(), &instrument);
                    wick_fuzz::accepted_candle(candle);
                }
                // The part re-encoded is the same part.
                let again =
                    wick_wire::decode_candle_batch(&wick_wire::encode_candle_batch(&instrument, &events)).expect("a part read back");
                assert_eq!(again, (instrument.clone(), events.clone()));
                accepted.push((instrument, events));
            }
        }
    }
    match first_error {
        Some(e) => assert_eq!(all, Err(e), "all or nothing stops at the first refusal"),
        None => assert_eq!(all, Ok(accepted), "all or nothing accepts what part by part accepts"),
    }
});
