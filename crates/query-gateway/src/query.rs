//! What a candle query means, independent of where the candles come from: parameter parsing and
//! validation, the bounded range of open times a query covers, gap filling, and Binance's
//! `timeZone` (buckets cut at a UTC offset, combined exactly from smaller stored candles).
//!
//! Pages. A query with `start` answers the first `limit` (≤ 1000) candles opening at or after
//! `start` (and at or before `end` and now), however far apart they lie, with the open time the
//! next page starts at ([`Page::next_start`]): paging from `start=0` with it returns every
//! candle once. With `fill=previous` the series is the filled one, which begins at the first
//! candle and has a candle in every bucket from there on: a page is the `limit` buckets from
//! `start` (from the first candle when `start` precedes it), gaps filled at the previous close,
//! and the next page starts at the bucket after it, so filled pages join without holes. Without
//! `start` a query covers the `limit` buckets up to `end` (or now), the most recent ones, and has
//! no next page. No request asks for unbounded work: at most `limit` candles, read chunk by
//! chunk with one index lookup per gap (`ReadPath::first_candles`).

use std::cmp::Ordering;

use wick_core::time::MICROS_PER_DAY;
use wick_core::{Candle, Decimal, Instrument, Interval, Timestamp, TimestampError, UtcOffset};

use crate::error::ApiError;

/// The most candles one query returns.
pub const MAX_LIMIT: usize = 1000;
/// Without `limit`.
pub const DEFAULT_LIMIT: usize = 500;

/// How buckets without trades are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fill {
    /// Left out.
    #[default]
    None,
    /// A flat candle at the previous close with zero volume (as Binance does).
    Previous,
}

impl std::str::FromStr for Fill {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Fill, ApiError> {
        match s {
            "none" => Ok(Fill::None),
            "previous" => Ok(Fill::Previous),
            _ => Err(ApiError::invalid("fill", format!("invalid fill {s:?}: expected none or previous"))),
        }
    }
}

/// A validated candle query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandleQuery {
    pub instrument: Instrument,
    pub interval: Interval,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub limit: usize,
    pub fill: Fill,
    /// Buckets cut at this offset (Binance `timeZone`); UTC for everything else.
    pub offset: UtcOffset,
}

pub fn parse_instrument(s: &str) -> Result<Instrument, ApiError> {
    Instrument::new(s).map_err(|e| ApiError::invalid("instrument", e.to_string()))
}

pub fn parse_interval(param: &'static str, s: &str) -> Result<Interval, ApiError> {
    s.parse::<Interval>().map_err(|e| ApiError::invalid(param, e.to_string()))
}

/// Epoch milliseconds, or RFC 3339. A time before 1970 or after 2199, outside what the model
/// holds, is read as the first or the last instant it holds: no candle lies beyond either, and
/// the OpenAPI document can then say exactly which strings are accepted (a pattern cannot tell
/// `1970-01-01T00:30:00+01:00`, before 1970, from `1970-01-01T01:30:00+01:00`).
pub fn parse_time(param: &'static str, s: &str) -> Result<Timestamp, ApiError> {
    let parsed = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // Only more milliseconds than an i64 holds fail to parse: far past 2199.
        Timestamp::from_millis(s.parse::<i64>().unwrap_or(i64::MAX))
    } else {
        Timestamp::parse_rfc3339(s)
    };
    match parsed {
        Ok(t) => Ok(t),
        Err(TimestampError::OutOfRange { micros }) => {
            let last = Timestamp::END.saturating_sub_micros(1);
            Ok(if micros < Timestamp::MIN.as_micros() { Timestamp::MIN } else { last })
        }
        Err(e) => Err(ApiError::invalid(param, format!("{param}: {e} (expected epoch milliseconds or RFC 3339)"))),
    }
}

/// Binance's `startTime` and `endTime`: epoch milliseconds of 1 to 20 digits, no sign (its
/// documented `^[0-9]{1,20}$`), read as [`parse_time`] reads them.
pub fn parse_binance_time(param: &'static str, s: &str) -> Result<Timestamp, ApiError> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            param,
            format!("Illegal characters found in parameter '{param}'; legal range is '^[0-9]{{1,20}}$'."),
        ));
    }
    parse_time(param, s)
}

