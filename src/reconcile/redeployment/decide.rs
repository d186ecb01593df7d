//! *Decide*: what one pass of the Redeployment reconciler does, as a pure
//! function of what [`observe`](super::observe) read and the time. It
//! returns the next status and the effects that bring the world to it;
//! [`execute`](super::execute) carries them out.
//!
//! Every decision is one the next pass recognises if it was only half
//! carried out: a build Job is named after (Redeployment, Service) and found
//! again, a workload whose pod template already names this Redeployment with
//! the image (or restart stamp) is not patched again, a rollback already
//! applied is read back from the workload. What a build made is recorded in
//! the Redeployment's own status (`built`), in the same write that moves the
//! Service on; the Service reconciler copies it into the Service's status.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, runtime::events::EventType};
use serde_json::Value;

use super::observe::{JobState, Observed};
use crate::{
    api::{
        BuildPolicy, BuiltImage, DeploymentProfile, Phase, PlanAction, PlannedService, PreviousTemplate, Redeployment,
        RedeploymentStatus, Service, ServicePhase, ServiceResult, Strategy, WorkloadTarget, conditions,
    },
    build::{self, BuildRequest},
    github,
    reconcile::service,
    repo::redact_credentials,
    workload::{self, Progress},
};

/// What one pass decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The Redeployment's next status; written when it differs from the observed one.
    pub status: RedeploymentStatus,
    /// Carried out in order, before the status is written.
    pub effects: Vec<Effect>,
    /// When to look again; `None` waits for a change.
    pub requeue: Option<Duration>,
    /// The phase the Redeployment finished in by this pass, for the metric.
    pub finished: Option<Phase>,
}

/// A change to the world outside the Redeployment's status.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Creates a Service's build Job (an existing one is left as it is).
    CreateJob { service: String, job: Box<k8s_openapi::api::batch::v1::Job> },
    /// Deletes a build Job (one already gone is fine).
    DeleteJob { name: String },
    /// Starts a Service's rollout: a strategic merge patch that applies only
    /// to the workload version observed (a conflict means observing again).
    PatchWorkload { service: String, target: WorkloadTarget, patch: Value },
    /// Restores what the workload ran before (auto-rollback).
    RollBack { service: String, target: WorkloadTarget, patch: Value },
    /// A Kubernetes Event on the App.
    PublishEvent { type_: EventType, reason: String, note: String },
    /// Posts the Redeployment's state to its GitHub Deployment.
    ReportGitHubStatus { deployment: i64, state: &'static str, description: String },
}

impl Effect {
    /// The Service whose step asked for this effect, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Effect::CreateJob { service, .. }
            | Effect::PatchWorkload { service, .. }
            | Effect::RollBack { service, .. } => Some(service),
            _ => None,
        }
    }
}

/// How soon a deployment status GitHub did not take is posted again.
pub const GITHUB_RETRY: Duration = Duration::from_secs(30);
/// How long a Redeployment waits for a Service it names to be created
/// (`kubectl apply -f dir/` may create the Redeployment first).
pub const SERVICE_GRACE: Duration = Duration::from_secs(60);
const IDLE: Duration = Duration::from_secs(300);
const BUILD_POLL: Duration = Duration::from_secs(30);
const ROLLOUT_POLL: Duration = Duration::from_secs(5);
const WAIT_POLL: Duration = Duration::from_secs(2);

/// How often at most a Redeployment's status is written when only its
/// messages changed: a rollout reports each step of its workload, and a
/// write per step cost the API server more than the rollout itself.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Whether writing `next` over `previous` may wait for [`PROGRESS_EVERY`]:
/// it changes messages only, or it only records a start that the next pass
/// finds again in the world. A Redeployment rolled out within that time is
/// then written once, finished, instead of once a phase.
pub fn may_wait(plan: &[PlannedService], previous: &RedeploymentStatus, next: &RedeploymentStatus) -> bool {
    only_messages_differ(previous, next) || records_only_a_start(plan, previous, next)
}

/// Whether `next` differs from `previous` in its messages only: progress
/// that can wait for [`PROGRESS_EVERY`], unlike any change of phase, record
/// or condition.
pub fn only_messages_differ(previous: &RedeploymentStatus, next: &RedeploymentStatus) -> bool {
    // Field by field, without copying either (a 500-Service status is
    // large); every field is named, so one added later is compared too.
    let RedeploymentStatus {
        observed_generation,
        phase,
        message: _,
        superseded_by,
        services,
        started_at,
        finished_at,
        github_state,
        conditions,
    } = previous;
    *observed_generation == next.observed_generation
        && *phase == next.phase
        && *superseded_by == next.superseded_by
        && *started_at == next.started_at
        && *finished_at == next.finished_at
        && *github_state == next.github_state
        && services.len() == next.services.len()
        && services.iter().zip(&next.services).all(|(a, b)| results_differ_in_message_only(a, b))
        && conditions.len() == next.conditions.len()
        && conditions.iter().zip(&next.conditions).all(|(a, b)| conditions::equal_but_message(a, b))
}

