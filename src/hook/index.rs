//! The hook lookup table: hook id -> (namespace, App, token), kept current by
//! a watch on the labelled hook Secrets, so a request costs no API call.
//!
//! Anyone who may write Secrets in some namespace can label one as a hook
//! Secret and copy another App's (public) hook id into it. So a Secret counts
//! only when an App controls it (a controller ownerReference to the App its
//! label names, in its own namespace), entries are kept per Secret, never per
//! id alone (a copy can neither replace nor, when deleted, remove another
//! App's entry), and when several Secrets carry one id the legitimate owner
//! is chosen the same way every time ([`owner_order`]).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Resource, ResourceExt,
    core::error_boundary::DeserializeGuard,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::credentials::{self, APP_LABEL, HOOK_LABEL, HookCredentials};
use crate::{api::App, cache::slim};

/// Where an authenticated hook call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookTarget {
    pub namespace: String,
    pub app: String,
}

/// A hook Secret, by namespace and name.
type SecretKey = (String, String);

/// What one hook Secret claims.
#[derive(Clone, Debug)]
struct Claim {
    target: HookTarget,
    token: String,
    secret_name: String,
    /// The uid of the App the Secret's controller ownerReference names.
    owner_uid: String,
    /// Whether the id was issued for that App ([`HookCredentials::is_bound_to`]).
    bound: bool,
    created: Option<Time>,
}

#[derive(Default)]
struct Table {
    /// Every claim on an id, by Secret.
    by_id: HashMap<String, BTreeMap<SecretKey, Claim>>,
    /// The id each Secret claims, to drop its claim when it changes or goes.
    id_of: HashMap<SecretKey, String>,
    /// Every labelled hook Secret, claim or not ([`slim`]med): the App
    /// reconciler reads its Secret here instead of asking the API server.
    secrets: HashMap<SecretKey, Secret>,
}

impl Table {
    fn apply(&mut self, mut secret: Secret) {
        slim(&mut secret);
        let key = secret_key(&secret);
        match claim(&secret) {
            Some((key, id, claim)) => self.insert(key, id, claim),
            None => self.remove(&key),
        }
        self.secrets.insert(key, secret);
    }

    fn delete(&mut self, secret: &Secret) {
        let key = secret_key(secret);
        self.remove(&key);
        self.secrets.remove(&key);
    }

    fn insert(&mut self, key: SecretKey, id: String, claim: Claim) {
        self.remove(&key);
        self.by_id.entry(id.clone()).or_default().insert(key.clone(), claim);
        self.id_of.insert(key, id);
    }

    fn remove(&mut self, key: &SecretKey) {
        let Some(id) = self.id_of.remove(key) else { return };
        if let Some(claims) = self.by_id.get_mut(&id) {
            claims.remove(key);
            if claims.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }
}

#[derive(Clone)]
pub struct HookIndex {
    table: Arc<RwLock<Table>>,
    /// The App cache, to check that a Secret's owner is the App it names
    /// (same uid) and that the Secret is that App's hook Secret. Without it
    /// (unit tests of other modules) only the Secret itself is checked.
    apps: Option<Store<DeserializeGuard<App>>>,
    synced: watch::Sender<bool>,
}

impl Default for HookIndex {
    fn default() -> Self {
        Self { table: Default::default(), apps: None, synced: watch::channel(false).0 }
    }
}

impl HookIndex {
    /// Checks every claim against the App cache as well.
    pub fn with_apps(mut self, apps: Store<DeserializeGuard<App>>) -> Self {
        self.apps = Some(apps);
        self
    }

    /// The App a hook id and token belong to; `None` for an unknown id or a
    /// wrong token alike. Only the id's legitimate owner's token is compared,
    /// in constant time.
    pub fn authenticate(&self, id: &str, token: &str) -> Option<HookTarget> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let owner = table
            .by_id
            .get(id)?
            .iter()
            .filter(|(_, claim)| self.owner_is_current(claim))
            .min_by(|a, b| owner_order(a).cmp(&owner_order(b)))
            .map(|(_, claim)| claim)?;
        bool::from(owner.token.as_bytes().ct_eq(token.as_bytes())).then(|| owner.target.clone())
    }

    /// With the App cache: the App the claim names exists with the uid its
    /// Secret is owned by, and the Secret is the one that App's hook uses.
    fn owner_is_current(&self, claim: &Claim) -> bool {
        let Some(apps) = &self.apps else { return true };
        let key = ObjectRef::new(&claim.target.app).within(&claim.target.namespace);
        let Some(app) = apps.get(&key) else { return false };
        let Ok(app) = &app.0 else { return false };
        app.meta().uid.as_deref() == Some(claim.owner_uid.as_str())
            && credentials::secret_name(app) == claim.secret_name
    }

