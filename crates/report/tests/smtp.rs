//! How the SMTP client sorts failures, against scripted servers on real
//! sockets (the cases a real server cannot be made to produce on demand): a
//! refusal before the text is retried or final by its code; a connection that
//! breaks after the text went out is *ambiguous*, never retried; a server that
//! stops offering STARTTLS gets nothing in clear.

use patchbay_report::smtp::{SendError, Smtp, SmtpSettings};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// What the scripted server does at one point of the conversation.
#[derive(Clone, Copy)]
enum At {
    /// Answer the command MAIL, RCPT or DATA with this line.
    Command(&'static str, &'static str),
    /// Answer the final dot with this line.
    Dot(&'static str),
    /// Close the connection at the final dot without answering.
    CloseAtDot,
    /// Never answer this command (a server that stalls).
    Silent(&'static str),
}

/// Runs a one-connection SMTP server on 127.0.0.1; returns its port and, when done, the
/// commands it saw.
async fn server(ehlo: &'static str, script: Vec<At>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut seen = Vec::new();
        w.write_all(b"220 scripted\r\n").await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return seen;
            }
            let verb = line.split([' ', ':', '\r']).next().unwrap_or("").to_ascii_uppercase();
            seen.push(verb.clone());
            if script.iter().any(|a| matches!(a, At::Silent(v) if *v == verb)) {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                return seen;
            }
            let scripted = script.iter().find_map(|a| match a {
                At::Command(v, reply) if *v == verb => Some(*reply),
                _ => None,
            });
            let reply = match (verb.as_str(), scripted) {
                (_, Some(reply)) => reply.to_string(),
                ("EHLO", _) => ehlo.to_string(),
                ("DATA", _) => {
                    w.write_all(b"354 go on\r\n").await.unwrap();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 || line == ".\r\n" {
                            break;
                        }
                    }
                    seen.push("<text>".into());
                    match script.iter().find(|a| matches!(a, At::Dot(_) | At::CloseAtDot)) {
                        Some(At::Dot(reply)) => reply.to_string(),
                        Some(At::CloseAtDot) => return seen,
                        _ => "250 ok".into(),
                    }
                }
                ("QUIT", _) => {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    return seen;
                }
                _ => "250 ok".into(),
            };
            if w.write_all(format!("{reply}\r\n").as_bytes()).await.is_err() {
                return seen;
            }
        }
    });
    (port, task)
}

async fn send(url: String) -> Result<(), SendError> {
    let smtp = Smtp::new(&SmtpSettings { url, credentials: None, ca_pem: None }).unwrap();
    smtp.send("ci@example.org", &["dev@example.org".into()], b"Subject: hi\n\nbody\n").await
}

#[tokio::test]
async fn an_accepted_mail_is_ok() {
    let (port, seen) = server("250 scripted", vec![]).await;
    assert!(send(format!("smtp://127.0.0.1:{port}")).await.is_ok());
    assert_eq!(seen.await.unwrap(), ["EHLO", "MAIL", "RCPT", "DATA", "<text>", "QUIT"]);
}

#[tokio::test]
async fn a_connection_closed_after_the_text_is_ambiguous() {
    let (port, seen) = server("250 scripted", vec![At::CloseAtDot]).await;
    let r = send(format!("smtp://127.0.0.1:{port}")).await;
    assert!(matches!(r, Err(SendError::Ambiguous(_))), "{r:?}");
    assert!(seen.await.unwrap().contains(&"<text>".to_string()));
}

#[tokio::test]
async fn answers_to_the_final_dot_decide_by_their_code() {
    let (port, _) = server("250 scripted", vec![At::Dot("451 4.3.0 try later")]).await;
    let r = send(format!("smtp://127.0.0.1:{port}")).await;
    assert!(matches!(&r, Err(SendError::Transient(w)) if w.contains("try later")), "{r:?}");
    let (port, _) = server("250 scripted", vec![At::Dot("554 5.7.1 spam")]).await;
    let r = send(format!("smtp://127.0.0.1:{port}")).await;
    assert!(matches!(&r, Err(SendError::Permanent(w)) if w.contains("spam")), "{r:?}");
}

