//! Wick's wire formats and their conversions to and from the `wick-core` model.
//!
//! - `market-events`: one record is a protobuf [`pb::TradeBatches`] (the trades of every instrument
//!   of one partition, content type [`CONTENT_TYPE_TRADE_BATCHES`]: what feed-publisher writes), a
//!   [`pb::TradeBatch`] (the trades of one instrument, content type [`CONTENT_TYPE_PROTOBUF`] or no
//!   header), or a single trade as JSON (content type [`CONTENT_TYPE_JSON`]), so that plain Kafka
//!   clients can publish ([`decode_json_trade`]). [`decode_market_record`] reads all three.
//! - `candles-completed`: one record is a [`pb::CandleBatches`] (the candle events of every
//!   instrument of one partition: what ingest-aggregator writes) or a [`pb::CandleBatch`] (one
//!   instrument's); [`decode_candle_record`] reads both.
//!
//! A record per partition rather than per instrument keeps the broker's record count independent
//! of the number of instruments: brokers are bound by records per second as much as by bytes.
//!
//! Decoding validates everything through the model's checked constructors; a record that does not
//! describe valid trades or candles is an error that says what is wrong, for the dead-letter topic.

use std::fmt;

use prost::Message;
use wick_core::{Candle, CandleParts, Decimal, Instrument, Interval, TakerSide, Timestamp, Trade, TradeKey};

/// The generated protobuf types of package `wick.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/wick.v1.rs"));
}

/// The header that marks a JSON single-trade record, and its value.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// A `market-events` record holding a [`pb::TradeBatches`].
pub const CONTENT_TYPE_TRADE_BATCHES: &str = "application/x-protobuf; proto=wick.v1.TradeBatches";
/// A `candles-completed` record holding a [`pb::CandleBatches`].
pub const CONTENT_TYPE_CANDLE_BATCHES: &str = "application/x-protobuf; proto=wick.v1.CandleBatches";

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a valid protobuf {message}: {reason}")]
    Protobuf { message: &'static str, reason: String },
    #[error("not a valid JSON trade: {0}")]
    Json(String),
    #[error("{field} is missing")]
    Missing { field: &'static str },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{field}: {source}")]
    Time { field: &'static str, source: wick_core::TimestampError },
    #[error("trade refused: {0}")]
    Refused(wick_core::TradeError),
    #[error("trade {index} of the batch: {source}")]
    InBatch { index: usize, source: Box<WireError> },
}

impl WireError {
    /// A short, stable name of the refusal, for dead-letter headers and metric labels:
    /// `bad_time` (outside 1970 to 2199), the trade's own reasons (`too_precise`, `not_positive`),
    /// or `malformed` for everything else.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Time { .. } => "bad_time",
            WireError::Refused(e) => e.reason(),
            WireError::InBatch { source, .. } => source.reason(),
            WireError::Protobuf { .. } | WireError::Json(_) | WireError::Missing { .. } | WireError::Invalid { .. } => "malformed",
        }
    }
}

fn invalid(field: &'static str, reason: impl fmt::Display) -> WireError {
    WireError::Invalid { field, reason: reason.to_string() }
}

impl From<Decimal> for pb::Decimal {
    fn from(d: Decimal) -> pb::Decimal {
        let c = d.coefficient();
        pb::Decimal { hi: (c >> 64) as i64, lo: c as u64, scale: u32::from(d.scale()) }
    }
}

/// A decimal from the wire, checked.
pub fn decimal(field: &'static str, d: Option<&pb::Decimal>) -> Result<Decimal, WireError> {
    let d = d.ok_or(WireError::Missing { field })?;
    let coefficient = (i128::from(d.hi) << 64) | i128::from(d.lo);
    u8::try_from(d.scale)
        .ok()
        .and_then(|scale| Decimal::new(coefficient, scale))
        .ok_or_else(|| invalid(field, format!("scale {} is above {}", d.scale, wick_core::decimal::MAX_SCALE)))
}

fn timestamp(field: &'static str, micros: i64) -> Result<Timestamp, WireError> {
    Timestamp::from_micros(micros).map_err(|source| WireError::Time { field, source })
}

