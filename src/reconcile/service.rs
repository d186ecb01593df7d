//! The Service reconciler, the one writer of a Service's status: its source
//! type, whether its target workload exists with the container it deploys,
//! and the builds and deployments its Redeployments recorded in their own
//! status. The status is computed purely ([`desired_status`]) and written by
//! one server-side apply ([`apply_status`]).

use std::{
    borrow::Borrow,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::{Value, json};

use super::Error;
use crate::{
    api::{BuiltImage, Redeployment, Service, ServicePhase, ServiceResult, ServiceStatus, conditions},
    cache::Guarded,
    context::Context,
    install::FIELD_MANAGER,
    workload::{self, Workload},
};

pub const CONTROLLER: &str = "service";
/// Condition type: the target workload exists and has the container.
pub const TARGET_READY: &str = "TargetReady";

pub async fn reconcile(guard: Arc<Guarded<Service>>, context: Arc<Context>) -> Result<Action, Error> {
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
    // The caches are complete (reconcilers start once they are synced); a
    // workload's containers changing, and a Redeployment of this Service
    // building or rolling it out, wake this Service.
    let workload = context.caches.workloads.get(target.kind, &namespace, &target.name);
    let redeployments = context.caches.redeployments_of(&namespace, &service.spec.app);
    let desired = desired_status(service, workload.as_deref(), &redeployments.to_vec(), Timestamp::now());
    let action = if service.status.as_ref() == Some(&desired) && !has_legacy_owner(service) {
        Action::await_change()
    } else {
        let (version, name) = (service.resource_version(), service.name_any());
        let applied = async {
            apply_status(&context.client, &namespace, &name, version.as_deref(), &desired).await?;
            if has_legacy_owner(service) {
                release_legacy_fields(&context.client, &namespace, &name).await?;
            }
            Ok(())
        };
        match applied.await {
            Ok(()) => Action::await_change(),
            // The cached copy is stale: the newer version's event wakes us too.
            Err(kube::Error::Api(status)) if status.code == 409 => Action::requeue(AFTER_CONFLICT),
            Err(error) => return Err(error.into()),
        }
    };
    context.metrics.reconciled(CONTROLLER, started.elapsed());
    Ok(action)
}

/// How soon a Service whose status write met a newer version is looked at again.
const AFTER_CONFLICT: Duration = Duration::from_millis(100);
/// How many builds a Service's status keeps.
pub const KEPT_BUILDS: usize = 10;
/// The field manager that wrote the builds and deployment of a Service's
/// status before this reconciler did (Redeployments wrote them): the
/// reconciler takes its fields over ([`release_legacy_fields`]), so no field
/// is left with two owners.
pub const LEGACY_RECORD_FIELD_MANAGER: &str = "redeploy-operator-records";

/// The Service's whole status (pure): its source type, whether its target
/// `workload` exists with the container it deploys, and what `redeployments`
/// (the cached ones of its App) built and deployed for it, on top of what its
/// status already records (a Redeployment pruned from history is gone from them).
pub fn desired_status(
    service: &Service,
    workload: Option<&Workload>,
    redeployments: &[impl Borrow<Redeployment>],
    now: Timestamp,
) -> ServiceStatus {
    let namespace = service.namespace().unwrap_or_default();
    let target = &service.spec.target;
    let what = workload::describe(target.kind, &namespace, &target.name);
    let (ok, reason, message) = match workload {
        None => (false, "TargetNotFound", format!("{what} does not exist")),
        Some(found) => match found.container(target.container.as_deref()) {
            Ok(container) => (true, "TargetFound", format!("{what} runs container {}", container.name)),
            Err(message) => (false, "ContainerNotFound", format!("{what} {message}")),
        },
    };
    let previous = service.status.clone().unwrap_or_default();
    let generation = service.metadata.generation;
    let condition = conditions::condition_at(&previous.conditions, TARGET_READY, ok, reason, message, generation, now);
    let Deployed { deployed_ref, deployed_image, last_redeployment } = deployed(service, redeployments);
    ServiceStatus {
        observed_generation: generation,
        type_: Some(service.spec.source_type()),
        deployed_ref,
        deployed_image,
        last_redeployment,
        builds: recorded_builds(service, redeployments),
        conditions: vec![condition],
    }
}

/// What a Service's status says it deployed last.
#[derive(Debug, PartialEq)]
struct Deployed {
    deployed_ref: Option<String>,
    deployed_image: Option<String>,
    last_redeployment: Option<String>,
}

/// What `service` deployed last (pure): the newest Succeeded rollout of
/// `redeployments`, else what its status says.
fn deployed(service: &Service, redeployments: &[impl Borrow<Redeployment>]) -> Deployed {
    let newest = of_service(service, redeployments)
        .filter(|(_, result)| result.phase == ServicePhase::Succeeded)
        .max_by_key(|(redeployment, _)| redeployment.order_key());
    match newest {
        Some((redeployment, result)) => Deployed {
            deployed_ref: result.git_ref.clone().or(result.image.clone()),
            deployed_image: result.image.clone(),
            last_redeployment: Some(redeployment.name_any()),
        },
        None => {
            let status = service.status.clone().unwrap_or_default();
            Deployed {
                deployed_ref: status.deployed_ref,
                deployed_image: status.deployed_image,
                last_redeployment: status.last_redeployment,
            }
        }
    }
}

/// Whether `service`'s status already records what `redeployments` built
/// and deployed: until it does, none of them may be pruned from history, or
/// what it recorded would be lost.
pub fn records_current(service: &Service, redeployments: &[impl Borrow<Redeployment>]) -> bool {
    let status = service.status.clone().unwrap_or_default();
    let recorded = Deployed {
        deployed_ref: status.deployed_ref,
        deployed_image: status.deployed_image,
        last_redeployment: status.last_redeployment,
    };
    status.builds == recorded_builds(service, redeployments) && recorded == deployed(service, redeployments)
}

/// The images built for `service`, newest first, at most [`KEPT_BUILDS`], one
/// per commit (pure): those `redeployments` built, newest Redeployment first,
/// then those its status lists that they do not. The one answer to "was this
/// commit built before": the build policies read it too, so a build is known
/// as soon as the Redeployment that made it records it, before the Service's
/// status does.
pub fn recorded_builds(service: &Service, redeployments: &[impl Borrow<Redeployment>]) -> Vec<BuiltImage> {
    let mut built: Vec<(&Redeployment, &BuiltImage)> =
        of_service(service, redeployments).filter_map(|(r, result)| Some((r, result.built.as_ref()?))).collect();
    built.sort_by_key(|(redeployment, _)| std::cmp::Reverse(redeployment.order_key()));
    let listed = service.status.as_ref().map(|s| s.builds.as_slice()).unwrap_or_default();
    let mut builds: Vec<BuiltImage> = Vec::new();
    for image in built.into_iter().map(|(_, image)| image).chain(listed) {
        if !builds.iter().any(|b| b.commit == image.commit) {
            builds.push(image.clone());
        }
    }
    builds.truncate(KEPT_BUILDS);
    builds
}

/// The results of `redeployments` about `service` (same namespace and App).
fn of_service<'a>(
    service: &'a Service,
    redeployments: &'a [impl Borrow<Redeployment>],
) -> impl Iterator<Item = (&'a Redeployment, &'a ServiceResult)> + 'a {
    let (namespace, name) = (service.namespace(), service.name_any());
    redeployments
        .iter()
        .map(Borrow::borrow)
        .filter(move |r| r.namespace() == namespace && r.spec.app == service.spec.app)
        .flat_map(|r| r.status.iter().flat_map(|s| &s.services).map(move |result| (r, result)))
        .filter(move |(_, result)| result.service == name)
}

