//! The OHLCV candle: built by applying trades, merged into larger intervals (rollup), and rebuilt
//! from stored parts through a checked constructor.

use std::cmp::Ordering;

use crate::decimal::Decimal;
use crate::instrument::Instrument;
use crate::interval::Interval;
use crate::time::Timestamp;
use crate::trade::{TakerSide, Trade, TradeKey};

/// Digits after the point of the VWAP, which is the one value that needs a division: rounded half to even.
pub const VWAP_SCALE: u8 = 16;

/// A candle of one instrument and interval.
///
/// Open and close are the first and last trade by (event time, trade id), whatever order the
/// trades were applied in. Ties between equal prices of different scales (`1.5`, `1.50`) are broken
/// by [`Decimal`]'s total order, so high and low do not depend on arrival order either.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Candle {
    instrument: Instrument,
    interval: Interval,
    open_time: Timestamp,
    next_open: Timestamp,
    open: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    quote_volume: Decimal,
    taker_buy_volume: Decimal,
    taker_buy_quote_volume: Decimal,
    trade_count: u64,
    first: TradeKey,
    last: TradeKey,
    closed: bool,
}

/// Why a candle could not be built or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CandleError {
    #[error("trade of {trade} applied to a candle of {candle}")]
    InstrumentMismatch { candle: Instrument, trade: Instrument },
    #[error("event time {time} is outside the {interval} candle opening at {open_time}")]
    OutsideBucket { interval: Interval, open_time: Timestamp, time: Timestamp },
    #[error("a {inner} candle opening at {inner_open} does not fit in the {outer} candle opening at {outer_open}")]
    NotContained { outer: Interval, outer_open: Timestamp, inner: Interval, inner_open: Timestamp },
    #[error("{0} overflowed: the candle would exceed 38 significant digits")]
    Overflow(&'static str),
    #[error("open time {open_time} is not the start of a {interval} bucket")]
    Misaligned { interval: Interval, open_time: Timestamp },
    #[error("invalid candle: {0}")]
    Invalid(&'static str),
}

/// Every stored field of a candle, for building one from a database row or a wire message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CandleParts {
    pub instrument: Instrument,
    pub interval: Interval,
    pub open_time: Timestamp,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub quote_volume: Decimal,
    pub taker_buy_volume: Decimal,
    pub taker_buy_quote_volume: Decimal,
    pub trade_count: u64,
    pub first_trade: TradeKey,
    pub last_trade: TradeKey,
    pub closed: bool,
}

impl Candle {
    /// A candle holding one trade, in the bucket of `interval` holding the trade's event time.
    pub fn from_trade(interval: Interval, trade: &Trade) -> Result<Candle, CandleError> {
        let open_time = interval.bucket_start(trade.event_time());
        let mut candle = Candle::empty(trade.instrument().clone(), interval, open_time, trade.price());
        candle.accumulate(trade)?;
        Ok(candle)
    }

    /// A candle without trades, flat at `price` (how `fill=previous` and Binance fill gaps).
    pub fn flat(instrument: Instrument, interval: Interval, open_time: Timestamp, price: Decimal) -> Result<Candle, CandleError> {
        if interval.bucket_start(open_time) != open_time {
            return Err(CandleError::Misaligned { interval, open_time });
        }
        Ok(Candle::empty(instrument, interval, open_time, price))
    }

    fn empty(instrument: Instrument, interval: Interval, open_time: Timestamp, price: Decimal) -> Candle {
        let zero = Decimal::ZERO;
        Candle {
            instrument,
            interval,
            open_time,
            next_open: interval.next_open(open_time),
            open: price,
            high: price,
            low: price,
            close: price,
            volume: zero,
            quote_volume: zero,
            taker_buy_volume: zero,
            taker_buy_quote_volume: zero,
            trade_count: 0,
            first: TradeKey::default(),
            last: TradeKey::default(),
            closed: false,
        }
    }

