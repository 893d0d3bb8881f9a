//! UTC timestamps with microsecond precision and one fixed RFC 3339 spelling,
//! so that a timestamp inside a signed envelope always serializes the same way.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, UTC; written as `2026-11-22T10:00:00.000000Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a string is not a timestamp in patchbay's fixed RFC 3339 form.
///
/// Only the canonical spelling parses: anything else would serialize back to
/// different bytes and break the signature of the envelope that carried it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timestamp {input:?}: expected YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC, six fractional digits)")]
pub struct TimestampError {
    input: String,
}

impl Timestamp {
    /// The current wall-clock time (the only clock read in this crate, kept at the edge).
    pub fn now() -> Self {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(d.as_micros() as i64)
    }

    /// Builds a timestamp from microseconds since the epoch, for stores that keep integers.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the epoch, for stores and arithmetic.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The UTC day of `secs` (unix seconds) as `YYYY-MM-DD`, for text meant for people.
    pub fn day_of(secs: i64) -> String {
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        format!("{y:04}-{m:02}-{d:02}")
    }
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", sod / 3600, (sod / 60) % 60, sod % 60)
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TimestampError { input: s.chars().take(64).collect() };
        let b = s.as_bytes();
        if b.len() != 27 || !s.is_ascii() {
            return Err(err());
        }
        for (i, want) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (26, b'Z')] {
            if b[i] != want {
                return Err(err());
            }
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, TimestampError> {
            let part = &s[r];
            if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().map_err(|_| err()) } else { Err(err()) }
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec, micros) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
        let days = days_from_civil(y, mo, d);
        if !(1..=12).contains(&mo) || civil_from_days(days) != (y, mo, d) || h > 23 || mi > 59 || sec > 59 {
            return Err(err());
        }
        Ok(Timestamp(((days * 86_400) + h * 3600 + mi * 60 + sec) * 1_000_000 + micros))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "UTC, RFC 3339, always with six fractional digits and a Z"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(Timestamp::day_of(0), "1970-01-01");
        assert_eq!(Timestamp::day_of(1_709_337_600), "2024-03-02");
        assert_eq!(Timestamp::day_of(951_782_400), "2000-02-29");
        assert_eq!(Timestamp::day_of(-1), "1969-12-31");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp(1_795_000_000_123_456).to_string(), "2026-11-18T11:06:40.123456Z");
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn round_trips_over_a_wide_range() {
        let mut t: i64 = -62_000_000_000_000_000;
        while t < 253_000_000_000_000_000 {
            let ts = Timestamp(t);
            assert_eq!(ts.to_string().parse::<Timestamp>().unwrap(), ts, "{ts}");
            t += 7_777_777_777_777_777;
        }
    }

    #[test]
    fn only_the_canonical_spelling_parses() {
        assert_eq!("1970-01-01T00:00:01.500000Z".parse::<Timestamp>().unwrap(), Timestamp(1_500_000));
        for other in [
            "1970-01-01T00:00:01Z",
            "1970-01-01T00:00:01.5Z",
            "1970-01-01T00:00:01.500000000Z",
            "2026-02-30T00:00:00.000000Z",
            "2026-11-22T00:00:60.000000Z",
        ] {
            assert!(other.parse::<Timestamp>().is_err(), "{other}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "2026-11-22", "2026-13-01T00:00:00Z", "2026-11-22T00:00:00+01:00", "2026-11-22T00:00:00.Z", "２026-11-22T00:00:00Z"]
        {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }
}
