//! Which Services belong to which App and target which workload, so a
//! hook call or a workload event finds its Services without scanning them all.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
};

use kube::ResourceExt;

use crate::api::{Service, WorkloadKind};

type WorkloadKey = (String, WorkloadKind, String);
type AppKey = (String, String);

/// What recording a Service changed in the Apps' lists of Services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Indexed {
    /// It belongs to the App it belonged to.
    Unchanged,
    /// It was not indexed.
    New,
    /// It belonged to App `from` before.
    Moved { from: String },
}

#[derive(Clone, Default)]
pub struct ServiceIndex {
    inner: Arc<RwLock<Maps>>,
}

#[derive(Default)]
struct Maps {
    by_workload: HashMap<WorkloadKey, BTreeSet<String>>,
    by_app: HashMap<AppKey, BTreeSet<String>>,
    /// (namespace, Service) -> where it is indexed.
    by_service: HashMap<(String, String), (AppKey, WorkloadKey)>,
}

impl ServiceIndex {
    /// Records (or moves) `service`; says whether the Apps' lists of Services changed.
    pub fn insert(&self, service: &Service) -> Indexed {
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let app = (namespace.clone(), service.spec.app.clone());
        let workload = (namespace.clone(), service.spec.target.kind, service.spec.target.name.clone());
        let mut maps = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let before = maps.unlink(&namespace, &name);
        let indexed = match before {
            None => Indexed::New,
            Some(before) if before == app.1 => Indexed::Unchanged,
            Some(before) => Indexed::Moved { from: before },
        };
        maps.by_app.entry(app.clone()).or_default().insert(name.clone());
        maps.by_workload.entry(workload.clone()).or_default().insert(name.clone());
        maps.by_service.insert((namespace, name), (app, workload));
        indexed
    }

    /// Forgets a Service; returns the App it belonged to.
    pub fn remove(&self, namespace: &str, name: &str) -> Option<String> {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).unlink(namespace, name)
    }

    /// Names of the Services that target this workload.
    pub fn targeting(&self, kind: WorkloadKind, namespace: &str, name: &str) -> Vec<String> {
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), kind, name.to_string());
        maps.by_workload.get(&key).into_iter().flatten().cloned().collect()
    }

    /// Names of the Services of `app`, sorted.
    pub fn services_of(&self, namespace: &str, app: &str) -> Vec<String> {
        let maps = self.inner.read().unwrap_or_else(|e| e.into_inner());
        maps.by_app.get(&(namespace.to_string(), app.to_string())).into_iter().flatten().cloned().collect()
    }
}

impl Maps {
    /// Removes a Service from every map; returns the App it belonged to.
    fn unlink(&mut self, namespace: &str, name: &str) -> Option<String> {
        let (app, workload) = self.by_service.remove(&(namespace.to_string(), name.to_string()))?;
        remove_from(&mut self.by_app, &app, name);
        remove_from(&mut self.by_workload, &workload, name);
        Some(app.1)
    }
}

fn remove_from<K: Eq + std::hash::Hash>(map: &mut HashMap<K, BTreeSet<String>>, key: &K, name: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(name);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ServiceSpec, WorkloadTarget};

    fn service(name: &str, app: &str, target: &str) -> Service {
        let spec = ServiceSpec {
            app: app.into(),
            target: WorkloadTarget { name: target.into(), ..Default::default() },
            ..Default::default()
        };
        let mut service = Service::new(name, spec);
        service.metadata.namespace = Some("ns".into());
        service
    }

    #[test]
    fn workloads_and_apps_map_to_their_services() {
        let index = ServiceIndex::default();
        assert_eq!(index.insert(&service("a", "shop", "web")), Indexed::New);
        assert_eq!(index.insert(&service("b", "shop", "web")), Indexed::New);
        assert_eq!(index.insert(&service("b", "shop", "web")), Indexed::Unchanged, "the same App");
        let targeting = |target: &str| index.targeting(WorkloadKind::Deployment, "ns", target);
        assert_eq!(targeting("web"), ["a", "b"]);
        assert_eq!(index.services_of("ns", "shop"), ["a", "b"]);

        assert_eq!(index.insert(&service("b", "blog", "api")), Indexed::Moved { from: "shop".into() });
        assert_eq!((targeting("web"), targeting("api")), (vec!["a".to_string()], vec!["b".to_string()]));
        assert_eq!(
            (index.services_of("ns", "shop"), index.services_of("ns", "blog")),
            (vec!["a".to_string()], vec!["b".to_string()])
        );

        assert_eq!(index.remove("ns", "a"), Some("shop".into()));
        assert_eq!(index.remove("ns", "a"), None);
        assert!(targeting("web").is_empty());
        assert!(index.services_of("ns", "shop").is_empty());
        assert!(index.services_of("other", "blog").is_empty());
        assert!(index.targeting(WorkloadKind::StatefulSet, "ns", "api").is_empty());
    }
}