    /// Rebuilds a candle from stored fields, checking that they describe a possible candle.
    pub fn from_parts(p: CandleParts) -> Result<Candle, CandleError> {
        use CandleError::Invalid;
        if p.interval.bucket_start(p.open_time) != p.open_time {
            return Err(CandleError::Misaligned { interval: p.interval, open_time: p.open_time });
        }
        let nonneg = [p.volume, p.quote_volume, p.taker_buy_volume, p.taker_buy_quote_volume];
        if nonneg.iter().any(|d| d.is_negative()) {
            return Err(Invalid("volumes must not be negative"));
        }
        if p.taker_buy_volume.cmp_value(&p.volume) == Ordering::Greater
            || p.taker_buy_quote_volume.cmp_value(&p.quote_volume) == Ordering::Greater
        {
            return Err(Invalid("taker-buy volume exceeds volume"));
        }
        let lo = p.low.cmp_value(&p.open).min(p.low.cmp_value(&p.close));
        let hi = p.high.cmp_value(&p.open).max(p.high.cmp_value(&p.close));
        if lo == Ordering::Greater || hi == Ordering::Less || p.low > p.high {
            return Err(Invalid("low <= open, close <= high does not hold"));
        }
        if !p.low.is_positive() {
            return Err(Invalid("prices must be positive"));
        }
        let next_open = p.interval.next_open(p.open_time);
        if p.trade_count == 0 {
            if !(p.volume.is_zero() && p.quote_volume.is_zero() && p.open == p.high && p.high == p.low && p.low == p.close) {
                return Err(Invalid("a candle without trades must be flat with zero volume"));
            }
        } else {
            if !p.volume.is_positive() {
                return Err(Invalid("a candle with trades must have positive volume"));
            }
            if p.first_trade > p.last_trade {
                return Err(Invalid("first trade is after last trade"));
            }
            for key in [p.first_trade, p.last_trade] {
                if key.event_time < p.open_time || key.event_time >= next_open {
                    return Err(Invalid("first or last trade time outside the candle"));
                }
            }
        }
        Ok(Candle {
            instrument: p.instrument,
            interval: p.interval,
            open_time: p.open_time,
            next_open,
            open: p.open,
            high: p.high,
            low: p.low,
            close: p.close,
            volume: p.volume,
            quote_volume: p.quote_volume,
            taker_buy_volume: p.taker_buy_volume,
            taker_buy_quote_volume: p.taker_buy_quote_volume,
            trade_count: p.trade_count,
            first: p.first_trade,
            last: p.last_trade,
            closed: p.closed,
        })
    }

    pub fn to_parts(&self) -> CandleParts {
        CandleParts {
            instrument: self.instrument.clone(),
            interval: self.interval,
            open_time: self.open_time,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume,
            quote_volume: self.quote_volume,
            taker_buy_volume: self.taker_buy_volume,
            taker_buy_quote_volume: self.taker_buy_quote_volume,
            trade_count: self.trade_count,
            first_trade: self.first,
            last_trade: self.last,
            closed: self.closed,
        }
    }

    /// Adds a trade of this candle's instrument and bucket.
    #[inline]
    pub fn apply(&mut self, trade: &Trade) -> Result<(), CandleError> {
        if !self.instrument.same_as(trade.instrument()) {
            return Err(CandleError::InstrumentMismatch { candle: self.instrument.clone(), trade: trade.instrument().clone() });
        }
        let time = trade.event_time();
        if time < self.open_time || time >= self.next_open {
            return Err(CandleError::OutsideBucket { interval: self.interval, open_time: self.open_time, time });
        }
        self.accumulate(trade)
    }

