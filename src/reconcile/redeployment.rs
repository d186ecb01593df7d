//! The Redeployment reconciler: executes a stored plan. Every step is read
//! back from the API server (the Redeployment's status, Jobs named after it,
//! the workloads' annotations), so an operator restarted at any point goes on
//! where it stood and never builds or rolls out the same thing twice.

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ObjectReference, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, PropagationPolicy},
    core::error_boundary::DeserializeGuard,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};
use serde_json::json;

use super::Error;
use crate::{
    api::{
        App, BuildPolicy, BuiltImage, CANCEL_FINALIZER, DeploymentProfile, Phase, PlanAction, PlannedService,
        PreviousTemplate, Redeployment, RedeploymentStatus, Service, ServicePhase, ServiceResult, Strategy, conditions,
    },
    build::{self, BuildRequest},
    context::Context,
    github,
    install::FIELD_MANAGER,
    repo::redact_credentials,
    workload::{self, Progress, Workload},
};

pub const CONTROLLER: &str = "redeployment";

pub async fn reconcile(guard: Arc<DeserializeGuard<Redeployment>>, context: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let redeployment = match &guard.0 {
        Ok(redeployment) => Arc::new(redeployment.clone()),
        Err(invalid) => {
            return Err(Error::Malformed {
                kind: "Redeployment",
                namespace: invalid.metadata.namespace.clone().unwrap_or_default(),
                name: invalid.metadata.name.clone().unwrap_or_default(),
                message: invalid.error.clone(),
            });
        }
    };
    let namespace = redeployment.namespace().ok_or_else(|| Error::NoNamespace(redeployment.name_any()))?;
    let api = Api::<Redeployment>::namespaced(context.client.clone(), &namespace);
    let action = finalizer(&api, CANCEL_FINALIZER, redeployment, |event| async {
        match event {
            Finalizer::Apply(redeployment) => apply(&redeployment, &context).await,
            Finalizer::Cleanup(redeployment) => cancel(&redeployment, &context).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e) | kube::runtime::finalizer::Error::RemoveFinalizer(e) => {
            Error::Kube(e)
        }
        other => Error::Finalizer(other.to_string()),
    })?;
    context.metrics.reconciled(CONTROLLER, started.elapsed());
    Ok(action)
}

/// What one pass needs to know about the Redeployment's world.
struct World<'a> {
    context: &'a Context,
    redeployment: &'a Redeployment,
    namespace: String,
    app: Option<App>,
    profile: Option<DeploymentProfile>,
    services: BTreeMap<String, Service>,
    /// Events of this pass's steps, published together once the pass is done.
    noted: std::sync::Mutex<Vec<Noted>>,
}

/// An Event a step asks for: type, reason and note.
type Noted = (EventType, &'static str, String);

impl World<'_> {
    /// Notes an Event of one step; [`drive`] publishes them after the pass.
    fn note(&self, type_: EventType, reason: &'static str, note: String) {
        self.noted.lock().unwrap_or_else(|e| e.into_inner()).push((type_, reason, note));
    }
}