fn side_to_wire(side: TakerSide) -> pb::TakerSide {
    match side {
        TakerSide::Buy => pb::TakerSide::Buy,
        TakerSide::Sell => pb::TakerSide::Sell,
        TakerSide::Unknown => pb::TakerSide::Unknown,
    }
}

fn side_from_wire(side: i32) -> Result<TakerSide, WireError> {
    match pb::TakerSide::try_from(side) {
        Ok(pb::TakerSide::Buy) => Ok(TakerSide::Buy),
        Ok(pb::TakerSide::Sell) => Ok(TakerSide::Sell),
        Ok(pb::TakerSide::Unknown) => Ok(TakerSide::Unknown),
        Err(_) => Err(invalid("side", format!("unknown taker side {side}"))),
    }
}

/// A trade on the wire, without its instrument when it travels in a batch.
pub fn trade_to_wire(trade: &Trade, with_instrument: bool) -> pb::Trade {
    pb::Trade {
        instrument: if with_instrument { trade.instrument().to_string() } else { String::new() },
        trade_id: trade.trade_id(),
        price: Some(trade.price().into()),
        quantity: Some(trade.quantity().into()),
        side: side_to_wire(trade.side()) as i32,
        event_time_us: trade.event_time().as_micros(),
        receive_time_us: trade.receive_time().as_micros(),
        exchange_symbol: String::new(),
    }
}

/// A trade from the wire, checked, for `instrument` (the batch's).
pub fn trade_from_wire(t: &pb::Trade, instrument: &Instrument) -> Result<Trade, WireError> {
    Trade::new(
        instrument.clone(),
        t.trade_id,
        decimal("price", t.price.as_ref())?,
        decimal("quantity", t.quantity.as_ref())?,
        side_from_wire(t.side)?,
        timestamp("event_time_us", t.event_time_us)?,
        timestamp("receive_time_us", t.receive_time_us)?,
    )
    .map_err(WireError::Refused)
}

/// Encodes the trades of one instrument as one `market-events` record value.
pub fn encode_trade_batch(instrument: &Instrument, exchange_symbol: &str, trades: &[Trade]) -> Vec<u8> {
    trade_batch_to_wire(instrument, exchange_symbol, trades).encode_to_vec()
}

/// Decodes every item of a batch; the first failure names the item's index.
fn each_in_batch<T, U>(items: &[T], decode: impl Fn(&T) -> Result<U, WireError>) -> Result<Vec<U>, WireError> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| decode(item).map_err(|source| WireError::InBatch { index, source: Box::new(source) }))
        .collect()
}

/// Decodes a `market-events` protobuf record into its trades. Every trade must belong to the
/// batch's instrument; one invalid trade makes the whole record invalid (it goes to the
/// dead-letter topic as it came).
pub fn decode_trade_batch(bytes: &[u8]) -> Result<(Instrument, Vec<Trade>), WireError> {
    let batch = pb::TradeBatch::decode(bytes).map_err(|e| WireError::Protobuf { message: "TradeBatch", reason: e.to_string() })?;
    let instrument = Instrument::new(&batch.instrument).map_err(|e| invalid("instrument", e))?;
    let trades = each_in_batch(&batch.trades, |t| {
        if !t.instrument.is_empty() && t.instrument != batch.instrument {
            return Err(invalid("instrument", format!("trade of {} in a batch of {}", t.instrument, batch.instrument)));
        }
        trade_from_wire(t, &instrument)
    })?;
    Ok((instrument, trades))
}

/// A trade of a batch that was refused, for the dead-letter topic: `value` is a `TradeBatch` of the
/// batch's instrument holding only that trade, as it came.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedTrade {
    pub index: usize,
    pub error: WireError,
    pub value: Vec<u8>,
}

/// Decodes a `market-events` protobuf record trade by trade: a record that cannot be read at all
/// is an error, but one bad trade in a readable batch is refused alone and the others go on.
pub fn decode_trade_batch_each(bytes: &[u8]) -> Result<(Instrument, Vec<Result<Trade, RefusedTrade>>), WireError> {
    let batch = pb::TradeBatch::decode(bytes).map_err(|e| WireError::Protobuf { message: "TradeBatch", reason: e.to_string() })?;
    trade_batch_each(&batch)
}

