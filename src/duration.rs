//! Human-written durations for the config file and the command line: "30s", "10m",
//! "1h30m", "500ms", "0".
//!
//! Only whole numbers are accepted and units must go from largest to smallest, each at
//! most once. "1.5h" or "30m1h" are far more likely typos than intent, and a timeout that
//! silently means something else is how a failover waits forever.

use std::time::Duration;

/// Units from largest to smallest; parsing enforces this order.
const UNITS: &[Unit] = &[
    Unit {
        suffix: "d",
        nanos: 86_400 * NANOS_PER_SEC,
    },
    Unit {
        suffix: "h",
        nanos: 3_600 * NANOS_PER_SEC,
    },
    Unit {
        suffix: "m",
        nanos: 60 * NANOS_PER_SEC,
    },
    Unit {
        suffix: "s",
        nanos: NANOS_PER_SEC,
    },
    Unit {
        suffix: "ms",
        nanos: 1_000_000,
    },
    Unit {
        suffix: "us",
        nanos: 1_000,
    },
    Unit {
        suffix: "ns",
        nanos: 1,
    },
];

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The longest duration pgzfs accepts anywhere.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

struct Unit {
    suffix: &'static str,
    nanos: u128,
}

const UNIT_LIST: &str = "d, h, m, s, ms, us, ns";

/// Parse "1h30m"-style text. The error names the text and says what is wrong, ready to
/// be prefixed with the config key or option it came from.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let invalid = |why: String| format!("invalid duration {text:?}: {why}");

    if trimmed.is_empty() {
        return Err(invalid(format!(
            "it is empty; write e.g. \"30s\" or \"1h30m\" (units: {UNIT_LIST})"
        )));
    }
    if trimmed.starts_with('-') {
        return Err(invalid("negative durations are not allowed".to_string()));
    }
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }

    let mut total_nanos: u128 = 0;
    // Index into UNITS of the last unit seen; the next unit must come strictly after it.
    let mut previous_unit: Option<usize> = None;
    let mut rest = trimmed;

    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            let why = match rest.chars().next() {
                Some('.') => {
                    "only whole numbers are allowed; write e.g. \"1h30m\" instead of \"1.5h\""
                        .to_string()
                }
                Some('+') => "a sign is not allowed".to_string(),
                Some(c) if c.is_whitespace() => {
                    "spaces are not allowed; write e.g. \"1h30m\"".to_string()
                }
                _ => format!("expected a number at {rest:?}"),
            };
            return Err(invalid(why));
        }
        let (digits, after_digits) = rest.split_at(digits_len);

        let unit_len = after_digits
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (suffix, after_unit) = after_digits.split_at(unit_len);
        if suffix.is_empty() {
            let why = match after_digits.chars().next() {
                Some('.') => {
                    "only whole numbers are allowed; write e.g. \"1h30m\" instead of \"1.5h\""
                        .to_string()
                }
                Some(c) if c.is_whitespace() => {
                    "spaces are not allowed; write e.g. \"1h30m\"".to_string()
                }
                Some(c) => format!("unexpected character {c:?}"),
                None => format!("{digits:?} has no unit (units: {UNIT_LIST})"),
            };
            return Err(invalid(why));
        }

        let Some(unit_index) = UNITS.iter().position(|u| u.suffix == suffix) else {
            return Err(invalid(format!(
                "unknown unit {suffix:?} (units: {UNIT_LIST})"
            )));
        };
        if let Some(previous) = previous_unit {
            if unit_index <= previous {
                return Err(invalid(format!(
                    "unit {suffix:?} repeated or out of order; write units largest first, each once, e.g. \"1h30m\""
                )));
            }
        }
        previous_unit = Some(unit_index);

        let too_large = || invalid("too large".to_string());
        let amount: u128 = digits.parse().map_err(|_| too_large())?;
        let part = amount
            .checked_mul(UNITS[unit_index].nanos)
            .ok_or_else(too_large)?;
        total_nanos = total_nanos.checked_add(part).ok_or_else(too_large)?;
        rest = after_unit;
    }

    // Deadlines are `Instant::now() + d`: a duration near u64::MAX seconds panics there.
    // A hundred years is more than any timeout, interval or retention needs.
    if total_nanos > MAX_DURATION.as_nanos() {
        return Err(invalid(format!(
            "too large; at most {} (100 years)",
            format_duration(MAX_DURATION)
        )));
    }
    let secs =
        u64::try_from(total_nanos / NANOS_PER_SEC).map_err(|_| invalid("too large".to_string()))?;
    let subsec_nanos = (total_nanos % NANOS_PER_SEC) as u32;
    Ok(Duration::new(secs, subsec_nanos))
}

