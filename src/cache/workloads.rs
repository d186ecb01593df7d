//! Every Deployment, StatefulSet and DaemonSet as a small [`Workload`]
//! summary, kept current by one watch per kind.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use tokio::sync::watch;

use crate::{
    api::WorkloadKind,
    workload::{Workload, WorkloadObject},
};

type Key = (WorkloadKind, String, String);

/// A workload changed: its kind, namespace, name, and what it was and is now
/// (`None`: absent).
pub struct WorkloadChange<'a> {
    pub kind: WorkloadKind,
    pub namespace: &'a str,
    pub name: &'a str,
    pub before: Option<&'a Workload>,
    pub after: Option<&'a Workload>,
}

#[derive(Clone)]
pub struct WorkloadIndex {
    by_key: Arc<RwLock<HashMap<Key, Workload>>>,
    /// Kinds whose first full list is loaded.
    synced: watch::Sender<u8>,
}

impl Default for WorkloadIndex {
    fn default() -> Self {
        Self { by_key: Default::default(), synced: watch::channel(0).0 }
    }
}

const KINDS: u8 = 3;

impl WorkloadIndex {
    pub fn get(&self, kind: WorkloadKind, namespace: &str, name: &str) -> Option<Workload> {
        let by_key = self.by_key.read().unwrap_or_else(|e| e.into_inner());
        by_key.get(&(kind, namespace.to_string(), name.to_string())).cloned()
    }

    pub async fn wait_synced(&self) {
        let _ = self.synced.subscribe().wait_for(|kinds| *kinds >= KINDS).await;
    }

    /// Watches every workload kind; `on_change` hears of each change after
    /// the first full list of its kind. Returns only if a watch ends.
    pub async fn run(self, client: Client, on_change: impl Fn(WorkloadChange<'_>) + Clone + Send + 'static) {
        futures::join!(
            self.clone().run_kind::<Deployment>(client.clone(), on_change.clone()),
            self.clone().run_kind::<StatefulSet>(client.clone(), on_change.clone()),
            self.run_kind::<DaemonSet>(client, on_change),
        );
    }

    async fn run_kind<K: WorkloadObject>(self, client: Client, on_change: impl Fn(WorkloadChange<'_>)) {
        let mut listing: Option<HashMap<Key, Workload>> = None;
        let mut synced = false;
        let mut events = watcher(Api::<K>::all(client), watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listing = Some(HashMap::new()),
                Ok(Event::InitApply(object)) => {
                    if let Some(listing) = listing.as_mut() {
                        listing.insert(key(&object), object.summary());
                    }
                }
                Ok(Event::InitDone) => {
                    let Some(listed) = listing.take() else { continue };
                    self.replace_kind(K::KIND, listed, synced.then_some(&on_change));
                    if !synced {
                        synced = true;
                        self.synced.send_modify(|kinds| *kinds += 1);
                    }
                }
                Ok(Event::Apply(object)) => self.set(key(&object), Some(object.summary()), &on_change),
                Ok(Event::Delete(object)) => self.set(key(&object), None, &on_change),
                Err(error) => tracing::warn!(kind = ?K::KIND, %error, "watch failed; retrying"),
            }
        }
    }

    fn set(&self, key: Key, workload: Option<Workload>, on_change: &impl Fn(WorkloadChange<'_>)) {
        let before = {
            let mut by_key = self.by_key.write().unwrap_or_else(|e| e.into_inner());
            match workload.clone() {
                Some(workload) => by_key.insert(key.clone(), workload),
                None => by_key.remove(&key),
            }
        };
        if before != workload {
            let (kind, namespace, name) = &key;
            on_change(WorkloadChange {
                kind: *kind,
                namespace,
                name,
                before: before.as_ref(),
                after: workload.as_ref(),
            });
        }
    }

    /// Swaps in a full list of one kind; after the first, reports what the list changed.
    fn replace_kind(
        &self,
        kind: WorkloadKind,
        listed: HashMap<Key, Workload>,
        on_change: Option<&impl Fn(WorkloadChange<'_>)>,
    ) {
        let mut changes = Vec::new();
        {
            let mut by_key = self.by_key.write().unwrap_or_else(|e| e.into_inner());
            let mut previous: HashMap<Key, Workload> = by_key.extract_if(|(k, _, _), _| *k == kind).collect();
            for (key, workload) in listed {
                let before = previous.remove(&key);
                if on_change.is_some() && before.as_ref() != Some(&workload) {
                    changes.push((key.clone(), before, Some(workload.clone())));
                }
                by_key.insert(key, workload);
            }
            if on_change.is_some() {
                changes.extend(previous.into_iter().map(|(key, before)| (key, Some(before), None)));
            }
        }
        let Some(on_change) = on_change else { return };
        for ((kind, namespace, name), before, after) in &changes {
            on_change(WorkloadChange { kind: *kind, namespace, name, before: before.as_ref(), after: after.as_ref() });
        }
    }
}

fn key<K: WorkloadObject>(object: &K) -> Key {
    (K::KIND, object.namespace().unwrap_or_default(), object.name_any())
}
