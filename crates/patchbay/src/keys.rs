//! Keys and trust as the config names them: `keygen`, `config check`, and the
//! sealer and trust policy every command builds from the config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use patchbay_bus::{Sealer, SigningKey, TopicPattern, TrustPolicy};
use patchbay_config::Config;

use crate::Exit;

/// Options of `patchbay keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Key id: names the files and appears in every signature.
    #[arg(long, default_value = "serve")]
    id: String,
    /// Directory to write `<id>.key` and `<id>.pub` into (default: `<data_dir>/keys`).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Writes a new key pair and says how to use it.
pub fn keygen(config: &Config, args: &KeygenArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| config.data_dir.join("keys"));
    let key = SigningKey::generate(&args.id)?;
    let (secret, public) = key.write(&dir)?;
    println!("secret key: {} (keep it private; mode 0600)", secret.display());
    println!("public key: {}", public.display());
    print!("{}", key.public().to_line());
    println!();
    println!("To sign with it, in patchbay.toml:");
    println!("  [signing]\n  key = {:?}", secret.display().to_string());
    println!("Consumers trust it by copying {} into their signing.trusted_keys directory,", public.display());
    println!("and may limit its topics with: [signing.allow] {} = [\"{}.#\"]", key.id(), config.bus.root.as_str());
    Ok(())
}

/// The sealer for this process: the configured key, or the default key (generated when `create`).
pub fn sealer(config: &Config, create: bool) -> anyhow::Result<Sealer> {
    let path = config.signing.key_path(&config.data_dir);
    if path.exists() {
        let key = SigningKey::read(&path).with_context(|| format!("{}: signing.key", config.source_name()))?;
        return Ok(Sealer::new(Some(Arc::new(key))));
    }
    if config.signing.key.is_some() {
        anyhow::bail!("{}: signing.key: {} does not exist (make one with `patchbay keygen`)", config.source_name(), path.display());
    }
    if !create {
        return Ok(Sealer::new(None));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let key = SigningKey::generate("local")?;
    match key.write(dir) {
        Ok(_) => {
            tracing::info!(key = %path.display(), "Generated a signing key for this data directory.");
            Ok(Sealer::new(Some(Arc::new(key))))
        }
        // Another process generated it first: use theirs.
        Err(_) if path.exists() => {
            let key = SigningKey::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(Sealer::new(Some(Arc::new(key))))
        }
        Err(e) => Err(e.into()),
    }
}

/// The trust policy the config describes. Trusted keys without a `signing.allow`
/// entry may publish anything under this deployment's topic root.
pub fn trust_policy(config: &Config) -> anyhow::Result<TrustPolicy> {
    let s = &config.signing;
    let mut policy = TrustPolicy::new(s.require_signatures);
    let mut trusted = Vec::new();
    let trusted_dir = s.trusted_keys_dir(&config.data_dir);
    if trusted_dir.is_dir() {
        trusted = policy.trust_dir(&trusted_dir).with_context(|| format!("{}: signing.trusted_keys", config.source_name()))?;
    } else if s.require_signatures {
        anyhow::bail!(
            "{}: signing.trusted_keys: {} is not a directory, and require_signatures = true trusts nothing without it",
            config.source_name(),
            trusted_dir.display()
        );
    }
    for (key, patterns) in &s.allow {
        if !trusted.contains(key) && s.require_signatures {
            anyhow::bail!("{}: signing.allow.{key}: no key {key:?} in {}", config.source_name(), trusted_dir.display());
        }
        policy.allow(key, patterns.clone());
    }
    let everything = TopicPattern::parse(&format!("{}.#", config.bus.root.as_str()))?;
    for key in trusted.iter().filter(|k| !s.allow.contains_key(*k)) {
        policy.allow(key, vec![everything.clone()]);
    }
    Ok(policy)
}

/// `patchbay config check`.
pub fn config_check(path: Option<&Path>, data_dir: Option<&Path>, json: bool) -> Result<(), Exit> {
    let result = (|| -> anyhow::Result<Config> {
        let mut config = Config::load(path)?;
        if let Some(d) = data_dir {
            config.data_dir = d.to_path_buf();
        }
        sealer(&config, false)?;
        trust_policy(&config)?;
        crate::ci::report_template(&config)?;
        Ok(config)
    })();
    match result {
        Ok(config) => {
            let key = config.signing.key_path(&config.data_dir);
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
                        "require_signatures": config.signing.require_signatures,
                    })
                );
            } else {
                println!("ok: {}", config.source_name());
                println!("  data_dir = {}", config.data_dir.display());
                println!("  topics under {}.*", config.bus.root.as_str());
                println!("  http.listen = {}", config.http_listen);
                let note = if key.exists() { "" } else { " (not there yet: `serve` generates it)" };
                println!("  signing key = {}{note}", key.display());
                println!("  require_signatures = {}", config.signing.require_signatures);
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
