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
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Client, Resource, ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use subtle::ConstantTimeEq;

use super::credentials::{self, APP_LABEL, HOOK_LABEL, HookCredentials};
use crate::{
    api::App,
    cache::{Guarded, Index, Scope, Synced, run_index, slim},
};

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
    /// Every claim on an id, by Secret: almost always one, so a list (a
    /// map's node would take room for eleven claims per hook).
    by_id: HashMap<String, Vec<(SecretKey, Claim)>>,
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

    fn delete(&mut self, key: &SecretKey) {
        self.remove(key);
        self.secrets.remove(key);
    }

    fn insert(&mut self, key: SecretKey, id: String, claim: Claim) {
        self.remove(&key);
        self.by_id.entry(id.clone()).or_default().push((key.clone(), claim));
        self.id_of.insert(key, id);
    }

    fn remove(&mut self, key: &SecretKey) {
        let Some(id) = self.id_of.remove(key) else { return };
        if let Some(claims) = self.by_id.get_mut(&id) {
            claims.retain(|(claimed_by, _)| claimed_by != key);
            if claims.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }
}

#[derive(Clone, Default)]
pub struct HookIndex {
    table: Arc<RwLock<Table>>,
    /// The App cache, to check that a Secret's owner is the App it names
    /// (same uid) and that the Secret is that App's hook Secret. Without it
    /// (unit tests of other modules) only the Secret itself is checked.
    apps: Option<Store<Guarded<App>>>,
    synced: Synced,
}

impl HookIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks every claim against the App cache as well.
    pub fn with_apps(mut self, apps: Store<Guarded<App>>) -> Self {
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
        self.synced.is_synced()
    }

    pub async fn wait_synced(&self) {
        self.synced.wait().await;
    }

    /// Keeps the index current from the hook Secrets of `scope` until the
    /// watches end (they retry with backoff), and tells `wake` of the App
    /// owning each hook Secret that changed.
    pub async fn run(self, client: Client, scope: Scope, wake: impl Fn(&AppKey)) {
        let config = watcher::Config::default().labels(&format!("{HOOK_LABEL}=true"));
        let synced = self.synced.clone();
        run_index(scope.apis::<Secret>(&client), config, HookWatch { index: self, wake }, synced).await;
    }
}

/// The hook index as an [`Index`] of Secrets, waking the Apps that own
/// the Secrets it changes. The first full list wakes none (every App is
/// reconciled then anyway); a later one wakes the owners of what it lists
/// and of what it no longer lists.
struct HookWatch<F> {
    index: HookIndex,
    wake: F,
}

impl<F: Fn(&AppKey)> Index<Secret> for HookWatch<F> {
    /// Wakes the App the Secret belonged to and the one it belongs to now.
    fn apply(&mut self, secret: Secret, first: bool) {
        let owners = {
            let mut table = self.index.write();
            let before = table.secrets.get(&secret_key(&secret)).and_then(owner_app);
            let mut owners: Vec<AppKey> = before.into_iter().chain(owner_app(&secret)).collect();
            owners.dedup();
            table.apply(secret);
            owners
        };
        if !first {
            owners.iter().for_each(&self.wake);
        }
    }

    fn delete(&mut self, namespace: String, name: String) {
        let key = (namespace, name);
        let owner = {
            let mut table = self.index.write();
            let owner = table.secrets.get(&key).and_then(owner_app);
            table.delete(&key);
            owner
        };
        owner.iter().for_each(&self.wake);
    }
}