/// A decoded `TradeBatch`, trade by trade; an invalid instrument is an error of the whole batch.
fn trade_batch_each(batch: &pb::TradeBatch) -> Result<(Instrument, Vec<Result<Trade, RefusedTrade>>), WireError> {
    let instrument = Instrument::new(&batch.instrument).map_err(|e| invalid("instrument", e))?;
    let trades = batch
        .trades
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let decoded = if !t.instrument.is_empty() && t.instrument != batch.instrument {
                Err(invalid("instrument", format!("trade of {} in a batch of {}", t.instrument, batch.instrument)))
            } else {
                trade_from_wire(t, &instrument)
            };
            decoded.map_err(|error| {
                let alone = pb::TradeBatch {
                    instrument: batch.instrument.clone(),
                    exchange_symbol: batch.exchange_symbol.clone(),
                    trades: vec![t.clone()],
                };
                RefusedTrade { index, error: WireError::InBatch { index, source: Box::new(error) }, value: alone.encode_to_vec() }
            })
        })
        .collect();
    Ok((instrument, trades))
}

/// The JSON form of one trade, as plain clients publish it: decimals as strings, times as epoch
/// microseconds or RFC 3339 strings.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct JsonTrade {
    instrument: String,
    trade_id: u64,
    price: serde_json::Value,
    quantity: serde_json::Value,
    #[serde(default)]
    side: Option<String>,
    event_time: serde_json::Value,
    #[serde(default)]
    receive_time: Option<serde_json::Value>,
}

fn json_decimal(field: &'static str, v: &serde_json::Value) -> Result<Decimal, WireError> {
    match v {
        serde_json::Value::String(s) => s.parse().map_err(|e| invalid(field, e)),
        _ => Err(invalid(field, "must be a string (decimals travel as strings so they stay exact)")),
    }
}

fn json_time(field: &'static str, v: &serde_json::Value) -> Result<Timestamp, WireError> {
    match v {
        serde_json::Value::Number(n) => timestamp(field, n.as_i64().ok_or_else(|| invalid(field, "must be an integer of microseconds"))?),
        serde_json::Value::String(s) => Timestamp::parse_rfc3339(s).map_err(|source| WireError::Time { field, source }),
        _ => Err(invalid(field, "must be epoch microseconds or an RFC 3339 string")),
    }
}

/// Decodes a single JSON trade (`content-type: application/json`). Without a `receive_time`, the
/// trade's receive time is `received`.
///
/// ```json
/// {"instrument":"BINANCE:BTC-USDT","trade_id":1,"price":"63250.10","quantity":"0.0015","side":"buy",
///  "event_time":"2026-09-21T12:00:00.250Z"}
/// ```
pub fn decode_json_trade(bytes: &[u8], received: Timestamp) -> Result<Trade, WireError> {
    let j: JsonTrade = serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
    let side = match j.side.as_deref() {
        Some("buy") => TakerSide::Buy,
        Some("sell") => TakerSide::Sell,
        Some("unknown") | None => TakerSide::Unknown,
        Some(other) => return Err(invalid("side", format!("{other:?} is not buy, sell or unknown"))),
    };
    Trade::new(
        Instrument::new(&j.instrument).map_err(|e| invalid("instrument", e))?,
        j.trade_id,
        json_decimal("price", &j.price)?,
        json_decimal("quantity", &j.quantity)?,
        side,
        json_time("event_time", &j.event_time)?,
        j.receive_time.as_ref().map(|v| json_time("receive_time", v)).transpose()?.unwrap_or(received),
    )
    .map_err(WireError::Refused)
}

