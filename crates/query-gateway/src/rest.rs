//! The HTTP side (warp): `/api/v1/candles`, `/api/v1/instruments`, Binance's `/api/v3/klines`,
//! `/api/openapi.json`, the WebSocket `/ws`, and the live chart page at `/`.
//!
//! Every parameter of every route is declared once in [`ROUTES`]: requests are validated against
//! it (unknown, repeated and missing parameters are refused with 400) and the OpenAPI document is
//! generated from it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use warp::http::{Response, StatusCode};
use warp::ws::{Message, WebSocket};

use crate::binance_ws::{Connection, Framing, Protocol};
use warp::Filter;
use wick_core::{Candle, Instrument, Interval, Timestamp, UtcOffset};

use crate::config::BinanceConfig;
use crate::error::ApiError;
use crate::query::{self, CandleQuery, Fill, Page};
use crate::read::JsonItems;
use crate::Gateway;

/// A query parameter of a route.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub required: bool,
    /// `string` or `integer`.
    pub kind: &'static str,
    pub description: &'static str,
}

/// A route of the REST API.
#[derive(Debug)]
pub struct Route {
    pub path: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    /// Binance's error shape (`{code, msg}`) instead of `{code, message}`.
    pub binance: bool,
}

const fn param(name: &'static str, required: bool, kind: &'static str, description: &'static str) -> Param {
    Param { name, required, kind, description }
}

const INTERVALS: &str = "1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M";

/// The parameters of Binance's `/api/v3/klines` and `/api/v3/uiKlines`.
const KLINE_PARAMS: &[Param] = &[
    param("symbol", true, "string", "Binance symbol, e.g. BTCUSDT"),
    param("interval", true, "string", "One of 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M"),
    param("startTime", false, "integer", "Epoch milliseconds, UTC"),
    param("endTime", false, "integer", "Epoch milliseconds, UTC"),
    param("timeZone", false, "string", "UTC offset of the interval boundaries: hours or hours:minutes from -12:00 to +14:00, default 0"),
    param("limit", false, "integer", "1 to 1000, default 500"),
    param("api_key", false, "string", "API key, when the x-api-key header cannot be sent"),
];

pub const ROUTES: &[Route] = &[
    Route {
        path: "/api/v1/candles",
        summary: "Candles of one instrument and interval, oldest first. With start: the first `limit` candles opening at or after \
                  start (and at or before end and now), and next_start, the start of the next page (null when none is left; also \
                  in a Link header, rel=\"next\"): paging from start=0 with it returns every candle once. With fill=previous the \
                  series is filled from its first candle on: a page is the `limit` intervals from start (from the first candle when \
                  start precedes it), gaps filled, and next_start the interval after it. Without start: the most recent `limit` \
                  intervals up to end (default now); next_start is null.",
        params: &[
            param("instrument", true, "string", "EXCHANGE:BASE-QUOTE, e.g. BINANCE:BTC-USDT"),
            param("interval", true, "string", "One of 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M"),
            param(
                "start",
                false,
                "string",
                "Open time from (inclusive): epoch milliseconds or RFC 3339; the next_start of a previous page",
            ),
            param("end", false, "string", "Open time to (inclusive): epoch milliseconds or RFC 3339"),
            param("limit", false, "integer", "Candles per page (with fill=previous: intervals), 1 to 1000, default 500"),
            param(
                "fill",
                false,
                "string",
                "none (default): intervals without trades are left out; previous: a flat candle at the previous close in every interval \
                 from the first candle on",
            ),
            param("api_key", false, "string", "API key, when the x-api-key header cannot be sent"),
        ],
        binance: false,
    },
    Route {
        path: "/api/v1/instruments",
        summary: "The instruments with candles.",
        params: &[param("api_key", false, "string", "API key, when the x-api-key header cannot be sent")],
        binance: false,
    },
    Route {
        path: "/api/v3/klines",
        summary: "Binance's klines: the same request and response as Binance's public endpoint, for instruments of the configured \
                  default exchange (symbol BTCUSDT means BINANCE:BTC-USDT).",
        params: KLINE_PARAMS,
        binance: true,
    },
    Route {
        path: "/api/v3/uiKlines",
        summary: "Binance's uiKlines (klines for charts): the same request and response as /api/v3/klines; on Wick both are the \
                  exact candles.",
        params: KLINE_PARAMS,
        binance: true,
    },
];

fn route(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.path == path)
}

/// Checks a query string against a route's declared parameters.
fn params(route: &Route, pairs: Vec<(String, String)>) -> Result<HashMap<&'static str, String>, ApiError> {
    let mut out = HashMap::new();
    for (name, value) in pairs {
        let Some(p) = route.params.iter().find(|p| p.name == name) else {
            let known: Vec<&str> = route.params.iter().map(|p| p.name).collect();
            return Err(ApiError::invalid("query", format!("unknown parameter '{name}' (expected one of: {})", known.join(", "))));
        };
        if out.insert(p.name, value).is_some() {
            return Err(ApiError::invalid("query", format!("parameter '{name}' given more than once")));
        }
    }
    for p in route.params {
        if p.required && out.get(p.name).is_none_or(|v| v.is_empty()) {
            return Err(ApiError::MissingParameter(p.name));
        }
    }
    Ok(out)
}

