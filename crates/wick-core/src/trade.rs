//! Trades: one fill on an exchange, normalized.

use std::fmt;

use crate::decimal::Decimal;
use crate::instrument::Instrument;
use crate::time::Timestamp;

/// The side of the taker (aggressor) of a trade.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum TakerSide {
    Buy,
    Sell,
    #[default]
    Unknown,
}

impl TakerSide {
    pub const fn as_str(self) -> &'static str {
        match self {
            TakerSide::Buy => "buy",
            TakerSide::Sell => "sell",
            TakerSide::Unknown => "unknown",
        }
    }
}

impl fmt::Display for TakerSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Prices and quantities carry at most 18 digits after the point and 18 significant digits, so
/// one trade's price x quantity always fits.
pub const MAX_TRADE_SCALE: u8 = 18;
const MAX_TRADE_COEFFICIENT: i128 = 1_000_000_000_000_000_000;

/// Digits after the point of price and quantity together, at most. A candle's quote volume is a
/// sum of price x quantity at the largest scale any of its trades had, in an `i128` coefficient
/// (38 digits): one trade of 18 + 18 decimals would leave 2 digits before the point for every later
/// sum of its candles, and the next ordinary trade would overflow them. With at most 20, a candle
/// holds 10^18 units of the quote currency, millions of times the monthly volume of the busiest
/// market in any currency, while every exchange Wick reads stays well inside it (Binance and
/// Coinbase use at most 8 + 8, Kraken at most 10 + 8).
pub const MAX_COMBINED_SCALE: u8 = 20;

/// A trade, validated: positive price and quantity of bounded size and an event time in range.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Trade {
    instrument: Instrument,
    trade_id: u64,
    // Price and quantity fit in 64 bits once validated; storing them compactly keeps a trade in
    // 72 bytes instead of 104, and aggregation is memory-bound.
    price_coefficient: i64,
    quantity_coefficient: i64,
    price_scale: u8,
    quantity_scale: u8,
    side: TakerSide,
    event_time: Timestamp,
    receive_time: Timestamp,
}

/// Why a trade was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TradeError {
    #[error("price {0} is not positive")]
    NonPositivePrice(Decimal),
    #[error("quantity {0} is not positive")]
    NonPositiveQuantity(Decimal),
    #[error("{field} {value} has more than 18 digits after the point or 18 significant digits")]
    TooPrecise { field: &'static str, value: Decimal },
    #[error(
        "price {price} and quantity {quantity} have more than 20 digits after the point together: the sums of their candles could overflow"
    )]
    CombinedScale { price: Decimal, quantity: Decimal },
}

impl TradeError {
    /// A short, stable name of the refusal, for dead-letter headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TradeError::NonPositivePrice(_) | TradeError::NonPositiveQuantity(_) => "not_positive",
            TradeError::TooPrecise { .. } | TradeError::CombinedScale { .. } => "too_precise",
        }
    }
}

/// The order of trades within a candle: by event time, then trade id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct TradeKey {
    pub event_time: Timestamp,
    pub trade_id: u64,
}

