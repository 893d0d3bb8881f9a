//! `[dispatch]` and `[merged]`: which series are tested, and how merged ones are noticed.

use std::path::Path;

use patchbay_model::{Invalid, Section};
use serde::Deserialize;

/// The default of `dispatch.max_age_secs`: three days, so mail delayed in transit is still tested.
pub const DEFAULT_DISPATCH_MAX_AGE_SECS: u64 = 3 * 86_400;

/// `[dispatch]` of `patchbay.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchSettings {
    /// A series whose newest mail is dated longer ago than this many seconds is stored but not
    /// tested or reported (default 3 days; 0 tests whatever the age): importing a list's archive
    /// must not mail authors about patches from years ago.
    pub max_age_secs: i64,
    /// Re-tests a series version may be given on request (`Recheck-request:` replies; default 3;
    /// 0 turns requests off).
    pub max_rechecks: u32,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings { max_age_secs: DEFAULT_DISPATCH_MAX_AGE_SECS as i64, max_rechecks: 3 }
    }
}

impl DispatchSettings {
    /// The age limit in seconds, 0 for none (`resolve` refused a negative one).
    pub fn max_age(&self) -> u64 {
        self.max_age_secs.max(0) as u64
    }
}

impl Section for DispatchSettings {
    const NAME: &'static str = "dispatch";

    fn resolve(&mut self, _base: &Path) -> Result<(), Invalid> {
        if self.max_age_secs < 0 {
            return Err(Invalid::new("max_age_secs", "must be 0 (test whatever the age) or more"));
        }
        Ok(())
    }
}

/// `[merged]` of `patchbay.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MergedSettings {
    /// How often `serve` fetches each project's branches to notice series merged there
    /// (default 600; 0 turns it off).
    pub interval_secs: i64,
    /// How far back, in days since first seen, a complete series is still looked for upstream
    /// (default 90).
    pub window_days: i64,
}

impl Default for MergedSettings {
    fn default() -> Self {
        MergedSettings { interval_secs: 600, window_days: 90 }
    }
}

impl Section for MergedSettings {
    const NAME: &'static str = "merged";

    fn resolve(&mut self, _base: &Path) -> Result<(), Invalid> {
        if !(0..=604_800).contains(&self.interval_secs) {
            return Err(Invalid::new("interval_secs", "must be 0 (off) to 604800 (a week)"));
        }
        if !(1..=3_650).contains(&self.window_days) {
            return Err(Invalid::new("window_days", "must be 1 to 3650"));
        }
        Ok(())
    }
}
