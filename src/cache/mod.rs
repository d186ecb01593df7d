//! The watched copies of the cluster every reconciler and the hook handler
//! read: one watch per kind, objects kept without what no reader needs,
//! workloads kept as small summaries. A malformed object stays in its store
//! as an error, is skipped by every reader, and never stalls a watch.

mod guarded;
pub mod index;
pub mod known;
mod scope;
mod service_index;
mod watch;
mod workloads;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::{
    Resource, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

pub use self::{
    guarded::Guarded,
    index::{Index, Synced, run_index},
    scope::Scope,
    service_index::{Indexed, ServiceIndex},
    watch::{Change, SharedWriter, Trigger, watch_into},
    workloads::{WorkloadChange, WorkloadIndex},
};
use crate::{
    api::{App, DeploymentProfile, Redeployment, Service, ServiceResult},
    hook::{index::HookIndex, signature_keys::SignatureKeys},
};

#[derive(Clone)]
pub struct Caches {
    pub apps: Store<Guarded<App>>,
    pub services: Store<Guarded<Service>>,
    /// Which Services belong to which App and target which workload.
    pub service_index: ServiceIndex,
    pub profiles: Store<Guarded<DeploymentProfile>>,
    pub redeployments: Store<Guarded<Redeployment>>,
    /// Stores and reconciles a Redeployment this process created without
    /// waiting for its watch ([`OwnRedeployments`]).
    pub own_redeployments: OwnRedeployments,
    /// The build Jobs (labelled [`crate::build::REDEPLOYMENT_LABEL`]). Not
    /// waited for: a pass that does not find a Job here reads it.
    pub jobs: Store<Job>,
    pub workloads: WorkloadIndex,
    pub hooks: HookIndex,
    /// The hooks' signature keys read so far, and the versions of the Secrets holding them.
    pub signature_keys: SignatureKeys,
    /// One per store above: set once its watches have listed.
    pub listed: Vec<Synced>,
    /// Set once [`Caches::wait_synced`] has returned.
    pub synced: Arc<AtomicBool>,
}

impl Caches {
    pub fn app(&self, namespace: &str, name: &str) -> Option<App> {
        let guard = self.apps.get(&ObjectRef::new(name).within(namespace))?;
        guard.0.as_ref().ok().cloned()
    }

    /// The valid Services of `app`, by name.
    pub fn services_of(&self, namespace: &str, app: &str) -> Vec<Service> {
        self.service_index
            .services_of(namespace, app)
            .into_iter()
            .filter_map(|name| self.services.get(&ObjectRef::new(&name).within(namespace)))
            .filter_map(|guard| guard.0.as_ref().ok().filter(|s| s.spec.app == app).cloned())
            .collect()
    }

    /// The valid Redeployments of `app`, as the cache holds them: one of a
    /// large App names hundreds of Services, and each of them reads it, so
    /// a copy per reader would cost megabytes at once.
    pub fn redeployments_of(&self, namespace: &str, app: &str) -> Shared<Redeployment> {
        of_app(&self.redeployments, namespace, app, |r| &r.spec.app)
    }

    /// The valid DeploymentProfiles of `app`.
    pub fn profiles_of(&self, namespace: &str, app: &str) -> Vec<DeploymentProfile> {
        of_app(&self.profiles, namespace, app, |p| &p.spec.app).iter().cloned().collect()
    }

    /// Returns once every cache holds a full list.
    pub async fn wait_synced(&self) {
        for store in &self.listed {
            store.wait().await;
        }
        self.workloads.wait_synced().await;
        self.hooks.wait_synced().await;
        self.synced.store(true, Ordering::Release);
    }

    /// True once every cache holds a full list.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// The Redeployment store's writer and the Redeployment reconciler's
/// trigger, for what this process itself creates and finds gone.
#[derive(Clone)]
pub struct OwnRedeployments {
    pub writer: SharedWriter<Guarded<Redeployment>>,
    pub trigger: Trigger<Guarded<Redeployment>>,
}

impl OwnRedeployments {
    /// The hook created `redeployment`: its first pass starts now, not once
    /// the watch delivers it (a watch event under load can take tens of
    /// milliseconds, on the path from the call to the rollout).
    pub fn created(&self, redeployment: &Redeployment) {
        let (namespace, name) = (redeployment.namespace().unwrap_or_default(), redeployment.name_any());
        if self.writer.created(Guarded(Ok(redeployment.clone()))) {
            self.trigger.reconcile(&namespace, &name);
        }
    }

