//! What `GET /metrics` shows, in the Prometheus text format (OpenMetrics, encoded by
//! `prometheus-client`, never by hand): per service, messages handled, retried and
//! dead-lettered and how long handlers took (the runtime counts them for every service), and
//! the pipeline's own figures, counted by the service that owns each: mails stored (the
//! history indexer, which sees every mail committed to the store, by `inject` too),
//! jobs queued (dispatcher) and running (runner), and the time from a verdict to its report
//! mail (reporter).
//!
//! One registry per process: metrics describe the process, and every service in it reports
//! into the same one, as Prometheus's own clients do. The runtime resolves a service's
//! counters once, at start, so counting a delivery is an atomic add. No IO, no other patchbay crate.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
/// Metric handles (shared cells: a clone counts into the same metric).
pub use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use prometheus_client::registry::Registry;

/// The label of per-service metrics: the service's sender name (`aggregator`, `runner`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service.
    pub service: String,
}

/// Handler durations: 1 ms to about 65 s.
#[derive(Clone, Copy, Debug)]
pub struct HandlerBuckets;

impl MetricConstructor<Histogram> for HandlerBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

/// The process's metrics.
pub struct Metrics {
    /// Deliveries a service handled and acknowledged.
    pub handled: Family<ServiceLabel, Counter>,
    /// Deliveries that failed and were put back for a later attempt.
    pub retried: Family<ServiceLabel, Counter>,
    /// Deliveries a handler failed for good (permanent failure, too many attempts); those the
    /// trust policy refuses before any handler are dead-lettered by the consumer, not counted.
    pub dead_lettered: Family<ServiceLabel, Counter>,
    /// How long one handler call took, whatever its outcome.
    pub handler_seconds: Family<ServiceLabel, Histogram, HandlerBuckets>,
    /// Mails newly stored in this store, counted as the history indexes them (a repeat of a
    /// stored mail publishes nothing, so it does not count).
    pub mails_stored: Counter,
    /// Test jobs queued by the dispatcher.
    pub jobs_queued: Counter,
    /// Test jobs this process runs now.
    pub jobs_running: Gauge,
    /// From a verdict's publication to its report mail being handed over (outbox or SMTP).
    pub report_seconds: Histogram,
    registry: Registry,
}

impl Metrics {
    fn new() -> Metrics {
        let handled = Family::<ServiceLabel, Counter>::default();
        let retried = Family::<ServiceLabel, Counter>::default();
        let dead_lettered = Family::<ServiceLabel, Counter>::default();
        let handler_seconds = Family::new_with_constructor(HandlerBuckets);
        let (mails_stored, jobs_queued, jobs_running) = (Counter::default(), Counter::default(), Gauge::default());
        let report_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        // The registry holds handles to the same metrics (they are shared cells).
        let mut registry = Registry::with_prefix("patchbay");
        registry.register("messages_handled", "Deliveries a service handled and acknowledged", handled.clone());
        registry.register("messages_retried", "Deliveries that failed and were put back for a later attempt", retried.clone());
        registry.register("messages_dead_lettered", "Deliveries set aside for good", dead_lettered.clone());
        registry.register("handler_seconds", "How long one handler call took", handler_seconds.clone());
        registry.register("mails_stored", "Mails newly stored", mails_stored.clone());
        registry.register("jobs_queued", "Test jobs queued by the dispatcher", jobs_queued.clone());
        registry.register("jobs_running", "Test jobs this process runs now", jobs_running.clone());
        registry.register("report_seconds", "From a verdict to its report mail handed over", report_seconds.clone());
        Metrics { handled, retried, dead_lettered, handler_seconds, mails_stored, jobs_queued, jobs_running, report_seconds, registry }
    }

    /// The counters of one service.
    pub fn service(&self, service: &str) -> ServiceLabel {
        ServiceLabel { service: service.to_string() }
    }

    /// Everything, in the text format a Prometheus server scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Counts one running job in `jobs_running` for as long as it lives, so a job that errors,
/// panics or is cancelled is uncounted all the same.
#[must_use = "the job counts as running while this lives"]
pub struct JobRunning(());

impl JobRunning {
    /// A job starts.
    pub fn start() -> JobRunning {
        metrics().jobs_running.inc();
        JobRunning(())
    }
}

impl Drop for JobRunning {
    fn drop(&mut self) {
        metrics().jobs_running.dec();
    }
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_a_prometheus_server_reads() {
        let m = Metrics::new();
        m.handled.get_or_create(&m.service("aggregator")).inc_by(3);
        m.handler_seconds.get_or_create(&m.service("aggregator")).observe(0.004);
        m.mails_stored.inc();
        m.jobs_running.set(2);
        let text = m.encode();
        assert!(text.contains("patchbay_messages_handled_total{service=\"aggregator\"} 3"), "{text}");
        assert!(text.contains("patchbay_handler_seconds_count{service=\"aggregator\"} 1"), "{text}");
        assert!(text.contains("patchbay_mails_stored_total 1"), "{text}");
        assert!(text.contains("patchbay_jobs_running 2"), "{text}");
        assert!(text.contains("# TYPE patchbay_report_seconds histogram"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
