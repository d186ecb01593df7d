//! Apps before Services, and every App's hook Secret before any App's
//! status, at start-up. A started operator has every App and every Service
//! to reconcile at once; both write to the same API server. What a new or
//! restarted operator cannot serve without is the hook Secrets (the hook of
//! an App without one answers 404; it serves the App as soon as its watch
//! sees the Secret), so:
//!
//! - the App reconciler makes the Secret of every App listed at start before
//!   it writes any App's status: a pass that finds others still without
//!   theirs leaves its status for later ([`AppsFirst::may_write_status`]),
//!   and those Apps are woken once every Secret was made;
//! - Service reconciliations wait until every App listed at start has been
//!   reconciled once (status written);
//! - the Services listed at start are handed to their reconciler only then,
//!   a few hundred at a time ([`hand_over_listed`]): queued at once, 10,500
//!   of them held about 7 MiB in the controller's queue (its delay queue and
//!   maps keep the room they grew to) while they waited anyway.
//!
//! An App deleted meanwhile is forgotten; either wait ends after
//! [`FIRST_PASS_LIMIT`] anyway.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::runtime::reflector::{Lookup, Store};
use tokio::sync::watch;

use crate::{
    api::{App, Service},
    cache::{Guarded, Trigger},
};

/// The longest the first pass holds back the App status writes and the Service reconciliations.
pub const FIRST_PASS_LIMIT: Duration = Duration::from_secs(60);

type Key = (String, String);

fn key_of(app: &Guarded<App>) -> Key {
    (app.namespace().unwrap_or_default().into_owned(), app.name().unwrap_or_default().into_owned())
}

/// How many listed Services [`hand_over_listed`] keeps queued or being
/// reconciled at once: enough to keep the reconciler's 32 slots busy.
pub const LISTED_SERVICES_QUEUED: u64 = 256;

/// Counts finished Service reconciliations (whatever their outcome), for
/// [`hand_over_listed`] to keep pace with.
#[derive(Clone)]
pub struct Reconciled(Arc<watch::Sender<u64>>);

impl Default for Reconciled {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Reconciled {
    pub fn one_more(&self) {
        self.0.send_modify(|count| *count += 1);
    }
}

/// Once the Apps' first pass is done, asks for every Service of the first
/// list to be reconciled, keeping at most `queued` of them ahead of the
/// reconciliations `reconciled` counts. Those counted include reconciliations
/// asked for by others, so it may run a little ahead; never behind.
pub async fn hand_over_listed(
    services: Store<Guarded<Service>>,
    trigger: Trigger<Guarded<Service>>,
    first: AppsFirst,
    reconciled: Reconciled,
    queued: u64,
) {
    first.wait().await;
    let mut progress = reconciled.0.subscribe();
    let before = *progress.borrow_and_update();
    for (handed, service) in (0u64..).zip(services.state()) {
        let caught_up = progress.wait_for(|count| handed < count.saturating_sub(before).saturating_add(queued));
        if caught_up.await.is_err() {
            return;
        }
        trigger.reconcile(&service.namespace().unwrap_or_default(), &service.name().unwrap_or_default());
    }
}

/// What the first pass still waits for; made at the first use, once the App cache is complete.
#[derive(Default)]
struct Pending {
    /// Listed Apps whose Secret step has not run yet.
    without_secret: HashSet<Key>,
    /// Listed Apps not reconciled (status written) yet.
    not_reconciled: HashSet<Key>,
    /// Apps whose status write waits for the others' Secrets.
    deferred: HashSet<Key>,
}

#[derive(Clone)]
pub struct AppsFirst {
    apps: Store<Guarded<App>>,
    /// Wakes the deferred Apps once every Secret was made.
    wake: Trigger<Guarded<App>>,
    pending: Arc<Mutex<Option<Pending>>>,
    /// Every listed App went through its Secret step: statuses may be written.
    secrets_done: watch::Sender<bool>,
    /// Every listed App was reconciled: Services may go.
    done: watch::Sender<bool>,
    limit: Duration,
}

impl AppsFirst {
    /// Each wait ends after `limit` at most ([`FIRST_PASS_LIMIT`] in the operator).
    pub fn new(apps: Store<Guarded<App>>, wake: Trigger<Guarded<App>>, limit: Duration) -> Self {
        Self {
            apps,
            wake,
            pending: Default::default(),
            secrets_done: watch::channel(false).0,
            done: watch::channel(false).0,
            limit,
        }
    }

