//! The envelope every bus message travels in. Its canonical form (everything
//! but the signature, see [`crate::write_canonical`]) is what gets signed, and
//! the wire form is the canonical form with the signature included, so a store
//! that keeps the wire bytes as they came keeps a message that still verifies.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{Timestamp, Topic};

/// Who sent a message: the service and which running instance of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sender {
    /// The service name, such as `ingest` or `runner`.
    pub service: String,
    /// Which instance of the service: sequence numbers count per (service, instance).
    pub instance: String,
}

impl Sender {
    /// Convenience constructor.
    pub fn new(service: impl Into<String>, instance: impl Into<String>) -> Self {
        Sender { service: service.into(), instance: instance.into() }
    }
}

/// `service:instance`, as the history's `sender=` filter takes it, so every human form of a
/// sender (`tail`, `query`, logs) reads the same.
impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.service, self.instance)
    }
}

/// Names the body's type and version so consumers can pick a decoder.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SchemaRef {
    /// Body type name, such as `patchbay.log`.
    pub name: String,
    /// Body type version; a new version is a new type.
    pub version: u32,
}

/// An ed25519 signature over the canonical form, and which key made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Signature {
    /// The signing key's id, as named in the trusted key directory.
    pub key_id: String,
    /// The 64-byte signature, base64 (standard alphabet, padded).
    pub ed25519: String,
}

/// One message on the bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// UUIDv7: unique and roughly time-ordered.
    pub id: Uuid,
    /// Where it is published; also the AMQP routing key.
    pub topic: Topic,
    /// When the sender sealed it.
    pub sent_at: Timestamp,
    /// Who sealed it.
    pub sender: Sender,
    /// Per sender, strictly increasing across restarts: consumers detect gaps with it.
    pub seq: u64,
    /// Which type and version the body is.
    pub schema: SchemaRef,
    /// The message itself.
    pub body: Value,
    /// Absent when the sender has no signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// Why bytes are not an envelope.
