//! The gateway's WebSocket control messages, one per line of the input, sent in order on one
//! connection (`binance_ws::Connection::on_text`): Wick's `{"op":...}` (`subscribe`,
//! `unsubscribe`, `ping`) and Binance's methods (`SUBSCRIBE`, `UNSUBSCRIBE`,
//! `LIST_SUBSCRIPTIONS`), the protocol decided by the path or the first message.
//!
//! Input: one byte choosing the path (the bare `/ws`, or a Binance `/ws/<names>` or
//! `/stream?streams=<names>` whose names are the first line), then the messages.
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use query_gateway::binance_ws::{self, Connection, Framing, Protocol};
use query_gateway::config::BinanceConfig;
use query_gateway::live::{Hub, Pushed};
use query_gateway::metrics::Metrics;
use wick_core::{Candle, Instrument, Interval, TakerSide, Trade};
use wick_wire::CandleEventKind;

/// Subscriptions a connection may hold here: small, so the limit is reached.
const MAX_SUBSCRIPTIONS: usize = 3;

fn hub() -> &'static Arc<Hub> {
    static HUB: OnceLock<Arc<Hub>> = OnceLock::new();
    HUB.get_or_init(|| Hub::new(4, MAX_SUBSCRIPTIONS, Metrics::new()))
}

/// A candle event of `BINANCE:BTC-USDT` 1m, rendered for whatever the connection subscribed.
fn event() -> &'static Pushed {
    static EVENT: OnceLock<Pushed> = OnceLock::new();
    EVENT.get_or_init(|| {
        let at = wick_fuzz::received();
        let i = Instrument::new("BINANCE:BTC-USDT").expect("an instrument");
        let t = Trade::new(i, 1, "63250.1".parse().unwrap(), "0.5".parse().unwrap(), TakerSide::Buy, at, at).expect("a trade");
        Pushed::new(CandleEventKind::Update, Candle::from_trade(Interval::M1, &t).expect("a candle"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // warp hands the handler text frames only (binary ones are answered before it).
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let mut lines = text.split('\n');
    let binance = BinanceConfig::default();
    let protocol = match selector % 3 {
        0 => Protocol::Undecided,
        1 => Protocol::Binance(Framing::Raw),
        _ => Protocol::Binance(Framing::Combined),
    };
    let mut connection = Connection::new(hub().subscriber(), protocol, binance.clone());
    if protocol != Protocol::Undecided {
        // The path's stream names, refused with a reason before the upgrade or subscribed.
        let names = lines.next().unwrap_or_default();
        match binance_ws::parse_streams(names, &binance, MAX_SUBSCRIPTIONS) {
            Ok(streams) => {
                assert!(streams.len() <= MAX_SUBSCRIPTIONS);
                connection.subscribe_streams(streams).expect("streams within the limit are subscribed");
            }
            Err(e) => return wick_fuzz::refused(&e),
        }
    }
    // What Wick's replies say this connection is subscribed to.
    let mut subscribed = HashSet::new();
    for message in lines {
        let reply = connection.on_text(message);
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("a reply that is not JSON ({e}): {reply}"));
        if let Some(error) = v.get("error") {
            // Binance's shape: {"error":{"code":..,"msg":..},"id":..}.
            assert!(error["code"].is_i64(), "{reply}");
            assert!(!error["msg"].as_str().unwrap_or_default().trim().is_empty(), "an error without a reason: {reply}");
            continue;
        }
        if let Some(result) = v.get("result") {
            if let Some(names) = result.as_array() {
                assert!(names.len() <= MAX_SUBSCRIPTIONS, "{reply}");
            }
            continue;
        }
        let series = || (v["instrument"].as_str().expect("instrument").to_owned(), v["interval"].as_str().expect("interval").to_owned());
        match v["type"].as_str() {
            Some("pong") => {}
            Some("subscribed") => {
                subscribed.insert(series());
            }
            Some("unsubscribed") => assert!(subscribed.remove(&series()), "unsubscribed from what was not subscribed: {reply}"),
            Some("error") => assert!(!v["message"].as_str().unwrap_or_default().trim().is_empty(), "an error without a reason: {reply}"),
            _ => panic!("an unknown reply {reply}"),
        }
        assert!(subscribed.len() <= MAX_SUBSCRIPTIONS, "{} subscriptions", subscribed.len());
    }
    // A candle event, as this connection would push it, is JSON.
    if let Some(pushed) = connection.render(event(), wick_fuzz::received().as_millis()) {
        serde_json::from_str::<serde_json::Value>(&pushed).unwrap_or_else(|e| panic!("a push that is not JSON ({e}): {pushed}"));
    }
});
