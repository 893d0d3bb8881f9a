//! `[history]`: how long messages stay in the store's log and history.

use std::path::Path;

use patchbay_model::{Invalid, Section};
use serde::Deserialize;

/// `[history]` of `patchbay.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySettings {
    /// Messages older than this many days leave the log and history (0, the default, keeps everything).
    pub keep_days: i64,
}

impl Section for HistorySettings {
    const NAME: &'static str = "history";

    fn resolve(&mut self, _base: &Path) -> Result<(), Invalid> {
        if !(0..=36_500).contains(&self.keep_days) {
            return Err(Invalid::new("keep_days", "must be 0 (keep everything) to 36500"));
        }
        Ok(())
    }
}
