//! The background tasks of `serve` and `runner`: services on the runtime and periodic
//! sweeps, all stopped by the one `closing` signal, and the signal that asks for it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use patchbay_bus::{Bus, TrustPolicy};
use patchbay_runtime::{Handler, ServiceSpec};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("Shutdown requested.");
}

/// Resolves once `closing` turns true (or its sender is gone): the shutdown a task is given.
pub async fn closed(mut closing: watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// Runs `handler` as a service on the runtime until `closing`; says so if it stops otherwise.
pub fn spawn_service(
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    spec: ServiceSpec,
    handler: Arc<dyn Handler>,
    closing: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = patchbay_runtime::run(bus, policy, spec, handler, closed(closing)).await {
            tracing::error!(%error, "{what} stopped.");
        }
    })
}

/// Runs `step` now and then every `every` until `closing`. A step returns how many things it
/// did (logged as `done` when some) or an error (logged as `failed`; the next round retries).
pub fn spawn_every<F, Fut, E>(
    every: Duration,
    closing: watch::Receiver<bool>,
    done: &'static str,
    failed: &'static str,
    mut step: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<usize, E>> + Send,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let stop = closed(closing);
        tokio::pin!(stop);
        loop {
            match step().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, "{done}"),
                Err(error) => tracing::warn!(%error, "{failed}"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    })
}
