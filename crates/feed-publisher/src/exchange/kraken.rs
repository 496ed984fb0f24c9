//! Kraken WebSocket v2 `trade` (objects; prices and quantities are JSON numbers, read exactly from
//! their raw text) and v1 `trade` (positional arrays of strings).
//!
//! v2's `side` is the taker's. v1 carries no trade id: Wick derives one from the timestamp in
//! microseconds and the trade's position in the message (`micros * 1000 + index`), stable across
//! replays of the same message but not across reconnects that re-send a trade in another message;
//! prefer v2, whose `trade_id` is Kraken's own per-book sequence.

use serde::Deserialize;
use serde_json::value::RawValue;
use wick_core::{TakerSide, Timestamp};

use super::{decimal, field, instrument_for, json, trade, Exchange, FeedMessage, ParseError};

#[derive(Deserialize)]
struct V2<'a> {
    #[serde(default)]
    channel: Option<&'a str>,
    #[serde(default)]
    method: Option<&'a str>,
    /// v1 control messages (`heartbeat`, `systemStatus`, `subscriptionStatus`) are objects too.
    #[serde(default)]
    event: Option<&'a str>,
    /// Parsed only for the `trade` channel: other channels (`status`, ...) carry other shapes.
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct V2Trade<'a> {
    symbol: &'a str,
    side: &'a str,
    #[serde(borrow)]
    price: &'a RawValue,
    #[serde(borrow)]
    qty: &'a RawValue,
    trade_id: u64,
    timestamp: &'a str,
}

pub(crate) fn taker(side: &str) -> Result<TakerSide, ParseError> {
    match side {
        "buy" | "b" => Ok(TakerSide::Buy),
        "sell" | "s" => Ok(TakerSide::Sell),
        other => Err(field("side", format!("{other:?} is not buy or sell"))),
    }
}

/// A JSON number (or string) taken from its raw text, never through `f64`.
fn exact(name: &'static str, raw: &RawValue) -> Result<wick_core::Decimal, ParseError> {
    decimal(name, raw.get().trim_matches('"'))
}

pub fn parse(text: &str, received: Timestamp) -> Result<FeedMessage, ParseError> {
    if text.trim_start().starts_with('[') {
        return parse_v1(text, received);
    }
    let m: V2<'_> = json(text)?;
    if m.method.is_some() {
        return Ok(FeedMessage::Control("method response"));
    }
    match m.event {
        Some("heartbeat" | "systemStatus" | "subscriptionStatus" | "pong") => return Ok(FeedMessage::Control("v1 event")),
        Some(other) => return Err(ParseError::UnknownType(format!("v1 event {other}"))),
        None => {}
    }
    match m.channel {
        Some("trade") => {
            let data: Vec<V2Trade<'_>> = match m.data {
                Some(raw) => serde_json::from_str(raw.get()).map_err(|e| ParseError::Json(e.to_string()))?,
                None => Vec::new(),
            };
            let trades = data
                .iter()
                .map(|t| {
                    trade(
                        instrument_for(Exchange::Kraken, t.symbol)?,
                        t.trade_id,
                        exact("price", t.price)?,
                        exact("qty", t.qty)?,
                        taker(t.side)?,
                        Timestamp::parse_rfc3339(t.timestamp).map_err(|e| field("timestamp", e))?,
                        received,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(FeedMessage::Trades(trades))
        }
        Some("heartbeat" | "status") => Ok(FeedMessage::Control("heartbeat or status")),
        Some(other) => Err(ParseError::UnknownType(other.to_owned())),
        None => Err(ParseError::UnknownType("message without a channel".into())),
    }
}

/// `[channelID, [[price, volume, "sec.micros", side, orderType, misc], ...], "trade", "XBT/USD"]`.
fn parse_v1(text: &str, received: Timestamp) -> Result<FeedMessage, ParseError> {
    let m: Vec<&RawValue> = json(text)?;
    let kind: &str = m.get(m.len().saturating_sub(2)).and_then(|v| serde_json::from_str(v.get()).ok()).unwrap_or("");
    if kind != "trade" {
        return Err(ParseError::UnknownType(format!("v1 {kind}")));
    }
    let pair: &str = m.last().and_then(|v| serde_json::from_str(v.get()).ok()).ok_or_else(|| field("pair", "missing"))?;
    let instrument = instrument_for(Exchange::Kraken, pair)?;
    let rows: Vec<Vec<&str>> =
        m.get(1).and_then(|v| serde_json::from_str(v.get()).ok()).ok_or_else(|| field("trades", "expected an array of string arrays"))?;
    let trades = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let [price, volume, time, side, ..] = row.as_slice() else {
                return Err(field("trades", format!("trade {index} has {} fields, expected at least 4", row.len())));
            };
            // The time is checked before the id is derived from it: inside the supported range
            // (1970 to 2199) `micros * 1000 + index` is far below u64::MAX; outside, it overflowed.
            let event_time = Timestamp::from_micros(seconds_to_micros(time)?).map_err(|e| field("time", e))?;
            let id = u64::try_from(event_time.as_micros()).map_err(|_| field("time", "negative"))? * 1000 + index as u64;
            trade(instrument.clone(), id, decimal("price", price)?, decimal("volume", volume)?, taker(side)?, event_time, received)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FeedMessage::Trades(trades))
}

/// `"1534614057.321597"` -> microseconds, exactly.
pub(crate) fn seconds_to_micros(text: &str) -> Result<i64, ParseError> {
    let d = decimal("time", text)?;
    let scaled = d.rescaled(d.scale().max(6)).ok_or_else(|| field("time", format!("{text:?} out of range")))?;
    let micros = scaled.coefficient() / 10i128.pow(u32::from(scaled.scale() - 6));
    i64::try_from(micros).map_err(|_| field("time", format!("{text:?} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_time_beyond_the_supported_range_is_refused_not_an_overflow() {
        // Found by `cargo fuzz` (fuzz/corpus/exchange_kraken/crash-51671a95...): 19957717862 s is
        // in the year 2602, and its id, micros * 1000, overflowed u64 before the time was checked.
        let text = r#"[42,[["0.5117","40.00000000","19957717862.08706","b","m",""]],"trade","MATIC/USD"]"#;
        let err = parse(text, Timestamp::MIN).unwrap_err();
        assert!(err.to_string().starts_with("time: "), "{err}");
        // The last second before 2200 still makes a trade, with its id derived from the time.
        let text = r#"[42,[["0.5117","40","7258118399.999999","b","m",""]],"trade","MATIC/USD"]"#;
        let FeedMessage::Trades(trades) = parse(text, Timestamp::MIN).unwrap() else { panic!("expected trades") };
        assert_eq!(trades[0].trade_id(), 7_258_118_399_999_999 * 1000);
    }
}
