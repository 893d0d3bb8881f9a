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

impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.instance)
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
    fn to_value(&self, with_signature: bool) -> Value {
        let mut v = serde_json::to_value(self).expect("an envelope always serializes");
        if !with_signature && let Value::Object(map) = &mut v {
            map.remove("signature");
        }
        v
    }

    /// The bytes a signature covers: every field but the signature, canonical JSON.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        crate::write_canonical(&self.to_value(false), &mut out);
        out
    }

    /// The bytes to store and send: canonical JSON including the signature.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        crate::write_canonical(&self.to_value(true), &mut out);
        out
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
    fn refuses_unknown_fields_and_bad_topics() {
        let mut v: Value = serde_json::from_slice(&sample().to_wire()).unwrap();
        v["extra"] = Value::Bool(true);
        assert!(Envelope::from_wire(v.to_string().as_bytes()).is_err());
        let mut v: Value = serde_json::from_slice(&sample().to_wire()).unwrap();
        v["topic"] = Value::String("a.#".into());
        assert!(Envelope::from_wire(v.to_string().as_bytes()).is_err());
    }
}
