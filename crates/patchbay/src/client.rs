//! `patchbay publish` and `patchbay tail`: out-of-process clients of `serve`'s
//! HTTP API. `publish` falls back to writing the embedded store directly when
//! the daemon is not running (the daemon delivers it when it starts), so a
//! cron job never loses a message because `serve` was restarting.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use patchbay_bus::TopicPattern;
use patchbay_config::Config;
use patchbay_model::{Body as _, Envelope, LogMessage};
use patchbay_web::PublishRequest;

use crate::Exit;

/// Options of `patchbay publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// Topic: `<service>.<object>.<event>` under the config's prefix and env, or a full topic.
    #[arg(long)]
    topic: String,
    /// The body is a JSON object (default: text, sent as `{"message": TEXT}`).
    #[arg(long)]
    json: bool,
    /// The sender's service name.
    #[arg(long, default_value = "shell")]
    service: String,
    /// The daemon's base URL (default: http:// plus the config's `http.listen`).
    #[arg(long)]
    url: Option<String>,
    /// Never write the store directly, even when the daemon is not running.
    #[arg(long)]
    no_fallback: bool,
    /// An admin bearer token (`http.admin_tokens`), needed when publishing to a daemon on
    /// another host; prefer the environment variable, which `ps` does not show.
    #[arg(long, env = "PATCHBAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The body; `-` or nothing reads stdin.
    body: Option<String>,
}

/// Options of `patchbay tail`.
#[derive(clap::Args)]
pub struct TailArgs {
    /// Only topics matching this pattern (`*` one word, `#` any); repeatable. A pattern
    /// not starting with the topic root, `*` or `#` is taken under the root.
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// One JSON envelope per line, exactly as signed.
    #[arg(long)]
    json: bool,
    /// Start after this log position instead of now.
    #[arg(long, conflicts_with = "from_start")]
    after: Option<u64>,
    /// Start from the first message in the log.
    #[arg(long)]
    from_start: bool,
    /// The daemon's base URL (default: http:// plus the config's `http.listen`).
    #[arg(long)]
    url: Option<String>,
    /// Also show runner heartbeats (`ci.runner.heartbeat`, every 30 s per runner), hidden by default.
    #[arg(long)]
    heartbeats: bool,
}

fn base_url(config: &Config, url: &Option<String>) -> String {
    url.clone().unwrap_or_else(|| format!("http://{}", config.http_listen)).trim_end_matches('/').to_string()
}

/// `patchbay publish`; exits 0 once the message is durable.
pub async fn publish(config: &Config, args: &PublishArgs) -> Result<(), Exit> {
    let raw = match args.body.as_deref() {
        Some("-") | None => {
            if std::io::stdin().is_terminal() {
                eprintln!("patchbay publish: reading the body from stdin (end with Ctrl-D)");
            }
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| Exit::data(anyhow::anyhow!("reading stdin: {e}")))?;
            s
        }
        Some(b) => b.to_string(),
    };
    let (body, schema) = if args.json {
        let v: serde_json::Value = serde_json::from_str(&raw).map_err(|e| Exit::data(anyhow::anyhow!("the body is not JSON: {e}")))?;
        (v, None)
    } else {
        let message = raw.strip_suffix('\n').unwrap_or(&raw).to_string();
        (serde_json::to_value(LogMessage { message }).expect("serializes"), Some(LogMessage::schema_ref()))
    };
    let request = PublishRequest { topic: args.topic.clone(), body, service: Some(args.service.clone()), schema };
    // Check locally first so a bad message fails the same way with or without the daemon.
    let outgoing = patchbay_web::outgoing(&config.authority, &config.instance, request).map_err(Exit::data)?;

    let url = format!("{}/api/v1/publish", base_url(config, &args.url));
    let payload = serde_json::json!({
        "topic": outgoing.topic.as_str(),
        "body": outgoing.body,
        "service": outgoing.sender.service,
        "schema": outgoing.schema,
    });
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(anyhow::Error::from)?;
    let mut request = client.post(&url).json(&payload);
    // An admin's token when given; else, to a daemon on this host, the data directory's own.
    let local = reqwest::Url::parse(&url).ok().and_then(|u| u.host_str().map(str::to_string)).is_some_and(|h| {
        h == "localhost" || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
    });
    let token = match &args.token {
        Some(t) => Some(t.clone()),
        None if local => crate::keys::local_publish_token(&config.data_dir, false).ok().flatten(),
        None => None,
    };
    if let Some(token) = &token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status.is_success() {
                let env: Envelope =
                    serde_json::from_str(&text).map_err(|e| Exit::tempfail(anyhow::anyhow!("the daemon answered oddly: {e}")))?;
                println!("{}", env.id);
                return Ok(());
            }
            let reason =
                serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["error"].as_str().map(String::from)).unwrap_or(text);
            if status.is_client_error() {
                return Err(Exit::data(anyhow::anyhow!("refused by {url}: {reason}")));
            }
            Err(Exit::tempfail(anyhow::anyhow!("{url} answered {status}: {reason}")))
        }
        Err(e) if e.is_connect() && !args.no_fallback => {
            tracing::info!(error = %e, backend = ?config.bus.backend, "The daemon is not reachable; publishing on the bus directly.");
            std::fs::create_dir_all(&config.data_dir).map_err(|e| Exit::tempfail(anyhow::anyhow!("{}: {e}", config.data_dir.display())))?;
            let sealer = crate::keys::sealer(config, true).map_err(Exit::config)?;
            let bus = crate::backend::bus(config, sealer).await.map_err(Exit::tempfail)?;
            let env = bus.publish(vec![outgoing]).await.map_err(|e| Exit::tempfail(anyhow::anyhow!("{e}")))?.remove(0);
            println!("{}", env.id);
            Ok(())
        }
        Err(e) if e.is_connect() => Err(Exit::unavailable(anyhow::anyhow!("cannot reach the daemon at {url}: {e}"))),
        Err(e) => Err(Exit::tempfail(anyhow::anyhow!("publishing to {url}: {e}"))),
    }
}