/// What [`query::parse_time`] accepts, as an OpenAPI pattern: epoch milliseconds (digits), or RFC
/// 3339 with a real calendar date (leap years included), a second up to 60, any fraction, `T`, `t`
/// or a space between date and time, and `Z`, `z` or an offset up to ±23:59.
pub const TIME_PATTERN: &str = concat!(
    "^([0-9]+|",
    "([0-9]{4}-(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|[0-9]{4}-(0[469]|11)-(0[1-9]|[12][0-9]|30)",
    "|[0-9]{4}-02-(0[1-9]|1[0-9]|2[0-8])|([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[048]|[2468][048]|[13579][26])00)-02-29)",
    "[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])",
    ")$"
);
/// What `wick_core::UtcOffset` parses for Binance's `timeZone`: hours, or hours:minutes, of one or
/// two digits, from -12:00 to +14:00.
pub const OFFSET_PATTERN: &str = "^(\\+?((0?[0-9]|1[0-3])(:[0-5]?[0-9])?|14(:0{1,2})?)|-((0?[0-9]|1[01])(:[0-5]?[0-9])?|12(:0{1,2})?))$";
/// What `wick_core::Instrument::new` accepts (with at most 64 bytes).
pub const INSTRUMENT_PATTERN: &str = "^[A-Z0-9_]+:[A-Z0-9]+-[A-Z0-9]+$";
/// The shape of a Binance symbol ([`query::binance_symbol`]).
pub const SYMBOL_PATTERN: &str = "^[A-Z0-9]{2,20}$";

/// The OpenAPI 3.0 document of the REST API, from [`ROUTES`]. `symbols` are the Binance symbols
/// the gateway has candles for (an unknown one is refused, as Binance does), listed as the only
/// valid values of `symbol`; `max_source_candles` is the `timeZone` limit (`binance` config).
pub fn openapi(symbols: &[String], max_source_candles: usize) -> serde_json::Value {
    let error = |binance: bool| {
        if binance {
            serde_json::json!({"type": "object", "properties": {"code": {"type": "integer"}, "msg": {"type": "string"}}, "required": ["code", "msg"]})
        } else {
            serde_json::json!({"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]})
        }
    };
    let bodies = |r: &Route| match r.path {
        "/api/v1/candles" => serde_json::json!({"type": "object", "properties": {
            "candles": {"type": "array", "items": {"$ref": "#/components/schemas/Candle"}},
            "next_start": {"type": "integer", "nullable": true, "description": "epoch ms: the start of the next page (the same query with start=next_start); null when none is left"}
        }, "required": ["candles", "next_start"]}),
        "/api/v1/instruments" => {
            serde_json::json!({"type": "object", "properties": {"instruments": {"type": "array", "items": {"$ref": "#/components/schemas/Instrument"}}}, "required": ["instruments"]})
        }
        _ => {
            serde_json::json!({"type": "array", "items": {"type": "array", "minItems": 12, "maxItems": 12, "items": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}})
        }
    };
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let parameters: Vec<serde_json::Value> = r
            .params
            .iter()
            .map(|p| {
                let mut schema = serde_json::json!({ "type": p.kind });
                if p.name == "interval" {
                    schema["enum"] = INTERVALS.split(' ').collect::<Vec<_>>().into();
                }
                if p.name == "limit" {
                    schema =
                        serde_json::json!({"type": "integer", "minimum": 1, "maximum": query::MAX_LIMIT, "default": query::DEFAULT_LIMIT});
                }
                if p.name == "fill" {
                    schema["enum"] = serde_json::json!(["none", "previous"]);
                }
                // Exactly what the gateway accepts, checked against the parsers by the tests below
                // and against the running gateway by schemathesis (tests/contract.rs).
                let mut description = p.description.to_owned();
                match p.name {
                    "instrument" => {
                        schema["pattern"] = INSTRUMENT_PATTERN.into();
                        schema["maxLength"] = 64.into();
                    }
                    "symbol" if symbols.is_empty() => {
                        schema["pattern"] = SYMBOL_PATTERN.into();
                        description.push_str("; none has candles yet, and an unknown symbol is refused (400, -1121)");
                    }
                    "symbol" => {
                        schema["enum"] = symbols.into();
                        description.push_str("; one with candles (an unknown symbol is refused: 400, -1121)");
                    }
                    "start" | "end" => {
                        schema["pattern"] = TIME_PATTERN.into();
                        description.push_str(
                            "; a time before 1970 or after 2199 reads as the first or the last instant stored; start after end is refused",
                        );
                    }
                    "startTime" | "endTime" => {
                        // Up to 20 digits, as on Binance; OpenAPI 3.0's exclusive bound says 20 nines.
                        schema = serde_json::json!({"type": "integer", "minimum": 0, "maximum": 1e20, "exclusiveMaximum": true});
                        description
                            .push_str(", 1 to 20 digits; after 2199 reads as the last instant stored; startTime after endTime is refused");
                    }
                    "timeZone" => {
                        schema["pattern"] = OFFSET_PATTERN.into();
                        let _ = write!(
                            description,
                            ". An offset that moves the interval's boundaries is answered from smaller stored candles: a request that \
                             would combine more than {max_source_candles} of them is refused (400, lower the limit)"
                        );
                    }
                    _ => {}
                }
                serde_json::json!({"name": p.name, "in": "query", "required": p.required, "description": description, "schema": schema})
            })
            .collect();
        let err = |d: &str| serde_json::json!({"description": d, "content": {"application/json": {"schema": error(r.binance)}}});
        let mut ok = serde_json::json!({"description": "OK", "content": {"application/json": {"schema": bodies(r)}}});
        if r.path == "/api/v1/candles" {
            ok["headers"] = serde_json::json!({"Link": {
                "description": "RFC 8288 link to the next page, rel=\"next\", when next_start is not null",
                "schema": {"type": "string"}
            }});
        }
        paths.insert(
            r.path.to_owned(),
            serde_json::json!({"get": {
                "summary": r.summary,
                "parameters": parameters,
                "security": [{}, {"apiKey": []}, {"bearer": []}],
                "responses": {
                    "200": ok,
                    "400": err(
                        "A parameter is missing, unknown, repeated or invalid, or two of them contradict each other (see their \
                         descriptions)"
                    ),
                    "401": err("An API key is required or unknown"),
                    "429": err("Rate limited: see the Retry-After header"),
                    "503": err("The database cannot answer and no cache holds the range"),
                }
            }}),
        );
    }
    let dec = serde_json::json!({"type": "string", "description": "exact decimal"});
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Wick query-gateway", "version": env!("CARGO_PKG_VERSION"), "description": "OHLCV candles from trade feeds. WebSocket live candles at /ws; gRPC wick.v1.CandleService on the gRPC port."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "bearer": {"type": "http", "scheme": "bearer"}
            },
            "schemas": {
                "Instrument": {"type": "object", "properties": {"instrument": {"type": "string"}, "exchange": {"type": "string"}, "base": {"type": "string"}, "quote": {"type": "string"}}},
                "Candle": {"type": "object", "properties": {
                    "instrument": {"type": "string"}, "interval": {"type": "string"},
                    "open_time": {"type": "integer", "description": "epoch ms, inclusive"},
                    "close_time": {"type": "integer", "description": "next open time - 1 ms"},
                    "open": dec, "high": dec, "low": dec, "close": dec, "volume": dec, "quote_volume": dec,
                    "taker_buy_volume": dec, "taker_buy_quote_volume": dec,
                    "vwap": {"type": "string", "nullable": true, "description": "quote volume / volume, 16 decimals; null without trades"},
                    "trade_count": {"type": "integer"},
                    "first_trade_id": {"type": "integer", "nullable": true}, "last_trade_id": {"type": "integer", "nullable": true},
                    "closed": {"type": "boolean"}, "version": {"type": "integer"}
                }}
            }
        }
    })
}