/// Which of several claims on one id is its owner (the smallest): an id
/// issued for the claiming App beats one that was not (a copy), then the
/// older Secret (a copy is made after the original), then the namespace and
/// name, so that every replica and every restart picks the same one.
fn owner_order((key, claim): &(SecretKey, Claim)) -> (Reverse<bool>, bool, Option<&Time>, &SecretKey) {
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
    use std::collections::BTreeMap;

    use k8s_openapi::{
        ByteString,
        apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, OwnerReference},
        jiff::Timestamp,
    };
    use kube::{api::ObjectMeta, runtime::reflector};

    use std::{cell::RefCell, rc::Rc};

    use super::*;
    use crate::{api::AppSpec, cache::index::Driver};

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

    /// Hands watch events to an index the way its watch does, and tells
    /// which Apps each one woke.
    type Wake = Box<dyn Fn(&AppKey)>;

    struct Feed {
        driver: Driver,
        watch: HookWatch<Wake>,
        woken: Rc<RefCell<Vec<AppKey>>>,
    }

    impl Feed {
        fn new(index: &HookIndex) -> Self {
            let woken = Rc::new(RefCell::new(Vec::new()));
            let wake = {
                let woken = woken.clone();
                Box::new(move |app: &AppKey| woken.borrow_mut().push(app.clone())) as Wake
            };
            let driver = Driver::new(1, index.synced.clone());
            Self { driver, watch: HookWatch { index: index.clone(), wake }, woken }
        }

        fn event(&mut self, event: watcher::Event<Secret>) -> Vec<AppKey> {
            self.driver.handle(0, event, &mut self.watch);
            self.woken.take()
        }
    }

    fn applied(feed: &mut Feed, secrets: impl IntoIterator<Item = Secret>) {
        for secret in secrets {
            feed.event(watcher::Event::Apply(secret));
        }
    }

    #[test]
    fn authenticates_only_the_right_token() {
        let index = HookIndex::default();
        let mut feed = Feed::new(&index);
        feed.event(watcher::Event::Init);
        feed.event(watcher::Event::InitApply(shop("id1", "token1")));
        assert!(!index.is_synced());
        feed.event(watcher::Event::InitDone);
        assert!(index.is_synced());
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));
        assert_eq!(index.authenticate("id1", "token2"), None);
        assert_eq!(index.authenticate("id1", ""), None);
        assert_eq!(index.authenticate("id2", "token1"), None);
    }

    #[test]
    fn rotation_and_deletion_take_effect() {
        let index = HookIndex::default();
        let mut feed = Feed::new(&index);
        applied(&mut feed, [shop("id1", "old"), shop("id1", "new")]);
        assert_eq!(index.authenticate("id1", "old"), None);
        assert!(index.authenticate("id1", "new").is_some());
        // The id of a Secret changed: the old id no longer answers.
        applied(&mut feed, [shop("id2", "new")]);
        assert_eq!(index.authenticate("id1", "new"), None);
        assert!(index.authenticate("id2", "new").is_some());
        feed.event(watcher::Event::Delete(shop("id2", "new")));
        assert_eq!(index.authenticate("id2", "new"), None);
    }

    #[test]
    fn a_secret_without_credentials_is_skipped() {
        let index = HookIndex::default();
        let mut feed = Feed::new(&index);
        let mut broken = shop("id1", "t");
        broken.data = None;
        applied(&mut feed, [broken]);
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
        let mut feed = Feed::new(&index);
        applied(&mut feed, [unowned, not_controller, other_kind, other_group, other_app]);
        for id in ["id1", "id2", "id3", "id4", "id5"] {
            assert_eq!(index.authenticate(id, "t"), None, "{id}");
        }
        applied(&mut feed, [shop("id6", "t")]);
        assert_eq!(index.authenticate("id6", "t"), target("team", "shop"));
    }

    #[test]
    fn a_copied_id_neither_replaces_nor_removes_its_owner() {
        // Another namespace's Secret with shop's id, labels and an App of its own, created later.
        let copy = secret("evil", "shop", "uid-evil", "id1", "evil-token", 2_000);
        let index = HookIndex::default();
        let mut feed = Feed::new(&index);
        applied(&mut feed, [shop("id1", "token1"), copy.clone()]);
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));
        assert_eq!(index.authenticate("id1", "evil-token"), None);
        feed.event(watcher::Event::Delete(copy.clone()));
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));

        // The same from a full list, the copy listed first.
        feed.event(watcher::Event::Init);
        feed.event(watcher::Event::InitApply(copy.clone()));
        feed.event(watcher::Event::InitApply(shop("id1", "token1")));
        feed.event(watcher::Event::InitDone);
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));
        assert_eq!(index.authenticate("id1", "evil-token"), None);
    }

    #[test]
    fn an_id_issued_for_the_app_beats_an_older_copy() {
        let issued = HookCredentials::generate(Some("uid-shop"));
        // An older Secret of another App whose id was overwritten with shop's.
        let copy = secret("evil", "old", "uid-old", &issued.id, "evil-token", 10);
        let index = HookIndex::default();
        let mut feed = Feed::new(&index);
        applied(&mut feed, [copy, shop(&issued.id, &issued.token)]);
        assert_eq!(index.authenticate(&issued.id, &issued.token), target("team", "shop"));
        assert_eq!(index.authenticate(&issued.id, "evil-token"), None);
    }

    #[test]
    fn with_the_app_cache_only_the_apps_own_secret_counts() {
        let (apps, mut writer) = reflector::store::<Guarded<App>>();
        let mut app = App::new("shop", AppSpec::default());
        app.metadata.namespace = Some("team".into());
        app.metadata.uid = Some("uid-shop".into());
        writer.apply_watcher_event(&watcher::Event::Apply(Guarded(Ok(app))));
        let index = HookIndex::default().with_apps(apps);
        let mut feed = Feed::new(&index);
        // Owned by an App of that name that no longer exists (another uid): older, yet not counted.
        let stale = secret("team", "shop", "uid-gone", "id1", "stale", 10);
        let mut renamed = shop("id2", "t");
        renamed.metadata.name = Some("not-the-hook-secret".into());
        applied(&mut feed, [stale, renamed, shop("id1", "token1")]);
        assert_eq!(index.authenticate("id1", "stale"), None);
        assert_eq!(index.authenticate("id1", "token1"), target("team", "shop"));
        assert_eq!(index.authenticate("id2", "t"), None);
        // An App not in the cache answers nothing.
        applied(&mut feed, [secret("team", "cart", "uid-cart", "id3", "t", 10)]);
        assert_eq!(index.authenticate("id3", "t"), None);
    }

    #[test]
    fn a_change_wakes_the_owning_app_and_keeps_the_secret_for_its_reconciler() {
        let index = HookIndex::default();
        let mut feed = Feed::new(&index);
        feed.event(watcher::Event::Init);
        assert!(feed.event(watcher::Event::InitApply(shop("id1", "t"))).is_empty());
        assert!(feed.event(watcher::Event::InitDone).is_empty(), "the first list wakes nothing");
        let shop_app = vec![("team".to_string(), "shop".to_string())];
        let mut rotated = shop("id1", "t2");
        rotated.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({ "f:data": {} }))),
            ..Default::default()
        }]);
        assert_eq!(feed.event(watcher::Event::Apply(rotated)), shop_app);
        let kept = index.secret("team", "shop-hook");
        assert_eq!(kept.as_ref().and_then(HookCredentials::from_secret).map(|c| c.token), Some("t2".into()));
        assert_eq!(kept.and_then(|s| s.metadata.managed_fields), None, "slimmed: no reader asks who manages it");
        assert_eq!(feed.event(watcher::Event::Delete(shop("id1", "t2"))), shop_app);
        assert!(index.secret("team", "shop-hook").is_none());
        // A relist wakes the owner of a Secret it no longer lists.
        applied(&mut feed, [shop("id1", "t")]);
        feed.event(watcher::Event::Init);
        assert_eq!(feed.event(watcher::Event::InitDone), shop_app);
        assert!(index.secret("team", "shop-hook").is_none());
    }

    #[test]
    fn a_relist_forgets_what_is_gone() {
        let index = HookIndex::default();
        let mut feed = Feed::new(&index);
        applied(&mut feed, [shop("id1", "t")]);
        feed.event(watcher::Event::Init);
        assert_eq!(index.authenticate("id1", "t"), target("team", "shop"), "kept until the list is complete");
        feed.event(watcher::Event::InitDone);
        assert_eq!(index.authenticate("id1", "t"), None);
    }
}
