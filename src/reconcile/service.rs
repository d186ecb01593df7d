//! The Service reconciler: publishes the Service's source type and whether
//! its target workload exists with the container it deploys. This module is
//! also the one path by which a Service's status is written: server-side
//! apply, each field owned by one field manager (see [`apply_status`]).

use std::{sync::Arc, time::Instant};

use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    core::error_boundary::DeserializeGuard,
    runtime::controller::Action,
};
use serde_json::{Value, json};

use super::Error;
use crate::{
    api::{BuiltImage, Service, conditions},
    context::Context,
    install::FIELD_MANAGER,
    workload,
};

pub const CONTROLLER: &str = "service";
/// Condition type: the target workload exists and has the container.
pub const TARGET_READY: &str = "TargetReady";

pub async fn reconcile(guard: Arc<DeserializeGuard<Service>>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let service = match &guard.0 {
        Ok(service) => service,
        Err(invalid) => {
            return Err(Error::Malformed {
                kind: "Service",
                namespace: invalid.metadata.namespace.clone().unwrap_or_default(),
                name: invalid.metadata.name.clone().unwrap_or_default(),
                message: invalid.error.clone(),
            });
        }
    };
    let namespace = service.namespace().ok_or_else(|| Error::NoNamespace(service.name_any()))?;
    let target = &service.spec.target;
    let what = workload::describe(target.kind, &namespace, &target.name);
    // The workload cache is complete (reconcilers start once it is synced) and
    // a workload's containers changing wakes its Services.
    let (ok, reason, message) = match context.caches.workloads.get(target.kind, &namespace, &target.name) {
        None => (false, "TargetNotFound", format!("{what} does not exist")),
        Some(found) => match found.container(target.container.as_deref()) {
            Ok(container) => (true, "TargetFound", format!("{what} runs container {}", container.name)),
            Err(message) => (false, "ContainerNotFound", format!("{what} {message}")),
        },
    };
    let previous = service.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = service.metadata.generation;
    let condition = conditions::condition(previous, TARGET_READY, ok, reason, message, generation);
    let status = service.status.as_ref();
    let unchanged = status.is_some_and(|s| {
        s.observed_generation == generation
            && s.type_ == Some(service.spec.source_type())
            && s.conditions.iter().filter(|c| c.type_ == TARGET_READY).eq([&condition])
    });
    if unchanged {
        context.metrics.reconciled(CONTROLLER, started.elapsed());
        return Ok(Action::await_change());
    }
    let fields = json!({
        "observedGeneration": generation,
        "type": service.spec.source_type(),
        "conditions": [condition],
    });
    apply_status(&context.client, &namespace, &service.name_any(), FIELD_MANAGER, None, fields).await?;
    context.metrics.reconciled(CONTROLLER, started.elapsed());
    Ok(Action::await_change())
}

/// Field manager of the fields Redeployments record in a Service's status
/// ([`ServiceRecord`]); the reconciler above owns the others under
/// [`FIELD_MANAGER`]. No field has two writers: a manager's apply always
/// carries every field it owns, as server-side apply removes those it omits.
pub const RECORD_FIELD_MANAGER: &str = "redeploy-operator-records";

/// The fields of a Service's status that Redeployments record: its builds
/// and what it deployed last, written together.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceRecord {
    pub builds: Vec<BuiltImage>,
    pub deployed_ref: Option<String>,
    pub deployed_image: Option<String>,
    pub last_redeployment: Option<String>,
}

impl ServiceRecord {
    /// The record as `service` holds it.
    pub fn of(service: &Service) -> Self {
        let status = service.status.clone().unwrap_or_default();
        Self {
            builds: status.builds,
            deployed_ref: status.deployed_ref,
            deployed_image: status.deployed_image,
            last_redeployment: status.last_redeployment,
        }
    }

    /// The status fields, leaving out those never set (an applied `null` is no value to own).
    fn fields(&self) -> Value {
        let mut fields = json!({ "builds": self.builds });
        for (key, value) in [
            ("deployedRef", &self.deployed_ref),
            ("deployedImage", &self.deployed_image),
            ("lastRedeployment", &self.last_redeployment),
        ] {
            if let Some(value) = value {
                fields[key] = value.as_str().into();
            }
        }
        fields
    }
}

/// Applies `record` to the Service's status. The record is computed from the
/// Service as read at `resource_version`: the apply holds only while the
/// Service is still at that version (else 409 Conflict, and the caller reads
/// it again), so a build recorded meanwhile is never dropped by a stale copy.
pub async fn apply_record(
    client: &Client,
    namespace: &str,
    name: &str,
    resource_version: Option<&str>,
    record: &ServiceRecord,
) -> kube::Result<()> {
    apply_status(client, namespace, name, RECORD_FIELD_MANAGER, resource_version, record.fields()).await
}

/// The one way a Service's status is written: a server-side apply of
/// `fields` by `manager`, conditional on `resource_version` when given.
async fn apply_status(
    client: &Client,
    namespace: &str,
    name: &str,
    manager: &str,
    resource_version: Option<&str>,
    fields: Value,
) -> kube::Result<()> {
    let patch = status_patch(resource_version, fields);
    Api::<Service>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// The apply configuration of a Service status.
fn status_patch(resource_version: Option<&str>, fields: Value) -> Value {
    let mut patch = json!({ "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "status": fields });
    if let Some(version) = resource_version {
        patch["metadata"] = json!({ "resourceVersion": version });
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_carries_every_recorded_field_and_the_version_it_was_computed_from() {
        let record = ServiceRecord {
            builds: vec![BuiltImage { commit: "c1".into(), image: "r/web:c1".into(), digest: None }],
            deployed_ref: Some("c1".into()),
            deployed_image: Some("r/web:c1".into()),
            last_redeployment: Some("rd-1".into()),
        };
        let patch = status_patch(Some("42"), record.fields());
        assert_eq!(
            patch,
            json!({
                "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
                "metadata": { "resourceVersion": "42" },
                "status": {
                    "builds": [{ "commit": "c1", "image": "r/web:c1" }],
                    "deployedRef": "c1", "deployedImage": "r/web:c1", "lastRedeployment": "rd-1",
                },
            })
        );
        // The reconciler's own fields are not in it: applying it never drops them.
        let status = patch["status"].as_object().map(|s| s.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        assert!(!status.iter().any(|k| ["conditions", "type", "observedGeneration"].contains(&k.as_str())));
        assert!(status_patch(None, json!({})).get("metadata").is_none());
    }
}
