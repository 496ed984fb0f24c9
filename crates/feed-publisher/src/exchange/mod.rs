//! Exchange feeds: each exchange's WebSocket trade messages, parsed into normalized trades, and the
//! mapping between exchange symbols and Wick instruments.
//!
//! Parsing is pure (text in, trades out) so every documented payload is tested from fixtures; the
//! WebSocket sessions around it live elsewhere.

pub mod binance;
pub mod coinbase;
pub mod kraken;

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use wick_core::{Decimal, Instrument, Timestamp, Trade};

/// The exchanges with live adapters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Exchange {
    Binance,
    Coinbase,
    Kraken,
}

impl Exchange {
    pub const fn name(self) -> &'static str {
        match self {
            Exchange::Binance => "BINANCE",
            Exchange::Coinbase => "COINBASE",
            Exchange::Kraken => "KRAKEN",
        }
    }
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_ascii_lowercase())
    }
}

impl FromStr for Exchange {
    type Err = String;
    fn from_str(s: &str) -> Result<Exchange, String> {
        match s.to_ascii_lowercase().as_str() {
            "binance" => Ok(Exchange::Binance),
            "coinbase" => Ok(Exchange::Coinbase),
            "kraken" => Ok(Exchange::Kraken),
            _ => Err(format!("unknown exchange {s:?}: expected binance, coinbase or kraken")),
        }
    }
}

/// What one WebSocket message carried.
#[derive(Debug, PartialEq)]
pub enum FeedMessage {
    /// Trades, in the order the exchange sent them.
    Trades(Vec<Trade>),
    /// Coinbase's heartbeat: the last trade id of a product, for gap detection.
    Heartbeat { instrument: Instrument, last_trade_id: u64 },
    /// A message that carries no trades (subscription acknowledgements, status, pings); the
    /// string names it for the debug log.
    Control(&'static str),
}

/// Why a message could not be parsed. Carried to the dead-letter topic with the raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

pub(crate) fn field(field: &'static str, reason: impl fmt::Display) -> ParseError {
    ParseError::Field { field, reason: reason.to_string() }
}

pub(crate) fn json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, ParseError> {
    serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))
}

pub(crate) fn decimal(name: &'static str, text: &str) -> Result<Decimal, ParseError> {
    text.parse().map_err(|e| field(name, e))
}

pub(crate) fn trade(
    instrument: Instrument,
    id: u64,
    price: Decimal,
    quantity: Decimal,
    side: wick_core::TakerSide,
    event_time: Timestamp,
    received: Timestamp,
) -> Result<Trade, ParseError> {
    Trade::new(instrument, id, price, quantity, side, event_time, received).map_err(|e| field("trade", e))
}

/// Quote assets recognized at the end of a Binance symbol (which has no separator), longest first.
const BINANCE_QUOTES: [&str; 20] = [
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "EURI", "BIDR", "DAI", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "JPY", "GBP", "AUD",
    "UAH", "ARS",
];

/// Maps an exchange's own symbol to a Wick instrument: `BTCUSDT` (Binance), `BTC-USD` (Coinbase),
/// `BTC/USD` or `XBT/USD` (Kraken; Kraken's `XBT` is Bitcoin, `BTC` in Wick).
pub fn instrument_for(exchange: Exchange, symbol: &str) -> Result<Instrument, ParseError> {
    let bad = |reason: &str| field("symbol", format!("{symbol:?}: {reason}"));
    let (base, quote) = match exchange {
        Exchange::Binance => {
            let upper = symbol.to_ascii_uppercase();
            let quote = BINANCE_QUOTES
                .iter()
                .filter(|q| upper.len() > q.len() && upper.ends_with(*q))
                .max_by_key(|q| q.len())
                .ok_or_else(|| bad("no known quote asset at its end"))?;
            (upper[..upper.len() - quote.len()].to_owned(), (*quote).to_owned())
        }
        Exchange::Coinbase => {
            symbol.split_once('-').map(|(b, q)| (b.to_owned(), q.to_owned())).ok_or_else(|| bad("expected BASE-QUOTE"))?
        }
        Exchange::Kraken => {
            let (b, q) = symbol.split_once('/').ok_or_else(|| bad("expected BASE/QUOTE"))?;
            let fix = |a: &str| if a.eq_ignore_ascii_case("XBT") { "BTC".to_owned() } else { a.to_owned() };
            (fix(b), fix(q))
        }
    };
    Instrument::from_parts(exchange.name(), &base, &quote).map_err(|e| field("symbol", e))
}

/// The exchange's own symbol for an instrument (the inverse of [`instrument_for`]): `BTCUSDT`,
/// `BTC-USD`, `BTC/USD`.
pub fn symbol_for(instrument: &Instrument) -> Result<(Exchange, String), ParseError> {
    let exchange: Exchange = instrument.exchange().parse().map_err(|e: String| field("instrument", e))?;
    let (base, quote) = (instrument.base(), instrument.quote());
    Ok((
        exchange,
        match exchange {
            Exchange::Binance => format!("{base}{quote}"),
            Exchange::Coinbase => format!("{base}-{quote}"),
            Exchange::Kraken => format!("{base}/{quote}"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_map_both_ways() {
        for (exchange, symbol, instrument) in [
            (Exchange::Binance, "BTCUSDT", "BINANCE:BTC-USDT"),
            (Exchange::Binance, "bnbbtc", "BINANCE:BNB-BTC"),
            (Exchange::Binance, "ETHFDUSD", "BINANCE:ETH-FDUSD"),
            (Exchange::Coinbase, "BTC-USD", "COINBASE:BTC-USD"),
            (Exchange::Kraken, "BTC/USD", "KRAKEN:BTC-USD"),
            (Exchange::Kraken, "MATIC/USD", "KRAKEN:MATIC-USD"),
        ] {
            let i = instrument_for(exchange, symbol).unwrap();
            assert_eq!(i.as_str(), instrument);
            assert_eq!(symbol_for(&i).unwrap(), (exchange, symbol.to_ascii_uppercase()));
        }
        assert_eq!(instrument_for(Exchange::Kraken, "XBT/USD").unwrap().as_str(), "KRAKEN:BTC-USD");
        assert!(instrument_for(Exchange::Binance, "BTCXYZ").unwrap_err().to_string().contains("no known quote asset"));
        assert!(instrument_for(Exchange::Coinbase, "BTCUSD").is_err());
    }
}
