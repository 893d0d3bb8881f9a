//! An LMTP listener (RFC 2033), so Postfix (`lmtp:inet:127.0.0.1:8024`) or
//! Exim deliver straight into the store.
//!
//! The mail is stored once per transaction, then answered once per accepted
//! recipient: `250` only after the store committed, `451` (try again) when it
//! could not, `552` when the mail is larger than the limit. An MTA therefore
//! keeps a mail queued until patchbay really has it.
//!
//! No client can exhaust the process ([`Limits`]): sessions are capped (each
//! holds a file descriptor), a command or DATA line must arrive within the idle
//! timeout, a command line is at most 4 KiB and a DATA line at most
//! [`MAX_DATA_LINE`], the mails being received share a memory budget, and a
//! failing `accept` backs off instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use patchbay_listen::{Backoff, Gate, Seated};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Ingest, Outcome};

/// Longest command line accepted (RFC 5321 says 512; be lenient).
const MAX_COMMAND: usize = 4096;

/// Longest DATA line accepted: RFC 5321 allows 1,000 octets and MTAs split longer lines
/// (Postfix at 2,048), so only a broken or hostile client sends more, and no line can make a
/// session buffer more than this.
pub const MAX_DATA_LINE: usize = 1 << 20;

/// The default idle timeout: long enough for any MTA between commands, short enough that
/// abandoned sessions do not pile up.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// Mails being received take their memory from the DATA budget in steps of this size.
const GRAIN: u32 = 64 << 10;

/// What one LMTP listener allows, so that no client can exhaust descriptors or memory.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Larger mails are refused with 552 (and announced as `SIZE`).
    pub max_bytes: u64,
    /// Sessions at once; at the cap a new connection closes the longest-idle session, or is
    /// answered `421` when every session is busy in a transfer.
    pub max_connections: usize,
    /// A command line, or a DATA line, must arrive within this long (and a reply be taken).
    pub idle: Duration,
}

impl Limits {
    /// Memory all sessions together may hold for mails being received: four mails of the
    /// largest size, and never less than 64 MiB; beyond it a mail is answered `452` (retry).
    fn data_budget(&self) -> usize {
        usize::try_from(self.max_bytes.saturating_mul(4)).unwrap_or(usize::MAX >> 4).clamp(64 << 20, usize::MAX >> 4)
    }
}

/// Serves LMTP on `listener` until `shutdown` resolves; sessions in progress are cut off then.
pub async fn serve(listener: TcpListener, ingest: Ingest, limits: Limits, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let limits = Arc::new(limits);
    let mut gate = Gate::new("LMTP", limits.max_connections);
    let budget = Arc::new(Semaphore::new(limits.data_budget()));
    let mut backoff = Backoff::new("LMTP");
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = patchbay_listen::accept(&listener, &mut backoff) => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
        };
        let Some(seat) = gate.admit(peer).await else {
            // A fresh socket's send buffer is empty: this never blocks the accept loop.
            let _ = stream.try_write(b"421 4.3.2 too many connections, try again later\r\n");
            continue;
        };
        let (ingest, limits, budget) = (ingest.clone(), limits.clone(), budget.clone());
        tokio::spawn(async move {
            if let Err(error) = session(stream, peer, ingest, &limits, &seat, &budget).await {
                tracing::debug!(%peer, %error, "LMTP session ended with an error.");
            }
        });
    }
}

