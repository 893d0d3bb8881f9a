//! Sending report mail over SMTP (lettre's connection, rustls with ring):
//! plain SMTP for a relay on loopback, STARTTLS, or TLS (submissions), with
//! AUTH when configured. Errors are sorted for the reporter:
//! - a 5xx answer is permanent and recorded with the server's words;
//! - anything before the mail's text went out (the server unreachable, a
//!   4xx to MAIL, RCPT or DATA) is tried again later;
//! - a failure once the text is on its way (a timeout or a dropped
//!   connection before the answer to the final dot) is *ambiguous*: the
//!   server may have taken the mail, so it is never sent again.
//!
//! The connection sets `TCP_NODELAY` (plain and STARTTLS): lettre writes the
//! text and the final dot separately, and Nagle's algorithm would hold the
//! dot until the server's delayed ACK, 40 ms later on Linux.

use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailParameter};

/// How to reach the SMTP server.
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    /// `smtp://host:port` (plain, for a local relay), `smtp+starttls://host:port`, or
    /// `smtps://host:port` (TLS from the start).
    pub url: String,
    /// AUTH user and password, when the server wants them.
    pub credentials: Option<(String, String)>,
    /// PEM certificates to trust besides the system's (a private CA, a self-signed relay).
    pub ca_pem: Option<Vec<u8>>,
}

/// Why a send failed.
#[derive(Debug)]
pub enum SendError {
    /// The server refused it for good (5xx): its words.
    Permanent(String),
    /// Nothing was taken; try again later.
    Transient(String),
    /// The mail's text went out but its fate is unknown: the server may have taken it.
    Ambiguous(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Security {
    Plain,
    StartTls,
    Tls,
}

/// A connect-per-mail SMTP client.
#[derive(Clone)]
pub struct Smtp {
    security: Security,
    host: String,
    port: u16,
    credentials: Option<Credentials>,
    ca: Option<Certificate>,
    timeout: Duration,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Smtp").field("security", &self.security).field("host", &self.host).field("port", &self.port).finish()
    }
}

/// Sorts an error met before the mail's text went out.
fn before_text(e: &lettre::transport::smtp::Error) -> SendError {
    if e.is_permanent() { SendError::Permanent(e.to_string()) } else { SendError::Transient(e.to_string()) }
}

/// Ends a connection we give up on; QUIT may stall on a broken server, so it is bounded.
async fn abort(conn: &mut AsyncSmtpConnection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.abort()).await;
}

