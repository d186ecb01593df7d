//! One driver for every watch: it turns a watch's events into calls on an
//! [`Index`] (the shape of kubert's `IndexNamespacedResource`), buffers each
//! full list until it is complete, works out what a re-list no longer holds,
//! retries with backoff, logs failures and says when everything has listed.
//!
//! kube-runtime's shared streams (`reflect_shared`, `Controller::for_shared_stream`)
//! were not used: their subscribers hear of objects applied and of the
//! objects a list holds, never of a delete or of an object a re-list no
//! longer holds, which wakes the Apps and Services here.

use std::{collections::HashSet, fmt::Debug};

use futures::{
    Stream, StreamExt,
    stream::{self, BoxStream},
};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::slim;

/// Namespace and name of a watched object.
pub type ObjectKey = (String, String);

/// What a watch keeps current. A scope of several namespaces runs one watch
/// per namespace into the same index: [`Index::listed`] then concerns one of
/// them, and must leave the objects of the others alone.
///
/// A full list is handed over object by object as it arrives, never
/// buffered whole: with 10,000 objects a buffered list is a second copy of
/// the cache. During a re-list the index holds the objects listed so far at
/// their new versions and the others at their old ones, as it would behind a
/// watch that lags; what the list no longer holds goes once it is complete.
pub trait Index<K> {
    /// `object` was created or changed, or is part of a full list. `first`:
    /// it comes from the watch's first full list (every reconciler looks at
    /// everything then anyway).
    fn apply(&mut self, object: K, first: bool);

    /// The object `namespace/name` was deleted.
    fn delete(&mut self, namespace: String, name: String);

    /// One watch finished a full list: `removed` is what it held before and
    /// no longer does. `first`: the watch's first list. What a re-list no
    /// longer holds is deleted, as no delete event told of it.
    fn listed(&mut self, removed: Vec<ObjectKey>, _first: bool) {
        for (namespace, name) in removed {
            self.delete(namespace, name);
        }
    }
}

/// Set once every watch feeding an index has loaded its first full list.
#[derive(Clone, Debug)]
pub struct Synced(watch::Sender<bool>);

impl Default for Synced {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Synced {
    pub fn is_synced(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(&self) {
        let _ = self.0.subscribe().wait_for(|synced| *synced).await;
    }

    fn set(&self) {
        self.0.send_replace(true);
    }
}

/// Watches each of `apis` with `config` into `index`, each object
/// [`slim`]med, and sets `synced` once all have listed. Failures are logged
/// and retried with backoff; it returns only if every watch ends.
pub async fn run_index<K, I>(apis: Vec<Api<K>>, config: watcher::Config, index: I, synced: Synced)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    I: Index<K>,
{
    run_index_as(apis, config, std::convert::identity, index, synced).await;
}

/// [`run_index`] of what `prepare` keeps of each object, made as soon as it
/// arrives.
pub async fn run_index_as<K, T, I>(
    apis: Vec<Api<K>>,
    config: watcher::Config,
    prepare: fn(K) -> T,
    index: I,
    synced: Synced,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    T: Keyed + Send + 'static,
    I: Index<T>,
{
    let kind = K::kind(&Default::default()).into_owned();
    let watches = apis.len();
    let events = stream::select_all(apis.into_iter().enumerate().map(|(watch, api)| {
        let events = streamed_or_paged(api, config.clone()).default_backoff().modify(slim);
        events.map(move |event| (watch, event.map(|event| map_event(event, prepare)))).boxed()
    }));
    drive(&kind, events, Driver::new(watches, synced), index).await;
}

/// The events of one watch whose full lists arrive as a stream of single
/// objects (a streaming list, Kubernetes' WatchList), or, from an API server
/// that refuses those, in pages of `config.page_size` objects. A page is
/// decoded whole (500 objects by default), so a streamed list keeps at most
/// one object of it in memory at a time.
fn streamed_or_paged<K>(api: Api<K>, config: watcher::Config) -> BoxStream<'static, watcher::Result<Event<K>>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let streamed = watcher(api.clone(), config.clone().streaming_lists()).boxed();
    let state = (streamed, Some((api, config)));
    stream::unfold(state, |(mut events, mut paged)| async move {
        loop {
            let event = events.next().await?;
            if let (Err(error), Some(_)) = (&event, &paged)
                && refuses_streaming_lists(error)
                && let Some((api, config)) = paged.take()
            {
                tracing::info!(%error, "the API server refuses streaming lists; listing in pages");
                events = watcher(api, config).boxed();
                continue;
            }
            return Some((event, (events, paged)));
        }
    })
    .boxed()
}

/// Whether `error` is an API server refusing the parameters of a streaming
/// list (`sendInitialEvents`, `resourceVersionMatch` on a watch): 400 or 422
/// from a server without the WatchList feature (or one that lost it in a
/// downgrade: such a watch could never start again, so a later refusal
/// falls back too).
fn refuses_streaming_lists(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) => matches!(status.code, 400 | 422),
        watcher::Error::WatchError(status) => matches!(status.code, 400 | 422),
        _ => false,
    }
}

