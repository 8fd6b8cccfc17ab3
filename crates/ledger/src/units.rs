//! Exact conversion between decimal strings (what the API speaks) and integers in minor
//! units (what everything else uses). No floating point anywhere.

use thiserror::Error;

/// The largest scale any asset may have; 10^18 still fits an i64.
pub const SCALE_MAX: u32 = 18;

#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum DecimalError {
    #[error("not a decimal number")]
    Malformed,
    #[error("more than {0} decimal places")]
    TooPrecise(u32),
    #[error("out of range")]
    Overflow,
    #[error("must not be negative")]
    Negative,
}

/// 10^scale.
pub fn unit(scale: u32) -> i64 {
    assert!(scale <= SCALE_MAX);
    10i64.pow(scale)
}

/// Parses `"123.4500"` at `scale` 2 into `12345`. Accepts an optional leading `-`, digits, at
/// most one `.`; trailing zeros beyond the scale are fine, non-zero digits are not.
pub fn parse(text: &str, scale: u32) -> Result<i64, DecimalError> {
    assert!(scale <= SCALE_MAX);
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = match body.split_once('.') {
        Some((w, f)) => (w, f),
        None => (body, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && frac.is_empty()
        || !digits(whole)
        || !digits(frac)
        || body.ends_with('.') && frac.is_empty() && whole.is_empty()
    {
        return Err(DecimalError::Malformed);
    }
    let significant = frac.trim_end_matches('0');
    if significant.len() > scale as usize {
        return Err(DecimalError::TooPrecise(scale));
    }
    let mut value: i128 = 0;
    for b in whole.bytes() {
        value = value * 10 + (b - b'0') as i128;
        if value > i64::MAX as i128 {
            return Err(DecimalError::Overflow);
        }
    }
    let mut frac_value: i128 = 0;
    for b in significant.bytes() {
        frac_value = frac_value * 10 + (b - b'0') as i128;
    }
    frac_value *= 10i128.pow(scale - significant.len() as u32);
    let total = value * unit(scale) as i128 + frac_value;
    if total > i64::MAX as i128 {
        return Err(DecimalError::Overflow);
    }
    Ok(if negative {
        -(total as i64)
    } else {
        total as i64
    })
}

/// Like [`parse`], refusing negative numbers.
pub fn parse_non_negative(text: &str, scale: u32) -> Result<i64, DecimalError> {
    let v = parse(text, scale)?;
    if v < 0 || text.starts_with('-') {
        return Err(DecimalError::Negative);
    }
    Ok(v)
}

/// Formats `12345` at `scale` 2 as `"123.45"`; always prints exactly `scale` decimals. Takes
/// wide values too (sums of many amounts, such as a price level's total quantity).
pub fn format(value: impl Into<i128>, scale: u32) -> String {
    assert!(scale <= SCALE_MAX);
    let value: i128 = value.into();
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    if scale == 0 {
        return format!("{sign}{abs}");
    }
    let u = unit(scale) as u128;
    format!(
        "{sign}{}.{:0width$}",
        abs / u,
        abs % u,
        width = scale as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(parse("123.45", 2), Ok(12345));
        assert_eq!(parse("123.4500", 2), Ok(12345));
        assert_eq!(parse("0.01", 2), Ok(1));
        assert_eq!(parse(".5", 1), Ok(5));
        assert_eq!(parse("7", 0), Ok(7));
        assert_eq!(parse("7.", 0), Ok(7));
        assert_eq!(parse("-1.5", 1), Ok(-15));
        assert_eq!(parse("0.001", 2), Err(DecimalError::TooPrecise(2)));
        assert_eq!(parse("", 2), Err(DecimalError::Malformed));
        assert_eq!(parse(".", 2), Err(DecimalError::Malformed));
        assert_eq!(parse("1e5", 2), Err(DecimalError::Malformed));
        assert_eq!(parse("1.2.3", 2), Err(DecimalError::Malformed));
        assert_eq!(parse(" 1", 2), Err(DecimalError::Malformed));
        assert_eq!(parse("+1", 2), Err(DecimalError::Malformed));
        assert_eq!(parse("NaN", 2), Err(DecimalError::Malformed));
        assert_eq!(
            parse("92233720368547758.08", 2),
            Err(DecimalError::Overflow)
        );
        assert_eq!(parse("92233720368547758.07", 2), Ok(i64::MAX));
        assert_eq!(
            parse("99999999999999999999999", 0),
            Err(DecimalError::Overflow)
        );
        assert_eq!(parse_non_negative("-0", 2), Err(DecimalError::Negative));
    }

    #[test]
    fn formats_with_fixed_decimals() {
        assert_eq!(format(12345, 2), "123.45");
        assert_eq!(format(5, 3), "0.005");
        assert_eq!(format(-5, 3), "-0.005");
        assert_eq!(format(42, 0), "42");
        assert_eq!(format(i64::MIN, 0), "-9223372036854775808");
        assert_eq!(
            format(2 * i64::MAX as i128 + 2, 18),
            "18.446744073709551616"
        );
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(v in any::<i64>().prop_filter("min", |v| *v != i64::MIN), scale in 0u32..=18) {
            prop_assert_eq!(parse(&format(v, scale), scale), Ok(v));
        }
    }
}
