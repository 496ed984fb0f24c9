//! Exact decimal numbers for prices, quantities and volumes: an `i128` coefficient and a base-10 scale.
//!
//! Every operation is exact or fails: there is no silent rounding anywhere (the one division, used
//! for VWAP, takes an explicit scale and rounds half to even, and says so). Why a scaled `i128`
//! rather than a decimal crate is recorded in `ARCHITECTURE.md` ("Exact decimals").

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The largest scale (digits after the point) a [`Decimal`] may carry: `i128` holds 38 digits.
pub const MAX_SCALE: u8 = 38;

/// `10^n` for every `n` a scale can take.
const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

fn pow10_u128(n: u32) -> Option<u128> {
    POW10.get(usize::try_from(n).ok()?).map(|p| p.unsigned_abs())
}

/// An exact decimal: `coefficient * 10^-scale`.
///
/// Equality and ordering are structural on (value, scale): `1.5` and `1.50` have the same value
/// but are different decimals, and `1.5 < 1.50` in the total order so that a maximum over equal
/// values is the same whatever the order of the inputs. Use [`Decimal::cmp_value`] to compare values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Decimal {
    // The coefficient is kept as two 64-bit halves: an `i128` field would align the struct to 16
    // bytes and pad it to 32, and candles and trades are memory-bound (see docs/BENCHMARKS.md).
    lo: u64,
    hi: i64,
    scale: u8,
}

/// Why a decimal could not be parsed or computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("empty decimal")]
    Empty,
    #[error("invalid decimal {0:?}: expected digits with an optional sign, point and exponent")]
    Syntax(String),
    #[error("decimal {0:?} has more than {MAX_SCALE} digits after the point")]
    ScaleTooLarge(String),
    #[error("decimal {0:?} does not fit in 38 significant digits")]
    TooManyDigits(String),
}

impl Decimal {
    pub const ZERO: Decimal = Decimal { lo: 0, hi: 0, scale: 0 };

    #[inline(always)]
    const fn raw(coefficient: i128, scale: u8) -> Decimal {
        Decimal { lo: coefficient as u64, hi: (coefficient >> 64) as i64, scale }
    }

    /// `coefficient * 10^-scale`; `None` when `scale > MAX_SCALE`.
    pub const fn new(coefficient: i128, scale: u8) -> Option<Decimal> {
        if scale > MAX_SCALE {
            None
        } else {
            Some(Decimal::raw(coefficient, scale))
        }
    }

    /// From parts produced by exact arithmetic on valid decimals (scale within range).
    #[inline(always)]
    pub(crate) const fn from_parts_unchecked(coefficient: i128, scale: u8) -> Decimal {
        Decimal::raw(coefficient, scale)
    }

    /// From parts already checked by a constructor (`scale <= MAX_SCALE`).
    #[inline(always)]
    pub(crate) const fn from_validated(coefficient: i64, scale: u8) -> Decimal {
        Decimal::raw(coefficient as i128, scale)
    }

    #[inline(always)]
    pub const fn coefficient(self) -> i128 {
        ((self.hi as i128) << 64) | self.lo as i128
    }

    pub const fn scale(self) -> u8 {
        self.scale
    }

    pub const fn is_zero(self) -> bool {
        self.coefficient() == 0
    }

    pub const fn is_positive(self) -> bool {
        self.coefficient() > 0
    }

    pub const fn is_negative(self) -> bool {
        self.coefficient() < 0
    }

    /// The same value at a larger scale; `None` when it would overflow or `scale` is smaller.
    pub fn rescaled(self, scale: u8) -> Option<Decimal> {
        if scale < self.scale || scale > MAX_SCALE {
            return None;
        }
        let coefficient = self.coefficient().checked_mul(POW10[usize::from(scale - self.scale)])?;
        Some(Decimal::raw(coefficient, scale))
    }

    /// The same value with trailing zeros after the point removed.
    pub fn normalized(self) -> Decimal {
        let (mut coefficient, mut scale) = (self.coefficient(), self.scale);
        if coefficient == 0 {
            return Decimal::ZERO;
        }
        while scale > 0 && coefficient % 10 == 0 {
            coefficient /= 10;
            scale -= 1;
        }
        Decimal::raw(coefficient, scale)
    }

