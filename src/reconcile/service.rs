//! The Service reconciler: publishes the Service's source type and whether
//! its target workload exists with the container it deploys.

use std::{sync::Arc, time::Instant};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::error_boundary::DeserializeGuard,
    runtime::controller::Action,
};
use serde_json::json;

use super::Error;
use crate::{
    api::{Service, conditions},
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
    let patch = json!({
        "apiVersion": "redeploy.dev/v1alpha1",
        "kind": "Service",
        "status": {
            "observedGeneration": generation,
            "type": service.spec.source_type(),
            "conditions": [condition],
        },
    });
    Api::<Service>::namespaced(context.client.clone(), &namespace)
        .patch_status(&service.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    context.metrics.reconciled(CONTROLLER, started.elapsed());
    Ok(Action::await_change())
}