fn results_differ_in_message_only(previous: &ServiceResult, next: &ServiceResult) -> bool {
    let ServiceResult {
        service,
        phase,
        git_ref,
        image,
        build_job,
        built,
        rollout_generation,
        previous: template,
        rolled_back,
        message: _,
        started_at,
        finished_at,
    } = previous;
    *service == next.service
        && *phase == next.phase
        && *git_ref == next.git_ref
        && *image == next.image
        && *build_job == next.build_job
        && *built == next.built
        && *rollout_generation == next.rollout_generation
        && *template == next.previous
        && *rolled_back == next.rolled_back
        && *started_at == next.started_at
        && *finished_at == next.finished_at
}

/// Whether `next` records nothing but the start of a Redeployment whose
/// status records nothing yet, in steps the next pass recognises as its own
/// (see [`started_unrecorded`]): a restart, whose patch names the
/// Redeployment and a stamp fixed by its creation, and a build, whose Job is
/// named after (Redeployment, Service). Not a digest pinned nor an image
/// reused: looked up again, either could differ and roll the workload out
/// twice. Nothing finished, superseded or told to GitHub, and no Event (a
/// pending one's) that a pass would publish again.
fn records_only_a_start(plan: &[PlannedService], previous: &RedeploymentStatus, next: &RedeploymentStatus) -> bool {
    previous.services.is_empty()
        && matches!(next.phase, Some(Phase::Deploying | Phase::Building))
        && next.superseded_by.is_none()
        && next.github_state == previous.github_state
        && next.services.len() == plan.len()
        && plan.iter().zip(&next.services).all(|(planned, result)| {
            planned.service == result.service
                && match result.phase {
                    ServicePhase::Pending => true,
                    ServicePhase::Deploying => planned.action == PlanAction::Restart,
                    ServicePhase::Building => planned.action == PlanAction::Build,
                    _ => false,
                }
        })
}

/// Whether an earlier pass started the Redeployment without its status
/// saying so (the write held back by [`may_wait`], or lost to a crash): a
/// workload of its plan names it, or a build Job of its own exists. It is
/// past its start gate then: a newer Redeployment no longer supersedes what
/// already runs.
fn started_unrecorded(observed: &Observed) -> bool {
    let name = observed.redeployment.name_any();
    observed.workloads.values().any(|w| w.redeployment() == Some(name.as_str()))
        || observed.jobs.values().any(|job| job.owned)
}

/// When the Redeployment started: now, or, for one an earlier pass started
/// without recording it, when it was asked for (that pass ran right then).
fn start_time(observed: &Observed, recorded: &RedeploymentStatus, now: Timestamp) -> Timestamp {
    if !recorded.services.is_empty() || !started_unrecorded(observed) {
        return now;
    }
    observed.redeployment.order_key().0.unwrap_or(now)
}

/// Whether a Redeployment is finished with nothing left to tell GitHub: its
/// cached copy is then enough to know that a pass has nothing to do.
pub fn is_done(redeployment: &Redeployment) -> bool {
    // Asked on every wake of a Redeployment kept in history (a rolled-out
    // workload's status changes wake the one its template names): no copy.
    redeployment.status.as_ref().is_some_and(|status| {
        status.phase.is_some_and(Phase::is_finished) && github_pending(redeployment, status).is_none()
    })
}

