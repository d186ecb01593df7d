//! The workloads a Service rolls out (Deployment, StatefulSet, DaemonSet):
//! what the operator keeps of each, its rollout progress, and the patches
//! that start one. All of it is pure but `get` and `patch`, thin client calls.

use std::fmt::Debug;

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::PodTemplateSpec,
    },
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{
    api::{PreviousTemplate, WorkloadKind, WorkloadTarget},
    install::FIELD_MANAGER,
};

/// Pod-template annotation naming the Redeployment that last rolled the workload out.
pub const REDEPLOYMENT_ANNOTATION: &str = "redeploy.dev/redeployment";
/// Workload annotation: the container image and restart annotation before the
/// current Redeployment's rollout (JSON), for auto-rollback.
pub const PREVIOUS_ANNOTATION: &str = "redeploy.dev/previous";
/// The annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";

/// What the operator keeps of a workload: the few fields it reads, small
/// enough to hold every workload of a large cluster in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub generation: i64,
    observed_generation: i64,
    /// For a patch that must apply to exactly this version.
    pub resource_version: Option<String>,
    pub containers: Vec<ContainerImage>,
    /// What rollouts left on it, behind a pointer: most workloads of a
    /// large cluster carry none of it, and inline it would double the
    /// summary (10,000 summaries are kept).
    marks: Option<Box<RolloutMarks>>,
    /// Progress as the status shows it, once its controller has observed the spec.
    rollout: Progress,
}

#[derive(Clone, Debug, PartialEq)]
struct RolloutMarks {
    redeployment: Option<String>,
    restarted_at: Option<String>,
    previous: Option<PreviousTemplate>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    pub name: String,
    pub image: String,
}

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    InProgress(String),
    Succeeded,
    Failed { reason: String, message: String },
}

/// The workload kinds, for code generic over them.
pub trait WorkloadObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: WorkloadKind;
    fn template(&self) -> &PodTemplateSpec;
    /// Rollout progress from the status alone, assuming it is current.
    fn rollout(&self) -> Progress;
    fn observed_generation(&self) -> i64;

    fn summary(&self) -> Workload {
        let template = self.template();
        let annotation = |name: &str| template.metadata.as_ref()?.annotations.as_ref()?.get(name).cloned();
        let containers = template.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
        let marks = RolloutMarks {
            redeployment: annotation(REDEPLOYMENT_ANNOTATION),
            restarted_at: annotation(RESTARTED_AT_ANNOTATION),
            previous: self
                .meta()
                .annotations
                .as_ref()
                .and_then(|a| a.get(PREVIOUS_ANNOTATION))
                .and_then(|json| serde_json::from_str(json).ok()),
        };
        let marked = marks.redeployment.is_some() || marks.restarted_at.is_some() || marks.previous.is_some();
        Workload {
            kind: Self::KIND,
            resource_version: self.meta().resource_version.clone(),
            generation: self.meta().generation.unwrap_or_default(),
            containers: containers
                .iter()
                .map(|c| ContainerImage { name: c.name.clone(), image: c.image.clone().unwrap_or_default() })
                .collect(),
            marks: marked.then(|| Box::new(marks)),
            observed_generation: self.observed_generation(),
            rollout: self.rollout(),
        }
    }
}