pub(super) fn map_event<K, T>(event: Event<K>, prepare: fn(K) -> T) -> Event<T> {
    match event {
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(prepare(object)),
        Event::InitDone => Event::InitDone,
        Event::Apply(object) => Event::Apply(prepare(object)),
        Event::Delete(object) => Event::Delete(prepare(object)),
    }
}

async fn drive<T: Keyed, I: Index<T>>(
    kind: &str,
    mut events: impl Stream<Item = (usize, Result<Event<T>, watcher::Error>)> + Unpin,
    mut driver: Driver,
    mut index: I,
) {
    while let Some((watch, event)) = events.next().await {
        match event {
            Ok(event) => driver.handle(watch, event, &mut index),
            Err(error) => tracing::warn!(kind, %error, "watch failed; retrying"),
        }
    }
}

/// What identifies a watched object: its namespace and name.
pub trait Keyed {
    fn key(&self) -> HeldKey;
}

impl<K: Resource> Keyed for K {
    fn key(&self) -> HeldKey {
        HeldKey::new(&self.namespace().unwrap_or_default(), &self.name_any())
    }
}

/// What one watch has told so far.
struct WatchState {
    /// Every object it holds.
    known: HashSet<HeldKey>,
    /// The keys of the full list being received.
    listing: Option<HashSet<HeldKey>>,
    listed: bool,
}

/// An [`ObjectKey`] as the driver holds it, `namespace/name` in one
/// allocation: it keeps a key per watched object (two during a re-list), a
/// third of the room of two `String`s. Neither part can hold a `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeldKey(Box<str>);

impl HeldKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}/{name}").into_boxed_str())
    }

    /// Namespace and name.
    pub fn parts(&self) -> (&str, &str) {
        self.0.split_once('/').unwrap_or_default()
    }

    pub fn into_key(self) -> ObjectKey {
        let (namespace, name) = self.parts();
        (namespace.to_string(), name.to_string())
    }
}

/// The event handling of [`run_index`], without the watches.
pub struct Driver {
    watches: Vec<WatchState>,
    synced: Synced,
}

impl Driver {
    pub fn new(watches: usize, synced: Synced) -> Self {
        let watches =
            (0..watches.max(1)).map(|_| WatchState { known: HashSet::new(), listing: None, listed: false }).collect();
        Self { watches, synced }
    }