#[derive(Debug, thiserror::Error)]
#[error("not a patchbay envelope: {0}")]
pub struct EnvelopeError(#[from] serde_json::Error);

impl Envelope {
    /// Writes the canonical form directly, in the fixed key order (keys sorted by bytes:
    /// body, id, schema, sender, sent_at, seq, signature, topic), without building a
    /// `Value` of the whole envelope. `canonical_form_matches_the_generic_writer` holds
    /// it to [`crate::write_canonical`].
    fn write(&self, with_signature: bool, out: &mut Vec<u8>) {
        fn string(out: &mut Vec<u8>, s: &str) {
            serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
        }
        out.extend_from_slice(b"{\"body\":");
        crate::write_canonical(&self.body, out);
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(self.id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes());
        out.extend_from_slice(b"\",\"schema\":{\"name\":");
        string(out, &self.schema.name);
        out.extend_from_slice(format!(",\"version\":{}}},\"sender\":{{\"instance\":", self.schema.version).as_bytes());
        string(out, &self.sender.instance);
        out.extend_from_slice(b",\"service\":");
        string(out, &self.sender.service);
        out.extend_from_slice(format!("}},\"sent_at\":\"{}\",\"seq\":{}", self.sent_at, self.seq).as_bytes());
        if let (true, Some(sig)) = (with_signature, &self.signature) {
            out.extend_from_slice(b",\"signature\":{\"ed25519\":");
            string(out, &sig.ed25519);
            out.extend_from_slice(b",\"key_id\":");
            string(out, &sig.key_id);
            out.push(b'}');
        }
        out.extend_from_slice(b",\"topic\":");
        string(out, self.topic.as_str());
        out.push(b'}');
    }

    /// The bytes a signature covers: every field but the signature, canonical JSON.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body_size_hint());
        self.write(false, &mut out);
        out
    }

    /// The bytes to store and send: canonical JSON including the signature.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384 + self.body_size_hint());
        self.write(true, &mut out);
        out
    }

    /// The wire form from this envelope's canonical bytes (as [`Envelope::canonical_bytes`]
    /// made them, before signing), without writing the body a second time: the signature goes
    /// in before the topic, its place in key order. A large body (a series' mbox) is then
    /// serialized once per seal, not twice.
    pub fn wire_from_canonical(&self, mut canonical: Vec<u8>) -> Vec<u8> {
        let Some(sig) = &self.signature else { return canonical };
        let mut tail = Vec::with_capacity(16 + self.topic.as_str().len());
        tail.extend_from_slice(b",\"topic\":");
        serde_json::to_writer(&mut tail, self.topic.as_str()).expect("writing to a Vec cannot fail");
        tail.push(b'}');
        debug_assert!(canonical.ends_with(&tail), "not this envelope's canonical bytes");
        canonical.truncate(canonical.len() - tail.len());
        canonical.extend_from_slice(b",\"signature\":{\"ed25519\":");
        serde_json::to_writer(&mut canonical, &sig.ed25519).expect("writing to a Vec cannot fail");
        canonical.extend_from_slice(b",\"key_id\":");
        serde_json::to_writer(&mut canonical, &sig.key_id).expect("writing to a Vec cannot fail");
        canonical.push(b'}');
        canonical.extend_from_slice(&tail);
        canonical
    }

    fn body_size_hint(&self) -> usize {
        match &self.body {
            Value::Object(m) => m.values().map(|v| if let Value::String(s) = v { s.len() + 16 } else { 16 }).sum(),
            _ => 16,
        }
    }

    /// Parses wire bytes; unknown fields are refused so nothing unsigned rides along.
    pub fn from_wire(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            topic: Topic::parse("patchbay.dev.shell.message.logged").unwrap(),
            sent_at: Timestamp::from_micros(1_000_000),
            sender: Sender::new("shell", "host-a"),
            seq: 7,
            schema: SchemaRef { name: "patchbay.log".into(), version: 1 },
            body: serde_json::json!({"message": "hi", "a": [1, 2]}),
            signature: None,
        }
    }

    #[test]
    fn wire_round_trip_is_byte_stable() {
        let mut env = sample();
        env.signature = Some(Signature { key_id: "k".into(), ed25519: "AAAA".into() });
        let wire = env.to_wire();
        let back = Envelope::from_wire(&wire).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.to_wire(), wire);
        assert_eq!(back.canonical_bytes(), env.canonical_bytes());
    }

    #[test]
    fn canonical_form_excludes_only_the_signature() {
        let mut env = sample();
        let unsigned = env.canonical_bytes();
        env.signature = Some(Signature { key_id: "k".into(), ed25519: "AAAA".into() });
        assert_eq!(env.canonical_bytes(), unsigned);
        assert_ne!(env.to_wire(), unsigned);
        let text = String::from_utf8(unsigned).unwrap();
        assert!(text.starts_with(r#"{"body":{"a":[1,2],"message":"hi"},"id":""#), "{text}");
    }

    #[test]
    fn canonical_form_matches_the_generic_writer() {
        let generic = |env: &Envelope, with_signature: bool| {
            let mut v = serde_json::to_value(env).unwrap();
            if !with_signature {
                v.as_object_mut().unwrap().remove("signature");
            }
            let mut out = Vec::new();
            crate::write_canonical(&v, &mut out);
            out
        };
        let mut env = sample();
        env.sender = Sender::new("quo\"te", "back\\slash é");
        env.schema.name = "line\nbreak".into();
        env.body = serde_json::json!({"z": [1, {"b": null, "a": 1.5}], "a": "\u{1}"});
        for signed in [false, true] {
            env.signature = signed.then(|| Signature { key_id: "k\"1".into(), ed25519: "AA==".into() });
            assert_eq!(env.canonical_bytes(), generic(&env, false));
            assert_eq!(env.to_wire(), generic(&env, true));
            assert_eq!(env.wire_from_canonical(env.canonical_bytes()), env.to_wire());
        }
    }

    #[test]
    fn refuses_unknown_fields_and_bad_topics() {
        let mut v: Value = serde_json::from_slice(&sample().to_wire()).unwrap();
        v["extra"] = Value::Bool(true);
        assert!(Envelope::from_wire(v.to_string().as_bytes()).is_err());
        let mut v: Value = serde_json::from_slice(&sample().to_wire()).unwrap();
        v["topic"] = Value::String("a.#".into());
        assert!(Envelope::from_wire(v.to_string().as_bytes()).is_err());
    }
}
