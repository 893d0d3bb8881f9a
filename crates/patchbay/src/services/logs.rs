//! The log recorder: `ci.test.log` chunks into the store (`test_logs`), whole logs for the HTTP
//! edge. It has no config section of its own.

use std::sync::Arc;

use patchbay_bus::{Bus, TrustPolicy};
use patchbay_config::Config;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The log recorder's queue: every `ci.test.log` chunk.
pub fn spec(config: &Config) -> anyhow::Result<patchbay_runtime::ServiceSpec> {
    let pattern = patchbay_runtime::pattern_of::<patchbay_model::TestLog>(&config.bus.root)?;
    Ok(patchbay_runtime::ServiceSpec::new("log-recorder", vec![pattern]))
}

/// Starts the log recorder on `bus` until `closing`.
pub fn start(
    config: &Config,
    logs: patchbay_logs::LogStore,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let spec = spec(config)?;
    let handler = patchbay_runtime::Typed::new(patchbay_logs::Recorder::new(logs));
    Ok(crate::tasks::spawn_service(bus, policy, spec, handler, closing, "The log recorder"))
}
