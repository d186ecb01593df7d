//! Every Deployment, StatefulSet and DaemonSet as a small [`Workload`]
//! summary, kept current by one watch per kind.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::{Client, runtime::watcher};

use super::{
    Scope,
    index::{HeldKey, Index, Keyed, Synced, run_index_as},
};
use crate::{
    api::WorkloadKind,
    workload::{Workload, WorkloadObject},
};

/// A workload's kind and `namespace/name`, one allocation per workload.
type Key = (WorkloadKind, HeldKey);

/// A workload changed: its kind, namespace, name, and what it was and is now
/// (`None`: absent).
pub struct WorkloadChange<'a> {
    pub kind: WorkloadKind,
    pub namespace: &'a str,
    pub name: &'a str,
    pub before: Option<&'a Workload>,
    pub after: Option<&'a Workload>,
}

#[derive(Clone, Default)]
pub struct WorkloadIndex {
    /// Each summary behind its own pointer: a map keeps room for more
    /// entries than it holds, and a pass shares the summaries it reads.
    by_key: Arc<RwLock<HashMap<Key, Arc<Workload>>>>,
    /// Per kind: whether its first full list is loaded.
    synced: [Synced; 3],
}

impl WorkloadIndex {
    pub fn get(&self, kind: WorkloadKind, namespace: &str, name: &str) -> Option<Arc<Workload>> {
        let by_key = self.by_key.read().unwrap_or_else(|e| e.into_inner());
        by_key.get(&(kind, HeldKey::new(namespace, name))).cloned()
    }

    pub async fn wait_synced(&self) {
        for kind in &self.synced {
            kind.wait().await;
        }
    }

    /// Watches every workload kind in `scope`; `on_change` hears of each
    /// change after the first full list of its kind. Returns only if a watch ends.
    pub async fn run(
        self,
        client: Client,
        scope: Scope,
        on_change: impl Fn(WorkloadChange<'_>) + Clone + Send + 'static,
    ) {
        futures::join!(
            self.clone().run_kind::<Deployment>(&client, &scope, 0, on_change.clone()),
            self.clone().run_kind::<StatefulSet>(&client, &scope, 1, on_change.clone()),
            self.run_kind::<DaemonSet>(&client, &scope, 2, on_change),
        );
    }

    async fn run_kind<K: WorkloadObject>(
        self,
        client: &Client,
        scope: &Scope,
        slot: usize,
        on_change: impl Fn(WorkloadChange<'_>),
    ) {
        let synced = self.synced[slot].clone();
        let index = KindIndex { workloads: self, on_change, kind: K::KIND };
        run_index_as(scope.apis::<K>(client), watcher::Config::default(), Summarized::of::<K>, index, synced).await;
    }

    fn set(&self, key: Key, workload: Option<Workload>, on_change: &impl Fn(WorkloadChange<'_>)) {
        let workload = workload.map(Arc::new);
        let before = {
            let mut by_key = self.by_key.write().unwrap_or_else(|e| e.into_inner());
            match &workload {
                Some(workload) => by_key.insert(key.clone(), workload.clone()),
                None => by_key.remove(&key),
            }
        };
        if before != workload {
            let (kind, held) = &key;
            let (namespace, name) = held.parts();
            on_change(WorkloadChange {
                kind: *kind,
                namespace,
                name,
                before: before.as_deref(),
                after: workload.as_deref(),
            });
        }
    }
}

/// A watched workload as kept: its summary only.
struct Summarized {
    key: Key,
    workload: Workload,
}

impl Summarized {
    fn of<K: WorkloadObject>(object: K) -> Self {
        let key = (K::KIND, object.key());
        Self { key, workload: object.summary() }
    }
}

impl Keyed for Summarized {
    fn key(&self) -> HeldKey {
        self.key.1.clone()
    }
}

/// The workloads of one kind as an [`Index`].
struct KindIndex<F> {
    workloads: WorkloadIndex,
    on_change: F,
    kind: WorkloadKind,
}

impl<F: Fn(WorkloadChange<'_>)> Index<Summarized> for KindIndex<F> {
    /// A first list reports nothing (every reconciler looks at everything then).
    fn apply(&mut self, object: Summarized, first: bool) {
        let report = |change: WorkloadChange<'_>| {
            if !first {
                (self.on_change)(change);
            }
        };
        self.workloads.set(object.key, Some(object.workload), &report);
    }

    fn delete(&mut self, namespace: String, name: String) {
        self.workloads.set((self.kind, HeldKey::new(&namespace, &name)), None, &self.on_change);
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::{
        super::index::{Driver, map_event},
        *,
    };

    fn deployment(namespace: &str, name: &str, image: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace },
            "spec": {
                "selector": {},
                "template": { "spec": { "containers": [{ "name": "main", "image": image }] } },
            },
        }))
        .unwrap_or_else(|e| panic!("a valid Deployment: {e}"))
    }

    #[test]
    fn a_first_list_reports_nothing_and_a_relist_reports_what_changed_or_went() {
        let workloads = WorkloadIndex::default();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let on_change = {
            let seen = seen.clone();
            move |change: WorkloadChange<'_>| {
                let what = match (change.before, change.after) {
                    (None, Some(_)) => "created",
                    (Some(_), Some(_)) => "changed",
                    (Some(_), None) => "deleted",
                    (None, None) => "nothing",
                };
                seen.borrow_mut().push(format!("{what} {}/{}", change.namespace, change.name));
            }
        };
        let mut index = KindIndex { workloads: workloads.clone(), on_change, kind: WorkloadKind::Deployment };
        let mut driver = Driver::new(2, workloads.synced[0].clone());
        for (watch, event) in [
            (0, Event::Init),
            (0, Event::InitApply(deployment("a", "web", "web:1"))),
            (0, Event::InitApply(deployment("a", "api", "api:1"))),
            (0, Event::InitDone),
            (1, Event::Init),
            (1, Event::InitApply(deployment("b", "web", "web:1"))),
            (1, Event::InitDone),
            (0, Event::Apply(deployment("a", "web", "web:1"))),
            (0, Event::Apply(deployment("a", "web", "web:2"))),
            // Namespace a listed again: web changed, api gone, jobs new; b untouched.
            (0, Event::Init),
            (0, Event::InitApply(deployment("a", "web", "web:3"))),
            (0, Event::InitApply(deployment("a", "jobs", "jobs:1"))),
            (0, Event::InitDone),
            (1, Event::Delete(deployment("b", "web", "web:1"))),
        ] {
            driver.handle(watch, map_event(event, Summarized::of::<Deployment>), &mut index);
        }
        let mut seen = seen.take();
        seen[1..4].sort();
        assert_eq!(seen, ["changed a/web", "changed a/web", "created a/jobs", "deleted a/api", "deleted b/web"]);
        assert!(workloads.synced[0].is_synced());
        let kept = |name: &str| workloads.get(WorkloadKind::Deployment, "a", name).is_some();
        assert_eq!((kept("web"), kept("jobs"), kept("api")), (true, true, false));
        assert!(workloads.get(WorkloadKind::Deployment, "b", "web").is_none());
    }
}
