//! PostgreSQL's binary `numeric` format for `Decimal`, exactly: base-10000 digit groups, a
//! weight, a sign and the display scale (so `1.50` stays `1.50`).

use std::error::Error;

use bytes::{BufMut, BytesMut};
use postgres_types::{to_sql_checked, IsNull, ToSql, Type};
use wick_core::Decimal;

/// A `Decimal` written as `numeric`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgNumeric(pub Decimal);

const POSITIVE: u16 = 0x0000;
const NEGATIVE: u16 = 0x4000;

/// The base-10000 groups of `d`, their weight and sign.
pub(crate) fn groups(d: Decimal) -> (Vec<i16>, i16, u16) {
    let scale = usize::from(d.scale());
    let digits = d.coefficient().unsigned_abs().to_string();
    let (int_part, frac_part) = if digits.len() > scale {
        (digits[..digits.len() - scale].to_owned(), digits[digits.len() - scale..].to_owned())
    } else {
        (String::new(), format!("{}{digits}", "0".repeat(scale - digits.len())))
    };
    let int_padded = format!("{}{int_part}", "0".repeat((4 - int_part.len() % 4) % 4));
    let frac_padded = format!("{frac_part}{}", "0".repeat((4 - frac_part.len() % 4) % 4));
    let group =
        |s: &str| -> Vec<i16> { s.as_bytes().chunks(4).map(|c| c.iter().fold(0i16, |acc, b| acc * 10 + i16::from(b - b'0'))).collect() };
    let mut all = group(&int_padded);
    all.extend(group(&frac_padded));
    let mut weight = (int_padded.len() / 4) as i16 - 1;
    let leading = all.iter().take_while(|g| **g == 0).count();
    all.drain(..leading);
    weight -= leading as i16;
    while all.last() == Some(&0) {
        all.pop();
    }
    if all.is_empty() {
        return (all, 0, POSITIVE);
    }
    (all, weight, if d.is_negative() { NEGATIVE } else { POSITIVE })
}

impl ToSql for PgNumeric {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let (groups, weight, sign) = groups(self.0);
        out.put_i16(i16::try_from(groups.len())?);
        out.put_i16(weight);
        out.put_u16(sign);
        out.put_i16(i16::from(self.0.scale()));
        for g in groups {
            out.put_i16(g);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn groups_and_weights() {
        assert_eq!(groups(d("0.5")), (vec![5000], -1, POSITIVE));
        assert_eq!(groups(d("12345.678")), (vec![1, 2345, 6780], 1, POSITIVE));
        assert_eq!(groups(d("0.00001")), (vec![1000], -2, POSITIVE));
        assert_eq!(groups(d("-10000")), (vec![1], 1, NEGATIVE));
        assert_eq!(groups(d("0.000")), (vec![], 0, POSITIVE));
        assert_eq!(groups(d("63250.10")), (vec![6, 3250, 1000], 1, POSITIVE));
    }
}
