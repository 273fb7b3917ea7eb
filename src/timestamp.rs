//! UTC timestamps for snapshot names and logs, without a date crate.
//!
//! Snapshot names carry a compact UTC stamp ("pgzfs-20261122T003412Z") so that they sort
//! by time as plain strings and mean the same on every node whatever its time zone.
//! Sub-second precision is dropped: times are truncated towards the past.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECS_PER_DAY: i64 = 86_400;

/// A broken-down UTC time. Years outside 0..=9999 are not printable in the fixed-width
/// forms, but nothing pgzfs handles comes near them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// "20261122T003412Z": ISO 8601 basic format, used inside snapshot names.
pub fn utc_compact(time: SystemTime) -> String {
    let t = civil_from_unix(unix_seconds(time));
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// "2026-11-22T00:34:12Z": RFC 3339, for logs and status output.
pub fn utc_rfc3339(time: SystemTime) -> String {
    let t = civil_from_unix(unix_seconds(time));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The UTC calendar year and month (1-12) of `time`: retention groups snapshots by them.
pub fn utc_year_month(time: SystemTime) -> (i64, u32) {
    let t = civil_from_unix(unix_seconds(time));
    (t.year, t.month)
}

/// Read back what `utc_compact` wrote. Anything else (other lengths, a missing 'T' or
/// 'Z', the 31st of a 30-day month, a leap second) gives None: a snapshot whose name
/// merely looks like ours must not be mistaken for one with a known creation time.
pub fn parse_utc_compact(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    // ASCII first: it makes every byte a char, so the slicing below cannot panic.
    if !text.is_ascii() || bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = &text[range];
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    };
    let year = i64::from(number(0..4)?);
    let month = number(4..6)?;
    let day = number(6..8)?;
    let hour = number(9..11)?;
    let minute = number(11..13)?;
    let second = number(13..15)?;

    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let seconds = days_from_civil(year, month, day) * SECS_PER_DAY
        + i64::from(hour) * 3_600
        + i64::from(minute) * 60
        + i64::from(second);
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// Whole seconds since the epoch, rounded towards the past also for times before 1970,
/// so that 1969-12-31T23:59:59.5 prints as 23:59:59 and not as 1970-01-01T00:00:00.
fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            if before.subsec_nanos() > 0 {
                -whole - 1
            } else {
                -whole
            }
        }
    }
}

fn civil_from_unix(seconds: i64) -> CivilTime {
    let days = seconds.div_euclid(SECS_PER_DAY);
    let second_of_day = seconds.rem_euclid(SECS_PER_DAY) as u32;
    let (year, month, day) = civil_from_days(days);
    CivilTime {
        year,
        month,
        day,
        hour: second_of_day / 3_600,
        minute: second_of_day % 3_600 / 60,
        second: second_of_day % 60,
    }
}

// The two conversions below count in 400-year "eras" of the proleptic Gregorian
// calendar, each exactly 146 097 days long, and start every year on 1 March. Putting
// February last means the leap day is the final day of the shifted year, so month
// lengths within a shifted year never depend on whether it is a leap year, and the day
// of the shifted year maps to a month with one linear formula:
// the months March..January have lengths 31,30,31,30,31,31,30,31,30,31,31, which
// (153 * m + 2) / 5 reproduces as cumulative offsets for m = 0..11.

const DAYS_PER_ERA: i64 = 146_097;
/// Days from 0000-03-01 (the start of era 0) to 1970-01-01.
const EPOCH_OFFSET_DAYS: i64 = 719_468;

/// Days since 1970-01-01 for a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year_from_march = if month <= 2 { year - 1 } else { year };
    let era = year_from_march.div_euclid(400);
    let year_of_era = year_from_march.rem_euclid(400); // 0..=399
    let month_from_march = i64::from((month + 9) % 12); // March = 0 .. February = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1; // 0..=365
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - EPOCH_OFFSET_DAYS
}