fn klines_body(bars: &[query::Bar]) -> String {
    let mut s = String::with_capacity(2 + bars.len() * 200);
    s.push('[');
    for (i, b) in bars.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let d = |x: wick_core::Decimal| x.to_string_min_scale(8);
        let _ = write!(
            s,
            r#"[{},"{}","{}","{}","{}","{}",{},"{}",{},"{}","{}","0"]"#,
            b.open_time.as_millis(),
            d(b.open),
            d(b.high),
            d(b.low),
            d(b.close),
            d(b.volume),
            b.close_time.as_millis(),
            d(b.quote_volume),
            b.trade_count,
            d(b.taker_buy_volume),
            d(b.taker_buy_quote_volume)
        );
    }
    s.push(']');
    s
}

fn json_response(status: StatusCode, body: String) -> Response<String> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", warp::http::HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError, binance: bool) -> Response<String> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = json_response(status, e.body(binance).to_string());
    if let Some(after) = e.retry_after() {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        if let Ok(v) = warp::http::HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

/// What an API request carries besides its query.
#[derive(Debug, Default)]
struct Caller {
    x_api_key: Option<String>,
    authorization: Option<String>,
    address: Option<SocketAddr>,
}

impl Gateway {
    /// A page of candles for a validated query (shared by REST and gRPC); [`query`] says what
    /// `start`, `limit` and `fill` mean.
    pub async fn candles(&self, q: &CandleQuery) -> Result<Page, ApiError> {
        if self.read.surely_unknown(&q.instrument) {
            return Ok(Page::default());
        }
        let now = self.clock.now();
        match (q.first_open(), q.fill) {
            (Some(from), Fill::None) => {
                let mut candles = Vec::new();
                let next_start = self.read.first_candles(&q.instrument, q.interval, from, q.bound(now), q.limit, &mut candles).await?;
                Ok(Page { candles, next_start })
            }
            (Some(from), Fill::Previous) => self.filled_page(q, from).await,
            (None, fill) => {
                let Some(span) = q.span(now) else { return Ok(Page::default()) };
                let stored = self.read.range(&q.instrument, q.interval, span.first, span.last).await?;
                let previous = if fill == Fill::Previous && stored.first().is_none_or(|c| c.open_time() > span.first) {
                    self.read.last_before(&q.instrument, q.interval, span.first).await?
                } else {
                    None
                };
                Ok(Page { candles: query::candles(span, q.interval, &stored, previous.as_ref(), fill), next_start: None })
            }
        }
    }

    /// `fill=previous` from `from`: the `limit` buckets of the filled series from `from`, or from
    /// the first candle when there is none before `from` to fill with.
    async fn filled_page(&self, q: &CandleQuery, from: Timestamp) -> Result<Page, ApiError> {
        let now = self.clock.now();
        let span_from = |first: Timestamp| CandleQuery { start: Some(first), ..q.clone() }.span(now);
        let Some(mut span) = span_from(from) else { return Ok(Page::default()) };
        let mut stored = self.read.range(&q.instrument, q.interval, span.first, span.last).await?;
        let mut previous = None;
        if stored.first().is_none_or(|c| c.open_time() > span.first) {
            previous = self.read.last_before(&q.instrument, q.interval, span.first).await?;
            if previous.is_none() {
                let first = match stored.first() {
                    Some(c) => Some(c.open_time()),
                    None => {
                        let mut first = Vec::new();
                        self.read.first_candles(&q.instrument, q.interval, span.first, q.bound(now), 1, &mut first).await?;
                        first.first().map(Candle::open_time)
                    }
                };
                let Some(s) = first.and_then(span_from) else { return Ok(Page::default()) };
                span = s;
                stored = self.read.range(&q.instrument, q.interval, span.first, span.last).await?;
            }
        }
        let next = q.grid().next(span.last);
        Ok(Page {
            candles: query::candles(span, q.interval, &stored, previous.as_ref(), Fill::Previous),
            next_start: (next <= q.bound(now)).then_some(next),
        })
    }

    /// The symbols `/api/v3/klines` answers: those of the known instruments of `binance.exchange`
    /// that read back as the same instrument (`BTCUSDT` -> `BINANCE:BTC-USDT`), sorted.
    pub fn binance_symbols(&self) -> Vec<String> {
        let b = &self.config.binance;
        let mut out: Vec<String> = self
            .read
            .instruments()
            .iter()
            .filter_map(|i| {
                let symbol = query::to_binance_symbol(i);
                query::binance_symbol(&symbol, &b.exchange, &b.quote_assets).is_ok_and(|back| &back == i).then_some(symbol)
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Klines for a validated query, with Binance's gap filling and `timeZone`.
    pub async fn klines(&self, q: &CandleQuery) -> Result<Vec<query::Bar>, ApiError> {
        let grid = q.grid();
        let source = if grid.is_shifted() { query::source_interval(grid) } else { q.interval };
        let Some(mut span) = q.span(self.clock.now()) else { return Ok(Vec::new()) };
        if let Some(start) = q.start {
            // As on Binance, a start before the first candle answers from the first candle on.
            if self.read.last_before(&q.instrument, source, span.first).await?.is_none() {
                let Some(first) = self.read.first_from(&q.instrument, source, start).await? else { return Ok(Vec::new()) };
                if first.open_time() > span.first {
                    let shifted = CandleQuery { start: Some(grid.start(first.open_time())), ..q.clone() };
                    let Some(s) = shifted.span(self.clock.now()) else { return Ok(Vec::new()) };
                    span = s;
                }
            }
        }
        let end = grid.next(span.last).saturating_sub_micros(1);
        if let Some(len) = source.fixed_micros() {
            let n = (end.as_micros() - span.first.as_micros()) / len + 1;
            if n > self.config.binance.max_source_candles as i64 {
                return Err(ApiError::invalid(
                    "limit",
                    format!(
                        "this timeZone combines {n} {source} candles, more than the {} allowed: lower the limit",
                        self.config.binance.max_source_candles
                    ),
                ));
            }
        }
        let stored = self.read.range(&q.instrument, source, span.first, end).await?;
        let previous = if stored.first().is_none_or(|c| c.open_time() > span.first) {
            self.read.last_before(&q.instrument, source, span.first).await?
        } else {
            None
        };
        query::bars(grid, span, &stored, previous.as_ref(), Fill::Previous)
    }

    /// The answer's body, and the next page's start of a candle page.
    async fn rest(&self, path: &str, pairs: Vec<(String, String)>, caller: &Caller) -> Result<(String, Option<Timestamp>), ApiError> {
        let query_key = pairs.iter().find(|(k, _)| k == "api_key").map(|(_, v)| v.as_str());
        let key = crate::limits::request_key(caller.x_api_key.as_deref(), caller.authorization.as_deref(), query_key);
        self.guard.check(key, caller.address.map(|a| a.ip()))?;
        match parse_request(path, pairs, &self.config.binance, |i| self.read.knows(i))? {
            ApiRequest::Candles(q) => {
                if q.fill == Fill::None && !self.read.surely_unknown(&q.instrument) {
                    // The common case: straight from the chunks' rendered JSON.
                    let now = self.clock.now();
                    let mut body = String::with_capacity(64 * 1024);
                    body.push_str(r#"{"candles":["#);
                    let next_start = match (q.first_open(), q.span(now)) {
                        (Some(from), _) => {
                            let mut items = JsonItems { out: &mut body, written: 0 };
                            self.read.first_candles(&q.instrument, q.interval, from, q.bound(now), q.limit, &mut items).await?
                        }
                        (None, Some(span)) => {
                            self.read.range_json(&q.instrument, q.interval, span.first, span.last, &mut body).await?;
                            None
                        }
                        (None, None) => None,
                    };
                    crate::json::write_page_end(&mut body, next_start);
                    return Ok((body, next_start));
                }
                let page = self.candles(&q).await?;
                Ok((crate::json::page(&page), page.next_start))
            }
            ApiRequest::Instruments => {
                let list: Vec<serde_json::Value> = self
                    .read
                    .instruments()
                    .iter()
                    .map(|i| serde_json::json!({"instrument": i.as_str(), "exchange": i.exchange(), "base": i.base(), "quote": i.quote()}))
                    .collect();
                Ok((serde_json::json!({ "instruments": list }).to_string(), None))
            }
            ApiRequest::Klines(q) => Ok((klines_body(&self.klines(&q).await?), None)),
        }
    }
}

/// What a REST request asks for, validated, before anything is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `/api/v1/candles`.
    Candles(CandleQuery),
    /// `/api/v1/instruments`.
    Instruments,
    /// `/api/v3/klines`.
    Klines(CandleQuery),
}

/// Validates a request to `path` with its decoded query `pairs` ([`serde_urlencoded_pairs`]):
/// the route, its declared parameters, and each parameter's value. `knows` says whether an
/// instrument has candles: klines refuse an unknown symbol before looking at the other parameters,
/// as Binance does.
pub fn parse_request(
    path: &str,
    pairs: Vec<(String, String)>,
    binance: &BinanceConfig,
    knows: impl Fn(&Instrument) -> bool,
) -> Result<ApiRequest, ApiError> {
    let route = route(path).ok_or_else(|| ApiError::NotFound(format!("no route {path}: see /api/openapi.json")))?;
    let p = params(route, pairs)?;
    match route.path {
        "/api/v1/candles" => {
            let q = CandleQuery {
                instrument: query::parse_instrument(&p["instrument"])?,
                interval: query::parse_interval("interval", &p["interval"])?,
                start: p.get("start").map(|s| query::parse_time("start", s)).transpose()?,
                end: p.get("end").map(|s| query::parse_time("end", s)).transpose()?,
                limit: query::parse_limit(p.get("limit").map(String::as_str))?,
                fill: p.get("fill").map_or(Ok(Fill::None), |f| f.parse())?,
                offset: UtcOffset::UTC,
            };
            query::check_order(q.start, q.end)?;
            Ok(ApiRequest::Candles(q))
        }
        "/api/v1/instruments" => Ok(ApiRequest::Instruments),
        _ => {
            let instrument = query::binance_symbol(&p["symbol"], &binance.exchange, &binance.quote_assets)?;
            if !knows(&instrument) {
                return Err(ApiError::invalid("symbol", "Invalid symbol."));
            }
            let binance_time = |name: &'static str| p.get(name).map(|s| query::parse_binance_time(name, s)).transpose();
            let q = CandleQuery {
                instrument,
                interval: query::parse_interval("interval", &p["interval"])
                    .map_err(|_| ApiError::invalid("interval", "Invalid interval."))?,
                start: binance_time("startTime")?,
                end: binance_time("endTime")?,
                limit: query::parse_limit(p.get("limit").map(String::as_str))?,
                fill: Fill::Previous,
                offset: p.get("timeZone").map_or(Ok(UtcOffset::UTC), |s| query::parse_offset(s))?,
            };
            query::check_order(q.start, q.end).map_err(|_| ApiError::invalid("startTime", "startTime must not be after endTime."))?;
            Ok(ApiRequest::Klines(q))
        }
    }
}

static INDEX_HTML: &str = include_str!("../web/index.html");
static CHART_JS: &str = include_str!("../web/vendor/lightweight-charts.standalone.production.js");
static CHART_LICENSE: &str = include_str!("../web/vendor/LICENSE-lightweight-charts.txt");

fn asset(body: &'static str, content_type: &'static str) -> Response<String> {
    let mut r = Response::new(body.to_owned());
    r.headers_mut().insert("content-type", warp::http::HeaderValue::from_static(content_type));
    r
}

/// Every HTTP route.
pub fn routes(gw: Arc<Gateway>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    use warp::Reply;
    let headers = warp::header::optional::<String>("x-api-key")
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::addr::remote())
        .map(|x_api_key, authorization, address| Caller { x_api_key, authorization, address });
    let query = warp::query::<Vec<(String, String)>>().or(warp::any().map(Vec::new)).unify();

    let api_gw = gw.clone();
    let api = readable()
        .and(warp::path("api"))
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(headers)
        .then(move |full: warp::path::FullPath, raw: String, caller: Caller| {
            let gw = api_gw.clone();
            async move {
                let started = Instant::now();
                let path = full.as_str().to_owned();
                let binance = path.starts_with("/api/v3/");
                let (label, api) = match route(&path) {
                    Some(r) => (r.path, if binance { "binance" } else { "rest" }),
                    None if path == "/api/openapi.json" => ("/api/openapi.json", "rest"),
                    None => ("other", "rest"),
                };
                let result = if path == "/api/openapi.json" {
                    Ok((openapi(&gw.binance_symbols(), gw.config.binance.max_source_candles).to_string(), None))
                } else {
                    match serde_urlencoded_pairs(&raw) {
                        Ok(pairs) => gw.rest(&path, pairs, &caller).await,
                        Err(e) => Err(e),
                    }
                };
                let response = match result {
                    Ok((body, next_start)) => {
                        let mut r = json_response(StatusCode::OK, body);
                        if let Some(link) = next_start.and_then(|next| next_link(&path, &raw, next)) {
                            r.headers_mut().insert("link", link);
                        }
                        r
                    }
                    Err(e) => error_response(&e, binance),
                };
                gw.metrics.request(api, label, response.status().as_u16(), started.elapsed().as_secs_f64());
                response.into_response()
            }
        });

    let ws_gw = gw.clone();
    // `/ws`: Wick's protocol (or Binance's, when the first message is a Binance method);
    // `/ws/<names>`: Binance raw streams; `/stream?streams=<names>`: Binance combined streams.
    let ws_path = warp::path("ws")
        .and(warp::path::tail())
        .map(|tail: warp::path::Tail| Some(tail.as_str().to_owned()))
        .or(warp::path("stream").and(warp::path::end()).map(|| None))
        .unify();
    let ws = ws_path
        .and(warp::ws())
        .and(query)
        .and(warp::header::optional::<String>("x-api-key"))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::addr::remote())
        .map(
            move |tail: Option<String>,
                  ws: warp::ws::Ws,
                  pairs: Vec<(String, String)>,
                  x_api_key: Option<String>,
                  authorization: Option<String>,
                  address: Option<SocketAddr>| {
                let gw = ws_gw.clone();
                let query_key = pairs.iter().find(|(k, _)| k == "api_key").map(|(_, v)| v.as_str());
                let key = crate::limits::request_key(x_api_key.as_deref(), authorization.as_deref(), query_key);
                let (label, binance) = match tail.as_deref() {
                    Some("") => ("/ws", false),
                    Some(_) => ("/ws/<streams>", true),
                    None => ("/stream", true),
                };
                let checked = gw
                    .guard
                    .check(key, address.map(|a| a.ip()))
                    .and_then(|()| {
                        if gw.metrics.ws_clients.get() >= gw.config.live.max_connections as i64 {
                            Err(ApiError::Unavailable(format!("at most {} WebSocket connections", gw.config.live.max_connections)))
                        } else {
                            Ok(())
                        }
                    })
                    .and_then(|()| ws_streams(tail.as_deref(), &pairs, &gw.config));
                gw.metrics.request(
                    "ws",
                    label,
                    if checked.is_ok() { 101 } else { checked.as_ref().err().map_or(400, ApiError::http_status) },
                    0.0,
                );
                match checked {
                    Err(e) => error_response(&e, binance).into_response(),
                    Ok((protocol, streams)) => {
                        ws.max_message_size(64 * 1024).on_upgrade(move |socket| websocket(gw, socket, protocol, streams)).into_response()
                    }
                }
            },
        );

    let index = warp::path::end().map(|| asset(INDEX_HTML, "text/html; charset=utf-8").into_response());
    let chart = warp::path!("static" / "lightweight-charts.js").map(|| asset(CHART_JS, "application/javascript").into_response());
    let license =
        warp::path!("static" / "LICENSE-lightweight-charts.txt").map(|| asset(CHART_LICENSE, "text/plain; charset=utf-8").into_response());
    let pages = readable().and(index.or(chart).unify().or(license).unify());

    let not_found_gw = gw.clone();
    let fallback =
        warp::any().and(warp::method()).and(warp::path::full()).map(move |method: warp::http::Method, full: warp::path::FullPath| {
            let (status, e) = if method == warp::http::Method::GET || method == warp::http::Method::HEAD {
                if full.as_str() == "/ws" {
                    // A plain GET, or a broken handshake, at the WebSocket (it was a 404).
                    (426, ApiError::invalid("upgrade", "/ws is a WebSocket: connect with Upgrade: websocket (RFC 6455)"))
                } else {
                    (404, ApiError::NotFound(format!("no route {}: see /api/openapi.json", full.as_str())))
                }
            } else {
                (405, ApiError::invalid("method", format!("method {method} is not allowed: the API is read-only (GET)")))
            };
            not_found_gw.metrics.request("rest", "other", status, 0.0);
            let mut r = error_response(&e, full.as_str().starts_with("/api/v3/"));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
            if status == 405 {
                // RFC 9110 section 15.5.6: a 405 lists the methods the resource supports.
                r.headers_mut().insert("allow", warp::http::HeaderValue::from_static("GET, HEAD"));
            }
            if status == 426 {
                // RFC 9110 section 15.5.22: a 426 names the protocol to upgrade to.
                r.headers_mut().insert("upgrade", warp::http::HeaderValue::from_static("websocket"));
            }
            r.into_response()
        });

    let all = ws.or(api).unify().or(pages).unify().or(fallback).unify();
    let origins = &gw.config.http.cors_origins;
    if origins.is_empty() {
        return all.boxed();
    }
    let mut cors = warp::cors()
        .allow_methods(vec!["GET", "OPTIONS"])
        .allow_headers(vec!["x-api-key", "authorization", "content-type"])
        .expose_headers(vec!["retry-after", "link"])
        .max_age(600);
    cors = if origins.iter().any(|o| o == "*") { cors.allow_any_origin() } else { cors.allow_origins(origins.iter().map(String::as_str)) };
    all.with(cors.build()).map(warp::Reply::into_response).boxed()
}

/// GET, or HEAD: the methods a 405's `Allow` lists. A HEAD is answered as the GET, and hyper sends
/// its headers without the body (RFC 9110 section 9.3.2).
fn readable() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// The `Link` header (RFC 8288) to the next page: the same query with `start` at `next` (and
/// without `api_key`, which is the caller's to send again, not the server's to echo).
pub fn next_link(path: &str, raw_query: &str, next: Timestamp) -> Option<warp::http::HeaderValue> {
    let start = format!("start={}", next.as_millis());
    let mut parts: Vec<&str> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| !matches!(percent_decode(p.split_once('=').map_or(*p, |(k, _)| k)).as_deref(), Ok("start" | "api_key")))
        .collect();
    parts.push(&start);
    warp::http::HeaderValue::from_str(&format!("<{path}?{}>; rel=\"next\"", parts.join("&"))).ok()
}

/// Splits a query string into decoded pairs.
pub fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid("query", format!("malformed query string near {s:?}"));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// What a WebSocket client may send.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    op: String,
    instrument: Option<String>,
    interval: Option<String>,
}

