//! Durations in configuration, written as `20us`, `250ms`, `10s`, `5m`, `1h` or `1d` (and printed
//! back the same way).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configured duration.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_micros(us: u64) -> Duration {
        Duration(std::time::Duration::from_micros(us))
    }
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected a whole number and a unit (us, ms, s, m, h, d), e.g. 250ms"))?;
        let size = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, size)| *size)
            .ok_or_else(|| format!("invalid duration {s:?}: unit must be us, ms, s, m, h or d"))?;
        n.checked_mul(size).map(Duration::from_micros).ok_or_else(|| format!("duration {s:?} is too long"))
    }
}

/// Each unit and its length in microseconds, longest first.
const UNITS: [(&str, u64); 6] =
    [("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000), ("us", 1)];

impl fmt::Display for Duration {
    /// In the longest unit that divides it: `1s`, `1500ms`, `20us`, `0us`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        for (unit, size) in UNITS {
            let size = u128::from(size);
            if us >= size && us % size == 0 {
                return write!(f, "{}{unit}", us / size);
            }
        }
        write!(f, "{us}us")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, us, printed) in [
            ("250ms", 250_000, "250ms"),
            ("10s", 10_000_000, "10s"),
            ("5m", 300_000_000, "5m"),
            ("1h", 3_600_000_000, "1h"),
            ("2d", 172_800_000_000, "2d"),
            ("1000ms", 1_000_000, "1s"),
            ("20us", 20, "20us"),
            ("1500us", 1_500, "1500us"),
            ("2000us", 2_000, "2ms"),
            ("0us", 0, "0us"),
            ("0s", 0, "0us"),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.get().as_micros(), us, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
            assert_eq!(d.to_string().parse::<Duration>(), Ok(d), "{text} prints back to itself");
        }
        for bad in ["", "10", "ms", "1.5s", "-1s", "10 parsecs", "20µs", "10ns", "18446744073709551615ms"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn constructors_agree_with_the_text() {
        assert_eq!(Duration::from_micros(20), "20us".parse().unwrap());
        assert_eq!(Duration::from_millis(250), "250ms".parse().unwrap());
        assert_eq!(Duration::from_secs(30), "30s".parse().unwrap());
    }
}