    /// Adds a trade known to belong here. On error the candle is unchanged.
    ///
    /// Works on raw (coefficient, scale) parts so that everything stays in registers; see
    /// [`Decimal::add_parts`].
    #[inline]
    pub(crate) fn accumulate(&mut self, trade: &Trade) -> Result<(), CandleError> {
        let (pc, ps, qc, qs) = trade.raw_parts();
        let (pc, qc) = (i128::from(pc), i128::from(qc));
        // Validated trades hold at most 18 digits each: the product cannot overflow.
        let (quote, quote_scale) = (pc * qc, ps + qs);
        let add = |acc: Decimal, c: i128, s: u8, what| {
            Decimal::add_parts(acc.coefficient(), acc.scale(), c, s).ok_or(CandleError::Overflow(what))
        };
        let volume = add(self.volume, qc, qs, "volume")?;
        let quote_volume = add(self.quote_volume, quote, quote_scale, "quote volume")?;
        if trade.side() == TakerSide::Buy {
            let tbv = add(self.taker_buy_volume, qc, qs, "taker-buy volume")?;
            let tbq = add(self.taker_buy_quote_volume, quote, quote_scale, "taker-buy quote volume")?;
            self.taker_buy_volume = Decimal::from_parts_unchecked(tbv.0, tbv.1);
            self.taker_buy_quote_volume = Decimal::from_parts_unchecked(tbq.0, tbq.1);
        }
        self.volume = Decimal::from_parts_unchecked(volume.0, volume.1);
        self.quote_volume = Decimal::from_parts_unchecked(quote_volume.0, quote_volume.1);
        let price = Decimal::from_parts_unchecked(pc, ps);
        let key = trade.key();
        if self.trade_count == 0 {
            (self.open, self.high, self.low, self.close) = (price, price, price, price);
            (self.first, self.last) = (key, key);
        } else {
            if Decimal::cmp_parts(pc, ps, self.high.coefficient(), self.high.scale()) == Ordering::Greater {
                self.high = price;
            }
            if Decimal::cmp_parts(pc, ps, self.low.coefficient(), self.low.scale()) == Ordering::Less {
                self.low = price;
            }
            if key < self.first {
                self.first = key;
                self.open = price;
            }
            if key > self.last {
                self.last = key;
                self.close = price;
            }
        }
        self.trade_count += 1;
        Ok(())
    }

    /// Folds a candle of a smaller (or equal) interval whose bucket lies inside this one's bucket
    /// into this one: the result is what applying the other's trades here would give.
    pub fn merge(&mut self, other: &Candle) -> Result<(), CandleError> {
        if !self.instrument.same_as(&other.instrument) {
            return Err(CandleError::InstrumentMismatch { candle: self.instrument.clone(), trade: other.instrument.clone() });
        }
        if other.open_time < self.open_time || other.next_open > self.next_open {
            return Err(CandleError::NotContained {
                outer: self.interval,
                outer_open: self.open_time,
                inner: other.interval,
                inner_open: other.open_time,
            });
        }
        if other.trade_count == 0 {
            return Ok(());
        }
        let add = |a: Decimal, b: Decimal, what| a.checked_add(b).ok_or(CandleError::Overflow(what));
        let volume = add(self.volume, other.volume, "volume")?;
        let quote_volume = add(self.quote_volume, other.quote_volume, "quote volume")?;
        let taker_buy_volume = add(self.taker_buy_volume, other.taker_buy_volume, "taker-buy volume")?;
        let taker_buy_quote_volume = add(self.taker_buy_quote_volume, other.taker_buy_quote_volume, "taker-buy quote volume")?;
        (self.volume, self.quote_volume, self.taker_buy_volume, self.taker_buy_quote_volume) =
            (volume, quote_volume, taker_buy_volume, taker_buy_quote_volume);
        if self.trade_count == 0 {
            (self.open, self.high, self.low, self.close) = (other.open, other.high, other.low, other.close);
            (self.first, self.last) = (other.first, other.last);
        } else {
            self.high = self.high.max(other.high);
            self.low = self.low.min(other.low);
            if other.first < self.first {
                self.first = other.first;
                self.open = other.open;
            }
            if other.last > self.last {
                self.last = other.last;
                self.close = other.close;
            }
        }
        self.trade_count += other.trade_count;
        Ok(())
    }

    /// Moves the content into the bucket of a larger interval that holds this candle's bucket.
    pub(crate) fn rebucket(&mut self, interval: Interval) {
        self.interval = interval;
        self.open_time = interval.bucket_start(self.open_time);
        self.next_open = interval.next_open(self.open_time);
    }