/// The inverse of `days_from_civil`.
fn civil_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    let days = days_since_epoch + EPOCH_OFFSET_DAYS;
    let era = days.div_euclid(DAYS_PER_ERA);
    let day_of_era = days.rem_euclid(DAYS_PER_ERA); // 0..=146096

    // Every 4th year adds a day, every 100th takes one away, the 400th adds it back; the
    // last day of the era (a leap day) would otherwise be counted as year 400.
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524
        - day_of_era / (DAYS_PER_ERA - 1))
        / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn the_epoch_prints_as_new_year_1970() {
        assert_eq!(utc_compact(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(utc_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_snapshot_taken_just_after_midnight_gets_a_sortable_utc_stamp() {
        // 2026-11-22T00:34:12Z
        let t = at(1_795_307_652);
        assert_eq!(utc_compact(t), "20261122T003412Z");
        assert_eq!(utc_rfc3339(t), "2026-11-22T00:34:12Z");
    }

    #[test]
    fn well_known_instants_print_correctly() {
        assert_eq!(utc_rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(utc_rfc3339(at(1_000_000_000)), "2001-09-09T01:46:40Z");
        assert_eq!(utc_rfc3339(at(1_234_567_890)), "2009-02-13T23:31:30Z");
        assert_eq!(utc_rfc3339(at(2_147_483_647)), "2038-01-19T03:14:07Z");
        assert_eq!(utc_rfc3339(at(4_107_542_400)), "2100-03-01T00:00:00Z");
        assert_eq!(utc_rfc3339(at(253_402_300_799)), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn sub_second_precision_is_truncated() {
        let t = at(1_795_307_652) + Duration::from_millis(999);
        assert_eq!(utc_compact(t), "20261122T003412Z");
    }

    #[test]
    fn times_before_1970_are_truncated_towards_the_past() {
        let half_a_second_before = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(utc_rfc3339(half_a_second_before), "1969-12-31T23:59:59Z");
        assert_eq!(
            utc_rfc3339(UNIX_EPOCH - Duration::from_secs(86_400)),
            "1969-12-31T00:00:00Z"
        );
        let moon_landing = parse_utc_compact("19690720T201800Z").unwrap();
        assert_eq!(utc_compact(moon_landing), "19690720T201800Z");
        assert_eq!(
            UNIX_EPOCH.duration_since(moon_landing).unwrap().as_secs(),
            14_182_920
        );
    }

    #[test]
    fn the_calendar_month_is_that_of_utc() {
        assert_eq!(utc_year_month(UNIX_EPOCH), (1970, 1));
        let new_years_eve = parse_utc_compact("20241231T235959Z").unwrap();
        assert_eq!(utc_year_month(new_years_eve), (2024, 12));
        assert_eq!(
            utc_year_month(new_years_eve + Duration::from_secs(1)),
            (2025, 1)
        );
        assert_eq!(
            utc_year_month(UNIX_EPOCH - Duration::from_secs(1)),
            (1969, 12)
        );
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        assert!(is_leap_year(2024));
        assert!(is_leap_year(2000), "divisible by 400");
        assert!(!is_leap_year(1900), "divisible by 100 but not 400");
        assert!(!is_leap_year(2100));
        assert!(!is_leap_year(2026));
    }

    #[test]
    fn february_29_exists_only_in_leap_years() {
        assert!(parse_utc_compact("20240229T120000Z").is_some());
        assert!(parse_utc_compact("20000229T120000Z").is_some());
        assert!(parse_utc_compact("20260229T120000Z").is_none());
        assert!(parse_utc_compact("21000229T120000Z").is_none());
        // The day after Feb 28 in a common year is March 1st.
        let feb28 = parse_utc_compact("20260228T000000Z").unwrap();
        assert_eq!(
            utc_compact(feb28 + Duration::from_secs(86_400)),
            "20260301T000000Z"
        );
        let feb28_leap = parse_utc_compact("20240228T000000Z").unwrap();
        assert_eq!(
            utc_compact(feb28_leap + Duration::from_secs(86_400)),
            "20240229T000000Z"
        );
    }

    #[test]
    fn every_day_of_four_centuries_round_trips_through_the_day_count() {
        let first = days_from_civil(1800, 1, 1);
        let last = days_from_civil(2200, 12, 31);
        let mut expected = (1800, 1, 1);
        for days in first..=last {
            let civil = civil_from_days(days);
            assert_eq!(civil, expected, "day {days}");
            assert_eq!(days_from_civil(civil.0, civil.1, civil.2), days);
            let (y, m, d) = expected;
            expected = if d < days_in_month(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn compact_stamps_round_trip() {
        for seconds in [
            0,
            59,
            86_399,
            951_868_799,
            1_795_307_652,
            4_102_444_800,
            253_402_300_799,
        ] {
            let t = at(seconds);
            assert_eq!(
                parse_utc_compact(&utc_compact(t)),
                Some(t),
                "{}",
                utc_compact(t)
            );
        }
    }

    #[test]
    fn text_that_only_resembles_a_stamp_is_not_parsed() {
        for bad in [
            "",
            "20261122T003412",
            "20261122T003412z",
            "20261122t003412Z",
            "20261122 003412Z",
            "2026-11-22T00:34:12Z",
            "20261122T003412Z ",
            "20261322T003412Z",
            "20260022T003412Z",
            "20261100T003412Z",
            "20261131T003412Z",
            "20261122T243412Z",
            "20261122T006012Z",
            "20261122T003460Z",
            "2026112+T003412Z",
            "+0261122T003412Z",
            "2026112٣T003412Z",
            "202611٣T003412Z",
        ] {
            assert_eq!(parse_utc_compact(bad), None, "{bad:?}");
        }
    }
}