fn ws_json(v: serde_json::Value) -> Message {
    Message::text(v.to_string())
}

/// The protocol and the Binance streams a WebSocket path names: `/ws` (decided by the first
/// message), `/ws/<names>` (Binance raw streams), `/stream?streams=<names>` (Binance combined).
fn ws_streams(
    tail: Option<&str>,
    pairs: &[(String, String)],
    config: &crate::config::Config,
) -> Result<(Protocol, Vec<(String, crate::live::Series)>), ApiError> {
    let max = config.live.max_subscriptions;
    let names = |param: &'static str, names: &str| {
        crate::binance_ws::parse_streams(names, &config.binance, max).map_err(|e| ApiError::invalid(param, e))
    };
    match tail {
        Some("") => Ok((Protocol::Undecided, Vec::new())),
        Some(tail) => {
            let decoded = serde_urlencoded_pairs(&format!("s={tail}"))?.pop().map(|(_, v)| v).unwrap_or_default();
            Ok((Protocol::Binance(Framing::Raw), names("stream", &decoded)?))
        }
        None => {
            let given: Vec<&str> = pairs.iter().filter(|(k, _)| k == "streams").map(|(_, v)| v.as_str()).collect();
            match given.as_slice() {
                [] => Ok((Protocol::Binance(Framing::Combined), Vec::new())),
                [one] => Ok((Protocol::Binance(Framing::Combined), names("streams", one)?)),
                _ => Err(ApiError::invalid("streams", "streams is given more than once: name every stream in one, separated by /")),
            }
        }
    }
}