/// The next status and effects of a Redeployment that is not being deleted.
pub fn decide(observed: &Observed, now: Timestamp) -> Decision {
    let redeployment = &observed.redeployment;
    let previous = redeployment.status.clone().unwrap_or_default();
    if previous.phase.is_some_and(Phase::is_finished) {
        // All that may be left is telling GitHub, if it has not heard yet.
        let effects = github_report(observed, &previous).into_iter().collect();
        return Decision { status: previous, effects, requeue: None, finished: None };
    }
    let mut plan = HashMap::with_capacity(redeployment.spec.plan.len());
    for planned in &redeployment.spec.plan {
        plan.entry(planned.service.as_str()).or_insert(planned);
    }
    let started = start_time(observed, &previous, now);
    let mut pass = Pass { observed, plan, now, started, effects: Vec::new(), notes: Vec::new() };
    let mut status = previous.clone();
    if status.services.is_empty() {
        status.services = redeployment
            .spec
            .plan
            .iter()
            .map(|p| ServiceResult { service: p.service.clone(), phase: ServicePhase::Pending, ..Default::default() })
            .collect();
        status.started_at = Some(Time(started));
    }

    let app_name = &redeployment.spec.app;
    let mut requeue = IDLE;
    let starting = status.services.iter().all(|r| r.phase == ServicePhase::Pending) && !started_unrecorded(observed);
    if observed.app.is_none() {
        let namespace = redeployment.namespace().unwrap_or_default();
        fail_all(&mut status, &format!("App `{app_name}` does not exist in namespace {namespace}"), now);
    } else if let Some(refused) = starting.then(|| refusal(observed)).flatten() {
        // Nothing of a plan that is wrong anywhere is executed: it was not
        // made by the planner (or the App changed since), so none of it is trusted.
        pass.note(EventType::Warning, "PlanRefused", refused.clone());
        fail_all(&mut status, &refused, now);
    } else if starting {
        match gate(observed) {
            Gate::Superseded(newer) => {
                for result in &mut status.services {
                    result.phase = ServicePhase::Superseded;
                    result.message = Some(format!("superseded by the newer Redeployment {newer}"));
                    result.finished_at = Some(Time(now));
                }
                status.superseded_by = Some(newer);
            }
            Gate::Wait(message) => {
                status.message = Some(message);
                requeue = WAIT_POLL;
            }
            Gate::Go => requeue = requeue.min(pass.drive(&mut status)),
        }
    } else {
        requeue = requeue.min(pass.drive(&mut status));
    }

    status.phase = Some(overall_phase(&status.services, status.superseded_by.is_some()));
    let finished = status.phase.is_some_and(Phase::is_finished);
    if finished {
        status.finished_at.get_or_insert(Time(now));
        status.message = Some(summary(&status.services));
    } else if status.phase != Some(Phase::Pending) {
        status.message = None;
    }
    redact_status(&mut status);
    let phase = status.phase.unwrap_or_default();
    let reason = format!("{phase:?}");
    let message = status.message.clone().unwrap_or_else(|| reason.clone());
    let ready = phase == Phase::Succeeded;
    let generation = redeployment.metadata.generation;
    status.conditions = vec![conditions::condition_at(
        &previous.conditions,
        conditions::READY,
        ready,
        &reason,
        message,
        generation,
        now,
    )];
    status.observed_generation = generation;

    let mut effects = pass.effects;
    effects.extend(grouped_events(pass.notes));
    // One Normal Event per Redeployment, when it ends (or must wait for
    // another), and a Warning for each failure: the status holds every step,
    // and an Event per step cost the API server more writes than the rollout.
    let worth_an_event = finished || status.message.is_some();
    if status.phase != previous.phase && worth_an_event {
        let note =
            format!("Redeployment {}: {}", redeployment.name_any(), status.message.clone().unwrap_or(reason.clone()));
        let type_ = if phase == Phase::Failed { EventType::Warning } else { EventType::Normal };
        effects.push(Effect::PublishEvent { type_, reason: format!("Redeployment{reason}"), note });
    }
    effects.extend(github_report(observed, &status));
    let newly_finished = finished && !previous.phase.is_some_and(Phase::is_finished);
    Decision { status, effects, requeue: (!finished).then_some(requeue), finished: newly_finished.then_some(phase) }
}

/// Deleting a Redeployment cancels what it still runs: its build Jobs are deleted.
pub fn decide_cancel(observed: &Observed, now: Timestamp) -> Decision {
    let mut status = observed.redeployment.status.clone().unwrap_or_default();
    if status.phase.is_some_and(Phase::is_finished) {
        return Decision { status, effects: Vec::new(), requeue: None, finished: None };
    }
    let mut effects = Vec::new();
    let message = "canceled: the Redeployment was deleted";
    for result in status.services.iter_mut().filter(|r| !r.phase.is_finished()) {
        if let Some(job) = &result.build_job {
            effects.push(Effect::DeleteJob { name: job.clone() });
        }
        finish(result, ServicePhase::Canceled, message.into(), now);
    }
    status.phase = Some(Phase::Canceled);
    status.finished_at = Some(Time(now));
    status.message = Some(message.into());
    // Best effort: the Redeployment is going away, there is no later pass.
    effects.extend(github_report(observed, &status));
    Decision { status, effects, requeue: None, finished: Some(Phase::Canceled) }
}

