//! Versioned message bodies: one Rust type per topic, so that producers and
//! consumers agree at compile time and outside consumers get JSON Schemas
//! (`patchbay schema`). Later issues add their bodies here and to
//! [`body_schemas`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::SchemaRef;

/// A message body type bound to one topic suffix and one schema version.
pub trait Body: Serialize + DeserializeOwned + JsonSchema {
    /// `<service>.<object>[.<subobject>].<event>`, appended to the deployment's topic root.
    const TOPIC: &'static str;
    /// The schema name carried in the envelope.
    const SCHEMA: &'static str;
    /// The schema version; incompatible changes get a new version (and type).
    const VERSION: u32;

    /// The envelope's `schema` field for this body.
    fn schema_ref() -> SchemaRef {
        SchemaRef { name: Self::SCHEMA.to_string(), version: Self::VERSION }
    }
}

/// A free-text line from a shell script, as `fedmsg-logger` sent them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogMessage {
    /// The text, as given on the command line or stdin.
    pub message: String,
}

impl Body for LogMessage {
    const TOPIC: &'static str = "shell.message.logged";
    const SCHEMA: &'static str = "patchbay.log";
    const VERSION: u32 = 1;
}

/// One exported schema: which topic, which name and version, and the JSON Schema.
#[derive(Clone, Debug, Serialize)]
pub struct BodySchema {
    /// Topic suffix the body is published under.
    pub topic: &'static str,
    /// Schema name as carried in envelopes.
    pub name: &'static str,
    /// Schema version as carried in envelopes.
    pub version: u32,
    /// The JSON Schema (draft 2020-12) of the body.
    pub schema: serde_json::Value,
}

fn export<B: Body>() -> BodySchema {
    BodySchema {
        topic: B::TOPIC,
        name: B::SCHEMA,
        version: B::VERSION,
        schema: serde_json::to_value(schemars::schema_for!(B)).expect("schemas serialize"),
    }
}

/// Every body type patchbay publishes, for `patchbay schema` and for validating shell input.
pub fn body_schemas() -> Vec<BodySchema> {
    vec![export::<LogMessage>()]
}

fn check<B: Body>(body: &serde_json::Value) -> Result<SchemaRef, String> {
    B::deserialize(body).map(|_| B::schema_ref()).map_err(|e| format!("body does not fit {} v{}: {e}", B::SCHEMA, B::VERSION))
}

/// For a known topic suffix, checks that `body` fits its type and returns the schema to stamp;
/// `None` for topics patchbay does not define (they travel as `patchbay.json` v1, unchecked).
pub fn check_body(topic_suffix: &str, body: &serde_json::Value) -> Option<Result<SchemaRef, String>> {
    match topic_suffix {
        LogMessage::TOPIC => Some(check::<LogMessage>(body)),
        _ => None,
    }
}

/// The schema of bodies on topics patchbay does not define: any JSON object.
pub fn free_form_schema() -> SchemaRef {
    SchemaRef { name: "patchbay.json".into(), version: 1 }
}

/// The JSON Schema of the envelope itself.
pub fn envelope_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(crate::Envelope)).expect("schemas serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_has_a_unique_topic_and_an_object_schema() {
        let all = body_schemas();
        let mut topics: Vec<_> = all.iter().map(|b| b.topic).collect();
        topics.sort();
        topics.dedup();
        assert_eq!(topics.len(), all.len());
        for b in &all {
            assert_eq!(b.schema["type"], "object", "{}", b.name);
            assert!(b.topic.split('.').count() >= 3);
        }
        assert_eq!(envelope_schema()["type"], "object");
        // Every exported body is also checked on publish.
        for b in &all {
            assert!(check_body(b.topic, &serde_json::json!({})).is_some(), "{} is not checked", b.topic);
        }
        assert!(check_body("shell.message.logged", &serde_json::json!({"message": "hi"})).unwrap().is_ok());
        assert!(check_body("shell.message.logged", &serde_json::json!({"msg": "hi"})).unwrap().is_err());
        assert!(check_body("any.thing.else", &serde_json::json!({})).is_none());
    }
}
