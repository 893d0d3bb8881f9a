//! `[report]`: who gets a report mail, how it is sent, and what it says.

use std::path::{Path, PathBuf};

use patchbay_model::{Invalid, Section, section::resolve_path};
use serde::Deserialize;

use crate::compose::Recipients;

/// Who hears of a project's verdicts by mail (`mode` of `[project.report]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportMode {
    /// A reply on the list, to whom `report.recipients` says (the default).
    #[default]
    List,
    /// The submitter alone, never the list: a project that keeps its list quiet.
    Submitter,
    /// No mail at all: the verdict is on the bus, the dashboard and the checks (netdev's choice).
    None,
}

/// A project's own report rules (`[project.report]`), over `[report]`'s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectReport {
    /// Who hears.
    pub mode: ReportMode,
    /// `report.only_on_failure` for this project; unset: `[report]`'s.
    pub only_on_failure: Option<bool>,
}

/// `[report]` of `patchbay.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportSettings {
    /// `From:` of report mail.
    pub from: String,
    /// Domain of report Message-IDs.
    pub domain: String,
    /// Who gets them (default: the submitter, with the list in Cc).
    pub recipients: Recipients,
    /// Base URL of the web pages linked from reports (default: the HTTP listener).
    pub link: Option<String>,
    /// `smtp://host:port`, `smtp+starttls://host:port` or `smtps://host:port`; without it,
    /// reports go to the outbox maildir in the data directory.
    pub smtp_url: Option<String>,
    /// AUTH user for the SMTP server (with `smtp_password`).
    pub smtp_user: Option<String>,
    /// AUTH password for the SMTP server (with `smtp_user`).
    pub smtp_password: Option<String>,
    /// PEM certificates to trust for the SMTP server besides the system's: a private CA or a
    /// self-signed relay.
    pub smtp_ca_file: Option<PathBuf>,
    /// A minijinja template for the report's body.
    pub template: Option<PathBuf>,
    /// Mail only FAILED and INCOMPLETE verdicts (default false).
    pub only_on_failure: bool,
    /// No mail for a version superseded before its verdict was reported (default true).
    pub skip_superseded: bool,
    /// The certificates of `smtp_ca_file`, read by `resolve`.
    #[serde(skip)]
    pub smtp_ca: Option<Vec<u8>>,
    /// The text of `template`, read by `resolve` so a missing file fails at start, not at the
    /// first verdict.
    #[serde(skip)]
    pub template_text: Option<String>,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            from: "patchbay <patchbay@localhost>".into(),
            domain: "patchbay.invalid".into(),
            recipients: Recipients::Both,
            link: None,
            smtp_url: None,
            smtp_user: None,
            smtp_password: None,
            smtp_ca_file: None,
            template: None,
            only_on_failure: false,
            skip_superseded: true,
            smtp_ca: None,
            template_text: None,
        }
    }
}

impl ReportSettings {
    /// AUTH user and password, when both are given.
    pub fn smtp_credentials(&self) -> Option<(String, String)> {
        Some((self.smtp_user.clone()?, self.smtp_password.clone()?))
    }
}

impl Section for ReportSettings {
    const NAME: &'static str = "report";

    fn resolve(&mut self, base: &Path) -> Result<(), Invalid> {
        if let Some(p) = &self.smtp_ca_file {
            let p = resolve_path(base, p);
            let pem = std::fs::read(&p).map_err(|e| Invalid::new("smtp_ca_file", format!("reading {}: {e}", p.display())))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(Invalid::new("smtp_ca_file", format!("{} holds no PEM certificate", p.display())));
            }
            self.smtp_ca = Some(pem);
            self.smtp_ca_file = Some(p);
        }
        if let Some(p) = &self.template {
            let p = resolve_path(base, p);
            let text = std::fs::read_to_string(&p).map_err(|e| Invalid::new("template", format!("reading {}: {e}", p.display())))?;
            self.template_text = Some(text);
            self.template = Some(p);
        }
        if self.smtp_user.is_some() != self.smtp_password.is_some() {
            return Err(Invalid::new("smtp_user", "give both smtp_user and smtp_password, or neither"));
        }
        if let Some(url) = &self.smtp_url
            && !["smtp://", "smtp+starttls://", "smtps://"].iter().any(|p| url.starts_with(p))
        {
            return Err(Invalid::new("smtp_url", format!("{url:?} must start with smtp://, smtp+starttls:// or smtps://")));
        }
        if self.domain.is_empty() || self.domain.contains(['<', '>', '@', ' ']) {
            return Err(Invalid::new("domain", format!("{:?} is not a domain such as ci.example.org", self.domain)));
        }
        Ok(())
    }
}
