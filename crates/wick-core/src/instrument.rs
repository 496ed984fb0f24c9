//! Instruments: `EXCHANGE:BASE-QUOTE`, upper case, e.g. `BINANCE:BTC-USDT`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A traded instrument. Cloning is cheap (a shared string), so candles and trades each carry one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instrument {
    name: Arc<str>,
    colon: u8,
    dash: u8,
}

/// Why an instrument name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid instrument {name:?}: {reason} (expected EXCHANGE:BASE-QUOTE in upper case, e.g. BINANCE:BTC-USDT)")]
pub struct InstrumentError {
    pub name: String,
    pub reason: &'static str,
}

const MAX_LEN: usize = 64;

impl Instrument {
    pub fn new(name: &str) -> Result<Instrument, InstrumentError> {
        let err = |reason| InstrumentError { name: name.to_owned(), reason };
        if name.len() > MAX_LEN {
            return Err(err("longer than 64 bytes"));
        }
        let colon = name.find(':').ok_or_else(|| err("no ':' after the exchange"))?;
        let dash = name[colon..].find('-').map(|d| d + colon).ok_or_else(|| err("no '-' between base and quote"))?;
        let part_ok =
            |p: &str, extra: &[u8]| !p.is_empty() && p.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || extra.contains(&b));
        if !part_ok(&name[..colon], b"_") {
            return Err(err("the exchange must be upper-case letters, digits or '_'"));
        }
        if !part_ok(&name[colon + 1..dash], b"") || !part_ok(&name[dash + 1..], b"") {
            return Err(err("base and quote must be upper-case letters or digits"));
        }
        Ok(Instrument {
            name: Arc::from(name),
            colon: u8::try_from(colon).map_err(|_| err("too long"))?,
            dash: u8::try_from(dash).map_err(|_| err("too long"))?,
        })
    }

    /// Builds `EXCHANGE:BASE-QUOTE` from parts, upper-casing them.
    pub fn from_parts(exchange: &str, base: &str, quote: &str) -> Result<Instrument, InstrumentError> {
        Instrument::new(&format!("{}:{}-{}", exchange.to_ascii_uppercase(), base.to_ascii_uppercase(), quote.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn exchange(&self) -> &str {
        &self.name[..usize::from(self.colon)]
    }

    pub fn base(&self) -> &str {
        &self.name[usize::from(self.colon) + 1..usize::from(self.dash)]
    }

    pub fn quote(&self) -> &str {
        &self.name[usize::from(self.dash) + 1..]
    }

    /// Same instrument, comparing the shared pointer first (the common case on the hot path).
    #[inline]
    pub fn same_as(&self, other: &Instrument) -> bool {
        Arc::ptr_eq(&self.name, &other.name) || self.name == other.name
    }
}

impl fmt::Display for Instrument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Instrument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.name)
    }
}

impl FromStr for Instrument {
    type Err = InstrumentError;

    fn from_str(s: &str) -> Result<Instrument, InstrumentError> {
        Instrument::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn splits_parts() {
        let i = Instrument::new("BINANCE:BTC-USDT").unwrap();
        assert_eq!((i.exchange(), i.base(), i.quote()), ("BINANCE", "BTC", "USDT"));
        assert_eq!(Instrument::from_parts("kraken", "xbt", "usd").unwrap().as_str(), "KRAKEN:XBT-USD");
        assert!(i.same_as(&Instrument::new("BINANCE:BTC-USDT").unwrap()));
    }

    #[rstest]
    #[case("BTC-USDT", "no ':'")]
    #[case("BINANCE:BTCUSDT", "no '-'")]
    #[case("binance:BTC-USDT", "the exchange")]
    #[case(":BTC-USDT", "the exchange")]
    #[case("BINANCE:btc-USDT", "base and quote")]
    #[case("BINANCE:BTC-", "base and quote")]
    #[case("BINANCE:BTC-US-DT", "base and quote")]
    fn refuses_with_reason(#[case] name: &str, #[case] reason: &str) {
        let err = Instrument::new(name).unwrap_err();
        assert!(err.reason.starts_with(reason), "{err}");
    }
}
