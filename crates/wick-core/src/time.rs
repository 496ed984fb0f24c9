//! Timestamps (microseconds since the UNIX epoch, UTC), the civil calendar, and the injected clock.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub const MICROS_PER_MILLI: i64 = 1_000;
pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
pub const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// A point in time: microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("timestamp {micros} µs is outside the supported range 1970-01-01 to 2199-12-31")]
    OutOfRange { micros: i64 },
    #[error("invalid RFC 3339 timestamp {0:?}")]
    Syntax(String),
}

impl Timestamp {
    /// The earliest supported instant, 1970-01-01T00:00:00Z.
    pub const MIN: Timestamp = Timestamp(0);
    /// The first unsupported instant, 2200-01-01T00:00:00Z: far beyond any trade, far from overflow.
    pub const END: Timestamp = Timestamp(7_258_118_400 * MICROS_PER_SECOND);

    /// A timestamp in the supported range.
    pub const fn from_micros(micros: i64) -> Result<Timestamp, TimestampError> {
        if micros < Self::MIN.0 || micros >= Self::END.0 {
            Err(TimestampError::OutOfRange { micros })
        } else {
            Ok(Timestamp(micros))
        }
    }

    pub fn from_millis(millis: i64) -> Result<Timestamp, TimestampError> {
        Timestamp::from_micros(millis.checked_mul(MICROS_PER_MILLI).ok_or(TimestampError::OutOfRange { micros: i64::MAX })?)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds, rounded down.
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(MICROS_PER_MILLI)
    }

    /// Interval arithmetic stays within a few months of the supported range, far from overflow.
    pub(crate) const fn from_micros_unchecked(micros: i64) -> Timestamp {
        Timestamp(micros)
    }

    /// `self + micros`, unchecked against the supported range (interval arithmetic stays far from overflow).
    pub(crate) const fn plus_micros(self, micros: i64) -> Timestamp {
        Timestamp(self.0 + micros)
    }

    pub fn saturating_sub_micros(self, micros: i64) -> Timestamp {
        Timestamp(self.0.saturating_sub(micros))
    }

