//! Candle intervals: the Binance set from `1s` to `1M`, and how each cuts time into buckets.
//!
//! Buckets are aligned to the UTC epoch, `1w` starts on Monday 00:00 UTC and `1M` is the calendar
//! month. A UTC offset (Binance's `timeZone`) moves the boundaries of every bucket.

use std::fmt;
use std::str::FromStr;

use crate::time::{civil_from_days, days_from_civil, Timestamp, MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE, MICROS_PER_SECOND};

/// A candle interval.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Interval {
    S1,
    M1,
    M3,
    M5,
    M15,
    M30,
    H1,
    H2,
    H4,
    H6,
    H8,
    H12,
    D1,
    D3,
    W1,
    Mo1,
}

/// 1970-01-05 was the first Monday after the epoch.
const MONDAY_OFFSET: i64 = 4 * MICROS_PER_DAY;

/// The earliest event time Wick aggregates: 1970-01-05T00:00:00Z, the first Monday after the
/// epoch. The `1w` candle of an earlier trade would open on Monday 1969-12-29, before the first
/// instant a [`Timestamp`] (and the wire) can hold, so the aggregator refuses such trades at the
/// door (`too_early`) instead of building a candle it could not publish.
pub const EARLIEST_EVENT_TIME: Timestamp = Timestamp::from_micros_unchecked(MONDAY_OFFSET);

/// Why an interval name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown interval {0:?}: expected one of 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M")]
pub struct IntervalError(pub String);