/// Encodes a trade as the JSON single-trade record (the inverse of [`decode_json_trade`]).
pub fn encode_json_trade(trade: &Trade) -> Vec<u8> {
    let j = JsonTrade {
        instrument: trade.instrument().to_string(),
        trade_id: trade.trade_id(),
        price: serde_json::Value::String(trade.price().to_string()),
        quantity: serde_json::Value::String(trade.quantity().to_string()),
        side: Some(trade.side().as_str().to_owned()),
        event_time: serde_json::Value::from(trade.event_time().as_micros()),
        receive_time: Some(serde_json::Value::from(trade.receive_time().as_micros())),
    };
    serde_json::to_vec(&j).unwrap_or_default()
}

/// What happened to a candle, as carried on `candles-completed`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CandleEventKind {
    /// In progress (throttled).
    Update,
    /// Final: the watermark passed its end.
    Final,
    /// A late trade changed a final candle.
    Revision,
}

pub fn candle_to_wire(candle: &Candle) -> pb::Candle {
    let first = candle.first_trade().unwrap_or_default();
    let last = candle.last_trade().unwrap_or_default();
    pb::Candle {
        instrument: candle.instrument().to_string(),
        interval: candle.interval().as_str().to_owned(),
        open_time_us: candle.open_time().as_micros(),
        close_time_us: candle.close_time().as_micros(),
        open: Some(candle.open().into()),
        high: Some(candle.high().into()),
        low: Some(candle.low().into()),
        close: Some(candle.close().into()),
        volume: Some(candle.volume().into()),
        quote_volume: Some(candle.quote_volume().into()),
        taker_buy_volume: Some(candle.taker_buy_volume().into()),
        taker_buy_quote_volume: Some(candle.taker_buy_quote_volume().into()),
        trade_count: candle.trade_count(),
        first_trade_id: first.trade_id,
        last_trade_id: last.trade_id,
        first_trade_time_us: first.event_time.as_micros(),
        last_trade_time_us: last.event_time.as_micros(),
        closed: candle.is_closed(),
        version: candle.version(),
    }
}

/// A candle from the wire, checked by the model's constructor; its version must be the one the
/// model derives (trades, plus one once final).
pub fn candle_from_wire(c: &pb::Candle) -> Result<Candle, WireError> {
    let parts = CandleParts {
        instrument: Instrument::new(&c.instrument).map_err(|e| invalid("instrument", e))?,
        interval: c.interval.parse::<Interval>().map_err(|e| invalid("interval", e))?,
        open_time: timestamp("open_time_us", c.open_time_us)?,
        open: decimal("open", c.open.as_ref())?,
        high: decimal("high", c.high.as_ref())?,
        low: decimal("low", c.low.as_ref())?,
        close: decimal("close", c.close.as_ref())?,
        volume: decimal("volume", c.volume.as_ref())?,
        quote_volume: decimal("quote_volume", c.quote_volume.as_ref())?,
        taker_buy_volume: decimal("taker_buy_volume", c.taker_buy_volume.as_ref())?,
        taker_buy_quote_volume: decimal("taker_buy_quote_volume", c.taker_buy_quote_volume.as_ref())?,
        trade_count: c.trade_count,
        first_trade: TradeKey { event_time: timestamp("first_trade_time_us", c.first_trade_time_us)?, trade_id: c.first_trade_id },
        last_trade: TradeKey { event_time: timestamp("last_trade_time_us", c.last_trade_time_us)?, trade_id: c.last_trade_id },
        closed: c.closed,
    };
    let candle = Candle::from_parts(parts).map_err(|e| invalid("candle", e))?;
    if candle.version() != c.version {
        return Err(invalid(
            "version",
            format!("{} does not match the candle ({} trades, closed: {})", c.version, c.trade_count, c.closed),
        ));
    }
    if candle.close_time().as_micros() != c.close_time_us {
        return Err(invalid("close_time_us", format!("{} is not the {} candle's close time", c.close_time_us, candle.interval())));
    }
    Ok(candle)
}

/// Encodes the candle events of one instrument as one `candles-completed` record value.
pub fn encode_candle_batch(instrument: &Instrument, events: &[(CandleEventKind, Candle)]) -> Vec<u8> {
    candle_batch_to_wire(instrument, events).encode_to_vec()
}

