//! Binance Spot `<symbol>@trade` and `<symbol>@aggTrade`, raw or wrapped in a combined stream
//! (`{"stream": ..., "data": ...}`). `m = true` ("the buyer is the maker") means the taker sold.

use serde::Deserialize;
use serde_json::value::RawValue;
use wick_core::{TakerSide, Timestamp};

use super::{decimal, field, instrument_for, json, trade, Exchange, FeedMessage, ParseError};

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    e: Option<&'a str>,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Event<'a> {
    e: &'a str,
    s: &'a str,
    /// Trade id (`trade`).
    t: Option<u64>,
    /// Aggregate trade id (`aggTrade`).
    a: Option<u64>,
    p: &'a str,
    q: &'a str,
    #[serde(rename = "T")]
    trade_time: i64,
    m: bool,
}

/// Parses one message. `micros` says the stream was opened with `timeUnit=MICROSECOND`.
pub fn parse(text: &str, received: Timestamp, micros: bool) -> Result<FeedMessage, ParseError> {
    let envelope: Envelope<'_> = json(text)?;
    let payload = match envelope.data {
        Some(data) => data.get(),
        None if envelope.e.is_some() => text,
        // `{"result": null, "id": 1}` acknowledges a SUBSCRIBE.
        None if envelope.id.is_some() || envelope.result.is_some() => return Ok(FeedMessage::Control("subscription response")),
        None => return Err(ParseError::UnknownType("message without an event type".into())),
    };
    let event: Event<'_> = serde_json::from_str(payload).map_err(|e| ParseError::Json(e.to_string()))?;
    let id = match event.e {
        "trade" => event.t.ok_or_else(|| field("t", "missing trade id"))?,
        "aggTrade" => event.a.ok_or_else(|| field("a", "missing aggregate trade id"))?,
        other => return Err(ParseError::UnknownType(other.to_owned())),
    };
    let time = if micros { Timestamp::from_micros(event.trade_time) } else { Timestamp::from_millis(event.trade_time) };
    let side = if event.m { TakerSide::Sell } else { TakerSide::Buy };
    Ok(FeedMessage::Trades(vec![trade(
        instrument_for(Exchange::Binance, event.s)?,
        id,
        decimal("p", event.p)?,
        decimal("q", event.q)?,
        side,
        time.map_err(|e| field("T", e))?,
        received,
    )?]))
}
