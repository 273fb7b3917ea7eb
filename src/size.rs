//! Human-written byte counts for the config file: "800K", "50M", "50MiB", "1G", "4096".
//!
//! Units are binary (1K = 1024 bytes), the way ZFS and most operators count, and may be
//! written short ("M") or long ("MiB"). "MB" and "KB" are refused rather than guessed:
//! half the world reads them as powers of 1000, and a limit 5% off from what was meant
//! is exactly what the setting exists to prevent. As with durations, only one whole
//! number and at most one unit are accepted, so that a typo cannot quietly mean
//! something else.

/// Suffixes with their multipliers; both spellings of a unit mean the same.
const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("G", 1 << 30),
    ("GiB", 1 << 30),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
];

const UNIT_LIST: &str = "B, K or KiB, M or MiB, G or GiB, T or TiB; 1K = 1024 bytes";

/// Parse "50M"-style text into bytes; a bare number is bytes. The error names the text
/// and says what is wrong, ready to be prefixed with the config key it came from.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let invalid = |why: String| format!("invalid size {text:?}: {why}");

    if trimmed.is_empty() {
        return Err(invalid(format!(
            "it is empty; write e.g. \"50M\" (units: {UNIT_LIST})"
        )));
    }
    let digits_len = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits_len == 0 {
        let why = match trimmed.chars().next() {
            Some('-') => "negative sizes are not allowed".to_string(),
            Some('+') => "a sign is not allowed".to_string(),
            Some('.') => "only whole numbers are allowed".to_string(),
            _ => format!("expected a number at {trimmed:?}"),
        };
        return Err(invalid(why));
    }
    let (digits, suffix) = trimmed.split_at(digits_len);

    let multiplier = match suffix {
        "" => 1,
        _ if suffix.starts_with('.') || suffix.starts_with(',') => {
            return Err(invalid(
                "only whole numbers are allowed; write e.g. \"1536K\" instead of \"1.5M\""
                    .to_string(),
            ))
        }
        _ if suffix.starts_with(char::is_whitespace) => {
            return Err(invalid(
                "spaces are not allowed; write e.g. \"50M\"".to_string(),
            ))
        }
        "KB" | "MB" | "GB" | "TB" => {
            let binary = &suffix[..1];
            return Err(invalid(format!(
                "{suffix:?} is ambiguous (1000 or 1024?); write {binary:?} or \"{binary}iB\" \
                 for binary units"
            )));
        }
        _ => match UNITS.iter().find(|(unit, _)| *unit == suffix) {
            Some((_, multiplier)) => *multiplier,
            None => {
                return Err(invalid(format!(
                    "unknown unit {suffix:?} (units: {UNIT_LIST})"
                )))
            }
        },
    };

    let too_large = || invalid("too large".to_string());
    let amount: u64 = digits.parse().map_err(|_| too_large())?;
    amount.checked_mul(multiplier).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_usual_rates_parse_in_binary_units() {
        assert_eq!(parse_size("800K"), Ok(800 * 1024));
        assert_eq!(parse_size("50M"), Ok(50 * MIB));
        assert_eq!(parse_size("50MiB"), Ok(50 * MIB));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("3KiB"), Ok(3 * 1024));
        assert_eq!(parse_size("512B"), Ok(512));
    }

    #[test]
    fn a_bare_number_is_bytes_and_zero_is_zero() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("0M"), Ok(0));
    }

    #[test]
    fn surrounding_whitespace_is_tolerated() {
        assert_eq!(parse_size(" 50M\n"), Ok(50 * MIB));
    }

    #[test]
    fn an_empty_size_is_refused() {
        assert!(parse_size("").unwrap_err().contains("empty"));
        assert!(parse_size("  ").unwrap_err().contains("empty"));
    }

    #[test]
    fn a_negative_size_is_refused_and_the_message_names_the_input() {
        let err = parse_size("-5M").unwrap_err();
        assert!(err.contains("negative"), "{err}");
        assert!(err.contains("\"-5M\""), "{err}");
    }

    #[test]
    fn an_unknown_unit_is_refused_and_the_units_are_listed() {
        let err = parse_size("5X").unwrap_err();
        assert!(err.contains("unknown unit \"X\""), "{err}");
        assert!(err.contains("MiB"), "{err}");
        assert!(parse_size("5m").is_err(), "units are upper case");
        assert!(parse_size("5Mib").is_err());
        assert!(parse_size("5M/s").is_err());
        assert!(parse_size("1G512M").is_err(), "one unit only");
    }

    #[test]
    fn decimal_looking_units_are_refused_as_ambiguous() {
        let err = parse_size("50MB").unwrap_err();
        assert!(err.contains("ambiguous"), "{err}");
        assert!(err.contains("\"MiB\""), "{err}");
        assert!(parse_size("800KB").unwrap_err().contains("ambiguous"));
    }

    #[test]
    fn fractions_spaces_and_signs_are_refused_with_a_hint() {
        assert!(parse_size("1.5M").unwrap_err().contains("whole numbers"));
        assert!(parse_size(".5M").unwrap_err().contains("whole numbers"));
        assert!(parse_size("50 M").unwrap_err().contains("spaces"));
        assert!(parse_size("+5M").unwrap_err().contains("sign"));
        assert!(parse_size("M").unwrap_err().contains("expected a number"));
    }

    #[test]
    fn sizes_that_do_not_fit_in_64_bits_are_refused_instead_of_wrapping() {
        assert_eq!(parse_size(&u64::MAX.to_string()), Ok(u64::MAX));
        assert!(parse_size("18446744073709551616")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("16777216T").unwrap_err().contains("too large"));
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
    }
}