/// Writes a reply; a client that takes no reply within `limit` is given up on.
async fn send(write: &mut (impl AsyncWrite + Unpin), bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(limit, write.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client took no reply")),
    }
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    ingest: Ingest,
    limits: &Limits,
    seat: &Seated,
    budget: &Arc<Semaphore>,
) -> std::io::Result<()> {
    // Replies are whole lines written at once; without this, a pipelining client's second
    // reply waits for its delayed ACK (40 ms on Linux) behind the first.
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut input = BufReader::new(read);
    let (max_bytes, idle) = (limits.max_bytes, limits.idle);
    send(&mut write, b"220 patchbay LMTP ready\r\n", idle).await?;
    let mut greeted = false;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut input).take(MAX_COMMAND as u64);
        let read = limited.read_until(b'\n', &mut line);
        let n = tokio::select! {
            read = tokio::time::timeout(idle, read) => match read {
                Ok(n) => n?,
                Err(_) => {
                    tracing::debug!(%peer, "LMTP session closed: idle too long.");
                    let _ = send(&mut write, b"421 4.4.2 idle too long, closing\r\n", idle).await;
                    return Ok(());
                }
            },
            () = seat.seat.evicted() => {
                tracing::debug!(%peer, "LMTP session closed: the longest idle at the connection cap.");
                let _ = send(&mut write, b"421 4.3.2 too many connections, closing an idle one\r\n", idle).await;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        seat.seat.touch();
        if !line.ends_with(b"\n") {
            send(&mut write, b"500 5.5.2 line too long\r\n", idle).await?;
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
                // A session in a transfer is never closed to make room for another.
                let _busy = seat.seat.busy();
                send(&mut write, b"354 end with <CRLF>.<CRLF>\r\n", idle).await?;
                let (data, permit) = read_data(&mut input, max_bytes, idle, budget).await?;
                let (reply, close) = match data {
                    Data::Mail(raw) => (deliver(&ingest, raw, peer).await, false),
                    Data::TooBig => (format!("552 5.3.4 message larger than {max_bytes} bytes\r\n"), false),
                    Data::NoRoom => ("452 4.3.1 insufficient system storage, try again later\r\n".into(), false),
                    Data::Endless => (format!("552 5.3.4 message larger than {max_bytes} bytes; closing\r\n"), true),
                    Data::LineTooLong => (format!("552 5.6.0 a line longer than {MAX_DATA_LINE} bytes; closing\r\n"), true),
                    Data::TimedOut => ("421 4.4.2 no DATA line within the idle timeout; closing\r\n".into(), true),
                };
                drop(permit);
                let all = reply.repeat(rcpts.len());
                from = None;
                rcpts.clear();
                if close {
                    tracing::info!(%peer, reply = reply.trim_end(), "LMTP session cut off in DATA.");
                    let _ = send(&mut write, all.as_bytes(), idle).await;
                    return Ok(());
                }
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
            send(&mut write, b"221 2.0.0 bye\r\n", idle).await?;
            return Ok(());
        } else {
            "500 5.5.2 unknown command\r\n".into()
        };
        send(&mut write, reply.as_bytes(), idle).await?;
    }
}

fn declared_size(upper: &str) -> Option<u64> {
    upper.split_whitespace().find_map(|w| w.strip_prefix("SIZE=")).and_then(|s| s.parse().ok())
}

/// What a DATA block came to.
#[derive(Debug, PartialEq)]
enum Data {
    /// The mail, dot-unstuffed, with LF line ends.
    Mail(Vec<u8>),
    /// Larger than `max_bytes`; read to its end and thrown away, so the session goes on.
    TooBig,
    /// The DATA budget is spent by other sessions; read to its end and thrown away.
    NoRoom,
    /// Still going at twice `max_bytes`: not worth reading to its end.
    Endless,
    /// A line longer than [`MAX_DATA_LINE`].
    LineTooLong,
    /// A line did not arrive within the idle timeout.
    TimedOut,
}

