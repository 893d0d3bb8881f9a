//! `[results]`: when a verdict is decided without all its results.

use std::path::Path;

use patchbay_model::{Invalid, Section};
use serde::Deserialize;

/// `[results]` of `patchbay.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultsSettings {
    /// A series version with required results still missing this long after its first result
    /// gets an INCOMPLETE verdict (default 6 h).
    pub verdict_deadline_secs: i64,
    /// A superseded version gets its verdict when it is superseded, from the results it has
    /// (default true); otherwise it waits for them or the deadline.
    pub close_superseded: bool,
}

impl Default for ResultsSettings {
    fn default() -> Self {
        ResultsSettings { verdict_deadline_secs: 6 * 3600, close_superseded: true }
    }
}

impl Section for ResultsSettings {
    const NAME: &'static str = "results";

    fn resolve(&mut self, _base: &Path) -> Result<(), Invalid> {
        if self.verdict_deadline_secs < 1 {
            return Err(Invalid::new("verdict_deadline_secs", "must be at least 1"));
        }
        Ok(())
    }
}
