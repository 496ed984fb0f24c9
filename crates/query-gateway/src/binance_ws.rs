//! Binance's kline WebSocket streams, so that a Binance WebSocket client works unchanged against
//! Wick: the raw stream `/ws/<symbol>@kline_<interval>` (several names separated by `/`), the
//! combined stream `/stream?streams=<name>/<name>` (every message wrapped as
//! `{"stream":<name>,"data":<payload>}`), and Binance's live methods on either (`SUBSCRIBE`,
//! `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, answered `{"result":...,"id":...}` or
//! `{"error":{"code":...,"msg":...},"id":...}`). A client that connects to the bare `/ws` and
//! sends a Binance method first (as `binance-connector`'s `SpotWebsocketStreamClient` does) gets
//! the Binance protocol on that connection; one that sends Wick's `{"op":...}` first gets Wick's.
//!
//! The payload is Binance's kline event (`e`, `E`, `s`, `k` with `t T s i f L o c h l v n x q V Q
//! B`). Wick pushes every update of an open candle (at most once per `aggregation.update_throttle`
//! of the aggregator) and its final state with `x: true`; a revision of a closed candle (a late
//! trade within the revision window) is pushed as the same kline again with `x: true`, the newest
//! state of that open time, which Binance clients keep as they keep any kline update.

use std::collections::BTreeMap;

use wick_core::{Candle, Interval};

use crate::config::BinanceConfig;
use crate::live::{Series, Subscriber};
use crate::query;

/// How a Binance stream connection frames its messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    /// `/ws/...`: the payload alone.
    Raw,
    /// `/stream?streams=...`: `{"stream":<name>,"data":<payload>}`.
    Combined,
}

/// Binance's error codes for a bad method message.
const UNKNOWN_PROPERTY: i64 = 0;
const INVALID_VALUE: i64 = 1;
const INVALID_REQUEST: i64 = 2;
const INVALID_JSON: i64 = 3;

/// A stream name as Binance writes it: `btcusdt@kline_1m` (lower-case symbol), and its series.
/// Symbols are read as `/api/v3/klines` reads them (`binance.exchange`, `binance.quote_assets`).
pub fn parse_stream(name: &str, binance: &BinanceConfig) -> Result<(String, Series), String> {
    let (symbol, interval) = name
        .split_once("@kline_")
        .ok_or_else(|| format!("unknown stream {name:?}: this server serves <symbol>@kline_<interval> streams"))?;
    let instrument = query::binance_symbol(&symbol.to_ascii_uppercase(), &binance.exchange, &binance.quote_assets)
        .map_err(|_| format!("invalid symbol {symbol:?} in stream {name:?}"))?;
    let interval: Interval = interval.parse().map_err(|e| format!("invalid interval in stream {name:?}: {e}"))?;
    Ok((format!("{}@kline_{interval}", symbol.to_ascii_lowercase()), (instrument, interval)))
}

/// The stream names of a `/ws/<names>` path tail or a `streams=` value, `/`-separated.
pub fn parse_streams(names: &str, binance: &BinanceConfig, max: usize) -> Result<Vec<(String, Series)>, String> {
    let names: Vec<&str> = names.split('/').filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Err("no stream named: expected <symbol>@kline_<interval>, several separated by /".into());
    }
    if names.len() > max {
        return Err(format!("{} streams named, at most {max} per connection", names.len()));
    }
    names.into_iter().map(|n| parse_stream(n, binance)).collect()
}

/// Binance's kline event of a candle, at event time `event_ms`.
pub fn kline_event(candle: &Candle, event_ms: i64) -> String {
    let symbol = query::to_binance_symbol(candle.instrument());
    let d = |x: wick_core::Decimal| x.to_string_min_scale(8);
    let (first, last) = match candle.first_trade().zip(candle.last_trade()).filter(|_| candle.trade_count() > 0) {
        Some((f, l)) => (f.trade_id as i64, l.trade_id as i64),
        None => (-1, -1),
    };
    format!(
        r#"{{"e":"kline","E":{event_ms},"s":"{symbol}","k":{{"t":{},"T":{},"s":"{symbol}","i":"{}","f":{first},"L":{last},"o":"{}","c":"{}","h":"{}","l":"{}","v":"{}","n":{},"x":{},"q":"{}","V":"{}","Q":"{}","B":"0"}}}}"#,
        candle.open_time().as_millis(),
        candle.close_time().as_millis(),
        candle.interval(),
        d(candle.open()),
        d(candle.close()),
        d(candle.high()),
        d(candle.low()),
        d(candle.volume()),
        candle.trade_count(),
        candle.is_closed(),
        d(candle.quote_volume()),
        d(candle.taker_buy_volume()),
        d(candle.taker_buy_quote_volume()),
    )
}