/// The Pending `pinDigest` Services whose tag this pass would resolve: those
/// the gate lets start now (all under `parallel`, the next one under
/// `serial`). [`observe`](super::observe) asks the registry for these only.
pub fn digests_wanted(observed: &Observed) -> Vec<String> {
    let redeployment = &observed.redeployment;
    if redeployment.is_finished() || observed.app.is_none() {
        return Vec::new();
    }
    // Borrowed where the status has results (a 500-Service status is large).
    let recorded = redeployment.status.as_ref().map(|status| status.services.as_slice()).unwrap_or_default();
    let results: Cow<'_, [ServiceResult]> = if recorded.is_empty() {
        redeployment
            .spec
            .plan
            .iter()
            .map(|p| ServiceResult { service: p.service.clone(), ..Default::default() })
            .collect()
    } else {
        Cow::Borrowed(recorded)
    };
    let starting = results.iter().all(|r| r.phase == ServicePhase::Pending) && !started_unrecorded(observed);
    if starting && (refusal(observed).is_some() || gate(observed) != Gate::Go) {
        return Vec::new();
    }
    let mut unfinished = results.iter().filter(|r| !r.phase.is_finished());
    let candidates: Vec<&ServiceResult> = match strategy(observed.profile.as_ref()) {
        Strategy::Parallel => unfinished.collect(),
        Strategy::Serial => unfinished.next().into_iter().collect(),
    };
    candidates
        .into_iter()
        .filter(|r| r.phase == ServicePhase::Pending)
        .filter(|r| redeployment.spec.plan.iter().any(|p| p.service == r.service && p.action == PlanAction::PinDigest))
        .map(|r| r.service.clone())
        .collect()
}

fn strategy(profile: Option<&DeploymentProfile>) -> Strategy {
    profile.map(|p| p.spec.strategy).unwrap_or_default()
}

/// An Event a step asks for: type, reason and note.
type Noted = (EventType, &'static str, String);

/// One pass over the Services: what it asked for so far.
struct Pass<'a> {
    observed: &'a Observed,
    /// The plan by Service name (a large App's pass looks up hundreds).
    plan: HashMap<&'a str, &'a PlannedService>,
    now: Timestamp,
    /// When a Service starting in this pass started (see [`start_time`]).
    started: Timestamp,
    effects: Vec<Effect>,
    notes: Vec<Noted>,
}

