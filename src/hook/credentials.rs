//! The App's hook Secret: an opaque `id`, a secret `token` and the full `url`.
//! Building the Secret is pure; the App reconciler applies it.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::App;

/// Label on every hook Secret; the hook server watches Secrets with it.
pub const HOOK_LABEL: &str = "redeploy.dev/hook";
/// Label naming the App an object belongs to.
pub const APP_LABEL: &str = "redeploy.dev/app";
/// App annotation: change its value to get a new token (the id stays).
pub const ROTATE_ANNOTATION: &str = "redeploy.dev/rotate-token";
/// Secret annotation: the rotation request the current token answers.
const ROTATED_FOR_ANNOTATION: &str = "redeploy.dev/rotated-for";

pub const ID_KEY: &str = "id";
pub const TOKEN_KEY: &str = "token";
pub const URL_KEY: &str = "url";

/// Path prefix of every hook URL: the Cloud 66 shape, so a Git host set up
/// for Cloud 66 needs only a new host name.
pub const PATH_PREFIX: &str = "/stacks/redeploy";

#[derive(Clone, PartialEq, Eq)]
pub struct HookCredentials {
    pub id: String,
    pub token: String,
}

impl std::fmt::Debug for HookCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookCredentials").field("id", &self.id).field("token", &"<redacted>").finish()
    }
}

impl HookCredentials {
    /// A new id (12 bytes, hex) and random token (32 bytes, URL-safe). The
    /// id is bound to the uid of the App it is issued for: 6 random bytes,
    /// then 6 bytes of SHA-256 over the uid and those bytes. Ids are not
    /// secret, so a copy of one can turn up in a Secret of another App; the
    /// hook index then tells the copy from the original ([`Self::is_bound_to`]).
    /// Without a uid (an App not stored yet) all 12 bytes are random.
    pub fn generate(app_uid: Option<&str>) -> Self {
        let id = match app_uid {
            Some(uid) => {
                let random = rand::random::<[u8; ID_HALF]>();
                [random.as_slice(), &id_binding(uid, &random)].concat()
            }
            None => rand::random::<[u8; 2 * ID_HALF]>().to_vec(),
        };
        Self { id: hex::encode(id), token: new_token() }
    }

    /// Whether the id was issued for the App with this uid by [`Self::generate`].
    /// Ids issued before ids were bound are bound to nothing.
    pub fn is_bound_to(&self, app_uid: &str) -> bool {
        let Ok(id) = hex::decode(&self.id) else { return false };
        id.len() == 2 * ID_HALF && bool::from(id[ID_HALF..].ct_eq(&id_binding(app_uid, &id[..ID_HALF])))
    }

    /// Reads the credentials of a hook Secret; `None` when a key is missing or empty.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let get = |key: &str| data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok()).filter(|v| !v.is_empty());
        Some(Self { id: get(ID_KEY)?, token: get(TOKEN_KEY)? })
    }

    pub fn url(&self, public_url: &str) -> String {
        format!("{}{PATH_PREFIX}/{}/{}", public_url.trim_end_matches('/'), self.id, self.token)
    }
}

/// Bytes of a hook id that are random, and bytes that bind it to its App.
const ID_HALF: usize = 6;

fn id_binding(app_uid: &str, random: &[u8]) -> [u8; ID_HALF] {
    let digest = Sha256::new()
        .chain_update(b"redeploy.dev hook id\n")
        .chain_update(app_uid.as_bytes())
        .chain_update(b"\n")
        .chain_update(random)
        .finalize();
    let mut binding = [0; ID_HALF];
    binding.copy_from_slice(&digest[..ID_HALF]);
    binding
}

fn new_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The hook path with the token masked, as shown in `App.status.hook.path`.
pub fn masked_path(id: &str) -> String {
    format!("{PATH_PREFIX}/{id}/********")
}

/// Name of the App's hook Secret.
pub fn secret_name(app: &App) -> String {
    app.spec.hook.secret_name.clone().unwrap_or_else(|| format!("{}-hook", app.name_any()))
}