async fn apply(cached: &Redeployment, context: &Context) -> Result<Action, Error> {
    // A finished Redeployment never starts again: the cached copy tells,
    // without a read (a start reconciles every one kept in history).
    let finished = |r: &Redeployment| r.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished);
    if finished(cached) && github_pending(cached, &cached.status.clone().unwrap_or_default()).is_none() {
        return Ok(Action::await_change());
    }
    // The cache can lag behind our own last status write (a workload event
    // may wake us first): read the Redeployment itself.
    let namespace = cached.namespace().unwrap_or_default();
    let api = Api::<Redeployment>::namespaced(context.client.clone(), &namespace);
    let Some(redeployment) = api.get_opt(&cached.name_any()).await? else { return Ok(Action::await_change()) };
    let redeployment = &redeployment;
    let previous = redeployment.status.clone().unwrap_or_default();
    let app_name = &redeployment.spec.app;
    if finished(redeployment) {
        // All that may be left is telling GitHub, if it has not heard yet.
        let app = context.caches.app(&namespace, app_name);
        let mut status = previous.clone();
        if !report_to_github(context, redeployment, app.as_ref(), &mut status).await {
            return Ok(Action::requeue(GITHUB_RETRY));
        }
        if status != previous {
            write_status(context, redeployment, &status).await?;
        }
        return Ok(Action::await_change());
    }
    // The App's watch may not have seen an App created together with this
    // Redeployment: what the cache lacks is read before it counts as missing.
    let app = match context.caches.app(&namespace, app_name) {
        Some(app) => Some(app),
        None => Api::<App>::namespaced(context.client.clone(), &namespace).get_opt(app_name).await?,
    };
    let profile = match &redeployment.spec.profile {
        Some(name) => {
            match context.caches.profiles_of(&namespace, app_name).into_iter().find(|p| &p.name_any() == name) {
                Some(profile) => Some(profile),
                None => Api::<DeploymentProfile>::namespaced(context.client.clone(), &namespace).get_opt(name).await?,
            }
        }
        None => None,
    };
    let world = World {
        context,
        redeployment,
        app,
        profile,
        services: context.caches.services_of(&namespace, app_name).into_iter().map(|s| (s.name_any(), s)).collect(),
        namespace,
        noted: Default::default(),
    };

    let mut status = previous.clone();
    if status.services.is_empty() {
        status.services = redeployment
            .spec
            .plan
            .iter()
            .map(|p| ServiceResult { service: p.service.clone(), phase: ServicePhase::Pending, ..Default::default() })
            .collect();
        status.started_at = Some(now());
    }

    let mut requeue = Duration::from_secs(300);
    let starting = status.services.iter().all(|r| r.phase == ServicePhase::Pending);
    if world.app.is_none() {
        fail_all(&mut status, &format!("App `{app_name}` does not exist in namespace {}", world.namespace));
    } else if let Some(refused) = starting.then(|| refusal(&world)).flatten() {
        // Nothing of a plan that is wrong anywhere is executed: it was not
        // made by the planner (or the App changed since), so none of it is trusted.
        world.note(EventType::Warning, "PlanRefused", refused.clone());
        publish_noted(&world).await;
        fail_all(&mut status, &refused);
    } else if starting {
        match waiting_on(&world) {
            Gate::Superseded(newer) => {
                for result in &mut status.services {
                    result.phase = ServicePhase::Superseded;
                    result.message = Some(format!("superseded by the newer Redeployment {newer}"));
                    result.finished_at = Some(now());
                }
                status.superseded_by = Some(newer);
            }
            Gate::Wait(message) => {
                status.message = Some(message);
                requeue = Duration::from_secs(2);
            }
            Gate::Go => requeue = requeue.min(drive(&world, &mut status).await?),
        }
    } else {
        requeue = requeue.min(drive(&world, &mut status).await?);
    }

    status.phase = Some(overall_phase(&status.services, status.superseded_by.is_some()));
    if status.phase.is_some_and(Phase::is_finished) {
        status.finished_at.get_or_insert_with(now);
        status.message = Some(summary(&status.services));
    } else if status.phase != Some(Phase::Pending) {
        status.message = None;
    }
    redact_status(&mut status);
    let ready = status.phase == Some(Phase::Succeeded);
    let reason = format!("{:?}", status.phase.unwrap_or_default());
    let message = status.message.clone().unwrap_or_else(|| reason.clone());
    let condition = conditions::condition(
        &previous.conditions,
        conditions::READY,
        ready,
        &reason,
        message,
        redeployment.metadata.generation,
    );
    status.conditions = vec![condition];
    status.observed_generation = redeployment.metadata.generation;

    let told_github = report_to_github(context, redeployment, world.app.as_ref(), &mut status).await;
    if !told_github {
        requeue = requeue.min(GITHUB_RETRY);
    }
    if status != previous {
        if status.phase != previous.phase {
            let phase = status.phase.unwrap_or_default();
            let note = format!(
                "Redeployment {}: {}",
                redeployment.name_any(),
                status.message.clone().unwrap_or_else(|| format!("{phase:?}"))
            );
            let type_ = if phase == Phase::Failed { EventType::Warning } else { EventType::Normal };
            publish(&world, type_, &format!("Redeployment{phase:?}"), note).await;
        }
        write_status(context, redeployment, &status).await?;
        if let Some(phase) = status.phase.filter(|p| p.is_finished() && !previous.phase.is_some_and(Phase::is_finished))
        {
            context.metrics.redeployment_finished(phase, age(redeployment));
        }
    }
    Ok(if status.phase.is_some_and(Phase::is_finished) && told_github {
        Action::await_change()
    } else {
        Action::requeue(requeue)
    })
}

/// How soon a deployment status GitHub did not take is posted again.
const GITHUB_RETRY: Duration = Duration::from_secs(30);

/// The status the Redeployment's GitHub Deployment has yet to hear, with the
/// Deployment's id; `None` when there is nothing to tell.
fn github_pending(redeployment: &Redeployment, status: &RedeploymentStatus) -> Option<(i64, &'static str)> {
    let id = redeployment.spec.github_deployment?;
    let state = status.phase.and_then(github::state_of)?;
    (status.github_state.as_deref() != Some(state)).then_some((id, state))
}

/// Continuous deploy: posts the Redeployment's phase to its GitHub Deployment
/// when GitHub has not been told it yet, and records it in `status`. False
/// when that failed: it is noted and tried again, never failing the Redeployment.
async fn report_to_github(
    context: &Context,
    redeployment: &Redeployment,
    app: Option<&App>,
    status: &mut RedeploymentStatus,
) -> bool {
    let Some((id, state)) = github_pending(redeployment, status) else { return true };
    let Some(app) = app.filter(|a| a.spec.github.is_some()) else {
        // No token to post with: nothing to retry either.
        return true;
    };
    let description = status.message.clone().unwrap_or_else(|| format!("{:?}", status.phase.unwrap_or_default()));
    let posted = async {
        let deployments = github::Deployments::for_app(&context.client, app, &context.settings.github_api_url).await?;
        deployments.status(id, state, &description).await
    };
    match posted.await {
        Ok(()) => {
            status.github_state = Some(state.to_string());
            true
        }
        Err(error) => {
            tracing::warn!(redeployment = %redeployment.name_any(), github_deployment = id, %error, "posting the deployment status failed; retrying");
            false
        }
    }
}

enum Gate {
    Go,
    Wait(String),
    Superseded(String),
}

/// Why the Redeployment must not run, checked before it starts: a
/// Redeployment can be made by hand (`kubectl create`) with any plan, so the
/// plan is held against the App's Services as they are now.
fn refusal(world: &World) -> Option<String> {
    let redeployment = world.redeployment;
    let lookup = |name: &str| {
        world.services.get(name).cloned().or_else(|| {
            let cached = world.context.caches.services.get(&ObjectRef::new(name).within(&world.namespace))?;
            cached.0.as_ref().ok().cloned()
        })
    };
    plan_refusal(&redeployment.spec.app, &redeployment.spec.plan, lookup, world.profile.as_ref())
}

