//! A REST request to the gateway: its raw query string decoded (`serde_urlencoded_pairs`) and
//! validated against the route (`parse_request`), then the range of buckets it covers
//! (`CandleQuery::span`) and its next-page link, for a query that passed.
//!
//! Input: one byte choosing the route (one of `rest::ROUTES`, or a path taken from the input up to
//! its first '?'; bit 7 makes every symbol unknown), then the raw query string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use query_gateway::config::BinanceConfig;
use query_gateway::error::ApiError;
use query_gateway::query::MAX_LIMIT;
use query_gateway::rest::{self, ApiRequest};
use wick_core::Timestamp;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    // warp hands the handler the raw query as a String.
    let Ok(input) = std::str::from_utf8(input) else { return };
    let (path, raw) = match rest::ROUTES.get(usize::from(selector & 0x7f) % (rest::ROUTES.len() + 1)) {
        Some(route) => (route.path, input),
        None => input.split_once('?').unwrap_or((input, "")),
    };
    let knows = selector & 0x80 == 0;
    let binance = path.starts_with("/api/v3/");
    let pairs = match rest::serde_urlencoded_pairs(raw) {
        Ok(pairs) => pairs,
        Err(e) => return refused(&e, binance),
    };
    let q = match rest::parse_request(path, pairs, &BinanceConfig::default(), |_| knows) {
        Ok(ApiRequest::Candles(q) | ApiRequest::Klines(q)) => q,
        Ok(ApiRequest::Instruments) => return,
        Err(e) => return refused(&e, binance),
    };
    assert!((1..=MAX_LIMIT).contains(&q.limit), "limit {}", q.limit);
    // No query asks for unbounded work: at most `limit` buckets, never after its end or now.
    let late = Timestamp::from_micros(Timestamp::END.as_micros() - 1).expect("in range");
    for now in [wick_fuzz::received(), late] {
        let Some(span) = q.span(now) else { continue };
        assert!(span.first <= span.last && span.last <= q.bound(now), "{span:?} of {q:?} at {now}");
        let grid = q.grid();
        let (mut open, mut buckets) = (span.first, 1);
        while open < span.last {
            open = grid.next(open);
            buckets += 1;
            assert!(buckets <= q.limit, "{span:?} holds more than {} buckets of {q:?}", q.limit);
        }
        let _ = rest::next_link(path, raw, grid.next(span.last));
    }
    if binance {
        let _ = query_gateway::query::source_interval(q.grid());
    }
});

/// A refused request says why, in the shape its API answers with, with a client-error status.
fn refused(e: &ApiError, binance: bool) {
    wick_fuzz::refused(e);
    assert!(matches!(e.http_status(), 400 | 404), "{e:?}");
    let body = e.body(binance);
    let message = body.get(if binance { "msg" } else { "message" }).and_then(|m| m.as_str()).unwrap_or_default();
    assert!(!message.is_empty(), "{body}");
}