pub fn parse_limit(s: Option<&str>) -> Result<usize, ApiError> {
    let Some(s) = s else { return Ok(DEFAULT_LIMIT) };
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid("limit", format!("limit must be an integer from 1 to {MAX_LIMIT} (got {s:?})"))),
    }
}

pub fn parse_offset(s: &str) -> Result<UtcOffset, ApiError> {
    s.parse::<UtcOffset>().map_err(|e| ApiError::invalid("timeZone", e.to_string()))
}

/// `start` must not be after `end`.
pub fn check_order(start: Option<Timestamp>, end: Option<Timestamp>) -> Result<(), ApiError> {
    match (start, end) {
        (Some(s), Some(e)) if s > e => Err(ApiError::invalid("start", "start must not be after end")),
        _ => Ok(()),
    }
}

/// One answer to a candle query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub candles: Vec<Candle>,
    /// The `start` of the next page when this one stopped at `limit` before the query's end (or
    /// now) with candles left; `None` when nothing is left.
    pub next_start: Option<Timestamp>,
}

/// The open times a query covers: the buckets opening in `[first, last]`, at most `limit` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub first: Timestamp,
    pub last: Timestamp,
}

/// The bucket grid of a query: its interval cut at its offset.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub interval: Interval,
    pub offset: UtcOffset,
}

impl Grid {
    pub fn start(self, t: Timestamp) -> Timestamp {
        self.interval.bucket_start_with_offset(t, self.offset)
    }
    pub fn next(self, open: Timestamp) -> Timestamp {
        self.interval.next_open_with_offset(open, self.offset)
    }
    fn prev(self, open: Timestamp) -> Timestamp {
        self.start(open.saturating_sub_micros(1))
    }
    /// Whether the offset moves this interval's boundaries away from the stored (UTC) ones.
    pub fn is_shifted(self) -> bool {
        let shift = i64::from(self.offset.minutes()) * 60_000_000;
        match (self.interval, self.interval.fixed_micros()) {
            (_, _) if shift == 0 => false,
            (Interval::W1 | Interval::Mo1, _) => true,
            (_, Some(len)) => shift % len != 0,
            (_, None) => true,
        }
    }
}

impl CandleQuery {
    pub fn grid(&self) -> Grid {
        Grid { interval: self.interval, offset: self.offset }
    }

    /// The latest open time the query answers at `now`: its end, never after now (as on
    /// Binance: no flat candles for the future).
    pub fn bound(&self, now: Timestamp) -> Timestamp {
        self.end.map_or(now, |e| e.min(now))
    }

    /// The first bucket opening at or after `start`, when the query has one.
    pub fn first_open(&self) -> Option<Timestamp> {
        let start = self.start?;
        let grid = self.grid();
        let first = grid.start(start);
        Some(if first < start { grid.next(first) } else { first })
    }

    /// The `limit` buckets from `start`, or up to the end without it, at `now`; `None` when none
    /// can hold a candle. Buckets after the one holding `now` are never covered.
    pub fn span(&self, now: Timestamp) -> Option<Span> {
        let grid = self.grid();
        let n = self.limit.max(1);
        let end = self.bound(now);
        match self.first_open() {
            Some(first) => {
                let mut last = first;
                for _ in 1..n {
                    let next = grid.next(last);
                    if next > end || next >= Timestamp::END {
                        break;
                    }
                    last = next;
                }
                (first <= end).then_some(Span { first, last })
            }
            None => {
                // A bucket can open before 1970 (the week holding 1970-01-01 opens on Monday
                // 1969-12-29; any bucket cut at a positive offset): none holds a candle, and its
                // open time is outside the model's range. The span ends at the last bucket holding
                // `end` and starts at the first one opening in range, on the grid.
                let last = grid.start(end);
                if last < Timestamp::MIN {
                    return None;
                }
                let mut first = last;
                for _ in 1..n {
                    let prev = grid.prev(first);
                    if prev < Timestamp::MIN {
                        break;
                    }
                    first = prev;
                }
                Some(Span { first, last })
            }
        }
    }
}

