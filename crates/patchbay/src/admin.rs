//! The commands an operator runs to look at a deployment rather than change it:
//! `config check` (the config, the keys, the trust policy and the report template,
//! loaded as `serve` would) and `dead-letters` (what consumers set aside and why).

use std::path::Path;

use patchbay_config::Config;
use patchbay_model::ServiceName;

use crate::Exit;
use crate::keys::{sealer, trust_policy};

/// `patchbay config check`.
pub fn config_check(path: Option<&Path>, data_dir: Option<&Path>, json: bool) -> Result<(), Exit> {
    let result = (|| -> anyhow::Result<(Config, Option<String>)> {
        let mut config = Config::load(path)?;
        if let Some(d) = data_dir {
            config.data_dir = d.to_path_buf();
        }
        let signs_as = sealer(&config, false)?.key_id().map(str::to_string);
        trust_policy(&config)?;
        crate::services::reporter::report_template(&config)?;
        Ok((config, signs_as))
    })();
    match result {
        Ok((config, signs_as)) => {
            let key = crate::keys::key_path(&config);
            // The id inside the key; before `serve` generates it, the id it will have (its file's name).
            let key_id = signs_as.unwrap_or_else(|| key.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            let trust_dir = config.signing.trusted_keys_dir(&config.data_dir);
            let mut trusted: Vec<String> = std::fs::read_dir(&trust_dir)
                .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".pub").map(str::to_string)).collect())
                .unwrap_or_default();
            trusted.sort();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "file": config.source.as_ref().map(|p| p.display().to_string()),
                        "data_dir": config.data_dir.display().to_string(),
                        "topic_root": config.bus.root.as_str(),
                        "http_listen": config.http_listen.to_string(),
                        "signing_key": key.display().to_string(),
                        "signing_key_exists": key.exists(),
                        "key_id": key_id,
                        "trusted_keys_dir": trust_dir.display().to_string(),
                        "trusted_keys": trusted,
                        "require_signatures": config.signing.require_signatures,
                        "roles": config.authority.roles().map(|(s, ps)| (s.to_string(), ps.iter().map(|p| p.as_str()).collect::<Vec<_>>())).collect::<std::collections::BTreeMap<_, _>>(),
                        "loopback_without_token": config.http_publish.loopback_without_token,
                    })
                );
            } else {
                println!("ok: {}", config.source_name());
                println!("  data_dir = {}", config.data_dir.display());
                println!("  topics under {}.*", config.bus.root.as_str());
                println!("  http.listen = {}", config.http_listen);
                let note = if key.exists() { "" } else { " (not there yet: `serve` generates it)" };
                println!("  signing key = {}{note}", key.display());
                println!(
                    "  trusted keys ({}): {}",
                    trust_dir.display(),
                    if trusted.is_empty() { "none".to_string() } else { trusted.join(", ") }
                );
                println!("  require_signatures = {}", config.signing.require_signatures);
                println!(
                    "  other hosts accept this one's messages when {key_id}.pub is in their signing.trusted_keys (`patchbay keygen --help`)"
                );
                for (service, patterns) in config.authority.roles() {
                    let patterns: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
                    println!("  {service} may publish {}", patterns.join(", "));
                }
                if config.http_publish.loopback_without_token {
                    println!("  http.loopback_without_token = true: anything on this host publishes, web pages of listed origins too");
                }
            }
            Ok(())
        }
        Err(error) => {
            if json {
                println!("{}", serde_json::json!({ "ok": false, "error": format!("{error:#}") }));
            }
            Err(Exit::config(error))
        }
    }
}

/// Options of `patchbay dead-letters`.
#[derive(clap::Args)]
pub struct DeadLettersArgs {
    /// The consumer's queue: a service (`aggregator`, `runner`, `dispatcher`, `reporter`,
    /// `log-recorder`), or `serve-log.<instance>` for the history's recorder on RabbitMQ
    /// (default: every one of those).
    queue: Vec<String>,
    /// At most this many per queue, oldest first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// One JSON object per line: queue, reason, attempts, dead_at, and the envelope as received.
    #[arg(long)]
    json: bool,
}

/// `patchbay dead-letters`: what consumers set aside and why (a refused sender or signature,
/// a handler that kept failing), so an admin sees forgeries that never became history.
pub async fn dead_letters(config: &Config, args: &DeadLettersArgs) -> Result<(), Exit> {
    let queues = if args.queue.is_empty() {
        // The consumers' queues: the services that consume, and the log recorder.
        let mut q: Vec<String> = [ServiceName::Dispatcher, ServiceName::Runner, ServiceName::Aggregator, ServiceName::Reporter]
            .map(|s| s.as_str().to_string())
            .to_vec();
        q.push("log-recorder".into());
        if config.bus.backend == patchbay_config::BusBackend::Amqp {
            q.push(format!("serve-log.{}", config.instance));
        }
        q
    } else {
        args.queue.clone()
    };
    let bus = crate::backend::bus(config, patchbay_bus::Sealer::default()).await.map_err(Exit::tempfail)?;
    let mut total = 0;
    for queue in &queues {
        let dead = bus.dead_letters(queue, args.limit).await.map_err(|e| Exit::tempfail(anyhow::anyhow!("{queue}: {e}")))?;
        total += dead.len();
        for d in dead {
            if args.json {
                let line = serde_json::json!({
                    "queue": d.queue, "reason": d.reason, "attempts": d.attempts, "dead_at": d.at.to_string(),
                    "envelope": d.envelope,
                });
                println!("{line}");
            } else {
                println!(
                    "{} {queue} {} from {}#{} ({} attempt(s)): {}",
                    d.at, d.envelope.topic, d.envelope.sender.service, d.envelope.sender.instance, d.attempts, d.reason
                );
            }
        }
    }
    if !args.json {
        eprintln!("{total} dead letter(s) in {} queue(s)", queues.len());
    }
    Ok(())
}
