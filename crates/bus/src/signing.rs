//! ed25519 keys, the trust store and the routing policy (which key may publish
//! under which topics, as fedmsg's `routing_policy` did).
//!
//! Key files are one line of text so they are easy to copy between machines
//! and rotate: a new key is a new file in the trusted directory and a new line
//! in the policy; nothing expires and there is no CRL to go stale.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, Verifier as _};
use patchbay_model::{Envelope, Signature};

use crate::{Authority, TopicPattern};

const SECRET_TAG: &str = "patchbay-ed25519-secret";
const PUBLIC_TAG: &str = "patchbay-ed25519";

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A key file does not have the expected one-line shape.
    #[error("{path}: {reason}")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Key ids name files and appear in envelopes, so they are kept simple.
    #[error("key id {0:?} must be 1-64 ASCII letters, digits, '.', '_' or '-'")]
    BadId(String),
    /// Two trusted public keys claim the same id.
    #[error("{path}: key id {id:?} is already defined by {other}")]
    Duplicate {
        /// The later file.
        path: PathBuf,
        /// The id both claim.
        id: String,
        /// The earlier file.
        other: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

fn check_id(id: &str) -> Result<(), KeyError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.starts_with('.');
    if ok { Ok(()) } else { Err(KeyError::BadId(id.to_string())) }
}

/// A private signing key and its id.
pub struct SigningKey {
    id: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?})", self.id)
    }
}

impl SigningKey {
    /// Generates a new key from the operating system's randomness.
    pub fn generate(id: &str) -> Result<Self, KeyError> {
        check_id(id)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SigningKey { id: id.to_string(), key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    /// Builds a key from a 32-byte seed, for tests that need fixed keys.
    pub fn from_seed(id: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        check_id(id)?;
        Ok(SigningKey { id: id.to_string(), key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    /// The id envelopes carry in `signature.key_id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey { id: self.id.clone(), key: self.key.verifying_key() }
    }

    /// Signs the envelope's canonical form and sets its signature.
    pub fn sign(&self, envelope: &mut Envelope) {
        self.sign_to_wire(envelope);
    }

    /// Signs like [`SigningKey::sign`] and returns the wire form, writing the body once for both.
    pub fn sign_to_wire(&self, envelope: &mut Envelope) -> Vec<u8> {
        envelope.signature = None;
        let canonical = envelope.canonical_bytes();
        let sig = self.key.sign(&canonical);
        envelope.signature = Some(Signature { key_id: self.id.clone(), ed25519: B64.encode(sig.to_bytes()) });
        envelope.wire_from_canonical(canonical)
    }

    /// Reads a secret key file written by [`SigningKey::write`].
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let (id, bytes) = read_key_file(path, SECRET_TAG)?;
        Self::from_seed(&id, bytes).map_err(|e| KeyError::Format { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Writes `<dir>/<id>.key` (mode 0600) and `<dir>/<id>.pub`; refuses to overwrite.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let secret = dir.join(format!("{}.key", self.id));
        let public = dir.join(format!("{}.pub", self.id));
        write_new(&secret, format!("{SECRET_TAG} {} {}\n", B64.encode(self.key.to_bytes()), self.id).as_bytes(), true)?;
        write_new(&public, self.public().to_line().as_bytes(), false)?;
        Ok((secret, public))
    }
}

/// Writes a file that must not exist yet, atomically: readers never see half a key,
/// and of two concurrent writers exactly one wins.
fn write_new(path: &Path, content: &[u8], private: bool) -> Result<(), KeyError> {
    use std::io::Write as _;
    let io = |source| KeyError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        // hard_link fails if the target exists: no overwrite, no window with a partial file.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(io)
}

fn read_key_file(path: &Path, tag: &str) -> Result<(String, [u8; 32]), KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
    parse_key_line(text.trim(), tag).map_err(|reason| KeyError::Format { path: path.to_path_buf(), reason })
}

fn parse_key_line(line: &str, tag: &str) -> Result<(String, [u8; 32]), String> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [t, b64, id] = parts[..] else {
        return Err(format!("expected one line \"{tag} <base64> <key-id>\""));
    };
    if t != tag {
        return Err(format!("expected a {tag} key, found {t:?}"));
    }
    check_id(id).map_err(|e| e.to_string())?;
    let bytes = B64.decode(b64).map_err(|e| format!("bad base64: {e}"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "key is not 32 bytes".to_string())?;
    Ok((id.to_string(), bytes))
}

/// A public key and its id, as found in the trusted key directory.
#[derive(Clone, Debug)]
pub struct PublicKey {
    id: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The one-line file form: `patchbay-ed25519 <base64> <id>`.
    pub fn to_line(&self) -> String {
        format!("{PUBLIC_TAG} {} {}\n", B64.encode(self.key.to_bytes()), self.id)
    }

    /// Parses the one-line file form.
    pub fn from_line(line: &str) -> Result<Self, String> {
        let (id, bytes) = parse_key_line(line.trim(), PUBLIC_TAG)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))?;
        Ok(PublicKey { id, key })
    }
}

/// Why a message was refused before reaching a handler; the text goes to the dead-letter store.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// Signatures are required and the message has none.
    #[error("unsigned message")]
    Unsigned,
    /// The signing key is not in the trusted key directory.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not match the content: tampered with, or signed by another key.
    #[error("bad signature from key {0:?}: the message was altered or not signed by that key")]
    BadSignature(String),
    /// The key is trusted but the routing policy does not let it publish this topic.
    #[error("key {key:?} may not publish on topic {topic:?}")]
    TopicNotAllowed {
        /// The signing key.
        key: String,
        /// The topic it used.
        topic: String,
    },
    /// A service published outside the topics its role owns.
    #[error("sender {service:?} may not publish {topic:?}: not a topic of its role")]
    OffRole {
        /// The sender's service.
        service: String,
        /// The topic it used.
        topic: String,
    },
    /// A sender that is not a service published in a category a service owns.
    #[error("sender {service:?} may not publish {topic:?}: only the {owner:?} service speaks there")]
    Reserved {
        /// The sender's service.
        service: String,
        /// The topic it used.
        topic: String,
        /// The role that owns the topic's category.
        owner: String,
    },
}

/// Trusted public keys and the routing policy, as the config names them.
#[derive(Clone, Debug, Default)]
pub struct TrustPolicy {
    require_signatures: bool,
    keys: HashMap<String, ed25519_dalek::VerifyingKey>,
    allowed: HashMap<String, Vec<TopicPattern>>,
    authority: Option<Arc<Authority>>,
}

impl TrustPolicy {
    /// A policy that lets everything through (signatures not required).
    pub fn permissive() -> Self {
        TrustPolicy::default()
    }

