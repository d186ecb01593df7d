//! The signature keys of the Apps' hooks, kept between calls. A key read
//! from its Secret is used again for as long as a metadata-only watch of the
//! Secrets shows that Secret at the version it was read at: a signed call
//! then costs no read of the API server, and a key changed or deleted is
//! read again as soon as the watch tells of it. Only the keys the hook has
//! read are kept, never other Secrets' data.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Client, ResourceExt, core::PartialObjectMeta, runtime::watcher};

use crate::cache::{
    Index, Scope, Synced,
    index::{HeldKey, Keyed, ObjectKey, run_index_as},
};

#[derive(Clone, Default)]
pub struct SignatureKeys(Arc<RwLock<Keys>>);

#[derive(Default)]
struct Keys {
    /// The version of every Secret in scope, as the watch last told.
    versions: HashMap<ObjectKey, String>,
    /// Key values read, by Secret and key, with the version they were read at.
    values: HashMap<ObjectKey, HashMap<String, (String, Vec<u8>)>>,
}

impl SignatureKeys {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key` in Secret `namespace/name` as read before, if the
    /// watch shows that Secret unchanged since.
    pub fn get(&self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        let keys = self.read();
        let secret = (namespace.to_string(), name.to_string());
        let watched = keys.versions.get(&secret)?;
        let (version, value) = keys.values.get(&secret)?.get(key)?;
        (version == watched).then(|| value.clone())
    }

    /// Keeps `value`, read from `secret` under `key`.
    pub fn remember(&self, secret: &Secret, key: &str, value: &[u8]) {
        let Some(version) = secret.resource_version() else { return };
        let name = (secret.namespace().unwrap_or_default(), secret.name_any());
        self.write().values.entry(name).or_default().insert(key.to_string(), (version, value.to_vec()));
    }

    /// Keeps the Secrets' versions current from `scope` until the watches
    /// end (they retry with backoff).
    pub async fn run(self, client: Client, scope: Scope) {
        let apis = scope.apis::<PartialObjectMeta<Secret>>(&client);
        run_index_as(apis, watcher::Config::default(), Version::of, self, Synced::default()).await;
    }
}

/// What the watch keeps of a Secret.
pub struct Version {
    secret: ObjectKey,
    version: String,
}

impl Version {
    fn of(meta: PartialObjectMeta<Secret>) -> Self {
        let version = meta.resource_version().unwrap_or_default();
        Self { secret: (meta.namespace().unwrap_or_default(), meta.name_any()), version }
    }
}

impl Keyed for Version {
    fn key(&self) -> HeldKey {
        HeldKey::new(&self.secret.0, &self.secret.1)
    }
}

impl Index<Version> for SignatureKeys {
    fn apply(&mut self, object: Version, _first: bool) {
        self.write().versions.insert(object.secret, object.version);
    }

    fn delete(&mut self, namespace: String, name: String) {
        let secret = (namespace, name);
        let mut keys = self.write();
        keys.versions.remove(&secret);
        keys.values.remove(&secret);
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;

    fn secret(version: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("github".into()),
                namespace: Some("shop".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn watched(version: &str) -> Version {
        Version { secret: ("shop".into(), "github".into()), version: version.into() }
    }

    #[test]
    fn a_key_is_used_again_only_while_the_watch_shows_its_secret_unchanged() {
        let mut keys = SignatureKeys::default();
        keys.remember(&secret("5"), "key", b"old");
        assert_eq!(keys.get("shop", "github", "key"), None, "the watch has not shown the Secret yet");
        keys.apply(watched("5"), true);
        assert_eq!(keys.get("shop", "github", "key").as_deref(), Some(&b"old"[..]));
        assert_eq!(keys.get("shop", "github", "other"), None, "another key was never read");
        keys.apply(watched("6"), false);
        assert_eq!(keys.get("shop", "github", "key"), None, "changed: read it again");
        keys.remember(&secret("6"), "key", b"new");
        assert_eq!(keys.get("shop", "github", "key").as_deref(), Some(&b"new"[..]));
        keys.delete("shop".into(), "github".into());
        assert_eq!(keys.get("shop", "github", "key"), None, "deleted");
        keys.remember(&secret("7"), "key", b"newer");
        keys.apply(watched("7"), false);
        keys.listed(Vec::new(), false);
        assert_eq!(keys.get("shop", "github", "key").as_deref(), Some(&b"newer"[..]));
        keys.listed(vec![("shop".into(), "github".into())], false);
        assert_eq!(keys.get("shop", "github", "key"), None, "gone from a re-list");
    }
}
