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
/// one trade's price x quantity always fits. Sums can still exceed 38 digits when huge values meet
/// many decimals (a quote volume of 10^3 at scale 36, say); every sum is checked and reports
/// `CandleError::Overflow` rather than rounding.
pub const MAX_TRADE_SCALE: u8 = 18;
const MAX_TRADE_COEFFICIENT: i128 = 1_000_000_000_000_000_000;

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
}