/// A candle as the klines endpoint and `timeZone` composition need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    pub open_time: Timestamp,
    /// Next open time minus 1 ms.
    pub close_time: Timestamp,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub quote_volume: Decimal,
    pub trade_count: u64,
    pub taker_buy_volume: Decimal,
    pub taker_buy_quote_volume: Decimal,
}

impl Bar {
    pub fn of(c: &Candle) -> Bar {
        Bar {
            open_time: c.open_time(),
            close_time: c.close_time(),
            open: c.open(),
            high: c.high(),
            low: c.low(),
            close: c.close(),
            volume: c.volume(),
            quote_volume: c.quote_volume(),
            trade_count: c.trade_count(),
            taker_buy_volume: c.taker_buy_volume(),
            taker_buy_quote_volume: c.taker_buy_quote_volume(),
        }
    }

    fn flat(open_time: Timestamp, next_open: Timestamp, price: Decimal) -> Bar {
        Bar {
            open_time,
            close_time: next_open.saturating_sub_micros(1000),
            open: price,
            high: price,
            low: price,
            close: price,
            volume: Decimal::ZERO,
            quote_volume: Decimal::ZERO,
            trade_count: 0,
            taker_buy_volume: Decimal::ZERO,
            taker_buy_quote_volume: Decimal::ZERO,
        }
    }

    /// Folds a later candle of this bar's bucket in (sources come oldest first, so the first
    /// traded one gives the open and the last the close).
    fn absorb(&mut self, c: &Candle) -> Result<(), ApiError> {
        if c.trade_count() == 0 {
            return Ok(());
        }
        let overflow = || ApiError::invalid("interval", "a sum overflows the exact decimal range");
        if self.trade_count == 0 {
            (self.open, self.high, self.low) = (c.open(), c.high(), c.low());
        } else {
            if c.high().cmp(&self.high) == Ordering::Greater {
                self.high = c.high();
            }
            if c.low().cmp(&self.low) == Ordering::Less {
                self.low = c.low();
            }
        }
        self.close = c.close();
        self.volume = self.volume.checked_add(c.volume()).ok_or_else(overflow)?;
        self.quote_volume = self.quote_volume.checked_add(c.quote_volume()).ok_or_else(overflow)?;
        self.taker_buy_volume = self.taker_buy_volume.checked_add(c.taker_buy_volume()).ok_or_else(overflow)?;
        self.taker_buy_quote_volume = self.taker_buy_quote_volume.checked_add(c.taker_buy_quote_volume()).ok_or_else(overflow)?;
        self.trade_count += c.trade_count();
        Ok(())
    }
}

/// The stored interval `timeZone` buckets of `grid` are combined from: the longest one whose
/// boundaries are all boundaries of the shifted grid.
pub fn source_interval(grid: Grid) -> Interval {
    let shift = i64::from(grid.offset.minutes()).abs() * 60_000_000;
    let target = grid.interval.fixed_micros().unwrap_or(MICROS_PER_DAY);
    Interval::ALL
        .into_iter()
        .filter_map(|i| i.fixed_micros().map(|len| (i, len)))
        .filter(|&(_, len)| len <= MICROS_PER_DAY && MICROS_PER_DAY % len == 0 && target % len == 0 && shift % len == 0)
        .map(|(i, _)| i)
        .next_back()
        .unwrap_or(Interval::M1)
}

/// Bars for the buckets of `span` on `grid`, from `sources`: stored candles sorted by open time,
/// each inside one bucket (stored candles of the grid's own interval when it is not shifted, of
/// [`source_interval`] when it is). `previous` is the last candle before the span, for filling.
pub fn bars(grid: Grid, span: Span, sources: &[Candle], previous: Option<&Candle>, fill: Fill) -> Result<Vec<Bar>, ApiError> {
    let mut out = Vec::new();
    let mut last_close = previous.map(Candle::close);
    let mut i = sources.partition_point(|c| c.open_time() < span.first);
    let mut open = span.first;
    while open <= span.last {
        let next = grid.next(open);
        let mut bar: Option<Bar> = None;
        while i < sources.len() && sources[i].open_time() < next {
            let c = &sources[i];
            i += 1;
            if c.trade_count() == 0 {
                continue;
            }
            match &mut bar {
                None => {
                    let mut b = Bar::flat(open, next, c.open());
                    b.absorb(c)?;
                    bar = Some(b);
                }
                Some(b) => b.absorb(c)?,
            }
        }
        match bar {
            Some(b) => {
                last_close = Some(b.close);
                out.push(b);
            }
            None => {
                if let (Fill::Previous, Some(price)) = (fill, last_close) {
                    out.push(Bar::flat(open, next, price));
                }
            }
        }
        open = next;
    }
    Ok(out)
}