#[tokio::test]
async fn refusals_before_the_text_are_retried_or_final_by_code() {
    let (port, seen) = server("250 scripted", vec![At::Command("RCPT", "550 5.1.1 no such user")]).await;
    let r = send(format!("smtp://127.0.0.1:{port}")).await;
    assert!(matches!(&r, Err(SendError::Permanent(w)) if w.contains("no such user")), "{r:?}");
    assert!(!seen.await.unwrap().contains(&"<text>".to_string()), "no text after a refused recipient");
    let (port, _) = server("250 scripted", vec![At::Command("MAIL", "451 4.7.1 greylisted")]).await;
    let r = send(format!("smtp://127.0.0.1:{port}")).await;
    assert!(matches!(&r, Err(SendError::Transient(w)) if w.contains("greylisted")), "{r:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = send(format!("smtp://127.0.0.1:{port}")).await;
    assert!(matches!(r, Err(SendError::Transient(_))), "{r:?}");
}

#[tokio::test]
async fn no_starttls_offered_means_nothing_sent_in_clear() {
    let (port, seen) = server("250 scripted", vec![]).await;
    let r = send(format!("smtp+starttls://127.0.0.1:{port}")).await;
    assert!(matches!(&r, Err(SendError::Transient(w)) if w.contains("STARTTLS")), "{r:?}");
    let seen = seen.await.unwrap();
    assert!(!seen.contains(&"MAIL".to_string()), "{seen:?}");
}

#[tokio::test]
async fn credentials_for_a_server_without_auth_say_what_to_change() {
    let (port, seen) = server("250 scripted", vec![]).await;
    let credentials = Some(("reporter".to_string(), "secret".to_string()));
    let smtp = Smtp::new(&SmtpSettings { url: format!("smtp://127.0.0.1:{port}"), credentials, ca_pem: None }).unwrap();
    let r = smtp.send("ci@example.org", &["dev@example.org".into()], b"Subject: hi\n\nbody\n").await;
    assert!(matches!(&r, Err(SendError::Transient(w)) if w.contains("no AUTH mechanism") && w.contains("smtp+starttls://")), "{r:?}");
    let seen = seen.await.unwrap();
    assert!(!seen.contains(&"MAIL".to_string()), "nothing sent unauthenticated: {seen:?}");
}

#[tokio::test]
async fn a_server_that_stalls_is_given_up_on_in_time() {
    for silent in ["EHLO", "DATA"] {
        let (port, _) = server("250 scripted", vec![At::Silent(silent)]).await;
        let smtp = Smtp::new(&SmtpSettings { url: format!("smtp://127.0.0.1:{port}"), credentials: None, ca_pem: None })
            .unwrap()
            .with_timeout(std::time::Duration::from_millis(500));
        let began = std::time::Instant::now();
        let r = smtp.send("ci@example.org", &["dev@example.org".into()], b"Subject: hi\n\nbody\n").await;
        assert!(matches!(r, Err(SendError::Transient(_))), "{silent}: {r:?}");
        assert!(began.elapsed() < std::time::Duration::from_secs(8), "{silent}: took {:?}", began.elapsed());
    }
}

#[test]
fn bad_urls_and_certificates_are_refused() {
    let bad =
        |url: &str, ca: Option<&[u8]>| Smtp::new(&SmtpSettings { url: url.into(), credentials: None, ca_pem: ca.map(<[u8]>::to_vec) });
    assert!(bad("http://x", None).is_err());
    assert!(bad("smtp://x:notaport", None).is_err());
    assert!(bad("smtp://", None).is_err());
    assert!(bad("smtps://x", Some(b"not a certificate")).is_err());
    assert!(bad("smtp://relay", None).is_ok());
}