/// Where a planned Service's rollout stands on its workload, for
/// recognising a patch already applied.
enum Rollout<'a> {
    Restart { stamp: &'a str },
    Image { image: &'a str },
}

impl Pass<'_> {
    fn note(&mut self, type_: EventType, reason: &'static str, note: String) {
        self.notes.push((type_, reason, note));
    }

    fn redeployment(&self) -> &Redeployment {
        &self.observed.redeployment
    }

    fn finish(&self, result: &mut ServiceResult, phase: ServicePhase, message: String) -> Duration {
        finish(result, phase, message, self.now);
        Duration::ZERO
    }

    fn what(&self, service: &Service) -> String {
        let target = &service.spec.target;
        workload::describe(target.kind, &self.redeployment().namespace().unwrap_or_default(), &target.name)
    }

    /// Advances every Service that may move now; returns when to look again.
    fn drive(&mut self, status: &mut RedeploymentStatus) -> Duration {
        match strategy(self.observed.profile.as_ref()) {
            Strategy::Parallel => self.drive_parallel(status),
            Strategy::Serial => self.drive_serial(status),
        }
    }

    fn drive_parallel(&mut self, status: &mut RedeploymentStatus) -> Duration {
        let mut requeue = IDLE;
        for result in status.services.iter_mut().filter(|r| !r.phase.is_finished()) {
            let Some(planned) = self.planned(&result.service) else { continue };
            requeue = requeue.min(self.step(&planned, result));
        }
        requeue
    }

    /// One Service after another in plan order: the next starts once the one
    /// before it finished, and none starts after a failure.
    fn drive_serial(&mut self, status: &mut RedeploymentStatus) -> Duration {
        let mut requeue = IDLE;
        for index in 0..status.services.len() {
            if status.services[index].phase.is_finished() {
                continue;
            }
            if let Some(failed) = status.services[..index].iter().find(|r| r.phase == ServicePhase::Failed) {
                let message = format!("not started: {} failed before it (strategy serial)", failed.service);
                finish(&mut status.services[index], ServicePhase::Canceled, message, self.now);
                continue;
            }
            if status.services[..index].iter().any(|r| !r.phase.is_finished()) {
                break;
            }
            let Some(planned) = self.planned(&status.services[index].service) else { continue };
            let result = &mut status.services[index];
            requeue = requeue.min(self.step(&planned, result));
            if !result.phase.is_finished() {
                break;
            }
        }
        requeue
    }

    fn planned(&self, service: &str) -> Option<PlannedService> {
        self.plan.get(service).map(|planned| (*planned).clone())
    }

    /// One step of one Service.
    fn step(&mut self, planned: &PlannedService, result: &mut ServiceResult) -> Duration {
        let app = &self.redeployment().spec.app;
        let Some(service) = self.observed.services.get(&planned.service).filter(|s| &s.spec.app == app) else {
            if age(self.redeployment(), self.now) < SERVICE_GRACE {
                result.message = Some(format!("waiting for Service `{}` to exist", planned.service));
                return WAIT_POLL;
            }
            let message = format!("Service `{}` of App `{app}` does not exist", planned.service);
            return self.finish(result, ServicePhase::Failed, message);
        };
        match result.phase {
            ServicePhase::Pending => self.start(service, planned, result),
            ServicePhase::Building => self.follow_build(service, result),
            ServicePhase::Deploying => self.follow_rollout(service, planned, result),
            _ => IDLE,
        }
    }

    fn start(&mut self, service: &Service, planned: &PlannedService, result: &mut ServiceResult) -> Duration {
        match planned.action {
            PlanAction::Restart => {
                result.started_at = Some(Time(self.started));
                let stamp = restart_stamp(self.redeployment());
                let patch = workload::restart_patch(&self.redeployment().name_any(), &stamp);
                self.roll_out(service, result, None, patch, Rollout::Restart { stamp: &stamp })
            }
            PlanAction::PinDigest => self.pin_digest(service, result),
            PlanAction::Build => {
                result.started_at = Some(Time(self.started));
                let policy = self.observed.profile.as_ref().map(|p| p.spec.build).unwrap_or_default();
                // The Service's status may not list yet what an older
                // Redeployment built: the gate let this one start once that
                // one was finished in the cache, with its `built` recorded.
                let redeployments: Vec<&Redeployment> =
                    self.observed.others.iter().chain([self.redeployment()]).collect();
                let builds = service::recorded_builds(service, &redeployments);
                let reusable = planned.git_ref.as_deref().and_then(|r| builds.iter().find(|b| b.commit == r));
                match (policy, reusable, builds.first()) {
                    (BuildPolicy::Never, _, Some(last)) => {
                        result.git_ref = Some(last.commit.clone());
                        result.message =
                            Some(format!("build policy never: deploying the last image built, {}", last.image));
                        self.deploy_image(service, result, &last.image)
                    }
                    (BuildPolicy::Never, _, None) => self.finish(
                        result,
                        ServicePhase::Failed,
                        "build policy never, but no image was ever built for this Service".into(),
                    ),
                    (BuildPolicy::IfMissing, Some(built), _) => {
                        result.git_ref = Some(built.commit.clone());
                        result.message = Some(format!("reusing {} built before for this commit", built.image));
                        self.deploy_image(service, result, &built.image)
                    }
                    _ => self.start_build(service, planned, result),
                }
            }
        }
    }

    fn start_build(&mut self, service: &Service, planned: &PlannedService, result: &mut ServiceResult) -> Duration {
        let Some(app) = self.observed.app.as_ref() else {
            return self.finish(result, ServicePhase::Failed, "the App does not exist".into());
        };
        let request = BuildRequest {
            app,
            service,
            redeployment: self.redeployment(),
            git_ref: planned.git_ref.as_deref(),
            builder_image: &self.observed.builder_image,
        };
        let job = match build::render_job(&request) {
            Ok(job) => job,
            Err(error) => return self.finish(result, ServicePhase::Failed, error.to_string()),
        };
        result.phase = ServicePhase::Building;
        result.build_job = Some(job.name_any());
        result.git_ref = planned.git_ref.clone();
        // A Job found under the name of (Redeployment, Service) was made by an
        // earlier pass whose status write did not happen (held back, or
        // lost): it is followed from where it is, not made twice.
        if self.observed.jobs.contains_key(&planned.service) {
            return self.follow_build(service, result);
        }
        self.effects.push(Effect::CreateJob { service: planned.service.clone(), job: Box::new(job) });
        BUILD_POLL
    }

    fn follow_build(&mut self, service: &Service, result: &mut ServiceResult) -> Duration {
        let Some(name) = result.build_job.clone() else {
            return self.finish(result, ServicePhase::Failed, "the build Job is not recorded".into());
        };
        let Some(job) = self.observed.jobs.get(&result.service).filter(|j| j.name == name) else {
            return self.finish(
                result,
                ServicePhase::Failed,
                format!("build Job {name} was deleted before it finished"),
            );
        };
        if !job.owned {
            let message =
                format!("build Job {name} is not this Redeployment's (another controller owns it): it is ignored");
            self.note(EventType::Warning, "BuildFailed", message.clone());
            return self.finish(result, ServicePhase::Failed, message);
        }
        match &job.state {
            JobState::Running => BUILD_POLL,
            JobState::Complete { termination_message } => {
                let reported = termination_message
                    .clone()
                    .ok_or_else(|| build::BuildError::InvalidTerminationMessage {
                        reason: "the Job succeeded, but its first container left no termination message".into(),
                    })
                    .and_then(|message| build::parse_termination_message(&message))
                    .and_then(|outcome| build::check_outcome(service, &outcome).map(|()| outcome));
                let outcome = match reported {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        let message = format!("build Job {name}: {error}");
                        self.note(EventType::Warning, "BuildFailed", message.clone());
                        return self.finish(result, ServicePhase::Failed, message);
                    }
                };
                let built = BuiltImage {
                    commit: outcome.commit.clone(),
                    image: outcome.image.clone(),
                    digest: outcome.digest.clone(),
                };
                result.built = Some(built);
                result.git_ref = Some(outcome.commit.clone());
                self.deploy_image(service, result, &outcome.image)
            }
            JobState::Failed { reason, message, log_tail } => {
                let logs = if log_tail.trim().is_empty() {
                    String::new()
                } else {
                    format!("; last log lines:\n{}", log_tail.trim_end())
                };
                let message = format!("build Job {name} failed ({reason}: {message}){logs}");
                self.note(EventType::Warning, "BuildFailed", message.clone());
                self.finish(result, ServicePhase::Failed, message)
            }
        }
    }

    fn pin_digest(&mut self, service: &Service, result: &mut ServiceResult) -> Duration {
        if service.spec.image.is_none() {
            return self.finish(result, ServicePhase::Failed, "Service has no spec.image to resolve".into());
        }
        // Resolved by the next observation (see `digests_wanted`).
        let Some(resolved) = self.observed.digests.get(&result.service) else { return Duration::ZERO };
        result.started_at = Some(Time(self.started));
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(message) => return self.finish(result, ServicePhase::Failed, message.clone()),
        };
        let container = match self.container(service) {
            Ok(container) => container,
            Err(message) => return self.finish(result, ServicePhase::Failed, message),
        };
        result.git_ref = Some(resolved.digest.clone());
        if container.image == resolved.pinned {
            result.image = Some(resolved.pinned.clone());
            let message = format!("{} is already running digest {}", container.name, resolved.digest);
            return self.finish(result, ServicePhase::Skipped, message);
        }
        self.deploy_image(service, result, &resolved.pinned)
    }

    /// The container a Service deploys, on its observed workload.
    fn container(&self, service: &Service) -> Result<workload::ContainerImage, String> {
        let what = self.what(service);
        let Some(current) = self.observed.workloads.get(&service.name_any()) else {
            return Err(format!("{what} does not exist"));
        };
        current.container(service.spec.target.container.as_deref()).cloned().map_err(|m| format!("{what} {m}"))
    }

    fn deploy_image(&mut self, service: &Service, result: &mut ServiceResult, image: &str) -> Duration {
        let container = match self.container(service) {
            Ok(container) => container.name,
            Err(message) => return self.finish(result, ServicePhase::Failed, message),
        };
        result.image = Some(image.to_string());
        let patch = workload::image_patch(&self.redeployment().name_any(), &container, image);
        self.roll_out(service, result, Some(container), patch, Rollout::Image { image })
    }

    /// Records what the workload ran before, patches it, and starts tracking the rollout.
    fn roll_out(
        &mut self,
        service: &Service,
        result: &mut ServiceResult,
        container: Option<String>,
        mut patch: Value,
        rollout: Rollout,
    ) -> Duration {
        let what = self.what(service);
        let target = &service.spec.target;
        let Some(current) = self.observed.workloads.get(&service.name_any()) else {
            return self.finish(result, ServicePhase::Failed, format!("{what} does not exist"));
        };
        let running = match current.container(container.as_deref().or(target.container.as_deref())) {
            Ok(running) => running.image.clone(),
            Err(message) => return self.finish(result, ServicePhase::Failed, format!("{what} {message}")),
        };
        let mine = current.redeployment() == Some(self.redeployment().name_any().as_str());
        let applied = mine
            && match rollout {
                Rollout::Restart { stamp } => current.restarted_at() == Some(stamp),
                Rollout::Image { image } => running == image,
            };
        result.phase = ServicePhase::Deploying;
        result.image.get_or_insert(running.clone());
        if mine {
            result.previous = current.previous().cloned();
        }
        if applied {
            // An earlier pass patched it and its status write did not happen
            // (held back, or lost): the rollout is followed from where it is.
            result.rollout_generation = Some(current.generation);
            return match self.planned(&result.service) {
                Some(planned) => self.follow_rollout(service, &planned, result),
                None => ROLLOUT_POLL,
            };
        }
        if !mine {
            // Recorded on the workload in the same patch that changes it, so a
            // restarted operator still knows what to roll back to.
            let previous =
                PreviousTemplate { image: running, restarted_at: current.restarted_at().map(str::to_string) };
            workload::record_previous(&mut patch, &previous);
            result.previous = Some(previous);
        }
        if let Some(version) = &current.resource_version {
            workload::require_version(&mut patch, version);
        }
        // A pod template change makes exactly one new generation of the
        // version observed; execute corrects it from the patch's answer.
        result.rollout_generation = Some(current.generation + 1);
        self.effects.push(Effect::PatchWorkload { service: service.name_any(), target: target.clone(), patch });
        ROLLOUT_POLL
    }

    fn follow_rollout(&mut self, service: &Service, planned: &PlannedService, result: &mut ServiceResult) -> Duration {
        let what = self.what(service);
        let target = &service.spec.target;
        let Some(current) = self.observed.workloads.get(&service.name_any()) else {
            return self.finish(result, ServicePhase::Failed, format!("{what} was deleted during the rollout"));
        };
        let rollout = self.observed.profile.as_ref().map(|p| p.spec.rollout.clone()).unwrap_or_default();
        let stamp = restart_stamp(self.redeployment());
        let restored =
            rolled_back_already(current, planned, result, target.container.as_deref(), &stamp, rollout.auto_rollback)
                .cloned();
        if let Some(previous) = restored {
            result.rolled_back = true;
            let message = format!("{what} failed to roll out; rolled back to {}", previous.image);
            return self.finish(result, ServicePhase::Failed, message);
        }
        let progress = match current.progress(result.rollout_generation.unwrap_or_default()) {
            Progress::InProgress(message) => {
                let started = result.started_at.as_ref().map(|t| t.0).unwrap_or(self.now);
                let elapsed = self.now.duration_since(started).as_secs().max(0).unsigned_abs();
                let timeout = u64::try_from(rollout.timeout_seconds).unwrap_or(600);
                if elapsed < timeout {
                    result.message = Some(message);
                    // The workload's own events wake us as it progresses; this is only the deadline.
                    return Duration::from_secs(timeout - elapsed);
                }
                Progress::Failed {
                    reason: "Timeout".into(),
                    message: format!("not rolled out within {}s: {message}", rollout.timeout_seconds),
                }
            }
            other => other,
        };
        match progress {
            Progress::Succeeded => self.finish(result, ServicePhase::Succeeded, format!("{what} rolled out")),
            Progress::Failed { reason, message } => {
                let mut message = format!("{what} failed to roll out ({reason}): {message}");
                let previous = result.previous.clone().filter(|_| rollout.auto_rollback && !result.rolled_back);
                if let Some(previous) = previous
                    && let Ok(container) = current.container(target.container.as_deref())
                {
                    let patch =
                        workload::rollback_patch(&container.name, &previous.image, previous.restarted_at.as_deref());
                    self.effects.push(Effect::RollBack { service: service.name_any(), target: target.clone(), patch });
                    result.rolled_back = true;
                    message.push_str(&format!("; rolled back to {}", previous.image));
                }
                self.note(EventType::Warning, "RolloutFailed", message.clone());
                self.finish(result, ServicePhase::Failed, message)
            }
            Progress::InProgress(_) => Duration::ZERO,
        }
    }
}

