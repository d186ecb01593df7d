//! The stores of whole objects, each kept by [`run_index`], telling the
//! caller what changed.

use std::{fmt::Debug, hash::Hash};

use futures::channel::mpsc;
use kube::{
    Api, Resource,
    runtime::{
        reflector::{Lookup, ObjectRef, store::Writer},
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;

use super::index::{Index, ObjectKey, Synced, run_index};

/// An object the watch saw applied or deleted.
pub enum Change<'a, K> {
    Applied(&'a K),
    Deleted(&'a K),
}

/// Watches `apis` into `writer`, and tells `on_change` of every object
/// applied or deleted, with `true` for the objects of a watch's first full
/// list. Returns only if every watch ends.
pub async fn watch_into<K>(
    apis: Vec<Api<K>>,
    config: watcher::Config,
    mut writer: Writer<K>,
    synced: Synced,
    on_change: impl FnMut(Change<'_, K>, bool),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    // The store is filled object by object, never through its own list
    // buffer, so it would never count as ready, and a Controller runs nothing
    // on a store that is not. Readiness is `synced`'s to tell: nothing
    // reconciles before every cache has listed (see `operator::start`).
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    run_index(apis, config, StoreIndex { writer, on_change }, synced).await;
}

/// A reflector store as an [`Index`].
struct StoreIndex<K: Lookup + Clone + 'static, F>
where
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    on_change: F,
}

impl<K, F> Index<K> for StoreIndex<K, F>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
    F: FnMut(Change<'_, K>, bool),
{
    /// Stored at once, also during a full list (the store's own list buffer
    /// would hold a second copy of every object until the list completes).
    fn apply(&mut self, object: K, first: bool) {
        let event = Event::Apply(object);
        self.writer.apply_watcher_event(&event);
        if let Event::Apply(object) = &event {
            (self.on_change)(Change::Applied(object), first);
        }
    }

    fn delete(&mut self, namespace: String, name: String) {
        let reference = ObjectRef::new_with(&name, Default::default()).within(&namespace);
        let Some(gone) = self.writer.as_reader().get(&reference) else { return };
        self.writer.apply_watcher_event(&Event::Delete((*gone).clone()));
        (self.on_change)(Change::Deleted(&gone), false);
    }

    /// What a re-list no longer holds is reported deleted, as no delete
    /// event told of it.
    fn listed(&mut self, removed: Vec<ObjectKey>, _first: bool) {
        for (namespace, name) in removed {
            self.delete(namespace, name);
        }
    }
}

/// Asks one controller to reconcile an object: the sending half of the
/// stream the controller takes with `reconcile_on`. Requests for an object
/// already queued are merged by the controller.
pub struct Trigger<K: Lookup<DynamicType = ()>>(mpsc::UnboundedSender<ObjectRef<K>>);

impl<K: Lookup<DynamicType = ()>> Trigger<K> {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ObjectRef<K>>) {
        let (sender, receiver) = mpsc::unbounded();
        (Self(sender), receiver)
    }

    pub fn reconcile(&self, namespace: &str, name: &str) {
        // Fails only once the controller has stopped, when nothing is left to do.
        let _ = self.0.unbounded_send(ObjectRef::new(name).within(namespace));
    }
}

impl<K: Lookup<DynamicType = ()>> Clone for Trigger<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;

    use super::{
        super::index::{
            Driver,
            tests::{map, relist_script},
        },
        *,
    };

    #[test]
    fn a_relist_reports_what_it_no_longer_lists_as_deleted() {
        let events = relist_script();
        let (reader, writer) = reflector::store();
        let mut seen = Vec::new();
        let mut index = StoreIndex {
            writer,
            on_change: |change: Change<'_, ConfigMap>, initial: bool| {
                let (what, object) = match change {
                    Change::Applied(object) => ("applied", object),
                    Change::Deleted(object) => ("deleted", object),
                };
                seen.push(format!(
                    "{what} {}{}",
                    object.metadata.name.clone().unwrap_or_default(),
                    if initial { " (first list)" } else { "" }
                ));
            },
        };
        let mut driver = Driver::new(1, Synced::default());
        for event in events {
            driver.handle(0, event, &mut index);
        }
        drop(index);
        seen[6..].sort();
        assert_eq!(
            seen,
            [
                "applied a (first list)",
                "applied b (first list)",
                "applied c",
                "applied d",
                "deleted d",
                "applied a",
                "deleted b",
                "deleted c"
            ]
        );
        assert_eq!(reader.state().len(), 1);
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_others_objects() {
        let (reader, writer) = reflector::store();
        let mut index = StoreIndex { writer, on_change: |_: Change<'_, ConfigMap>, _: bool| {} };
        let mut driver = Driver::new(2, Synced::default());
        for (watch, event) in [
            (0, Event::Init),
            (0, Event::InitApply(map("a", "x"))),
            (0, Event::InitDone),
            (1, Event::Init),
            (1, Event::InitApply(map("b", "y"))),
            (1, Event::InitDone),
            (0, Event::Init),
            (0, Event::InitDone),
        ] {
            driver.handle(watch, event, &mut index);
        }
        let names: Vec<String> = reader.state().iter().filter_map(|m| m.metadata.name.clone()).collect();
        assert_eq!(names, ["y"]);
    }
}
