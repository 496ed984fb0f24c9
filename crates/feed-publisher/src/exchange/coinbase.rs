//! Coinbase Exchange `matches` (with `heartbeat` for gap detection) and Advanced Trade
//! `market_trades`.
//!
//! The Exchange feed's `side` is the maker's ("if the side is sell ... the match is considered an
//! up-tick"), so the taker is the opposite. Advanced Trade does not say clearly; NautilusTrader,
//! bbgo and tardis treat it as the maker side too, and so does Wick: the taker is the opposite.

use serde::Deserialize;
use wick_core::{TakerSide, Timestamp};

use super::{decimal, field, instrument_for, json, trade, Exchange, FeedMessage, ParseError};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", default)]
    kind: Option<&'a str>,
    #[serde(default)]
    channel: Option<&'a str>,
    #[serde(default)]
    trade_id: Option<u64>,
    #[serde(default)]
    last_trade_id: Option<u64>,
    #[serde(default)]
    time: Option<&'a str>,
    #[serde(default)]
    product_id: Option<&'a str>,
    #[serde(default)]
    size: Option<&'a str>,
    #[serde(default)]
    price: Option<&'a str>,
    #[serde(default)]
    side: Option<&'a str>,
    #[serde(borrow, default)]
    events: Vec<AdvancedEvent<'a>>,
}

#[derive(Deserialize)]
struct AdvancedEvent<'a> {
    #[serde(borrow, default)]
    trades: Vec<AdvancedTrade<'a>>,
}

#[derive(Deserialize)]
struct AdvancedTrade<'a> {
    trade_id: &'a str,
    product_id: &'a str,
    price: &'a str,
    size: &'a str,
    side: &'a str,
    time: &'a str,
}

pub(crate) fn taker_from_maker(maker: &str) -> Result<TakerSide, ParseError> {
    match maker.to_ascii_lowercase().as_str() {
        "sell" => Ok(TakerSide::Buy),
        "buy" => Ok(TakerSide::Sell),
        other => Err(field("side", format!("{other:?} is not buy or sell"))),
    }
}

pub(crate) fn time(text: &str) -> Result<Timestamp, ParseError> {
    Timestamp::parse_rfc3339(text).map_err(|e| field("time", e))
}

fn required<'a>(name: &'static str, value: Option<&'a str>) -> Result<&'a str, ParseError> {
    value.ok_or_else(|| field(name, "missing"))
}

pub fn parse(text: &str, received: Timestamp) -> Result<FeedMessage, ParseError> {
    let m: Message<'_> = json(text)?;
    if let Some(channel) = m.channel {
        return match channel {
            "market_trades" => {
                let mut trades = Vec::new();
                for t in m.events.iter().flat_map(|e| &e.trades) {
                    let id = t.trade_id.parse().map_err(|_| field("trade_id", format!("{:?} is not an integer", t.trade_id)))?;
                    trades.push(trade(
                        instrument_for(Exchange::Coinbase, t.product_id)?,
                        id,
                        decimal("price", t.price)?,
                        decimal("size", t.size)?,
                        taker_from_maker(t.side)?,
                        time(t.time)?,
                        received,
                    )?);
                }
                Ok(FeedMessage::Trades(trades))
            }
            "subscriptions" | "heartbeats" => Ok(FeedMessage::Control("advanced trade control")),
            other => Err(ParseError::UnknownType(other.to_owned())),
        };
    }
    match m.kind {
        Some("match" | "last_match") => Ok(FeedMessage::Trades(vec![trade(
            instrument_for(Exchange::Coinbase, required("product_id", m.product_id)?)?,
            m.trade_id.ok_or_else(|| field("trade_id", "missing"))?,
            decimal("price", required("price", m.price)?)?,
            decimal("size", required("size", m.size)?)?,
            taker_from_maker(required("side", m.side)?)?,
            time(required("time", m.time)?)?,
            received,
        )?])),
        Some("heartbeat") => Ok(FeedMessage::Heartbeat {
            instrument: instrument_for(Exchange::Coinbase, required("product_id", m.product_id)?)?,
            last_trade_id: m.last_trade_id.ok_or_else(|| field("last_trade_id", "missing"))?,
        }),
        Some("subscriptions") => Ok(FeedMessage::Control("subscriptions")),
        Some("error") => Err(field("error", text.chars().take(200).collect::<String>())),
        Some(other) => Err(ParseError::UnknownType(other.to_owned())),
        None => Err(ParseError::UnknownType("message without a type".into())),
    }
}
