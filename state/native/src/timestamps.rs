//! The common form of ISO 8601 date-times, `2026-01-05T10:00:00.123Z` or `...+01:00`, to epoch
//! milliseconds, as `schemas.timestamps.epoch_ms` reads it.
//!
//! Only `YYYY-MM-DDTHH:MM:SS`, an optional fraction after `.` (read to the microsecond), then `Z`
//! or `+HH:MM` / `-HH:MM`, for instants within 2^53 microseconds of the epoch (1685 to 2255).
//! Anything else, valid or not, is `None`: the caller reads it the general way, which also says
//! what is wrong with it.

/// Microseconds beyond which `f64` no longer holds every count exactly.
const EXACT_MICROS: i64 = 1 << 53;

/// Epoch milliseconds of `text` in the common form, else `None`.
pub fn epoch_ms(text: &[u8]) -> Option<i64> {
    if text.len() < 20
        || text[4] != b'-'
        || text[7] != b'-'
        || text[10] != b'T'
        || text[13] != b':'
        || text[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (
        number(&text[0..4])?,
        number(&text[5..7])?,
        number(&text[8..10])?,
    );
    let (hour, minute, second) = (
        number(&text[11..13])?,
        number(&text[14..16])?,
        number(&text[17..19])?,
    );
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0;
    if rest[0] == b'.' {
        let digits = rest[1..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        let kept = &rest[1..1 + digits.min(6)];
        micros = number(kept)? * 10_i64.pow(6 - kept.len() as u32);
        rest = &rest[1 + digits..];
    }
    let offset = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), hours @ .., b':', m1, m2] if hours.len() == 2 => {
            let (hours, minutes) = (number(hours)?, number(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    let seconds =
        days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let micros = seconds * 1_000_000 + micros;
    if micros.abs() >= EXACT_MICROS {
        return None;
    }
    // int(micros / 10**6 * 1000) in Python: a correctly rounded quotient, a product, truncation
    Some((micros as f64 / 1e6 * 1000.0) as i64)
}

/// The value of ASCII digits (at most 18 of them), or `None` if one is not a digit.
fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0, |value, byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + i64::from(byte - b'0'))
    })
}

fn leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date (proleptic Gregorian calendar).
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    const BEFORE_MONTH: [i64; 13] = [0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let before = year - 1;
    let ordinal = before * 365 + before / 4 - before / 100
        + before / 400
        + BEFORE_MONTH[month as usize]
        + day;
    ordinal + i64::from(leap(year) && month > 2) - 719_163
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Option<i64> {
        epoch_ms(text.as_bytes())
    }

    #[test]
    fn the_common_forms_are_read() {
        assert_eq!(ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(ms("2026-01-05T10:00:00Z"), Some(1_767_607_200_000));
        assert_eq!(ms("2026-01-05T10:00:00.123Z"), Some(1_767_607_200_123));
        assert_eq!(ms("2026-01-05T11:00:00.123+01:00"), Some(1_767_607_200_123));
        assert_eq!(ms("2026-01-05T09:30:00.123-00:30"), Some(1_767_607_200_123));
        assert_eq!(ms("2026-01-05T10:00:00.1239999Z"), Some(1_767_607_200_123));
        assert_eq!(ms("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
    }

    #[test]
    fn anything_else_is_left_to_the_general_way() {
        for text in [
            "2026-01-05T10:00:00",
            "2026-01-05 10:00:00Z",
            "2026-01-05T10:00:00z",
            "2026-01-05T10:00Z",
            "2026-01-05T10:00:00.Z",
            "2026-01-05T10:00:00,5Z",
            "2026-01-05T10:00:00+0100",
            "2026-01-05T10:00:00+24:00",
            "2026-01-05T24:00:00Z",
            "2026-01-05T10:60:00Z",
            "2026-01-05T10:00:60Z",
            "2026-02-29T10:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-00-01T10:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "1600-01-01T00:00:00Z",
            "2026-01-05T10:00:00Zx",
            "2026-01-05T1O:00:00Z",
            "+026-01-05T10:00:00Z",
            "2026-01-05T10:00:00.12a3Z",
        ] {
            assert_eq!(ms(text), None, "{text}");
        }
    }
}