    /// The labelled hook Secret `namespace/name` as last watched.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.secrets.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// True once the first full list of hook Secrets has been loaded.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Keeps the index current until the watch ends (it retries with backoff),
    /// and tells `wake` of the App owning each hook Secret that changed.
    pub async fn run(self, secrets: Api<Secret>, wake: impl Fn(&AppKey)) {
        let config = watcher::Config::default().labels(&format!("{HOOK_LABEL}=true"));
        let mut buffer: Option<Table> = None;
        let mut events = watcher(secrets, config).default_backoff().boxed();
        loop {
            match events.try_next().await {
                Ok(Some(event)) => self.apply(event, &mut buffer).iter().for_each(&wake),
                Ok(None) => return,
                Err(error) => tracing::warn!(%error, "watching hook Secrets failed; retrying"),
            }
        }
    }

    /// Applies one watch event; returns the Apps owning the Secrets it
    /// changed. The first full list wakes none (every App is reconciled
    /// then anyway); a later one wakes the owners of what it lists and of
    /// what it no longer lists.
    fn apply(&self, event: watcher::Event<Secret>, buffer: &mut Option<Table>) -> Vec<AppKey> {
        match event {
            watcher::Event::Init => *buffer = Some(Table::default()),
            watcher::Event::InitApply(secret) => {
                if let Some(buffer) = buffer.as_mut() {
                    buffer.apply(secret);
                }
            }
            watcher::Event::InitDone => {
                let relisted = self.is_synced();
                if let Some(complete) = buffer.take() {
                    let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                    let before = std::mem::replace(&mut *table, complete);
                    self.synced.send_replace(true);
                    if relisted {
                        return before.secrets.values().chain(table.secrets.values()).filter_map(owner_app).collect();
                    }
                }
                self.synced.send_replace(true);
            }
            watcher::Event::Apply(secret) => {
                let owner = owner_app(&secret);
                self.table.write().unwrap_or_else(|e| e.into_inner()).apply(secret);
                return owner.into_iter().collect();
            }
            watcher::Event::Delete(secret) => {
                self.table.write().unwrap_or_else(|e| e.into_inner()).delete(&secret);
                return owner_app(&secret).into_iter().collect();
            }
        }
        Vec::new()
    }
}

/// Which of several claims on one id is its owner (the smallest): an id
/// issued for the claiming App beats one that was not (a copy), then the
/// older Secret (a copy is made after the original), then the namespace and
/// name, so that every replica and every restart picks the same one.
fn owner_order<'a>(
    (key, claim): &(&'a SecretKey, &'a Claim),
) -> (Reverse<bool>, bool, Option<&'a Time>, &'a SecretKey) {
    (Reverse(claim.bound), claim.created.is_none(), claim.created.as_ref(), key)
}

/// An App, by namespace and name.
pub type AppKey = (String, String);

/// The App a hook Secret's controller ownerReference names, whatever its
/// labels say: the App whose reconciler made (or must remake) it.
pub fn owner_app(secret: &Secret) -> Option<AppKey> {
    let owner = secret.owner_references().iter().find(|owner| owner.controller == Some(true))?;
    let is_app = owner.kind == "App" && owner.api_version.split('/').next() == Some(App::group(&()).as_ref());
    is_app.then(|| (secret.namespace().unwrap_or_default(), owner.name.clone()))
}

fn secret_key(secret: &Secret) -> SecretKey {
    (secret.namespace().unwrap_or_default(), secret.name_any())
}

