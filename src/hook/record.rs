//! The Redeployment a hook call is stored as (pure).

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use sha2::{Digest, Sha256};

use super::{credentials::APP_LABEL, event::HookEvent};
use crate::{
    api::{App, CANCEL_FINALIZER, Provider, Redeployment, RedeploymentSpec, Trigger},
    plan::{Modifiers, Plan},
};

/// Label naming the provider that triggered a Redeployment.
pub const TRIGGER_LABEL: &str = "redeploy.dev/trigger";
/// Annotation holding the provider's delivery id, to recognise redeliveries.
pub const DELIVERY_ANNOTATION: &str = "redeploy.dev/delivery-id";

/// The Redeployment's name. With a delivery id it is derived from it, so a
/// redelivery maps to the object the first delivery created; without one it
/// is random.
pub fn redeployment_name(app: &str, provider: Provider, delivery_id: Option<&str>) -> String {
    let suffix = match delivery_id {
        Some(id) => {
            let digest = Sha256::digest(format!("{}:{id}", provider_key(provider)).as_bytes());
            hex::encode(&digest[..6])
        }
        None => hex::encode(rand::random::<[u8; 6]>()),
    };
    // Keep the whole name a valid label value (63 characters) for selectors.
    let prefix: String = app.chars().take(63 - suffix.len() - 1).collect();
    format!("{}-{suffix}", prefix.trim_end_matches(['-', '.']))
}

fn provider_key(provider: Provider) -> String {
    serde_json::to_value(provider).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The Redeployment recording an accepted call.
pub fn redeployment(
    app: &App,
    event: &HookEvent,
    modifiers: &Modifiers,
    plan: &Plan,
    received_at: Timestamp,
) -> Redeployment {
    let owner = app.controller_owner_ref(&());
    let app_name = app.name_any();
    let name = redeployment_name(&app_name, event.provider, event.delivery_id.as_deref());
    let mut labels = BTreeMap::from([(TRIGGER_LABEL.to_string(), provider_key(event.provider))]);
    if app_name.len() <= 63 {
        labels.insert(APP_LABEL.to_string(), app_name.clone());
    }
    let annotations =
        event.delivery_id.as_ref().map(|id| BTreeMap::from([(DELIVERY_ANNOTATION.to_string(), bounded(id, 256))]));
    let spec = RedeploymentSpec {
        app: app_name,
        trigger: Trigger {
            provider: event.provider,
            event: bounded(&event.event, 128),
            delivery_id: event.delivery_id.as_deref().map(|id| bounded(id, 256)),
            sender: event.sender.as_deref().map(|s| bounded(s, 256)),
            received_at: Some(MicroTime(received_at)),
        },
        git: event.git_info(),
        services: modifiers.services.clone(),
        profile: plan.profile.clone(),
        git_ref: modifiers.git_ref.clone(),
        plan: plan.services.clone(),
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

/// Whether `existing` records the delivery `candidate` would record.
pub fn same_delivery(existing: &Redeployment, candidate: &Redeployment) -> bool {
    existing.spec.trigger.delivery_id.is_some()
        && existing.spec.trigger.delivery_id == candidate.spec.trigger.delivery_id
        && existing.spec.trigger.provider == candidate.spec.trigger.provider
        && existing.meta().namespace == candidate.meta().namespace
        && existing.name_any() == candidate.name_any()
}

/// `value` cut to at most `max` characters (the schema's bound).
fn bounded(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_delivery_id() {
        let a = redeployment_name("shop", Provider::GitHub, Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        let b = redeployment_name("shop", Provider::GitHub, Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        let other_provider = redeployment_name("shop", Provider::GitLab, Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert_eq!(a, b);
        assert_ne!(a, other_provider);
        assert!(a.starts_with("shop-") && a.len() == "shop-".len() + 12, "{a}");
        assert_ne!(redeployment_name("shop", Provider::Empty, None), redeployment_name("shop", Provider::Empty, None));
    }

    #[test]
    fn long_app_names_still_give_valid_names() {
        let app = "a".repeat(200);
        let name = redeployment_name(&app, Provider::GitHub, Some("x"));
        assert_eq!(name.len(), 63);
        let dotted = format!("{}.-b", "a".repeat(48));
        assert!(!redeployment_name(&dotted, Provider::GitHub, Some("x")).contains(".-"));
    }
}
