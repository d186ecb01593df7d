//! The stores of whole objects, each kept by [`run_index`], telling the
//! caller what changed.

use std::{
    collections::HashSet,
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::channel::mpsc;
use kube::{
    Api, Resource,
    runtime::{
        reflector::{Lookup, ObjectRef, store::Writer},
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;

use super::index::{HeldKey, Index, Keyed, Synced, run_index_as};

/// An object the watch saw applied or deleted.
pub enum Change<'a, K> {
    Applied(&'a K),
    Deleted(&'a K),
}

/// A store's writer, shared by its watch and by this process's own
/// creates ([`SharedWriter::created`]).
pub struct SharedWriter<K: Lookup + Clone + 'static>(Arc<Mutex<WriterState<K>>>)
where
    K::DynamicType: Eq + Hash + Clone;

struct WriterState<K: Lookup + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    /// Stored by [`SharedWriter::created`], not yet by the watch.
    unconfirmed: HashSet<HeldKey>,
}

impl<K: Lookup + Clone + 'static> Clone for SharedWriter<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> SharedWriter<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    pub fn new(writer: Writer<K>) -> Self {
        Self(Arc::new(Mutex::new(WriterState { writer, unconfirmed: HashSet::new() })))
    }

    fn lock(&self) -> MutexGuard<'_, WriterState<K>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `object`, just created by this process, unless the watch
    /// already stored it (at that version or a later one); true if stored.
    /// Its reconciler can then start without waiting for the watch's echo,
    /// as client-go's mutation cache lets an informer's reader see its own
    /// writes. The echo replaces it with the same version.
    pub fn created(&self, object: K) -> bool {
        let mut shared = self.lock();
        let reference = ObjectRef::from_obj_with(&object, Default::default());
        if shared.writer.as_reader().get(&reference).is_some() {
            return false;
        }
        shared.unconfirmed.insert(object.key());
        shared.writer.apply_watcher_event(&Event::Apply(object));
        true
    }

    /// The API server answered that `namespace/name` does not exist. If
    /// [`Self::created`] stored it and the watch never told of it (deleted
    /// right after its create), the watch never will: it is dropped here. What
    /// the watch stored, the watch removes.
    pub fn gone(&self, namespace: &str, name: &str) {
        let mut shared = self.lock();
        if shared.unconfirmed.remove(&HeldKey::new(namespace, name)) {
            shared.remove(namespace, name);
        }
    }

    /// The watch told that `namespace/name` was deleted: removed, and
    /// returned as it was stored.
    fn delete_watched(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let mut shared = self.lock();
        shared.unconfirmed.remove(&HeldKey::new(namespace, name));
        shared.remove(namespace, name)
    }

    /// The watch's own change: stored, and no longer unconfirmed.
    fn apply_watched(&self, event: &Event<K>) {
        let mut shared = self.lock();
        if !shared.unconfirmed.is_empty()
            && let Event::Apply(object) | Event::Delete(object) = event
        {
            shared.unconfirmed.remove(&object.key());
        }
        shared.writer.apply_watcher_event(event);
    }
}

impl<K> WriterState<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    /// Removes `namespace/name` from the store; returns it as it was stored.
    fn remove(&mut self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let reference = ObjectRef::new_with(name, Default::default()).within(namespace);
        let gone = self.writer.as_reader().get(&reference)?;
        self.writer.apply_watcher_event(&Event::Delete((*gone).clone()));
        Some(gone)
    }
}

/// Watches `apis` into `writer`, each object as `keep` makes it, and tells
/// `on_change` of every object applied or deleted, with `true` for the
/// objects of a watch's first full list. Returns only if every watch ends.
pub async fn watch_into<K>(
    apis: Vec<Api<K>>,
    config: watcher::Config,
    keep: fn(K) -> K,
    writer: SharedWriter<K>,
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
    writer.apply_watched(&Event::Init);
    writer.apply_watched(&Event::InitDone);
    run_index_as(apis, config, keep, StoreIndex { writer, on_change }, synced).await;
}

/// A reflector store as an [`Index`].
struct StoreIndex<K: Lookup + Clone + 'static, F>
where
    K::DynamicType: Eq + Hash + Clone,
{
    writer: SharedWriter<K>,
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
        self.writer.apply_watched(&event);
        if let Event::Apply(object) = &event {
            (self.on_change)(Change::Applied(object), first);
        }
    }

    fn delete(&mut self, namespace: String, name: String) {
        if let Some(gone) = self.writer.delete_watched(&namespace, &name) {
            (self.on_change)(Change::Deleted(&gone), false);
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
            writer: SharedWriter::new(writer),
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
        let mut index =
            StoreIndex { writer: SharedWriter::new(writer), on_change: |_: Change<'_, ConfigMap>, _: bool| {} };
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

    #[test]
    fn an_object_this_process_created_is_stored_at_once_and_dropped_if_gone_before_its_watch_told() {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let writer = SharedWriter::new(writer);
        let names = || reader.state().iter().filter_map(|m| m.metadata.name.clone()).collect::<Vec<_>>();
        let mut index = StoreIndex { writer: writer.clone(), on_change: |_: Change<'_, ConfigMap>, _: bool| {} };

        assert!(writer.created(map("ns", "a")), "not stored yet: stored");
        assert_eq!(names(), ["a"]);
        writer.gone("ns", "a");
        assert!(names().is_empty(), "created, then gone before its watch told of it: dropped");

        index.apply(map("ns", "b"), false);
        assert!(!writer.created(map("ns", "b")), "the watch stored it first: kept as the watch has it");
        writer.gone("ns", "b");
        assert_eq!(names(), ["b"], "what the watch stored, only the watch removes");

        assert!(writer.created(map("ns", "c")));
        index.apply(map("ns", "c"), false);
        writer.gone("ns", "c");
        let mut held = names();
        held.sort();
        assert_eq!(held, ["b", "c"], "confirmed by its watch: only the watch removes it");
    }
}
