//! An LMTP listener (RFC 2033), so Postfix (`lmtp:inet:127.0.0.1:8024`) or
//! Exim deliver straight into the store.
//!
//! The mail is stored once per transaction, then answered once per accepted
//! recipient: `250` only after the store committed, `451` (try again) when it
//! could not, `552` when the mail is larger than the limit. An MTA therefore
//! keeps a mail queued until patchbay really has it.

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::{Ingest, Outcome};

/// Longest command line accepted (RFC 5321 says 512; be lenient).
const MAX_COMMAND: usize = 4096;

/// Serves LMTP on `listener` until `shutdown` resolves; sessions in progress are cut off then.
pub async fn serve(listener: TcpListener, ingest: Ingest, max_bytes: u64, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        tracing::warn!(%error, "LMTP accept failed.");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let ingest = ingest.clone();
                tokio::spawn(async move {
                    if let Err(error) = session(stream, peer, ingest, max_bytes).await {
                        tracing::debug!(%peer, %error, "LMTP session ended with an error.");
                    }
                });
            }
        }
    }
}

async fn session(stream: TcpStream, peer: SocketAddr, ingest: Ingest, max_bytes: u64) -> std::io::Result<()> {
    // Replies are whole lines written at once; without this, a pipelining client's second
    // reply waits for its delayed ACK (40 ms on Linux) behind the first.
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut input = BufReader::new(read);
    write.write_all(b"220 patchbay LMTP ready\r\n").await?;
    let mut greeted = false;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut input).take(MAX_COMMAND as u64).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with(b"\n") {
            write.write_all(b"500 5.5.2 line too long\r\n").await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let cmd = text.trim_end();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("LHLO") {
            greeted = true;
            from = None;
            rcpts.clear();
            format!("250-patchbay\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE {max_bytes}\r\n")
        } else if upper.starts_with("HELO") || upper.starts_with("EHLO") {
            "500 5.5.1 this is LMTP: say LHLO\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            if !greeted {
                "503 5.5.1 LHLO first\r\n".into()
            } else if from.is_some() {
                "503 5.5.1 nested MAIL\r\n".into()
            } else if declared_size(&upper).is_some_and(|s| s > max_bytes) {
                format!("552 5.3.4 message larger than {max_bytes} bytes\r\n")
            } else {
                from = Some(cmd[10..].trim().to_string());
                "250 2.1.0 OK\r\n".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                "503 5.5.1 MAIL first\r\n".into()
            } else {
                rcpts.push(cmd[8..].trim().to_string());
                "250 2.1.5 OK\r\n".into()
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "503 5.5.1 no valid recipients\r\n".into()
            } else {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let data = read_data(&mut input, max_bytes).await?;
                let reply = match data {
                    None => format!("552 5.3.4 message larger than {max_bytes} bytes\r\n"),
                    Some(raw) => deliver(&ingest, raw, peer).await,
                };
                let all = reply.repeat(rcpts.len());
                from = None;
                rcpts.clear();
                all
            }
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            "250 2.0.0 OK\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 OK\r\n".into()
        } else if upper.starts_with("VRFY") {
            "252 2.1.5 cannot verify\r\n".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "500 5.5.2 unknown command\r\n".into()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

fn declared_size(upper: &str) -> Option<u64> {
    upper.split_whitespace().find_map(|w| w.strip_prefix("SIZE=")).and_then(|s| s.parse().ok())
}

/// Reads a dot-terminated DATA block, undoing dot-stuffing; `None` when it exceeds `max_bytes`
/// (the rest is read and thrown away so the session stays in step).
async fn read_data(input: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, max_bytes: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    let mut too_big = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        // A line is read in bounded pieces: one endless line cannot exhaust memory.
        if (&mut *input).take(max_bytes.max(1024) + 2).read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed in DATA"));
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok((!too_big).then_some(data));
        }
        let body = if line.starts_with(b".") { &line[1..] } else { &line[..] };
        if too_big || data.len() as u64 + body.len() as u64 > max_bytes {
            too_big = true;
            data = Vec::new();
            continue;
        }
        // Store with LF line ends, as mbox, maildir and public-inbox keep mail.
        if body.ends_with(b"\r\n") {
            data.extend_from_slice(&body[..body.len() - 2]);
            data.push(b'\n');
        } else {
            data.extend_from_slice(body);
        }
    }
}

async fn deliver(ingest: &Ingest, raw: Vec<u8>, peer: SocketAddr) -> String {
    let mail = tokio::task::spawn_blocking(move || crate::incoming(raw, Vec::new(), crate::now())).await;
    let Ok(mail) = mail else {
        return "451 4.3.0 parsing failed unexpectedly; try again\r\n".into();
    };
    let message_id = mail.parsed.message_id.clone();
    match ingest.accept(vec![mail]).await {
        Ok(outcomes) => match outcomes.first() {
            Some(Outcome::Stored { mail, .. }) => {
                tracing::info!(%peer, mail, %message_id, "Mail stored.");
                format!("250 2.0.0 stored as {mail}\r\n")
            }
            Some(Outcome::Duplicate { mail }) => format!("250 2.0.0 already stored as {mail}\r\n"),
            None => "451 4.3.0 nothing stored; try again\r\n".into(),
        },
        Err(error) => {
            tracing::warn!(%peer, %message_id, %error, "Mail not stored; told the client to retry.");
            "451 4.3.0 storage failed; try again later\r\n".into()
        }
    }
}
