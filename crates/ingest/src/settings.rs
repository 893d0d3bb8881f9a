//! `[ingest]`: where mail comes in and how series are assembled from it.

use std::net::SocketAddr;
use std::path::Path;

use patchbay_model::{Invalid, Section};
use serde::{Deserialize, Deserializer};

/// The default LMTP listener: loopback only.
pub const DEFAULT_LMTP: &str = "127.0.0.1:8024";

/// `[ingest]` of `patchbay.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Where `serve` accepts LMTP (`lmtp:` in Postfix or Exim); `None` when set to `""`.
    #[serde(deserialize_with = "listen_address")]
    pub lmtp_listen: Option<SocketAddr>,
    /// Larger mails are refused (LMTP 552; `inject` exits 65). Default 64 MiB.
    pub max_mail_bytes: u64,
    /// A series still missing patches this long after its first mail becomes `incomplete`. Default 24 h.
    pub incomplete_after_secs: i64,
    /// How far apart two mails may be to join a series by subject markers alone. Default 20 min.
    pub marker_window_secs: i64,
    /// LMTP sessions at once; `None`: a quarter of the open-file limit, at most 1,024.
    pub lmtp_max_connections: Option<usize>,
    /// An LMTP command or DATA line must arrive within this long (default 300 s).
    pub lmtp_idle_secs: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            lmtp_listen: DEFAULT_LMTP.parse().ok(),
            max_mail_bytes: 64 << 20,
            incomplete_after_secs: 86_400,
            marker_window_secs: 20 * 60,
            lmtp_max_connections: None,
            lmtp_idle_secs: 300,
        }
    }
}

impl Section for IngestSettings {
    const NAME: &'static str = "ingest";

    fn resolve(&mut self, _base: &Path) -> Result<(), Invalid> {
        if self.max_mail_bytes < 1024 {
            return Err(Invalid::new("max_mail_bytes", format!("{} is too small (at least 1024)", self.max_mail_bytes)));
        }
        if self.incomplete_after_secs < 1 {
            return Err(Invalid::new("incomplete_after_secs", "must be at least 1"));
        }
        if self.marker_window_secs < 0 {
            return Err(Invalid::new("marker_window_secs", "must not be negative"));
        }
        if self.lmtp_max_connections == Some(0) {
            return Err(Invalid::new("lmtp_max_connections", "must be at least 1"));
        }
        if !(1..=86_400).contains(&self.lmtp_idle_secs) {
            return Err(Invalid::new("lmtp_idle_secs", "must be 1 to 86400"));
        }
        Ok(())
    }
}

/// `lmtp_listen`: an address, or `""` for none.
fn listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| serde::de::Error::custom(format!("{text:?} is not an address such as {DEFAULT_LMTP}: {e}")))
}

impl IngestSettings {
    /// The assembly rules these settings give.
    pub fn rules(&self) -> crate::Rules {
        crate::Rules { marker_window_secs: self.marker_window_secs }
    }
}
