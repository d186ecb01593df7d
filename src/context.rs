//! What every reconciler and the hook handler share: the client, the watched
//! caches, settings and metrics.

use std::sync::Arc;

use kube::{
    Client, ResourceExt,
    core::error_boundary::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store, store::WriterDropped},
};

use crate::{
    api::{App, DeploymentProfile, Redeployment, Service},
    hook::index::HookIndex,
    metrics::Metrics,
};

/// Settings of a running operator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Externally visible base URL of the hook, e.g. `https://hooks.example.com`.
    pub public_url: String,
}

/// Watched copies of the objects the hook handler reads on every call.
/// Objects that do not deserialize stay in the stores as errors and are
/// skipped (with a warning when they are first seen), never stalling a watch.
#[derive(Clone)]
pub struct Caches {
    pub apps: Store<DeserializeGuard<App>>,
    pub services: Store<DeserializeGuard<Service>>,
    pub profiles: Store<DeserializeGuard<DeploymentProfile>>,
    pub redeployments: Store<DeserializeGuard<Redeployment>>,
    pub hooks: HookIndex,
}

impl Caches {
    pub fn app(&self, namespace: &str, name: &str) -> Option<App> {
        let guard = self.apps.get(&ObjectRef::new(name).within(namespace))?;
        guard.0.as_ref().ok().cloned()
    }

    /// The valid Services of `app`, by name.
    pub fn services_of(&self, namespace: &str, app: &str) -> Vec<Service> {
        let mut services: Vec<Service> = self
            .services
            .state()
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|s| s.namespace().as_deref() == Some(namespace) && s.spec.app == app)
            .cloned()
            .collect();
        services.sort_by_key(|s| s.name_any());
        services
    }

    /// The valid Redeployments of `app`.
    pub fn redeployments_of(&self, namespace: &str, app: &str) -> Vec<Redeployment> {
        self.redeployments
            .state()
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|r| r.namespace().as_deref() == Some(namespace) && r.spec.app == app)
            .cloned()
            .collect()
    }

    /// The valid DeploymentProfiles of `app`.
    pub fn profiles_of(&self, namespace: &str, app: &str) -> Vec<DeploymentProfile> {
        self.profiles
            .state()
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|p| p.namespace().as_deref() == Some(namespace) && p.spec.app == app)
            .cloned()
            .collect()
    }

    /// Returns once every cache holds a full list.
    pub async fn wait_synced(&self) -> Result<(), WriterDropped> {
        store_ready(&self.apps).await?;
        store_ready(&self.services).await?;
        store_ready(&self.profiles).await?;
        store_ready(&self.redeployments).await?;
        self.hooks.wait_synced().await;
        Ok(())
    }
}

/// Waits until `store` is ready. kube-runtime's readiness future wakes only
/// the task that polled it last, and the App controller waits on the same
/// store, so one waiter can sleep forever: poll again every 100 ms.
async fn store_ready<K>(store: &Store<K>) -> Result<(), WriterDropped>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(ready) = tokio::time::timeout(std::time::Duration::from_millis(100), store.wait_until_ready()).await {
            return ready;
        }
    }
}

pub struct Context {
    pub client: Client,
    /// Publishes Kubernetes Events (on the App) for each step of a Redeployment.
    pub recorder: kube::runtime::events::Recorder,
    pub settings: Settings,
    pub caches: Caches,
    pub metrics: Arc<Metrics>,
}