/// One WebSocket connection: subscription messages in, candle events out.
async fn websocket(gw: Arc<Gateway>, socket: WebSocket, protocol: Protocol, streams: Vec<(String, crate::live::Series)>) {
    gw.metrics.ws_clients.inc();
    let (mut tx, mut rx) = socket.split();
    let mut conn = Connection::new(gw.hub.subscriber(), protocol, gw.config.binance.clone());
    // Checked against the limit before the upgrade.
    let _ = conn.subscribe_streams(streams);
    let state = conn.sub.state.clone();
    let fetch_to_send = gw.metrics.hop_seconds.with_label_values(&["fetch_to_send"]);
    let close = loop {
        tokio::select! {
            incoming = rx.next() => {
                let msg = match incoming {
                    Some(Ok(m)) => m,
                    _ => break None,
                };
                if msg.is_close() {
                    break None;
                }
                if msg.is_ping() || msg.is_pong() {
                    continue;
                }
                let reply = match msg.to_str() {
                    Ok(text) => Message::text(conn.on_text(text)),
                    Err(()) => ws_json(serde_json::json!({"type": "error", "message": "binary messages are not understood: send JSON text"})),
                };
                // A client that sends but never reads must not hold this task forever.
                match tokio::time::timeout(std::time::Duration::from_secs(10), tx.send(reply)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => break Some("not reading: a reply waited 10 s".to_owned()),
                }
            }
            pushed = conn.sub.rx.recv() => {
                let Some(event) = pushed else { break None };
                let Some(text) = conn.render(&event, gw.clock.now().as_millis()) else { continue };
                // A client that stops reading blocks this send once the socket buffers fill: its
                // queue then fills, the hub drops it, and the connection is closed here.
                tokio::select! {
                    sent = tx.send(Message::text(text)) => {
                        if sent.is_err() { break None }
                        fetch_to_send.observe(event.fetched.elapsed().as_secs_f64());
                    }
                    _ = state.dropped() => break Some(format!("too slow: more than {} candle events queued; reconnect and resubscribe", conn.sub.buffer())),
                }
            }
            _ = state.dropped() => {
                break Some(format!("too slow: more than {} candle events queued; reconnect and resubscribe", conn.sub.buffer()));
            }
            _ = gw.shutdown.requested() => break Some("server shutting down".to_owned()),
        }
    };
    if let Some(reason) = close {
        // Policy violation (1008) for a slow client, going away (1001) at shutdown.
        let code: u16 = if state.lagged() { 1008 } else { 1001 };
        // A slow client gets a while to read up to the close frame; then the socket is dropped.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tx.send(Message::close_with(code, reason))).await;
    }
    drop(conn);
    gw.metrics.ws_clients.dec();
}

