//! The workloads a Service rolls out (Deployment, StatefulSet, DaemonSet):
//! reading their rollout progress and building the patches that start one.
//! Progress and patches are pure; `get` and `patch` are thin client calls.

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    core::v1::{Container, PodTemplateSpec},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
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

#[derive(Clone, Debug)]
pub enum Workload {
    Deployment(Deployment),
    StatefulSet(StatefulSet),
    DaemonSet(DaemonSet),
}

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    InProgress(String),
    Succeeded,
    Failed { reason: String, message: String },
}

impl Workload {
    pub fn generation(&self) -> i64 {
        match self {
            Workload::Deployment(w) => w.metadata.generation,
            Workload::StatefulSet(w) => w.metadata.generation,
            Workload::DaemonSet(w) => w.metadata.generation,
        }
        .unwrap_or_default()
    }

    pub fn template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Workload::Deployment(w) => Some(&w.spec.template),
            Workload::StatefulSet(w) => Some(&w.spec.template),
            Workload::DaemonSet(w) => Some(&w.spec.template),
        }
    }

    /// The container a Service deploys: the one named, or the only one.
    pub fn container(&self, name: Option<&str>) -> Result<&Container, String> {
        let containers =
            self.template().and_then(|t| t.spec.as_ref()).map(|s| s.containers.as_slice()).unwrap_or_default();
        match name {
            Some(name) => containers.iter().find(|c| c.name == name).ok_or_else(|| {
                let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
                format!("has no container `{name}` (its containers: {})", names.join(", "))
            }),
            None => match containers {
                [only] => Ok(only),
                _ => Err(format!(
                    "has {} containers: set spec.target.container to the one this Service deploys",
                    containers.len()
                )),
            },
        }
    }

    /// What ran before the current Redeployment's rollout, as recorded by [`record_previous`].
    pub fn previous(&self) -> Option<PreviousTemplate> {
        let metadata = match self {
            Workload::Deployment(w) => &w.metadata,
            Workload::StatefulSet(w) => &w.metadata,
            Workload::DaemonSet(w) => &w.metadata,
        };
        serde_json::from_str(metadata.annotations.as_ref()?.get(PREVIOUS_ANNOTATION)?).ok()
    }

    /// How far the rollout that produced `generation` has come.
    pub fn progress(&self, generation: i64) -> Progress {
        match self {
            Workload::Deployment(d) => deployment_progress(d, generation),
            Workload::StatefulSet(s) => {
                let status = s.status.clone().unwrap_or_default();
                let desired = s.spec.replicas.unwrap_or(1);
                if status.observed_generation.unwrap_or_default() < generation {
                    return Progress::InProgress("waiting for the StatefulSet controller".into());
                }
                let updated = status.updated_replicas.unwrap_or_default();
                let ready = status.ready_replicas.unwrap_or_default();
                let same_revision =
                    status.update_revision.is_some() && status.update_revision == status.current_revision;
                if updated >= desired && ready >= desired && same_revision {
                    Progress::Succeeded
                } else {
                    Progress::InProgress(format!("{updated} of {desired} pods updated, {ready} ready"))
                }
            }
            Workload::DaemonSet(d) => {
                let status = d.status.clone().unwrap_or_default();
                if status.observed_generation.unwrap_or_default() < generation {
                    return Progress::InProgress("waiting for the DaemonSet controller".into());
                }
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
    }
}

fn deployment_progress(deployment: &Deployment, generation: i64) -> Progress {
    let status = deployment.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or_default() < generation {
        return Progress::InProgress("waiting for the Deployment controller".into());
    }
    let deadline_exceeded =
        status.conditions.unwrap_or_default().into_iter().find(|c| {
            c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    if let Some(condition) = deadline_exceeded {
        return Progress::Failed {
            reason: "ProgressDeadlineExceeded".into(),
            message: condition.message.unwrap_or_else(|| "the Deployment exceeded its progress deadline".into()),
        };
    }
    let desired = deployment.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or_default();
    let available = status.available_replicas.unwrap_or_default();
    let total = status.replicas.unwrap_or_default();
    if updated >= desired && available >= desired && total <= updated {
        Progress::Succeeded
    } else {
        Progress::InProgress(format!("{updated} of {desired} pods updated, {available} available, {total} in all"))
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
    patch["metadata"] = json!({ "annotations": {
        PREVIOUS_ANNOTATION: serde_json::to_string(previous).unwrap_or_default(),
    } });
}

/// Restores a container's image and the restart annotation (auto-rollback).
pub fn rollback_patch(container: &str, image: &str, restarted_at: Option<&str>) -> Value {
    json!({ "spec": { "template": {
        "metadata": { "annotations": { RESTARTED_AT_ANNOTATION: restarted_at } },
        "spec": { "containers": [ { "name": container, "image": image } ] },
    } } })
}

pub async fn get(client: &Client, namespace: &str, target: &WorkloadTarget) -> kube::Result<Option<Workload>> {
    Ok(match target.kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .get_opt(&target.name)
            .await?
            .map(Workload::Deployment),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .get_opt(&target.name)
            .await?
            .map(Workload::StatefulSet),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .get_opt(&target.name)
            .await?
            .map(Workload::DaemonSet),
    })
}

pub async fn patch(client: &Client, namespace: &str, target: &WorkloadTarget, patch: &Value) -> kube::Result<Workload> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let patch = Patch::Strategic(patch);
    Ok(match target.kind {
        WorkloadKind::Deployment => Workload::Deployment(
            Api::<Deployment>::namespaced(client.clone(), namespace).patch(&target.name, &params, &patch).await?,
        ),
        WorkloadKind::StatefulSet => Workload::StatefulSet(
            Api::<StatefulSet>::namespaced(client.clone(), namespace).patch(&target.name, &params, &patch).await?,
        ),
        WorkloadKind::DaemonSet => Workload::DaemonSet(
            Api::<DaemonSet>::namespaced(client.clone(), namespace).patch(&target.name, &params, &patch).await?,
        ),
    })
}

/// The Redeployment a workload's pod template names, if any.
pub fn redeployment_of(template: Option<&PodTemplateSpec>) -> Option<String> {
    template?.metadata.as_ref()?.annotations.as_ref()?.get(REDEPLOYMENT_ANNOTATION).cloned()
}

/// `namespace/name` of a workload, for messages.
pub fn describe(kind: WorkloadKind, namespace: &str, name: &str) -> String {
    format!("{kind:?} {namespace}/{name}")
}

impl Workload {
    pub fn name(&self) -> String {
        match self {
            Workload::Deployment(w) => w.name_any(),
            Workload::StatefulSet(w) => w.name_any(),
            Workload::DaemonSet(w) => w.name_any(),
        }
    }
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
        Workload::Deployment(d)
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
    fn patches_are_idempotent_values() {
        assert_eq!(restart_patch("rd-1", "2026-11-29T00:00:00Z"), restart_patch("rd-1", "2026-11-29T00:00:00Z"));
        let patch = image_patch("rd-1", "web", "registry.example.com/web:abc");
        assert_eq!(patch["spec"]["template"]["spec"]["containers"][0]["image"], "registry.example.com/web:abc");
        assert_eq!(patch["spec"]["template"]["metadata"]["annotations"][REDEPLOYMENT_ANNOTATION], "rd-1");
    }
}
