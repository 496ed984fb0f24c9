//! What the fuzz targets check of every parser's answer: a refusal says why, and whatever was
//! accepted survives the rest of the pipeline (the wire formats and candle aggregation) without a
//! panic and unchanged.
//!
//! The targets themselves (`fuzz_targets/`) only feed input to the crates' own entry points; the
//! properties live here so that every target holds its parser to the same ones.

use std::fmt::Display;

use feed_publisher::exchange::{self, Exchange, FeedMessage, ParseError};
use wick_core::{Candle, Instrument, Interval, Timestamp, Trade};

/// The receive time the targets give the parsers (2026-01-01T00:00:00Z): inside the supported
/// range, so only the input decides what is refused.
pub fn received() -> Timestamp {
    Timestamp::from_micros(1_767_225_600_000_000).expect("2026 is in range")
}

/// A refusal must say why: the reason goes to the dead-letter topic or back to the client.
pub fn refused(error: &impl Display) {
    let reason = error.to_string();
    assert!(!reason.trim().is_empty(), "a refusal without a reason");
}

/// An exchange message's outcome: trades that hold up downstream, instruments that map back to the
/// exchange's symbols, or a refusal with a reason.
pub fn feed_message(exchange: Exchange, outcome: Result<FeedMessage, ParseError>) {
    match outcome {
        Ok(FeedMessage::Trades(trades)) => {
            for t in &trades {
                instrument_of(exchange, t.instrument());
            }
            accepted_trades(&trades);
        }
        Ok(FeedMessage::Heartbeat { instrument, .. }) => instrument_of(exchange, &instrument),
        Ok(FeedMessage::Control(name)) => assert!(!name.is_empty(), "a control message without a name"),
        Err(e) => refused(&e),
    }
}

/// An instrument read from `exchange`'s feed is that exchange's, and its symbol maps back to it.
fn instrument_of(exchange: Exchange, instrument: &Instrument) {
    assert_eq!(instrument.exchange(), exchange.name(), "{instrument} read from {exchange}");
    let (back, symbol) = exchange::symbol_for(instrument).expect("the symbol of an instrument read from a feed");
    assert_eq!(back, exchange);
    assert_eq!(&exchange::instrument_for(exchange, &symbol).expect("the instrument of its own symbol"), instrument, "{symbol}");
}

/// Accepted trades, in the order they came: each survives both wire formats unchanged, and they
/// aggregate into candles (or are refused with a reason) that survive the wire unchanged.
pub fn accepted_trades(trades: &[Trade]) {
    for t in trades {
        let record = wick_wire::encode_trade_batch(t.instrument(), "", std::slice::from_ref(t));
        let (instrument, back) = wick_wire::decode_trade_batch(&record).expect("an accepted trade is read back from its own record");
        assert_eq!((&instrument, back.as_slice()), (t.instrument(), std::slice::from_ref(t)));
        let json = wick_wire::encode_json_trade(t);
        let back = wick_wire::decode_json_trade(&json, Timestamp::MIN).expect("an accepted trade is read back from its own JSON");
        assert_eq!(&back, t, "{}", String::from_utf8_lossy(&json));
    }
    // One candle per interval, fed every trade that falls in it: sums of hostile but valid trades
    // must overflow into an error, never a panic. Weeks only from the first Monday after the epoch:
    // ingest-aggregator refuses earlier trades at its door (`too_early`), as their week would open
    // in 1969, which the wire cannot hold.
    for interval in [Interval::S1, Interval::W1, Interval::Mo1] {
        let trades: Vec<&Trade> =
            trades.iter().filter(|t| interval != Interval::W1 || t.event_time() >= wick_core::EARLIEST_EVENT_TIME).collect();
        let mut candle: Option<Candle> = None;
        for t in trades {
            match &mut candle {
                Some(c) if c.instrument() == t.instrument() && c.open_time() == interval.bucket_start(t.event_time()) => {
                    if let Err(e) = c.apply(t) {
                        refused(&e);
                    }
                }
                _ => match Candle::from_trade(interval, t) {
                    Ok(c) => candle = Some(c),
                    Err(e) => refused(&e),
                },
            }
            if let Some(c) = &candle {
                accepted_candle(c);
            }
        }
    }
}

/// A valid candle survives the wire unchanged.
pub fn accepted_candle(candle: &Candle) {
    let back = wick_wire::candle_from_wire(&wick_wire::candle_to_wire(candle)).expect("a valid candle is read back from the wire");
    assert_eq!(&back, candle);
}
