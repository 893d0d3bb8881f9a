//! Keys and trust as the config names them: `keygen`, and the sealer, the trust policy and
//! this host's publish token that every command builds from the config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use patchbay_bus::{Sealer, SigningKey, TopicPattern, TrustPolicy};
use patchbay_config::Config;

/// Options of `patchbay keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Key id: names the files and appears in every signature (default: `<host>-<instance>`,
    /// as `serve` and `runner` name the key they generate, so hosts' ids never collide).
    #[arg(long)]
    id: Option<String>,
    /// Directory to write `<id>.key` and `<id>.pub` into (default: `<data_dir>/keys`).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Writes a new key pair and says how to use it.
pub fn keygen(config: &Config, args: &KeygenArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| config.data_dir.join("keys"));
    let id = args.id.clone().unwrap_or_else(|| default_key_id(&config.instance));
    let key = SigningKey::generate(&id)?;
    let (secret, public) = key.write(&dir)?;
    println!("secret key: {} (keep it private; mode 0600)", secret.display());
    println!("public key: {}", public.display());
    print!("{}", key.public().to_line());
    println!();
    if secret != key_path(config) {
        println!("To sign with it, in patchbay.toml:");
        println!("  [signing]\n  key = {:?}", secret.display().to_string());
    }
    print!("{}", distribution(&public, key.id(), config));
    Ok(())
}

/// How to spread a public key so other hosts accept what this one signs.
fn distribution(public: &Path, id: &str, config: &Config) -> String {
    let name = public.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(
        "Every host that consumes this host's messages trusts it by holding {name} in its signing.trusted_keys\n\
         directory (default <data_dir>/keys), for example:\n  scp {} other-host:/var/lib/patchbay/keys/{name}\n\
         With require_signatures = true, every host needs every other host's .pub; key ids name host and\n\
         instance, so the files never collide. Its topics may be limited with:\n  [signing.allow] {id} = [\"{}.#\"]\n",
        public.display(),
        config.bus.root.as_str(),
    )
}

/// The key id this host and instance sign with unless told otherwise: `<host>-<instance>`, so
/// two hosts (or two instances on one host) never both call their key `local`, and each one's
/// public key can sit in the others' trust directories without hand-editing.
pub fn default_key_id(instance: &str) -> String {
    key_id_for(&patchbay_runner::hostname(), instance)
}

/// `<host>-<instance>` as a key id: ASCII letters, digits, `.`, `_` and `-`, at most 64 bytes.
fn key_id_for(host: &str, instance: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c.to_ascii_lowercase() } else { '-' }).collect()
    };
    let host = clean(host);
    let host = host.trim_start_matches('.');
    let host = if host.is_empty() { "host" } else { host };
    let instance = clean(instance);
    let room = 64usize.saturating_sub(instance.len() + 1).max(1);
    let host: String = host.chars().take(room).collect();
    format!("{host}-{instance}").chars().take(64).collect()
}

/// The secret key this process signs with: `signing.key`; else, in `<data_dir>/keys`, the
/// `local.key` of a data directory made before key ids named their host, or `<host>-<instance>.key`.
pub fn key_path(config: &Config) -> PathBuf {
    if let Some(key) = &config.signing.key {
        return key.clone();
    }
    let dir = config.data_dir.join("keys");
    let before = dir.join("local.key");
    if before.exists() {
        return before;
    }
    dir.join(format!("{}.key", default_key_id(&config.instance)))
}

/// The sealer for this process: the configured key, or the default key (generated when `create`).
pub fn sealer(config: &Config, create: bool) -> anyhow::Result<Sealer> {
    let path = key_path(config);
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
    // The default path is `<id>.key`: its stem is the id, read from the host name once.
    let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let key = SigningKey::generate(&id)?;
    match key.write(dir) {
        Ok(_) => {
            tracing::info!(key = %path.display(), id = key.id(), "Generated a signing key for this host and instance; other hosts trust it by holding its .pub in their signing.trusted_keys.");
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

/// The trust policy the config describes: the roles (`[authority]`), enforced signed or not,
/// and the trusted keys. Trusted keys without a `signing.allow` entry may publish anything
/// under this deployment's topic root that their sender's role allows.
pub fn trust_policy(config: &Config) -> anyhow::Result<TrustPolicy> {
    let s = &config.signing;
    let mut policy = TrustPolicy::new(s.require_signatures).with_authority(config.authority.clone());
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

/// The file in the data directory holding this host's publish token.
pub const LOCAL_TOKEN_FILE: &str = "publish.token";

/// This host's publish token (`<data>/publish.token`, mode 0600), made when `create` and absent.
/// `serve` accepts it from loopback peers and `patchbay publish` sends it there: whoever can read
/// the data directory could write the store anyway, while a web page in a browser can read
/// neither. `None` when it does not exist and `create` is false.
pub fn local_publish_token(data_dir: &Path, create: bool) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(LOCAL_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(Some(text.trim().to_string())),
        Ok(_) if !create => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("reading {}", path.display())),
        _ => {}
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the publish token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = data_dir.join(format!(".{LOCAL_TOKEN_FILE}.{}", std::process::id()));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    // Two processes racing: the first rename wins and both read what is there.
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(std::fs::read_to_string(&path)?.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::key_id_for;

    #[test]
    fn key_ids_name_host_and_instance_and_stay_valid() {
        assert_eq!(key_id_for("ci1.example.org", "main"), "ci1.example.org-main");
        assert_eq!(key_id_for("Build Box#2", "runner-a"), "build-box-2-runner-a");
        assert_eq!(key_id_for("", "main"), "host-main");
        assert_eq!(key_id_for(".hidden", "x"), "hidden-x");
        let long = key_id_for(&"h".repeat(100), "instance");
        assert!(long.len() <= 64 && long.ends_with("-instance"), "{long}");
        for id in [key_id_for("ci1", "main"), long, key_id_for("Build Box#2", "runner-a")] {
            patchbay_bus::SigningKey::generate(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }
}
