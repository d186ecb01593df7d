//! The Redeployment a hook call is stored as (pure).

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use sha2::{Digest, Sha256};

use super::{credentials::APP_LABEL, event::HookEvent};
use crate::{
    api::{App, CANCEL_FINALIZER, Provider, Redeployment, RedeploymentSpec, Trigger},
    plan::{Modifiers, Plan},
    text::bounded,
};

/// Label naming the provider that triggered a Redeployment.
pub const TRIGGER_LABEL: &str = "redeploy.dev/trigger";
/// Annotation holding the provider's delivery id, as the call named it.
pub const DELIVERY_ANNOTATION: &str = "redeploy.dev/delivery-id";
/// Annotation holding the key that makes two calls one delivery ([`idempotency_key`]).
pub const IDEMPOTENCY_ANNOTATION: &str = "redeploy.dev/idempotency-key";

/// What makes two calls the same delivery, executed once.
///
/// A signed call is identified by its signed body (provider and SHA-256 of
/// the exact bytes): the delivery-id header is not covered by any signature,
/// so a captured delivery replayed under a new id is still a redelivery, and
/// a Git host's own "Redeliver" (same body, same id) is one too. A signed
/// body is therefore executed once; a caller that wants to deploy again
/// sends a new body. An unsigned call is identified by its delivery id (the
/// URL token is its only credential anyway); without one it is new each time.
pub fn idempotency_key(event: &HookEvent, signed_body: Option<&[u8]>) -> Option<String> {
    let provider = provider_key(event.provider);
    match (signed_body, event.delivery_id.as_deref()) {
        (Some(body), _) => Some(format!("{provider}:body-sha256:{}", hex::encode(Sha256::digest(body)))),
        (None, Some(id)) => Some(format!("{provider}:{id}")),
        (None, None) => None,
    }
}

/// The Redeployment's name. With an idempotency key it is derived from it, so
/// a redelivery maps to the object the first delivery created; without one it
/// is random. (A delivery-id key gives the names earlier versions gave.)
pub fn redeployment_name(app: &str, idempotency_key: Option<&str>) -> String {
    let suffix = match idempotency_key {
        Some(key) => hex::encode(&Sha256::digest(key.as_bytes())[..6]),
        None => hex::encode(rand::random::<[u8; 6]>()),
    };
    // Keep the whole name a valid label value (63 characters) for selectors.
    let prefix = bounded(app, 63 - suffix.len() - 1);
    format!("{}-{suffix}", prefix.trim_end_matches(['-', '.']))
}