/// The protocol a connection speaks: decided by its path, or by the first message on the bare
/// `/ws`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Undecided,
    Wick,
    Binance(Framing),
}

/// One WebSocket connection's protocol and Binance stream names (the subscriptions themselves are
/// the [`Subscriber`]'s).
#[derive(Debug)]
pub struct Connection {
    pub sub: Subscriber,
    pub protocol: Protocol,
    binance: BinanceConfig,
    /// The series subscribed through Binance stream names, and the name each was asked by.
    streams: BTreeMap<Series, String>,
}

/// A message to the client.
pub type Reply = String;

impl Connection {
    pub fn new(sub: Subscriber, protocol: Protocol, binance: BinanceConfig) -> Connection {
        Connection { sub, protocol, binance, streams: BTreeMap::new() }
    }

    /// Subscribes the streams a Binance path names (`/ws/<names>`, `/stream?streams=`).
    /// All or none: a list that would pass the connection's limit subscribes nothing.
    pub fn subscribe_streams(&mut self, streams: Vec<(String, Series)>) -> Result<(), String> {
        let mut added = Vec::new();
        for (name, series) in streams {
            match self.sub.subscribe(series.clone()) {
                Ok(new) => {
                    if new {
                        added.push(series.clone());
                    }
                    self.streams.entry(series).or_insert(name);
                }
                Err(e) => {
                    for series in added {
                        self.sub.unsubscribe(&series);
                        self.streams.remove(&series);
                    }
                    return Err(e.to_string());
                }
            }
        }
        Ok(())
    }