/// Reads a dot-terminated DATA block, undoing dot-stuffing. Memory is bounded: a line is read
/// in pieces of at most 64 KiB, no line may exceed [`MAX_DATA_LINE`], nothing is kept beyond
/// `max_bytes`, and what is kept is taken from `budget` (returned with the mail, to be dropped
/// once it is stored).
async fn read_data(
    input: &mut (impl AsyncBufRead + Unpin),
    max_bytes: u64,
    idle: Duration,
    budget: &Arc<Semaphore>,
) -> std::io::Result<(Data, Option<OwnedSemaphorePermit>)> {
    let mut data = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut refused: Option<Data> = None;
    let mut piece = Vec::new();
    let (mut seen, mut line_len) = (0u64, 0usize);
    let mut line_deadline = tokio::time::Instant::now() + idle;
    // A CR at the end of a piece that does not end its line: kept back until the next piece
    // says whether it is half of a CRLF.
    let mut held_cr = false;
    loop {
        piece.clear();
        let mut limited = (&mut *input).take(u64::from(GRAIN));
        let read = limited.read_until(b'\n', &mut piece);
        let n = match tokio::time::timeout_at(line_deadline, read).await {
            Ok(n) => n?,
            Err(_) => return Ok((Data::TimedOut, None)),
        };
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed in DATA"));
        }
        seen += n as u64;
        let line_start = line_len == 0;
        let ends_line = piece.ends_with(b"\n");
        line_len += n;
        if line_len > MAX_DATA_LINE {
            return Ok((Data::LineTooLong, None));
        }
        if ends_line {
            line_len = 0;
            line_deadline = tokio::time::Instant::now() + idle;
        }
        if line_start && (piece == b".\r\n" || piece == b".\n") {
            return Ok(match refused {
                Some(why) => (why, None),
                None => (Data::Mail(data), held),
            });
        }
        if seen > max_bytes.saturating_mul(2) {
            return Ok((Data::Endless, None));
        }
        if refused.is_some() {
            continue;
        }
        let mut body = if line_start && piece.starts_with(b".") { &piece[1..] } else { &piece[..] };
        let mut crlf = false;
        if held_cr {
            held_cr = false;
            if body == b"\n" {
                crlf = true;
                body = &[];
            } else {
                data.push(b'\r');
            }
        }
        // Stored with LF line ends, as mbox, maildir and public-inbox keep mail.
        if let Some(b) = body.strip_suffix(b"\r\n") {
            body = b;
            crlf = true;
        } else if !ends_line && let Some(b) = body.strip_suffix(b"\r") {
            body = b;
            held_cr = true;
        }
        let grown = data.len() + body.len() + usize::from(crlf) + usize::from(held_cr);
        if grown as u64 > max_bytes {
            refused = Some(Data::TooBig);
            data = Vec::new();
            held = None;
            continue;
        }
        let have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        if grown > have {
            let want = u32::try_from((grown - have).div_ceil(GRAIN as usize) * GRAIN as usize).unwrap_or(u32::MAX);
            match (budget.clone().try_acquire_many_owned(want), held.as_mut()) {
                (Ok(more), Some(permit)) => permit.merge(more),
                (Ok(more), None) => held = Some(more),
                (Err(_), _) => {
                    refused = Some(Data::NoRoom);
                    data = Vec::new();
                    held = None;
                    continue;
                }
            }
        }
        data.extend_from_slice(body);
        if crlf {
            data.push(b'\n');
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn data(input: &[u8], max_bytes: u64, budget: usize) -> Data {
        let budget = Arc::new(Semaphore::new(budget));
        let mut input = input;
        read_data(&mut input, max_bytes, Duration::from_secs(5), &budget).await.unwrap().0
    }

    #[tokio::test]
    async fn data_is_unstuffed_with_lf_ends_even_across_pieces() {
        // A 100 KiB line is read in two pieces; the first ends on the CR of a CRLF.
        let long = "y".repeat(GRAIN as usize - 1);
        let input = format!("a\r\n..b\r\n{long}\r\nz\r\n.\r\n");
        assert_eq!(data(input.as_bytes(), 1 << 20, 1 << 20).await, Data::Mail(format!("a\n.b\n{long}\nz\n").into_bytes()));
        let cr = format!("{long}\rq\r\n.\r\n");
        assert_eq!(data(cr.as_bytes(), 1 << 20, 1 << 20).await, Data::Mail(format!("{long}\rq\n").into_bytes()));
    }

    #[tokio::test]
    async fn data_beyond_the_limits_is_refused_with_bounded_memory() {
        let big = "x\r\n".repeat(800) + ".\r\n";
        assert_eq!(data(big.as_bytes(), 1500, 1 << 20).await, Data::TooBig, "read to its end, thrown away");
        assert_eq!(data(b"hi\r\n.\r\n", 1024, 1024).await, Data::NoRoom, "the budget is spent");
        let endless = vec![b'x'; MAX_DATA_LINE + 1];
        assert_eq!(data(&endless, 64 << 20, 1 << 30).await, Data::LineTooLong);
        let forever = "x\r\n".repeat(3000);
        assert_eq!(data(forever.as_bytes(), 4096, 1 << 20).await, Data::Endless, "not read to an end past twice the limit");
    }
}