/// Decodes a `candles-completed` record of the single-instrument format (a `CandleBatch`).
pub fn decode_candle_batch(bytes: &[u8]) -> Result<(Instrument, Vec<(CandleEventKind, Candle)>), WireError> {
    let batch = pb::CandleBatch::decode(bytes).map_err(|e| WireError::Protobuf { message: "CandleBatch", reason: e.to_string() })?;
    candle_batch_from_wire(&batch)
}

/// A decoded `CandleBatch`: every event must be valid and of the batch's instrument.
fn candle_batch_from_wire(batch: &pb::CandleBatch) -> Result<(Instrument, Vec<(CandleEventKind, Candle)>), WireError> {
    let instrument = Instrument::new(&batch.instrument).map_err(|e| invalid("instrument", e))?;
    let events = each_in_batch(&batch.events, |e| {
        let kind = match pb::CandleEventKind::try_from(e.kind) {
            Ok(pb::CandleEventKind::Update) => CandleEventKind::Update,
            Ok(pb::CandleEventKind::Final) => CandleEventKind::Final,
            Ok(pb::CandleEventKind::Revision) => CandleEventKind::Revision,
            _ => return Err(invalid("kind", format!("unknown candle event kind {}", e.kind))),
        };
        let candle = candle_from_wire(e.candle.as_ref().ok_or(WireError::Missing { field: "candle" })?)?;
        if !candle.instrument().same_as(&instrument) {
            return Err(invalid("instrument", format!("candle of {} in a batch of {instrument}", candle.instrument())));
        }
        Ok((kind, candle))
    })?;
    Ok((instrument, events))
}

/// The candle events of one instrument as its part of a `candles-completed` record.
pub fn candle_batch_to_wire(instrument: &Instrument, events: &[(CandleEventKind, Candle)]) -> pb::CandleBatch {
    pb::CandleBatch {
        instrument: instrument.to_string(),
        events: events
            .iter()
            .map(|(kind, candle)| pb::CandleEvent {
                kind: match kind {
                    CandleEventKind::Update => pb::CandleEventKind::Update,
                    CandleEventKind::Final => pb::CandleEventKind::Final,
                    CandleEventKind::Revision => pb::CandleEventKind::Revision,
                } as i32,
                candle: Some(candle_to_wire(candle)),
            })
            .collect(),
    }
}

/// The trades of one instrument as its part of a `market-events` record.
pub fn trade_batch_to_wire(instrument: &Instrument, exchange_symbol: &str, trades: &[Trade]) -> pb::TradeBatch {
    pb::TradeBatch {
        instrument: instrument.to_string(),
        exchange_symbol: exchange_symbol.to_owned(),
        trades: trades.iter().map(|t| trade_to_wire(t, false)).collect(),
    }
}

/// What a record holds, by its `content-type` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// One instrument's batch (`application/x-protobuf`, or no header: the first format).
    Batch,
    /// The batches of a partition (`application/x-protobuf; proto=...Batches`).
    Batches,
    /// One JSON trade (`application/json`).
    Json,
}

fn format_of(content_type: Option<&[u8]>, batches: &str, json: bool) -> Result<Format, WireError> {
    let Some(raw) = content_type else { return Ok(Format::Batch) };
    let value = std::str::from_utf8(raw).map_err(|_| invalid("content-type", "is not UTF-8"))?.trim();
    if value.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF) {
        Ok(Format::Batch)
    } else if value == batches {
        Ok(Format::Batches)
    } else if json && value.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
        Ok(Format::Json)
    } else {
        let accepted = if json {
            format!("{CONTENT_TYPE_PROTOBUF}, {batches} or {CONTENT_TYPE_JSON}")
        } else {
            format!("{CONTENT_TYPE_PROTOBUF} or {batches}")
        };
        Err(invalid("content-type", format!("{value:?} is not one of {accepted}")))
    }
}

/// One instrument's part of a record that was refused as a whole (its instrument is not valid, or
/// it sits on the wrong partition), for the dead-letter topic: `value` is the part alone, as a
/// record of the single-instrument format (a `TradeBatch` or `CandleBatch`).
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedPart {
    pub error: WireError,
    pub value: Vec<u8>,
}