    /// The API server answered that `namespace/name` does not exist.
    pub fn gone(&self, namespace: &str, name: &str) {
        self.writer.gone(namespace, name);
    }
}

/// Valid objects of a store, shared with it rather than copied.
#[derive(Debug)]
pub struct Shared<K>(Vec<Arc<Guarded<K>>>);

impl<K> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> Default for Shared<K> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

/// Objects of no store (tests, and what a pass adds to what it read).
impl<K> From<Vec<K>> for Shared<K> {
    fn from(objects: Vec<K>) -> Self {
        Self(objects.into_iter().map(|object| Arc::new(Guarded(Ok(object)))).collect())
    }
}

impl<K> Shared<K> {
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.0.iter().filter_map(|guard| guard.0.as_ref().ok())
    }

    pub fn to_vec(&self) -> Vec<&K> {
        self.iter().collect()
    }
}

/// The valid objects of `store` in `namespace` that belong to `app`.
fn of_app<K>(store: &Store<Guarded<K>>, namespace: &str, app: &str, app_of: impl Fn(&K) -> &String) -> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let of_app = |o: &K| o.namespace().as_deref() == Some(namespace) && app_of(o) == app;
    Shared(store.state().into_iter().filter(|guard| guard.0.as_ref().is_ok_and(of_app)).collect())
}

/// Annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reader of a cached object needs: every managed-fields
/// entry but those of the managers a reader asks about ([`KEPT_MANAGERS`]:
/// the Service reconciler takes over what the legacy records manager owns),
/// and of those their field sets; and the copy `kubectl apply` keeps, often
/// most of a small object's size. With 10,000 Services the entries of their
/// creator and of this operator alone cost megabytes.
pub fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    if let Some(entries) = meta.managed_fields.take() {
        let kept: Vec<ManagedFieldsEntry> = entries
            .into_iter()
            .filter(|entry| entry.manager.as_deref().is_some_and(|manager| KEPT_MANAGERS.contains(&manager)))
            .map(|entry| ManagedFieldsEntry {
                manager: entry.manager,
                operation: entry.operation,
                subresource: entry.subresource,
                ..Default::default()
            })
            .collect();
        meta.managed_fields = (!kept.is_empty()).then_some(kept);
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// A finished Redeployment as the cache keeps it: the history its readers
/// still ask of one (its order, its phase, whether GitHub heard, and per
/// Service the phase and what was built and deployed: the Service status,
/// build reuse and pruning read those), without its plan, decisions, Git
/// details and messages. An App fanned out to 500 Services keeps 20 finished
/// ones by default: whole, they would be most of the operator's memory. A
/// pass over a finished Redeployment reads it from the API server instead
/// (see `reconcile::redeployment`), so nothing is ever written from this copy.
pub fn as_history_when_finished(mut guard: Guarded<Redeployment>) -> Guarded<Redeployment> {
    if let Ok(redeployment) = guard.0.as_mut()
        && redeployment.is_finished()
    {
        let spec = &mut redeployment.spec;
        (spec.plan, spec.decisions, spec.services, spec.git) = (Vec::new(), Vec::new(), Vec::new(), None);
        if let Some(status) = redeployment.status.as_mut() {
            (status.message, status.conditions) = (None, Vec::new());
            for result in &mut status.services {
                *result = ServiceResult {
                    service: std::mem::take(&mut result.service),
                    phase: result.phase,
                    git_ref: result.git_ref.take(),
                    image: result.image.take(),
                    built: result.built.take(),
                    ..Default::default()
                };
            }
            status.services.shrink_to_fit();
        }
    }
    guard
}

/// The field managers whose entries a reader of a cached object looks for.
const KEPT_MANAGERS: &[&str] = &[crate::reconcile::service::LEGACY_RECORD_FIELD_MANAGER];

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::FieldsV1, jiff::Timestamp};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::{
        api::Phase,
        reconcile::service::{self, LEGACY_RECORD_FIELD_MANAGER},
    };

    #[test]
    fn slim_keeps_only_the_managers_a_reader_asks_about_without_their_field_sets() {
        let entry = |manager: &str, subresource: Option<&str>| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            subresource: subresource.map(Into::into),
            fields_v1: Some(FieldsV1(serde_json::json!({ "f:status": {} }))),
            ..Default::default()
        };
        let annotations = BTreeMap::from([(LAST_APPLIED.to_string(), "{}".to_string()), ("a".into(), "b".into())]);
        let mut map = ConfigMap {
            metadata: ObjectMeta {
                managed_fields: Some(vec![entry("kubectl", None), entry(LEGACY_RECORD_FIELD_MANAGER, Some("status"))]),
                annotations: Some(annotations),
                ..Default::default()
            },
            ..Default::default()
        };
        slim(&mut map);
        let legacy = ManagedFieldsEntry { fields_v1: None, ..entry(LEGACY_RECORD_FIELD_MANAGER, Some("status")) };
        assert_eq!(map.metadata.managed_fields, Some(vec![legacy]));
        assert_eq!(map.metadata.annotations, Some(BTreeMap::from([("a".into(), "b".into())])));

        map.metadata.managed_fields = Some(vec![entry("kubectl", None)]);
        slim(&mut map);
        assert_eq!(map.metadata.managed_fields, None);
    }

    fn redeployment(phase: Phase) -> Redeployment {
        let object = serde_json::json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment",
            "metadata": { "name": "shop-1", "namespace": "ns", "creationTimestamp": "2026-12-01T10:00:00Z" },
            "spec": {
                "app": "shop",
                "trigger": { "provider": "github", "event": "push", "receivedAt": "2026-12-01T10:00:00.000000Z" },
                "git": { "repository": "acme/shop", "branch": "main", "sha": "0123456789abcdef0123456789abcdef01234567" },
                "plan": [ { "service": "web", "action": "build", "ref": "0123456789abcdef0123456789abcdef01234567" },
                          { "service": "worker", "action": "restart" } ],
                "decisions": [ { "service": "web", "decision": "deployed", "reason": "pushed to main" } ],
                "githubDeployment": 7,
            },
            "status": {
                "phase": phase, "message": "2 of 2 Services done", "githubState": "success",
                "services": [
                    { "service": "web", "phase": "Succeeded", "ref": "0123456789abcdef0123456789abcdef01234567",
                      "image": "registry.test/shop/web:0123456", "buildJob": "shop-1-web",
                      "built": { "commit": "0123456789abcdef0123456789abcdef01234567", "image": "registry.test/shop/web:0123456" },
                      "rolloutGeneration": 4, "previous": { "image": "registry.test/shop/web:old" },
                      "message": "Deployment ns/web rolled out", "startedAt": "2026-12-01T10:00:01Z" },
                    { "service": "worker", "phase": "Failed", "message": "Deployment ns/worker failed to roll out" },
                ],
            },
        });
        serde_json::from_value(object).unwrap_or_else(|e| panic!("a valid Redeployment: {e}"))
    }

    #[test]
    fn a_finished_redeployment_is_kept_as_what_its_readers_ask_of_history() {
        let full = redeployment(Phase::Succeeded);
        let Guarded(Ok(kept)) = as_history_when_finished(Guarded(Ok(full.clone()))) else { panic!("still valid") };
        assert!(kept.spec.plan.is_empty() && kept.spec.decisions.is_empty() && kept.spec.git.is_none());
        assert!(kept.status.as_ref().is_some_and(|s| s.message.is_none() && s.services[0].previous.is_none()));

        // What every reader of a cached finished Redeployment computes from it is the same.
        assert_eq!((kept.is_finished(), kept.order_key()), (full.is_finished(), full.order_key()));
        assert_eq!(crate::reconcile::redeployment::is_done(&kept), crate::reconcile::redeployment::is_done(&full));
        for name in ["web", "worker", "other"] {
            let service: Service = serde_json::from_value(serde_json::json!({
                "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
                "metadata": { "name": name, "namespace": "ns", "generation": 1 },
                "spec": { "app": "shop", "target": { "kind": "Deployment", "name": name } },
            }))
            .unwrap_or_else(|e| panic!("a valid Service: {e}"));
            let now = Timestamp::UNIX_EPOCH;
            let (kept, full) = ([&kept], [&full]);
            assert_eq!(
                service::desired_status(&service, None, &kept, now),
                service::desired_status(&service, None, &full, now)
            );
            assert_eq!(service::recorded_builds(&service, &kept), service::recorded_builds(&service, &full));
            assert_eq!(service::records_current(&service, &kept), service::records_current(&service, &full));
        }
    }

    #[test]
    fn an_unfinished_redeployment_is_kept_whole() {
        for phase in [Phase::Pending, Phase::Building, Phase::Deploying] {
            let full = redeployment(phase);
            let Guarded(Ok(kept)) = as_history_when_finished(Guarded(Ok(full.clone()))) else { panic!("still valid") };
            assert_eq!((&kept.spec, &kept.status), (&full.spec, &full.status));
        }
    }
}
