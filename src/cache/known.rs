//! The version of each object this process last wrote or read, per kind.
//! A cached copy at that version holds everything this process did to it, so
//! a reconciler can trust it without a read; most passes are woken by the
//! watch echoing the reconciler's own write, and a pass woken by something
//! else just before that echo would otherwise act on a copy that misses it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{Resource, ResourceExt};

/// How long a pass that found the cache behind our own write waits for the
/// watch to echo it; the echo itself wakes the object sooner.
pub const ECHO_WAIT: Duration = Duration::from_millis(500);

#[derive(Clone, Default)]
pub struct KnownVersions(Arc<Mutex<HashMap<Key, Known>>>);

type Key = (String, String, String);

struct Known {
    version: String,
    /// The version our last write replaced: a cached copy still at it only
    /// waits for the watch to echo that write (however late the watch is),
    /// never for a read.
    replaced: Option<String>,
    /// The cached version a pass already waited on once.
    waited_at: Option<String>,
    /// When this process last wrote the object.
    written_at: Option<Instant>,
}

/// What a cached copy is worth to a pass.
#[derive(Debug, PartialEq)]
pub enum Freshness {
    /// At the version we know: use it.
    Current,
    /// Another version than ours, seen for the first time: most likely the
    /// watch has not echoed our last write yet, so wait for the echo.
    Behind,
    /// Nothing known, or still not our version after waiting once (someone
    /// else wrote it): read it.
    Unknown,
}

impl KnownVersions {
    pub fn freshness<K: Resource<DynamicType = ()>>(&self, cached: &K) -> Freshness {
        let Some(version) = cached.resource_version() else { return Freshness::Unknown };
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(known) = known.get_mut(&key(cached)) else { return Freshness::Unknown };
        if known.version == version {
            Freshness::Current
        } else if known.replaced.as_deref() == Some(version.as_str()) {
            // Under load the watch can lag our writes by seconds: reading
            // every object it lags on would add a read to each pass just
            // when the API server is slowest.
            Freshness::Behind
        } else if known.waited_at.as_deref() != Some(version.as_str()) {
            known.waited_at = Some(version);
            Freshness::Behind
        } else {
            Freshness::Unknown
        }
    }

    /// Notes the object as the API server gave it (read, or returned by our
    /// write). It is known until [`forget`](Self::forget): a finished
    /// Redeployment until the cache holds it finished, so that a pass woken
    /// before the watch echoes the last write waits for the echo instead of
    /// reading the object.
    pub fn saw<K: Resource<DynamicType = ()>>(&self, current: &K) {
        self.note(current, None);
    }

    /// [`saw`](Self::saw) for the answer to this process's own write: a
    /// create (`replaced` is `None`), or an update of the copy `replaced`;
    /// notes when it was made.
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, written: &K, replaced: Option<&K>) {
        let replaced = replaced.and_then(|r| r.resource_version());
        self.note(written, Some((Instant::now(), replaced)));
    }

    /// How long ago this process last wrote the object, if it did and still tracks it.
    pub fn since_written<K: Resource<DynamicType = ()>>(&self, object: &K) -> Option<Duration> {
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        known.get(&key(object))?.written_at.map(|at| at.elapsed())
    }

    fn note<K: Resource<DynamicType = ()>>(&self, current: &K, write: Option<(Instant, Option<String>)>) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = key(current);
        match current.resource_version() {
            Some(version) => {
                let (written_at, replaced) = match write {
                    Some((at, replaced)) => (Some(at), replaced),
                    None => (known.get(&key).and_then(|k| k.written_at), None),
                };
                known.insert(key, Known { version, replaced, waited_at: None, written_at })
            }
            None => known.remove(&key),
        };
    }

    /// Forgets an object: deleted, or finished and cached so.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        known.remove(&(K::kind(&()).into_owned(), namespace.to_string(), name.to_string()));
    }
}

fn key<K: Resource<DynamicType = ()>>(object: &K) -> Key {
    (K::kind(&()).into_owned(), object.namespace().unwrap_or_default(), object.name_any())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{App, Redeployment};

    fn at(version: &str) -> Redeployment {
        serde_json::from_value(json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment",
            "metadata": { "name": "shop-1", "namespace": "ns", "resourceVersion": version },
            "spec": { "app": "shop", "trigger": { "provider": "generic", "event": "call" } },
        }))
        .unwrap_or_else(|e| panic!("a valid Redeployment: {e}"))
    }

    #[test]
    fn a_cached_copy_is_trusted_at_our_version_waited_on_once_otherwise_read() {
        use Freshness::*;
        let known = KnownVersions::default();
        assert_eq!(known.freshness(&at("5")), Unknown, "never written or read here: read it");
        known.saw(&at("5"));
        assert_eq!(known.freshness(&at("5")), Current);
        known.saw(&at("7"));
        assert_eq!(known.freshness(&at("5")), Behind, "the watch has not echoed our write yet");
        assert_eq!(known.freshness(&at("7")), Current, "the echo");
        assert_eq!(known.freshness(&at("8")), Behind, "someone wrote after us: wait once");
        assert_eq!(known.freshness(&at("8")), Unknown, "still not ours: read it");
        known.saw(&at("8"));
        assert_eq!(known.freshness(&at("8")), Current);
        let app: App = serde_json::from_value(json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "App",
            "metadata": { "name": "shop-1", "namespace": "ns", "resourceVersion": "8" }, "spec": {},
        }))
        .unwrap_or_else(|e| panic!("a valid App: {e}"));
        assert_eq!(known.freshness(&app), Unknown, "kinds are apart");
        known.saw(&at("10"));
        assert_eq!(known.since_written(&at("10")), None, "read, never written");
        known.wrote(&at("11"), None);
        known.saw(&at("12"));
        assert!(
            known.since_written(&at("12")).is_some_and(|d| d < Duration::from_secs(60)),
            "a read keeps the time of the write"
        );
        known.forget::<Redeployment>("ns", "shop-1");
        assert!(known.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
    }

    #[test]
    fn a_copy_at_the_version_our_write_replaced_waits_for_the_echo_however_long() {
        use Freshness::*;
        let known = KnownVersions::default();
        known.wrote(&at("3"), None);
        assert_eq!(known.freshness(&at("3")), Current, "created here, and cached as created");
        known.wrote(&at("4"), Some(&at("3")));
        for _ in 0..3 {
            assert_eq!(known.freshness(&at("3")), Behind, "the echo of our write is late: wait, never read");
        }
        assert_eq!(known.freshness(&at("4")), Current, "the echo");
        assert_eq!(known.freshness(&at("5")), Behind, "someone wrote after us: wait once");
        assert_eq!(known.freshness(&at("5")), Unknown, "still not ours: read it");
        known.saw(&at("5"));
        assert_eq!(known.freshness(&at("4")), Behind, "a read replaced nothing: wait once");
        assert_eq!(known.freshness(&at("4")), Unknown);
    }
}
