//! Helpers shared by the RabbitMQ failure tests: a throwaway node and a message.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use patchbay_bus::Outgoing;
use patchbay_model::{SchemaRef, Sender, TopicRoot};

/// scripts/rabbitmq in this repository.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq")
}

/// Runs `scripts/rabbitmq ACTION DIR`, returning what it printed (the URL on start).
pub fn node(action: &str, dir: &Path) -> String {
    let out = std::process::Command::new(script()).arg(action).arg(dir).output().expect("run scripts/rabbitmq");
    assert!(out.status.success(), "scripts/rabbitmq {action} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stops its node when dropped.
pub struct Node(pub PathBuf);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script()).arg("stop").arg(&self.0).output();
    }
}

/// A small test message on `root`.
pub fn message(root: &TopicRoot, n: u64) -> Outgoing {
    Outgoing {
        sender: Sender::new("restart-test", "1"),
        topic: root.topic("item.thing.new").unwrap(),
        schema: SchemaRef { name: "test".into(), version: 1 },
        body: serde_json::json!({ "n": n }),
    }
}