/// One instrument's trades in a `market-events` record, each decoded on its own.
pub type TradePart = Result<(Instrument, Vec<Result<Trade, RefusedTrade>>), RefusedPart>;

/// Decodes a `market-events` record of any of its formats, trade by trade: a record that cannot be
/// read at all is an error (the whole record goes to the dead-letter topic); otherwise each
/// instrument's part and each trade in it stands or falls alone. `received` is the receive time of
/// a JSON trade that carries none.
pub fn decode_market_record(content_type: Option<&[u8]>, value: &[u8], received: Timestamp) -> Result<Vec<TradePart>, WireError> {
    match format_of(content_type, CONTENT_TYPE_TRADE_BATCHES, true)? {
        Format::Json => {
            let trade = decode_json_trade(value, received)?;
            Ok(vec![Ok((trade.instrument().clone(), vec![Ok(trade)]))])
        }
        Format::Batch => Ok(vec![Ok(decode_trade_batch_each(value)?)]),
        Format::Batches => {
            let batches =
                pb::TradeBatches::decode(value).map_err(|e| WireError::Protobuf { message: "TradeBatches", reason: e.to_string() })?;
            Ok(batches
                .batches
                .into_iter()
                .map(|batch| trade_batch_each(&batch).map_err(|error| RefusedPart { error, value: batch.encode_to_vec() }))
                .collect())
        }
    }
}

/// Every trade of a `market-events` record, all or nothing: for clients and tests that read the
/// topic and want the first problem as an error.
pub fn trades_of_record(
    content_type: Option<&[u8]>,
    value: &[u8],
    received: Timestamp,
) -> Result<Vec<(Instrument, Vec<Trade>)>, WireError> {
    decode_market_record(content_type, value, received)?
        .into_iter()
        .map(|part| {
            let (instrument, trades) = part.map_err(|p| p.error)?;
            let trades = trades.into_iter().map(|t| t.map_err(|r| r.error)).collect::<Result<Vec<_>, _>>()?;
            Ok((instrument, trades))
        })
        .collect()
}

/// The candle events of one instrument, in order.
pub type InstrumentEvents = (Instrument, Vec<(CandleEventKind, Candle)>);

/// One instrument's candle events in a `candles-completed` record.
pub type CandlePart = Result<InstrumentEvents, RefusedPart>;

/// Decodes a `candles-completed` record of either format: a record that cannot be read at all is
/// an error; otherwise each instrument's part stands or falls alone.
pub fn decode_candle_record(content_type: Option<&[u8]>, value: &[u8]) -> Result<Vec<CandlePart>, WireError> {
    match format_of(content_type, CONTENT_TYPE_CANDLE_BATCHES, false)? {
        Format::Batch | Format::Json => Ok(vec![Ok(decode_candle_batch(value)?)]),
        Format::Batches => {
            let batches =
                pb::CandleBatches::decode(value).map_err(|e| WireError::Protobuf { message: "CandleBatches", reason: e.to_string() })?;
            Ok(batches
                .batches
                .into_iter()
                .map(|batch| candle_batch_from_wire(&batch).map_err(|error| RefusedPart { error, value: batch.encode_to_vec() }))
                .collect())
        }
    }
}

/// Every candle event of a `candles-completed` record, all or nothing.
pub fn candles_of_record(content_type: Option<&[u8]>, value: &[u8]) -> Result<Vec<InstrumentEvents>, WireError> {
    decode_candle_record(content_type, value)?.into_iter().map(|part| part.map_err(|p| p.error)).collect()
}

/// The value of a `market-events` record of a partition's batches ([`CONTENT_TYPE_TRADE_BATCHES`]).
pub fn encode_trade_batches(batches: Vec<pb::TradeBatch>) -> Vec<u8> {
    pb::TradeBatches { batches }.encode_to_vec()
}

/// The value of a `candles-completed` record of a partition's batches ([`CONTENT_TYPE_CANDLE_BATCHES`]).
pub fn encode_candle_batches(batches: Vec<pb::CandleBatch>) -> Vec<u8> {
    pb::CandleBatches { batches }.encode_to_vec()
}