impl Interval {
    /// Every interval, shortest first.
    pub const ALL: [Interval; 16] = [
        Interval::S1,
        Interval::M1,
        Interval::M3,
        Interval::M5,
        Interval::M15,
        Interval::M30,
        Interval::H1,
        Interval::H2,
        Interval::H4,
        Interval::H6,
        Interval::H8,
        Interval::H12,
        Interval::D1,
        Interval::D3,
        Interval::W1,
        Interval::Mo1,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Interval::S1 => "1s",
            Interval::M1 => "1m",
            Interval::M3 => "3m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::M30 => "30m",
            Interval::H1 => "1h",
            Interval::H2 => "2h",
            Interval::H4 => "4h",
            Interval::H6 => "6h",
            Interval::H8 => "8h",
            Interval::H12 => "12h",
            Interval::D1 => "1d",
            Interval::D3 => "3d",
            Interval::W1 => "1w",
            Interval::Mo1 => "1M",
        }
    }

    /// The fixed length in microseconds, or `None` for `1M`, whose length varies.
    pub const fn fixed_micros(self) -> Option<i64> {
        Some(match self {
            Interval::S1 => MICROS_PER_SECOND,
            Interval::M1 => MICROS_PER_MINUTE,
            Interval::M3 => 3 * MICROS_PER_MINUTE,
            Interval::M5 => 5 * MICROS_PER_MINUTE,
            Interval::M15 => 15 * MICROS_PER_MINUTE,
            Interval::M30 => 30 * MICROS_PER_MINUTE,
            Interval::H1 => MICROS_PER_HOUR,
            Interval::H2 => 2 * MICROS_PER_HOUR,
            Interval::H4 => 4 * MICROS_PER_HOUR,
            Interval::H6 => 6 * MICROS_PER_HOUR,
            Interval::H8 => 8 * MICROS_PER_HOUR,
            Interval::H12 => 12 * MICROS_PER_HOUR,
            Interval::D1 => MICROS_PER_DAY,
            Interval::D3 => 3 * MICROS_PER_DAY,
            Interval::W1 => 7 * MICROS_PER_DAY,
            Interval::Mo1 => return None,
        })
    }

    /// The open time of the bucket holding `t`.
    #[inline]
    pub fn bucket_start(self, t: Timestamp) -> Timestamp {
        let micros = t.as_micros();
        match self {
            Interval::Mo1 => {
                let (y, m, _) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
                Timestamp::from_micros_unchecked(days_from_civil(y, m, 1) * MICROS_PER_DAY)
            }
            Interval::W1 => {
                let len = 7 * MICROS_PER_DAY;
                Timestamp::from_micros_unchecked((micros - MONDAY_OFFSET).div_euclid(len) * len + MONDAY_OFFSET)
            }
            _ => {
                let len = self.fixed_micros().unwrap_or(MICROS_PER_DAY);
                Timestamp::from_micros_unchecked(micros.div_euclid(len) * len)
            }
        }
    }

    /// The open time of the bucket after the one opening at `open`.
    pub fn next_open(self, open: Timestamp) -> Timestamp {
        match self.fixed_micros() {
            Some(len) => open.plus_micros(len),
            None => {
                let (y, m, _) = civil_from_days(open.as_micros().div_euclid(MICROS_PER_DAY));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Timestamp::from_micros_unchecked(days_from_civil(y, m, 1) * MICROS_PER_DAY)
            }
        }
    }

    /// The close time of the bucket opening at `open`: the next open time minus one millisecond,
    /// as Binance defines it.
    pub fn close_time(self, open: Timestamp) -> Timestamp {
        self.next_open(open).plus_micros(-1_000)
    }

    /// The open time of the bucket holding `t` when buckets are cut in local time at `utc_offset`
    /// (Binance's `timeZone`): the result is still a UTC timestamp.
    pub fn bucket_start_with_offset(self, t: Timestamp, utc_offset: UtcOffset) -> Timestamp {
        let shift = utc_offset.micros();
        self.bucket_start(Timestamp::from_micros_unchecked(t.as_micros() + shift)).plus_micros(-shift)
    }

    /// The next open time after `open` with buckets cut at `utc_offset`.
    pub fn next_open_with_offset(self, open: Timestamp, utc_offset: UtcOffset) -> Timestamp {
        let shift = utc_offset.micros();
        self.next_open(Timestamp::from_micros_unchecked(open.as_micros() + shift)).plus_micros(-shift)
    }

    /// True when every bucket of `self` is exactly a union of buckets of `smaller`.
    pub fn is_multiple_of(self, smaller: Interval) -> bool {
        if self == smaller {
            return true;
        }
        match (self.fixed_micros(), smaller.fixed_micros()) {
            (_, None) => self == Interval::Mo1,
            // Months and Monday weeks start at midnight UTC, so any interval dividing a day divides them.
            (None, Some(s)) => MICROS_PER_DAY % s == 0,
            (Some(l), Some(s)) if self == Interval::W1 => l % s == 0 && MONDAY_OFFSET % s == 0,
            (Some(l), Some(s)) => l % s == 0,
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Interval {
    type Err = IntervalError;

    fn from_str(s: &str) -> Result<Interval, IntervalError> {
        Interval::ALL.into_iter().find(|i| i.as_str() == s).ok_or_else(|| IntervalError(s.to_owned()))
    }
}

/// A fixed offset from UTC, as Binance's `timeZone` parameter gives it: from `-12:00` to `+14:00`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct UtcOffset {
    minutes: i32,
}

/// Why a UTC offset was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time zone {0:?}: expected hours or hours:minutes from -12:00 to +14:00")]
pub struct UtcOffsetError(pub String);

impl UtcOffset {
    pub const UTC: UtcOffset = UtcOffset { minutes: 0 };

    pub fn from_minutes(minutes: i32) -> Result<UtcOffset, UtcOffsetError> {
        if (-12 * 60..=14 * 60).contains(&minutes) {
            Ok(UtcOffset { minutes })
        } else {
            Err(UtcOffsetError(minutes.to_string()))
        }
    }

    pub const fn minutes(self) -> i32 {
        self.minutes
    }

    const fn micros(self) -> i64 {
        self.minutes as i64 * MICROS_PER_MINUTE
    }
}

impl FromStr for UtcOffset {
    type Err = UtcOffsetError;

    /// `0`, `8`, `-1:00`, `+05:45`.
    fn from_str(s: &str) -> Result<UtcOffset, UtcOffsetError> {
        let err = || UtcOffsetError(s.to_owned());
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (hours, minutes) = match rest.split_once(':') {
            Some((h, m)) => (h, m),
            None => (rest, "0"),
        };
        let digits = |p: &str| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(hours) || !digits(minutes) {
            return Err(err());
        }
        let (h, m): (i32, i32) = (hours.parse().map_err(|_| err())?, minutes.parse().map_err(|_| err())?);
        if m >= 60 {
            return Err(err());
        }
        let total = h * 60 + m;
        UtcOffset::from_minutes(if negative { -total } else { total }).map_err(|_| err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn names_round_trip() {
        for i in Interval::ALL {
            assert_eq!(i.as_str().parse::<Interval>().unwrap(), i);
        }
        assert!("1y".parse::<Interval>().is_err());
        assert!("1H".parse::<Interval>().is_err());
        assert_eq!("1M".parse::<Interval>().unwrap(), Interval::Mo1);
        assert_eq!("1m".parse::<Interval>().unwrap(), Interval::M1);
    }

    #[rstest]
    // last microsecond of a bucket and the first of the next
    #[case(Interval::S1, "2024-01-01T00:00:00.999999Z", "2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z")]
    #[case(Interval::M1, "2024-01-01T00:00:59.999999Z", "2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z")]
    #[case(Interval::M1, "2024-01-01T00:01:00Z", "2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z")]
    #[case(Interval::M3, "2024-01-01T00:05:59Z", "2024-01-01T00:03:00Z", "2024-01-01T00:06:00Z")]
    #[case(Interval::H4, "2024-01-01T23:59:59.999999Z", "2024-01-01T20:00:00Z", "2024-01-02T00:00:00Z")]
    #[case(Interval::H8, "2024-01-01T08:00:00Z", "2024-01-01T08:00:00Z", "2024-01-01T16:00:00Z")]
    // 3d buckets are aligned to the epoch
    #[case(Interval::D3, "1970-01-03T23:59:59Z", "1970-01-01T00:00:00Z", "1970-01-04T00:00:00Z")]
    #[case(Interval::D3, "2024-01-01T00:00:00Z", "2023-12-31T00:00:00Z", "2024-01-03T00:00:00Z")]
    // weeks start on Monday
    #[case(Interval::W1, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z", "2024-01-08T00:00:00Z")]
    #[case(Interval::W1, "2024-01-07T23:59:59.999999Z", "2024-01-01T00:00:00Z", "2024-01-08T00:00:00Z")]
    #[case(Interval::W1, "1970-01-01T00:00:00Z", "1969-12-29T00:00:00Z", "1970-01-05T00:00:00Z")]
    #[case(Interval::W1, "2026-11-27T12:00:00Z", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z")]
    // calendar months, leap years, year ends
    #[case(Interval::Mo1, "2024-02-29T23:59:59.999999Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z")]
    #[case(Interval::Mo1, "2023-02-28T12:00:00Z", "2023-02-01T00:00:00Z", "2023-03-01T00:00:00Z")]
    #[case(Interval::Mo1, "2000-02-29T00:00:00Z", "2000-02-01T00:00:00Z", "2000-03-01T00:00:00Z")]
    #[case(Interval::Mo1, "2024-12-31T23:59:59.999999Z", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z")]
    #[case(Interval::Mo1, "2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z")]
    #[case(Interval::Mo1, "2024-04-30T23:59:59Z", "2024-04-01T00:00:00Z", "2024-05-01T00:00:00Z")]
    fn buckets(#[case] interval: Interval, #[case] t: &str, #[case] open: &str, #[case] next: &str) {
        let start = interval.bucket_start(ts(t));
        assert_eq!(start.as_micros(), ts_or_negative(open));
        assert_eq!(interval.next_open(start).as_micros(), ts_or_negative(next));
        assert_eq!(interval.close_time(start).as_micros(), ts_or_negative(next) - 1_000);
    }

    /// The week holding the epoch opens before it, which `Timestamp::parse_rfc3339` refuses.
    fn ts_or_negative(s: &str) -> i64 {
        match s {
            "1969-12-29T00:00:00Z" => -3 * crate::time::MICROS_PER_DAY,
            _ => ts(s).as_micros(),
        }
    }

    #[test]
    fn the_earliest_event_time_is_the_first_week_that_opens_after_the_epoch() {
        assert_eq!(EARLIEST_EVENT_TIME, ts("1970-01-05T00:00:00Z"));
        assert_eq!(Interval::W1.bucket_start(EARLIEST_EVENT_TIME), EARLIEST_EVENT_TIME);
        let before = Timestamp::from_micros(EARLIEST_EVENT_TIME.as_micros() - 1).unwrap();
        assert!(Interval::W1.bucket_start(before).as_micros() < 0, "the week before opens in 1969");
        // Every other interval's bucket of any supported instant opens at or after the epoch.
        for interval in Interval::ALL.into_iter().filter(|i| *i != Interval::W1) {
            assert_eq!(interval.bucket_start(Timestamp::MIN), Timestamp::MIN, "{interval:?}");
        }
    }

    #[rstest]
    #[case("8", 480)]
    #[case("-1:00", -60)]
    #[case("05:45", 345)]
    #[case("+14:00", 840)]
    #[case("-12", -720)]
    #[case("0", 0)]
    fn parses_offsets(#[case] s: &str, #[case] minutes: i32) {
        assert_eq!(s.parse::<UtcOffset>().unwrap().minutes(), minutes);
    }

    #[rstest]
    #[case("15")]
    #[case("-13:00")]
    #[case("5:60")]
    #[case("abc")]
    #[case("")]
    #[case("1:2:3")]
    fn refuses_bad_offsets(#[case] s: &str) {
        assert!(s.parse::<UtcOffset>().is_err());
    }

    #[test]
    fn offsets_move_boundaries() {
        let eight = "8".parse::<UtcOffset>().unwrap();
        // 2024-01-01T20:00Z is 2024-01-02T04:00 at +08:00: that local day opened at 2024-01-01T16:00Z.
        let start = Interval::D1.bucket_start_with_offset(ts("2024-01-01T20:00:00Z"), eight);
        assert_eq!(start, ts("2024-01-01T16:00:00Z"));
        assert_eq!(Interval::D1.next_open_with_offset(start, eight), ts("2024-01-02T16:00:00Z"));
        let month = Interval::Mo1.bucket_start_with_offset(ts("2024-03-01T03:00:00Z"), "-5".parse().unwrap());
        assert_eq!(month, ts("2024-02-01T05:00:00Z"));
    }

    #[test]
    fn multiples() {
        assert!(Interval::H1.is_multiple_of(Interval::M15));
        assert!(!Interval::M5.is_multiple_of(Interval::M3));
        assert!(Interval::W1.is_multiple_of(Interval::D1));
        assert!(!Interval::W1.is_multiple_of(Interval::D3));
        assert!(Interval::Mo1.is_multiple_of(Interval::H12));
        assert!(!Interval::Mo1.is_multiple_of(Interval::W1));
        assert!(!Interval::Mo1.is_multiple_of(Interval::D3));
        for i in Interval::ALL {
            assert!(i.is_multiple_of(Interval::S1), "{i}");
            assert!(i.is_multiple_of(i), "{i}");
        }
    }
}