    /// Called by the App reconciler once `app`'s hook Secret is made (or
    /// found, or cannot be): false, and `app` is woken later, while other
    /// Apps listed at start have not had their Secret step yet.
    pub fn may_write_status(&self, app: &Guarded<App>) -> bool {
        if *self.secrets_done.borrow() {
            return true;
        }
        let key = key_of(app);
        let mut deferred = false;
        self.with_pending(|pending| {
            pending.without_secret.remove(&key);
            deferred = !pending.without_secret.is_empty();
            if deferred {
                pending.deferred.insert(key);
            } else {
                pending.deferred.remove(&key);
            }
        });
        !deferred
    }

    /// Notes that `app` was reconciled (whatever the outcome), unless its status write was deferred.
    pub fn reconciled(&self, app: &Guarded<App>) {
        let key = key_of(app);
        self.with_pending(|pending| {
            if !pending.deferred.contains(&key) {
                pending.without_secret.remove(&key);
                pending.not_reconciled.remove(&key);
            }
        });
    }

    /// Notes that `app` was deleted: the first pass does not wait for it
    /// (before the pass starts there is nothing to forget: it lists the Apps then).
    pub fn forget(&self, namespace: &str, name: &str) {
        let started = self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if !started {
            return;
        }
        let key = (namespace.to_string(), name.to_string());
        self.with_pending(|pending| {
            pending.without_secret.remove(&key);
            pending.not_reconciled.remove(&key);
            pending.deferred.remove(&key);
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

    /// Ends the first pass: every deferred App is woken, nothing waits any more.
    fn give_up(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pending) = pending.as_mut() {
            self.wake_deferred(pending);
        }
        self.secrets_done.send_replace(true);
        self.done.send_replace(true);
    }

    fn wake_deferred(&self, pending: &mut Pending) {
        for (namespace, name) in pending.deferred.drain() {
            self.wake.reconcile(&namespace, &name);
        }
    }

    fn with_pending(&self, change: impl FnOnce(&mut Pending)) {
        if *self.done.borrow() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let pending = pending.get_or_insert_with(|| {
            let listed: HashSet<Key> = self.apps.state().iter().map(|app| key_of(app)).collect();
            // The backstop for an App that is never reconciled (its deletion unseen, say).
            let first = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(first.limit).await;
                first.give_up();
            });
            Pending { without_secret: listed.clone(), not_reconciled: listed, deferred: HashSet::new() }
        });
        change(pending);
        if pending.without_secret.is_empty() && !*self.secrets_done.borrow() {
            self.secrets_done.send_replace(true);
            self.wake_deferred(pending);
        }
        if pending.not_reconciled.is_empty() {
            self.done.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{StreamExt, channel::mpsc::UnboundedReceiver};
    use kube::runtime::{
        reflector::{self, ObjectRef},
        watcher::Event,
    };
    use serde_json::json;

    use super::*;

    fn app(name: &str) -> Guarded<App> {
        serde_json::from_value(json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "App",
            "metadata": { "name": name, "namespace": "ns" }, "spec": {},
        }))
        .unwrap_or_else(|e| panic!("a valid App: {e}"))
    }

