//! The bus conformance suite, unchanged, against RabbitMQ.
//!
//! The broker comes from `PATCHBAY_TEST_AMQP_URL` (scripts/test starts a
//! throwaway one when it is not set). Without a reachable broker these tests
//! fail; they never skip.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use patchbay_bus::conformance::Harness;
use patchbay_bus::{Bus, Sealer};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::TopicRoot;

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Rabbit {
    ns: String,
    state: tempfile::TempDir,
}

async fn rabbit() -> Rabbit {
    Rabbit { ns: format!("pbt{}", uuid::Uuid::now_v7().simple()), state: tempfile::tempdir().unwrap() }
}

#[async_trait]
impl Harness for Rabbit {
    async fn open(&self, sealer: Sealer) -> Arc<dyn Bus> {
        let mut config = AmqpConfig::new(amqp_url(), self.state.path());
        config.exchange = self.ns.clone();
        config.connect_timeout = Duration::from_secs(5);
        config.queue_expiry = Some(Duration::from_secs(600));
        // As `serve` runs it: every queue name carries a prefix, retry and dead-letter queues too.
        config.queue_prefix = "pbtest.conformance.".into();
        let bus = AmqpBus::connect(config, sealer)
            .await
            .unwrap_or_else(|e| panic!("no RabbitMQ at {} ({e}); run scripts/test, or set PATCHBAY_TEST_AMQP_URL", amqp_url()));
        Arc::new(bus)
    }
    fn root(&self) -> TopicRoot {
        TopicRoot::new("pbtest", &self.ns).unwrap()
    }
    fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.ns)
    }
}

patchbay_bus::conformance_tests!(rabbit);