    /// The reply to one text message from the client.
    pub fn on_text(&mut self, text: &str) -> Reply {
        if self.protocol == Protocol::Undecided {
            let binance = serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.get("method").is_some());
            self.protocol = if binance { Protocol::Binance(Framing::Raw) } else { Protocol::Wick };
        }
        match self.protocol {
            Protocol::Binance(_) => self.on_method(text),
            _ => crate::rest::handle_client_message(&mut self.sub, text).to_str().unwrap_or_default().to_owned(),
        }
    }

    /// A Binance method message: `{"method":"SUBSCRIBE","params":[...],"id":1}`.
    fn on_method(&mut self, text: &str) -> Reply {
        let error =
            |code: i64, msg: String, id: &serde_json::Value| serde_json::json!({"error": {"code": code, "msg": msg}, "id": id}).to_string();
        let null = serde_json::Value::Null;
        let v: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return error(INVALID_JSON, format!("Invalid JSON: {e}"), &null),
        };
        let Some(o) = v.as_object() else { return error(INVALID_REQUEST, "Invalid request: expected a JSON object".into(), &null) };
        let id = o.get("id").cloned().unwrap_or(serde_json::Value::Null);
        if !(id.is_null() || id.is_u64() || id.is_i64() || id.is_string()) {
            return error(INVALID_VALUE, "Invalid value type: the id must be an integer, a string or null".into(), &null);
        }
        let Some(method) = o.get("method").and_then(|m| m.as_str()) else {
            return error(INVALID_REQUEST, "Invalid request: a Binance method message names its method (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS); this connection speaks Binance's protocol since its first message".into(), &id);
        };
        if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "method" | "params" | "id")) {
            return error(UNKNOWN_PROPERTY, format!("Unknown property {k:?}"), &id);
        }
        let params = || -> Result<Vec<(String, Series)>, String> {
            let list = o.get("params").and_then(|p| p.as_array()).ok_or("Invalid request: params must be a list of stream names")?;
            let names: Vec<&str> =
                list.iter().map(|p| p.as_str().ok_or("Invalid value type: stream names are strings")).collect::<Result<_, _>>()?;
            if names.is_empty() {
                return Err("Invalid request: params names no stream".into());
            }
            names.into_iter().map(|n| parse_stream(n, &self.binance).map_err(|e| format!("Invalid request: {e}"))).collect()
        };
        match method {
            "SUBSCRIBE" => match params() {
                Ok(streams) => match self.subscribe_streams(streams) {
                    Ok(()) => serde_json::json!({"result": null, "id": id}).to_string(),
                    Err(e) => error(INVALID_REQUEST, format!("Invalid request: {e}"), &id),
                },
                Err(e) => error(INVALID_REQUEST, e, &id),
            },
            "UNSUBSCRIBE" => match params() {
                Ok(streams) => {
                    for (_, series) in streams {
                        if self.streams.remove(&series).is_some() {
                            self.sub.unsubscribe(&series);
                        }
                    }
                    serde_json::json!({"result": null, "id": id}).to_string()
                }
                Err(e) => error(INVALID_REQUEST, e, &id),
            },
            "LIST_SUBSCRIPTIONS" => {
                let names: Vec<&String> = self.streams.values().collect();
                serde_json::json!({"result": names, "id": id}).to_string()
            }
            other => error(
                INVALID_REQUEST,
                format!("Invalid request: unknown method {other:?} (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS)"),
                &id,
            ),
        }
    }

    /// The message a pushed candle event becomes on this connection.
    pub fn render(&self, event: &crate::live::Pushed, now_ms: i64) -> Option<String> {
        match self.protocol {
            Protocol::Binance(framing) => {
                let series = (event.candle.instrument().clone(), event.candle.interval());
                let name = self.streams.get(&series)?;
                let payload = kline_event(&event.candle, now_ms);
                Some(match framing {
                    Framing::Raw => payload,
                    Framing::Combined => format!(r#"{{"stream":"{name}","data":{payload}}}"#),
                })
            }
            _ => Some(event.json().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wick_core::{Instrument, TakerSide, Timestamp, Trade};

    use super::*;
    use crate::live::{Hub, Pushed};
    use crate::metrics::Metrics;

    fn binance() -> BinanceConfig {
        crate::config::Config::default().binance
    }

    fn candle() -> Candle {
        let i = Instrument::new("BINANCE:BTC-USDT").unwrap();
        let t = |id: u64, ms: i64, p: &str, side| {
            let at = Timestamp::from_millis(ms).unwrap();
            Trade::new(i.clone(), id, p.parse().unwrap(), "0.5".parse().unwrap(), side, at, at).unwrap()
        };
        let mut c = Candle::from_trade(Interval::M1, &t(100, 1_672_515_780_500, "16500.1", TakerSide::Buy)).unwrap();
        c.apply(&t(101, 1_672_515_790_000, "16499.9", TakerSide::Sell)).unwrap();
        c
    }

    #[test]
    fn stream_names_read_as_binance_writes_them() {
        let (name, (instrument, interval)) = parse_stream("btcusdt@kline_1m", &binance()).unwrap();
        assert_eq!((name.as_str(), instrument.as_str(), interval), ("btcusdt@kline_1m", "BINANCE:BTC-USDT", Interval::M1));
        assert_eq!(parse_stream("BTCUSDT@kline_1M", &binance()).unwrap().0, "btcusdt@kline_1M");
        for bad in ["btcusdt@trade", "btcusdt@kline_7m", "@kline_1m", "btc@kline_1m", "btcusdt"] {
            let e = parse_stream(bad, &binance()).unwrap_err();
            assert!(!e.is_empty() && e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(parse_streams("btcusdt@kline_1m/ethusdt@kline_1h", &binance(), 64).unwrap().len(), 2);
        assert!(parse_streams("", &binance(), 64).is_err());
        assert!(parse_streams("btcusdt@kline_1m/ethusdt@kline_1h", &binance(), 1).unwrap_err().contains("at most 1"));
    }

    #[test]
    fn a_kline_event_has_binance_shape() {
        let v: serde_json::Value = serde_json::from_str(&kline_event(&candle(), 1_672_515_791_000)).unwrap();
        assert_eq!(v["e"], "kline");
        assert_eq!(v["E"], 1_672_515_791_000_i64);
        assert_eq!(v["s"], "BTCUSDT");
        let k = &v["k"];
        assert_eq!(k["t"], 1_672_515_780_000_i64);
        assert_eq!(k["T"], 1_672_515_839_999_i64, "close time = start + interval - 1 ms");
        assert_eq!((k["s"].as_str(), k["i"].as_str()), (Some("BTCUSDT"), Some("1m")));
        assert_eq!((k["f"].as_i64(), k["L"].as_i64(), k["n"].as_i64()), (Some(100), Some(101), Some(2)));
        assert_eq!((k["o"].as_str(), k["c"].as_str()), (Some("16500.10000000"), Some("16499.90000000")));
        assert_eq!(
            (k["h"].as_str(), k["l"].as_str(), k["v"].as_str()),
            (Some("16500.10000000"), Some("16499.90000000"), Some("1.00000000"))
        );
        assert_eq!(k["q"], "16500.00000000");
        assert_eq!((k["V"].as_str(), k["Q"].as_str()), (Some("0.50000000"), Some("8250.05000000")));
        assert_eq!(k["x"], false);
        assert_eq!(k["B"], "0");
    }

    #[test]
    fn binance_methods_subscribe_list_and_unsubscribe() {
        let hub = Hub::new(8, 2, Metrics::new());
        let mut c = Connection::new(hub.subscriber(), Protocol::Undecided, binance());
        let reply = |c: &mut Connection, m: &str| serde_json::from_str::<serde_json::Value>(&c.on_text(m)).unwrap();
        assert_eq!(
            reply(&mut c, r#"{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}"#),
            serde_json::json!({"result": null, "id": 1})
        );
        assert_eq!(c.protocol, Protocol::Binance(Framing::Raw));
        assert_eq!(reply(&mut c, r#"{"method":"LIST_SUBSCRIPTIONS","id":2}"#)["result"], serde_json::json!(["btcusdt@kline_1m"]));
        // Pushes of the subscribed series are klines; others never reach the connection.
        let pushed = Pushed::new(wick_wire::CandleEventKind::Update, candle());
        let k: serde_json::Value = serde_json::from_str(&c.render(&pushed, 1).unwrap()).unwrap();
        assert_eq!(k["k"]["i"], "1m");
        for (bad, code) in [
            ("{", INVALID_JSON),
            (r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":3}"#, INVALID_REQUEST),
            (r#"{"method":"SUBSCRIBE","params":"btcusdt@kline_1m","id":3}"#, INVALID_REQUEST),
            (r#"{"method":"SUBSCRIBE","params":[],"id":3}"#, INVALID_REQUEST),
            (r#"{"method":"FLY","id":3}"#, INVALID_REQUEST),
            (r#"{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":3,"x":1}"#, UNKNOWN_PROPERTY),
            (r#"{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":[1]}"#, INVALID_VALUE),
            (r#"{"op":"subscribe","instrument":"BINANCE:BTC-USDT","interval":"1m"}"#, INVALID_REQUEST),
            (r#"{"method":"SUBSCRIBE","params":["ethusdt@kline_1m","solusdt@kline_1m"],"id":4}"#, INVALID_REQUEST),
        ] {
            let v = reply(&mut c, bad);
            assert_eq!(v["error"]["code"], code, "{bad}: {v}");
            assert!(!v["error"]["msg"].as_str().unwrap().is_empty(), "{bad}: {v}");
        }
        assert_eq!(
            reply(&mut c, r#"{"method":"UNSUBSCRIBE","params":["btcusdt@kline_1m"],"id":"u"}"#),
            serde_json::json!({"result": null, "id": "u"})
        );
        // The refused list subscribed nothing.
        assert_eq!(reply(&mut c, r#"{"method":"LIST_SUBSCRIPTIONS","id":5}"#)["result"], serde_json::json!([]));
    }

    #[test]
    fn combined_streams_wrap_each_payload_with_its_name() {
        let hub = Hub::new(8, 8, Metrics::new());
        let mut c = Connection::new(hub.subscriber(), Protocol::Binance(Framing::Combined), binance());
        c.subscribe_streams(parse_streams("BTCUSDT@kline_1m", &binance(), 8).unwrap()).unwrap();
        let pushed = Arc::new(Pushed::new(wick_wire::CandleEventKind::Final, {
            let mut k = candle();
            k.mark_closed();
            k
        }));
        let v: serde_json::Value = serde_json::from_str(&c.render(&pushed, 7).unwrap()).unwrap();
        assert_eq!(v["stream"], "btcusdt@kline_1m");
        assert_eq!(v["data"]["k"]["x"], true);
    }

    #[test]
    fn a_wick_first_message_keeps_wicks_protocol() {
        let hub = Hub::new(8, 8, Metrics::new());
        let mut c = Connection::new(hub.subscriber(), Protocol::Undecided, binance());
        let v: serde_json::Value = serde_json::from_str(&c.on_text(r#"{"op":"ping"}"#)).unwrap();
        assert_eq!(v["type"], "pong");
        assert_eq!(c.protocol, Protocol::Wick);
    }
}