    fn service(name: &str) -> Guarded<Service> {
        serde_json::from_value(json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
            "metadata": { "name": name, "namespace": "ns" },
            "spec": { "app": "a", "target": { "name": name }, "image": { "reference": "example.com/web" } },
        }))
        .unwrap_or_else(|e| panic!("a valid Service: {e}"))
    }

    fn listed(names: &[&str]) -> Store<Guarded<App>> {
        let (store, mut writer) = reflector::store();
        for name in names {
            writer.apply_watcher_event(&Event::Apply(app(name)));
        }
        store
    }

    #[tokio::test]
    async fn services_wait_until_every_listed_app_was_reconciled_or_the_limit() {
        let store = listed(&["a", "b"]);
        let first = AppsFirst::new(store.clone(), Trigger::new().0, Duration::from_secs(60));
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
        let stuck = AppsFirst::new(store, Trigger::new().0, Duration::from_millis(200));
        let started = std::time::Instant::now();
        stuck.wait().await;
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn no_app_status_is_written_until_every_listed_app_had_its_secret_step() {
        let (wake, mut woken) = Trigger::new();
        let first = AppsFirst::new(listed(&["a", "b", "c"]), wake, Duration::from_secs(60));
        for name in ["a", "b"] {
            assert!(!first.may_write_status(&app(name)), "{name}: c has no Secret yet");
            first.reconciled(&app(name));
        }
        let services = tokio::spawn({
            let first = first.clone();
            async move { first.wait().await }
        });
        first.forget("ns", "c");
        // c deleted: a and b are woken to write their status, and now may.
        let mut names: Vec<String> = woken.by_ref().take(2).map(|r| r.name).collect().await;
        names.sort();
        assert_eq!(names, ["a", "b"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!services.is_finished(), "the deferred Apps' statuses are not written yet");
        for name in ["a", "b"] {
            assert!(first.may_write_status(&app(name)));
            first.reconciled(&app(name));
        }
        let waited = tokio::time::timeout(Duration::from_secs(5), services).await;
        assert!(waited.is_ok(), "every App reconciled");
        assert!(first.may_write_status(&app("new")), "after the first pass nothing waits");
    }

    #[tokio::test]
    async fn the_last_secret_lets_its_own_status_through_and_wakes_the_others() {
        let (wake, mut woken) = Trigger::new();
        let first = AppsFirst::new(listed(&["a", "b"]), wake, Duration::from_secs(60));
        assert!(!first.may_write_status(&app("a")));
        first.reconciled(&app("a"));
        // b's reconciliation failed before its Secret step: it counts as done.
        first.reconciled(&app("b"));
        let woken = tokio::time::timeout(Duration::from_secs(5), woken.next()).await;
        assert_eq!(woken.ok().flatten().map(|r| r.name), Some("a".to_string()));
        assert!(first.may_write_status(&app("b")), "b's retry writes at once");

        // An App never reconciled holds the statuses back only so long.
        let (wake, mut woken) = Trigger::new();
        let stuck = AppsFirst::new(listed(&["a", "b"]), wake, Duration::from_millis(200));
        assert!(!stuck.may_write_status(&app("a")));
        let woken = tokio::time::timeout(Duration::from_secs(5), woken.next()).await;
        assert_eq!(woken.ok().flatten().map(|r| r.name), Some("a".to_string()));
        assert!(stuck.may_write_status(&app("a")));
    }

    async fn next_asked(
        asked: &mut UnboundedReceiver<ObjectRef<Guarded<Service>>>,
    ) -> Option<ObjectRef<Guarded<Service>>> {
        tokio::time::timeout(Duration::from_millis(200), asked.next()).await.ok().flatten()
    }

    #[tokio::test]
    async fn listed_services_are_handed_over_after_the_apps_and_as_they_are_reconciled() {
        let (services, mut writer) = reflector::store();
        for name in ["s1", "s2", "s3", "s4", "s5"] {
            writer.apply_watcher_event(&Event::Apply(service(name)));
        }
        let (trigger, mut asked) = Trigger::new();
        let first = AppsFirst::new(listed(&["a"]), Trigger::new().0, Duration::from_secs(60));
        let reconciled = Reconciled::default();
        let handing = tokio::spawn(hand_over_listed(services, trigger, first.clone(), reconciled.clone(), 2));
        assert!(next_asked(&mut asked).await.is_none(), "App a was not reconciled yet");
        first.reconciled(&app("a"));
        let mut handed = Vec::new();
        for _ in 0..2 {
            handed.extend(next_asked(&mut asked).await.map(|r| r.name));
        }
        assert_eq!(handed.len(), 2, "two at a time: {handed:?}");
        assert!(next_asked(&mut asked).await.is_none(), "none reconciled yet, so no third");
        for _ in 0..3 {
            reconciled.one_more();
            handed.extend(next_asked(&mut asked).await.map(|r| r.name));
        }
        handed.sort();
        assert_eq!(handed, ["s1", "s2", "s3", "s4", "s5"]);
        let ended = tokio::time::timeout(Duration::from_secs(5), handing).await;
        assert!(ended.is_ok(), "every listed Service was handed over");
    }
}
