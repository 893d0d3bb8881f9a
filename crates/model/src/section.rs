//! A config section a service owns: the service, not the config crate, says which keys its
//! `[section]` of `patchbay.toml` has, their defaults and what a good value is, the way vector's
//! components are built from their own config. `patchbay-config` only reads the file, hands each
//! section to its owner's type, and puts the file's name in front of every error.

use std::path::{Path, PathBuf};

/// One section of `patchbay.toml`, read with serde (unknown keys refused, absent keys defaulted
/// by `Default`) and then checked and completed by [`Section::resolve`].
pub trait Section: serde::de::DeserializeOwned + Default {
    /// The section's name in the file (`report` for `[report]`), the prefix of its keys in errors.
    const NAME: &'static str;

    /// Checks values serde cannot (ranges, pairs of keys) and completes the section: relative
    /// paths resolved against `base` (the file's directory), files it names read now, so a bad
    /// value fails at start and not at first use.
    fn resolve(&mut self, base: &Path) -> Result<(), Invalid>;
}

/// A bad value in a section: its key (relative to the section, such as `jobs`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct Invalid {
    /// The key within the section.
    pub key: String,
    /// What is wrong, in the operator's words.
    pub reason: String,
}

impl Invalid {
    /// A bad value of `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid { key: key.into(), reason: reason.into() }
    }
}

/// A path from the file: absolute as given, else relative to the file's directory.
pub fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { base.join(path) }
}
