//! Apps before Services at start-up. A started operator has every App and
//! every Service to reconcile at once; both write to the same API server, and
//! a Service's status can wait where an App's hook Secret cannot (without it
//! the App's hook answers 404). So Service reconciliations wait until every
//! App listed at start has been reconciled once, or [`FIRST_PASS_LIMIT`].

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    core::error_boundary::DeserializeGuard,
    runtime::reflector::{Lookup, Store},
};
use tokio::sync::watch;

use crate::api::App;

/// The longest Services wait for the Apps' first pass (Apps deleted meanwhile are never reconciled).
pub const FIRST_PASS_LIMIT: Duration = Duration::from_secs(60);

type Key = (String, String);

#[derive(Clone)]
pub struct AppsFirst {
    apps: Store<DeserializeGuard<App>>,
    /// The Apps not reconciled yet; `None` until the first use, once the App cache is complete.
    pending: Arc<Mutex<Option<HashSet<Key>>>>,
    done: watch::Sender<bool>,
    limit: Duration,
}

impl AppsFirst {
    /// Services wait at most `limit` ([`FIRST_PASS_LIMIT`] in the operator).
    pub fn new(apps: Store<DeserializeGuard<App>>, limit: Duration) -> Self {
        Self { apps, pending: Default::default(), done: watch::channel(false).0, limit }
    }

    /// Notes that `app` was reconciled (whatever the outcome).
    pub fn reconciled(&self, app: &DeserializeGuard<App>) {
        let key = (app.namespace().unwrap_or_default().into_owned(), app.name().unwrap_or_default().into_owned());
        self.with_pending(|pending| {
            pending.remove(&key);
        });
    }

    /// Returns once every App of the first list was reconciled, or after the limit.
    pub async fn wait(&self) {
        if *self.done.borrow() {
            // Every Service reconciliation after start-up passes here.
            return;
        }
        self.with_pending(|_| {});
        let mut done = self.done.subscribe();
        let _ = tokio::time::timeout(self.limit, done.wait_for(|done| *done)).await;
    }

    fn with_pending(&self, change: impl FnOnce(&mut HashSet<Key>)) {
        if *self.done.borrow() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let pending = pending.get_or_insert_with(|| {
            let listed = self.apps.state();
            listed
                .iter()
                .map(|app| {
                    (app.namespace().unwrap_or_default().into_owned(), app.name().unwrap_or_default().into_owned())
                })
                .collect()
        });
        change(pending);
        if pending.is_empty() {
            self.done.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher::Event};
    use serde_json::json;

    use super::*;

    fn app(name: &str) -> DeserializeGuard<App> {
        serde_json::from_value(json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "App",
            "metadata": { "name": name, "namespace": "ns" }, "spec": {},
        }))
        .unwrap_or_else(|e| panic!("a valid App: {e}"))
    }

    #[tokio::test]
    async fn services_wait_until_every_listed_app_was_reconciled_or_the_limit() {
        let (store, mut writer) = reflector::store();
        for name in ["a", "b"] {
            writer.apply_watcher_event(&Event::Apply(app(name)));
        }
        let first = AppsFirst::new(store.clone(), Duration::from_secs(60));
        let waiting = tokio::spawn({
            let first = first.clone();
            async move { first.wait().await }
        });
        first.reconciled(&app("a"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "b was not reconciled yet");
        first.reconciled(&app("b"));
        let waited = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(waited.is_ok(), "every App reconciled");

        // An App that is never reconciled (deleted meanwhile) holds Services back only so long.
        let stuck = AppsFirst::new(store, Duration::from_millis(200));
        let started = std::time::Instant::now();
        stuck.wait().await;
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