/// The candles of `span` (stored candles of the query's own interval, sorted), gaps filled as
/// asked: flat candles at the previous close.
pub fn candles(span: Span, interval: Interval, stored: &[Candle], previous: Option<&Candle>, fill: Fill) -> Vec<Candle> {
    let from = stored.partition_point(|c| c.open_time() < span.first);
    let to = stored.partition_point(|c| c.open_time() <= span.last);
    let stored = &stored[from..to];
    if fill == Fill::None {
        return stored.to_vec();
    }
    let mut out = Vec::with_capacity(stored.len());
    let mut last = previous.cloned();
    let mut next_stored = stored.iter().peekable();
    let mut open = span.first;
    while open <= span.last {
        match next_stored.peek() {
            Some(c) if c.open_time() == open => {
                last = Some((*c).clone());
                out.push((*c).clone());
                next_stored.next();
            }
            _ => {
                if let Some(prev) = &last {
                    if let Ok(mut flat) = Candle::flat(prev.instrument().clone(), interval, open, prev.close()) {
                        // A gap followed by a traded candle is over; one at the end may still fill.
                        if next_stored.peek().is_some() {
                            flat.mark_closed();
                        }
                        out.push(flat);
                    }
                }
            }
        }
        open = interval.next_open(open);
    }
    out
}

/// `BTCUSDT` -> `<exchange>:BTC-USDT`, splitting at the longest known quote asset.
pub fn binance_symbol(symbol: &str, exchange: &str, quote_assets: &[String]) -> Result<Instrument, ApiError> {
    let invalid = || ApiError::invalid("symbol", "Invalid symbol.");
    if symbol.is_empty() || symbol.len() > 20 || !symbol.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return Err(invalid());
    }
    let mut quotes: Vec<&String> = quote_assets.iter().collect();
    quotes.sort_by_key(|q| std::cmp::Reverse(q.len()));
    let quote = quotes.into_iter().find(|q| symbol.len() > q.len() && symbol.ends_with(q.as_str())).ok_or_else(invalid)?;
    Instrument::from_parts(exchange, &symbol[..symbol.len() - quote.len()], quote).map_err(|_| invalid())
}

