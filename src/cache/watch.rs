//! One watch per kind, feeding a store and telling the caller what changed.

use std::{fmt::Debug, hash::Hash};

use futures::{StreamExt, channel::mpsc};
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
    mut on_change: impl FnMut(Change<'_, K>, bool),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    let mut listed = false;
    let mut events = watcher(api, config).default_backoff().modify(slim).reflect(writer).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::InitApply(object)) => on_change(Change::Applied(&object), !listed),
            Ok(Event::Apply(object)) => on_change(Change::Applied(&object), false),
            Ok(Event::Delete(object)) => on_change(Change::Deleted(&object), false),
            Ok(Event::InitDone) => listed = true,
            Ok(Event::Init) => {}
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