    /// Hands one event of watch number `watch` to `index`.
    pub fn handle<K: Keyed>(&mut self, watch: usize, event: Event<K>, index: &mut impl Index<K>) {
        let Some(state) = self.watches.get_mut(watch) else { return };
        match event {
            Event::Init => state.listing = Some(HashSet::new()),
            Event::InitApply(object) => {
                // Known at once: a list that fails midway leaves it in the
                // index, and the next complete list must be able to remove it.
                let key = object.key();
                state.known.insert(key.clone());
                state.listing.get_or_insert_with(HashSet::new).insert(key);
                index.apply(object, !state.listed);
            }
            Event::InitDone => {
                let listed = state.listing.take().unwrap_or_default();
                let removed = state.known.difference(&listed).cloned().map(HeldKey::into_key).collect();
                state.known = listed;
                let first = !state.listed;
                state.listed = true;
                index.listed(removed, first);
                if first && self.watches.iter().all(|w| w.listed) {
                    self.synced.set();
                }
            }
            Event::Apply(object) => {
                state.known.insert(object.key());
                index.apply(object, false);
            }
            Event::Delete(object) => {
                let key = object.key();
                state.known.remove(&key);
                let (namespace, name) = key.into_key();
                index.delete(namespace, name);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use serde_json::json;

    use super::*;
    use crate::{api::App, cache::Guarded};

    pub(in crate::cache) fn map(namespace: &str, name: &str) -> ConfigMap {
        let metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            managed_fields: Some(vec![Default::default()]),
            ..Default::default()
        };
        ConfigMap { metadata, ..Default::default() }
    }

    /// A list, changes, and a re-list after which `b` and `c` are gone.
    pub(in crate::cache) fn relist_script() -> Vec<Event<ConfigMap>> {
        vec![
            Event::Init,
            Event::InitApply(map("ns", "a")),
            Event::InitApply(map("ns", "b")),
            Event::InitDone,
            Event::Apply(map("ns", "c")),
            Event::Apply(map("ns", "d")),
            Event::Delete(map("ns", "d")),
            // The watch fell behind: everything is listed again, `b` and `c` are gone.
            Event::Init,
            Event::InitApply(map("ns", "a")),
            Event::InitDone,
        ]
    }

    /// Writes down every call it gets.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl<K: Resource> Index<K> for Log {
        fn apply(&mut self, object: K, first: bool) {
            let (namespace, name) = object.key().into_key();
            let first = if first { " (first)" } else { "" };
            self.0.push(format!("apply {namespace}/{name}{first}"));
        }

        fn delete(&mut self, namespace: String, name: String) {
            self.0.push(format!("delete {namespace}/{name}"));
        }

        fn listed(&mut self, mut removed: Vec<ObjectKey>, first: bool) {
            removed.sort();
            let removed: Vec<String> = removed.into_iter().map(|(_, name)| name).collect();
            let first = if first { " (first)" } else { "" };
            self.0.push(format!("listed, removed [{}]{first}", removed.join(" ")));
        }
    }

    async fn run<K: Resource + Send + 'static>(
        watches: usize,
        events: Vec<(usize, Result<Event<K>, watcher::Error>)>,
    ) -> (Vec<String>, Synced)
    where
        K::DynamicType: Default,
    {
        let synced = Synced::default();
        let mut log = Log::default();
        drive("test", stream::iter(events), Driver::new(watches, synced.clone()), &mut log).await;
        (log.0, synced)
    }

    impl<K, I: Index<K>> Index<K> for &mut I {
        fn apply(&mut self, object: K, first: bool) {
            (**self).apply(object, first);
        }

        fn delete(&mut self, namespace: String, name: String) {
            (**self).delete(namespace, name);
        }

        fn listed(&mut self, removed: Vec<ObjectKey>, first: bool) {
            (**self).listed(removed, first);
        }
    }

    #[tokio::test]
    async fn applies_deletes_and_a_relist_removes_what_it_no_longer_lists() {
        let events = relist_script();
        let (log, synced) = run(1, events.into_iter().map(|e| (0, Ok(e))).collect()).await;
        assert_eq!(
            log,
            [
                "apply ns/a (first)",
                "apply ns/b (first)",
                "listed, removed [] (first)",
                "apply ns/c",
                "apply ns/d",
                "delete ns/d",
                "apply ns/a",
                "listed, removed [b c]",
            ]
        );
        assert!(synced.is_synced());
    }