/// The claim of a hook Secret, when it is one an App controls: its
/// controller ownerReference is an App named as its app label (ownerReferences
/// name objects of the Secret's own namespace).
fn claim(secret: &Secret) -> Option<(SecretKey, String, Claim)> {
    let app = secret.labels().get(APP_LABEL)?;
    let owner = secret.owner_references().iter().find(|owner| owner.controller == Some(true))?;
    let owned_by_app = owner.kind == "App"
        && owner.api_version.split('/').next() == Some(App::group(&()).as_ref())
        && &owner.name == app;
    if !owned_by_app {
        tracing::warn!(
            secret = %secret.name_any(), namespace = ?secret.namespace(),
            "a labelled hook Secret is not controlled by the App its label names; it is ignored"
        );
        return None;
    }
    let Some(credentials) = HookCredentials::from_secret(secret) else {
        tracing::warn!(secret = %secret.name_any(), "hook Secret lacks an id or token; its hook answers 404");
        return None;
    };
    let target = HookTarget { namespace: secret.namespace()?, app: app.clone() };
    let claim = Claim {
        bound: credentials.is_bound_to(&owner.uid),
        target,
        token: credentials.token,
        secret_name: secret.name_any(),
        owner_uid: owner.uid.clone(),
        created: secret.metadata.creation_timestamp.clone(),
    };
    Some((secret_key(secret), credentials.id, claim))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        ByteString,
        apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, OwnerReference},
        jiff::Timestamp,
    };
    use kube::{api::ObjectMeta, runtime::reflector};

    use super::*;
    use crate::api::AppSpec;

    /// A hook Secret of App `app` in `namespace`, controlled by the App with `uid`, created at `created` (seconds).
    fn secret(namespace: &str, app: &str, uid: &str, id: &str, token: &str, created: i64) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("{app}-hook")),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([(APP_LABEL.into(), app.into()), (HOOK_LABEL.into(), "true".into())])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "redeploy.dev/v1alpha1".into(),
                    kind: "App".into(),
                    name: app.into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                creation_timestamp: Timestamp::from_second(created).ok().map(Time),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("id".into(), ByteString(id.into())),
                ("token".into(), ByteString(token.into())),
            ])),
            ..Default::default()
        }
    }

    fn shop(id: &str, token: &str) -> Secret {
        secret("team", "shop", "uid-shop", id, token, 1_000)
    }

    fn target(namespace: &str, app: &str) -> Option<HookTarget> {
        Some(HookTarget { namespace: namespace.into(), app: app.into() })
    }

    fn applied(index: &HookIndex, secrets: impl IntoIterator<Item = Secret>) {
        for secret in secrets {
            index.apply(watcher::Event::Apply(secret), &mut None);
        }
    }

    #[test]
    fn authenticates_only_the_right_token() {
        let index = HookIndex::default();
        let mut buffer = None;
        index.apply(watcher::Event::Init, &mut buffer);
        index.apply(watcher::Event::InitApply(shop("id1", "token1")), &mut buffer);
        assert!(!index.is_synced());
        index.apply(watcher::Event::InitDone, &mut buffer);
        assert!(index.is_synced());
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));
        assert_eq!(index.authenticate("id1", "token2"), None);
        assert_eq!(index.authenticate("id1", ""), None);
        assert_eq!(index.authenticate("id2", "token1"), None);
    }

    #[test]
    fn rotation_and_deletion_take_effect() {
        let index = HookIndex::default();
        applied(&index, [shop("id1", "old"), shop("id1", "new")]);
        assert_eq!(index.authenticate("id1", "old"), None);
        assert!(index.authenticate("id1", "new").is_some());
        // The id of a Secret changed: the old id no longer answers.
        applied(&index, [shop("id2", "new")]);
        assert_eq!(index.authenticate("id1", "new"), None);
        assert!(index.authenticate("id2", "new").is_some());
        index.apply(watcher::Event::Delete(shop("id2", "new")), &mut None);
        assert_eq!(index.authenticate("id2", "new"), None);
    }

    #[test]
    fn a_secret_without_credentials_is_skipped() {
        let index = HookIndex::default();
        let mut broken = shop("id1", "t");
        broken.data = None;
        applied(&index, [broken]);
        assert_eq!(index.authenticate("id1", "t"), None);
    }

    #[test]
    fn only_secrets_controlled_by_the_app_they_name_count() {
        let mut unowned = shop("id1", "t");
        unowned.metadata.owner_references = None;
        let mut not_controller = shop("id2", "t");
        not_controller.metadata.owner_references.as_mut().expect("owners")[0].controller = Some(false);
        let mut other_kind = shop("id3", "t");
        other_kind.metadata.owner_references.as_mut().expect("owners")[0].kind = "Deployment".into();
        let mut other_group = shop("id4", "t");
        other_group.metadata.owner_references.as_mut().expect("owners")[0].api_version = "evil.example/v1".into();
        let mut other_app = shop("id5", "t");
        other_app.metadata.owner_references.as_mut().expect("owners")[0].name = "cart".into();
        let index = HookIndex::default();
        applied(&index, [unowned, not_controller, other_kind, other_group, other_app]);
        for id in ["id1", "id2", "id3", "id4", "id5"] {
            assert_eq!(index.authenticate(id, "t"), None, "{id}");
        }
        applied(&index, [shop("id6", "t")]);
        assert_eq!(index.authenticate("id6", "t"), target("team", "shop"));
    }

    #[test]
    fn a_copied_id_neither_replaces_nor_removes_its_owner() {
        // Another namespace's Secret with shop's id, labels and an App of its own, created later.
        let copy = secret("evil", "shop", "uid-evil", "id1", "evil-token", 2_000);
        let index = HookIndex::default();
        applied(&index, [shop("id1", "token1"), copy.clone()]);
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));
        assert_eq!(index.authenticate("id1", "evil-token"), None);
        index.apply(watcher::Event::Delete(copy.clone()), &mut None);
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));

        // The same from a full list, the copy listed first.
        let mut buffer = None;
        index.apply(watcher::Event::Init, &mut buffer);
        index.apply(watcher::Event::InitApply(copy.clone()), &mut buffer);
        index.apply(watcher::Event::InitApply(shop("id1", "token1")), &mut buffer);
        index.apply(watcher::Event::InitDone, &mut buffer);
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));
        assert_eq!(index.authenticate("id1", "evil-token"), None);
    }

    #[test]
    fn an_id_issued_for_the_app_beats_an_older_copy() {
        let issued = HookCredentials::generate(Some("uid-shop"));
        // An older Secret of another App whose id was overwritten with shop's.
        let copy = secret("evil", "old", "uid-old", &issued.id, "evil-token", 10);
        let index = HookIndex::default();
        applied(&index, [copy, shop(&issued.id, &issued.token)]);
        assert_eq!(index.authenticate(&issued.id, &issued.token), target("team", "shop"));
        assert_eq!(index.authenticate(&issued.id, "evil-token"), None);
    }

    #[test]
    fn with_the_app_cache_only_the_apps_own_secret_counts() {
        let (apps, mut writer) = reflector::store::<DeserializeGuard<App>>();
        let mut app = App::new("shop", AppSpec::default());
        app.metadata.namespace = Some("team".into());
        app.metadata.uid = Some("uid-shop".into());
        writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(app))));
        let index = HookIndex::default().with_apps(apps);
        // Owned by an App of that name that no longer exists (another uid): older, yet not counted.
        let stale = secret("team", "shop", "uid-gone", "id1", "stale", 10);
        let mut renamed = shop("id2", "t");
        renamed.metadata.name = Some("not-the-hook-secret".into());
        applied(&index, [stale, renamed, shop("id1", "token1")]);
        assert_eq!(index.authenticate("id1", "stale"), None);
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));
        assert_eq!(index.authenticate("id2", "t"), None);
        // An App not in the cache answers nothing.
        applied(&index, [secret("team", "cart", "uid-cart", "id3", "t", 10)]);
        assert_eq!(index.authenticate("id3", "t"), None);
    }

    #[test]
    fn a_change_wakes_the_owning_app_and_keeps_the_secret_for_its_reconciler() {
        let index = HookIndex::default();
        let mut buffer = None;
        index.apply(watcher::Event::Init, &mut buffer);
        assert!(index.apply(watcher::Event::InitApply(shop("id1", "t")), &mut buffer).is_empty());
        assert!(index.apply(watcher::Event::InitDone, &mut buffer).is_empty(), "the first list wakes nothing");
        let shop_app = vec![("team".to_string(), "shop".to_string())];
        let mut rotated = shop("id1", "t2");
        rotated.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({ "f:data": {} }))),
            ..Default::default()
        }]);
        assert_eq!(index.apply(watcher::Event::Apply(rotated), &mut None), shop_app);
        let kept = index.secret("team", "shop-hook");
        assert_eq!(kept.as_ref().and_then(HookCredentials::from_secret).map(|c| c.token), Some("t2".into()));
        let managers = kept.and_then(|s| s.metadata.managed_fields).unwrap_or_default();
        let slimmed = ManagedFieldsEntry { manager: Some("kubectl".into()), ..Default::default() };
        assert_eq!(managers, [slimmed], "slimmed to who manages it");
        assert_eq!(index.apply(watcher::Event::Delete(shop("id1", "t2")), &mut None), shop_app);
        assert!(index.secret("team", "shop-hook").is_none());
        // A relist wakes the owner of a Secret it no longer lists.
        applied(&index, [shop("id1", "t")]);
        index.apply(watcher::Event::Init, &mut buffer);
        assert_eq!(index.apply(watcher::Event::InitDone, &mut buffer), shop_app);
        assert!(index.secret("team", "shop-hook").is_none());
    }

    #[test]
    fn a_relist_forgets_what_is_gone() {
        let index = HookIndex::default();
        applied(&index, [shop("id1", "t")]);
        let mut buffer = None;
        index.apply(watcher::Event::Init, &mut buffer);
        assert_eq!(index.authenticate("id1", "t"), target("team", "shop"), "kept until the list is complete");
        index.apply(watcher::Event::InitDone, &mut buffer);
        assert_eq!(index.authenticate("id1", "t"), None);
    }
}