fn tail_patterns(config: &Config, topics: &[String]) -> anyhow::Result<Vec<TopicPattern>> {
    let root = config.bus.root.as_str();
    topics
        .iter()
        .map(|t| {
            let full = if t.starts_with(&format!("{root}.")) || t.starts_with('#') || t.starts_with('*') {
                t.clone()
            } else {
                format!("{root}.{t}")
            };
            TopicPattern::parse(&full).with_context(|| format!("--topic {t}"))
        })
        .collect()
}

/// One server-sent event.
#[derive(Default)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Incremental parser of a `text/event-stream` body.
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(chunk);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let ev = std::mem::take(&mut self.current);
                if ev.id.is_some() || ev.event.is_some() || !ev.data.is_empty() {
                    out.push(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = Some(value.to_string()),
                "event" => self.current.event = Some(value.to_string()),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                }
                _ => {}
            }
        }
    }
}

/// One message on one line, the same in `tail` and `query`: the time to the second, the topic,
/// the sender as `service:instance#seq` (what `query sender=` takes), and the body's summary.
pub fn message_line(env: &Envelope) -> String {
    let time = env.sent_at.to_string();
    let time = match time.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => time,
    };
    format!("{time} {} {}#{} {}", env.topic, env.sender, env.seq, patchbay_model::summarize(&env.schema.name, &env.body))
}

fn readable(wire: &str) -> String {
    match Envelope::from_wire(wire.as_bytes()) {
        Ok(env) => message_line(&env),
        Err(e) => format!("(unreadable message: {e})"),
    }
}

/// Runner heartbeats, which `tail` hides unless `--heartbeats`: one per runner every 30 s buries the rest.
fn is_heartbeat(wire: &str) -> bool {
    let suffix = format!(".{}", <patchbay_model::RunnerHeartbeat as patchbay_model::Body>::TOPIC);
    Envelope::from_wire(wire.as_bytes()).is_ok_and(|e| e.topic.as_str().ends_with(&suffix))
}