    /// Marks the candle final: its instrument's watermark has passed its close time.
    pub fn mark_closed(&mut self) {
        self.closed = true;
    }

    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }
    pub fn interval(&self) -> Interval {
        self.interval
    }
    /// Inclusive start of the bucket.
    pub fn open_time(&self) -> Timestamp {
        self.open_time
    }
    /// The next bucket's open time (exclusive end of this one).
    pub fn next_open_time(&self) -> Timestamp {
        self.next_open
    }
    /// Next open time minus one millisecond, as Binance defines it.
    pub fn close_time(&self) -> Timestamp {
        self.next_open.saturating_sub_micros(1_000)
    }
    pub fn open(&self) -> Decimal {
        self.open
    }
    pub fn high(&self) -> Decimal {
        self.high
    }
    pub fn low(&self) -> Decimal {
        self.low
    }
    pub fn close(&self) -> Decimal {
        self.close
    }
    /// Base-asset volume.
    pub fn volume(&self) -> Decimal {
        self.volume
    }
    pub fn quote_volume(&self) -> Decimal {
        self.quote_volume
    }
    pub fn taker_buy_volume(&self) -> Decimal {
        self.taker_buy_volume
    }
    pub fn taker_buy_quote_volume(&self) -> Decimal {
        self.taker_buy_quote_volume
    }
    pub fn trade_count(&self) -> u64 {
        self.trade_count
    }
    /// First and last trade by (event time, trade id); `None` for a candle without trades.
    pub fn first_trade(&self) -> Option<TradeKey> {
        (self.trade_count > 0).then_some(self.first)
    }
    pub fn last_trade(&self) -> Option<TradeKey> {
        (self.trade_count > 0).then_some(self.last)
    }
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Quote volume / volume, rounded half to even at [`VWAP_SCALE`]; `None` without trades.
    pub fn vwap(&self) -> Option<Decimal> {
        self.quote_volume.checked_div_rounded(self.volume, VWAP_SCALE)
    }

    /// Increases strictly with every change and is the same on every replay of the same trades:
    /// twice the number of trades, plus one once the candle is final. A candle changes only by
    /// taking trades (+2 each) or by closing (+1, once, never undone), so "n trades, closed"
    /// (2n + 1) always sits between "n trades, open" (2n) and "n + 1 trades, open" (2n + 2), and a
    /// revision of a final candle (2n + 1 -> 2n + 3) outranks both. Being derived from the content,
    /// it needs no counter in checkpoints and replays and restarts give the same numbers. Writers
    /// keep the highest version.
    pub fn version(&self) -> u64 {
        self.trade_count.saturating_mul(2).saturating_add(u64::from(self.closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(id: u64, micros: i64, price: &str, qty: &str, side: TakerSide) -> Trade {
        Trade::new(
            Instrument::new("BINANCE:BTC-USDT").unwrap(),
            id,
            price.parse().unwrap(),
            qty.parse().unwrap(),
            side,
            Timestamp::from_micros(micros).unwrap(),
            Timestamp::from_micros(micros).unwrap(),
        )
        .unwrap()
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn builds_every_field() {
        let trades = [
            trade(2, 61_000_000, "101.5", "0.5", TakerSide::Buy),
            trade(1, 60_500_000, "100", "1", TakerSide::Sell),
            trade(3, 61_000_000, "99.25", "2", TakerSide::Unknown),
            trade(4, 119_999_999, "100.75", "0.25", TakerSide::Buy),
        ];
        let mut c = Candle::from_trade(Interval::M1, &trades[0]).unwrap();
        for t in &trades[1..] {
            c.apply(t).unwrap();
        }
        assert_eq!(c.open_time().as_micros(), 60_000_000);
        assert_eq!(c.close_time().as_micros(), 119_999_000);
        assert_eq!((c.open(), c.high(), c.low(), c.close()), (d("100"), d("101.5"), d("99.25"), d("100.75")));
        assert_eq!(c.volume(), d("3.75"));
        assert_eq!(
            c.quote_volume(),
            d("100").checked_add(d("50.75")).unwrap().checked_add(d("198.50")).unwrap().checked_add(d("25.1875")).unwrap()
        );
        assert_eq!(c.quote_volume().to_string(), "374.4375");
        assert_eq!(c.taker_buy_volume(), d("0.75"));
        assert_eq!(c.taker_buy_quote_volume().to_string(), "75.9375");
        assert_eq!(c.trade_count(), 4);
        assert_eq!(c.first_trade().unwrap().trade_id, 1);
        assert_eq!(c.last_trade().unwrap().trade_id, 4);
        assert_eq!(c.vwap().unwrap().to_string(), "99.8500000000000000");
        assert_eq!(c.version(), 8);
        c.mark_closed();
        assert_eq!(c.version(), 9);
    }

    #[test]
    fn ties_on_time_break_by_trade_id() {
        let mut c = Candle::from_trade(Interval::S1, &trade(7, 5, "2", "1", TakerSide::Buy)).unwrap();
        c.apply(&trade(6, 5, "1", "1", TakerSide::Buy)).unwrap();
        c.apply(&trade(8, 5, "3", "1", TakerSide::Buy)).unwrap();
        assert_eq!((c.open(), c.close()), (d("1"), d("3")));
    }

    #[test]
    fn refuses_foreign_trades_and_leaves_the_candle_unchanged() {
        let mut c = Candle::from_trade(Interval::M1, &trade(1, 0, "1", "1", TakerSide::Buy)).unwrap();
        let before = c.clone();
        let err = c.apply(&trade(2, 60_000_000, "1", "1", TakerSide::Buy)).unwrap_err();
        assert!(matches!(err, CandleError::OutsideBucket { .. }), "{err}");
        let other =
            Trade::new(Instrument::new("KRAKEN:BTC-USD").unwrap(), 3, d("1"), d("1"), TakerSide::Buy, Timestamp::MIN, Timestamp::MIN)
                .unwrap();
        assert!(matches!(c.apply(&other), Err(CandleError::InstrumentMismatch { .. })));
        assert_eq!(c, before);
        let huge = trade(4, 1, "999999999999999999", "999999999999999999", TakerSide::Buy);
        let mut applied = 0;
        while c.apply(&huge).is_ok() {
            applied += 1;
        }
        // About 170 products of 10^36 fit in an i128; the next one must fail and change nothing.
        assert!((100..200).contains(&applied), "{applied}");
        let snapshot = c.clone();
        assert_eq!(c.apply(&huge), Err(CandleError::Overflow("quote volume")));
        assert_eq!(c, snapshot);
        assert_ne!(c, before);
    }

    #[test]
    fn from_parts_checks_invariants() {
        let c = Candle::from_trade(Interval::M1, &trade(1, 0, "10", "1", TakerSide::Buy)).unwrap();
        assert_eq!(Candle::from_parts(c.to_parts()).unwrap(), c);
        let mut p = c.to_parts();
        p.high = d("9");
        assert!(matches!(Candle::from_parts(p), Err(CandleError::Invalid(_))));
        let mut p = c.to_parts();
        p.open_time = Timestamp::from_micros(1).unwrap();
        assert!(matches!(Candle::from_parts(p), Err(CandleError::Misaligned { .. })));
        let mut p = c.to_parts();
        p.taker_buy_volume = d("2");
        assert_eq!(Candle::from_parts(p).unwrap_err().to_string(), "invalid candle: taker-buy volume exceeds volume");
        let mut p = c.to_parts();
        p.trade_count = 0;
        assert!(Candle::from_parts(p).is_err());
    }

    #[test]
    fn flat_candles_have_no_trades() {
        let c = Candle::flat(Instrument::new("BINANCE:BTC-USDT").unwrap(), Interval::H1, Timestamp::MIN, d("5")).unwrap();
        assert_eq!((c.trade_count(), c.first_trade(), c.vwap()), (0, None, None));
        assert!(Candle::flat(c.instrument().clone(), Interval::H1, Timestamp::from_micros(5).unwrap(), d("5")).is_err());
    }

    #[test]
    fn merge_refuses_buckets_that_do_not_fit() {
        let mut hour = Candle::from_trade(Interval::H1, &trade(1, 0, "1", "1", TakerSide::Buy)).unwrap();
        let later = Candle::from_trade(Interval::M1, &trade(2, 3_600_000_000, "1", "1", TakerSide::Buy)).unwrap();
        assert!(matches!(hour.merge(&later), Err(CandleError::NotContained { .. })));
    }
}