impl WorkloadObject for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;

    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }

    fn observed_generation(&self) -> i64 {
        self.status.as_ref().and_then(|s| s.observed_generation).unwrap_or_default()
    }

    fn rollout(&self) -> Progress {
        let status = self.status.clone().unwrap_or_default();
        let deadline_exceeded = status.conditions.unwrap_or_default().into_iter().find(|c| {
            c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        if let Some(condition) = deadline_exceeded {
            return Progress::Failed {
                reason: "ProgressDeadlineExceeded".into(),
                message: condition.message.unwrap_or_else(|| "the Deployment exceeded its progress deadline".into()),
            };
        }
        let desired = self.spec.replicas.unwrap_or(1);
        let updated = status.updated_replicas.unwrap_or_default();
        let available = status.available_replicas.unwrap_or_default();
        let total = status.replicas.unwrap_or_default();
        if updated >= desired && available >= desired && total <= updated {
            Progress::Succeeded
        } else {
            Progress::InProgress(format!("{updated} of {desired} pods updated, {available} available, {total} in all"))
        }
    }
}

impl WorkloadObject for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;

    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }

    fn observed_generation(&self) -> i64 {
        self.status.as_ref().and_then(|s| s.observed_generation).unwrap_or_default()
    }

    fn rollout(&self) -> Progress {
        let status = self.status.clone().unwrap_or_default();
        let desired = self.spec.replicas.unwrap_or(1);
        let updated = status.updated_replicas.unwrap_or_default();
        let ready = status.ready_replicas.unwrap_or_default();
        let same_revision = status.update_revision.is_some() && status.update_revision == status.current_revision;
        if updated >= desired && ready >= desired && same_revision {
            Progress::Succeeded
        } else {
            Progress::InProgress(format!("{updated} of {desired} pods updated, {ready} ready"))
        }
    }
}

impl WorkloadObject for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;

    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }

    fn observed_generation(&self) -> i64 {
        self.status.as_ref().and_then(|s| s.observed_generation).unwrap_or_default()
    }

    fn rollout(&self) -> Progress {
        let status = self.status.clone().unwrap_or_default();
        let desired = status.desired_number_scheduled;
        let updated = status.updated_number_scheduled.unwrap_or_default();
        let available = status.number_available.unwrap_or_default();
        if updated >= desired && available >= desired {
            Progress::Succeeded
        } else {
            Progress::InProgress(format!("{updated} of {desired} pods updated, {available} available"))
        }
    }
}

impl Workload {
    /// The Redeployment its pod template names.
    pub fn redeployment(&self) -> Option<&str> {
        self.marks.as_ref()?.redeployment.as_deref()
    }

    /// Its pod template's restart annotation.
    pub fn restarted_at(&self) -> Option<&str> {
        self.marks.as_ref()?.restarted_at.as_deref()
    }

    /// What ran before the current Redeployment's rollout, as recorded by [`record_previous`].
    pub fn previous(&self) -> Option<&PreviousTemplate> {
        self.marks.as_ref()?.previous.as_ref()
    }

    /// The container a Service deploys: the one named, or the only one.
    pub fn container(&self, name: Option<&str>) -> Result<&ContainerImage, String> {
        match name {
            Some(name) => self.containers.iter().find(|c| c.name == name).ok_or_else(|| {
                let names: Vec<&str> = self.containers.iter().map(|c| c.name.as_str()).collect();
                format!("has no container `{name}` (its containers: {})", names.join(", "))
            }),
            None => match self.containers.as_slice() {
                [only] => Ok(only),
                _ => Err(format!(
                    "has {} containers: set spec.target.container to the one this Service deploys",
                    self.containers.len()
                )),
            },
        }
    }

    /// How far the rollout that produced `generation` has come.
    pub fn progress(&self, generation: i64) -> Progress {
        if self.observed_generation < generation {
            return Progress::InProgress(format!("waiting for the {:?} controller", self.kind));
        }
        self.rollout.clone()
    }
}

/// The patch `kubectl rollout restart` applies, with a timestamp fixed by the
/// Redeployment so that applying it twice rolls out once.
pub fn restart_patch(redeployment: &str, restarted_at: &str) -> Value {
    json!({ "spec": { "template": { "metadata": { "annotations": {
        RESTARTED_AT_ANNOTATION: restarted_at,
        REDEPLOYMENT_ANNOTATION: redeployment,
    } } } } })
}

/// Sets one container's image (a strategic merge keyed by container name).
pub fn image_patch(redeployment: &str, container: &str, image: &str) -> Value {
    json!({ "spec": { "template": {
        "metadata": { "annotations": { REDEPLOYMENT_ANNOTATION: redeployment } },
        "spec": { "containers": [ { "name": container, "image": image } ] },
    } } })
}

/// Adds to `patch` the record of what ran before it.
pub fn record_previous(patch: &mut Value, previous: &PreviousTemplate) {
    patch["metadata"]["annotations"][PREVIOUS_ANNOTATION] = serde_json::to_string(previous).unwrap_or_default().into();
}

