//! The hook lookup table: hook id -> (namespace, App, token), kept current by
//! a watch on the labelled hook Secrets, so a request costs no API call.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::credentials::{APP_LABEL, HOOK_LABEL, HookCredentials};

/// Where an authenticated hook call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookTarget {
    pub namespace: String,
    pub app: String,
}

#[derive(Clone)]
struct Entry {
    target: HookTarget,
    token: String,
}

#[derive(Clone)]
pub struct HookIndex {
    by_id: Arc<RwLock<HashMap<String, Entry>>>,
    synced: watch::Sender<bool>,
}

impl Default for HookIndex {
    fn default() -> Self {
        Self { by_id: Default::default(), synced: watch::channel(false).0 }
    }
}

impl HookIndex {
    /// The App a hook id and token belong to; `None` for an unknown id or a
    /// wrong token alike. The token is compared in constant time.
    pub fn authenticate(&self, id: &str, token: &str) -> Option<HookTarget> {
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let entry = by_id.get(id)?;
        bool::from(entry.token.as_bytes().ct_eq(token.as_bytes())).then(|| entry.target.clone())
    }

    /// True once the first full list of hook Secrets has been loaded.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Keeps the index current until the watch ends (it retries with backoff).
    pub async fn run(self, secrets: Api<Secret>) {
        let config = watcher::Config::default().labels(&format!("{HOOK_LABEL}=true"));
        let mut buffer: Option<HashMap<String, Entry>> = None;
        let mut events = watcher(secrets, config).default_backoff().boxed();
        loop {
            match events.try_next().await {
                Ok(Some(event)) => self.apply(event, &mut buffer),
                Ok(None) => return,
                Err(error) => tracing::warn!(%error, "watching hook Secrets failed; retrying"),
            }
        }
    }

    fn apply(&self, event: watcher::Event<Secret>, buffer: &mut Option<HashMap<String, Entry>>) {
        match event {
            watcher::Event::Init => *buffer = Some(HashMap::new()),
            watcher::Event::InitApply(secret) => {
                if let (Some(buffer), Some((id, entry))) = (buffer.as_mut(), entry(&secret)) {
                    buffer.insert(id, entry);
                }
            }
            watcher::Event::InitDone => {
                if let Some(complete) = buffer.take() {
                    *self.by_id.write().unwrap_or_else(|e| e.into_inner()) = complete;
                }
                self.synced.send_replace(true);
            }
            watcher::Event::Apply(secret) => {
                let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
                remove_secret(&mut by_id, &secret);
                if let Some((id, entry)) = entry(&secret) {
                    by_id.insert(id, entry);
                }
            }
            watcher::Event::Delete(secret) => {
                remove_secret(&mut self.by_id.write().unwrap_or_else(|e| e.into_inner()), &secret);
            }
        }
    }
}

/// Drops the entries of `secret` (its id may have changed since it was indexed).
fn remove_secret(by_id: &mut HashMap<String, Entry>, secret: &Secret) {
    let namespace = secret.namespace().unwrap_or_default();
    let app = secret.labels().get(APP_LABEL).cloned().unwrap_or_default();
    by_id.retain(|_, entry| !(entry.target.namespace == namespace && entry.target.app == app));
}

fn entry(secret: &Secret) -> Option<(String, Entry)> {
    let Some(credentials) = HookCredentials::from_secret(secret) else {
        tracing::warn!(secret = %secret.name_any(), "hook Secret lacks an id or token; its hook answers 404");
        return None;
    };
    let target = HookTarget { namespace: secret.namespace()?, app: secret.labels().get(APP_LABEL)?.clone() };
    Some((credentials.id, Entry { target, token: credentials.token }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    use super::*;

    fn secret(app: &str, id: &str, token: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("{app}-hook")),
                namespace: Some("team".into()),
                labels: Some(BTreeMap::from([(APP_LABEL.into(), app.into()), (HOOK_LABEL.into(), "true".into())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("id".into(), ByteString(id.into())),
                ("token".into(), ByteString(token.into())),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn authenticates_only_the_right_token() {
        let index = HookIndex::default();
        let mut buffer = None;
        index.apply(watcher::Event::Init, &mut buffer);
        index.apply(watcher::Event::InitApply(secret("shop", "id1", "token1")), &mut buffer);
        assert!(!index.is_synced());
        index.apply(watcher::Event::InitDone, &mut buffer);
        assert!(index.is_synced());
        let shop = HookTarget { namespace: "team".into(), app: "shop".into() };
        assert_eq!(index.authenticate("id1", "token1"), Some(shop));
        assert_eq!(index.authenticate("id1", "token2"), None);
        assert_eq!(index.authenticate("id1", ""), None);
        assert_eq!(index.authenticate("id2", "token1"), None);
    }

    #[test]
    fn rotation_and_deletion_take_effect() {
        let index = HookIndex::default();
        let mut buffer = None;
        index.apply(watcher::Event::Apply(secret("shop", "id1", "old")), &mut buffer);
        index.apply(watcher::Event::Apply(secret("shop", "id1", "new")), &mut buffer);
        assert_eq!(index.authenticate("id1", "old"), None);
        assert!(index.authenticate("id1", "new").is_some());
        index.apply(watcher::Event::Delete(secret("shop", "id1", "new")), &mut buffer);
        assert_eq!(index.authenticate("id1", "new"), None);
    }

    #[test]
    fn a_secret_without_credentials_is_skipped() {
        let index = HookIndex::default();
        let mut broken = secret("shop", "id1", "t");
        broken.data = None;
        index.apply(watcher::Event::Apply(broken), &mut None);
        assert_eq!(index.authenticate("id1", "t"), None);
    }
}
