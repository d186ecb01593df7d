//! *Execute*: carries out a [`Decision`]'s effects in order, then writes the
//! Redeployment's status. A conflict (409) on a write that depends on what
//! was observed stops the pass before the status is written: the next pass
//! observes again and recognises what this one did (see [`super::decide`]).

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::ObjectReference},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};

use super::{
    decide::{self, Decision, Effect},
    observe::Observed,
};
use crate::{
    api::{Redeployment, RedeploymentStatus},
    context::Context,
    github,
    install::FIELD_MANAGER,
    reconcile::Error,
    repo::redact_credentials,
    workload,
};

/// Services of one Redeployment whose effects are carried out at once: a
/// step is a few API calls, so a large App's fan-out is bound by round trips
/// unless they overlap.
const CONCURRENT_STEPS: usize = 32;
/// How soon a pass that met a conflict observes again.
const AFTER_CONFLICT: Duration = Duration::from_millis(100);

/// How one Service's effects went.
enum Outcome {
    Done { rollout_generation: Option<i64> },
    Conflict,
}

/// `stored` is the status the API server has: the observed one, or the one
/// a status held back by an earlier pass stood in for.
pub async fn execute(
    observed: &Observed,
    decision: Decision,
    stored: Option<&RedeploymentStatus>,
    context: &Context,
) -> Result<Action, Error> {
    let Decision { mut status, effects, requeue, finished } = decision;
    let redeployment = &observed.redeployment;
    let namespace = redeployment.namespace().unwrap_or_default();

    // Each Service's effects in order, the Services side by side; the rest after them, in order.
    let mut steps: BTreeMap<String, Vec<Effect>> = BTreeMap::new();
    let mut rest = Vec::new();
    for effect in effects {
        match effect.service().map(str::to_string) {
            Some(service) => steps.entry(service).or_default().push(effect),
            None => rest.push(effect),
        }
    }
    let outcomes: Vec<(String, Result<Outcome, Error>)> = futures::stream::iter(steps)
        .map(|(service, effects)| {
            let namespace = &namespace;
            async move {
                let outcome = run_step(context, namespace, &effects).await;
                (service, outcome)
            }
        })
        .buffer_unordered(CONCURRENT_STEPS)
        .collect()
        .await;
    let mut conflict = false;
    let mut first_error = None;
    // A large App's pass has hundreds of outcomes: each finds its result by name in one lookup.
    let positions: HashMap<String, usize> =
        status.services.iter().enumerate().map(|(index, result)| (result.service.clone(), index)).collect();
    for (service, outcome) in outcomes {
        let index = positions.get(&service).copied();
        match outcome {
            Ok(Outcome::Done { rollout_generation: Some(generation) }) => {
                if let Some(result) = index.and_then(|index| status.services.get_mut(index)) {
                    result.rollout_generation = Some(generation);
                }
            }
            Ok(Outcome::Done { rollout_generation: None }) => {}
            Ok(Outcome::Conflict) => conflict = true,
            Err(error) => {
                if first_error.as_ref().is_none_or(|(i, _)| index < *i) {
                    first_error = Some((index, error));
                }
            }
        }
    }
    if let Some((_, error)) = first_error {
        return Err(error);
    }
    if conflict {
        return Ok(Action::requeue(AFTER_CONFLICT));
    }

    let mut requeue = requeue;
    for effect in rest {
        match effect {
            Effect::DeleteJob { name } => delete_job(context, &namespace, &name).await?,
            Effect::PublishEvent { type_, reason, note } => publish(context, observed, type_, reason, note).await,
            Effect::ReportGitHubStatus { deployment, state, description } => {
                if post_github(context, observed, deployment, state, &description).await {
                    status.github_state = Some(state.to_string());
                } else {
                    requeue = Some(requeue.map_or(decide::GITHUB_RETRY, |r| r.min(decide::GITHUB_RETRY)));
                }
            }
            step => tracing::error!(?step, "a Service's effect without its Service is not carried out"),
        }
    }

    if Some(&status) != stored {
        let none = RedeploymentStatus::default();
        let previous = stored.unwrap_or(&none);
        let recent = context.known_versions.since_written(redeployment).filter(|since| *since < decide::PROGRESS_EVERY);
        match recent {
            // Held for the next pass to go on from; the pass after the wait
            // writes it, unless one with more to write comes first.
            Some(since) if decide::may_wait(&redeployment.spec.plan, previous, &status) => {
                let wait = decide::PROGRESS_EVERY.saturating_sub(since);
                requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                context.held_statuses.hold(redeployment, status);
            }
            _ => write_status(context, redeployment, &status).await?,
        }
    }
    if let Some(phase) = finished {
        context.metrics.redeployment_finished(phase, decide::age(redeployment, Timestamp::now()));
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// One Service's effects, in order; a conflict stops them.
async fn run_step(context: &Context, namespace: &str, effects: &[Effect]) -> Result<Outcome, Error> {
    let client = &context.client;
    let mut rollout_generation = None;
    for effect in effects {
        let done = match effect {
            Effect::CreateJob { job, .. } => {
                let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                match Api::<Job>::namespaced(client.clone(), namespace).create(&params, job).await {
                    // Made by an earlier pass this one did not see yet: it is the same Job.
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                    other => other.map(drop),
                }
            }
            Effect::PatchWorkload { target, patch, .. } => workload::patch(client, namespace, target, patch)
                .await
                .map(|generation| rollout_generation = Some(generation)),
            Effect::RollBack { target, patch, .. } => workload::patch(client, namespace, target, patch).await.map(drop),
            _ => Ok(()),
        };
        match done {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => return Ok(Outcome::Conflict),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Outcome::Done { rollout_generation })
}

async fn delete_job(context: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match Api::<Job>::namespaced(context.client.clone(), namespace).delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Posts to the GitHub Deployment; false when that failed (it is logged and
/// tried again, never failing the Redeployment).
async fn post_github(context: &Context, observed: &Observed, deployment: i64, state: &str, description: &str) -> bool {
    let Some(app) = &observed.app else { return true };
    let posted = async {
        let deployments =
            github::Deployments::for_app(&context.client, &context.http, app, &context.settings.github_api_url).await?;
        deployments.status(deployment, state, description).await
    };
    match posted.await {
        Ok(()) => true,
        Err(error) => {
            let redeployment = observed.redeployment.name_any();
            tracing::warn!(%redeployment, github_deployment = deployment, %error, "posting the deployment status failed; retrying");
            false
        }
    }
}

/// A Kubernetes Event on the App; failures to publish are logged, never fatal.
async fn publish(context: &Context, observed: &Observed, type_: EventType, reason: String, note: String) {
    let Some(app) = &observed.app else { return };
    let reference: ObjectReference = app.object_ref(&());
    let event = Event {
        type_,
        reason,
        note: Some(crate::text::bounded(&redact_credentials(&note), 1000).to_owned()),
        action: "Redeploy".into(),
        secondary: Some(observed.redeployment.object_ref(&())),
    };
    if let Err(error) = context.recorder.publish(&event, &reference).await {
        tracing::debug!(%error, "publishing an Event failed");
    }
}

async fn write_status(
    context: &Context,
    redeployment: &Redeployment,
    status: &RedeploymentStatus,
) -> Result<(), Error> {
    // Serialized straight from the status: a `json!` tree of a status
    // listing 500 Services is thousands of short-lived allocations.
    #[derive(Debug, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct StatusApply<'a> {
        api_version: Cow<'a, str>,
        kind: Cow<'a, str>,
        status: &'a RedeploymentStatus,
    }
    let patch = StatusApply { api_version: Redeployment::api_version(&()), kind: Redeployment::kind(&()), status };
    let (namespace, name) = (redeployment.namespace().unwrap_or_default(), redeployment.name_any());
    let written = Api::<Redeployment>::namespaced(context.client.clone(), &namespace)
        .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await;
    match written {
        Ok(written) => {
            context.known_versions.wrote(&written, Some(redeployment));
            Ok(())
        }
        // Deleted, and its finalizer removed, before this pass: nothing is left to record.
        Err(kube::Error::Api(status)) if status.code == 404 => {
            context.caches.own_redeployments.gone(&namespace, &name);
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}