    /// `checked_add` on raw parts. The candle hot path works on parts held in registers: moving
    /// whole `Decimal`s through the stack defeats store-to-load forwarding (measured: 2x slower).
    #[inline(always)]
    pub(crate) fn add_parts(a: i128, a_scale: u8, b: i128, b_scale: u8) -> Option<(i128, u8)> {
        if a_scale == b_scale {
            return Some((a.checked_add(b)?, a_scale));
        }
        Decimal::raw(a, a_scale).add_slow(Decimal::raw(b, b_scale)).map(|d| (d.coefficient(), d.scale))
    }

    /// The total order of [`Ord`] on raw parts (see [`Decimal::add_parts`]).
    #[inline(always)]
    pub(crate) fn cmp_parts(a: i128, a_scale: u8, b: i128, b_scale: u8) -> Ordering {
        if a_scale == b_scale {
            return a.cmp(&b);
        }
        Decimal::raw(a, a_scale).cmp(&Decimal::raw(b, b_scale))
    }

    /// Exact sum, at the larger of the two scales; `None` on overflow.
    #[inline]
    pub fn checked_add(self, rhs: Decimal) -> Option<Decimal> {
        if self.scale == rhs.scale {
            return Some(Decimal::raw(self.coefficient().checked_add(rhs.coefficient())?, self.scale));
        }
        self.add_slow(rhs)
    }

    #[cold]
    fn add_slow(self, rhs: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(rhs.scale);
        let a = self.rescaled(scale)?;
        let b = rhs.rescaled(scale)?;
        Some(Decimal::raw(a.coefficient().checked_add(b.coefficient())?, scale))
    }

    /// Exact difference, at the larger of the two scales; `None` on overflow.
    pub fn checked_sub(self, rhs: Decimal) -> Option<Decimal> {
        self.checked_add(Decimal::raw(rhs.coefficient().checked_neg()?, rhs.scale))
    }

    /// Exact product, at the sum of the scales; `None` on overflow or when the scale exceeds [`MAX_SCALE`].
    #[inline]
    pub fn checked_mul(self, rhs: Decimal) -> Option<Decimal> {
        let scale = self.scale + rhs.scale;
        if scale > MAX_SCALE {
            return None;
        }
        // Prices and quantities fit in 64 bits in practice; their product then cannot overflow
        // 128 bits, which skips the costly overflow-checked 128-bit multiplication.
        let coefficient = match (i64::try_from(self.coefficient()), i64::try_from(rhs.coefficient())) {
            (Ok(a), Ok(b)) => i128::from(a) * i128::from(b),
            _ => self.coefficient().checked_mul(rhs.coefficient())?,
        };
        Some(Decimal::raw(coefficient, scale))
    }

    /// `self / rhs` rounded half to even at `scale` digits; `None` when `rhs` is zero or on overflow.
    pub fn checked_div_rounded(self, rhs: Decimal, scale: u8) -> Option<Decimal> {
        if rhs.coefficient() == 0 || scale > MAX_SCALE {
            return None;
        }
        // value = (a / 10^sa) / (b / 10^sb); result coefficient = a * 10^(scale + sb - sa) / b.
        let shift = i32::from(scale) + i32::from(rhs.scale) - i32::from(self.scale);
        let mut numerator = self.coefficient().unsigned_abs();
        let mut denominator = rhs.coefficient().unsigned_abs();
        let mut extra_digits = 0;
        if shift < 0 {
            denominator = denominator.checked_mul(pow10_u128(shift.unsigned_abs())?)?;
        } else {
            match pow10_u128(shift.unsigned_abs()).and_then(|p| numerator.checked_mul(p)) {
                Some(n) => numerator = n,
                // Long division, one digit at a time, when the scaled numerator would overflow.
                None => extra_digits = shift.unsigned_abs(),
            }
        }
        let mut quotient = numerator / denominator;
        let mut remainder = numerator % denominator;
        for _ in 0..extra_digits {
            // The next digit of remainder * 10 / denominator without forming remainder * 10, which
            // can exceed 128 bits: add the remainder ten times, subtracting the denominator whenever
            // it is reached. `acc + remainder < 2 * denominator < 2^128`, so nothing overflows.
            let (mut acc, mut digit) = (0u128, 0u128);
            for _ in 0..10 {
                acc += remainder;
                if acc >= denominator {
                    acc -= denominator;
                    digit += 1;
                }
            }
            quotient = quotient.checked_mul(10)?.checked_add(digit)?;
            remainder = acc;
        }
        // Half to even; `remainder < denominator`, so `denominator - remainder` cannot underflow.
        let round_up = match remainder.cmp(&(denominator - remainder)) {
            Ordering::Greater => true,
            Ordering::Equal => quotient % 2 == 1,
            Ordering::Less => false,
        };
        let magnitude = i128::try_from(quotient.checked_add(u128::from(round_up))?).ok()?;
        let negative = (self.coefficient() < 0) != (rhs.coefficient() < 0);
        Some(Decimal::raw(if negative { -magnitude } else { magnitude }, scale))
    }

