//! One watch per kind, feeding a store and telling the caller what changed.

use std::{collections::HashSet, fmt::Debug, hash::Hash, sync::Arc};

use futures::{Stream, StreamExt, channel::mpsc};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{Lookup, ObjectRef, store::Writer},
        watcher::{self, Event, watcher},
    },
};
use serde::de::DeserializeOwned;

use super::slim;

/// An object the watch saw applied or deleted.
pub enum Change<'a, K> {
    Applied(&'a K),
    Deleted(&'a K),
}

/// Watches `api` into `writer`, each object [`slim`]med, and tells
/// `on_change` of every object applied or deleted, with `true` for the
/// objects of the first full list. Failures are logged and retried with
/// backoff; it returns only if the watch ends.
pub async fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    on_change: impl FnMut(Change<'_, K>, bool),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    report_changes(watcher(api, config).default_backoff().modify(slim), writer, on_change).await;
}

/// During a re-list: what the store held before it, and what the new list holds so far.
struct Relist<K: Lookup>
where
    K::DynamicType: Eq + Hash + Clone,
{
    before: Vec<Arc<K>>,
    listed: HashSet<ObjectRef<K>>,
}

/// Feeds `events` into `writer` and reports each change to `on_change`. A
/// watch that fell too far behind lists everything again: the objects gone
/// from that new list are reported deleted, as no delete event told of them.
async fn report_changes<K>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    writer: Writer<K>,
    mut on_change: impl FnMut(Change<'_, K>, bool),
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    let reader = writer.as_reader();
    let mut listed = false;
    let mut relisting: Option<Relist<K>> = None;
    let key = |object: &K| ObjectRef::from_obj_with(object, Default::default());
    let mut events = events.reflect(writer).boxed();
    while let Some(event) = events.next().await {
        match event {
            // The store shows its old contents until the new list is complete.
            Ok(Event::Init) if listed => relisting = Some(Relist { before: reader.state(), listed: HashSet::new() }),
            Ok(Event::Init) => {}
            Ok(Event::InitApply(object)) => {
                if let Some(relist) = relisting.as_mut() {
                    relist.listed.insert(key(&object));
                }
                on_change(Change::Applied(&object), !listed);
            }
            Ok(Event::InitDone) => {
                if let Some(Relist { before, listed }) = relisting.take() {
                    for gone in before.iter().filter(|object| !listed.contains(&key(object))) {
                        on_change(Change::Deleted(gone), false);
                    }
                }
                listed = true;
            }
            Ok(Event::Apply(object)) => on_change(Change::Applied(&object), false),
            Ok(Event::Delete(object)) => on_change(Change::Deleted(&object), false),
            Err(error) => tracing::warn!(kind, %error, "watch failed; retrying"),
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
    use kube::{api::ObjectMeta, runtime::reflector};

    use super::*;

    fn map(name: &str) -> ConfigMap {
        let metadata = ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() };
        ConfigMap { metadata, ..Default::default() }
    }

    #[tokio::test]
    async fn a_relist_reports_what_it_no_longer_lists_as_deleted() {
        let events = [
            Event::Init,
            Event::InitApply(map("a")),
            Event::InitApply(map("b")),
            Event::InitDone,
            Event::Apply(map("c")),
            // The watch fell behind: everything is listed again, `b` and `c` are gone.
            Event::Init,
            Event::InitApply(map("a")),
            Event::InitDone,
        ];
        let (reader, writer) = reflector::store();
        let mut seen = Vec::new();
        report_changes(futures::stream::iter(events.map(Ok)), writer, |change, initial| {
            let (what, object) = match change {
                Change::Applied(object) => ("applied", object),
                Change::Deleted(object) => ("deleted", object),
            };
            seen.push(format!(
                "{what} {}{}",
                object.metadata.name.clone().unwrap_or_default(),
                if initial { " (first list)" } else { "" }
            ));
        })
        .await;
        seen[4..].sort();
        assert_eq!(
            seen,
            ["applied a (first list)", "applied b (first list)", "applied c", "applied a", "deleted b", "deleted c"]
        );
        assert_eq!(reader.state().len(), 1);
    }
}