    /// A policy that requires signatures from the given keys, each limited to its topic patterns.
    pub fn new(require_signatures: bool) -> Self {
        TrustPolicy { require_signatures, ..Default::default() }
    }

    /// Enforces `authority` too: which sender may publish which topic, signed or not.
    pub fn with_authority(mut self, authority: Authority) -> Self {
        self.authority = Some(Arc::new(authority));
        self
    }

    /// The roles this policy enforces, if any.
    pub fn authority(&self) -> Option<&Authority> {
        self.authority.as_deref()
    }

    /// Whether unsigned and unverifiable messages are refused.
    pub fn requires_signatures(&self) -> bool {
        self.require_signatures
    }

    /// Trusts a public key.
    pub fn trust(&mut self, key: PublicKey) {
        self.keys.insert(key.id, key.key);
    }

    /// Lets a key publish topics matching `patterns` (fedmsg's routing policy).
    pub fn allow(&mut self, key_id: &str, patterns: Vec<TopicPattern>) {
        self.allowed.entry(key_id.to_string()).or_default().extend(patterns);
    }

    /// Trusts every `*.pub` file in `dir`, refusing duplicate ids; returns the ids trusted.
    pub fn trust_dir(&mut self, dir: &Path) -> Result<Vec<String>, KeyError> {
        let io = |source| KeyError::Io { path: dir.to_path_buf(), source };
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| KeyError::Io { path: path.clone(), source })?;
            let key = PublicKey::from_line(&text).map_err(|reason| KeyError::Format { path: path.clone(), reason })?;
            if let Some(other) = seen.get(&key.id) {
                return Err(KeyError::Duplicate { path, id: key.id, other: other.clone() });
            }
            seen.insert(key.id.clone(), path);
            self.trust(key);
        }
        Ok(seen.into_keys().collect())
    }

    /// Decides whether a message may reach a handler.
    pub fn check(&self, envelope: &Envelope) -> Result<(), Rejection> {
        if self.require_signatures {
            self.verify(envelope)?;
        }
        match &self.authority {
            Some(authority) => authority.check(&envelope.sender, &envelope.topic),
            None => Ok(()),
        }
    }

    /// The signature checks: a trusted key, an intact signature, a topic the key may use.
    fn verify(&self, envelope: &Envelope) -> Result<(), Rejection> {
        let sig = envelope.signature.as_ref().ok_or(Rejection::Unsigned)?;
        let key = self.keys.get(&sig.key_id).ok_or_else(|| Rejection::UnknownKey(sig.key_id.clone()))?;
        let bad = || Rejection::BadSignature(sig.key_id.clone());
        let bytes: [u8; 64] = B64.decode(&sig.ed25519).map_err(|_| bad())?.try_into().map_err(|_| bad())?;
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        key.verify(&envelope.canonical_bytes(), &signature).map_err(|_| bad())?;
        let allowed = self.allowed.get(&sig.key_id).is_some_and(|ps| ps.iter().any(|p| p.matches(&envelope.topic)));
        if !allowed {
            return Err(Rejection::TopicNotAllowed { key: sig.key_id.clone(), topic: envelope.topic.to_string() });
        }
        Ok(())
    }
}

