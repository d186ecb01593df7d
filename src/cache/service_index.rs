//! Which Services belong to which App and target which workload, so a
//! hook call or a workload event finds its Services without scanning them all.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::Hash,
    sync::{Arc, RwLock},
};

use kube::ResourceExt;

use crate::api::{Service, WorkloadKind};

/// A name held by several maps at once: one allocation, not one per map
/// (with 10,000 Services the copies of their names cost megabytes).
type Name = Arc<str>;

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
    inner: Arc<RwLock<HashMap<String, Namespace>>>,
}

/// The maps of one namespace: its name is not repeated in every key.
#[derive(Default)]
struct Namespace {
    /// Service -> where it is indexed.
    services: HashMap<Name, Indexing>,
    /// App -> its Services, sorted.
    by_app: HashMap<Name, Vec<Name>>,
    /// Workload -> the Services targeting it, sorted.
    by_workload: HashMap<(WorkloadKind, Name), Vec<Name>>,
}

struct Indexing {
    app: Name,
    workload: (WorkloadKind, Name),
}

impl ServiceIndex {
    /// Records (or moves) `service`; says whether the Apps' lists of Services changed.
    pub fn insert(&self, service: &Service) -> Indexed {
        let name = service.name_any();
        let mut namespaces = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let maps = namespaces.entry(service.namespace().unwrap_or_default()).or_default();
        let before = maps.unlink(&name);
        let indexed = match &before {
            None => Indexed::New,
            Some(before) if *before.app == *service.spec.app => Indexed::Unchanged,
            Some(before) => Indexed::Moved { from: before.app.to_string() },
        };
        let name: Name = name.into();
        let target = &service.spec.target;
        let app = add_to(&mut maps.by_app, Name::from(service.spec.app.as_str()), &name);
        let workload = add_to(&mut maps.by_workload, (target.kind, Name::from(target.name.as_str())), &name);
        maps.services.insert(name, Indexing { app, workload });
        indexed
    }

    /// Forgets a Service; returns the App it belonged to.
    pub fn remove(&self, namespace: &str, name: &str) -> Option<String> {
        let mut namespaces = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let maps = namespaces.get_mut(namespace)?;
        let app = maps.unlink(name).map(|before| before.app.to_string());
        if maps.services.is_empty() {
            namespaces.remove(namespace);
        }
        app
    }

    /// Names of the Services that target this workload.
    pub fn targeting(&self, kind: WorkloadKind, namespace: &str, name: &str) -> Vec<String> {
        let namespaces = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let services = namespaces.get(namespace).and_then(|maps| maps.by_workload.get(&(kind, Name::from(name))));
        services.into_iter().flatten().map(|s| s.to_string()).collect()
    }

    /// Names of the Services of `app`, sorted.
    pub fn services_of(&self, namespace: &str, app: &str) -> Vec<String> {
        let namespaces = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let services = namespaces.get(namespace).and_then(|maps| maps.by_app.get(app));
        services.into_iter().flatten().map(|s| s.to_string()).collect()
    }
}

impl Namespace {
    /// Removes a Service from every map; returns where it was indexed.
    fn unlink(&mut self, name: &str) -> Option<Indexing> {
        let before = self.services.remove(name)?;
        remove_from(&mut self.by_app, &before.app, name);
        remove_from(&mut self.by_workload, &before.workload, name);
        Some(before)
    }
}

/// Adds `name` to the sorted list of `key`; returns the key as the map holds it.
fn add_to<K: Eq + Hash + Clone>(map: &mut HashMap<K, Vec<Name>>, key: K, name: &Name) -> K {
    let (key, names) = match map.entry(key) {
        Entry::Occupied(entry) => (entry.key().clone(), entry.into_mut()),
        Entry::Vacant(entry) => (entry.key().clone(), entry.insert(Vec::new())),
    };
    if let Err(at) = names.binary_search(name) {
        names.insert(at, name.clone());
    }
    key
}

fn remove_from<K: Eq + Hash>(map: &mut HashMap<K, Vec<Name>>, key: &K, name: &str) {
    if let Some(names) = map.get_mut(key) {
        names.retain(|n| &**n != name);
        if names.is_empty() {
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
