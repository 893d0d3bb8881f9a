//! Sending report mail over SMTP (lettre, rustls with ring): plain SMTP for a
//! relay on loopback, STARTTLS, or TLS (submissions), with AUTH when
//! configured. Errors are sorted for the reporter: a 5xx answer is
//! permanent and recorded with the server's words; anything else (the server
//! unreachable, a 4xx) is tried again later.

use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// How to reach the SMTP server.
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    /// `smtp://host:port` (plain, for a local relay), `smtp+starttls://host:port`, or
    /// `smtps://host:port` (TLS from the start).
    pub url: String,
    /// AUTH user and password, when the server wants them.
    pub credentials: Option<(String, String)>,
}

/// Why a send failed.
#[derive(Debug)]
pub enum SendError {
    /// The server refused it for good (5xx): its words.
    Permanent(String),
    /// Try again later.
    Transient(String),
}

/// A connected-on-demand SMTP transport.
#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Smtp {
    /// Builds the transport from settings; a bad URL is an error.
    pub fn new(s: &SmtpSettings) -> Result<Smtp, String> {
        let (scheme, rest) = s.url.split_once("://").ok_or_else(|| format!("{:?} is not an smtp:// URL", s.url))?;
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().map_err(|_| format!("bad port in {:?}", s.url))?)),
            None => (rest.trim_end_matches('/').to_string(), None),
        };
        let mut builder = match scheme {
            "smtp" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
            "smtp+starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host).map_err(|e| e.to_string())?,
            "smtps" => AsyncSmtpTransport::<Tokio1Executor>::relay(&host).map_err(|e| e.to_string())?,
            other => return Err(format!("unknown scheme {other:?}: use smtp, smtp+starttls or smtps")),
        };
        if let Some(port) = port {
            builder = builder.port(port);
        }
        if let Some((user, password)) = &s.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        builder = builder.timeout(Some(std::time::Duration::from_secs(30)));
        Ok(Smtp { transport: builder.build() })
    }

    /// Sends one mail to `to` from `from` (envelope addresses).
    pub async fn send(&self, from: &str, to: &[String], mail: &[u8]) -> Result<(), SendError> {
        let parse = |a: &str| a.parse::<lettre::Address>().map_err(|e| SendError::Permanent(format!("address {a:?}: {e}")));
        let rcpts = to.iter().map(|a| parse(a)).collect::<Result<Vec<_>, _>>()?;
        let envelope = lettre::address::Envelope::new(Some(parse(from)?), rcpts).map_err(|e| SendError::Permanent(e.to_string()))?;
        // SMTP wants CRLF; a bare LF in DATA is what smuggling attacks use.
        let mut wire = Vec::with_capacity(mail.len() + mail.len() / 40);
        for (i, &b) in mail.iter().enumerate() {
            if b == b'\n' && (i == 0 || mail[i - 1] != b'\r') {
                wire.push(b'\r');
            }
            wire.push(b);
        }
        match self.transport.send_raw(&envelope, &wire).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
            Err(e) => Err(SendError::Transient(e.to_string())),
        }
    }
}
