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
    let (ok, reason, message) = match workload::get(&context.client, &namespace, target).await? {
        None => (false, "TargetNotFound", format!("{what} does not exist")),
        Some(found) => match found.container(target.container.as_deref()) {
            Ok(container) => (true, "TargetFound", format!("{what} runs container {}", container.name)),
            Err(message) => (false, "ContainerNotFound", format!("{what} {message}")),
        },
    };
    let previous = service.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = service.metadata.generation;
    let condition = conditions::condition(previous, TARGET_READY, ok, reason, message, generation);
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

/// Which Services target which workload, so a workload event wakes exactly
/// its Services without scanning them all.
#[derive(Clone, Default)]
pub struct TargetIndex {
    inner: Arc<std::sync::RwLock<TargetMaps>>,
}

type WorkloadKey = (String, crate::api::WorkloadKind, String);

#[derive(Default)]
struct TargetMaps {
    by_workload: std::collections::HashMap<WorkloadKey, std::collections::BTreeSet<String>>,
    by_service: std::collections::HashMap<(String, String), WorkloadKey>,
}

impl TargetIndex {
    /// Records (or moves) the target of `service`.
    pub fn insert(&self, service: &Service) {
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let key = (namespace.clone(), service.spec.target.kind, service.spec.target.name.clone());
        let mut maps = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = maps.by_service.insert((namespace, name.clone()), key.clone())
            && let Some(set) = maps.by_workload.get_mut(&old)
        {
            set.remove(&name);
        }
        maps.by_workload.entry(key).or_default().insert(name);
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        let mut maps = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = maps.by_service.remove(&(namespace.to_string(), name.to_string()))
            && let Some(set) = maps.by_workload.get_mut(&old)
        {
            set.remove(name);
        }
    }

    /// The Services that target this workload.
    pub fn services(
        &self,
        kind: crate::api::WorkloadKind,
        namespace: Option<String>,
        name: String,
    ) -> Vec<kube::runtime::reflector::ObjectRef<DeserializeGuard<Service>>> {
        let namespace = namespace.unwrap_or_default();
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        maps.by_workload
            .get(&(namespace.clone(), kind, name))
            .into_iter()
            .flatten()
            .map(|service| kube::runtime::reflector::ObjectRef::new(service).within(&namespace))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ServiceSpec, WorkloadKind, WorkloadTarget};

    fn service(name: &str, target: &str) -> Service {
        let mut service = Service::new(
            name,
            ServiceSpec { target: WorkloadTarget { name: target.into(), ..Default::default() }, ..Default::default() },
        );
        service.metadata.namespace = Some("ns".into());
        service
    }

    #[test]
    fn workloads_map_to_the_services_that_target_them() {
        let index = TargetIndex::default();
        index.insert(&service("a", "web"));
        index.insert(&service("b", "web"));
        let names = |target: &str| {
            index
                .services(WorkloadKind::Deployment, Some("ns".into()), target.into())
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("web"), ["a", "b"]);
        index.insert(&service("b", "api"));
        assert_eq!((names("web"), names("api")), (vec!["a".to_string()], vec!["b".to_string()]));
        index.remove("ns", "a");
        assert!(names("web").is_empty());
        assert!(index.services(WorkloadKind::StatefulSet, Some("ns".into()), "api".into()).is_empty());
    }
}
