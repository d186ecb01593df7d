//! What every reconciler and the hook handler share: the client, the watched
//! caches, settings and metrics.

use std::sync::Arc;

use kube::Client;

pub use crate::cache::Caches;
use crate::metrics::Metrics;

/// Settings of a running operator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Externally visible base URL of the hook, e.g. `https://hooks.example.com`.
    pub public_url: String,
    /// The GitHub REST API, for continuous deploy (`https://api.github.com`).
    pub github_api_url: String,
    /// The image of the default build Job (BuildKit; see [`crate::build`]).
    pub builder_image: String,
    /// Registries (`host` or `host:port`) asked for digests over plain HTTP,
    /// besides the loopback ones.
    pub insecure_registries: Vec<String>,
}

pub struct Context {
    pub client: Client,
    /// The one HTTP client, for registries and the GitHub API ([`crate::http`]).
    pub http: reqwest::Client,
    /// Publishes Kubernetes Events on the App: one when a Redeployment ends, and one for each failure.
    pub recorder: kube::runtime::events::Recorder,
    pub settings: Settings,
    pub caches: Caches,
    pub metrics: Arc<Metrics>,
    /// The versions of the objects the reconcilers last wrote or read.
    pub known_versions: crate::cache::known::KnownVersions,
    /// Redeployment statuses decided and not written yet.
    pub held_statuses: crate::reconcile::redeployment::HeldStatuses,
}
