//! How long a test took, written one way everywhere (the report, the dashboard's matrix), so
//! a reader comparing the two sees the same figure.

/// Whole seconds from milliseconds, to the nearest: what reports carry and pages show.
pub fn seconds_of(ms: u64) -> u64 {
    ms.saturating_add(500) / 1000
}

/// A duration in whole seconds for people: `under 1 s`, `42 s`, `3 min 12 s`, `1 h 5 min`.
pub fn duration(seconds: u64) -> String {
    match seconds {
        0 => "under 1 s".to_string(),
        1..=59 => format!("{seconds} s"),
        60..=3599 if seconds.is_multiple_of(60) => format!("{} min", seconds / 60),
        60..=3599 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ if seconds % 3600 / 60 == 0 => format!("{} h", seconds / 3600),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_the_same_everywhere() {
        assert_eq!(duration(seconds_of(200)), "under 1 s");
        assert_eq!(duration(seconds_of(1_499)), "1 s");
        assert_eq!(duration(seconds_of(42_000)), "42 s");
        assert_eq!(duration(192), "3 min 12 s");
        assert_eq!(duration(120), "2 min");
        assert_eq!(duration(3_900), "1 h 5 min");
        assert_eq!(duration(7_200), "2 h");
    }
}