/// Makes `patch` apply only to this version of the workload: the API server
/// answers 409 Conflict if it changed since.
pub fn require_version(patch: &mut Value, resource_version: &str) {
    patch["metadata"]["resourceVersion"] = resource_version.into();
}

/// Restores a container's image and the restart annotation (auto-rollback).
pub fn rollback_patch(container: &str, image: &str, restarted_at: Option<&str>) -> Value {
    json!({ "spec": { "template": {
        "metadata": { "annotations": { RESTARTED_AT_ANNOTATION: restarted_at } },
        "spec": { "containers": [ { "name": container, "image": image } ] },
    } } })
}

/// Reads the workload from the API server.
pub async fn get(client: &Client, namespace: &str, target: &WorkloadTarget) -> kube::Result<Option<Workload>> {
    async fn get_kind<K: WorkloadObject>(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> kube::Result<Option<Workload>> {
        Ok(Api::<K>::namespaced(client.clone(), namespace).get_opt(name).await?.map(|w| w.summary()))
    }
    match target.kind {
        WorkloadKind::Deployment => get_kind::<Deployment>(client, namespace, &target.name).await,
        WorkloadKind::StatefulSet => get_kind::<StatefulSet>(client, namespace, &target.name).await,
        WorkloadKind::DaemonSet => get_kind::<DaemonSet>(client, namespace, &target.name).await,
    }
}

/// The answer a workload patch asks for: the object's metadata alone (a
/// `meta.k8s.io/v1` PartialObjectMetadata), as `kubectl get -o name` and
/// client-go's metadata client do. Only its generation is read, and a whole
/// workload is many times larger for the API server to encode and for the
/// operator to decode, 500 times over in a large App's fan-out.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// Applies a strategic merge `patch` to the workload; returns its generation as patched.
pub async fn patch(client: &Client, namespace: &str, target: &WorkloadTarget, patch: &Value) -> kube::Result<i64> {
    let url = match target.kind {
        WorkloadKind::Deployment => Deployment::url_path(&(), Some(namespace)),
        WorkloadKind::StatefulSet => StatefulSet::url_path(&(), Some(namespace)),
        WorkloadKind::DaemonSet => DaemonSet::url_path(&(), Some(namespace)),
    };
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let mut request = kube::core::Request::new(url)
        .patch(&target.name, &params, &Patch::Strategic(patch))
        .map_err(kube::Error::BuildRequest)?;
    request.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static(METADATA_ONLY));
    let patched: PartialObjectMeta = client.request(request).await?;
    Ok(patched.metadata.generation.unwrap_or_default())
}

/// The Redeployment a workload's pod template names, if any.
pub fn redeployment_of(template: Option<&PodTemplateSpec>) -> Option<String> {
    template?.metadata.as_ref()?.annotations.as_ref()?.get(REDEPLOYMENT_ANNOTATION).cloned()
}