/// Seals outgoing messages: stamps id and time, and signs when a key is configured.
#[derive(Clone, Debug, Default)]
pub struct Sealer {
    key: Option<Arc<SigningKey>>,
}

impl Sealer {
    /// A sealer that signs with `key`, or leaves messages unsigned when `None`.
    pub fn new(key: Option<Arc<SigningKey>>) -> Self {
        Sealer { key }
    }

    /// Turns an outgoing message into an envelope with the sequence number the backend assigned.
    pub fn seal(&self, out: crate::Outgoing, seq: u64) -> Envelope {
        self.seal_to_wire(out, seq).0
    }

    /// Seals like [`Sealer::seal`] and returns the wire form too, writing the body once for
    /// signing and storing both (a series' mbox is the bulk of an import's messages).
    pub fn seal_to_wire(&self, out: crate::Outgoing, seq: u64) -> (Envelope, Vec<u8>) {
        let mut env = Envelope {
            id: patchbay_model::Uuid::now_v7(),
            topic: out.topic,
            sent_at: patchbay_model::Timestamp::now(),
            sender: out.sender,
            seq,
            schema: out.schema,
            body: out.body,
            signature: None,
        };
        let wire = match &self.key {
            Some(key) => key.sign_to_wire(&mut env),
            None => env.to_wire(),
        };
        (env, wire)
    }

    /// The signing key's id, if any, for logs.
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_deref().map(SigningKey::id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_model::{SchemaRef, Sender, Topic};

    fn outgoing(topic: &str) -> crate::Outgoing {
        crate::Outgoing {
            sender: Sender::new("t", "1"),
            topic: Topic::parse(topic).unwrap(),
            schema: SchemaRef { name: "x".into(), version: 1 },
            body: serde_json::json!({"n": 1}),
        }
    }

    fn policy(key: &SigningKey, pattern: &str) -> TrustPolicy {
        let mut p = TrustPolicy::new(true);
        p.trust(key.public());
        p.allow(key.id(), vec![TopicPattern::parse(pattern).unwrap()]);
        p
    }

    #[test]
    fn accepts_good_and_rejects_each_kind_of_bad() {
        let key = Arc::new(SigningKey::from_seed("ingest", [7; 32]).unwrap());
        let other = Arc::new(SigningKey::from_seed("stranger", [8; 32]).unwrap());
        let p = policy(&key, "pb.dev.mail.#");
        let sealer = Sealer::new(Some(key.clone()));

        let good = sealer.seal(outgoing("pb.dev.mail.message.received"), 1);
        assert_eq!(p.check(&good), Ok(()));
        // Survives the wire.
        assert_eq!(p.check(&Envelope::from_wire(&good.to_wire()).unwrap()), Ok(()));

        let mut tampered = good.clone();
        tampered.body = serde_json::json!({"n": 2});
        assert_eq!(p.check(&tampered), Err(Rejection::BadSignature("ingest".into())));
        let mut reseq = good.clone();
        reseq.seq = 2;
        assert!(matches!(p.check(&reseq), Err(Rejection::BadSignature(_))));

        let unknown = Sealer::new(Some(other)).seal(outgoing("pb.dev.mail.message.received"), 1);
        assert_eq!(p.check(&unknown), Err(Rejection::UnknownKey("stranger".into())));

        let wrong_topic = sealer.seal(outgoing("pb.dev.ci.test.finished"), 2);
        assert!(matches!(p.check(&wrong_topic), Err(Rejection::TopicNotAllowed { .. })));

        let unsigned = Sealer::new(None).seal(outgoing("pb.dev.mail.message.received"), 1);
        assert_eq!(p.check(&unsigned), Err(Rejection::Unsigned));
        assert_eq!(TrustPolicy::permissive().check(&unsigned), Ok(()));

        // A signature claiming a trusted id but made by another key.
        let mut forged = unknown.clone();
        forged.signature.as_mut().unwrap().key_id = "ingest".into();
        assert_eq!(p.check(&forged), Err(Rejection::BadSignature("ingest".into())));
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = std::env::temp_dir().join(format!("pb-keys-{}", patchbay_model::Uuid::now_v7()));
        let key = SigningKey::generate("serve-2026").unwrap();
        let (secret, public) = key.write(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(key.write(&dir).is_err(), "must not overwrite");
        let back = SigningKey::read(&secret).unwrap();
        assert_eq!(back.public().to_line(), key.public().to_line());
        let mut p = TrustPolicy::new(true);
        assert_eq!(p.trust_dir(&dir).unwrap(), ["serve-2026"]);
        std::fs::write(dir.join("copy.pub"), std::fs::read(&public).unwrap()).unwrap();
        assert!(matches!(TrustPolicy::new(true).trust_dir(&dir), Err(KeyError::Duplicate { .. })));
        std::fs::write(dir.join("copy.pub"), "garbage").unwrap();
        let err = TrustPolicy::new(true).trust_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("copy.pub"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
