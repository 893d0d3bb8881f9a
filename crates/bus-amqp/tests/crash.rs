//! The shared SIGKILL crash test (`patchbay_bus::conformance::crash`) on
//! RabbitMQ: the killed consumer's unacked deliveries return to the queue when
//! its connection dies. Its own `main` (harness = false).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use patchbay_bus::conformance::Harness;
use patchbay_bus::{Bus, Sealer};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::TopicRoot;

struct Rabbit {
    url: String,
    ns: String,
    state: PathBuf,
    _keep: Option<tempfile::TempDir>,
}

#[async_trait]
impl Harness for Rabbit {
    async fn open(&self, sealer: Sealer) -> Arc<dyn Bus> {
        let mut config = AmqpConfig::new(self.url.clone(), &self.state);
        config.exchange = self.ns.clone();
        config.connect_timeout = Duration::from_secs(5);
        config.queue_expiry = Some(Duration::from_secs(600));
        Arc::new(AmqpBus::connect(config, sealer).await.unwrap_or_else(|e| panic!("no RabbitMQ at {} ({e}); run scripts/test", self.url)))
    }
    fn root(&self) -> TopicRoot {
        TopicRoot::new("pbtest", &self.ns).unwrap()
    }
    fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.ns)
    }
}

fn main() {
    patchbay_bus::conformance::crash::main(
        |args| match args {
            [url, ns, state] => Rabbit { url: url.clone(), ns: ns.clone(), state: PathBuf::from(state), _keep: None },
            _ => {
                let tmp = tempfile::tempdir().unwrap();
                Rabbit {
                    url: std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
                    ns: format!("pbc{}", uuid::Uuid::now_v7().simple()),
                    state: tmp.path().to_path_buf(),
                    _keep: Some(tmp),
                }
            }
        },
        |h| vec![h.url.clone(), h.ns.clone(), h.state.display().to_string()],
    );
}