    #[tokio::test]
    async fn a_list_that_fails_midway_is_not_synced_and_the_next_one_removes_what_it_left() {
        let events = vec![
            (0, Ok(Event::Init)),
            (0, Ok(Event::InitApply(map("ns", "a")))),
            (0, Ok(Event::InitApply(map("ns", "b")))),
            (0, Err(watcher::Error::NoResourceVersion)),
        ];
        let (log, synced) = run::<ConfigMap>(1, events).await;
        assert_eq!(log, ["apply ns/a (first)", "apply ns/b (first)"]);
        assert!(!synced.is_synced(), "the list did not complete");

        // The watcher lists again from the start; `b` was deleted meanwhile.
        let synced = Synced::default();
        let mut log = Log::default();
        let mut driver = Driver::new(1, synced.clone());
        for event in [Event::Init, Event::InitApply(map("ns", "a")), Event::InitApply(map("ns", "b"))] {
            driver.handle(0, event, &mut log);
        }
        for event in [Event::Init, Event::InitApply(map("ns", "a")), Event::InitDone] {
            driver.handle(0, event, &mut log);
        }
        assert_eq!(log.0[2..], ["apply ns/a (first)", "listed, removed [b] (first)"]);
        assert!(synced.is_synced());
    }

    #[tokio::test]
    async fn with_several_watches_each_relist_concerns_its_own_objects_and_synced_waits_for_all() {
        let synced = Synced::default();
        let mut log = Log::default();
        let mut driver = Driver::new(2, synced.clone());
        for event in [Event::Init, Event::InitApply(map("a", "x")), Event::InitDone] {
            driver.handle(0, event, &mut log);
        }
        assert!(!synced.is_synced(), "namespace b has not listed yet");
        driver.handle(1, Event::<ConfigMap>::Init, &mut log);
        driver.handle(1, Event::InitApply(map("b", "y")), &mut log);
        driver.handle(0, Event::Apply(map("a", "z")), &mut log);
        driver.handle(1, Event::<ConfigMap>::InitDone, &mut log);
        assert!(synced.is_synced());
        // Namespace a lists again without z; b's y is not touched.
        for event in [Event::Init, Event::InitApply(map("a", "x")), Event::InitDone] {
            driver.handle(0, event, &mut log);
        }
        assert_eq!(
            log.0,
            [
                "apply a/x (first)",
                "listed, removed [] (first)",
                "apply b/y (first)",
                "apply a/z",
                "listed, removed [] (first)",
                "apply a/x",
                "listed, removed [z]"
            ]
        );
    }

    #[tokio::test]
    async fn a_malformed_object_is_handed_on_and_does_not_stall_the_watch() {
        let malformed: Guarded<App> = serde_json::from_value(json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "App",
            "metadata": { "name": "broken", "namespace": "ns" },
            "spec": { "environment": ["not", "a", "string"] },
        }))
        .unwrap_or_else(|e| panic!("a guard holds a malformed object: {e}"));
        assert!(malformed.0.is_err(), "the object is malformed");
        let valid: Guarded<App> = serde_json::from_value(json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "App",
            "metadata": { "name": "shop", "namespace": "ns" }, "spec": {},
        }))
        .unwrap_or_else(|e| panic!("a valid App: {e}"));
        assert!(valid.0.is_ok());
        let events = vec![Event::Init, Event::InitApply(malformed.clone()), Event::InitDone, Event::Apply(valid)];
        let (log, synced) = run(1, events.into_iter().map(|e| (0, Ok(e))).collect()).await;
        assert_eq!(log, ["apply ns/broken (first)", "listed, removed [] (first)", "apply ns/shop"]);
        assert!(synced.is_synced());
    }
}