/// What the workload ran before, when it runs that again instead of this
/// Redeployment's rollout: an earlier pass rolled back and its status write
/// did not happen.
fn rolled_back_already<'a>(
    current: &workload::Workload,
    planned: &PlannedService,
    result: &'a ServiceResult,
    container: Option<&str>,
    stamp: &str,
    auto_rollback: bool,
) -> Option<&'a PreviousTemplate> {
    let previous = result.previous.as_ref().filter(|_| auto_rollback && !result.rolled_back)?;
    let restored = match planned.action {
        PlanAction::Restart => {
            current.restarted_at() != Some(stamp) && current.restarted_at() == previous.restarted_at.as_deref()
        }
        PlanAction::Build | PlanAction::PinDigest => {
            let running = current.container(container).ok().map(|c| c.image.as_str());
            running == Some(previous.image.as_str()) && result.image.as_deref() != Some(previous.image.as_str())
        }
    };
    restored.then_some(previous)
}

#[derive(Debug, PartialEq, Eq)]
enum Gate {
    Go,
    Wait(String),
    Superseded(String),
}

/// At most one active rollout per Service: a newer Redeployment of the same
/// Services supersedes this one while it is pending; an older active one makes it wait.
fn gate(observed: &Observed) -> Gate {
    let redeployment = &observed.redeployment;
    let mine: Vec<&str> = redeployment.spec.plan.iter().map(|p| p.service.as_str()).collect();
    let key = redeployment.order_key();
    let others: Vec<&Redeployment> = observed
        .others
        .iter()
        .filter(|r| r.spec.app == redeployment.spec.app && r.name_any() != redeployment.name_any())
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .filter(|r| !r.is_finished())
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

/// Why the Redeployment must not run, checked before it starts: a
/// Redeployment can be made by hand (`kubectl create`) with any plan, so the
/// plan is held against the Services as they are now.
fn refusal(observed: &Observed) -> Option<String> {
    let redeployment = &observed.redeployment;
    let lookup = |name: &str| observed.services.get(name).map(|service| &**service);
    plan_refusal(&redeployment.spec.app, &redeployment.spec.plan, lookup, observed.profile.as_ref())
}

/// Why a plan (and profile) cannot run for `app`: a Service of another App,
/// a Service planned twice, an action its kind does not have (`build` is for
/// Git-built Services, `restart` for image-based ones, `pinDigest` for
/// image-based ones with `resolveDigest`), a profile of another App. A
/// planned Service `lookup` does not know may not be cached yet: the step
/// waits for it, then fails it alone.
pub(super) fn plan_refusal<'a>(
    app: &str,
    plan: &[PlannedService],
    lookup: impl Fn(&str) -> Option<&'a Service>,
    profile: Option<&DeploymentProfile>,
) -> Option<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::with_capacity(plan.len());
    if let Some(profile) = profile.filter(|p| p.spec.app != app) {
        problems.push(format!(
            "spec.profile `{}` belongs to App `{}`, not `{app}`",
            profile.name_any(),
            profile.spec.app
        ));
    }
    for planned in plan {
        let name = &planned.service;
        if !seen.insert(name.as_str()) {
            problems.push(format!("Service `{name}` is planned more than once"));
            continue;
        }
        let Some(service) = lookup(name) else { continue };
        if service.spec.app != app {
            problems.push(format!("Service `{name}` belongs to App `{}`, not `{app}`", service.spec.app));
            continue;
        }
        let resolves = service.spec.image.as_deref().is_some_and(|i| i.resolve_digest);
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

/// The status the Redeployment's GitHub Deployment has yet to hear, with the
/// Deployment's id; `None` when there is nothing to tell.
fn github_pending(redeployment: &Redeployment, status: &RedeploymentStatus) -> Option<(i64, &'static str)> {
    let id = redeployment.spec.github_deployment?;
    let state = status.phase.and_then(github::state_of)?;
    (status.github_state.as_deref() != Some(state)).then_some((id, state))
}

/// Continuous deploy: the post of the Redeployment's phase to its GitHub
/// Deployment that GitHub has not had yet, when the App has a token to post with.
fn github_report(observed: &Observed, status: &RedeploymentStatus) -> Option<Effect> {
    let (deployment, state) = github_pending(&observed.redeployment, status)?;
    observed.app.as_ref().filter(|a| a.spec.github.is_some())?;
    let description = status.message.clone().unwrap_or_else(|| format!("{:?}", status.phase.unwrap_or_default()));
    Some(Effect::ReportGitHubStatus { deployment, state, description })
}

/// The Events the pass's steps noted: one per type and reason, in the order
/// first noted, naming every Service's step (the API server keeps one Event
/// per type, reason and Redeployment anyway, counting repeats, so one Event a
/// step would cost a write each and show only the first note).
fn grouped_events(notes: Vec<Noted>) -> Vec<Effect> {
    let mut grouped: Vec<(EventType, &'static str, Vec<String>)> = Vec::new();
    for (type_, reason, note) in notes {
        match grouped.iter_mut().find(|(t, r, _)| *t == type_ && *r == reason) {
            Some((_, _, notes)) => notes.push(note),
            None => grouped.push((type_, reason, vec![note])),
        }
    }
    grouped
        .into_iter()
        .map(|(type_, reason, mut notes)| {
            let note = match notes.len() {
                1 => notes.remove(0),
                n => format!("{n} Services: {}", notes.join("; ")),
            };
            Effect::PublishEvent { type_, reason: reason.to_string(), note }
        })
        .collect()
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

fn finish(result: &mut ServiceResult, phase: ServicePhase, message: String, now: Timestamp) {
    result.phase = phase;
    result.message = Some(message);
    result.finished_at = Some(Time(now));
}

fn fail_all(status: &mut RedeploymentStatus, message: &str, now: Timestamp) {
    for result in status.services.iter_mut().filter(|r| !r.phase.is_finished()) {
        finish(result, ServicePhase::Failed, message.to_string(), now);
    }
}

/// The Redeployment's phase, from its Services'.
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

/// How long ago the Redeployment was created.
pub fn age(redeployment: &Redeployment, now: Timestamp) -> Duration {
    let created = redeployment.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
    Duration::from_secs(now.duration_since(created).as_secs().max(0).unsigned_abs())
}
