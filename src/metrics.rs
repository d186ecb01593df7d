//! Prometheus metrics, served on `/metrics` of the admin port. Every label
//! takes values from a closed set, so series stay bounded whatever callers send.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    api::{Phase, Provider},
    hook::event::EventKind,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub provider: ProviderLabel,
    pub event: EventLabel,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfoLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

/// What `redeploy_build_info` reports: the crate's version and the commit it was built from (`build.rs`).
pub const BUILD_INFO: BuildInfoLabels =
    BuildInfoLabels { version: env!("CARGO_PKG_VERSION"), commit: env!("REDEPLOY_GIT_COMMIT") };

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

/// The provider, or `unknown` before the payload was parsed; its value is
/// the provider definition's `metrics_label`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ProviderLabel(Option<Provider>);

impl From<Option<Provider>> for ProviderLabel {
    fn from(provider: Option<Provider>) -> Self {
        Self(provider)
    }
}

impl EncodeLabelValue for ProviderLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write as _;
        encoder
            .write_str(self.0.map_or("unknown", |provider| crate::hook::providers::definition(provider).metrics_label))
    }
}

/// The kind of event, or `unknown` before the payload was parsed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EventLabel {
    push,
    deployment,
    image_push,
    ping,
    ignored,
    no_git_info,
    unknown,
}

impl From<Option<EventKind>> for EventLabel {
    fn from(kind: Option<EventKind>) -> Self {
        match kind {
            Some(EventKind::Push) => Self::push,
            Some(EventKind::Deployment) => Self::deployment,
            Some(EventKind::ImagePush) => Self::image_push,
            Some(EventKind::Ping) => Self::ping,
            Some(EventKind::Ignored) => Self::ignored,
            Some(EventKind::NoGitInfo) => Self::no_git_info,
            None => Self::unknown,
        }
    }
}

/// How a hook call ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    accepted,
    redelivery,
    no_match,
    ignored,
    bad_request,
    unauthorized,
    forbidden,
    not_found,
    too_large,
    unprocessable,
    rate_limited,
    /// Refused before its body was read: the bodies in flight fill the operator's budget.
    overloaded,
    timeout,
    unavailable,
    /// Not served yet: the hook index has not loaded every hook Secret.
    starting,
    /// `dry_run=1`: planned and answered, nothing stored.
    dry_run,
}

pub struct Metrics {
    registry: Registry,
    pub hooks: Family<HookLabels, Counter>,
    pub hook_duration: Family<OutcomeLabels, Histogram>,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    pub reconcile_duration: Family<ReconcileLabels, Histogram>,
    pub redeployments: Family<PhaseLabels, Counter>,
    pub redeployment_duration: Family<PhaseLabels, Histogram>,
    /// Hook calls left out of an App's `status.recentDeliveries` (the batcher's queue was full, or its write failed).
    pub deliveries_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("redeploy");
        let build_info = Family::<BuildInfoLabels, Gauge>::default();
        build_info.get_or_create(&BUILD_INFO).set(1);
        registry.register("build_info", "The running binary's version and commit (always 1)", build_info);
        let hooks = Family::<HookLabels, Counter>::default();
        registry.register("hook_requests", "Hook calls by provider, event kind and outcome", hooks.clone());
        let hook_duration = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register_with_unit(
            "hook_duration",
            "Time to answer a hook call, by outcome",
            prometheus_client::registry::Unit::Seconds,
            hook_duration.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciliations", "Reconciliations by controller", reconciles.clone());
        let reconcile_errors = Family::<ReconcileErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by controller and error",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<ReconcileLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconciliation took",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        let redeployments = Family::<PhaseLabels, Counter>::default();
        registry.register("redeployments_finished", "Redeployments finished, by final phase", redeployments.clone());
        let redeployment_duration = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.5, 2.0, 14))
        });
        registry.register_with_unit(
            "redeployment_duration",
            "Time from a Redeployment's creation to its end, by final phase",
            prometheus_client::registry::Unit::Seconds,
            redeployment_duration.clone(),
        );
        let deliveries_dropped = Counter::default();
        registry.register(
            "hook_deliveries_dropped",
            "Hook calls left out of status.recentDeliveries (queue full or write failed)",
            deliveries_dropped.clone(),
        );
        Self {
            registry,
            deliveries_dropped,
            hooks,
            hook_duration,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            redeployments,
            redeployment_duration,
        }
    }
}

impl Metrics {
    pub fn hook_answered(&self, provider: ProviderLabel, event: EventLabel, outcome: Outcome, took: Duration) {
        self.hooks.get_or_create(&HookLabels { provider, event, outcome }).inc();
        self.hook_duration.get_or_create(&OutcomeLabels { outcome }).observe(took.as_secs_f64());
    }

    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        let labels = ReconcileLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn reconcile_failed(&self, controller: &'static str, error: &'static str) {
        self.reconcile_errors.get_or_create(&ReconcileErrorLabels { controller, error }).inc();
    }

    /// A Redeployment reached its final `phase`, `took` after it was created.
    pub fn redeployment_finished(&self, phase: Phase, took: Duration) {
        let phase = match phase {
            Phase::Pending => "pending",
            Phase::Building => "building",
            Phase::Deploying => "deploying",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Superseded => "superseded",
            Phase::Canceled => "canceled",
        };
        let labels = PhaseLabels { phase };
        self.redeployments.get_or_create(&labels).inc();
        self.redeployment_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commit `git` says this checkout is at, if it is one.
    fn head() -> Option<String> {
        let output = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    #[test]
    fn build_info_names_the_version_and_the_commit_built() {
        let rendered = Metrics::default().render();
        let line = rendered.lines().find(|l| l.starts_with("redeploy_build_info{")).unwrap_or_default();
        let commit = head().unwrap_or_else(|| "unknown".into());
        assert_eq!(
            line,
            format!("redeploy_build_info{{version=\"{}\",commit=\"{commit}\"}} 1", env!("CARGO_PKG_VERSION"))
        );
        let version = crate::cli::VERSION;
        assert_eq!(version, format!("{} (commit {commit})", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn dash_dash_version_prints_the_version_and_the_commit() {
        use clap::Parser;
        let printed = match crate::cli::Cli::try_parse_from(["redeploy-operator", "--version"]) {
            Ok(_) => panic!("--version parsed as a command"),
            Err(error) => (error.kind(), error.to_string()),
        };
        assert_eq!(printed.0, clap::error::ErrorKind::DisplayVersion);
        assert_eq!(printed.1.trim(), format!("redeploy-operator {}", crate::cli::VERSION));
    }
}