/// `namespace/name` of a workload, for messages.
pub fn describe(kind: WorkloadKind, namespace: &str, name: &str) -> String {
    format!("{kind:?} {namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};

    use super::*;

    fn deployment(generation: i64, status: DeploymentStatus) -> Workload {
        let mut d = Deployment {
            spec: DeploymentSpec { replicas: Some(2), ..Default::default() },
            status: Some(status),
            ..Default::default()
        };
        d.metadata.generation = Some(generation);
        d.summary()
    }

    #[test]
    fn a_deployment_succeeds_once_every_pod_is_updated_and_available() {
        let done = DeploymentStatus {
            observed_generation: Some(3),
            replicas: Some(2),
            updated_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        };
        assert_eq!(deployment(3, done.clone()).progress(3), Progress::Succeeded);
        assert!(matches!(deployment(3, done.clone()).progress(4), Progress::InProgress(_)), "old generation");
        let surging = DeploymentStatus { replicas: Some(3), ..done.clone() };
        assert!(matches!(deployment(3, surging).progress(3), Progress::InProgress(_)), "old pods still running");
        let half = DeploymentStatus { updated_replicas: Some(1), ..done };
        assert!(matches!(deployment(3, half).progress(3), Progress::InProgress(_)));
    }

    #[test]
    fn a_progress_deadline_fails_the_rollout() {
        let stuck = DeploymentStatus {
            observed_generation: Some(2),
            conditions: Some(vec![DeploymentCondition {
                type_: Some("Progressing".into()),
                status: Some("False".into()),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("ReplicaSet \"web-1\" has timed out progressing.".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let Progress::Failed { reason, message } = deployment(2, stuck).progress(2) else { panic!("not failed") };
        assert_eq!(reason, "ProgressDeadlineExceeded");
        assert!(message.contains("timed out"));
    }

    #[test]
    fn a_workload_no_rollout_touched_keeps_no_marks_and_its_summary_stays_small() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": { "name": "web" },
            "spec": { "selector": {}, "template": { "spec": { "containers": [ { "name": "web", "image": "web:1" } ] } } },
        }))
        .expect("a valid Deployment");
        let summary = d.summary();
        assert_eq!((summary.redeployment(), summary.restarted_at(), summary.previous()), (None, None, None));
        assert!(summary.marks.is_none());
        // One summary per workload of the cluster is kept: 216 bytes with the marks inline.
        assert!(std::mem::size_of::<Workload>() <= 128, "{} bytes", std::mem::size_of::<Workload>());
    }

    #[test]
    fn the_summary_keeps_containers_and_the_operators_annotations() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": { "name": "web", "resourceVersion": "42", "generation": 7, "annotations": {
                PREVIOUS_ANNOTATION: r#"{"image":"web:1","restartedAt":"t0"}"#,
            } },
            "spec": { "selector": {}, "template": {
                "metadata": { "annotations": { REDEPLOYMENT_ANNOTATION: "rd-1", RESTARTED_AT_ANNOTATION: "t1" } },
                "spec": { "containers": [ { "name": "web", "image": "web:2" }, { "name": "sidecar", "image": "proxy" } ] },
            } },
        }))
        .expect("a valid Deployment");
        let summary = d.summary();
        assert_eq!(summary.resource_version.as_deref(), Some("42"));
        assert_eq!(summary.redeployment(), Some("rd-1"));
        assert_eq!(summary.restarted_at(), Some("t1"));
        assert_eq!(
            summary.previous(),
            Some(&PreviousTemplate { image: "web:1".into(), restarted_at: Some("t0".into()) })
        );
        assert_eq!(summary.container(Some("web")).map(|c| c.image.as_str()), Ok("web:2"));
        assert!(summary.container(None).is_err_and(|m| m.contains("2 containers")));
        assert!(summary.container(Some("db")).is_err_and(|m| m.contains("web, sidecar")));
        assert!(matches!(summary.progress(8), Progress::InProgress(m) if m.contains("Deployment controller")));
    }

    #[test]
    fn patches_set_only_the_operator_annotations_and_the_image() {
        let restart = restart_patch("rd-1", "2026-11-29T00:00:00Z");
        let annotations = &restart["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations[RESTARTED_AT_ANNOTATION], "2026-11-29T00:00:00Z");
        assert_eq!(annotations[REDEPLOYMENT_ANNOTATION], "rd-1");
        assert_eq!(annotations.as_object().map(|a| a.len()), Some(2), "{restart}");
        assert!(restart["spec"]["template"].get("spec").is_none(), "a restart changes no container: {restart}");
        let patch = image_patch("rd-1", "web", "registry.example.com/web:abc");
        assert_eq!(patch["spec"]["template"]["spec"]["containers"][0]["image"], "registry.example.com/web:abc");
        assert_eq!(patch["spec"]["template"]["metadata"]["annotations"][REDEPLOYMENT_ANNOTATION], "rd-1");
    }

    #[test]
    fn the_previous_record_and_the_version_share_the_metadata() {
        let mut patch = restart_patch("rd-1", "t1");
        record_previous(&mut patch, &PreviousTemplate { image: "web:1".into(), restarted_at: None });
        require_version(&mut patch, "42");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["annotations"][PREVIOUS_ANNOTATION], r#"{"image":"web:1"}"#);
    }
}