    /// Compares values, ignoring scale (`1.5` equals `1.50`).
    #[inline]
    pub fn cmp_value(&self, other: &Decimal) -> Ordering {
        if self.scale == other.scale {
            return self.coefficient().cmp(&other.coefficient());
        }
        self.cmp_value_slow(other)
    }

    #[cold]
    fn cmp_value_slow(&self, other: &Decimal) -> Ordering {
        let scale = self.scale.max(other.scale);
        match (self.rescaled(scale), other.rescaled(scale)) {
            (Some(a), Some(b)) => a.coefficient().cmp(&b.coefficient()),
            // Only the side with the smaller scale can overflow when rescaled, and then its
            // magnitude exceeds anything an i128 coefficient at that scale can hold.
            (None, _) => {
                if self.coefficient() < 0 {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (_, None) => {
                if other.coefficient() < 0 {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
        }
    }

    /// Formats with at least `min_scale` digits after the point (Binance pads to 8).
    pub fn to_string_min_scale(self, min_scale: u8) -> String {
        match self.rescaled(self.scale.max(min_scale)) {
            Some(d) => d.to_string(),
            None => self.to_string(),
        }
    }
}

impl Ord for Decimal {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_value(other).then(self.scale.cmp(&other.scale))
    }
}

impl PartialOrd for Decimal {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.coefficient().unsigned_abs().to_string();
        let sign = if self.coefficient() < 0 { "-" } else { "" };
        let scale = usize::from(self.scale);
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            write!(f, "{sign}{int}.{frac}")
        } else {
            write!(f, "{sign}0.{}{digits}", "0".repeat(scale - digits.len()))
        }
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Decimal {
    type Err = DecimalError;

    /// Parses `-12.3400`, `+5`, `.5`, `1e-8`, `1.5E+3`; the scale is kept as written (`1.50` has scale 2).
    fn from_str(s: &str) -> Result<Decimal, DecimalError> {
        if s.is_empty() {
            return Err(DecimalError::Empty);
        }
        let syntax = || DecimalError::Syntax(s.to_owned());
        let (mantissa, exponent) = match s.find(['e', 'E']) {
            Some(i) => {
                let exp: i32 = s[i + 1..].parse().map_err(|_| syntax())?;
                (&s[..i], exp)
            }
            None => (s, 0),
        };
        let (negative, unsigned) = match mantissa.as_bytes().first() {
            Some(b'-') => (true, &mantissa[1..]),
            Some(b'+') => (false, &mantissa[1..]),
            _ => (false, mantissa),
        };
        let (int, frac) = match unsigned.split_once('.') {
            Some((i, f)) => (i, f),
            None => (unsigned, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(syntax());
        }
        let mut coefficient: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            if !b.is_ascii_digit() {
                return Err(syntax());
            }
            coefficient = coefficient
                .checked_mul(10)
                .and_then(|c| c.checked_add(i128::from(b - b'0')))
                .ok_or_else(|| DecimalError::TooManyDigits(s.to_owned()))?;
        }
        let mut scale = i64::try_from(frac.len()).map_err(|_| syntax())? - i64::from(exponent);
        if coefficient == 0 {
            // Zero has no significant digits to overflow: `0e39` is 0, `0e-50` is 0 at scale 38.
            scale = scale.clamp(0, i64::from(MAX_SCALE));
        }
        if scale < 0 {
            let up = usize::try_from(-scale).map_err(|_| DecimalError::TooManyDigits(s.to_owned()))?;
            coefficient =
                POW10.get(up).and_then(|p| coefficient.checked_mul(*p)).ok_or_else(|| DecimalError::TooManyDigits(s.to_owned()))?;
            scale = 0;
        }
        let scale = u8::try_from(scale).ok().filter(|s| *s <= MAX_SCALE).ok_or_else(|| DecimalError::ScaleTooLarge(s.to_owned()))?;
        Ok(Decimal::raw(if negative { -coefficient } else { coefficient }, scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[rstest]
    #[case("0", "0")]
    #[case("1.50", "1.50")]
    #[case("-0.001", "-0.001")]
    #[case(".5", "0.5")]
    #[case("+7", "7")]
    #[case("1e-8", "0.00000001")]
    #[case("1.5E+3", "1500")]
    #[case("0.00027625", "0.00027625")]
    #[case("105944.20", "105944.20")]
    fn parses_and_prints(#[case] input: &str, #[case] printed: &str) {
        assert_eq!(d(input).to_string(), printed);
    }

    #[rstest]
    #[case("")]
    #[case("-")]
    #[case("1.2.3")]
    #[case("1,5")]
    #[case("abc")]
    #[case("1e")]
    #[case(" 1")]
    #[case("NaN")]
    fn rejects_garbage(#[case] input: &str) {
        assert!(input.parse::<Decimal>().is_err(), "{input:?} parsed");
    }

    #[test]
    fn rejects_out_of_range_with_a_reason() {
        assert!(matches!("1e-39".parse::<Decimal>(), Err(DecimalError::ScaleTooLarge(_))));
        assert!(matches!("1e39".parse::<Decimal>(), Err(DecimalError::TooManyDigits(_))));
        assert!(matches!("1234567890123456789012345678901234567890".parse::<Decimal>(), Err(DecimalError::TooManyDigits(_))));
    }

    #[test]
    fn arithmetic_is_exact() {
        assert_eq!(d("0.1").checked_add(d("0.2")).unwrap(), d("0.3"));
        assert_eq!(d("1.5").checked_add(d("0.25")).unwrap(), d("1.75"));
        assert_eq!(d("1.5").checked_sub(d("2")).unwrap(), d("-0.5"));
        assert_eq!(d("105944.20").checked_mul(d("0.00027625")).unwrap(), d("29.2670852500"));
        assert_eq!(Decimal::new(i128::MAX, 0).unwrap().checked_add(d("1")), None);
        assert_eq!(d("1e-20").checked_mul(d("1e-20")), None);
    }

    #[test]
    fn division_survives_large_numerators_and_denominators() {
        // 1.5e28 / 9 at 11 digits: the scaled numerator (1.5e39) exceeds 128 bits, so the last digit
        // comes from long division; the result nearly fills an i128.
        let big = Decimal::new(15 * 10i128.pow(37), 10).unwrap();
        let q = big.checked_div_rounded(d("9"), 11).unwrap();
        assert_eq!(q.to_string(), "1666666666666666666666666666.66666666667");
        // A denominator above 3.4e37: `remainder * 10` would not fit in 128 bits.
        let n = Decimal::new(10i128.pow(38), 0).unwrap();
        let den = Decimal::new(15 * 10i128.pow(37), 0).unwrap();
        assert_eq!(n.checked_div_rounded(den, 1).unwrap().to_string(), "0.7");
        assert_eq!(n.checked_div_rounded(den, 4).unwrap().to_string(), "0.6667");
        assert_eq!(d("1").checked_div_rounded(d("0"), 2), None);
    }

    #[test]
    fn zero_takes_any_exponent() {
        assert_eq!(d("0e39"), Decimal::ZERO);
        assert_eq!(d("0e-50").scale(), MAX_SCALE);
        assert!(d("0e-50").is_zero());
    }

    #[rstest]
    #[case("1", "3", 4, "0.3333")]
    #[case("2", "3", 4, "0.6667")]
    #[case("0.125", "1", 2, "0.12")] // tie rounds to even
    #[case("0.135", "1", 2, "0.14")] // tie rounds to even
    #[case("-2", "3", 2, "-0.67")]
    #[case("10", "4", 0, "2")] // 2.5 -> 2
    #[case("30", "4", 0, "8")] // 7.5 -> 8
    fn division_rounds_half_to_even(#[case] a: &str, #[case] b: &str, #[case] scale: u8, #[case] expected: &str) {
        assert_eq!(d(a).checked_div_rounded(d(b), scale).unwrap().to_string(), expected);
    }

    #[test]
    fn ordering_is_by_value_then_scale() {
        assert_eq!(d("1.5").cmp_value(&d("1.50")), Ordering::Equal);
        assert!(d("1.5") < d("1.50"));
        assert!(d("1.50") < d("1.6"));
        assert!(d("-3") < d("-2.99"));
        let huge = Decimal::new(i128::MAX, 0).unwrap();
        let tiny_scale = Decimal::new(1, 30).unwrap();
        assert_eq!(huge.cmp_value(&tiny_scale), Ordering::Greater);
        assert_eq!(tiny_scale.cmp_value(&huge), Ordering::Less);
    }

    #[test]
    fn pads_for_binance() {
        assert_eq!(d("0.0163479").to_string_min_scale(8), "0.01634790");
        assert_eq!(d("1.123456789").to_string_min_scale(8), "1.123456789");
    }
}
