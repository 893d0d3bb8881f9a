//! The bus conformance suite against the embedded SQLite bus.

use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::conformance::Harness;
use patchbay_bus::{Bus, Sealer};
use patchbay_model::TopicRoot;
use patchbay_store::EmbeddedBus;

struct Embedded {
    dir: tempfile::TempDir,
}

async fn embedded() -> Embedded {
    Embedded { dir: tempfile::tempdir().unwrap() }
}

#[async_trait]
impl Harness for Embedded {
    async fn open(&self, sealer: Sealer) -> Arc<dyn Bus> {
        Arc::new(EmbeddedBus::open(self.dir.path(), sealer).unwrap())
    }
    fn root(&self) -> TopicRoot {
        TopicRoot::new("pbtest", "conformance").unwrap()
    }
    fn queue(&self, name: &str) -> String {
        name.to_string()
    }
}

patchbay_bus::conformance_tests!(embedded);