/// `<exchange>:BTC-USDT` -> `BTCUSDT`.
pub fn to_binance_symbol(instrument: &Instrument) -> String {
    format!("{}{}", instrument.base(), instrument.quote())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_core::{TakerSide, Trade};

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms).unwrap()
    }

    fn trade(id: u64, ms: i64, price: &str, qty: &str) -> Trade {
        Trade::new(
            Instrument::new("BINANCE:BTC-USDT").unwrap(),
            id,
            price.parse().unwrap(),
            qty.parse().unwrap(),
            TakerSide::Buy,
            ts(ms),
            ts(ms),
        )
        .unwrap()
    }

    fn series(interval: Interval, trades: &[Trade]) -> Vec<Candle> {
        let mut out: Vec<Candle> = Vec::new();
        for t in trades {
            match out.iter_mut().find(|c| c.open_time() == interval.bucket_start(t.event_time())) {
                Some(c) => c.apply(t).unwrap(),
                None => out.push(Candle::from_trade(interval, t).unwrap()),
            }
        }
        out.sort_by_key(Candle::open_time);
        out
    }

    fn query(interval: Interval, start: Option<i64>, end: Option<i64>, limit: usize) -> CandleQuery {
        CandleQuery {
            instrument: Instrument::new("BINANCE:BTC-USDT").unwrap(),
            interval,
            start: start.map(ts),
            end: end.map(ts),
            limit,
            fill: Fill::None,
            offset: UtcOffset::UTC,
        }
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(parse_time("start", "1700000000000").unwrap(), ts(1_700_000_000_000));
        assert_eq!(parse_time("start", "2023-11-14T22:13:20Z").unwrap(), ts(1_700_000_000_000));
        assert!(parse_time("start", "yesterday").is_err());
        assert!(parse_time("start", "").is_err());
        assert!(parse_time("start", "2023-02-30T00:00:00Z").is_err());
        // Outside 1970 to 2199: the first or the last instant the model holds, never refused (the
        // OpenAPI document accepts every such time).
        let last = Timestamp::END.saturating_sub_micros(1);
        assert_eq!(parse_time("end", "99999999999999999999").unwrap(), last);
        assert_eq!(parse_time("end", "7258118400000").unwrap(), last);
        assert_eq!(parse_time("end", "7258118399999").unwrap(), ts(7_258_118_399_999));
        assert_eq!(parse_time("end", "9999-12-31T23:59:60-23:59").unwrap(), last);
        assert_eq!(parse_time("start", "0000-01-01T00:00:00Z").unwrap(), Timestamp::MIN);
        assert_eq!(parse_time("start", "1970-01-01T00:30:00+01:00").unwrap(), Timestamp::MIN);
        assert_eq!(parse_time("start", "1970-01-01T01:30:00+01:00").unwrap(), ts(1_800_000));
        // Binance's times: digits only, as its error says (a sign used to pass as an i64).
        assert_eq!(parse_binance_time("startTime", "1700000000000").unwrap(), ts(1_700_000_000_000));
        assert_eq!(parse_binance_time("endTime", "99999999999999999999").unwrap(), last);
        for bad in ["", "+5", "-0", "-1", "1.5", "123456789012345678901"] {
            assert!(parse_binance_time("startTime", bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_limit(None).unwrap(), 500);
        assert!(parse_limit(Some("1001")).is_err());
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("-1")).is_err());
        assert!("sometimes".parse::<Fill>().is_err());
        assert_eq!(parse_offset("+05:45").unwrap().minutes(), 345);
        assert!(parse_offset("15").is_err());
        assert!(check_order(Some(ts(2)), Some(ts(1))).is_err());
    }

    #[test]
    fn spans_cover_at_most_limit_buckets() {
        let now = ts(1_000_000_000);
        let q = query(Interval::M1, Some(90_000), None, 3);
        assert_eq!(q.span(now), Some(Span { first: ts(120_000), last: ts(240_000) }));
        let q = query(Interval::M1, Some(60_000), Some(150_000), 1000);
        assert_eq!(q.span(now), Some(Span { first: ts(60_000), last: ts(120_000) }));
        // Never past the bucket holding now, whatever the end and limit.
        let q = query(Interval::M1, Some(60_000), None, 1000);
        assert_eq!(q.span(ts(200_000)), Some(Span { first: ts(60_000), last: ts(180_000) }));
        let q = query(Interval::M1, None, Some(900_000), 2);
        assert_eq!(q.span(ts(200_000)), Some(Span { first: ts(120_000), last: ts(180_000) }));
        let q = query(Interval::M1, None, None, 2);
        assert_eq!(q.span(ts(600_500)), Some(Span { first: ts(540_000), last: ts(600_000) }));
        let q = query(Interval::M1, Some(61_000), Some(62_000), 5);
        assert_eq!(q.span(now), None);
        assert_eq!((q.first_open(), q.bound(now), q.bound(ts(1))), (Some(ts(120_000)), ts(62_000), ts(1)));
        assert_eq!(query(Interval::M1, Some(0), None, 5).first_open(), Some(ts(0)));
        assert_eq!(query(Interval::M1, None, None, 5).first_open(), None);
        // Months step over their varying lengths.
        let jan_2024 = 1_704_067_200_000;
        let q = query(Interval::Mo1, None, Some(jan_2024 + 40 * 86_400_000), 2);
        assert_eq!(q.span(ts(jan_2024 * 2)), Some(Span { first: ts(jan_2024), last: ts(jan_2024 + 31 * 86_400_000) }));
    }

    #[test]
    fn spans_start_at_the_first_bucket_opening_in_1970() {
        // Found by `cargo fuzz` (fuzz/corpus/gateway_rest_query/crash-16473eee...): a week up to
        // 1970-01-01T00:00:03.615Z made the span [1970-01-01, 1969-12-29], last before first, and
        // a longer one started at 1970-01-01, a Thursday off the week grid, so filled pages stepped
        // through misaligned weeks past the stored ones.
        let now = ts(1_000_000_000_000);
        assert_eq!(query(Interval::W1, None, Some(3_615), 500).span(now), None);
        let (monday, week) = (4 * 86_400_000, 7 * 86_400_000);
        let q = query(Interval::W1, None, Some(monday + week + 1), 500);
        assert_eq!(q.span(now), Some(Span { first: ts(monday), last: ts(monday + week) }));
        // Days cut at +14:00 open at 10:00 UTC: the first one in range is 1970-01-01T10:00Z.
        let q = CandleQuery { offset: parse_offset("14").unwrap(), ..query(Interval::D1, None, Some(3_600_000), 5) };
        assert_eq!(q.span(now), None);
        let q = CandleQuery { offset: parse_offset("14").unwrap(), ..query(Interval::D1, None, Some(86_400_000), 5) };
        assert_eq!(q.span(now), Some(Span { first: ts(36_000_000), last: ts(36_000_000) }));
    }

    #[test]
    fn gaps_are_filled_at_the_previous_close() {
        let trades = [trade(1, 0, "10", "1"), trade(2, 120_500, "12", "2")];
        let stored = series(Interval::M1, &trades);
        let span = Span { first: ts(0), last: ts(180_000) };
        assert_eq!(candles(span, Interval::M1, &stored, None, Fill::None).len(), 2);
        let filled = candles(span, Interval::M1, &stored, None, Fill::Previous);
        assert_eq!(filled.iter().map(|c| c.open_time().as_millis()).collect::<Vec<_>>(), [0, 60_000, 120_000, 180_000]);
        assert_eq!(filled[1].close().to_string(), "10");
        assert_eq!(filled[1].trade_count(), 0);
        assert_eq!(filled[3].close().to_string(), "12");
    }

    #[test]
    fn shifted_buckets_combine_smaller_candles_exactly() {
        // 05:45 moves hour boundaries to :15 past (UTC): hours combine 15-minute candles.
        let offset = parse_offset("05:45").unwrap();
        let grid = Grid { interval: Interval::H1, offset };
        assert!(grid.is_shifted());
        assert_eq!(source_interval(grid), Interval::M15);
        assert!(!Grid { interval: Interval::H1, offset: parse_offset("8").unwrap() }.is_shifted());
        let day = Grid { interval: Interval::D1, offset: parse_offset("8").unwrap() };
        assert_eq!(source_interval(day), Interval::H8);
        assert_eq!(source_interval(Grid { interval: Interval::Mo1, offset: parse_offset("-1:00").unwrap() }), Interval::H1);

        let trades = [
            trade(1, 14 * 60_000, "10", "1"),      // 00:14 UTC: the bucket opening 23:15 the day before
            trade(2, 15 * 60_000, "11", "1"),      // 00:15: the next one
            trade(3, 74 * 60_000 + 1, "9", "2.5"), // 01:14
            trade(4, 76 * 60_000, "13", "1"),      // 01:16: third bucket
        ];
        let sources = series(Interval::M15, &trades);
        let q = CandleQuery { offset, ..query(Interval::H1, Some(0), Some(3 * 3_600_000), 3) };
        let span = q.span(ts(86_400_000)).unwrap();
        assert_eq!(span.first, ts(15 * 60_000));
        let out = bars(q.grid(), span, &sources, None, Fill::Previous).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].open.to_string(), out[0].high.to_string(), out[0].low.to_string()), ("11".into(), "11".into(), "9".into()));
        assert_eq!(out[0].close.to_string(), "9");
        assert_eq!(out[0].volume.to_string(), "3.5");
        assert_eq!(out[0].trade_count, 2);
        assert_eq!(out[0].close_time, ts(75 * 60_000 - 1));
        assert_eq!(out[1].open.to_string(), "13");
        // The last bucket has no trades: flat at the previous close.
        assert_eq!((out[2].open.to_string(), out[2].trade_count), ("13".into(), 0));
    }

    proptest::proptest! {
        /// Buckets cut at any offset, combined from the stored candles of [`source_interval`],
        /// equal a naive fold of the trades into the shifted buckets, to the last digit.
        #[test]
        fn shifted_bars_equal_a_naive_fold(
            gaps in proptest::collection::vec(1i64..40_000_000_000, 1..40),
            prices in proptest::collection::vec((1u32..100_000, 0u32..4), 40),
            quarter_hours in -48i32..=56,
            which in 0usize..7,
        ) {
            let interval = [Interval::H1, Interval::H2, Interval::H4, Interval::D1, Interval::D3, Interval::W1, Interval::Mo1][which];
            let offset = UtcOffset::from_minutes(quarter_hours * 15).unwrap();
            let grid = Grid { interval, offset };
            let mut t = 1_704_067_200_000_000i64; // 2024-01-01
            let trades: Vec<Trade> = gaps.iter().zip(&prices).enumerate().map(|(i, (gap, (p, scale)))| {
                t += gap;
                let price = Decimal::new(i128::from(*p), *scale as u8).unwrap().to_string();
                trade(i as u64 + 1, t / 1000, &price, "0.5")
            }).collect();
            let source = source_interval(grid);
            let sources = series(source, &trades);
            let first = grid.start(trades[0].event_time());
            let mut last = first;
            for _ in 0..200 {
                if grid.next(last) > trades.last().unwrap().event_time() { break; }
                last = grid.next(last);
            }
            let got = bars(grid, Span { first, last }, &sources, None, Fill::Previous).unwrap();
            let mut want = Vec::new();
            let mut open = first;
            let mut previous: Option<Decimal> = None;
            while open <= last {
                let next = grid.next(open);
                let inside: Vec<&Trade> = trades.iter().filter(|t| t.event_time() >= open && t.event_time() < next).collect();
                match inside.first() {
                    None => {
                        if let Some(p) = previous { want.push(Bar::flat(open, next, p)); }
                    }
                    Some(first_trade) => {
                        let mut b = Bar::flat(open, next, first_trade.price());
                        for t in &inside {
                            b.high = b.high.max(t.price());
                            b.low = b.low.min(t.price());
                            b.close = t.price();
                            let quote = t.price().checked_mul(t.quantity()).unwrap();
                            b.volume = b.volume.checked_add(t.quantity()).unwrap();
                            b.quote_volume = b.quote_volume.checked_add(quote).unwrap();
                            b.taker_buy_volume = b.taker_buy_volume.checked_add(t.quantity()).unwrap();
                            b.taker_buy_quote_volume = b.taker_buy_quote_volume.checked_add(quote).unwrap();
                            b.trade_count += 1;
                        }
                        previous = Some(b.close);
                        want.push(b);
                    }
                }
                open = next;
            }
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn binance_symbols_split_at_the_longest_quote() {
        let quotes: Vec<String> = ["USDT", "USD", "BTC", "FDUSD"].map(String::from).to_vec();
        assert_eq!(binance_symbol("BTCUSDT", "BINANCE", &quotes).unwrap().as_str(), "BINANCE:BTC-USDT");
        assert_eq!(binance_symbol("ETHBTC", "BINANCE", &quotes).unwrap().as_str(), "BINANCE:ETH-BTC");
        assert_eq!(binance_symbol("BTCFDUSD", "BINANCE", &quotes).unwrap().as_str(), "BINANCE:BTC-FDUSD");
        assert!(binance_symbol("btcusdt", "BINANCE", &quotes).is_err());
        assert!(binance_symbol("USDT", "BINANCE", &quotes).is_err());
        assert_eq!(to_binance_symbol(&Instrument::new("BINANCE:BTC-USDT").unwrap()), "BTCUSDT");
    }
}