/// Why a plan (and profile) cannot run for `app` (pure): a Service of
/// another App, a Service planned twice, an action its kind does not have
/// (`build` is for Git-built Services, `restart` for image-based ones,
/// `pinDigest` for image-based ones with `resolveDigest`), a profile of
/// another App. A planned Service `lookup` does not know may not be cached
/// yet: the step waits for it, then fails it alone.
fn plan_refusal(
    app: &str,
    plan: &[PlannedService],
    lookup: impl Fn(&str) -> Option<Service>,
    profile: Option<&DeploymentProfile>,
) -> Option<String> {
    let mut problems = Vec::new();
    if let Some(profile) = profile.filter(|p| p.spec.app != app) {
        problems.push(format!(
            "spec.profile `{}` belongs to App `{}`, not `{app}`",
            profile.name_any(),
            profile.spec.app
        ));
    }
    for (index, planned) in plan.iter().enumerate() {
        let name = &planned.service;
        if plan[..index].iter().any(|p| &p.service == name) {
            problems.push(format!("Service `{name}` is planned more than once"));
            continue;
        }
        let Some(service) = lookup(name) else { continue };
        if service.spec.app != app {
            problems.push(format!("Service `{name}` belongs to App `{}`, not `{app}`", service.spec.app));
            continue;
        }
        let resolves = service.spec.image.as_ref().is_some_and(|i| i.resolve_digest);
        let fits = match planned.action {
            PlanAction::Build => service.spec.git.is_some(),
            PlanAction::Restart => service.spec.git.is_none(),
            PlanAction::PinDigest => service.spec.git.is_none() && resolves,
        };
        if !fits {
            let kind = match (&service.spec.git, resolves) {
                (Some(_), _) => "Git-built",
                (None, true) => "image-based with resolveDigest",
                (None, false) => "image-based without resolveDigest",
            };
            problems.push(format!("Service `{name}` is {kind}: action {:?} does not apply to it", planned.action));
        }
    }
    (!problems.is_empty()).then(|| format!("the plan was refused, nothing of it was run: {}", problems.join("; ")))
}

/// At most one active rollout per Service: a newer Redeployment of the same
/// Services supersedes this one while it is pending; an older active one makes it wait.
fn waiting_on(world: &World) -> Gate {
    let mine: Vec<&str> = world.redeployment.spec.plan.iter().map(|p| p.service.as_str()).collect();
    let key = world.redeployment.order_key();
    let others: Vec<Redeployment> = world
        .context
        .caches
        .redeployments
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|r| {
            r.namespace().as_deref() == Some(world.namespace.as_str()) && r.spec.app == world.redeployment.spec.app
        })
        .filter(|r| r.name_any() != world.redeployment.name_any() && r.metadata.deletion_timestamp.is_none())
        .filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished))
        .cloned()
        .collect();
    let covers = |other: &Redeployment| mine.iter().all(|s| other.spec.plan.iter().any(|p| p.service == *s));
    let newest_covering =
        others.iter().filter(|o| o.order_key() > key && covers(o)).max_by_key(|o| o.order_key()).map(|o| o.name_any());
    if let Some(newer) = newest_covering {
        return Gate::Superseded(newer);
    }
    // Any older unfinished Redeployment sharing a Service blocks, even one
    // whose cached status still says Pending: it may be starting right now
    // (its Deploying status not yet in the cache), or it may have patched
    // the workload before a SIGKILL and be about to patch it again. Letting
    // this one start then rolled the workload out twice at once, and the
    // older one, no longer named by the workload, was never woken again
    // (tests/faults.rs, killoperator). A pending older one that this one
    // covers supersedes itself on its next reconcile, which ends the wait.
    let busy = others.iter().filter(|o| o.order_key() < key).find_map(|o| {
        let shared = o.spec.plan.iter().find(|p| mine.contains(&p.service.as_str()))?;
        Some(format!("waiting for Redeployment {} to finish with Service {}", o.name_any(), shared.service))
    });
    busy.map_or(Gate::Go, Gate::Wait)
}

/// Services of one Redeployment stepped at once under the parallel strategy:
/// a step is a few API calls (read the workload, patch it, publish an Event),
/// so a large App's fan-out is bound by round trips unless they overlap.
const CONCURRENT_STEPS: usize = 32;

/// Advances every Service that may move now; returns when to look again.
async fn drive(world: &World<'_>, status: &mut RedeploymentStatus) -> Result<Duration, Error> {
    let strategy = world.profile.as_ref().map(|p| p.spec.strategy).unwrap_or_default();
    let driven = match strategy {
        Strategy::Parallel => drive_parallel(world, status).await,
        Strategy::Serial => drive_serial(world, status).await,
    };
    publish_noted(world).await;
    driven
}