    pub fn saturating_add_micros(self, micros: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(micros))
    }

    /// Parses RFC 3339 (`2014-11-07T08:19:27.028459Z`, `2023-02-09T20:19:35.39625135+00:00`);
    /// fractions beyond microseconds are truncated.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, TimestampError> {
        let err = || TimestampError::Syntax(s.to_owned());
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
            return Err(err());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, TimestampError> {
            let part = s.get(r).ok_or_else(err)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(err());
            }
            part.parse::<i64>().map_err(|_| err())
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
            return Err(err());
        }
        let mut i = 19;
        let mut micros = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 6 {
                    micros = micros * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            if i == start {
                return Err(err());
            }
            for _ in (i - start)..6 {
                micros *= 10;
            }
        }
        let offset_seconds = match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
                let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if h > 23 || m > 59 {
                    return Err(err());
                }
                let total = h * 3600 + m * 60;
                if *sign == b'+' {
                    total
                } else {
                    -total
                }
            }
            _ => return Err(err()),
        };
        let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_seconds;
        Timestamp::from_micros(seconds * MICROS_PER_SECOND + micros)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 with microseconds, UTC.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let rest = self.0.rem_euclid(MICROS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let secs = rest / MICROS_PER_SECOND;
        write!(f, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z", secs / 3600, secs / 60 % 60, secs % 60, rest % MICROS_PER_SECOND)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
pub const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number since 1970-01-01 (inverse of [`days_from_civil`]).
pub const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

pub const fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub const fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The source of "now" for everything that depends on time, injected so tests control it.
///
/// Two clocks, because they answer different questions: [`Clock::now`] is the wall clock (what
/// time it is, as a timestamp; it can step forward or back when NTP corrects it or a VM resumes),
/// [`Clock::monotonic_micros`] measures how much time passed (it never steps, and means nothing
/// across processes). Durations (idle time, throttles) are measured on the second only.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Timestamp;
    /// Microseconds since an arbitrary origin fixed for the life of the process; never decreases.
    fn monotonic_micros(&self) -> i64;
}

/// The system clock: `SystemTime` for the wall clock, `Instant` for elapsed time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(micros.clamp(Timestamp::MIN.0, Timestamp::END.0 - 1))
    }

    fn monotonic_micros(&self) -> i64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        i64::try_from(origin.elapsed().as_micros()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to; clones share the same time. Time passing
/// ([`ManualClock::advance_micros`], [`ManualClock::set`] forward) moves both clocks; a wall-clock
/// step ([`ManualClock::step_wall_micros`]) moves only the wall clock, as an NTP step does.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    wall: Arc<AtomicI64>,
    monotonic: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock { wall: Arc::new(AtomicI64::new(start.0)), monotonic: Arc::new(AtomicI64::new(0)) }
    }

    /// Time passes until the wall clock reads `to` (a `to` in the past steps the wall clock back
    /// and lets no time pass).
    pub fn set(&self, to: Timestamp) {
        let before = self.wall.swap(to.0, Ordering::SeqCst);
        self.monotonic.fetch_add((to.0 - before).max(0), Ordering::SeqCst);
    }

    /// `micros` of time pass (both clocks move).
    pub fn advance_micros(&self, micros: i64) {
        self.wall.fetch_add(micros, Ordering::SeqCst);
        self.monotonic.fetch_add(micros.max(0), Ordering::SeqCst);
    }

    /// The wall clock steps by `micros` (either way) while no time passes.
    pub fn step_wall_micros(&self, micros: i64) {
        self.wall.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.wall.load(Ordering::SeqCst))
    }

    fn monotonic_micros(&self) -> i64 {
        self.monotonic.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(1970, 1, 1, 0)]
    #[case(2000, 2, 29, 11_016)]
    #[case(2024, 3, 1, 19_783)]
    #[case(2199, 12, 31, 84_005)]
    fn civil_round_trips(#[case] y: i64, #[case] m: i64, #[case] d: i64, #[case] days: i64) {
        assert_eq!(days_from_civil(y, m, d), days);
        assert_eq!(civil_from_days(days), (y, m, d));
    }

    #[test]
    fn every_day_round_trips() {
        for days in 0..84_006 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!(d <= days_in_month(y, m));
        }
    }

    #[rstest]
    #[case("2014-11-07T08:19:27.028459Z", 1_415_348_367_028_459)]
    #[case("2023-02-09T20:19:35.39625135Z", 1_675_973_975_396_251)]
    #[case("2023-09-25T07:49:37Z", 1_695_628_177_000_000)]
    #[case("2023-09-25T09:49:37.5+02:00", 1_695_628_177_500_000)]
    fn parses_rfc3339(#[case] s: &str, #[case] micros: i64) {
        assert_eq!(Timestamp::parse_rfc3339(s).unwrap().as_micros(), micros);
    }

    #[rstest]
    #[case("2023-02-30T00:00:00Z")]
    #[case("2023-02-09 20:19:35")]
    #[case("2023-02-09T20:19:35.Z")]
    #[case("2023-02-09T20:19:35+99:99")]
    #[case("2023-02-09T20:19:35+05:60")]
    #[case("1969-12-31T23:59:59Z")]
    #[case("garbage")]
    fn refuses_bad_rfc3339(#[case] s: &str) {
        assert!(Timestamp::parse_rfc3339(s).is_err());
    }

    #[test]
    fn displays_rfc3339() {
        assert_eq!(Timestamp(1_415_348_367_028_459).to_string(), "2014-11-07T08:19:27.028459Z");
    }

    #[test]
    fn refuses_out_of_range() {
        assert!(Timestamp::from_micros(-1).is_err());
        assert!(Timestamp::from_micros(Timestamp::END.as_micros()).is_err());
        assert!(Timestamp::from_millis(i64::MAX).is_err());
    }
}