/// The hook Secret the App should have, given the one it has: credentials
/// are kept unless missing or a rotation was asked for; the URL follows
/// `public_url`.
pub fn desired_secret(app: &App, existing: Option<&Secret>, public_url: &str) -> Secret {
    let rotation = app.annotations().get(ROTATE_ANNOTATION).cloned();
    let existing_credentials = existing.and_then(HookCredentials::from_secret);
    let answered = existing.and_then(|s| s.annotations().get(ROTATED_FOR_ANNOTATION).cloned());
    let credentials = match existing_credentials {
        Some(mut credentials) => {
            if rotation.is_some() && rotation != answered {
                credentials.token = new_token();
            }
            credentials
        }
        None => HookCredentials::generate(app.meta().uid.as_deref()),
    };
    let mut annotations = BTreeMap::new();
    if let Some(rotation) = rotation.or(answered) {
        annotations.insert(ROTATED_FOR_ANNOTATION.to_string(), rotation);
    }
    let data = BTreeMap::from([
        (ID_KEY.to_string(), ByteString(credentials.id.clone().into_bytes())),
        (TOKEN_KEY.to_string(), ByteString(credentials.token.clone().into_bytes())),
        (URL_KEY.to_string(), ByteString(credentials.url(public_url).into_bytes())),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(app)),
            namespace: app.namespace(),
            labels: Some(BTreeMap::from([
                (HOOK_LABEL.to_string(), "true".to_string()),
                (APP_LABEL.to_string(), app.name_any()),
            ])),
            annotations: Some(annotations),
            owner_references: app.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AppSpec;

    fn app(rotation: Option<&str>) -> App {
        let mut app = App::new("shop", AppSpec::default());
        app.metadata.namespace = Some("team".into());
        app.metadata.uid = Some("uid-1".into());
        if let Some(rotation) = rotation {
            app.metadata.annotations = Some(BTreeMap::from([(ROTATE_ANNOTATION.to_string(), rotation.to_string())]));
        }
        app
    }

    #[test]
    fn a_new_secret_has_random_credentials_and_the_full_url() {
        let secret = desired_secret(&app(None), None, "https://hooks.example.com/");
        let credentials = HookCredentials::from_secret(&secret).expect("credentials");
        assert_eq!(credentials.id.len(), 24);
        assert!(URL_SAFE_NO_PAD.decode(&credentials.token).expect("base64url").len() >= 32);
        let url = String::from_utf8(secret.data.as_ref().expect("data")[URL_KEY].0.clone()).expect("utf-8");
        assert_eq!(url, format!("https://hooks.example.com/stacks/redeploy/{}/{}", credentials.id, credentials.token));
        assert_eq!(secret.metadata.name.as_deref(), Some("shop-hook"));
        assert_eq!(secret.labels()[HOOK_LABEL], "true");
        let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("App", "uid-1", Some(true)));
        assert_ne!(HookCredentials::generate(Some("uid-1")), HookCredentials::generate(Some("uid-1")));
        assert!(credentials.is_bound_to("uid-1"), "the id is bound to the App it was issued for");
        assert!(!credentials.is_bound_to("uid-2"));
    }

    #[test]
    fn ids_without_a_uid_or_from_before_binding_are_bound_to_nothing() {
        let unbound = HookCredentials::generate(None);
        assert_eq!(unbound.id.len(), 24);
        assert!(!unbound.is_bound_to("uid-1"));
        let legacy = HookCredentials { id: "not hex".into(), token: "t".into() };
        assert!(!legacy.is_bound_to("uid-1"));
    }

    #[test]
    fn credentials_are_kept_and_the_url_follows_the_public_url() {
        let first = desired_secret(&app(None), None, "https://a.example.com");
        let again = desired_secret(&app(None), Some(&first), "https://b.example.com");
        assert_eq!(HookCredentials::from_secret(&first), HookCredentials::from_secret(&again));
        let url = String::from_utf8(again.data.as_ref().expect("data")[URL_KEY].0.clone()).expect("utf-8");
        assert!(url.starts_with("https://b.example.com/stacks/redeploy/"));
    }

    #[test]
    fn rotation_changes_the_token_once_per_request() {
        let first = desired_secret(&app(None), None, "https://h");
        let rotated = desired_secret(&app(Some("2026-11-29")), Some(&first), "https://h");
        let (before, after) = (
            HookCredentials::from_secret(&first).expect("before"),
            HookCredentials::from_secret(&rotated).expect("after"),
        );
        assert_eq!(before.id, after.id);
        assert_ne!(before.token, after.token);
        let again = desired_secret(&app(Some("2026-11-29")), Some(&rotated), "https://h");
        assert_eq!(HookCredentials::from_secret(&again), Some(after));
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let credentials = HookCredentials::generate(None);
        assert!(!format!("{credentials:?}").contains(&credentials.token));
        assert_eq!(masked_path("abc"), "/stacks/redeploy/abc/********");
    }
}
