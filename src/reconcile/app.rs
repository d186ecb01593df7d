//! The App reconciler: gives each App its hook Secret and publishes the
//! hook's masked path, the App's Services and a `Ready` condition.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde_json::json;

use super::{Error, first_pass::AppsFirst, service};
use crate::{
    api::{App, AppStatus, HookStatus, Redeployment, conditions},
    cache::{
        Guarded,
        known::{self, Freshness},
    },
    context::Context,
    hook::credentials::{self, HookCredentials},
    install::FIELD_MANAGER,
};

pub const CONTROLLER: &str = "app";

/// Reconciles one App; `first_pass` holds its status write back at start-up
/// until every App listed then has its hook Secret.
pub async fn reconcile(
    guard: Arc<Guarded<App>>,
    context: Arc<Context>,
    first_pass: &AppsFirst,
) -> Result<Action, Error> {
    let started = Instant::now();
    let app = match &guard.0 {
        Ok(app) => app,
        Err(invalid) => {
            return Err(Error::Malformed {
                kind: "App",
                namespace: invalid.metadata.namespace.clone().unwrap_or_default(),
                name: invalid.metadata.name.clone().unwrap_or_default(),
                message: invalid.error.clone(),
            });
        }
    };
    if app.metadata.deletion_timestamp.is_some() {
        // Being deleted (perhaps with its namespace): its Secret goes with it.
        return Ok(Action::await_change());
    }
    if context.known_versions.freshness(app) == Freshness::Behind {
        // Woken (by its Secret's watch, say) before the watch echoed our last
        // status write: acting on this copy would write that status again.
        return Ok(Action::requeue(known::ECHO_WAIT));
    }
    let namespace = app.namespace().ok_or_else(|| Error::NoNamespace(app.name_any()))?;
    let secrets = Api::<Secret>::namespaced(context.client.clone(), &namespace);
    let secret_name = credentials::secret_name(app);

    // The watched copy, which spares an API call per reconciliation; a watch
    // that has not yet seen a Secret just made, or one made without the hook
    // label, makes the create below fail with 409, and then it is read.
    let mut existing = context.caches.hooks.secret(&namespace, &secret_name);
    if existing.is_none() {
        let desired = credentials::desired_secret(app, None, &context.settings.public_url);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        existing = match secrets.create(&params, &desired).await {
            Ok(created) => Some(created),
            Err(kube::Error::Api(status)) if status.code == 409 => secrets.get_opt(&secret_name).await?,
            Err(error) => return Err(error.into()),
        };
    }
    let hook = match existing {
        Some(existing) if !owned_by(&existing, app) => Err(format!(
            "Secret {secret_name} exists and is not owned by this App: delete it, or set spec.hook.secretName to another name"
        )),
        // Deleted between the create's 409 and the read: the next reconciliation makes it.
        None => return Ok(Action::requeue(std::time::Duration::from_secs(1))),
        Some(mut existing) => {
            let public_url = &context.settings.public_url;
            let mut desired = credentials::desired_secret(app, Some(&existing), public_url);
            if differs(&existing, &desired) {
                // The watched copy may trail a change just made (a rotation
                // answered): decide on the stored Secret, not twice.
                if let Some(stored) = secrets.get_opt(&secret_name).await? {
                    existing = stored;
                    desired = credentials::desired_secret(app, Some(&existing), public_url);
                }
                if differs(&existing, &desired) {
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    secrets.patch(&secret_name, &params, &Patch::Apply(&desired)).await?;
                }
            }
            HookCredentials::from_secret(&desired).ok_or_else(|| format!("Secret {secret_name} has no credentials"))
        }
    };

    if !first_pass.may_write_status(&guard) {
        // Start-up: the other Apps' Secrets go first; woken once they exist.
        return Ok(Action::await_change());
    }

    let deferred = prune_history(app, &context, &namespace).await?;
    // Nothing wakes the App when its Services' status catches up.
    let mut requeue = deferred.then_some(PRUNE_RETRY);
    let status = desired_status(app, &context, &secret_name, hook);
    let current = app.status.clone().map(|s| AppStatus { recent_deliveries: Vec::new(), ..s });
    if current.as_ref() != Some(&status) {
        let recent = context.known_versions.since_written(app).filter(|since| *since < NEWEST_EVERY);
        match recent {
            // A burst of calls names a newer Redeployment with each: the
            // newest is written once the last write is NEWEST_EVERY old.
            Some(since) if current.as_ref().is_some_and(|current| only_the_newest_differs(current, &status)) => {
                let wait = NEWEST_EVERY.saturating_sub(since);
                requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
            }
            _ => {
                let patch = json!({ "apiVersion": "redeploy.dev/v1alpha1", "kind": "App", "status": status });
                let written = Api::<App>::namespaced(context.client.clone(), &namespace)
                    .patch_status(&app.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
                    .await?;
                context.known_versions.wrote(&written, Some(app));
            }
        }
    }
    context.metrics.reconciled(CONTROLLER, started.elapsed());
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// How soon a prune deferred until the Services record what it would delete is tried again.
const PRUNE_RETRY: Duration = Duration::from_secs(2);

/// How often at most the App's status is written when only
/// `lastRedeployment` changed: a burst of hook calls to one App would
/// otherwise cost an App write per call besides its Redeployment.
const NEWEST_EVERY: Duration = Duration::from_secs(2);

/// Whether `next` differs from `current` in `lastRedeployment` only.
fn only_the_newest_differs(current: &AppStatus, next: &AppStatus) -> bool {
    // Every field is named, so one added later is compared too.
    let AppStatus { observed_generation, hook, services, last_redeployment: _, conditions, recent_deliveries: _ } =
        current;
    *observed_generation == next.observed_generation
        && *hook == next.hook
        && *services == next.services
        && *conditions == next.conditions
}

/// The App's status, from what the reconciliation found (pure).
fn desired_status(app: &App, context: &Context, secret_name: &str, hook: Result<HookCredentials, String>) -> AppStatus {
    let previous = app.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = app.metadata.generation;
    let namespace = app.namespace().unwrap_or_default();
    // Names only: the index holds every valid Service by App, no copy needed.
    let services = context.caches.service_index.services_of(&namespace, &app.name_any());
    let (hook, ready) = match hook {
        Ok(credentials) => (
            Some(HookStatus {
                id: credentials.id.clone(),
                path: credentials::masked_path(&credentials.id),
                secret_name: secret_name.to_string(),
            }),
            conditions::condition(
                previous,
                conditions::READY,
                true,
                "HookReady",
                format!("the hook URL is in Secret {secret_name}, key url"),
                generation,
            ),
        ),
        Err(message) => {
            (None, conditions::condition(previous, conditions::READY, false, "SecretConflict", message, generation))
        }
    };
    AppStatus {
        observed_generation: generation,
        hook,
        services,
        last_redeployment: context
            .caches
            .redeployments_of(&namespace, &app.name_any())
            .iter()
            .max_by_key(|r| r.order_key())
            .map(|r| r.name_any()),
        conditions: vec![ready],
        // The hook's delivery batcher owns this field (its own field manager): never applied here.
        recent_deliveries: Vec::new(),
    }
}

/// Deletes the App's finished Redeployments beyond `spec.history.limit`,
/// oldest first; true when it deferred some because a Service they name
/// does not record yet what they built or deployed (the Service reconciler
/// reads that from them).
async fn prune_history(app: &App, context: &Context, namespace: &str) -> Result<bool, Error> {
    let limit = usize::try_from(app.spec.history.limit).unwrap_or(0);
    let redeployments = context.caches.redeployments_of(namespace, &app.name_any());
    let redeployments = redeployments.to_vec();
    let services = context.caches.services_of(namespace, &app.name_any());
    let behind: Vec<String> =
        services.iter().filter(|s| !service::records_current(s, &redeployments)).map(|s| s.name_any()).collect();
    let finished = redeployments.iter().filter(|r| r.metadata.deletion_timestamp.is_none() && r.is_finished());
    let (prune, deferred) = prunable(finished.copied().collect(), limit, &behind);
    let api = Api::<Redeployment>::namespaced(context.client.clone(), namespace);
    for old in prune {
        match api.delete(&old, &Default::default()).await {
            Ok(_) => tracing::info!(app = %app.name_any(), redeployment = %old, "pruned from history"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(deferred)
}

/// Names of the finished Redeployments beyond the newest `limit`, but those
/// naming a Service of `behind` (whose status does not record yet what they
/// did), and whether any was left for that (pure).
fn prunable(mut finished: Vec<&Redeployment>, limit: usize, behind: &[String]) -> (Vec<String>, bool) {
    finished.sort_by_key(|r| std::cmp::Reverse(r.order_key()));
    let names = |r: &Redeployment| r.status.iter().flat_map(|s| &s.services).any(|x| behind.contains(&x.service));
    let (deferred, prune): (Vec<&Redeployment>, Vec<&Redeployment>) =
        finished.into_iter().skip(limit).partition(|r| names(r));
    (prune.into_iter().map(|r| r.name_any()).collect(), !deferred.is_empty())
}

fn owned_by(secret: &Secret, app: &App) -> bool {
    let uid = app.meta().uid.as_deref();
    secret.owner_references().iter().any(|owner| owner.controller == Some(true) && Some(owner.uid.as_str()) == uid)
}

fn differs(existing: &Secret, desired: &Secret) -> bool {
    let labels_missing = desired.labels().iter().any(|(k, v)| existing.labels().get(k) != Some(v));
    let annotations_missing = desired.annotations().iter().any(|(k, v)| existing.annotations().get(k) != Some(v));
    labels_missing || annotations_missing || existing.data != desired.data
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};

    use super::*;
    use crate::api::{Phase, RedeploymentSpec, RedeploymentStatus, ServicePhase, ServiceResult};

    fn finished(name: &str, second: i64, service: &str) -> Redeployment {
        let mut redeployment = Redeployment::new(name, RedeploymentSpec { app: "shop".into(), ..Default::default() });
        let received = Timestamp::from_second(1_800_000_000 + second).unwrap_or(Timestamp::UNIX_EPOCH);
        redeployment.spec.trigger.received_at = Some(MicroTime(received));
        let result = ServiceResult { service: service.into(), phase: ServicePhase::Succeeded, ..Default::default() };
        redeployment.status =
            Some(RedeploymentStatus { phase: Some(Phase::Succeeded), services: vec![result], ..Default::default() });
        redeployment
    }

    #[test]
    fn only_a_newer_redeployment_may_wait_to_be_written() {
        let current = AppStatus {
            observed_generation: Some(1),
            services: vec!["web".into()],
            last_redeployment: Some("shop-1".into()),
            ..Default::default()
        };
        let newer = AppStatus { last_redeployment: Some("shop-2".into()), ..current.clone() };
        assert!(only_the_newest_differs(&current, &newer));
        let more = AppStatus { services: vec!["web".into(), "worker".into()], ..newer.clone() };
        assert!(!only_the_newest_differs(&current, &more), "a Service added");
        let generation = AppStatus { observed_generation: Some(2), ..newer };
        assert!(!only_the_newest_differs(&current, &generation), "a new generation observed");
    }

    #[test]
    fn the_oldest_beyond_the_limit_are_pruned_unless_their_services_do_not_record_them_yet() {
        let history = || vec![finished("rd-3", 3, "web"), finished("rd-1", 1, "worker"), finished("rd-2", 2, "web")];
        assert_eq!(prunable(history().iter().collect(), 1, &[]), (vec!["rd-2".to_string(), "rd-1".to_string()], false));
        assert_eq!(prunable(history().iter().collect(), 3, &[]), (Vec::new(), false));
        let behind = ["web".to_string()];
        assert_eq!(
            prunable(history().iter().collect(), 1, &behind),
            (vec!["rd-1".to_string()], true),
            "rd-2 waits for web"
        );
        assert_eq!(
            prunable(history().iter().collect(), 2, &behind),
            (vec!["rd-1".to_string()], false),
            "rd-3 is within the limit"
        );
    }
}