impl Trade {
    pub fn new(
        instrument: Instrument,
        trade_id: u64,
        price: Decimal,
        quantity: Decimal,
        side: TakerSide,
        event_time: Timestamp,
        receive_time: Timestamp,
    ) -> Result<Trade, TradeError> {
        if !price.is_positive() {
            return Err(TradeError::NonPositivePrice(price));
        }
        if !quantity.is_positive() {
            return Err(TradeError::NonPositiveQuantity(quantity));
        }
        // Trailing zeros carry no value: dropping them keeps the trade exact, and is done only when
        // a bound would refuse it otherwise, so that a feed's usual form ("63250.10000000") is kept.
        let (price, quantity) = if price.scale() > MAX_TRADE_SCALE
            || quantity.scale() > MAX_TRADE_SCALE
            || price.scale() + quantity.scale() > MAX_COMBINED_SCALE
        {
            (price.normalized(), quantity.normalized())
        } else {
            (price, quantity)
        };
        if price.scale() + quantity.scale() > MAX_COMBINED_SCALE && price.scale() <= MAX_TRADE_SCALE && quantity.scale() <= MAX_TRADE_SCALE
        {
            return Err(TradeError::CombinedScale { price, quantity });
        }
        let compact = |field, value: Decimal| match i64::try_from(value.coefficient()) {
            Ok(c) if value.scale() <= MAX_TRADE_SCALE && value.coefficient() < MAX_TRADE_COEFFICIENT => Ok(c),
            _ => Err(TradeError::TooPrecise { field, value }),
        };
        Ok(Trade {
            instrument,
            trade_id,
            price_coefficient: compact("price", price)?,
            quantity_coefficient: compact("quantity", quantity)?,
            price_scale: price.scale(),
            quantity_scale: quantity.scale(),
            side,
            event_time,
            receive_time,
        })
    }

    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }
    pub fn trade_id(&self) -> u64 {
        self.trade_id
    }
    #[inline]
    pub fn price(&self) -> Decimal {
        Decimal::from_validated(self.price_coefficient, self.price_scale)
    }
    #[inline]
    pub fn quantity(&self) -> Decimal {
        Decimal::from_validated(self.quantity_coefficient, self.quantity_scale)
    }
    /// Price and quantity as raw (coefficient, scale) parts, for the candle hot path.
    #[inline(always)]
    pub(crate) fn raw_parts(&self) -> (i64, u8, i64, u8) {
        (self.price_coefficient, self.price_scale, self.quantity_coefficient, self.quantity_scale)
    }
    pub fn side(&self) -> TakerSide {
        self.side
    }
    pub fn event_time(&self) -> Timestamp {
        self.event_time
    }
    pub fn receive_time(&self) -> Timestamp {
        self.receive_time
    }
    pub fn key(&self) -> TradeKey {
        TradeKey { event_time: self.event_time, trade_id: self.trade_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_compact() {
        assert_eq!(std::mem::size_of::<Trade>(), 72);
        assert_eq!(std::mem::size_of::<Decimal>(), 24);
    }

    fn trade(price: &str, qty: &str) -> Result<Trade, TradeError> {
        Trade::new(
            Instrument::new("BINANCE:BTC-USDT").unwrap(),
            1,
            price.parse().unwrap(),
            qty.parse().unwrap(),
            TakerSide::Buy,
            Timestamp::from_micros(1).unwrap(),
            Timestamp::from_micros(2).unwrap(),
        )
    }

    #[test]
    fn checks_its_fields() {
        assert!(trade("100.5", "0.001").is_ok());
        assert_eq!(trade("0", "1").unwrap_err(), TradeError::NonPositivePrice("0".parse().unwrap()));
        assert!(matches!(trade("1", "-1"), Err(TradeError::NonPositiveQuantity(_))));
        assert!(matches!(trade("1e-19", "1"), Err(TradeError::TooPrecise { field: "price", .. })));
        assert!(matches!(trade("1", "1000000000000000000"), Err(TradeError::TooPrecise { field: "quantity", .. })));
        assert!(trade("1", "0").unwrap_err().to_string().contains("quantity 0 is not positive"));
    }

    #[test]
    fn refuses_decimals_that_would_overflow_candle_sums_after_dropping_trailing_zeros() {
        let over = trade("0.123456789012345678", "0.123456789012345678").unwrap_err();
        assert!(matches!(over, TradeError::CombinedScale { .. }), "{over:?}");
        assert_eq!(over.reason(), "too_precise");
        // 20 together is the bound, inclusive.
        assert!(trade("0.1234567891", "0.1234567891").is_ok());
        assert!(trade("0.1234567891", "0.12345678901").is_err());
        // Trailing zeros are dropped when that brings a trade within the bounds, and only then.
        let normalized = trade("100.000000000000000000", "0.500000000000000000").unwrap();
        assert_eq!((normalized.price().to_string(), normalized.quantity().to_string()), ("100".into(), "0.5".into()));
        let kept = trade("63250.10000000", "0.00150000").unwrap();
        assert_eq!((kept.price().to_string(), kept.quantity().to_string()), ("63250.10000000".into(), "0.00150000".into()));
        assert_eq!(trade("1.0000000000000000000", "2").unwrap().price().to_string(), "1");
    }
}
