//! The dispatcher: a complete series in, one job per (test, arch) out.

use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::Publisher;
use patchbay_model::{Body, Envelope, SeriesComplete, TestJob, TestLimits};
use patchbay_runtime::{Handler, HandlerError};

/// One test as the dispatcher needs it.
#[derive(Clone, Debug)]
pub struct TestDef {
    /// Name (a topic word).
    pub name: String,
    /// Script.
    pub script: String,
    /// Arches.
    pub arches: Vec<String>,
    /// Limits.
    pub limits: TestLimits,
    /// Whether the verdict waits for it.
    pub required: bool,
    /// Runner labels needed beyond the arch.
    pub capabilities: Vec<String>,
}

/// A project's repository and tests.
#[derive(Clone, Debug)]
pub struct ProjectTests {
    /// Project name, as in series events.
    pub name: String,
    /// Repository URL or path.
    pub repository: String,
    /// Branch used when a series names no usable base.
    pub branch: String,
    /// Tests.
    pub tests: Vec<TestDef>,
}

/// Finds the series a `Based-on:` or `Depends-on:` line names, as an mbox, when it is stored
/// and complete (the binary implements it over the store).
#[async_trait]
pub trait Dependencies: Send + Sync + 'static {
    /// The mbox of the complete series that `reference` (a Message-ID or a URL) names.
    async fn mbox(&self, reference: &str) -> Option<String>;
}

/// No dependency lookup: `Based-on:` is ignored.
pub struct NoDependencies;

#[async_trait]
impl Dependencies for NoDependencies {
    async fn mbox(&self, _reference: &str) -> Option<String> {
        None
    }
}

/// The dispatcher service.
pub struct Dispatcher {
    projects: Vec<ProjectTests>,
    publisher: Publisher,
    dependencies: Arc<dyn Dependencies>,
}

impl Dispatcher {
    /// Dispatches for `projects`, publishing with `publisher` (sender `dispatcher`).
    pub fn new(projects: Vec<ProjectTests>, publisher: Publisher, dependencies: Arc<dyn Dependencies>) -> Self {
        Dispatcher { projects, publisher, dependencies }
    }

    /// The jobs for one complete series (pure apart from the dependency lookup).
    pub async fn jobs(&self, series: &SeriesComplete) -> Vec<TestJob> {
        let Some(project) = self.projects.iter().find(|p| p.name == series.series.project) else { return Vec::new() };
        let mut dependencies = Vec::new();
        for reference in series.based_on.iter().chain(series.depends_on.iter()) {
            match self.dependencies.mbox(reference).await {
                Some(mbox) => dependencies.push(mbox),
                None => {
                    tracing::info!(series = series.series.id, %reference, "Dependency not stored or not complete; applying without it.")
                }
            }
        }
        let job = |test: &str, arch: &str| TestJob {
            job: format!("{}-v{}-{test}-{arch}", series.series.id, series.series.version),
            series: series.series.clone(),
            test: test.to_string(),
            arch: arch.to_string(),
            capabilities: Vec::new(),
            required: true,
            repository: project.repository.clone(),
            branch: project.branch.clone(),
            base_commit: series.base_commit.clone(),
            dependencies: dependencies.clone(),
            mbox: series.mbox.clone(),
            mbox_base64: series.mbox_base64.clone(),
            script: None,
            limits: TestLimits { wall_secs: 600, memory_mib: 1024, processes: 256, file_size_mib: 1024, output_kib: 256 },
        };
        let mut jobs = vec![job("apply", crate::ANY_ARCH)];
        for t in &project.tests {
            for arch in &t.arches {
                let mut j = job(&t.name, arch);
                j.script = Some(t.script.clone());
                j.limits = t.limits.clone();
                j.required = t.required;
                j.capabilities = std::iter::once(arch.clone()).chain(t.capabilities.iter().cloned()).collect();
                jobs.push(j);
            }
        }
        jobs
    }
}

#[async_trait]
impl Handler for Dispatcher {
    async fn handle(&self, envelope: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        let series: SeriesComplete = serde_json::from_value(envelope.body.clone())
            .map_err(|e| HandlerError::Permanent(format!("not a {} body: {e}", SeriesComplete::SCHEMA)))?;
        let jobs = self.jobs(&series).await;
        if jobs.is_empty() {
            return Ok(());
        }
        let out = jobs
            .iter()
            .map(|j| self.publisher.outgoing(j))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        // One publish: the jobs of a series are queued together or not at all.
        self.publisher.bus().publish(out).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
        tracing::info!(series = series.series.id, version = series.series.version, jobs = jobs.len(), "Series dispatched.");
        Ok(())
    }
}
