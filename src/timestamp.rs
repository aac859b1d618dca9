//! ISO-8601 timestamps (RFC 3339 profile) ⇄ milliseconds since the Unix epoch, for lease expiry:
//! Paperclip sends `requestedExpiresAt` as such a string and reads `expiresAt` back. A small,
//! exact converter (days from civil dates) instead of a calendar crate, which would grow the
//! component for two functions.

/// Parse `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)` into Unix milliseconds. A space may stand for the
/// `T`; the offset is required (a time without one names no instant). `None` for anything else,
/// including out-of-range fields and times before 1970.
pub fn parse_iso8601_ms(text: &str) -> Option<u64> {
    let s = text.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<u64> {
        let part = s.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| s.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let mut i = 19;
    let mut millis = 0u64;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + u64::from(s[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_ms: i64 = match s.get(i) {
        Some(b'Z' | b'z') if i + 1 == s.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == s.len() && s[i + 3] == b':' => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let ms = ((h * 60 + m) * 60_000) as i64;
            if *sign == b'+' {
                ms
            } else {
                -ms
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let local_ms = ((days * 24 + hour as i64) * 60 + minute as i64) * 60_000 + second as i64 * 1000;
    let utc = local_ms + millis as i64 - offset_ms;
    u64::try_from(utc).ok()
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (what JavaScript's `toISOString` writes).
pub fn format_iso8601_ms(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let rem = ms % 86_400_000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_parse_and_format_exactly() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:00.001Z", 1),
            ("2000-02-29T12:34:56.789Z", 951_827_696_789),
            ("2026-12-01T22:30:00.000Z", 1_796_164_200_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_iso8601_ms(text), Some(ms), "{text}");
            assert_eq!(parse_iso8601_ms(&format_iso8601_ms(ms)), Some(ms));
        }
        assert_eq!(
            format_iso8601_ms(951_827_696_789),
            "2000-02-29T12:34:56.789Z"
        );
        // Offsets, fractions of any length, a space for the T.
        assert_eq!(
            parse_iso8601_ms("2026-12-01T23:30:00+01:00"),
            Some(1_796_164_200_000)
        );
        assert_eq!(
            parse_iso8601_ms("2026-12-01 21:00:00.5-01:30"),
            Some(1_796_164_200_500)
        );
        assert_eq!(
            parse_iso8601_ms("2026-12-01T22:30:00.123456789Z"),
            Some(1_796_164_200_123)
        );
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "",
            "soon",
            "2026-12-01",
            "2026-12-01T22:30:00",
            "2026-12-01T22:30:00+0100",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T22:30:00.Z",
            "2026-12-01T22:30:00Zjunk",
            "1969-12-31T23:59:59Z",
            "２０２6-12-01T22:30:00Z",
        ] {
            assert_eq!(parse_iso8601_ms(bad), None, "{bad:?}");
        }
    }
}
