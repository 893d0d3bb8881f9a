//! The shared SIGKILL crash test (`patchbay_bus::conformance::crash`) on the
//! embedded bus: a child process consumes and acks while the parent kills it
//! mid-stream; after a restart every accepted message is delivered at least
//! once and acked exactly once. Its own `main` (harness = false).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::conformance::Harness;
use patchbay_bus::{Bus, Sealer};
use patchbay_model::TopicRoot;
use patchbay_store::EmbeddedBus;

struct Embedded {
    dir: PathBuf,
    _keep: Option<tempfile::TempDir>,
}

#[async_trait]
impl Harness for Embedded {
    async fn open(&self, sealer: Sealer) -> Arc<dyn Bus> {
        Arc::new(EmbeddedBus::open(&self.dir, sealer).unwrap())
    }
    fn root(&self) -> TopicRoot {
        TopicRoot::new("pbtest", "crash").unwrap()
    }
    fn queue(&self, name: &str) -> String {
        name.to_string()
    }
}

fn main() {
    patchbay_bus::conformance::crash::main(
        |args| match args.first() {
            Some(dir) => Embedded { dir: PathBuf::from(dir), _keep: None },
            None => {
                let tmp = tempfile::tempdir().unwrap();
                Embedded { dir: tmp.path().to_path_buf(), _keep: Some(tmp) }
            }
        },
        |h| vec![h.dir.display().to_string()],
    );
}