/// Publishes the Events the pass's steps noted: one per type and reason, in
/// the order first noted, naming every Service's step (the API server keeps
/// one Event per type, reason and Redeployment anyway, counting repeats, so
/// one Event a step would cost a write each and show only the first note).
async fn publish_noted(world: &World<'_>) {
    let noted = std::mem::take(&mut *world.noted.lock().unwrap_or_else(|e| e.into_inner()));
    let mut grouped: Vec<(EventType, &'static str, Vec<String>)> = Vec::new();
    for (type_, reason, note) in noted {
        match grouped.iter_mut().find(|(t, r, _)| *t == type_ && *r == reason) {
            Some((_, _, notes)) => notes.push(note),
            None => grouped.push((type_, reason, vec![note])),
        }
    }
    for (type_, reason, mut notes) in grouped {
        let note = match notes.len() {
            1 => notes.remove(0),
            n => format!("{n} Services: {}", notes.join("; ")),
        };
        publish(world, type_, reason, note).await;
    }
}

/// Every unfinished Service steps, [`CONCURRENT_STEPS`] at a time, each on its
/// own result. Every started step runs to its end; the first error (in plan
/// order) is then returned, as the serial loop would, and the next pass goes
/// on from what the API server shows.
async fn drive_parallel(world: &World<'_>, status: &mut RedeploymentStatus) -> Result<Duration, Error> {
    let mut steps = Vec::new();
    for (index, result) in status.services.iter_mut().enumerate() {
        if result.phase.is_finished() {
            continue;
        }
        let Some(planned) = world.redeployment.spec.plan.iter().find(|p| p.service == result.service) else {
            continue;
        };
        steps.push(numbered_step(world, planned, result, index));
    }
    let mut outcomes: Vec<(usize, Result<Duration, Error>)> =
        futures::stream::iter(steps).buffer_unordered(CONCURRENT_STEPS).collect().await;
    outcomes.sort_by_key(|(index, _)| *index);
    let mut requeue = Duration::from_secs(300);
    for (_, outcome) in outcomes {
        requeue = requeue.min(outcome?);
    }
    Ok(requeue)
}

/// One Service after another in plan order: the next starts once the one
/// before it finished, and none starts after a failure.
async fn drive_serial(world: &World<'_>, status: &mut RedeploymentStatus) -> Result<Duration, Error> {
    let mut requeue = Duration::from_secs(300);
    for index in 0..status.services.len() {
        if status.services[index].phase.is_finished() {
            continue;
        }
        if let Some(failed) = status.services[..index].iter().find(|r| r.phase == ServicePhase::Failed) {
            let failed = failed.service.clone();
            let result = &mut status.services[index];
            result.phase = ServicePhase::Canceled;
            result.message = Some(format!("not started: {failed} failed before it (strategy serial)"));
            result.finished_at = Some(now());
            continue;
        }
        if status.services[..index].iter().any(|r| !r.phase.is_finished()) {
            break;
        }
        let Some(planned) = world.redeployment.spec.plan.iter().find(|p| p.service == status.services[index].service)
        else {
            continue;
        };
        let result = &mut status.services[index];
        requeue = requeue.min(step(world, planned, result).await?);
        if !result.phase.is_finished() {
            break;
        }
    }
    Ok(requeue)
}

/// [`step`], with the index of its result.
async fn numbered_step(
    world: &World<'_>,
    planned: &PlannedService,
    result: &mut ServiceResult,
    index: usize,
) -> (usize, Result<Duration, Error>) {
    (index, step(world, planned, result).await)
}

/// One step of one Service.
async fn step(world: &World<'_>, planned: &PlannedService, result: &mut ServiceResult) -> Result<Duration, Error> {
    let cached = world.services.get(&planned.service).cloned();
    let service = match cached {
        Some(service) => service,
        // The cache may not have seen a Service created together with this Redeployment.
        None => match Api::<Service>::namespaced(world.context.client.clone(), &world.namespace)
            .get_opt(&planned.service)
            .await?
        {
            Some(service) if service.spec.app == world.redeployment.spec.app => service,
            _ if age(world.redeployment) < SERVICE_GRACE => {
                result.message = Some(format!("waiting for Service `{}` to exist", planned.service));
                return Ok(Duration::from_secs(2));
            }
            _ => {
                let message =
                    format!("Service `{}` of App `{}` does not exist", planned.service, world.redeployment.spec.app);
                finish(result, ServicePhase::Failed, message);
                return Ok(Duration::ZERO);
            }
        },
    };
    let service = &service;
    match result.phase {
        ServicePhase::Pending => start(world, service, planned, result).await,
        ServicePhase::Building => follow_build(world, service, result).await,
        ServicePhase::Deploying => follow_rollout(world, service, result).await,
        _ => Ok(Duration::from_secs(300)),
    }
}

async fn start(
    world: &World<'_>,
    service: &Service,
    planned: &PlannedService,
    result: &mut ServiceResult,
) -> Result<Duration, Error> {
    result.started_at = Some(now());
    match planned.action {
        PlanAction::Restart => {
            let restarted_at = restart_stamp(world.redeployment);
            let patch = workload::restart_patch(&world.redeployment.name_any(), &restarted_at);
            roll_out(world, service, result, None, patch).await
        }
        PlanAction::PinDigest => pin_digest(world, service, result).await,
        PlanAction::Build => {
            let policy = world.profile.as_ref().map(|p| p.spec.build).unwrap_or_default();
            let builds = service.status.as_ref().map(|s| s.builds.clone()).unwrap_or_default();
            let reusable = planned.git_ref.as_deref().and_then(|r| builds.iter().find(|b| b.commit == r));
            match (policy, reusable, builds.first()) {
                (BuildPolicy::Never, _, Some(last)) => {
                    result.git_ref = Some(last.commit.clone());
                    result.message =
                        Some(format!("build policy never: deploying the last image built, {}", last.image));
                    deploy_image(world, service, result, last.image.clone()).await
                }
                (BuildPolicy::Never, _, None) => {
                    finish(
                        result,
                        ServicePhase::Failed,
                        "build policy never, but no image was ever built for this Service".into(),
                    );
                    Ok(Duration::ZERO)
                }
                (BuildPolicy::IfMissing, Some(built), _) => {
                    result.git_ref = Some(built.commit.clone());
                    result.message = Some(format!("reusing {} built before for this commit", built.image));
                    deploy_image(world, service, result, built.image.clone()).await
                }
                _ => start_build(world, service, planned, result).await,
            }
        }
    }
}

async fn start_build(
    world: &World<'_>,
    service: &Service,
    planned: &PlannedService,
    result: &mut ServiceResult,
) -> Result<Duration, Error> {
    let app = world.app.as_ref().ok_or_else(|| Error::NoNamespace(world.redeployment.spec.app.clone()))?;
    let request = BuildRequest {
        app,
        service,
        redeployment: world.redeployment,
        git_ref: planned.git_ref.as_deref(),
        builder_image: &world.context.settings.builder_image,
    };
    let job = match build::render_job(&request) {
        Ok(job) => job,
        Err(error) => {
            finish(result, ServicePhase::Failed, error.to_string());
            return Ok(Duration::ZERO);
        }
    };
    let jobs = Api::<Job>::namespaced(world.context.client.clone(), &world.namespace);
    let name = job.name_any();
    // The name is fixed by (Redeployment, Service): after a restart the Job made before is found, not made twice.
    if jobs.get_opt(&name).await?.is_none() {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match jobs.create(&params, &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
        world.note(
            EventType::Normal,
            "BuildStarted",
            format!("building {} at {}", service.name_any(), planned.git_ref.as_deref().unwrap_or("the branch head")),
        );
    }
    result.phase = ServicePhase::Building;
    result.build_job = Some(name);
    result.git_ref = planned.git_ref.clone();
    Ok(Duration::from_secs(30))
}

async fn follow_build(world: &World<'_>, service: &Service, result: &mut ServiceResult) -> Result<Duration, Error> {
    let Some(name) = result.build_job.clone() else {
        finish(result, ServicePhase::Failed, "the build Job is not recorded".into());
        return Ok(Duration::ZERO);
    };
    let jobs = Api::<Job>::namespaced(world.context.client.clone(), &world.namespace);
    let Some(job) = jobs.get_opt(&name).await? else {
        finish(result, ServicePhase::Failed, format!("build Job {name} was deleted before it finished"));
        return Ok(Duration::ZERO);
    };
    let conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let finished = |kind: &str| conditions.iter().find(|c| c.type_ == kind && c.status == "True");
    if !controlled_by(&job, world.redeployment.meta().uid.as_deref()) {
        let message =
            format!("build Job {name} is not this Redeployment's (another controller owns it): it is ignored");
        world.note(EventType::Warning, "BuildFailed", message.clone());
        finish(result, ServicePhase::Failed, message);
        return Ok(Duration::ZERO);
    }
    if finished("Complete").is_some() {
        let pods = job_pods(world, &job).await?;
        let reported = termination_message(&pods)
            .ok_or_else(|| build::BuildError::InvalidTerminationMessage {
                reason: "the Job succeeded, but its first container left no termination message".into(),
            })
            .and_then(|message| build::parse_termination_message(&message))
            .and_then(|outcome| build::check_outcome(service, &outcome).map(|()| outcome));
        let outcome = match reported {
            Ok(outcome) => outcome,
            Err(error) => {
                let message = format!("build Job {name}: {error}");
                world.note(EventType::Warning, "BuildFailed", message.clone());
                finish(result, ServicePhase::Failed, message);
                return Ok(Duration::ZERO);
            }
        };
        record_build(world, service, &outcome).await?;
        result.git_ref = Some(outcome.commit.clone());
        world.note(EventType::Normal, "BuildSucceeded", format!("built {} for {}", outcome.image, service.name_any()));
        return deploy_image(world, service, result, outcome.image).await;
    }
    if let Some(failed) = finished("Failed") {
        let logs = build_logs(world, &job_pods(world, &job).await.unwrap_or_default()).await;
        let message = format!(
            "build Job {name} failed ({}: {}){logs}",
            failed.reason.clone().unwrap_or_default(),
            failed.message.clone().unwrap_or_default()
        );
        world.note(EventType::Warning, "BuildFailed", message.clone());
        finish(result, ServicePhase::Failed, message);
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_secs(30))
}

async fn deploy_image(
    world: &World<'_>,
    service: &Service,
    result: &mut ServiceResult,
    image: String,
) -> Result<Duration, Error> {
    let container = match container_name(world, service).await? {
        Ok(container) => container,
        Err(message) => {
            finish(result, ServicePhase::Failed, message);
            return Ok(Duration::ZERO);
        }
    };
    result.image = Some(image.clone());
    let patch = workload::image_patch(&world.redeployment.name_any(), &container, &image);
    roll_out(world, service, result, Some(container), patch).await
}

/// Records what the workload ran before, applies `patch`, and starts tracking the rollout.
async fn roll_out(
    world: &World<'_>,
    service: &Service,
    result: &mut ServiceResult,
    container: Option<String>,
    patch: serde_json::Value,
) -> Result<Duration, Error> {
    let target = &service.spec.target;
    let what = workload::describe(target.kind, &world.namespace, &target.name);
    let mut current = current_workload(world, service).await?;
    // The cached copy may be a little behind: the patch applies only to the
    // version read, and a conflict means reading the workload again.
    let mut conflicts = 0;
    loop {
        let Some(workload) = current else {
            finish(result, ServicePhase::Failed, format!("{what} does not exist"));
            return Ok(Duration::ZERO);
        };
        let running = match workload.container(container.as_deref().or(target.container.as_deref())) {
            Ok(running) => running.image.clone(),
            Err(message) => {
                finish(result, ServicePhase::Failed, format!("{what} {message}"));
                return Ok(Duration::ZERO);
            }
        };
        // What ran before is recorded on the workload in the same patch that
        // changes it, so a restarted operator still knows what to roll back to.
        let mut patch = patch.clone();
        if workload.redeployment.as_deref() == Some(world.redeployment.name_any().as_str()) {
            result.previous = workload.previous.clone();
        } else {
            let previous = PreviousTemplate { image: running.clone(), restarted_at: workload.restarted_at.clone() };
            workload::record_previous(&mut patch, &previous);
            result.previous = Some(previous);
        }
        if let Some(version) = &workload.resource_version {
            workload::require_version(&mut patch, version);
        }
        match workload::patch(&world.context.client, &world.namespace, target, &patch).await {
            Ok(patched) => {
                result.phase = ServicePhase::Deploying;
                result.rollout_generation = Some(patched.generation);
                result.image.get_or_insert(running);
                world.note(EventType::Normal, "RolloutStarted", format!("rolling out {what}"));
                return Ok(Duration::from_secs(5));
            }
            Err(kube::Error::Api(status)) if status.code == 409 && conflicts < 2 => {
                conflicts += 1;
                current = workload::get(&world.context.client, &world.namespace, target).await?;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The Service's workload as the cache has it; read from the API server when
/// the cache lacks it (it may not have seen a workload just created).
async fn current_workload(world: &World<'_>, service: &Service) -> Result<Option<Workload>, Error> {
    let target = &service.spec.target;
    match world.context.caches.workloads.get(target.kind, &world.namespace, &target.name) {
        Some(workload) => Ok(Some(workload)),
        None => Ok(workload::get(&world.context.client, &world.namespace, target).await?),
    }
}

async fn follow_rollout(world: &World<'_>, service: &Service, result: &mut ServiceResult) -> Result<Duration, Error> {
    let target = &service.spec.target;
    let what = workload::describe(target.kind, &world.namespace, &target.name);
    let Some(current) = current_workload(world, service).await? else {
        finish(result, ServicePhase::Failed, format!("{what} was deleted during the rollout"));
        return Ok(Duration::ZERO);
    };
    let rollout = world.profile.as_ref().map(|p| p.spec.rollout.clone()).unwrap_or_default();
    let progress = match current.progress(result.rollout_generation.unwrap_or_default()) {
        Progress::InProgress(message) => {
            let started = result.started_at.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
            let elapsed = Timestamp::now().duration_since(started).as_secs().max(0).unsigned_abs();
            let timeout = u64::try_from(rollout.timeout_seconds).unwrap_or(600);
            if elapsed >= timeout {
                Progress::Failed {
                    reason: "Timeout".into(),
                    message: format!("not rolled out within {}s: {message}", rollout.timeout_seconds),
                }
            } else {
                result.message = Some(message);
                // The workload's own events wake us as it progresses; this is only the deadline.
                return Ok(Duration::from_secs(timeout - elapsed));
            }
        }
        other => other,
    };
    match progress {
        Progress::Succeeded => {
            record_deployed(world, service, result).await?;
            world.note(EventType::Normal, "RolloutSucceeded", format!("{what} rolled out"));
            finish(result, ServicePhase::Succeeded, format!("{what} rolled out"));
        }
        Progress::Failed { reason, message } => {
            let mut message = format!("{what} failed to roll out ({reason}): {message}");
            let previous = result.previous.clone().filter(|_| rollout.auto_rollback && !result.rolled_back);
            if let Some(previous) = previous
                && let Ok(container) = container_name(world, service).await?
            {
                let patch = workload::rollback_patch(&container, &previous.image, previous.restarted_at.as_deref());
                workload::patch(&world.context.client, &world.namespace, target, &patch).await?;
                result.rolled_back = true;
                message.push_str(&format!("; rolled back to {}", previous.image));
            }
            world.note(EventType::Warning, "RolloutFailed", message.clone());
            finish(result, ServicePhase::Failed, message);
        }
        Progress::InProgress(_) => {}
    }
    Ok(Duration::ZERO)
}

async fn pin_digest(world: &World<'_>, service: &Service, result: &mut ServiceResult) -> Result<Duration, Error> {
    let Some(image) = service.spec.image.as_ref() else {
        finish(result, ServicePhase::Failed, "Service has no spec.image to resolve".into());
        return Ok(Duration::ZERO);
    };
    let digest = match super::digest::resolve(
        &world.context.client,
        &world.namespace,
        image,
        &world.context.settings.insecure_registries,
    )
    .await
    {
        Ok(digest) => digest,
        Err(message) => {
            finish(result, ServicePhase::Failed, message);
            return Ok(Duration::ZERO);
        }
    };
    let container = match container_name(world, service).await? {
        Ok(container) => container,
        Err(message) => {
            finish(result, ServicePhase::Failed, message);
            return Ok(Duration::ZERO);
        }
    };
    let current = current_workload(world, service).await?;
    let running = current.as_ref().and_then(|w| w.container(Some(&container)).ok()).map(|c| c.image.clone());
    result.git_ref = Some(digest.digest.clone());
    if running.as_deref() == Some(digest.pinned.as_str()) {
        result.image = Some(digest.pinned.clone());
        finish(result, ServicePhase::Skipped, format!("{} is already running digest {}", container, digest.digest));
        return Ok(Duration::ZERO);
    }
    deploy_image(world, service, result, digest.pinned).await
}

/// The container a Service deploys, checked against the workload.
async fn container_name(world: &World<'_>, service: &Service) -> Result<Result<String, String>, Error> {
    let target = &service.spec.target;
    let what = workload::describe(target.kind, &world.namespace, &target.name);
    let Some(current) = current_workload(world, service).await? else {
        return Ok(Err(format!("{what} does not exist")));
    };
    Ok(current.container(target.container.as_deref()).map(|c| c.name.clone()).map_err(|m| format!("{what} {m}")))
}

async fn record_build(world: &World<'_>, service: &Service, outcome: &build::BuildOutcome) -> Result<(), Error> {
    let mut builds = service.status.as_ref().map(|s| s.builds.clone()).unwrap_or_default();
    builds.retain(|b| b.commit != outcome.commit);
    builds.insert(
        0,
        BuiltImage { commit: outcome.commit.clone(), image: outcome.image.clone(), digest: outcome.digest.clone() },
    );
    builds.truncate(10);
    let patch = json!({ "status": { "builds": builds } });
    Api::<Service>::namespaced(world.context.client.clone(), &world.namespace)
        .patch_status(&service.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn record_deployed(world: &World<'_>, service: &Service, result: &ServiceResult) -> Result<(), Error> {
    let patch = json!({ "status": {
        "deployedRef": result.git_ref.as_ref().or(result.image.as_ref()),
        "deployedImage": result.image,
        "lastRedeployment": world.redeployment.name_any(),
    } });
    Api::<Service>::namespaced(world.context.client.clone(), &world.namespace)
        .patch_status(&service.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Whether `object`'s controller ownerReference names the object with `uid`.
fn controlled_by(object: &impl Resource, uid: Option<&str>) -> bool {
    let controller = object.meta().owner_references.iter().flatten().find(|o| o.controller == Some(true));
    uid.is_some() && controller.map(|o| o.uid.as_str()) == uid
}

/// The build Job's own pods: those with its `job-name` label that the Job
/// controls (anyone who may create pods in the namespace can set a label).
async fn job_pods(world: &World<'_>, job: &Job) -> Result<Vec<Pod>, Error> {
    let pods = Api::<Pod>::namespaced(world.context.client.clone(), &world.namespace)
        .list(&ListParams::default().labels(&format!("job-name={}", job.name_any())))
        .await?;
    let uid = job.meta().uid.as_deref();
    Ok(pods.items.into_iter().filter(|pod| controlled_by(pod, uid)).collect())
}

/// The first container's termination message of the build Job's pod.
fn termination_message(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        let terminated = statuses.first()?.state.as_ref()?.terminated.as_ref()?;
        terminated.message.clone().filter(|m| !m.trim().is_empty())
    })
}

/// The last lines of the failed build's log (or its termination message), for the status.
async fn build_logs(world: &World<'_>, pods: &[Pod]) -> String {
    let Some(pod) = pods.last() else { return String::new() };
    let params = LogParams { tail_lines: Some(10), ..Default::default() };
    let api = Api::<Pod>::namespaced(world.context.client.clone(), &world.namespace);
    let text = match api.logs(&pod.name_any(), &params).await {
        Ok(logs) if !logs.trim().is_empty() => logs,
        _ => pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|s| s.first()?.state.as_ref()?.terminated.as_ref()?.message.clone())
            .unwrap_or_default(),
    };
    if text.trim().is_empty() { String::new() } else { format!("; last log lines:\n{}", text.trim_end()) }
}

/// Deleting a Redeployment cancels what it still runs: its build Jobs are deleted.
async fn cancel(redeployment: &Redeployment, context: &Context) -> Result<Action, Error> {
    let mut status = redeployment.status.clone().unwrap_or_default();
    if status.phase.is_some_and(Phase::is_finished) {
        return Ok(Action::await_change());
    }
    let namespace = redeployment.namespace().unwrap_or_default();
    let jobs = Api::<Job>::namespaced(context.client.clone(), &namespace);
    for result in status.services.iter_mut().filter(|r| !r.phase.is_finished()) {
        if let Some(job) = &result.build_job {
            let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
            match jobs.delete(job, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
        finish(result, ServicePhase::Canceled, "canceled: the Redeployment was deleted".into());
    }
    status.phase = Some(Phase::Canceled);
    status.finished_at = Some(now());
    status.message = Some("canceled: the Redeployment was deleted".into());
    // Best effort: the Redeployment is going away, there is no later pass.
    let app = context.caches.app(&namespace, &redeployment.spec.app);
    report_to_github(context, redeployment, app.as_ref(), &mut status).await;
    write_status(context, redeployment, &status).await?;
    context.metrics.redeployment_finished(Phase::Canceled, age(redeployment));
    Ok(Action::await_change())
}

async fn write_status(
    context: &Context,
    redeployment: &Redeployment,
    status: &RedeploymentStatus,
) -> Result<(), Error> {
    let patch = json!({ "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment", "status": status });
    Api::<Redeployment>::namespaced(context.client.clone(), &redeployment.namespace().unwrap_or_default())
        .patch_status(&redeployment.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// A Kubernetes Event on the App; failures to publish are logged, never fatal.
async fn publish(world: &World<'_>, type_: EventType, reason: &str, note: String) {
    let Some(app) = &world.app else { return };
    let reference: ObjectReference = app.object_ref(&());
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(redact_credentials(&note).chars().take(1000).collect()),
        action: "Redeploy".into(),
        secondary: Some(world.redeployment.object_ref(&())),
    };
    if let Err(error) = world.context.recorder.publish(&event, &reference).await {
        tracing::debug!(%error, "publishing an Event failed");
    }
}

/// Redacts credentials in URLs from every message of the status (a build's
/// log lines, a repository named in an error): a status is readable by
/// anyone who may read Redeployments.
fn redact_status(status: &mut RedeploymentStatus) {
    let messages = status.services.iter_mut().filter_map(|r| r.message.as_mut()).chain(status.message.as_mut());
    for message in messages {
        if let Cow::Owned(redacted) = redact_credentials(message) {
            *message = redacted;
        }
    }
}

fn finish(result: &mut ServiceResult, phase: ServicePhase, message: String) {
    result.phase = phase;
    result.message = Some(message);
    result.finished_at = Some(now());
}

fn fail_all(status: &mut RedeploymentStatus, message: &str) {
    for result in status.services.iter_mut().filter(|r| !r.phase.is_finished()) {
        finish(result, ServicePhase::Failed, message.to_string());
    }
}

/// The Redeployment's phase, from its Services' (pure).
pub fn overall_phase(results: &[ServiceResult], superseded: bool) -> Phase {
    let any = |phase: ServicePhase| results.iter().any(|r| r.phase == phase);
    if superseded && results.iter().all(|r| r.phase == ServicePhase::Superseded) {
        return Phase::Superseded;
    }
    if results.iter().all(|r| r.phase.is_finished()) {
        return if results.iter().all(|r| matches!(r.phase, ServicePhase::Succeeded | ServicePhase::Skipped)) {
            Phase::Succeeded
        } else if results.iter().all(|r| r.phase == ServicePhase::Canceled) {
            Phase::Canceled
        } else {
            Phase::Failed
        };
    }
    if any(ServicePhase::Building) {
        Phase::Building
    } else if any(ServicePhase::Deploying) || results.iter().any(|r| r.phase.is_finished()) {
        Phase::Deploying
    } else {
        Phase::Pending
    }
}

fn summary(results: &[ServiceResult]) -> String {
    results
        .iter()
        .map(|r| {
            format!("{}: {:?}{}", r.service, r.phase, r.message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The restart timestamp of a Redeployment: fixed by its creation, so a
/// repeated patch is a no-op and never a second rollout.
fn restart_stamp(redeployment: &Redeployment) -> String {
    redeployment
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| redeployment.name_any())
}

/// How long a Redeployment waits for a Service it names to be created
/// (`kubectl apply -f dir/` may create the Redeployment first).
const SERVICE_GRACE: Duration = Duration::from_secs(60);

fn age(redeployment: &Redeployment) -> Duration {
    let created = redeployment.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    Duration::from_secs(Timestamp::now().duration_since(created).as_secs().max(0).unsigned_abs())
}

fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(phases: &[ServicePhase]) -> Vec<ServiceResult> {
        phases.iter().map(|p| ServiceResult { phase: *p, ..Default::default() }).collect()
    }

    fn service(name: &str, app: &str, git: bool, resolve_digest: bool) -> Service {
        let mut service: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": name},
            "spec": {"app": app, "target": {"name": name}},
        }))
        .expect("service");
        if git {
            service.spec.git =
                Some(serde_json::from_value(serde_json::json!({"repository": "https://h/o/r"})).expect("git"));
        } else {
            service.spec.image = Some(
                serde_json::from_value(serde_json::json!({"reference": "nginx", "resolveDigest": resolve_digest}))
                    .expect("image"),
            );
        }
        service
    }

    fn planned(service: &str, action: PlanAction) -> PlannedService {
        PlannedService { service: service.into(), action, git_ref: None }
    }

    #[test]
    fn a_plan_is_held_against_the_apps_services_and_profile() {
        let services: BTreeMap<String, Service> = [
            service("web", "shop", true, false),
            service("worker", "shop", false, false),
            service("pinned", "shop", false, true),
            service("theirs", "other", false, false),
            service("api", "shop", true, false),
        ]
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();
        let lookup = |name: &str| services.get(name).cloned();
        let planner_made = [
            planned("web", PlanAction::Build),
            planned("worker", PlanAction::Restart),
            planned("pinned", PlanAction::PinDigest),
            planned("pinned-later", PlanAction::Restart), // not cached yet: left to the step
        ];
        assert_eq!(plan_refusal("shop", &planner_made, lookup, None), None);
        let own: DeploymentProfile = serde_json::from_value(serde_json::json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "DeploymentProfile", "metadata": {"name": "quick"},
            "spec": {"app": "shop"},
        }))
        .expect("profile");
        assert_eq!(plan_refusal("shop", &planner_made, lookup, Some(&own)), None);

        for (plan, expected) in [
            (vec![planned("theirs", PlanAction::Restart)], "Service `theirs` belongs to App `other`"),
            (vec![planned("worker", PlanAction::Build)], "`worker` is image-based without resolveDigest: action Build"),
            (vec![planned("web", PlanAction::Restart)], "`web` is Git-built: action Restart"),
            (vec![planned("web", PlanAction::PinDigest)], "`web` is Git-built: action PinDigest"),
            (vec![planned("worker", PlanAction::PinDigest)], "action PinDigest does not apply"),
            (vec![planned("pinned", PlanAction::Build)], "resolveDigest: action Build"),
            (
                vec![planned("web", PlanAction::Build), planned("web", PlanAction::Build)],
                "`web` is planned more than once",
            ),
        ] {
            let mut plan = plan;
            plan.insert(0, planned("api", PlanAction::Build)); // a valid entry does not save the plan
            let refused = plan_refusal("shop", &plan, lookup, None).unwrap_or_else(|| panic!("{plan:?} was accepted"));
            assert!(refused.contains(expected), "{refused}");
            assert!(refused.starts_with("the plan was refused, nothing of it was run"), "{refused}");
        }
        let mut foreign = own.clone();
        foreign.spec.app = "other".into();
        let refused = plan_refusal("shop", &planner_made, lookup, Some(&foreign)).expect("refused");
        assert!(refused.contains("spec.profile `quick` belongs to App `other`"), "{refused}");
    }

    #[test]
    fn the_phase_follows_the_services() {
        use ServicePhase::*;
        assert_eq!(overall_phase(&results(&[Pending, Pending]), false), Phase::Pending);
        assert_eq!(overall_phase(&results(&[Building, Deploying]), false), Phase::Building);
        assert_eq!(overall_phase(&results(&[Succeeded, Deploying]), false), Phase::Deploying);
        assert_eq!(overall_phase(&results(&[Succeeded, Pending]), false), Phase::Deploying);
        assert_eq!(overall_phase(&results(&[Succeeded, Skipped]), false), Phase::Succeeded);
        assert_eq!(overall_phase(&results(&[Succeeded, Failed]), false), Phase::Failed);
        assert_eq!(overall_phase(&results(&[Failed, Canceled]), false), Phase::Failed);
        assert_eq!(overall_phase(&results(&[Canceled, Canceled]), false), Phase::Canceled);
        assert_eq!(overall_phase(&results(&[Superseded]), true), Phase::Superseded);
    }
}