impl Smtp {
    /// Builds the client from settings; a bad URL or CA file is an error.
    pub fn new(s: &SmtpSettings) -> Result<Smtp, String> {
        let (scheme, rest) = s.url.split_once("://").ok_or_else(|| format!("{:?} is not an smtp:// URL", s.url))?;
        let security = match scheme {
            "smtp" => Security::Plain,
            "smtp+starttls" => Security::StartTls,
            "smtps" => Security::Tls,
            other => return Err(format!("unknown scheme {other:?}: use smtp, smtp+starttls or smtps")),
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if security == Security::Tls { 465 } else { 587 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| format!("bad port in {:?}", s.url))?),
            None => (rest.to_string(), if security == Security::Plain { 25 } else { default_port }),
        };
        if host.is_empty() {
            return Err(format!("no host in {:?}", s.url));
        }
        let ca = match &s.ca_pem {
            Some(pem) if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => return Err("no PEM certificate in it".into()),
            Some(pem) => Some(Certificate::from_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?),
            None => None,
        };
        let smtp = Smtp {
            security,
            host,
            port,
            credentials: s.credentials.as_ref().map(|(u, p)| Credentials::new(u.clone(), p.clone())),
            ca,
            timeout: Duration::from_secs(30),
        };
        if smtp.security != Security::Plain {
            smtp.tls().map_err(|e| match e {
                SendError::Permanent(w) | SendError::Transient(w) | SendError::Ambiguous(w) => w,
            })?;
        }
        Ok(smtp)
    }

    /// How long each step may take (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn tls(&self) -> Result<TlsParameters, SendError> {
        let mut b = TlsParameters::builder(self.host.clone());
        if let Some(ca) = &self.ca {
            b = b.add_root_certificate(ca.clone());
        }
        b.build_rustls().map_err(|e| SendError::Permanent(format!("TLS setup: {e}")))
    }

    /// Connects, with TLS and AUTH as configured, within the timeout (lettre bounds only the TCP
    /// connect; a server that stalls in its greeting, the handshake or AUTH would hang us).
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        tokio::time::timeout(self.timeout, self.connect_inner())
            .await
            .map_err(|_| SendError::Transient(format!("{}:{} did not finish greeting, TLS or AUTH in time", self.host, self.port)))?
    }

    async fn connect_inner(&self) -> Result<AsyncSmtpConnection, SendError> {
        let hello = ClientId::default();
        let mut conn = match self.security {
            Security::Tls => {
                AsyncSmtpConnection::connect_tokio1((self.host.as_str(), self.port), Some(self.timeout), &hello, Some(self.tls()?), None)
                    .await
                    .map_err(|e| before_text(&e))?
            }
            Security::Plain | Security::StartTls => {
                let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect((self.host.as_str(), self.port)))
                    .await
                    .map_err(|_| SendError::Transient(format!("connecting to {}:{} timed out", self.host, self.port)))?
                    .map_err(|e| SendError::Transient(format!("connecting to {}:{}: {e}", self.host, self.port)))?;
                let _ = tcp.set_nodelay(true);
                let mut conn = tokio::time::timeout(self.timeout, AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello))
                    .await
                    .map_err(|_| SendError::Transient("the SMTP greeting timed out".into()))?
                    .map_err(|e| before_text(&e))?;
                if self.security == Security::StartTls {
                    if !conn.server_info().supports_feature(Extension::StartTls) {
                        abort(&mut conn).await;
                        // A server that stopped offering STARTTLS may be under attack: never fall back.
                        return Err(SendError::Transient("the server does not offer STARTTLS; not sending in clear".into()));
                    }
                    conn.starttls(self.tls()?, &hello).await.map_err(|e| before_text(&e))?;
                }
                conn
            }
        };
        if let Some(credentials) = &self.credentials {
            const SPOKEN: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];
            if conn.server_info().get_auth_mechanism(&SPOKEN).is_none() {
                abort(&mut conn).await;
                // A setup problem, not the server's mood: say what to change. Still retried, so
                // that reports go out once the config is fixed.
                let hint = if self.security == Security::Plain {
                    "; many servers offer AUTH only after STARTTLS: try smtp+starttls:// or smtps:// in report.smtp_url"
                } else {
                    ""
                };
                return Err(SendError::Transient(format!(
                    "report.smtp_user is set but {}:{} offers no AUTH mechanism patchbay speaks (PLAIN, LOGIN){hint}",
                    self.host, self.port
                )));
            }
            if let Err(e) = conn.auth(&SPOKEN, credentials).await {
                abort(&mut conn).await;
                return Err(before_text(&e));
            }
        }
        Ok(conn)
    }

    /// Sends one mail to `to` from `from` (envelope addresses).
    pub async fn send(&self, from: &str, to: &[String], mail: &[u8]) -> Result<(), SendError> {
        let parse = |a: &str| a.parse::<lettre::Address>().map_err(|e| SendError::Permanent(format!("address {a:?}: {e}")));
        let rcpts = to.iter().map(|a| parse(a)).collect::<Result<Vec<_>, _>>()?;
        let from = parse(from)?;
        // SMTP wants CRLF; a bare LF in DATA is what smuggling attacks use.
        let mut wire = Vec::with_capacity(mail.len() + mail.len() / 40);
        for (i, &b) in mail.iter().enumerate() {
            if b == b'\n' && (i == 0 || mail[i - 1] != b'\r') {
                wire.push(b'\r');
            }
            wire.push(b);
        }
        let mut conn = self.connect().await?;
        let mut params = Vec::new();
        if !wire.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
            params.push(MailParameter::Body(lettre::transport::smtp::extension::MailBodyParameter::EightBitMime));
        }
        let envelope = async {
            conn.command(Mail::new(Some(from), params)).await?;
            for rcpt in rcpts {
                conn.command(Rcpt::new(rcpt, vec![])).await?;
            }
            conn.command(Data).await
        };
        let envelope = tokio::time::timeout(self.timeout, envelope).await;
        match envelope {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                abort(&mut conn).await;
                return Err(before_text(&e));
            }
            Err(_) => {
                abort(&mut conn).await;
                return Err(SendError::Transient("the SMTP server did not answer MAIL/RCPT/DATA in time".into()));
            }
        }
        // From here the server holds some or all of the text: only its answer says what happened.
        let result = match tokio::time::timeout(self.timeout, conn.message(&wire)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
            Ok(Err(e)) if e.is_transient() => Err(SendError::Transient(e.to_string())),
            Ok(Err(e)) => Err(SendError::Ambiguous(e.to_string())),
            Err(_) => Err(SendError::Ambiguous(format!("no answer to the end of the mail within {:?}", self.timeout))),
        };
        if result.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.quit()).await;
        } else {
            abort(&mut conn).await;
        }
        result
    }
}