/// Whether the legacy records manager still owns fields of the Service's status.
fn has_legacy_owner(service: &Service) -> bool {
    service.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(LEGACY_RECORD_FIELD_MANAGER) && m.subresource.as_deref() == Some("status")
    })
}

/// The one way a Service's status is written: a forced server-side apply of
/// the whole status by [`FIELD_MANAGER`], holding only while the Service is
/// still at `resource_version` (else 409 Conflict), so a status computed
/// from a stale copy never drops a build recorded meanwhile.
pub async fn apply_status(
    client: &Client,
    namespace: &str,
    name: &str,
    resource_version: Option<&str>,
    status: &ServiceStatus,
) -> kube::Result<()> {
    let patch = status_patch(resource_version, status);
    Api::<Service>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Gives up every field the legacy records manager owns in the Service's
/// status, by applying nothing as that manager. Applied after
/// [`apply_status`], which now co-owns them all (server-side apply shares a
/// field between managers applying the same value), so none is removed.
async fn release_legacy_fields(client: &Client, namespace: &str, name: &str) -> kube::Result<()> {
    // Not even an empty `status`: that would own the status object itself.
    let nothing = json!({ "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service" });
    Api::<Service>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::apply(LEGACY_RECORD_FIELD_MANAGER), &Patch::Apply(&nothing))
        .await?;
    Ok(())
}

/// The apply configuration of a Service status.
fn status_patch(resource_version: Option<&str>, status: &ServiceStatus) -> Value {
    let mut patch = json!({ "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "status": status });
    if let Some(version) = resource_version {
        patch["metadata"] = json!({ "resourceVersion": version });
    }
    patch
}

#[cfg(test)]
mod tests;
