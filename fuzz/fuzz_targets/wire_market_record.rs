//! A `market-events` record as ingest-aggregator reads it: `TradeBatches`, `TradeBatch` or a JSON
//! trade by its content-type header, decoded part by part and trade by trade
//! (`decode_market_record`) and all or nothing (`trades_of_record`).
//!
//! Input: one byte choosing the header (none, one of the three accepted, or the input up to its
//! first '\n'), then the record's value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick_wire::{CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, CONTENT_TYPE_TRADE_BATCHES};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (content_type, value): (Option<&[u8]>, &[u8]) = match selector % 5 {
        0 => (None, rest),
        1 => (Some(CONTENT_TYPE_PROTOBUF.as_bytes()), rest),
        2 => (Some(CONTENT_TYPE_TRADE_BATCHES.as_bytes()), rest),
        3 => (Some(CONTENT_TYPE_JSON.as_bytes()), rest),
        _ => match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (Some(rest), &[]),
        },
    };
    let received = wick_fuzz::received();
    let all = wick_wire::trades_of_record(content_type, value, received);
    let parts = match wick_wire::decode_market_record(content_type, value, received) {
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
                // What goes to the dead-letter topic reads back as a batch refused for the same reason.
                let again = wick_wire::decode_trade_batch_each(&refused.value).map(|_| ());
                assert_eq!(again, Err(refused.error.clone()), "a refused part, read back alone");
                first_error.get_or_insert(refused.error);
            }
            Ok((instrument, trades)) => {
                let mut ok = Vec::new();
                for t in trades {
                    match t {
                        Ok(trade) => {
                            assert_eq!(trade.instrument(), &instrument);
                            ok.push(trade);
                        }
                        Err(refused) => {
                            wick_fuzz::refused(&refused.error);
                            assert!(!refused.error.reason().is_empty());
                            // The dead-lettered value holds that trade alone, refused alike.
                            let (again_instrument, again) =
                                wick_wire::decode_trade_batch_each(&refused.value).expect("a refused trade's batch");
                            assert_eq!(again_instrument, instrument);
                            match again.as_slice() {
                                [Err(r)] => assert_eq!(inner(&r.error), inner(&refused.error)),
                                other => panic!("a refused trade read back alone as {other:?}"),
                            }
                            first_error.get_or_insert(refused.error);
                        }
                    }
                }
                wick_fuzz::accepted_trades(&ok);
                accepted.push((instrument, ok));
            }
        }
    }
    match first_error {
        Some(e) => assert_eq!(all, Err(e), "all or nothing stops at the first refusal"),
        None => assert_eq!(all, Ok(accepted), "all or nothing accepts what trade by trade accepts"),
    }
});

/// A trade's own refusal, without the index of the batch it was in.
fn inner(e: &wick_wire::WireError) -> &wick_wire::WireError {
    match e {
        wick_wire::WireError::InBatch { source, .. } => source,
        other => other,
    }
}