/// Print a duration compactly in the same syntax `parse_duration` reads, so whatever we
/// log can be pasted back into the config: "1h30m", "45s", "1s500ms", "0s".
pub fn format_duration(duration: Duration) -> String {
    let mut remaining = duration.as_nanos();
    if remaining == 0 {
        return "0s".to_string();
    }
    let mut text = String::new();
    for unit in UNITS {
        let amount = remaining / unit.nanos;
        if amount > 0 {
            text.push_str(&amount.to_string());
            text.push_str(unit.suffix);
            remaining %= unit.nanos;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_usual_timeouts_parse_to_what_an_operator_means() {
        assert_eq!(parse_duration("30s"), Ok(secs(30)));
        assert_eq!(parse_duration("10m"), Ok(secs(600)));
        assert_eq!(parse_duration("2h"), Ok(secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(secs(86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
    }

    #[test]
    fn units_can_be_combined_largest_first() {
        assert_eq!(parse_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(
            parse_duration("1d2h3m4s5ms"),
            Ok(Duration::new(93_784, 5_000_000))
        );
        assert_eq!(parse_duration("2m0s"), Ok(secs(120)));
    }

    #[test]
    fn a_bare_zero_means_no_wait_but_other_bare_numbers_are_refused() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("has no unit"), "{err}");
    }

    #[test]
    fn surrounding_whitespace_is_tolerated() {
        assert_eq!(parse_duration(" 45s\n"), Ok(secs(45)));
    }

    #[test]
    fn an_empty_duration_is_refused() {
        let err = parse_duration("").unwrap_err();
        assert!(err.contains("empty"), "{err}");
        assert!(parse_duration("   ").unwrap_err().contains("empty"));
    }

    #[test]
    fn a_negative_duration_is_refused() {
        let err = parse_duration("-5s").unwrap_err();
        assert!(err.contains("negative"), "{err}");
        assert!(err.contains("\"-5s\""), "message names the input: {err}");
    }

    #[test]
    fn an_unknown_unit_is_refused_and_the_valid_units_are_listed() {
        let err = parse_duration("5x").unwrap_err();
        assert!(err.contains("unknown unit \"x\""), "{err}");
        assert!(err.contains("ms"), "{err}");
        assert!(parse_duration("5S").is_err(), "units are lower case");
        assert!(parse_duration("5sec").is_err());
        assert!(parse_duration("5min").is_err());
    }

    #[test]
    fn fractions_spaces_and_signs_are_refused_with_a_hint() {
        assert!(parse_duration("1.5h")
            .unwrap_err()
            .contains("whole numbers"));
        assert!(parse_duration("1h .5m").unwrap_err().contains("spaces"));
        assert!(parse_duration("1h 30m").unwrap_err().contains("spaces"));
        assert!(parse_duration("+5s").unwrap_err().contains("sign"));
        assert!(parse_duration("h")
            .unwrap_err()
            .contains("expected a number"));
    }

    #[test]
    fn repeated_or_misordered_units_look_like_typos_and_are_refused() {
        assert!(parse_duration("30m1h")
            .unwrap_err()
            .contains("out of order"));
        assert!(parse_duration("1h1h").unwrap_err().contains("repeated"));
    }

    #[test]
    fn absurdly_large_durations_are_refused_instead_of_wrapping() {
        assert!(parse_duration("99999999999999999999999999999999999999999d")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("999999999999999999d")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("18446744073709551616s")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn a_duration_that_would_panic_as_a_deadline_is_refused_at_load() {
        // promote_timeout = "18446744073709551615s" made `Instant::now() + d` panic.
        let err = parse_duration(&format!("{}s", u64::MAX)).unwrap_err();
        assert!(err.contains("too large") && err.contains("36500d"), "{err}");
        assert!(parse_duration("36501d").is_err());
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        let _deadline = std::time::Instant::now() + MAX_DURATION;
        let _when = std::time::SystemTime::now() + MAX_DURATION;
    }

    #[test]
    fn durations_print_compactly() {
        assert_eq!(format_duration(secs(5400)), "1h30m");
        assert_eq!(format_duration(secs(45)), "45s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(secs(86_400 + 1)), "1d1s");
    }

    #[test]
    fn what_is_printed_parses_back_to_the_same_duration() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(1_234_567),
            secs(59),
            secs(3_601),
            Duration::new(987_654_321, 123_456_789),
            MAX_DURATION,
        ] {
            assert_eq!(
                parse_duration(&format_duration(d)),
                Ok(d),
                "{}",
                format_duration(d)
            );
        }
    }
}