fn provider_key(provider: Provider) -> String {
    serde_json::to_value(provider).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The Redeployment recording an accepted call; `signed_body` is the body
/// when its signature was verified (see [`idempotency_key`]).
pub fn redeployment(
    app: &App,
    event: &HookEvent,
    signed_body: Option<&[u8]>,
    modifiers: &Modifiers,
    plan: &Plan,
    received_at: Timestamp,
) -> Redeployment {
    let owner = app.controller_owner_ref(&());
    let app_name = app.name_any();
    let key = idempotency_key(event, signed_body);
    let name = redeployment_name(&app_name, key.as_deref());
    let mut labels = BTreeMap::from([(TRIGGER_LABEL.to_string(), provider_key(event.provider))]);
    if app_name.len() <= 63 {
        labels.insert(APP_LABEL.to_string(), app_name.clone());
    }
    let mut annotations = BTreeMap::new();
    if let Some(id) = &event.delivery_id {
        annotations.insert(DELIVERY_ANNOTATION.to_string(), bounded(id, 256).to_owned());
    }
    if let Some(key) = key {
        annotations.insert(IDEMPOTENCY_ANNOTATION.to_string(), key);
    }
    let annotations = (!annotations.is_empty()).then_some(annotations);
    let spec = RedeploymentSpec {
        app: app_name,
        trigger: Trigger {
            provider: event.provider,
            event: bounded(&event.event, 128).to_owned(),
            delivery_id: event.delivery_id.as_deref().map(|id| bounded(id, 256).to_owned()),
            sender: event.sender.as_deref().map(|s| bounded(s, 256).to_owned()),
            received_at: Some(MicroTime(received_at)),
        },
        git: event.git_info(),
        services: modifiers.services.clone(),
        profile: plan.profile.clone(),
        git_ref: modifiers.git_ref.clone(),
        plan: plan.services.clone(),
        decisions: plan.decisions.clone(),
        github_deployment: event.github_deployment,
    };
    Redeployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: app.namespace(),
            labels: Some(labels),
            annotations,
            owner_references: owner.map(|o| vec![o]),
            // Set now, so the reconciler starts at once instead of adding it first.
            finalizers: Some(vec![CANCEL_FINALIZER.to_string()]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// The planned Service names of a stored Redeployment.
pub fn planned_services(redeployment: &Redeployment) -> Vec<String> {
    redeployment.spec.plan.iter().map(|p| p.service.clone()).collect()
}

/// Whether `existing` records the delivery `candidate` would record: the
/// same idempotency key, or (for a Redeployment stored before keys were
/// recorded) the same provider and delivery id.
pub fn same_delivery(existing: &Redeployment, candidate: &Redeployment) -> bool {
    let key = |r: &Redeployment| r.annotations().get(IDEMPOTENCY_ANNOTATION).cloned();
    let same_key = match (key(existing), key(candidate)) {
        (Some(existing), Some(candidate)) => existing == candidate,
        (None, _) => {
            existing.spec.trigger.delivery_id.is_some()
                && existing.spec.trigger.delivery_id == candidate.spec.trigger.delivery_id
                && existing.spec.trigger.provider == candidate.spec.trigger.provider
        }
        (Some(_), None) => false,
    };
    same_key && existing.meta().namespace == candidate.meta().namespace && existing.name_any() == candidate.name_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

    fn delivered(provider: Provider, delivery_id: Option<&str>) -> HookEvent {
        HookEvent { provider, delivery_id: delivery_id.map(str::to_owned), ..HookEvent::default() }
    }

    fn name_of(provider: Provider, delivery_id: Option<&str>, signed_body: Option<&[u8]>) -> String {
        let key = idempotency_key(&delivered(provider, delivery_id), signed_body);
        redeployment_name("shop", key.as_deref())
    }

    #[test]
    fn unsigned_names_follow_the_delivery_id() {
        let a = name_of(Provider::GitHub, Some(DELIVERY), None);
        assert_eq!(a, name_of(Provider::GitHub, Some(DELIVERY), None));
        assert_ne!(a, name_of(Provider::GitLab, Some(DELIVERY), None));
        assert_ne!(a, name_of(Provider::GitHub, Some("another delivery"), None));
        assert!(a.starts_with("shop-") && a.len() == "shop-".len() + 12, "{a}");
        // The names earlier versions gave, so redeliveries across an upgrade still match.
        assert_eq!(a, format!("shop-{}", &hex::encode(Sha256::digest(format!("github:{DELIVERY}")))[..12]));
        assert_ne!(name_of(Provider::Empty, None, None), name_of(Provider::Empty, None, None));
    }

    #[test]
    fn signed_names_follow_the_body_not_the_delivery_id() {
        let body = b"{\"ref\":\"refs/heads/main\"}";
        let a = name_of(Provider::GitHub, Some(DELIVERY), Some(body));
        assert_eq!(a, name_of(Provider::GitHub, Some("a forged delivery id"), Some(body)));
        assert_eq!(a, name_of(Provider::GitHub, None, Some(body)));
        assert_ne!(a, name_of(Provider::GitHub, Some(DELIVERY), Some(b"{}")));
        assert_ne!(a, name_of(Provider::GitLab, Some(DELIVERY), Some(body)));
        assert_ne!(a, name_of(Provider::GitHub, Some(DELIVERY), None));
    }

    #[test]
    fn long_app_names_still_give_valid_names() {
        let app = "a".repeat(200);
        let name = redeployment_name(&app, Some("github:x"));
        assert_eq!(name.len(), 63);
        let dotted = format!("{}.-b", "a".repeat(48));
        assert!(!redeployment_name(&dotted, Some("github:x")).contains(".-"));
    }
}