/// `patchbay tail`: runs until interrupted or stdout closes.
pub async fn tail(config: &Config, args: &TailArgs) -> Result<(), Exit> {
    let patterns = tail_patterns(config, &args.topics).map_err(Exit::data)?;
    let base = base_url(config, &args.url);
    let query: Vec<String> = patterns.iter().map(|p| format!("topic={}", p.as_str().replace('#', "%23"))).collect();
    let mut last: Option<u64> = if args.from_start { Some(0) } else { args.after };
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().map_err(anyhow::Error::from)?;
    let mut backoff = Duration::from_millis(100);
    let stdout = std::io::stdout();
    // Per sender, the highest sequence number shown: a jump is looked up in the history
    // (the same topic filters), and what was missed is shown first, in order, once.
    let mut gaps = patchbay_runtime::Gaps::default();
    loop {
        let mut q = query.clone();
        if let Some(p) = last {
            q.push(format!("after={p}"));
        }
        let url = format!("{base}/api/v1/stream?{}", q.join("&"));
        let mut request = client.get(&url).header("accept", "text/event-stream");
        if let Some(p) = last {
            request = request.header("last-event-id", p.to_string());
        }
        let problem = match request.send().await {
            Ok(resp) if resp.status().is_client_error() => {
                let text = resp.text().await.unwrap_or_default();
                return Err(Exit::data(anyhow::anyhow!("{url}: {text}")));
            }
            Ok(resp) if !resp.status().is_success() => format!("{url} answered {}", resp.status()),
            Ok(resp) => {
                let mut body = resp.bytes_stream();
                let mut parser = SseParser::default();
                let mut events = Vec::new();
                loop {
                    // Keep-alives come every 15 s; silence for longer means the connection is dead.
                    match tokio::time::timeout(Duration::from_secs(45), body.next()).await {
                        Ok(Some(Ok(chunk))) => {
                            parser.push(&chunk, &mut events);
                            for ev in events.drain(..) {
                                if ev.event.as_deref() == Some("message") {
                                    let mut lines = Vec::new();
                                    if let Ok(env) = patchbay_model::Envelope::from_wire(ev.data.as_bytes()) {
                                        if let Some((from, to)) = gaps.observe(&env.sender, env.seq) {
                                            for missed in missed(&client, &base, &query, &env.sender, from, to).await {
                                                if let Ok(m) = patchbay_model::Envelope::from_wire(missed.as_bytes())
                                                    && gaps.first_time(m.id)
                                                {
                                                    lines.push(missed);
                                                }
                                            }
                                        }
                                        if gaps.first_time(env.id) {
                                            lines.push(ev.data.clone());
                                        }
                                    } else {
                                        lines.push(ev.data.clone());
                                    }
                                    let mut out = stdout.lock();
                                    for data in lines {
                                        if !args.heartbeats && is_heartbeat(&data) {
                                            continue;
                                        }
                                        let line = if args.json { data } else { readable(&data) };
                                        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                                            return Ok(()); // stdout closed (piped into head, say)
                                        }
                                    }
                                    backoff = Duration::from_millis(100);
                                }
                                if let Some(id) = ev.id.and_then(|i| i.parse().ok()) {
                                    last = Some(id);
                                }
                            }
                        }
                        Ok(Some(Err(e))) => break format!("connection lost: {e}"),
                        Ok(None) => break "the daemon closed the stream".to_string(),
                        Err(_) => break "no keep-alive for 45 s".to_string(),
                    }
                }
            }
            Err(e) => format!("cannot reach {base}: {e}"),
        };
        eprintln!("patchbay tail: {problem}; reconnecting in {} ms", backoff.as_millis());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A sender's messages from `from` to `to` that match the tail's topic filters, from the history,
/// oldest first; nothing when the history cannot say (the stream goes on regardless).
async fn missed(
    client: &reqwest::Client,
    base: &str,
    query: &[String],
    sender: &patchbay_model::Sender,
    from: u64,
    to: u64,
) -> Vec<String> {
    let mut q = query.to_vec();
    q.push(format!("sender={}:{}", sender.service, sender.instance));
    q.push(format!("seq_from={from}&seq_to={to}&order=asc&rows_per_page=100"));
    let url = format!("{base}/api/v1/messages?{}", q.join("&"));
    let Ok(resp) = client.get(&url).timeout(Duration::from_secs(10)).send().await else { return vec![] };
    let Ok(page) = resp.json::<serde_json::Value>().await else { return vec![] };
    page["messages"].as_array().map(|m| m.iter().map(|v| v.to_string()).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_and_comments() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.push(b": keep-alive\n\nid: 4\nevent: mess", &mut out);
        assert!(out.is_empty());
        p.push(b"age\ndata: {\"a\":1}\r\n\r\nid: 5\ndata: x\ndata: y\n\n", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].id.as_deref(), out[0].event.as_deref(), out[0].data.as_str()), (Some("4"), Some("message"), "{\"a\":1}"));
        assert_eq!(out[1].data, "x\ny");
    }
}