/// The reply to one text message of a WebSocket client: `subscribe`, `unsubscribe` or `ping`, or
/// an error that says what is wrong.
pub fn handle_client_message(sub: &mut crate::live::Subscriber, text: &str) -> Message {
    let error = |m: String| ws_json(serde_json::json!({"type": "error", "message": m}));
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return error(format!(
                "invalid message ({e}): expected {{\"op\":\"subscribe\"|\"unsubscribe\",\"instrument\":\"BINANCE:BTC-USDT\",\"interval\":\"1m\"}} or {{\"op\":\"ping\"}}"
            ))
        }
    };
    // The op first: an unknown one is named as such, not as a missing instrument.
    let subscribe = match msg.op.as_str() {
        "ping" => return ws_json(serde_json::json!({"type": "pong"})),
        "subscribe" => true,
        "unsubscribe" => false,
        other => return error(format!("unknown op {other:?}: expected subscribe, unsubscribe or ping")),
    };
    let pair = (|| -> Result<(wick_core::Instrument, Interval), ApiError> {
        let instrument = query::parse_instrument(msg.instrument.as_deref().ok_or(ApiError::MissingParameter("instrument"))?)?;
        let interval = query::parse_interval("interval", msg.interval.as_deref().ok_or(ApiError::MissingParameter("interval"))?)?;
        Ok((instrument, interval))
    })();
    let (instrument, interval) = match pair {
        Ok(p) => p,
        Err(e) => return error(e.to_string()),
    };
    let echo = |kind: &str| ws_json(serde_json::json!({"type": kind, "instrument": instrument.as_str(), "interval": interval.as_str()}));
    if subscribe {
        match sub.subscribe((instrument.clone(), interval)) {
            Ok(_) => echo("subscribed"),
            Err(e) => error(e.to_string()),
        }
    } else if sub.unsubscribe(&(instrument.clone(), interval)) {
        echo("unsubscribed")
    } else {
        error(format!("not subscribed to {instrument} {interval}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_validated_against_the_route() {
        let r = route("/api/v1/candles").unwrap();
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert!(params(r, pairs(&[("instrument", "BINANCE:BTC-USDT"), ("interval", "1m")])).is_ok());
        assert_eq!(params(r, pairs(&[("interval", "1m")])), Err(ApiError::MissingParameter("instrument")));
        assert!(params(r, pairs(&[("instrument", "X"), ("interval", "1m"), ("colour", "red")]))
            .unwrap_err()
            .to_string()
            .contains("unknown parameter 'colour'"));
        assert!(params(r, pairs(&[("instrument", "X"), ("interval", "1m"), ("interval", "1h")])).is_err());
        assert_eq!(serde_urlencoded_pairs("a=1&b=%3A+x").unwrap(), pairs(&[("a", "1"), ("b", ": x")]));
        assert!(serde_urlencoded_pairs("a=%zz").is_err());
    }

    #[test]
    fn the_next_link_is_the_same_query_from_the_next_start_without_the_key() {
        let next = Timestamp::from_millis(1_700_000_060_000).unwrap();
        let raw = "instrument=BINANCE%3ABTC-USDT&start=0&interval=1m&api_key=secret-key-1&limit=2&st%61rt=5";
        let link = next_link("/api/v1/candles", raw, next).unwrap();
        assert_eq!(
            link.to_str().unwrap(),
            r#"</api/v1/candles?instrument=BINANCE%3ABTC-USDT&interval=1m&limit=2&start=1700000060000>; rel="next""#
        );
    }

    /// Every WebSocket control message gets an answer that says what was wrong (docs/BAD_INPUT.md).
    #[test]
    fn websocket_control_messages_are_answered_with_what_is_wrong() {
        let hub = crate::live::Hub::new(8, 2, crate::metrics::Metrics::new());
        let mut sub = hub.subscriber();
        let mut reply = |text: &str| -> serde_json::Value {
            let message = handle_client_message(&mut sub, text);
            serde_json::from_str(message.to_str().unwrap()).unwrap()
        };
        let sub_to = |op: &str, instrument: &str, interval: &str| {
            serde_json::json!({"op": op, "instrument": instrument, "interval": interval}).to_string()
        };
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "invalid message (key must be a string"),
            (r#"{"op":1}"#.into(), "invalid type: integer `1`"),
            (r#"{"op":"ping","colour":"red"}"#.into(), "unknown field `colour`"),
            // It used to answer "missing required parameter 'instrument'".
            (r#"{"op":"dance"}"#.into(), "unknown op \"dance\": expected subscribe, unsubscribe or ping"),
            (r#"{"op":"subscribe","interval":"1m"}"#.into(), "missing required parameter 'instrument'"),
            (sub_to("subscribe", "btc", "1m"), "invalid instrument \"btc\""),
            (sub_to("subscribe", "BINANCE:BTC-USDT", "7s"), "unknown interval \"7s\""),
            (sub_to("unsubscribe", "BINANCE:BTC-USDT", "1m"), "not subscribed to BINANCE:BTC-USDT 1m"),
        ];
        for (text, expected) in &cases {
            let r = reply(text);
            assert_eq!(r["type"], "error", "{text}: {r}");
            assert!(r["message"].as_str().unwrap().contains(expected), "{text}: {r}");
        }
        assert_eq!(reply(r#"{"op":"ping"}"#)["type"], "pong");
        for interval in ["1m", "1h"] {
            assert_eq!(reply(&sub_to("subscribe", "BINANCE:BTC-USDT", interval))["type"], "subscribed");
        }
        let third = reply(&sub_to("subscribe", "BINANCE:BTC-USDT", "1d"));
        assert_eq!(third["message"], "at most 2 subscriptions per connection", "{third}");
    }

    fn schema_of(doc: &serde_json::Value, path: &str, name: &str) -> serde_json::Value {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no {name} in {path}"))["schema"].clone()
    }

    #[test]
    fn the_openapi_document_lists_every_route_and_parameter() {
        let doc = openapi(&[], 200_000);
        for r in ROUTES {
            let params = doc["paths"][r.path]["get"]["parameters"].as_array().unwrap();
            assert_eq!(params.len(), r.params.len());
        }
        assert_eq!(
            doc["paths"]["/api/v3/klines"]["get"]["responses"]["400"]["content"]["application/json"]["schema"]["required"][1],
            "msg"
        );
        for (path, name, pattern) in [
            ("/api/v1/candles", "instrument", INSTRUMENT_PATTERN),
            ("/api/v1/candles", "start", TIME_PATTERN),
            ("/api/v1/candles", "end", TIME_PATTERN),
            ("/api/v3/klines", "timeZone", OFFSET_PATTERN),
            ("/api/v3/klines", "symbol", SYMBOL_PATTERN),
        ] {
            assert_eq!(schema_of(&doc, path, name)["pattern"], pattern, "{path} {name}");
        }
        // Binance's times: up to 20 digits, so below 10^20.
        let start_time = schema_of(&doc, "/api/v3/klines", "startTime");
        assert_eq!((start_time["minimum"].as_i64(), start_time["maximum"].as_f64()), (Some(0), Some(1e20)));
        assert_eq!(start_time["exclusiveMaximum"], true);
    }

    /// Found by schemathesis: `symbol=00` matched the document's pattern and was refused (400,
    /// -1121, as Binance refuses an unknown symbol). The document lists the symbols with candles.
    #[test]
    fn the_openapi_document_lists_the_symbols_klines_answers() {
        let doc = openapi(&["BTCUSDT".to_owned(), "ETHBTC".to_owned()], 200_000);
        let symbol = schema_of(&doc, "/api/v3/klines", "symbol");
        assert_eq!(symbol["enum"], serde_json::json!(["BTCUSDT", "ETHBTC"]));
        assert!(symbol.get("pattern").is_none(), "{symbol}");
        let time_zone = doc["paths"]["/api/v3/klines"]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "timeZone");
        assert!(time_zone.unwrap()["description"].as_str().unwrap().contains("more than 200000"), "{time_zone:?}");
    }

    /// The document's patterns against the parsers they describe, both ways: what a pattern
    /// matches is accepted, and what a parser accepts matches (strings from the pattern itself
    /// and near misses from a looser one). Schemathesis found `end=` and `start=1333-02-24t05:22:03+22:21`
    /// (valid by the document, refused by the gateway) before these patterns.
    #[test]
    fn the_documents_patterns_accept_exactly_what_the_parsers_accept() {
        use proptest::prelude::*;
        use proptest::string::string_regex;
        use proptest::test_runner::{Config, TestRunner};

        fn both_ways(pattern: &str, max_length: usize, loose: &str, accepts: impl Fn(&str) -> bool) {
            let matcher = regex::Regex::new(pattern).unwrap();
            let exact = string_regex(pattern.trim_start_matches('^').trim_end_matches('$')).unwrap();
            let near = string_regex(loose).unwrap();
            let mut runner = TestRunner::new(Config { cases: 4000, failure_persistence: None, ..Config::default() });
            runner
                .run(&prop_oneof![exact, near], |s| {
                    prop_assert_eq!(matcher.is_match(&s) && s.len() <= max_length, accepts(&s), "{:?} against {}", s, pattern);
                    Ok(())
                })
                .unwrap();
        }
        both_ways(
            TIME_PATTERN,
            usize::MAX,
            "[0-9]{0,22}|[0-9]{4}-02-(28|29|30)T00:00:00Z|[0-9]{4}-(0[0-9]|1[0-3])-[0-3][0-9][Tt x][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,3})?([Zzx]|[+-][0-2][0-9]:?[0-6][0-9])?",
            |s| query::parse_time("start", s).is_ok(),
        );
        both_ways(OFFSET_PATTERN, usize::MAX, "[+-]?[0-9]{0,3}(:[0-9]{0,3})?", |s| query::parse_offset(s).is_ok());
        // With the document's maxLength, 64.
        both_ways(INSTRUMENT_PATTERN, 64, "[A-Za-z0-9_:-]{0,12}|[A-Z]{1,30}:[A-Z]{1,20}-[A-Z]{1,20}", |s| {
            query::parse_instrument(s).is_ok()
        });
    }
}
