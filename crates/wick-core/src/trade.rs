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
/// their product always fits and sums of products overflow only after billions of trades.
pub const MAX_TRADE_SCALE: u8 = 18;
const MAX_TRADE_COEFFICIENT: i128 = 1_000_000_000_000_000_000;

/// A trade, validated: positive price and quantity of bounded size and an event time in range.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Trade {
    instrument: Instrument,
    trade_id: u64,
    price: Decimal,
    quantity: Decimal,
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
        for (field, value) in [("price", price), ("quantity", quantity)] {
            if value.scale() > MAX_TRADE_SCALE || value.coefficient() >= MAX_TRADE_COEFFICIENT {
                return Err(TradeError::TooPrecise { field, value });
            }
        }
        Ok(Trade { instrument, trade_id, price, quantity, side, event_time, receive_time })
    }

    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }
    pub fn trade_id(&self) -> u64 {
        self.trade_id
    }
    pub fn price(&self) -> Decimal {
        self.price
    }
    pub fn quantity(&self) -> Decimal {
        self.quantity
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
